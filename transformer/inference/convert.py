"""Hugging Face checkpoints as runs of ours: GPT-2, BERT, Marian (the paper's translation model)
and Llama (with Mistral and Qwen2) (`python -m transformer.convert` runs `convert`).

DIR is what `save_pretrained` writes: config.json and model.safetensors (or a sharded
model-*.safetensors with its index, or pytorch_model.bin, read by torch with
weights_only=True: never unpickled otherwise), plus the tokenizer's files if it has one. The
run written to --to holds config.json (the experiment config, with the model section read from
the checkpoint's config and the tokenizer in --to/tokenizer), and a checkpoint at step 0 (the
parameters and a fresh optimizer state). `generate`, `viz`, `evaluate` and `ablation` read it
like any trained run; fine-tune it with

  python -m transformer.train --config=configs/finetune.py:runs/gpt2 --workdir=runs/gpt2-ft

Supported (config.json's model_type): gpt2 (GPT2LMHeadModel, GPT2Model); bert (BertForMaskedLM,
BertForPreTraining, BertModel with --head=classify, BertForSequenceClassification); marian
(MarianMTModel); llama, mistral, qwen2 (LlamaForCausalLM and the like: RoPE without rescaling,
no sliding window shorter than the model's positions). The logits equal the Hugging Face
model's within float32 rounding (tests/test_convert.py). Anything else - another architecture,
a missing file, weights whose shapes disagree with config.json, a weight we would not use -
ends with one line and exit code 2, and nothing under --to is written: the run is assembled
beside it and moved into place only when complete.
"""

import json
import os
import shutil
import tempfile
from typing import Any, Callable

import numpy as np

from transformer import files, presets
from transformer.config import Experiment, ModelConfig, base_config
from transformer.errors import ConfigError, first_line
from transformer.model import counting, models
from transformer.training import checkpoint, optim, step

HEADS = ('auto', 'lm', 'mlm', 'classify')
HF_ACTIVATIONS = {  # Hugging Face's names (ACT2FN) -> our model.activation
    'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh',
    'gelu_fast': 'gelu_tanh', 'relu': 'relu', 'silu': 'silu', 'swish': 'silu',
}
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                   'vocab.json', 'merges.txt', 'vocab.txt', 'source.spm', 'target.spm',
                   'added_tokens.json', 'tokenizer.model')


def _fail(message: str):
  raise ConfigError(message)


# --- reading a checkpoint ------------------------------------------------------------------------


def read_hf_config(directory: str) -> dict:
  path = os.path.join(directory, 'config.json')
  if not os.path.isfile(path):
    _fail(f'--from={directory}: config.json is missing (a directory written by save_pretrained '
          'holds it)')
  try:
    with open(path) as f:
      hf = json.load(f)
  except (OSError, ValueError) as e:
    _fail(f'--from={directory}: config.json is not readable JSON ({e})')
  if not isinstance(hf, dict):
    kind = {list: 'array', str: 'string', bool: 'boolean', int: 'number', float: 'number'}.get(
        type(hf), 'null')
    _fail(f'--from={directory}: config.json holds a JSON {kind}, not an object of model '
          'settings (save_pretrained writes one)')
  return hf


