"""The scaling laws of a finished sweep: fits of DIR/results.csv (written by
transformer.analysis.sweeps), a report and its plots, written to DIR/scaling/ (`python -m
transformer.scaling DIR`). Parameters and FLOPs are counted as transformer/model/counting.py
states.

Scaling laws (N: non-embedding parameters, C: a run's training FLOPs `total_flops`, L: the loss,
`final_eval_loss` or `final_train_loss` where no evaluation was recorded):
- A power law L = E + A x^-alpha (E >= 0, A, alpha > 0) is fitted by least squares on log L, in
  log-parameters; a pure one, L = A x^-alpha (Kaplan et al.'s form, what a small study can
  identify), by linear regression in log-log. Intervals are 95% percentile bootstrap intervals
  over points resampled with replacement (resamples that do not fit are skipped).
- L(N) is fitted to the lowest loss at each distinct N (the best over the other swept fields);
  L(C) to the compute-efficient frontier (points that no point with no more compute beats).
- IsoFLOP (Hoffmann et al. 2022, approach 2): per budget C, a parabola of L in ln N whose
  minimum, when inside the sampled range, is N_opt(C); D_opt(C) = C / flops_per_token(N_opt);
  then N_opt = k C^a and D_opt = k' C^b in log-log, bootstrapped within each budget.
"""

import collections
import csv
import dataclasses
import io
import json
import math
import re
from typing import Any, Callable, Sequence

import numpy as np

from transformer import files, plots as figures
from transformer.analysis import parametric
from transformer.errors import ConfigError, first_line
from transformer.model.counting import format_count

# ---------------------------------------------------------------------------------------------
# Power-law fits

MIN_SIZES = 3  # distinct x values (or resolved IsoFLOP budgets) a fit needs
MIN_SIZES_IRREDUCIBLE = 5  # ... and for E + A x^-alpha: three parameters, so some to spare
Interval = parametric.Interval


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """L = E + A x^-alpha (E = 0 for a pure power law), with 95% bootstrap intervals (low, high)."""
  E: float
  A: float
  alpha: float
  E_ci: Interval
  A_ci: Interval
  alpha_ci: Interval
  points: int  # points fitted
  resamples: int  # bootstrap resamples that fitted
  irreducible: bool  # whether E was fitted
  samples: np.ndarray = dataclasses.field(default_factory=lambda: np.empty((0, 3)), repr=False,
                                          compare=False)  # (resamples, 3): E, A, alpha
  residuals: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(1), repr=False,
                                            compare=False)  # ln L - ln L_fit

  def __call__(self, x):
    return self.E + self.A * np.asarray(x, float) ** -self.alpha

  @property
  def identified(self) -> str:
    """'' when the exponent's interval lies above 0, else why the law is not identified."""
    low, high = self.alpha_ci
    if not (math.isfinite(low) and math.isfinite(high)):
      return 'no bootstrap interval'
    if low <= 0:
      return f'the exponent\'s 95% interval [{low:.3g}, {high:.3g}] reaches 0 or below'
    if self.irreducible and low < 1e-3:
      return 'the exponent collapses to 0'
    return ''

  @property
  def floor_collapsed(self) -> bool:
    """A fitted irreducible loss of ~0: the curve is the pure law's."""
    return self.irreducible and self.E < 1e-3

  def predict(self, x: float, seed: int = 0) -> parametric.Prediction:
    """L(x) with its 95% confidence and prediction intervals (the bootstrap fits; the same
    times the exponential of a residual drawn at random); D is not a variable of this law."""
    value = float(self(x))
    if not len(self.samples):
      return parametric.Prediction(float(x), math.nan, value, (math.nan, math.nan),
                                   (math.nan, math.nan))
    E, A, alpha = self.samples.T
    return parametric.Prediction(float(x), math.nan, value, *parametric.prediction_intervals(
        E + A * float(x) ** -alpha, self.residuals, seed))

  def formula(self, x: str = 'N', y: str = 'L') -> str:
    floor = f'{self.E:.3g} + ' if self.irreducible else ''
    return f'{y} = {floor}{self.A:.3g} {x}^{-self.alpha:.3f}'


@dataclasses.dataclass(frozen=True)
class Allocation:
  """y = k C^a (N_opt or D_opt against compute), with 95% bootstrap intervals (low, high)."""
  name: str  # y: 'N_opt' or 'D_opt'
  k: float
  a: float
  k_ci: Interval
  a_ci: Interval
  points: int  # budgets fitted
  resamples: int  # bootstrap resamples that fitted

  def __call__(self, c):
    return self.k * np.asarray(c, float) ** self.a

  def formula(self, x: str = 'C') -> str:
    return f'{self.name} = {self.k:.3g} {x}^{self.a:.3f}'


