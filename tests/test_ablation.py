"""Head ablation: masked heads match a float64 reference that zeroes their output inside the
forward pass, masking nothing changes nothing, with every head masked attention adds only its
bias, both layouts agree, one compilation serves every head, and the command on a trained run."""

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import reference
from transformer.analysis import bench
from transformer.config import ModelConfig
from transformer.errors import ConfigError
from transformer.inference import ablation
from transformer.model import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_cfg(family, **overrides) -> ModelConfig:
  fields = dict(family=family, vocab_size=32, max_len=16, num_layers=2, d_model=16, num_heads=4,
                d_ff=32)
  return ModelConfig(**(fields | overrides))


# Two small models (GQA; post-LN with one decoder layer), shared by the tests to compile less.
DECODER = make_cfg('decoder_only', num_kv_heads=2)
ENCODER_DECODER = make_cfg('encoder_decoder', position='sinusoidal', pre_norm=False,
                           num_decoder_layers=1)
SRC = np.random.default_rng(0).integers(1, 32, (2, 7), dtype=np.int32)
TGT = np.random.default_rng(1).integers(1, 32, (2, 5), dtype=np.int32)


@functools.cache
def random_params(cfg):
  """Parameters of `cfg`'s shapes drawn at random (norm scales around 1, biases not 0), without
  running init. Shared: copy before changing."""
  shapes = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: jnp.asarray(0.1 * rng.standard_normal(s.shape)
                                  + jax.tree_util.keystr(path).endswith("['scale']"), s.dtype),
      shapes)


@functools.cache
def masked_apply(cfg):
  """model.apply on masked parameters, jitted with the masks as an argument."""
  model = models.build_model(cfg)
  return jax.jit(lambda params, keep, *tokens: model.apply(
      {'params': ablation.mask_heads(params, cfg, keep)}, *tokens))


def tokens_of(cfg, src=SRC):
  return (src, TGT) if cfg.family == 'encoder_decoder' else (src,)


def bits(tree):
  return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


# --- masking ------------------------------------------------------------------------------------


@pytest.mark.parametrize('cfg', [DECODER, ENCODER_DECODER], ids=lambda cfg: cfg.family)
def test_masked_heads_match_a_reference_that_zeroes_their_output(cfg, rng):
  params, apply = random_params(cfg), masked_apply(cfg)
  tgt = TGT if cfg.family == 'encoder_decoder' else None
  kinds = ablation.attention_kinds(cfg)
  patterns = {
      'one head of each kind': ablation.head_mask(
          cfg, [(kind, layers - 1, i) for i, (kind, layers) in enumerate(kinds.items())]),
      'random heads': {kind: rng.integers(0, 2, (layers, cfg.num_heads)).astype(np.float32)
                       for kind, layers in kinds.items()},
      'every head (attention adds only its out bias)': {
          kind: np.zeros((layers, cfg.num_heads), np.float32) for kind, layers in kinds.items()},
  }
  unmasked = reference.forward(cfg, params, SRC, tgt_tokens=tgt)
  for name, keep in patterns.items():
    ours = apply(params, keep, *tokens_of(cfg))
    ref = reference.forward(cfg, params, SRC, tgt_tokens=tgt, head_gates=keep)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5, err_msg=name)
    assert np.abs(ref - unmasked).max() > 1e-3, name  # the masked heads did matter
  assert apply._cache_size() == 1  # one compilation for every mask


def test_with_every_head_masked_no_position_sees_another():
  """A GPT's logits at t then do not depend on the tokens before t; with every cross-attention
  head masked, a translation model's do not depend on the source."""
  changed = np.concatenate([(SRC[:, :4] + 1) % 32, SRC[:, 4:]], axis=1)
  for cfg, masked in ((DECODER, ablation.every_head(DECODER)),
                      (ENCODER_DECODER, [h for h in ablation.every_head(ENCODER_DECODER)
                                         if h[0] == 'decoder/cross_attention'])):
    params, apply = random_params(cfg), masked_apply(cfg)
    after = slice(4, None) if cfg.family == 'decoder_only' else slice(None)
    keep, none = ablation.head_mask(cfg, masked), ablation.head_mask(cfg)
    np.testing.assert_array_equal(apply(params, keep, *tokens_of(cfg))[:, after],
                                  apply(params, keep, *tokens_of(cfg, changed))[:, after])
    difference = (apply(params, none, *tokens_of(cfg))[:, after]
                  - apply(params, none, *tokens_of(cfg, changed))[:, after])
    assert np.abs(difference).max() > 1e-3, cfg.family  # unmasked, the change does reach t


