"""Plots: loss curves of runs and sweeps, scaling laws, attention maps of a trained model,
positional encodings and activation functions; and the command that draws them.

  python -m transformer.viz attention --workdir=RUN --text='...' [--target='...'] [--step=N]
  python -m transformer.viz positions [--d_model=128 --max_len=128] [--workdir=RUN]
  python -m transformer.viz activations
  python -m transformer.viz loss DIR [DIR ...] [--against=step|tokens|compute] [--log]

PNGs go to --out (a directory; for `loss` a file), else RUN/viz/ for plots of a run (for `loss`,
DIR/viz/ when one DIR is given), else viz/ in the current directory; the paths are printed.
matplotlib, jax and flax are imported where they are used: scaling imports this module.
"""

import dataclasses
import functools
import json
import math
import os
from typing import Sequence

import numpy as np

from transformer.config import ConfigError


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of the records that hold a number under `key`."""
  points = [(r['step'], r[key]) for r in records if isinstance(r.get(key), (int, float))]
  return np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)


def plot_loss_curve(records: list[dict], path: str, title: str = ''):
  """Training loss (and evaluation loss, where recorded) against step, as a PNG."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  for key, label, style in (('loss', 'train loss', '-'), ('eval_loss', 'eval loss', 'o-')):
    steps, values = _series(records, key)
    if len(steps):
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


# --- attention maps ------------------------------------------------------------------------------

# The attention modules of a block, by name (layers.py), and the kind of attention each is.
_ATTENTION_KINDS = {'attention': 'self', 'self_attention': 'self', 'cross_attention': 'cross'}
MAX_LABELLED_TOKENS = 48  # longer sequences get index ticks: their labels would not be legible


def attention_maps(cfg, params, tokens: Sequence[int],
                   target_tokens: Sequence[int] | None = None) -> dict[str, np.ndarray]:
  """Per-layer, per-head attention weights of one example, {'STACK/KIND': (L, N, T, S)}:
  'decoder/self' (decoder_only), 'encoder/self' (encoder_only), or 'encoder/self',
  'decoder/self' and 'decoder/cross' (encoder_decoder, whose decoder reads `target_tokens`).

  Rows are queries, columns keys. The weights are those MultiHeadAttention sows into
  'intermediates' in a forward pass; unrolled stacks (layers_0, layers_1, ...) are stacked into
  the leading layer axis that scanned stacks already have.
  """
  import jax
  import jax.numpy as jnp
  from transformer import models
  if (cfg.family == 'encoder_decoder') != (target_tokens is not None):
    raise ValueError(f'{cfg.family}: target tokens are given for encoder_decoder models, and '
                     'only for them')
  inputs = [tokens] if target_tokens is None else [tokens, target_tokens]
  apply = jax.jit(functools.partial(models.build_model(cfg).apply, mutable=['intermediates']))
  _, state = apply({'params': params}, *[jnp.asarray(t, jnp.int32)[None] for t in inputs])
  maps = {}
  for stack, tree in state['intermediates'].items():
    blocks = models.stack_layers(tree)['layers']
    for module, kind in _ATTENTION_KINDS.items():
      if module in blocks:
        weights_LxBxNxTxS, = blocks[module]['attention_weights']
        maps[f'{stack}/{kind}'] = np.asarray(weights_LxBxNxTxS[:, 0], np.float32)
  return maps


