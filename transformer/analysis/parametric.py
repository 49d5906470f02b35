"""The joint scaling law L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022,
approach 3), fitted the way its authors and its replication (Besiroglu et al. 2024, "Chinchilla
scaling: a replication attempt") fit it, with bootstrap intervals and predictions.

N is the number of (non-embedding) parameters, D the number of training tokens, L the loss.
The fit minimises the Huber loss (delta 1e-3) of the log-loss residuals,

    sum_i Huber(LSE(a - alpha ln N_i, b - beta ln D_i, e) - ln L_i),   A = e^a, B = e^b, E = e^e,

with L-BFGS from starts on Hoffmann et al.'s grid (alpha, beta in {0, 0.5, ..., 2},
e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}: 4500 starts) and keeps the lowest. By default
the 100 starts of the grid with the lowest objective are run (on the replication's data 37% of
all starts, and every one of the lowest 100 tried, reach the same minimum; a run takes ~50 ms);
`starts=0` runs all 4500, as the paper does. The 95%
intervals are percentile intervals over fits to resampled points (with replacement), each
started from the full fit. The compute-optimal allocation with C = 6 N D (minimising L at fixed
C) is N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b with a = beta / (alpha + beta),
b = alpha / (alpha + beta) and G = (alpha A / (beta B))^(1 / (alpha + beta)).

A prediction L(N, D) comes with two intervals from the same resamples: a confidence interval
(where the fitted surface can be) and a prediction interval (where a new run's loss can be:
each resample's prediction times the exponential of a residual of the fit drawn at random).
"""

import dataclasses
import itertools
import math

import numpy as np

HUBER_DELTA = 1e-3
# Hoffmann et al.'s grid of starts (their appendix D.2), as the replication reconstructs it.
GRID = dict(a=np.arange(0, 30, 5.0), b=np.arange(0, 30, 5.0), e=np.arange(-1, 1.5, 0.5),
            alpha=np.arange(0, 2.5, 0.5), beta=np.arange(0, 2.5, 0.5))
MIN_POINTS = 8  # five parameters, so some points to spare
MIN_DISTINCT = 3  # distinct values of N and of D
Interval = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class Prediction:
  """A predicted loss with its 95% confidence and prediction intervals."""
  n: float
  d: float  # nan for a law of N alone
  loss: float
  confidence: Interval  # the fitted surface at (N, D)
  prediction: Interval  # a new run at (N, D): also the scatter of the points about the fit


@dataclasses.dataclass(frozen=True)
class JointLaw:
  """L(N, D) = E + A N^-alpha + B D^-beta with 95% bootstrap intervals (low, high)."""
  E: float
  A: float
  B: float
  alpha: float
  beta: float
  intervals: dict[str, Interval]  # E, A, B, alpha, beta, a, b, G
  points: int  # points fitted
  starts: int  # L-BFGS runs from the grid
  resamples: int  # bootstrap resamples that fitted
  objective: float  # the Huber objective at the fit
  residual_rms: float  # root mean square of ln L - ln L_fit
  samples: np.ndarray = dataclasses.field(repr=False, compare=False)  # (resamples, 5) E A B al be
  residuals: np.ndarray = dataclasses.field(repr=False, compare=False)  # ln L - ln L_fit

  def __call__(self, n, d):
    return _surface(np.array([self.E, self.A, self.B, self.alpha, self.beta]), n, d)

  @property
  def a(self) -> float:
    """N_opt ~ C^a."""
    return _allocation(self.A, self.B, self.alpha, self.beta)[0]

  @property
  def b(self) -> float:
    """D_opt ~ C^b."""
    return _allocation(self.A, self.B, self.alpha, self.beta)[1]

  @property
  def G(self) -> float:
    return _allocation(self.A, self.B, self.alpha, self.beta)[2]

  def optimal(self, compute):
    """(N_opt, D_opt) minimising L at C = 6 N D."""
    return optimal_allocation(self.A, self.B, self.alpha, self.beta, compute)

  def formula(self) -> str:
    return (f'L = {self.E:.3g} + {self.A:.3g} / N^{self.alpha:.3f} + '
            f'{self.B:.3g} / D^{self.beta:.3f}')

  def predict(self, n: float, d: float, seed: int = 0) -> Prediction:
    """The loss at (N, D) with its 95% confidence and prediction intervals."""
    n, d = float(n), float(d)
    loss = float(self(n, d))
    if not len(self.samples):
      return Prediction(n, d, loss, (math.nan, math.nan), (math.nan, math.nan))
    surface = _surface(self.samples.T, n, d)  # every resample's fit at (N, D)
    return Prediction(n, d, loss, *prediction_intervals(surface, self.residuals, seed))


