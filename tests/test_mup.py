"""muP (Yang et al. 2022): a coordinate check (activations flat in width under muP, growing
under SP), m = 1 is SP bitwise, the learning-rate multipliers land on the hidden matrices, the
forward rules as exact rewrites of SP, and what muP must keep working (every family and
position, scan, sharding, validation)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from transformer import presets
from transformer.config import Experiment, ModelConfig
from transformer.errors import ConfigError
from transformer.model import models
from transformer.training import optim, sharding, step as steps

BASE = 32  # mup_base_d_model of every test here
# The coordinate-check runs are tiny: XLA:CPU compile time is nearly all their cost. These
# options halve it (cheap LLVM codegen, no fusion emitters); numerics are the same program's.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True,
                'xla_cpu_use_fusion_emitters': False}


def config_of(family='decoder_only', parametrization='mup', d_model=BASE, **model):
  """The tiny preset at width d_model, d_ff = 4 d_model, 4 heads (the head size grows)."""
  config = presets.get_config(family, 'tiny')
  config.model.update(dict(d_model=d_model, d_ff=4 * d_model, num_heads=4, dropout=0.0,
                           attention_dropout=0.0, parametrization=parametrization,
                           mup_base_d_model=BASE), **model)
  return config


def path_names(tree) -> dict:
  return {'/'.join(str(k.key) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# --- the coordinate check ------------------------------------------------------------------------

COORD_STEPS = 4  # AdamW steps before the activations are measured
COORD_MUP_WIDTHS = (32, 96, 256)  # m = 1, 3, 8
COORD_SP_WIDTHS = (32, 256)  # SP at 32 is also muP's m = 1 (bitwise, tested below)


def _blocks(module, method_name):  # capture_intermediates: each block's output, nothing else
  return method_name == '__call__' and bool(re.fullmatch(r'layers_\d+', module.name or ''))


def coord_run(parametrization: str, width: int) -> dict:
  """A 2-layer decoder trained COORD_STEPS AdamW steps (lr 1e-2, constant) on one fixed random
  batch, in one compiled program: initial and final parameters, and at every step (before its
  update) the logits, the loss and the residual stream after each block."""
  config = config_of('decoder_only', parametrization, width)
  config.opt.update(lr=1e-2, warmup_steps=0, schedule='constant')
  cfg = ModelConfig.from_config(config)
  model = models.build_model(cfg)
  tx, _ = optim.make_optimizer(config.opt, config.train.num_steps, cfg)
  tokens_BxT = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (4, 17)))

  def loss_fn(params):
    logits_BxTxV, state = model.apply({'params': params}, tokens_BxT[:, :-1],
                                      capture_intermediates=_blocks, mutable=['intermediates'])
    blocks = state['intermediates']['decoder']
    resid_LxBxTxD = jnp.stack([blocks[f'layers_{i}']['__call__'][0]
                               for i in range(cfg.num_layers)])
    log_p = jax.nn.log_softmax(logits_BxTxV)
    loss = -jnp.mean(jnp.take_along_axis(log_p, tokens_BxT[:, 1:, None], -1))
    return loss, {'loss': loss, 'logits': logits_BxTxV, 'resid': resid_LxBxTxD}

  def step(carry, _):
    params, opt_state = carry
    grads, measured = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), measured

  def run(rng):
    params = models.init_params(cfg, rng)
    (final, _), measured = jax.lax.scan(step, (params, tx.init(params)), None,
                                        length=COORD_STEPS + 1)
    return dict(measured, init=params, final=final)

  return jax.device_get(jax.jit(run, compiler_options=FAST_COMPILE)(jax.random.key(0)))


@pytest.fixture(scope='module')
def coord_runs():
  runs = {('mup', w): coord_run('mup', w) for w in COORD_MUP_WIDTHS}
  runs.update({('sp', w): coord_run('sp', w) for w in COORD_SP_WIDTHS})
  return runs


def slopes(runs, parametrization, widths) -> dict[str, float]:
  """d log(mean |x|) / d log(width) after COORD_STEPS steps: logits and each block's output."""
  sizes = {'logits': [], **{f'block_{i}': [] for i in range(2)}}
  for w in widths:
    measured = runs[parametrization, w]
    sizes['logits'].append(np.abs(measured['logits'][-1]).mean())
    for i in range(2):
      sizes[f'block_{i}'].append(np.abs(measured['resid'][-1, i]).mean())
  return {k: float(np.polyfit(np.log(widths), np.log(v), 1)[0]) for k, v in sizes.items()}


