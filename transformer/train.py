"""Training: a pure train step, the loop, and the command.

  python -m transformer.train --workdir=DIR                     # the default experiment
  python -m transformer.train --config=configs/FILE.py[:PRESET] --workdir=DIR [--config.a.b=V]

The run resumes from the newest readable checkpoint in DIR (parameters, optimizer state, data
position and randomness: a resumed run is bitwise the run that never stopped). DIR receives
config.json, metrics.jsonl, TensorBoard events, checkpoints/, and on finishing summary.json,
loss.png (and sample.txt for language models). SIGTERM saves a checkpoint and exits with 143;
a non-finite loss stops the run (exit 1) naming the step, leaving the last checkpoint intact.
"""

import functools
import json
import os
import signal
import sys
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from transformer import cli, losses, models, optim, scaling, sharding
from transformer.config import ConfigError, ModelConfig, check_config

_WORKDIR = flags.DEFINE_string('workdir', None, 'directory of the run: checkpoints, metrics, '
                               'summary (required; an existing run there is resumed)')

_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'many hosts: HOST:PORT of process 0 (with --num_processes and '
    '--process_id); not needed under SLURM or on Cloud TPU VMs, where it is detected')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'many hosts: number of processes')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'many hosts: this process, 0-based')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'on', 'off'], 'jax.distributed.initialize: auto (with the '
    'flags above, under SLURM with several tasks, on Cloud TPU VMs), on (always), off')
_HEARTBEAT = flags.DEFINE_integer(
    'heartbeat_timeout_s', 100, 'many hosts: a process that does not hear from the coordinator '
    'for this long fails instead of waiting forever')

BLEU_TOKENIZERS = ('13a', 'intl', 'char', 'none')  # sacrebleu's, for train.bleu_tokenize
INTERRUPTED_EXIT_CODE = 143  # 128 + SIGTERM: stopped on request, checkpoint saved


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # optimizer updates done
  params: Any
  opt_state: Any


def init_state(cfg: ModelConfig, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  params = models.init_params(cfg, rng)
  return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params))