@pytest.mark.parametrize('scanned', [False, True])
def test_masking_nothing_is_bitwise_the_original(scanned):
  cfg = dataclasses.replace(ENCODER_DECODER, scan_layers=scanned)
  params = random_params(ENCODER_DECODER)
  params = models.stack_layers(params) if scanned else params
  before = bits(params)
  for keep in (ablation.head_mask(cfg), {}):
    assert bits(ablation.mask_heads(params, cfg, keep)) == before
  masked = ablation.mask_heads(params, cfg,
                               ablation.head_mask(cfg, [('encoder/attention', 1, 2)]))
  encoder = masked['encoder']
  kernel = np.asarray(encoder['layers']['attention']['out']['kernel'][1] if scanned
                      else encoder['layers_1']['attention']['out']['kernel'])
  assert not np.any(kernel[2]) and np.all(kernel[[0, 1, 3]] != 0)
  assert bits(params) == before  # the input is not modified
  with pytest.raises(ValueError, match='decoder/cross_attention'):
    ablation.mask_heads(params, cfg, {'decoder/cross_attention': np.ones((2, 4))})


# --- importance ---------------------------------------------------------------------------------


ENCODER_DECODER_BATCHES = [bench.random_batch(ENCODER_DECODER, 'seq2seq', 2, 6, seed=seed)
                           for seed in (0, 1)]
ENCODER_DECODER_BATCHES[1]['weights'][1, 4:] = 0.0  # padding counts 0
TOGETHER = (('encoder/attention', 1, 0), ('decoder/self_attention', 0, 3))


@functools.cache
def encoder_decoder_importance(scanned: bool):
  """Head importance of ENCODER_DECODER in either layout, with head 2 of cross-attention layer 0
  writing nothing (a zero out slice), two masked together, and the compilations it took."""
  params = jax.tree.map(lambda x: x, random_params(ENCODER_DECODER))  # a copy of the dicts
  out = params['decoder']['layers_0']['cross_attention']['out']
  out['kernel'] = out['kernel'].at[2].set(0.0)
  cfg = dataclasses.replace(ENCODER_DECODER, scan_layers=scanned)
  compiled = ablation._masked_sums._cache_size()
  importance = ablation.head_importance(
      models.build_model(cfg), models.stack_layers(params) if scanned else params,
      ENCODER_DECODER_BATCHES, 'seq2seq', together=TOGETHER)
  return params, importance, ablation._masked_sums._cache_size() - compiled


def test_both_layouts_give_the_same_importance_from_one_compilation():
  """Unrolled and scanned parameters agree head by head; a head whose out slice is already zero
  has importance exactly 0; each layout compiles the masked evaluation once for all 18 masks."""
  (_, unrolled, compiles), (_, scanned, scanned_compiles) = (
      encoder_decoder_importance(False), encoder_decoder_importance(True))
  assert compiles == scanned_compiles == 1
  assert len(unrolled.loss) == (2 + 1 + 1) * 4 and unrolled.loss.keys() == scanned.loss.keys()
  assert scanned.baseline == pytest.approx(unrolled.baseline, rel=1e-6)
  assert scanned.together_loss == pytest.approx(unrolled.together_loss, rel=1e-6)
  for head, change in unrolled.change.items():
    assert scanned.change[head] == pytest.approx(change, abs=1e-6), head
  for result in (unrolled, scanned):
    assert result.change[('decoder/cross_attention', 0, 2)] == 0.0
  assert max(abs(c) for c in unrolled.change.values()) > 1e-3  # heads do matter here


