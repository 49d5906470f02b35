"""Scaling-law fits against known truths: power laws, the compute frontier, IsoFLOP profiles
(Hoffmann et al. 2022, approach 2) and the `python -m transformer.scaling DIR` command."""

import csv
import itertools
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from transformer.analysis import scaling

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Chinchilla's fitted loss (Hoffmann et al. 2022, eq. 10): L(N, D) = E + A / N^a + B / D^b.
CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, a=0.34, b=0.28)


def chinchilla_loss(n, tokens):
  c = CHINCHILLA
  return c['E'] + c['A'] / n**c['a'] + c['B'] / tokens**c['b']


def chinchilla_n_opt(budget):
  """The analytic minimum of L(N, C / 6N) over N: G (C / 6)^(b / (a + b))."""
  c = CHINCHILLA
  g = (c['a'] * c['A'] / (c['b'] * c['B']))**(1 / (c['a'] + c['b']))
  return g * (budget / 6)**(c['b'] / (c['a'] + c['b']))


def isoflop_points(budgets, offsets, noise=0.0, seed=0):
  """(budget, N, loss) rows: per budget, N at `offsets` times its analytic optimum, D = C / 6N."""
  rng = np.random.default_rng(seed)
  rows = [(c, chinchilla_n_opt(c) * u) for c in budgets for u in offsets]
  budget, n = np.array(rows).T
  loss = chinchilla_loss(n, budget / (6 * n)) * np.exp(rng.normal(0, noise, len(n)))
  return budget, n, loss


# --- power laws ------------------------------------------------------------------------------

def test_power_law_recovers_known_parameters_with_noise():
  E, A, alpha = 1.7, 60.0, 0.3
  x = np.geomspace(1e5, 1e7, 8)  # 8 sizes over 100x
  truth = E + A * x**-alpha
  noisy = truth * np.exp(np.random.default_rng(0).normal(0, 0.01, len(x)))  # 1% log-normal
  fit = scaling.fit_power_law(x, noisy, bootstrap=200, seed=0)
  assert fit.E == pytest.approx(E, rel=0.1)
  assert fit.alpha == pytest.approx(alpha, abs=0.05)
  assert A / 1.5 < fit.A < A * 1.5
  assert np.max(np.abs(fit(x) / truth - 1)) < 0.02  # the curve itself is close
  for value, (low, high) in ((E, fit.E_ci), (A, fit.A_ci), (alpha, fit.alpha_ci)):
    assert low <= value <= high
  assert fit.resamples > 190 and fit.irreducible and fit.points == 8


def test_power_law_is_exact_on_noiseless_data():
  x = np.geomspace(1e5, 1e7, 8)
  fit = scaling.fit_power_law(x, 1.7 + 60.0 * x**-0.3, bootstrap=0)
  np.testing.assert_allclose([fit.E, fit.A, fit.alpha], [1.7, 60.0, 0.3], rtol=1e-6)
  assert np.isnan(fit.alpha_ci[0])  # no resamples, no interval


def test_pure_power_law_recovers_alpha_exactly():
  x = np.geomspace(1e6, 1e9, 6)
  fit = scaling.fit_power_law(x, (8.8e13 / x)**0.076, irreducible=False, bootstrap=50)
  assert fit.alpha == pytest.approx(0.076, abs=1e-12)
  assert fit.A == pytest.approx(8.8e13**0.076, rel=1e-10)
  assert fit.E == 0 and not fit.irreducible
  assert fit.alpha_ci == pytest.approx((0.076, 0.076), abs=1e-12)  # every resample agrees
  assert fit.formula('N') == f'L = {fit.A:.3g} N^-0.076'


def test_power_law_bootstrap_is_reproducible():
  x = np.geomspace(1e5, 1e7, 8)
  y = (1.7 + 60.0 * x**-0.3) * np.exp(np.random.default_rng(1).normal(0, 0.02, len(x)))
  first, again = (scaling.fit_power_law(x, y, bootstrap=30, seed=3) for _ in range(2))
  assert first == again
  assert scaling.fit_power_law(x, y, bootstrap=30, seed=4).alpha_ci != first.alpha_ci


def test_power_law_needs_distinct_sizes():
  with pytest.raises(ValueError, match='3 distinct'):
    scaling.fit_power_law([1e6, 1e6, 2e6], [3.0, 3.1, 2.9])


# --- compute frontier ------------------------------------------------------------------------

def test_compute_frontier_keeps_undominated_points():
  compute = [1, 2, 3, 4, 5, 4, 1]
  loss = [5.0, 3.0, 4.0, 2.0, 2.5, 2.2, 6.0]
  # 3 (loss 4 > 3 at C=2), 5 (2.5 > 2 at C=4), the second C=4 (2.2 > 2) and C=1 at 6 are beaten
  expected = [True, True, False, True, False, False, False]
  assert scaling.compute_frontier(compute, loss).tolist() == expected


# --- IsoFLOP -----------------------------------------------------------------------------------

def test_isoflop_recovers_chinchilla_exponents_exactly_without_noise():
  # Per budget, L - E = G(C) f(N / N_opt): a grid fixed relative to N_opt gives parabola minima
  # at the same relative place, so the exponents come out exact even off-centre.
  offsets = 1.4 * np.geomspace(1 / 8, 8, 7)
  budget, n, loss = isoflop_points(np.geomspace(1e18, 1e22, 5), offsets)
  fit = scaling.fit_isoflop(budget, n, loss, bootstrap=0)
  expected_a = CHINCHILLA['b'] / (CHINCHILLA['a'] + CHINCHILLA['b'])
  assert fit.n_opt.a == pytest.approx(expected_a, abs=1e-9)
  assert fit.d_opt.a == pytest.approx(1 - expected_a, abs=1e-9)  # D = C / 6N
  assert fit.tokens_from.startswith('6 N')
  for curve in fit.curves:
    assert curve.d_opt == pytest.approx(curve.budget / (6 * curve.n_opt))
    assert curve.n_opt == pytest.approx(chinchilla_n_opt(curve.budget), rel=0.2)


def test_isoflop_with_noise_brackets_the_analytic_exponent():
  budget, n, loss = isoflop_points(np.geomspace(1e18, 1e22, 5), np.geomspace(1 / 6, 6, 9),
                                   noise=0.005)
  fit = scaling.fit_isoflop(budget, n, loss, 8 * n, bootstrap=200, seed=0)
  expected_a = CHINCHILLA['b'] / (CHINCHILLA['a'] + CHINCHILLA['b'])  # 0.4516
  assert fit.n_opt.a == pytest.approx(expected_a, abs=0.03)
  assert fit.n_opt.a_ci[0] <= expected_a <= fit.n_opt.a_ci[1]
  assert fit.d_opt.a_ci[0] <= 1 - expected_a <= fit.d_opt.a_ci[1]
  assert fit.tokens_from.startswith('flops_per_token')
  for curve in fit.curves:  # FLOPs per token = 8 N here, interpolated in ln N
    assert curve.d_opt == pytest.approx(curve.budget / (8 * curve.n_opt), rel=1e-9)


def test_isoflop_reports_budgets_whose_minimum_is_out_of_range():
  budgets = [1e18, 1e19, 1e20, 1e21]
  budget, n, loss = isoflop_points(budgets, np.geomspace(1 / 4, 4, 5))
  small = budget == 1e21
  n[small] /= 100  # all sampled sizes far below that budget's optimum
  loss[small] = chinchilla_loss(n[small], budget[small] / (6 * n[small]))
  fit = scaling.fit_isoflop(budget, n, loss, bootstrap=20)
  unresolved = [curve for curve in fit.curves if curve.unresolved]
  assert [curve.budget for curve in unresolved] == [1e21]
  assert 'above' in unresolved[0].unresolved and unresolved[0].n_opt is None
  assert fit.n_opt.points == 3


# --- the command -------------------------------------------------------------------------------

FIELDS = ['model.num_heads', 'model.num_layers', 'model.d_model', 'sweep.flops_budget']
COLUMNS = ['id', 'status', *FIELDS, 'params', 'params_embedding', 'params_non_embedding',
           'flops_per_token', 'tokens', 'total_flops', 'steps', 'final_train_loss',
           'final_eval_loss', 'wall_seconds', 'error']


def write_sweep(directory, budgets=(1e15, 1e16, 1e17)):
  """An IsoFLOP sweep over heads x layers x d_model with Chinchilla losses; returns its rows."""
  rng = np.random.default_rng(0)
  rows = []
  grid = itertools.product((4, 8), (2, 4, 8), (128, 256, 512, 1024), budgets)
  for i, (heads, layers, width, budget) in enumerate(grid):
    n = 12 * layers * width**2
    tokens = budget / (6 * n)
    loss = chinchilla_loss(n, tokens) * (1.01 if heads == 4 else 1.0)
    loss *= np.exp(rng.normal(0, 0.002))
    status = 'failed' if i == 3 else 'finished'
    rows.append(dict(
        id=f'p{i}', status=status, **dict(zip(FIELDS, (heads, layers, width, budget))),
        params=n + 256 * width, params_embedding=256 * width, params_non_embedding=n,
        flops_per_token=6 * n, tokens=tokens, total_flops=budget, steps=100,
        final_train_loss='' if status == 'failed' else loss + 0.01,
        final_eval_loss='' if status == 'failed' or i == 5 else loss, wall_seconds=1.0,
        error='died' if status == 'failed' else ''))
  with open(os.path.join(directory, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  with open(os.path.join(directory, 'sweep.json'), 'w') as f:
    json.dump(dict(config='configs/sweeps/test.py', fields=FIELDS, points=[]), f)
  return rows


def scaling_command(*args):
  return subprocess.run([sys.executable, '-m', 'transformer.scaling', *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_command_fits_and_plots_a_sweep(tmp_path):
  rows = write_sweep(tmp_path)
  # The joint L(N, D) fit is checked in test_scaling_joint.py: 10 starts of L-BFGS, not 100.
  done = scaling_command(tmp_path, '--bootstrap=30', '--starts=10')
  assert done.returncode == 0, done.stderr
  out = tmp_path / 'scaling'
  fits = json.loads((out / 'fits.json').read_text())
  report = (out / 'report.md').read_text()
  assert fits['points'] == dict(finished=71, failed=1, used=71)
  alpha_n = fits['loss_vs_params']['pure']['alpha']
  assert f'alpha = {alpha_n:.3g} [' in report and f'alpha_N = {alpha_n:.3g}' in done.stdout
  assert 'compute-efficient frontier: 3 of 71 points' in report
  a = fits['isoflop']['n_opt']['a']
  # A parabola over a fixed size grid is biased by a few hundredths (the exact test is above).
  assert a == pytest.approx(CHINCHILLA['b'] / (CHINCHILLA['a'] + CHINCHILLA['b']), abs=0.05)
  assert f'a = {a:.3g} [' in report and 'N_opt ~ C^0.50' in report
  assert '1 point(s) have no final_eval_loss' in report
  for name in ('loss_vs_params', 'loss_vs_compute', 'isoflop_curves', 'isoflop_optimal',
               'heatmap_num_heads_num_layers', 'heatmap_num_layers_d_model'):
    png = (out / f'{name}.png').read_bytes()
    assert png.startswith(b'\x89PNG') and len(png) > 20_000, name
    assert f'`{name}.png`' in report
  # Heatmap cells hold the lowest loss over the other swept fields.
  grid = next(g for g in fits['heatmaps'] if g['rows'] == 'model.num_layers')
  used = [r for r in rows if r['status'] == 'finished']
  lowest = min(r['final_eval_loss'] or r['final_train_loss'] for r in used
               if r['model.num_layers'] == 4 and r['model.d_model'] == 256)
  cell = grid['loss'][grid['row_values'].index(4)][grid['column_values'].index(256)]
  assert cell == pytest.approx(lowest)
  assert grid['minimum_over'] == ['model.num_heads', 'sweep.flops_budget']


def test_command_skips_fits_without_enough_sizes(tmp_path):
  rows = write_sweep(tmp_path, budgets=(1e15,))
  with open(tmp_path / 'results.csv', 'w', newline='') as f:  # keep two sizes only
    writer = csv.DictWriter(f, COLUMNS)
    writer.writeheader()
    writer.writerows(r for r in rows if r['model.num_layers'] == 2 and r['model.d_model'] < 512)
  path, summary = scaling.analyze_sweep(str(tmp_path), bootstrap=10)
  report = pathlib.Path(path).read_text()
  assert 'L(N), pure power law: skipped (2 distinct value(s), 3 needed)' in report
  assert 'IsoFLOP exponents: skipped' in report
  assert 'unresolved: 2 distinct sizes (a parabola needs 3)' in report
  assert any(line.startswith('alpha_N: skipped') for line in summary)


def test_command_rejects_a_missing_directory(tmp_path):
  done = scaling_command(tmp_path / 'nowhere')
  assert done.returncode == 2
  assert done.stderr.count('\n') == 1 and 'Traceback' not in done.stderr
  assert 'nowhere: no such directory' in done.stderr


def test_bad_results_name_what_is_expected(tmp_path):
  write_sweep(tmp_path)
  with pytest.raises(scaling.ResultsError, match='--metric=loss is not a result column'):
    scaling.read_results(str(tmp_path), 'loss')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(scaling.ResultsError, match='empty holds no results.csv'):
    scaling.read_results(str(tmp_path / 'empty'))
  (tmp_path / 'results.csv').write_text('id,status,params_non_embedding\np0,finished,10\n')
  with pytest.raises(scaling.ResultsError, match='lacks the column.s. total_flops'):
    scaling.read_results(str(tmp_path))
  (tmp_path / 'results.csv').write_bytes(b'id,status\n\xff\xfe,finished\n')  # not UTF-8
  with pytest.raises(scaling.ResultsError, match='results.csv is not a CSV file in UTF-8'):
    scaling.read_results(str(tmp_path))
