"""The train step: a pure function of (state, batch, rng), and the train state it updates.

`train_step(state, batch, rng) -> (state, metrics)` is the one step every layout runs:
transformer/training/sharding.py places it on a device mesh (jit) or maps it over local devices
(pmap); `make_parallel` binds an experiment's model, optimizer and loss to it and does both.
"""

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from transformer.config import Experiment, ModelConfig
from transformer.model import models
from transformer.training import losses, optim, sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # optimizer updates done
  params: Any
  opt_state: Any


def init_state(cfg: ModelConfig, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  params = models.init_params(cfg, rng)
  return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params))


def _micro_batches(batch: dict, n: int) -> dict:
  return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule, task: str,
               label_smoothing: float = 0.0, accum_steps: int = 1, axis_name: str | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on `batch` (split into `accum_steps` micro-batches whose gradients
  add up to the whole batch's). Randomness: fold_in(rng, step). Loss: weighted mean.

  Under jit the batch is global, however it is sharded. Under pmap each device has a slice:
  `axis_name` names the mapped axis, over which gradients and loss sums are added up before
  the update, so every device applies the update of the whole batch."""
  rng = jax.random.fold_in(rng, state.step)
  if axis_name is not None:  # a different dropout mask on each device's slice
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

  def grads_of(micro_batch, micro_rng):
    def objective(params):
      sums = losses.loss_sums(model, params, micro_batch, task, label_smoothing=label_smoothing,
                              train=True, rng=micro_rng)
      return sums['loss'], sums
    return jax.grad(objective, has_aux=True)(state.params)

  if accum_steps == 1:
    grads, sums = grads_of(batch, rng)
  else:
    def add(carry, xs):
      grads, sums = grads_of(*xs)
      return jax.tree.map(jnp.add, carry, (grads, sums)), None
    micro = _micro_batches(batch, accum_steps)
    rngs = jax.random.split(rng, accum_steps)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grads_of, jax.tree.map(
        lambda x: x[0], micro), rngs[0]))
    (grads, sums), _ = jax.lax.scan(add, zeros, (micro, rngs))

  if axis_name is not None:
    grads, sums = jax.lax.psum((grads, sums), axis_name)
  weight = jnp.maximum(sums['weight'], 1.0)
  grads = jax.tree.map(lambda g: g / weight, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  loss = sums['loss'] / weight
  grad_norm = optax.tree.norm(grads)
  metrics = {'loss': loss, 'nll': sums['nll'] / weight, 'accuracy': sums['correct'] / weight,
             'grad_norm': grad_norm, 'learning_rate': schedule(state.step),
             'finite': jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params: Any, batch: dict, *, model: nn.Module, task: str) -> dict[str, jax.Array]:
  """Weighted sums of nll, correct predictions and weight over the batch."""
  return losses.eval_sums(model, params, batch, task)


def make_parallel(experiment: Experiment, devices: list | None = None
                  ) -> tuple[sharding.Parallel, nn.Module]:
  """(parallel, model): the train and eval steps of an experiment, placed on its mesh."""
  cfg, train = experiment.model, experiment.train
  model = models.build_model(cfg)
  tx, schedule = optim.make_optimizer(experiment.opt, train.num_steps, cfg)
  par = sharding.make_parallel(
      experiment, tx, functools.partial(init_state, cfg, tx),
      functools.partial(train_step, model=model, tx=tx, schedule=schedule, task=cfg.task,
                        label_smoothing=train.label_smoothing,
                        accum_steps=train.grad_accum_steps),
      functools.partial(eval_step, model=model, task=cfg.task), devices)
  return par, model
