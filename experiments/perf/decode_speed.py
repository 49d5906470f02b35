"""Cached vs recomputed decoding: tokens per second of `decode.generate` on one config.

  python experiments/perf/decode_speed.py [--config=configs/default.py] [--batch=1]
      [--prompt_len=8] [--num_tokens=120] [--repeats=5]

Both paths are compiled first (untimed); then each runs `repeats` times, alternating, and the
median and spread are printed with their ratio. Random parameters: speed does not depend on
training.
"""

import statistics
import time

import jax
import numpy as np
from absl import flags

from transformer import cli
from transformer.config import ModelConfig
from transformer.model import decode, models

_BATCH = flags.DEFINE_integer('batch', 1, 'prompts decoded together')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 8, 'prompt tokens')
_NUM_TOKENS = flags.DEFINE_integer('num_tokens', 120, 'tokens generated')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'timed runs of each path')


def main(config, argv):
  del argv
  cfg = ModelConfig.from_config(config)
  model = models.build_model(cfg)
  params = jax.jit(lambda rng: models.init_params(cfg, rng))(jax.random.key(0))
  prompts = np.random.default_rng(0).integers(
      4, cfg.vocab_size, (_BATCH.value, _PROMPT_LEN.value)).tolist()
  run = lambda cached: decode.generate(model, params, prompts, _NUM_TOKENS.value,
                                       jax.random.key(1), temperature=1.0, cached=cached)
  seconds = {True: [], False: []}
  for cached in (True, False):
    run(cached)  # compile
  for _ in range(_REPEATS.value):
    for cached in (True, False):
      start = time.perf_counter()
      run(cached)
      seconds[cached].append(time.perf_counter() - start)
  tokens = _BATCH.value * _NUM_TOKENS.value
  for cached, label in ((True, 'KV cache'), (False, 'recomputed')):
    s = seconds[cached]
    print(f'{label:>10}: {tokens / statistics.median(s):8.1f} tokens/s (median of {len(s)}; '
          f'runs {min(s):.3f}-{max(s):.3f} s)')
  print(f'speed-up: {statistics.median(seconds[False]) / statistics.median(seconds[True]):.1f}x '
        f'({cfg.num_layers} layers, d_model {cfg.d_model}, {cfg.position}; prompt '
        f'{_PROMPT_LEN.value}, {_NUM_TOKENS.value} new tokens, batch {_BATCH.value}; '
        f'{jax.devices()[0].device_kind})')


if __name__ == '__main__':
  cli.run(main)
