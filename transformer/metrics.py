"""Metric records: WORKDIR/metrics.jsonl (one JSON object per logged step) and TensorBoard
event files (tensorboardX: no TensorFlow). Only process 0 writes.

On resume from step S, records of steps after S (written before an interruption) are dropped,
so the files hold one curve, as if the run had never stopped.
"""

import json
import math
import os
import tempfile
from typing import Any


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_json(path: str, obj: Any):
  """Atomically: a crash never leaves half a file."""
  directory = os.path.dirname(os.path.abspath(path))
  with tempfile.NamedTemporaryFile('w', dir=directory, delete=False, suffix='.tmp') as f:
    json.dump(obj, f, indent=2, sort_keys=True, allow_nan=True)
    f.write('\n')
  os.replace(f.name, path)


def _clean(value: Any) -> Any:
  value = float(value) if hasattr(value, 'item') else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # 'nan' / 'inf': valid JSON, still readable
  return value


class MetricWriter:
  def __init__(self, workdir: str, *, resume_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if not enabled:
      return
    kept = [r for r in read_jsonl(self.path) if r['step'] <= resume_step]
    with tempfile.NamedTemporaryFile('w', dir=workdir, delete=False, suffix='.tmp') as f:
      f.writelines(json.dumps(r) + '\n' for r in kept)
    os.replace(f.name, self.path)
    from tensorboardX import SummaryWriter
    # purge_step: TensorBoard discards events at or after it (left by an interrupted run).
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'),
                             purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, metrics: dict[str, Any]):
    if not self.enabled:
      return
    record = {'step': int(step), **{k: _clean(v) for k, v in metrics.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for key, value in record.items():
      if key != 'step' and isinstance(value, (int, float)):
        self._tb.add_scalar(key, value, step)
    self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()