def _micro_batches(batch: dict, n: int) -> dict:
  return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule, task: str,
               label_smoothing: float = 0.0, accum_steps: int = 1, axis_name: str | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on `batch` (split into `accum_steps` micro-batches whose gradients
  add up to the whole batch's). Randomness: fold_in(rng, step). Loss: weighted mean.

  Under jit the batch is global, however it is sharded. Under pmap each device has a slice:
  `axis_name` names the mapped axis, over which gradients and loss sums are added up before
  the update, so every device applies the update of the whole batch."""
  rng = jax.random.fold_in(rng, state.step)
  if axis_name is not None:  # a different dropout mask on each device's slice
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

  def grads_of(micro_batch, micro_rng):
    def objective(params):
      sums = losses.loss_sums(model, params, micro_batch, task, label_smoothing=label_smoothing,
                              train=True, rng=micro_rng)
      return sums['loss'], sums
    return jax.grad(objective, has_aux=True)(state.params)

  if accum_steps == 1:
    grads, sums = grads_of(batch, rng)
  else:
    def add(carry, xs):
      grads, sums = grads_of(*xs)
      return jax.tree.map(jnp.add, carry, (grads, sums)), None
    micro = _micro_batches(batch, accum_steps)
    rngs = jax.random.split(rng, accum_steps)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grads_of, jax.tree.map(
        lambda x: x[0], micro), rngs[0]))
    (grads, sums), _ = jax.lax.scan(add, zeros, (micro, rngs))

  if axis_name is not None:
    grads, sums = jax.lax.psum((grads, sums), axis_name)
  weight = jnp.maximum(sums['weight'], 1.0)
  grads = jax.tree.map(lambda g: g / weight, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  loss = sums['loss'] / weight
  grad_norm = optax.tree.norm(grads)
  metrics = {'loss': loss, 'nll': sums['nll'] / weight, 'accuracy': sums['correct'] / weight,
             'grad_norm': grad_norm, 'learning_rate': schedule(state.step),
             'finite': jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params: Any, batch: dict, *, model: nn.Module, task: str) -> dict[str, jax.Array]:
  """Weighted sums of nll, correct predictions and weight over the batch."""
  return losses.eval_sums(model, params, batch, task)


# --- validation ----------------------------------------------------------------------------------


def check_train_config(config: Any) -> ModelConfig:
  cfg = check_config(config)
  optim.check_opt_config(config.opt, cfg)
  t = config.train
  for name in ('keep_checkpoints', 'grad_accum_steps'):
    if t[name] < 1:
      raise ConfigError(f'train.{name}={t[name]!r} is invalid: must be >= 1')
  for name in ('eval_batches', 'sample_tokens'):
    if t[name] < 0:
      raise ConfigError(f'train.{name}={t[name]!r} is invalid: must be >= 0')
  if t.bleu_examples < 0 or t.bleu_beam_size < 1 or t.bleu_alpha < 0:
    raise ConfigError(f'train.bleu_examples={t.bleu_examples} (>= 0), train.bleu_beam_size='
                      f'{t.bleu_beam_size} (>= 1) or train.bleu_alpha={t.bleu_alpha} (>= 0) is '
                      'out of range')
  if t.bleu_examples and cfg.family != 'encoder_decoder':
    raise ConfigError(f'train.bleu_examples={t.bleu_examples}: BLEU is for encoder_decoder '
                      f'models (this one is {cfg.family}); set it to 0')
  if t.bleu_tokenize not in BLEU_TOKENIZERS:
    raise ConfigError(f'train.bleu_tokenize={t.bleu_tokenize!r} is invalid: must be one of '
                      + ', '.join(BLEU_TOKENIZERS))
  if not 0 <= t.label_smoothing < 1:
    raise ConfigError(f'train.label_smoothing={t.label_smoothing!r} is invalid: must be in [0, 1)')
  if config.data.batch_size % t.grad_accum_steps:
    raise ConfigError(f'train.grad_accum_steps={t.grad_accum_steps} is invalid: must divide '
                      f'data.batch_size={config.data.batch_size}')
  return cfg


def prepare_workdir(workdir: str):
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write-test-{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f'--workdir={workdir} is not writable: {e.strerror or e}') from None


def check_checkpoint_matches(ckpts, abstract: TrainState, workdir: str):
  """A workdir's checkpoint must have this model's parameter shapes (before anything compiles)."""
  steps = ckpts.steps()
  if not steps:
    return
  saved = ckpts.saved_shapes(max(steps))
  if saved is None:
    return  # unreadable: restore sets it aside and falls back
  want = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), abstract.params)
  saved_params = saved.get('params')
  if saved_params != want:
    flat_saved = dict(jax.tree_util.tree_flatten_with_path(saved_params or {})[0])
    for path, shape in jax.tree_util.tree_flatten_with_path(want)[0]:
      if flat_saved.get(path) != shape:
        name = _name(path)
        raise ConfigError(
            f'--workdir={workdir} holds a checkpoint of a different model: parameter {name} is '
            f'{flat_saved.get(path, "absent")} there, {shape} in this config; use another '
            f'--workdir or the config that wrote it ({workdir}/config.json)')
    raise ConfigError(f'--workdir={workdir} holds a checkpoint of a different model (its '
                      f'parameters differ from this config\'s); use another --workdir')


def _relayout(cfg: ModelConfig, params: Any) -> Any:
  """Parameters in `cfg`'s layer layout (scanned or unrolled), whichever layout they are in."""
  return models.stack_layers(params) if cfg.scan_layers else models.unstack_layers(params)


def _name(path) -> str:
  """'decoder/layers_0/mlp/wi/kernel' for a tree path."""
  return '/'.join(str(getattr(k, 'key', k)) for k in path)


def _flat(tree: Any) -> dict[str, Any]:
  return {_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_init_from(config: Any, cfg: ModelConfig) -> dict[str, Any] | None:
  """train.init_from: a run with a checkpoint whose parameters that this model shares have the
  same shapes (checked on shapes alone, before anything compiles). Returns that run's parameter
  shapes by name, in this model's layout; None without init_from."""
  from transformer import trained
  source = config.train.get('init_from', '')
  if not source:
    return None
  try:
    source_cfg = check_config(trained.read_config(source))
  except ConfigError as e:
    raise ConfigError(f'train.init_from={source!r} is invalid: {e}') from None
  saved = os.path.join(source, 'checkpoints')
  if not os.path.isdir(saved) or not any(n.isdigit() for n in os.listdir(saved)):
    raise ConfigError(f'train.init_from={source!r} is invalid: it has no checkpoint yet')
  want = _flat(jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0))))
  have = _flat(jax.eval_shape(lambda: _relayout(cfg, models.init_params(source_cfg,
                                                                         jax.random.key(0)))))
  for name, leaf in want.items():
    if name in have and have[name].shape != leaf.shape:
      raise ConfigError(
          f'train.init_from={source!r} is invalid: its parameter {name} is '
          f'{tuple(have[name].shape)}, this model\'s is {tuple(leaf.shape)}; keep the model '
          f'fields of {source}/config.json (configs/finetune.py does)')
  if not set(want) & set(have):
    raise ConfigError(f'train.init_from={source!r} is invalid: it shares no parameter with this '
                      'model')
  return have


