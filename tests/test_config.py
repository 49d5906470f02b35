"""Validation: every invalid model config fails at construction with one line naming the field."""

import pytest

from transformer import presets
from transformer.config import ConfigError, ModelConfig, check_config

INVALID = [
    (dict(d_model=100, num_heads=3), r'model\.d_model=100 .*divisible by model\.num_heads=3'),
    (dict(num_heads=4, num_kv_heads=3), r'model\.num_heads=4 .*divisible by model\.num_kv_heads=3'),
    (dict(num_layers=0), r'model\.num_layers=0 .*positive'),
    (dict(d_ff=-1), r'model\.d_ff=-1 .*positive'),
    (dict(vocab_size=0), r'model\.vocab_size=0'),
    (dict(num_decoder_layers=0), r'model\.num_decoder_layers=0'),
    (dict(position='absolute'), r"model\.position='absolute' .*sinusoidal, learned, rope, alibi"),
    (dict(activation='tanh'), r"model\.activation='tanh' .*relu, gelu, gelu_tanh, silu, swiglu"),
    (dict(norm='batchnorm'), r"model\.norm='batchnorm' .*layernorm, rmsnorm"),
    (dict(family='rnn'), r"model\.family='rnn' .*encoder_only"),
    (dict(head='classify'), r"model\.head='classify' .*must be one of lm"),
    (dict(dropout=1.0), r'model\.dropout=1\.0 .*\[0, 1\)'),
    (dict(attention_dropout=-0.1), r'model\.attention_dropout=-0\.1'),
    (dict(dtype='float8'), r"model\.dtype='float8'"),
    (dict(attention_impl='flash'), r"model\.attention_impl='flash'"),
    (dict(attention_impl='xla', attention_dropout=0.1), r"attention_dropout=0\.1 .*einsum"),
    (dict(position='rope', d_model=12, num_heads=4), r'model\.d_model=12 .*even head size'),
    (dict(num_heads='4'), r"model\.num_heads='4' .*integer"),
    (dict(pre_norm=1), r'model\.pre_norm=1 .*True or False'),
    (dict(init_std=float('inf')), r'model\.init_std=inf .*finite'),
]


@pytest.mark.parametrize('fields,message', INVALID)
def test_invalid_configs_name_the_field(fields, message):
  with pytest.raises(ConfigError, match=message) as info:
    ModelConfig(**fields)
  assert '\n' not in str(info.value)


def test_defaults_resolve_kv_heads_and_decoder_layers():
  cfg = ModelConfig(num_heads=8, d_model=64, num_layers=3)
  assert cfg.num_kv_heads == 8 and cfg.num_decoder_layers == 3 and cfg.head_dim == 8
  assert ModelConfig(num_kv_heads=1).num_kv_heads == 1


def test_config_is_frozen_and_hashable():
  cfg = ModelConfig()
  with pytest.raises(Exception):
    cfg.d_model = 8
  assert hash(cfg) == hash(ModelConfig())


def test_from_config_rejects_unknown_model_fields():
  config = presets.get_config('decoder_only', 'tiny')
  config.model.unlock()
  config.model.num_experts = 4
  with pytest.raises(ConfigError, match='model.num_experts is not a model field'):
    ModelConfig.from_config(config)


def test_learned_table_must_cover_the_sequence():
  config = presets.get_config('decoder_only', 'tiny')
  config.data.seq_len = config.model.max_len + 1
  with pytest.raises(ConfigError, match=r'data\.seq_len=257 .*model\.max_len=256'):
    check_config(config)
  config.model.position = 'rope'  # no table: any length
  check_config(config)


@pytest.mark.parametrize('section,name,value', [
    ('train', 'num_steps', -5), ('train', 'log_every', 0), ('data', 'batch_size', 0),
    ('data', 'seq_len', 0)])
def test_run_fields_must_be_positive_integers(section, name, value):
  config = presets.get_config('decoder_only', 'tiny')
  config[section].unlock()
  config[section][name] = value
  with pytest.raises(ConfigError, match=rf'{section}\.{name}={value!r} .*positive integer'):
    check_config(config)


def test_every_base_field_is_a_model_field():
  """The commented base config and the dataclass stay in step."""
  check_config(presets.base_config())


def test_unknown_preset_names_the_choices():
  with pytest.raises(ConfigError, match=r"'bert-base' is not a decoder_only preset.*gpt2-small"):
    presets.get_config('decoder_only', 'bert-base')
