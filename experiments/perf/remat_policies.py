"""Memory and step time of each rematerialisation policy (`model.remat_policy`).

  python experiments/perf/remat_policies.py [--config=configs/decoder_only.py:mini] [-- BENCH_FLAGS]

Runs `python -m transformer.bench --json` once per setting (no remat, then remat with each
policy), unrolled and under `nn.scan`, each in a fresh process, and prints a Markdown table
for experiments/perf/RESULTS.md: the compiled step's peak memory (XLA's buffer assignment:
parameters, optimizer state, batch, saved activations, temporaries) and the step time.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = [('none', False, 'full'), ('full', True, 'full'), ('dots', True, 'dots'),
            ('dots_no_batch', True, 'dots_no_batch')]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/decoder_only.py:mini')
  parser.add_argument('bench_flags', nargs='*', help='more flags for transformer.bench')
  args = parser.parse_args()
  rows = []
  for scan in (False, True):
    for name, remat, policy in SETTINGS:
      command = [sys.executable, '-m', 'transformer.bench', f'--config={args.config}', '--json',
                 '--data=false', f'--config.model.remat={remat}',
                 f'--config.model.remat_policy={policy}', f'--config.model.scan_layers={scan}',
                 *args.bench_flags]
      result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
      if result.returncode:
        raise SystemExit(f'{name}: {result.stderr.strip().splitlines()[-1]}')
      info = json.loads(result.stdout.strip().splitlines()[-1])
      rows.append((scan, name, info))
      print(f'scan={scan} {name}: {info["step_peak_bytes"] / 2**20:.0f} MiB, '
            f'{info["step_ms"]:.0f} ms', file=sys.stderr, flush=True)
  base = {scan: info for scan, name, info in rows if name == 'none'}
  print('| layers | remat policy | step peak MiB | vs no remat | step ms (min-max) | vs no remat |')
  print('|---|---|---|---|---|---|')
  for scan, name, info in rows:
    b = base[scan]
    print(f'| {"scan" if scan else "unrolled"} | {name} | '
          f'{info["step_peak_bytes"] / 2**20:.0f} | '
          f'{info["step_peak_bytes"] / b["step_peak_bytes"]:.2f}x | {info["step_ms"]:.0f} '
          f'({info["step_ms_min"]:.0f}-{info["step_ms_max"]:.0f}) | '
          f'{info["step_ms"] / b["step_ms"]:.2f}x |')


if __name__ == '__main__':
  main()
