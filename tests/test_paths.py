"""Run paths through etils.epath: the run-file helpers on local paths (str and epath.Path), and
everything a run, a sweep and the scaling analysis write on a gs:// path, against a stand-in
for Cloud Storage: epath's own mock (`epath.testing.mock_epath`) with gs://BUCKET/... mapped to
a local folder, holding objects without directories as GCS does. Code that went around epath
(open, os.path) on a gs:// path would write a local 'gs:' folder instead: the tests check there
is none. A gs:// path that cannot be used here ends in one line, exit 2, before anything
compiles; the data directory refuses in one line what cannot be done remotely."""

import ast
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import pytest
from etils import epath

from transformer import files, presets
from transformer.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent


# --- the stand-in for Cloud Storage ---------------------------------------------------------------


@contextlib.contextmanager
def cloud_storage(store: pathlib.Path):
  """gs://BUCKET/KEY is store/BUCKET/KEY for every call that goes through epath; writing an
  object creates its folders (GCS has none to create)."""

  def local(p):
    text = os.fspath(p) if isinstance(p, (str, os.PathLike)) else None
    return str(store / text[len('gs://'):]) if text and text.startswith('gs://') else p

  def mapped(original, *args, **kwargs):
    return original(*map(local, args), **kwargs)

  def open_object(original, p, mode):
    if any(m in mode for m in 'wa') and os.fspath(p).startswith('gs://'):
      os.makedirs(os.path.dirname(local(p)), exist_ok=True)
    return original(local(p), mode)

  names = ('copy', 'exists', 'isdir', 'listdir', 'makedirs', 'mkdir', 'remove', 'rename',
           'replace', 'rmtree', 'stat')
  with epath.testing.mock_epath(open=open_object, **{name: mapped for name in names}):
    yield


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  """A gs:// store (its local folder is yielded), the backend and the network taken as there,
  and the working directory an empty folder that must stay empty."""
  store, cwd = tmp_path / 'store', tmp_path / 'cwd'
  store.mkdir()
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  monkeypatch.setattr(files, '_backend_error', lambda scheme: None)
  monkeypatch.setattr(files, 'connect_error', lambda probe, timeout_s: None)
  monkeypatch.setattr(files, '_checked', set())
  with cloud_storage(store):
    yield store
  assert not list(cwd.iterdir()), 'written around epath: ' + ', '.join(
      str(p) for p in cwd.rglob('*'))


# --- the helpers ----------------------------------------------------------------------------------


@pytest.mark.parametrize('kind', [str, epath.Path])
def test_run_file_helpers_on_local_paths(tmp_path, kind):
  run = kind(str(tmp_path / 'run'))
  assert files.probe_writable(run) is None  # creates it
  files.write_json(files.path(run) / 'summary.json', {'loss': 1.5, 'nan': float('nan')})
  files.atomic_write(files.path(run) / 'sample.txt', 'ROMEO.\n')
  for step in (1, 2):
    files.append_text(files.path(run) / 'metrics.jsonl', json.dumps({'step': step}) + '\n')
  assert files.read_json(files.path(run) / 'summary.json')['loss'] == 1.5
  assert files.read_jsonl(files.path(run) / 'metrics.jsonl') == [{'step': 1}, {'step': 2}]
  assert files.read_json(files.path(run) / 'absent.json') is None
  assert files.read_jsonl(files.path(run) / 'absent.jsonl') == []
  assert sorted(os.listdir(tmp_path / 'run')) == ['metrics.jsonl', 'sample.txt', 'summary.json']
  assert files.absolute('run') == epath.Path(os.path.abspath('run'))
  assert str(files.absolute('gs://b/run')) == 'gs://b/run' and files.is_remote('gs://b/run')


def test_run_file_helpers_on_cloud_storage(gcs):
  run = 'gs://bucket/runs/x'
  files.check_remote(run, '--workdir')  # writes and deletes a test object
  files.makedirs(run)  # nothing: no directories
  assert not [p for p in gcs.rglob('*') if p.is_file()]  # the test object is gone
  files.write_json(f'{run}/summary.json', {'loss': 1.5})
  files.atomic_write(epath.Path(run) / 'sample.txt', 'ROMEO.\n')
  for step in (1, 2):  # an object cannot be appended to: written again whole
    files.append_text(f'{run}/metrics.jsonl', json.dumps({'step': step}) + '\n')
  assert files.read_json(f'{run}/summary.json') == {'loss': 1.5}
  assert files.read_jsonl(f'{run}/metrics.jsonl') == [{'step': 1}, {'step': 2}]
  folder = gcs / 'bucket' / 'runs' / 'x'
  assert sorted(p.name for p in folder.iterdir()) == ['metrics.jsonl', 'sample.txt',
                                                      'summary.json']  # no temporary, no probe
  assert (folder / 'sample.txt').read_text() == 'ROMEO.\n'


