"""Transformers in JAX and Flax, grouped by layer; each depends only on those above it here.

  config, errors, files   the experiment schema, shared errors and exit codes, atomic files
  model/                  pure Linen modules, decoding, counting (jax and flax only)
  data/                   datasets, tokenizers, grain pipelines
  plots                   every figure (matplotlib)
  training/               the train step, optimizers, sharding, checkpoints, the loop
  inference/              trained runs: loading, generation, inspection, ablation, conversion
  analysis/               benchmarks, sweeps, scaling laws
  cli, presets            command-line plumbing; named experiments

The commands are thin modules here: `python -m transformer.train`, `.describe`, `.bench`,
`.sweep`, `.scaling`, `.generate`, `.viz`, `.ablation`, `.convert`, `.data`.
"""
