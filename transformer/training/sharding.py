"""Devices: the mesh, logical axis rules, sharded train states and batches, pmap, many hosts.

One pure `step.train_step` runs everywhere; this module only decides where its arrays live.

  jit (the main path)  a device mesh with three named axes, sized by the config:
                         mesh.data    data parallelism: each group of devices sees its own
                                      slice of the global batch and holds whole replicas;
                         mesh.fsdp    data parallelism that also shards parameters and optimizer
                                      state over the model width ('embed'), gathered for each
                                      layer's use (ZeRO-3 / FSDP);
                         mesh.tensor  tensor parallelism (Megatron): attention heads, the
                                      feed-forward width and the vocabulary are split.
                       -1 takes the remaining devices. Modules name the axes of every parameter
                       and activation ('batch', 'embed', 'heads', 'mlp', ...); RULES maps them to
                       mesh axes. The train state is created sharded (`jax.eval_shape`, then
                       `jax.jit(init, out_shardings=...)`), batches are split over data x fsdp,
                       and the step is jitted with those shardings and the state donated.
  pmap                 data parallelism over the local devices with the same step, gradients
                       summed with `psum` (`train_step(..., axis_name=...)`), for pmap-era
                       setups. The mesh fields must then be 1 (fsdp, tensor) and -1 (data).

Many hosts: `initialize_distributed` (one process per host, before any other JAX call), then
every process runs the same program; each reads its own shard of the data, and the global
batch is assembled with `jax.make_array_from_process_local_data`.
"""

import dataclasses
import functools
import json
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from transformer.config import MESH_AXES, Experiment, ModelConfig
from transformer.errors import ConfigError
from transformer.model import models

BATCH_AXES = ('data', 'fsdp')  # the batch dimension is split over both

