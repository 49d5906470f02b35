"""Sweeps: expansion (product, zip, chain, derived fields), ids, bad input, and real runs of a
tiny sweep in subprocesses (failure isolation, skipping finished points, submitit)."""

import csv
import hashlib
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from transformer.analysis import studies, sweeps
from transformer.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / 'configs' / 'sweeps').glob('*.py'))


def config_module(path):
  """A config file as a module (its get_config, get_sweep)."""
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_product_zip_chain():
  a, b = sweeps.axis('x.a', [1, 2]), sweeps.axis('x.b', ['u', 'v', 'w'])
  assert sweeps.product(a, b) == [{'x.a': 1, 'x.b': 'u'}, {'x.a': 1, 'x.b': 'v'},
                                  {'x.a': 1, 'x.b': 'w'}, {'x.a': 2, 'x.b': 'u'},
                                  {'x.a': 2, 'x.b': 'v'}, {'x.a': 2, 'x.b': 'w'}]
  c = sweeps.axis('x.c', [0.5, 0.25])
  assert sweeps.zipit(a, c) == [{'x.a': 1, 'x.c': 0.5}, {'x.a': 2, 'x.c': 0.25}]
  assert sweeps.chain(a, c) == [{'x.a': 1}, {'x.a': 2}, {'x.c': 0.5}, {'x.c': 0.25}]
  assert len(sweeps.product(sweeps.zipit(a, c), b)) == 6
  with pytest.raises(ValueError, match='different lengths'):
    sweeps.zipit(a, b)


def test_derived_fields_apply_in_order_after_overrides():
  s = sweeps.Sweep(
      grid=sweeps.axis('model.d_model', [64, 256]),
      derived={'model.d_ff': studies.ffn_4x, 'model.num_heads': studies.heads_of_size(32),
               'train.num_steps': lambda c: sweeps.steps_for_tokens(c, 3e6)})
  points = sweeps.expand(studies.base(), s)
  assert [p.config.model.d_ff for p in points] == [256, 1024]
  assert [p.config.model.num_heads for p in points] == [2, 8]
  assert [p.derived['train.num_steps'] for p in points] == [round(3e6 / (16 * 128))] * 2
  # The counts are those of the point's model: 12 L d^2 + biases and norms, at L = 4.
  for p, d in zip(points, (64, 256)):
    blocks = 4 * (12 * d * d + 9 * d + 4 * d)  # weights; q,k,v,o,ffn biases; 2 norms
    assert p.info['params_non_embedding'] == blocks + 2 * d  # + the final norm


def test_token_and_flop_budgets():
  config = studies.base()
  per_token = sweeps.counts(config)['flops_per_token']
  steps = sweeps.steps_for_flops(config, 1e12)
  assert abs(steps * 16 * 128 * per_token - 1e12) <= 16 * 128 * per_token / 2


def test_point_ids_are_readable_and_deterministic():
  pid = sweeps.point_id({'model.num_heads': 4, 'opt.lr': 0.003})
  assert pid == sweeps.point_id({'model.num_heads': 4, 'opt.lr': 0.003})
  assert pid.startswith('num_heads-4_lr-0.003_')
  assert pid == 'num_heads-4_lr-0.003_' + hashlib.sha1(
      json.dumps([['model.num_heads', 4], ['opt.lr', 0.003]]).encode()).hexdigest()[:6]
  assert pid != sweeps.point_id({'model.num_heads': 4, 'opt.lr': 0.001})
  assert sweeps.point_id({'model.position': 'rope'}) != sweeps.point_id({'model.position': 'alibi'})


@pytest.mark.parametrize('grid, derived, message', [
    ([], {}, 'the sweep is empty'),
    ([{'model.num_heads': 2}, {'model.num_haeds': 4}], {},
     r'point 1 \(num_haeds-4_\w+\): model.num_haeds is not a field'),
    ([{'modle.num_heads': 2}], {}, r'modle.num_heads is not a field of the config \(modle does'),
    ([{'model.num_heads': 3}], {}, r'point 0 \(num_heads-3_\w+\): model.d_model=128 is invalid: '
     'must be divisible by model.num_heads=3'),
    ([{'model.d_model': 96}], {'model.num_heads': studies.heads_of_size(64)},
     r'point 0 \(d_model-96_\w+\): deriving model.num_heads: ConfigError'),
    ([{'opt.lr': 1e-3}, {'opt.lr': 1e-3}], {}, 'the same values as point 0'),
])
def test_bad_sweeps_name_the_point_and_field(grid, derived, message):
  with pytest.raises(ConfigError, match=message):
    sweeps.expand(studies.base(), sweeps.Sweep(grid=grid, derived=derived))


