"""Dropout whose backward pass reads a saved 1-byte keep mask.

The values, and the random stream, are flax's `nn.Dropout`'s: the same `make_rng('dropout')`,
the same `jax.random.bernoulli` draw, x / (1 - rate) where kept and 0 elsewhere. Only what the
backward pass keeps differs. Left to itself, XLA saves the two 32-bit threefry words of every
element and recomputes the mask from them in the backward pass, fused into the transposes of
the weight gradients; on CPU that made dropout cost ~12% of the GPT-2-style train step. A
custom VJP that saves the boolean mask (8x fewer bytes) brings it to a few percent
(experiments/perf/RESULTS.md). Gradients are unchanged: d/dx = mask / (1 - rate). Being a
custom VJP, it supports reverse-mode differentiation only (grad, vjp), not jvp or jacfwd.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.module import merge_param


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def apply_mask(x: jax.Array, keep: jax.Array, rate: float) -> jax.Array:
  """x / (1 - rate) where `keep` (broadcastable to x), else 0; the backward pass saves only
  `keep`."""
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _apply_mask_fwd(x, keep, rate):
  return apply_mask(x, keep, rate), keep


def _apply_mask_bwd(rate, keep, g):
  return jnp.where(keep, g / (1.0 - rate), 0).astype(g.dtype), None


apply_mask.defvjp(_apply_mask_fwd, _apply_mask_bwd)


class Dropout(nn.Dropout):
  """`nn.Dropout` (same fields, same random stream and values) with `apply_mask`'s backward."""

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None, rng: jax.Array | None = None):
    deterministic = merge_param('deterministic', self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:
      return jnp.zeros_like(inputs)
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    shape = list(inputs.shape)
    for dim in self.broadcast_dims:
      shape[dim] = 1
    keep = jax.random.bernoulli(rng, p=1.0 - self.rate, shape=shape)  # broadcast by where
    return apply_mask(inputs, keep, self.rate)
