"""Files a run or a sweep writes: atomically, so a crash or a kill never leaves half a file."""

import json
import os
import tempfile
from typing import Any


def atomic_write(path: str, text: str):
  """Writes `text` to `path` through a temporary file in the same directory and a rename: a
  reader sees the old file or the new one, never a part."""
  directory = os.path.dirname(os.path.abspath(path))
  with tempfile.NamedTemporaryFile('w', dir=directory, delete=False, suffix='.tmp',
                                   newline='') as f:
    try:
      f.write(text)
    except BaseException:
      f.close()
      os.remove(f.name)
      raise
  os.replace(f.name, path)


def write_json(path: str, obj: Any):
  """`obj` as indented JSON with sorted keys, written atomically (NaN and inf allowed)."""
  atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + '\n')


def read_json(path: str) -> Any | None:
  """The JSON in `path`, or None if there is no such file."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_jsonl(path: str) -> list[dict]:
  """One object per non-empty line; [] if there is no such file."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
