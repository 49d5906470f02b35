"""Experiment configs: the commented base ConfigDict, family styles and named sizes.

Config files in configs/ are thin: `get_config(arg)` calls `get_config(family, arg)` here, where
`arg` names a size from SIZES ('tiny', 'gpt2-small', 'transformer-base', ...). Variants are
generated from the base, never copied.
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from transformer.config import ConfigError


def base_config() -> ml_collections.ConfigDict:
  """Every field, with its meaning. Family styles and sizes override some of them."""
  c = ml_collections.ConfigDict()

  c.model = m = ml_collections.ConfigDict()
  m.family = 'decoder_only'  # encoder_only (BERT), decoder_only (GPT) or encoder_decoder (paper)
  m.head = 'lm'  # output head: lm (decoder_only, encoder_decoder); mlm or classify (encoder_only)
  m.num_classes = 2  # classes of the classify head
  m.pooling = 'first'  # classify head input: first token ([CLS]) or mean over real tokens
  m.vocab_size = 256  # tokens; 256 is the byte-level tokenizer
  m.type_vocab_size = 0  # token-type (segment A/B) embeddings, BERT: 2; 0 = none
  m.max_len = 512  # longest sequence a learned position table holds
  m.num_layers = 2  # blocks per stack (the encoder's, for encoder_decoder)
  m.num_decoder_layers = config_dict.placeholder(int)  # decoder blocks; None = num_layers
  m.d_model = 64  # residual stream width
  m.num_heads = 4  # query heads; head size is d_model / num_heads
  m.num_kv_heads = config_dict.placeholder(int)  # key/value heads (GQA/MQA); None = num_heads
  m.d_ff = 256  # hidden width of the feed-forward sublayer
  m.position = 'learned'  # sinusoidal, learned, rope, alibi or none
  m.sinusoidal_layout = 'interleaved'  # sinusoidal: sin and cos interleaved (the paper's
  #   formula, dimension 2i and 2i+1) or concat (all sines, then all cosines: tensor2tensor, Marian)
  m.rope_base = 10000.0  # RoPE wavelength base
  m.activation = 'gelu_tanh'  # feed-forward: relu, gelu (exact), gelu_tanh (GPT-2), silu
  #   (Marian's swish), swiglu (gated)
  m.norm = 'layernorm'  # layernorm or rmsnorm
  m.norm_eps = 1e-5  # epsilon of every norm
  m.pre_norm = True  # True: x + f(norm(x)) (GPT-2); False: norm(x + f(x)) (the paper, BERT)
  m.embed_norm = False  # a norm right after the embeddings (BERT)
  m.dropout = 0.1  # on embeddings and on every sublayer output before the residual add
  m.attention_dropout = 0.0  # on attention weights (einsum attention only)
  m.use_bias = True  # biases in attention and feed-forward projections
  m.logits_bias = False  # a bias on the output logits (the masked-LM head always has one)
  m.tie_embeddings = True  # output projection = input embedding table (transposed)
  m.share_embeddings = True  # encoder_decoder: one embedding table for source and target
  m.scale_embeddings = False  # multiply embeddings by sqrt(d_model) (the paper)
  m.init_std = 0.02  # std of normal initialisation; residual outputs get 1/sqrt(2L) of it
  m.parametrization = 'sp'  # sp (standard) or mup (Yang et al. 2022: hyperparameters tuned at
  #   width mup_base_d_model transfer to wider models; AdamW only; see transformer/optim.py)
  m.mup_base_d_model = 128  # mup: the base width, where muP equals SP and hyperparameters are
  #   tuned; width multiplier m = d_model / mup_base_d_model (d_ff assumed to grow with d_model,
  #   num_heads fixed: the head size grows)
  m.attention_impl = 'einsum'  # einsum, or xla / cudnn (jax.nn.dot_product_attention)
  m.scan_layers = False  # stack blocks with nn.scan: compile time flat in depth
  m.remat = False  # rematerialise each block in the backward pass: less memory, more compute
  m.remat_policy = 'full'  # with remat, what the forward pass keeps: full (only each block's
  #   input; everything else recomputed), dots (every matmul output, attention scores too),
  #   dots_no_batch (projection and feed-forward outputs, not the T x S attention scores)
  m.dtype = 'float32'  # compute dtype: float32 or bfloat16 (softmax and norms stay float32)
  m.param_dtype = 'float32'  # parameter (and optimizer state) dtype

  c.data = d = ml_collections.ConfigDict()
  d.dataset = 'shakespeare'  # see transformer/data/datasets.py: shakespeare (embedded, offline),
  #   tiny_shakespeare, lm1b, wmt14_translate/de-en, wmt17_translate/de-en, imdb_reviews,
  #   glue/sst2, or a synthetic task: copy, reverse, sort, addition, recall
  d.seq_len = 256  # tokens per row (source and target each, for encoder_decoder)
  d.batch_size = 32  # rows per step, summed over all devices and hosts
  d.data_dir = ''  # TFDS data directory and tokenizer cache; '' = $TFDS_DATA_DIR or
  #   ~/tensorflow_datasets
  d.train_split = ''  # TFDS split to train on, e.g. 'train[:90%]'; '' = the dataset's own
  d.eval_split = ''  # TFDS split to evaluate on; '' = the dataset's own held-out split
  d.tokenizer = 'byte'  # byte (256 ids, nothing to train), sentencepiece, or huggingface (a
  #   pretrained model's, from data.hf_tokenizer; transformer/convert.py sets both)
  d.hf_tokenizer = ''  # huggingface: a directory written by save_pretrained
  d.vocab_size = 8000  # sentencepiece: pieces to train (or to expect of data.spm_model; 0 = any)
  d.spm_model = ''  # sentencepiece: a model file; '' = train on the training split and cache it
  d.spm_type = 'unigram'  # sentencepiece: unigram or bpe
  d.spm_examples = 200_000  # sentencepiece: training examples to learn the vocabulary from
  d.pack = True  # pack several documents into each row (segment ids keep them apart)
  d.mask_rate = 0.15  # masked LM: fraction of tokens to predict (80% masked, 10% random, 10% kept)
  d.source_lang = 'en'  # translation: source language
  d.target_lang = 'de'  # translation: target language
  d.synthetic_len = 16  # synthetic tasks: longest sequence (addition: digits per operand)
  d.recall_distance = 16  # synthetic recall: characters between the stored pair and the query
  d.num_workers = 0  # grain worker processes (0: read in the training process)
  d.read_threads = 0  # threads reading records; 8-16 pay off on remote file systems (GCS)
  d.prefetch = 4  # batches prepared ahead by a background thread (0: none)

  c.train = t = ml_collections.ConfigDict()
  t.num_steps = 2000  # optimizer steps
  t.seed = 0  # seeds initialisation, dropout and data order
  t.log_every = 50  # steps between metric records (the only host-device syncs of the loop)
  t.eval_every = 500  # steps between evaluations on the held-out split (and at the end)
  t.eval_batches = 20  # batches per evaluation; 0 = the whole held-out split
  t.bleu_examples = 0  # encoder_decoder: held-out examples decoded for BLEU at each evaluation
  t.bleu_beam_size = 4  # ... by beam search with this many beams (1 = greedy)
  t.bleu_alpha = 0.6  # ... and this length penalty ((5 + length) / 6)^alpha
  t.bleu_tokenize = '13a'  # sacrebleu's tokenizer: 13a (words, WMT's), intl, char, none
  t.checkpoint_every = 500  # steps between checkpoints (and at the end)
  t.keep_checkpoints = 3  # newest checkpoints kept
  t.label_smoothing = 0.0  # target smoothing (the paper: 0.1)
  t.grad_accum_steps = 1  # micro-batches per step (same result, less memory)
  t.sample_tokens = 0  # language models: tokens to sample at the end (0 = none)
  t.sample_prompt = ''  # ... continuing this text
  t.sample_temperature = 0.8  # ... at this temperature (0 = greedy)
  t.init_from = ''  # a run (e.g. written by transformer.convert) whose newest parameters start
  #   this one: fine-tuning (configs/finetune.py sets it). Parameters it lacks (a new head)
  #   start fresh; used only while --workdir has no checkpoint of its own

  c.opt = o = ml_collections.ConfigDict()
  o.name = 'adamw'  # adamw, adafactor or sgd
  o.lr = 1e-3  # peak learning rate
  o.schedule = 'cosine'  # constant, cosine, linear (after warmup) or rsqrt (the paper's)
  o.warmup_steps = 100  # linear warmup from 0 to lr
  o.final_lr_ratio = 0.1  # cosine / linear: end at lr * final_lr_ratio
  o.weight_decay = 0.1  # decoupled weight decay (AdamW; coupled for SGD)
  o.decay_all_params = False  # False: no decay on norms, biases and embedding tables
  o.clip_norm = 1.0  # global gradient-norm clipping; 0 = off
  o.b1 = 0.9  # AdamW first-moment decay
  o.b2 = 0.95  # AdamW second-moment decay
  o.eps = 1e-8  # AdamW epsilon
  o.momentum = 0.9  # SGD momentum (0 = plain SGD)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel devices; -1 = all the others
  c.mesh.fsdp = 1  # devices sharding parameters and optimizer state (ZeRO-3 style)
  c.mesh.tensor = 1  # devices sharding heads and feed-forward width (Megatron style)
  c.parallel = 'jit'  # jit (sharded over the mesh) or pmap (data parallel)
  return c


# Architecture of each family's reference model; sizes below only set widths and depths.
# The default datasets work offline (the embedded corpus; a synthetic task).
FAMILY_STYLES = {
    'encoder_only': dict(  # BERT (Devlin et al. 2019)
        head='mlm', position='learned', activation='gelu', norm_eps=1e-12, pre_norm=False,
        embed_norm=True, type_vocab_size=2, attention_dropout=0.1),
    'decoder_only': dict(  # GPT-2 (Radford et al. 2019)
        head='lm', position='learned', activation='gelu_tanh', norm_eps=1e-5, pre_norm=True),
    'encoder_decoder': dict(  # the translation Transformer (Vaswani et al. 2017)
        head='lm', position='sinusoidal', activation='relu', norm_eps=1e-6, pre_norm=False,
        scale_embeddings=True, share_embeddings=True, tie_embeddings=True),
}


FAMILY_DATASETS = {'encoder_only': 'shakespeare', 'decoder_only': 'shakespeare',
                   'encoder_decoder': 'reverse'}


@dataclasses.dataclass(frozen=True)
class Size:
  family: str | None  # None: any family
  num_layers: int
  d_model: int
  num_heads: int
  d_ff: int
  vocab_size: int = 256
  max_len: int = 512
  seq_len: int = 256
  dropout: float | None = None  # None: the family style's
  overrides: dict | None = None  # {section: {field: value}}: e.g. the paper's data and recipe


# The paper's setup: WMT 2014 English-German, shared 37000-token BPE, Adam (b2 0.98, eps 1e-9)
# with the rsqrt schedule (4000 warmup steps, lr = (d_model * warmup)^-1/2), label smoothing 0.1.
def _paper(d_model: int) -> dict:
  return dict(
      data=dict(dataset='wmt14_translate/de-en', tokenizer='sentencepiece', spm_type='bpe',
                vocab_size=37000),
      opt=dict(schedule='rsqrt', warmup_steps=4000, lr=(d_model * 4000) ** -0.5, b2=0.98,
               eps=1e-9, weight_decay=0.0, clip_norm=0.0),
      train=dict(label_smoothing=0.1, num_steps=100_000))


SIZES = {
    # Any family, byte vocabulary: for tests, laptops and Colab CPU runtimes.
    'tiny': Size(None, 2, 64, 4, 256, max_len=256, seq_len=64),
    'mini': Size(None, 4, 256, 4, 1024, seq_len=256),
    'small': Size(None, 6, 384, 6, 1536, seq_len=256),
    # Vaswani et al. 2017, Table 3 (shared 37000-token BPE vocabulary).
    'transformer-base': Size('encoder_decoder', 6, 512, 8, 2048, 37000, 1024, 256, 0.1,
                             _paper(512)),
    'transformer-big': Size('encoder_decoder', 6, 1024, 16, 4096, 37000, 1024, 256, 0.3,
                            _paper(1024)),
    # Devlin et al. 2019 (WordPiece vocabulary of 30522, 512 positions).
    'bert-base': Size('encoder_only', 12, 768, 12, 3072, 30522, 512, 512),
    'bert-large': Size('encoder_only', 24, 1024, 16, 4096, 30522, 512, 512),
    # Radford et al. 2019 (BPE vocabulary of 50257, 1024 positions).
    'gpt2-small': Size('decoder_only', 12, 768, 12, 3072, 50257, 1024, 1024),
    'gpt2-medium': Size('decoder_only', 24, 1024, 16, 4096, 50257, 1024, 1024),
    'gpt2-large': Size('decoder_only', 36, 1280, 20, 5120, 50257, 1024, 1024),
    'gpt2-xl': Size('decoder_only', 48, 1600, 25, 6400, 50257, 1024, 1024),
}


def sizes_for(family: str) -> list[str]:
  return [name for name, s in SIZES.items() if s.family in (None, family)]


def with_base(saved) -> ml_collections.ConfigDict:
  """A saved config (e.g. a run's config.json) on top of the base: fields added since it was
  written get their defaults, and fields it left at None keep their types for overrides."""
  config = base_config()
  for section, fields in saved.items():
    if section not in config or not isinstance(config[section], ml_collections.ConfigDict):
      config[section] = fields
      continue
    for name, value in fields.items():
      if value is not None or name not in config[section]:
        config[section][name] = value
  return config


def get_config(family: str, size: str | None = 'tiny') -> ml_collections.ConfigDict:
  """The base config in `family`'s style at the named size."""
  size = size or 'tiny'
  if size not in SIZES or SIZES[size].family not in (None, family):
    raise ConfigError(f'size {size!r} is not a {family} preset; choose one of '
                      f'{", ".join(sizes_for(family))}')
  s = SIZES[size]
  config = base_config()
  config.model.family = family
  config.model.update(FAMILY_STYLES[family])
  config.data.dataset = FAMILY_DATASETS[family]
  config.model.update(num_layers=s.num_layers, d_model=s.d_model, num_heads=s.num_heads,
                      d_ff=s.d_ff, vocab_size=s.vocab_size, max_len=s.max_len)
  if s.dropout is not None:
    config.model.dropout = s.dropout
  for section, fields in (s.overrides or {}).items():
    config[section].update(fields)
  config.data.seq_len = s.seq_len
  return config
