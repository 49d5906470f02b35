"""Plots: loss curves. matplotlib is imported where it is used."""

import os


def plot_loss_curve(records: list[dict], path: str, title: str = ''):
  """Training loss (and evaluation loss, where recorded) against step, as a PNG."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  def series(key):
    points = [(r['step'], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]

  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  for key, label, style in (('loss', 'train loss', '-'), ('eval_loss', 'eval loss', 'o-')):
    steps, values = series(key)
    if steps:
      ax.plot(steps, values, style, label=label, markersize=4)
  ax.set_xlabel('step')
  ax.set_ylabel('loss (nats per token)')
  ax.set_title(title or os.path.basename(os.path.dirname(os.path.abspath(path))))
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
