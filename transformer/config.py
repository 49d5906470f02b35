"""The experiment schema: one frozen, typed dataclass per config section, validated once.

A config file builds an ml_collections ConfigDict (every field and its meaning are below; the
ConfigDict of defaults is `base_config()`, generated from these classes). Right after the config
is resolved (file, preset, command-line overrides), `Experiment.from_config(config)` converts it
once: each section checks the types and values of its fields, the experiment checks the rules
between sections, and anything invalid raises `ConfigError` with one line naming the field, the
value and what is allowed. Modules receive these frozen objects, never a ConfigDict: models are
built from `experiment.model`, the optimizer from `experiment.opt`, and so on.

Two kinds of rule live elsewhere, once each, because they need more than the config: what a
dataset holds and which files the data needs (transformer/data/pipeline.py: `check_data`), and
how many devices there are (transformer/training/sharding.py: `mesh_shape`).
"""

import dataclasses
import math
import types
from typing import Any, Mapping

from transformer.errors import ConfigError

FAMILIES = ('encoder_only', 'decoder_only', 'encoder_decoder')
HEADS = {  # output heads each family can carry
    'encoder_only': ('mlm', 'classify'),
    'decoder_only': ('lm',),
    'encoder_decoder': ('lm',),
}
TASKS = ('lm', 'mlm', 'seq2seq', 'classify')
POSITIONS = ('sinusoidal', 'learned', 'rope', 'alibi', 'none')
ACTIVATION_NAMES = ('relu', 'gelu', 'gelu_tanh', 'silu', 'swiglu')
SINUSOIDAL_LAYOUTS = ('interleaved', 'concat')
NORMS = ('layernorm', 'rmsnorm')
POOLINGS = ('first', 'mean')
ATTENTION_IMPLS = ('einsum', 'xla', 'cudnn')
REMAT_POLICY_NAMES = ('full', 'dots', 'dots_no_batch')  # what model.remat keeps (model/models.py)
DTYPES = ('float32', 'bfloat16', 'float16')
PARAMETRIZATIONS = ('sp', 'mup')
TOKENIZERS = ('byte', 'sentencepiece', 'huggingface')
SPM_TYPES = ('unigram', 'bpe')
TEXT_UNITS = ('file', 'paragraph', 'line')  # a document of a plain-text file (data.text_unit)
BLEU_TOKENIZERS = ('13a', 'intl', 'char', 'none')  # sacrebleu's
WANDB_PROJECT_FORBIDDEN = '/\\#?%:'  # characters W&B refuses in a project name (at most 128)
OPTIMIZERS = ('adamw', 'adafactor', 'sgd')
SCHEDULES = ('constant', 'cosine', 'linear', 'rsqrt')
MESH_AXES = ('data', 'fsdp', 'tensor')
PARALLEL = ('jit', 'pmap')


def _field(default: Any, doc: str) -> Any:
  """A config field: its default and its meaning (shown by `python -m transformer.describe
  --fields`)."""
  return dataclasses.field(default=default, metadata={'doc': doc})


