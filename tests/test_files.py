"""Atomic files: whole or absent, and readable by whom the umask says (not private)."""

import errno
import json
import os
import stat

import pytest

from transformer import files


@pytest.mark.parametrize('umask,mode', [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_files_get_the_umasks_permissions(tmp_path, umask, mode):
  previous = os.umask(umask)
  try:
    files.write_json(tmp_path / 'summary.json', {'loss': 1.5})
    files.atomic_write(tmp_path / 'results.csv', 'id,status\n')
  finally:
    os.umask(previous)
  for name in ('summary.json', 'results.csv'):
    assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode, name
  assert json.load(open(tmp_path / 'summary.json')) == {'loss': 1.5}
  assert sorted(os.listdir(tmp_path)) == ['results.csv', 'summary.json']  # no temporary left


def test_a_failed_write_leaves_the_old_file(tmp_path):
  files.atomic_write(tmp_path / 'a.txt', 'old')
  with pytest.raises(TypeError):
    files.atomic_write(tmp_path / 'a.txt', None)  # not text: fails while writing
  assert (tmp_path / 'a.txt').read_text() == 'old' and os.listdir(tmp_path) == ['a.txt']


def test_a_runs_files_are_readable_by_the_team(trained_lm):
  """What train writes through temporary files has the mode of what it writes directly."""
  expected = stat.S_IMODE(os.stat(os.path.join(trained_lm, 'loss.png')).st_mode)
  for name in ('config.json', 'metrics.jsonl', 'summary.json', 'sample.txt'):
    assert stat.S_IMODE(os.stat(os.path.join(trained_lm, name)).st_mode) == expected, name


def test_storage_errors_are_found_where_libraries_wrap_them():
  full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), '/ckpt/8')
  try:
    try:
      raise full
    except OSError as e:
      raise RuntimeError('commit failed') from e  # a library's wrapper
  except RuntimeError as wrapped:
    assert files.storage_errno(wrapped) == errno.ENOSPC
  # tensorstore carries the errno as text only
  text = ValueError('RESOURCE_EXHAUSTED: Error writing "x": [OS error: Read-only file system]')
  assert files.storage_errno(text) == errno.EROFS
  assert files.storage_errno(ValueError('shapes differ')) is None
  assert files.storage_errno(FileNotFoundError(errno.ENOENT, 'missing')) is None  # not storage
  assert files.describe_errno(errno.ENOSPC) == 'No space left on device (ENOSPC)'


def test_probing_a_directory_creates_it_and_leaves_nothing(tmp_path):
  assert files.probe_writable(tmp_path / 'a' / 'b') is None
  assert os.listdir(tmp_path / 'a' / 'b') == []
  (tmp_path / 'file').write_text('x')
  assert files.probe_writable(tmp_path / 'file' / 'run') == errno.ENOTDIR
