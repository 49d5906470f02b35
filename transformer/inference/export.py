"""Runs of ours as Hugging Face models: the inverse of convert.py
(`python -m transformer.convert --to_hf --from=RUN --to=DIR` runs `export`).

DIR receives what `save_pretrained` writes: config.json, model.safetensors (float32) and, where
the run has a Hugging Face tokenizer (a converted run, or data.tokenizer=huggingface), the
tokenizer's files. `transformers.AutoModel*.from_pretrained(DIR)` then gives our logits.

Which Hugging Face architecture: encoder_only -> bert, encoder_decoder -> marian, decoder_only
-> gpt2 (learned positions) or llama (RoPE; qwen2 where only query, key and value have biases).
A model is exported only if importing the export gives back the same architecture: every
option that changes what the model computes is compared (`_refuse_inexpressible`), and one that
the target cannot express (ALiBi in a GPT-2, muP's multipliers, Marian with another norm epsilon)
ends the command with one line naming it. Dropout and initialisation are carried where the
target has them, never compared: they do not change the function. Nothing under --to is written
unless the export succeeds (assembled beside it, then moved into place).
"""

import dataclasses
import os

import jax
import numpy as np

from transformer import files
from transformer.config import ModelConfig
from transformer.data import pipeline, tokenizers
from transformer.errors import ConfigError, first_line
from transformer.inference import convert, trained
from transformer.model import models
from transformer.training import runs

# ours -> Hugging Face's name (the first of each in convert.HF_ACTIVATIONS)
ACTIVATIONS = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new', 'relu': 'relu', 'silu': 'silu'}
# Fields that do not change what a trained model computes (or only how it is compiled).
NOT_COMPARED = ('dropout', 'attention_dropout', 'init_std', 'attention_impl', 'scan_layers',
                'remat', 'remat_policy', 'dtype', 'param_dtype')


def _fail(message: str):
  raise ConfigError(message)


def target(cfg: ModelConfig) -> str:
  """The Hugging Face model_type a model of ours is written as."""
  if cfg.family == 'encoder_only':
    return 'bert'
  if cfg.family == 'encoder_decoder':
    return 'marian'
  if cfg.position != 'rope':
    return 'gpt2'
  return 'qwen2' if cfg.qkv_bias and not cfg.use_bias else 'llama'


def _activation(cfg: ModelConfig, model_type: str) -> str:
  if cfg.activation not in ACTIVATIONS:
    _fail(f'model.activation={cfg.activation!r} cannot be exported as Hugging Face '
          f'{model_type} (it has {", ".join(ACTIVATIONS)})')
  return ACTIVATIONS[cfg.activation]


# --- config.json ---------------------------------------------------------------------------------


def gpt2_config(cfg: ModelConfig, ids: dict) -> dict:
  return dict(
      architectures=['GPT2LMHeadModel'], vocab_size=cfg.vocab_size, n_positions=cfg.max_len,
      n_layer=cfg.num_layers, n_embd=cfg.d_model, n_head=cfg.num_heads, n_inner=cfg.d_ff,
      activation_function=_activation(cfg, 'gpt2'), layer_norm_epsilon=cfg.norm_eps,
      resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.attention_dropout,
      tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std,
      bos_token_id=ids.get('bos'), eos_token_id=ids.get('eos'), pad_token_id=ids.get('pad'))


def bert_config(cfg: ModelConfig, ids: dict) -> dict:
  classify = cfg.head == 'classify'
  return dict(
      architectures=['BertForSequenceClassification' if classify else 'BertForMaskedLM'],
      vocab_size=cfg.vocab_size, type_vocab_size=cfg.type_vocab_size,
      max_position_embeddings=cfg.max_len, num_hidden_layers=cfg.num_layers,
      hidden_size=cfg.d_model, num_attention_heads=cfg.num_heads, intermediate_size=cfg.d_ff,
      hidden_act=_activation(cfg, 'bert'), layer_norm_eps=cfg.norm_eps,
      hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
      tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std,
      pad_token_id=ids.get('pad', 0),
      **({'id2label': dict(enumerate(ids['labels']))} if classify else {}))


