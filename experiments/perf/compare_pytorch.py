"""Our train step against Hugging Face's GPT-2 in PyTorch eager, measured in one run.

  pip install -e '.[perf]'     # torch==2.13.0 (a CPU build) and transformers
  python experiments/perf/compare_pytorch.py [--configs=gpt2,wide] [--rounds=7] [--steps=3]

Both sides train the same model on random tokens of the same shape: `transformer.bench`'s
prepared step (jit, AdamW, gradient clipping, cosine schedule) and `GPT2LMHeadModel` (PyTorch
eager, its default attention, torch.optim.AdamW with the same hyperparameters, clipping and
schedule). Their parameter counts must agree, or the run stops.

Each side runs in its own long-lived worker process; the driver alternates short timed windows
between them (A B B A ...), so both see the same machine, and reports the median of the
per-round ratios with their range. MFU is FLOPs per token (PaLM's 6N + 12LHQT, the same for
both) times tokens/s over one float32 matmul peak: the best 2048^2 matmul that JAX, PyTorch and
NumPy reach in this run, at its start and end.

Configs: gpt2 is GPT-2-style at 4 layers, 4 heads, d_model 256, sequence 256, byte vocabulary,
batch 8; wide is 2 layers, 12 heads, d_model 768, sequence 512, batch 4 (plain GEMMs dominate).
More JAX variants can run beside the default one, e.g.
`--jax='ynn_off:xla_flags=--xla_cpu_experimental_ynn_fusion_type='` or
`--jax='scan:model.scan_layers=True'` (LABEL:FIELD=VALUE,...; ratios are each against PyTorch).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGS = {  # decoder_only 'mini' (GPT-2 style, byte vocabulary) with these fields
    'gpt2': {'model.num_layers': 4, 'model.num_heads': 4, 'model.d_model': 256,
             'model.d_ff': 1024, 'data.seq_len': 256, 'data.batch_size': 8},
    'wide': {'model.num_layers': 2, 'model.num_heads': 12, 'model.d_model': 768,
             'model.d_ff': 3072, 'data.seq_len': 512, 'data.batch_size': 4},
}
MATMUL_N = 2048


# --- workers: one framework each, driven by lines on stdin ---------------------------------------


def _config(fields: dict):
  from transformer import presets
  config = presets.get_config('decoder_only', 'mini')
  for key, value in fields.items():
    section, name = key.split('.', 1)
    old = config[section][name]
    config[section][name] = (value in (True, 'True', 'true') if isinstance(old, bool)
                             else type(old)(value) if old is not None else value)
  return config


def _serve(info: dict, run_steps, matmul_peak):
  print(json.dumps({'ready': info}), flush=True)
  for line in sys.stdin:
    command, *args = line.split()
    if command == 'run':
      print(json.dumps({'seconds': run_steps(int(args[0]))}), flush=True)
    elif command == 'peak':
      print(json.dumps({'peak': matmul_peak()}), flush=True)
    else:
      return


def jax_worker(fields: dict, warmup: int):
  from transformer import cli
  cli.keep_freed_host_memory()  # as train and bench do (TRANSFORMER_MALLOC=system: neither side)
  import jax

  from transformer.analysis import bench
  from transformer.model import counting
  cli.enable_compilation_cache()
  config = _config(fields)
  prepared = bench.prepare(config)
  prepared.run(warmup)
  counts = counting.summarize(prepared.experiment.model, config.data.seq_len)
  info = dict(params=counts['params'], flops_per_token=counts['flops_per_token'],
              compile_s=prepared.compile_s, device=jax.devices()[0].device_kind,
              jax=jax.__version__)
  _serve(info, prepared.run,
         lambda: counting.measure_matmul_flops(jax.devices()[0], n=MATMUL_N))


def torch_worker(fields: dict, warmup: int):
  from transformer import cli
  cli.keep_freed_host_memory()  # the same host allocator setting for both sides
  import math

  import numpy as np
  import torch
  import transformers
  config = _config(fields)
  m, d, o = config.model, config.data, config.opt
  torch.manual_seed(0)
  hf_config = transformers.GPT2Config(
      vocab_size=m.vocab_size, n_positions=m.max_len, n_embd=m.d_model, n_layer=m.num_layers,
      n_head=m.num_heads, n_inner=m.d_ff, activation_function='gelu_new',  # tanh GELU, as ours
      resid_pdrop=m.dropout, embd_pdrop=m.dropout, attn_pdrop=m.attention_dropout,
      layer_norm_epsilon=m.norm_eps, tie_word_embeddings=m.tie_embeddings,
      bos_token_id=0, eos_token_id=0)
  model = transformers.GPT2LMHeadModel(hf_config)
  model.train()
  # Weight decay on weight matrices only, as opt.decay_all_params=False does for ours.
  decay = [p for n, p in model.named_parameters() if p.ndim == 2 and 'wte' not in n
           and 'wpe' not in n]
  no_decay = [p for p in model.parameters() if all(p is not q for q in decay)]
  optimizer = torch.optim.AdamW(
      [{'params': decay, 'weight_decay': o.weight_decay}, {'params': no_decay,
                                                           'weight_decay': 0.0}],
      lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, fused=True)
  total, warm = config.train.num_steps, o.warmup_steps

  def lr_factor(step: int) -> float:  # linear warmup, then cosine to final_lr_ratio (as ours)
    if step < warm:
      return step / warm
    progress = min(1.0, (step - warm) / max(total - warm, 1))
    return o.final_lr_ratio + (1 - o.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

  schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
  rng = np.random.default_rng(0)
  tokens = torch.from_numpy(rng.integers(0, m.vocab_size, (d.batch_size, d.seq_len)))

  def run_steps(steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
      loss = model(input_ids=tokens, labels=tokens).loss
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
      optimizer.step()
      schedule.step()
      optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start

  def matmul_peak() -> float:
    a = torch.ones(MATMUL_N, MATMUL_N)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(8))
    return 2 * MATMUL_N ** 3 / best

  run_steps(warmup)
  info = dict(params=sum(p.numel() for p in model.parameters()), threads=torch.get_num_threads(),
              attention=model.config._attn_implementation, torch=torch.__version__,
              transformers=transformers.__version__)
  _serve(info, run_steps, matmul_peak)


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


# --- the driver ----------------------------------------------------------------------------------


class Worker:
  def __init__(self, label: str, kind: str, fields: dict, warmup: int, env: dict):
    self.label, self.kind = label, kind
    command = [sys.executable, os.path.abspath(__file__), f'--worker={kind}',
               f'--fields={json.dumps(fields)}', f'--warmup={warmup}']
    self.process = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, **env), text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    self.info = self._reply()['ready']

  def _reply(self) -> dict:
    line = self.process.stdout.readline()
    if not line:
      raise SystemExit(f'error: the {self.label} worker stopped (exit {self.process.wait()})')
    return json.loads(line)

  def ask(self, command: str) -> dict:
    self.process.stdin.write(command + '\n')
    self.process.stdin.flush()
    return self._reply()

  def close(self):
    if self.process.poll() is None:
      self.process.stdin.write('quit\n')
      self.process.stdin.close()
      self.process.wait(timeout=60)


def numpy_peak() -> float:
  import numpy as np
  a = np.ones((MATMUL_N, MATMUL_N), np.float32)
  a @ a
  return 2 * MATMUL_N ** 3 / min(_timed(lambda: a @ a) for _ in range(8))


def parse_variant(text: str) -> tuple[str, dict, dict]:
  """'LABEL:field=value,xla_flags=...,env.NAME=...' -> (label, config fields, environment)."""
  label, _, spec = text.partition(':')
  fields, env = {}, {}
  for item in filter(None, spec.split(',')):
    key, _, value = item.partition('=')
    if key == 'xla_flags':
      env['XLA_FLAGS'] = value
    elif key.startswith('env.'):
      env[key[4:]] = value
    else:
      fields[key] = value
  return label, fields, env


def compare(name: str, args) -> dict:
  fields = dict(CONFIGS[name], **dict(f.split('=', 1) for f in args.set))
  variants = [parse_variant(v) for v in ['jax:', *(args.jax or [])]]
  workers = []
  try:
    for label, extra, env in variants:  # one at a time: compiling is not measured
      workers.append(Worker(label, 'jax', dict(fields, **extra), args.warmup, env))
    workers.append(Worker('pytorch', 'torch', fields, args.warmup, {}))
    params = {w.label: w.info['params'] for w in workers}
    if len(set(params.values())) != 1:
      raise SystemExit(f'error: the models differ: parameter counts {params}')
    peaks = {'numpy': [numpy_peak()]}
    for w in workers:
      peaks.setdefault(w.kind, []).append(w.ask('peak')['peak'])
    seconds = {w.label: [] for w in workers}
    for r in range(args.rounds):
      for w in (workers if r % 2 == 0 else workers[::-1]):
        seconds[w.label].append(w.ask(f'run {args.steps}')['seconds'])
    peaks['numpy'].append(numpy_peak())
    for w in workers:
      peaks[w.kind].append(w.ask('peak')['peak'])
  finally:
    for w in workers:
      w.close()
  tokens = int(fields['data.batch_size']) * int(fields['data.seq_len']) * args.steps
  peak = max(max(v) for v in peaks.values())
  flops_per_token = workers[0].info['flops_per_token']
  torch_tps = [tokens / s for s in seconds['pytorch']]
  result = dict(config=name, fields=fields, rounds=args.rounds, steps_per_window=args.steps,
                params=params['pytorch'], flops_per_token=flops_per_token, peak_flops=peak,
                peaks={k: [round(x / 1e9, 1) for x in v] for k, v in peaks.items()},
                window_seconds=seconds,  # per side, in the order run (rounds alternate A B B A)
                pytorch=dict(workers[-1].info, tokens_per_sec=statistics.median(torch_tps),
                             tokens_per_sec_range=[min(torch_tps), max(torch_tps)],
                             mfu=flops_per_token * statistics.median(torch_tps) / peak),
                jax={})
  for w in workers[:-1]:
    tps = [tokens / s for s in seconds[w.label]]
    ratios = [a / b for a, b in zip(tps, torch_tps)]
    result['jax'][w.label] = dict(
        w.info, tokens_per_sec=statistics.median(tps), tokens_per_sec_range=[min(tps), max(tps)],
        mfu=flops_per_token * statistics.median(tps) / peak, ratio=statistics.median(ratios),
        ratio_range=[min(ratios), max(ratios)])
  return result


def _row(label: str, side: dict, tail: str) -> str:
  low, high = side['tokens_per_sec_range']
  return (f'  {label:8s} {side["tokens_per_sec"]:8,.0f} tokens/s ({low:,.0f}-{high:,.0f})  '
          f'MFU {side["mfu"]:.1%}  {tail}')


def report(result: dict):
  print(f'\n{result["config"]}: {result["params"]:,} parameters, '
        f'{result["flops_per_token"] / 1e6:.1f} MFLOP/token, peak {result["peak_flops"] / 1e9:.0f} '
        f'GFLOP/s (measured: {result["peaks"]}), {result["rounds"]} rounds of '
        f'{result["steps_per_window"]} steps')
  t = result['pytorch']
  print(_row('pytorch', t, f'(torch {t["torch"]}, {t["threads"]} threads, {t["attention"]} '
                           'attention)'))
  for label, side in result['jax'].items():
    low, high = side['ratio_range']
    print(_row(label, side, f'ratio {side["ratio"]:.2f}x ({low:.2f}-{high:.2f})'))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default='gpt2,wide')
  parser.add_argument('--rounds', type=int, default=7, help='timed windows per side')
  parser.add_argument('--steps', type=int, default=3, help='steps per window')
  parser.add_argument('--warmup', type=int, default=3, help='untimed steps per worker')
  parser.add_argument('--jax', action='append', help='a JAX variant LABEL:FIELD=VALUE,...')
  parser.add_argument('--set', action='append', default=[], help='FIELD=VALUE for both sides')
  parser.add_argument('--json', action='store_true', help='also print one JSON line per config')
  parser.add_argument('--worker', choices=['jax', 'torch'], help=argparse.SUPPRESS)
  parser.add_argument('--fields', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker = jax_worker if args.worker == 'jax' else torch_worker
    return worker(json.loads(args.fields), args.warmup)
  unknown = set(args.configs.split(',')) - set(CONFIGS)
  if unknown:
    print(f'error: --configs: unknown {", ".join(sorted(unknown))}; choose from '
          f'{", ".join(CONFIGS)}', file=sys.stderr)
    sys.exit(2)
  try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
  except ImportError as e:
    print(f"error: {e.name} is not installed: pip install -e '.[perf]'", file=sys.stderr)
    sys.exit(2)
  for name in args.configs.split(','):
    result = compare(name, args)
    report(result)
    if args.json:
      print(json.dumps(result))


if __name__ == '__main__':
  main()
