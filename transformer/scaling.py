"""Parameter and FLOP counting, from shapes alone (`jax.eval_shape`: nothing is allocated).

Conventions (stated once, used by describe, bench and sweeps):
- Embedding parameters are those with a vocabulary, position or token-type axis: the token
  table, a learned position table, token-type embeddings, an untied output projection and
  output biases. Everything else is non-embedding (Kaplan et al. 2020's N).
- FLOPs per token of training (forward + backward) follow PaLM (Chowdhery et al. 2022,
  appendix B): 6 N_matmul + 12 L H Q T, where N_matmul is the non-embedding parameters plus the
  output projection (vocab x d_model, a real matmul even when tied), L layers, H heads, Q head
  size and T the sequence length; causal masking is not discounted. For the encoder-decoder,
  per target token with source length = target length = T: the decoder's cross-attention
  counts as one more attention per decoder layer.
"""

import math
from typing import Any

import flax.linen as nn
import jax

from transformer import models
from transformer.config import ModelConfig

EMBEDDING_AXES = frozenset({'vocab', 'positions', 'types'})


def param_rows(cfg: ModelConfig) -> list[dict[str, Any]]:
  """One row per parameter: path, shape, dtype, count, logical axes, is_embedding."""
  abstract = models.abstract_variables(cfg)['params']
  boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)
  rows = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract, is_leaf=boxed)[0]:
    axes = tuple(leaf.names) if boxed(leaf) else ()
    value = leaf.value if boxed(leaf) else leaf
    rows.append(dict(
        path='/'.join(str(getattr(k, 'key', k)) for k in path), shape=tuple(value.shape),
        dtype=str(value.dtype), count=math.prod(value.shape), axes=axes,
        is_embedding=bool(EMBEDDING_AXES.intersection(axes))))
  return rows


def param_counts(cfg: ModelConfig) -> dict[str, int]:
  rows = param_rows(cfg)
  total = sum(r['count'] for r in rows)
  embedding = sum(r['count'] for r in rows if r['is_embedding'])
  return dict(params=total, params_embedding=embedding, params_non_embedding=total - embedding)


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


def format_count(n: float) -> str:
  """124439808 -> '124.4M'."""
  for unit, scale in (('E', 1e18), ('P', 1e15), ('T', 1e12), ('B', 1e9), ('M', 1e6), ('K', 1e3)):
    if abs(n) >= scale:
      return f'{n / scale:.1f}{unit}'
  return str(int(n)) if float(n).is_integer() else f'{n:.3g}'

