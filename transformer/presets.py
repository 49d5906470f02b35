"""Named experiments: each family's style and the table of sizes, over the base config.

Config files in configs/ are thin: `get_config(arg)` calls `get_config(family, arg)` here, where
`arg` names a size from SIZES ('tiny', 'gpt2-small', 'transformer-base', ...). Variants are
generated from the base (`config.base_config()`: every field, with its meaning in
transformer/config.py), never copied.
"""

import dataclasses

import ml_collections

from transformer.config import base_config
from transformer.errors import ConfigError

# Architecture of each family's reference model; sizes below only set widths and depths.
# The default datasets work offline (the embedded corpus; a synthetic task).
FAMILY_STYLES = {
    'encoder_only': dict(  # BERT (Devlin et al. 2019)
        head='mlm', position='learned', activation='gelu', norm_eps=1e-12, pre_norm=False,
        embed_norm=True, type_vocab_size=2, dropout=0.1, attention_dropout=0.1),
    'decoder_only': dict(  # GPT-2 (Radford et al. 2019)
        head='lm', position='learned', activation='gelu_tanh', norm_eps=1e-5, pre_norm=True,
        dropout=0.1),
    'encoder_decoder': dict(  # the translation Transformer (Vaswani et al. 2017)
        head='lm', position='sinusoidal', activation='relu', norm_eps=1e-6, pre_norm=False,
        scale_embeddings=True, share_embeddings=True, tie_embeddings=True, dropout=0.1),
}


FAMILY_DATASETS = {'encoder_only': 'shakespeare', 'decoder_only': 'shakespeare',
                   'encoder_decoder': 'reverse'}


@dataclasses.dataclass(frozen=True)
class Size:
  family: str | None  # None: any family
  num_layers: int
  d_model: int
  num_heads: int
  d_ff: int
  vocab_size: int = 256
  max_len: int = 512
  seq_len: int = 256
  dropout: float | None = None  # None: the family style's
  overrides: dict | None = None  # {section: {field: value}}: e.g. the paper's data and recipe


# The paper's setup: WMT 2014 English-German, shared 37000-token BPE, Adam (b2 0.98, eps 1e-9)
# with the rsqrt schedule (4000 warmup steps, lr = (d_model * warmup)^-1/2), label smoothing 0.1.
def _paper(d_model: int) -> dict:
  return dict(
      data=dict(dataset='wmt14_translate/de-en', tokenizer='sentencepiece', spm_type='bpe',
                vocab_size=37000),
      opt=dict(schedule='rsqrt', warmup_steps=4000, lr=(d_model * 4000) ** -0.5, b2=0.98,
               eps=1e-9, weight_decay=0.0, clip_norm=0.0),
      train=dict(label_smoothing=0.1, num_steps=100_000))


# Llama's decoder (Touvron et al. 2023): pre-RMSNorm, SwiGLU, RoPE, grouped-query attention, no
# biases, untied output projection, no dropout.
def _llama(num_kv_heads: int, norm_eps: float = 1e-5, rope_base: float = 10000.0) -> dict:
  return dict(model=dict(
      position='rope', rope_base=rope_base, activation='swiglu', norm='rmsnorm', norm_eps=norm_eps,
      pre_norm=True, use_bias=False, tie_embeddings=False, num_kv_heads=num_kv_heads))


SIZES = {
    # Any family, byte vocabulary: for tests, laptops and Colab CPU runtimes.
    'tiny': Size(None, 2, 64, 4, 256, max_len=256, seq_len=64),
    'mini': Size(None, 4, 256, 4, 1024, seq_len=256),
    'small': Size(None, 6, 384, 6, 1536, seq_len=256),
    # Vaswani et al. 2017, Table 3 (shared 37000-token BPE vocabulary).
    'transformer-base': Size('encoder_decoder', 6, 512, 8, 2048, 37000, 1024, 256, 0.1,
                             _paper(512)),
    'transformer-big': Size('encoder_decoder', 6, 1024, 16, 4096, 37000, 1024, 256, 0.3,
                            _paper(1024)),
    # Devlin et al. 2019 (WordPiece vocabulary of 30522, 512 positions).
    'bert-base': Size('encoder_only', 12, 768, 12, 3072, 30522, 512, 512),
    'bert-large': Size('encoder_only', 24, 1024, 16, 4096, 30522, 512, 512),
    # Radford et al. 2019 (BPE vocabulary of 50257, 1024 positions).
    'gpt2-small': Size('decoder_only', 12, 768, 12, 3072, 50257, 1024, 1024),
    'gpt2-medium': Size('decoder_only', 24, 1024, 16, 4096, 50257, 1024, 1024),
    'gpt2-large': Size('decoder_only', 36, 1280, 20, 5120, 50257, 1024, 1024),
    'gpt2-xl': Size('decoder_only', 48, 1600, 25, 6400, 50257, 1024, 1024),
    # Llama-style decoders: byte vocabulary (d_ff about 8/3 d_model, as Llama's), then the
    # published shapes of Llama 2 (32000-token vocabulary, 4096 positions) and Llama 3 8B.
    'llama-tiny': Size('decoder_only', 2, 64, 4, 176, 256, 256, 64, 0.0, _llama(2)),
    'llama-mini': Size('decoder_only', 4, 256, 4, 704, 256, 512, 256, 0.0, _llama(2)),
    'llama-small': Size('decoder_only', 6, 384, 6, 1024, 256, 512, 256, 0.0, _llama(2)),
    'llama2-7b': Size('decoder_only', 32, 4096, 32, 11008, 32000, 4096, 4096, 0.0, _llama(32)),
    'llama2-13b': Size('decoder_only', 40, 5120, 40, 13824, 32000, 4096, 4096, 0.0, _llama(40)),
    'llama2-70b': Size('decoder_only', 80, 8192, 64, 28672, 32000, 4096, 4096, 0.0, _llama(8)),
    'llama3-8b': Size('decoder_only', 32, 4096, 32, 14336, 128256, 8192, 8192, 0.0,
                      _llama(8, rope_base=500000.0)),
}


def sizes_for(family: str) -> list[str]:
  return [name for name, s in SIZES.items() if s.family in (None, family)]


def with_base(saved) -> ml_collections.ConfigDict:
  """A saved config (e.g. a run's config.json) on top of the base: fields added since it was
  written get their defaults, and fields it left at None keep their types for overrides."""
  config = base_config()
  for section, fields in saved.items():
    if section not in config or not isinstance(config[section], ml_collections.ConfigDict):
      config[section] = fields
      continue
    for name, value in fields.items():
      if value is not None or name not in config[section]:
        config[section][name] = value
  return config


def get_config(family: str, size: str | None = 'tiny') -> ml_collections.ConfigDict:
  """The base config in `family`'s style at the named size."""
  size = size or 'tiny'
  if size not in SIZES or SIZES[size].family not in (None, family):
    raise ConfigError(f'size {size!r} is not a {family} preset; choose one of '
                      f'{", ".join(sizes_for(family))}')
  s = SIZES[size]
  config = base_config()
  config.model.family = family
  config.model.update(FAMILY_STYLES[family])
  config.data.dataset = FAMILY_DATASETS[family]
  config.model.update(num_layers=s.num_layers, d_model=s.d_model, num_heads=s.num_heads,
                      d_ff=s.d_ff, vocab_size=s.vocab_size, max_len=s.max_len)
  if s.dropout is not None:
    config.model.dropout = s.dropout
  for section, fields in (s.overrides or {}).items():
    config[section].update(fields)
  config.data.seq_len = s.seq_len
  return config