# Logical axis -> mesh axes. An activation's 'embed' stays whole: its batch already uses fsdp,
# and flax gives each mesh axis to the first logical axis that asks for it.
RULES = (
    ('batch', BATCH_AXES),
    ('vocab', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('mlp', 'tensor'),
    ('embed', 'fsdp'),
    ('length', None),
    ('head_dim', None),
    ('hidden', None),
    ('layers', None),
    ('types', None),
    ('positions', None),
)


# --- the mesh ------------------------------------------------------------------------------------


def mesh_shape(experiment: Experiment, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) of an experiment on `num_devices`, validated; -1 takes the rest
  (`MeshConfig` has checked each field alone)."""
  mesh = experiment.mesh
  sizes = {name: getattr(mesh, name) for name in MESH_AXES}
  free = [name for name in MESH_AXES if sizes[name] == -1]
  fixed = int(np.prod([v for v in sizes.values() if v != -1]))
  described = ' x '.join(f'mesh.{n}={sizes[n]}' for n in MESH_AXES)
  if free:
    if num_devices % fixed:
      raise ConfigError(f'{described} is invalid: {num_devices} devices are not divisible by '
                        f'the fixed fields\' product {fixed}')
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ConfigError(f'{described} is invalid: the product is {fixed} but there are '
                      f'{num_devices} devices; make the product {num_devices} or set one '
                      'field to -1')
  shape = tuple(sizes[n] for n in MESH_AXES)
  _check_divisible(experiment, shape)
  return shape


def _check_divisible(experiment: Experiment, shape: tuple[int, int, int]):
  cfg, batch_size = experiment.model, experiment.data.batch_size
  accum = experiment.train.grad_accum_steps
  data, fsdp, tensor = shape
  if tensor > 1:
    for field, value in (('num_heads', cfg.num_heads), ('num_kv_heads', cfg.num_kv_heads),
                         ('d_ff', cfg.d_ff)):
      if value % tensor:
        raise ConfigError(f'model.{field}={value} is invalid: must be divisible by '
                          f'mesh.tensor={tensor} (the tensor-parallel devices split it)')
  if fsdp > 1 and cfg.d_model % fsdp:
    raise ConfigError(f'model.d_model={cfg.d_model} is invalid: must be divisible by '
                      f'mesh.fsdp={fsdp} (parameters are sharded over it)')
  replicas = data * fsdp
  micro = batch_size // accum
  if micro % replicas:
    what = ('data.batch_size' if accum == 1 else
            f'data.batch_size / train.grad_accum_steps = {micro}; data.batch_size')
    raise ConfigError(f'{what}={batch_size} is invalid: each (micro-)batch must be '
                      f'divisible by the data-parallel size mesh.data x mesh.fsdp = {replicas}')


def make_mesh(shape: tuple[int, ...], devices: list | None = None) -> jax.sharding.Mesh:
  """A ('data', 'fsdp', 'tensor') mesh. Axes are Auto: Linen layers do not support Explicit."""
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if devices is None:
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


# --- shardings -----------------------------------------------------------------------------------


def mesh_axes(logical: P, shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> P:
  """Mesh axes of an array with these logical axes. A dimension a mesh axis does not divide (a
  vocabulary of 50257 over 2 devices) stays whole rather than failing."""
  spec = list(nn.logical_to_mesh_axes(tuple(logical), RULES))
  spec += [None] * (len(shape) - len(spec))
  for i, axes in enumerate(spec):
    names = (axes,) if isinstance(axes, str) else axes or ()
    if shape[i] % int(np.prod([mesh.shape[a] for a in names], dtype=int)):
      spec[i] = None
  return P(*spec)


def param_shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh) -> Any:
  """NamedSharding of every parameter, from the logical axes the modules declare."""
  boxed = models.abstract_variables(cfg)['params']
  is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
  return jax.tree.map(
      lambda b: NamedSharding(mesh, mesh_axes(b.names, b.value.shape, mesh)), boxed,
      is_leaf=is_box)


def state_shardings(cfg: ModelConfig, tx: optax.GradientTransformation, abstract_state: Any,
                    mesh: jax.sharding.Mesh) -> Any:
  """Shardings of a train state (`.params`, `.opt_state`, anything else): optimizer moments
  follow their parameters; leaves of another shape (step counts, Adafactor's factored moments)
  and the rest of the state are replicated."""
  params = param_shardings(cfg, mesh)
  replicated = NamedSharding(mesh, P())
  param_shapes = jax.tree.map(lambda x: x.shape, abstract_state.params)

  def follow(leaf, sharding, shape):
    return sharding if getattr(leaf, 'shape', None) == shape else replicated

  opt_state = optax.tree_map_params(
      tx, follow, abstract_state.opt_state, params, param_shapes,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x))
  return jax.tree.map(lambda _: replicated, abstract_state).replace(
      params=params, opt_state=opt_state)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(host_batch: dict, sharding: NamedSharding) -> dict:
  """This host's rows -> the global batch, split over the batch axes of the mesh."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), host_batch)


# --- the two ways to run the step ----------------------------------------------------------------


@dataclasses.dataclass
class Parallel:
  """How a run places its state and batches, with the same interface for jit and pmap:

    init(rng) -> state             saveable(state) -> saved
    restore(saved) -> state        (saved: restored from a checkpoint, or host arrays)
    step(state, host_batch, rng) -> (state, metrics)            eval(state, host_batch) -> sums
    params(state) -> parameters usable by jitted code (decoding)
    lower(state, host_batch, rng) -> the lowered step (its HLO shows the shardings)

  `abstract` is the TrainState of ShapeDtypeStructs (with shardings) that checkpoints restore
  into: the same on every layout, so a checkpoint moves between meshes and device counts."""

  kind: str
  mesh: jax.sharding.Mesh
  abstract: Any
  init: Callable
  step: Callable
  eval: Callable
  restore: Callable
  saveable: Callable
  params: Callable
  lower: Callable


def make_parallel(experiment: Experiment, tx: optax.GradientTransformation,
                  init_fn: Callable, step_fn: Callable, eval_fn: Callable,
                  devices: list | None = None) -> Parallel:
  """The Parallel of `experiment.parallel` over `devices` (default: all devices of all hosts).

  init_fn(rng) -> state; step_fn(state, batch, rng, axis_name=None) -> (state, metrics) (the
  pure `step.train_step` with its options bound); eval_fn(params, batch) -> sums."""
  cfg = experiment.model
  devices = list(devices or jax.devices())
  shape = mesh_shape(experiment, len(devices))
  abstract_state = jax.eval_shape(init_fn, jax.random.key(0))
  subset = devices if len(devices) != jax.device_count() else None
  if experiment.parallel == 'pmap':
    return _pmap_parallel(abstract_state, devices, subset, init_fn, step_fn, eval_fn)

  mesh = make_mesh(shape, subset)
  shardings = state_shardings(cfg, tx, abstract_state, mesh)
  abstract = _with_shardings(abstract_state, shardings)
  replicated = NamedSharding(mesh, P())
  batch = batch_sharding(mesh)

  def in_mesh(fn):
    @functools.wraps(fn)
    def wrapped(*args):
      # Sharding constraints inside the model take effect only under both contexts.
      with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        return fn(*args)
    return wrapped

  init = jax.jit(init_fn, out_shardings=shardings)
  step = jax.jit(step_fn, in_shardings=(shardings, batch, replicated),
                 out_shardings=(shardings, replicated), donate_argnums=0)
  evaluate = jax.jit(eval_fn, in_shardings=(shardings.params, batch), out_shardings=replicated)
  return Parallel(
      kind='jit', mesh=mesh, abstract=abstract, init=in_mesh(init),
      step=in_mesh(lambda state, host_batch, rng: step(
          state, global_batch(host_batch, batch), rng)),
      eval=in_mesh(lambda state, host_batch: evaluate(
          state.params, global_batch(host_batch, batch))),
      restore=lambda saved: jax.device_put(saved, shardings), saveable=lambda state: state,
      params=lambda state: state.params,
      lower=in_mesh(lambda state, host_batch, rng: step.lower(
          state, global_batch(host_batch, batch), rng)))


def _local_value(x) -> np.ndarray:
  """A replicated array's value, read on this host (numpy arrays pass through)."""
  return np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)


def _with_shardings(abstract_state, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_state, shardings)


def _pmap_parallel(abstract_state, devices, subset, init_fn, step_fn, eval_fn) -> Parallel:
  """Data parallel over this host's devices with jax.pmap; checkpoints hold the state
  replicated over a mesh of all devices, exactly as a jit run with no sharding would."""
  local = [d for d in devices if d.process_index == jax.process_index()]
  n = len(local)
  mesh = make_mesh((len(devices), 1, 1), subset)
  replicated = NamedSharding(mesh, P())
  abstract = _with_shardings(abstract_state, jax.tree.map(lambda _: replicated, abstract_state))
  axis = 'devices'
  stacked = NamedSharding(jax.sharding.Mesh(np.asarray(local), (axis,)), P(axis))

  def replicate(tree):  # one copy per local device, as pmap expects
    return jax.tree.map(lambda x: jax.device_put(
        np.broadcast_to(np.asarray(x), (n, *np.shape(x))), stacked), tree)

  def first(tree):
    return jax.tree.map(lambda x: x[0], tree)

  def split(host_batch):  # (B, ...) -> (devices, B / devices, ...)
    return jax.tree.map(lambda x: np.asarray(x).reshape(n, -1, *np.shape(x)[1:]), host_batch)

  step = jax.pmap(functools.partial(step_fn, axis_name=axis), axis_name=axis,
                  in_axes=(0, 0, None), donate_argnums=0, devices=local)
  evaluate = jax.pmap(lambda params, batch: jax.lax.psum(eval_fn(params, batch), axis),
                      axis_name=axis, devices=local)

  def run_step(state, host_batch, rng):
    state, metrics = step(state, split(host_batch), rng)
    return state, first(metrics)

  def saveable(state):
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x[0])), state)

  def restore(saved):
    return replicate(jax.tree.map(_local_value, saved))

  return Parallel(
      kind='pmap', mesh=mesh, abstract=abstract,
      init=lambda rng: replicate(jax.device_get(jax.jit(init_fn)(rng))),
      step=run_step,
      eval=lambda state, host_batch: first(evaluate(state.params, split(host_batch))),
      restore=restore, saveable=saveable, params=lambda state: first(state.params),
      lower=lambda state, host_batch, rng: step.lower(state, split(host_batch), rng))