def marian_config(cfg: ModelConfig, ids: dict) -> dict:
  start = ids.get('bos', ids.get('pad'))
  return dict(
      architectures=['MarianMTModel'], vocab_size=cfg.vocab_size,
      decoder_vocab_size=cfg.vocab_size, max_position_embeddings=cfg.max_len,
      encoder_layers=cfg.num_layers, decoder_layers=cfg.num_decoder_layers, d_model=cfg.d_model,
      encoder_attention_heads=cfg.num_heads, decoder_attention_heads=cfg.num_heads,
      encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff,
      activation_function=_activation(cfg, 'marian'), dropout=cfg.dropout,
      attention_dropout=cfg.attention_dropout, scale_embedding=cfg.scale_embeddings,
      tie_word_embeddings=cfg.tie_embeddings,
      share_encoder_decoder_embeddings=cfg.share_embeddings, init_std=cfg.init_std,
      # Hugging Face starts the decoder with decoder_start_token_id: our runs start with BOS.
      pad_token_id=start, decoder_start_token_id=start, eos_token_id=ids.get('eos'),
      forced_eos_token_id=None)


def llama_config(cfg: ModelConfig, ids: dict) -> dict:
  model_type = target(cfg)
  fields = dict(
      vocab_size=cfg.vocab_size, max_position_embeddings=cfg.max_len,
      num_hidden_layers=cfg.num_layers, hidden_size=cfg.d_model,
      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.head_dim, intermediate_size=cfg.d_ff, hidden_act='silu',
      rms_norm_eps=cfg.norm_eps, rope_parameters={'rope_type': 'default',
                                                  'rope_theta': cfg.rope_base},
      attention_dropout=cfg.attention_dropout, tie_word_embeddings=cfg.tie_embeddings,
      initializer_range=cfg.init_std, bos_token_id=ids.get('bos'), eos_token_id=ids.get('eos'),
      pad_token_id=ids.get('pad'))
  if model_type == 'qwen2':
    return dict(architectures=['Qwen2ForCausalLM'], **fields)
  return dict(architectures=['LlamaForCausalLM'], attention_bias=cfg.use_bias,
              mlp_bias=cfg.use_bias, **fields)


# --- the tensors ---------------------------------------------------------------------------------


def _linear(p: dict, name: str, transpose: bool = True) -> dict:
  """Our Dense {'kernel' (in, out), 'bias'} as a torch Linear (out, in), or a GPT-2 Conv1D
  (in, out) with transpose=False."""
  kernel = p['kernel']
  out = {f'{name}.weight': kernel.T if transpose else kernel}
  if 'bias' in p:
    out[f'{name}.bias'] = p['bias']
  return out


def _flat(p: dict) -> dict:
  """Our query/key/value projection (D, N, H) as a Dense (D, N H)."""
  kernel = p['kernel']
  flat = {'kernel': kernel.reshape(kernel.shape[0], -1)}
  if 'bias' in p:
    flat['bias'] = p['bias'].reshape(-1)
  return flat


def _out(p: dict) -> dict:
  """Our output projection (N, H, D) as a Dense (N H, D)."""
  flat = dict(p)
  flat['kernel'] = p['kernel'].reshape(-1, p['kernel'].shape[-1])
  return flat


def _norm(p: dict, name: str) -> dict:
  out = {f'{name}.weight': p['scale']}
  if 'bias' in p:
    out[f'{name}.bias'] = p['bias']
  return out


def _attention(p: dict, names: tuple[str, str, str, str]) -> dict:
  out = {}
  for ours, theirs in zip(('query', 'key', 'value'), names[:3]):
    out.update(_linear(_flat(p[ours]), theirs))
  out.update(_linear(_out(p['out']), names[3]))
  return out


def _layers(stack: dict):
  return [stack[f'layers_{i}'] for i in range(sum(k.startswith('layers_') for k in stack))]


