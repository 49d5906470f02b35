"""A trained model from its workdir: the experiment it was trained with and the parameters of a
step.

  run = trained.load('runs/default')            # the newest checkpoint
  logits = run.model.apply({'params': run.params}, tokens)
  tokenizer = run.tokenizer()

Used by `generate`, `viz`, `ablation` and the notebooks. Nothing in the workdir is written;
transformer/training/runs.py reads it (`runs.read_experiment(workdir)` alone gives the config).
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn

from transformer.config import Experiment, ModelConfig
from transformer.data import pipeline
from transformer.model import models
from transformer.training import runs


@dataclasses.dataclass(frozen=True)
class Trained:
  workdir: str
  config: Experiment  # the experiment the run was trained with
  params: Any
  step: int

  @property
  def cfg(self) -> ModelConfig:
    return self.config.model

  @functools.cached_property
  def model(self) -> nn.Module:
    return models.build_model(self.cfg)

  def tokenizer(self):
    """The run's tokenizer (a trained SentencePiece model is read from the data directory)."""
    return pipeline.get_tokenizer(self.config)


def load(workdir: str, step: int | None = None) -> Trained:
  """The run in `workdir` at checkpoint `step` (default: the newest); a ConfigError if there is
  no run or no such checkpoint. Only the parameters are read (not the optimizer's state)."""
  experiment = runs.read_experiment(workdir)
  step, params = runs.read_params(workdir, experiment, step)
  return Trained(workdir=workdir, config=experiment, params=params, step=step)