@pytest.mark.parametrize('path', SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_file_expands(path):
  text = path.read_text()
  assert f'--config=configs/sweeps/{path.name}' in text  # the launch command is in the docstring
  module = config_module(path)
  for scale in ('cpu', 'gpu'):  # every point's config is valid (counting is left to dry runs)
    points = sweeps.expand(module.get_config(scale), sweeps.load_sweep(str(path), scale))
    assert len(points) >= (1 if path.stem == 'prediction' else 2)  # prediction: one model
  if path.stem == 'model_size':  # >= 6 sizes spanning >= 30x, each with its own token budget
    points = sweeps.expand(studies.base(), sweeps.load_sweep(str(path), None))
    sizes = [p.info['params_non_embedding'] for p in points]
    assert len(set(sizes)) >= 6 and max(sizes) / min(sizes) >= 30
  if path.stem == 'isoflop':  # every point spends its budget, within one step
    points = sweeps.expand(studies.base(), sweeps.load_sweep(str(path), None))
    for p in points:
      assert abs(p.info['total_flops'] / p.config.sweep.flops_budget - 1) < 0.02
    assert len({p.config.sweep.flops_budget for p in points}) >= 3


def test_command_line_values_win_over_derived_fields():
  """`sweep --config.train.num_steps=100` trains every point 100 steps (its rule is not
  applied, and the fields derived from it follow); a swept field cannot be set that way."""
  sweep = sweeps.load_sweep(str(ROOT / 'configs' / 'sweeps' / 'model_size.py'), None)
  config = studies.base()
  config.train.num_steps = 100
  points = sweeps.expand(config, sweep, ['train.num_steps'])
  for p in points:
    assert p.values['train.num_steps'] == p.config.train.num_steps == 100
    assert p.values['train.eval_every'] == 100 and p.info['tokens'] == 100 * 16 * 128
  assert sweeps.expand(studies.base(), sweep)[0].values['train.num_steps'] != 100
  with pytest.raises(ConfigError, match=r'--config\.model\.d_model is swept by this sweep'):
    sweeps.expand(config, sweep, ['model.d_model'])


def test_the_command_line_of_a_sweep():
  def sweep(*args):
    return subprocess.run([sys.executable, '-m', 'transformer.sweep',
                           '--config=configs/sweeps/model_size.py', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
  plan = sweep('--config.train.num_steps=100', '--dry_run')
  assert plan.returncode == 0, plan.stderr
  assert 'train.num_steps=100 ' in plan.stdout and 'train.num_steps=488' not in plan.stdout
  unknown = sweep('--config.nonexistent=1', '--dry_run')
  assert unknown.returncode == 2
  assert unknown.stderr.strip() == 'error: --config.nonexistent is not a field of the config'
  usage = sweep('--help')
  for flag in ('--dry_run', '--parallel', '--launcher', '--submitit', '--workdir'):
    assert flag in usage.stdout, flag


TINY_SWEEP = '''
"""A tiny sweep for tests.

  python -m transformer.sweep --config=tiny.py --workdir=DIR
"""
from transformer.analysis import studies, sweeps


def get_config(arg=None):
  config = studies.base()
  config.model.update(num_layers=1, d_model=32, num_heads=2, d_ff=64)
  config.data.update(seq_len=32, batch_size=4)
  config.train.update(num_steps=3, log_every=1, eval_every=3, eval_batches=1,
                      checkpoint_every=3)
  config.opt.warmup_steps = 1
  return config


def get_sweep(arg=None):
  # The second point fails when its run starts (its tokenizer file is missing); the others
  # must not care. Seeds 0 and 1 compile the same step (the cache serves the second).
  missing = {'data.tokenizer': 'sentencepiece', 'data.spm_model': '/nonexistent/spm.model'}
  return sweeps.Sweep(grid=sweeps.chain([{'train.seed': 0}], [missing], [{'train.seed': 1}]))
'''


def sweep_command(path, workdir, data_dir, *args):
  return [sys.executable, '-m', 'transformer.sweep', f'--config={path}', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', *args]


def read_results(workdir) -> list[dict]:
  with open(os.path.join(workdir, 'results.csv')) as f:
    return list(csv.DictReader(f))


@pytest.mark.slow(25)
def test_sweep_isolates_failures_skips_finished_and_runs_through_submitit(tmp_path, data_dir):
  path, workdir = tmp_path / 'tiny.py', tmp_path / 'sweep'
  path.write_text(TINY_SWEEP)

  first = subprocess.run(sweep_command(path, workdir, data_dir, '--parallel=2'), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
  assert first.returncode == 1, first.stdout + first.stderr  # one point failed
  assert '3 points' in first.stdout and '2 finished, 1 failed' in first.stdout, first.stdout
  rows = read_results(workdir)
  assert [r['status'] for r in rows] == ['finished', 'failed', 'finished']
  assert 'data.spm_model=' in rows[1]['error'] and 'no such file' in rows[1]['error']
  with open(workdir / 'results.csv') as f:
    header = next(csv.reader(f))
  assert header == ['id', 'status', 'train.seed', 'data.tokenizer', 'data.spm_model',
                    *sweeps.RESULT_FIELDS]
  for row, seed in ((rows[0], 0), (rows[2], 1)):  # ordinary runs; the table holds their summary
    point_dir = workdir / row['id']
    summary = json.loads((point_dir / 'summary.json').read_text())
    assert float(row['final_eval_loss']) == summary['final_eval_loss']
    assert int(row['params']) == summary['params'] and row['train.seed'] == str(seed)
    assert json.loads((point_dir / 'config.json').read_text())['train']['seed'] == seed
    assert (point_dir / 'command.txt').read_text().startswith('-m transformer.train --config=')
  finished = {r['id']: os.path.getmtime(workdir / r['id'] / 'summary.json')
              for r in (rows[0], rows[2])}

  # A point whose run stopped short of its steps is 'interrupted' (relaunching resumes it).
  module = config_module(path)
  longer = sweeps.Sweep(grid=[{'train.seed': 0}], derived={'train.num_steps': lambda c: 5})
  point = sweeps.expand(module.get_config(), longer)[0]
  assert point.id == rows[0]['id'] and sweeps.point_status(point, str(workdir))[0] == 'interrupted'

  again = subprocess.run(sweep_command(path, workdir, data_dir, '--launcher=submitit_local'),
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert again.returncode == 1, again.stdout + again.stderr
  assert '2 finished, 1 to run' in again.stdout, again.stdout
  assert 'submitted job array' in again.stdout
  for point_id, mtime in finished.items():  # finished points were not run again
    assert os.path.getmtime(workdir / point_id / 'summary.json') == mtime
  assert [r['status'] for r in read_results(workdir)] == ['finished', 'failed', 'finished']


def test_a_stopped_point_is_resumable_not_failed(tmp_path):
  """A point whose process SIGTERM reached before its handler was installed (it dies by the
  signal) or that saved and exited 143 is 'interrupted', which a relaunch runs again; only a
  real failure is 'failed'. Real processes, real signals."""
  module = config_module(ROOT / 'configs' / 'default.py')
  point = sweeps.expand(module.get_config(), sweeps.Sweep(grid=[{'train.seed': 0}]))[0]
  point_dir, workdir = tmp_path / point.id, str(tmp_path)
  python = [sys.executable, '-c']
  assert sweeps.point_status(point, workdir)[0] == 'pending'

  killed = python + ['import os, signal; os.kill(os.getpid(), signal.SIGTERM)']
  assert sweeps.run_point(killed, str(point_dir)) == -signal.SIGTERM
  assert sweeps.point_status(point, workdir)[0] == 'interrupted'
  assert not (point_dir / 'failed.json').exists()

  failing = python + ['import sys; print("error: data.spm_model=x: no such file"); sys.exit(1)']
  assert sweeps.run_point(failing, str(point_dir)) == 1
  status, results = sweeps.point_status(point, workdir)
  assert status == 'failed' and results['error'] == (
      'exit code 1: error: data.spm_model=x: no such file'), results
  assert not (point_dir / 'stopped.json').exists()

  assert sweeps.run_point(python + ['import sys; sys.exit(143)'], str(point_dir)) == 143
  assert sweeps.point_status(point, workdir)[0] == 'interrupted'
  assert sweeps.run_point(python + ['pass'], str(point_dir)) == 0  # no summary: still to run
  assert sweeps.point_status(point, workdir)[0] == 'pending'
  assert sorted(p.name for p in point_dir.iterdir()) == ['train.log']
  assert (point_dir / 'train.log').read_text().count('$ ') == 4


def test_bad_sweep_exits_2_with_one_line_before_running(tmp_path):
  path = tmp_path / 'bad.py'
  path.write_text(TINY_SWEEP.replace("'train.seed': 1", "'train.sede': 1"))
  result = subprocess.run([sys.executable, '-m', 'transformer.sweep', f'--config={path}',
                           f'--workdir={tmp_path / "w"}'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.count('\n') == 1 and 'Traceback' not in result.stderr, result.stderr
  assert 'point 2 (sede-1_' in result.stderr and 'train.sede is not a field' in result.stderr
  assert not (tmp_path / 'w').exists()  # nothing ran, nothing was written


def test_a_mixture_ablation_reports_each_datasets_loss(tmp_path):
  """results.csv of configs/sweeps/mixture.py: a column per dataset of the mixtures, filled
  from each finished point's summary."""
  path = ROOT / 'configs' / 'sweeps' / 'mixture.py'
  module = config_module(path)
  points = sweeps.expand(module.get_config(), sweeps.load_sweep(str(path), None))
  for i, point in enumerate(points[:2]):  # two finished, the others pending
    os.makedirs(tmp_path / point.id)
    summary = {'status': 'finished', 'steps': point.config.train.num_steps,
               'final_train_loss': 3.0, 'final_eval_loss': 2.5 + i,
               'eval_loss/shakespeare': 2.0 + i, 'eval_loss/recall': 4.0 + i}
    (tmp_path / point.id / 'summary.json').write_text(json.dumps(summary))
  rows = list(csv.DictReader(open(sweeps.write_results(points, str(tmp_path),
                                                       ['data.mixture']))))
  assert [r['status'] for r in rows] == ['finished'] * 2 + ['pending'] * 3
  assert [(r['eval_loss/shakespeare'], r['eval_loss/recall']) for r in rows[:2]] == [
      ('2.0', '4.0'), ('3.0', '5.0')]
  assert rows[2]['eval_loss/recall'] == '' and rows[0]['data.mixture'] == 'shakespeare=1,recall=0'
