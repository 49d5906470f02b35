"""A trained model from its workdir: the config it was trained with and the parameters of a step.

  run = trained.load('runs/default')            # the newest checkpoint
  logits = run.model.apply({'params': run.params}, tokens)
  tokenizer = run.tokenizer()

Used by `generate`, `viz`, `ablate` and the notebooks. Nothing in the workdir is written.
"""

import dataclasses
import functools
import json
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from transformer import models
from transformer.config import ConfigError, ModelConfig, check_config


@dataclasses.dataclass(frozen=True)
class Trained:
  workdir: str
  config: ml_collections.ConfigDict  # the experiment config the run was trained with
  cfg: ModelConfig
  params: Any
  step: int

  @functools.cached_property
  def model(self) -> nn.Module:
    return models.build_model(self.cfg)

  def tokenizer(self):
    """The run's tokenizer (a trained SentencePiece model is read from the data directory)."""
    from transformer.data import pipeline
    return pipeline.get_tokenizer(self.config)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json (written by train before the first step) as a ConfigDict."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ConfigError(f'--workdir={workdir} holds no run: {path} does not exist (train writes '
                      'it when a run starts)')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  # A converted run keeps its tokenizer in WORKDIR/tokenizer: read from there wherever the run
  # was converted (it may have been moved, and another run put where it was).
  data, own = config.get('data'), os.path.join(workdir, 'tokenizer')
  if data is not None and data.get('tokenizer') == 'huggingface' and os.path.isdir(own):
    data.hf_tokenizer = os.path.abspath(own)
  return config


def load(workdir: str, step: int | None = None) -> Trained:
  """The run in `workdir` at checkpoint `step` (default: the newest); a ConfigError if there is
  no run or no such checkpoint. Only the parameters are read (not the optimizer's state)."""
  from transformer import checkpoint

  config = read_config(workdir)
  cfg = check_config(config)
  abstract = jax.eval_shape(functools.partial(models.init_params, cfg), jax.random.key(0))
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'))
  try:
    steps = ckpts.steps()
    if not steps:
      raise ConfigError(f'--workdir={workdir} has no checkpoint yet (checkpoints/ is empty)')
    if step is None:
      restored = ckpts.restore_latest_params(abstract)
      if restored is None:
        raise ConfigError(f'--workdir={workdir}: no checkpoint could be read')
    elif step not in steps:
      raise ConfigError(f'--step={step} has no checkpoint in {workdir}; steps saved: '
                        + ', '.join(map(str, sorted(steps))))
    else:
      restored = step, ckpts.restore_params(step, abstract)
  finally:
    ckpts.close()
  step, params = restored
  return Trained(workdir=workdir, config=config, cfg=cfg, params=params, step=step)