def prediction_intervals(fitted, residuals, seed: int = 0) -> tuple[Interval, Interval]:
  """95% intervals from a law's bootstrap fits evaluated at one point: the confidence interval
  (the fits themselves) and the prediction interval (each fit times the exponential of a
  residual ln L - ln L_fit of the original fit, drawn at random)."""
  fitted = np.asarray(fitted, float)
  scatter = fitted * np.exp(np.random.default_rng(seed).choice(residuals, size=len(fitted)))
  interval = lambda values: tuple(float(v) for v in np.percentile(values, [2.5, 97.5]))
  return interval(fitted), interval(scatter)


def _surface(params, n, d):
  E, A, B, alpha, beta = params
  return E + A * np.asarray(n, float) ** -alpha + B * np.asarray(d, float) ** -beta


def _allocation(A, B, alpha, beta):
  """(a, b, G) of N_opt = G (C/6)^a, D_opt = (C/6)^b / G."""
  a, b = beta / (alpha + beta), alpha / (alpha + beta)
  return a, b, (alpha * A / (beta * B)) ** (1 / (alpha + beta))


def optimal_allocation(A, B, alpha, beta, compute):
  """(N_opt, D_opt) minimising E + A N^-alpha + B D^-beta subject to 6 N D = C."""
  a, b, G = _allocation(A, B, alpha, beta)
  scaled = np.asarray(compute, float) / 6
  return G * scaled ** a, scaled ** b / G


# ---------------------------------------------------------------------------------------------
# The fit

def objective(theta, log_n, log_d, log_loss, delta: float = HUBER_DELTA):
  """The Huber objective (divided by delta, which leaves its minimum in place and keeps
  L-BFGS's tolerances meaningful) and its gradient, at theta = (a, b, e, alpha, beta)."""
  a, b, e, alpha, beta = theta
  terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
  top = terms.max(axis=0)
  weights = np.exp(terms - top)
  total = weights.sum(axis=0)
  residual = top + np.log(total) - log_loss
  weights /= total  # d prediction / d term
  value = _huber(residual, delta).sum()
  slope = np.clip(residual, -delta, delta)  # d Huber / d residual
  grad = np.array([(slope * weights[0]).sum(), (slope * weights[1]).sum(),
                   (slope * weights[2]).sum(), -(slope * weights[0] * log_n).sum(),
                   -(slope * weights[1] * log_d).sum()])
  return value / delta, grad / delta


def _huber(residual, delta: float = HUBER_DELTA):
  """Huber's loss: r^2 / 2 within delta, linear beyond."""
  size = np.abs(residual)
  return np.where(size <= delta, 0.5 * residual ** 2, delta * (size - 0.5 * delta))


def _minimise(theta0, args):
  from scipy import optimize
  result = optimize.minimize(objective, np.asarray(theta0, float), args=args, jac=True,
                             method='L-BFGS-B',
                             options=dict(maxiter=2000, ftol=1e-13, gtol=1e-10))
  if not np.all(np.isfinite(result.x)) or not np.isfinite(result.fun):
    return None
  return result


def _best_fit(starts, args):
  """The lowest objective over L-BFGS runs from each start; None if none converged."""
  best = None
  with np.errstate(over='ignore', invalid='ignore', divide='ignore'):
    for theta0 in starts:
      result = _minimise(theta0, args)
      if result is not None and (best is None or result.fun < best.fun):
        best = result
  return best


