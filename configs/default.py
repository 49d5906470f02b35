"""The default experiment: a small GPT-style byte-level language model.

  python -m transformer.describe            # this config is the default of every command

4 layers, 4 heads, d_model 256 ('mini'), sequences of 256 bytes: small enough for a laptop
or a Colab CPU runtime.
"""

from transformer import presets


def get_config(arg: str | None = None):
  if arg:
    raise ValueError(f'configs/default.py takes no preset (got {arg!r}); the presets are in '
                     'configs/decoder_only.py, encoder_only.py and encoder_decoder.py')
  config = presets.get_config('decoder_only', 'mini')
  config.data.batch_size = 8  # sequences per step
  return config
