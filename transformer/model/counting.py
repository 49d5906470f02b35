"""Counting, from shapes alone (`jax.eval_shape`: nothing is allocated): parameters, FLOPs per
token, an experiment's totals; and the peak FLOP/s of a device, which MFU is measured against.

Conventions (stated once, used by train, describe, bench, sweeps and the scaling fits):
- Embedding parameters are those with a vocabulary, position or token-type axis: the token
  table, a learned position table, token-type embeddings, an untied output projection and
  output biases. Everything else is non-embedding (Kaplan et al. 2020's N).
- FLOPs per token of training (forward + backward) follow PaLM (Chowdhery et al. 2022,
  appendix B): 6 N_matmul + 12 L H Q T, where N_matmul is the non-embedding parameters plus the
  output projection (vocab x d_model, a real matmul even when tied), L layers, H heads, Q head
  size and T the sequence length; causal masking is not discounted. For the encoder-decoder,
  per target token with source length = target length = T: the decoder's cross-attention
  counts as one more attention per decoder layer.
- Peak FLOP/s: the published dense bf16 peak of known accelerators; on CPU, the best float32
  matmul measured in this process; $TRANSFORMER_PEAK_FLOPS (per device) wins over both.
"""

import functools
import math
import os
import re
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer.config import Experiment, ModelConfig
from transformer.model import models

EMBEDDING_AXES = frozenset({'vocab', 'positions', 'types'})


def param_rows(cfg: ModelConfig) -> list[dict[str, Any]]:
  """One row per parameter: path, shape, dtype, count, logical axes, is_embedding."""
  abstract = models.abstract_variables(cfg)['params']
  boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)
  rows = []
  for path, leaf in models.flat_params(abstract, is_leaf=boxed).items():
    axes = tuple(leaf.names) if boxed(leaf) else ()
    value = leaf.value if boxed(leaf) else leaf
    rows.append(dict(path=path, shape=tuple(value.shape), dtype=str(value.dtype),
                     count=math.prod(value.shape), axes=axes,
                     is_embedding=bool(EMBEDDING_AXES.intersection(axes))))
  return rows


def param_counts(cfg: ModelConfig) -> dict[str, int]:
  """Total, embedding and non-embedding parameters (a sweep asks for each config repeatedly)."""
  return dict(_param_counts(cfg))


@functools.lru_cache(maxsize=512)
def _param_counts(cfg: ModelConfig) -> tuple[tuple[str, int], ...]:
  rows = param_rows(cfg)
  total = sum(r['count'] for r in rows)
  embedding = sum(r['count'] for r in rows if r['is_embedding'])
  return (('params', total), ('params_embedding', embedding),
          ('params_non_embedding', total - embedding))


def flops_per_token(cfg: ModelConfig, seq_len: int, params_non_embedding: int | None = None) -> int:
  """Training FLOPs per token (forward + backward), PaLM's 6N + 12LHQT; see the module doc."""
  if params_non_embedding is None:
    params_non_embedding = param_counts(cfg)['params_non_embedding']
  has_vocab_output = cfg.head in ('lm', 'mlm')
  n_matmul = params_non_embedding + (cfg.vocab_size * cfg.d_model if has_vocab_output else 0)
  attention_layers = cfg.num_layers
  if cfg.family == 'encoder_decoder':
    attention_layers += 2 * cfg.num_decoder_layers  # self- and cross-attention
  return 6 * n_matmul + 12 * attention_layers * cfg.num_heads * cfg.head_dim * seq_len


