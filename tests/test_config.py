"""Validation: every invalid config fails once, right after it is resolved, with one line naming
the field; the schema is the one source of every field and its default."""

import dataclasses

import pytest

from transformer import config as schema, presets
from transformer.config import Experiment, ModelConfig
from transformer.errors import ConfigError

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
  with pytest.raises(dataclasses.FrozenInstanceError):
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
    Experiment.from_config(config)
  config.model.position = 'rope'  # no table: any length
  Experiment.from_config(config)


@pytest.mark.parametrize('section,name,value', [
    ('train', 'num_steps', -5), ('train', 'log_every', 0), ('data', 'batch_size', 0),
    ('data', 'seq_len', 0)])
def test_run_fields_must_be_positive_integers(section, name, value):
  config = presets.get_config('decoder_only', 'tiny')
  config[section].unlock()
  config[section][name] = value
  with pytest.raises(ConfigError, match=rf'{section}\.{name}={value!r} .*positive integer'):
    Experiment.from_config(config)


SECTION_ERRORS = [
    ('data', 'tokenizer', 'wordpiece', r"data\.tokenizer='wordpiece' .*byte, sentencepiece"),
    ('data', 'batch_size', '8', r"data\.batch_size='8' .*integer"),
    ('data', 'mask_rate', 1.0, r'data\.mask_rate=1\.0 .*\(0, 1\)'),
    ('data', 'prefetch', -1, r'data\.prefetch=-1 .*>= 0'),
    ('train', 'seed', 2**32, r'train\.seed=4294967296 .*\[0, 2\^32\)'),
    ('train', 'keep_checkpoints', 0, r'train\.keep_checkpoints=0 .*>= 1'),
    ('train', 'label_smoothing', 1.0, r'train\.label_smoothing=1\.0 .*\[0, 1\)'),
    ('train', 'bleu_tokenize', 'spm', r"train\.bleu_tokenize='spm' .*13a, intl, char, none"),
    ('train', 'bleu_examples', 4, r'train\.bleu_examples=4: BLEU is for encoder_decoder'),
    ('train', 'grad_accum_steps', 3, r'train\.grad_accum_steps=3 .*divide data\.batch_size=32'),
    ('opt', 'name', 'lion', r"opt\.name='lion' .*adamw, adafactor, sgd"),
    ('opt', 'schedule', 'step', r"opt\.schedule='step' .*constant, cosine, linear, rsqrt"),
    ('opt', 'lr', -0.001, r'opt\.lr=-0\.001 .*> 0'),
    ('opt', 'b2', 1.0, r'opt\.b2=1\.0 .*\[0, 1\)'),
    ('mesh', 'fsdp', 0, r'mesh\.fsdp=0 .*positive device count or -1'),
    ('mesh', 'tensor', -1, r'mesh\.tensor=-1 .*only one mesh field may be -1'),
]


@pytest.mark.parametrize('section,name,value,message', SECTION_ERRORS)
def test_every_section_is_typed_and_validated(section, name, value, message):
  values = presets.get_config('decoder_only', 'tiny').to_dict()  # as in a run's config.json
  values[section][name] = value
  with pytest.raises(ConfigError, match=message) as info:
    Experiment.from_config(values)
  assert '\n' not in str(info.value)


def test_rules_between_sections_name_both_fields():
  config = presets.get_config('decoder_only', 'tiny')
  config.model.parametrization = 'mup'
  config.opt.name = 'sgd'
  with pytest.raises(ConfigError, match=r"opt\.name='sgd' .*model\.parametrization='mup'"):
    Experiment.from_config(config)
  config = presets.get_config('decoder_only', 'tiny')
  config.parallel = 'pmap'
  config.mesh.fsdp = 2
  with pytest.raises(ConfigError, match=r"mesh\.fsdp=2 is invalid with parallel='pmap'"):
    Experiment.from_config(config)


def test_sections_are_frozen_and_unknown_fields_are_named():
  experiment = Experiment.from_config(presets.get_config('decoder_only', 'tiny'))
  with pytest.raises(dataclasses.FrozenInstanceError):
    experiment.train.num_steps = 5
  config = presets.get_config('decoder_only', 'tiny')
  config.opt.unlock()
  config.opt.lr_peak = 1e-3
  with pytest.raises(ConfigError, match='opt.lr_peak is not a opt field'):
    Experiment.from_config(config)


def test_the_base_config_is_generated_from_the_schema():
  """One source of every field: the ConfigDict config files start from holds exactly the
  dataclasses' fields and defaults (the two used to be declared twice and disagree)."""
  base = schema.base_config()
  for name, section in schema.SECTIONS.items():
    defaults = {f.name: f.default for f in dataclasses.fields(section)}
    assert dict(base[name].items()) == defaults, name
    assert all(f.metadata['doc'] for f in dataclasses.fields(section)), name
  assert Experiment.from_config(base).model == ModelConfig()


def test_a_run_config_round_trips():
  """config.json (Experiment.to_dict) reads back as the same experiment; fields that follow
  another one are written as None so that overriding that one moves them along."""
  config = presets.get_config('encoder_decoder', 'tiny')
  experiment = Experiment.from_config(config)
  saved = experiment.to_dict()
  assert saved['model']['num_kv_heads'] is None and saved['model']['num_decoder_layers'] is None
  assert Experiment.from_config(saved) == experiment
  again = presets.with_base(saved)
  again.model.num_heads = 8
  assert Experiment.from_config(again).model.num_kv_heads == 8


def test_unknown_preset_names_the_choices():
  with pytest.raises(ConfigError, match=r"'bert-base' is not a decoder_only preset.*gpt2-small"):
    presets.get_config('decoder_only', 'bert-base')


def test_the_schema_names_what_the_model_implements():
  """The schema (which cannot import the model) lists the activations and remat policies the
  model layer implements: the same names, so a valid config always builds."""
  from transformer.model import layers, models
  assert set(schema.ACTIVATION_NAMES) == set(layers.ACTIVATIONS)
  assert set(schema.REMAT_POLICY_NAMES) == set(models.REMAT_POLICIES)


def test_replacing_a_field_moves_the_fields_that_follow_it():
  experiment = Experiment.from_config(presets.get_config('encoder_decoder', 'tiny'))
  wider = experiment.replace(model={'num_heads': 8, 'num_layers': 3})
  assert wider.model.num_kv_heads == 8 and wider.model.num_decoder_layers == 3
  gqa = experiment.replace(model={'num_heads': 8, 'num_kv_heads': 2})
  assert gqa.model.num_kv_heads == 2
  assert experiment.replace(data={'seq_len': 32}).model == experiment.model
