"""The models from Flax NNX through `flax.nnx.bridge.ToNNX`: a bridged model holding our
parameters gives the Linen model's outputs and gradients (the snippet in README.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from transformer import presets
from transformer.config import ModelConfig
from transformer.model import models


def bridged(cfg, params, *inputs):
  """The README's recipe: wrap, initialise lazily (without eager sharding: the parameters carry
  logical axis names for our meshes), then load our parameter tree."""
  with nnx.use_eager_sharding(False):
    model = nnx.bridge.ToNNX(models.build_model(cfg), rngs=nnx.Rngs(1)).lazy_init(*inputs)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  return model


def paths(tree) -> dict:
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow(5)
@pytest.mark.parametrize('family', ['decoder_only', 'encoder_decoder'])
def test_an_nnx_bridged_model_gives_the_linen_outputs_and_gradients(family):
  cfg = ModelConfig.from_config(presets.get_config(family, 'tiny'))
  linen, params = models.build_model(cfg), models.init_params(cfg, jax.random.key(0))
  inputs = (jnp.array([[2, 72, 101, 108, 108, 111, 3]]),)
  if family == 'encoder_decoder':
    inputs += (jnp.array([[2, 87, 111, 114]]),)
  model = bridged(cfg, params, *inputs)
  expected = linen.apply({'params': params}, *inputs)
  np.testing.assert_allclose(model(*inputs), expected, rtol=1e-6, atol=1e-6)

  grads = nnx.grad(lambda m: m(*inputs).astype(jnp.float32).std())(model)
  reference = jax.grad(lambda p: linen.apply({'params': p}, *inputs).std())(params)
  ours, theirs = paths(nnx.to_pure_dict(grads)), paths(reference)
  assert ours.keys() == theirs.keys() and len(ours) > 10
  for name, value in theirs.items():
    np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
  assert any(np.abs(v).max() > 0 for v in theirs.values())