def read_hf_weights(directory: str) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint as a float32 NumPy array, by its Hugging Face name."""
  files = sorted(os.listdir(directory))
  index = os.path.join(directory, 'model.safetensors.index.json')
  if os.path.isfile(index):
    try:
      with open(index) as f:
        shards = sorted(set(json.load(f)['weight_map'].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
      _fail(f'--from={directory}: model.safetensors.index.json is not a readable index ({e!r})')
  else:
    shards = [n for n in files if n.endswith('.safetensors')]
  if shards:
    try:
      from safetensors import safe_open
    except ImportError:
      _fail(f"--from={directory}: reading safetensors needs the safetensors package (pip install "
            "-e '.[interop]')")
    weights = {}
    for name in shards:
      path = os.path.join(directory, name)
      if not os.path.isfile(path):
        _fail(f'--from={directory}: {name} is missing (named by model.safetensors.index.json)')
      try:
        with safe_open(path, framework='numpy') as f:
          for key in f.keys():
            weights[key] = np.asarray(f.get_tensor(key), np.float32)
      except TypeError as e:  # a dtype NumPy lacks (bfloat16)
        _fail(f'--from={directory}: {name} holds a dtype NumPy cannot read ({e}); save it in '
              'float32 or float16')
      except Exception as e:  # noqa: BLE001 - a corrupt or truncated file
        _fail(f'--from={directory}: {name} is not a readable safetensors file ({e})')
    return weights
  if 'pytorch_model.bin' in files:
    try:
      import torch
    except ImportError:
      _fail(f"--from={directory}: pytorch_model.bin needs torch to be read (pip install -e "
            "'.[interop]'); a model.safetensors does not")
    try:  # weights_only: tensors only, never arbitrary pickled objects
      state = torch.load(os.path.join(directory, 'pytorch_model.bin'), map_location='cpu',
                         weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt file, or one that is not only tensors
      _fail(f'--from={directory}: pytorch_model.bin could not be read with weights_only=True '
            f'({first_line(e, 200)})')
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
      _fail(f'--from={directory}: pytorch_model.bin does not hold a state dict of tensors')
    return {k: v.detach().float().numpy() for k, v in state.items()}
  _fail(f'--from={directory}: no weights (model.safetensors or pytorch_model.bin) in it')


def download(name: str) -> str:
  """A model name of the Hugging Face Hub, downloaded (or found in its cache); its directory."""
  try:
    from huggingface_hub import snapshot_download
  except ImportError:
    _fail(f"--from={name} is not a directory; downloading a model by name needs huggingface_hub "
          "(pip install -e '.[interop]')")
  patterns = ['config.json', *TOKENIZER_FILES]
  try:
    directory = snapshot_download(name, allow_patterns=patterns + ['*.safetensors',
                                                                   '*.safetensors.index.json'])
    if not any(n.endswith('.safetensors') for n in os.listdir(directory)):
      directory = snapshot_download(name, allow_patterns=patterns + ['pytorch_model.bin'])
  except Exception as e:  # noqa: BLE001 - no network, no such repository, no access
    _fail(f'--from={name} is not a directory and could not be downloaded ({first_line(e, 200)}); '
          'offline, pass a directory written by save_pretrained')
  return directory


# --- the architectures ---------------------------------------------------------------------------


def _activation(hf: dict, key: str) -> str:
  name = hf.get(key, 'gelu')
  if name not in HF_ACTIVATIONS:
    _fail(f'config.json: {key}={name!r} is not supported; supported: '
          f'{", ".join(sorted(HF_ACTIVATIONS))}')
  return HF_ACTIVATIONS[name]


def _require(hf: dict, key: str, allowed: Callable[[Any], bool], what: str, default=None):
  if not allowed(hf.get(key, default)):
    _fail(f'config.json: {key}={hf.get(key, default)!r} is not supported ({what})')


def gpt2_model(hf: dict, head: str) -> dict:
  if head not in ('auto', 'lm'):
    _fail(f'--head={head} is invalid for GPT-2: it has the lm head')
  _require(hf, 'scale_attn_weights', lambda v: v is True, 'attention scores are scaled', True)
  _require(hf, 'scale_attn_by_inverse_layer_idx', lambda v: not v, 'per-layer score scaling')
  _require(hf, 'add_cross_attention', lambda v: not v, 'a decoder-only model')
  d = hf['n_embd']
  return dict(
      family='decoder_only', head='lm', vocab_size=hf['vocab_size'], max_len=hf['n_positions'],
      num_layers=hf['n_layer'], d_model=d, num_heads=hf['n_head'], d_ff=hf.get('n_inner') or 4 * d,
      position='learned', activation=_activation(hf, 'activation_function'), norm='layernorm',
      norm_eps=hf.get('layer_norm_epsilon', 1e-5), pre_norm=True, embed_norm=False,
      dropout=hf.get('resid_pdrop', 0.1), attention_dropout=hf.get('attn_pdrop', 0.1),
      use_bias=True, logits_bias=False, tie_embeddings=hf.get('tie_word_embeddings', True),
      scale_embeddings=False, init_std=hf.get('initializer_range', 0.02))


def bert_model(hf: dict, head: str) -> dict:
  _require(hf, 'position_embedding_type', lambda v: v == 'absolute', 'absolute positions',
           'absolute')
  _require(hf, 'is_decoder', lambda v: not v, 'an encoder')
  if head == 'auto':
    architectures = hf.get('architectures') or ['BertForMaskedLM']
    head = ('classify' if architectures[0] in ('BertForSequenceClassification', 'BertModel')
            else 'mlm')  # BertModel: the pooler, and a classifier to fine-tune
  if head not in ('mlm', 'classify'):
    _fail(f'--head={head} is invalid for BERT: mlm or classify')
  return dict(
      family='encoder_only', head=head, num_classes=len(hf.get('id2label') or {0: 0, 1: 1}),
      pooling='first', vocab_size=hf['vocab_size'], type_vocab_size=hf.get('type_vocab_size', 2),
      max_len=hf['max_position_embeddings'], num_layers=hf['num_hidden_layers'],
      d_model=hf['hidden_size'], num_heads=hf['num_attention_heads'],
      d_ff=hf['intermediate_size'], position='learned', activation=_activation(hf, 'hidden_act'),
      norm='layernorm', norm_eps=hf.get('layer_norm_eps', 1e-12), pre_norm=False, embed_norm=True,
      dropout=hf.get('hidden_dropout_prob', 0.1),
      attention_dropout=hf.get('attention_probs_dropout_prob', 0.1), use_bias=True,
      tie_embeddings=hf.get('tie_word_embeddings', True), scale_embeddings=False,
      init_std=hf.get('initializer_range', 0.02))


def marian_model(hf: dict, head: str) -> dict:
  if head not in ('auto', 'lm'):
    _fail(f'--head={head} is invalid for Marian: it has the lm head')
  for a, b in (('encoder_attention_heads', 'decoder_attention_heads'),
               ('encoder_ffn_dim', 'decoder_ffn_dim')):
    if hf[a] != hf[b]:
      _fail(f'config.json: {a}={hf[a]} and {b}={hf[b]} differ; supported: the same in both stacks')
  if hf.get('decoder_vocab_size') not in (None, hf['vocab_size']):
    _fail(f'config.json: decoder_vocab_size={hf["decoder_vocab_size"]} differs from vocab_size='
          f'{hf["vocab_size"]}; supported: one vocabulary for source and target')
  _require(hf, 'normalize_before', lambda v: not v, 'post-LN blocks')
  _require(hf, 'normalize_embedding', lambda v: not v, 'no embedding norm')
  return dict(
      family='encoder_decoder', head='lm', vocab_size=hf['vocab_size'],
      max_len=hf['max_position_embeddings'], num_layers=hf['encoder_layers'],
      num_decoder_layers=hf['decoder_layers'], d_model=hf['d_model'],
      num_heads=hf['encoder_attention_heads'], d_ff=hf['encoder_ffn_dim'],
      position='sinusoidal', sinusoidal_layout='concat',
      activation=_activation(hf, 'activation_function'), norm='layernorm', norm_eps=1e-5,
      pre_norm=False, embed_norm=False, dropout=hf.get('dropout', 0.1),
      attention_dropout=hf.get('attention_dropout', 0.0), use_bias=True, logits_bias=True,
      tie_embeddings=hf.get('tie_word_embeddings', True),
      share_embeddings=hf.get('share_encoder_decoder_embeddings', True),
      scale_embeddings=bool(hf.get('scale_embedding', False)),
      init_std=hf.get('init_std', 0.02))


def _rope_base(hf: dict) -> float:
  """RoPE's base: transformers 5 writes rope_parameters, earlier versions rope_theta and
  rope_scaling; only the plain rotation (no long-context rescaling) is supported."""
  rope = dict(hf.get('rope_parameters') or {})
  scaling = hf.get('rope_scaling') or {}
  kind = rope.get('rope_type', scaling.get('rope_type', scaling.get('type', 'default')))
  if kind != 'default':
    _fail(f'config.json: rope_type={kind!r} is not supported (supported: default, the plain '
          'rotation)')
  return float(rope.get('rope_theta', hf.get('rope_theta', 10000.0)))


def llama_model(hf: dict, head: str) -> dict:
  """Llama, and Mistral and Qwen2, which differ from it only in options (Mistral: a sliding
  window, here only one that never slides; Qwen2: biases on query, key and value only)."""
  if head not in ('auto', 'lm'):
    _fail(f'--head={head} is invalid for {hf["model_type"]}: it has the lm head')
  D, N = hf['hidden_size'], hf['num_attention_heads']
  _require(hf, 'head_dim', lambda v: v in (None, D // N), f'head_dim = hidden_size / '
           f'num_attention_heads = {D // N}')
  _require(hf, 'hidden_act', lambda v: v in ('silu', 'swish'), 'SwiGLU: silu', 'silu')
  _require(hf, 'pretraining_tp', lambda v: v in (None, 1), 'one tensor-parallel slice')
  if hf.get('attention_bias', False) != hf.get('mlp_bias', False):
    _fail(f'config.json: attention_bias={hf.get("attention_bias")} and mlp_bias='
          f'{hf.get("mlp_bias")} differ; supported: both (model.use_bias) or neither')
  window = hf.get('sliding_window')
  if window is not None and hf.get('use_sliding_window', True) and (
      window < hf['max_position_embeddings']):
    _fail(f'config.json: sliding_window={window} is shorter than max_position_embeddings='
          f'{hf["max_position_embeddings"]}; supported: full causal attention (no window, or '
          'one at least as long as the model\'s positions)')
  return dict(
      family='decoder_only', head='lm', vocab_size=hf['vocab_size'],
      max_len=hf['max_position_embeddings'], num_layers=hf['num_hidden_layers'], d_model=D,
      num_heads=N, num_kv_heads=hf.get('num_key_value_heads') or N,
      d_ff=hf['intermediate_size'], position='rope', rope_base=_rope_base(hf),
      activation='swiglu', norm='rmsnorm', norm_eps=hf.get('rms_norm_eps', 1e-6), pre_norm=True,
      embed_norm=False, dropout=0.0, attention_dropout=hf.get('attention_dropout', 0.0),
      use_bias=bool(hf.get('attention_bias', False)), logits_bias=False,
      qkv_bias=True if hf['model_type'] == 'qwen2' else None,  # Qwen2: there, and only there
      tie_embeddings=hf.get('tie_word_embeddings', False), scale_embeddings=False,
      init_std=hf.get('initializer_range', 0.02))


class _Weights:
  """The checkpoint's tensors, taken by name (each once); names are normalised first."""

  def __init__(self, weights: dict[str, np.ndarray], prefixes: tuple[str, ...],
               ignored: tuple[str, ...]):
    self.arrays, self.used = {}, set()
    for name, array in weights.items():
      for prefix in prefixes:
        if name.startswith(prefix):
          name = name[len(prefix):]
          break
      name = name.replace('LayerNorm.gamma', 'LayerNorm.weight').replace(
          'LayerNorm.beta', 'LayerNorm.bias')
      if not any(name.endswith(suffix) or name.startswith(suffix) for suffix in ignored):
        self.arrays[name] = array

    self.fresh: list[str] = []  # parameters the checkpoint lacks, initialised here
    self.dropped: list[str] = []  # weights it has that the chosen head does not use

  def has(self, name: str) -> bool:
    return name in self.arrays

  def drop(self, prefix: str):
    """Weights of a head we do not build (e.g. BERT's pooler under the mlm head)."""
    names = [n for n in self.arrays if n.startswith(prefix)]
    self.used.update(names)
    if names:
      self.dropped.append(prefix.rstrip('.'))

  def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in self.arrays:
      _fail(f'the checkpoint has no weight {name}, which this architecture needs')
    array = self.arrays[name]
    if array.shape != tuple(shape):
      _fail(f'weight {name} is {array.shape} in the checkpoint; config.json implies '
            f'{tuple(shape)}')
    self.used.add(name)
    return array

  def check_all_used(self):
    unused = sorted(set(self.arrays) - self.used)
    if unused:
      more = f' (and {len(unused) - 3} more)' if len(unused) > 3 else ''
      _fail(f'the checkpoint has weights this architecture does not use: '
            f'{", ".join(unused[:3])}{more}; is it another variant of the model?')


