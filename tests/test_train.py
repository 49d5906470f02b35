"""Training: schedules, optimizer masks, losses, one pinned step, every family learning, exact
resume after SIGKILL, SIGTERM, corrupted checkpoints, the NaN stop, outputs, bad input, bench."""

import functools
import json
import math
import os
import pathlib
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import mount
from transformer import config as schema, presets
from transformer.analysis import bench
from transformer.config import ModelConfig
from transformer.errors import INTERRUPTED_EXIT_CODE, ConfigError
from transformer.model import counting, models
from transformer.training import checkpoint, loop, losses, optim, runs, step as steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- schedules, optimizers, losses ----------------------------------------------------------------


def opt_config(**fields):
  config = presets.base_config()
  config.opt.update(fields)
  return config.opt


@pytest.mark.parametrize('name', schema.SCHEDULES)
def test_schedules_follow_their_formulas(name):
  lr, warmup, total, ratio = 2e-3, 10, 100, 0.1
  schedule = optim.make_schedule(opt_config(schedule=name, lr=lr, warmup_steps=warmup,
                                            final_lr_ratio=ratio), total)
  for s in [0, 1, 5, 10, 11, 37, 64, 99, 100]:
    if name == 'rsqrt':
      expected = lr * min(max(s, 1) / warmup, math.sqrt(warmup / max(s, 1)))
    elif s < warmup:
      expected = lr * s / warmup
    else:
      progress = (s - warmup) / (total - warmup)
      expected = {'constant': lr,
                  'linear': lr + (lr * ratio - lr) * progress,
                  'cosine': lr * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
                  }[name]
    assert float(schedule(s)) == pytest.approx(expected, rel=1e-5, abs=1e-9), s


def test_rsqrt_is_the_papers_schedule():
  """lrate = d^-0.5 * min(step^-0.5, step * warmup^-1.5) (Vaswani et al. 2017, eq. 3)."""
  d, warmup = 512, 4000
  schedule = optim.make_schedule(opt_config(schedule='rsqrt', lr=(d * warmup) ** -0.5,
                                            warmup_steps=warmup), 100_000)
  for s in [1, 100, 3999, 4000, 4001, 20_000, 100_000]:
    paper = d ** -0.5 * min(s ** -0.5, s * warmup ** -1.5)
    assert float(schedule(s)) == pytest.approx(paper, rel=1e-5)


def test_weight_decay_skips_norms_biases_and_embeddings():
  cfg = ModelConfig(tie_embeddings=False, d_model=16, num_heads=2, d_ff=32)
  params = models.init_params(cfg, jax.random.key(0))
  flat = {'/'.join(str(k.key) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(optim.decay_mask(params))[0]}
  assert flat['decoder/layers_0/attention/query/kernel'] and flat['decoder/layers_0/mlp/wo/kernel']
  assert flat['lm_head/kernel']
  for name, decays in flat.items():
    if re.search(r'bias|norm|scale|embedding', name):
      assert not decays, name
  # And the optimizer applies it that way: with zero gradients only decayed weights move.
  tx, _ = optim.make_optimizer(opt_config(lr=0.1, warmup_steps=0, weight_decay=0.5,
                                          schedule='constant', clip_norm=0.0), 10)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
  assert jax.tree.leaves(moved) == jax.tree.leaves(optim.decay_mask(params))


def test_label_smoothing_is_cross_entropy_with_smoothed_targets(rng):
  logits = rng.normal(size=(3, 5, 11)) * 3
  labels = rng.integers(0, 11, (3, 5))
  eps = 0.1
  loss, nll = losses.cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), eps)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  target = np.full(logits.shape, eps / 11) + (1 - eps) * np.eye(11)[labels]
  np.testing.assert_allclose(loss, -(target * log_p).sum(-1), rtol=1e-5)
  np.testing.assert_allclose(nll, -np.take_along_axis(log_p, labels[..., None], -1)[..., 0],
                             rtol=1e-5)


