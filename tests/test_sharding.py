"""Scale-out on 8 simulated CPU devices: mesh validation, parameter shardings, constraints in
the HLO, the same training on every layout (one device, pmap, jit 8x1x1, 2x4x1, 2x2x2), and
checkpoints that move between meshes bitwise."""

import functools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from transformer import presets
from transformer.analysis import bench
from transformer.config import Experiment
from transformer.errors import ConfigError
from transformer.model import models
from transformer.training import checkpoint, loop, optim, sharding, step as steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small(family='decoder_only', parallel='jit', mesh=(-1, 1, 1), **model):
  config = presets.get_config(family, 'tiny')
  config.model.update(dict(d_model=32, num_heads=4, d_ff=64, num_layers=2, dropout=0.0,
                           attention_dropout=0.0), **model)
  config.data.update(batch_size=16, seq_len=16)
  config.opt.update(name='sgd', lr=0.5, momentum=0.0, warmup_steps=0, schedule='constant',
                    clip_norm=0.0, weight_decay=0.0)
  config.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  config.parallel = parallel
  return config


def parallel_of(config, devices=None):
  experiment = Experiment.from_config(config)
  par, _ = steps.make_parallel(experiment, devices)
  return par, experiment.model, experiment.task


def batches(cfg, task, config, n):
  """Random tokens whose targets are the inputs: learnable by every family."""
  out = []
  for i in range(n):
    batch = bench.random_batch(cfg, task, config.data.batch_size, config.data.seq_len, seed=i)
    if 'targets' in batch:
      batch['targets'] = batch['inputs'].copy()
    out.append(batch)
  return out


# --- the mesh and bad input -----------------------------------------------------------------------


@pytest.mark.parametrize('mesh,devices,expected', [
    ((-1, 1, 1), 8, (8, 1, 1)), ((2, -1, 1), 8, (2, 4, 1)), ((2, 2, -1), 8, (2, 2, 2)),
    ((-1, 1, 1), 1, (1, 1, 1)), ((1, 1, 1), 1, (1, 1, 1)),
])
def test_mesh_shape_fills_the_free_axis(mesh, devices, expected):
  config = small(mesh=mesh)
  assert sharding.mesh_shape(Experiment.from_config(config), devices) == expected


@pytest.mark.parametrize('change,devices,message', [
    (dict(mesh=(2, 2, 1)), 8, 'the product is 4 but there are 8 devices'),
    (dict(mesh=(-1, -1, 1)), 8, 'only one mesh field may be -1'),
    (dict(mesh=(3, -1, 1)), 8, 'not divisible by the fixed fields'),
    (dict(mesh=(0, 1, 1)), 8, 'mesh.data=0 is invalid'),
    (dict(mesh=(1, 1, 8), num_heads=4), 8, 'model.num_heads=4 is invalid: must be divisible by '
                                           'mesh.tensor=8'),
    (dict(mesh=(2, 1, 4), num_heads=4, d_ff=66), 8, 'model.d_ff=66 is invalid'),
    (dict(mesh=(2, 1, 4), num_kv_heads=2), 8, 'model.num_kv_heads=2 is invalid'),
    (dict(mesh=(1, 8, 1), d_model=36, num_heads=4), 8, 'model.d_model=36 is invalid'),
    (dict(mesh=(-1, 1, 1), batch_size=12), 8, 'data.batch_size=12 is invalid: each (micro-)batch '
                                               'must be divisible by the data-parallel size'),
    (dict(mesh=(-1, 2, 1), parallel='pmap'), 8, "mesh.fsdp=2 is invalid with parallel='pmap'"),
    (dict(parallel='pjit'), 8, "parallel='pjit' is invalid"),
])
def test_bad_meshes_are_named(change, devices, message):
  change = dict(change)
  batch_size = change.pop('batch_size', None)
  config = small(**change)
  if batch_size:
    config.data.batch_size = batch_size
  with pytest.raises(ConfigError) as error:
    loop.validate(config, devices)
  assert message in str(error.value) and '\n' not in str(error.value)