def summarize(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
  """Parameter counts and FLOPs per token of a model at a sequence length."""
  counts = param_counts(cfg)
  return dict(counts, flops_per_token=flops_per_token(cfg, seq_len,
                                                      counts['params_non_embedding']))


def experiment_counts(experiment: Experiment) -> dict[str, Any]:
  """An experiment's model (its shape, parameters, FLOPs per token) and its training totals
  (tokens, FLOPs): the fields of `describe --json` and of a sweep's plan."""
  cfg, data = experiment.model, experiment.data
  counts = summarize(cfg, data.seq_len)
  tokens = experiment.train.num_steps * data.batch_size * data.seq_len
  return dict(
      counts, family=cfg.family, head=cfg.head, num_layers=cfg.num_layers,
      num_decoder_layers=cfg.num_decoder_layers if cfg.family == 'encoder_decoder' else 0,
      d_model=cfg.d_model, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
      d_ff=cfg.d_ff, vocab_size=cfg.vocab_size, position=cfg.position, seq_len=data.seq_len,
      tokens=tokens, total_flops=counts['flops_per_token'] * tokens)


_LAYER = re.compile(r'/layers(_\d+)?/')
_STACK_ORDER = ('embedder', 'source_embedder', 'target_embedder', 'encoder', 'decoder')


def layer_table(cfg: ModelConfig) -> list[tuple[str, str, int, int]]:
  """(path, per-layer shape, layers, total count) per parameter, the layers of a stack folded
  into one line ('decoder/layers[*]/mlp/wi/kernel'), embeddings first."""
  rows: dict[str, list] = {}
  for r in param_rows(cfg):
    path, shape, repeats = r['path'], r['shape'], 1
    match = _LAYER.search('/' + path + '/')
    if match:
      path = _LAYER.sub('/layers[*]/', '/' + path + '/').strip('/')
      if match.group(1) is None:  # scanned: the leading axis is the layer index
        shape, repeats = shape[1:], shape[0]
    entry = rows.setdefault(path, [path, ' x '.join(map(str, shape)) or 'scalar', 0, 0])
    entry[2] += repeats
    entry[3] += r['count']
  top = lambda path: path.split('/')[0]
  rank = lambda path: (_STACK_ORDER.index(top(path)) if top(path) in _STACK_ORDER
                       else len(_STACK_ORDER))
  return sorted((tuple(e) for e in rows.values()), key=lambda e: rank(e[0]))


def format_count(n: float) -> str:
  """124439808 -> '124.4M'."""
  for unit, scale in (('E', 1e18), ('P', 1e15), ('T', 1e12), ('B', 1e9), ('M', 1e6), ('K', 1e3)):
    if abs(n) >= scale:
      return f'{n / scale:.1f}{unit}'
  return str(int(n)) if float(n).is_integer() else f'{n:.3g}'


# --- peak FLOP/s ---------------------------------------------------------------------------------

# Published dense bf16 peaks (FLOP/s), matched against `device.device_kind`.
ACCELERATOR_PEAKS = (
    ('H100 PCIe', 756e12), ('H100', 989e12), ('H200', 989e12), ('B200', 2250e12),
    ('A100', 312e12), ('L4', 121e12), ('A10', 125e12), ('V100', 125e12),
    ('TPU v6', 918e12), ('TPU v5 lite', 197e12), ('TPU v5e', 197e12), ('TPU v5', 459e12),
    ('TPU v4', 275e12), ('TPU v3', 123e12),
)


@functools.lru_cache(maxsize=None)
def peak_flops(device: jax.Device | None = None) -> float:
  """Peak FLOP/s of a device: $TRANSFORMER_PEAK_FLOPS where set (e.g. 1e11: a CPU's known
  peak, or where runs are too short to spend the measurement's 2 s on it), else published for
  known accelerators, measured on CPU."""
  if os.environ.get('TRANSFORMER_PEAK_FLOPS'):
    return float(os.environ['TRANSFORMER_PEAK_FLOPS'])
  device = device or jax.local_devices()[0]
  if device.platform != 'cpu':
    for name, peak in ACCELERATOR_PEAKS:
      if name.lower() in device.device_kind.lower():
        return peak
  return measure_matmul_flops(device)


def mesh_peak_flops(devices: list) -> float:
  """Peak FLOP/s of a set of devices. Simulated CPU devices share one CPU: its peak counts
  once."""
  if devices[0].platform == 'cpu':
    return peak_flops(jax.local_devices()[0])
  return peak_flops(devices[0]) * len(devices)


def measure_matmul_flops(device: jax.Device, n: int = 2048, repeats: int = 8) -> float:
  """Best FLOP/s of an n x n float32 matmul (bf16 on accelerators) on `device`."""
  dtype = jnp.float32 if device.platform == 'cpu' else jnp.bfloat16
  a = jax.device_put(jnp.ones((n, n), dtype), device)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best