def fit_power_law(x, y, *, irreducible: bool = True, bootstrap: int = 1000,
                  seed: int = 0) -> PowerLaw:
  """Fits L = E + A x^-alpha by least squares on log L, or with irreducible=False the pure
  L = A x^-alpha by linear regression in log-log; 95% intervals from `bootstrap` resamples."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  needed = 3 if irreducible else 2
  if len(np.unique(x)) < needed:
    raise ValueError(f'a power law needs at least {needed} distinct x values, got {x.tolist()}')
  if not (np.all(x > 0) and np.all(y > 0) and np.all(np.isfinite(x * y))):
    raise ValueError('a power law needs positive, finite x and y')
  fit_once = _fit_with_floor if irreducible else _fit_pure
  best = fit_once(x, y)
  if best is None:
    raise ValueError('the power-law fit did not converge')

  def refit(indices):
    return fit_once(x[indices], y[indices], best) if len(np.unique(x[indices])) >= needed else None

  samples = _bootstrap(refit, [np.arange(len(x))], bootstrap, seed)
  (E_ci, A_ci, alpha_ci) = _intervals(samples, 3)
  E, A, alpha = best
  residuals = np.log(y) - np.log(E + A * x ** -alpha)
  return PowerLaw(E, A, alpha, E_ci, A_ci, alpha_ci, len(x), len(samples), irreducible,
                  samples.reshape(-1, 3), residuals)


def _fit_pure(x, y, start=None):
  """(0, A, alpha) of L = A x^-alpha, by linear regression of log L on log x."""
  del start  # closed form
  slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
  return 0.0, float(np.exp(intercept)), float(-slope)


def _fit_with_floor(x, y, start=None):
  """(E, A, alpha) of L = E + A x^-alpha by least squares on log L, or None if no start fits.

  Parameters: E in [0, min L], log a and log alpha, with x centred on its geometric mean x0
  (L = E + a (x / x0)^-alpha, A = a x0^alpha), which decouples a from alpha. Without `start`,
  several starts are tried (E at 0, 50% and 90% of the smallest loss)."""
  from scipy import optimize
  log_x0 = np.log(x).mean()
  u, log_y, top = np.log(x) - log_x0, np.log(y), y.min()

  def residuals(p):
    return np.log(p[0] + np.exp(p[1] - np.exp(p[2]) * u)) - log_y

  def jacobian(p):
    power = np.exp(p[1] - np.exp(p[2]) * u)
    total = p[0] + power
    return np.stack([1 / total, power / total, -np.exp(p[2]) * u * power / total], axis=1)

  if start is None:
    starts = [_floor_guess(u, y, fraction * top) for fraction in (0.0, 0.5, 0.9)]
  else:
    E, A, alpha = start
    starts = [(min(E, 0.999 * top), np.log(A) - alpha * log_x0, np.log(alpha))]
  bounds = ([0.0, -np.inf, np.log(1e-4)], [top, np.inf, np.log(10.0)])
  best = None
  for p0 in starts:
    try:
      result = optimize.least_squares(residuals, p0, jac=jacobian, bounds=bounds)
    except (ValueError, FloatingPointError):
      continue
    if result.success and np.all(np.isfinite(result.x)) and (best is None
                                                              or result.cost < best.cost):
      best = result
  if best is None:
    return None
  E, log_a, log_alpha = best.x
  alpha = float(np.exp(log_alpha))
  return float(E), float(np.exp(log_a + alpha * log_x0)), alpha


def _floor_guess(u, y, E):
  """A start (E, log a, log alpha): the pure power law fitted to L - E."""
  slope, intercept = np.polyfit(u, np.log(y - E), 1)
  return E, intercept, np.log(np.clip(-slope, 1e-3, 5.0))


def _bootstrap(refit: Callable, groups: Sequence[np.ndarray], bootstrap: int,
               seed: int) -> np.ndarray:
  """The estimates of `refit(indices)` over `bootstrap` resamples drawn with replacement within
  each group of indices, one row per resample; resamples where refit gives None are skipped."""
  rng = np.random.default_rng(seed)
  estimates = []
  for _ in range(bootstrap):
    indices = np.concatenate([rng.choice(group, size=len(group)) for group in groups])
    estimate = refit(indices)
    if estimate is not None:
      estimates.append(estimate)
  return np.array(estimates, float) if estimates else np.empty((0, 0))


def _intervals(samples: np.ndarray, count: int) -> list[Interval]:
  """95% percentile intervals of each column; (nan, nan) without samples."""
  if len(samples) == 0:
    return [(math.nan, math.nan)] * count
  low, high = np.percentile(samples, [2.5, 97.5], axis=0)
  return [(float(lo), float(hi)) for lo, hi in zip(low, high)]


def compute_frontier(compute, loss) -> np.ndarray:
  """Mask of the compute-efficient frontier: the points that no other point beats with no more
  compute and a lower loss (of equal compute, the lower loss)."""
  compute, loss = np.asarray(compute, float), np.asarray(loss, float)
  mask = np.zeros(len(compute), bool)
  lowest = np.inf
  for i in np.lexsort((loss, compute)):  # by compute, then loss
    if loss[i] < lowest:
      mask[i], lowest = True, loss[i]
  return mask


# ---------------------------------------------------------------------------------------------
# IsoFLOP profiles (Hoffmann et al. 2022, approach 2)

@dataclasses.dataclass(frozen=True)
class IsoFlopCurve:
  """One budget: its points, the parabola L = c2 ln(N)^2 + c1 ln N + c0 and its minimum."""
  budget: float
  n: tuple[float, ...]
  loss: tuple[float, ...]
  coefficients: tuple[float, float, float] | None  # (c2, c1, c0); None below 3 sizes
  n_opt: float | None  # None when unresolved
  d_opt: float | None
  unresolved: str  # why there is no N_opt ('' when there is one)


@dataclasses.dataclass(frozen=True)
class IsoFlopFit:
  """Per-budget curves and, over the resolved budgets, N_opt = k C^a and D_opt = k' C^b."""
  curves: tuple[IsoFlopCurve, ...]
  n_opt: Allocation | None  # None below MIN_SIZES resolved budgets
  d_opt: Allocation | None
  tokens_from: str  # how D_opt was found from N_opt


def fit_isoflop(budget, n, loss, flops_per_token=None, *, bootstrap: int = 1000,
                seed: int = 0) -> IsoFlopFit:
  """Per budget, N_opt at the minimum of a parabola of loss in ln N, D_opt = C / FLOPs per token
  at N_opt (interpolated in ln N, or 6 N without `flops_per_token`); then N_opt = k C^a and
  D_opt = k' C^b, with intervals from resampling the points within each budget."""
  budget, n, loss = (np.asarray(v, float) for v in (budget, n, loss))
  per_token, tokens_from = _per_token_flops(n, flops_per_token)
  groups = [np.flatnonzero(budget == c) for c in np.unique(budget)]
  curves = tuple(_isoflop_curve(budget[g[0]], n[g], loss[g], per_token) for g in groups)
  resolved = [g for g, curve in zip(groups, curves) if curve.n_opt is not None]
  if len(resolved) < MIN_SIZES:
    return IsoFlopFit(curves, None, None, tokens_from)

  def optima(indices):  # (C, N_opt, D_opt) per budget, or None if one is unresolved
    rows = []
    for c in np.unique(budget[indices]):
      chosen = indices[budget[indices] == c]
      curve = _isoflop_curve(c, n[chosen], loss[chosen], per_token)
      if curve.n_opt is None:
        return None
      rows.append((c, curve.n_opt, curve.d_opt))
    return np.array(rows).T

  def laws(indices):
    found = optima(indices)
    return None if found is None else (*_log_linear(found[0], found[1]),
                                       *_log_linear(found[0], found[2]))

  estimate = laws(np.concatenate(resolved))
  samples = _bootstrap(laws, resolved, bootstrap, seed)
  k_ci, a_ci, kd_ci, b_ci = _intervals(samples, 4)
  count, fitted = len(resolved), len(samples)
  return IsoFlopFit(curves, Allocation('N_opt', *estimate[:2], k_ci, a_ci, count, fitted),
                    Allocation('D_opt', *estimate[2:], kd_ci, b_ci, count, fitted), tokens_from)


def _isoflop_curve(budget, n, loss, per_token: Callable) -> IsoFlopCurve:
  """The parabola of one budget's loss in ln N and its minimum, if inside the sampled N."""
  points = dict(budget=float(budget), n=tuple(map(float, n)), loss=tuple(map(float, loss)))
  log_n = np.log(n)
  if len(np.unique(log_n)) < 3:
    return IsoFlopCurve(**points, coefficients=None, n_opt=None, d_opt=None,
                        unresolved=f'{len(np.unique(log_n))} distinct sizes (a parabola needs 3)')
  c2, c1, c0 = np.polyfit(log_n, loss, 2)
  curve = dict(points, coefficients=(float(c2), float(c1), float(c0)))
  if c2 <= 0:
    return IsoFlopCurve(**curve, n_opt=None, d_opt=None, unresolved='the parabola has no minimum')
  log_n_opt = -c1 / (2 * c2)
  if not log_n.min() < log_n_opt < log_n.max():
    side = 'below' if log_n_opt <= log_n.min() else 'above'
    return IsoFlopCurve(**curve, n_opt=None, d_opt=None,
                        unresolved=f'the minimum lies {side} the sampled sizes')
  n_opt = float(np.exp(log_n_opt))
  return IsoFlopCurve(**curve, n_opt=n_opt, d_opt=float(budget / per_token(n_opt)), unresolved='')


