"""The training loop: a plain function in four stages, each a function that reads top to bottom.

  prepare      validate everything once, before anything compiles; open the run's data,
               checkpoints and metric files                                      -> Run
  start        restore the newest readable checkpoint, or initialise (from train.init_from
               when fine-tuning)                                                 -> state, Progress
  train_steps  dispatch steps; log, evaluate and checkpoint on schedule; stop on SIGTERM (exit
               143, checkpoint saved) or a non-finite loss (exit 1, checkpoints intact)
  finish       the final evaluation, summary.json, loss.png and a sample       -> summary

A resumed run is bitwise the run that never stopped: the checkpoint holds the parameters,
optimizer state, data position, randomness and the open log window. A run stopped after its
last checkpoint but before its summary is finished by running it again (the final evaluation is
computed from that checkpoint). Whatever the way out, one `ExitStack` closes what the run opened
and puts the previous SIGTERM handler back.
"""

import contextlib
import dataclasses
import functools
import signal
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer import files, plots
from transformer.config import Experiment
from transformer.data import pipeline
from transformer.errors import ConfigError, Interrupted, RunFailed
from transformer.model import counting, decode, models
from transformer.training import (
  checkpoint,
  evaluation,
  finetune,
  metrics,
  optim,
  runs,
  sharding,
  step as steps,
)

TRAIN_METRICS = ('loss', 'nll', 'accuracy', 'grad_norm')  # averaged over each log window


def validate(config: Any, num_devices: int | None = None) -> Experiment:
  """Every rule a run checks before it starts, without reading or compiling anything: each
  section's fields and the rules between them (`Experiment`), what the dataset holds
  (`pipeline.check_data`) and, given `num_devices`, the mesh on that many devices
  (`sharding.mesh_shape`); that train.wandb_project's package is installed."""
  experiment = Experiment.from_config(config)
  pipeline.check_data(experiment)
  metrics.check_wandb(experiment.train.wandb_project)
  if num_devices is not None:
    sharding.mesh_shape(experiment, num_devices)
  return experiment


def train_and_evaluate(config: Any, workdir: str, devices: list | None = None) -> dict[str, Any]:
  """Trains an experiment (an `Experiment`, or a ConfigDict validated here) in `workdir`,
  resuming if it holds a run; returns the summary. `devices`: the devices of the mesh (default:
  every device of every process). Raises ConfigError (bad input, before anything compiles),
  Interrupted (SIGTERM during the steps: checkpoint saved) or RunFailed (a non-finite loss;
  storage that refuses a write: a full disk, a read-only directory).
  A SIGTERM that arrives after the last step was saved (while the summary and the sample are
  written) lets the run finish: it is complete."""
  try:
    with contextlib.ExitStack() as stack:
      run = prepare(config, workdir, devices, stack)
      finished = runs.finished_summary(workdir, run.experiment.train.num_steps)
      if finished is not None:
        _print(f'{workdir} has finished ({finished["steps"]} steps); nothing to do')
        return finished
      state, progress = start(run, stack)
      _announce(run, progress)
      state = train_steps(run, state, progress)
      return finish(run, state, progress)
  except OSError as e:  # storage that refuses a write (metrics, events, summary, plot)
    code = files.storage_errno(e)
    if code is None:
      raise
    raise RunFailed(f'cannot write {e.filename or workdir}: {files.describe_errno(code)}; the '
                    f'checkpoints in {workdir}/checkpoints are intact: free space or make the '
                    'directory writable, then run the same command to resume') from None