def test_metrics_resume_on_cloud_storage(gcs):
  """metrics.jsonl keeps the records up to the resumed step; the TensorBoard events written
  locally are copied into WORKDIR/tensorboard."""
  from transformer.training import metrics
  run = 'gs://bucket/run'
  with metrics.MetricWriter(run) as writer:
    for step in (1, 2, 3, 4):
      writer.write(step, {'loss': 5.0 - step})
  with metrics.MetricWriter(run, resume_step=2) as writer:
    writer.write(3, {'loss': 1.0})
  assert [(r['step'], r['loss']) for r in files.read_jsonl(f'{run}/metrics.jsonl')] == [
      (1, 4.0), (2, 3.0), (3, 1.0)]
  events = sorted((gcs / 'bucket' / 'run' / 'tensorboard').iterdir())
  # (one file per second and host: these two sessions may share one, as they would locally)
  assert events and all(p.name.startswith('events.out.tfevents') for p in events)
  assert all(p.stat().st_size > 0 for p in events)


def _tiny_config(data_dir):
  config = presets.get_config('decoder_only', 'tiny')
  config.data.update(data_dir=data_dir, seq_len=32, batch_size=8, prefetch=0)
  config.train.update(num_steps=6, log_every=2, eval_every=6, checkpoint_every=3,
                      eval_batches=1, sample_tokens=4)
  return config


def test_a_run_in_a_gs_workdir_writes_what_a_local_one_does(gcs, tmp_path, monkeypatch,
                                                            data_dir):
  """A short run with --workdir=gs://bucket/run writes the same files, with the same numbers,
  as the same run in a local workdir. (orbax writes checkpoints with tensorstore's own GCS
  driver, which no mock reaches: they go to a local folder here.)"""
  from transformer.training import checkpoint, loop
  original = checkpoint.Checkpoints.__init__

  def local_checkpoints(self, directory, keep=3):
    text = os.fspath(directory)
    original(self, str(gcs / text[len('gs://'):]) if text.startswith('gs://') else text, keep)

  monkeypatch.setattr(checkpoint.Checkpoints, '__init__', local_checkpoints)
  devices = jax.devices()[:1]
  loop.train_and_evaluate(_tiny_config(data_dir), 'gs://bucket/run', devices=devices)
  loop.train_and_evaluate(_tiny_config(data_dir), str(tmp_path / 'local'), devices=devices)
  remote, local = gcs / 'bucket' / 'run', tmp_path / 'local'
  assert sorted(p.name for p in remote.iterdir()) == sorted(p.name for p in local.iterdir())
  assert (remote / 'config.json').read_text() == (local / 'config.json').read_text()
  assert (remote / 'sample.txt').read_text() == (local / 'sample.txt').read_text()
  timing = {'tokens_per_sec', 'mfu', 'wall_seconds'}
  strip = lambda record: {k: v for k, v in record.items() if k not in timing}
  assert [strip(r) for r in files.read_jsonl(remote / 'metrics.jsonl')] == [
      strip(r) for r in files.read_jsonl(local / 'metrics.jsonl')]
  assert strip(files.read_json(remote / 'summary.json')) == strip(
      files.read_json(local / 'summary.json'))
  assert (remote / 'loss.png').read_bytes()[:4] == b'\x89PNG'
  assert sorted(p.name for p in (remote / 'checkpoints').iterdir()) == ['3', '6']
  done = loop.train_and_evaluate(_tiny_config(data_dir), 'gs://bucket/run', devices=devices)
  assert done == files.read_json(remote / 'summary.json')  # read back: nothing to do