def test_coordinate_check(coord_runs):
  """Slopes of log mean |x| against log width after 4 steps, measured (jax 0.10.2, CPU):
  muP (widths 32, 96, 256): logits -0.12, block 0 -0.12, block 1 -0.19;
  SP (widths 32, 256): logits +0.61, block 0 +1.81, block 1 +1.74 (and its loss jumps back up
  at width 256, 3.60 -> 3.92 at the last step: lr 1e-2 is already too high for it).
  At initialisation muP's logits fall as m^-1/2 (slope -0.49: the tied readout times 1/m); the
  updates, which muP keeps at O(1), take over within the 4 steps."""
  mup = slopes(coord_runs, 'mup', COORD_MUP_WIDTHS)
  sp = slopes(coord_runs, 'sp', COORD_SP_WIDTHS)
  for name, slope in mup.items():
    assert abs(slope) < 0.35, (name, mup)
  assert sp['logits'] > 0.3, sp
  for i in range(2):
    assert sp[f'block_{i}'] > 1.0, sp
  for w in COORD_MUP_WIDTHS:  # and muP learns at every width (5.55 -> 4.32, 4.20, 4.16)
    loss = coord_runs['mup', w]['loss']
    assert loss[-1] < loss[0] - 0.8, (w, loss)


def test_mup_at_the_base_width_is_sp_bitwise(coord_runs):
  """m = 1: the same initial parameters, logits and activations at every step, and parameters
  after COORD_STEPS AdamW steps (weight decay and clipping on), bit for bit."""
  mup, sp = coord_runs['mup', BASE], coord_runs['sp', BASE]
  jax.tree.map(np.testing.assert_array_equal, mup, sp)
  moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(mup['final']),
                                                jax.tree.leaves(mup['init']))]
  assert min(moved) > 0  # every parameter was trained


# --- the learning-rate multipliers ---------------------------------------------------------------

HIDDEN = {'attention/query/kernel', 'attention/key/kernel', 'attention/value/kernel',
          'attention/out/kernel', 'mlp/wi/kernel', 'mlp/wo/kernel'}


def hidden_paths(cfg) -> set[str]:
  return {name for name, hidden in path_names(optim.hidden_mask(cfg)).items() if hidden}


def in_blocks(stacks, names, layers=2):
  return {f'{stack}/layers_{i}/{name}' for stack in stacks for i in range(layers) for name in names}


@pytest.mark.parametrize('family,model,expected', [
    ('decoder_only', dict(tie_embeddings=False, activation='swiglu'),
     in_blocks(['decoder'], HIDDEN | {'mlp/wi_gate/kernel'})),
    ('encoder_only', {}, in_blocks(['encoder'], HIDDEN) | {'mlm_dense/kernel'}),
    ('encoder_only', dict(head='classify'), in_blocks(['encoder'], HIDDEN) | {'pooler/kernel'}),
    ('encoder_decoder', dict(share_embeddings=False, tie_embeddings=False),
     in_blocks(['encoder'], HIDDEN) | in_blocks(['decoder'], {
         f'{attn}/{p}/kernel' for attn in ('self_attention', 'cross_attention')
         for p in ('query', 'key', 'value', 'out')} | {'mlp/wi/kernel', 'mlp/wo/kernel'})),
])
def test_hidden_mask_is_the_hidden_matrices(family, model, expected):
  """Everything else (embedding, position and type tables, the output layer, biases, norms) keeps
  the learning rate."""
  assert hidden_paths(ModelConfig.from_config(config_of(family, **model))) == expected


