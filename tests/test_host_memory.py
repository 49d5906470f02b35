"""cli.keep_freed_host_memory: a large block freed by a worker thread is reused, not faulted in
again (what XLA:CPU's per-step temporary buffer needs). Each case runs in a fresh process, as
the setting must come before any thread allocates."""

import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates, touches and frees a block of PROBE_MIB MiB on a new thread, twice; prints the page
# faults of the second round (ru_minflt). malloc and memset through ctypes (NumPy may ask for huge
# pages), and transparent huge pages off for the process (prctl PR_SET_THP_DISABLE): with them a
# fresh block takes one fault per 2 MiB, not per page.
PROBE = """
import ctypes, os, resource, threading
libc = ctypes.CDLL('libc.so.6')
libc.prctl(41, 1, 0, 0, 0)
from transformer import cli
cli.keep_freed_host_memory()
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
size = int(os.environ['PROBE_MIB']) << 20
def touch():
  block = libc.malloc(size)
  ctypes.memset(block, 1, size)
  libc.free(ctypes.c_void_p(block))
def on_a_thread():
  thread = threading.Thread(target=touch)
  thread.start()
  thread.join()
on_a_thread()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
on_a_thread()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def second_round_faults(mib: int = 256, **env) -> int:
  clean = {k: v for k, v in os.environ.items()  # no malloc settings of the caller's
           if not k.startswith(('MALLOC_', 'GLIBC_TUNABLES', 'TRANSFORMER_MALLOC'))}
  result = subprocess.run([sys.executable, '-c', PROBE], cwd=ROOT, capture_output=True,
                          text=True, timeout=120,
                          env=dict(clean, JAX_PLATFORMS='cpu', PROBE_MIB=str(mib), **env))
  assert result.returncode == 0, result.stderr[-2000:]
  return int(result.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc',
                    reason='glibc malloc only')
def test_a_freed_block_is_reused_instead_of_faulted_in_again():
  pages = (256 << 20) // os.sysconf('SC_PAGE_SIZE')
  kept = second_round_faults()
  system = second_round_faults(TRANSFORMER_MALLOC='system')
  assert system > pages // 2, (system, pages)  # glibc's default: a fresh mmap every time
  assert kept < pages // 50, (kept, pages)


@pytest.mark.skipif(platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc',
                    reason='glibc malloc only')
def test_a_block_larger_than_2_gib_is_kept_too():
  # The wide config's step frees more than 2 GiB at the top of the heap; a trim threshold of
  # 2 GiB (mallopt's largest positive value) handed it back and the next step faulted it in.
  mib = 2304
  pages = (mib << 20) // os.sysconf('SC_PAGE_SIZE')
  kept = second_round_faults(mib)
  assert kept < pages // 50, (kept, pages)
