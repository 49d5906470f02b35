"""Metric records: WORKDIR/metrics.jsonl (one JSON object per logged step) and TensorBoard
event files (tensorboardX: no TensorFlow). Only process 0 writes.

On resume from step S, records of steps after S (written before an interruption) are dropped,
so the files hold one curve, as if the run had never stopped.
"""

import json
import math
import os
import sys
from typing import Any

from transformer import files


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
    kept = [r for r in files.read_jsonl(self.path) if r['step'] <= resume_step]
    files.atomic_write(self.path, ''.join(json.dumps(r) + '\n' for r in kept))
    # purge_step: TensorBoard discards events at or after it (left by an interrupted run).
    self._tb = _summary_writer_class()(os.path.join(workdir, 'tensorboard'),
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