def _linear(w: _Weights, name: str, d_in: int, d_out: int, bias: bool = True,
            transpose: bool = True) -> dict:
  """A torch Linear (out, in) or, transpose=False, a GPT-2 Conv1D (in, out) as a Dense."""
  kernel = w.get(f'{name}.weight', (d_out, d_in) if transpose else (d_in, d_out))
  out = {'kernel': kernel.T if transpose else kernel}
  if bias:
    out['bias'] = w.get(f'{name}.bias', (d_out,))
  return out


def _norm(w: _Weights, name: str, d: int) -> dict:
  return {'scale': w.get(f'{name}.weight', (d,)), 'bias': w.get(f'{name}.bias', (d,))}


def _attention(cfg: ModelConfig, q: dict, k: dict, v: dict, out: dict) -> dict:
  """Dense (D, D) projections -> our (D, N, H) query/key/value and (N, H, D) output."""
  D, N, H = cfg.d_model, cfg.num_heads, cfg.head_dim
  split = lambda p: {'kernel': p['kernel'].reshape(D, N, H), 'bias': p['bias'].reshape(N, H)}
  return {'query': split(q), 'key': split(k), 'value': split(v),
          'out': {'kernel': out['kernel'].reshape(N, H, D), 'bias': out['bias']}}


def _unembed(cfg: ModelConfig, w: _Weights, name: str, table: np.ndarray) -> dict:
  """An untied output projection (V, D) as our (D, V) kernel; a tied one must be the table."""
  if cfg.tie_embeddings:
    if w.has(name) and not np.array_equal(w.get(name, table.shape), table):
      _fail(f'config.json ties the output to the embeddings (tie_word_embeddings), but the '
            f'checkpoint\'s {name} differs from them')
    return {}
  return {'kernel': w.get(name, (cfg.vocab_size, cfg.d_model)).T}


