"""`python -m transformer.generate`, `trained.load` and `evaluate_run` on a real (briefly trained)
run."""

import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from transformer.errors import ConfigError
from transformer.inference import generation, trained
from transformer.model import decode
from transformer.training import checkpoint, evaluation, optim, step as steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def run_dir(trained_lm):
  return trained_lm  # 40 steps, checkpoints at 20 and 40 (conftest.py); only read here


def test_load_reads_the_newest_or_a_given_checkpoint(run_dir):
  newest, second = trained.load(run_dir), trained.load(run_dir, step=20)
  assert newest.step == 40 and second.step == 20
  assert newest.cfg.d_model == 64 and newest.config.train.num_steps == 40
  kernels = [jax.tree.leaves(r.params)[0] for r in (newest, second)]
  assert not (kernels[0] == kernels[1]).all()  # two steps of training apart
  with pytest.raises(ConfigError, match='--step=30 has no checkpoint'):
    trained.load(run_dir, step=30)
  summary = repr(newest)  # what print() shows: a summary, not every parameter array
  count = sum(leaf.size for leaf in jax.tree.leaves(newest.params))
  assert 'step=40, decoder_only lm: 2 layers, d_model 64' in summary
  assert f'{count:,} parameters in {len(jax.tree.leaves(newest.params))} arrays' in summary
  assert len(summary) < 300 and 'Array(' not in summary


def test_load_reads_the_parameters_alone_bitwise(run_dir, tmp_path):
  run = trained.load(run_dir)
  tx, _ = optim.make_optimizer(run.config.opt, run.config.train.num_steps, run.cfg)
  abstract = jax.eval_shape(functools.partial(steps.init_state, run.cfg, tx), jax.random.key(0))
  ckpts = checkpoint.Checkpoints(os.path.join(run_dir, 'checkpoints'))
  try:
    full = ckpts.restore_step(40, abstract)[1]  # the whole train state, as resuming reads it
  finally:
    ckpts.close()
  assert jax.tree.structure(run.params) == jax.tree.structure(full.params)
  for ours, whole in zip(jax.tree.leaves(run.params), jax.tree.leaves(full.params)):
    assert ours.dtype == whole.dtype
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(whole))

  # An unreadable newest checkpoint is skipped and left as it is: load only reads.
  copy = str(tmp_path / 'run')
  shutil.copytree(run_dir, copy)
  for root, _, files in os.walk(os.path.join(copy, 'checkpoints', '40', 'state')):
    for name in files:
      open(os.path.join(root, name), 'wb').close()
  older = trained.load(copy)
  assert older.step == 20
  assert sorted(os.listdir(os.path.join(copy, 'checkpoints'))) == ['20', '40']
  np.testing.assert_array_equal(np.asarray(jax.tree.leaves(older.params)[0]),
                                np.asarray(jax.tree.leaves(trained.load(run_dir, 20).params)[0]))


def test_generated_text_is_the_decoded_continuation(run_dir):
  run = trained.load(run_dir)
  tokenizer = run.tokenizer()
  texts = generation.generate_text(run, ['ab'], num_tokens=6, temperature=0.0)
  ids = decode.generate(run.model, run.params, [[tokenizer.bos_id, *tokenizer.encode('ab')]], 6,
                        jax.random.key(0), temperature=0.0, eos_id=tokenizer.eos_id)[0]
  assert texts == [tokenizer.decode(ids)]
  samples = generation.generate_text(run, ['ab'], num_tokens=6, num_samples=2, seed=3)
  assert samples == generation.generate_text(run, ['ab'], num_tokens=6, num_samples=2, seed=3)


def test_a_trained_run_is_evaluated_as_the_loop_evaluated_it(run_dir):
  """One evaluation path: the final held-out loss of the run (computed by the loop on its
  sharded state) is what evaluate_run computes from the checkpoint; and at another length."""
  run = trained.load(run_dir)
  summary = json.load(open(os.path.join(run_dir, 'summary.json')))
  again = evaluation.evaluate_run(run, num_batches=run.config.train.eval_batches)
  assert again['eval_loss'] == pytest.approx(summary['final_eval_loss'], rel=1e-6)
  assert again['eval_accuracy'] == pytest.approx(summary['eval_accuracy'], rel=1e-6)
  shorter = evaluation.evaluate_run(run, num_batches=2, seq_len=16)
  assert shorter['eval_loss'] != again['eval_loss'] and shorter['eval_bits_per_byte'] > 0


def test_the_command_prints_samples_and_rejects_bad_flags(run_dir):
  command = [sys.executable, '-m', 'transformer.generate', f'--workdir={run_dir}']
  good = subprocess.Popen(command + ['--prompt=ROMEO', '--num_tokens=5', '--temperature=0'],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  too_long = subprocess.Popen(command + ['--prompt=' + 'x' * 40], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  bad = subprocess.run(command + ['--beam_size=4'], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  _, too_long_err = too_long.communicate(timeout=120)
  assert too_long.returncode == 2
  assert too_long_err.strip().splitlines() == [  # <bos> + 40 bytes, the run trained on 32
      'error: --prompt: a prompt of 41 tokens leaves no room in a context of 32']
  out, err = good.communicate(timeout=120)
  assert good.returncode == 0, err
  assert out.startswith('ROMEO')
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == [
      'error: --beam_size=4: beam search is for encoder_decoder runs; this one is decoder_only '
      '(sample with --temperature/--top_k/--top_p)']