def _per_token_flops(n, flops_per_token) -> tuple[Callable, str]:
  """FLOPs per token as a function of N: interpolated in ln N from the points that have it,
  else 6 N. Also says which."""
  if flops_per_token is not None:
    per_token = np.asarray(flops_per_token, float)
    known = np.isfinite(per_token) & (per_token > 0)
    sizes = np.unique(n[known])
    if len(sizes) >= 2:
      log_per_token = [np.log(per_token[known & (n == size)]).mean() for size in sizes]
      return (lambda size: float(np.exp(np.interp(np.log(size), np.log(sizes), log_per_token))),
              'flops_per_token interpolated in ln N')
  return (lambda size: 6.0 * size), '6 N (no flops_per_token at two or more sizes)'


def _log_linear(x, y) -> tuple[float, float]:
  """(k, a) of y = k x^a, by linear regression in log-log."""
  slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
  return float(np.exp(intercept)), float(slope)


# ---------------------------------------------------------------------------------------------
# Reading a sweep's results.csv

DEFAULT_METRIC = 'final_eval_loss'
FALLBACK_METRIC = 'final_train_loss'  # used where a point has no evaluation loss
BUDGET = 'sweep.flops_budget'  # the column of an IsoFLOP sweep
REQUIRED_COLUMNS = ('status', 'params_non_embedding', 'total_flops')
RESULT_COLUMNS = ('params', 'params_embedding', 'params_non_embedding', 'flops_per_token',
                  'tokens', 'total_flops', 'steps', 'final_train_loss', 'final_eval_loss',
                  'wall_seconds', 'error')


