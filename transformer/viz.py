"""Plots: loss curves and scaling laws. matplotlib is imported where it is used."""

import math
import os

import numpy as np


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


def _pyplot():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def _save(fig, ax, path: str):
  """Grid, legend, layout, PNG; the figure is closed."""
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  _pyplot().close(fig)


def _plain_log_ticks(axis):
  """Tick labels as plain numbers on a log axis spanning less than a decade (losses)."""
  from matplotlib import ticker
  axis.set_major_formatter(ticker.FormatStrFormatter('%.3g'))
  axis.set_minor_formatter(ticker.FormatStrFormatter('%.3g'))


def plot_power_law(x, loss, curves, path: str, *, xlabel: str, ylabel: str, title: str,
                   others=None):
  """Loss against x on log-log axes: the fitted points, `others` (x, loss) in grey, and each
  (label, function) in `curves` drawn over the range of the points."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  if others is not None and len(others[0]):
    ax.plot(others[0], others[1], 'o', color='0.75', markersize=4, label='other points')
  ax.plot(x, loss, 'o', color='C0', markersize=5, label='fitted points')
  everything = np.concatenate([np.asarray(x, float)] + ([np.asarray(others[0], float)]
                                                          if others is not None else []))
  grid = np.geomspace(everything.min() / 1.5, everything.max() * 1.5, 200)
  for (label, function), style in zip(curves, ('-', '--', ':')):
    ax.plot(grid, function(grid), style, color='C3', label=label)
  ax.set_xscale('log')
  ax.set_yscale('log')
  _plain_log_ticks(ax.yaxis)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  _save(fig, ax, path)


def plot_isoflop_curves(curves, path: str, *, ylabel: str, title: str):
  """Loss against N for each budget, with its parabola in ln N and its minimum. `curves`: objects
  with budget, n, loss, coefficients ((c2, c1, c0) or None) and n_opt (or None)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  colors = plt.get_cmap('viridis')(np.linspace(0, 0.9, max(len(curves), 1)))
  for curve, color in zip(curves, colors):
    ax.plot(curve.n, curve.loss, 'o', color=color, markersize=4, label=f'C = {curve.budget:.2g}')
    if curve.coefficients is not None:
      log_n = np.linspace(math.log(min(curve.n)), math.log(max(curve.n)), 100)
      ax.plot(np.exp(log_n), np.polyval(curve.coefficients, log_n), '-', color=color, alpha=0.7)
    if curve.n_opt is not None:
      ax.plot([curve.n_opt], [np.polyval(curve.coefficients, math.log(curve.n_opt))], '*',
              color=color, markersize=12, markeredgecolor='k')
  ax.plot([], [], '*', color='w', markeredgecolor='k', markersize=10, label='minimum: N_opt')
  ax.set_xscale('log')
  ax.set_xlabel('non-embedding parameters N')
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  _save(fig, ax, path)


def plot_compute_optimal(budget, n_opt, d_opt, laws, path: str, *, title: str):
  """N_opt(C) and D_opt(C) side by side on log-log axes; `laws` holds one (label, function) or
  None for each."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
  grid = np.geomspace(min(budget) / 2, max(budget) * 2, 100)
  for ax, values, law, name in zip(axes, (n_opt, d_opt), laws,
                                    ('N_opt (non-embedding parameters)', 'D_opt (tokens)')):
    ax.plot(budget, values, 'o', color='C0', markersize=6, label='IsoFLOP minima')
    if law is not None:
      ax.plot(grid, law[1](grid), '-', color='C3', label=law[0])
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('compute C (training FLOPs)')
    ax.set_ylabel(name)
    ax.set_title(name.split(' ')[0] + '(C)')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def plot_loss_heatmap(loss_RxC, row_values, column_values, path: str, *, row_label: str,
                      column_label: str, title: str, colorbar_label: str):
  """A grid of losses (rows x columns, nan where no point), each cell annotated."""
  plt = _pyplot()
  rows, columns = len(row_values), len(column_values)
  fig, ax = plt.subplots(figsize=(1.1 * columns + 3, 0.6 * rows + 2.2), dpi=120)
  image = ax.imshow(np.ma.masked_invalid(loss_RxC), cmap='viridis_r', aspect='auto')
  low, high = np.nanmin(loss_RxC), np.nanmax(loss_RxC)
  for r in range(rows):
    for c in range(columns):
      value = loss_RxC[r][c]
      dark = high > low and (value - low) / (high - low) > 0.5
      ax.text(c, r, '-' if math.isnan(value) else f'{value:.3f}', ha='center', va='center',
              fontsize=9, color='white' if dark else 'black')
  ax.set_xticks(range(columns), [str(v) for v in column_values])
  ax.set_yticks(range(rows), [str(v) for v in row_values])
  ax.set_xlabel(column_label)
  ax.set_ylabel(row_label)
  ax.set_title(title, fontsize=10)
  fig.colorbar(image, ax=ax, label=colorbar_label)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
