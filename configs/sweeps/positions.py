"""Positional encodings: sinusoidal, learned, RoPE, ALiBi and none, each at two seeds.

  python -m transformer.sweep --config=configs/sweeps/positions.py --workdir=runs/sweeps/positions

The default experiment's model (4 layers, d_model 128) on the same tokens; a causal decoder
can learn positions without any encoding (Haviv et al. 2022), so 'none' is a real contender.
The two seeds show the noise to read differences against. 10 points, about 8 minutes on 2 CPU
cores (`:gpu`: the gpu base).
"""

from transformer.analysis import studies, sweeps


def get_config(arg=None):
  return studies.base(arg)


def get_sweep(arg=None):
  studies.check_scale(arg)
  return sweeps.Sweep(grid=sweeps.product(
      sweeps.axis('model.position', ['sinusoidal', 'learned', 'rope', 'alibi', 'none']),
      sweeps.axis('train.seed', [0, 1])))
