"""Does the input pipeline keep up? Tokens/s of the data pipeline against tokens/s of a training
step of the same experiment, measured in one run on the same machine.

  python experiments/perf/data_pipeline.py [--config=configs/default.py] [--repeats=3]

The training step is the default model's forward and backward pass with an AdamW update,
jit-compiled, on batches of the configured shape. The pipeline is measured as training reads
it: a fresh iterator (shuffle, tokenize, pack, batch, background prefetch) consumed as fast as
possible. A third figure runs the step fed from the pipeline (both share the machine, as in
training): equal to the fixed-batch step rate when the pipeline keeps up. Prints one JSON
object per repeat and the ratio's median.
"""

import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from absl import flags

from transformer import cli
from transformer.config import Experiment
from transformer.data import pipeline
from transformer.model import models

_REPEATS = flags.DEFINE_integer('repeats', 3, 'measurements of each side')
_BATCHES = flags.DEFINE_integer('batches', 200, 'batches read per pipeline measurement')
_STEPS = flags.DEFINE_integer('steps', 10, 'training steps per step measurement')


def pipeline_tokens_per_sec(config, tokenizer) -> float:
  iterator = iter(pipeline.make_dataset(config, 'train', tokenizer))
  next(iterator)  # opening the dataset is not throughput
  start, tokens = time.perf_counter(), 0
  for _ in range(_BATCHES.value):
    tokens += next(iterator)['inputs'].size
  seconds = time.perf_counter() - start
  iterator.close()
  return tokens / seconds


def make_train_step(cfg):
  model = models.build_model(cfg)
  optimizer = optax.adamw(1e-3)

  def loss_fn(params, batch, rng):
    logits = model.apply({'params': params}, batch['inputs'], segment_ids=batch['segment_ids'],
                         positions=batch['positions'], train=True, rngs={'dropout': rng})
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets'])
    return jnp.sum(losses * batch['weights']) / jnp.maximum(batch['weights'].sum(), 1.0)

  @jax.jit
  def step(params, opt_state, batch, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step, optimizer


def step_tokens_per_sec(cfg, batch, iterator=None) -> float:
  """Training steps on one fixed batch, or fed from `iterator` (the pipeline then shares the
  machine with the step, as in training)."""
  step, optimizer = make_train_step(cfg)
  params = models.init_params(cfg, jax.random.key(0))
  opt_state = optimizer.init(params)
  params, opt_state, loss = step(params, opt_state, batch, jax.random.key(1))  # compile
  loss.block_until_ready()
  start = time.perf_counter()
  for i in range(_STEPS.value):
    params, opt_state, loss = step(params, opt_state, next(iterator) if iterator else batch,
                                   jax.random.key(i))
  loss.block_until_ready()
  return _STEPS.value * batch['inputs'].size / (time.perf_counter() - start)


def main(config, argv):
  del argv
  config = Experiment.from_config(config)
  pipeline.check_data(config)
  if config.task != 'lm':
    cli.fail(f'this benchmark times a causal-LM step; the config gives task {config.task}')
  tokenizer = pipeline.get_tokenizer(config)
  config = pipeline.with_vocab(config, tokenizer)
  cfg = config.model
  iterator = iter(pipeline.make_dataset(config, 'train', tokenizer))
  batch = next(iterator)
  iterator.close()
  ratios = []
  for repeat in range(_REPEATS.value):
    data_tps = pipeline_tokens_per_sec(config, tokenizer)
    step_tps = step_tokens_per_sec(cfg, batch)
    feeding = iter(pipeline.make_dataset(config, 'train', tokenizer))
    fed_tps = step_tokens_per_sec(cfg, batch, feeding)
    feeding.close()
    ratios.append(data_tps / step_tps)
    print(json.dumps(dict(repeat=repeat, dataset=config.data.dataset, batch=config.data.batch_size,
                          seq_len=config.data.seq_len, pipeline_tokens_per_sec=round(data_tps),
                          step_tokens_per_sec=round(step_tps), ratio=round(ratios[-1], 1),
                          fed_step_tokens_per_sec=round(fed_tps),
                          device=str(jax.devices()[0].device_kind))), flush=True)
  print(f'pipeline / train step: median {statistics.median(ratios):.1f}x '
        f'(min {min(ratios):.1f}x, max {max(ratios):.1f}x)')


if __name__ == '__main__':
  cli.run(main)
