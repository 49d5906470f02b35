"""Weights & Biases logging (train.wandb_project): an offline run read back from its .wandb file
holds metrics.jsonl's records and config.json; a resumed run keeps its W&B run id; a missing
wandb package and a project name W&B refuses end the program in one line, before anything is
written."""

import json
import os
import struct
import subprocess
import sys

import jax
import pytest

from transformer import config as schema, presets
from transformer.errors import ConfigError
from transformer.training import loop, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
  """W&B offline, its settings, caches and logs under tmp_path/home (nothing of the user's is
  read or written); its service process is stopped afterwards."""
  wandb = pytest.importorskip('wandb')
  import matplotlib
  home = tmp_path / 'home'
  monkeypatch.setenv('MPLCONFIGDIR', matplotlib.get_configdir())  # its font cache, not rebuilt
  for name in ('HOME', 'XDG_CACHE_HOME', 'XDG_CONFIG_HOME', 'WANDB_DIR', 'WANDB_CONFIG_DIR',
               'WANDB_CACHE_DIR', 'WANDB_DATA_DIR'):
    monkeypatch.setenv(name, str(home / name.lower()))
  for name in ('WANDB_RUN_ID', 'WANDB_RESUME', 'WANDB_NAME', 'WANDB_PROJECT', 'WANDB_ENTITY'):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('WANDB_MODE', 'offline')
  yield home
  wandb.teardown()


def train(workdir, data_dir, num_steps):
  """tests/test_train.py's small run (the same compiled steps), logging to W&B."""
  config = presets.get_config('decoder_only', 'tiny')
  config.data.update(data_dir=data_dir, seq_len=32, batch_size=4)
  config.train.update(log_every=2, eval_batches=2, checkpoint_every=4, num_steps=num_steps,
                      eval_every=4, wandb_project='transformer-tests')
  loop.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])


def wandb_records(path):
  """The records of a .wandb file: W&B's LevelDB-style log (a 7-byte header, then 32 KiB blocks
  of chunks, each with a 4-byte checksum, a 2-byte length and a 1-byte type: full, first,
  middle, last), each record a protocol buffer."""
  from wandb.proto import wandb_internal_pb2
  data = open(path, 'rb').read()
  assert data[:4] == b':W&B', path
  offset, pending, block = 7, b'', 32768
  while offset + 7 <= len(data):
    if block - offset % block < 7:  # too little room left for a chunk header: padding
      offset += block - offset % block
      continue
    _, length, kind = struct.unpack('<IHB', data[offset:offset + 7])
    pending += data[offset + 7:offset + 7 + length]
    offset += 7 + length
    if kind in (1, 4):  # full, last
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      pending = b''
      yield record


def offline_runs(workdir):
  """Each offline W&B session in the workdir, oldest first: (run id, name, config, history),
  where history is {step: {metric: value}} without W&B's own (_step, _runtime, ...)."""
  root = workdir / 'wandb'
  sessions = []
  for name in sorted(d for d in os.listdir(root) if d.startswith('offline-run-')):
    (log,) = (root / name).glob('*.wandb')
    run, history = None, {}
    for record in wandb_records(log):
      kind = record.WhichOneof('record_type')
      if kind == 'run':
        run = record.run
      elif kind == 'history':
        values = {item.key or '/'.join(item.nested_key): json.loads(item.value_json)
                  for item in record.history.item}
        history[record.history.step.num] = {k: v for k, v in values.items()
                                            if not k.startswith('_')}
    config = {u.key: json.loads(u.value_json) for u in run.config.update
              if not u.key.startswith('_')}
    sessions.append((run.run_id, run.display_name, config, history))
  return sessions


def test_a_run_logs_its_metrics_and_config_and_a_resumed_run_keeps_its_id(
    tmp_path, data_dir, offline_wandb):
  workdir = tmp_path / 'run'
  train(workdir, data_dir, 4)
  ((run_id, name, config, history),) = offline_runs(workdir)
  records = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert history == {r['step']: {k: v for k, v in r.items() if k != 'step'} for r in records}
  assert {'loss', 'learning_rate', 'tokens_per_sec', 'eval_loss'} <= set(history[4])
  assert config == json.load(open(workdir / 'config.json'))
  assert name == 'run' and config['train']['wandb_project'] == 'transformer-tests'
  assert (workdir / metrics.WANDB_ID_FILE).read_text().strip() == run_id

  train(workdir, data_dir, 6)  # resumed from the checkpoint of step 4
  first, (again, _, config, history) = offline_runs(workdir)
  assert again == run_id and first[0] == run_id
  assert history == {6: {k: v for k, v in json.loads(open(workdir / 'metrics.jsonl')
                                                     .readlines()[-1]).items() if k != 'step'}}
  assert config['train']['num_steps'] == 6
  assert not (offline_wandb / 'wandb_dir').exists()  # W&B's files are the workdir's


def test_project_names_are_refused_as_wandb_refuses_them():
  """The config's rule (checked before the run starts) is the one of the installed wandb."""
  wandb = pytest.importorskip('wandb')
  names = ['ok', 'x' * 128, 'x' * 129, *(f'a{c}b' for c in schema.WANDB_PROJECT_FORBIDDEN)]
  for name in names:
    try:
      wandb.Settings(project=name)
      refused = False
    except wandb.errors.UsageError:
      refused = True
    config = presets.get_config('decoder_only', 'tiny')
    config.train.wandb_project = name
    if refused:
      with pytest.raises(ConfigError, match='train.wandb_project=.* is invalid'):
        schema.Experiment.from_config(config)
    else:
      schema.Experiment.from_config(config)
  config = presets.get_config('decoder_only', 'tiny')
  config.train.wandb_entity = 'team'
  with pytest.raises(ConfigError, match='train.wandb_entity=.* needs train.wandb_project'):
    schema.Experiment.from_config(config)


def run_train(tmp_path, *args, env=None):
  return subprocess.run(
      [sys.executable, '-m', 'transformer.train', f'--workdir={tmp_path / "run"}',
       '--config=configs/decoder_only.py:tiny', *args], cwd=ROOT, capture_output=True, text=True,
      timeout=120, env={**os.environ, 'WANDB_MODE': 'offline', **(env or {})})


@pytest.mark.parametrize('project,installed,message', [
    ('x', False, "train.wandb_project='x' needs Weights & Biases"),
    ('team/x', True, "train.wandb_project='team/x' is invalid"),
])
def test_no_wandb_and_bad_project_names_give_one_line(tmp_path, project, installed, message):
  env = {}
  if not installed:  # a wandb that cannot be imported shadows the installed one
    fake = tmp_path / 'no_wandb' / 'wandb'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text("raise ImportError('No module named wandb')\n")
    env['PYTHONPATH'] = os.pathsep.join([str(fake.parent), os.environ.get('PYTHONPATH', '')])
  result = run_train(tmp_path, f'--config.train.wandb_project={project}', env=env)
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert message in result.stderr
  if not installed:
    assert "pip install -e '.[wandb]'" in result.stderr
  assert not (tmp_path / 'run').exists()  # nothing written, nothing compiled