# --- the train step -------------------------------------------------------------------------------


def tiny(family='decoder_only', **model):
  config = presets.get_config(family, 'tiny')
  config.model.update(dict(dropout=0.0, attention_dropout=0.0), **model)
  config.data.update(batch_size=4, seq_len=16)
  config.opt.update(name='sgd', lr=0.1, momentum=0.0, warmup_steps=0, schedule='constant',
                    clip_norm=0.0, weight_decay=0.0)
  return config


def step_function(config, accum_steps=1):
  cfg = ModelConfig.from_config(config)
  task = cfg.task
  tx, schedule = optim.make_optimizer(config.opt, config.train.num_steps, cfg)
  fn = jax.jit(functools.partial(steps.train_step, model=models.build_model(cfg), tx=tx,
                                 schedule=schedule, task=task, accum_steps=accum_steps))
  state = steps.init_state(cfg, tx, jax.random.key(0))
  batch = bench.random_batch(cfg, task, config.data.batch_size, config.data.seq_len)
  return fn, state, batch


def test_golden_train_step():
  """Pins one SGD step of the tiny decoder on a fixed random batch.

  Update these numbers only for an intended change of the model, its initialisation, the loss
  or the optimizer (say which in the commit), never to make a failing test pass unexplained.
  They hold to ~1e-6 across runs on CPU with jax 0.10.
  """
  fn, state, batch = step_function(tiny())
  state, metrics = fn(state, batch, jax.random.key(1))
  _, after = fn(state, batch, jax.random.key(1))
  leaves = jax.tree.leaves(state.params)
  checksum = float(sum(jnp.sum(jnp.abs(x)) for x in leaves))
  assert float(metrics['loss']) == pytest.approx(GOLDEN['loss'], rel=1e-5)  # near ln(256)
  assert float(after['loss']) == pytest.approx(GOLDEN['loss_after_one_step'], rel=1e-5)
  assert float(metrics['grad_norm']) == pytest.approx(GOLDEN['grad_norm'], rel=1e-5)
  assert checksum == pytest.approx(GOLDEN['param_abs_sum'], rel=1e-6)
  assert int(state.step) == 1


GOLDEN = {'loss': 5.62996, 'loss_after_one_step': 5.302627, 'grad_norm': 2.4452755,
          'param_abs_sum': 2086.8955}


def test_gradient_accumulation_equals_the_whole_batch():
  config = tiny(position='rope')
  fn, state, batch = step_function(config)
  fn2, _, _ = step_function(config, accum_steps=2)
  one, m1 = fn(state, batch, jax.random.key(1))
  two, m2 = fn2(state, batch, jax.random.key(1))
  np.testing.assert_allclose(m2['loss'], m1['loss'], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               two.params, one.params)


def test_bfloat16_compute_trains_with_float32_state():
  config = tiny(dtype='bfloat16')
  config.opt.update(name='adamw', lr=3e-3)
  fn, state, batch = step_function(config)
  first = None
  for i in range(10):
    state, metrics = fn(state, batch, jax.random.key(i))
    first = float(metrics['loss']) if first is None else first
  dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)}
  assert dtypes == {jnp.dtype('float32')}
  assert np.isfinite(float(metrics['loss'])) and float(metrics['loss']) < first


# --- whole runs -----------------------------------------------------------------------------------


def run_config(family, dataset, data_dir, steps, **extra):
  config = presets.get_config(family, 'tiny')
  config.data.update(dataset=dataset, data_dir=data_dir, seq_len=32, batch_size=8, prefetch=0)
  config.train.update(num_steps=steps, log_every=5, eval_every=steps, checkpoint_every=steps,
                      eval_batches=2)
  config.opt.update(lr=3e-3, warmup_steps=5)
  for key, value in extra.items():
    section, field = key.split('__')
    config[section][field] = value
  return config


