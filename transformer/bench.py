"""Time the jitted train step of a config.

  python -m transformer.bench [--config=configs/FILE.py[:PRESET]] [--json] [--data=false]

Batches are random tokens of the configured shape, so the step is timed alone. Compilation is
timed separately (`compile_cache_hit`: it came from the persistent compilation cache); after
warm-up steps, the step time is the median over several windows. MFU is FLOPs per token
(PaLM's 6N + 12LHQT, see scaling.py) times tokens/s over the device's peak: on CPU a large
float32 matmul measured in this process, on known accelerators the published dense bf16 peak.

Memory: `step_peak_bytes` is the compiled step's own peak (parameters, optimizer state, batch,
activations kept for the backward pass, temporaries: XLA's buffer assignment, on any device);
`device_peak_bytes` is what the device allocator saw (GPU and TPU only), `host_peak_rss_bytes`
the process's resident peak.

Data: `data_ms` is the host time the configured input pipeline takes to produce one batch
(read, tokenize, pack, batch), measured by draining it. Training overlaps it with the step (a
background thread prefetches `data.prefetch` batches), so it costs nothing while it stays below
`step_ms`; `data_ms` is null, with `data_error`, where the dataset cannot be opened.
"""

import dataclasses
import functools
import json
import resource
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from transformer import cli, losses, scaling

_JSON = flags.DEFINE_bool('json', False, 'print one JSON object')
_WINDOWS = flags.DEFINE_integer('windows', 5, 'timed windows (the median is reported)')
_STEPS = flags.DEFINE_integer('steps', 5, 'steps per window')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'untimed steps after compilation')
_DATA = flags.DEFINE_bool('data', True, 'also time the input pipeline (data_ms)')
_DATA_BATCHES = flags.DEFINE_integer('data_batches', 20, 'batches timed for data_ms')

# Published dense bf16 peaks (FLOP/s), matched against `device.device_kind`.
ACCELERATOR_PEAKS = (
    ('H100 PCIe', 756e12), ('H100', 989e12), ('H200', 989e12), ('B200', 2250e12),
    ('A100', 312e12), ('L4', 121e12), ('A10', 125e12), ('V100', 125e12),
    ('TPU v6', 918e12), ('TPU v5 lite', 197e12), ('TPU v5e', 197e12), ('TPU v5', 459e12),
    ('TPU v4', 275e12), ('TPU v3', 123e12),
)


@functools.lru_cache(maxsize=None)
def peak_flops(device: jax.Device | None = None) -> float:
  """Peak FLOP/s of a device: published for known accelerators, measured on CPU."""
  device = device or jax.local_devices()[0]
  if device.platform != 'cpu':
    for name, peak in ACCELERATOR_PEAKS:
      if name.lower() in device.device_kind.lower():
        return peak
  return measure_matmul_flops(device)


def mesh_peak_flops(devices: list) -> float:
  """Peak FLOP/s of a set of devices. Simulated CPU devices share one CPU: its peak counts
  once."""
  if devices[0].platform == 'cpu':
    return peak_flops(jax.local_devices()[0])
  return peak_flops(devices[0]) * len(devices)


def measure_matmul_flops(device: jax.Device, n: int = 2048, repeats: int = 8) -> float:
  """Best FLOP/s of an n x n float32 matmul (bf16 on accelerators) on `device`."""
  dtype = jnp.float32 if device.platform == 'cpu' else jnp.bfloat16
  a = jax.device_put(jnp.ones((n, n), dtype), device)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = min(_timed(lambda: matmul(a).block_until_ready()) for _ in range(repeats))
  return 2 * n ** 3 / best


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def random_batch(cfg, task: str, batch_size: int, seq_len: int, seed: int = 0) -> dict:
  """A batch of the task's keys and shapes: random tokens, one document per row."""
  rng = np.random.default_rng(seed)
  tokens = lambda: rng.integers(0, cfg.vocab_size, (batch_size, seq_len), dtype=np.int32)
  ones = np.ones((batch_size, seq_len), np.int32)
  positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len))
  if task == 'classify':
    return {'inputs': tokens(), 'segment_ids': ones, 'positions': positions,
            'label': rng.integers(0, cfg.num_classes, batch_size, dtype=np.int32),
            'weights': np.ones(batch_size, np.float32)}
  batch = {'inputs': tokens(), 'targets': tokens(), 'weights': ones.astype(np.float32)}
  if task == 'seq2seq':
    return dict(batch, decoder_inputs=tokens(), inputs_segment_ids=ones,
                targets_segment_ids=ones, inputs_positions=positions,
                targets_positions=positions)
  return dict(batch, segment_ids=ones, positions=positions)