def gpt2_tensors(cfg: ModelConfig, params: dict) -> dict:
  t = {'transformer.wte.weight': params['embedder']['embedding'],
       'transformer.wpe.weight': params['embedder']['positions']['embedding'],
       **_norm(params['decoder']['final_norm'], 'transformer.ln_f')}
  for i, layer in enumerate(_layers(params['decoder'])):
    p, a = f'transformer.h.{i}', layer['attention']
    q, k, v = (_flat(a[n]) for n in ('query', 'key', 'value'))
    t.update(_linear({'kernel': np.concatenate([q['kernel'], k['kernel'], v['kernel']], 1),
                      'bias': np.concatenate([q['bias'], k['bias'], v['bias']])},
                     f'{p}.attn.c_attn', transpose=False))
    t.update(_linear(_out(a['out']), f'{p}.attn.c_proj', transpose=False))
    t.update(_norm(layer['attention_norm'], f'{p}.ln_1'))
    t.update(_norm(layer['mlp_norm'], f'{p}.ln_2'))
    t.update(_linear(layer['mlp']['wi'], f'{p}.mlp.c_fc', transpose=False))
    t.update(_linear(layer['mlp']['wo'], f'{p}.mlp.c_proj', transpose=False))
  if not cfg.tie_embeddings:
    t['lm_head.weight'] = params['lm_head']['kernel'].T
  return t


def bert_tensors(cfg: ModelConfig, params: dict) -> dict:
  e, b = params['embedder'], 'bert.embeddings'
  t = {f'{b}.word_embeddings.weight': e['embedding'],
       f'{b}.position_embeddings.weight': e['positions']['embedding'],
       f'{b}.token_type_embeddings.weight': e['type_embedding'],
       **_norm(e['norm'], f'{b}.LayerNorm')}
  for i, layer in enumerate(_layers(params['encoder'])):
    p = f'bert.encoder.layer.{i}'
    a = f'{p}.attention'
    t.update(_attention(layer['attention'], (f'{a}.self.query', f'{a}.self.key',
                                             f'{a}.self.value', f'{a}.output.dense')))
    t.update(_norm(layer['attention_norm'], f'{a}.output.LayerNorm'))
    t.update(_linear(layer['mlp']['wi'], f'{p}.intermediate.dense'))
    t.update(_linear(layer['mlp']['wo'], f'{p}.output.dense'))
    t.update(_norm(layer['mlp_norm'], f'{p}.output.LayerNorm'))
  if cfg.head == 'mlm':
    c = 'cls.predictions'
    t.update(_linear(params['mlm_dense'], f'{c}.transform.dense'))
    t.update(_norm(params['mlm_norm'], f'{c}.transform.LayerNorm'))
    t[f'{c}.bias'] = params['lm_head']['bias']
    if not cfg.tie_embeddings:
      t[f'{c}.decoder.weight'] = params['lm_head']['kernel'].T
  else:
    t.update(_linear(params['pooler'], 'bert.pooler.dense'))
    t.update(_linear(params['classifier'], 'classifier'))
  return t


def marian_tensors(cfg: ModelConfig, params: dict) -> dict:
  t = {}
  if cfg.share_embeddings:
    t['model.shared.weight'] = params['embedder']['embedding']
  else:
    t['model.encoder.embed_tokens.weight'] = params['source_embedder']['embedding']
    t['model.decoder.embed_tokens.weight'] = params['target_embedder']['embedding']
  names = lambda p: tuple(f'{p}.{n}_proj' for n in ('q', 'k', 'v', 'out'))
  mlp = lambda layer, p: {**_linear(layer['mlp']['wi'], f'{p}.fc1'),
                          **_linear(layer['mlp']['wo'], f'{p}.fc2')}
  for i, layer in enumerate(_layers(params['encoder'])):
    p = f'model.encoder.layers.{i}'
    t.update(_attention(layer['attention'], names(f'{p}.self_attn')))
    t.update(_norm(layer['attention_norm'], f'{p}.self_attn_layer_norm'))
    t.update(mlp(layer, p))
    t.update(_norm(layer['mlp_norm'], f'{p}.final_layer_norm'))
  for i, layer in enumerate(_layers(params['decoder'])):
    p = f'model.decoder.layers.{i}'
    t.update(_attention(layer['self_attention'], names(f'{p}.self_attn')))
    t.update(_norm(layer['self_attention_norm'], f'{p}.self_attn_layer_norm'))
    t.update(_attention(layer['cross_attention'], names(f'{p}.encoder_attn')))
    t.update(_norm(layer['cross_attention_norm'], f'{p}.encoder_attn_layer_norm'))
    t.update(mlp(layer, p))
    t.update(_norm(layer['mlp_norm'], f'{p}.final_layer_norm'))
  head = params['lm_head']
  # Marian always has a logit bias: zeros compute the same as none.
  bias = head['bias'] if 'bias' in head else np.zeros(cfg.vocab_size, np.float32)
  t['final_logits_bias'] = bias[None, :]
  if not cfg.tie_embeddings:  # tied: the target embeddings, which save_pretrained omits
    t['lm_head.weight'] = head['kernel'].T
  return t


