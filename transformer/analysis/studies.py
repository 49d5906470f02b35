"""The base experiment of the sweeps in configs/sweeps/, and the rules their derived fields use.

A GPT-style byte-level language model on the embedded Shakespeare corpus (offline), at a scale
named by the sweep file's argument:
  cpu  (default) a point trains in seconds to a few minutes on 2 CPU cores;
  gpu  longer sequences, bigger batches and more steps, for one GPU (bfloat16 compute).
"""

import ml_collections

from transformer import presets
from transformer.errors import ConfigError

SCALES = ('cpu', 'gpu')


def check_scale(scale: str | None) -> str:
  scale = scale or 'cpu'
  if scale not in SCALES:
    raise ConfigError(f'sweep scale {scale!r} is invalid: must be one of {", ".join(SCALES)} '
                      '(--config=configs/sweeps/FILE.py:SCALE)')
  return scale


def base(scale: str | None = None) -> ml_collections.ConfigDict:
  """The default experiment's model (4 layers, d_model 128, heads of 32, RoPE), shorter."""
  scale = check_scale(scale)
  config = presets.get_config('decoder_only', 'mini')
  config.model.update(num_layers=4, d_model=128, num_heads=4, d_ff=512, position='rope',
                      dropout=0.0)
  config.data.update(seq_len=128, batch_size=16)  # 2048 tokens per step
  config.train.update(num_steps=300, log_every=25, eval_every=300, eval_batches=10,
                      checkpoint_every=250, sample_tokens=0)
  config.opt.update(lr=3e-3, warmup_steps=30)
  if scale == 'gpu':
    config.model.update(d_model=256, num_heads=4, d_ff=1024, dtype='bfloat16')
    config.data.update(seq_len=256, batch_size=64)  # 16384 tokens per step
    config.train.update(num_steps=2000, log_every=100, eval_every=2000, eval_batches=40,
                        checkpoint_every=500)
    config.opt.update(lr=2e-3, warmup_steps=100)
  # Labels of a point that are not training fields (e.g. an IsoFLOP point's compute budget);
  # train ignores this section, results.csv reports it.
  config.sweep = ml_collections.ConfigDict({'flops_budget': 0.0})
  return config


# Rules for derived fields: each maps the point's config to a value.

def ffn_4x(config) -> int:
  """d_ff = 4 d_model (GPT-2, the paper)."""
  return 4 * config.model.d_model


def heads_of_size(head_size: int):
  """num_heads = d_model / head_size: the head size stays fixed as the width grows."""
  def num_heads(config) -> int:
    d_model = config.model.d_model
    if d_model % head_size:
      raise ConfigError(f'model.d_model={d_model} is not a multiple of the head size {head_size}')
    return d_model // head_size
  return num_heads


def warmup_fraction(fraction: float):
  """opt.warmup_steps = fraction x train.num_steps (at least 1)."""
  return lambda config: max(1, round(fraction * config.train.num_steps))


def eval_at_end(config) -> int:
  """train.eval_every = train.num_steps: one evaluation, at the end."""
  return config.train.num_steps


def width_for_params(non_embedding: float, num_layers: int, multiple: int) -> int:
  """The d_model (a multiple of `multiple`) whose blocks hold about `non_embedding` parameters:
  each block has 12 d^2 (4 d^2 attention, 8 d^2 feed-forward at d_ff = 4d), plus biases."""
  return max(multiple, round((non_embedding / (12 * num_layers)) ** 0.5 / multiple) * multiple)
