"""Every preset builds (shape-checked with jax.eval_shape) and has its published size; the
describe command reports it, and rejects bad input with one line and exit code 2."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from transformer import presets
from transformer.config import ModelConfig
from transformer.errors import ConfigError
from transformer.model import counting, models
from transformer.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ('encoder_only', 'decoder_only', 'encoder_decoder')
PRESETS = [(family, size) for family in FAMILIES for size in presets.sizes_for(family)]


def cfg_of(family, size, **overrides):
  config = presets.get_config(family, size)
  config.model.update(overrides)
  return ModelConfig.from_config(config), config


@pytest.mark.parametrize('family,size', PRESETS)
def test_every_preset_shape_checks(family, size):
  """Through nn.scan: tracing is then flat in depth (scan = unrolled: test_models.py)."""
  cfg, config = cfg_of(family, size, scan_layers=True)
  B, T = 2, config.data.seq_len
  params = models.abstract_variables(cfg)['params']
  tokens = jax.ShapeDtypeStruct((B, T), jnp.int32)
  args = (tokens, tokens) if family == 'encoder_decoder' else (tokens,)
  logits = jax.eval_shape(lambda p, *a: models.build_model(cfg).apply({'params': p}, *a),
                          params, *args)
  assert logits.shape == (B, T, cfg.vocab_size) and logits.dtype == jnp.float32


# Published sizes: Hugging Face's GPT2LMHeadModel (tied, 1024 learned positions) and BertModel
# (with pooler); Vaswani et al. 2017, Table 3 (65M and 213M, rounded).
GPT2 = {'gpt2-small': 124_439_808, 'gpt2-medium': 354_823_168, 'gpt2-large': 774_030_080,
        'gpt2-xl': 1_557_611_200}
BERT_WITH_POOLER = {'bert-base': 109_482_240, 'bert-large': 335_141_888}
TRANSFORMER = {'transformer-base': 65e6, 'transformer-big': 213e6}


@pytest.mark.parametrize('size', sorted(GPT2))
def test_gpt2_parameter_counts(size):
  cfg, _ = cfg_of('decoder_only', size)
  counts = counting.param_counts(cfg)
  assert counts['params'] == GPT2[size]
  # Kaplan et al.'s non-embedding count: L (12 d^2 + 13 d) + 2 d (weights, biases, norms).
  L, d = cfg.num_layers, cfg.d_model
  assert counts['params_non_embedding'] == L * (12 * d * d + 13 * d) + 2 * d


@pytest.mark.parametrize('size', sorted(BERT_WITH_POOLER))
def test_bert_parameter_counts(size):
  cfg, _ = cfg_of('encoder_only', size, head='classify')
  rows = counting.param_rows(cfg)
  encoder_and_pooler = sum(r['count'] for r in rows if not r['path'].startswith('classifier'))
  assert encoder_and_pooler == BERT_WITH_POOLER[size]


# Hugging Face's LlamaForCausalLM of each published model (untied output, no biases).
LLAMA = {'llama2-7b': 6_738_415_616, 'llama2-13b': 13_015_864_320, 'llama2-70b': 68_976_648_192,
         'llama3-8b': 8_030_261_248}


@pytest.mark.parametrize('size', sorted(LLAMA))
def test_llama_parameter_counts(size):
  cfg, _ = cfg_of('decoder_only', size)
  assert counting.param_counts(cfg)['params'] == LLAMA[size]
  # Per block: q and out (d x d), k and v (d x K H each), SwiGLU's three d x F, two RMSNorms.
  L, d, F, V = cfg.num_layers, cfg.d_model, cfg.d_ff, cfg.vocab_size
  kv = cfg.num_kv_heads * cfg.head_dim
  assert LLAMA[size] == L * (2 * d * d + 2 * d * kv + 3 * d * F + 2 * d) + d + 2 * V * d


@pytest.mark.parametrize('size', sorted(TRANSFORMER))
def test_transformer_parameter_counts(size):
  cfg, _ = cfg_of('encoder_decoder', size)
  params = counting.param_counts(cfg)['params']
  assert abs(params - TRANSFORMER[size]) / TRANSFORMER[size] < 0.05


def test_flops_per_token_is_palm_formula():
  cfg, _ = cfg_of('decoder_only', 'gpt2-small')
  T = 1024
  N = 85_056_000 + 50257 * 768  # non-embedding + the output projection's matmul
  assert counting.flops_per_token(cfg, T) == 6 * N + 12 * 12 * 12 * 64 * T
  enc_dec, _ = cfg_of('encoder_decoder', 'tiny')
  n = counting.param_counts(enc_dec)['params_non_embedding'] + 256 * 64
  assert counting.flops_per_token(enc_dec, 64) == 6 * n + 12 * (2 + 2 * 2) * 4 * 16 * 64


def test_scan_does_not_change_counts():
  plain, _ = cfg_of('decoder_only', 'gpt2-medium')
  scanned, _ = cfg_of('decoder_only', 'gpt2-medium', scan_layers=True)
  assert counting.param_counts(scanned) == counting.param_counts(plain)


def describe(*args):
  return subprocess.run([sys.executable, '-m', 'transformer.describe', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)


def test_describe_json_reports_gpt2_xl():
  result = describe('--config=configs/decoder_only.py:gpt2-xl', '--json')
  assert result.returncode == 0, result.stderr
  info = json.loads(result.stdout)
  assert info['params'] == 1_557_611_200
  assert info['params_non_embedding'] == 1_557_611_200 - 50257 * 1600 - 1024 * 1600
  assert info['flops_per_token'] == 6 * (info['params_non_embedding'] + 50257 * 1600) + (
      12 * 48 * 25 * 64 * 1024)


def test_describe_table_folds_layers_and_default_config_works():
  result = describe('--config.model.scan_layers=True')
  assert result.returncode == 0, result.stderr
  assert 'decoder/layers[*]/attention/query/kernel' in result.stdout
  assert 'params_non_embedding' in result.stdout and 'flops_per_token' in result.stdout


# An unknown field and a value of the wrong type: test_train.py's command-line cases (the same
# code, cli.run, reads --config for every command).
@pytest.mark.parametrize('args,message', [
    (['--config.model.d_model=100', '--config.model.num_heads=3'],
     'model.d_model=100 is invalid: must be divisible by model.num_heads=3'),
    (['--config=configs/decoder_only.py:bert-base'], "'bert-base' is not a decoder_only preset"),
    (['--config=configs/missing.py'], 'configs/missing.py'),
    # validated as train validates it: the other sections, and what a dataset holds
    (['--config.data.dataset=wikitext'], "data.dataset='wikitext' is invalid"),
])
def test_describe_rejects_bad_input_with_one_line(args, message):
  check_one_line_error(describe(*args), message)


def test_a_config_without_sections_is_named():
  with pytest.raises(ConfigError, match='the config has no model section'):
    loop.validate(ml_collections.ConfigDict({'x': 1}))
  config = presets.get_config('decoder_only', 'tiny')
  del config['opt']
  with pytest.raises(ConfigError, match='the config has no opt section'):
    loop.validate(config)


@pytest.mark.parametrize('family,fields,message', [
    ('decoder_only', {'model.position': 'absolute'}, "model.position='absolute'"),
    ('decoder_only', {'model.dropout': 1.5}, 'model.dropout=1.5'),
    ('decoder_only', {'data.seq_len': 4096}, 'data.seq_len=4096'),
    ('decoder_only', {'opt.schedule': 'step'}, "opt.schedule='step' is invalid"),
    ('encoder_decoder', {'data.dataset': 'shakespeare'}, 'the encoder-decoder needs pairs'),
])
def test_describe_validates_what_train_validates(family, fields, message):
  """describe calls the validation train calls (loop.validate), the devices aside."""
  config = presets.get_config(family, 'tiny')
  for field, value in fields.items():
    section, name = field.split('.')
    config[section][name] = value
  with pytest.raises(ConfigError, match=re.escape(message)):
    loop.validate(config)


BAD_FILES = {
    'syntax.py': ('x = (\n', 'SyntaxError'),
    'no_get_config.py': ('x = 1\n', 'get_config'),
    'raises.py': ('def get_config():\n  raise RuntimeError("boom")\n', 'boom'),
    'returns_int.py': ('def get_config():\n  return 3\n', 'not a ConfigDict'),
    'returns_none.py': ('def get_config():\n  pass\n', 'not a ConfigDict'),  # no log lines
}


@pytest.mark.parametrize('name', sorted(BAD_FILES))
def test_describe_rejects_bad_config_files_with_one_line(tmp_path, name):
  text, message = BAD_FILES[name]
  (tmp_path / name).write_text(text)
  check_one_line_error(describe(f'--config={tmp_path / name}'), message)


def test_default_config_refuses_a_preset():
  check_one_line_error(describe('--config=configs/default.py:gpt2-xl'), 'takes no preset')


def check_one_line_error(result, message):
  assert result.returncode == 2
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