class ResultsError(ValueError):
  """A sweep directory or results.csv that cannot be read; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Results:
  """The finished points of a sweep that have a loss (as arrays) and the counts of all points."""
  path: str  # results.csv
  metric: str
  swept: tuple[str, ...]  # the swept fields (sweep.json's, else every config column)
  statuses: dict[str, int]  # points per status, all rows
  values: tuple[dict[str, Any], ...]  # each used point's config columns (swept and derived)
  n: np.ndarray  # non-embedding parameters
  tokens: np.ndarray  # training tokens D (nan where missing)
  compute: np.ndarray  # total training FLOPs
  loss: np.ndarray
  per_token: np.ndarray  # FLOPs per token (nan where missing)
  budget: np.ndarray  # the IsoFLOP budget (nan where none)
  notes: tuple[str, ...]


def read_results(directory: str, metric: str = DEFAULT_METRIC) -> Results:
  """The points of DIR/results.csv; raises ResultsError naming what is missing."""
  path = str(files.path(directory) / 'results.csv')
  try:
    files.check_remote(directory, 'DIR', write=False)
  except ConfigError as e:
    raise ResultsError(str(e)) from None
  if not files.path(directory).is_dir():
    raise ResultsError(f'{directory}: no such directory; expected a sweep directory '
                       '(written by python -m transformer.sweep) holding results.csv')
  if not files.path(path).is_file():
    raise ResultsError(f'{directory} holds no results.csv; expected a finished sweep directory '
                       '(python -m transformer.sweep --workdir=DIR writes it)')
  try:
    rows, header = _read_csv(path)
  except (UnicodeDecodeError, csv.Error) as e:
    raise ResultsError(f'{path} is not a CSV file in UTF-8 ({first_line(e, 200)}); '
                       'python -m transformer.sweep writes one') from None
  if not header:
    raise ResultsError(f'{path} is empty; expected a header row and one row per sweep point')
  _check_columns(path, header, rows, metric)
  statuses = dict(collections.Counter(row['status'] for row in rows))
  swept, configured = _swept_fields(directory, header)
  finished = [row for row in rows if row['status'] == 'finished']
  losses, notes = _losses(finished, metric)
  number = lambda row, key: _float(row.get(key, ''))
  positive = lambda value: math.isfinite(value) and value > 0
  used = [(row, loss) for row, loss in zip(finished, losses) if positive(loss) and
          positive(number(row, 'params_non_embedding')) and positive(number(row, 'total_flops'))]
  if len(used) < len(finished):
    notes.append(f'{len(finished) - len(used)} finished point(s) without a finite, positive '
                 f'{metric}, params_non_embedding or total_flops were left out')
  column = lambda key: np.array([number(row, key) for row, _ in used], float)
  return Results(
      path=path, metric=metric, swept=tuple(swept), statuses=statuses,
      values=tuple({f: _cell(row[f]) for f in configured if row[f] != ''} for row, _ in used),
      n=column('params_non_embedding'), tokens=column('tokens'), compute=column('total_flops'),
      loss=np.array([loss for _, loss in used], float),
      per_token=column('flops_per_token'), budget=column(BUDGET), notes=tuple(notes))


def read_table(path: str, n_column: str, loss_column: str, d_column: str = '',
               c_column: str = '') -> Results:
  """The rows of any CSV file with columns for N, the loss and D or C (e.g. published data):
  D = C / 6N where only C is given, C = 6ND where only D is. Rows whose values are not positive
  numbers are left out, with a note."""
  if not (d_column or c_column):
    raise ResultsError('--csv needs --d_column (training tokens) or --c_column (training FLOPs, '
                       'D = C / 6N)')
  try:
    rows, header = _read_csv(path)
  except OSError as e:
    raise ResultsError(f'--csv={path}: {first_line(e, 200)}') from None
  except (UnicodeDecodeError, csv.Error) as e:
    raise ResultsError(f'--csv={path} is not a CSV file in UTF-8 ({first_line(e, 200)})') from None
  wanted = {'--n_column': n_column, '--loss_column': loss_column, '--d_column': d_column,
            '--c_column': c_column}
  for flag, name in wanted.items():
    if name and name not in header:
      raise ResultsError(f'{flag}={name!r} is not a column of {path}; its columns: '
                         f'{", ".join(header) or "none (empty file)"}')
  number = lambda row, name: _float(row[name]) if name else math.nan
  table = np.array([[number(row, name) for name in (n_column, d_column, c_column, loss_column)]
                    for row in rows], float).reshape(-1, 4)
  n, d, c, loss = table.T
  d = np.where(np.isfinite(d), d, c / (6 * n))  # an absent column reads as nan
  c = np.where(np.isfinite(c), c, 6 * n * d)
  keep = np.all(np.isfinite(np.stack([n, d, c, loss])) & (np.stack([n, d, c, loss]) > 0), axis=0)
  notes = [] if keep.all() else [f'{int((~keep).sum())} row(s) without positive numbers for N, D '
                                 'or C and the loss were left out']
  return Results(path=path, metric=loss_column, swept=(), statuses={'rows': len(rows)},
                 values=tuple({} for _ in range(int(keep.sum()))), n=n[keep], tokens=d[keep],
                 compute=c[keep], loss=loss[keep], per_token=np.full(int(keep.sum()), np.nan),
                 budget=np.full(int(keep.sum()), np.nan), notes=tuple(notes))


ARRAYS = ('n', 'tokens', 'compute', 'loss', 'per_token', 'budget')
ALIASES = {'N': 'n', 'params_non_embedding': 'n', 'D': 'tokens', 'tokens': 'tokens',
           'C': 'compute', 'total_flops': 'compute', 'loss': 'loss'}


def combine(tables: Sequence[Results]) -> Results:
  """The points of several sweeps (or tables) as one set of results."""
  if len(tables) == 1:
    return tables[0]
  statuses = collections.Counter()
  for table in tables:
    statuses.update(table.statuses)
  return dataclasses.replace(
      tables[0], path=', '.join(t.path for t in tables),
      swept=tuple(dict.fromkeys(f for t in tables for f in t.swept)), statuses=dict(statuses),
      values=tuple(v for t in tables for v in t.values),
      notes=tuple(note for t in tables for note in t.notes),
      **{name: np.concatenate([getattr(t, name) for t in tables]) for name in ARRAYS})


def _subset(results: Results, keep: np.ndarray, note: str) -> Results:
  return dataclasses.replace(
      results, values=tuple(v for v, k in zip(results.values, keep) if k),
      notes=results.notes + (note,), **{name: getattr(results, name)[keep] for name in ARRAYS})


CONDITION = re.compile(r'^\s*([\w.]+)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$')
OPERATORS = {'<': np.less, '<=': np.less_equal, '>': np.greater, '>=': np.greater_equal,
             '==': np.equal, '!=': np.not_equal}


def select(results: Results, conditions: Sequence[str]) -> Results:
  """The points meeting every condition FIELD OP NUMBER (OP one of < <= > >= == !=; FIELD N, D,
  C, loss, a result column or a config field of the sweep)."""
  for text in conditions:
    match = CONDITION.match(text)
    value = _float(match.group(3)) if match else math.nan
    if not match or math.isnan(value):
      raise ResultsError(f'--where={text!r} is not FIELD OP NUMBER (e.g. '
                         "'params_non_embedding<400000' or 'D>=1e6'; OP: < <= > >= == !=)")
    field, op = match.group(1), match.group(2)
    if field in ALIASES or field == results.metric:
      column = getattr(results, ALIASES.get(field, 'loss'))
    elif any(field in v for v in results.values):
      column = np.array([_float(str(v.get(field, ''))) for v in results.values], float)
    else:
      raise ResultsError(f'--where={text!r}: {field!r} is not a field of the results; use N, D, '
                         'C, loss or a swept field')
    keep = OPERATORS[op](column, value)
    results = _subset(results, keep, f'points with {text}: {int(keep.sum())} of {len(column)}')
  return results


def drop_highest(results: Results, count: int) -> Results:
  """Without the `count` points of highest loss (Besiroglu et al. 2024 drop the 5 highest of
  the Chinchilla data as outliers)."""
  if count <= 0:
    return results
  keep = np.ones(len(results.loss), bool)
  keep[np.argsort(-results.loss, kind='stable')[:count]] = False
  return _subset(results, keep, f'the {count} point(s) of highest loss were left out')


def _check_columns(path: str, header: list[str], rows: list[dict], metric: str):
  missing = [c for c in ('id', *REQUIRED_COLUMNS) if c not in header]
  if missing:
    raise ResultsError(f'{path} lacks the column(s) {", ".join(missing)}; expected the table of '
                       'python -m transformer.sweep (id, status, swept fields, params, ..., '
                       'total_flops, final_train_loss, final_eval_loss)')
  end = next(i for i, c in enumerate(header) if c in RESULT_COLUMNS)
  metrics = [c for c in header[end:] if c != 'error']
  if metric not in metrics:
    raise ResultsError(f'--metric={metric} is not a result column of {path}; expected one of '
                       f'{", ".join(metrics)}')
  texts = [row[metric] for row in rows if row['status'] == 'finished' and row[metric] != '']
  words = [t for t in texts if isinstance(_cell(t), str)]
  if words:
    raise ResultsError(f'--metric={metric} holds non-numeric values (e.g. {words[0]!r}); '
                       f'expected a loss column such as {DEFAULT_METRIC}')


def _read_csv(path: str) -> tuple[list[dict], list[str]]:
  """(rows, header) of a CSV file in UTF-8 (local or remote: read whole through epath)."""
  with files.path(path).open('rb') as f:
    text = f.read().decode('utf-8')
  reader = csv.DictReader(io.StringIO(text, newline=''), restval='')
  return list(reader), reader.fieldnames or []


def _file(out: str, name: str) -> str:
  return str(files.path(out) / name)


def _swept_fields(directory: str, header: list[str]) -> tuple[list[str], list[str]]:
  """The swept fields (sweep.json's, else all config columns) and the config columns: those
  between status and the results (swept and derived fields)."""
  end = next((i for i, c in enumerate(header) if c in RESULT_COLUMNS), len(header))
  configured = header[header.index('status') + 1:end]
  try:
    fields = files.read_json(files.path(directory) / 'sweep.json')['fields']
    if fields and all(field in header for field in fields):
      return list(fields), list(dict.fromkeys(configured + fields))
  except (OSError, ValueError, KeyError, TypeError):
    pass
  return configured, configured


def _losses(rows: list[dict], metric: str) -> tuple[list[float], list[str]]:
  """Each row's loss (nan where missing): the metric, or the train loss where eval is missing."""
  losses = [_float(row[metric]) for row in rows]
  notes = []
  if metric == DEFAULT_METRIC:
    fallback = [_float(row.get(FALLBACK_METRIC, '')) for row in rows]
    fallen = [i for i, loss in enumerate(losses)
              if not math.isfinite(loss) and math.isfinite(fallback[i])]
    for i in fallen:
      losses[i] = fallback[i]
    if fallen:
      notes.append(f'{len(fallen)} point(s) have no {DEFAULT_METRIC}: their {FALLBACK_METRIC} '
                   'is used')
  return losses, notes


def _float(text: str) -> float:
  try:
    return float(text)
  except (TypeError, ValueError):
    return math.nan


def _cell(text: str) -> Any:
  """A CSV cell as an int, a float, or the text itself."""
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


# ---------------------------------------------------------------------------------------------
# The analysis of a sweep: fits, report, plots

KAPLAN = dict(alpha_N=0.076, alpha_C=0.050)  # Kaplan et al. 2020 (N: non-embedding parameters)
# L(N, D) of Hoffmann et al. 2022 (eq. 10) and of its replication (Besiroglu et al. 2024, on data
# read from the paper's figure 4, without the 5 points of highest loss).
CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
REPLICATION = dict(E=1.82, A=482.0, B=2085.4, alpha=0.348, beta=0.366)
HOFFMANN = dict(a=0.50, b=0.50)  # Hoffmann et al. 2022: N_opt ~ C^a, D_opt ~ C^b
HEATMAPS = (('model.num_heads', 'model.num_layers'), ('model.num_layers', 'model.d_model'))


def analyze(results: Results, bootstrap: int = 1000, seed: int = 0,
            starts: int = 100) -> dict[str, Any]:
  """Every fit the results allow: L(N), L(C), IsoFLOP, L(N, D), loss grids; skipped fits say
  why."""
  sizes = np.unique(results.n)
  lowest = np.array([results.loss[results.n == size].min() for size in sizes])
  frontier = compute_frontier(results.compute, results.loss)
  in_budget = np.isfinite(results.budget)
  isoflop = None
  if in_budget.any():
    isoflop = fit_isoflop(results.budget[in_budget], results.n[in_budget],
                          results.loss[in_budget], results.per_token[in_budget],
                          bootstrap=bootstrap, seed=seed)
  grids = [loss_grid(results, *fields) for fields in HEATMAPS]
  return dict(
      params=dict(x=sizes, loss=lowest, **_law_fits(sizes, lowest, bootstrap, seed)),
      compute=dict(frontier=frontier, **_law_fits(results.compute[frontier],
                                                  results.loss[frontier], bootstrap, seed)),
      isoflop=isoflop, joint=_joint_fit(results, bootstrap, seed, starts),
      grids=[grid for grid in grids if grid is not None])


def _joint_fit(results: Results, bootstrap: int, seed: int, starts: int) -> dict:
  """L(N, D) over every point with a token count, or why it was skipped."""
  known = np.isfinite(results.tokens) & (results.tokens > 0)
  n, d, loss = results.n[known], results.tokens[known], results.loss[known]
  why = parametric.check_points(n, d, loss)
  if why:
    return dict(fit=None, skipped=why)
  try:
    return dict(fit=parametric.fit_joint(n, d, loss, bootstrap=bootstrap, seed=seed,
                                         starts=starts), skipped='')
  except ValueError as e:
    return dict(fit=None, skipped=str(e))


def predictions(analysis: dict, queries: Sequence[dict[str, float]], seed: int = 0) -> list[dict]:
  """For each query (N and D, N and C with D = C / 6N, or C alone: the compute-optimal N and D
  of the joint law), the loss predicted by L(N, D) and by the pure L(N), with 95% confidence and
  prediction intervals; a law that was not fitted is left out."""
  joint = analysis['joint']['fit']
  pure = analysis['params']['fits'].get('pure')
  rows = []
  for query in queries:
    n, d = query.get('N'), query.get('D')
    if d is None and query.get('C') is not None:
      if n is None:
        if joint is None:
          raise ResultsError('--predict C=... alone needs the joint fit L(N, D) (see the notes)')
        n, d = (float(v) for v in joint.optimal(query['C']))
      else:
        d = query['C'] / (6 * n)
    row = dict(N=n, D=d)
    if joint is not None and n is not None and d is not None:
      row['joint'] = joint.predict(n, d, seed)
    if pure is not None and n is not None:
      row['params'] = pure.predict(n, seed)
    rows.append(row)
  return rows


def parse_prediction(text: str) -> dict[str, float]:
  """'N=3.5e6,D=1e6' (or N and C, or C) as {'N': 3.5e6, 'D': 1e6}."""
  query = {}
  for part in text.split(','):
    key, _, value = part.partition('=')
    key = key.strip().upper()
    if key not in ('N', 'D', 'C') or not _float(value) > 0:
      raise ResultsError(f'--predict={text!r}: expected N=..., D=... (or N and C, or C alone) '
                         'with positive numbers, e.g. N=3.5e6,D=1e6')
    query[key] = _float(value)
  if 'N' not in query and 'C' not in query:
    raise ResultsError(f'--predict={text!r} names neither N nor C')
  return query


def _law_fits(x, loss, bootstrap: int, seed: int) -> dict[str, dict]:
  """The pure and the irreducible power law of loss against x, or why each was skipped."""
  fits, skipped = {}, {}
  distinct = len(np.unique(x))
  for name, needed in (('pure', MIN_SIZES), ('irreducible', MIN_SIZES_IRREDUCIBLE)):
    if distinct < needed:
      skipped[name] = f'{distinct} distinct value(s), {needed} needed'
      continue
    try:
      fits[name] = fit_power_law(x, loss, irreducible=name == 'irreducible',
                                 bootstrap=bootstrap, seed=seed)
    except ValueError as e:
      skipped[name] = str(e)
  return dict(fits=fits, skipped=skipped)


def loss_grid(results: Results, row_field: str, column_field: str) -> dict | None:
  """The lowest loss in each (row value, column value) cell when both fields are swept and vary
  over a crossed grid (each row and column with 2 cells or more: not a zipped pair of axes), and
  the swept fields that vary within a cell (those the minimum is taken over)."""
  if row_field not in results.swept or column_field not in results.swept:
    return None
  cells = collections.defaultdict(list)
  for values, loss in zip(results.values, results.loss):
    if row_field in values and column_field in values:
      cells[values[row_field], values[column_field]].append((loss, values))
  order = lambda v: (isinstance(v, str), v)
  rows = sorted({r for r, _ in cells}, key=order)
  columns = sorted({c for _, c in cells}, key=order)
  crossed = all(sum(r == row for r, _ in cells) >= 2 for row in rows) and all(
      sum(c == column for _, c in cells) >= 2 for column in columns)
  if len(rows) < 2 or len(columns) < 2 or not crossed:
    return None
  grid = np.full((len(rows), len(columns)), np.nan)
  for (r, c), entries in cells.items():
    grid[rows.index(r), columns.index(c)] = min(loss for loss, _ in entries)
  varying = [f for f in results.swept if f not in (row_field, column_field) and any(
      len({repr(values.get(f)) for _, values in entries}) > 1 for entries in cells.values())]
  return dict(rows=row_field, columns=column_field, row_values=rows, column_values=columns,
              loss=grid, minimum_over=varying,
              per_cell=max(len(entries) for entries in cells.values()))


def notes(results: Results, analysis: dict) -> list[str]:
  """What was left out or skipped, and why."""
  lines = list(results.notes)
  for key, what in (('params', 'L(N)'), ('compute', 'L(C)')):
    for name, reason in analysis[key]['skipped'].items():
      form = 'pure power law' if name == 'pure' else 'power law with irreducible loss'
      lines.append(f'{what}, {form}: skipped ({reason})')
  isoflop = analysis['isoflop']
  if isoflop is not None:
    for curve in isoflop.curves:
      if curve.unresolved:
        lines.append(f'IsoFLOP budget {curve.budget:.3g}: unresolved ({curve.unresolved})')
    if isoflop.n_opt is None:
      resolved = sum(curve.n_opt is not None for curve in isoflop.curves)
      lines.append(f'IsoFLOP exponents: skipped ({resolved} resolved budget(s), {MIN_SIZES} '
                   'needed)')
  for grid in analysis['grids']:
    if grid['per_cell'] > 1:
      over = ', '.join(grid['minimum_over']) or 'repeated points'
      lines.append(f'heatmap {grid["rows"]} x {grid["columns"]}: the lowest loss per cell '
                   f'(minimum over {over})')
  return lines


def _interval(value: float, interval: Interval, digits: int = 3) -> str:
  low, high = interval
  if not (math.isfinite(low) and math.isfinite(high)):
    return f'{value:.{digits}g} [no interval]'
  return f'{value:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]'


def _law_lines(fits: dict[str, PowerLaw], x: str, bootstrap: int) -> list[str]:
  """One bullet per fitted power law: formula, values and 95% intervals."""
  lines = []
  for fit in fits.values():
    values = [('E', fit.E, fit.E_ci)] if fit.irreducible else []
    values += [('A', fit.A, fit.A_ci), ('alpha', fit.alpha, fit.alpha_ci)]
    shown = ', '.join(f'{name} = {_interval(value, ci)}' for name, value, ci in values)
    form = 'with irreducible loss' if fit.irreducible else 'pure power law'
    caveat = f' **Not identified**: {fit.identified}.' if fit.identified else ''
    if not caveat and fit.floor_collapsed:
      caveat = ' E collapses to 0: the points show no irreducible loss (the pure law applies).'
    lines.append(f'- {form} `{fit.formula(x)}`: {shown} ({fit.points} points; '
                 f'{fit.resamples} of {bootstrap} resamples fitted).{caveat}')
  return lines or ['- no fit (see the notes)']


def _isoflop_lines(isoflop: IsoFlopFit | None, bootstrap: int) -> list[str]:
  """The IsoFLOP section of the report: a table of budgets, then the fitted exponents."""
  lines = ['## IsoFLOP profiles (Hoffmann et al. 2022, approach 2)', '']
  if isoflop is None:
    return lines + [f'Not an IsoFLOP sweep: no `{BUDGET}` column with values.', '']
  lines += ['Per budget C, a parabola of the loss in ln N; its minimum, when inside the sampled '
            'sizes, is N_opt(C). D_opt(C) = C / (FLOPs per token at N_opt), FLOPs per token '
            f'from {isoflop.tokens_from}.', '',
            '| budget C (FLOPs) | points | N_opt | D_opt (tokens) | |',
            '| --- | --- | --- | --- | --- |']
  for curve in isoflop.curves:
    found = curve.n_opt is not None
    lines.append(f'| {curve.budget:.3g} | {len(curve.n)} | '
                 f'{format_count(curve.n_opt) if found else "-"} | '
                 f'{format_count(curve.d_opt) if found else "-"} | '
                 f'{"" if found else "unresolved: " + curve.unresolved} |')
  lines.append('')
  for law, exponent in ((isoflop.n_opt, 'a'), (isoflop.d_opt, 'b')):
    if law is not None:
      coefficient = 'k' if exponent == 'a' else "k'"
      lines.append(f'- `{law.formula()}`: {exponent} = {_interval(law.a, law.a_ci)}, '
                   f'{coefficient} = {_interval(law.k, law.k_ci)} ({law.points} budgets; '
                   f'{law.resamples} of {bootstrap} resamples fitted)')
  if isoflop.n_opt is None:
    lines.append('- no fit of N_opt(C), D_opt(C) (see the notes)')
  lines.append(f'- Hoffmann et al. (2022): N_opt ~ C^{HOFFMANN["a"]:.2f}, '
               f'D_opt ~ C^{HOFFMANN["b"]:.2f}')
  return lines + ['']


def _joint_lines(joint: dict, bootstrap: int) -> list[str]:
  """The L(N, D) section of the report."""
  lines = ['## Loss against parameters and tokens, L(N, D) (Hoffmann et al. 2022, approach 3)', '']
  law = joint['fit']
  if law is None:
    return lines + [f'Not fitted: {joint["skipped"]}.', '']
  ci = law.intervals
  values = ', '.join(f'{name} = {_interval(getattr(law, name), ci[name])}'
                     for name in ('E', 'A', 'B', 'alpha', 'beta'))
  lines += [
      f'Fitted to all {law.points} points (N non-embedding parameters, D training tokens): '
      f'Huber loss (delta {parametric.HUBER_DELTA:g}) of ln L, L-BFGS from {law.starts} starts '
      f'of Hoffmann et al.\'s grid; {law.resamples} of {bootstrap} resamples fitted.', '',
      f'- `{law.formula()}`: {values}',
      f'- scatter about the fit: {law.residual_rms:.3g} rms in ln L '
      f'({100 * (math.exp(law.residual_rms) - 1):.2g}% of the loss)',
      f'- compute-optimal allocation at C = 6ND: N_opt ~ C^a with a = beta / (alpha + beta) = '
      f'{_interval(law.a, ci["a"])}; D_opt ~ C^b with b = {_interval(law.b, ci["b"])}; '
      f'N_opt = G (C/6)^a, D_opt = (C/6)^b / G with G = {_interval(law.G, ci["G"])}',
      '- Hoffmann et al. (2022): ' + _law_reference(CHINCHILLA) + '; the replication '
      '(Besiroglu et al. 2024): ' + _law_reference(REPLICATION)]
  if law.E < 1e-3 or not ci['E'][0] >= 0.1 * law.E:
    lines.append('- E (the irreducible loss) is not identified: it falls to ~0 within the '
                 'interval, so the data do not show where the loss levels off')
  return lines + ['']


def _law_reference(values: dict) -> str:
  return ', '.join(f'{name} = {values[name]:g}' for name in ('E', 'A', 'B', 'alpha', 'beta'))


def prediction_lines(rows: list[dict]) -> list[str]:
  """A table of predictions: N, D, then each law's loss with its 95% intervals."""
  lines = ['## Predictions', '', 'Each with its 95% confidence interval (where the fitted law '
           'can be) and 95% prediction interval (where a run\'s loss can be: also the scatter '
           'of the points about the fit).', '',
           '| N | D | law | loss | confidence | prediction |',
           '| --- | --- | --- | --- | --- | --- |']
  for row in rows:
    n = format_count(row['N']) if row['N'] is not None else '-'
    d = format_count(row['D']) if row['D'] is not None else '-'
    found = [(name, row[key]) for key, name in (('joint', 'L(N, D)'), ('params', 'L(N)'))
             if key in row]
    for name, value in found:
      (low, high), (wide_low, wide_high) = value.confidence, value.prediction
      lines.append(f'| {n} | {d} | {name} | {value.loss:.4g} | [{low:.4g}, {high:.4g}] | '
                   f'[{wide_low:.4g}, {wide_high:.4g}] |')
    if not found:
      lines.append(f'| {n} | {d} | no fitted law | - | - | - |')
  return lines + ['']


def report(results: Results, analysis: dict, plots: list[tuple[str, str]], bootstrap: int,
           predicted: list[dict] = ()) -> str:
  """report.md: the points, each fit with its 95% intervals and references, plots, notes."""
  statuses = ', '.join(f'{count} {status}' for status, count in sorted(results.statuses.items()))
  metric = f'`{results.metric}`' + (f' (`{FALLBACK_METRIC}` where a point has none)'
                                    if results.metric == DEFAULT_METRIC else '')
  frontier = int(analysis['compute']['frontier'].sum())
  lines = [
      f'# Scaling laws of {files.absolute(results.path).parent.name}', '',
      f'- results: `{results.path}`', f'- loss: {metric}',
      f'- points: {sum(results.statuses.values())} ({statuses or "none"}); '
      f'{len(results.loss)} finished with a loss are used',
      '- intervals: 95% bootstrap percentile intervals (points resampled with replacement)', '',
      '## Loss against non-embedding parameters, L(N)', '',
      f'Fitted to the lowest loss at each of the {len(analysis["params"]["x"])} distinct sizes N '
      '(non-embedding parameters), the best over the other swept fields.', '',
      *_law_lines(analysis['params']['fits'], 'N', bootstrap),
      f'- Kaplan et al. (2020): alpha_N ~ {KAPLAN["alpha_N"]:.3f} over non-embedding '
      'parameters', '',
      '## Loss against compute, L(C)', '',
      f'Fitted on the compute-efficient frontier: {frontier} of {len(results.loss)} points, those '
      'not dominated by a point with less (or equal) compute and a lower loss. C is a run\'s '
      'training FLOPs (`total_flops`).', '',
      *_law_lines(analysis['compute']['fits'], 'C', bootstrap),
      f'- Kaplan et al. (2020): alpha_C ~ {KAPLAN["alpha_C"]:.3f} (compute-efficient frontier)', '',
      *_isoflop_lines(analysis['isoflop'], bootstrap),
      *_joint_lines(analysis['joint'], bootstrap),
      *(prediction_lines(predicted) if predicted else []),
      '## Plots', '', *([f'- `{name}`: {what}' for name, what in plots] or ['- none']), '',
      '## Notes', '', *([f'- {line}' for line in notes(results, analysis)] or ['- none'])]
  return '\n'.join(lines) + '\n'


def fits_json(results: Results, analysis: dict, plots: list[tuple[str, str]],
              predicted: Sequence[dict] = ()) -> dict:
  """fits.json: the numbers of the report."""
  def laws(section, x):
    return dict({name: dict(_jsonable(fit), formula=fit.formula(x))
                 for name, fit in section['fits'].items()}, skipped=section['skipped'])

  isoflop = analysis['isoflop']
  if isoflop is not None:
    isoflop = dict(_jsonable(isoflop), **{f'{law.name}_formula': law.formula() for law in
                                          (isoflop.n_opt, isoflop.d_opt) if law is not None})
  return _jsonable(dict(
      results=results.path, metric=results.metric,
      points=dict(results.statuses, used=len(results.loss)),
      loss_vs_params=dict(n=analysis['params']['x'], loss=analysis['params']['loss'],
                          **laws(analysis['params'], 'N')),
      loss_vs_compute=dict(frontier_points=int(analysis['compute']['frontier'].sum()),
                           **laws(analysis['compute'], 'C')),
      isoflop=isoflop, loss_vs_params_and_tokens=_joint_json(analysis['joint']),
      predictions=[_jsonable(row) for row in predicted], heatmaps=analysis['grids'],
      references=dict(kaplan_2020=KAPLAN, hoffmann_2022=dict(HOFFMANN, **CHINCHILLA),
                      besiroglu_2024=REPLICATION),
      plots=[name for name, _ in plots], notes=notes(results, analysis)))


def _joint_json(joint: dict) -> dict:
  law = joint['fit']
  if law is None:
    return dict(skipped=joint['skipped'])
  return dict(_jsonable(law), a=law.a, b=law.b, G=law.G, formula=law.formula(),
              huber_delta=parametric.HUBER_DELTA)


def _jsonable(value):
  """Dataclasses, numpy values and tuples as JSON values; nan and inf as null."""
  if dataclasses.is_dataclass(value):  # bootstrap samples and residuals (repr=False) left out
    return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)
            if f.repr}
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  return value


