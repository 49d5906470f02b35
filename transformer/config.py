"""The model configuration: one frozen dataclass, validated once, built from a ConfigDict.

Modules never see a ConfigDict. `ModelConfig.from_config(config)` converts the `model` section
once, where the model is built; construction validates every field and raises `ConfigError`
with one line naming the field, the value and what is allowed.
"""

import dataclasses
import math
from typing import Any

FAMILIES = ('encoder_only', 'decoder_only', 'encoder_decoder')
HEADS = {  # output heads each family can carry
    'encoder_only': ('mlm', 'classify'),
    'decoder_only': ('lm',),
    'encoder_decoder': ('lm',),
}
POSITIONS = ('sinusoidal', 'learned', 'rope', 'alibi', 'none')
ACTIVATIONS = ('relu', 'gelu', 'gelu_tanh', 'silu', 'swiglu')
SINUSOIDAL_LAYOUTS = ('interleaved', 'concat')
NORMS = ('layernorm', 'rmsnorm')
POOLINGS = ('first', 'mean')
ATTENTION_IMPLS = ('einsum', 'xla', 'cudnn')
REMAT_POLICIES = ('full', 'dots', 'dots_no_batch')  # what model.remat keeps (models.py)
DTYPES = ('float32', 'bfloat16', 'float16')
PARAMETRIZATIONS = ('sp', 'mup')


class ConfigError(ValueError):
  """An invalid configuration; its message is one line naming the field and what is allowed."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every architectural choice of the three families. Field comments live in presets.py."""

  family: str = 'decoder_only'
  head: str = 'lm'
  num_classes: int = 2
  pooling: str = 'first'
  vocab_size: int = 256
  type_vocab_size: int = 0
  max_len: int = 512
  num_layers: int = 2
  num_decoder_layers: int | None = None  # None: same as num_layers
  d_model: int = 64
  num_heads: int = 4
  num_kv_heads: int | None = None  # None: same as num_heads
  d_ff: int = 256
  position: str = 'learned'
  sinusoidal_layout: str = 'interleaved'
  rope_base: float = 10000.0
  activation: str = 'gelu'
  norm: str = 'layernorm'
  norm_eps: float = 1e-5
  pre_norm: bool = True
  embed_norm: bool = False
  dropout: float = 0.0
  attention_dropout: float = 0.0
  use_bias: bool = True
  logits_bias: bool = False
  tie_embeddings: bool = True
  share_embeddings: bool = True
  scale_embeddings: bool = False
  init_std: float = 0.02
  parametrization: str = 'sp'
  mup_base_d_model: int = 128
  attention_impl: str = 'einsum'
  scan_layers: bool = False
  remat: bool = False
  remat_policy: str = 'full'
  dtype: str = 'float32'
  param_dtype: str = 'float32'

  def __post_init__(self):
    if self.num_kv_heads is None:
      object.__setattr__(self, 'num_kv_heads', self.num_heads)
    if self.num_decoder_layers is None:
      object.__setattr__(self, 'num_decoder_layers', self.num_layers)
    _check_types(self)
    _check_values(self)

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def width_mult(self) -> float:
    """muP's width multiplier m = d_model / mup_base_d_model; 1 under SP."""
    if self.parametrization == 'mup':
      return self.d_model / self.mup_base_d_model
    return 1.0

  @classmethod
  def from_config(cls, config: Any) -> 'ModelConfig':
    """Builds from a ConfigDict holding a `model` section."""
    if 'model' not in config:
      raise ConfigError('the config has no model section; get_config() must return a '
                        'ConfigDict with model, data and train sections')
    values = dict(config.model.items())
    known = {f.name for f in dataclasses.fields(cls)}
    for name in values:
      if name not in known:
        raise ConfigError(f'model.{name} is not a model field; known fields: '
                          f'{", ".join(sorted(known))}')
    return cls(**values)


def _fail(name: str, value: Any, allowed: str):
  raise ConfigError(f'model.{name}={value!r} is invalid: {allowed}')


def _check_types(cfg: ModelConfig):
  for field in dataclasses.fields(cfg):
    value = getattr(cfg, field.name)
    kind = field.type.__name__ if isinstance(field.type, type) else str(field.type)
    if kind.startswith('int'):
      if isinstance(value, bool) or not isinstance(value, int):
        _fail(field.name, value, 'must be an integer')
    elif kind == 'float':
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(field.name, value, 'must be a number')
      object.__setattr__(cfg, field.name, float(value))
    elif kind == 'bool' and not isinstance(value, bool):
      _fail(field.name, value, 'must be True or False')
    elif kind == 'str' and not isinstance(value, str):
      _fail(field.name, value, 'must be a string')