@pytest.mark.parametrize('family,dataset,extra', [
    ('decoder_only', 'shakespeare', {}),  # the session's trained_lm (conftest.py)
    pytest.param('encoder_only', 'shakespeare', {}, marks=pytest.mark.slow(10)),
    pytest.param('encoder_decoder', 'copy', {'data__synthetic_len': 6, 'train__bleu_examples': 8,
                                             'train__bleu_tokenize': 'char'},
                 marks=pytest.mark.slow(10)),
    pytest.param('encoder_only', 'imdb_reviews', {'model__head': 'classify'},
                 marks=pytest.mark.slow(10)),
])
def test_every_family_learns(request, tmp_path, data_dir, family, dataset, extra):
  import tensorflow_datasets as tfds
  if family == 'decoder_only':  # this config, already trained for the session
    tmp_path = pathlib.Path(request.getfixturevalue('trained_lm'))
    summary = json.load(open(tmp_path / 'summary.json'))
  else:
    config = run_config(family, dataset, data_dir, 40, **extra)
    with tfds.testing.mock_data(num_examples=8):  # only imdb_reviews reads TFDS here
      summary = loop.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  curve = [r['loss'] for r in records if 'loss' in r]
  assert curve[-1] < 0.8 * curve[0], curve
  assert summary['final_eval_loss'] is not None and summary['status'] == 'finished'
  if family == 'encoder_decoder':  # beam-searched translations of 8 held-out examples
    assert 0 <= summary['eval_bleu'] <= 100 and 0 <= summary['eval_exact_match'] <= 1
  if family == 'encoder_only':  # what `generate` answers for it
    check_encoder_answers(str(tmp_path), extra.get('model__head', 'mlm'))


def check_encoder_answers(workdir, head):
  """fill_mask and classify against the model's own logits, laid out as in training:
  <bos> text <eos>, softmax in float64."""
  from transformer.inference import encoder, trained
  run = trained.load(workdir)
  tokenizer = run.tokenizer()
  logits = lambda ids: np.asarray(run.model.apply({'params': run.params}, np.array([ids])),
                                  np.float64)[0]
  softmax = lambda x: np.exp(x - x.max()) / np.exp(x - x.max()).sum()
  if head == 'mlm':
    [[first, second]] = encoder.fill_mask(run, ['to be, or [MASK]ot to b[MASK]'], top_k=4)
    ids = ([tokenizer.bos_id] + list(tokenizer.encode('to be, or ')) + [tokenizer.mask_id]
           + list(tokenizer.encode('ot to b')) + [tokenizer.mask_id, tokenizer.eos_id])
    expected = softmax(logits(ids)[len(tokenizer.encode('to be, or ')) + 1])
    expected[sorted(tokenizer.special_ids)] = 0  # never proposed
    top = np.argsort(-expected)[:4]
    assert [t for t, _ in first] == [tokenizer.decode([int(i)]) for i in top]
    np.testing.assert_allclose([p for _, p in first], expected[top], rtol=1e-5)
    assert len(second) == 4 and all(a[1] >= b[1] for a, b in zip(second, second[1:]))
    with pytest.raises(ConfigError, match='has no .MASK. to fill'):
      encoder.fill_mask(run, ['no mask here'])
    done = subprocess.run([sys.executable, '-m', 'transformer.generate', f'--workdir={workdir}',
                           '--prompt=to b[MASK]', '--top_k=3'], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == 'to b[MASK]'
    assert done.stdout.splitlines()[1].startswith('  [MASK] 1: ')
    assert done.stdout.count(', ') == 2  # three candidates
  else:
    probs = encoder.classify(run, ['a film', 'a much longer review of a film'])
    assert probs.shape == (2, 2)
    ids = [tokenizer.bos_id] + list(tokenizer.encode('a film')) + [tokenizer.eos_id]
    np.testing.assert_allclose(probs[0], softmax(logits(ids)), rtol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-9)
    assert encoder.class_names(run) == ['class 0', 'class 1']


def train_command(workdir, data_dir, *args):
  return [sys.executable, '-m', 'transformer.train', f'--workdir={workdir}',
          '--config=configs/decoder_only.py:tiny', f'--config.data.data_dir={data_dir}',
          '--config.data.seq_len=32', '--config.data.batch_size=4', '--config.train.log_every=2',
          '--config.train.eval_batches=2', '--config.train.checkpoint_every=4', *args]


def train_in_process(workdir, data_dir, num_steps, eval_every=None, batch_size=4):
  """What train_command runs, in this process, on one device (as the command does; bitwise
  the same run): for the runs a test does not start or stop as a process."""
  config = presets.get_config('decoder_only', 'tiny')
  config.data.update(data_dir=data_dir, seq_len=32, batch_size=batch_size)
  config.train.update(log_every=2, eval_batches=2, checkpoint_every=4, num_steps=num_steps,
                      eval_every=eval_every or num_steps)
  return loop.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])


