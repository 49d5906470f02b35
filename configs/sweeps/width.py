"""Depth x width: a grid of d_model and num_layers, heads of 32, d_ff = 4 d_model.

  python -m transformer.sweep --config=configs/sweeps/width.py --workdir=runs/sweeps/width
  python -m transformer.scaling runs/sweeps/width  # L(N) and the depth x width heatmap

Widths 32 to 256 at depths 2, 4 and 6, all on the same tokens: 15 points from 25k to 4.7M
non-embedding parameters; about 25 minutes on 2 CPU cores (`:gpu`: widths 128 to 1024).
"""

from transformer.analysis import studies, sweeps


def get_config(arg=None):
  return studies.base(arg)


def get_sweep(arg=None):
  scale = studies.check_scale(arg)
  widths = [32, 64, 128, 192, 256] if scale == 'cpu' else [128, 256, 512, 768, 1024]
  return sweeps.Sweep(
      grid=sweeps.product(sweeps.axis('model.d_model', widths),
                          sweeps.axis('model.num_layers', [2, 4, 6])),
      derived={'model.d_ff': studies.ffn_4x,
               'model.num_heads': studies.heads_of_size(32 if scale == 'cpu' else 64)})
