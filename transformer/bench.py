"""Time the jitted train step of a config.

  python -m transformer.bench [--config=configs/FILE.py[:PRESET]] [--json] [--data=false]

Prints tokens/s, step time (median of several windows after warm-up), compile time, MFU,
memory and the input pipeline's time per batch; with --json, one JSON object with at least
tokens_per_sec, step_ms, compile_s, params, flops_per_token, mfu and device
(transformer/analysis/bench.py).
"""

import json

from absl import flags

from transformer import cli
from transformer.analysis import bench


def define_flags():
  flags.DEFINE_bool('json', False, 'print one JSON object')
  flags.DEFINE_integer('windows', 5, 'timed windows (the median is reported)', lower_bound=1)
  flags.DEFINE_integer('steps', 5, 'steps per window', lower_bound=1)
  flags.DEFINE_integer('warmup', 2, 'untimed steps after compilation', lower_bound=0)
  flags.DEFINE_bool('data', True, 'also time the input pipeline (data_ms)')
  flags.DEFINE_integer('data_batches', 20, 'batches timed for data_ms', lower_bound=1)


def _gib(n: int | None) -> str:
  return 'n/a' if n is None else f'{n / 2**30:.2f} GiB'


def print_result(result: dict):
  mesh = ' x '.join(f'{k} {v}' for k, v in result['mesh'].items())
  print(f'{result["family"]} ({result["task"]}), batch {result["batch_size"]} x '
        f'{result["seq_len"]}, {result["params"]:,} parameters, on {result["num_devices"]} '
        f'{result["device"]} ({result["parallel"]}: {mesh})')
  print(f'step {result["step_ms"]:.1f} ms (median of {result["windows"]} windows of '
        f'{result["steps_per_window"]}; {result["step_ms_min"]:.1f}-'
        f'{result["step_ms_max"]:.1f}), compile {result["compile_s"]:.1f} s'
        + (' (persistent cache)' if result['compile_cache_hit'] else ''))
  print(f'{result["tokens_per_sec"]:,.0f} tokens/s, MFU {result["mfu"]:.1%} of a '
        f'{result["peak_flops"] / 1e9:,.0f} GFLOP/s peak')
  print(f'memory: step peak {_gib(result["step_peak_bytes"])} (temporaries '
        f'{_gib(result["step_temp_bytes"])}), device peak {_gib(result["device_peak_bytes"])}, '
        f'host RSS {_gib(result["host_peak_rss_bytes"])}')
  if result.get('data_ms') is not None:
    share = result['data_ms'] / result['step_ms']
    print(f'data: {result["data_ms"]:.1f} ms per batch ({share:.1%} of a step, overlapped by '
          'prefetching)')
  elif 'data_error' in result:
    print(f'data: not timed ({result["data_error"]})')


def main(config, argv):
  f = flags.FLAGS
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  cli.enable_compilation_cache()
  result = bench.run_bench(config, windows=f.windows, steps=f.steps, warmup=f.warmup,
                           data_batches=f.data_batches if f.data else 0)
  if f.json:
    print(json.dumps(result))
  else:
    print_result(result)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
