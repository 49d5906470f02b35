"""A data-mixture ablation: Shakespeare mixed with the synthetic recall task, from pure text to
an even mix, each point evaluated on both datasets (eval_loss/shakespeare and eval_loss/recall
in metrics.jsonl and summary.json; recall is evaluated at weight 0 too).

  python -m transformer.sweep --config=configs/sweeps/mixture.py --workdir=runs/sweeps/mixture

The default experiment's model on the same number of tokens; only the share of recall
documents changes. Does a little of a task that needs attention to reach back help or hurt the
language model? 5 points, about 4 minutes on 2 CPU cores (`:gpu`: the gpu base).
"""

from transformer.analysis import studies, sweeps

SHARES = [0.0, 0.05, 0.1, 0.25, 0.5]  # of recall documents


def get_config(arg=None):
  config = studies.base(arg)
  config.data.update(dataset='mixture', mixture='shakespeare=1,recall=0')
  return config


def get_sweep(arg=None):
  studies.check_scale(arg)
  mixtures = [f'shakespeare={1 - share:g},recall={share:g}' for share in SHARES]
  return sweeps.Sweep(grid=sweeps.product(sweeps.axis('data.mixture', mixtures)))