class _CacheHits:
  """Counts persistent-compilation-cache hits while active."""

  def __init__(self):
    self.count = 0

  def __call__(self, event: str, **kwargs):
    if event == '/jax/compilation_cache/cache_hits':
      self.count += 1

  def __enter__(self):
    jax.monitoring.register_event_listener(self)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_listener(self)


@dataclasses.dataclass
class PreparedStep:
  """A config's compiled train step, its state and a random batch: `run(n)` times n steps.
  Steps include putting the host batch on the devices, as in training."""

  par: Any
  cfg: Any
  task: str
  state: Any
  batch: dict
  rng: jax.Array
  compile_s: float
  compile_cache_hit: bool
  memory: Any  # the compiled step's CompiledMemoryStats

  def run(self, steps: int) -> float:
    start = time.perf_counter()
    metrics = None
    for _ in range(steps):
      self.state, metrics = self.par.step(self.state, self.batch, self.rng)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start


def prepare(config, devices: list | None = None) -> PreparedStep:
  """Builds, compiles (timed) and runs once the train step of `config` on its mesh."""
  from transformer import train
  cfg = train.check_train_config(config)
  task = losses.task_of_model(cfg)
  par, _ = train.make_parallel(config, cfg, task, devices)
  state = par.init(jax.random.key(0))
  batch = random_batch(cfg, task, config.data.batch_size, config.data.seq_len)
  rng = jax.random.key(1)
  with _CacheHits() as hits:
    start = time.perf_counter()
    compiled = par.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - start
  prepared = PreparedStep(par, cfg, task, state, batch, rng, compile_s, hits.count > 0,
                          compiled.memory_analysis())
  del compiled
  prepared.run(1)  # the jitted step's own first call: from the in-memory or persistent cache
  return prepared


