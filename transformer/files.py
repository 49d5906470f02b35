"""Files a run or a sweep writes: atomically, so a crash or a kill never leaves half a file, and
with the permissions any file the process creates gets (the umask's), so a team shares them."""

import errno
import json
import os
import socket
import uuid
from typing import Any

# The errors of storage that refuses a write (a full disk, a quota, a read-only mount, missing
# permissions, a failing device), as opposed to a bug.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


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


def storage_errno(error: BaseException) -> int | None:
  """The errno of a write that storage refused (one of STORAGE_ERRNOS), from the error or the
  errors it was raised from; also where a library carries it only as text (tensorstore:
  'RESOURCE_EXHAUSTED: ... No space left on device'). None for any other error."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
      return error.errno
    for code in STORAGE_ERRNOS:
      if os.strerror(code) in str(error):
        return code
    error = error.__cause__ or error.__context__
  return None


def describe_errno(code: int) -> str:
  """'No space left on device (ENOSPC)'."""
  return f'{os.strerror(code)} ({errno.errorcode.get(code, code)})'


def probe_writable(directory: str) -> int | None:
  """Creates `directory` if needed and writes and removes a small file there; the errno of the
  first refusal (see STORAGE_ERRNOS; ENOTDIR, EEXIST...), None if it is writable."""
  probe = os.path.join(directory, f'.write-test-{socket.gethostname()}-{os.getpid()}')
  try:
    os.makedirs(directory, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    return e.errno or errno.EIO
  return None