def gpt2_params(cfg: ModelConfig, w: _Weights) -> dict:
  D, F, V = cfg.d_model, cfg.d_ff, cfg.vocab_size
  embedder = {'embedding': w.get('wte.weight', (V, D)),
              'positions': {'embedding': w.get('wpe.weight', (cfg.max_len, D))}}
  decoder = {'final_norm': _norm(w, 'ln_f', D)}
  for i in range(cfg.num_layers):
    p = f'h.{i}'
    qkv = _linear(w, f'{p}.attn.c_attn', D, 3 * D, transpose=False)
    q, k, v = ({'kernel': kernel, 'bias': bias} for kernel, bias in
               zip(np.split(qkv['kernel'], 3, axis=1), np.split(qkv['bias'], 3)))
    decoder[f'layers_{i}'] = {
        'attention': _attention(cfg, q, k, v,
                                _linear(w, f'{p}.attn.c_proj', D, D, transpose=False)),
        'attention_norm': _norm(w, f'{p}.ln_1', D), 'mlp_norm': _norm(w, f'{p}.ln_2', D),
        'mlp': {'wi': _linear(w, f'{p}.mlp.c_fc', D, F, transpose=False),
                'wo': _linear(w, f'{p}.mlp.c_proj', F, D, transpose=False)}}
  params = {'embedder': embedder, 'decoder': decoder}
  lm_head = _unembed(cfg, w, 'lm_head.weight', embedder['embedding'])
  if lm_head:
    params['lm_head'] = lm_head
  return params