# --- prepare -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  """What a run knows and holds before its first step."""

  experiment: Experiment
  workdir: str
  tokenizer: Any
  par: sharding.Parallel  # the train and eval steps, placed on the mesh
  model: nn.Module
  ckpts: checkpoint.Checkpoints
  counts: dict[str, int]  # parameters and FLOPs per token (model/counting.py)

  @property
  def tokens_per_step(self) -> int:
    return self.experiment.data.batch_size * self.experiment.data.seq_len

  @functools.cached_property
  def peak_flops(self) -> float:
    """Of the mesh's devices, for MFU (measured on CPU: a matmul)."""
    return counting.mesh_peak_flops(list(self.par.mesh.devices.flat))

  @functools.cached_property
  def bleu_pairs(self) -> list:
    """Held-out (source, target) pairs decoded for BLEU at each evaluation (train.bleu_examples;
    one process only: each host holds different examples)."""
    n = self.experiment.train.bleu_examples
    if not n:
      return []
    if jax.process_count() > 1:
      _print('note: train.bleu_examples is ignored with several processes (BLEU needs one)')
      return []
    return evaluation.held_out_pairs(self.experiment, self.tokenizer, n)

  @property
  def summary_path(self) -> str:
    return str(files.path(self.workdir) / 'summary.json')


def prepare(config: Any, workdir: str, devices: list | None,
            stack: contextlib.ExitStack) -> Run:
  """Validates the experiment, the workdir and any checkpoint in it against the model (a
  ConfigError names what is wrong), then builds the steps and writes config.json."""
  experiment = validate(config, len(devices or jax.devices()))
  _probe_workdir(workdir)
  pipeline.prepare_data(experiment)
  tokenizer = pipeline.get_tokenizer(experiment)
  experiment = pipeline.with_vocab(experiment, tokenizer)
  par, model = steps.make_parallel(experiment, devices)
  ckpts = checkpoint.Checkpoints(files.path(workdir) / 'checkpoints',
                                 keep=experiment.train.keep_checkpoints)
  stack.callback(ckpts.close)
  _check_checkpoint_matches(ckpts, par.abstract, workdir)
  if not ckpts.steps():  # init_from is read only by a run's first start
    finetune.check_init_from(experiment)
  if _is_main():
    files.write_json(files.path(workdir) / 'config.json', experiment.to_dict())
  return Run(experiment, workdir, tokenizer, par, model, ckpts,
             counting.summarize(experiment.model, experiment.data.seq_len))


def _probe_workdir(workdir: str):
  """Every directory the run writes must take a file, before anything compiles (a read-only
  checkpoints/ in a writable workdir used to fail only at the first save, in orbax's
  background thread). A remote workdir (gs://...) takes one test object: an object store has no
  directories, and its refusals (no backend, no network, no credentials) are one line."""
  if files.is_remote(workdir):
    files.check_remote(workdir, '--workdir')
    return
  for directory in (workdir, files.path(workdir) / 'checkpoints',
                    files.path(workdir) / 'tensorboard'):
    code = files.probe_writable(directory)
    if code is not None:
      where = '' if directory == workdir else f': {directory}'
      raise ConfigError(f'--workdir={workdir}{where} is not writable: '
                        f'{files.describe_errno(code)}')


def _check_checkpoint_matches(ckpts: checkpoint.Checkpoints, abstract: Any, workdir: str):
  """A workdir's checkpoint must have this model's parameter shapes (before anything compiles)."""
  saved = ckpts.saved_shapes(max(ckpts.steps())) if ckpts.steps() else None
  if saved is None:
    return  # no checkpoint, or an unreadable one: restore sets it aside and falls back
  saved_params = saved.get('params') or {}
  mismatch = models.first_mismatch(abstract.params, saved_params, dtypes=True)
  if mismatch is None:  # and nothing there that this model lacks (fewer layers, no bias...)
    extra = models.first_mismatch(saved_params, abstract.params)
    mismatch = extra and (extra[0], extra[2], 'absent')
  if mismatch:
    name, theirs, ours = mismatch
    raise ConfigError(f'--workdir={workdir} holds a checkpoint of a different model: parameter '
                      f'{name} is {theirs} there, {ours} in this config; use another --workdir '
                      f'or the config that wrote it ({workdir}/config.json)')


