"""Positional information: sinusoidal, learned, rotary (RoPE), ALiBi, or none.

Sinusoidal and learned encodings are added to the token embeddings (the Embedder does that);
RoPE rotates queries and keys and ALiBi biases attention scores (attention.py calls those).
All take explicit integer `positions`, so packed sequences (positions restart per document)
and cached decoding (positions continue past the prompt) need nothing special.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def positions_from_segments(segment_ids_BxT: jax.Array) -> jax.Array:
  """Position of each token within its segment: 0, 1, 2, ... restarting where the id changes."""
  T = segment_ids_BxT.shape[-1]
  index_BxT = jnp.broadcast_to(jnp.arange(T), segment_ids_BxT.shape)
  starts = jnp.concatenate(
      [jnp.ones_like(segment_ids_BxT[..., :1], dtype=bool),
       segment_ids_BxT[..., 1:] != segment_ids_BxT[..., :-1]], axis=-1)
  start_index_BxT = jax.lax.cummax(jnp.where(starts, index_BxT, 0), axis=segment_ids_BxT.ndim - 1)
  return index_BxT - start_index_BxT


def sinusoidal(positions: jax.Array, d_model: int, max_timescale: float = 10000.0,
               layout: str = 'interleaved') -> jax.Array:
  """The paper's encoding (Vaswani et al. 2017, section 3.5), computed for any length.

  PE(pos, 2i) = sin(pos / 10000^(2i/d)),  PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).
  Returns float32 of shape positions.shape + (d_model,): sines and cosines interleaved as in
  the formula, or with layout='concat' the same d/2 sines followed by the d/2 cosines
  (tensor2tensor's and Marian's layout; a fixed permutation of the dimensions).
  """
  two_i = jnp.arange(0, d_model, 2, dtype=jnp.float32)
  inv_timescales = max_timescale ** (-two_i / d_model)
  angles = positions.astype(jnp.float32)[..., None] * inv_timescales
  if layout == 'concat':
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  pe = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  return pe.reshape(*positions.shape, d_model)


class LearnedPositions(nn.Module):
  """A trained table of `max_len` position vectors (BERT, GPT-2)."""

  max_len: int
  d_model: int
  init_std: float = 0.02
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, positions_BxT: jax.Array) -> jax.Array:
    T = positions_BxT.shape[-1]
    if T > self.max_len:
      raise ValueError(f'sequence length {T} is longer than the learned position table '
                       f'(model.max_len={self.max_len})')
    table = self.param(
        'embedding',
        nn.with_logical_partitioning(nn.initializers.normal(self.init_std), ('positions', 'embed')),
        (self.max_len, self.d_model), self.param_dtype)
    table = nn.with_logical_constraint(table, (None, None))  # whole before the lookup (FSDP)
    return jnp.take(table, positions_BxT, axis=0, mode='clip')


def apply_rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary position embedding (Su et al. 2021), in the rotate-half layout.

  Pairs (x[i], x[i + H/2]) are rotated by the angle pos * base^(-2i/H), so the dot product of a
  rotated query at m and a rotated key at n depends on m - n only.
  """
  H = x_BxTxNxH.shape[-1]
  inv_freq = base ** (-jnp.arange(0, H, 2, dtype=jnp.float32) / H)
  angles_BxTx1xH2 = (positions_BxT.astype(jnp.float32)[..., None] * inv_freq)[:, :, None, :]
  sin, cos = jnp.sin(angles_BxTx1xH2), jnp.cos(angles_BxTx1xH2)
  x1, x2 = jnp.split(x_BxTxNxH.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxTxNxH.dtype)


def alibi_slopes(num_heads: int) -> jax.Array:
  """Per-head slopes of ALiBi (Press et al. 2022): 2^(-8/n), 2^(-16/n), ... for n heads.

  For a head count that is not a power of two, the paper's recipe: the slopes of the closest
  lower power of two, then every other slope of the next one.
  """
  def geometric(n):
    start = 2.0 ** (-8.0 / n)
    return [start ** (i + 1) for i in range(n)]

  if math.log2(num_heads).is_integer():
    slopes = geometric(num_heads)
  else:
    lower = 2 ** math.floor(math.log2(num_heads))
    slopes = geometric(lower) + geometric(2 * lower)[0::2][:num_heads - lower]
  return jnp.asarray(slopes, dtype=jnp.float32)


def alibi_bias(num_heads: int, q_positions_BxT: jax.Array,
               kv_positions_BxS: jax.Array) -> jax.Array:
  """Additive attention bias -slope_h * |i - j| of shape (B, N, T, S), float32.

  Under a causal mask this is the paper's -slope * (i - j); without one, the symmetric form.
  """
  distance_BxTxS = jnp.abs(q_positions_BxT[:, :, None] - kv_positions_BxS[:, None, :])
  slopes_N = alibi_slopes(num_heads)
  return -slopes_N[None, :, None, None] * distance_BxTxS[:, None].astype(jnp.float32)
