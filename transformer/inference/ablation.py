"""Head ablation (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): the held-out
loss of a trained model with attention heads masked, one at a time or several together
(`python -m transformer.ablation` runs `ablate`).

Masking head h of an attention layer zeroes its output: its slice kernel[h] of the output
projection (N, H, D). The out bias is not per head and stays. Masks are arrays, keep_LxN per
attention kind ('encoder/attention', 'decoder/attention', 'decoder/self_attention',
'decoder/cross_attention'), 1 to keep a head and 0 to mask it; they are an argument of one
jitted evaluation, so every head is evaluated by the same compiled function.

Without `heads` `ablate` masks every head alone and writes RUN/ablation/head_importance.json
and a heatmap per attention kind; with `heads` it masks those heads, alone and together. The
run's checkpoints are only read.
"""

import dataclasses
import functools
import json
from typing import Any, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from transformer import files, plots
from transformer.config import ModelConfig
from transformer.errors import ConfigError
from transformer.inference import trained
from transformer.training import evaluation, losses, runs

Head = tuple[str, int, int]  # (attention kind, layer, head)


def attention_kinds(cfg: ModelConfig) -> dict[str, int]:
  """Each kind of attention of the model ('stack/module') and its number of layers."""
  if cfg.family == 'decoder_only':
    return {'decoder/attention': cfg.num_layers}
  kinds = {'encoder/attention': cfg.num_layers}
  if cfg.family == 'encoder_decoder':
    kinds.update({'decoder/self_attention': cfg.num_decoder_layers,
                  'decoder/cross_attention': cfg.num_decoder_layers})
  return kinds


def _kinds_text(cfg: ModelConfig) -> str:
  """The heads that exist, for error messages."""
  kinds = ', '.join(f'{kind} (layers 0-{n - 1})' for kind, n in attention_kinds(cfg).items())
  return f'{kinds}; heads 0-{cfg.num_heads - 1}'


def every_head(cfg: ModelConfig) -> list[Head]:
  """(kind, layer, head) of every head, kind by kind, layer by layer."""
  return [(kind, layer, head) for kind, num_layers in attention_kinds(cfg).items()
          for layer in range(num_layers) for head in range(cfg.num_heads)]


def head_mask(cfg: ModelConfig, heads: Iterable[Head] = ()) -> dict[str, np.ndarray]:
  """keep_LxN of every attention kind: ones, with 0 at `heads`."""
  keep = {kind: np.ones((num_layers, cfg.num_heads), np.float32)
          for kind, num_layers in attention_kinds(cfg).items()}
  for kind, layer, head in heads:
    keep[kind][layer, head] = 0.0
  return keep


def mask_heads(params: Any, cfg: ModelConfig, keep: dict[str, Any]) -> Any:
  """`params` with each head's out-projection slice multiplied by its keep_LxN entry (0: the head
  contributes nothing, 1: unchanged, bit for bit). Kinds missing from `keep` are kept. Works on
  either layout (scanned 'layers' with a leading layer axis, or layers_0, layers_1, ...) and on
  traced masks; `params` itself is not modified."""
  kinds = attention_kinds(cfg)
  flat = traverse_util.flatten_dict(params, sep='/')
  for kind, keep_LxN in keep.items():
    if kind not in kinds or jnp.shape(keep_LxN) != (kinds[kind], cfg.num_heads):
      raise ValueError(f'head mask {kind!r} of shape {jnp.shape(keep_LxN)}: this model has '
                       f'{_kinds_text(cfg)}, as (layers, heads) masks')
    stack, module = kind.split('/')
    keep_LxN = jnp.asarray(keep_LxN)
    if cfg.scan_layers:
      path = f'{stack}/layers/{module}/out/kernel'  # (L, N, H, D)
      flat[path] = flat[path] * keep_LxN[:, :, None, None].astype(flat[path].dtype)
    else:
      for i in range(kinds[kind]):
        path = f'{stack}/layers_{i}/{module}/out/kernel'  # (N, H, D)
        flat[path] = flat[path] * keep_LxN[i, :, None, None].astype(flat[path].dtype)
  return traverse_util.unflatten_dict(flat, sep='/')


