"""viz: attention maps against a float64 NumPy recomputation (every family, scanned and unrolled
alike), sinusoidal position similarity and activation derivatives against their closed forms,
the loss curves of a sweep, and the command: its plots of a run and its one-line errors."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import reference
from transformer import plots, presets
from transformer.config import ModelConfig
from transformer.data.tokenizers import ByteTokenizer
from transformer.errors import ConfigError
from transformer.inference import inspect, trained
from transformer.model import counting, models
from transformer.training import checkpoint, optim, step as steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def image(path) -> np.ndarray:
  """The PNG's pixels; it must exist and show more than a blank canvas."""
  from matplotlib import image as mpimg
  pixels = mpimg.imread(path)
  assert pixels.ndim == 3 and min(pixels.shape[:2]) > 200 and pixels.std() > 0.05, path
  return pixels


# --- attention maps ------------------------------------------------------------------------------


def make_cfg(family, **overrides) -> ModelConfig:
  fields = dict(family=family, head='mlm' if family == 'encoder_only' else 'lm', vocab_size=32,
                max_len=16, num_layers=2, d_model=16, num_heads=2, d_ff=32, dropout=0.0)
  fields.update(overrides)
  return ModelConfig(**fields)


def random_tree(abstract, seed=0, std=0.8):
  """Arrays of the shapes of `abstract`: N(0, std^2) floats (attention far from uniform, so a
  wrong map shows; biases and norms not trivial), zero integers. Drawn in NumPy: initialising
  through the model would compile more than these tests run."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: (rng.normal(0.0, std, s.shape) if np.issubdtype(s.dtype, np.floating)
                 else np.zeros(s.shape)).astype(s.dtype), abstract)


def random_params(cfg, seed=0):
  return random_tree(jax.eval_shape(lambda key: models.init_params(cfg, key),
                                    jax.random.key(0)), seed)


def reference_maps(cfg, params, tokens, target, monkeypatch) -> dict[str, np.ndarray]:
  """Each layer's weights from tests/reference.py's float64 forward pass, recorded as its
  head-by-head attention computes them: encoder layers first, then the decoder's self- and
  cross-attention in turn."""
  recorded = []
  attention = reference.attention

  def recording(*args):
    out, weights_BxNxTxS = attention(*args)
    recorded.append(weights_BxNxTxS[0])
    return out, weights_BxNxTxS

  monkeypatch.setattr(reference, 'attention', recording)
  reference.forward(cfg, params, np.asarray(tokens)[None],
                    tgt_tokens=None if target is None else np.asarray(target)[None])
  if cfg.family == 'decoder_only':
    return {'decoder/self': np.stack(recorded)}
  encoder, decoder = recorded[:cfg.num_layers], recorded[cfg.num_layers:]
  if cfg.family == 'encoder_only':
    return {'encoder/self': np.stack(encoder)}
  return {'encoder/self': np.stack(encoder), 'decoder/self': np.stack(decoder[0::2]),
          'decoder/cross': np.stack(decoder[1::2])}


@pytest.mark.parametrize('family,overrides', [
    ('decoder_only', dict(position='rope')),
    ('encoder_only', dict(position='alibi', pre_norm=False)),
    ('encoder_decoder', dict(position='sinusoidal', num_kv_heads=1, num_decoder_layers=1)),
    ('encoder_decoder', dict(position='learned', num_decoder_layers=3, scan_layers=True)),
])
def test_attention_maps_match_a_float64_recomputation(monkeypatch, family, overrides):
  """The reference reads the unrolled parameters; a scanned model gets them stacked (so the
  two layouts give the same maps, both those of the reference)."""
  cfg = make_cfg(family, **overrides)
  params = random_params(dataclasses.replace(cfg, scan_layers=False))
  tokens, target = [1, 5, 9, 2, 30, 7, 7], ([3, 11, 4, 25, 8] if family == 'encoder_decoder'
                                            else None)
  maps = inspect.attention_maps(cfg, models.stack_layers(params) if cfg.scan_layers else params,
                            tokens, target)
  expected = reference_maps(cfg, params, tokens, target, monkeypatch)
  assert maps.keys() == expected.keys()
  for name, weights_LxNxTxS in maps.items():
    np.testing.assert_allclose(weights_LxNxTxS, expected[name], atol=2e-5, err_msg=name)
    np.testing.assert_allclose(weights_LxNxTxS.sum(-1), 1.0, atol=1e-5)
    assert weights_LxNxTxS[..., 1:, :].max() > 0.5, name  # peaked, beyond the first query
    T, S = weights_LxNxTxS.shape[-2:]
    assert weights_LxNxTxS.shape == (cfg.num_layers if name.startswith('encoder')
                                     else cfg.num_decoder_layers, cfg.num_heads, T, S)
    if name == 'decoder/self':  # causal: nothing above the diagonal
      assert np.all(weights_LxNxTxS[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]]
                    == 0)
  if family == 'encoder_decoder':
    assert maps['decoder/cross'].shape[-2:] == (len(target), len(tokens))
  with pytest.raises(ValueError, match='target'):
    inspect.attention_maps(cfg, params, tokens, None if target else tokens)


def test_token_labels_and_inputs_as_training_builds_them():
  tokenizer = ByteTokenizer()
  assert inspect.token_labels(tokenizer, [2, *tokenizer.encode('a b\né'), 3]) == [
      '<bos>', 'a', '␣', 'b', '\\n', '0xc3', '0xa9', '<eos>']
  config = presets.get_config('decoder_only', 'tiny')
  tokens, target = inspect.attention_inputs(config, tokenizer, 'To')
  assert tokens.tolist() == [2, 84, 111] and target is None
  config = presets.get_config('encoder_only', 'tiny')  # masked LM: <bos> text <eos>
  assert inspect.attention_inputs(config, tokenizer, 'To')[0].tolist() == [2, 84, 111, 3]
  config = presets.get_config('encoder_decoder', 'tiny')
  tokens, target = inspect.attention_inputs(config, tokenizer, 'ab', 'xyz')
  assert tokens.tolist() == [97, 98, 3] and target.tolist() == [2, 120, 121, 122]


def test_plot_attention_grids_of_short_and_long_sequences(tmp_path):
  weights_LxNxTxS = np.random.default_rng(0).dirichlet(np.ones(5), size=(2, 1, 4))
  plots.plot_attention(weights_LxNxTxS, tmp_path / 'short.png', query_labels=list('abcd'),
                     key_labels=list('vwxyz'), title='short')
  long_LxNxTxS = np.full((1, 1, 60, 60), 1 / 60)  # too long for labels: indices instead
  plots.plot_attention(long_LxNxTxS, tmp_path / 'long.png', query_labels=['t'] * 60,
                     key_labels=['t'] * 60)
  short, long = image(tmp_path / 'short.png'), image(tmp_path / 'long.png')
  assert short.shape[0] > long.shape[0]  # rows are layers: two against one


# --- positional encodings and activations --------------------------------------------------------


def test_sinusoidal_similarity_is_its_closed_form():
  """Every PE vector has norm sqrt(d/2), and PE(i).PE(j) = sum_k cos((i - j) w_k): the cosine
  similarity is the mean of cos((i - j) w_k) over the d/2 frequencies w_k = 10000^(-2k/d)."""
  P, D = 40, 16
  similarity_PxP = plots.cosine_similarity(inspect.sinusoidal_table(P, D))
  offset_PxP = np.arange(P)[:, None] - np.arange(P)[None, :]
  w_K = 10000.0 ** (-2 * np.arange(D // 2) / D)
  expected = np.cos(offset_PxP[..., None] * w_K).mean(-1)
  np.testing.assert_allclose(similarity_PxP, expected, atol=2e-5)
  for k in range(1, P):  # depends on |i - j| only: constant along every diagonal
    assert np.ptp(np.diagonal(similarity_PxP, k)) < 1e-4
    np.testing.assert_allclose(np.diagonal(similarity_PxP, k), np.diagonal(similarity_PxP, -k))


def test_activation_derivatives_match_their_closed_forms(tmp_path):
  x = np.linspace(-4, 4, 161)
  phi, Phi = np.exp(-x ** 2 / 2) / math.sqrt(2 * math.pi), 0.5 * (1 + np.vectorize(math.erf)(
      x / math.sqrt(2)))
  c = math.sqrt(2 / math.pi)
  u = np.tanh(c * (x + 0.044715 * x ** 3))
  sigma = 1 / (1 + np.exp(-x))
  expected = {
      'relu': (np.maximum(x, 0), (x > 0).astype(float)),
      'gelu': (x * Phi, Phi + x * phi),
      'gelu_tanh': (0.5 * x * (1 + u),
                    0.5 * (1 + u) + 0.5 * x * (1 - u ** 2) * c * (1 + 3 * 0.044715 * x ** 2)),
      'silu': (x * sigma, sigma * (1 + x * (1 - sigma))),
      'swiglu': (x * sigma, sigma * (1 + x * (1 - sigma))),  # its gate is SiLU
  }
  curves = inspect.activation_curves(x)
  assert curves.keys() == expected.keys()
  for name, (f, grad) in curves.items():
    np.testing.assert_allclose(f, expected[name][0], atol=1e-5, err_msg=name)
    np.testing.assert_allclose(grad, expected[name][1], atol=1e-5, err_msg=name)
  plots.plot_activations(x, curves, tmp_path / 'activations.png')
  image(tmp_path / 'activations.png')


# --- loss curves ---------------------------------------------------------------------------------


def write_run(directory, losses, *, summary=None, config=None):
  """A run directory as train leaves it: metrics.jsonl every 5 steps (eval at the last), its
  config.json and, given, summary.json."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'metrics.jsonl'), 'w') as f:
    for i, loss in enumerate(losses):
      record = {'step': 5 * (i + 1), 'loss': loss, 'learning_rate': 1e-3}
      if i == len(losses) - 1:
        record['eval_loss'] = loss + 0.1
      f.write(json.dumps(record) + '\n')
  if config is not None:
    with open(os.path.join(directory, 'config.json'), 'w') as f:
      f.write(config.to_json())
  if summary is not None:
    with open(os.path.join(directory, 'summary.json'), 'w') as f:
      json.dump(summary, f)


