"""Compile time and step time of each mesh layout on simulated CPU devices.

  python experiments/perf/mesh_layouts.py [--devices=8] [--config=configs/default.py] \
      [-- BENCH_FLAGS]

Runs `python -m transformer.bench --json` once per layout, each in a fresh process with
`JAX_NUM_CPU_DEVICES` set and no persistent compilation cache (compile times are cold), and
prints a Markdown table for experiments/perf/RESULTS.md. Simulated devices share this machine's
cores: the numbers show what partitioning costs (collectives, resharding, compile time), not a
speed-up.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (name, parallel, data, fsdp, tensor); the one-device row runs with JAX_NUM_CPU_DEVICES=1.
LAYOUTS = [
    ('1 device', 'jit', 1, 1, 1),
    ('pmap x8', 'pmap', -1, 1, 1),
    ('jit 8x1x1', 'jit', 8, 1, 1),
    ('jit 2x4x1', 'jit', 2, 4, 1),
    ('jit 2x2x2', 'jit', 2, 2, 2),
    ('jit 1x8x1', 'jit', 1, 8, 1),
    ('jit 2x1x4', 'jit', 2, 1, 4),
]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--devices', type=int, default=8)
  parser.add_argument('--config', default='configs/default.py')
  parser.add_argument('bench_flags', nargs='*', help='more flags for transformer.bench')
  args = parser.parse_args()
  rows = []
  for name, parallel, data, fsdp, tensor in LAYOUTS:
    devices = 1 if name == '1 device' else args.devices
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices),
               JAX_COMPILATION_CACHE_DIR=tempfile.mkdtemp(prefix='mesh-bench-'))
    command = [sys.executable, '-m', 'transformer.bench', f'--config={args.config}', '--json',
               f'--config.parallel={parallel}', f'--config.mesh.data={data}',
               f'--config.mesh.fsdp={fsdp}', f'--config.mesh.tensor={tensor}',
               *args.bench_flags]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
      print(f'{name}: failed: {result.stderr.strip().splitlines()[-1]}', file=sys.stderr)
      continue
    info = json.loads(result.stdout.strip().splitlines()[-1])
    rows.append((name, info))
    print(f'{name}: {info["step_ms"]:.0f} ms/step, compile {info["compile_s"]:.1f} s',
          file=sys.stderr, flush=True)
  print('| layout | compile s | step ms (median; min-max) | tokens/s |')
  print('|---|---|---|---|')
  for name, info in rows:
    print(f'| {name} | {info["compile_s"]:.1f} | {info["step_ms"]:.0f} '
          f'({info["step_ms_min"]:.0f}-{info["step_ms_max"]:.0f}) | '
          f'{info["tokens_per_sec"]:,.0f} |')


if __name__ == '__main__':
  main()
