"""The model: pure Linen modules (attention, positional encodings, blocks, the three families),
decoding with a KV cache, and the counting of parameters and FLOPs. Imports jax, flax and
transformer.config alone."""
