"""`python -m transformer.evaluate`: a trained run's held-out metrics, checked against what the
training loop itself measured, at other lengths, steps and datasets, and its one-line errors."""

import json
import math
import pathlib
import subprocess
import sys
import types

import pytest

from transformer import evaluate as command
from transformer.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent


def evaluate(*args):
  return subprocess.run([sys.executable, '-m', 'transformer.evaluate', *map(str, args)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_run_is_evaluated_as_training_evaluated_it(trained_lm):
  summary = json.loads((pathlib.Path(trained_lm) / 'summary.json').read_text())
  done = evaluate(f'--workdir={trained_lm}', '--num_batches=2', '--json')  # train.eval_batches
  assert done.returncode == 0, done.stderr
  result = json.loads(done.stdout)
  assert result['step'] == 40 and result['seq_len'] == 32 and result['num_batches'] == 2
  assert result['eval_loss'] == pytest.approx(summary['final_eval_loss'], rel=1e-6)
  assert result['eval_bits_per_byte'] == pytest.approx(result['eval_loss'] / math.log(2))
  assert result['eval_perplexity'] == pytest.approx(math.exp(result['eval_loss']))
  assert 0 < result['eval_accuracy'] < 1

  # The command's other flags, as the command passes them on (in this process).
  earlier = command.evaluate(trained_lm, {}, step=20, num_batches=2)
  assert earlier['step'] == 20 and earlier['eval_loss'] > result['eval_loss']
  table = evaluate(f'--workdir={trained_lm}', '--num_batches=2', '--seq_len=64')
  assert table.returncode == 0, table.stderr
  lines = dict(line.split(None, 1) for line in table.stdout.strip().splitlines())
  assert lines['seq_len'] == '64' and lines['step'] == '40' and 'eval_loss' in lines


def test_another_dataset_is_encoded_with_the_runs_tokenizer(trained_lm):
  _, overrides = command.split_overrides(['--config.data.dataset=copy'])
  result = command.evaluate(trained_lm, overrides, num_batches=2, seq_len=64)
  assert result['dataset'] == 'copy' and math.isfinite(result['eval_loss'])
  assert result['eval_loss'] > 3  # a Shakespeare model has not learned random copies


# The command's two ways out with one line and exit 2: an override of a field that is not a data
# field (refused before the flags are parsed), and a ConfigError while it evaluates.
@pytest.mark.parametrize('args, message', [
    (['--config.model.d_model=8'], '--config.model.d_model: evaluate changes only data fields'),
    (['--step=7'], '--step=7 has no checkpoint'),
])
def test_bad_input_gets_one_line(trained_lm, args, message):
  done = evaluate(f'--workdir={trained_lm}', *args)
  assert done.returncode == 2, done.stderr
  assert done.stderr.count('\n') == 1 and 'Traceback' not in done.stderr
  assert message in done.stderr, done.stderr


def evaluate_in_process(workdir, *args):
  """What the command does with these flags: its checks, then the evaluation."""
  argv, overrides = command.split_overrides(['evaluate', *args])
  flags = dict(seq_len=None, step=None, num_batches=20, bleu_examples=None)
  for arg in argv[1:]:
    name, value = arg.removeprefix('--').split('=')
    flags[name] = int(value)
  command.check_flags(types.SimpleNamespace(**flags))
  return command.evaluate(workdir, overrides, **flags)


# The other checks, each a ConfigError (the command's one line and exit 2, as above).
@pytest.mark.parametrize('args, message', [
    (['--config.data.tokenizer=sentencepiece'], 'the model was trained with the run\'s tokenizer'),
    (['--config.data.colour=1'], '--config.data.colour is not a data field'),
    (['--config.data.batch_size=x'], "--config.data.batch_size='x' is invalid: must be int"),
    (['--num_batches=-1'], '--num_batches=-1 is invalid: must be >= 0'),
    (['--seq_len=100000'], 'data.seq_len=100000 is invalid: longer than the learned position'),
    (['--seq_len=16', '--config.data.dataset=copy'], 'data.seq_len=16 is invalid: the longest '
     'copy example needs'),
])
def test_bad_input_is_named_before_evaluating(trained_lm, args, message):
  with pytest.raises(ConfigError) as error:
    evaluate_in_process(trained_lm, *args)
  assert message in str(error.value) and '\n' not in str(error.value)


def test_only_a_learned_position_table_bounds_the_length(data_dir):
  from transformer import presets
  from transformer.config import Experiment
  from transformer.evaluate import experiment_to_evaluate
  config = presets.get_config('decoder_only', 'tiny')
  config.data.update(data_dir=data_dir, seq_len=32)
  config.model.update(position='rope', max_len=64)
  longer = experiment_to_evaluate(Experiment.from_config(config), {}, seq_len=256)
  assert longer.data.seq_len == 256  # RoPE extrapolates: max_len does not apply
  config.model.position = 'learned'
  with pytest.raises(ConfigError, match='longer than the learned position table'):
    experiment_to_evaluate(Experiment.from_config(config), {}, seq_len=256)


def test_help_lists_the_flags():
  done = evaluate('--help')  # absl's usage, as every command's (its exit code is 1)
  for flag in ('--workdir', '--seq_len', '--num_batches', '--step', '--bleu_examples', '--json'):
    assert flag in done.stdout
