"""Sweeps: a grid of config overrides beside a base config, run point by point, collected
(`python -m transformer.sweep` runs one).

A sweep file is an ordinary config file (its `get_config(arg)` is the base experiment every
point starts from) plus `get_sweep(arg)`, returning a `Sweep`: the grid (products, zips and
chains of field values) and derived fields (functions of the point's config, applied in order
after its overrides: d_ff from d_model, heads from head size, steps from a token budget).

Each point is run as `python -m transformer.train --config=FILE[:ARG] --workdir=DIR/<id>
--config.a.b=V ...` (the command is kept in DIR/<id>/command.txt), so a point is an ordinary
run: a relaunch skips finished points and resumes interrupted ones from their checkpoints.
The id is derived from the point's swept values alone: readable, and the same on every launch.
DIR/results.csv (one row per point) is rewritten atomically whenever a point ends.
"""

import ast
import concurrent.futures
import contextlib
import copy
import csv
import dataclasses
import functools
import hashlib
import importlib.util
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

from transformer import files
from transformer.config import Experiment, ModelConfig
from transformer.errors import INTERRUPTED_EXIT_CODE, ConfigError, last_line
from transformer.model import counting
from transformer.training import loop, runs

Grid = list[dict[str, Any]]  # one dict of {dotted field: value} per point


def axis(field: str, values: Sequence[Any]) -> Grid:
  """One field swept over `values`: [{field: v} for v in values]."""
  return [{field: v} for v in values]


def product(*grids: Grid) -> Grid:
  """Every combination of the grids' points (the first grid varies slowest)."""
  points = []
  for combo in itertools.product(*grids):
    merged = {}
    for point in combo:
      merged.update(point)
    points.append(merged)
  return points


def zipit(*grids: Grid) -> Grid:
  """The grids' points taken together, one from each (the grids must have equal lengths)."""
  lengths = {len(g) for g in grids}
  if len(lengths) > 1:
    raise ValueError(f'sweep.zipit: grids of different lengths {sorted(lengths)}')
  return [dict(itertools.chain.from_iterable(p.items() for p in combo))
          for combo in zip(*grids)]


def chain(*grids: Grid) -> Grid:
  """The grids' points one after the other (e.g. two sub-grids of different shapes)."""
  return [dict(p) for g in grids for p in g]


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A grid of overrides and the fields derived from each point's config, in order."""
  grid: Grid
  derived: dict[str, Callable[[Any], Any]] = dataclasses.field(default_factory=dict)


# Helpers for derived fields: each takes the point's config (a ConfigDict, overrides applied).

def counts(config) -> dict[str, int]:
  """Parameters (total, embedding, non-embedding) and training FLOPs per token of a config."""
  return counting.summarize(ModelConfig.from_config(config), config.data.seq_len)


def steps_for_tokens(config, tokens: float) -> int:
  """Optimizer steps that train on about `tokens` tokens (at least 1)."""
  return max(1, round(tokens / (config.data.batch_size * config.data.seq_len)))


def steps_for_flops(config, flops: float) -> int:
  """Optimizer steps that spend about `flops` training FLOPs (6N + attention per token)."""
  return steps_for_tokens(config, flops / counts(config)['flops_per_token'])


def _format_value(value: Any) -> str:
  if isinstance(value, float):
    return f'{value:g}'
  return str(value)


def point_id(overrides: dict[str, Any]) -> str:
  """A readable, deterministic directory name: the swept values and a short hash of them."""
  canonical = json.dumps(sorted(overrides.items()), default=str)
  digest = hashlib.sha1(canonical.encode()).hexdigest()[:6]
  words = [f'{field.split(".")[-1]}-{_format_value(v)}' for field, v in overrides.items()]
  readable = ''.join(c if c.isalnum() or c in '-.' else '_' for c in '_'.join(words))[:80]
  return f'{readable}_{digest}' if readable else digest


# --- Expanding a sweep file into points --------------------------------------------------------

@dataclasses.dataclass
class Point:
  id: str
  overrides: dict[str, Any]  # the swept values
  derived: dict[str, Any]  # the derived fields' values
  config: Any  # the point's whole config (base, command-line overrides, overrides, derived)
  experiment: Experiment  # ... validated

  @property
  def values(self) -> dict[str, Any]:
    return {**self.overrides, **self.derived}

  @functools.cached_property
  def info(self) -> dict[str, Any]:
    """Parameters, FLOPs per token, tokens and total FLOPs (from shapes alone), as `describe`
    reports them."""
    return counting.experiment_counts(self.experiment)


