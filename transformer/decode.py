"""Autoregressive sampling from decoder-only models.

This version recomputes the whole window at every step (no KV cache): simple and exact, the
reference that a cached decoder must match. The window is the model's training length; longer
generations slide it (the oldest tokens drop out).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _filter(logits_V: jax.Array, temperature: float, top_k: int) -> jax.Array:
  if top_k:
    kth = jax.lax.top_k(logits_V, top_k)[0][-1]
    logits_V = jnp.where(logits_V < kth, -jnp.inf, logits_V)
  return logits_V / temperature


@functools.partial(jax.jit, static_argnames=('model', 'temperature', 'top_k'))
def _next_token(model: nn.Module, params, window_1xW: jax.Array, length: jax.Array,
                rng: jax.Array, temperature: float, top_k: int) -> jax.Array:
  """The token after window[:length] (positions past `length` are ignored: causal)."""
  logits_V = model.apply({'params': params}, window_1xW)[0, length - 1]
  if temperature == 0.0:
    return jnp.argmax(logits_V)
  return jax.random.categorical(rng, _filter(logits_V, temperature, top_k))


def sample(model: nn.Module, params, prompt: list[int], num_tokens: int, rng: jax.Array, *,
           window: int, temperature: float = 1.0, top_k: int = 0) -> list[int]:
  """`num_tokens` tokens continuing `prompt` (temperature 0: greedy)."""
  tokens = list(prompt)
  buffer = np.zeros((1, window), np.int32)
  for i in range(num_tokens):
    context = tokens[-window:]
    buffer[0, :len(context)] = context
    token = _next_token(model, params, jnp.asarray(buffer), jnp.int32(len(context)),
                        jax.random.fold_in(rng, i), float(temperature), int(top_k))
    tokens.append(int(token))
  return tokens[len(prompt):]