def _check_values(cfg: ModelConfig):
  def one_of(name, allowed):
    if getattr(cfg, name) not in allowed:
      _fail(name, getattr(cfg, name), f'must be one of {", ".join(allowed)}')

  one_of('family', FAMILIES)
  one_of('head', HEADS[cfg.family])
  for name, allowed in (('position', POSITIONS), ('activation', ACTIVATIONS), ('norm', NORMS),
                        ('sinusoidal_layout', SINUSOIDAL_LAYOUTS),
                        ('pooling', POOLINGS), ('attention_impl', ATTENTION_IMPLS),
                        ('remat_policy', REMAT_POLICIES),
                        ('dtype', DTYPES), ('param_dtype', DTYPES),
                        ('parametrization', PARAMETRIZATIONS)):
    one_of(name, allowed)
  for name in ('vocab_size', 'max_len', 'num_layers', 'num_decoder_layers', 'd_model',
               'num_heads', 'num_kv_heads', 'd_ff', 'num_classes', 'mup_base_d_model'):
    if getattr(cfg, name) <= 0:
      _fail(name, getattr(cfg, name), 'must be a positive integer')
  if cfg.type_vocab_size < 0:
    _fail('type_vocab_size', cfg.type_vocab_size, 'must be >= 0 (0: no token-type embeddings)')
  for name in ('norm_eps', 'init_std', 'rope_base'):
    if not 0 < getattr(cfg, name) < math.inf:
      _fail(name, getattr(cfg, name), 'must be a finite number > 0')
  for name in ('dropout', 'attention_dropout'):
    if not 0.0 <= getattr(cfg, name) < 1.0:
      _fail(name, getattr(cfg, name), 'must be in [0, 1)')
  if cfg.d_model % cfg.num_heads:
    _fail('d_model', cfg.d_model, f'must be divisible by model.num_heads={cfg.num_heads}')
  if cfg.num_heads % cfg.num_kv_heads:
    _fail('num_heads', cfg.num_heads,
          f'must be divisible by model.num_kv_heads={cfg.num_kv_heads}')
  if cfg.parametrization == 'mup' and cfg.mup_base_d_model % cfg.num_heads:
    _fail('mup_base_d_model', cfg.mup_base_d_model,
          f'must be divisible by model.num_heads={cfg.num_heads} (the muP base model has the '
          'same heads, with a smaller head size)')
  if cfg.position == 'sinusoidal' and cfg.d_model % 2:
    _fail('d_model', cfg.d_model, "must be even for model.position='sinusoidal'")
  if cfg.position == 'rope' and cfg.head_dim % 2:
    _fail('d_model', cfg.d_model,
          "must give an even head size (d_model / num_heads) for model.position='rope'")
  if cfg.attention_impl != 'einsum' and cfg.attention_dropout > 0:
    _fail('attention_dropout', cfg.attention_dropout,
          f"must be 0 with model.attention_impl={cfg.attention_impl!r} "
          "(jax.nn.dot_product_attention has no dropout); use 'einsum'")


def _positive_int(section: str, name: str, value: Any):
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ConfigError(f'{section}.{name}={value!r} is invalid: must be a positive integer')


def check_config(config: Any) -> ModelConfig:
  """Validates a whole experiment ConfigDict; returns its ModelConfig.

  Checks what one section cannot check alone, e.g. that a learned position table is at least
  as long as the sequences it will see.
  """
  cfg = ModelConfig.from_config(config)
  for section in ('data', 'train'):
    if section not in config:
      raise ConfigError(f'the config has no {section} section')
  for name in ('seq_len', 'batch_size'):
    _positive_int('data', name, config.data[name])
  for name in ('num_steps', 'log_every', 'eval_every', 'checkpoint_every'):
    _positive_int('train', name, config.train[name])
  if not 0 <= config.train.seed < 2**32:
    raise ConfigError(f'train.seed={config.train.seed!r} is invalid: must be in [0, 2^32)')
  if cfg.position == 'learned' and config.data.seq_len > cfg.max_len:
    raise ConfigError(
        f'data.seq_len={config.data.seq_len} is invalid: longer than the learned position table '
        f'(model.max_len={cfg.max_len}); raise model.max_len or choose another model.position')
  return cfg