def load_sweep(path: str, arg: str | None) -> Sweep:
  """`get_sweep(arg)` of a sweep file."""
  spec = importlib.util.spec_from_file_location('sweep_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise ConfigError(f'--config={path}: a sweep file needs get_sweep() beside get_config(); '
                      'see configs/sweeps/')
  try:
    sweep = module.get_sweep(*([arg] if arg else []))
  except ConfigError:
    raise
  except Exception as e:  # a bad grid: zipit of unequal lengths, a typo in the file
    raise ConfigError(f'--config={path}: get_sweep(): {type(e).__name__}: {e}') from None
  if not isinstance(sweep, Sweep):
    raise ConfigError(f'--config={path}: get_sweep() returned {type(sweep).__name__}, '
                      'not a transformer.analysis.sweeps.Sweep')
  return sweep


def _set(config, field: str, value: Any, where: str) -> Any:
  """config.<field> = value, for a dotted field that must already exist; returns what was
  stored (an int given for a float field becomes a float)."""
  *sections, name = field.split('.')
  node = config
  for i, section in enumerate(sections):
    if not hasattr(node, 'keys') or section not in node:
      raise ConfigError(f'{where}: {field} is not a field of the config '
                        f'({".".join(sections[:i + 1])} does not exist)')
    node = node[section]
  if not hasattr(node, 'keys') or name not in node:
    known = ', '.join(sorted(node.keys())) if hasattr(node, 'keys') else ''
    raise ConfigError(f'{where}: {field} is not a field of the config'
                      + (f'; {".".join(sections)} has {known}' if known else ''))
  if value is not None and not isinstance(value, (bool, int, float, str)):
    raise ConfigError(f'{where}: {field}={value!r} is not a number, string, bool or None')
  if value is None and node[name] is not None:
    raise ConfigError(f'{where}: {field}=None: a field can be swept to None only where the base '
                      'config has None (points run through command-line overrides)')
  if isinstance(node[name], float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  try:
    node[name] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f'{where}: {field}={value!r}: {e}') from None
  return node[name]


def _get(config, field: str) -> Any:
  for name in field.split('.'):
    config = config[name]
  return config


def expand(config, sweep: Sweep, fixed: Sequence[str] = ()) -> list[Point]:
  """The points of `sweep` over the base `config`, each validated as `train` would validate it.
  `fixed`: fields the command line set (already in `config`): they win over a derived field
  (its rule is not applied) and may not be swept.

  Raises ConfigError naming the point and the field: an empty grid, a field that does not
  exist, an invalid point config, two points with the same values, a swept field set on the
  command line."""
  if not sweep.grid:
    raise ConfigError('the sweep is empty: get_sweep() returned a grid with no points')
  swept = sorted({field for overrides in sweep.grid for field in overrides} & set(fixed))
  if swept:
    raise ConfigError(f'--config.{swept[0]} is swept by this sweep: every point sets it, so a '
                      'command-line value would be replaced; leave it out (or change the grid)')
  points, seen = [], {}
  for n, overrides in enumerate(sweep.grid):
    pid = point_id(overrides)
    where = f'point {n} ({pid})'
    if pid in seen:
      raise ConfigError(f'{where}: the same values as point {seen[pid]}: {overrides}')
    seen[pid] = n
    point_config = copy.deepcopy(config)
    for field, value in overrides.items():
      _set(point_config, field, value, where)
    derived = {}
    for field, fn in sweep.derived.items():
      if field in fixed:  # the command line's value, shown as the value used
        derived[field] = _get(point_config, field)
        continue
      try:
        value = fn(point_config)
      except Exception as e:  # noqa: BLE001 - user code: name the point and the field
        raise ConfigError(f'{where}: deriving {field}: {type(e).__name__}: {e}') from None
      derived[field] = _set(point_config, field, value, where)
    try:
      experiment = loop.validate(point_config)
    except ConfigError as e:
      raise ConfigError(f'{where}: {e}') from None
    points.append(Point(pid, dict(overrides), derived, point_config, experiment))
  return points


# --- Running points ----------------------------------------------------------------------------