def _law_curves(fits: dict[str, PowerLaw], x: str) -> list[tuple[str, Callable]]:
  """(legend label, law) of each fit; the label says when a law is not identified or its
  irreducible loss collapses to 0 (the curve then lies on the pure law's)."""
  curves = []
  for fit in fits.values():
    label = f'{fit.formula(x)}, alpha 95% CI [{fit.alpha_ci[0]:.3g}, {fit.alpha_ci[1]:.3g}]'
    if fit.identified:
      label += f'\nnot identified: {fit.identified}'
    elif fit.floor_collapsed:
      label += '\nE collapses to 0: on the pure law'
    curves.append((label, fit))
  return curves


def write_plots(results: Results, analysis: dict, out: str,
                predicted: Sequence[dict] = ()) -> list[tuple[str, str]]:
  """The plots the data allow, as PNGs in `out`; returns (file name, description) pairs."""
  plots = []
  if not len(results.loss):
    return plots
  params, compute, isoflop = analysis['params'], analysis['compute'], analysis['isoflop']
  frontier = compute['frontier']
  figures.plot_power_law(
      params['x'], params['loss'], _law_curves(params['fits'], 'N'),
      _file(out, 'loss_vs_params.png'), xlabel='non-embedding parameters N',
      ylabel=results.metric, title='Loss against non-embedding parameters (lowest per size)',
      others=_not_lowest(results))
  plots.append(('loss_vs_params.png', 'loss against non-embedding parameters, with L(N)'))
  figures.plot_power_law(
      results.compute[frontier], results.loss[frontier], _law_curves(compute['fits'], 'C'),
      _file(out, 'loss_vs_compute.png'), xlabel='compute C (training FLOPs)',
      ylabel=results.metric, title='Loss against compute (fit on the compute-efficient frontier)',
      others=(results.compute[~frontier], results.loss[~frontier]))
  plots.append(('loss_vs_compute.png', 'loss against compute, with L(C) on the frontier'))
  if isoflop is not None:
    plots += _isoflop_plots(isoflop, results.metric, out)
  law = analysis['joint']['fit']
  if law is not None:
    known = np.isfinite(results.tokens)
    marked = [row['joint'] for row in predicted if 'joint' in row]
    figures.plot_loss_surface(law, results.n[known], results.tokens[known],
                              results.loss[known], _file(out, 'loss_surface.png'),
                              metric=results.metric, predicted=marked)
    plots.append(('loss_surface.png', 'L(N, D): iso-loss contours with the points, and '
                  'predicted against observed loss'))
  plots += _study_plots(results, out)
  for grid in analysis['grids']:
    plots.append(_heatmap(grid, results.metric, out))
  return plots


