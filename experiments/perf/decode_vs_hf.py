"""Our KV-cached greedy decoding against Hugging Face `generate` on the same GPT-2-small-shaped
model (random weights, CPU), tokens per second.

  pip install -e '.[perf]'     # torch==2.13.0 (a CPU build) and transformers
  python experiments/perf/decode_vs_hf.py [--batches=1,8] [--new_tokens=256] [--prompt_len=16]
      [--repeats=3] [--layers=12]

A `GPT2LMHeadModel` with GPT-2 small's shape (12 layers, d_model 768, 12 heads, vocabulary
50257, 1024 positions; `--layers` for a quicker run) is initialised at random, saved with
`save_pretrained` and converted by `transformer.inference.convert` (what `python -m
transformer.convert` does). Both sides decode greedily, `new_tokens` tokens after the same
random prompts, no end-of-sequence stop: ours `decode.generate` (jit, KV cache, float32),
theirs `model.generate(do_sample=False)` (PyTorch eager, its KV cache, 2 threads). Each side is
warmed up (ours compiled) untimed, then the two alternate `repeats` times; medians and ranges
are printed with the ratio and the share of generated tokens on which the two agree (float32
rounding may flip a near tie, after which the continuations differ).
"""

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np


def build(layers: int, directory: str):
  import torch
  import transformers
  torch.manual_seed(0)
  config = transformers.GPT2Config(n_layer=layers, n_embd=768, n_head=12, vocab_size=50257,
                                   n_positions=1024)
  model = transformers.GPT2LMHeadModel(config).eval()
  model.save_pretrained(directory)
  return model


def ours(directory: str):
  from transformer.config import ModelConfig
  from transformer.inference import convert
  from transformer.model import decode, models
  _, fields, params, _ = convert.convert_checkpoint(directory)
  model = models.build_model(ModelConfig(**fields))
  params = jax.device_put(params)

  def run(prompts, new_tokens):
    return decode.generate(model, params, prompts, new_tokens, jax.random.key(0),
                           temperature=0.0)
  return run


def theirs(model):
  import torch

  def run(prompts, new_tokens):
    with torch.no_grad():
      ids = torch.tensor(prompts)
      out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()
  return run


def timed(run, prompts, new_tokens):
  start = time.perf_counter()
  out = run(prompts, new_tokens)
  return time.perf_counter() - start, out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batches', default='1,8')
  parser.add_argument('--new_tokens', type=int, default=256)
  parser.add_argument('--prompt_len', type=int, default=16)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--layers', type=int, default=12)
  args = parser.parse_args()
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  with tempfile.TemporaryDirectory() as directory:
    hf_model = build(args.layers, directory)
    sides = {'ours': ours(directory), 'hugging face': theirs(hf_model)}
  print(f'GPT-2-small shape, {args.layers} layers, random weights; prompt {args.prompt_len}, '
        f'{args.new_tokens} new tokens, greedy; torch {torch.__version__} '
        f'({torch.get_num_threads()} threads), jax {jax.__version__}')
  for batch in (int(b) for b in args.batches.split(',')):
    prompts = np.random.default_rng(batch).integers(0, 50257, (batch, args.prompt_len)).tolist()
    outputs = {name: run(prompts, args.new_tokens) for name, run in sides.items()}  # warm-up
    seconds = {name: [] for name in sides}
    for _ in range(args.repeats):
      for name, run in sides.items():
        elapsed, outputs[name] = timed(run, prompts, args.new_tokens)
        seconds[name].append(elapsed)
    same = np.mean([a == b for x, y in zip(outputs['ours'], outputs['hugging face'])
                    for a, b in zip(x, y)])
    rate = {name: batch * args.new_tokens / statistics.median(s) for name, s in seconds.items()}
    for name, s in seconds.items():
      low, high = (batch * args.new_tokens / max(s), batch * args.new_tokens / min(s))
      print(f'  batch {batch}: {name:13s} {rate[name]:8.1f} tokens/s ({low:.1f}-{high:.1f})')
    print(f'  batch {batch}: ratio ours / hugging face {rate["ours"] / rate["hugging face"]:.2f}x;'
          f' greedy tokens agreeing {100 * same:.1f}%')


if __name__ == '__main__':
  main()