@functools.partial(jax.jit, static_argnames=('model', 'task'))
def _masked_sums(model: nn.Module, params: Any, keep: dict[str, jax.Array], batch: dict,
                 task: str) -> dict[str, jax.Array]:
  """evaluate's sums of one batch with heads masked by `keep`: compiled once per model and batch
  shape, whichever heads `keep` masks."""
  return losses.eval_sums(model, mask_heads(params, model.cfg, keep), batch, task)


def masked_losses(model: nn.Module, params: Any, batches: list[dict], task: str,
                  keeps: Sequence[dict[str, Any]]) -> list[float]:
  """The loss over `batches` (mean nll per target token, as eval_loss) with heads masked by each
  of `keeps` in turn. Every evaluation is dispatched before the first result is read."""
  batches = jax.device_put(batches)
  keeps = [{kind: np.asarray(keep_LxN, np.float32)  # every kind: one structure, one compilation
            for kind, keep_LxN in (head_mask(model.cfg) | dict(keep)).items()} for keep in keeps]
  pending = [[_masked_sums(model, params, keep, batch, task) for batch in batches]
             for keep in keeps]
  return [evaluation.metrics_from_sums(evaluation.add_sums(sums), task, False)['eval_loss']
          for sums in pending]


@dataclasses.dataclass(frozen=True)
class Importance:
  """Held-out losses with heads masked. A head's change is its loss minus the baseline: how much
  worse the model does without it (negative: better)."""

  baseline: float  # nothing masked
  loss: dict[Head, float]  # that one head masked
  together: tuple[Head, ...] = ()  # heads masked at once, if any
  together_loss: float | None = None

  @functools.cached_property
  def change(self) -> dict[Head, float]:
    return {head: value - self.baseline for head, value in self.loss.items()}

  def grid(self, cfg: ModelConfig, kind: str) -> np.ndarray:
    """change_LxN of one attention kind; nan for heads not evaluated."""
    change_LxN = np.full((attention_kinds(cfg)[kind], cfg.num_heads), np.nan)
    for (k, layer, head), value in self.change.items():
      if k == kind:
        change_LxN[layer, head] = value
    return change_LxN


def head_importance(model: nn.Module, params: Any, batches: list[dict], task: str,
                    heads: Sequence[Head] | None = None,
                    together: Sequence[Head] = ()) -> Importance:
  """The baseline loss, the loss with each of `heads` (default: every head) masked alone, and,
  if given, with the heads of `together` masked at once."""
  cfg = model.cfg
  heads = every_head(cfg) if heads is None else list(heads)
  keeps = [head_mask(cfg)] + [head_mask(cfg, [head]) for head in heads]
  if together:
    keeps.append(head_mask(cfg, together))
  values = masked_losses(model, params, batches, task, keeps)
  return Importance(baseline=values[0], loss=dict(zip(heads, values[1:1 + len(heads)])),
                    together=tuple(together), together_loss=values[-1] if together else None)


# --- the command --------------------------------------------------------------------------------


def parse_heads(spec: str, cfg: ModelConfig) -> list[Head]:
  """'KIND:LAYER:HEAD,...' (e.g. 'decoder/attention:0:3') as heads of `cfg`'s model; anything
  else is a ConfigError naming --heads, the item and the heads that exist."""
  kinds, heads = attention_kinds(cfg), []
  for item in spec.split(','):
    parts = item.strip().rsplit(':', 2)
    problem = None
    if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
      problem = 'is not KIND:LAYER:HEAD'
    elif parts[0] not in kinds:
      problem = f'names no attention of this {cfg.family} model'
    elif int(parts[1]) >= kinds[parts[0]]:
      problem = f'names layer {int(parts[1])}, which {parts[0]} does not have'
    elif int(parts[2]) >= cfg.num_heads:
      problem = f'names head {int(parts[2])}, which the layers do not have'
    if problem:
      raise ConfigError(f'--heads={spec}: {item.strip()!r} {problem}; the model has '
                        f'{_kinds_text(cfg)}')
    heads.append((parts[0], int(parts[1]), int(parts[2])))
  return list(dict.fromkeys(heads))


