"""A run directory as training leaves it, read back: its config.json and the parameters of its
checkpoints. Nothing in the directory is written.

Training reads runs this way to fine-tune from one (`train.init_from`); everything else reads a
trained model through transformer/inference/trained.py, which builds on this.
"""

import functools
from typing import Any

import jax
import ml_collections

from transformer import files, presets
from transformer.config import Experiment
from transformer.errors import ConfigError
from transformer.model import models
from transformer.training import checkpoint


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json (written when a run starts) over the base config: fields added since
  the run was written get their defaults."""
  files.check_remote(workdir, '--workdir', write=False)
  saved = files.read_json(files.path(workdir) / 'config.json')
  if saved is None:
    raise ConfigError(f'--workdir={workdir} holds no run: {workdir}/config.json does not exist '
                      '(train writes it when a run starts)')
  config = presets.with_base(saved)
  # A converted run keeps its tokenizer in WORKDIR/tokenizer: read from there wherever the run
  # was converted (it may have been moved, and another run put where it was).
  own = files.absolute(files.path(workdir) / 'tokenizer')
  if config.data.tokenizer == 'huggingface' and own.is_dir():
    config.data.hf_tokenizer = str(own)
  return config


def read_experiment(workdir: str) -> Experiment:
  """The validated experiment of the run in `workdir`."""
  files.check_remote(workdir, '--workdir', write=False)
  try:
    return Experiment.from_config(read_config(workdir))
  except ConfigError as e:
    raise ConfigError(f'--workdir={workdir}: its config.json is invalid: {e}') from None


def has_checkpoint(workdir: str) -> bool:
  directory = files.path(workdir) / 'checkpoints'
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def read_params(workdir: str, experiment: Experiment, step: int | None = None
                ) -> tuple[int, Any]:
  """(step, parameters) of checkpoint `step` of the run (default: the newest readable one; an
  unreadable one is skipped and left as it is). Only the parameters are read, not the
  optimizer's state. A ConfigError if there is no such checkpoint."""
  abstract = jax.eval_shape(functools.partial(models.init_params, experiment.model),
                            jax.random.key(0))
  ckpts = checkpoint.Checkpoints(files.path(workdir) / 'checkpoints')
  try:
    steps = ckpts.steps()
    if not steps:
      raise ConfigError(f'--workdir={workdir} has no checkpoint yet (checkpoints/ is empty)')
    if step is None:
      restored = ckpts.restore_latest_params(abstract)
      if restored is None:
        raise ConfigError(f'--workdir={workdir}: no checkpoint could be read')
      return restored
    if step not in steps:
      raise ConfigError(f'--step={step} has no checkpoint in {workdir}; steps saved: '
                        + ', '.join(map(str, sorted(steps))))
    return step, ckpts.restore_params(step, abstract)
  finally:
    ckpts.close()


def finished_summary(workdir: str, num_steps: int) -> dict | None:
  """The run's summary.json if the run has finished (its summary complete, for at least
  `num_steps` steps); None while it has not, or was stopped before writing all of it."""
  summary = files.read_json(files.path(workdir) / 'summary.json') or {}
  complete = (summary.get('status') == 'finished' and summary.get('steps', 0) >= num_steps
              and summary.get('final_train_loss') is not None)
  return summary if complete else None