class _Section:
  """What every section shares: building from a ConfigDict section, type checks, one-line
  errors that name `<section>.<field>`."""

  SECTION = ''

  @classmethod
  def from_values(cls, values: Mapping[str, Any]):
    known = {f.name for f in dataclasses.fields(cls)}
    for name in values:
      if name not in known:
        raise ConfigError(f'{cls.SECTION}.{name} is not a {cls.SECTION} field; known fields: '
                          f'{", ".join(sorted(known))}')
    return cls(**values)

  def _fail(self, name: str, allowed: str):
    raise ConfigError(f'{self.SECTION}.{name}={getattr(self, name)!r} is invalid: {allowed}')

  def _one_of(self, name: str, allowed: tuple[str, ...]):
    if getattr(self, name) not in allowed:
      self._fail(name, f'must be one of {", ".join(allowed)}')

  def _check_types(self):
    """Every field has its annotated type (an int is accepted for a float, and stored as one)."""
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      optional = isinstance(f.type, types.UnionType) and value is None
      kind = f.type.__args__[0] if isinstance(f.type, types.UnionType) else f.type
      if optional:
        continue
      if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        self._fail(f.name, 'must be an integer')
      elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
          self._fail(f.name, 'must be a number')
        object.__setattr__(self, f.name, float(value))
      elif kind is bool and not isinstance(value, bool):
        self._fail(f.name, 'must be True or False')
      elif kind is str and not isinstance(value, str):
        self._fail(f.name, 'must be a string')

  def _positive(self, *names: str):
    for name in names:
      if getattr(self, name) <= 0:
        self._fail(name, 'must be a positive integer')

  def _non_negative(self, *names: str):
    for name in names:
      if getattr(self, name) < 0:
        self._fail(name, 'must be >= 0')


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
  """Every architectural choice of the three families. Family styles and sizes
  (transformer/presets.py) override some of these defaults."""

  SECTION = 'model'

  family: str = _field('decoder_only', 'encoder_only (BERT), decoder_only (GPT) or '
                       'encoder_decoder (the paper)')
  head: str = _field('lm', 'output head: lm (decoder_only, encoder_decoder); mlm or classify '
                     '(encoder_only)')
  num_classes: int = _field(2, 'classes of the classify head')
  pooling: str = _field('first', 'classify head input: first token ([CLS]) or mean over real '
                        'tokens')
  vocab_size: int = _field(256, 'tokens; 256 is the byte-level tokenizer')
  type_vocab_size: int = _field(0, 'token-type (segment A/B) embeddings, BERT: 2; 0 = none')
  max_len: int = _field(512, 'longest sequence a learned position table holds')
  num_layers: int = _field(2, 'blocks per stack (the encoder\'s, for encoder_decoder)')
  num_decoder_layers: int | None = _field(None, 'decoder blocks; None = num_layers')
  d_model: int = _field(64, 'residual stream width')
  num_heads: int = _field(4, 'query heads; head size is d_model / num_heads')
  num_kv_heads: int | None = _field(None, 'key/value heads (GQA/MQA); None = num_heads')
  d_ff: int = _field(256, 'hidden width of the feed-forward sublayer')
  position: str = _field('learned', 'sinusoidal, learned, rope, alibi or none')
  sinusoidal_layout: str = _field(
      'interleaved', 'sinusoidal: sin and cos interleaved (the paper\'s formula, dimension 2i '
      'and 2i+1) or concat (all sines, then all cosines: tensor2tensor, Marian)')
  rope_base: float = _field(10000.0, 'RoPE wavelength base')
  activation: str = _field('gelu', 'feed-forward: relu, gelu (exact), gelu_tanh (GPT-2), silu '
                           '(Marian\'s swish), swiglu (gated)')
  norm: str = _field('layernorm', 'layernorm or rmsnorm')
  norm_eps: float = _field(1e-5, 'epsilon of every norm')
  pre_norm: bool = _field(True, 'True: x + f(norm(x)) (GPT-2); False: norm(x + f(x)) (the '
                          'paper, BERT)')
  embed_norm: bool = _field(False, 'a norm right after the embeddings (BERT)')
  dropout: float = _field(0.0, 'on embeddings and on every sublayer output before the residual '
                          'add (each family style sets its reference model\'s 0.1)')
  attention_dropout: float = _field(0.0, 'on attention weights (einsum attention only)')
  use_bias: bool = _field(True, 'biases in attention and feed-forward projections')
  qkv_bias: bool | None = _field(None, 'biases on the query, key and value projections (Qwen2: '
                                 'there but nowhere else); None = use_bias')
  logits_bias: bool = _field(False, 'a bias on the output logits (the masked-LM head always has '
                             'one)')
  tie_embeddings: bool = _field(True, 'output projection = input embedding table (transposed)')
  share_embeddings: bool = _field(True, 'encoder_decoder: one embedding table for source and '
                                  'target')
  scale_embeddings: bool = _field(False, 'multiply embeddings by sqrt(d_model) (the paper)')
  init_std: float = _field(0.02, 'std of normal initialisation; residual outputs get 1/sqrt(2L) '
                           'of it')
  parametrization: str = _field(
      'sp', 'sp (standard) or mup (Yang et al. 2022: hyperparameters tuned at width '
      'mup_base_d_model transfer to wider models; AdamW only; see transformer/training/optim.py)')
  mup_base_d_model: int = _field(
      128, 'mup: the base width, where muP equals SP and hyperparameters are tuned; width '
      'multiplier m = d_model / mup_base_d_model (d_ff grows with d_model, num_heads fixed: the '
      'head size grows)')
  attention_impl: str = _field('einsum', 'einsum, or xla / cudnn (jax.nn.dot_product_attention)')
  scan_layers: bool = _field(False, 'stack blocks with nn.scan: compile time flat in depth')
  remat: bool = _field(False, 'rematerialise each block in the backward pass: less memory, more '
                       'compute')
  remat_policy: str = _field(
      'full', 'with remat, what the forward pass keeps: full (only each block\'s input), dots '
      '(every matmul output, attention scores too), dots_no_batch (projection and feed-forward '
      'outputs, not the T x S attention scores)')
  dtype: str = _field('float32', 'compute dtype: float32 or bfloat16 (softmax and norms stay '
                      'float32)')
  param_dtype: str = _field('float32', 'parameter (and optimizer state) dtype')

  def __post_init__(self):
    if self.num_kv_heads is None:
      object.__setattr__(self, 'num_kv_heads', self.num_heads)
    if self.num_decoder_layers is None:
      object.__setattr__(self, 'num_decoder_layers', self.num_layers)
    self._check_types()
    self._check_values()

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def width_mult(self) -> float:
    """muP's width multiplier m = d_model / mup_base_d_model; 1 under SP."""
    if self.parametrization == 'mup':
      return self.d_model / self.mup_base_d_model
    return 1.0

  @property
  def task(self) -> str:
    """What the model trains on: lm (decoder_only), seq2seq (encoder_decoder), mlm or classify
    (encoder_only, by its head)."""
    if self.family == 'decoder_only':
      return 'lm'
    if self.family == 'encoder_decoder':
      return 'seq2seq'
    return 'mlm' if self.head == 'mlm' else 'classify'

  def check_length(self, length: int, what: str):
    """A learned position table holds max_len positions: `what` (e.g. 'data.seq_len=300') may
    not be longer. Other positional encodings take any length."""
    if self.position == 'learned' and length > self.max_len:
      raise ConfigError(f'{what} is invalid: longer than the learned position table '
                        f'(model.max_len={self.max_len}); raise model.max_len or choose another '
                        'model.position')

  @classmethod
  def from_config(cls, config: Any) -> 'ModelConfig':
    """The `model` section of an experiment ConfigDict."""
    if 'model' not in config:
      raise ConfigError('the config has no model section; get_config() must return a '
                        'ConfigDict with model, data, train, opt and mesh sections')
    return cls.from_values(dict(config['model'].items()))

  def _check_values(self):
    self._one_of('family', FAMILIES)
    self._one_of('head', HEADS[self.family])
    for name, allowed in (('position', POSITIONS), ('activation', ACTIVATION_NAMES),
                          ('norm', NORMS), ('sinusoidal_layout', SINUSOIDAL_LAYOUTS),
                          ('pooling', POOLINGS), ('attention_impl', ATTENTION_IMPLS),
                          ('remat_policy', REMAT_POLICY_NAMES), ('dtype', DTYPES),
                          ('param_dtype', DTYPES), ('parametrization', PARAMETRIZATIONS)):
      self._one_of(name, allowed)
    self._positive('vocab_size', 'max_len', 'num_layers', 'num_decoder_layers', 'd_model',
                   'num_heads', 'num_kv_heads', 'd_ff', 'num_classes', 'mup_base_d_model')
    if self.type_vocab_size < 0:
      self._fail('type_vocab_size', 'must be >= 0 (0: no token-type embeddings)')
    for name in ('norm_eps', 'init_std', 'rope_base'):
      if not 0 < getattr(self, name) < math.inf:
        self._fail(name, 'must be a finite number > 0')
    for name in ('dropout', 'attention_dropout'):
      if not 0.0 <= getattr(self, name) < 1.0:
        self._fail(name, 'must be in [0, 1)')
    if self.d_model % self.num_heads:
      self._fail('d_model', f'must be divisible by model.num_heads={self.num_heads}')
    if self.num_heads % self.num_kv_heads:
      self._fail('num_heads', f'must be divisible by model.num_kv_heads={self.num_kv_heads}')
    if self.parametrization == 'mup' and self.mup_base_d_model % self.num_heads:
      self._fail('mup_base_d_model', f'must be divisible by model.num_heads={self.num_heads} '
                 '(the muP base model has the same heads, with a smaller head size)')
    if self.position == 'sinusoidal' and self.d_model % 2:
      self._fail('d_model', "must be even for model.position='sinusoidal'")
    if self.position == 'rope' and self.head_dim % 2:
      self._fail('d_model', "must give an even head size (d_model / num_heads) for "
                 "model.position='rope'")
    if self.attention_impl != 'einsum' and self.attention_dropout > 0:
      self._fail('attention_dropout', f'must be 0 with model.attention_impl='
                 f"{self.attention_impl!r} (jax.nn.dot_product_attention has no dropout); use "
                 "'einsum'")


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
  """What the model reads: the dataset, its tokenizer, and the shape of a batch."""

  SECTION = 'data'

  dataset: str = _field(
      'shakespeare', 'see transformer/data/datasets.py: shakespeare (embedded, offline), '
      'tiny_shakespeare, lm1b, wmt14_translate/de-en, wmt17_translate/de-en, imdb_reviews, '
      'glue/sst2, a synthetic task: copy, reverse, sort, addition, recall, files (your own: '
      'data.train_files) or hf:NAME[:CONFIG] (a Hugging Face dataset, or a directory saved by '
      'save_to_disk)')
  seq_len: int = _field(256, 'tokens per row (source and target each, for encoder_decoder)')
  batch_size: int = _field(32, 'rows per step, summed over all devices and hosts')
  data_dir: str = _field('', 'TFDS data directory and tokenizer cache; \'\' = $TFDS_DATA_DIR or '
                         '~/tensorflow_datasets')
  train_split: str = _field('', 'TFDS split to train on, e.g. \'train[:90%]\' (hf: a split '
                            'name); \'\' = the dataset\'s own')
  eval_split: str = _field('', 'TFDS split to evaluate on; \'\' = the dataset\'s own held-out '
                           'split')
  tokenizer: str = _field('byte', 'byte (256 ids, nothing to train), sentencepiece, or '
                          'huggingface (a pretrained model\'s, from data.hf_tokenizer; '
                          'transformer.convert sets both)')
  hf_tokenizer: str = _field('', 'huggingface: a directory written by save_pretrained')
  vocab_size: int = _field(8000, 'sentencepiece: pieces to train (or to expect of '
                           'data.spm_model; 0 = any)')
  spm_model: str = _field('', 'sentencepiece: a model file; \'\' = train on the training split '
                          'and cache it')
  spm_type: str = _field('unigram', 'sentencepiece: unigram or bpe')
  spm_examples: int = _field(200_000, 'sentencepiece: training examples to learn the '
                             'vocabulary from')
  pack: bool = _field(True, 'pack several documents into each row (segment ids keep them '
                      'apart)')
  mask_rate: float = _field(0.15, 'masked LM: fraction of tokens to predict (80% masked, 10% '
                            'random, 10% kept)')
  source_lang: str = _field('en', 'translation: source language')
  target_lang: str = _field('de', 'translation: target language')
  synthetic_len: int = _field(16, 'synthetic tasks: longest sequence (addition: digits per '
                              'operand)')
  recall_distance: int = _field(16, 'synthetic recall: characters between the stored pair and '
                                'the query')
  train_files: str = _field('', 'files: the training files, globs separated by commas: text '
                            '(.txt), JSON Lines (.jsonl, .jsonl.gz, .jsonl.zst) or Parquet; '
                            'converted once into ArrayRecord shards in the data directory')
  eval_files: str = _field('', 'files: the evaluation files; \'\' = hold out '
                           'data.eval_fraction of the training documents')
  eval_fraction: float = _field(0.01, 'files: documents held out for evaluation without '
                                'data.eval_files, chosen by a hash of their content')
  text_unit: str = _field('file', 'files, plain text: one document per file, per paragraph '
                          '(blank-line separated) or per line')
  text_field: str = _field('text', 'files, JSON Lines / Parquet: the text (of text and '
                           'labelled data)')
  source_field: str = _field('', 'files: the source (or prompt) of pairs; with '
                             'data.target_field, the data holds pairs')
  target_field: str = _field('', 'files: the target (or answer) of pairs')
  label_field: str = _field('', 'files: the label of labelled data (integers from 0, or names: '
                            'classes in sorted order)')
  skip_bad_records: bool = _field(False, 'files: skip records that cannot be read (bad JSON, '
                                  'a missing field, invalid UTF-8) and count them, instead of '
                                  'stopping at the first')
  mixture: str = _field('', "data.dataset='mixture': the datasets mixed and their weights, "
                         "e.g. 'shakespeare=0.8,copy=0.2' (named, synthetic, files or hf:; "
                         'documents drawn in these proportions)')
  pretokenize: bool = _field(False, 'files, hf: store the token ids in the conversion '
                             '(tokenised once, not at every epoch of every run)')
  num_workers: int = _field(0, 'grain worker processes (0: read in the training process)')
  read_threads: int = _field(0, 'threads reading records for each row of the batch (a slot; a '
                             'host reads data.batch_size / hosts of them); 2-4 pay off on '
                             'remote file systems (GCS)')
  prefetch: int = _field(4, 'batches prepared ahead by a background thread (0: none)')

  def __post_init__(self):
    self._check_types()
    self._positive('seq_len', 'batch_size')
    self._one_of('tokenizer', TOKENIZERS)
    if self.tokenizer == 'sentencepiece':
      self._one_of('spm_type', SPM_TYPES)
      if self.vocab_size < (0 if self.spm_model else 16):
        self._fail('vocab_size', 'must be >= 16 to train SentencePiece (or 0 with '
                   'data.spm_model)')
      if self.spm_examples < 1:
        self._fail('spm_examples', 'must be a positive integer')
    if not 0.0 < self.mask_rate < 1.0:
      self._fail('mask_rate', 'must be in (0, 1)')
    self._non_negative('num_workers', 'prefetch', 'read_threads')
    if (self.dataset == 'mixture') != bool(self.mixture):
      if self.mixture:
        self._fail('dataset', "must be 'mixture' with data.mixture")
      self._fail('mixture', "must name the datasets mixed with data.dataset='mixture', e.g. "
                 "'shakespeare=0.8,copy=0.2'")
    if self.mixture:
      self.mixture_weights()
    if self.dataset == 'files' or self.dataset.startswith('hf:') or self.dataset == 'mixture':
      self._check_files()
    elif self.pretokenize:
      self._fail('pretokenize', "it is only for the datasets converted here: data.dataset='files' "
                 "or 'hf:NAME'")

  def mixture_weights(self) -> dict[str, float]:
    """{dataset: weight} of data.mixture ('NAME=WEIGHT,...'), weights normalised to sum 1. A
    dataset of weight 0 is evaluated but not trained on (an ablation's end point)."""
    weights = {}
    allowed = ("NAME=WEIGHT pairs separated by commas, each dataset once, weights >= 0 and "
               "not all 0, e.g. 'shakespeare=0.8,copy=0.2'")
    for part in self.mixture.split(','):
      name, _, weight = part.strip().rpartition('=')
      try:
        value = float(weight)
      except ValueError:
        value = -1.0
      if not name or name in weights or name == 'mixture' or not value >= 0 or math.isinf(value):
        self._fail('mixture', allowed)
      weights[name] = value
    total = sum(weights.values())
    if total <= 0:
      self._fail('mixture', allowed)
    return {name: w / total for name, w in weights.items()}  # 0: evaluated, not trained on

  def source(self, name: str) -> 'DataConfig':
    """The data of one dataset of a mixture (its other fields are the mixture's)."""
    return dataclasses.replace(self, dataset=name, mixture='')

  @property
  def files_kind(self) -> str:
    """What data.dataset='files' holds: pairs, labelled or text, by the fields named."""
    if self.source_field or self.target_field:
      return 'pairs'
    return 'labelled' if self.label_field else 'text'

  def _check_files(self):
    if self.dataset == 'mixture' and 'files' not in self.mixture_weights():
      return
    if self.dataset in ('files', 'mixture') and not self.train_files.strip(' ,'):
      self._fail('train_files', "must name the training files (globs separated by commas) "
                 "with data.dataset='files'")
    self._one_of('text_unit', TEXT_UNITS)
    if not self.eval_files and not 0.0 < self.eval_fraction < 1.0:
      self._fail('eval_fraction', 'must be in (0, 1) without data.eval_files')
    if bool(self.source_field) != bool(self.target_field):
      empty = 'target_field' if self.source_field else 'source_field'
      self._fail(empty, 'must be set too: pairs need data.source_field and data.target_field')
    if self.source_field and self.label_field:
      self._fail('label_field', 'must be empty for pairs (data.source_field is set)')
    if self.files_kind != 'pairs' and not self.text_field:
      self._fail('text_field', f'must name the text field of {self.files_kind} data')


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
  """The loop: how long, what is logged, evaluated and saved, and when."""

  SECTION = 'train'

  num_steps: int = _field(2000, 'optimizer steps')
  seed: int = _field(0, 'seeds initialisation, dropout and data order')
  log_every: int = _field(50, 'steps between metric records (the only host-device syncs of the '
                          'loop)')
  eval_every: int = _field(500, 'steps between evaluations on the held-out split (and at the '
                           'end)')
  eval_batches: int = _field(20, 'batches per evaluation; 0 = the whole held-out split')
  bleu_examples: int = _field(0, 'encoder_decoder: held-out examples decoded for BLEU at each '
                              'evaluation')
  bleu_beam_size: int = _field(4, '... by beam search with this many beams (1 = greedy)')
  bleu_alpha: float = _field(0.6, '... and this length penalty ((5 + length) / 6)^alpha')
  bleu_tokenize: str = _field('13a', 'sacrebleu\'s tokenizer: 13a (words, WMT\'s), intl, char, '
                              'none')
  checkpoint_every: int = _field(500, 'steps between checkpoints (and at the end)')
  keep_checkpoints: int = _field(3, 'newest checkpoints kept')
  label_smoothing: float = _field(0.0, 'target smoothing (the paper: 0.1)')
  grad_accum_steps: int = _field(1, 'micro-batches per step (same result, less memory)')
  sample_tokens: int = _field(0, 'language models: tokens to sample at the end (0 = none)')
  sample_prompt: str = _field('', '... continuing this text')
  sample_temperature: float = _field(0.8, '... at this temperature (0 = greedy)')
  init_from: str = _field(
      '', 'a run (e.g. written by transformer.convert) whose newest parameters start this one: '
      'fine-tuning (configs/finetune.py sets it). Parameters it lacks (a new head) start fresh; '
      'used only while --workdir has no checkpoint of its own')
  wandb_project: str = _field(
      '', 'a Weights & Biases project to log metrics.jsonl\'s records and config.json to (pip '
      "install -e '.[wandb]'), from process 0, the files under WORKDIR/wandb; a resumed run "
      "continues its W&B run. '' = off")
  wandb_entity: str = _field('', '... in this W&B entity (user or team); \'\' = your default')

  def __post_init__(self):
    self._check_types()
    self._positive('num_steps', 'log_every', 'eval_every', 'checkpoint_every')
    if not 0 <= self.seed < 2**32:
      self._fail('seed', 'must be in [0, 2^32)')
    for name in ('keep_checkpoints', 'grad_accum_steps', 'bleu_beam_size'):
      if getattr(self, name) < 1:
        self._fail(name, 'must be >= 1')
    self._non_negative('eval_batches', 'sample_tokens', 'bleu_examples', 'bleu_alpha',
                       'sample_temperature')
    self._one_of('bleu_tokenize', BLEU_TOKENIZERS)
    if not 0 <= self.label_smoothing < 1:
      self._fail('label_smoothing', 'must be in [0, 1)')
    self._check_wandb()

  def _check_wandb(self):
    """What wandb.init would refuse, found before the run starts (W&B's rules, wandb 0.31)."""
    found = sorted(set(self.wandb_project) & set(WANDB_PROJECT_FORBIDDEN))
    if found or len(self.wandb_project) > 128:
      self._fail('wandb_project', 'W&B project names have at most 128 characters, none of '
                 f'{" ".join(WANDB_PROJECT_FORBIDDEN)}' + (
                     f' (found {" ".join(found)})' if found else ''))
    if self.wandb_entity and not self.wandb_project:
      self._fail('wandb_entity', 'needs train.wandb_project (the project to log to)')


