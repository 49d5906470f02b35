"""The model whose loss experiments/scaling/README.md predicts before it is trained: one point,
4.4x the non-embedding parameters of the largest model of the model-size study.

  python -m transformer.sweep --config=configs/sweeps/prediction.py --workdir=runs/prediction

5 layers of width 240 (heads of 16, d_ff = 4 d_model: 3.47M non-embedding parameters) trained
on 1M tokens (488 steps, the model-size study's token floor) with the study's recipe (AdamW at
3e-3, 5% warmup, cosine decay; studies.base). About 15 minutes on 2 CPU cores.
"""

from transformer.analysis import studies, sweeps

TOKENS = 1_000_000


def get_config(arg=None):
  return studies.base(arg)


def get_sweep(arg=None):
  studies.check_scale(arg)
  return sweeps.Sweep(
      grid=sweeps.zipit(sweeps.axis('model.num_layers', [5]), sweeps.axis('model.d_model', [240])),
      derived={'model.d_ff': studies.ffn_4x,
               'model.num_heads': studies.heads_of_size(16),
               'train.num_steps': lambda c: sweeps.steps_for_tokens(c, TOKENS),
               'opt.warmup_steps': studies.warmup_fraction(0.05),
               'train.eval_every': studies.eval_at_end})
