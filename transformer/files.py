"""Files a run or a sweep writes: atomically, so a crash or a kill never leaves half a file, and
with the permissions any file the process creates gets (the umask's), so a team shares them.

Run paths (workdirs, sweep directories, their files) go through `etils.epath`, as orbax's and
TFDS's do, so that a `gs://BUCKET/...` workdir works on a Cloud TPU VM without a gcsfuse mount.
A local path takes the same calls as before (epath's local backend is `open` and `os`); an
object store gets what it can do: no directories to create, and a whole object written at once
in place of the temporary file and rename (an upload replaces an object whole: a reader sees
the old one or the new one, never a part, and a rename there would be a copy and a delete).
`check_remote` tells in one line, within seconds, why a remote path cannot be used here.
"""

import errno
import importlib.util
import json
import os
import socket
import threading
import uuid
from typing import Any

from etils import epath

from transformer.errors import ConfigError, first_line

PathLike = str | os.PathLike

# The errors of storage that refuses a write (a full disk, a quota, a read-only mount, missing
# permissions, a failing device), as opposed to a bug.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)

# The object stores epath reads and writes, and the fsspec package each needs where TensorFlow
# (epath's other backend) is not installed.
REMOTE_SCHEMES = {'gs': 'gcsfs', 's3': 's3fs', 'az': 'adlfs'}
FSSPEC_PROTOCOLS = {'gs': 'gcs', 's3': 's3', 'az': 'az'}
GCS_ENDPOINT = 'storage.googleapis.com:443'
REMOTE_TIMEOUT_S = 60.0  # the probe of a remote path (a write and a delete) ends by then


def path(p: PathLike) -> epath.Path:
  """`p` as an epath.Path: local, or gs://... (os.path would take 'gs://b/x' for a local path)."""
  return epath.Path(p)


def is_remote(p: PathLike) -> bool:
  """Whether `p` names an object store (gs://, s3://, az://) rather than a local file system."""
  return '://' in os.fspath(p)


def absolute(p: PathLike) -> epath.Path:
  """`p` made absolute (a local path; a remote one is absolute already, and os.path.abspath
  would turn 'gs://b/x' into '/cwd/gs:/b/x')."""
  return path(p) if is_remote(p) else path(os.path.abspath(p))


def makedirs(p: PathLike):
  """Creates a local directory and its parents; nothing for an object store, which has no
  directories (and gcsfs would create a missing bucket)."""
  if not is_remote(p):
    path(p).mkdir(parents=True, exist_ok=True)


def atomic_write(p: PathLike, text: str):
  """Writes `text` to `p` so that a reader sees the old file or the new one, never a part:
  locally through a temporary file in the same directory and a rename (created as open()
  creates files, 0666 less the umask; tempfile's would be private, 0600); on an object store as
  one upload."""
  if not isinstance(text, str):  # fails here, before a file is touched
    raise TypeError(f'atomic_write writes text, not {type(text).__name__}')
  data = text.encode('utf-8')
  target = path(p)
  if is_remote(p):
    with target.open('wb') as f:
      f.write(data)
    return
  temporary = target.parent / f'.{target.name}.{uuid.uuid4().hex[:12]}.tmp'
  try:
    with temporary.open('wb') as f:
      f.write(data)
    temporary.replace(target)
  except BaseException:
    temporary.unlink(missing_ok=True)
    raise


def write_json(p: PathLike, obj: Any):
  """`obj` as indented JSON with sorted keys, written atomically (NaN and inf allowed)."""
  atomic_write(p, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + '\n')


def read_text(p: PathLike) -> str | None:
  """The text in `p`, or None if there is no such file."""
  target = path(p)
  if not target.exists():
    return None
  with target.open('r') as f:
    return f.read()


def read_json(p: PathLike) -> Any | None:
  """The JSON in `p`, or None if there is no such file."""
  text = read_text(p)
  return None if text is None else json.loads(text)


def read_jsonl(p: PathLike) -> list[dict]:
  """One object per non-empty line; [] if there is no such file."""
  text = read_text(p) or ''
  return [json.loads(line) for line in text.split('\n') if line.strip()]


def append_text(p: PathLike, text: str):
  """Appends `text` to `p`. An object store cannot append: the object is written again whole
  (what it held, then `text`), so that it is complete at every moment."""
  if is_remote(p):
    atomic_write(p, (read_text(p) or '') + text)
    return
  with path(p).open('a') as f:
    f.write(text)


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


def _probe_name() -> str:
  return f'.write-test-{socket.gethostname()}-{os.getpid()}'


