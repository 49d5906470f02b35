"""Test setup: 8 simulated CPU devices (must precede any JAX operation), one persistent
compilation cache shared by every test process and subprocess of the session, and helpers."""

import os
import tempfile

import jax

jax.config.update('jax_num_cpu_devices', 8)

# Workers and the training subprocesses they start compile the same small steps: share them.
# (xdist workers inherit this environment from the controller, which sets it first.)
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      tempfile.mkdtemp(prefix='transformer-test-xla-cache-'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
jax.config.update('jax_persistent_cache_min_compile_time_secs',
                  float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """A data directory holding the embedded corpus, built once per test process."""
  from transformer.data import datasets
  path = str(tmp_path_factory.mktemp('data'))
  datasets.build_embedded('shakespeare_corpus', path)
  return path
