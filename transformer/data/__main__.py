"""Inspect the batches of an experiment's data, or prepare its dataset.

  python -m transformer.data --config=configs/default.py          # show batches, measure speed
  python -m transformer.data --config=configs/encoder_decoder.py --split=eval --batches=5
  python -m transformer.data --prepare --config.data.dataset=lm1b  # download + prepare (network)

--prepare downloads and prepares a TFDS dataset as ArrayRecord (the format grain reads), builds
the embedded corpus, converts your own files (data.dataset=files), and trains (and caches) a
SentencePiece tokenizer when the config asks for one. Everything else runs offline.
"""

import sys
import time

from absl import flags

from transformer import cli
from transformer.config import Experiment
from transformer.data import datasets, pipeline, tokenizers


def define_flags():
  flags.DEFINE_bool('prepare', False, 'download and prepare the dataset, then exit')
  flags.DEFINE_enum('split', 'train', ['train', 'eval'], 'which split to read')
  flags.DEFINE_integer('batches', 20, 'batches to read (to measure throughput)')
  flags.DEFINE_integer('show', 2, 'rows of the first batch to print, decoded')
  flags.DEFINE_string('network_probe', datasets.NETWORK_PROBE, '--prepare: HOST:PORT reached '
                      'first, in seconds, to tell that there is no network (an offline download '
                      "retries for minutes); '' skips it")


def main(config, argv):
  f = flags.FLAGS
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if f.batches < 1:
    cli.fail(f'--batches={f.batches} is invalid: must be >= 1')
  experiment = Experiment.from_config(config)
  spec, data = pipeline.check_data(experiment), experiment.data
  data_dir = datasets.resolve_data_dir(data.data_dir)
  if f.prepare:
    print(f'preparing {data.dataset} in {data_dir} ...', flush=True)
    try:
      datasets.prepare(data, f.network_probe)
    except datasets.PrepareError as e:
      cli.fail(str(e), code=1)
  pipeline.prepare_data(experiment)
  tokenizer = pipeline.get_tokenizer(experiment)
  summary = (f'dataset {data.dataset} ({spec.kind}) -> task {experiment.task} for '
             f'{experiment.model.family}; {data.tokenizer} tokenizer, vocabulary '
             f'{tokenizer.vocab_size}; data in {data_dir}')
  if f.prepare:
    print(summary)
    return
  iterator = iter(pipeline.make_dataset(experiment, f.split, tokenizer))
  print(summary)
  start = time.perf_counter()
  batches, tokens = [], 0
  for batch in iterator:
    batches.append(batch)
    tokens += batch['inputs'].size
    if len(batches) == f.batches:
      break
  seconds = time.perf_counter() - start
  iterator.close()
  if not batches:
    cli.fail(f'the {f.split} split of {data.dataset} gave no batch', code=1)
  first = batches[0]
  print('batch:', ', '.join(f'{k} {v.shape} {v.dtype}' for k, v in sorted(first.items())))
  print(f'rows as the model sees them: {tokenizers.DOCUMENT_BREAK.strip()} separates packed '
        'documents; padding is left out')
  for row in range(min(f.show, len(first['inputs']))):
    for key in ('inputs', 'decoder_inputs', 'targets'):
      if key in first:
        segments = first.get('targets_segment_ids' if key != 'inputs' else 'inputs_segment_ids',
                             first.get('segment_ids'))
        text = tokenizers.render(tokenizer, first[key][row], segments[row])
        print(f'  [{row}] {key:>14}: {text!r}'[:300])
    if 'label' in first:
      print(f'  [{row}] {"label":>14}: {first["label"][row]}')
  weights = sum(float(b['weights'].sum()) for b in batches)
  print(f'{len(batches)} batches, {tokens:,} tokens in {seconds:.2f} s: '
        f'{tokens / seconds:,.0f} tokens/s; loss-weighted targets {weights / tokens:.1%}')
  sys.stdout.flush()


if __name__ == '__main__':
  define_flags()
  cli.run(main)