def initial_params(config: Any, cfg: ModelConfig, fresh: Any) -> Any:
  """`fresh` parameters, with every one that train.init_from's newest checkpoint also holds
  replaced by its value there (on the host). Prints what started fresh and what was left out."""
  from transformer import trained
  source = trained.load(config.train.init_from)  # its parameters, not its optimizer state
  loaded = _flat(_relayout(cfg, source.params))
  paths = jax.tree_util.tree_flatten_with_path(fresh)[0]
  names = [_name(path) for path, _ in paths]
  leaves = [np.asarray(loaded[name]).astype(leaf.dtype) if name in loaded else leaf
            for name, (_, leaf) in zip(names, paths)]  # in this run's param_dtype
  new = [n for n in names if n not in loaded]
  unused = sorted(set(loaded) - set(names))
  _print(f'initialised from {config.train.init_from} (step {source.step}): '
         f'{len(names) - len(new)} of {len(names)} parameters'
         + (f'; fresh: {", ".join(new)}' if new else '')
         + (f'; not used: {", ".join(unused)}' if unused else ''))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(fresh), leaves)


def make_parallel(config: Any, cfg: ModelConfig, task: str, devices: list | None = None
                  ) -> tuple[sharding.Parallel, nn.Module]:
  """(parallel, model): the train and eval steps of `config`, placed on its mesh."""
  model = models.build_model(cfg)
  tx, schedule = optim.make_optimizer(config.opt, config.train.num_steps, cfg)
  par = sharding.make_parallel(
      config, cfg, tx, functools.partial(init_state, cfg, tx),
      functools.partial(train_step, model=model, tx=tx, schedule=schedule, task=task,
                        label_smoothing=config.train.label_smoothing,
                        accum_steps=config.train.grad_accum_steps),
      functools.partial(eval_step, model=model, task=task), devices)
  return par, model


# --- the loop ------------------------------------------------------------------------------------