def _not_lowest(results: Results) -> tuple[np.ndarray, np.ndarray]:
  """(N, loss) of the points that are not the lowest loss of their size (drawn in grey)."""
  lowest = {n: results.loss[results.n == n].min() for n in np.unique(results.n)}
  other = np.array([loss > lowest[n] for n, loss in zip(results.n, results.loss)], bool)
  return results.n[other], results.loss[other]


def _study_plots(results: Results, out: str) -> list[tuple[str, str]]:
  """A learning-rate sweep's loss against the rate per width (and parametrization); a depth
  against width sweep's loss against the aspect ratio d_model / num_layers."""
  plots = []
  swept = set(results.swept)
  if {'opt.lr', 'model.d_model'} <= swept:
    figures.plot_lr_transfer(results.values, results.loss,
                             _file(out, 'lr_transfer.png'), metric=results.metric)
    plots.append(('lr_transfer.png', 'loss against the learning rate, one curve per width '
                  '(the mean over seeds), one panel per parametrization'))
  elif {'model.num_layers', 'model.d_model'} <= swept and results.n.max() < 2 * results.n.min():
    figures.plot_aspect_ratio(results.values, results.loss, results.n,
                              _file(out, 'aspect_ratio.png'), metric=results.metric)
    plots.append(('aspect_ratio.png', 'loss against the aspect ratio d_model / num_layers'))
  return plots


