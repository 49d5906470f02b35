"""Compile time of the train step against depth, with and without `nn.scan`, and a restart.

  python experiments/perf/compile_depth.py [--depths=2,6,12,24] \
      [--config=configs/decoder_only.py:mini]

For each depth and layer layout, `python -m transformer.bench` runs in a fresh process with an
empty persistent compilation cache (a cold compile), then once more on the same cache (a
restart after preemption: the compiled step is loaded, not compiled). `compile_s` is the
lowering and compilation of the train step alone (bench's figure). Prints a Markdown table for
experiments/perf/RESULTS.md and the scan ratio deepest / shallowest.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def compile_seconds(config: str, depth: int, scan: bool, cache_dir: str,
                    extra: list[str]) -> tuple[float, bool]:
  command = [sys.executable, '-m', 'transformer.bench', f'--config={config}', '--json',
             '--windows=1', '--steps=1', '--warmup=0', '--data=false',
             f'--config.model.num_layers={depth}', f'--config.model.scan_layers={scan}', *extra]
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir)
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
  if result.returncode:
    raise SystemExit(f'depth {depth} scan={scan}: {result.stderr.strip().splitlines()[-1]}')
  info = json.loads(result.stdout.strip().splitlines()[-1])
  return info['compile_s'], info['compile_cache_hit']


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--depths', default='2,6,12,24')
  parser.add_argument('--config', default='configs/decoder_only.py:mini')
  parser.add_argument('bench_flags', nargs='*', help='more flags for transformer.bench')
  args = parser.parse_args()
  depths = [int(d) for d in args.depths.split(',')]
  rows = {}
  for depth in depths:
    for scan in (True, False):
      cache = tempfile.mkdtemp(prefix='compile-depth-')
      cold, _ = compile_seconds(args.config, depth, scan, cache, args.bench_flags)
      warm, hit = compile_seconds(args.config, depth, scan, cache, args.bench_flags)
      rows[depth, scan] = (cold, warm, hit)
      print(f'depth {depth:3d} scan={scan!s:5}: cold {cold:6.2f} s, restart {warm:5.2f} s'
            f'{" (cache hit)" if hit else " (NO cache hit)"}', file=sys.stderr, flush=True)
  print('| depth | scan: cold compile s | scan: restart s | unrolled: cold compile s | '
        'unrolled: restart s |')
  print('|---|---|---|---|---|')
  for depth in depths:
    (sc, sw, _), (uc, uw, _) = rows[depth, True], rows[depth, False]
    print(f'| {depth} | {sc:.2f} | {sw:.2f} | {uc:.2f} | {uw:.2f} |')
  first, last = depths[0], depths[-1]
  print(f'\nscan: depth {last} / depth {first} cold compile = '
        f'{rows[last, True][0] / rows[first, True][0]:.2f}x; unrolled: '
        f'{rows[last, False][0] / rows[first, False][0]:.2f}x')


if __name__ == '__main__':
  main()