class _Stop:
  """SIGTERM (a preempted cluster job) sets a flag the loop checks after every step."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _is_main() -> bool:
  return jax.process_index() == 0


def evaluate(eval_fn, config, tokenizer, task: str, template: dict) -> dict[str, float]:
  """Mean nll and accuracy over the held-out split: `train.eval_batches` batches (a host whose
  shard runs short evaluates zero-weight batches shaped like `template`), or the whole split
  if 0 (hosts go on together until every host's shard is done). `eval_fn(batch)` returns the
  sums of `eval_step` over the global batch."""
  from transformer.data import pipeline
  iterator = iter(pipeline.make_dataset(config, 'eval', tokenizer))
  limit = config.train.eval_batches
  totals, count = None, 0
  while not limit or count < limit:
    batch = next(iterator, None)
    if not limit and not sharding.any_process(batch is not None):
      break
    if batch is None:
      batch = pipeline.empty_batch(template)
    template = batch
    sums = eval_fn(batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    count += 1
  iterator.close()
  if totals is None:
    return {}
  from transformer.evaluate import metrics_from_sums
  totals = {k: float(v) for k, v in jax.device_get(totals).items()}
  return metrics_from_sums(totals, task, byte_tokens=config.data.tokenizer == 'byte')


def _host_data_state(saved: Any, workdir: str, step: int) -> Any:
  """This process's data position from a checkpoint's (one per process, in process order)."""
  if saved == {}:  # a converted checkpoint (transformer.convert): every host starts the data
    return {}
  hosts = saved['hosts'] if isinstance(saved, dict) and 'hosts' in saved else [saved]
  if len(hosts) != jax.process_count():
    raise ConfigError(
        f'--workdir={workdir}: the checkpoint of step {step} was written by {len(hosts)} '
        f'process(es), each reading its own shard of the data; this run has '
        f'{jax.process_count()}. Resume with {len(hosts)} process(es), or use another --workdir')
  return hosts[jax.process_index()]


def train_and_evaluate(config: Any, workdir: str, devices: list | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a run); returns the summary.
  `devices`: the devices of the mesh (default: every device of every process)."""
  from transformer import bench, checkpoint, metrics, viz
  from transformer.data import pipeline

  # Everything that can be wrong with the input is found here, before anything compiles.
  check_train_config(config)
  _, _, task = pipeline.check_data_config(config)
  sharding.mesh_shape(config, ModelConfig.from_config(config), len(devices or jax.devices()))
  prepare_workdir(workdir)
  tokenizer = pipeline.get_tokenizer(config)
  pipeline.apply_vocab(config, tokenizer)
  cfg = check_train_config(config)
  par, model = make_parallel(config, cfg, task, devices)
  seed = config.train.seed
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'),
                                 keep=config.train.keep_checkpoints)
  check_checkpoint_matches(ckpts, par.abstract, workdir)
  if not ckpts.steps():  # init_from is read only by a run's first start
    check_init_from(config, cfg)

  summary_path = os.path.join(workdir, 'summary.json')
  if _is_main():
    metrics.write_json(os.path.join(workdir, 'config.json'), json.loads(config.to_json()))

  restored = ckpts.restore_latest(par.abstract)
  train_iter = iter(pipeline.make_dataset(config, 'train', tokenizer))
  if restored:
    start, saved_state, data_state, meta = restored
    host_state = _host_data_state(data_state, workdir, start)
    try:
      if host_state:  # {}: a converted checkpoint (transformer.convert), read from the start
        train_iter.set_state(host_state)
    except (KeyError, ValueError, TypeError, IndexError) as e:
      raise ConfigError(
          f'--workdir={workdir}: the data position saved at step {start} does not fit this data '
          f'pipeline ({type(e).__name__}: {e}); was data.dataset, data.pack or '
          'data.num_workers changed? Restore them (see config.json) or use another --workdir'
      ) from None
    if meta.get('seed', seed) != seed:
      _print(f'note: resuming with the checkpoint\'s train.seed={meta["seed"]} (not {seed})')
      seed = meta['seed']
    if start >= config.train.num_steps and os.path.exists(summary_path):
      train_iter.close()
      ckpts.close()
      with open(summary_path) as f:
        _print(f'{workdir} has finished ({start} steps); nothing to do')
        return json.load(f)
    state = par.restore(saved_state)
    del saved_state
  else:
    start, meta = 0, {'wall_seconds': 0.0}
    if config.train.get('init_from'):  # fine-tuning: the source's parameters, a fresh optimizer
      tx, _ = optim.make_optimizer(config.opt, config.train.num_steps, cfg)
      host = jax.device_get(jax.jit(functools.partial(init_state, cfg, tx))(jax.random.key(seed)))
      state = par.restore(host.replace(params=initial_params(config, cfg, host.params)))
      del host
    else:
      state = par.init(jax.random.key(seed))
  rng = jax.random.key(seed)

  counts = scaling.summarize(cfg, config.data.seq_len)
  tokens_per_step = config.data.batch_size * config.data.seq_len
  peak_flops = bench.mesh_peak_flops(list(par.mesh.devices.flat))
  stop = _Stop()  # before metrics.jsonl appears: a SIGTERM from then on is a clean stop
  writer = metrics.MetricWriter(workdir, resume_step=start, enabled=_is_main())
  first_bad = jax.jit(lambda bad, finite, step: jnp.where((bad < 0) & ~finite, step, bad))

  def fail_if_not_finite(bad_step) -> None:
    bad = int(bad_step)
    if bad >= 0:
      ckpts.close()
      train_iter.close()
      last = max(ckpts.steps(), default=None)
      cli.fail(f'non-finite loss at step {bad}: stopping. '
               + (f'The checkpoint of step {last} is intact. ' if last else '')
               + 'Lower opt.lr, raise opt.warmup_steps or set opt.clip_norm.', code=1)

  def save(step: int):
    # The open log window goes along, so a resumed run logs the same averages.
    meta_now = {'wall_seconds': meta['wall_seconds'] + time.perf_counter() - started,
                'seed': seed, 'tokens': step * tokens_per_step, 'window_start': window_start,
                'window': None if window is None else
                {k: float(v) for k, v in jax.device_get(window).items()}}
    hosts = sharding.gather_host_states(train_iter.get_state())
    ckpts.save(step, par.saveable(state), {'hosts': hosts}, meta_now)

  bleu_pairs = []
  if config.train.bleu_examples:
    if jax.process_count() == 1:
      from transformer import evaluate as evaluation
      bleu_pairs = evaluation.held_out_pairs(config, tokenizer, config.train.bleu_examples)
    else:  # each host holds different examples; beam search runs on the global params
      _print('note: train.bleu_examples is ignored with several processes (BLEU needs one)')
  mesh = dict(zip(par.mesh.axis_names, par.mesh.devices.shape))
  _print(f'{cfg.family} ({task}): {counts["params"]:,} parameters, '
         f'{scaling.format_count(counts["flops_per_token"])} FLOPs/token; '
         + (f'resuming at step {start} of ' if start else 'training for ')
         + f'{config.train.num_steps} steps in {workdir}'
         + (f' on {par.mesh.devices.size} devices ({par.kind}, '
            + ', '.join(f'{k} {v}' for k, v in mesh.items()) + ')'
            if par.mesh.devices.size > 1 else ''))
  started = time.perf_counter()
  bad_step = jnp.int32(-1)
  window, window_start = None, start
  if meta.get('window') is not None:
    window = {k: jnp.asarray(v, jnp.bool_ if k == 'finite' else jnp.float32)
              for k, v in meta['window'].items()}
    window_start = meta['window_start']
  timed_from, window_time = start + 1, time.perf_counter()  # the first step compiles: untimed
  last_train, last_eval = {}, {}
  progress = _progress(start, config.train.num_steps, enabled=_is_main())
  step = start
  for step in range(start + 1, config.train.num_steps + 1):
    # Dispatching a step never waits for the device: the device runs ahead while the host takes
    # the next (prefetched) batch, and metrics are read only at log steps. On GPU and TPU an
    # implicit read of a device value here raises (CPU arrays live on the host: nothing to
    # guard there).
    with jax.transfer_guard_device_to_host('disallow'):
      batch = next(train_iter)
      state, m = par.step(state, batch, rng)
      bad_step = first_bad(bad_step, m['finite'], step)
      window = m if window is None else jax.tree.map(jnp.add, window, m)
    progress.update(1)
    if step == start + 1:
      jax.block_until_ready(m)
      timed_from, window_time = step + 1, time.perf_counter()
    record = {}
    if step % config.train.log_every == 0 or step == config.train.num_steps:
      fail_if_not_finite(bad_step)
      host = jax.device_get(window)
      n, seconds = step - window_start, time.perf_counter() - window_time
      last_train = {k: float(host[k]) / n for k in ('loss', 'nll', 'accuracy', 'grad_norm')}
      record = dict(last_train, learning_rate=float(m['learning_rate']))
      if step >= timed_from:  # a window of only the compiling first step has no throughput
        tokens_per_sec = (step - timed_from + 1) * tokens_per_step / max(seconds, 1e-9)
        record.update(tokens_per_sec=tokens_per_sec,
                      mfu=counts['flops_per_token'] * tokens_per_sec / peak_flops)
      progress.set_postfix(loss=f'{last_train["loss"]:.3f}',
                           tok_s=f'{record.get("tokens_per_sec", 0):,.0f}')
      window, window_start, timed_from = None, step, step + 1
    if step % config.train.eval_every == 0 or step == config.train.num_steps:
      last_eval = evaluate(lambda b: par.eval(state, b), config, tokenizer, task, batch)
      if bleu_pairs:
        last_eval.update(_bleu(model, par.params(state), bleu_pairs, tokenizer, config))
      record.update(last_eval)
    if record:
      writer.write(step, record)
      if 'loss' in record:
        window_time = time.perf_counter()  # evaluation is not training time
    if step % config.train.checkpoint_every == 0 or step == config.train.num_steps:
      fail_if_not_finite(bad_step)
      save(step)
    # Processes agree on when to stop; with several, only at log steps: agreeing is a collective,
    # and one per step would hold the host until the device finishes each step.
    if ((jax.process_count() == 1 or step % config.train.log_every == 0)
        and sharding.any_process(stop.requested)):
      fail_if_not_finite(bad_step)
      if step % config.train.checkpoint_every:
        save(step)
      ckpts.close()
      train_iter.close()
      progress.close()
      writer.close()
      _print(f'SIGTERM at step {step}: checkpoint saved; run the same command to resume')
      sys.exit(INTERRUPTED_EXIT_CODE)
  progress.close()
  stop.restore()
  ckpts.close()
  train_iter.close()
  writer.close()

  wall = meta['wall_seconds'] + time.perf_counter() - started
  tokens = config.train.num_steps * tokens_per_step
  summary = dict(
      status='finished', steps=config.train.num_steps, final_train_loss=last_train.get('loss'),
      final_eval_loss=last_eval.get('eval_loss'), tokens=tokens, wall_seconds=wall,
      total_flops=counts['flops_per_token'] * tokens, tokens_per_sec=tokens / wall,
      **counts, **{k: v for k, v in last_eval.items() if k != 'eval_loss'})
  if task == 'lm' and config.train.sample_tokens:  # every process runs the computation
    summary['sample'] = _sample_text(model, par.params(state), tokenizer, config)
  if _is_main():
    viz.plot_loss_curve(metrics.read_jsonl(writer.path), os.path.join(workdir, 'loss.png'))
    if 'sample' in summary:
      with open(os.path.join(workdir, 'sample.txt'), 'w') as f:
        f.write(summary['sample'])
    metrics.write_json(summary_path, summary)
    _report(summary, workdir)
  return summary