def test_a_sweep_and_its_analysis_on_cloud_storage(gcs):
  """A point's train.log (written locally by its process, then appended), failed.json,
  results.csv and the scaling analysis of a gs:// sweep directory."""
  from transformer.analysis import scaling, studies, sweeps
  config = studies.base()
  points = sweeps.expand(config, sweeps.Sweep(grid=sweeps.axis('model.d_model', [32, 64, 128])))
  workdir = 'gs://bucket/sweep'
  python = [sys.executable, '-c']
  failing = python + ['import sys; print("error: data.spm_model=x: no such file"); sys.exit(1)']
  assert sweeps.run_point(failing, f'{workdir}/{points[2].id}') == 1
  assert sweeps.run_point(python + ['pass'], f'{workdir}/{points[2].id}') == 0
  assert sweeps.run_point(failing, f'{workdir}/{points[2].id}') == 1
  for i, point in enumerate(points[:2]):
    files.write_json(f'{workdir}/{point.id}/summary.json', dict(
        status='finished', steps=point.config.train.num_steps, final_train_loss=3.0 - i,
        final_eval_loss=3.0 - i, **point.info))
  files.write_json(f'{workdir}/sweep.json', {'fields': ['model.d_model']})
  sweeps.write_results(points, workdir, ['model.d_model'])
  statuses = [sweeps.point_status(p, workdir)[0] for p in points]
  assert statuses == ['finished', 'finished', 'failed']
  log = (gcs / 'bucket' / 'sweep' / points[2].id / 'train.log').read_text()
  assert log.count('$ ') == 3 and log.count('\nerror: data.spm_model') == 2
  results = scaling.read_results(workdir)
  assert list(results.loss) == [3.0, 2.0] and results.swept == ('model.d_model',)
  with pytest.raises(ConfigError, match='--launcher=slurm needs a --workdir on a file system'):
    sweeps.run_sweep(config, 'configs/default.py', sweeps.Sweep(grid=[{'train.seed': 0}]),
                     workdir, {}, launcher='slurm')


def test_sentencepiece_cached_in_a_gs_data_dir(gcs):
  from transformer.data import tokenizers
  path = tokenizers.sentencepiece_cache_path('gs://bucket/data', 'x', 40, 'bpe', 10, 'train')
  texts = [f'line {i} of some text to learn pieces from, a b c d e f g' for i in range(200)]
  tokenizers.train_sentencepiece(texts, 40, path, 'bpe')
  tokenizer = tokenizers.load_sentencepiece(path, 40)
  assert tokenizer.decode(tokenizer.encode('line 7 of')) == 'line 7 of'
  assert [p.name for p in (gcs / 'bucket' / 'data' / 'tokenizers').iterdir()] == [
      os.path.basename(path)]


# --- what is refused, in one line -----------------------------------------------------------------


