"""Every figure the project draws, as PNG files: a run's loss curve, loss curves of many runs,
scaling laws, heatmaps, attention maps, positional encodings and activation functions.

Each function takes numbers (computed elsewhere: transformer/inference/inspect.py for a trained
run, transformer/analysis/scaling.py for a sweep) and a path; matplotlib is imported where a
figure is drawn, with the Agg backend (no display needed).
"""

import io
import math
import os
from typing import Callable, Sequence

import numpy as np
from etils import epath

MAX_LABELLED_TOKENS = 48  # longer sequences get index ticks: their labels would not be legible


def series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of the records that hold a number under `key`."""
  points = [(r['step'], r[key]) for r in records if isinstance(r.get(key), (int, float))]
  return np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)


def plot_loss_curve(records: list[dict], path: str, title: str = '', *,
                    bytes_tokenizer: bool = False):
  """Training loss (a line) and evaluation loss (markers, another colour) against step, as a PNG;
  with a byte tokenizer a second axis reads the loss in bits per byte (`viz loss RUN --log`
  draws the same on log axes)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  steps, values = series(records, 'loss')
  if len(steps):
    ax.plot(steps, values, '-', color='C0', label='train loss', linewidth=1.2)
  steps, values = series(records, 'eval_loss')
  if len(steps):
    ax.plot(steps, values, 's--', color='C3', label='eval loss (held out)', markersize=5,
            linewidth=0.8)
  ax.set_xlabel('step')
  ax.set_ylabel('loss (nats per token)')
  if bytes_tokenizer:
    _bits_per_byte_axis(ax)
  ax.set_title(title)
  ax.grid(alpha=0.3, which='both')
  ax.legend()
  fig.tight_layout()
  _write(fig, path)
  plt.close(fig)


def _bits_per_byte_axis(ax):
  """A right-hand axis with the loss in bits per byte (a byte tokenizer's token is one byte)."""
  axis = ax.secondary_yaxis('right', functions=(lambda nats: nats / math.log(2),
                                                lambda bits: bits * math.log(2)))
  axis.set_ylabel('bits per byte')
  return axis


def _pyplot():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def _write(fig, path):
  """The figure as a PNG at `path`: a local path, or a remote one (gs://...) through
  etils.epath, which matplotlib cannot write to."""
  if '://' not in os.fspath(path):
    fig.savefig(path)
    return
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png')
  with epath.Path(path).open('wb') as f:
    f.write(buffer.getvalue())


def _save(fig, ax, path: str):
  """Grid, legend, layout, PNG; the figure is closed."""
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=8)
  fig.tight_layout()
  _write(fig, path)
  _pyplot().close(fig)


def _plain_log_ticks(axis):
  """Tick labels as plain numbers on a log axis spanning less than a decade (losses)."""
  from matplotlib import ticker
  axis.set_major_formatter(ticker.FormatStrFormatter('%.3g'))
  axis.set_minor_formatter(ticker.FormatStrFormatter('%.3g'))


def _short_number(value: float, _=None) -> str:
  """1e+12 -> '1e12', 2e11 -> '2e11', 300 -> '300'."""
  if value == 0 or 1e-3 <= abs(value) < 1e4:
    return f'{value:g}'
  mantissa, exponent = f'{value:.0e}'.split('e')
  return f'{mantissa}e{int(exponent)}'