def test_hidden_mask_of_scanned_stacks():
  scanned = ModelConfig.from_config(config_of('encoder_decoder', scan_layers=True))
  assert hidden_paths(scanned) == {
      f'{stack}/layers/{attn}/{p}/kernel' for stack, attns in (
          ('encoder', ['attention']), ('decoder', ['self_attention', 'cross_attention']))
      for attn in attns for p in ('query', 'key', 'value', 'out')} | {
          f'{stack}/layers/mlp/{p}/kernel' for stack in ('encoder', 'decoder')
          for p in ('wi', 'wo')}


def test_mup_updates_hidden_matrices_by_lr_over_m():
  """Adam's first step on gradients of ones moves every weight by lr: by lr / m the hidden
  matrices under muP; weight decay stays lr * wd for every decayed weight (as in MuAdamW)."""
  config = config_of(d_model=4 * BASE, tie_embeddings=False)  # m = 4
  lr, wd = 1e-2, 0.5
  config.opt.update(lr=lr, warmup_steps=0, schedule='constant', clip_norm=0.0, eps=1e-30,
                    weight_decay=wd)
  cfg = ModelConfig.from_config(config)
  tx, _ = optim.make_optimizer(config.opt, 10, cfg)
  shapes = jax.eval_shape(functools.partial(models.init_params, cfg), jax.random.key(0))
  ones = jax.tree.map(lambda x: jnp.ones(x.shape, x.dtype), shapes)  # gradients and weights
  updates, _ = jax.jit(tx.update, compiler_options=FAST_COMPILE)(ones, tx.init(ones), ones)
  hidden, decays = path_names(optim.hidden_mask(cfg)), path_names(optim.decay_mask(ones))
  assert sum(hidden.values()) == 12 and sum(decays.values()) == 13  # 12 + the output layer
  for name, update in path_names(updates).items():
    adam = lr / 4 if hidden[name] else lr
    decay = lr * wd if decays[name] else 0.0  # lr * wd for every decayed weight, not lr / m * wd
    np.testing.assert_allclose(update, -(adam + decay), rtol=1e-6, err_msg=name)


@pytest.mark.parametrize('name', ['sgd', 'adafactor'])
def test_other_optimizers_are_refused_under_mup(name):
  config = config_of()
  config.opt.name = name
  with pytest.raises(ConfigError, match=rf"opt\.name='{name}' is invalid.*adamw.*'mup'"):
    Experiment.from_config(config)


# --- the rules, checked one by one ---------------------------------------------------------------


def test_mup_init_scales_only_the_hidden_matrices(coord_runs):
  """Same seed, m = 8: hidden matrices are SP's divided by sqrt(m); everything else is SP's."""
  mup, sp = path_names(coord_runs['mup', 256]['init']), path_names(coord_runs['sp', 256]['init'])
  hidden = path_names(optim.hidden_mask(ModelConfig.from_config(config_of(d_model=256))))
  assert sum(hidden.values()) == 12
  for name, value in mup.items():
    expected = sp[name] / np.sqrt(8) if hidden[name] else sp[name]
    np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-9, err_msg=name)


def fold_into_sp(cfg: ModelConfig, params: dict) -> dict:
  """SP parameters whose SP forward is the muP forward of `params` (cfg: muP, untied output):
  muP's forward rules are reparametrizations. Attention: query * sqrt(H0 / H) turns SP's
  1/sqrt(H) into sqrt(H0)/H; readout: output kernel / m; scaled embeddings: table * sqrt(b / d)."""
  m, H = cfg.width_mult, cfg.head_dim
  H0 = cfg.mup_base_d_model / cfg.num_heads

  def fold(path, x):
    names = [str(k.key) for k in path]
    if names[-2] == 'query':
      return x * np.sqrt(H0 / H)
    if names[-2:] in (['lm_head', 'kernel'], ['classifier', 'kernel']):
      return x / m
    if cfg.scale_embeddings and names[-2:] in (['source_embedder', 'embedding'],
                                               ['target_embedder', 'embedding']):
      return x * np.sqrt(cfg.mup_base_d_model / cfg.d_model)
    return x
  return jax.tree_util.tree_map_with_path(fold, params)


