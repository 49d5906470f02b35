"""Heads x depth at a fixed width: how many heads does a layer want, and does it depend on depth?

  python -m transformer.sweep --config=configs/sweeps/heads.py --workdir=runs/sweeps/heads
  python -m transformer.scaling runs/sweeps/heads  # the heads x depth heatmap

d_model 128 split into 1 to 32 heads (head size 128 down to 4) at 2, 4 and 6 layers; the
parameter count does not change with the head count (the Q/K/V/O projections stay d x d).
18 points, 24 minutes with --parallel=2 on 2 CPU cores shared with other jobs (`:gpu`: d_model
256, 1 to 64 heads). Results: experiments/scaling/README.md.
"""

from transformer.analysis import studies, sweeps


def get_config(arg=None):
  return studies.base(arg)


def get_sweep(arg=None):
  scale = studies.check_scale(arg)
  heads = [1, 2, 4, 8, 16, 32] if scale == 'cpu' else [1, 2, 4, 8, 16, 32, 64]
  return sweeps.Sweep(grid=sweeps.product(sweeps.axis('model.num_heads', heads),
                                          sweeps.axis('model.num_layers', [2, 4, 6])))