def head_name(head: Head) -> str:
  return ':'.join(map(str, head))


def _table(importance: Importance, heads: Sequence[Head]) -> list[str]:
  width = max(len('kind'), *(len(kind) for kind, _, _ in heads))
  lines = [f'{"kind":<{width}}  layer  head     loss    change']
  for head in heads:
    kind, layer, index = head
    lines.append(f'{kind:<{width}}  {layer:>5}  {index:>4}  {importance.loss[head]:7.4f}  '
                 f'{importance.change[head]:+8.4f}')
  return lines


def write_outputs(importance: Importance, cfg: ModelConfig, directory: str,
                  header: dict) -> list[str]:
  """head_importance.json (`header` plus one row per head and a change grid per kind) and a
  heatmap per attention kind, in `directory`; returns their paths."""
  files.makedirs(directory)
  rows = [dict(kind=kind, layer=layer, head=head, loss=importance.loss[(kind, layer, head)],
               change=importance.change[(kind, layer, head)])
          for kind, layer, head in importance.loss]
  record = dict(header, baseline_loss=importance.baseline, heads=rows,
                change_grids={kind: importance.grid(cfg, kind).tolist()
                              for kind in attention_kinds(cfg)})
  paths = [str(files.path(directory) / 'head_importance.json')]
  files.atomic_write(paths[0], json.dumps(record, indent=2))
  for kind, num_layers in attention_kinds(cfg).items():
    paths.append(str(files.path(directory) / f'head_importance_{kind.replace("/", "_")}.png'))
    plots.plot_loss_heatmap(
        importance.grid(cfg, kind), list(range(num_layers)), list(range(cfg.num_heads)),
        paths[-1], row_label='layer', column_label='head',
        title=f'{kind}: loss change with one head masked\n(baseline {importance.baseline:.4f}, '
              f'step {header["step"]})',
        colorbar_label='held-out loss change (nats per token)')
  return paths


def ablate(workdir: str, step: int | None = None, eval_batches: int = 10,
           heads: str = '') -> list[str]:
  """The command: checks its input before anything is loaded or compiled (a ConfigError names
  the flag), evaluates, writes the outputs (without `heads`) and returns the lines to print."""
  if eval_batches < 1:
    raise ConfigError(f'--eval_batches={eval_batches} is invalid: it must be at least 1')
  cfg = runs.read_experiment(workdir).model
  masked = parse_heads(heads, cfg) if heads else None
  run = trained.load(workdir, step)
  task = run.cfg.task
  batches = evaluation.held_out_batches(run.config, run.tokenizer(), eval_batches)
  if not batches:
    raise ConfigError(f'--workdir={workdir}: the held-out split gave no batch')
  importance = head_importance(run.model, run.params, batches, task, masked, masked or ())
  where = f'{workdir} at step {run.step}, {len(batches)} held-out batches'
  lines = [f'{where}: loss {importance.baseline:.4f} with every head']
  if masked:
    lines += ['each head masked alone:'] + _table(importance, masked)
    alone = sum(importance.change[head] for head in masked)
    lines.append(f'masked together: loss {importance.together_loss:.4f}, change '
                 f'{importance.together_loss - importance.baseline:+.4f} (sum of the changes '
                 f'alone {alone:+.4f}): {",".join(map(head_name, masked))}')
    return lines
  lines += _table(importance, every_head(run.cfg))
  header = dict(workdir=str(files.absolute(workdir)), step=run.step, eval_batches=len(batches),
                seq_len=run.config.data.seq_len, batch_size=run.config.data.batch_size)
  paths = write_outputs(importance, run.cfg, str(files.path(workdir) / 'ablation'), header)
  return lines + [f'wrote {path}' for path in paths]