def test_a_bad_mesh_exits_with_one_line_before_compiling(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'transformer.train', f'--workdir={tmp_path}',
       '--config.mesh.data=2', '--config.mesh.tensor=3'], cwd=ROOT, capture_output=True,
      text=True, timeout=120, env={**os.environ, 'JAX_NUM_CPU_DEVICES': '6'})
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip() == ('error: model.num_heads=4 is invalid: must be divisible by '
                                   'mesh.tensor=3 (the tensor-parallel devices split it)')
  assert not (tmp_path / 'checkpoints').exists()


# --- shardings ------------------------------------------------------------------------------------


def test_parameters_and_moments_are_sharded_by_their_logical_axes():
  config = small(mesh=(2, 2, 2))
  config.opt.update(name='adamw')
  par, cfg, task = parallel_of(config)
  state = par.init(jax.random.key(0))
  p = state.params['decoder']['layers_0']
  expected = {
      ('embedder', 'embedding'): P('tensor', 'fsdp'),  # (vocab, embed)
      ('layers_0', 'attention', 'query', 'kernel'): P('fsdp', 'tensor', None),
      ('layers_0', 'attention', 'out', 'kernel'): P('tensor', None, 'fsdp'),
      ('layers_0', 'mlp', 'wi', 'kernel'): P('fsdp', 'tensor'),
      ('layers_0', 'mlp', 'wi', 'bias'): P('tensor'),
      ('layers_0', 'mlp', 'wo', 'kernel'): P('tensor', 'fsdp'),
  }
  for path, spec in expected.items():
    leaf = state.params['decoder'] if path[0] != 'embedder' else state.params
    for key in path:
      leaf = leaf[key]
    assert leaf.sharding.spec == spec, path
    # each device holds 1/(fsdp * tensor) of a matrix, never the whole
    shard = leaf.addressable_shards[0].data
    assert shard.size * np.prod([par.mesh.shape[a] for a in ('fsdp', 'tensor')
                                 if a in jax.tree.leaves(tuple(spec))]) == leaf.size
  whole = small(mesh=(1, 1, 1))
  whole.opt.update(name='adamw')
  one, _, _ = parallel_of(whole, jax.devices()[:1])  # initialised sharded = initialised whole
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state),
               jax.device_get(one.init(jax.random.key(0))))
  kernel = p['mlp']['wi']['kernel']
  mu = state.opt_state[0].mu['decoder']['layers_0']['mlp']['wi']['kernel']  # Adam's moment
  assert mu.sharding.spec == kernel.sharding.spec
  assert state.step.sharding.spec == P()


def test_a_vocabulary_the_tensor_axis_does_not_divide_stays_whole():
  config = small(mesh=(4, 1, 2), vocab_size=257)
  par, _, _ = parallel_of(config)
  state = par.init(jax.random.key(0))
  assert state.params['embedder']['embedding'].sharding.spec[0] is None  # 257 rows: whole


