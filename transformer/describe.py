"""Describe a model from its config: parameters by layer, totals and FLOPs, nothing allocated.

  python -m transformer.describe --config=configs/decoder_only.py:gpt2-xl [--json]

Shapes come from `jax.eval_shape`, so the largest presets are described in seconds.
"""

import json
import re
import sys

from absl import flags

from transformer import cli, scaling
from transformer.config import check_config

_LAYER = re.compile(r'/layers(_\d+)?/')


def describe(config) -> dict:
  """Counts and FLOPs of an experiment config, as the JSON fields of `describe --json`."""
  cfg = check_config(config)
  seq_len = config.data.seq_len
  summary = scaling.summarize(cfg, seq_len)
  tokens = config.train.num_steps * config.data.batch_size * seq_len
  return dict(
      summary, family=cfg.family, head=cfg.head, num_layers=cfg.num_layers,
      num_decoder_layers=cfg.num_decoder_layers if cfg.family == 'encoder_decoder' else 0,
      d_model=cfg.d_model, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
      d_ff=cfg.d_ff, vocab_size=cfg.vocab_size, position=cfg.position, seq_len=seq_len,
      tokens=tokens, total_flops=summary['flops_per_token'] * tokens)


def layer_table(config) -> list[tuple[str, str, int, int]]:
  """(path, per-layer shape, layers, total count), repeated layers folded into one line."""
  cfg = check_config(config)
  rows: dict[str, list] = {}
  for r in scaling.param_rows(cfg):
    path, shape, repeats = r['path'], r['shape'], 1
    match = _LAYER.search('/' + path + '/')
    if match:
      path = _LAYER.sub('/layers[*]/', '/' + path + '/').strip('/')
      if match.group(1) is None:  # scanned: the leading axis is the layer index
        shape, repeats = shape[1:], shape[0]
    entry = rows.setdefault(path, [path, ' x '.join(map(str, shape)) or 'scalar', 0, 0])
    entry[2] += repeats
    entry[3] += r['count']
  order = ('embedder', 'source_embedder', 'target_embedder', 'encoder', 'decoder')
  rank = lambda path: order.index(path.split('/')[0]) if path.split('/')[0] in order else len(order)
  return sorted((tuple(e) for e in rows.values()), key=lambda e: rank(e[0]))


def print_table(config, info: dict):
  table = layer_table(config)
  width = max(len(p) for p, *_ in table) + 2
  print(f"{info['family']} / {info['head']} head: {info['num_layers']} layers, d_model "
        f"{info['d_model']}, {info['num_heads']} heads ({info['num_kv_heads']} kv), d_ff "
        f"{info['d_ff']}, vocab {info['vocab_size']}, {info['position']} positions")
  print(f"{'parameter':<{width}}{'shape (per layer)':>22}{'layers':>8}{'params':>16}")
  for path, shape, repeats, count in table:
    print(f'{path:<{width}}{shape:>22}{repeats:>8}{count:>16,}')
  print()
  fmt = scaling.format_count
  for key, note in (
      ('params', ''), ('params_non_embedding', ' (Kaplan et al.: no vocab/position tables)'),
      ('flops_per_token', f" (training, 6N + 12LHQT at seq_len {info['seq_len']})"),
      ('tokens', ' (train.num_steps x data.batch_size x data.seq_len)'),
      ('total_flops', '')):
    print(f'{key:<22}{info[key]:>22,}  {fmt(info[key]):>7}{note}')


def main(config, argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  info = describe(config)
  if flags.FLAGS.json:
    json.dump(info, sys.stdout)
    print()
  else:
    print_table(config, info)


if __name__ == '__main__':
  # Defined only when describe runs: `describe()` is also a library function (sweeps call it),
  # and bench defines a --json flag of its own.
  flags.DEFINE_bool('json', False, 'print one JSON object instead of the table')
  cli.run(main)