@dataclasses.dataclass(frozen=True)
class OptConfig(_Section):
  """The optimizer and its learning-rate schedule (transformer/training/optim.py)."""

  SECTION = 'opt'

  name: str = _field('adamw', 'adamw, adafactor or sgd')
  lr: float = _field(1e-3, 'peak learning rate')
  schedule: str = _field('cosine', 'constant, cosine, linear (after warmup) or rsqrt (the '
                         'paper\'s)')
  warmup_steps: int = _field(100, 'linear warmup from 0 to lr')
  final_lr_ratio: float = _field(0.1, 'cosine / linear: end at lr * final_lr_ratio')
  weight_decay: float = _field(0.1, 'decoupled weight decay (AdamW; coupled for SGD)')
  decay_all_params: bool = _field(False, 'False: no decay on norms, biases and embedding tables')
  clip_norm: float = _field(1.0, 'global gradient-norm clipping; 0 = off')
  b1: float = _field(0.9, 'AdamW first-moment decay')
  b2: float = _field(0.95, 'AdamW second-moment decay')
  eps: float = _field(1e-8, 'AdamW epsilon')
  momentum: float = _field(0.9, 'SGD momentum (0 = plain SGD)')

  def __post_init__(self):
    self._check_types()
    self._one_of('name', OPTIMIZERS)
    self._one_of('schedule', SCHEDULES)
    if not self.lr > 0:
      self._fail('lr', 'must be > 0')
    self._non_negative('warmup_steps', 'weight_decay', 'clip_norm', 'momentum')
    if self.schedule == 'rsqrt' and self.warmup_steps < 1:
      self._fail('warmup_steps', "must be >= 1 for opt.schedule='rsqrt'")
    if not 0 <= self.final_lr_ratio <= 1:
      self._fail('final_lr_ratio', 'must be in [0, 1]')
    for name in ('b1', 'b2'):
      if not 0 <= getattr(self, name) < 1:
        self._fail(name, 'must be in [0, 1)')


