"""Hugging Face checkpoints (GPT-2, BERT, Marian, Llama/Mistral/Qwen2) as runs of ours, and
runs of ours as Hugging Face models.

  python -m transformer.convert --from=gpt2 --to=runs/gpt2             # a model name: downloads
  python -m transformer.convert --from=DIR --to=runs/bert               # a saved model, offline
  python -m transformer.convert --to_hf --from=runs/default --to=hf/default   # and back

With --to_hf, --to receives what save_pretrained writes (transformer/inference/export.py).
Otherwise --to receives config.json, the tokenizer and a checkpoint at step 0; `generate`, `viz` and
`ablation` read it like any trained run, and configs/finetune.py:RUN fine-tunes it
(transformer/inference/convert.py). Anything unsupported ends with one line and exit code 2,
and nothing under --to is written.
"""

import logging
import sys

from absl import app, flags, logging as absl_logging

from transformer import cli
from transformer.errors import ConfigError
from transformer.inference import convert, export


def define_flags():
  flags.DEFINE_string('from', None, 'a directory written by save_pretrained, or a Hugging Face '
                      'Hub model name (downloaded; needs the network)')
  flags.DEFINE_string('to', None, 'the run directory to write (new, or empty)')
  flags.DEFINE_enum('head', 'auto', list(convert.HEADS), 'BERT: mlm or classify (pooler + '
                    'classifier; a checkpoint without a classifier gets none: fine-tune one); '
                    "auto: the checkpoint's")
  flags.DEFINE_bool('overwrite', False, 'replace a non-empty --to, once the conversion succeeded')
  flags.DEFINE_bool('to_hf', False, 'the other way: --from is a run of ours, --to a Hugging Face '
                    'save_pretrained directory (GPT-2, BERT, Marian, Llama or Qwen2)')
  flags.DEFINE_integer('step', None, '--to_hf: the checkpoint to export (default: the newest)')


def main(argv):
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  f = flags.FLAGS
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  for name in ('from', 'to'):
    if not f[name].value:
      cli.fail(f'--{name} is required: python -m transformer.convert --from=DIR_OR_NAME '
               '--to=WORKDIR')
  if f.to_hf and f['head'].present:
    cli.fail('--head is for importing; an exported model keeps the run\'s head')
  if f['step'].present and not f.to_hf:
    cli.fail('--step is for --to_hf (a converted run starts at step 0)')
  try:
    if f.to_hf:
      summary = export.export(f['from'].value, f.to, f.step, f.overwrite)
    else:
      summary = convert.convert(f['from'].value, f.to, f.head, f.overwrite)
  except ConfigError as e:
    cli.fail(str(e))
  if f.to_hf:
    print(f'{summary["out"]}: step {summary["step"]} as Hugging Face {summary["architecture"]} '
          f'({summary["params"]:,} parameters in {summary["tensors"]} tensors)'
          + ('' if summary['tokenizer'] else '; no tokenizer written (the run\'s is not a '
             'Hugging Face one)'))
    return
  print(f'{summary["workdir"]}: {summary["model_type"]} as {summary["family"]} '
        f'({summary["head"]} head), {summary["params"]:,} parameters'
        + (f'; initialised fresh: {", ".join(summary["fresh"])}' if summary['fresh'] else '')
        + (f'; left out: {", ".join(summary["dropped"])}' if summary['dropped'] else '')
        + ('' if summary['tokenizer'] else '; no tokenizer in the checkpoint directory, so '
           'generate and train need data.tokenizer set'))
  sys.stdout.flush()


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