# --- start ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class LogWindow:
  """The metrics of the steps since the last log record, summed on the device and read only
  when the window closes (at a log step). It is saved with each checkpoint, so that a resumed run
  logs the same averages as one that never stopped."""

  opened_after: int  # the step before the window's first step
  sums: dict | None = None
  timed_from: int = 0  # the first step whose time counts (the compiling step does not)
  clock: float = 0.0  # when timing (re)started

  def add(self, step_metrics: dict):
    self.sums = step_metrics if self.sums is None else jax.tree.map(jnp.add, self.sums,
                                                                    step_metrics)

  def restart_clock(self, timed_from: int):
    self.timed_from, self.clock = timed_from, time.perf_counter()

  def exclude(self, seconds: float):
    """Time spent on something else than training (evaluating, writing records)."""
    self.clock += seconds

  def close(self, step: int, tokens_per_step: int, flops_per_token: int, peak_flops: float
            ) -> tuple[dict[str, float], dict[str, float]]:
    """(the window's mean train metrics, its throughput: tokens/s and MFU); then the window
    opens again."""
    host = jax.device_get(self.sums)
    n = step - self.opened_after
    means = {k: float(host[k]) / n for k in TRAIN_METRICS}
    speed = {}
    if step >= self.timed_from:  # a window of only the compiling first step has no throughput
      seconds = max(time.perf_counter() - self.clock, 1e-9)
      tokens_per_sec = (step - self.timed_from + 1) * tokens_per_step / seconds
      speed = dict(tokens_per_sec=tokens_per_sec,
                   mfu=flops_per_token * tokens_per_sec / peak_flops)
    self.opened_after, self.sums = step, None
    self.restart_clock(step + 1)
    return means, speed

  def saved(self) -> dict:
    window = None if self.sums is None else {
        k: float(v) for k, v in jax.device_get(self.sums).items()}
    return {'window_start': self.opened_after, 'window': window}

  @classmethod
  def restored(cls, meta: dict, step: int) -> 'LogWindow':
    if meta.get('window') is None:
      return cls(opened_after=step)
    sums = {k: jnp.asarray(v, jnp.bool_ if k == 'finite' else jnp.float32)
            for k, v in meta['window'].items()}
    return cls(opened_after=meta['window_start'], sums=sums)


@dataclasses.dataclass
class Progress:
  """Where a run stands (its step, randomness, time and latest metrics) and what it reads and
  writes as it goes (the training batches, the metric files, the SIGTERM flag)."""

  step: int
  seed: int
  window: LogWindow
  train_iter: Any
  wall_before: float = 0.0  # wall seconds of earlier sessions of the run
  started: float = 0.0  # when this session's steps began (perf_counter)
  last_train: dict = dataclasses.field(default_factory=dict)  # the latest log window's means
  last_eval: dict | None = None  # the latest evaluation (None: not computed in this session)
  saved_step: int | None = None  # the newest checkpoint's step
  writer: Any = None
  stop: Any = None  # .requested: SIGTERM arrived

  @property
  def wall_seconds(self) -> float:
    return self.wall_before + time.perf_counter() - self.started


def start(run: Run, stack: contextlib.ExitStack) -> tuple[Any, Progress]:
  """The train state and the run's progress: restored from the newest readable checkpoint, or
  initialised; the training data positioned after the last step; then SIGTERM becomes a clean
  stop (before metrics.jsonl appears: a sweep relies on it) and the metric files are opened."""
  exp, seed = run.experiment, run.experiment.train.seed
  restored = run.ckpts.restore_latest(run.par.abstract)
  train_iter = iter(pipeline.make_dataset(exp, 'train', run.tokenizer))
  stack.callback(train_iter.close)
  if restored is None:
    progress = Progress(step=0, seed=seed, window=LogWindow(0), train_iter=train_iter)
    state = _initial_state(run)
  else:
    step, saved_state, data_state, meta = restored
    _position_data(train_iter, data_state, run.workdir, step, exp.data.batch_size)
    if meta.get('seed', seed) != seed:
      _print(f'note: resuming with the checkpoint\'s train.seed={meta["seed"]} (not {seed})')
    progress = Progress(step=step, seed=meta.get('seed', seed),
                        window=LogWindow.restored(meta, step), train_iter=train_iter,
                        wall_before=meta.get('wall_seconds', 0.0), saved_step=step,
                        last_train=meta.get('last_train') or {})
    state = run.par.restore(saved_state)
  progress.stop = stack.enter_context(_sigterm_flag())
  progress.writer = stack.enter_context(metrics.MetricWriter(
      run.workdir, resume_step=progress.step, enabled=_is_main(),
      wandb_project=exp.train.wandb_project, wandb_entity=exp.train.wandb_entity,
      config=exp.to_dict()))
  return state, progress