def test_a_gs_workdir_without_its_backend_fails_in_one_line(tmp_path):
  """As on a machine without gcsfs (it is made unimportable here): exit 2, one line naming
  --workdir and why, before anything compiles, nothing written."""
  blocked = tmp_path / 'blocked'
  blocked.mkdir()
  (blocked / 'gcsfs.py').write_text("raise ImportError('No module named gcsfs')\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocked), str(ROOT)]), EPATH_USE_TF='0')
  start = time.perf_counter()
  done = subprocess.run([sys.executable, '-m', 'transformer.train', '--workdir=gs://bucket/run'],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  seconds = time.perf_counter() - start
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.count('\n') == 1 and 'Traceback' not in done.stderr, done.stderr
  assert done.stderr.startswith('error: --workdir=gs://bucket/run cannot be used: gs:// needs '
                                'gcsfs'), done.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ['blocked']
  assert seconds < 60, seconds  # about 2 s: imports, no network


def test_an_unreachable_or_silent_store_is_refused_within_its_timeout(gcs, monkeypatch):
  monkeypatch.setattr(files, 'connect_error', lambda probe, timeout_s: 'refused')
  with pytest.raises(ConfigError, match=r'^--workdir=gs://bucket/run cannot be used: storage\.'
                     r'googleapis\.com:443 cannot be reached \(refused\)'):
    files.check_remote('gs://bucket/run', '--workdir')
  monkeypatch.setattr(files, 'connect_error', lambda probe, timeout_s: None)
  monkeypatch.setattr(type(files.path('gs://b/x')), 'open', lambda *a, **k: time.sleep(5))
  start = time.perf_counter()
  with pytest.raises(ConfigError, match=r'could not be written there: no answer in 0\.3 s'):
    files.check_remote('gs://bucket/run', '--workdir', timeout_s=0.3)
  assert time.perf_counter() - start < 2
  with pytest.raises(ConfigError, match='^--workdir=memory://x cannot be used: memory:// is not'):
    files.check_remote('memory://x', '--workdir')


def test_what_a_gs_data_dir_cannot_do_is_refused_in_one_line(gcs, tmp_path):
  from transformer.config import Experiment
  from transformer.data import datasets, pipeline
  config = presets.get_config('decoder_only', 'tiny')
  config.data.update(data_dir='gs://bucket/data', dataset='files',
                     train_files=str(tmp_path / '*.txt'))
  (tmp_path / 'a.txt').write_text('some text')
  with pytest.raises(ConfigError, match=r"^data\.data_dir=gs://bucket/data is invalid for "
                     r"data\.dataset='files': your files are converted .* need a local"):
    pipeline.check_data(Experiment.from_config(config))
  config.data.update(dataset='shakespeare', train_files='')
  with pytest.raises(ConfigError, match=r'^data\.data_dir=gs://bucket/data does not hold the '
                     'embedded corpus'):
    pipeline.prepare_data(Experiment.from_config(config))
  config.data.update(dataset='lm1b')
  with pytest.raises(ConfigError, match='TFDS cannot prepare lm1b there'):
    datasets.prepare(Experiment.from_config(config).data, network_probe='')
  assert not (gcs / 'bucket').exists()  # nothing was written


# --- the structure --------------------------------------------------------------------------------

# The modules that read or write run paths (workdirs, sweep directories, their files), and the
# functions of theirs allowed to call the local file system directly, each on local temporary
# files only.
RUN_PATH_MODULES = ('files.py', 'plots.py', 'sweep.py', 'scaling.py', 'training/loop.py',
                    'training/metrics.py', 'training/runs.py', 'training/checkpoint.py',
                    'analysis/sweeps.py', 'analysis/scaling.py', 'inference/inspect.py',
                    'inference/ablation.py', 'inference/trained.py')
LOCAL_ONLY = {
    ('files.py', 'absolute'),  # os.path.abspath of a path known to be local
    ('sweep.py', 'main'),  # the sweep's config file
    ('training/metrics.py', '_Mirror.copy'),  # a temporary directory
    ('training/metrics.py', '_Mirror.close'),
    ('analysis/sweeps.py', '_log_file'), ('analysis/sweeps.py', '_error_line'),  # the local log
}
FILE_SYSTEM = {'os': {'makedirs', 'mkdir', 'listdir', 'remove', 'unlink', 'rename', 'replace',
                      'stat', 'walk', 'scandir', 'rmdir'},
               'os.path': {'exists', 'isdir', 'isfile', 'getsize', 'getmtime', 'abspath',
                           'realpath', 'expanduser'},
               'shutil': None, 'glob': None, 'pathlib': None}  # None: any of it


def _file_system_calls(tree: ast.Module) -> list[tuple[str, str, int]]:
  """(enclosing function, call, line) of each builtin open() and each call of FILE_SYSTEM."""
  found = []

  def visit(node, function):
    for child in ast.iter_child_nodes(node):
      inner = (f'{function}.{child.name}'.lstrip('.')
               if isinstance(child, (ast.FunctionDef, ast.ClassDef)) else function)
      if isinstance(child, ast.Call):
        name = ast.unparse(child.func)
        module, _, attribute = name.rpartition('.')
        if name == 'open' or (module in FILE_SYSTEM and (
            FILE_SYSTEM[module] is None or attribute in FILE_SYSTEM[module])):
          found.append((function, name, child.lineno))
      visit(child, inner)

  visit(tree, '')
  return found


def test_run_paths_go_through_epath():
  """Where run paths are handled, the file system is reached through epath (files.py's helpers
  or epath.Path), never open() or os.path, except on the local files LOCAL_ONLY names."""
  wrong = []
  for name in RUN_PATH_MODULES:
    tree = ast.parse((ROOT / 'transformer' / name).read_text())
    wrong += [f'{name}:{line} {function}(): {call}()' for function, call, line in
              _file_system_calls(tree) if (name, function) not in LOCAL_ONLY]
  assert not wrong, '\n'.join(wrong)
  caught = _file_system_calls(ast.parse('def f(p):\n  os.path.exists(p)\n  open(p)\n'))
  assert [call for _, call, _ in caught] == ['os.path.exists', 'open']  # the check can fail