def _print(line: str):
  if _is_main():
    print(line, flush=True)


def _progress(start: int, total: int, enabled: bool):
  from tqdm import tqdm
  return tqdm(total=total, initial=start, disable=not enabled, unit='step', mininterval=1.0,
              dynamic_ncols=True, file=sys.stderr)


def _sample_text(model, params, tokenizer, config) -> str:
  from transformer import decode
  prompt = [tokenizer.bos_id, *tokenizer.encode(config.train.sample_prompt)]
  ids = decode.generate(model, params, [prompt], config.train.sample_tokens,
                        jax.random.key(config.train.seed), max_context=config.data.seq_len,
                        temperature=config.train.sample_temperature)[0]
  return config.train.sample_prompt + tokenizer.decode(ids)


def _bleu(model, params, pairs, tokenizer, config) -> dict[str, float]:
  from transformer import evaluate as evaluation
  t = config.train
  result = evaluation.bleu(model, params, pairs, tokenizer, max_len=config.data.seq_len,
                           beam_size=t.bleu_beam_size, alpha=t.bleu_alpha,
                           tokenize=t.bleu_tokenize)
  return {'eval_bleu': result['bleu'], 'eval_exact_match': result['exact_match']}


def _report(summary: dict, workdir: str):
  loss = summary.get('final_eval_loss')
  line = f'done: {summary["steps"]} steps, train loss {summary["final_train_loss"]:.4f}'
  if loss is not None:
    line += f', eval loss {loss:.4f}'
  if 'eval_bits_per_byte' in summary:
    line += f' ({summary["eval_bits_per_byte"]:.3f} bits per byte)'
  if 'eval_bleu' in summary:
    line += f', BLEU {summary["eval_bleu"]:.1f}'
  line += f', {summary["wall_seconds"]:.0f} s; {workdir}/summary.json'
  print(line)
  if 'sample' in summary:
    print('sample:\n' + summary['sample'])


def main(config, argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not _WORKDIR.value:
    cli.fail('--workdir is required: the directory for checkpoints, metrics and the summary')
  sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                  mode=_DISTRIBUTED.value, heartbeat_timeout_s=_HEARTBEAT.value)
  cli.enable_compilation_cache()
  try:
    train_and_evaluate(config, _WORKDIR.value)
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    # A collective failed: another process of the job died. Exit now, without the shutdown
    # barrier (it would wait for the dead peer, then abort).
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    print(f'error: process {jax.process_index()}: {reason}; another process of this job has '
          f'probably stopped. Checkpoints in {_WORKDIR.value}/checkpoints are intact: start '
          'every process again to resume', file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


if __name__ == '__main__':
  cli.run(main)