def test_masked_losses_match_the_reference_loss():
  """The loss with one head, and with several heads together, masked: mean nll per target token
  over the batches of the float64 reference with those heads' outputs zeroed."""
  params, result, _ = encoder_decoder_importance(False)

  def reference_loss(heads):
    nll_sum = weight = 0.0
    for batch in ENCODER_DECODER_BATCHES:
      logits = reference.forward(ENCODER_DECODER, params, batch['inputs'],
                                 tgt_tokens=batch['decoder_inputs'],
                                 head_gates=ablation.head_mask(ENCODER_DECODER, heads))
      lse = np.log(np.exp(logits).sum(-1))  # small logits: no overflow
      nll = lse - np.take_along_axis(logits, batch['targets'][..., None], -1)[..., 0]
      nll_sum += (nll * batch['weights']).sum()
      weight += batch['weights'].sum()
    return nll_sum / weight

  assert result.baseline == pytest.approx(reference_loss([]), rel=1e-5)
  for head in TOGETHER + (('decoder/cross_attention', 0, 1),):
    assert result.loss[head] == pytest.approx(reference_loss([head]), rel=1e-5), head
  assert result.together_loss == pytest.approx(reference_loss(TOGETHER), rel=1e-5)
  assert abs(result.together_loss - result.baseline) > 1e-3


# --- the command ---------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, trained_lm):
  """The session's tiny GPT trained for 40 steps (conftest.py), copied: ablate writes in it."""
  workdir = str(tmp_path_factory.mktemp('ablation') / 'run')
  shutil.copytree(trained_lm, workdir)
  return workdir


def checksum(directory):
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      digest.update(name.encode() + open(os.path.join(root, name), 'rb').read())
  return digest.hexdigest()


def test_the_command_writes_head_importance_and_leaves_the_checkpoints(run_dir):
  before = checksum(os.path.join(run_dir, 'checkpoints'))
  lines = ablation.ablate(run_dir, eval_batches=2)
  out = os.path.join(run_dir, 'ablation')
  record = json.load(open(os.path.join(out, 'head_importance.json')))
  summary = json.load(open(os.path.join(run_dir, 'summary.json')))  # train's eval: 2 batches
  assert record['step'] == 40 and record['eval_batches'] == 2
  assert record['baseline_loss'] == pytest.approx(summary['final_eval_loss'], rel=1e-5)
  rows = {(r['kind'], r['layer'], r['head']): r for r in record['heads']}
  assert sorted(rows) == [('decoder/attention', layer, head)
                          for layer in range(2) for head in range(4)]
  for (_, layer, head), row in rows.items():
    assert row['change'] == pytest.approx(row['loss'] - record['baseline_loss'])
    assert record['change_grids']['decoder/attention'][layer][head] == row['change']
  png = os.path.join(out, 'head_importance_decoder_attention.png')
  assert open(png, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
  assert lines[-2:] == [f'wrote {out}/head_importance.json', f'wrote {png}']
  assert checksum(os.path.join(run_dir, 'checkpoints')) == before

  lines = ablation.ablate(run_dir, eval_batches=2, heads='decoder/attention:1:3')
  alone = rows[('decoder/attention', 1, 3)]['loss']
  assert lines[-1].startswith(f'masked together: loss {alone:.4f}')


@pytest.mark.parametrize('kwargs,message', [
    (dict(heads='decoder/attention:2:0'), r'--heads=decoder/attention:2:0: .*layer 2.*layers 0-1'),
    (dict(heads='decoder/attention:0:4'), r'head 4.*heads 0-3'),
    (dict(heads='encoder/attention:0:0'), r'no attention of this decoder_only model'),
    (dict(heads='decoder/attention:0'), r'is not KIND:LAYER:HEAD'),
    (dict(eval_batches=0), r'--eval_batches=0 .*at least 1'),
    (dict(step=7), r'--step=7 has no checkpoint'),
    (dict(workdir='/nonexistent/run'), r'--workdir=/nonexistent/run holds no run'),
])
def test_bad_input_names_the_flag(run_dir, kwargs, message):
  with pytest.raises(ConfigError, match=message):
    ablation.ablate(**(dict(workdir=run_dir) | kwargs))


def test_bad_heads_exit_2_with_one_line(run_dir):
  result = subprocess.run(
      [sys.executable, '-m', 'transformer.ablation', f'--workdir={run_dir}',
       '--heads=decoder/self_attention:0:0'], cwd=ROOT, capture_output=True, text=True,
      timeout=120)
  assert result.returncode == 2, result.stderr
  assert result.stderr.startswith('error: --heads=decoder/self_attention:0:0')
  assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout
