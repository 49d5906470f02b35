"""What the figures of `python -m transformer.viz` show, computed from a trained run (or from
the model's definitions): attention maps, positional encodings, activation functions, loss
curves of runs and sweeps; and each subcommand as a function that reads, computes and draws
(transformer/plots.py draws).

PNGs go to `out` (a directory; for loss curves a file), else RUN/viz/ for plots of a run (for
loss curves, DIR/viz/ when one DIR is given), else viz/ in the current directory.
"""

import dataclasses
import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from transformer import files, plots
from transformer.errors import ConfigError
from transformer.inference import trained
from transformer.model import counting, layers, models, positional
from transformer.training import runs

# --- attention maps -------------------------------------------------------------------------------

# The attention modules of a block, by name (layers.py), and the kind of attention each is.
_ATTENTION_KINDS = {'attention': 'self', 'self_attention': 'self', 'cross_attention': 'cross'}


def attention_maps(cfg, params, tokens: Sequence[int],
                   target_tokens: Sequence[int] | None = None) -> dict[str, np.ndarray]:
  """Per-layer, per-head attention weights of one example, {'STACK/KIND': (L, N, T, S)}:
  'decoder/self' (decoder_only), 'encoder/self' (encoder_only), or 'encoder/self',
  'decoder/self' and 'decoder/cross' (encoder_decoder, whose decoder reads `target_tokens`).

  Rows are queries, columns keys. The weights are those MultiHeadAttention sows into
  'intermediates' in a forward pass; unrolled stacks (layers_0, layers_1, ...) are stacked into
  the leading layer axis that scanned stacks already have.
  """
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


# --- positional encodings -------------------------------------------------------------------------


def sinusoidal_table(max_len: int, d_model: int) -> np.ndarray:
  """The paper's encoding of positions 0 .. max_len - 1, (max_len, d_model)."""
  return np.asarray(positional.sinusoidal(jnp.arange(max_len), d_model))


def learned_position_tables(params) -> dict[str, np.ndarray]:
  """The learned position tables of a model's parameters, by embedder ('embedder', or
  'source_embedder' and 'target_embedder' when an encoder-decoder does not share them)."""
  return {name: np.asarray(tree['positions']['embedding'], np.float32)
          for name, tree in params.items()
          if isinstance(tree, dict) and 'positions' in tree}


# --- activation functions -------------------------------------------------------------------------


def activation_curves(x_X: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{name: (f(x), f'(x))} for every feed-forward activation of layers.ACTIVATIONS, the
  derivative by jax.grad, vmapped over x."""
  x_X = jnp.asarray(x_X, jnp.float32)
  curves = jax.jit(lambda x: {name: (jax.vmap(f)(x), jax.vmap(jax.grad(f))(x))
                              for name, f in layers.ACTIVATIONS.items()})(x_X)
  return {name: (np.asarray(f_X), np.asarray(grad_X)) for name, (f_X, grad_X) in curves.items()}


# --- loss curves of runs and sweeps ---------------------------------------------------------------


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
  byte_tokens: bool = False  # a token is a byte (the loss reads in bits per byte too)

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
    files.check_remote(directory, 'DIR', write=False)
    if (files.path(directory) / 'metrics.jsonl').exists():
      runs.append(directory)
      continue
    folder = files.path(directory)
    below = sorted(str(p) for p in (folder.iterdir() if folder.is_dir() else ())
                   if (p / 'metrics.jsonl').exists())
    if not below:
      raise ConfigError(f'DIR={directory} is neither a run nor a sweep: it holds no '
                        'metrics.jsonl, nor does any directory in it (give a run\'s --workdir '
                        'or a sweep\'s)')
    runs += below
  return runs


def read_loss_curve(directory: str, name: str | None = None) -> LossCurve:
  """The losses of the run in `directory` (metrics.jsonl), with its config's tokens per step and
  FLOPs per token where config.json is there."""
  records = files.read_jsonl(files.path(directory) / 'metrics.jsonl')
  summary = files.read_json(files.path(directory) / 'summary.json') or {}
  tokens_per_step = flops_per_token = None
  byte_tokens = False
  if (files.path(directory) / 'config.json').exists():
    experiment = runs.read_experiment(directory)
    byte_tokens = experiment.data.tokenizer == 'byte' and experiment.task != 'classify'
    tokens_per_step = experiment.data.batch_size * experiment.data.seq_len
    flops_per_token = summary.get('flops_per_token') or counting.summarize(
        experiment.model, experiment.data.seq_len)['flops_per_token']
  step, loss = plots.series(records, 'loss')
  eval_step, eval_loss = plots.series(records, 'eval_loss')
  return LossCurve(name or os.path.basename(os.path.normpath(directory)), directory, step, loss,
                   eval_step, eval_loss, tokens_per_step, flops_per_token, byte_tokens)


def loss_curves(directories: Sequence[str]) -> list[LossCurve]:
  """The curves of every run in `directories` (runs or sweeps). A sweep's point is named by its
  swept values (short field names: 'd_model=256 lr=0.01') and the points are sorted by them,
  numerically; another run by its path below the directory they all share (a lone run: by its
  own name)."""
  runs = find_runs(directories)
  # their absolute paths as parts ('/gs/BUCKET/...' for gs://BUCKET/...: os.path.abspath would
  # make it local, os.path.commonpath would drop its '//')
  absolute = [os.path.join(*files.absolute(run).parts) for run in runs]
  common = os.path.commonpath(absolute) if len(runs) > 1 else None
  curves, keys, sweeps = [], [], {}
  for run, where in zip(runs, absolute):
    label, key = _swept_values(run, sweeps)
    name = label or (os.path.relpath(where, common) if common else None)
    curves.append(read_loss_curve(run, name))
    keys.append(key)
  parents = [str(files.absolute(run).parent) for run in runs]
  group = {parent: parents.index(parent) for parent in parents}  # in the order given
  order = sorted(range(len(runs)), key=lambda i: (group[parents[i]], keys[i]))
  return [curves[i] for i in order]


def _sweep_points(directory: str) -> tuple[list, dict]:
  """(swept fields, {point id: its swept values}) of the sweep.json in `directory` (empty if
  none)."""
  sweep = files.read_json(files.path(directory) / 'sweep.json')
  if not isinstance(sweep, dict):
    return [], {}
  return list(sweep.get('fields', ())), {
      p['id']: p.get('overrides', {}) for p in sweep.get('points', ())
      if isinstance(p, dict) and 'id' in p}


def _swept_values(run: str, sweeps: dict) -> tuple[str, tuple]:
  """('field=value ...', sort key) of a sweep's point from its sweep.json; ('', ()) otherwise.
  `sweeps` caches each directory's points."""
  parent = str(files.absolute(run).parent)
  if parent not in sweeps:
    sweeps[parent] = _sweep_points(parent)
  fields, points = sweeps[parent]
  overrides = points.get(os.path.basename(os.path.normpath(run)), {})
  fields = [f for f in fields if f in overrides]
  if not fields:
    return '', ()
  values = [overrides[f] for f in fields]
  label = ' '.join(f'{f.split(".")[-1]}={v:g}' if isinstance(v, float) else
                   f'{f.split(".")[-1]}={v}' for f, v in zip(fields, values))
  return label, tuple((isinstance(v, str), v) for v in values)


# --- the subcommands of transformer.viz -----------------------------------------------------------


COMMANDS = ('attention', 'positions', 'activations', 'loss')


def _out_dir(out: str | None, workdir: str | None) -> str:
  directory = out or (str(files.path(workdir) / 'viz') if workdir else 'viz')
  files.makedirs(directory)
  return directory


def draw_attention(workdir: str | None, text: str | None, target: str | None = None,
                      step: int | None = None, out: str | None = None) -> list[str]:
  """`viz attention`: the attention maps of the run in `workdir` on `text` (and `target`); the
  input is checked before the checkpoint is read. Returns the paths written."""
  if not workdir:
    raise ConfigError('--workdir is required for attention: the directory of a trained run')
  family = runs.read_experiment(workdir).model.family
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
  tokens, target_tokens = attention_inputs(run.config, tokenizer, text, target)
  for flag, ids in (('--text', tokens), ('--target', target_tokens)):
    if ids is not None:
      run.cfg.check_length(len(ids), f'{flag} ({len(ids)} tokens)')
  maps = attention_maps(run.cfg, run.params, tokens, target_tokens)
  name = os.path.basename(os.path.normpath(workdir))
  return plots.plot_attention_maps(
      maps, _out_dir(out, workdir), token_labels(tokenizer, tokens),
      None if target_tokens is None else token_labels(tokenizer, target_tokens),
      title=f'{name}, step {run.step}')


def draw_positions(d_model: int | None = None, max_len: int | None = None,
                      workdir: str | None = None, out: str | None = None) -> list[str]:
  """`viz positions`: the sinusoidal encoding and the similarity of positions, at the run's
  d_model and max_len when `workdir` is given (explicit values win), else 128 and 128; a run
  with learned positions adds its table(s). Returns the paths written."""
  config = runs.read_experiment(workdir) if workdir else None
  d_model = d_model or (config.model.d_model if config else 128)
  max_len = max_len or (config.model.max_len if config else 128)
  if d_model < 2 or d_model % 2:
    raise ConfigError(f'--d_model={d_model}: the sinusoidal encoding needs an even width >= 2')
  if max_len < 2:
    raise ConfigError(f'--max_len={max_len}: give at least 2 positions')
  directory = _out_dir(out, workdir)
  paths = [str(files.path(directory) / 'positions_sinusoidal.png'),
           str(files.path(directory) / 'positions_similarity.png')]
  table_PxD = sinusoidal_table(max_len, d_model)
  plots.plot_sinusoidal(table_PxD, paths[0])
  tables = {f'sinusoidal (d_model {d_model})': table_PxD}
  title, boundary = '', None
  if config is not None and config.model.position == 'learned':
    run = trained.load(workdir)
    for name, table_PxD in learned_position_tables(run.params).items():
      tables[f'learned {name}'] = table_PxD[:max_len]
    boundary = config.data.seq_len
    title = (f'{os.path.basename(os.path.normpath(workdir))}, step {run.step} (trained on '
             f'sequences of {boundary} tokens: dashed)')
  plots.plot_position_similarity(tables, paths[1], title, boundary)
  return paths


def draw_activations(out: str | None = None) -> list[str]:
  """`viz activations`: the feed-forward activations and their derivatives."""
  path = str(files.path(_out_dir(out, None)) / 'activations.png')
  x_X = np.linspace(-4.0, 4.0, 801)
  plots.plot_activations(x_X, activation_curves(x_X), path)
  return [path]


def draw_loss_curves(directories: Sequence[str], out: str | None = None, against: str = 'step',
                 log: bool = False) -> list[str]:
  """`viz loss`: the loss curves of the runs (and sweeps' runs) in `directories`, to `out` or
  DIR/viz/loss.png for one DIR, else viz/loss.png."""
  if not directories:
    raise ConfigError('give at least one DIR: a run directory (holding metrics.jsonl) or a '
                      'sweep directory')
  if against not in AGAINST:
    raise ConfigError(f'--against={against} is not one of {", ".join(AGAINST)}')
  curves = loss_curves(directories)
  path = out or str(files.path(_out_dir(None, directories[0] if len(directories) == 1 else None))
                    / 'loss.png')
  files.makedirs(files.absolute(path).parent)
  plots.plot_loss_curves(curves, path, xlabel=AGAINST[against],
                         x=lambda curve, steps: curve.x(steps, against), log=log)
  return [path]
