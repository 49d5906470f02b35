"""Metric records: WORKDIR/metrics.jsonl (one JSON object per logged step), TensorBoard event
files (tensorboardX: no TensorFlow) and, with train.wandb_project, a Weights & Biases run (its
files under WORKDIR/wandb). Only process 0 writes.

On resume from step S, records of steps after S (written before an interruption) are dropped,
so the files hold one curve, as if the run had never stopped; the W&B run resumed is the one
whose id WORKDIR/wandb_run_id holds.

A remote workdir (gs://...): metrics.jsonl is written again whole at each record (an object
store cannot append), and the event files are written in a local temporary directory and
copied to WORKDIR/tensorboard at each flush (tensorboardX would need google-cloud-storage for
gs://, and TensorBoard reads the copies as they grow). W&B keeps its files in a local temporary
directory there (its own uploads are what counts).
"""

import json
import math
import os
import shutil
import sys
import tempfile
from typing import Any

from transformer import files
from transformer.errors import ConfigError, Interrupted

WANDB_ID_FILE = 'wandb_run_id'


def _clean(value: Any) -> Any:
  value = float(value) if hasattr(value, 'item') else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # 'nan' / 'inf': valid JSON, still readable
  return value


class MetricWriter:
  """The metric files of a run, and its W&B run when `wandb_project` is set (`config`: the
  run's config.json, W&B's run config). A context manager: leaving it on an exception marks the
  W&B run failed."""

  def __init__(self, workdir: str, *, resume_step: int = 0, enabled: bool = True,
               wandb_project: str = '', wandb_entity: str = '', config: dict | None = None):
    self.enabled = enabled
    self.path = files.path(workdir) / 'metrics.jsonl'
    self._tb = self._wandb = self._mirror = None
    if not enabled:
      return
    kept = [r for r in files.read_jsonl(self.path) if r['step'] <= resume_step]
    files.atomic_write(self.path, ''.join(json.dumps(r) + '\n' for r in kept))
    events = files.path(workdir) / 'tensorboard'
    if files.is_remote(workdir):
      self._mirror = _Mirror(events)
      events = self._mirror.local
    # purge_step: TensorBoard discards events at or after it (left by an interrupted run).
    self._tb = _summary_writer_class()(os.fspath(events),
                                       purge_step=resume_step + 1 if resume_step else None)
    if wandb_project:
      try:
        self._wandb = _start_wandb(workdir, wandb_project, wandb_entity, config or {},
                                   resumed=resume_step > 0)
      except BaseException:
        self.close()
        raise

  def write(self, step: int, metrics: dict[str, Any]):
    if not self.enabled:
      return
    record = {'step': int(step), **{k: _clean(v) for k, v in metrics.items()}}
    files.append_text(self.path, json.dumps(record) + '\n')
    for key, value in record.items():
      if key != 'step' and isinstance(value, (int, float)):
        self._tb.add_scalar(key, value, step)
    self._tb.flush()
    if self._mirror is not None:
      self._mirror.copy()
    # W&B refuses steps below those it holds (a resumed run's, logged before an interruption)
    if self._wandb is not None and step >= self._wandb.starting_step:
      self._wandb.log({k: float(v) if hasattr(v, 'item') else v for k, v in metrics.items()},
                      step=int(step))

  def close(self, exit_code: int = 0):
    if self._tb is not None:
      self._tb.close()
      self._tb = None
      if self._mirror is not None:
        self._mirror.close()
    if self._wandb is not None:
      self._wandb.finish(exit_code=exit_code)
      self._wandb = None

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, kind, error, traceback):
    self.close(0 if error is None else 143 if isinstance(error, Interrupted) else 1)


def check_wandb(project: str):
  """train.wandb_project needs the optional wandb package: checked before anything compiles or
  is written, on every process (one without it would otherwise wait for the others forever)."""
  if not project:
    return
  try:
    import wandb  # noqa: F401
  except ImportError as e:
    raise ConfigError(f'train.wandb_project={project!r} needs Weights & Biases, which cannot be '
                      f"imported ({e}): pip install -e '.[wandb]'") from None


def _start_wandb(workdir: str, project: str, entity: str, config: dict, resumed: bool):
  """A W&B run named after the workdir, its files under WORKDIR/wandb. A run resumed from a
  checkpoint continues the W&B run whose id WORKDIR/wandb_run_id holds; a fresh start begins a
  new one, as metrics.jsonl starts over."""
  import wandb
  id_path = files.path(workdir) / WANDB_ID_FILE
  run_id = ((files.read_text(id_path) or '').strip() or None) if resumed else None
  # W&B writes its files with open(): a local directory (a remote workdir's: a temporary one)
  local = tempfile.mkdtemp(prefix='wandb-') if files.is_remote(workdir) else workdir
  try:
    run = wandb.init(project=project, entity=entity or None, dir=local, config=config,
                     name=files.absolute(workdir).name, id=run_id, resume='allow')
  except wandb.errors.Error as e:  # not logged in, no network, no access to the entity...
    reason = ' '.join(str(e).split()).rstrip('.')
    raise ConfigError(f'train.wandb_project={project!r}: W&B could not start a run: {reason}; '
                      'run `wandb login`, or set WANDB_MODE=offline and `wandb sync` later'
                      ) from None
  if run_id:  # the config as config.json has it now (num_steps raised, say), not as it was
    run.config.update(config, allow_val_change=True)
  files.atomic_write(id_path, run.id + '\n')
  return run


class _Mirror:
  """A local temporary directory whose files are copied to a remote one (the event files of a
  remote workdir: tensorboardX writes them with open())."""

  def __init__(self, remote):
    self.remote = remote
    self.local = tempfile.mkdtemp(prefix='tensorboard-')

  def copy(self):
    """Each file, written whole again (an object store cannot append; they are small)."""
    for name in sorted(os.listdir(self.local)):
      with open(os.path.join(self.local, name), 'rb') as f:
        data = f.read()
      with (self.remote / name).open('wb') as f:
        f.write(data)

  def close(self):
    try:
      self.copy()
    finally:
      shutil.rmtree(self.local, ignore_errors=True)


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch. tensorboardX imports torch, where
  it is installed, only to accept torch tensors (we give it floats); that import alone took
  1.6 s at the start of every run and every sweep point."""
  if 'torch' in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules['torch'] = None  # `import torch` raises ImportError while tensorboardX loads
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules['torch']
  return SummaryWriter
