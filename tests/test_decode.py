"""Decoding: cached = recomputed, token filters against NumPy, beam search = exhaustive search."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import presets
from transformer.config import Experiment, ModelConfig
from transformer.model import decode, models

BOS, EOS = 2, 3
POSITIONS = ('sinusoidal', 'learned', 'rope', 'alibi', 'none')


def tiny_model(family, vocab_size=40, sharpen=2.0, **model):
  """A random tiny model whose output distributions are far from uniform (no near-ties)."""
  config = presets.get_config(family, 'tiny')
  config.model.update(dict(vocab_size=vocab_size, dropout=0.0, attention_dropout=0.0,
                           max_len=64), **model)
  cfg = ModelConfig.from_config(config)
  init = jax.jit(lambda rng: jax.tree.map(lambda x: x * sharpen if x.ndim > 1 else x,
                                          models.init_params(cfg, rng)))
  params = init(jax.random.key(1))  # one compilation, not one per initializer
  return models.build_model(cfg), params


def test_top_k_and_top_p_keep_the_tokens_numpy_keeps(rng):
  logits = rng.normal(size=(6, 30)).astype(np.float32) * 2
  for top_k, top_p in ((5, 1.0), (0, 0.5), (0, 0.9), (8, 0.7), (0, 1e-6)):
    kept = np.isfinite(np.asarray(decode.filter_logits(jnp.asarray(logits), 1.0, top_k, top_p)))
    for row, kept_row in zip(logits, kept):
      order = np.argsort(-row)
      allowed = set(order[:top_k]) if top_k else set(order)
      # top-p applies to the top-k distribution, renormalised (as in Hugging Face's warpers)
      p = np.where(np.isin(np.arange(len(row)), list(allowed)), np.exp(row - row.max()), 0)
      p = p / p.sum()
      mass, nucleus = 0.0, set()
      for token in order:  # the fewest most likely tokens holding at least top_p
        if mass >= top_p:
          break
        nucleus.add(token)
        mass += p[token]
      assert set(np.flatnonzero(kept_row)) == allowed & nucleus, (top_k, top_p)


def test_samples_follow_the_tempered_distribution():
  logits = jnp.asarray([[2.0, 1.0, 0.0, -1.0, 0.5]])
  keys = jax.random.split(jax.random.key(0), 20000)
  tokens = jax.vmap(lambda k: decode.choose(logits, k, temperature=0.7))(keys)[:, 0]
  frequency = np.bincount(np.asarray(tokens), minlength=5) / len(keys)
  expected = np.exp(np.asarray(logits[0]) / 0.7)
  np.testing.assert_allclose(frequency, expected / expected.sum(), atol=0.012)
  assert int(decode.choose(logits, keys[0], temperature=0.0)[0]) == 0  # greedy: argmax


def test_cached_step_logits_equal_the_full_forward_pass():
  """Prefill 5 tokens (one of them padding), then one token per step: logits as without cache."""
  model, params = tiny_model('decoder_only', position='rope', num_kv_heads=2, num_layers=1)
  tokens = jnp.asarray([[0, 5, 6, 7, 8, 9, 10, 11], [4, 5, 6, 7, 8, 9, 10, 11]])
  segments = jnp.asarray([[0, 1, 1, 1, 1, 1, 1, 1], [1] * 8])
  positions = jnp.asarray([[0, 0, 1, 2, 3, 4, 5, 6], list(range(8))])
  full = jax.jit(model.apply)({'params': params}, tokens, segment_ids=segments,
                              positions=positions)

  @jax.jit
  def cached_apply(cache, tokens, segments, positions):
    return model.apply({'params': params, 'cache': cache}, tokens, segment_ids=segments,
                       positions=positions, use_cache=True, mutable=['cache'])

  logits, variables = cached_apply(decode.init_cache(model, params, 2, 8), tokens[:, :5],
                                   segments[:, :5], positions[:, :5])
  steps = [logits]
  for t in range(5, 8):
    logits, variables = cached_apply(variables['cache'], tokens[:, t:t + 1],
                                     segments[:, t:t + 1], positions[:, t:t + 1])
    steps.append(logits)
  cached = jnp.concatenate(steps, axis=1)
  np.testing.assert_allclose(cached[0, 1:], full[0, 1:], atol=2e-5)  # row 0 starts with padding
  np.testing.assert_allclose(cached[1], full[1], atol=2e-5)


@pytest.mark.parametrize('position', POSITIONS)
def test_cached_generation_yields_the_tokens_of_recomputation(position):
  model, params = tiny_model('decoder_only', position=position, num_layers=1)
  prompts = [[BOS, 5, 7, 9], [BOS, 11], [BOS, 3, 4, 5, 6, 7]]  # different lengths: left padding
  options = dict(temperature=1.0, top_k=12, top_p=0.95)
  cached = decode.generate(model, params, prompts, 10, jax.random.key(0), **options)
  recomputed = decode.generate(model, params, prompts, 10, jax.random.key(0), cached=False,
                               **options)
  assert cached == recomputed
  assert all(len(row) == 10 for row in cached) and len({t for r in cached for t in r}) > 5


@pytest.mark.parametrize('position', ['sinusoidal', 'alibi'])  # the rest: as decoder-only
def test_cached_translation_yields_the_tokens_of_recomputation(position):
  model, params = tiny_model('encoder_decoder', position=position, tie_embeddings=False,
                             num_layers=1)
  sources = [[5, 6, 7, EOS], [9, 9, EOS], [10, 11, 12, 13, 14, EOS]]
  options = dict(bos_id=BOS, eos_id=None, temperature=1.0, top_k=12)
  cached = decode.translate(model, params, sources, 10, jax.random.key(0), **options)
  recomputed = decode.translate(model, params, sources, 10, jax.random.key(0), cached=False,
                                **options)
  assert cached == recomputed
  assert len({t for r in cached for t in r}) > 5


def test_scanned_layers_decode_like_unrolled_ones():
  model, params = tiny_model('decoder_only', position='alibi')
  scanned, _ = tiny_model('decoder_only', position='alibi', scan_layers=True)
  prompts = [[BOS, 5, 7], [BOS, 8]]
  expected = decode.generate(model, params, prompts, 8, jax.random.key(0), temperature=0.0)
  got = decode.generate(scanned, models.stack_layers(params), prompts, 8, jax.random.key(0),
                        temperature=0.0)
  assert got == expected


def test_a_prompt_decodes_the_same_alone_and_in_a_padded_batch():
  model, params = tiny_model('decoder_only', position='learned')
  alone = decode.generate(model, params, [[BOS, 5]], 8, jax.random.key(0), temperature=0.0)
  batch = decode.generate(model, params, [[BOS, 5], [BOS, 6, 7, 8, 9, 10]], 8,
                          jax.random.key(0), temperature=0.0)
  assert batch[0] == alone[0]


def test_generation_stops_at_eos_and_respects_the_position_table():
  model, params = tiny_model('decoder_only', position='learned', max_len=16)
  out = decode.generate(model, params, [[BOS, 5]], 22, jax.random.key(0), temperature=1.0,
                        max_context=16)  # longer than the table: continues from the last 8
  assert len(out[0]) == 22
  with pytest.raises(ValueError, match='no room'):
    decode.generate(model, params, [[BOS] * 16], 4, jax.random.key(0))
  first = decode.generate(model, params, [[BOS, 5]], 10, jax.random.key(0), temperature=0.0)[0]
  cut = decode.generate(model, params, [[BOS, 5]], 10, jax.random.key(0), temperature=0.0,
                        eos_id=first[3])[0]
  assert cut == first[:first.index(first[3])]


# --- beam search -----------------------------------------------------------------------------


def exhaustive_best(model, params, source, vocab_size, max_len, alpha):
  """The best-scoring target over every sequence: log p / GNMT penalty, in float64. A target
  ends at its first EOS (counted in its length) or after max_len tokens."""
  sequences = np.asarray(list(itertools.product(range(vocab_size), repeat=max_len)), np.int32)
  inputs = np.concatenate([np.full((len(sequences), 1), BOS, np.int32), sequences[:, :-1]], 1)
  src = jnp.asarray(np.tile(source, (len(sequences), 1)))
  logits = np.asarray(model.apply({'params': params}, src, jnp.asarray(inputs)), np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  token_logp = np.take_along_axis(logp, sequences[..., None], -1)[..., 0]
  best, best_score = None, -np.inf
  for sequence, row in zip(sequences.tolist(), token_logp):
    length = sequence.index(EOS) + 1 if EOS in sequence else max_len
    score = row[:length].sum() / ((5 + length) / 6) ** alpha
    if score > best_score + 1e-9:
      best, best_score = sequence[:length - 1] if EOS in sequence else sequence, score
  return best, best_score


@pytest.mark.parametrize('alpha,scan', [(0.0, False), (1.0, True)])
def test_a_wide_beam_finds_the_exhaustive_best(alpha, scan):
  V, max_len = 5, 4  # scanned layers: the caches of surviving beams are gathered on axis 1
  model, params = tiny_model('encoder_decoder', vocab_size=V, sharpen=1.5, scan_layers=scan)
  sources = [[1, 4, EOS], [4, 0, 0, 1, EOS]]
  # 2 x beam >= every live hypothesis's continuations ((V - 1)^3 * V): nothing is pruned.
  found, scores = decode.beam_search(model, params, sources, beam_size=160, max_len=max_len,
                                     alpha=alpha, bos_id=BOS, eos_id=EOS)
  for source, sequence, score in zip(sources, found, scores):
    best, best_score = exhaustive_best(model, params, np.asarray(source), V, max_len, alpha)
    assert sequence == best
    assert score == pytest.approx(best_score, abs=1e-4)


def test_a_beam_of_one_is_greedy():
  model, params = tiny_model('encoder_decoder', position='rope', tie_embeddings=False)
  sources = [[5, 6, 7, EOS], [9, EOS], [10, 11, 12, 13, 14, EOS]]
  greedy = decode.translate(model, params, sources, 12, jax.random.key(0), bos_id=BOS,
                            eos_id=EOS)
  one, _ = decode.beam_search(model, params, sources, beam_size=1, max_len=12, alpha=0.0,
                              bos_id=BOS, eos_id=EOS)
  assert one == greedy and len({t for r in greedy for t in r}) > 3


# --- BLEU ------------------------------------------------------------------------------------


def test_bleu_scores_the_beam_searched_translations_of_held_out_pairs(data_dir):
  import sacrebleu

  from transformer.data import tokenizers
  from transformer.training import evaluation
  config = presets.get_config('encoder_decoder', 'tiny')
  config.data.update(dataset='reverse', data_dir=data_dir, synthetic_len=6, seq_len=8,
                     batch_size=4)
  tokenizer = tokenizers.ByteTokenizer()
  pairs = evaluation.held_out_pairs(Experiment.from_config(config), tokenizer, 7)
  assert len(pairs) == 7
  for source, reference in pairs:  # the task: the reversed source, without eos
    assert source[-1] == tokenizer.eos_id and reference == source[-2::-1]
  model, params = tiny_model('encoder_decoder', vocab_size=config.model.vocab_size)
  result = evaluation.bleu(model, params, pairs, tokenizer, max_len=8, beam_size=1,
                           tokenize='char', chunk=3)  # 3 chunks, the last one padded
  greedy = decode.translate(model, params, [s for s, _ in pairs], 8, jax.random.key(0),
                            bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
  assert result['hypotheses'] == [tokenizer.decode(ids) for ids in greedy]
  references = [tokenizer.decode(r) for _, r in pairs]
  expected = sacrebleu.corpus_bleu(result['hypotheses'], [references], tokenize='char').score
  assert result['bleu'] == pytest.approx(expected)
