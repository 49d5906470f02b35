"""Scaled dot-product attention, its masks, and the multi-head attention module.

Shapes: B batch, T query length, S key/value length, N query heads, K key/value heads
(N = K * G: grouped-query attention when 1 < K < N, multi-query when K == 1), H head size,
D model width. Masks are boolean, True where a query may attend to a key, and broadcast to
(B, N, T, S); biases are additive and broadcast the same way.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer.model import positional
from transformer.model.dropout import apply_mask

# --- masks -------------------------------------------------------------------------------------


def causal_mask(q_len: int, kv_len: int | None = None) -> jax.Array:
  """(1, 1, T, S): query i sees key j <= i. With S > T the queries are the last T positions."""
  kv_len = q_len if kv_len is None else kv_len
  q_index = jnp.arange(q_len)[:, None] + (kv_len - q_len)
  return (jnp.arange(kv_len)[None, :] <= q_index)[None, None]


def padding_mask(q_valid_BxT: jax.Array, kv_valid_BxS: jax.Array) -> jax.Array:
  """(B, 1, T, S): both the query and the key are real tokens."""
  return (q_valid_BxT[:, :, None] & kv_valid_BxS[:, None, :])[:, None]


def segment_mask(q_segment_ids_BxT: jax.Array, kv_segment_ids_BxS: jax.Array) -> jax.Array:
  """(B, 1, T, S): same packed document, and not padding (segment id 0 is padding)."""
  same = q_segment_ids_BxT[:, :, None] == kv_segment_ids_BxS[:, None, :]
  real = padding_mask(q_segment_ids_BxT != 0, kv_segment_ids_BxS != 0)[:, 0]
  return (same & real)[:, None]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
  """Logical AND of the masks that are not None; None if all are."""
  masks = [m for m in masks if m is not None]
  return functools.reduce(jnp.logical_and, masks) if masks else None


# --- scaled dot-product attention --------------------------------------------------------------


def _grouped(x: jax.Array | None, K: int, G: int) -> jax.Array | None:
  """(b, N or 1, t, s) -> (b, K or 1, G or 1, t, s), splitting query heads into K groups of G."""
  if x is None:
    return None
  b, n, t, s = x.shape
  return x[:, :, None] if n == 1 else x.reshape(b, K, G, t, s)


def attention_weights(q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, *,
                      mask: jax.Array | None = None, bias: jax.Array | None = None,
                      is_causal: bool = False, scale: float | None = None) -> jax.Array:
  """softmax(scale Q K^T + bias) over keys, in float32, as (B, N, T, S); scale defaults to
  1 / sqrt(H).

  Masked entries get weight 0; a query with no visible key gets a row of zeros (never NaN).
  """
  B, T, N, H = q_BxTxNxH.shape
  S, K = k_BxSxKxH.shape[1], k_BxSxKxH.shape[2]
  G = N // K
  if is_causal:
    mask = combine_masks(mask, causal_mask(T, S))
  q_BxTxKxGxH = q_BxTxNxH.reshape(B, T, K, G, H)
  logits_BxKxGxTxS = jnp.einsum('BTKGH,BSKH->BKGTS', q_BxTxKxGxH, k_BxSxKxH,
                                preferred_element_type=jnp.float32)
  logits_BxKxGxTxS = logits_BxKxGxTxS * (H ** -0.5 if scale is None else scale)
  if bias is not None:
    logits_BxKxGxTxS = logits_BxKxGxTxS + _grouped(bias, K, G).astype(jnp.float32)
  if mask is not None:
    mask = _grouped(mask, K, G)
    logits_BxKxGxTxS = jnp.where(mask, logits_BxKxGxTxS, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits_BxKxGxTxS, axis=-1)
  if mask is not None:  # zero the masked entries, and with them every fully masked row
    weights = jnp.where(mask, weights, 0.0)
  return weights.reshape(B, N, T, S)


def dot_product_attention(q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array, *,
                          mask: jax.Array | None = None, bias: jax.Array | None = None,
                          is_causal: bool = False, impl: str = 'einsum',
                          dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None,
                          scale: float | None = None) -> jax.Array:
  """softmax(scale Q K^T + bias) V, returned as (B, T, N, H) in the dtype of V; scale defaults
  to 1 / sqrt(H).

  impl='einsum' is the plain path (and the only one with attention dropout); 'xla' and
  'cudnn' call `jax.nn.dot_product_attention` (cuDNN flash attention on GPU). All paths give
  the same result, including zeros for a query that sees no key.
  """
  T, H, S = q_BxTxNxH.shape[1], q_BxTxNxH.shape[3], k_BxSxKxH.shape[1]
  if impl == 'einsum':
    return _einsum_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, bias, is_causal,
                             H ** -0.5 if scale is None else scale, dropout_rate, dropout_rng)
  if impl not in ('xla', 'cudnn'):
    raise ValueError(f"attention impl must be 'einsum', 'xla' or 'cudnn', got {impl!r}")
  if dropout_rate > 0.0 and dropout_rng is not None:
    raise ValueError(f'attention dropout needs impl="einsum"; {impl!r} has none')
  if is_causal and T != S:  # jax aligns a rectangular causal mask differently: make it explicit
    mask, is_causal = combine_masks(mask, causal_mask(T, S)), False
  out_BxTxNxH = jax.nn.dot_product_attention(
      q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, bias=bias, mask=mask, scale=scale, is_causal=is_causal,
      implementation=impl)
  if mask is not None:  # jax averages V over a fully masked row; we return zeros there
    out_BxTxNxH = _zero_unseeing_queries(
        out_BxTxNxH, combine_masks(mask, causal_mask(T, S) if is_causal else None))
  return out_BxTxNxH


def _einsum_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, bias, is_causal, scale,
                      dropout_rate, dropout_rng) -> jax.Array:
  """The einsum path of `dot_product_attention`, laid out for speed (on CPU the train step
  measured ~15% faster than the direct form, experiments/perf/RESULTS.md): heads are moved in
  front explicitly and the G query heads of a key/value head are stacked along the query axis,
  so each batched matmul multiplies contiguous 4-D (G T, H) and (H, S) blocks (a 5-D
  (K, G, T, S) layout lost the gain); Q is scaled before Q K^T (a (T, H) operand, not (T, S));
  the mask is one additive term folded into the softmax, and queries that see no key are
  zeroed on the (T, H) output."""
  B, T, N, H = q_BxTxNxH.shape
  S, K = k_BxSxKxH.shape[1], k_BxSxKxH.shape[2]
  G = N // K
  if is_causal:
    mask = combine_masks(mask, causal_mask(T, S))
  q_BxKxGTxH = (q_BxTxNxH * jnp.asarray(scale, q_BxTxNxH.dtype)).reshape(
      B, T, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, H)
  k_BxKxSxH = k_BxSxKxH.transpose(0, 2, 1, 3)
  v_BxKxSxH = v_BxSxKxH.transpose(0, 2, 1, 3)
  logits_BxKxGTxS = jnp.einsum('BKQH,BKSH->BKQS', q_BxKxGTxH, k_BxKxSxH,
                               preferred_element_type=jnp.float32)
  if bias is not None:
    logits_BxKxGTxS = logits_BxKxGTxS + _stacked(bias, K, G, T).astype(jnp.float32)
  if mask is not None:  # hidden keys get weight exp(-huge) = 0; finite, so never NaN
    hidden = jnp.where(_stacked(mask, K, G, T), 0.0, jnp.finfo(jnp.float32).min / 2)
    logits_BxKxGTxS = logits_BxKxGTxS + hidden
  weights_BxKxGTxS = jax.nn.softmax(logits_BxKxGTxS, axis=-1)
  if dropout_rate > 0.0 and dropout_rng is not None:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights_BxKxGTxS.shape)
    weights_BxKxGTxS = apply_mask(weights_BxKxGTxS, keep, dropout_rate)
  out_BxKxGTxH = jnp.einsum('BKQS,BKSH->BKQH', weights_BxKxGTxS.astype(v_BxSxKxH.dtype),
                            v_BxKxSxH)
  out_BxTxNxH = out_BxKxGTxH.reshape(B, K, G, T, H).transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)
  return _zero_unseeing_queries(out_BxTxNxH, mask)


def _stacked(x: jax.Array, K: int, G: int, T: int) -> jax.Array:
  """(b, N or 1, T or 1, s) -> (b, K or 1, G T, s): a mask or bias for queries stacked by group
  (a mask shared by every query is spread over them first: the stacked axis interleaves the
  groups' queries)."""
  b, n, t, s = x.shape
  if t != T:
    x = jnp.broadcast_to(x, (b, n, T, s))
  if n == 1:
    return jnp.tile(x, (1, 1, G, 1))
  return x.reshape(b, K, G * T, s)


def _zero_unseeing_queries(out_BxTxNxH: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Zeros the output of each query whose mask row hides every key."""
  if mask is None:
    return out_BxTxNxH
  sees_any_BxTxNx1 = jnp.swapaxes(jnp.any(mask, axis=-1), 1, 2)[..., None]
  return out_BxTxNxH * sees_any_BxTxNx1.astype(out_BxTxNxH.dtype)


# --- the module --------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
  """Self- or cross-attention with N query heads and K key/value heads.

  Pass `kv_BxSxD` for cross-attention. `position` is 'rope' or 'alibi' to apply those here
  (self-attention only); any other value leaves positions to the embeddings. When the
  'intermediates' collection is mutable, the per-head weights (B, N, T, S) are sown as
  'attention_weights' (computed on the einsum path).

  KV cache (`use_cache=True`, self-attention): the 'cache' collection holds the keys and values
  of the L tokens seen so far (after RoPE), whether each is a real token, and their positions.
  The first call, on inputs of length L (e.g. under `jax.eval_shape`), only creates it; later
  calls append their T tokens at `cache_index` and attend to every real cached token before
  them. `mask` then relates the T new tokens among themselves (B, 1, T, T), as without a cache.
  """

  num_heads: int
  num_kv_heads: int
  head_dim: int
  position: str = 'none'
  rope_base: float = 10000.0
  use_bias: bool = True
  qkv_bias: bool | None = None  # query, key and value projections; None: use_bias
  dropout_rate: float = 0.0
  impl: str = 'einsum'
  init_std: float = 0.02
  out_init_std: float | None = None  # None: init_std
  logit_scale: float | None = None  # multiplies Q K^T; None: 1 / sqrt(head_dim)
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _project(self, name, x, shape, equation, kernel_axes, bias_axes, std):
    bias = self.use_bias if name == 'out' or self.qkv_bias is None else self.qkv_bias
    return nn.Einsum(
        shape, equation, use_bias=bias, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(std), kernel_axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, bias_axes),
        name=name)(x)

  def _cached(self, k_BxTxKxH, v_BxTxKxH, mask, is_causal, positions_BxT):
    """Appends the new keys and values to the cache; returns (keys, values, mask, positions)
    over all L cache slots: (B, L, K, H), (B, L, K, H), (B, 1, T, L), (B, L)."""
    B, T = k_BxTxKxH.shape[:2]
    initialized = self.has_variable('cache', 'cached_key')
    key = self.variable('cache', 'cached_key', jnp.zeros, k_BxTxKxH.shape, k_BxTxKxH.dtype)
    value = self.variable('cache', 'cached_value', jnp.zeros, v_BxTxKxH.shape, v_BxTxKxH.dtype)
    valid = self.variable('cache', 'cached_valid', jnp.zeros, (B, T), jnp.bool_)
    positions = self.variable('cache', 'cached_positions', jnp.zeros, (B, T), jnp.int32)
    index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
    new_mask_Bx1xTxT = combine_masks(
        jnp.ones((B, 1, T, T), bool) if mask is None else jnp.broadcast_to(mask, (B, 1, T, T)),
        causal_mask(T) if is_causal else None)
    if not initialized:  # creating the cache (length L = T): attend as without one
      return k_BxTxKxH, v_BxTxKxH, new_mask_Bx1xTxT, positions_BxT
    L, i = key.value.shape[1], index.value
    new_valid_BxT = jnp.diagonal(new_mask_Bx1xTxT[:, 0], axis1=1, axis2=2)  # real: sees itself
    # Earlier slots: visible where they hold a real token; the new block: the new tokens' mask.
    old_Bx1x1xL = (valid.value & (jnp.arange(L) < i))[:, None, None, :]
    new_Bx1xTxL = jax.lax.dynamic_update_slice(jnp.zeros((B, 1, T, L), bool), new_mask_Bx1xTxT,
                                               (0, 0, 0, i))
    key.value = jax.lax.dynamic_update_slice(key.value, k_BxTxKxH, (0, i, 0, 0))
    value.value = jax.lax.dynamic_update_slice(value.value, v_BxTxKxH, (0, i, 0, 0))
    valid.value = jax.lax.dynamic_update_slice(valid.value, new_valid_BxT, (0, i))
    positions.value = jax.lax.dynamic_update_slice(positions.value,
                                                   positions_BxT.astype(jnp.int32), (0, i))
    index.value = i + T
    return key.value, value.value, old_Bx1x1xL | new_Bx1xTxL, positions.value

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, kv_BxSxD: jax.Array | None = None, *,
               mask: jax.Array | None = None, is_causal: bool = False,
               q_positions_BxT: jax.Array | None = None,
               kv_positions_BxS: jax.Array | None = None,
               deterministic: bool = True, use_cache: bool = False) -> jax.Array:
    self_attention = kv_BxSxD is None
    kv_BxSxD = x_BxTxD if self_attention else kv_BxSxD
    D, N, K, H = x_BxTxD.shape[-1], self.num_heads, self.num_kv_heads, self.head_dim
    q = self._project('query', x_BxTxD, (D, N, H), 'BTD,DNH->BTNH',
                      ('embed', 'heads', 'head_dim'), ('heads', 'head_dim'), self.init_std)
    k = self._project('key', kv_BxSxD, (D, K, H), 'BSD,DKH->BSKH',
                      ('embed', 'kv_heads', 'head_dim'), ('kv_heads', 'head_dim'), self.init_std)
    v = self._project('value', kv_BxSxD, (D, K, H), 'BSD,DKH->BSKH',
                      ('embed', 'kv_heads', 'head_dim'), ('kv_heads', 'head_dim'), self.init_std)
    q = nn.with_logical_constraint(q, ('batch', 'length', 'heads', 'head_dim'))
    k = nn.with_logical_constraint(k, ('batch', 'length', 'kv_heads', 'head_dim'))
    v = nn.with_logical_constraint(v, ('batch', 'length', 'kv_heads', 'head_dim'))

    bias = None
    if self_attention:
      if q_positions_BxT is None:
        q_positions_BxT = jnp.broadcast_to(jnp.arange(x_BxTxD.shape[1]), x_BxTxD.shape[:2])
      if kv_positions_BxS is None:
        kv_positions_BxS = q_positions_BxT
      if self.position == 'rope':
        q = positional.apply_rope(q, q_positions_BxT, self.rope_base)
        k = positional.apply_rope(k, kv_positions_BxS, self.rope_base)
      if use_cache:
        k, v, mask, kv_positions_BxS = self._cached(k, v, mask, is_causal, q_positions_BxT)
        is_causal = False  # the cached mask holds causality
      if self.position == 'alibi':
        bias = positional.alibi_bias(N, q_positions_BxT, kv_positions_BxS)

    dropout_rng = None
    if not deterministic and self.dropout_rate > 0.0:
      dropout_rng = self.make_rng('dropout')
    impl = self.impl
    if self.is_mutable_collection('intermediates'):
      weights = attention_weights(q, k, mask=mask, bias=bias, is_causal=is_causal,
                                  scale=self.logit_scale)
      self.sow('intermediates', 'attention_weights', weights)
      impl = 'einsum'
    out_BxTxNxH = dot_product_attention(q, k, v, mask=mask, bias=bias, is_causal=is_causal,
                                        impl=impl, dropout_rate=self.dropout_rate,
                                        dropout_rng=dropout_rng, scale=self.logit_scale)
    out_std = self.init_std if self.out_init_std is None else self.out_init_std
    return self._project('out', out_BxTxNxH, (N, H, D), 'BTNH,NHD->BTD',
                         ('heads', 'head_dim', 'embed'), ('embed',), out_std)