def _isoflop_plots(isoflop: IsoFlopFit, metric: str, out: str) -> list[tuple[str, str]]:
  figures.plot_isoflop_curves(isoflop.curves, _file(out, 'isoflop_curves.png'),
                          ylabel=metric, title='IsoFLOP profiles: loss against N per budget')
  plots = [('isoflop_curves.png', 'IsoFLOP profiles with their parabolas and minima')]
  found = [curve for curve in isoflop.curves if curve.n_opt is not None]
  if found:
    laws = [None if law is None else (f'{law.formula()}, exponent 95% CI '
                                      f'[{law.a_ci[0]:.3g}, {law.a_ci[1]:.3g}]', law)
            for law in (isoflop.n_opt, isoflop.d_opt)]
    figures.plot_compute_optimal([c.budget for c in found], [c.n_opt for c in found],
                             [c.d_opt for c in found], laws,
                             _file(out, 'isoflop_optimal.png'),
                             title='Compute-optimal allocation (IsoFLOP minima)')
    plots.append(('isoflop_optimal.png', 'N_opt(C) and D_opt(C) with their power laws'))
  return plots


def _heatmap(grid: dict, metric: str, out: str) -> tuple[str, str]:
  short = lambda field: field.split('.')[-1]
  name = f'heatmap_{short(grid["rows"])}_{short(grid["columns"])}.png'
  title = f'{metric} over {short(grid["rows"])} x {short(grid["columns"])}'
  if grid['per_cell'] > 1:
    over = ', '.join(short(f) for f in grid['minimum_over']) or 'repeated points'
    title += f'\n(lowest per cell, minimum over {over})'
  figures.plot_loss_heatmap(grid['loss'], grid['row_values'], grid['column_values'],
                        _file(out, name), row_label=grid['rows'],
                        column_label=grid['columns'], title=title, colorbar_label=metric)
  return name, f'{metric} over {grid["rows"]} x {grid["columns"]}'