@dataclasses.dataclass(frozen=True)
class MeshConfig(_Section):
  """Devices: the sizes of the mesh's three axes (their product is the number of devices)."""

  SECTION = 'mesh'

  data: int = _field(-1, 'data-parallel devices; -1 = all the others')
  fsdp: int = _field(1, 'devices sharding parameters and optimizer state (ZeRO-3 style)')
  tensor: int = _field(1, 'devices sharding heads and feed-forward width (Megatron style)')

  def __post_init__(self):
    self._check_types()
    for name in MESH_AXES:
      if getattr(self, name) < 1 and getattr(self, name) != -1:
        self._fail(name, 'must be a positive device count or -1 (the remaining devices)')
    free = [name for name in MESH_AXES if getattr(self, name) == -1]
    if len(free) > 1:
      self._fail(free[1], f'only one mesh field may be -1 (mesh.{free[0]} is -1 already)')


# Fields that default to another field's value: (the field, the one it follows), per section.
_FOLLOWERS = {'model': (('num_kv_heads', 'num_heads'), ('num_decoder_layers', 'num_layers'))}
SECTIONS = {'model': ModelConfig, 'data': DataConfig, 'train': TrainConfig, 'opt': OptConfig,
            'mesh': MeshConfig}
PARALLEL_DOC = 'jit (sharded over the mesh) or pmap (data parallel over local devices)'


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A whole experiment, validated: its sections, how the step is parallelised, and any other
  sections the config carries for its own tools (a sweep's labels, a converted run's source),
  kept as they are."""

  model: ModelConfig
  data: DataConfig
  train: TrainConfig
  opt: OptConfig
  mesh: MeshConfig
  parallel: str = 'jit'
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.parallel not in PARALLEL:
      raise ConfigError(f'parallel={self.parallel!r} is invalid: must be one of '
                        f'{", ".join(PARALLEL)}')
    for name in ('fsdp', 'tensor'):
      if self.parallel == 'pmap' and getattr(self.mesh, name) != 1:
        raise ConfigError(f"mesh.{name}={getattr(self.mesh, name)} is invalid with "
                          "parallel='pmap' (data parallel only): must be 1; use parallel='jit' "
                          'to shard the model')
    self.model.check_length(self.data.seq_len, f'data.seq_len={self.data.seq_len}')
    if self.data.batch_size % self.train.grad_accum_steps:
      raise ConfigError(f'train.grad_accum_steps={self.train.grad_accum_steps} is invalid: must '
                        f'divide data.batch_size={self.data.batch_size}')
    if self.train.bleu_examples and self.model.family != 'encoder_decoder':
      raise ConfigError(f'train.bleu_examples={self.train.bleu_examples}: BLEU is for '
                        f'encoder_decoder models (this one is {self.model.family}); set it to 0')
    if self.model.parametrization == 'mup' and self.opt.name != 'adamw':
      raise ConfigError(f"opt.name={self.opt.name!r} is invalid: must be adamw with "
                        "model.parametrization='mup' (the muP learning-rate rules implemented "
                        "are Adam's)")

  @property
  def task(self) -> str:
    return self.model.task

  @classmethod
  def from_config(cls, config: Any) -> 'Experiment':
    """Validates an experiment ConfigDict (or a dict of sections, e.g. a run's config.json)."""
    if isinstance(config, Experiment):
      return config
    if 'model' not in config:
      ModelConfig.from_config(config)  # names what is missing
    sections = {}
    for name, section in SECTIONS.items():
      if name not in config:
        raise ConfigError(f'the config has no {name} section')
      sections[name] = section.from_values(dict(config[name].items()))
    extra = {k: _plain(v) for k, v in config.items() if k not in SECTIONS and k != 'parallel'}
    return cls(**sections, parallel=config.get('parallel', 'jit'), extra=extra)

  def to_dict(self) -> dict[str, Any]:
    """Every field, as the run's config.json holds it (and `from_config` reads it back). Fields
    that default to another one (num_kv_heads, num_decoder_layers) are written as None where
    they equal it, so that overriding the other one (fine-tuning a run with more heads) moves
    them along, as in the config file."""
    out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
    for section, followers in _FOLLOWERS.items():
      for follower, source in followers:
        if out[section][follower] == out[section][source]:
          out[section][follower] = None
    return {**out, 'parallel': self.parallel, **{k: _plain(v) for k, v in self.extra.items()}}

  def replace(self, **sections: Any) -> 'Experiment':
    """A copy with fields of some sections replaced and validated again, e.g.
    `replace(data={'seq_len': 512}, model={'vocab_size': 8000})`. A field that defaulted to
    another one (num_kv_heads, num_decoder_layers) follows it, as in a config file."""
    changed = {}
    for name, fields in sections.items():
      section, fields = getattr(self, name), dict(fields)
      for follower, source in _FOLLOWERS.get(name, ()):
        if source in fields and follower not in fields and (
            getattr(section, follower) == getattr(section, source)):
          fields[follower] = None
      changed[name] = dataclasses.replace(section, **fields)
    return dataclasses.replace(self, **changed)


def _plain(value: Any) -> Any:
  """A ConfigDict (or nested mapping) as plain dicts."""
  if hasattr(value, 'items'):
    return {k: _plain(v) for k, v in value.items()}
  return value


def base_config():
  """The ConfigDict of every section's defaults: the start of every config file (presets.py
  adds each family's style and sizes). Fields whose default is None keep their type for
  command-line overrides."""
  import ml_collections
  from ml_collections import config_dict
  config = ml_collections.ConfigDict()
  for name, section in SECTIONS.items():
    fields = ml_collections.ConfigDict()
    for f in dataclasses.fields(section):
      if f.default is None:
        fields[f.name] = config_dict.placeholder(f.type.__args__[0])
      else:
        fields[f.name] = f.default
    config[name] = fields
  config.parallel = 'jit'  # PARALLEL_DOC
  return config


def field_docs() -> dict[str, str]:
  """{'model.d_model': 'residual stream width', ...} for every field."""
  docs = {f'{name}.{f.name}': f.metadata['doc'] for name, section in SECTIONS.items()
          for f in dataclasses.fields(section)}
  return {**docs, 'parallel': PARALLEL_DOC}