def attention_inputs(config, tokenizer, text: str,
                     target: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
  """(tokens, target tokens) as training builds them (data/pipeline.py): decoder_only
  <bos> text; encoder_only <bos> text, with <eos> for the masked-LM head; encoder_decoder the
  source text <eos> and the decoder's input <bos> target (None for the other families)."""
  ids = np.asarray(tokenizer.encode(text), np.int32)
  family = config.model.family
  if family == 'encoder_decoder':
    return (np.append(ids, tokenizer.eos_id),
            np.insert(np.asarray(tokenizer.encode(target), np.int32), 0, tokenizer.bos_id))
  tokens = np.insert(ids, 0, tokenizer.bos_id)
  if family == 'encoder_only' and config.model.head == 'mlm':
    tokens = np.append(tokens, tokenizer.eos_id)
  return tokens, None


def token_labels(tokenizer, ids: Sequence[int]) -> list[str]:
  """A short label per token: <bos>, <eos>, ... for special ids, else its own text with a space
  shown as '␣', other whitespace and control characters escaped, and a byte that is only part
  of a UTF-8 character as its hex value."""
  special = {getattr(tokenizer, f'{name}_id'): f'<{name}>'
             for name in ('pad', 'bos', 'eos', 'sep', 'mask', 'unk')
             if hasattr(tokenizer, f'{name}_id')}
  labels = []
  for i in map(int, ids):
    text = special.get(i) or tokenizer.decode([i])
    if not text or text == '\ufffd':
      text = f'0x{i:02x}'
    labels.append(''.join('␣' if c == ' ' else c if c.isprintable() else repr(c)[1:-1]
                          for c in text))
  return labels


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
  fig.savefig(path)
  plt.close(fig)


def plot_attention_maps(maps: dict[str, np.ndarray], directory: str,
                        labels: Sequence[str] | None = None,
                        target_labels: Sequence[str] | None = None,
                        title: str = '') -> list[str]:
  """One PNG per entry of `attention_maps` (attention_STACK_KIND.png in `directory`); `labels`
  name the tokens, `target_labels` those of an encoder-decoder's decoder. Returns the paths."""
  os.makedirs(directory, exist_ok=True)
  decoder_labels = target_labels if target_labels is not None else labels
  paths = []
  for name, weights_LxNxTxS in maps.items():
    stack, kind = name.split('/')
    query_labels = decoder_labels if stack == 'decoder' else labels
    paths.append(os.path.join(directory, f'attention_{stack}_{kind}.png'))
    plot_attention(weights_LxNxTxS, paths[-1], query_labels=query_labels,
                   key_labels=labels if kind == 'cross' else query_labels,
                   title=f'{stack} {kind}-attention' + (f': {title}' if title else ''))
  return paths


# --- positional encodings ------------------------------------------------------------------------


def sinusoidal_table(max_len: int, d_model: int) -> np.ndarray:
  """The paper's encoding of positions 0 .. max_len - 1, (max_len, d_model)."""
  import jax.numpy as jnp
  from transformer import positional
  return np.asarray(positional.sinusoidal(jnp.arange(max_len), d_model))


def cosine_similarity(table_PxD: np.ndarray) -> np.ndarray:
  """(P, P): the cosine of the angle between every two position vectors."""
  table_PxD = np.asarray(table_PxD, np.float64)
  unit_PxD = table_PxD / np.maximum(np.linalg.norm(table_PxD, axis=-1, keepdims=True), 1e-12)
  return unit_PxD @ unit_PxD.T


def learned_position_tables(params) -> dict[str, np.ndarray]:
  """The learned position tables of a model's parameters, by embedder ('embedder', or
  'source_embedder' and 'target_embedder' when an encoder-decoder does not share them)."""
  return {name: np.asarray(tree['positions']['embedding'], np.float32)
          for name, tree in params.items()
          if isinstance(tree, dict) and 'positions' in tree}


def plot_sinusoidal(max_len: int, d_model: int, path: str, dims: Sequence[int] | None = None):
  """Left: PE(pos, i) as a heatmap, position x dimension. Right: PE(pos, i) against position
  for a few dimensions i, whose wavelengths 2 pi 10000^(2 floor(i/2) / d) span the range (by
  default from ~11 positions up, so that integer positions draw them smoothly, and one sin/cos
  pair)."""
  plt = _pyplot()
  pe_PxD = sinusoidal_table(max_len, d_model)
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
  fig.savefig(path)
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
  fig.savefig(path)
  plt.close(fig)


# --- activation functions ------------------------------------------------------------------------

ACTIVATION_LABELS = {
    'relu': 'ReLU max(0, x)',
    'gelu': 'GELU x Φ(x) (exact, erf)',
    'gelu_tanh': 'GELU, tanh approximation',
    'silu': 'SiLU x σ(x) (Marian\'s swish; the gate of SwiGLU)',
}


def activation_curves(x_X: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{name: (f(x), f'(x))} for every feed-forward activation of layers.ACTIVATIONS, the
  derivative by jax.grad, vmapped over x."""
  import jax
  import jax.numpy as jnp
  from transformer import layers
  x_X = jnp.asarray(x_X, jnp.float32)
  curves = jax.jit(lambda x: {name: (jax.vmap(f)(x), jax.vmap(jax.grad(f))(x))
                              for name, f in layers.ACTIVATIONS.items()})(x_X)
  return {name: (np.asarray(f_X), np.asarray(grad_X)) for name, (f_X, grad_X) in curves.items()}


def plot_activations(path: str, x_min: float = -4.0, x_max: float = 4.0):
  """The activations (left) and their derivatives (right) on [x_min, x_max]."""
  plt = _pyplot()
  x_X = np.linspace(x_min, x_max, 801)
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), dpi=120)
  curves = activation_curves(x_X)
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
  fig.savefig(path)
  plt.close(fig)


# --- loss curves of runs and sweeps --------------------------------------------------------------

AGAINST = {  # x axes of the loss curves
    'step': 'step',
    'tokens': 'training tokens (steps x data.batch_size x data.seq_len)',
    'compute': 'training compute (FLOPs)',
}


@dataclasses.dataclass(frozen=True)
class LossCurve:
  """A run's logged losses (metrics.jsonl) and what converts its steps into tokens and FLOPs."""

  name: str
  directory: str
  step: np.ndarray
  loss: np.ndarray
  eval_step: np.ndarray
  eval_loss: np.ndarray
  tokens_per_step: int | None  # data.batch_size x data.seq_len, from config.json
  flops_per_token: float | None  # summary.json's, else counted from config.json

  def x(self, steps: np.ndarray, against: str) -> np.ndarray:
    """`steps` converted to the x axis `against` (a key of AGAINST)."""
    if against == 'step':
      return steps
    if self.tokens_per_step is None:
      raise ConfigError(f'--against={against}: {self.directory} has no config.json to count '
                        'its tokens and FLOPs; use --against=step')
    tokens = steps * self.tokens_per_step
    return tokens if against == 'tokens' else tokens * self.flops_per_token


def find_runs(directories: Sequence[str]) -> list[str]:
  """Every run directory (one holding metrics.jsonl) among `directories`: a run itself, or the
  runs one level below it (a sweep's points), in name order."""
  runs = []
  for directory in directories:
    if os.path.exists(os.path.join(directory, 'metrics.jsonl')):
      runs.append(directory)
      continue
    below = sorted(os.path.join(directory, name) for name in
                   (os.listdir(directory) if os.path.isdir(directory) else ())
                   if os.path.exists(os.path.join(directory, name, 'metrics.jsonl')))
    if not below:
      raise ConfigError(f'DIR={directory} is neither a run nor a sweep: it holds no '
                        'metrics.jsonl, nor does any directory in it (give a run\'s --workdir '
                        'or a sweep\'s)')
    runs += below
  return runs


def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_loss_curve(directory: str, name: str | None = None) -> LossCurve:
  """The losses of the run in `directory` (metrics.jsonl), with its config's tokens per step and
  FLOPs per token where config.json is there."""
  from transformer import metrics
  records = metrics.read_jsonl(os.path.join(directory, 'metrics.jsonl'))
  config = _read_json(os.path.join(directory, 'config.json'))
  summary = _read_json(os.path.join(directory, 'summary.json')) or {}
  tokens_per_step = flops_per_token = None
  if config is not None:
    import ml_collections
    from transformer import scaling
    from transformer.config import check_config
    config = ml_collections.ConfigDict(config)
    tokens_per_step = config.data.batch_size * config.data.seq_len
    flops_per_token = summary.get('flops_per_token') or scaling.summarize(
        check_config(config), config.data.seq_len)['flops_per_token']
  step, loss = _series(records, 'loss')
  eval_step, eval_loss = _series(records, 'eval_loss')
  return LossCurve(name or os.path.basename(os.path.normpath(directory)), directory, step, loss,
                   eval_step, eval_loss, tokens_per_step, flops_per_token)


def loss_curves(directories: Sequence[str]) -> list[LossCurve]:
  """The curves of every run in `directories` (runs or sweeps), each named by its path below
  the directory they all share (a lone run: by its own name)."""
  runs = find_runs(directories)
  common = os.path.commonpath([os.path.abspath(r) for r in runs]) if len(runs) > 1 else None
  return [read_loss_curve(r, os.path.relpath(os.path.abspath(r), common) if common else None)
          for r in runs]


def plot_loss_curves(curves: Sequence[LossCurve], path: str, *, against: str = 'step',
                     log: bool = False, title: str = ''):
  """Train loss (lines) and eval loss (dashed, with markers) of every run, one colour per run,
  against step, tokens or compute; `log`: both axes logarithmic."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(8.5, 5), dpi=120)
  colors = plt.get_cmap('viridis' if len(curves) > 10 else 'tab10')(
      np.linspace(0, 0.9, len(curves)) if len(curves) > 10 else np.arange(len(curves)))
  for curve, color in zip(curves, colors):
    if len(curve.step):
      ax.plot(curve.x(curve.step, against), curve.loss, '-', color=color, label=curve.name)
    if len(curve.eval_step):
      ax.plot(curve.x(curve.eval_step, against), curve.eval_loss, 'o--', color=color,
              markersize=3, label=f'{curve.name} (eval)')
  if log:
    ax.set_xscale('log')
    ax.set_yscale('log')
    _plain_log_ticks(ax.yaxis)
  ax.set_xlabel(AGAINST[against])
  ax.set_ylabel('loss (nats per token)')
  ax.set_title(title or ('loss' if len(curves) > 1 else f'loss: {curves[0].name}'))
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=7, ncol=1 + len(curves) // 12, loc='upper right')
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


# --- the command ---------------------------------------------------------------------------------

COMMANDS = ('attention', 'positions', 'activations', 'loss')


def _out_dir(out: str | None, workdir: str | None) -> str:
  directory = out or (os.path.join(workdir, 'viz') if workdir else 'viz')
  os.makedirs(directory, exist_ok=True)
  return directory


def attention_command(workdir: str | None, text: str | None, target: str | None = None,
                      step: int | None = None, out: str | None = None) -> list[str]:
  """`viz attention`: the attention maps of the run in `workdir` on `text` (and `target`); the
  input is checked before the checkpoint is read. Returns the paths written."""
  from transformer import trained
  if not workdir:
    raise ConfigError('--workdir is required for attention: the directory of a trained run')
  config = trained.read_config(workdir)
  family = config.model.family
  if not text:
    raise ConfigError(f'--text={text or ""!r} is empty: give the text whose attention to draw')
  if family == 'encoder_decoder' and not target:
    raise ConfigError(f'--target={target or ""!r} is empty: this run is encoder_decoder; give '
                      'the target text its decoder reads (--text is the source)')
  if family != 'encoder_decoder' and target:
    raise ConfigError(f'--target={target!r} is only for encoder_decoder runs; this run is '
                      f'{family}')
  run = trained.load(workdir, step)
  tokenizer = run.tokenizer()
  tokens, target_tokens = attention_inputs(config, tokenizer, text, target)
  for flag, ids in (('--text', tokens), ('--target', target_tokens)):
    if ids is not None and len(ids) > run.cfg.max_len:
      raise ConfigError(f'{flag} is {len(ids)} tokens long; this model takes at most '
                        f'model.max_len={run.cfg.max_len}')
  maps = attention_maps(run.cfg, run.params, tokens, target_tokens)
  name = os.path.basename(os.path.normpath(workdir))
  return plot_attention_maps(
      maps, _out_dir(out, workdir), token_labels(tokenizer, tokens),
      None if target_tokens is None else token_labels(tokenizer, target_tokens),
      title=f'{name}, step {run.step}')


def positions_command(d_model: int | None = None, max_len: int | None = None,
                      workdir: str | None = None, out: str | None = None) -> list[str]:
  """`viz positions`: the sinusoidal encoding and the similarity of positions, at the run's
  d_model and max_len when `workdir` is given (explicit values win), else 128 and 128; a run
  with learned positions adds its table(s). Returns the paths written."""
  from transformer import trained
  config = trained.read_config(workdir) if workdir else None
  d_model = d_model or (config.model.d_model if config else 128)
  max_len = max_len or (config.model.max_len if config else 128)
  if d_model < 2 or d_model % 2:
    raise ConfigError(f'--d_model={d_model}: the sinusoidal encoding needs an even width >= 2')
  if max_len < 2:
    raise ConfigError(f'--max_len={max_len}: give at least 2 positions')
  directory = _out_dir(out, workdir)
  paths = [os.path.join(directory, 'positions_sinusoidal.png'),
           os.path.join(directory, 'positions_similarity.png')]
  plot_sinusoidal(max_len, d_model, paths[0])
  tables = {f'sinusoidal (d_model {d_model})': sinusoidal_table(max_len, d_model)}
  title, boundary = '', None
  if config is not None and config.model.position == 'learned':
    run = trained.load(workdir)
    for name, table_PxD in learned_position_tables(run.params).items():
      tables[f'learned {name}'] = table_PxD[:max_len]
    boundary = config.data.seq_len
    title = (f'{os.path.basename(os.path.normpath(workdir))}, step {run.step} (trained on '
             f'sequences of {boundary} tokens: dashed)')
  plot_position_similarity(tables, paths[1], title, boundary)
  return paths


def activations_command(out: str | None = None) -> list[str]:
  """`viz activations`: the feed-forward activations and their derivatives."""
  path = os.path.join(_out_dir(out, None), 'activations.png')
  plot_activations(path)
  return [path]


def loss_command(directories: Sequence[str], out: str | None = None, against: str = 'step',
                 log: bool = False) -> list[str]:
  """`viz loss`: the loss curves of the runs (and sweeps' runs) in `directories`, to `out` or
  DIR/viz/loss.png for one DIR, else viz/loss.png."""
  if not directories:
    raise ConfigError('give at least one DIR: a run directory (holding metrics.jsonl) or a '
                      'sweep directory')
  if against not in AGAINST:
    raise ConfigError(f'--against={against} is not one of {", ".join(AGAINST)}')
  curves = loss_curves(directories)
  path = out or os.path.join(_out_dir(None, directories[0] if len(directories) == 1 else None),
                             'loss.png')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  plot_loss_curves(curves, path, against=against, log=log)
  return [path]


def main(argv):
  from absl import flags
  from absl import logging as absl_logging
  from transformer import cli
  command, args = (argv[1], argv[2:]) if len(argv) > 1 else ('', [])
  if command not in COMMANDS:
    cli.fail(f'the first argument selects the plot: one of {", ".join(COMMANDS)}; got '
             f'{command or "none"}')
  if args and command != 'loss':
    cli.fail(f'{command}: unexpected arguments: {" ".join(args)}')
  absl_logging.set_verbosity(absl_logging.WARNING)
  cli.keep_freed_host_memory()
  cli.enable_compilation_cache()
  f = flags.FLAGS
  try:
    if command == 'attention':
      paths = attention_command(f.workdir, f.text, f.target, f.step, f.out)
    elif command == 'positions':
      paths = positions_command(f.d_model if f['d_model'].present else None,
                                f.max_len if f['max_len'].present else None, f.workdir, f.out)
    elif command == 'activations':
      paths = activations_command(f.out)
    else:
      paths = loss_command(args, f.out, f.against, f.log)
  except ConfigError as e:
    cli.fail(f'{command}: {e}')
  print('\n'.join(paths))


if __name__ == '__main__':
  # Flags are defined only here: the module is also a library, imported next to other commands.
  from absl import app, flags
  from transformer import cli
  cli.define_workdir_flag()
  flags.DEFINE_string('text', None, 'attention: the input text (the source, for encoder_decoder)')
  flags.DEFINE_string('target', None, 'attention: the target text an encoder_decoder decodes')
  flags.DEFINE_integer('step', None, 'attention: the checkpoint to read (default: the newest)')
  flags.DEFINE_string('out', None, 'output directory (loss: output file); default RUN/viz/ '
                      'for a run, else viz/')
  flags.DEFINE_integer('d_model', 128, 'positions: width of the sinusoidal encoding (with '
                       '--workdir: the run\'s)', lower_bound=2)
  flags.DEFINE_integer('max_len', 128, 'positions: number of positions (with --workdir: the '
                       'run\'s model.max_len)', lower_bound=2)
  flags.DEFINE_enum('against', 'step', list(AGAINST), 'loss: the x axis')
  flags.DEFINE_bool('log', False, 'loss: logarithmic axes')
  app.run(main, flags_parser=cli.parse_flags)