def probe_writable(directory: PathLike) -> int | None:
  """Creates `directory` if needed and writes and removes a small file there; the errno of the
  first refusal (see STORAGE_ERRNOS; ENOTDIR, EEXIST...), None if it is writable. (A remote
  directory: see `check_remote`.)"""
  probe = path(directory) / _probe_name()
  try:
    makedirs(directory)
    with probe.open('w') as f:
      f.write('ok')
    probe.unlink()
  except OSError as e:
    return e.errno or errno.EIO
  return None


# --- remote paths ---------------------------------------------------------------------------------

_checked: set = set()  # (bucket, write) pairs found usable: probed once per process


def check_remote(p: PathLike, flag: str, write: bool = True, timeout_s: float = REMOTE_TIMEOUT_S):
  """For a remote path, a ConfigError in one line naming `flag` unless it can be used here:
  a scheme epath knows, its backend installed, the store's endpoint reachable (within 5 s:
  offline, gcsfs retries for about a minute), and a small object written and deleted (`write`)
  or the path looked up, within `timeout_s` (missing credentials or permissions are refused
  there). Nothing else is written. Local paths pass untouched."""
  if not is_remote(p):
    return
  text = os.fspath(p)
  scheme = text.split('://', 1)[0]
  key = (text.split('://', 1)[1].split('/', 1)[0], scheme, write)
  if key in _checked:
    return
  if scheme not in REMOTE_SCHEMES:
    reason = (f'{scheme}:// is not a file system etils.epath knows (give a local path, or '
              f'{", ".join(s + "://" for s in REMOTE_SCHEMES)})')
  else:
    reason = _backend_error(scheme)
  if reason is None and scheme == 'gs' and not os.environ.get('STORAGE_EMULATOR_HOST'):
    reason = connect_error(GCS_ENDPOINT, 5.0)
    reason = reason and f'{GCS_ENDPOINT} cannot be reached ({reason}): no network here?'
  if reason is None:
    reason = _probe_remote(path(p), write, timeout_s)
  if reason is not None:
    raise ConfigError(f'{flag}={text} cannot be used: {reason}')
  _checked.add(key)


def _backend_error(scheme: str) -> str | None:
  """Why epath cannot open `scheme`:// paths here (None: it can). epath uses TensorFlow's gfile
  where TensorFlow is installed, else fsspec with the scheme's package."""
  if (importlib.util.find_spec('tensorflow') is not None
      and os.environ.get('EPATH_USE_TF', '').lower() not in ('false', 'no', 'f', '0')):
    return None
  package = REMOTE_SCHEMES[scheme]
  try:
    import fsspec
    fsspec.get_filesystem_class(FSSPEC_PROTOCOLS[scheme])
  except (ImportError, ValueError) as e:
    return (f'{scheme}:// needs {package} (etils.epath reads and writes it with fsspec): pip '
            f'install {package} ({first_line(e, 120)})')
  return None


PROXY_VARIABLES = ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY',
                   'all_proxy')


def connect_error(probe: str, timeout_s: float) -> str | None:
  """Why HOST:PORT cannot be reached within about `timeout_s` (None: it answered, or a proxy is
  set: only the proxy knows what it reaches). The connection runs in a thread: a name lookup
  ignores the socket's timeout."""
  if any(os.environ.get(name) for name in PROXY_VARIABLES):
    return None
  host, _, port = probe.rpartition(':')
  finished, error = _within(lambda: socket.create_connection(
      (host, int(port)), timeout=timeout_s).close(), timeout_s, (OSError, ValueError))
  if not finished:
    return f'no answer in {timeout_s:g} s'
  return None if error is None else first_line(error)


def _within(work, timeout_s: float, errors: tuple = (Exception,)
            ) -> tuple[bool, BaseException | None]:
  """Runs `work()` in a daemon thread, left behind after `timeout_s` (a name lookup ignores a
  socket's timeout; a store's client may retry for a minute): (whether it finished, the error
  of `errors` it raised or None)."""
  outcome: dict[str, Any] = {}

  def run():
    try:
      work()
      outcome['finished'] = True
    except errors as e:
      outcome['finished'], outcome['error'] = True, e

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(timeout_s)
  return outcome.get('finished', False), outcome.get('error')


def _probe_remote(target: epath.Path, write: bool, timeout_s: float) -> str | None:
  """Writes and deletes a small object below `target` (or looks `target` up), within
  `timeout_s`; the reason of a failure in one line, None if it worked."""
  def probe():
    if write:
      probe_file = target / _probe_name()
      with probe_file.open('w') as f:
        f.write('ok')
      probe_file.unlink()
    else:
      target.exists()

  # Any error: credentials, permissions, a missing bucket...
  finished, error = _within(probe, timeout_s)
  what = 'a test object could not be written there' if write else 'it could not be read'
  if not finished:
    return f'{what}: no answer in {timeout_s:g} s (credentials? network?)'
  return None if error is None else f'{what} ({type(error).__name__}: {first_line(error, 200)})'