RESULT_FIELDS = ('params', 'params_embedding', 'params_non_embedding', 'flops_per_token',
                 'tokens', 'total_flops', 'steps', 'final_train_loss', 'final_eval_loss',
                 'wall_seconds', 'error')


def _flag_value(value: Any) -> str:
  return repr(value) if isinstance(value, float) else str(value)


def train_command(config_arg: str, workdir: str, values: dict[str, Any]) -> list[str]:
  """The `python -m transformer.train` command of one point."""
  return [sys.executable, '-m', 'transformer.train', f'--config={config_arg}',
          f'--workdir={workdir}', *(f'--config.{k}={_flag_value(v)}' for k, v in values.items()
            if v is not None)]


# Exit codes of a point that was stopped, not failed: it saved a checkpoint and exited 143, or
# SIGTERM reached it before its handler was installed (while it started).
STOPPED = (INTERRUPTED_EXIT_CODE, -signal.SIGTERM)


def run_point(command: list[str], point_dir: str) -> int:
  """Runs one point's training command (output appended to point_dir/train.log); records a
  failure in point_dir/failed.json, a stop in point_dir/stopped.json (both removed once the
  point succeeds). Returns the exit code. The same function runs under every launcher (a local
  thread, a submitit job)."""
  files.makedirs(point_dir)
  failed, stopped = (files.path(point_dir) / f'{name}.json' for name in ('failed', 'stopped'))
  with _log_file(files.path(point_dir) / 'train.log') as log:
    log.write('$ ' + ' '.join(command) + '\n')
    log.flush()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True, env={**os.environ, 'PYTHONUNBUFFERED': '1'})
    _RUNNING.add(process)
    try:
      code = process.wait()
    finally:
      _RUNNING.discard(process)
    error = _error_line(log.name, code) if code != 0 and code not in STOPPED else None
  for path in (failed, stopped):
    path.unlink(missing_ok=True)
  if code in STOPPED:
    files.write_json(stopped, {'returncode': code})
  elif code != 0:
    files.write_json(failed, {'returncode': code, 'error': error})
  return code


@contextlib.contextmanager
def _log_file(log_path):
  """train.log opened to append, for the training process to write to directly; in a remote
  sweep directory (gs://...), a local temporary file (a process writes only to local files),
  appended to train.log when the point ends."""
  if not files.is_remote(log_path):
    with log_path.open('a') as log:
      yield log
    return
  with tempfile.NamedTemporaryFile('w+', prefix='train-', suffix='.log') as log:
    try:
      yield log
    finally:
      log.flush()
      with open(log.name, errors='replace') as f:
        files.append_text(log_path, f.read())


_RUNNING: set = set()  # the training processes this sweep process started and waits for


def _error_line(log_path: str, code: int) -> str:
  """The run's own one-line error (`error: ...`), else the last line of its output (in the
  local file the training process wrote to)."""
  with open(log_path, errors='replace') as f:
    tail = f.read()[-20000:]
  lines = [line.strip() for line in tail.replace('\r', '\n').splitlines() if line.strip()]
  errors = [line[line.index('error:'):] for line in lines if 'error:' in line]
  line = errors[-1] if errors else (lines[-1] if lines else '')
  by_signal = f' (signal {-code})' if code < 0 else ''
  return f'exit code {code}{by_signal}: {line[:500]}'


def point_status(point: Point, workdir: str) -> tuple[str, dict[str, Any]]:
  """(status, results) from the files of DIR/<id>: finished, failed, interrupted (stopped: a
  relaunch resumes it) or pending."""
  point_dir = files.path(workdir) / point.id
  summary = runs.finished_summary(point_dir, point.config.train.num_steps)
  if summary is not None:  # as train decides it (an incomplete summary is finished by a rerun)
    return 'finished', summary
  failed = files.read_json(point_dir / 'failed.json')
  if failed is not None:
    return 'failed', {'error': failed['error']}
  if runs.has_checkpoint(point_dir) or (point_dir / 'stopped.json').exists():
    return 'interrupted', {}
  return 'pending', {}


