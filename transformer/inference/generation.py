"""Text from a trained run: continuations of prompts (decoder-only) or targets of sources
(encoder-decoder), decoded with a KV cache (transformer/model/decode.py)."""

import jax

from transformer.model import decode


def generate_text(run, prompts: list[str], *, num_tokens: int, temperature: float = 0.8,
                  top_k: int = 0, top_p: float = 1.0, num_samples: int = 1, seed: int = 0,
                  beam_size: int = 0, alpha: float = 0.6) -> list[str]:
  """The texts a `trained.Trained` run produces for `prompts` (num_samples per prompt, in
  prompt order): continuations (decoder-only) or targets (encoder-decoder: by beam search with
  beam_size > 0, else greedy or sampled)."""
  tokenizer = run.tokenizer()
  rng = jax.random.key(seed)
  if run.cfg.family == 'decoder_only':
    ids = [[tokenizer.bos_id, *tokenizer.encode(p)] for p in prompts for _ in range(num_samples)]
    out = decode.generate(run.model, run.params, ids, num_tokens, rng, temperature=temperature,
                          top_k=top_k, top_p=top_p, eos_id=tokenizer.eos_id,
                          max_context=run.config.data.seq_len)
  else:
    sources = [[*tokenizer.encode(p), tokenizer.eos_id] for p in prompts
               for _ in range(num_samples)]
    if beam_size:
      out, _ = decode.beam_search(run.model, run.params, sources, beam_size=beam_size,
                                  max_len=num_tokens, alpha=alpha, bos_id=tokenizer.bos_id,
                                  eos_id=tokenizer.eos_id)
    else:
      out = decode.translate(run.model, run.params, sources, num_tokens, rng,
                             bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                             temperature=temperature, top_k=top_k, top_p=top_p)
  return [tokenizer.decode(ids) for ids in out]
