"""Positional encodings against their papers' formulas and defining properties."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from transformer.model import positional


def test_sinusoidal_is_the_papers_formula():
  d = 64
  pos = np.arange(512)
  pe = np.asarray(positional.sinusoidal(jnp.asarray(pos), d))
  for i in range(d // 2):
    np.testing.assert_allclose(pe[:, 2 * i], np.sin(pos / 10000 ** (2 * i / d)), atol=2e-5)
    np.testing.assert_allclose(pe[:, 2 * i + 1], np.cos(pos / 10000 ** (2 * i / d)), atol=2e-5)


def test_sinusoidal_concat_layout_is_sines_then_cosines():
  """tensor2tensor's and Marian's layout: dimension i < d/2 is sin(pos w_i), d/2 + i is cos."""
  d = 16
  pos = np.arange(300)
  pe = np.asarray(positional.sinusoidal(jnp.asarray(pos), d, layout='concat'))
  for i in range(d // 2):
    w = 10000 ** (-2 * i / d)
    np.testing.assert_allclose(pe[:, i], np.sin(pos * w), atol=2e-5)
    np.testing.assert_allclose(pe[:, d // 2 + i], np.cos(pos * w), atol=2e-5)


def test_sinusoidal_takes_any_length_and_batched_positions():
  pe = positional.sinusoidal(jnp.arange(20000), 16)
  assert pe.shape == (20000, 16) and np.isfinite(pe).all()
  batched = positional.sinusoidal(jnp.array([[3, 4], [0, 19999]]), 16)
  np.testing.assert_array_equal(batched[1, 1], pe[19999])
  np.testing.assert_array_equal(batched[0, 0], pe[3])


def test_sinusoidal_offsets_are_rotations():
  """The paper's motivation: PE(pos + k) is a fixed linear function (a rotation) of PE(pos)."""
  d, k = 8, 5
  pe = np.asarray(positional.sinusoidal(jnp.arange(40), d), np.float64)
  for i in range(d // 2):
    w = 10000 ** (-2 * i / d)
    rotation = np.array([[np.cos(k * w), -np.sin(k * w)], [np.sin(k * w), np.cos(k * w)]])
    pair = pe[:, 2 * i: 2 * i + 2]
    np.testing.assert_allclose(pair[k:], pair[:-k] @ rotation, atol=1e-5)


def rope_scores(q, k, m, n):
  """<RoPE(q, m), RoPE(k, n)> for single vectors of size H."""
  rq = positional.apply_rope(jnp.asarray(q)[None, None, None], jnp.array([[m]]))
  rk = positional.apply_rope(jnp.asarray(k)[None, None, None], jnp.array([[n]]))
  return float(jnp.sum(rq * rk))


def test_rope_scores_depend_only_on_the_offset(rng):
  q, k = rng.normal(size=16).astype(np.float32), rng.normal(size=16).astype(np.float32)
  for offset in (0, 1, 7, 30):
    scores = [rope_scores(q, k, n + offset, n) for n in (0, 3, 50, 400)]
    np.testing.assert_allclose(scores, scores[0], rtol=1e-4, atol=1e-4)
  assert abs(rope_scores(q, k, 7, 0) - rope_scores(q, k, 1, 0)) > 1e-2


def test_rope_rotates_without_changing_norms(rng):
  x = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
  positions = jnp.asarray(rng.integers(0, 1000, (2, 5)))
  rotated = positional.apply_rope(jnp.asarray(x), positions)
  np.testing.assert_allclose(np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1),
                             rtol=1e-5)
  np.testing.assert_allclose(positional.apply_rope(jnp.asarray(x), jnp.zeros((2, 5), int)), x)


def test_alibi_slopes_follow_the_paper():
  np.testing.assert_allclose(positional.alibi_slopes(8), [2.0 ** -i for i in range(1, 9)])
  # Not a power of two: the 8-head slopes, then every other one of the 16-head slopes.
  expected_12 = [2.0 ** -i for i in range(1, 9)] + [2.0 ** -(i + 0.5) for i in range(4)]
  np.testing.assert_allclose(positional.alibi_slopes(12), expected_12, rtol=1e-6)
  np.testing.assert_allclose(positional.alibi_slopes(1), [2.0 ** -8])


def test_alibi_bias_is_minus_slope_times_distance():
  positions = jnp.array([[0, 1, 2, 3]])
  bias = np.asarray(positional.alibi_bias(2, positions, positions))
  slopes = [2.0 ** -4, 2.0 ** -8]
  for h in range(2):
    for i in range(4):
      for j in range(4):
        assert bias[0, h, i, j] == pytest.approx(-slopes[h] * abs(i - j))


def test_positions_restart_in_every_segment():
  seg = jnp.array([[1, 1, 1, 2, 2, 0, 0], [0, 0, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(positional.positions_from_segments(seg),
                                [[0, 1, 2, 0, 1, 0, 1], [0, 1, 0, 1, 2, 3, 4]])


def test_learned_table_rejects_sequences_longer_than_itself():
  import jax
  module = positional.LearnedPositions(max_len=8, d_model=4)
  params = module.init(jax.random.key(0), jnp.zeros((1, 8), int))
  with pytest.raises(ValueError, match=r'longer than the learned position table.*max_len=8'):
    module.apply(params, jnp.zeros((1, 9), int))
  assert math.prod(module.apply(params, jnp.arange(8)[None]).shape) == 32
