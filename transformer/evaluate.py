"""Held-out evaluation of a trained model, outside the training loop: loss, perplexity, bits per
byte, accuracy, for any sequence length the model accepts (e.g. longer than it was trained on).

  run = trained.load('runs/default')
  batches = held_out_batches(run.config, run.tokenizer(), num_batches=10, seq_len=512)
  evaluate(run.model, run.params, batches, task='lm', byte_tokens=True)

During training, `train.evaluate` computes the same numbers on the sharded train state.
"""

import copy
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer import losses


def held_out_batches(config: Any, tokenizer, num_batches: int, seq_len: int | None = None,
                     batch_size: int | None = None) -> list[dict]:
  """The first `num_batches` batches of the held-out split (fewer if it is shorter), packed to
  `seq_len` (default: the run's data.seq_len)."""
  from transformer.data import pipeline
  config = copy.deepcopy(config)
  with config.unlocked():
    if seq_len is not None:
      config.data.seq_len = seq_len
    if batch_size is not None:
      config.data.batch_size = batch_size
  iterator = iter(pipeline.make_dataset(config, 'eval', tokenizer))
  batches = []
  for _ in range(num_batches):
    batch = next(iterator, None)
    if batch is None:
      break
    batches.append(batch)
  iterator.close()
  return batches


@functools.partial(jax.jit, static_argnames=('model', 'task'))
def _sums(model: nn.Module, params: Any, batch: dict, task: str) -> dict[str, jax.Array]:
  sums = losses.loss_sums(model, params, batch, task)
  return {k: sums[k] for k in ('nll', 'correct', 'weight')}


def sums(model: nn.Module, params: Any, batches: list[dict], task: str) -> dict[str, float]:
  """nll, correct predictions and weight summed over the batches (float64 on the host)."""
  totals = {'nll': 0.0, 'correct': 0.0, 'weight': 0.0}
  for batch in batches:
    for key, value in jax.device_get(_sums(model, params, batch, task)).items():
      totals[key] += float(value)
  return totals


def metrics_from_sums(totals: dict[str, float], task: str, byte_tokens: bool
                      ) -> dict[str, float]:
  """eval_loss (mean nll per target), eval_accuracy, and for token tasks eval_perplexity and,
  with a byte tokenizer, eval_bits_per_byte (one token is one byte)."""
  weight = max(totals['weight'], 1.0)
  out = {'eval_loss': totals['nll'] / weight, 'eval_accuracy': totals['correct'] / weight}
  if task != 'classify':
    out['eval_perplexity'] = math.exp(min(out['eval_loss'], 700.0))
    if byte_tokens:
      out['eval_bits_per_byte'] = out['eval_loss'] / math.log(2)
  return out


def evaluate(model: nn.Module, params: Any, batches: list[dict], task: str, *,
             byte_tokens: bool = False) -> dict[str, float]:
  """The metrics of `metrics_from_sums` over `batches`."""
  return metrics_from_sums(sums(model, params, batches, task), task, byte_tokens)


def evaluate_run(run, num_batches: int = 10, seq_len: int | None = None) -> dict[str, float]:
  """A `trained.Trained` run's metrics on `num_batches` held-out batches of length `seq_len`."""
  task = losses.task_of_model(run.cfg)
  batches = held_out_batches(run.config, run.tokenizer(), num_batches, seq_len)
  return evaluate(run.model, run.params, batches, task,
                  byte_tokens=run.config.data.tokenizer == 'byte')
