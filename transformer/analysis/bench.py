"""Timing a config's jitted train step, as a library (`python -m transformer.bench` prints it).

Batches are random tokens of the configured shape, so the step is timed alone. Compilation is
timed separately (`compile_cache_hit`: it came from the persistent compilation cache); after
warm-up steps, the step time is the median over several windows. MFU is FLOPs per token
(PaLM's 6N + 12LHQT) times tokens/s over the devices' peak (transformer/model/counting.py).

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
import resource
import statistics
import time
from typing import Any

import jax
import numpy as np

from transformer.config import Experiment
from transformer.data import pipeline
from transformer.errors import first_line
from transformer.model import counting
from transformer.training import loop, step as steps


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

  experiment: Experiment
  par: Any
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
  """Builds, compiles (timed) and runs once the train step of an experiment (an `Experiment`,
  or a ConfigDict validated here) on its mesh."""
  experiment = loop.validate(config, len(devices or jax.devices()))
  cfg, task = experiment.model, experiment.task
  par, _ = steps.make_parallel(experiment, devices)
  state = par.init(jax.random.key(0))
  batch = random_batch(cfg, task, experiment.data.batch_size, experiment.data.seq_len)
  rng = jax.random.key(1)
  with _CacheHits() as hits:
    start = time.perf_counter()
    compiled = par.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - start
  prepared = PreparedStep(experiment, par, state, batch, rng, compile_s, hits.count > 0,
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


def time_data(experiment: Experiment, batches: int) -> dict:
  """Host milliseconds per batch of the configured training pipeline (drained after its
  prefetch buffer is emptied), or data_ms None and data_error."""
  try:
    tokenizer = pipeline.get_tokenizer(experiment)
    iterator = iter(pipeline.make_dataset(experiment, 'train', tokenizer))
    for _ in range(max(experiment.data.prefetch, 1) + 1):  # opening it, then its buffer
      next(iterator)
    seconds = _timed(lambda: [next(iterator) for _ in range(batches)])
    iterator.close()
  except Exception as e:  # a dataset that is not prepared, no network: say so, go on
    return dict(data_ms=None, data_error=f'{type(e).__name__}: {first_line(e)}')
  return dict(data_ms=1000 * seconds / batches)


def run_bench(config, devices: list | None = None, *, windows: int = 5, steps: int = 5,
              warmup: int = 2, data_batches: int = 0) -> dict:
  """Times the train step of an experiment on its mesh (`mesh.*`, `parallel`) over `devices`:
  `warmup` untimed steps, then `windows` windows of `steps` steps (the median is reported); with
  `data_batches`, the input pipeline too."""
  prepared = prepare(config, devices)
  experiment = prepared.experiment
  prepared.run(warmup)
  window_ms = [1000 * prepared.run(steps) / steps for _ in range(windows)]
  step_ms = statistics.median(window_ms)
  B, T = experiment.data.batch_size, experiment.data.seq_len
  cfg, par = experiment.model, prepared.par
  counts = counting.summarize(cfg, T)
  tokens_per_sec = B * T / (step_ms / 1000)
  devices = list(par.mesh.devices.flat)
  peak = counting.mesh_peak_flops(devices)
  result = dict(
      tokens_per_sec=tokens_per_sec, step_ms=step_ms, step_ms_min=min(window_ms),
      step_ms_max=max(window_ms), windows=windows, steps_per_window=steps,
      compile_s=prepared.compile_s, compile_cache_hit=prepared.compile_cache_hit,
      params=counts['params'], params_non_embedding=counts['params_non_embedding'],
      flops_per_token=counts['flops_per_token'],
      mfu=counts['flops_per_token'] * tokens_per_sec / peak, peak_flops=peak,
      device=devices[0].device_kind, platform=devices[0].platform, num_devices=len(devices),
      parallel=par.kind, mesh=dict(zip(par.mesh.axis_names, par.mesh.devices.shape)),
      batch_size=B, seq_len=T, family=cfg.family, task=experiment.task, dtype=cfg.dtype,
      attention_impl=cfg.attention_impl, remat=cfg.remat_policy if cfg.remat else 'none',
      scan_layers=cfg.scan_layers, **memory_report(prepared))
  if data_batches:
    result.update(time_data(experiment, data_batches))
  return result
