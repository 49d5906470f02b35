"""Tokens/s of the input pipeline per CPU core: bytes, SentencePiece on the fly, and token ids
stored once by the conversion (data.pretokenize).

  python experiments/perf/tokenize_once.py [--repeats=3] [--batches=200] [--vocab_size=8000]

The corpus is the embedded Shakespeare (its training split, one JSON line per passage) written
to a temporary directory and read as your own files (data.dataset=files). Each variant is one
fresh training iterator without the prefetch thread (data.prefetch=0), so everything runs in
this thread: the figure is per core. The tokenizer is trained (and the token ids stored) before
the clock starts. Prints one JSON object per variant and repeat, then the medians.
"""

import json
import os
import statistics
import tempfile

from absl import flags
from data_pipeline import _REPEATS, pipeline_tokens_per_sec  # and its flags: --batches too

from transformer import cli, presets
from transformer.config import Experiment
from transformer.data import datasets, pipeline

_VOCAB = flags.DEFINE_integer('vocab_size', 8000, 'SentencePiece pieces')


def write_corpus(data_dir: str, path: str):
  config = presets.get_config('decoder_only', 'tiny')
  config.data.data_dir = data_dir
  source = datasets.open_split(Experiment.from_config(config).data, 'train')
  with open(path, 'w') as f:
    for i in range(len(source)):
      f.write(json.dumps({'text': source[i]['text']}) + '\n')


def variant(data_dir: str, corpus: str, tokenizer: str, pretokenize: bool) -> Experiment:
  config = presets.get_config('decoder_only', 'small')  # rows of 256, batch 32
  config.data.update(dataset='files', train_files=corpus, data_dir=data_dir, prefetch=0,
                     tokenizer=tokenizer, vocab_size=_VOCAB.value, pretokenize=pretokenize)
  return Experiment.from_config(config)


def tokens_per_sec(experiment: Experiment) -> float:
  tokenizer = pipeline.get_tokenizer(experiment)  # trained (and ids stored) before the clock
  return pipeline_tokens_per_sec(pipeline.with_vocab(experiment, tokenizer), tokenizer)


def main(config, argv):
  del config, argv
  with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, 'shakespeare.jsonl')
    write_corpus(os.path.join(tmp, 'data'), corpus)
    variants = {'bytes': ('byte', False), 'sentencepiece, on the fly': ('sentencepiece', False),
                'sentencepiece, stored ids': ('sentencepiece', True)}
    results = {name: [] for name in variants}
    for repeat in range(_REPEATS.value):
      for name, (tokenizer, pretokenize) in variants.items():
        rate = tokens_per_sec(variant(tmp, corpus, tokenizer, pretokenize))
        results[name].append(rate)
        print(json.dumps({'variant': name, 'repeat': repeat, 'tokens_per_sec': round(rate)}),
              flush=True)
  for name, rates in results.items():
    print(f'{name}: median {statistics.median(rates):,.0f} tokens/s per core '
          f'(min {min(rates):,.0f}, max {max(rates):,.0f})')


if __name__ == '__main__':
  cli.run(main)  # --config is unused: the variants are built above