def _initial_state(run: Run) -> Any:
  """A fresh train state, or for fine-tuning (train.init_from) one whose parameters come from
  the source run (and a fresh optimizer)."""
  exp, rng = run.experiment, jax.random.key(run.experiment.train.seed)
  if not exp.train.init_from:
    return run.par.init(rng)
  tx, _ = optim.make_optimizer(exp.opt, exp.train.num_steps, exp.model)
  host = jax.device_get(jax.jit(functools.partial(steps.init_state, exp.model, tx))(rng))
  params, note = finetune.initial_params(exp, host.params)
  _print(note)
  return run.par.restore(host.replace(params=params))


def _position_data(train_iter, data_state: Any, workdir: str, step: int, batch_size: int):
  """Moves this process's training iterator to the position saved in the checkpoint: one
  global position, whatever the number of processes that wrote it ({} for a converted
  checkpoint, and the per-process positions of earlier versions: read from the start)."""
  if 'position' not in data_state:
    if data_state:
      _print(f'note: the data position saved at step {step} is of an earlier version of the '
             'data pipeline (one per process); the data is read from the start of its order')
    return
  saved = data_state.get('batch_size', batch_size)
  if saved != batch_size:  # a smaller batch would silently skip the other slots' documents
    raise ConfigError(f'--config.data.batch_size={batch_size}: the run in --workdir={workdir} '
                      f'reads its data in {saved} slots (data.batch_size={saved} at step '
                      f'{step}); resume with data.batch_size={saved}, or use another --workdir')
  index, count = jax.process_index(), jax.process_count()
  try:
    train_iter.set_state(pipeline.host_position(data_state['position'],
                                                pipeline.host_slots(batch_size, index, count)))
  except (KeyError, ValueError, TypeError, IndexError) as e:
    raise ConfigError(
        f'--workdir={workdir}: the data position saved at step {step} does not fit this data '
        f'pipeline ({type(e).__name__}: {e}); was data.dataset, data.batch_size, data.pack or '
        'data.num_workers changed? Restore them (see config.json) or use another --workdir'
        ) from None


# --- the loop ------------------------------------------------------------------------------------