def test_loss_curves_pick_up_every_run_of_a_sweep(tmp_path):
  config = presets.get_config('decoder_only', 'tiny')
  config.data.update(batch_size=4, seq_len=16)
  sweep = tmp_path / 'sweep'
  write_run(sweep / 'L2', [5.0, 4.0, 3.5], config=config, summary={'flops_per_token': 1000})
  write_run(sweep / 'L4', [5.0, 3.8, 3.2], config=config)
  write_run(sweep / 'L8', [5.0, 3.6], config=config)
  os.makedirs(sweep / '.submitit')  # no metrics: not a run
  (sweep / 'results.csv').write_text('id\n')
  curves = inspect.loss_curves([str(sweep)])
  assert [c.name for c in curves] == ['L2', 'L4', 'L8']
  l2, l4, l8 = curves
  np.testing.assert_array_equal(l2.step, [5, 10, 15])
  np.testing.assert_array_equal(l8.loss, [5.0, 3.6])
  np.testing.assert_array_equal(l4.eval_step, [15])
  np.testing.assert_allclose(l4.eval_loss, [3.3])
  np.testing.assert_array_equal(l2.x(l2.step, 'tokens'), [320, 640, 960])
  np.testing.assert_array_equal(l2.x(l2.step, 'compute'), [320_000, 640_000, 960_000])
  counted = counting.summarize(ModelConfig.from_config(config), 16)['flops_per_token']
  np.testing.assert_allclose(l4.x(l4.step, 'compute'), l4.step * 64 * counted)
  paths = inspect.draw_loss_curves([str(sweep)], against='compute', log=True)
  assert paths == [str(sweep / 'viz' / 'loss.png')]
  image(paths[0])

  write_run(tmp_path / 'lone', [4.0, 3.0])  # no config.json: steps only
  both = inspect.loss_curves([str(sweep), str(tmp_path / 'lone')])
  assert [c.name for c in both] == ['sweep/L2', 'sweep/L4', 'sweep/L8', 'lone']
  with pytest.raises(ConfigError, match='--against=tokens'):
    both[-1].x(both[-1].step, 'tokens')
  with pytest.raises(ConfigError, match='metrics.jsonl'):
    inspect.loss_curves([str(sweep / '.submitit')])


