"""Decoder-only (GPT-like) causal language model, in GPT-2's style.

  python -m transformer.describe --config=configs/decoder_only.py:gpt2-small

Presets (the SIZES table in transformer/presets.py): tiny, mini, small (byte vocabulary),
gpt2-small, gpt2-medium, gpt2-large, gpt2-xl; in Llama's style (pre-RMSNorm, SwiGLU, RoPE,
grouped-query attention, no biases, untied output): llama-tiny, llama-mini, llama-small
(byte vocabulary), llama2-7b, llama2-13b, llama2-70b, llama3-8b. Any field can be overridden, e.g.
`--config.model.position=rope --config.model.num_kv_heads=1`.
"""

from transformer import presets


def get_config(arg: str | None = None):
  return presets.get_config('decoder_only', arg)