def _readable_log_ticks(axis):
  """A log axis (counts, FLOPs) labelled at 1, 2 and 5 times each power of ten (only at powers of
  ten past three decades), short labels, no labelled minor ticks: no overlapping labels."""
  from matplotlib import ticker
  low, high = axis.axes.get_xlim() if axis.axis_name == 'x' else axis.axes.get_ylim()
  decades = math.log10(max(high, 1e-300) / max(low, 1e-300)) if low > 0 else 10
  subs = (1.0,) if decades > 3 else (1.0, 2.0, 5.0) if decades > 1 else (1.0, 2.0, 3.0, 5.0)
  axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
  axis.set_major_formatter(ticker.FuncFormatter(_short_number))
  axis.set_minor_formatter(ticker.NullFormatter())


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
  for (label, function), style, color in zip(curves, ('-', '--', ':'), ('C3', 'C2', 'C4')):
    ax.plot(grid, function(grid), style, color=color, label=label,
            linewidth=2.0 if style == '-' else 1.5)
  ax.set_xscale('log')
  ax.set_yscale('log')
  _readable_log_ticks(ax.xaxis)
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
  if any(curve.n_opt is not None for curve in curves):
    ax.plot([], [], '*', color='w', markeredgecolor='k', markersize=10, label='minimum: N_opt')
  ax.set_xscale('log')
  _readable_log_ticks(ax.xaxis)
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
    ax.set_xlim(grid[0], grid[-1])
    _readable_log_ticks(ax.xaxis)
    _readable_log_ticks(ax.yaxis)
    ax.set_xlabel('compute C (training FLOPs)')
    ax.set_ylabel(name)
    ax.set_title(name.split(' ')[0] + '(C)')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  _write(fig, path)
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
  _write(fig, path)
  plt.close(fig)


# --- attention maps ------------------------------------------------------------------------------

def plot_attention(weights_LxNxTxS: np.ndarray, path: str, *,
                   query_labels: Sequence[str] | None = None,
                   key_labels: Sequence[str] | None = None, title: str = ''):
  """A grid of heatmaps, rows layers and columns heads ('layer i, head h'), of the weights of
  each query (row) over the keys (columns), all on one colour scale [0, 1] (square root, so
  that small weights show). Token labels go on the axes when both lengths are at most
  MAX_LABELLED_TOKENS, token indices otherwise."""
  plt = _pyplot()
  from matplotlib import colors
  L, N, T, S = weights_LxNxTxS.shape
  labelled = (query_labels is not None and key_labels is not None
              and max(T, S) <= MAX_LABELLED_TOKENS)
  cell = float(np.clip(0.14 * max(T, S), 2.2, 6.0)) if labelled else 2.4
  cell = min(cell, 40 / N, 40 / L)  # keep a deep, wide model's PNG under ~5000 pixels a side
  fig, axes = plt.subplots(L, N, figsize=(cell * N + 1.5, cell * L + 1.0), dpi=120,
                           squeeze=False, layout='constrained')
  fontsize = min(8.0, 0.75 * 72 * cell / max(T, S))
  norm = colors.PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)  # small weights stay visible
  for layer in range(L):
    for head in range(N):
      ax = axes[layer, head]
      image = ax.imshow(weights_LxNxTxS[layer, head], cmap='viridis', norm=norm,
                        interpolation='nearest')
      ax.set_title(f'layer {layer}, head {head}', fontsize=9)
      if labelled:
        ax.set_xticks(range(S), key_labels, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(T), query_labels, fontsize=fontsize)
      else:
        ax.tick_params(labelsize=7)
      if layer == L - 1:
        ax.set_xlabel('key', fontsize=8)
      if head == 0:
        ax.set_ylabel('query', fontsize=8)
  fig.colorbar(image, ax=axes, shrink=min(1.0, 0.6 + 0.2 * L),
               label='attention weight (square-root scale)')
  fig.suptitle(title)
  _write(fig, path)
  plt.close(fig)


def plot_attention_maps(maps: dict[str, np.ndarray], directory: str,
                        labels: Sequence[str] | None = None,
                        target_labels: Sequence[str] | None = None,
                        title: str = '') -> list[str]:
  """One PNG per entry of `attention_maps` (attention_STACK_KIND.png in `directory`); `labels`
  name the tokens, `target_labels` those of an encoder-decoder's decoder. Returns the paths."""
  if '://' not in os.fspath(directory):  # an object store has no directories
    epath.Path(directory).mkdir(parents=True, exist_ok=True)
  decoder_labels = target_labels if target_labels is not None else labels
  paths = []
  for name, weights_LxNxTxS in maps.items():
    stack, kind = name.split('/')
    query_labels = decoder_labels if stack == 'decoder' else labels
    paths.append(str(epath.Path(directory) / f'attention_{stack}_{kind}.png'))
    plot_attention(weights_LxNxTxS, paths[-1], query_labels=query_labels,
                   key_labels=labels if kind == 'cross' else query_labels,
                   title=f'{stack} {kind}-attention' + (f': {title}' if title else ''))
  return paths