def train_steps(run: Run, state: Any, progress: Progress) -> Any:
  """Steps from progress.step to train.num_steps; returns the final state.

  Dispatching a step never waits for the device: the device runs ahead while the host takes the
  next (prefetched) batch, and metrics are read only at log steps. On GPU and TPU an implicit
  read of a device value inside the guard raises (CPU arrays live on the host: nothing to guard
  there)."""
  t = run.experiment.train
  rng, bad_step = jax.random.key(progress.seed), jnp.int32(-1)
  first_bad = jax.jit(lambda bad, finite, step: jnp.where((bad < 0) & ~finite, step, bad))
  first = progress.step + 1
  progress.started = time.perf_counter()
  progress.window.restart_clock(first)
  with _progress_bar(progress.step, t.num_steps) as bar:
    for step in range(first, t.num_steps + 1):
      with jax.transfer_guard_device_to_host('disallow'):
        batch = next(progress.train_iter)
        state, step_metrics = run.par.step(state, batch, rng)
        bad_step = first_bad(bad_step, step_metrics['finite'], step)
        progress.window.add(step_metrics)
      bar.update(1)
      run.ckpts.check()  # a background save that failed stops the run now
      progress.step, last = step, step == t.num_steps
      if step == first:  # it compiled the step: time from the next one
        jax.block_until_ready(step_metrics)
        progress.window.restart_clock(step + 1)
      record = {}
      if step % t.log_every == 0 or last:
        _fail_if_not_finite(bad_step, run)
        progress.last_train, speed = progress.window.close(
            step, run.tokens_per_step, run.counts['flops_per_token'], run.peak_flops)
        record = dict(progress.last_train, learning_rate=float(step_metrics['learning_rate']),
                      **speed)
        bar.set_postfix(loss=f'{progress.last_train["loss"]:.3f}',
                        tok_s=f'{speed.get("tokens_per_sec", 0):,.0f}')
      paused = time.perf_counter()  # evaluating and writing records is not training time
      if step % t.eval_every == 0 or last:
        progress.last_eval = _evaluate(run, state, batch)
        record.update(progress.last_eval)
      if record:
        progress.writer.write(step, record)
      progress.window.exclude(time.perf_counter() - paused)
      if step % t.checkpoint_every == 0 or last:
        _fail_if_not_finite(bad_step, run)
        _save(run, state, progress)
      if _stop_agreed(progress.stop, step, t.log_every):
        _fail_if_not_finite(bad_step, run)
        if progress.saved_step != step:
          _save(run, state, progress)
        raise Interrupted(f'SIGTERM at step {step}: checkpoint saved; run the same command to '
                          'resume')
  return state


def _stop_agreed(stop: '_StopFlag', step: int, log_every: int) -> bool:
  """Processes agree on when to stop; with several, only at log steps: agreeing is a
  collective, and one per step would hold the host until the device finishes each step."""
  if jax.process_count() > 1 and step % log_every:
    return False
  return sharding.any_process(stop.requested)


def _evaluate(run: Run, state: Any, template: dict) -> dict[str, float]:
  result = evaluation.held_out_metrics(lambda batch: run.par.eval(state, batch), run.experiment,
                                       run.tokenizer, template=template)
  if run.bleu_pairs:
    result.update(evaluation.bleu_metrics(run.model, run.par.params(state), run.bleu_pairs,
                                          run.tokenizer, run.experiment))
  return result


def _save(run: Run, state: Any, progress: Progress):
  """A checkpoint of the step just taken: the state, the global data position (every
  process's slots), and what a resumed run needs to log as this one would (the open window,
  the latest train metrics)."""
  meta = dict(wall_seconds=progress.wall_seconds, seed=progress.seed,
              tokens=progress.step * run.tokens_per_step, last_train=progress.last_train,
              **progress.window.saved())
  hosts = sharding.gather_host_states(progress.train_iter.get_state())
  position = {'position': pipeline.global_position(hosts),
              'batch_size': run.experiment.data.batch_size}
  run.ckpts.save(progress.step, run.par.saveable(state), position, meta)
  progress.saved_step = progress.step


def _fail_if_not_finite(bad_step: jax.Array, run: Run):
  bad = int(bad_step)
  if bad >= 0:
    run.ckpts.wait()
    last = max(run.ckpts.steps(), default=None)
    raise RunFailed(f'non-finite loss at step {bad}: stopping. '
                    + (f'The checkpoint of step {last} is intact. ' if last else '')
                    + 'Lower opt.lr, raise opt.warmup_steps or set opt.clip_norm.')


# --- finish --------------------------------------------------------------------------------------