def bert_params(cfg: ModelConfig, w: _Weights) -> dict:
  D, F, V = cfg.d_model, cfg.d_ff, cfg.vocab_size
  e = 'embeddings'
  params = {'embedder': {
      'embedding': w.get(f'{e}.word_embeddings.weight', (V, D)),
      'positions': {'embedding': w.get(f'{e}.position_embeddings.weight', (cfg.max_len, D))},
      'type_embedding': w.get(f'{e}.token_type_embeddings.weight', (cfg.type_vocab_size, D)),
      'norm': _norm(w, f'{e}.LayerNorm', D)}}
  encoder = {}
  for i in range(cfg.num_layers):
    p = f'encoder.layer.{i}'
    a = f'{p}.attention'
    encoder[f'layers_{i}'] = {
        'attention': _attention(cfg, _linear(w, f'{a}.self.query', D, D),
                                _linear(w, f'{a}.self.key', D, D),
                                _linear(w, f'{a}.self.value', D, D),
                                _linear(w, f'{a}.output.dense', D, D)),
        'attention_norm': _norm(w, f'{a}.output.LayerNorm', D),
        'mlp': {'wi': _linear(w, f'{p}.intermediate.dense', D, F),
                'wo': _linear(w, f'{p}.output.dense', F, D)},
        'mlp_norm': _norm(w, f'{p}.output.LayerNorm', D)}
  params['encoder'] = encoder
  if cfg.head == 'mlm':
    w.drop('pooler.')
    t = 'cls.predictions.transform'
    params['mlm_dense'] = _linear(w, f'{t}.dense', D, D)
    params['mlm_norm'] = _norm(w, f'{t}.LayerNorm', D)
    bias = w.get('cls.predictions.bias', (V,))
    if w.has('cls.predictions.decoder.bias'):  # the same tensor, saved twice by older versions
      w.get('cls.predictions.decoder.bias', (V,))
    params['lm_head'] = {'bias': bias, **_unembed(cfg, w, 'cls.predictions.decoder.weight',
                                                  params['embedder']['embedding'])}
  else:  # BERT's pooler and classifier; fresh (to fine-tune) where the checkpoint has none
    w.drop('cls.')
    params['pooler'] = _linear_or_fresh(cfg, w, 'pooler.dense', 'pooler', D, D)
    params['classifier'] = _linear_or_fresh(cfg, w, 'classifier', 'classifier', D,
                                            cfg.num_classes)
  return params


def _linear_or_fresh(cfg: ModelConfig, w: _Weights, name: str, ours: str, d_in: int,
                     d_out: int) -> dict:
  if w.has(f'{name}.weight'):
    return _linear(w, name, d_in, d_out)
  w.fresh.append(ours)
  rng = np.random.default_rng(len(w.fresh))
  return {'kernel': (cfg.init_std * rng.standard_normal((d_in, d_out))).astype(np.float32),
          'bias': np.zeros((d_out,), np.float32)}


