"""Test setup: 8 simulated CPU devices (must precede any JAX operation), one persistent
compilation cache shared by every test process and subprocess of the session, and helpers."""

import fcntl
import os
import shutil
import subprocess
import tempfile

# The tests' models are tiny: compiling them costs far more than running them. LLVM's
# optimisation level 0 compiles about a fifth faster on CPU; without LLVM's expensive passes
# and XLA:CPU's fusion emitters (test_mup.py's FAST_COMPILE) a third faster again (every
# operation of an eager call is a compilation of its own). The results are the same to the
# tests' tolerances (the golden values hold; bitwise comparisons compare runs under the same
# flags). Set before JAX starts its backend, and inherited by the processes the tests start.
for _flag in ('--xla_backend_optimization_level=0', '--xla_llvm_disable_expensive_passes=true',
              '--xla_cpu_use_fusion_emitters=false'):
  if _flag.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {_flag}'.strip()

# MFU's denominator, given instead of measured: on CPU every process that trains measured it, a
# 2048 x 2048 matmul 9 times, about 2 s of 2 cores each. test_train.py measures it (the bench
# command, in a process without this variable) and checks that this variable is read.
os.environ.setdefault('TRANSFORMER_PEAK_FLOPS', '1e11')

import jax  # noqa: E402

jax.config.update('jax_num_cpu_devices', 8)

# Workers and the training subprocesses they start compile the same small steps: share them.
# (xdist workers inherit this environment from the controller, which sets it first.)
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      tempfile.mkdtemp(prefix='transformer-test-xla-cache-'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs',
                  float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(items):
  """The slow tests first, longest first (`@pytest.mark.slow(SECONDS)`: about how long it takes
  on 2 cores beside another test; a bare mark counts as 30), the others after them in their
  order: xdist's worksteal gives each worker a contiguous half of this list and idle workers
  take the end of a busy one's, so what runs last is short and the workers end together."""
  def seconds(item):
    mark = item.get_closest_marker('slow')
    return (mark.args[0] if mark.args else 30) if mark else 0
  items.sort(key=seconds, reverse=True)  # stable: equal estimates keep their order


@pytest.fixture
def rng():
  return np.random.default_rng(0)


def _session_dir(tmp_path_factory):
  """A directory every xdist worker of this session shares (this process's own without xdist)."""
  root = tmp_path_factory.getbasetemp()
  return root.parent if os.environ.get('PYTEST_XDIST_WORKER') else root


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A data directory holding the embedded corpus, built once per session (its builder takes a
  file lock: the workers wait for the first)."""
  from transformer.data import datasets
  path = str(_session_dir(tmp_path_factory) / 'data')
  datasets.build_embedded('shakespeare_corpus', path)
  return path


@pytest.fixture(scope='session')
def trained_lm(tmp_path_factory, data_dir):
  """A tiny byte-level GPT trained for 40 steps on the embedded corpus (checkpoints at steps 20
  and 40, two evaluation batches, an 8-byte sample), trained once per session: the xdist
  workers share it (the first to ask trains it, under a file lock). Read it; copy it to write
  in it."""
  from transformer import presets
  from transformer.training import loop
  root = _session_dir(tmp_path_factory)
  workdir = root / 'trained_lm'
  with open(root / 'trained_lm.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / 'summary.json').exists():
      shutil.rmtree(workdir, ignore_errors=True)
      config = presets.get_config('decoder_only', 'tiny')
      config.data.update(data_dir=data_dir, seq_len=32, batch_size=8, prefetch=0)
      config.train.update(num_steps=40, log_every=5, eval_every=40, checkpoint_every=20,
                          eval_batches=2, sample_tokens=8)
      config.opt.update(lr=3e-3, warmup_steps=5)
      loop.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  return str(workdir)


# --- storage that refuses writes (as root, with real mounts) ------------------------------------


def mount(*args):
  if os.geteuid() != 0:
    pytest.skip('mounting a file system needs root')
  result = subprocess.run(['mount', *map(str, args)], capture_output=True, text=True)
  if result.returncode != 0:
    pytest.skip(f'mount {" ".join(map(str, args))} failed: {result.stderr.strip()}')


@pytest.fixture
def mounts():
  """mount(...) for the test; every mount it made is undone afterwards."""
  made = []

  def _mount(*args):
    mount(*args)
    made.append(args[-1])
  yield _mount
  for target in reversed(made):
    subprocess.run(['umount', '-l', str(target)], capture_output=True)
