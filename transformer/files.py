"""Files a run or a sweep writes: atomically, so a crash or a kill never leaves half a file, and
with the permissions any file the process creates gets (the umask's), so a team shares them."""

import json
import os
import uuid
from typing import Any


def atomic_write(path: str, text: str):
  """Writes `text` to `path` through a temporary file in the same directory and a rename: a
  reader sees the old file or the new one, never a part. (tempfile's files are private, 0600:
  this one is created as open() creates files, 0666 less the umask.)"""
  directory, name = os.path.split(os.path.abspath(path))
  temporary = os.path.join(directory, f'.{name}.{uuid.uuid4().hex[:12]}.tmp')
  fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, 'w', newline='') as f:
      f.write(text)
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


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
