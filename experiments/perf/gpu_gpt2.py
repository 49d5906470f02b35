"""gpt2-small on one GPU: tokens/s, MFU and memory of each attention path, dtype and remat.

  python experiments/perf/gpu_gpt2.py [--batch=16] [--seq_len=1024] [-- BENCH_FLAGS]

Runs `python -m transformer.bench --json` once per variant of configs/decoder_only.py:gpt2-small
(124M parameters, sequence 1024, dropout 0), each in a fresh process, and prints a Markdown
table for experiments/perf/RESULTS.md with the device name. MFU is against the device's
published dense bf16 peak (ACCELERATOR_PEAKS in transformer/model/counting.py). The target is
>= 45% MFU on an H100 with cuDNN attention and bfloat16 compute (nanoGPT reports ~37% on an
A100 for this model).
The vocabulary is padded to 50304 (a multiple of 128, as nanoGPT does): the extra 47 rows are
never a target and the matmul tiles evenly.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = [  # (name, overrides)
    ('einsum, float32', dict(attention_impl='einsum', dtype='float32')),
    ('einsum, bfloat16', dict(attention_impl='einsum', dtype='bfloat16')),
    ('xla, bfloat16', dict(attention_impl='xla', dtype='bfloat16')),
    ('cudnn, bfloat16', dict(attention_impl='cudnn', dtype='bfloat16')),
    ('cudnn, bfloat16, scan', dict(attention_impl='cudnn', dtype='bfloat16', scan_layers=True)),
    ('cudnn, bfloat16, remat dots_no_batch', dict(attention_impl='cudnn', dtype='bfloat16',
                                                  remat=True, remat_policy='dots_no_batch')),
    ('cudnn, bfloat16, remat full', dict(attention_impl='cudnn', dtype='bfloat16', remat=True,
                                         remat_policy='full')),
]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--seq_len', type=int, default=1024)
  parser.add_argument('--only', default='', help='comma-separated variant numbers (0-based)')
  parser.add_argument('bench_flags', nargs='*', help='more flags for transformer.bench')
  args = parser.parse_args()
  chosen = [VARIANTS[int(i)] for i in args.only.split(',')] if args.only else VARIANTS
  rows = []
  for name, overrides in chosen:
    command = [sys.executable, '-m', 'transformer.bench',
               '--config=configs/decoder_only.py:gpt2-small', '--json', '--data=false',
               '--windows=5', '--steps=10', f'--config.data.batch_size={args.batch}',
               f'--config.data.seq_len={args.seq_len}', '--config.model.dropout=0.0',
               '--config.model.vocab_size=50304',
               *[f'--config.model.{k}={v}' for k, v in overrides.items()], *args.bench_flags]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
      last = (result.stderr.strip().splitlines() or ['?'])[-1]
      print(f'{name}: failed: {last}', file=sys.stderr, flush=True)
      rows.append((name, None))
      continue
    info = json.loads(result.stdout.strip().splitlines()[-1])
    rows.append((name, info))
    print(f'{name}: {info["tokens_per_sec"]:,.0f} tokens/s, MFU {info["mfu"]:.1%}',
          file=sys.stderr, flush=True)
  device = next((info['device'] for _, info in rows if info), 'unknown')
  print(f'device: {device}; gpt2-small, batch {args.batch} x {args.seq_len}')
  print('| variant | tokens/s | step ms (min-max) | MFU | compile s | step peak GiB | '
        'device peak GiB |')
  print('|---|---|---|---|---|---|---|')
  for name, info in rows:
    if info is None:
      print(f'| {name} | failed | | | | | |')
      continue
    device_peak = info['device_peak_bytes']
    print(f'| {name} | {info["tokens_per_sec"]:,.0f} | {info["step_ms"]:.1f} '
          f'({info["step_ms_min"]:.1f}-{info["step_ms_max"]:.1f}) | {info["mfu"]:.1%} | '
          f'{info["compile_s"]:.1f} | {info["step_peak_bytes"] / 2**30:.2f} | '
          f'{"n/a" if device_peak is None else f"{device_peak / 2**30:.2f}"} |')


if __name__ == '__main__':
  main()