def finish(run: Run, state: Any, progress: Progress) -> dict[str, Any]:
  """The run's summary (written to summary.json, with loss.png and sample.txt): the last log
  window's train metrics and the final evaluation, computed here if the run was stopped between
  its last checkpoint and its summary."""
  exp = run.experiment
  if not progress.last_train:  # a checkpoint written before last_train was saved with it
    logged = [r for r in files.read_jsonl(progress.writer.path) if 'loss' in r]
    progress.last_train = {k: logged[-1][k] for k in TRAIN_METRICS} if logged else {}
  if progress.last_eval is None:  # stopped between its last checkpoint and its summary
    template = next(progress.train_iter) if jax.process_count() > 1 else None
    progress.last_eval = _evaluate(run, state, template)
  run.ckpts.wait()
  tokens = exp.train.num_steps * run.tokens_per_step
  wall = progress.wall_seconds
  summary = dict(
      status='finished', steps=exp.train.num_steps,
      final_train_loss=progress.last_train.get('loss'),
      final_eval_loss=progress.last_eval.get('eval_loss'), tokens=tokens, wall_seconds=wall,
      total_flops=run.counts['flops_per_token'] * tokens, tokens_per_sec=tokens / wall,
      **run.counts, **{k: v for k, v in progress.last_eval.items() if k != 'eval_loss'})
  if exp.task == 'lm' and exp.train.sample_tokens:  # every process runs the computation
    summary['sample'] = _sample_text(run, state)
  if _is_main():
    plots.plot_loss_curve(files.read_jsonl(progress.writer.path),
                          files.path(run.workdir) / 'loss.png',
                          title=files.absolute(run.workdir).name,
                          bytes_tokenizer='eval_bits_per_byte' in summary)
    if 'sample' in summary:
      files.atomic_write(files.path(run.workdir) / 'sample.txt', summary['sample'])
    files.write_json(run.summary_path, summary)
    _report(summary, run.workdir)
  return summary


def _sample_text(run: Run, state: Any) -> str:
  t = run.experiment.train
  prompt = [run.tokenizer.bos_id, *run.tokenizer.encode(t.sample_prompt)]
  ids = decode.generate(run.model, run.par.params(state), [prompt], t.sample_tokens,
                        jax.random.key(t.seed), max_context=run.experiment.data.seq_len,
                        temperature=t.sample_temperature)[0]
  return t.sample_prompt + run.tokenizer.decode(ids)


def _report(summary: dict, workdir: str):
  train_loss = summary['final_train_loss']
  line = f'done: {summary["steps"]} steps, train loss ' + (
      'unknown' if train_loss is None else f'{train_loss:.4f}')
  if summary.get('final_eval_loss') is not None:
    line += f', eval loss {summary["final_eval_loss"]:.4f}'
  if 'eval_bits_per_byte' in summary:
    line += f' ({summary["eval_bits_per_byte"]:.3f} bits per byte)'
  if 'eval_bleu' in summary:
    line += f', BLEU {summary["eval_bleu"]:.1f}'
  line += f', {summary["wall_seconds"]:.0f} s; {workdir}/summary.json'
  print(line)
  if 'sample' in summary:
    print('sample:\n' + summary['sample'])


# --- process-level helpers -----------------------------------------------------------------------


class _StopFlag:
  requested = False


@contextlib.contextmanager
def _sigterm_flag():
  """SIGTERM (a preempted cluster job) sets a flag that the loop checks after every step; the
  previous handler is put back however the run ends."""
  flag = _StopFlag()

  def handle(signum, frame):
    flag.requested = True

  previous = signal.signal(signal.SIGTERM, handle)
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)


def _is_main() -> bool:
  return jax.process_index() == 0


def _print(line: str):
  if _is_main():
    print(line, flush=True)


def _announce(run: Run, progress: Progress):
  exp, par = run.experiment, run.par
  mesh = ', '.join(f'{k} {v}' for k, v in zip(par.mesh.axis_names, par.mesh.devices.shape))
  _print(f'{exp.model.family} ({exp.task}): {run.counts["params"]:,} parameters, '
         f'{counting.format_count(run.counts["flops_per_token"])} FLOPs/token; '
         + (f'resuming at step {progress.step} of ' if progress.step else 'training for ')
         + f'{exp.train.num_steps} steps in {run.workdir}'
         + (f' on {par.mesh.devices.size} devices ({par.kind}, {mesh})'
            if par.mesh.devices.size > 1 else ''))


def _progress_bar(start: int, total: int):
  from tqdm import tqdm
  return tqdm(total=total, initial=start, disable=not _is_main(), unit='step', mininterval=1.0,
              dynamic_ncols=True, file=sys.stderr)