def write_results(points: list[Point], workdir: str, fields: list[str]) -> str:
  """DIR/results.csv, one row per point, written atomically (a crash leaves the old file)."""
  path = str(files.path(workdir) / 'results.csv')
  text = io.StringIO()
  writer = csv.writer(text)
  columns = [*RESULT_FIELDS[:-2], *_source_fields(points), *RESULT_FIELDS[-2:]]
  writer.writerow(['id', 'status', *fields, *columns])
  for point in points:
    status, results = point_status(point, workdir)
    planned = dict(point.info, steps=point.config.train.num_steps)
    row = {**planned, **{k: v for k, v in results.items() if v is not None}}
    values = point.values
    writer.writerow([point.id, status, *(values.get(f, '') for f in fields),
                     *(row.get(f, '') for f in columns)])
  files.atomic_write(path, text.getvalue())
  return path


def _source_fields(points: list[Point]) -> list[str]:
  """The final eval loss of each dataset of the points' mixtures (a mixture ablation's
  columns)."""
  names = []
  for point in points:
    if point.experiment.data.mixture:
      names += [n for n in point.experiment.data.mixture_weights() if n not in names]
  return [f'eval_loss/{name}' for name in names]


# --- The command -------------------------------------------------------------------------------

def print_plan(points: list[Point], workdir: str | None):
  """The dry run: every point with its values, parameters and FLOPs (no compile)."""
  fmt = counting.format_count
  print(f'{len(points)} points')
  w = max(len(p.id) for p in points) + 2
  header = f"{'id':<{w}}{'params':>9}{'non-emb':>9}{'FLOPs/tok':>11}{'tokens':>9}{'FLOPs':>9}"
  print(header + ('  status' if workdir else '') + '  values')
  for p in points:
    i = p.info
    status = f'  {point_status(p, workdir)[0]:<11}' if workdir else ''
    values = ' '.join(f'{k}={_format_value(v)}' for k, v in p.values.items())
    print(f'{p.id:<{w}}{fmt(i["params"]):>9}{fmt(i["params_non_embedding"]):>9}'
          f'{fmt(i["flops_per_token"]):>11}{fmt(i["tokens"]):>9}{fmt(i["total_flops"]):>9}'
          f'{status}  {values}')
  total = sum(p.info['total_flops'] for p in points)
  print(f'total: {fmt(total)} training FLOPs')


def _launch_submitit(jobs, cluster: str, folder: str, parameters: dict, parallel: int,
                     done: Callable):
  """Runs the points as one job array through submitit: SLURM, or its local executor."""
  import submitit
  executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
  executor.update_parameters(**{'timeout_min': 24 * 60, 'slurm_array_parallelism': parallel,
                                **parameters})
  submitted = executor.map_array(run_point, [c for _, c, _ in jobs], [d for _, _, d in jobs])
  by_job = {job.job_id: (point, point_dir) for job, (point, _, point_dir) in zip(submitted, jobs)}
  print(f'submitted job array {submitted[0].job_id.split("_")[0]} ({len(submitted)} jobs; '
        f'submitit files in {folder})', flush=True)
  for job in submitit.helpers.as_completed(submitted):
    point, point_dir = by_job[job.job_id]
    try:
      code = job.result()
    except Exception as e:  # the job itself failed: killed, timed out, node lost
      code = 1
      files.write_json(files.path(point_dir) / 'failed.json',
                       {'returncode': None, 'error': f'submitit job {job.job_id}: '
                                                     f'{last_line(e)[:500]}'})
    done(point, code)


