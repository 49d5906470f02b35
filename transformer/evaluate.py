"""Held-out metrics of a trained run (ours or converted), at any length, step or dataset.

  python -m transformer.evaluate --workdir=runs/default [--step=N] [--seq_len=N]
      [--num_batches=N] [--bleu_examples=N] [--json] [--config.data.FIELD=VALUE ...]

Prints the loss, perplexity, accuracy, bits per byte (byte-level runs) and, for an
encoder-decoder, BLEU and exact match of beam-searched translations (sacrebleu), as a table or
with --json as one object. `--config.data.dataset=...` (and other data fields) evaluates on
another dataset with the run's tokenizer; the model's fields cannot change. Nothing in the
workdir is written (transformer/training/evaluation.py holds the evaluation).
"""

import dataclasses
import json
import sys

from absl import app, flags

from transformer import cli
from transformer.config import Experiment
from transformer.errors import ConfigError

OVERRIDE = '--config.'
FIXED_DATA_FIELDS = ('tokenizer', 'hf_tokenizer', 'spm_vocab_size')  # what the model was built on


def define_flags():
  cli.define_workdir_flag()
  flags.DEFINE_integer('step', None, 'checkpoint to read (default: the newest)')
  flags.DEFINE_integer('seq_len', None, 'tokens per row (default: the run\'s data.seq_len; '
                       'longer than trained works where the positions allow)')
  flags.DEFINE_integer('num_batches', 20, 'held-out batches to evaluate; 0 = the whole split')
  flags.DEFINE_integer('bleu_examples', None, 'encoder_decoder: held-out examples translated '
                       'for BLEU and exact match (default: the run\'s train.bleu_examples, else '
                       '64; 0 = none)')
  flags.DEFINE_bool('json', False, 'print one JSON object instead of a table')


def split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  """(argv without the --config.data.FIELD=VALUE arguments, {FIELD: VALUE text})."""
  rest, overrides = [], {}
  for arg in argv:
    if not arg.startswith(OVERRIDE):
      rest.append(arg)
      continue
    name, equals, value = arg[len(OVERRIDE):].partition('=')
    section, _, field = name.partition('.')
    if section != 'data' or not field or not equals:
      raise ConfigError(f'{arg.split("=")[0]}: evaluate changes only data fields '
                        '(--config.data.FIELD=VALUE, e.g. --config.data.dataset=...); the model '
                        'is the run\'s')
    overrides[field] = value
  return rest, overrides


def _typed(field: str, text: str, current):
  """An override's text as the type of the field's current value."""
  try:
    if isinstance(current, bool):
      if text.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(text)
      return text.lower() in ('true', '1')
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
  except ValueError:
    raise ConfigError(f'--config.data.{field}={text!r} is invalid: must be '
                      f'{type(current).__name__} like the run\'s {current!r}') from None
  return text


def experiment_to_evaluate(experiment: Experiment, overrides: dict[str, str],
                           seq_len: int | None) -> Experiment:
  """The run's experiment with the data overrides and sequence length, checked."""
  from transformer.data import pipeline
  known = {f.name for f in dataclasses.fields(experiment.data)}
  for field in overrides:
    if field not in known:
      raise ConfigError(f'--config.data.{field} is not a data field (python -m '
                        'transformer.describe --fields lists them)')
    if field in FIXED_DATA_FIELDS:
      raise ConfigError(f'--config.data.{field}: the model was trained with the run\'s '
                        f'tokenizer ({experiment.data.tokenizer}); evaluate encodes every '
                        'dataset with it, so its fields cannot change')
  data = {field: _typed(field, text, getattr(experiment.data, field))
          for field, text in overrides.items()}
  if seq_len is not None:
    data['seq_len'] = seq_len
  experiment = experiment.replace(data=data) if data else experiment
  pipeline.check_data(experiment)
  return experiment


def check_flags(f) -> None:
  for name, value in (('seq_len', f.seq_len), ('step', f.step)):
    if value is not None and value < 1:
      raise ConfigError(f'--{name}={value} is invalid: must be >= 1')
  for name, value, zero in (('num_batches', f.num_batches, 'the whole split'),
                            ('bleu_examples', f.bleu_examples, 'none')):
    if value is not None and value < 0:
      raise ConfigError(f'--{name}={value} is invalid: must be >= 0 (0: {zero})')


def evaluate(workdir: str, overrides: dict[str, str], *, step: int | None = None,
             seq_len: int | None = None, num_batches: int = 20,
             bleu_examples: int | None = None) -> dict:
  """The metrics of the run in `workdir` with what was evaluated: one JSON-able object."""
  from transformer.inference import trained
  from transformer.training import evaluation, runs
  experiment = experiment_to_evaluate(runs.read_experiment(workdir), overrides, seq_len)
  run = dataclasses.replace(trained.load(workdir, step), config=experiment)
  metrics = evaluation.evaluate_run(run, num_batches=num_batches)
  if experiment.model.family == 'encoder_decoder':
    examples = (experiment.train.bleu_examples or 64) if bleu_examples is None else bleu_examples
    if examples:
      tokenizer = run.tokenizer()
      pairs = evaluation.held_out_pairs(experiment, tokenizer, examples)
      metrics.update(evaluation.bleu_metrics(run.model, run.params, pairs, tokenizer,
                                             experiment))
  return dict(workdir=workdir, step=run.step, dataset=experiment.data.dataset,
              seq_len=experiment.data.seq_len, num_batches=num_batches or 'all', **metrics)


def table(result: dict) -> str:
  """The metrics as aligned lines, what was evaluated first."""
  keys = ['workdir', 'step', 'dataset', 'seq_len', 'num_batches']
  width = max(len(k) for k in result)
  lines = [f'{k:<{width}}  {result[k]}' for k in keys]
  for key, value in result.items():
    if key not in keys:
      lines.append(f'{key:<{width}}  {value:.6g}' if isinstance(value, float)
                   else f'{key:<{width}}  {value}')
  return '\n'.join(lines)


def main(argv, overrides: dict[str, str]):
  f = cli.begin_workdir_command(argv)
  try:
    check_flags(f)
    result = evaluate(f.workdir, overrides, step=f.step, seq_len=f.seq_len,
                      num_batches=f.num_batches, bleu_examples=f.bleu_examples)
  except ConfigError as e:
    cli.fail(str(e))
  print(json.dumps(result) if f.json else table(result))


if __name__ == '__main__':
  define_flags()
  try:
    arguments, data_overrides = split_overrides(sys.argv)
  except ConfigError as error:
    cli.fail(str(error))
  app.run(lambda argv: main(argv, data_overrides), argv=arguments,
          flags_parser=cli.parse_flags)