def llama_tensors(cfg: ModelConfig, params: dict) -> dict:
  t = {'model.embed_tokens.weight': params['embedder']['embedding'],
       **_norm(params['decoder']['final_norm'], 'model.norm')}
  for i, layer in enumerate(_layers(params['decoder'])):
    p = f'model.layers.{i}'
    a = f'{p}.self_attn'
    t.update(_attention(layer['attention'], (f'{a}.q_proj', f'{a}.k_proj', f'{a}.v_proj',
                                             f'{a}.o_proj')))
    t.update(_norm(layer['attention_norm'], f'{p}.input_layernorm'))
    t.update(_norm(layer['mlp_norm'], f'{p}.post_attention_layernorm'))
    t.update(_linear(layer['mlp']['wi_gate'], f'{p}.mlp.gate_proj'))
    t.update(_linear(layer['mlp']['wi'], f'{p}.mlp.up_proj'))
    t.update(_linear(layer['mlp']['wo'], f'{p}.mlp.down_proj'))
  if not cfg.tie_embeddings:
    t['lm_head.weight'] = params['lm_head']['kernel'].T
  return t


EXPORTS = {'gpt2': (gpt2_config, gpt2_tensors), 'bert': (bert_config, bert_tensors),
           'marian': (marian_config, marian_tensors), 'llama': (llama_config, llama_tensors),
           'qwen2': (llama_config, llama_tensors)}


# --- what the target can express ---------------------------------------------------------------


def _compared(cfg: ModelConfig) -> dict:
  """The fields that decide what the model computes; those another field makes moot left out."""
  moot = set(NOT_COMPARED)
  if cfg.position != 'sinusoidal':
    moot.add('sinusoidal_layout')
  if cfg.position != 'rope':
    moot.add('rope_base')
  if cfg.head != 'classify':
    moot.update({'num_classes', 'pooling'})
  if cfg.family != 'encoder_decoder':
    moot.update({'share_embeddings', 'num_decoder_layers'})
  if cfg.parametrization != 'mup':
    moot.add('mup_base_d_model')
  if cfg.family == 'encoder_decoder':
    moot.add('logits_bias')  # Marian's logit bias: zeros where ours has none
  if cfg.qkv_bias is None or cfg.qkv_bias == cfg.use_bias:
    moot.add('qkv_bias')
  return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in moot}


def _refuse_inexpressible(cfg: ModelConfig, model_type: str, hf: dict):
  """Importing `hf` must give back `cfg`'s architecture, else name the first option it loses."""
  model_fn = convert.ARCHITECTURES[model_type][0]
  try:
    back = ModelConfig(**model_fn({**hf, 'model_type': model_type}, cfg.head))
  except ConfigError as e:
    _fail(f'the run cannot be exported as Hugging Face {model_type}: {e}')
  ours, theirs = _compared(cfg), _compared(back)
  for name, value in ours.items():
    if theirs.get(name, value) != value:
      _fail(f'model.{name}={value!r} cannot be exported as Hugging Face {model_type}, which has '
            f'{name}={theirs[name]!r}' + _hint(model_type))