# --- positional encodings ------------------------------------------------------------------------


def cosine_similarity(table_PxD: np.ndarray) -> np.ndarray:
  """(P, P): the cosine of the angle between every two position vectors."""
  table_PxD = np.asarray(table_PxD, np.float64)
  unit_PxD = table_PxD / np.maximum(np.linalg.norm(table_PxD, axis=-1, keepdims=True), 1e-12)
  return unit_PxD @ unit_PxD.T


def plot_sinusoidal(pe_PxD: np.ndarray, path: str, dims: Sequence[int] | None = None):
  """Left: PE(pos, i) as a heatmap, position x dimension. Right: PE(pos, i) against position
  for a few dimensions i, whose wavelengths 2 pi 10000^(2 floor(i/2) / d) span the range (by
  default from ~11 positions up, so that integer positions draw them smoothly, and one sin/cos
  pair)."""
  plt = _pyplot()
  d_model = pe_PxD.shape[1]
  if dims is None:
    eighth = 2 * (d_model // 16)
    dims = sorted({2 * (d_model // 32), eighth, eighth + 1, 2 * (d_model // 8),
                   2 * (d_model // 4)})
  fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), dpi=120,
                                    gridspec_kw={'width_ratios': [1, 1.2]})
  image = left.imshow(pe_PxD, cmap='RdBu_r', vmin=-1, vmax=1, aspect='auto',
                      interpolation='nearest')
  left.set_xlabel('dimension i (even: sin, odd: cos)')
  left.set_ylabel('position')
  left.set_title(f'sinusoidal encoding PE(pos, i), d_model = {d_model}')
  fig.colorbar(image, ax=left)
  for i in dims:
    wavelength = 2 * math.pi * 10000 ** (2 * (i // 2) / d_model)
    right.plot(pe_PxD[:, i], label=f'i = {i} ({"sin" if i % 2 == 0 else "cos"}, '
                                   f'wavelength {wavelength:.3g})')
  right.set_xlabel('position')
  right.set_ylabel('PE(pos, i)')
  right.set_title('PE(pos, i) against position')
  right.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  right.grid(alpha=0.3)
  fig.tight_layout()
  _write(fig, path)
  plt.close(fig)


def plot_position_similarity(tables: dict[str, np.ndarray], path: str, title: str = '',
                             boundary: int | None = None):
  """The cosine similarity of every two positions, one heatmap per table (name -> (P, D)), and
  beside them its mean over pairs at each offset |i - j| (for sinusoids it depends on the
  offset alone). `boundary`: dashed lines at that position, e.g. the training length, past
  which a learned table was never trained."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, len(tables) + 1, figsize=(5 * len(tables) + 5.5, 4.6), dpi=120,
                           squeeze=False)
  for ax, (name, table_PxD) in zip(axes[0], tables.items()):
    similarity_PxP = cosine_similarity(table_PxD)
    image = ax.imshow(similarity_PxP, cmap='RdBu_r', vmin=-1, vmax=1, interpolation='nearest')
    ax.set_xlabel('position j')
    ax.set_ylabel('position i')
    ax.set_title(f'{name}: cos(p_i, p_j)', fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.85)
    P = len(similarity_PxP)
    if boundary is not None and boundary < P:
      ax.axhline(boundary - 0.5, color='k', linestyle='--', linewidth=0.8)
      ax.axvline(boundary - 0.5, color='k', linestyle='--', linewidth=0.8)
    axes[0, -1].plot([np.diagonal(similarity_PxP, k).mean() for k in range(P)], label=name)
  axes[0, -1].set_xlabel('offset |i - j|')
  axes[0, -1].set_ylabel('mean cosine similarity')
  axes[0, -1].set_title('similarity against offset', fontsize=10)
  axes[0, -1].grid(alpha=0.3)
  axes[0, -1].legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  _write(fig, path)
  plt.close(fig)


# --- activation functions ------------------------------------------------------------------------

ACTIVATION_LABELS = {
    'relu': 'ReLU max(0, x)',
    'gelu': 'GELU x Φ(x) (exact, erf)',
    'gelu_tanh': 'GELU, tanh approximation',
    'silu': 'SiLU x σ(x) (Marian\'s swish; the gate of SwiGLU)',
}


def plot_activations(x_X: np.ndarray, curves: dict[str, tuple[np.ndarray, np.ndarray]],
                     path: str):
  """The activations (left) and their derivatives (right) at x: `curves` maps a name of
  model.activation to (f(x), f'(x))."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), dpi=120)
  for name, (f_X, grad_X) in curves.items():
    if name == 'swiglu':  # its gate is SiLU, drawn once
      continue
    label = ACTIVATION_LABELS.get(name, name)
    if name == 'gelu_tanh':  # drawn dashed: it lies on the exact GELU
      label += f' (at most {np.abs(f_X - curves["gelu"][0]).max():.1e} from it)'
    style = '--' if name == 'gelu_tanh' else '-'
    axes[0].plot(x_X, f_X, style, label=label)
    axes[1].plot(x_X, grad_X, style, label=label)
  for ax, ylabel in zip(axes, ('f(x)', "f'(x) (jax.grad)")):
    ax.axhline(0, color='0.6', linewidth=0.8)
    ax.axvline(0, color='0.6', linewidth=0.8)
    ax.set_xlabel('x')
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)  # the same curves on the right
  axes[0].set_title('feed-forward activations')
  axes[1].set_title('their derivatives')
  fig.tight_layout()
  _write(fig, path)
  plt.close(fig)


# --- loss curves of runs and sweeps --------------------------------------------------------------

def plot_loss_curves(curves: Sequence, path: str, *, xlabel: str = 'step',
                     x: Callable = lambda curve, steps: steps, log: bool = False,
                     title: str = ''):
  """Train loss (lines) and eval loss (square markers) of every run, one colour per run.
  `curves`: objects with name, step, loss, eval_step and eval_loss; `x(curve, steps)` gives the
  x values of a curve's steps (tokens, compute...); `log`: both axes logarithmic."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(8.5, 5), dpi=120)
  colors = plt.get_cmap('viridis' if len(curves) > 10 else 'tab10')(
      np.linspace(0, 0.9, len(curves)) if len(curves) > 10 else np.arange(len(curves)))
  for curve, color in zip(curves, colors):
    if len(curve.step):
      ax.plot(x(curve, curve.step), curve.loss, '-', color=color, label=curve.name)
    if len(curve.eval_step):  # markers: held-out evaluations, labelled once below
      ax.plot(x(curve, curve.eval_step), curve.eval_loss, 's', color=color, markersize=4,
              markeredgecolor='k', markeredgewidth=0.5)
  if any(len(curve.eval_step) for curve in curves):
    ax.plot([], [], 's', color='w', markeredgecolor='k', label='eval loss (held out)')
  if log:
    ax.set_xscale('log')
    ax.set_yscale('log')
    _plain_log_ticks(ax.yaxis)
  ax.set_xlabel(xlabel)
  ax.set_ylabel('loss (nats per token)')
  bits = bool(curves) and all(getattr(curve, 'byte_tokens', False) for curve in curves)
  if bits:
    _bits_per_byte_axis(ax)
  ax.set_title(title or ('loss' if len(curves) > 1 else f'loss: {curves[0].name}'))
  ax.grid(alpha=0.3, which='both')
  if len(curves) > 1:  # beside the axes, so that it covers no curve
    ax.legend(fontsize=7, ncol=1 + len(curves) // 24, loc='upper left',
              bbox_to_anchor=(1.12 if bits else 1.01, 1), borderaxespad=0)
    fig.set_size_inches(8.5 + 2.5 * (1 + len(curves) // 24), 5)
  else:
    ax.legend(fontsize=7)
  fig.tight_layout()
  _write(fig, path)
  plt.close(fig)


# --- the joint scaling law and the studies of configs/sweeps -----------------------------------

def plot_loss_surface(law, n, tokens, loss, path: str, *, metric: str, predicted=()):
  """Left: iso-loss contours of a fitted L(N, D) over N and D with the points coloured by their
  loss on the same scale, and the compute-optimal path; right: predicted against observed loss.
  `predicted`: predictions (parametric.Prediction) marked with their 95% prediction intervals."""
  plt = _pyplot()
  from matplotlib import colors as mcolors
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), dpi=120)
  marks_n = [value.n for value in predicted]
  marks_d = [value.d for value in predicted]
  log_n = np.linspace(np.log10(min([*n, *marks_n]) / 2), np.log10(max([*n, *marks_n]) * 2), 120)
  log_d = np.linspace(np.log10(min([*tokens, *marks_d]) / 2),
                      np.log10(max([*tokens, *marks_d]) * 2), 120)
  grid_n, grid_d = np.meshgrid(10 ** log_n, 10 ** log_d)
  surface = law(grid_n, grid_d)
  norm = mcolors.LogNorm(vmin=min(loss.min(), np.percentile(surface, 1)),
                         vmax=max(loss.max(), np.percentile(surface, 60)))
  contours = left.contour(grid_n, grid_d, surface, levels=np.geomspace(norm.vmin, norm.vmax, 12),
                          cmap='viridis_r', norm=norm, linewidths=1)
  left.clabel(contours, fmt='%.3g', fontsize=7)
  points = left.scatter(n, tokens, c=loss, cmap='viridis_r', norm=norm, edgecolors='k', s=30,
                        zorder=3, label='runs (colour: observed loss)')
  compute = np.geomspace(6 * grid_n.min() * grid_d.min(), 6 * grid_n.max() * grid_d.max(), 50)
  n_opt, d_opt = law.optimal(compute)
  left.plot(n_opt, d_opt, '--', color='C3',
            label=f'compute-optimal at C = 6ND: N_opt ~ C^{law.a:.2f}')
  if predicted:
    left.plot(marks_n, marks_d, '*', color='C1', markersize=14, markeredgecolor='k',
              label='predicted', zorder=4)
  left.set_xlim(grid_n.min(), grid_n.max())
  left.set_ylim(grid_d.min(), grid_d.max())
  left.set_xscale('log')
  left.set_yscale('log')
  left.set_xlabel('non-embedding parameters N')
  left.set_ylabel('training tokens D')
  left.set_title(law.formula(), fontsize=9)
  bar = fig.colorbar(points, ax=left, label=metric)
  _plain_log_ticks(bar.ax.yaxis)
  left.legend(fontsize=7, loc='best')
  fitted = law(n, tokens)
  right.plot(fitted, loss, 'o', color='C0', markersize=5, label='runs')
  low, high = min(loss.min(), fitted.min()), max(loss.max(), fitted.max())
  for i, value in enumerate(predicted):
    low, high = min(low, value.prediction[0]), max(high, value.prediction[1])
    right.errorbar([value.loss], [value.loss], yerr=[[value.loss - value.prediction[0]],
                                                     [value.prediction[1] - value.loss]],
                   fmt='*', color='C1', markersize=12, markeredgecolor='k', capsize=4,
                   label='' if i else 'prediction (95% prediction interval)')
  right.plot([low, high], [low, high], '-', color='0.5', label='predicted = observed')
  right.set_xlabel(f'fitted {metric}')
  right.set_ylabel(f'observed {metric}')
  right.set_title(f'{len(loss)} runs: rms scatter {law.residual_rms:.2g} in ln L', fontsize=9)
  _save(fig, right, path)


def _mean_by(keys, values) -> tuple[list, np.ndarray]:
  """Sorted distinct keys with the mean of their values."""
  groups = {}
  for key, value in zip(keys, values):
    groups.setdefault(key, []).append(value)
  ordered = sorted(groups)
  return ordered, np.array([np.mean(groups[k]) for k in ordered])


def plot_lr_transfer(values, loss, path: str, *, metric: str):
  """Loss against the peak learning rate, one curve per width (mean over the other fields, e.g.
  seeds, with each run as a dot), one panel per parametrization (SP first); each curve's minimum
  starred. The loss axis is shared and cut above the 90th percentile (diverged runs)."""
  plt = _pyplot()
  from matplotlib import ticker
  order = {'sp': 0, 'mup': 1}
  panels = sorted({v.get('model.parametrization', '') for v in values},
                  key=lambda p: (order.get(p, 2), p))
  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), dpi=120,
                           squeeze=False)
  widths = sorted({v['model.d_model'] for v in values})
  rates = sorted({v['opt.lr'] for v in values})
  colors = plt.get_cmap('viridis')(np.linspace(0, 0.85, len(widths)))
  finite = np.isfinite(loss)
  low = loss[finite].min() if finite.any() else 0.0
  high = np.percentile(loss[finite], 90) if finite.any() else 1.0
  for ax, panel in zip(axes[0], panels):
    for width, color in zip(widths, colors):
      chosen = [i for i, v in enumerate(values) if v['model.d_model'] == width and
                v.get('model.parametrization', '') == panel and finite[i]]
      if not chosen:
        continue
      x, mean = _mean_by([values[i]['opt.lr'] for i in chosen], loss[chosen])
      ax.plot([values[i]['opt.lr'] for i in chosen], loss[chosen], '.', color=color, alpha=0.5)
      ax.plot(x, mean, 'o-', color=color, label=f'd_model {width}')
      best = int(np.argmin(mean))
      ax.plot([x[best]], [mean[best]], '*', color=color, markersize=15, markeredgecolor='k')
    ax.set_xscale('log')
    ax.set_xticks(rates, [f'{rate:g}' for rate in rates], rotation=30, fontsize=8)
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    ax.set_xlabel('peak learning rate opt.lr')
    ax.set_ylabel(metric)
    ax.set_title({'sp': 'standard parametrization (SP)', 'mup': 'muP'}.get(panel, panel or 'runs'))
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8, title='width (star: best rate)', title_fontsize=8)
  fig.tight_layout()
  _write(fig, path)
  plt.close(fig)


def plot_aspect_ratio(values, loss, n, path: str, *, metric: str):
  """Loss against the aspect ratio d_model / num_layers at about one parameter count (Kaplan et
  al. 2020, figure 5), each point labelled with its shape."""
  plt = _pyplot()
  from matplotlib import ticker
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  ratio = np.array([v['model.d_model'] / v['model.num_layers'] for v in values], float)
  order = np.argsort(ratio)
  ax.plot(ratio[order], loss[order], 'o-', color='C0')
  for i in order:
    ax.annotate(f'{values[i]["model.num_layers"]}x{values[i]["model.d_model"]}',
                (ratio[i], loss[i]), textcoords='offset points', xytext=(4, 6), fontsize=7)
  ax.set_xscale('log', base=2)
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(_short_number))
  ax.set_xlabel('aspect ratio d_model / num_layers (label: layers x d_model)')
  ax.set_ylabel(metric)
  ax.set_title(f'Shape at about {np.median(n):,.0f} non-embedding parameters '
               f'({n.min():,.0f} to {n.max():,.0f})', fontsize=10)
  ax.grid(alpha=0.3, which='both')
  fig.tight_layout()
  _write(fig, path)
  plt.close(fig)