def restored_params(workdir, config_steps=16):
  config = presets.get_config('decoder_only', 'tiny')
  cfg = ModelConfig.from_config(config)
  tx, _ = optim.make_optimizer(config.opt, config_steps, cfg)
  abstract = jax.eval_shape(functools.partial(steps.init_state, cfg, tx), jax.random.key(0))
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'))
  step, state, _, _ = ckpts.restore_latest(abstract)
  ckpts.close()
  return step, state


def saved_steps(workdir):
  directory = os.path.join(workdir, 'checkpoints')
  return [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []


def loss_curve(workdir):
  return {r['step']: r['loss'] for r in map(json.loads, open(os.path.join(workdir,
                                                                          'metrics.jsonl')))
          if 'loss' in r}


@pytest.mark.slow(12)
def test_resume_after_sigkill_is_exact(tmp_path, data_dir, capsys):
  """The command killed mid-run (maybe mid-save, maybe mid-step), then resumed, ends bitwise
  where the run that never stopped ends. Only the killed run needs a process of its own: the
  others are train_command's run in this process."""
  whole, killed = tmp_path / 'whole', tmp_path / 'killed'
  process = subprocess.Popen(train_command(killed, data_dir, '--config.train.num_steps=16',
                                           '--config.train.eval_every=8'), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and max(saved_steps(killed), default=0) < 8:
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)  # mid-run: maybe mid-save, maybe mid-step
  process.wait()
  assert process.returncode == -signal.SIGKILL
  assert not (killed / 'summary.json').exists()
  train_in_process(whole, data_dir, 16, eval_every=8)
  capsys.readouterr()
  train_in_process(killed, data_dir, 16, eval_every=8)
  assert 'resuming at step' in capsys.readouterr().out

  step_a, a = restored_params(whole)
  step_b, b = restored_params(killed)
  assert step_a == step_b == 16
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)  # bitwise
  assert loss_curve(killed) == loss_curve(whole)
  assert sorted(loss_curve(whole)) == list(range(2, 17, 2))

  # Another batch size would read other slots of the data order: refused (a ConfigError: one
  # line and exit 2 from the command), the run left intact.
  with pytest.raises(ConfigError) as refused:
    train_in_process(whole, data_dir, 20, batch_size=2)
  assert ('--config.data.batch_size=2: the run in' in str(refused.value)
          and 'resume with data.batch_size=4' in str(refused.value)), refused.value
  assert restored_params(whole)[0] == 16
  assert loss_curve(killed) == loss_curve(whole)


def test_sigterm_saves_and_exits_then_resumes(tmp_path, data_dir):
  args = ['--config.train.num_steps=400', '--config.train.checkpoint_every=1000',
          '--config.train.eval_every=1000']
  process = subprocess.Popen(train_command(tmp_path, data_dir, *args), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and not (tmp_path / 'metrics.jsonl').exists():
    time.sleep(0.05)
  time.sleep(1.0)
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=120)
  assert process.returncode == INTERRUPTED_EXIT_CODE, err[-2000:]
  saved = re.search(r'SIGTERM at step (\d+): checkpoint saved', out)
  assert saved, out
  assert 'Traceback' not in err
  assert os.listdir(tmp_path / 'checkpoints') == [saved.group(1)]