def _hint(model_type: str) -> str:
  return {'gpt2': ' (decoder_only runs with model.position=rope are exported as llama)',
          'llama': ' (decoder_only runs with learned positions are exported as gpt2)'}.get(
              model_type, '')


# --- writing the directory -------------------------------------------------------------------


def _special_ids(run: trained.Trained) -> dict:
  """The tokenizer's bos, eos and pad ids where the run's tokenizer loads, and a classifier's
  class names (a converted run's own, else the data's)."""
  ids = {}
  if run.cfg.head == 'classify':
    from transformer.inference import encoder
    pretrained = run.config.extra.get('pretrained') or {}
    labels = list(pretrained.get('labels') or [])
    ids['labels'] = labels if len(labels) == run.cfg.num_classes else encoder.class_names(run)
  data = run.config.data
  if data.tokenizer == 'sentencepiece' and not data.spm_model:  # trained here, with these ids
    found = {k[:-3]: v for k, v in tokenizers.SPM_SPECIALS.items() if k != 'unk_id'}
  else:  # reads files only (a SentencePiece model trained here is never retrained for this)
    try:
      tokenizer = pipeline.get_tokenizer(run.config)
    except (ConfigError, OSError, ValueError):
      return ids
    found = {name: getattr(tokenizer, f'{name}_id', None) for name in ('bos', 'eos', 'pad')}
  ids.update({k: v for k, v in found.items()
              if isinstance(v, int) and 0 <= v < run.cfg.vocab_size})
  return ids


def _hf_tokenizer(run: trained.Trained):
  data = run.config.data
  if data.tokenizer != 'huggingface' or not data.hf_tokenizer:
    return None
  return convert.read_tokenizer(data.hf_tokenizer)


def export(workdir: str, out: str, step: int | None = None, overwrite: bool = False) -> dict:
  """Writes the run in `workdir` (checkpoint `step`, default the newest) as a Hugging Face
  save_pretrained directory `out`; returns a summary. ConfigError (nothing written) if the run's
  model cannot be expressed."""
  try:
    import transformers
    from safetensors.numpy import save_file
  except ImportError:
    _fail("--to_hf needs transformers and safetensors (pip install -e '.[interop]')")
  convert.check_destination(out, overwrite, 'export')
  out = os.path.abspath(out)
  local = not files.is_remote(workdir)  # a gs:// run is read through epath (runs.py)
  if local and os.path.commonpath([out, os.path.abspath(workdir)]) in (
      out, os.path.abspath(workdir)):
    _fail(f'--to={out} and --from={workdir} overlap; choose a directory outside the run')
  experiment = runs.read_experiment(workdir)
  cfg = experiment.model
  model_type = target(cfg)
  config_fn, tensors_fn = EXPORTS[model_type]
  run = trained.Trained(workdir, experiment, params=None, step=-1)
  hf = config_fn(cfg, _special_ids(run))
  _refuse_inexpressible(cfg, model_type, hf)  # before reading any checkpoint
  run = trained.load(workdir, step)
  params = models.unstack_layers(run.params) if cfg.scan_layers else run.params
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)  # the tensor functions' input
  tensors = {k: np.ascontiguousarray(v) for k, v in tensors_fn(cfg, params).items()}
  tokenizer = _hf_tokenizer(run)
  hf_config = transformers.AutoConfig.for_model(model_type, **hf)
  hf_config.dtype = 'float32'

  def write(directory):
    hf_config.save_pretrained(directory)
    try:
      save_file(tensors, os.path.join(directory, 'model.safetensors'), metadata={'format': 'pt'})
    except Exception as e:  # noqa: BLE001 - safetensors' own error type, a full disk included
      raise OSError(first_line(e, 200)) from e
    if tokenizer is not None:
      tokenizer.save_pretrained(directory)

  convert.write_beside(out, write, 'exporting')
  return dict(out=out, model_type=model_type, architecture=hf['architectures'][0],
              step=run.step, tensors=len(tensors),
              params=int(sum(v.size for v in tensors.values())), tokenizer=tokenizer is not None)
