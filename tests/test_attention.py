"""Scaled dot-product attention and the multi-head module against float64 NumPy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import reference
from transformer.model import attention


def random_qkv(rng, B=2, T=5, S=7, N=4, K=4, H=8, dtype=np.float32):
  q = rng.normal(size=(B, T, N, H)).astype(dtype)
  k = rng.normal(size=(B, S, K, H)).astype(dtype)
  v = rng.normal(size=(B, S, K, H)).astype(dtype)
  return q, k, v


def random_mask(rng, B, T, S, heads=1):
  """Random visibility with one fully masked query row per batch element."""
  mask = rng.random((B, heads, T, S)) < 0.6
  mask[:, :, 1] = False
  return mask


@pytest.mark.parametrize('K', [4, 2, 1])  # multi-head, grouped-query, multi-query
def test_matches_float64_reference(rng, K):
  q, k, v = random_qkv(rng, K=K)
  mask = random_mask(rng, 2, 5, 7)
  bias = rng.normal(size=(2, 4, 5, 7)).astype(np.float32)
  out = attention.dot_product_attention(q, k, v, mask=mask, bias=bias)
  weights = attention.attention_weights(q, k, mask=mask, bias=bias)
  ref_out, ref_weights = reference.attention(q.astype(np.float64), k.astype(np.float64),
                                             v.astype(np.float64), mask[:, 0], bias)
  np.testing.assert_allclose(weights, ref_weights, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)


def test_fully_masked_rows_are_zero_and_have_finite_gradients(rng):
  q, k, v = random_qkv(rng)
  mask = random_mask(rng, 2, 5, 7)
  for impl in ('einsum', 'xla'):
    def f(q, k, v):
      return attention.dot_product_attention(q, k, v, mask=mask, impl=impl)
    out = f(q, k, v)
    np.testing.assert_array_equal(out[:, 1], 0.0)
    assert np.abs(out[:, 0]).max() > 0.1
    grads = jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2))(q, k, v)
    for g in grads:
      assert np.isfinite(g).all()
    np.testing.assert_array_equal(grads[0][:, 1], 0.0)  # the masked query gets no gradient


CASES = {
    'no_mask': dict(),
    'shared_mask': dict(mask=(1,)),
    'per_head_mask_and_bias': dict(mask=(4,), bias=True),
    'causal': dict(is_causal=True, S=5),
    'causal_rectangular': dict(is_causal=True, T=3, S=7),
    'causal_with_padding_gqa': dict(is_causal=True, S=5, mask=(1,), K=2),
    'mqa_bias': dict(K=1, bias=True),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_einsum_and_jax_implementations_agree(rng, case):
  c = CASES[case]
  T, S, K = c.get('T', 5), c.get('S', 7), c.get('K', 4)
  q, k, v = random_qkv(rng, T=T, S=S, K=K)
  kw = dict(is_causal=c.get('is_causal', False))
  if 'mask' in c:
    kw['mask'] = random_mask(rng, 2, T, S, heads=c['mask'][0])
  if c.get('bias'):
    kw['bias'] = rng.normal(size=(2, 4, T, S)).astype(np.float32)

  def loss(impl):
    return lambda q, k, v: jnp.sum(
        jnp.sin(attention.dot_product_attention(q, k, v, impl=impl, **kw)))

  out_einsum = attention.dot_product_attention(q, k, v, impl='einsum', **kw)
  out_xla = attention.dot_product_attention(q, k, v, impl='xla', **kw)
  np.testing.assert_allclose(out_xla, out_einsum, rtol=1e-5, atol=1e-6)
  g_einsum = jax.grad(loss('einsum'), argnums=(0, 1, 2))(q, k, v)
  g_xla = jax.grad(loss('xla'), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_xla, g_einsum):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


MASK_SHAPES = [(2, 4, 5, 7), (2, 1, 5, 7), (2, 1, 1, 7), (2, 1, 5, 1), (1, 1, 5, 7),
               (1, 4, 5, 7), (2, 4, 1, 7), (1, 1, 1, 7)]


@pytest.mark.parametrize('K', [4, 2, 1])  # multi-head, grouped-query, multi-query
def test_every_mask_shape_that_broadcasts_works_on_every_path(rng, K):
  """A mask (and a bias) of any shape that broadcasts to (B, N, T, S) gives, on every path,
  what the same mask spelled out in full gives (that one is checked against float64 above). A
  (B, 1, 1, S) mask with grouped queries used to fail on the einsum path (a padding mask on
  the keys alone: an encoder-decoder called with src_segment_ids only)."""
  q, k, v = random_qkv(rng, K=K)
  for shape in MASK_SHAPES:
    mask = rng.random(shape) < 0.7
    mask[..., 0] = True  # every query sees a key: the comparison below is not of zeros
    bias = rng.normal(size=shape).astype(np.float32)
    full_mask, full_bias = np.broadcast_to(mask, (2, 4, 5, 7)), np.broadcast_to(bias, (2, 4, 5, 7))
    expected = attention.dot_product_attention(q, k, v, mask=full_mask, bias=full_bias)
    expected_weights = attention.attention_weights(q, k, mask=full_mask, bias=full_bias)
    for impl in ('einsum', 'xla'):
      out = attention.dot_product_attention(q, k, v, mask=mask, bias=bias, impl=impl)
      np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6, err_msg=f'{shape} {impl}')
    np.testing.assert_allclose(attention.attention_weights(q, k, mask=mask, bias=bias),
                               expected_weights, rtol=1e-5, atol=1e-7, err_msg=str(shape))


def test_a_row_emptied_by_the_causal_mask_is_zero_on_every_path(rng):
  """Query 0 may only see keys the causal mask hides: it sees nothing, on both paths."""
  q, k, v = random_qkv(rng, T=4, S=4)
  mask = np.ones((2, 1, 4, 4), bool)
  mask[:, :, 0, 0] = False
  for impl in ('einsum', 'xla'):
    out = attention.dot_product_attention(q, k, v, mask=mask, is_causal=True, impl=impl)
    np.testing.assert_array_equal(out[:, 0], 0.0)
    assert np.abs(out[:, 1]).max() > 0.1


def test_attention_dropout_is_never_silently_dropped(rng):
  q, k, v = random_qkv(rng)
  with pytest.raises(ValueError, match='attention dropout needs impl="einsum"'):
    attention.dot_product_attention(q, k, v, impl='xla', dropout_rate=0.1,
                                    dropout_rng=jax.random.key(0))


def test_causal_flag_equals_an_explicit_causal_mask(rng):
  q, k, v = random_qkv(rng, T=6, S=6)
  explicit = np.tril(np.ones((6, 6), bool))[None, None]
  np.testing.assert_allclose(attention.dot_product_attention(q, k, v, is_causal=True),
                             attention.dot_product_attention(q, k, v, mask=explicit), atol=0)


def test_bfloat16_inputs_get_a_float32_softmax(rng):
  """Weights match float64 softmax of the (bfloat16-rounded) inputs to float32 precision; a
  bfloat16 softmax would be off by ~1e-3."""
  q, k, _ = random_qkv(rng)
  q16, k16 = jnp.asarray(3 * q, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16)
  weights = attention.attention_weights(q16, k16)
  assert weights.dtype == jnp.float32
  v = np.zeros((2, 7, 4, 8))
  _, ref = reference.attention(np.asarray(q16, np.float64), np.asarray(k16, np.float64), v)
  np.testing.assert_allclose(weights, ref, atol=1e-6)
  out = attention.dot_product_attention(q16, k16, jnp.asarray(v, jnp.bfloat16))
  assert out.dtype == jnp.bfloat16


def test_masks(rng):
  np.testing.assert_array_equal(attention.causal_mask(4)[0, 0], np.tril(np.ones((4, 4), bool)))
  # With more keys than queries, the queries are the last positions (cached decoding).
  np.testing.assert_array_equal(attention.causal_mask(2, 5)[0, 0],
                                [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
  seg = np.array([[1, 1, 2, 2, 0]])
  expected = [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0] * 5]
  np.testing.assert_array_equal(attention.segment_mask(seg, seg)[0, 0], expected)
  valid = np.array([[True, True, False]])
  np.testing.assert_array_equal(attention.padding_mask(valid, valid)[0, 0],
                                [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
  combined = attention.combine_masks(attention.segment_mask(seg, seg), attention.causal_mask(5))
  np.testing.assert_array_equal(combined[0, 0], np.tril(expected))
  assert attention.combine_masks(None, None) is None


def init_mha(rng, x, **kw):
  module = attention.MultiHeadAttention(**kw)
  params = module.init(jax.random.key(0), x)['params']
  params = jax.tree.map(lambda p: p + 0.1 * rng.normal(size=p.shape).astype(np.float32),
                        jax.tree.map(np.asarray, nn.unbox(params)))
  return module, params


def test_module_matches_reference(rng):
  x = rng.normal(size=(2, 6, 16)).astype(np.float32)
  kv = rng.normal(size=(2, 9, 16)).astype(np.float32)
  module, params = init_mha(rng, x, num_heads=4, num_kv_heads=2, head_dim=4)
  mask = random_mask(rng, 2, 6, 9)
  out = module.apply({'params': params}, x, kv, mask=mask)
  class Cfg:  # what reference.mha reads
    num_heads, rope_base = 4, 10000.0
  ref = reference.mha(Cfg, reference.f64(params), x.astype(np.float64), kv.astype(np.float64),
                      mask[:, 0])
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_grouped_query_equals_multi_head_with_repeated_kv_heads(rng):
  """GQA with K kv heads == MHA whose key/value projections repeat each kv head N/K times."""
  x = rng.normal(size=(2, 6, 16)).astype(np.float32)
  gqa, params = init_mha(rng, x, num_heads=4, num_kv_heads=2, head_dim=4)
  mha = attention.MultiHeadAttention(num_heads=4, num_kv_heads=4, head_dim=4)
  repeated = dict(params)
  for name in ('key', 'value'):
    repeated[name] = {'kernel': np.repeat(params[name]['kernel'], 2, axis=1),
                      'bias': np.repeat(params[name]['bias'], 2, axis=0)}
  np.testing.assert_allclose(gqa.apply({'params': params}, x, is_causal=True),
                             mha.apply({'params': repeated}, x, is_causal=True),
                             rtol=1e-6, atol=1e-6)


def test_module_implementations_agree_and_weights_are_sown(rng):
  x = rng.normal(size=(2, 6, 16)).astype(np.float32)
  _, params = init_mha(rng, x, num_heads=4, num_kv_heads=1, head_dim=4)
  outs = {}
  for impl in ('einsum', 'xla'):
    for position in ('rope', 'alibi'):
      module = attention.MultiHeadAttention(num_heads=4, num_kv_heads=1, head_dim=4, impl=impl,
                                            position=position)
      outs[impl, position] = module.apply({'params': params}, x, is_causal=True)
      inspected, state = module.apply({'params': params}, x, is_causal=True,
                                      mutable=['intermediates'])
      np.testing.assert_allclose(inspected, outs[impl, position], rtol=1e-5, atol=1e-6)
      (weights,) = state['intermediates']['attention_weights']
      assert weights.shape == (2, 4, 6, 6)
      np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  for position in ('rope', 'alibi'):
    np.testing.assert_allclose(outs['xla', position], outs['einsum', position],
                               rtol=1e-5, atol=1e-6)