def test_the_step_carries_sharding_constraints_and_batch_shardings():
  config = small(mesh=(2, 2, 2))
  par, cfg, task = parallel_of(config)
  state = par.init(jax.random.key(0))
  batch = batches(cfg, task, config, 1)[0]
  hlo = par.lower(state, batch, jax.random.key(0)).as_text()
  assert hlo.count('sharding_constraint') >= 4 * cfg.num_layers  # per block: q, k, v, mlp, out
  inputs = sharding.global_batch(batch, sharding.batch_sharding(par.mesh))['inputs']
  assert inputs.sharding.spec == P(('data', 'fsdp'))
  assert inputs.addressable_shards[0].data.shape == (16 // 4, 16)  # 4 batch shards

  # The same step traced outside the mesh context has none: the check can fail.
  plain = jax.jit(functools.partial(steps.train_step, model=models.build_model(cfg),
                                    tx=optim.make_optimizer(config.opt, 10)[0],
                                    schedule=lambda s: 0.1, task=task))
  assert 'sharding_constraint' not in plain.lower(
      jax.device_get(state), batch, jax.random.key(0)).as_text()


# --- one training, every layout -------------------------------------------------------------------


LAYOUTS = {'pmap': ('pmap', (-1, 1, 1)), 'jit 8x1x1': ('jit', (8, 1, 1)),
           'jit 2x4x1': ('jit', (2, 4, 1)), 'jit 2x2x2': ('jit', (2, 2, 2))}


@pytest.mark.slow(6)
@pytest.mark.parametrize('family', ['decoder_only', 'encoder_only', 'encoder_decoder'])
def test_every_layout_trains_like_one_device(family):
  """20 SGD steps from the same parameters (sharded initialisation is tested above). SGD, not
  Adam: a layout that scaled gradients (pmap's psum taken for a mean, or the reverse) would
  show here, where Adam's scale invariance would hide it."""
  steps = 20

  def run(parallel, mesh, devices=None, initial=None):
    config = small(family, parallel=parallel, mesh=mesh, num_layers=1)
    config.opt.lr = 0.05  # larger steps amplify float differences between layouts
    par, cfg, task = parallel_of(config, devices)
    state = par.init(jax.random.key(0)) if initial is None else par.restore(initial)
    start, curve = jax.device_get(par.saveable(state)), []
    rng = jax.random.key(1)
    for batch in batches(cfg, task, config, steps):
      state, metrics = par.step(state, batch, rng)
      curve.append(float(metrics['loss']))
    return curve, jax.device_get(par.params(state)), start

  curve, params, initial = run('jit', (-1, 1, 1), jax.devices()[:1])
  moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params),
                                                          jax.tree.leaves(initial.params)))
  assert moved > 100 * 1e-5  # the comparison below is not between untrained models
  # Every layout for the decoder; for the other families the two that hold the rest: pmap
  # (psum of gradients) and all three mesh axes at once.
  names = list(LAYOUTS) if family == 'decoder_only' else ['pmap', 'jit 2x2x2']
  for name in names:
    parallel, mesh = LAYOUTS[name]
    other_curve, other_params, _ = run(parallel, mesh, initial=initial)
    np.testing.assert_allclose(other_curve, curve, rtol=1e-5, atol=1e-5, err_msg=name)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5,
                                   err_msg=name), other_params, params)


# --- checkpoints across meshes --------------------------------------------------------------------


@pytest.mark.slow(5)
def test_a_checkpoint_restores_bitwise_onto_other_meshes(tmp_path):
  config = small(mesh=(2, 4, 1))
  config.opt.update(name='adamw')
  par, cfg, task = parallel_of(config)
  state = par.init(jax.random.key(0))
  for batch in batches(cfg, task, config, 2):
    state, _ = par.step(state, batch, jax.random.key(1))
  saved = jax.device_get(state)
  ckpts = checkpoint.Checkpoints(str(tmp_path / 'checkpoints'))
  ckpts.save(2, par.saveable(state), {'hosts': [{}]}, {})
  ckpts.close()

  for name, mesh, devices, parallel in (('one device', (1, 1, 1), jax.devices()[:1], 'jit'),
                                        ('2x2x2', (2, 2, 2), None, 'jit'),
                                        ('pmap', (-1, 1, 1), None, 'pmap')):
    other_config = small(mesh=mesh, parallel=parallel)
    other_config.opt.update(name='adamw')
    other, _, _ = parallel_of(other_config, devices)
    ckpts = checkpoint.Checkpoints(str(tmp_path / 'checkpoints'))
    step, restored, _, _ = ckpts.restore_latest(other.abstract)
    ckpts.close()
    assert step == 2
    for x, sharding_ in zip(jax.tree.leaves(restored), jax.tree.leaves(
        jax.tree.map(lambda a: a.sharding, other.abstract))):
      assert x.sharding == sharding_, name
    running = other.restore(restored)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(other.saveable(running)), saved)
