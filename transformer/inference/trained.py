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

  def __repr__(self) -> str:
    """A summary (what, where, how big), not every parameter array."""
    import jax
    leaves = jax.tree.leaves(self.params)
    count = sum(int(getattr(leaf, 'size', 0)) for leaf in leaves)
    cfg = self.cfg
    return (f'Trained(workdir={self.workdir!r}, step={self.step}, {cfg.family} {cfg.head}: '
            f'{cfg.num_layers} layers, d_model {cfg.d_model}, {cfg.num_heads} heads, vocab '
            f'{cfg.vocab_size}; {count:,} parameters in {len(leaves)} arrays; data '
            f'{self.config.data.dataset!r})')

  def tokenizer(self):
    """The run's tokenizer (a trained SentencePiece model is read from the data directory)."""
    return pipeline.get_tokenizer(self.config)


def load(workdir: str, step: int | None = None) -> Trained:
  """The run in `workdir` at checkpoint `step` (default: the newest); a ConfigError if there is
  no run or no such checkpoint. Only the parameters are read (not the optimizer's state)."""
  experiment = runs.read_experiment(workdir)
  step, params = runs.read_params(workdir, experiment, step)
  return Trained(workdir=workdir, config=experiment, params=params, step=step)
