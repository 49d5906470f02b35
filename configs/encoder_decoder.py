"""Encoder-decoder: the translation Transformer of Vaswani et al. (2017).

  python -m transformer.describe --config=configs/encoder_decoder.py:transformer-base

Presets (the SIZES table in transformer/presets.py): tiny, mini, small (byte vocabulary),
transformer-base, transformer-big (Table 3: shared 37000-token vocabulary, post-LN, sinusoidal
positions, tied and shared embeddings scaled by sqrt(d_model)).
"""

from transformer import presets


def get_config(arg: str | None = None):
  return presets.get_config('encoder_decoder', arg)