# --- many hosts ----------------------------------------------------------------------------------


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None,
                           mode: str = 'auto', heartbeat_timeout_s: int = 100):
  """`jax.distributed.initialize`, before any other JAX call, when the job has many processes.

  mode 'auto': with --coordinator_address (and --num_processes, --process_id) as given; under
  SLURM with more than one task (JAX reads the job's variables); on a Cloud TPU VM (JAX asks
  the TPU metadata server; a single-host slice is one process). 'on': always, letting JAX
  detect the cluster. 'off': never (one process)."""
  if mode == 'off':
    return
  explicit = coordinator_address is not None or num_processes is not None
  slurm = int(os.environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_JOB_ID' in os.environ
  tpu_vm = os.path.exists('/dev/accel0') or (os.path.isdir('/dev/vfio') and any(
      name.isdigit() for name in os.listdir('/dev/vfio')))
  if not (explicit or slurm or tpu_vm or mode == 'on'):
    return
  if explicit and (coordinator_address is None or num_processes is None or process_id is None):
    raise ConfigError('--coordinator_address, --num_processes and --process_id go together: '
                      f'got {coordinator_address!r}, {num_processes!r}, {process_id!r}')
  if explicit and not 0 <= process_id < num_processes:
    raise ConfigError(f'--process_id={process_id} is invalid: must be in [0, {num_processes})')
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             heartbeat_timeout_seconds=heartbeat_timeout_s)


def gather_host_states(state: dict) -> list[dict]:
  """Every process's JSON-able state (e.g. its data position), in process order."""
  if jax.process_count() == 1:
    return [state]
  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(state).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.int32(len(data)))
  padded = np.zeros(int(np.max(lengths)), np.uint8)
  padded[:len(data)] = data
  everyone = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(row[:length]).decode()) for row, length in zip(everyone, lengths)]


def any_process(flag: bool) -> bool:
  """True if `flag` is true on any process (every process must call it)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