def summary(results: Results, analysis: dict) -> list[str]:
  """The fitted exponents with their intervals, one line each, for the terminal."""
  counts = ', '.join(f'{count} {status}' for status, count in sorted(results.statuses.items()))
  lines = [f'{len(results.loss)} points used ({counts or "no points"}), loss {results.metric}']
  for key, name, reference in (('params', 'alpha_N', KAPLAN['alpha_N']),
                               ('compute', 'alpha_C', KAPLAN['alpha_C'])):
    fit = analysis[key]['fits'].get('pure')
    if fit is not None and fit.identified:
      lines.append(f'{name}: not identified ({fit.identified}; pure power law, {fit.points} '
                   'points)')
    elif fit is not None:
      lines.append(f'{name} = {_interval(fit.alpha, fit.alpha_ci)} (pure power law, '
                   f'{fit.points} points; Kaplan et al. 2020: {reference:.3f})')
    else:
      lines.append(f'{name}: skipped ({analysis[key]["skipped"]["pure"]})')
  isoflop = analysis['isoflop']
  if isoflop is not None and isoflop.n_opt is not None:
    lines.append(f'IsoFLOP: N_opt ~ C^{_interval(isoflop.n_opt.a, isoflop.n_opt.a_ci)}, '
                 f'D_opt ~ C^{_interval(isoflop.d_opt.a, isoflop.d_opt.a_ci)} '
                 f'({isoflop.n_opt.points} budgets; Hoffmann et al. 2022: 0.50, 0.50)')
  elif isoflop is not None:
    lines.append('IsoFLOP: exponents skipped (see the report\'s notes)')
  law = analysis['joint']['fit']
  if law is not None:
    lines.append(f'L(N, D) = E + A/N^alpha + B/D^beta: E = {_interval(law.E, law.intervals["E"])}'
                 f', alpha = {_interval(law.alpha, law.intervals["alpha"])}, beta = '
                 f'{_interval(law.beta, law.intervals["beta"])}; N_opt ~ C^'
                 f'{_interval(law.a, law.intervals["a"])} ({law.points} points)')
  else:
    lines.append(f'L(N, D): skipped ({analysis["joint"]["skipped"]})')
  return lines


def analyze_sweep(directory: str, metric: str = DEFAULT_METRIC, bootstrap: int = 1000,
                  seed: int = 0) -> tuple[str, list[str]]:
  """Fits and plots DIR/results.csv into DIR/scaling/; returns the report's path and a summary."""
  return write_analysis(read_results(directory, metric), _file(directory, 'scaling'),
                        bootstrap, seed)


def write_analysis(results: Results, out: str, bootstrap: int = 1000, seed: int = 0,
                   starts: int = 100, queries: Sequence[dict] = ()) -> tuple[str, list[str]]:
  """Fits, plots and predictions of `results` written to `out` (report.md, fits.json, PNGs);
  returns the report's path and a summary for the terminal."""
  analysis = analyze(results, bootstrap, seed, starts)
  predicted = predictions(analysis, queries, seed)
  files.makedirs(out)
  plots = write_plots(results, analysis, out, predicted)
  files.atomic_write(_file(out, 'fits.json'),
                     json.dumps(fits_json(results, analysis, plots, predicted), indent=2))
  path = _file(out, 'report.md')
  files.atomic_write(path, report(results, analysis, plots, bootstrap, predicted))
  return path, summary(results, analysis) + prediction_summary(predicted)


def prediction_summary(rows: Sequence[dict]) -> list[str]:
  """One line per prediction and law, for the terminal."""
  lines = []
  for row in rows:
    where = f'N = {format_count(row["N"])}' + (f', D = {format_count(row["D"])}'
                                               if row['D'] is not None else '')
    for key, name in (('joint', 'L(N, D)'), ('params', 'L(N)')):
      if key in row:
        value = row[key]
        low, high = value.prediction
        lines.append(f'predicted at {where}: {name} = {value.loss:.4g}, 95% prediction interval '
                     f'[{low:.4g}, {high:.4g}]')
  return lines