@pytest.mark.parametrize('family,model', [
    ('encoder_decoder', dict(position='alibi', scale_embeddings=True, num_kv_heads=2,
                             activation='swiglu', logits_bias=True, scan_layers=True)),
    ('encoder_only', dict(head='classify', position='rope', pooling='mean')),
])
def test_mup_forward_is_sp_with_the_rules_folded_in(family, model):
  """At m = 2: attention scale (self and cross, ALiBi, RoPE, grouped KV heads, a scanned
  stack), output multipliers (LM and classifier) and scaled embeddings. The decoder-only LM with
  learned positions and a tied output is the coordinate check's."""
  untied = dict(tie_embeddings=False, share_embeddings=False)
  mup_cfg = ModelConfig.from_config(config_of(family, d_model=2 * BASE, **untied, **model))
  sp_cfg = ModelConfig.from_config(config_of(family, 'sp', d_model=2 * BASE, **untied, **model))
  shapes = jax.eval_shape(functools.partial(models.init_params, mup_cfg), jax.random.key(0))
  noise = np.random.default_rng(0)
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: (path[-1].key == 'scale') + 0.1 * noise.standard_normal(x.shape), shapes)
  tokens = jnp.asarray(noise.integers(1, 256, (2, 8)))
  args = (tokens, tokens[:, :6]) if family == 'encoder_decoder' else (tokens,)

  def forward(cfg):
    model = models.build_model(cfg)
    return jax.jit(lambda p: model.apply({'params': p}, *args), compiler_options=FAST_COMPILE)

  mup_logits = forward(mup_cfg)(params)
  sp = forward(sp_cfg)
  np.testing.assert_allclose(mup_logits, sp(fold_into_sp(mup_cfg, params)), rtol=1e-5, atol=1e-5)
  assert np.abs(mup_logits - sp(params)).max() > 0.1  # the rules change the function


def test_mup_optimizer_state_shards_like_the_parameters():
  """sharding.state_shardings (optax.tree_map_params) sees through the masked multiplier."""
  config = config_of(d_model=2 * BASE)
  cfg = ModelConfig.from_config(config)
  tx, _ = optim.make_optimizer(config.opt, 10, cfg)
  abstract = jax.eval_shape(functools.partial(steps.init_state, cfg, tx), jax.random.key(0))
  shardings = sharding.state_shardings(cfg, tx, abstract, sharding.make_mesh((2, 2, 2)))
  params = path_names(shardings.params)
  for moment in ('mu', 'nu'):
    assert path_names(optax.tree_utils.tree_get(shardings.opt_state, moment)) == params
  assert any(params['decoder/layers_0/attention/query/kernel'].spec)  # sharded: a real test


@pytest.mark.parametrize('fields,message', [
    (dict(parametrization='mu'), r"model\.parametrization='mu' is invalid: .*sp, mup"),
    (dict(mup_base_d_model=0), r'model\.mup_base_d_model=0 is invalid: .*positive'),
    (dict(mup_base_d_model=30), r'model\.mup_base_d_model=30 is invalid: .*num_heads=4'),
])
def test_invalid_mup_fields_name_the_field(fields, message):
  with pytest.raises(ConfigError, match=message):
    ModelConfig.from_config(config_of(**fields))


def test_sp_ignores_the_base_width():
  cfg = ModelConfig.from_config(config_of('decoder_only', 'sp', mup_base_d_model=30))
  assert cfg.width_mult == 1.0
  assert ModelConfig.from_config(config_of(d_model=96)).width_mult == 3.0
