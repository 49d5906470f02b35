"""The train step's matmuls, alone: GFLOP/s per shape in JAX (XLA:CPU), PyTorch and NumPy.

  python experiments/perf/gemm_shapes.py [--config=gpt2|wide] [--reps=30]

Which side of experiments/perf/compare_pytorch.py is faster depends mostly on the CPU's matmul
libraries (PyTorch's MKL, XLA:CPU's YNNPACK and Eigen, NumPy's OpenBLAS), not on the model
code: this times the forward, input-gradient (dX = dY W^T) and weight-gradient (dW = X^T dY)
GEMMs of each dense layer of the config at its token count, one attention batched matmul
(Q K^T over batch x heads) and a 2048^2 square, each framework in a fresh process with 2
threads. Each figure is FLOPs over the 25th-percentile time of `--reps` calls.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from compare_pytorch import CONFIGS  # the same configs, beside this file

FRAMEWORKS = ('jax', 'torch', 'numpy')


def shapes(c: dict) -> list[tuple[str, tuple, str]]:
  """(name, dims, layout): C[m, n] = A B for dims (m, k, n), with A stored (m, k) or (k, m)
  (layout's first letter n or t) and B stored (k, n) or (n, k); layout 'batched' is Q K^T with
  dims (batch x heads, T, head_dim, S)."""
  batch, seq, heads = c['data.batch_size'], c['data.seq_len'], c['model.num_heads']
  t, d, ff = batch * seq, c['model.d_model'], c['model.d_ff']
  out = []
  for layer, (fan_in, fan_out) in (('qkv', (d, 3 * d)), ('out', (d, d)), ('up', (d, ff)),
                                   ('down', (ff, d))):
    out += [(f'{layer} forward', (t, fan_in, fan_out), 'nn'),
            (f'{layer} dX', (t, fan_out, fan_in), 'nt'),
            (f'{layer} dW', (fan_in, t, fan_out), 'tn')]
  out.append(('attention Q K^T', (batch * heads, seq, d // heads, seq), 'batched'))
  out.append(('square 2048', (2048, 2048, 2048), 'nn'))
  return out


def _operands(dims: tuple, layout: str, rng) -> tuple[np.ndarray, np.ndarray, float, str]:
  """The two stored operands, the product's FLOPs and its einsum."""
  normal = lambda *shape: rng.standard_normal(shape, np.float32)  # noqa: E731
  if layout == 'batched':
    b, t, k, s = dims
    return normal(b, t, k), normal(b, s, k), 2.0 * b * t * k * s, 'btk,bsk->bts'
  m, k, n = dims
  a = normal(k, m) if layout[0] == 't' else normal(m, k)
  b = normal(n, k) if layout[1] == 't' else normal(k, n)
  spec = f'{"km" if layout[0] == "t" else "mk"},{"nk" if layout[1] == "t" else "kn"}->mn'
  return a, b, 2.0 * m * k * n, spec


def worker(framework: str, config: str, reps: int) -> dict[str, float]:
  rng = np.random.default_rng(0)
  if framework == 'jax':
    import jax
    import jax.numpy as jnp

    def make(a, b, spec):
      f = jax.jit(lambda x, y: jnp.einsum(spec, x, y))
      a, b = jnp.asarray(a), jnp.asarray(b)
      return lambda: f(a, b).block_until_ready()
  elif framework == 'torch':
    import torch
    torch.set_num_threads(2)

    def make(a, b, spec):
      a, b = torch.from_numpy(a), torch.from_numpy(b)
      return lambda: torch.einsum(spec, a, b)  # a strided view: MKL's transposed GEMM
  else:
    def make(a, b, spec):
      return lambda: np.einsum(spec, a, b, optimize=True)  # a BLAS call
  result = {}
  for name, dims, layout in shapes(CONFIGS[config]):
    a, b, flops, spec = _operands(dims, layout, rng)
    call = make(a, b, spec)
    call(), call()
    times = []
    for _ in range(reps):
      start = time.perf_counter()
      call()
      times.append(time.perf_counter() - start)
    result[name] = flops / sorted(times)[len(times) // 4] / 1e9
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', choices=sorted(CONFIGS), default='gpt2')
  parser.add_argument('--reps', type=int, default=30)
  parser.add_argument('--worker', choices=FRAMEWORKS, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(args.worker, args.config, args.reps)))
    return
  results = {}
  for framework in FRAMEWORKS:
    run = subprocess.run([sys.executable, os.path.abspath(__file__), f'--worker={framework}',
                          f'--config={args.config}', f'--reps={args.reps}'],
                         capture_output=True, text=True)
    if run.returncode:
      print(f'{framework}: failed: {(run.stderr.strip().splitlines() or ["?"])[-1]}',
            file=sys.stderr)
      continue
    results[framework] = json.loads(run.stdout.strip().splitlines()[-1])
  print(f'{args.config}: GFLOP/s per matmul (2 threads)')
  print(f'| matmul | dims, layout | {" | ".join(results)} |')
  print(f'|---|---|{"---|" * len(results)}')
  for name, dims, layout in shapes(CONFIGS[args.config]):
    row = ' | '.join(f'{results[f][name]:.0f}' for f in results)
    print(f'| {name} | {"x".join(map(str, dims))} {layout} | {row} |')


if __name__ == '__main__':
  main()
