"""The loss of each task (`ModelConfig.task`: lm, mlm, seq2seq, classify), weighted so padding
(and prompts, and unmasked MLM tokens) count 0.

Losses are returned as sums with their total weight, so that micro-batches (gradient
accumulation) and devices add up to exactly the mean over the whole batch.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
                  ) -> tuple[jax.Array, jax.Array]:
  """(loss, nll) per example, float32. With smoothing eps the target is (1 - eps) on the label
  plus eps spread uniformly over all V classes: loss = (1 - eps) nll + eps (lse - mean logit)."""
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  nll = lse - jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  if not label_smoothing:
    return nll, nll
  uniform = lse - jnp.mean(logits, axis=-1)
  return (1.0 - label_smoothing) * nll + label_smoothing * uniform, nll


def model_logits(model: nn.Module, params: Any, batch: dict, task: str, *, train: bool = False,
                 rng: jax.Array | None = None) -> jax.Array:
  rngs = {'dropout': rng} if train else {}
  if task == 'seq2seq':
    return model.apply({'params': params}, batch['inputs'], batch['decoder_inputs'],
                       src_segment_ids=batch['inputs_segment_ids'],
                       tgt_segment_ids=batch['targets_segment_ids'],
                       src_positions=batch['inputs_positions'],
                       tgt_positions=batch['targets_positions'], train=train, rngs=rngs)
  return model.apply({'params': params}, batch['inputs'], segment_ids=batch['segment_ids'],
                     positions=batch['positions'], train=train, rngs=rngs)


def loss_sums(model: nn.Module, params: Any, batch: dict, task: str, *,
              label_smoothing: float = 0.0, train: bool = False,
              rng: jax.Array | None = None) -> dict[str, jax.Array]:
  """Weighted sums over the batch: loss (the objective), nll, correct predictions, weight."""
  logits = model_logits(model, params, batch, task, train=train, rng=rng)
  labels = batch['label'] if task == 'classify' else batch['targets']
  weights = batch['weights'].astype(jnp.float32)
  loss, nll = cross_entropy(logits, labels, label_smoothing)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return {'loss': jnp.sum(loss * weights), 'nll': jnp.sum(nll * weights),
          'correct': jnp.sum(correct * weights), 'weight': jnp.sum(weights)}


EVAL_SUMS = ('nll', 'correct', 'weight')


def eval_sums(model: nn.Module, params: Any, batch: dict, task: str) -> dict[str, jax.Array]:
  """The sums evaluation adds up over batches (and devices): nll, correct predictions, weight."""
  sums = loss_sums(model, params, batch, task)
  return {k: sums[k] for k in EVAL_SUMS}