def marian_params(cfg: ModelConfig, w: _Weights) -> dict:
  D, F, V = cfg.d_model, cfg.d_ff, cfg.vocab_size

  def attention(p):
    return _attention(cfg, *(_linear(w, f'{p}.{n}_proj', D, D) for n in ('q', 'k', 'v', 'out')))

  def mlp(p):
    return {'wi': _linear(w, f'{p}.fc1', D, F), 'wo': _linear(w, f'{p}.fc2', F, D)}

  encoder, decoder = {}, {}
  for i in range(cfg.num_layers):
    p = f'encoder.layers.{i}'
    encoder[f'layers_{i}'] = {
        'attention': attention(f'{p}.self_attn'),
        'attention_norm': _norm(w, f'{p}.self_attn_layer_norm', D),
        'mlp': mlp(p), 'mlp_norm': _norm(w, f'{p}.final_layer_norm', D)}
  for i in range(cfg.num_decoder_layers):
    p = f'decoder.layers.{i}'
    decoder[f'layers_{i}'] = {
        'self_attention': attention(f'{p}.self_attn'),
        'self_attention_norm': _norm(w, f'{p}.self_attn_layer_norm', D),
        'cross_attention': attention(f'{p}.encoder_attn'),
        'cross_attention_norm': _norm(w, f'{p}.encoder_attn_layer_norm', D),
        'mlp': mlp(p), 'mlp_norm': _norm(w, f'{p}.final_layer_norm', D)}
  params = {'encoder': encoder, 'decoder': decoder}
  if cfg.share_embeddings:
    shared = w.get('shared.weight', (V, D))
    for name in ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight'):
      if w.has(name) and not np.array_equal(w.get(name, (V, D)), shared):
        _fail(f'config.json shares the embeddings (share_encoder_decoder_embeddings), but the '
              f'checkpoint\'s {name} differs from shared.weight')
    params['embedder'] = {'embedding': shared}
    target = shared
  else:
    if w.has('shared.weight'):
      w.get('shared.weight', (V, D))
    params['source_embedder'] = {'embedding': w.get('encoder.embed_tokens.weight', (V, D))}
    params['target_embedder'] = {'embedding': w.get('decoder.embed_tokens.weight', (V, D))}
    target = params['target_embedder']['embedding']
  bias = (w.get('final_logits_bias', (1, V))[0] if w.has('final_logits_bias')
          else np.zeros((V,), np.float32))  # Hugging Face too starts it at zeros when absent
  params['lm_head'] = {'bias': bias,
                       **_unembed(cfg, w, 'lm_head.weight', target)}
  return params


def llama_params(cfg: ModelConfig, w: _Weights) -> dict:
  D, F, V, H = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.head_dim
  N, K, bias = cfg.num_heads, cfg.num_kv_heads, cfg.use_bias
  qkv_bias = bias if cfg.qkv_bias is None else cfg.qkv_bias
  heads = lambda p, n: {name: a.reshape(D, n, H) if name == 'kernel' else a.reshape(n, H)
                        for name, a in p.items()}
  embedding = w.get('embed_tokens.weight', (V, D))
  decoder = {'final_norm': {'scale': w.get('norm.weight', (D,))}}
  for i in range(cfg.num_layers):
    a, m = f'layers.{i}.self_attn', f'layers.{i}.mlp'
    out = _linear(w, f'{a}.o_proj', N * H, D, bias)
    decoder[f'layers_{i}'] = {
        'attention': {'query': heads(_linear(w, f'{a}.q_proj', D, N * H, qkv_bias), N),
                      'key': heads(_linear(w, f'{a}.k_proj', D, K * H, qkv_bias), K),
                      'value': heads(_linear(w, f'{a}.v_proj', D, K * H, qkv_bias), K),
                      'out': {**out, 'kernel': out['kernel'].reshape(N, H, D)}},
        'attention_norm': {'scale': w.get(f'layers.{i}.input_layernorm.weight', (D,))},
        'mlp_norm': {'scale': w.get(f'layers.{i}.post_attention_layernorm.weight', (D,))},
        'mlp': {'wi': _linear(w, f'{m}.up_proj', D, F, bias),
                'wi_gate': _linear(w, f'{m}.gate_proj', D, F, bias),
                'wo': _linear(w, f'{m}.down_proj', F, D, bias)}}
  params = {'embedder': {'embedding': embedding}, 'decoder': decoder}
  lm_head = _unembed(cfg, w, 'lm_head.weight', embedding)
  if lm_head:
    params['lm_head'] = lm_head
  return params


