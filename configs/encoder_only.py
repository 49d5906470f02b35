"""Encoder-only (BERT-like) model with a masked-LM head, or a classification head.

  python -m transformer.describe --config=configs/encoder_only.py:bert-base
  python -m transformer.describe --config=configs/encoder_only.py:tiny --config.model.head=classify

Presets (the SIZES table in transformer/presets.py): tiny, mini, small (byte vocabulary),
bert-base, bert-large.
"""

from transformer import presets


def get_config(arg: str | None = None):
  return presets.get_config('encoder_only', arg)
