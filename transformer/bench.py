"""Time the jitted train step of a config.

  python -m transformer.bench [--config=configs/FILE.py[:PRESET]] [--json]

Batches are random tokens of the configured shape (no dataset needed). Compilation is timed
separately; after warm-up steps, the step time is the median over several windows. MFU is
FLOPs per token (PaLM's 6N + 12LHQT, see scaling.py) times tokens/s over the device's peak:
on CPU a large float32 matmul measured in this process, on known accelerators the published
dense bf16 peak.
"""

import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from transformer import cli, losses, scaling

_JSON = flags.DEFINE_bool('json', False, 'print one JSON object')
_WINDOWS = flags.DEFINE_integer('windows', 5, 'timed windows (the median is reported)')
_STEPS = flags.DEFINE_integer('steps', 5, 'steps per window')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'untimed steps after compilation')

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


def run_bench(config, devices: list | None = None) -> dict:
  """Times the train step of `config` on its mesh (`mesh.*`, `parallel`) over `devices`."""
  from transformer import train
  cfg = train.check_train_config(config)
  task = losses.task_of_model(cfg)
  B, T = config.data.batch_size, config.data.seq_len
  par, _ = train.make_parallel(config, cfg, task, devices)
  state = par.init(jax.random.key(0))
  batch = random_batch(cfg, task, B, T)
  rng = jax.random.key(1)

  # The first step compiles; compile_s is its time less a steady step's. Steps include putting
  # the host batch on the devices, as in training.
  start = time.perf_counter()
  state, metrics = par.step(state, batch, rng)
  jax.block_until_ready(metrics)
  first_s = time.perf_counter() - start
  for _ in range(_WARMUP.value):
    state, metrics = par.step(state, batch, rng)
  jax.block_until_ready(metrics)
  window_ms = []
  for _ in range(_WINDOWS.value):
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      state, metrics = par.step(state, batch, rng)
    jax.block_until_ready(metrics)
    window_ms.append(1000 * (time.perf_counter() - start) / _STEPS.value)
  step_ms = statistics.median(window_ms)
  counts = scaling.summarize(cfg, T)
  tokens_per_sec = B * T / (step_ms / 1000)
  devices = list(par.mesh.devices.flat)
  peak = mesh_peak_flops(devices)
  return dict(
      tokens_per_sec=tokens_per_sec, step_ms=step_ms, step_ms_min=min(window_ms),
      step_ms_max=max(window_ms), compile_s=max(first_s - step_ms / 1000, 0.0),
      params=counts['params'], params_non_embedding=counts['params_non_embedding'],
      flops_per_token=counts['flops_per_token'],
      mfu=counts['flops_per_token'] * tokens_per_sec / peak, peak_flops=peak,
      device=devices[0].device_kind, platform=devices[0].platform, num_devices=len(devices),
      parallel=par.kind, mesh=dict(zip(par.mesh.axis_names, par.mesh.devices.shape)),
      batch_size=B, seq_len=T, family=cfg.family, task=task, dtype=cfg.dtype)


def main(config, argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  cli.enable_compilation_cache()
  result = run_bench(config)
  if _JSON.value:
    print(json.dumps(result))
    return
  mesh = ' x '.join(f'{k} {v}' for k, v in result['mesh'].items())
  print(f'{result["family"]} ({result["task"]}), batch {result["batch_size"]} x '
        f'{result["seq_len"]}, {result["params"]:,} parameters, on {result["num_devices"]} '
        f'{result["device"]} ({result["parallel"]}: {mesh})')
  print(f'step {result["step_ms"]:.1f} ms (median of {_WINDOWS.value} windows of '
        f'{_STEPS.value}; {result["step_ms_min"]:.1f}-{result["step_ms_max"]:.1f}), '
        f'compile {result["compile_s"]:.1f} s')
  print(f'{result["tokens_per_sec"]:,.0f} tokens/s, MFU {result["mfu"]:.1%} of a '
        f'{result["peak_flops"] / 1e9:,.0f} GFLOP/s peak')


if __name__ == '__main__':
  cli.run(main)