def grid_starts(args, count: int = 100, grid: dict | None = None) -> np.ndarray:
  """The `count` starts (a, b, e, alpha, beta) of a grid (Hoffmann et al.'s by default) with
  the lowest objective on the points `args` (all of them if count is 0), lowest first."""
  grid = GRID if grid is None else grid
  starts = np.array(list(itertools.product(*(grid[k] for k in ('a', 'b', 'e', 'alpha',
                                                                 'beta')))), float)
  if not count or count >= len(starts):
    return starts
  log_n, log_d, log_loss = args
  a, b, e, alpha, beta = (column[:, None] for column in starts.T)
  with np.errstate(over='ignore', invalid='ignore'):
    predicted = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)
    huber = _huber(predicted - log_loss).sum(axis=1)  # the objective at every start at once
  return starts[np.argsort(huber, kind='stable')[:count]]


def check_points(n, d, loss) -> str:
  """Why the points cannot identify the joint law ('' if they can)."""
  if len(loss) < MIN_POINTS:
    return f'{len(loss)} point(s), {MIN_POINTS} needed for five parameters'
  for name, values in (('N', n), ('D', d)):
    distinct = len(np.unique(values))
    if distinct < MIN_DISTINCT:
      return f'{distinct} distinct value(s) of {name}, {MIN_DISTINCT} needed'
  return ''


def fit_joint(n, d, loss, *, bootstrap: int = 1000, seed: int = 0, starts: int = 100,
              grid: dict | None = None) -> JointLaw:
  """Fits L(N, D) as the module docstring says; raises ValueError when it cannot."""
  n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
  if not (n.shape == d.shape == loss.shape and n.ndim == 1):
    raise ValueError('N, D and the loss must be 1-D arrays of the same length')
  if not all(np.all(np.isfinite(v) & (v > 0)) for v in (n, d, loss)):
    raise ValueError('the joint law needs positive, finite N, D and loss')
  why = check_points(n, d, loss)
  if why:
    raise ValueError(why)
  args = (np.log(n), np.log(d), np.log(loss))
  starts = grid_starts(args, starts, grid)
  best = _best_fit(starts, args)
  if best is None:
    raise ValueError('the joint fit did not converge from any start')
  theta = best.x
  residuals = args[2] - np.log(_surface(_untransform(theta), n, d))
  rng = np.random.default_rng(seed)
  samples = []
  with np.errstate(over='ignore', invalid='ignore', divide='ignore'):
    for _ in range(bootstrap):
      chosen = rng.choice(len(loss), size=len(loss))
      if check_points(n[chosen], d[chosen], loss[chosen]):
        continue
      result = _minimise(theta, tuple(arg[chosen] for arg in args))
      if result is not None:
        samples.append(_untransform(result.x))
  samples = np.array(samples).reshape(-1, 5)
  return JointLaw(*_untransform(theta), intervals=_intervals(samples), points=len(loss),
                  starts=len(starts), resamples=len(samples), objective=float(best.fun),
                  residual_rms=float(np.sqrt(np.mean(residuals ** 2))), samples=samples,
                  residuals=residuals)


def _untransform(theta) -> np.ndarray:
  """(a, b, e, alpha, beta) -> (E, A, B, alpha, beta)."""
  a, b, e, alpha, beta = theta
  return np.array([np.exp(e), np.exp(a), np.exp(b), alpha, beta])


def _intervals(samples: np.ndarray) -> dict[str, Interval]:
  """95% percentile intervals of E, A, B, alpha, beta and of the allocation's a, b and G."""
  names = ('E', 'A', 'B', 'alpha', 'beta', 'a', 'b', 'G')
  if not len(samples):
    return {name: (math.nan, math.nan) for name in names}
  E, A, B, alpha, beta = samples.T
  with np.errstate(over='ignore', invalid='ignore', divide='ignore'):
    a, b, G = _allocation(A, B, alpha, beta)
  columns = np.stack([E, A, B, alpha, beta, a, b, G], axis=1)
  low, high = np.nanpercentile(columns, [2.5, 97.5], axis=0)
  return {name: (float(lo), float(hi)) for name, lo, hi in zip(names, low, high)}
