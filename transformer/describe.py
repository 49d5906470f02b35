"""Describe a model from its config: parameters by layer, totals and FLOPs, nothing allocated.

  python -m transformer.describe --config=configs/decoder_only.py:gpt2-xl [--json]
  python -m transformer.describe --fields      # every config field and what it means

The config is validated as `train` validates it (an invalid one exits 2 with one line), except
for the mesh against this machine's devices (a pod's config can be described on a laptop);
shapes come from `jax.eval_shape`, so the largest presets are described in seconds.
"""

import json

from absl import flags

from transformer import cli, config as schema
from transformer.model import counting
from transformer.training import loop


def define_flags():
  flags.DEFINE_bool('json', False, 'print one JSON object instead of the table')
  flags.DEFINE_bool('fields', False, 'list every config field with its meaning, and exit')


def print_table(experiment, info: dict):
  table = counting.layer_table(experiment.model)
  width = max(len(p) for p, *_ in table) + 2
  print(f"{info['family']} / {info['head']} head: {info['num_layers']} layers, d_model "
        f"{info['d_model']}, {info['num_heads']} heads ({info['num_kv_heads']} kv), d_ff "
        f"{info['d_ff']}, vocab {info['vocab_size']}, {info['position']} positions")
  print(f"{'parameter':<{width}}{'shape (per layer)':>22}{'layers':>8}{'params':>16}")
  for path, shape, repeats, count in table:
    print(f'{path:<{width}}{shape:>22}{repeats:>8}{count:>16,}')
  print()
  fmt = counting.format_count
  for key, note in (
      ('params', ''), ('params_non_embedding', ' (Kaplan et al.: no vocab/position tables)'),
      ('flops_per_token', f" (training, 6N + 12LHQT at seq_len {info['seq_len']})"),
      ('tokens', ' (train.num_steps x data.batch_size x data.seq_len)'),
      ('total_flops', '')):
    print(f'{key:<22}{info[key]:>22,}  {fmt(info[key]):>7}{note}')


def main(config, argv):
  f = flags.FLAGS
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if f.fields:
    for name, doc in schema.field_docs().items():
      print(f'{name:<28}{doc}')
    return
  experiment = loop.validate(config)
  info = counting.experiment_counts(experiment)
  if f.json:
    print(json.dumps(info))
  else:
    print_table(experiment, info)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
