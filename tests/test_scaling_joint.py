"""The joint law L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3) against
known truths, its predictions, and the command's --csv, --where and --predict."""

import csv
import json
import math

import numpy as np
import pytest
from scipy import optimize, special

from tests.test_scaling_fit import CHINCHILLA, chinchilla_loss, scaling_command, write_sweep
from transformer.analysis import parametric, scaling

TRUTH = dict(E=CHINCHILLA['E'], A=CHINCHILLA['A'], B=CHINCHILLA['B'], alpha=CHINCHILLA['a'],
             beta=CHINCHILLA['b'])


def grid_points(noise=0.0, seed=0, sizes=6, token_counts=5):
  """N over 30x and D over 100x (every pair), losses from Chinchilla's law, log-normal noise."""
  n, d = (v.ravel() for v in np.meshgrid(np.geomspace(4e7, 1.2e9, sizes),
                                          np.geomspace(1e9, 1e11, token_counts)))
  loss = chinchilla_loss(n, d) * np.exp(np.random.default_rng(seed).normal(0, noise, len(n)))
  return n, d, loss


def test_objective_is_the_huber_loss_of_log_residuals_and_its_gradient_is_exact():
  n, d, loss = grid_points(noise=0.02)
  args = tuple(np.log(v) for v in (n, d, loss))
  theta = np.array([6.0, 6.0, 0.5, 0.34, 0.28])
  value, grad = parametric.objective(theta, *args)
  predicted = np.log(np.exp(6.0) * n ** -0.34 + np.exp(6.0) * d ** -0.28 + np.exp(0.5))
  reference = special.huber(1e-3, predicted - np.log(loss)).sum() / 1e-3  # scipy's Huber
  assert value == pytest.approx(reference, rel=1e-12)
  numeric = optimize.approx_fprime(theta, lambda t: parametric.objective(t, *args)[0], 1e-7)
  np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-6)


def test_recovers_chinchilla_exactly_without_noise():
  law = parametric.fit_joint(*grid_points(), bootstrap=0, starts=10)
  for name, value in TRUTH.items():
    assert getattr(law, name) == pytest.approx(value, rel=1e-3), name
  assert law.residual_rms < 1e-6 and law.points == 30 and law.resamples == 0


def test_recovers_known_parameters_with_noise_inside_its_intervals():
  law = parametric.fit_joint(*grid_points(noise=0.005, seed=1), bootstrap=50, seed=0, starts=10)
  assert law.E == pytest.approx(TRUTH['E'], rel=0.05)
  assert law.alpha == pytest.approx(TRUTH['alpha'], abs=0.05)
  assert law.beta == pytest.approx(TRUTH['beta'], abs=0.05)
  for name, value in TRUTH.items():
    low, high = law.intervals[name]
    assert low <= value <= high, (name, low, value, high)
  a = TRUTH['beta'] / (TRUTH['alpha'] + TRUTH['beta'])
  low, high = law.intervals['a']
  assert low <= a <= high and law.a == pytest.approx(a, abs=0.05)
  assert law.resamples == 50 and 0.003 < law.residual_rms < 0.007


def test_compute_optimal_allocation_is_the_minimum_at_fixed_compute():
  E, A, B, alpha, beta = (TRUTH[k] for k in ('E', 'A', 'B', 'alpha', 'beta'))
  for compute in (1e20, 5.76e23):
    # Independently: minimise L(N, C / 6N) over ln N numerically.
    found = optimize.minimize_scalar(
        lambda log_n: E + A * math.exp(-alpha * log_n) + B * (compute / 6) ** -beta
        * math.exp(beta * log_n), bounds=(10, 40), method='bounded',
        options=dict(xatol=1e-10))
    n_opt, d_opt = parametric.optimal_allocation(A, B, alpha, beta, compute)
    assert n_opt == pytest.approx(math.exp(found.x), rel=1e-5)
    assert 6 * n_opt * d_opt == pytest.approx(compute, rel=1e-12)


def test_prediction_intervals_cover_a_held_out_run_and_widen_with_scatter():
  n, d, loss = grid_points(noise=0.01, seed=2)
  law = parametric.fit_joint(n, d, loss, bootstrap=60, starts=10)
  target = dict(n=4e9, d=3e11)  # 3x beyond the largest N and D fitted
  prediction = law.predict(target['n'], target['d'])
  truth = chinchilla_loss(target['n'], target['d'])
  assert prediction.prediction[0] <= truth <= prediction.prediction[1]
  width = lambda interval: interval[1] - interval[0]
  assert width(prediction.prediction) > width(prediction.confidence) > 0
  assert prediction.loss == pytest.approx(float(law(target['n'], target['d'])))
  # The percentile interval need not hold the point estimate when extrapolating, but it lies
  # within a few of its widths.
  assert abs(prediction.loss - np.mean(prediction.confidence)) < width(prediction.prediction)


def test_too_few_points_or_values_are_refused():
  n, d, loss = grid_points(sizes=2, token_counts=5)
  with pytest.raises(ValueError, match='2 distinct value.s. of N, 3 needed'):
    parametric.fit_joint(n, d, loss, bootstrap=0)
  with pytest.raises(ValueError, match='5 point.s., 8 needed'):
    parametric.fit_joint(*(v[:5] for v in grid_points()), bootstrap=0)