@pytest.mark.slow(8)
def test_sigterm_during_the_last_steps_evaluation_exits_143_and_the_rerun_finishes(
    tmp_path, data_dir):
  """The last step's evaluation (600 batches: a second or two), then its save: SIGTERM in
  between used to save step 10 a second time (10 is not a multiple of checkpoint_every) and die
  with StepAlreadyExistsError, exit 1. It must exit 143 with the final checkpoint saved (or 0
  if the run completed first); the rerun then finishes the run."""
  args = ['--config.train.num_steps=10', '--config.train.checkpoint_every=9',
          '--config.train.eval_every=10', '--config.train.eval_batches=600',
          '--config.train.log_every=5']
  process = subprocess.Popen(train_command(tmp_path, data_dir, *args), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and 9 not in saved_steps(tmp_path):
    time.sleep(0.05)
  time.sleep(0.3)  # past step 9's stop check, into step 10's evaluation
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=120)
  assert process.returncode in (INTERRUPTED_EXIT_CODE, 0), err[-2000:]
  assert 'Traceback' not in err and 'Error' not in err, err[-2000:]
  assert 10 in saved_steps(tmp_path)
  if process.returncode == INTERRUPTED_EXIT_CODE:
    assert 'SIGTERM at step 10: checkpoint saved' in out, out
    assert not (tmp_path / 'summary.json').exists()
    # The same command again (here: the run's own config.json, in this process) finishes it.
    loop.train_and_evaluate(runs.read_config(str(tmp_path)), str(tmp_path),
                            devices=jax.devices()[:1])
  summary = json.load(open(tmp_path / 'summary.json'))
  assert summary['final_train_loss'] is not None and summary['final_eval_loss'] is not None


def test_a_run_stopped_before_its_summary_is_finished_by_a_rerun(tmp_path, trained_lm):
  """Killed after its final checkpoint but before summary.json: the rerun used to crash in the
  report (TypeError) and write a summary with null losses. It must recompute the final
  evaluation from the last checkpoint and write the complete summary."""
  tmp_path = tmp_path / 'run'
  shutil.copytree(trained_lm, tmp_path)  # the session's run: 40 steps, an 8-byte sample
  config, one = runs.read_config(str(tmp_path)), jax.devices()[:1]
  first = json.load(open(tmp_path / 'summary.json'))
  os.remove(tmp_path / 'summary.json')
  os.remove(tmp_path / 'loss.png')
  again = loop.train_and_evaluate(config, str(tmp_path), devices=one)
  assert json.load(open(tmp_path / 'summary.json')) == json.loads(json.dumps(again))
  for key in ('wall_seconds', 'tokens_per_sec'):  # the rerun's time is added
    del first[key], again[key]
  assert again == first  # the same final losses, evaluation and sample
  assert (tmp_path / 'loss.png').exists()
  assert loop.train_and_evaluate(config, str(tmp_path), devices=one)['final_eval_loss'] == (
      first['final_eval_loss'])  # and now it is finished