# model_type -> (model section, parameters, name prefixes to strip, names to ignore)
ARCHITECTURES = {
    'gpt2': (gpt2_model, gpt2_params, ('transformer.',),
             ('.attn.bias', '.attn.masked_bias')),  # the causal-mask buffers of old versions
    'bert': (bert_model, bert_params, ('bert.',),
             ('embeddings.position_ids', 'cls.seq_relationship.')),  # a buffer; NSP head
    'marian': (marian_model, marian_params, ('model.',),
               ('embed_positions.weight',)),  # sinusoids, recomputed (as Hugging Face does)
    'llama': (llama_model, llama_params, ('model.',), ('.rotary_emb.inv_freq',)),  # a buffer
    'mistral': (llama_model, llama_params, ('model.',), ('.rotary_emb.inv_freq',)),
    'qwen2': (llama_model, llama_params, ('model.',), ('.rotary_emb.inv_freq',)),
}


def convert_checkpoint(directory: str, head: str = 'auto') -> tuple[dict, dict, dict, dict]:
  """(Hugging Face config, our model section, our parameters, notes) of a saved model; notes
  name the parameters initialised fresh and the checkpoint's heads left out."""
  hf = read_hf_config(directory)
  model_type = hf.get('model_type')
  if model_type not in ARCHITECTURES:
    _fail(f'--from={directory}: model_type={model_type!r} (config.json) is not supported; '
          f'supported: {", ".join(ARCHITECTURES)}')
  model_fn, params_fn, prefixes, ignored = ARCHITECTURES[model_type]
  try:
    fields = model_fn(hf, head)
  except KeyError as e:
    _fail(f'--from={directory}: config.json has no {e.args[0]}, which {model_type} needs')
  try:
    cfg = ModelConfig(**fields)
  except ConfigError as e:
    _fail(f'--from={directory}: config.json gives an unsupported model ({e})')
  weights = read_hf_weights(directory)
  w = _Weights(weights, prefixes, ignored)
  params = params_fn(cfg, w)
  w.check_all_used()
  return hf, fields, params, {'fresh': w.fresh, 'dropped': w.dropped}


# --- writing the run -----------------------------------------------------------------------------


def experiment_config(fields: dict, hf: dict, tokenizer_dir: str | None):
  """The run's experiment config: its family's base, the converted model, fine-tuning defaults
  (AdamW, small learning rate, linear decay), and the model's tokenizer."""
  config = presets.get_config(fields['family'], None)
  for name, value in fields.items():
    config.model[name] = value
  # Pretrained fields the family preset sets but the checkpoint does not: back to the base.
  base = base_config().model
  for name in config.model.keys():
    if name not in fields and name not in ('attention_impl', 'scan_layers', 'remat',
                                           'remat_policy', 'dtype', 'param_dtype'):
      config.model[name] = base[name]
  d = config.data
  d.seq_len = min(fields['max_len'], 256)
  d.batch_size = 8
  if tokenizer_dir:
    d.tokenizer, d.hf_tokenizer = 'huggingface', os.path.abspath(tokenizer_dir)
  t, o = config.train, config.opt
  t.num_steps, t.eval_every, t.checkpoint_every, t.log_every = 1000, 250, 250, 25
  o.name, o.lr, o.schedule, o.warmup_steps, o.final_lr_ratio = 'adamw', 5e-5, 'linear', 100, 0.0
  o.weight_decay, o.b2, o.clip_norm = 0.01, 0.999, 1.0
  config.pretrained = {'source': hf.get('_name_or_path', ''), 'model_type': hf['model_type'],
                       'architectures': list(hf.get('architectures') or [])}
  if fields['head'] == 'classify' and hf.get('id2label'):  # the class names, for export
    config.pretrained['labels'] = [str(hf['id2label'][k]) for k in sorted(hf['id2label'], key=int)]
  return config


def _tokenizer_files(directory: str) -> list[str]:
  return [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(directory, n))]


def read_tokenizer(directory: str):
  """The checkpoint's tokenizer (transformers.AutoTokenizer), or None if it has none."""
  if not _tokenizer_files(directory):
    return None
  try:
    from transformers import AutoTokenizer
  except ImportError:
    _fail(f"--from={directory}: reading its tokenizer needs transformers (pip install -e "
          "'.[interop]')")
  try:
    return AutoTokenizer.from_pretrained(directory)
  except (ImportError, OSError, ValueError, TypeError, KeyError) as e:
    _fail(f'--from={directory}: its tokenizer could not be read ({first_line(e, 200)})')


