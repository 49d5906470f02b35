"""Depth at a fixed width: loss against the number of blocks, 1 to 12, at d_model 128.

  python -m transformer.sweep --config=configs/sweeps/depth.py --workdir=runs/sweeps/depth
  python -m transformer.scaling runs/sweeps/depth

Every point trains on the same tokens; the non-embedding parameters grow linearly with depth
(200k per block), so the sweep also gives L(N) along the depth axis. About 10 minutes on
2 CPU cores (`:gpu`: d_model 256, 1 to 24 blocks).
"""

from transformer.analysis import studies, sweeps


def get_config(arg=None):
  return studies.base(arg)


def get_sweep(arg=None):
  scale = studies.check_scale(arg)
  depths = [1, 2, 3, 4, 6, 8, 12] + ([16, 24] if scale == 'gpu' else [])
  return sweeps.Sweep(grid=sweeps.axis('model.num_layers', depths))