@pytest.mark.slow(7)
def test_corrupted_latest_checkpoint_falls_back_to_the_previous(tmp_path, data_dir):
  """The newest checkpoint's array data cut short (a disk that failed mid-write): the run says
  so in one warning line (its failed reads used to print 100-200 'Event loop is closed'
  tracebacks, and the warning twice) and resumes from the previous checkpoint."""
  train_in_process(tmp_path, data_dir, 12)
  os.remove(tmp_path / 'summary.json')
  data = tmp_path / 'checkpoints' / '12' / 'state' / 'ocdbt.process_0'
  for root, _, files in os.walk(data):
    for name in files:
      os.truncate(os.path.join(root, name), 50)
  again = subprocess.run(train_command(tmp_path, data_dir, '--config.train.num_steps=16',
                                       '--config.train.eval_every=16'),
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
  assert [line.split(' (')[0] for line in again.stdout.splitlines() if 'unreadable' in line] == [
      'warning: checkpoint at step 12 is unreadable']
  assert 'resuming at step 8' in again.stdout
  noise = [line for line in again.stderr.replace('\r', '\n').splitlines()
           if line.strip() and not re.search(r'\d+/16 \[', line)]  # the progress bar
  assert not noise, noise[:20]
  assert (tmp_path / 'checkpoints' / '12.corrupted').is_dir()  # set aside, not deleted
  assert json.load(open(tmp_path / 'summary.json'))['steps'] == 16


def test_non_finite_loss_stops_naming_the_step(tmp_path, data_dir):
  result = subprocess.run(train_command(
      tmp_path, data_dir, '--config.train.num_steps=40', '--config.opt.name=sgd',
      '--config.opt.lr=1e12', '--config.opt.clip_norm=0', '--config.opt.warmup_steps=0',
      '--config.opt.schedule=constant', '--config.train.eval_every=40'),
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  # on a line of its own (it used to follow the progress bar on its line)
  found = re.search(r'^error: non-finite loss at step (\d+): stopping', result.stderr, re.M)
  assert found, result.stderr[-2000:]
  bad = int(found.group(1))
  saved = [int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit()]
  assert all(s < bad for s in saved)
  if saved:
    _, state = restored_params(tmp_path)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


# --- storage that refuses writes (as root, with real mounts) ------------------------------------


def error_lines(stderr):
  """stderr without the progress bar's lines: what a user reads in a log."""
  return [line for line in stderr.strip().splitlines() if '%|' not in line]


@pytest.mark.slow(6)
def test_a_full_disk_stops_the_run_in_one_line_and_the_run_resumes_once_it_has_room(
    tmp_path, data_dir, mounts, capsys):
  disk = tmp_path / 'disk'
  disk.mkdir()
  mounts('-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', disk)  # room for one checkpoint (1.6 MB)
  run, args = disk / 'run', ['--config.train.num_steps=12', '--config.train.eval_every=12']
  full = subprocess.run(train_command(run, data_dir, *args), cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  assert full.returncode == 1, full.stderr[-2000:]
  assert error_lines(full.stderr) == [
      f'error: cannot save the checkpoint of step 8 in {run}/checkpoints: No space left on '
      'device (ENOSPC); the checkpoint of step 4 is intact. Free space or make the directory '
      'writable, then run the same command to resume'], full.stderr[-3000:]
  assert os.listdir(run / 'checkpoints') == ['4']  # the partial step 8 was removed
  mount('-o', 'remount,size=100m', disk)
  train_in_process(run, data_dir, 12)  # the same command again, in this process
  assert 'resuming at step 4 of 12' in capsys.readouterr().out
  assert runs.finished_summary(str(run), 12) is not None


@pytest.mark.slow(6)
def test_a_read_only_checkpoints_directory_is_refused_before_compiling_or_stops_the_run(
    tmp_path, data_dir, mounts, capsys):
  checkpoints = tmp_path / 'checkpoints'
  checkpoints.mkdir()
  mounts('--bind', checkpoints, checkpoints)
  args = ['--config.train.num_steps=16', '--config.train.eval_every=16']
  # Read-only from the start: refused at once (it used to wait 300 s, printing tracebacks), by a
  # ConfigError (the command's one line and exit 2).
  mount('-o', 'remount,ro,bind', checkpoints)
  with pytest.raises(ConfigError) as refused:
    train_in_process(tmp_path, data_dir, 16)
  assert str(refused.value) == (f'--workdir={tmp_path}: {checkpoints} is not writable: '
                                'Read-only file system (EROFS)')
  # Made read-only while the run saves: it stops with the last good checkpoint.
  mount('-o', 'remount,rw,bind', checkpoints)
  process = subprocess.Popen(train_command(tmp_path, data_dir, *args), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while time.time() < deadline and 4 not in saved_steps(tmp_path):
    time.sleep(0.02)
  while process.poll() is None:  # 'busy' while orbax holds a file open for writing: again
    if subprocess.run(['mount', '-o', 'remount,ro,bind', str(checkpoints)],
                      capture_output=True).returncode == 0:
      break
    time.sleep(0.005)
  _, err = process.communicate(timeout=120)
  assert process.returncode == 1, err[-2000:]
  [line] = error_lines(err)
  stopped = re.fullmatch(  # step 8's save, unless it was over before the remount
      rf'error: cannot save the checkpoint of step (\d+) in {checkpoints}: Read-only file system '
      r'\(EROFS\); the checkpoint of step (\d+) is intact. Free space or make the directory '
      r'writable, then run the same command to resume', line)
  assert stopped, err[-3000:]
  assert saved_steps(tmp_path)[-1] == int(stopped.group(2)) < int(stopped.group(1))
  mount('-o', 'remount,rw,bind', checkpoints)
  capsys.readouterr()
  train_in_process(tmp_path, data_dir, 16)  # the same command again, in this process
  assert f'resuming at step {stopped.group(2)} of 16' in capsys.readouterr().out
  assert runs.finished_summary(str(tmp_path), 16) is not None


def read_tensorboard_scalars(directory):
  """Scalar tags in TensorBoard event files, parsed from the record format directly."""
  from tensorboardX.proto import event_pb2
  tags = set()
  for name in os.listdir(directory):
    data = open(os.path.join(directory, name), 'rb').read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      tags.update(v.tag for v in event.summary.value)
      offset += 12 + length + 4
  return tags


def test_a_run_leaves_a_workdir_that_explains_itself(tmp_path, data_dir):
  config = run_config('decoder_only', 'shakespeare', data_dir, 10, train__sample_tokens=20)
  summary = loop.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
  for key in ('final_train_loss', 'final_eval_loss', 'params', 'params_non_embedding',
              'flops_per_token', 'total_flops', 'tokens', 'wall_seconds', 'steps',
              'eval_bits_per_byte'):
    assert summary[key] is not None, key
  assert json.load(open(tmp_path / 'summary.json')) == json.loads(json.dumps(summary))
  assert json.load(open(tmp_path / 'config.json'))['model']['d_model'] == 64
  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  for key in ('step', 'loss', 'learning_rate', 'grad_norm', 'tokens_per_sec', 'mfu'):
    assert key in records[0], key
  assert summary['eval_bits_per_byte'] == pytest.approx(summary['final_eval_loss'] / math.log(2))
  assert summary['eval_perplexity'] == pytest.approx(math.exp(summary['final_eval_loss']))
  assert summary['total_flops'] == summary['flops_per_token'] * 10 * 8 * 32
  assert {'loss', 'learning_rate', 'eval_loss'} <= read_tensorboard_scalars(
      tmp_path / 'tensorboard')
  assert open(tmp_path / 'loss.png', 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  assert len((tmp_path / 'sample.txt').read_text()) > 0
  again = loop.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])  # done
  assert again == json.load(open(tmp_path / 'summary.json'))


# --- bad input and bench --------------------------------------------------------------------------


def failing(tmp_path, *args):
  return subprocess.run([sys.executable, '-m', 'transformer.train', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


# The command line's part: a field's rule (every rule is tested in-process in test_config.py),
# a value of the wrong type and a field that does not exist, each one line and exit 2.
@pytest.mark.parametrize('args,message', [
    (['--config.train.num_steps=0'], 'train.num_steps=0 is invalid'),
    (['--config.opt.lr=fast'], 'opt.lr'),
    (['--config.opt.learning_rate=0.1'], '--config.opt.learning_rate is not a field'),
])
def test_bad_training_input_gives_one_line(tmp_path, args, message):
  result = failing(tmp_path, f'--workdir={tmp_path}', *args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert message in result.stderr and 'Traceback' not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_workdir_problems_give_one_line(tmp_path, data_dir):
  result = failing(tmp_path)
  assert result.returncode == 2 and '--workdir is required' in result.stderr, result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  config = presets.get_config('decoder_only', 'tiny')
  config.data.update(data_dir=data_dir, seq_len=32, batch_size=4)
  a_file = tmp_path / 'file'
  a_file.write_text('x')
  one = jax.devices()[:1]
  with pytest.raises(ConfigError, match=f'--workdir={a_file}/run is not writable'):
    loop.train_and_evaluate(config, str(a_file / 'run'), devices=one)
  run = tmp_path / 'run'
  train_in_process(run, data_dir, 4)
  config.model.d_model = 32
  with pytest.raises(ConfigError, match=r'holds a checkpoint of a different model: parameter '
                                        r'decoder/final_norm/bias is \(64,\) float32 there, '
                                        r'\(32,\) float32 in this config'):
    loop.train_and_evaluate(config, str(run), devices=one)
  config.model.update(d_model=64, num_layers=1)  # a smaller model: the checkpoint has more
  with pytest.raises(ConfigError, match=r'holds a checkpoint of a different model: parameter '
                                        r'decoder/layers_1/\S+ is \([\d, ]+\) there, '
                                        r'absent in this config'):
    loop.train_and_evaluate(config, str(run), devices=one)
  assert sorted(os.listdir(run / 'checkpoints')) == ['4']  # nothing of the user's was touched


@pytest.mark.slow(6)
def test_bench_reports_the_contract_fields(data_dir):
  measured = {k: v for k, v in os.environ.items() if k != 'TRANSFORMER_PEAK_FLOPS'}  # conftest
  result = subprocess.run([sys.executable, '-m', 'transformer.bench',
                           '--config=configs/decoder_only.py:tiny', '--config.data.seq_len=32',
                           '--config.data.batch_size=4', f'--config.data.data_dir={data_dir}',
                           '--json', '--windows=2', '--steps=2'],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=measured)
  assert result.returncode == 0, result.stderr[-2000:]
  info = json.loads(result.stdout.strip().splitlines()[-1])
  for key in ('tokens_per_sec', 'step_ms', 'compile_s', 'params', 'flops_per_token', 'mfu',
              'device'):
    assert key in info, key
  assert info['params'] == 132_864  # the tiny preset (describe's count)
  assert info['tokens_per_sec'] == pytest.approx(4 * 32 / (info['step_ms'] / 1000), rel=1e-6)
  assert 0 < info['mfu'] < 1.5 and info['compile_s'] > 0
  assert isinstance(info['compile_cache_hit'], bool)
  # The step holds at least the float32 parameters and AdamW's two moments.
  assert info['step_peak_bytes'] >= 3 * 4 * info['params']
  assert info['host_peak_rss_bytes'] > info['step_peak_bytes']
  assert info['device_peak_bytes'] is None  # the CPU allocator keeps no statistics
  assert 0 < info['data_ms'] < 10_000, info.get('data_error')


def test_cpu_peak_is_measured_not_assumed(monkeypatch):
  peak = counting.measure_matmul_flops(jax.devices()[0], n=512, repeats=3)
  assert 1e8 < peak < 1e13
  # peak_flops measures it on CPU, unless $TRANSFORMER_PEAK_FLOPS gives it (conftest.py does).
  monkeypatch.setattr(counting, 'measure_matmul_flops', lambda device: peak)
  device = jax.devices()[0]
  try:
    for given, expected in (('', peak), ('2.5e11', 2.5e11)):
      monkeypatch.setenv('TRANSFORMER_PEAK_FLOPS', given)
      counting.peak_flops.cache_clear()
      assert counting.peak_flops(device) == expected
  finally:
    counting.peak_flops.cache_clear()
