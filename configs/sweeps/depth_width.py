"""Depth against width at a fixed parameter count: is a deep-narrow or a shallow-wide model
better for the same ~800k non-embedding parameters (Kaplan et al. 2020, fig. 5: the loss is
nearly flat over a wide range of aspect ratios d_model / num_layers)?

  python -m transformer.sweep --config=configs/sweeps/depth_width.py \
      --workdir=runs/sweeps/depth_width
  python -m transformer.scaling runs/sweeps/depth_width

1 to 16 blocks, each with the d_model (a multiple of the head size 16) that keeps 12 L d^2
near the target. 7 points, 8 minutes with --parallel=2 on 2 CPU cores (`:gpu`: 25M parameters).
Results: experiments/scaling/README.md.
"""

from transformer.analysis import studies, sweeps

TARGET = {'cpu': 800_000, 'gpu': 25_000_000}  # non-embedding parameters
DEPTHS = [1, 2, 3, 4, 6, 8, 16]


def get_config(arg=None):
  return studies.base(arg)


def get_sweep(arg=None):
  scale = studies.check_scale(arg)
  multiple = 16 if scale == 'cpu' else 64
  widths = [studies.width_for_params(TARGET[scale], depth, multiple) for depth in DEPTHS]
  return sweeps.Sweep(
      grid=sweeps.zipit(sweeps.axis('model.num_layers', DEPTHS),
                        sweeps.axis('model.d_model', widths)),
      derived={'model.d_ff': studies.ffn_4x,
               'model.num_heads': studies.heads_of_size(multiple)})
