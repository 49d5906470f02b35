"""Feed-forward, norms and the wiring of pre-LN and post-LN blocks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import reference
from transformer.config import ModelConfig
from transformer.model import dropout, layers


@pytest.mark.parametrize('activation', ['relu', 'gelu', 'gelu_tanh', 'silu', 'swiglu'])
def test_feed_forward_matches_reference(rng, activation):
  x = rng.normal(size=(2, 3, 8)).astype(np.float32) * 2
  module = layers.FeedForward(d_ff=16, activation=activation, init_std=0.5, out_init_std=0.5)
  params = nn.unbox(module.init(jax.random.key(0), x)['params'])
  params = jax.tree.map(lambda p: p + 0.3 * rng.normal(size=p.shape).astype(np.float32), params)
  cfg = ModelConfig(activation=activation)
  expected = reference.ffn(cfg, reference.f64(params), x.astype(np.float64))
  np.testing.assert_allclose(module.apply({'params': params}, x), expected, rtol=1e-5, atol=1e-5)


def test_gelu_variants_differ():
  """Exact (erf) and tanh GELU are different functions; both must be available."""
  x = jnp.linspace(-3, 3, 101)
  exact, tanh = layers.ACTIVATIONS['gelu'](x), layers.ACTIVATIONS['gelu_tanh'](x)
  assert 1e-5 < np.abs(exact - tanh).max() < 1e-3
  np.testing.assert_allclose(exact, reference.ACTIVATIONS['gelu'](np.asarray(x, np.float64)),
                             atol=1e-6)


@pytest.mark.parametrize('norm', ['layernorm', 'rmsnorm'])
def test_norms_match_reference(rng, norm):
  cfg = ModelConfig(norm=norm, norm_eps=1e-3)
  x = (rng.normal(size=(2, 5, 8)) * 3 + 1).astype(np.float32)
  module = layers.make_norm(cfg, 'norm')
  params = nn.unbox(module.init(jax.random.key(0), x)['params'])
  params = jax.tree.map(lambda p: p + rng.normal(size=p.shape).astype(np.float32), params)
  expected = reference.norm(cfg, reference.f64(params), x.astype(np.float64))
  np.testing.assert_allclose(module.apply({'params': params}, x), expected, rtol=1e-5, atol=1e-5)


def zero_sublayer_outputs(params):
  """Zero the output projections, so every sublayer f(.) returns exactly 0."""
  def visit(tree, path=()):
    if not isinstance(tree, dict):
      return jnp.zeros_like(tree) if {'out', 'wo'} & set(path) else tree
    return {k: visit(v, path + (k,)) for k, v in tree.items()}
  return visit(params)


@pytest.mark.parametrize('block_cls', [layers.SelfAttentionBlock, layers.CrossAttentionBlock])
def test_pre_and_post_norm_wiring(rng, block_cls):
  """With sublayers that return 0: pre-LN is the identity x -> x (a clean residual path);
  post-LN is norm(x) after every sublayer (here LayerNorm with unit scale: mean 0, variance 1)."""
  x = (rng.normal(size=(2, 4, 16)) * 3 + 2).astype(np.float32)
  enc = rng.normal(size=(2, 3, 16)).astype(np.float32)
  for pre_norm in (True, False):
    cfg = ModelConfig(d_model=16, num_heads=4, d_ff=32, pre_norm=pre_norm, norm_eps=1e-6)
    block = block_cls(cfg, num_layers=1)
    cross = block_cls is layers.CrossAttentionBlock
    args = (x, None, jnp.zeros((2, 4), int)) + ((enc, None) if cross else ()) + (True,)
    params = nn.unbox(block.init(jax.random.key(0), *args)['params'])
    out = np.asarray(block.apply({'params': zero_sublayer_outputs(params)}, *args))
    if pre_norm:
      np.testing.assert_allclose(out, x, atol=1e-6)
    else:
      np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)
      np.testing.assert_allclose(out.var(-1), 1.0, atol=1e-4)
    normal_out = block.apply({'params': params}, *args)  # and the sublayers do contribute
    assert np.abs(np.asarray(normal_out) - out).max() > 1e-3


def test_dropout_only_in_training(rng):
  cfg = ModelConfig(d_model=16, num_heads=4, d_ff=32, dropout=0.5)
  block = layers.SelfAttentionBlock(cfg, num_layers=1)
  x = rng.normal(size=(2, 4, 16)).astype(np.float32)
  pos = jnp.zeros((2, 4), int)
  params = block.init(jax.random.key(0), x, None, pos, True)
  eval_a = block.apply(params, x, None, pos, True)
  eval_b = block.apply(params, x, None, pos, True)
  train = lambda seed: block.apply(params, x, None, pos, False,
                                   rngs={'dropout': jax.random.key(seed)})
  np.testing.assert_array_equal(eval_a, eval_b)
  np.testing.assert_array_equal(train(1), train(1))
  assert np.abs(train(1) - train(2)).max() > 1e-3
  assert np.abs(train(1) - eval_a).max() > 1e-3


@pytest.mark.parametrize('dtype,broadcast_dims', [('float32', ()), ('float32', (1,)),
                                                  ('bfloat16', ())])
def test_dropout_equals_flax_dropout_with_the_paper_gradient(rng, dtype, broadcast_dims):
  """Our Dropout (a saved keep mask for the backward pass) draws flax's mask, gives its values
  bitwise and its gradient, which is mask / (1 - rate), checked against NumPy from the output."""
  rate = 0.3
  x = jnp.asarray(rng.normal(size=(4, 64, 32)), dtype)
  w = jnp.asarray(rng.normal(size=x.shape), dtype)

  def run(cls):
    def loss(x):
      out = cls(rate, broadcast_dims=broadcast_dims).apply(
          {}, x, deterministic=False, rngs={'dropout': jax.random.key(3)})
      return jnp.sum(out * w), out
    (_, out), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(x)
    assert out.dtype == grad.dtype == x.dtype
    return np.asarray(out, np.float32), np.asarray(grad, np.float32)

  out, grad = run(dropout.Dropout)
  flax_out, flax_grad = run(nn.Dropout)
  np.testing.assert_array_equal(out, flax_out)
  tol = 1e-6 if dtype == 'float32' else 1e-2  # x / c vs x * (1 / c): one ulp
  np.testing.assert_allclose(grad, flax_grad, rtol=tol)
  kept = out != 0
  draws = kept.size // (x.shape[1] if broadcast_dims else 1)
  assert abs(kept.mean() - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / draws)
  if broadcast_dims:  # one decision per (batch, feature), shared along the length axis
    assert (kept == kept[:, :1]).all()
  x32, w32 = np.asarray(x, np.float32), np.asarray(w, np.float32)
  np.testing.assert_allclose(out[kept], x32[kept] / (1 - rate), rtol=tol)
  np.testing.assert_allclose(grad, np.where(kept, w32 / (1 - rate), 0), rtol=tol)
  eval_out = dropout.Dropout(rate).apply({}, x, deterministic=True)
  np.testing.assert_array_equal(eval_out, x)
  np.testing.assert_array_equal(dropout.Dropout(1.0).apply({}, x, deterministic=False), 0 * x)