def memory_report(prepared: PreparedStep) -> dict:
  """Peak bytes of the compiled step, of the device allocator and of the process."""
  stats = prepared.memory
  device = prepared.par.mesh.devices.flat[0]
  device_stats = device.memory_stats() if device.platform != 'cpu' else None
  return dict(
      step_peak_bytes=(stats.argument_size_in_bytes + stats.output_size_in_bytes
                       - stats.alias_size_in_bytes + stats.temp_size_in_bytes),
      step_temp_bytes=stats.temp_size_in_bytes,
      step_argument_bytes=stats.argument_size_in_bytes,
      device_peak_bytes=(device_stats or {}).get('peak_bytes_in_use'),
      host_peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def time_data(config, batches: int) -> dict:
  """Host milliseconds per batch of the configured training pipeline (drained after its
  prefetch buffer is emptied), or data_ms None and data_error."""
  from transformer.data import pipeline
  try:
    config = config.copy_and_resolve_references()
    tokenizer = pipeline.get_tokenizer(config)
    iterator = iter(pipeline.make_dataset(config, 'train', tokenizer))
    for _ in range(max(config.data.prefetch, 1) + 1):  # opening it, then its buffer
      next(iterator)
    seconds = _timed(lambda: [next(iterator) for _ in range(batches)])
    iterator.close()
  except Exception as e:  # a dataset that is not prepared, no network: say so, go on
    return dict(data_ms=None, data_error=f'{type(e).__name__}: {cli.last_line(e)}')
  return dict(data_ms=1000 * seconds / batches)


def run_bench(config, devices: list | None = None, data: bool = False) -> dict:
  """Times the train step of `config` on its mesh (`mesh.*`, `parallel`) over `devices`;
  with `data`, the input pipeline too."""
  prepared = prepare(config, devices)
  prepared.run(_WARMUP.value)
  window_ms = [1000 * prepared.run(_STEPS.value) / _STEPS.value for _ in range(_WINDOWS.value)]
  step_ms = statistics.median(window_ms)
  B, T = config.data.batch_size, config.data.seq_len
  cfg, par = prepared.cfg, prepared.par
  counts = scaling.summarize(cfg, T)
  tokens_per_sec = B * T / (step_ms / 1000)
  devices = list(par.mesh.devices.flat)
  peak = mesh_peak_flops(devices)
  result = dict(
      tokens_per_sec=tokens_per_sec, step_ms=step_ms, step_ms_min=min(window_ms),
      step_ms_max=max(window_ms), compile_s=prepared.compile_s,
      compile_cache_hit=prepared.compile_cache_hit,
      params=counts['params'], params_non_embedding=counts['params_non_embedding'],
      flops_per_token=counts['flops_per_token'],
      mfu=counts['flops_per_token'] * tokens_per_sec / peak, peak_flops=peak,
      device=devices[0].device_kind, platform=devices[0].platform, num_devices=len(devices),
      parallel=par.kind, mesh=dict(zip(par.mesh.axis_names, par.mesh.devices.shape)),
      batch_size=B, seq_len=T, family=cfg.family, task=prepared.task, dtype=cfg.dtype,
      attention_impl=cfg.attention_impl, remat=cfg.remat_policy if cfg.remat else 'none',
      scan_layers=cfg.scan_layers, **memory_report(prepared))
  if data:
    result.update(time_data(config, _DATA_BATCHES.value))
  return result


def _gib(n: int | None) -> str:
  return 'n/a' if n is None else f'{n / 2**30:.2f} GiB'


def main(config, argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  cli.enable_compilation_cache()
  result = run_bench(config, data=_DATA.value)
  if _JSON.value:
    print(json.dumps(result))
    return
  mesh = ' x '.join(f'{k} {v}' for k, v in result['mesh'].items())
  print(f'{result["family"]} ({result["task"]}), batch {result["batch_size"]} x '
        f'{result["seq_len"]}, {result["params"]:,} parameters, on {result["num_devices"]} '
        f'{result["device"]} ({result["parallel"]}: {mesh})')
  print(f'step {result["step_ms"]:.1f} ms (median of {_WINDOWS.value} windows of '
        f'{_STEPS.value}; {result["step_ms_min"]:.1f}-{result["step_ms_max"]:.1f}), '
        f'compile {result["compile_s"]:.1f} s'
        + (' (persistent cache)' if result['compile_cache_hit'] else ''))
  print(f'{result["tokens_per_sec"]:,.0f} tokens/s, MFU {result["mfu"]:.1%} of a '
        f'{result["peak_flops"] / 1e9:,.0f} GFLOP/s peak')
  print(f'memory: step peak {_gib(result["step_peak_bytes"])} (temporaries '
        f'{_gib(result["step_temp_bytes"])}), device peak {_gib(result["device_peak_bytes"])}, '
        f'host RSS {_gib(result["host_peak_rss_bytes"])}')
  if result.get('data_ms') is not None:
    print(f'data: {result["data_ms"]:.1f} ms per batch ({result["data_ms"] / result["step_ms"]:.1%}'
          ' of a step, overlapped by prefetching)')
  elif 'data_error' in result:
    print(f'data: not timed ({result["data_error"]})')


if __name__ == '__main__':
  cli.run(main)
