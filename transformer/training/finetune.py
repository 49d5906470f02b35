"""Fine-tuning: a run's first start from another run's parameters (`train.init_from`).

The source is any run with a checkpoint (one written by transformer.convert, or one trained
here). Parameters the new model shares with it (same path, same shape; the layer layout, scanned
or unrolled, may differ) start from the source's newest values; the others (a new head) start
fresh. The optimizer always starts fresh.
"""

from typing import Any

import jax
import numpy as np

from transformer.config import Experiment
from transformer.errors import ConfigError
from transformer.model import models
from transformer.training import runs


def _abstract_params(cfg) -> Any:
  return jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))


def check_init_from(experiment: Experiment):
  """train.init_from must name a run with a checkpoint whose parameters, where this model shares
  them, have the same shapes (checked on shapes alone, before anything compiles)."""
  source, cfg = experiment.train.init_from, experiment.model
  if not source:
    return
  try:
    source_cfg = runs.read_experiment(source).model
  except ConfigError as e:
    raise ConfigError(f'train.init_from={source!r} is invalid: {e}') from None
  if not runs.has_checkpoint(source):
    raise ConfigError(f'train.init_from={source!r} is invalid: it has no checkpoint yet')
  want = models.flat_params(_abstract_params(cfg))
  have = models.flat_params(jax.eval_shape(lambda: models.in_layout(
      cfg, models.init_params(source_cfg, jax.random.key(0)))))
  shared = {name: leaf for name, leaf in want.items() if name in have}
  if not shared:
    raise ConfigError(f'train.init_from={source!r} is invalid: it shares no parameter with this '
                      'model')
  mismatch = models.first_mismatch(shared, have)
  if mismatch:
    name, theirs, ours = mismatch
    raise ConfigError(f'train.init_from={source!r} is invalid: its parameter {name} is {theirs}, '
                      f'this model\'s is {ours}; keep the model fields of {source}/config.json '
                      '(configs/finetune.py does)')


def initial_params(experiment: Experiment, fresh: Any) -> tuple[Any, str]:
  """(`fresh` with every parameter that train.init_from's newest checkpoint also holds replaced
  by its value there, on the host, in this run's param_dtype; a line saying what started
  fresh and what was left out)."""
  source = experiment.train.init_from
  source_experiment = runs.read_experiment(source)
  step, params = runs.read_params(source, source_experiment)
  loaded = models.flat_params(models.in_layout(experiment.model, params))
  mine = models.flat_params(fresh)
  leaves = [np.asarray(loaded[name]).astype(leaf.dtype) if name in loaded else leaf
            for name, leaf in mine.items()]
  new = [name for name in mine if name not in loaded]
  unused = sorted(set(loaded) - set(mine))
  note = (f'initialised from {source} (step {step}): {len(mine) - len(new)} of {len(mine)} '
          'parameters' + (f'; fresh: {", ".join(new)}' if new else '')
          + (f'; not used: {", ".join(unused)}' if unused else ''))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(fresh), leaves), note
