"""Test setup: 8 simulated CPU devices (must precede any JAX operation) and shared helpers."""

import jax

jax.config.update('jax_num_cpu_devices', 8)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
  return np.random.default_rng(0)