def parse_key_values(items: list[str]) -> dict[str, Any]:
  """['partition=gpu', 'gpus_per_node=1'] -> {'partition': 'gpu', 'gpus_per_node': 1}."""
  parsed = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise ConfigError(f'--submitit={item!r} is invalid: expected KEY=VALUE, e.g. '
                        'slurm_partition=gpu')
    try:
      parsed[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      parsed[key] = value
  return parsed


def run_sweep(config, config_arg: str, sweep: Sweep, workdir: str, cli_overrides: dict,
              parallel: int = 1, launcher: str = 'local', submitit_parameters: dict | None = None
              ) -> int:
  """Runs every unfinished point of `sweep` in DIR/<id>/; returns 0 if all finished, else 1."""
  points = expand(config, sweep, list(cli_overrides))
  workdir = _sweep_directory(workdir, launcher)
  swept = list(dict.fromkeys(f for p in points for f in p.overrides))
  fields = swept + [f for f in dict.fromkeys(f for p in points for f in p.derived)
                    if f not in swept]
  files.write_json(files.path(workdir) / 'sweep.json', dict(
      config=config_arg, overrides=cli_overrides, fields=swept,
      derived=list(sweep.derived), points=[
          dict(id=p.id, overrides=p.overrides, derived=p.derived, **p.info) for p in points]))
  write_results(points, workdir, fields)
  jobs = []
  for p in points:
    if point_status(p, workdir)[0] == 'finished':
      continue
    point_dir = str(files.path(workdir) / p.id)
    command = train_command(config_arg, point_dir, {**cli_overrides, **p.values})
    files.makedirs(point_dir)
    files.atomic_write(files.path(point_dir) / 'command.txt', ' '.join(command[1:]) + '\n')
    jobs.append((p, command, point_dir))
  print(f'{len(points)} points in {workdir}: {len(points) - len(jobs)} finished, '
        f'{len(jobs)} to run' + (f', {parallel} at a time' if jobs and parallel > 1 else '')
        + (f' ({launcher})' if jobs and launcher != 'local' else ''), flush=True)

  started, finished_count = time.perf_counter(), [0]

  def done(point: Point, code: int):
    finished_count[0] += 1
    status, results = point_status(point, workdir)
    if status == 'finished':
      loss = results.get('final_eval_loss', results.get('final_train_loss'))
      what = f'finished in {results["wall_seconds"]:.0f} s' + (
          f', loss {loss:.4f}' if isinstance(loss, float) else '')
    elif code == INTERRUPTED_EXIT_CODE:
      what = 'interrupted (checkpoint saved; relaunch to resume)'
    elif code in STOPPED:
      what = 'stopped while it started (relaunch to run it)'
    else:
      what = f'FAILED: {results.get("error", f"exit code {code}")}; see {point.id}/train.log'
    print(f'[{finished_count[0]}/{len(jobs)}] {point.id}: {what}', flush=True)
    write_results(points, workdir, fields)

  interrupted = []

  def on_signal(signum, frame):
    interrupted.append(signum)
    for process in list(_RUNNING):  # each saves a checkpoint and exits 143
      process.send_signal(signal.SIGTERM)

  if launcher == 'local':
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
      _launch_local(jobs, parallel, done, interrupted)
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)
  else:
    cluster = 'local' if launcher == 'submitit_local' else 'slurm'
    try:
      _launch_submitit(jobs, cluster, str(files.path(workdir) / '.submitit'),
                       submitit_parameters or {}, parallel, done)
    except KeyboardInterrupt:  # the jobs are the scheduler's: they go on without us
      interrupted.append(signal.SIGINT)
      print('stopped waiting: the submitted jobs go on. Relaunch this command once they have '
            'ended (squeue) to collect results.csv; relaunching earlier would start the '
            'running points twice', flush=True)
  path = write_results(points, workdir, fields)
  statuses = [point_status(p, workdir)[0] for p in points]
  counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
  print(f'{", ".join(f"{n} {s}" for s, n in counts.items())} '
        f'({time.perf_counter() - started:.0f} s); {path}', flush=True)
  if interrupted:
    return INTERRUPTED_EXIT_CODE
  return 0 if counts.get('finished', 0) == len(points) else 1


def _sweep_directory(workdir: str, launcher: str) -> str:
  """The sweep directory, absolute and created, or a ConfigError in one line: a remote one
  (gs://...) that cannot be written here, or that a launcher's jobs cannot share."""
  workdir = str(files.absolute(workdir))
  if launcher != 'local' and files.is_remote(workdir):
    raise ConfigError(f'--launcher={launcher} needs a --workdir on a file system the jobs '
                      f'share (submitit keeps its job files there), not {workdir}; use '
                      '--launcher=local, or a shared mount')
  files.check_remote(workdir, '--workdir')
  files.makedirs(workdir)
  return workdir


def _launch_local(jobs, parallel: int, done: Callable, interrupted: list):
  """Runs the points' commands in `parallel` threads, each waiting on its training process.
  Once a stop is requested (`interrupted`), points not yet started are left for a relaunch."""

  def guarded(point, command, point_dir):
    if interrupted:
      return None
    return run_point(command, point_dir)

  with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
    futures = {pool.submit(guarded, *job): job[0] for job in jobs}
    for future in concurrent.futures.as_completed(futures):
      code = future.result()
      if code is not None:  # None: never started
        done(futures[future], code)