def write_run(workdir: str, experiment: Experiment, params: dict, tokenizer):
  """config.json, the tokenizer and a step-0 checkpoint, into `workdir` (which must not exist)."""
  import jax
  tx, _ = optim.make_optimizer(experiment.opt, experiment.train.num_steps, experiment.model)
  state = step.TrainState(step=np.int32(0), params=jax.tree.map(np.asarray, params),
                          opt_state=jax.device_get(tx.init(params)))
  os.makedirs(workdir)
  if tokenizer is not None:
    tokenizer.save_pretrained(os.path.join(workdir, 'tokenizer'))
  files.write_json(os.path.join(workdir, 'config.json'), experiment.to_dict())
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'))
  ckpts.save(0, state, {}, {'wall_seconds': 0.0,
                            'converted_from': experiment.extra['pretrained']['source']})
  ckpts.close()


def _check_params(cfg: ModelConfig, params: dict):
  """The converted tree must be exactly our model's (names, shapes)."""
  import jax
  want = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
  for extra, missing in ((want, params), (params, want)):
    mismatch = models.first_mismatch(extra, missing)
    if mismatch:
      raise AssertionError(f'converted parameter {mismatch[0]} is missing or misshapen')


def check_destination(out: str, overwrite: bool, what: str):
  """--to must be local, and new or empty unless --overwrite (which replaces it only after
  success)."""
  if files.is_remote(out):
    _fail(f'--to={out}: the {what} writes a local directory (a gs:// one is not supported); '
          'write it locally, then copy it (gcloud storage cp -r)')
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not overwrite:
    _fail(f'--to={out} already exists and is not empty; choose a new directory, or pass '
          f'--overwrite to replace it once the {what} has succeeded')


def write_beside(out: str, write: Callable[[str], None], label: str):
  """Calls write(DIR) for a DIR that does not exist yet, beside `out`, then moves DIR into place:
  an existing `out` is replaced only once DIR is complete (and put back if the move fails), and
  nothing half-written is left (the staging directory .NAME.LABEL-* goes in every case)."""
  parent = os.path.dirname(out)
  try:
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(out)}.{label}-', dir=parent)
  except OSError as e:
    _fail(f'--to={out}: cannot write in {parent} ({e.strerror or e})')
  try:
    new, old = os.path.join(staging, 'new'), os.path.join(staging, 'old')
    write(new)
    if os.path.exists(out):
      os.rename(out, old)
    try:
      os.rename(new, out)
    except OSError:
      if os.path.exists(old):
        os.rename(old, out)  # the previous one back before the staging area goes
      raise
  except OSError as e:  # a full disk, say
    _fail(f'--to={out}: writing failed ({first_line(e, 200)}); nothing was replaced')
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def convert(source: str, workdir: str, head: str = 'auto', overwrite: bool = False) -> dict:
  """Converts `source` (a directory, or a Hub model name) into a run in `workdir`; returns its
  summary. Raises ConfigError (nothing written) on anything unsupported."""
  if head not in HEADS:
    _fail(f'--head={head} is invalid: must be one of {", ".join(HEADS)}')
  check_destination(workdir, overwrite, 'conversion')
  workdir = os.path.abspath(workdir)
  if files.is_remote(source):
    _fail(f'--from={source}: a Hugging Face checkpoint is read from a local directory or the '
          'Hub; copy it here first (gcloud storage cp -r)')
  directory = source if os.path.isdir(source) else download(source)
  inside = os.path.commonpath([workdir, os.path.abspath(directory)]) == workdir
  if inside:
    _fail(f'--to={workdir} holds the checkpoint being converted (--from={source}); choose '
          'another directory')
  hf, fields, params, notes = convert_checkpoint(directory, head)
  if not hf.get('_name_or_path'):
    hf['_name_or_path'] = source
  tokenizer = read_tokenizer(directory)
  experiment = Experiment.from_config(experiment_config(
      fields, hf, os.path.join(workdir, 'tokenizer') if tokenizer else None))
  cfg = experiment.model
  _check_params(cfg, params)
  write_beside(workdir, lambda new: write_run(new, experiment, params, tokenizer), 'converting')
  return dict(workdir=workdir, model_type=hf['model_type'], family=fields['family'],
              head=fields['head'], params=counting.param_counts(cfg)['params'],
              tokenizer=bool(tokenizer), **notes)
