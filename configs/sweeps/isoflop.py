"""IsoFLOP profiles (Hoffmann et al. 2022, approach 2): several model sizes at each of a few
compute budgets; each point trains for exactly its budget's FLOPs (steps derived from it).

  python -m transformer.sweep --config=configs/sweeps/isoflop.py --workdir=runs/sweeps/isoflop
  python -m transformer.scaling runs/sweeps/isoflop  # N_opt(C), D_opt(C), the IsoFLOP curves

The loss over log N at a fixed budget is roughly a parabola; its minimum is the compute-optimal
size N_opt(C), and D_opt(C) = C / FLOPs per token. Hoffmann et al. find N_opt and D_opt both
~ C^0.5 (~20 tokens per parameter). Budgets 0.4, 0.8 and 1.6 TFLOP x 6 sizes (6.7k to 340k
non-embedding parameters) and 3.2 TFLOP x the 4 smallest: 22 points, about 35 minutes on
2 idle CPU cores (58 measured while other jobs shared them). At these budgets the attention and
output layers cost more FLOPs per token than the blocks' parameters (12LdT and 6Vd against 6N),
so the optimum sits at very small N (experiments/scaling/README.md). `:gpu`: budgets 1e16 to
1e18 FLOPs with sizes from 1M to 100M parameters.
"""

from transformer.analysis import studies, sweeps

# Each budget's sizes, as (num_layers, d_model), chosen to bracket its compute-optimal size.
CPU_SIZES = [(2, 16), (2, 32), (2, 48), (2, 64), (3, 64), (3, 96)]
GPU_SIZES = [(4, 128), (4, 256), (6, 384), (8, 512), (12, 768), (16, 1024)]
BUDGETS = {
    'cpu': {4e11: CPU_SIZES, 8e11: CPU_SIZES, 1.6e12: CPU_SIZES, 3.2e12: CPU_SIZES[:4]},
    'gpu': {1e16: GPU_SIZES, 1e17: GPU_SIZES, 1e18: GPU_SIZES},
}


def get_config(arg=None):
  return studies.base(arg)


def get_sweep(arg=None):
  scale = studies.check_scale(arg)

  def budget_grid(budget, sizes):
    layers, widths = zip(*sizes)
    return sweeps.product(sweeps.axis('sweep.flops_budget', [budget]),
                          sweeps.zipit(sweeps.axis('model.num_layers', layers),
                                       sweeps.axis('model.d_model', widths)))

  return sweeps.Sweep(
      grid=sweeps.chain(*(budget_grid(b, sizes) for b, sizes in BUDGETS[scale].items())),
      derived={'model.d_ff': studies.ffn_4x,
               'model.num_heads': studies.heads_of_size(16 if scale == 'cpu' else 64),
               'train.num_steps': lambda c: sweeps.steps_for_flops(c, c.sweep.flops_budget),
               'opt.warmup_steps': studies.warmup_fraction(0.05),
               'train.eval_every': studies.eval_at_end,
               'train.checkpoint_every': studies.eval_at_end})