def test_a_sweeps_curves_are_named_by_their_values_in_numeric_order(tmp_path):
  points = [('d_model-128_lr-0.01_a1', 128, 0.01), ('d_model-32_lr-0.01_b2', 32, 0.01),
            ('d_model-64_lr-0.001_c3', 64, 0.001), ('d_model-64_lr-0.0005_d4', 64, 0.0005)]
  for name, _, _ in points:
    write_run(tmp_path / name, [5.0, 4.0])
  (tmp_path / 'sweep.json').write_text(json.dumps(dict(
      fields=['model.d_model', 'opt.lr'],
      points=[dict(id=name, overrides={'model.d_model': width, 'opt.lr': lr})
              for name, width, lr in points])))
  names = [curve.name for curve in inspect.loss_curves([str(tmp_path)])]
  assert names == ['d_model=32 lr=0.01', 'd_model=64 lr=0.0005', 'd_model=64 lr=0.001',
                   'd_model=128 lr=0.01']


# --- the command ---------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A run directory as train leaves it (config.json, a checkpoint at step 3, metrics.jsonl),
  written directly rather than trained, to keep this file fast: a one-layer byte-level decoder
  with learned positions."""
  workdir = str(tmp_path_factory.mktemp('run'))
  config = presets.get_config('decoder_only', 'tiny')
  config.model.update(num_layers=1, d_model=16, num_heads=2, d_ff=32, max_len=24)
  config.data.update(seq_len=16, batch_size=4)
  cfg = ModelConfig.from_config(config)
  tx, _ = optim.make_optimizer(config.opt, config.train.num_steps, cfg)
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'))
  state = random_tree(jax.eval_shape(lambda key: steps.init_state(cfg, tx, key),
                                     jax.random.key(0)))
  ckpts.save(3, state, {'hosts': []}, {})
  ckpts.close()
  write_run(workdir, [5.5, 5.2], config=config)
  return workdir


def test_positions_of_a_run(run_dir):
  paths = inspect.draw_positions(workdir=run_dir)
  assert paths == [os.path.join(run_dir, 'viz', f'positions_{name}.png')
                   for name in ('sinusoidal', 'similarity')]
  for path in paths:
    image(path)
  tables = inspect.learned_position_tables(trained.load(run_dir).params)
  assert list(tables) == ['embedder'] and tables['embedder'].shape == (24, 16)
  table_PxD = tables['embedder'].astype(np.float64)  # unequal norms, unlike sinusoids
  norms_P = np.sqrt((table_PxD ** 2).sum(-1))
  expected = np.array([[a @ b / (na * nb) for b, nb in zip(table_PxD, norms_P)]
                       for a, na in zip(table_PxD, norms_P)])
  np.testing.assert_allclose(plots.cosine_similarity(table_PxD), expected, atol=1e-12)


def test_bad_input_is_a_config_error_naming_the_flag(run_dir, tmp_path):
  seq2seq = tmp_path / 'seq2seq'  # a config is all the checks before loading need
  write_run(seq2seq, [3.0], config=presets.get_config('encoder_decoder', 'tiny'))
  for call, flag in [
      (lambda: inspect.draw_attention(None, 'x'), '--workdir'),
      (lambda: inspect.draw_attention(str(tmp_path / 'none'), 'x'), '--workdir'),
      (lambda: inspect.draw_attention(run_dir, ''), '--text'),
      (lambda: inspect.draw_attention(run_dir, 'x' * 30), '--text'),
      (lambda: inspect.draw_attention(run_dir, 'x', target='y'), '--target'),
      (lambda: inspect.draw_attention(str(seq2seq), 'x'), '--target'),
      (lambda: inspect.draw_attention(run_dir, 'x', step=7), '--step=7'),
      (lambda: inspect.draw_positions(d_model=7), '--d_model=7'),
      (lambda: inspect.draw_loss_curves([]), 'DIR'),
      (lambda: inspect.draw_loss_curves([str(tmp_path / 'none')]), 'metrics.jsonl'),
  ]:
    with pytest.raises(ConfigError, match=flag):
      call()


def test_command_line(run_dir, tmp_path):
  """Attention maps of a run, and a bad subcommand, run side by side (each imports jax)."""
  def start(*args):
    return subprocess.Popen([sys.executable, '-m', 'transformer.viz', *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  good = start('attention', f'--workdir={run_dir}', '--text=To be', f'--out={tmp_path}')
  bad = start('heatmap')
  out, err = good.communicate(timeout=120)
  assert good.returncode == 0, err[-2000:]
  assert out.split() == [str(tmp_path / 'attention_decoder_self.png')]
  image(tmp_path / 'attention_decoder_self.png')
  out, err = bad.communicate(timeout=120)
  assert bad.returncode == 2
  assert err.strip().count('\n') == 0 and 'Traceback' not in err
  assert err.startswith('error:') and 'heatmap' in err and 'attention, positions' in err