def write_table(path, noise=0.005):
  n, d, loss = grid_points(noise=noise, seed=3)
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['Model Size', 'Training FLOP', 'loss', 'note'])
    writer.writerows([m, 6 * m * t, y, 'x'] for m, t, y in zip(n, d, loss))
    writer.writerow(['', '1e20', '2.0', 'a row without N'])
  return n, d, loss


def test_command_fits_a_published_table_by_its_column_names(tmp_path):
  write_table(tmp_path / 'published.csv')
  done = scaling_command(f'--csv={tmp_path / "published.csv"}', '--n_column=Model Size',
                         '--c_column=Training FLOP', '--loss_column=loss', '--bootstrap=30',
                         '--starts=10', '--predict=C=5.76e23', '--predict=N=2e9,D=2e11')
  assert done.returncode == 0, done.stderr
  out = tmp_path / 'published_scaling'
  fits = json.loads((out / 'fits.json').read_text())
  joint = fits['loss_vs_params_and_tokens']
  assert joint['points'] == 30 and joint['alpha'] == pytest.approx(TRUTH['alpha'], abs=0.05)
  assert joint['beta'] == pytest.approx(TRUTH['beta'], abs=0.05)
  assert 'samples' not in joint  # the bootstrap samples stay out of fits.json
  chinchilla = fits['predictions'][1]
  assert chinchilla['joint']['loss'] == pytest.approx(chinchilla_loss(2e9, 2e11), rel=0.01)
  optimum = fits['predictions'][0]  # C alone: the compute-optimal N and D of the fit
  assert 6 * optimum['N'] * optimum['D'] == pytest.approx(5.76e23)
  report = (out / 'report.md').read_text()
  assert '## Loss against parameters and tokens, L(N, D)' in report
  assert '1 row(s) without positive numbers' in report and '## Predictions' in report
  assert 'predicted at N = 2.0B, D = 200.0B: L(N, D) = ' in done.stdout
  png = (out / 'loss_surface.png').read_bytes()
  assert png.startswith(b'\x89PNG') and len(png) > 20_000


def test_where_and_drop_highest_choose_the_points(tmp_path):
  write_sweep(tmp_path)
  results = scaling.read_results(str(tmp_path))
  small = scaling.select(results, ['params_non_embedding<1e6', 'model.num_heads==8'])
  assert len(small.loss) and np.all(small.n < 1e6)
  assert all(v['model.num_heads'] == 8 for v in small.values)
  assert len(small.values) == len(small.loss) == len(small.tokens)
  kept = scaling.drop_highest(results, 3)
  assert len(kept.loss) == len(results.loss) - 3
  assert kept.loss.max() == np.sort(results.loss)[-4]
  for bad, message in (('N<<3', 'is not FIELD OP NUMBER'), ('colour<3', "'colour' is not a field")):
    with pytest.raises(scaling.ResultsError, match=message):
      scaling.select(results, [bad])


def test_bad_flags_get_one_line(tmp_path):
  """Each a ResultsError, which the command prints as one line with exit 2: the command's own
  rule through the command, the rules of the flags it passes on where they are checked."""
  write_table(tmp_path / 't.csv')
  write_sweep(tmp_path)
  done = scaling_command(tmp_path, tmp_path)
  assert done.returncode == 2, done.stderr
  assert done.stderr.count('\n') == 1 and 'Traceback' not in done.stderr
  assert '2 directories are fitted together: name where the analysis goes' in done.stderr
  table = str(tmp_path / 't.csv')
  for check, message in (
      (lambda: scaling.read_table(table, 'params', 'loss', c_column='Training FLOP'),
       "--n_column='params' is not a column of"),
      (lambda: scaling.read_table(table, 'Model Size', 'loss'), '--csv needs --d_column'),
      (lambda: scaling.parse_prediction('N=abc'), "--predict='N=abc': expected N=..., D=..."),
      (lambda: scaling.select(scaling.read_results(str(tmp_path)), ['N<']),
       "--where='N<' is not FIELD OP NUMBER")):
    with pytest.raises(scaling.ResultsError) as error:
      check()
    assert message in str(error.value) and '\n' not in str(error.value)


def test_an_exponent_interval_reaching_zero_is_not_a_headline():
  x = np.geomspace(1e4, 1e6, 6)
  flat = 2.0 * np.exp(np.random.default_rng(0).normal(0, 0.02, len(x)))  # no trend at all
  fit = scaling.fit_power_law(x, flat, irreducible=False, bootstrap=200)
  assert fit.alpha_ci[0] < 0 < fit.alpha_ci[1] and 'reaches 0' in fit.identified
  lines = scaling._law_lines({'pure': fit}, 'N', 200)
  assert '**Not identified**' in lines[0]
  steep = scaling.fit_power_law(x, 5 * x ** -0.1, irreducible=False, bootstrap=50)
  assert steep.identified == ''
  predicted = steep.predict(1e7)
  value, confidence, prediction = predicted.loss, predicted.confidence, predicted.prediction
  assert value == pytest.approx(5 * 1e7 ** -0.1) and predicted.n == 1e7
  assert confidence[0] <= value <= confidence[1] and prediction[0] <= value <= prediction[1]
