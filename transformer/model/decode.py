"""Autoregressive decoding with a KV cache, for the decoder-only and encoder-decoder families.

  generate(model, params, prompts, num_tokens, rng, ...)    decoder-only: continue prompts
  translate(model, params, sources, max_len, rng, ...)      encoder-decoder: one target each
  beam_search(model, params, sources, beam_size=4, ...)     encoder-decoder: the best target

Tokens are chosen greedily (temperature 0) or sampled at a temperature, optionally from the
top-k tokens and/or the nucleus (top-p). Each step feeds only the new token: the keys and values
of earlier tokens live in the model's 'cache' collection (attention.py), so a step costs O(L)
instead of recomputing the whole sequence. `generate_uncached` recomputes the whole sequence at
every step; the cached path yields exactly its tokens (tested for every positional encoding).

Prompts of different lengths are left-padded (padding is masked; positions start at each
prompt's first token), so every row appends its next token at the same cache slot. Everything
after a row's `eos_id` is dropped from what is returned.
"""

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from transformer.config import ModelConfig

# --- choosing a token ----------------------------------------------------------------------------


def filter_logits(logits_BxV: jax.Array, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """Logits / temperature, with -inf outside the top-k tokens (0: all), then outside the
  nucleus of what is left: the fewest most likely tokens whose probability adds up to at least
  top_p (1.0: all)."""
  logits_BxV = logits_BxV.astype(jnp.float32) / temperature
  if top_k:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  if top_p < 1.0:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # mass of the more likely tokens
    # The smallest kept logit: the last one whose predecessors hold less than top_p.
    kept_BxV = before_BxV < top_p
    threshold_Bx1 = jnp.min(jnp.where(kept_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < threshold_Bx1, -jnp.inf, logits_BxV)
  return logits_BxV


def choose(logits_BxV: jax.Array, rng: jax.Array, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0) -> jax.Array:
  """The next token of each row (B,): argmax at temperature 0, else a sample."""
  if temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  filtered_BxV = filter_logits(logits_BxV, temperature, top_k, top_p)
  return jax.random.categorical(rng, filtered_BxV, axis=-1).astype(jnp.int32)


# --- the cache -----------------------------------------------------------------------------------


def init_cache(model: nn.Module, params: Any, batch_size: int, length: int,
               encoded_BxSxD: jax.Array | None = None) -> Any:
  """An empty KV cache of `length` slots per row (zeros: no shapes are traced twice)."""
  tokens_BxL = jnp.zeros((batch_size, length), jnp.int32)
  if encoded_BxSxD is None:
    apply = lambda: model.apply({'params': params}, tokens_BxL, use_cache=True,
                                mutable=['cache'])
  else:
    apply = lambda: model.apply({'params': params}, encoded_BxSxD, tokens_BxL, use_cache=True,
                                method='decode', mutable=['cache'])
  shapes = jax.eval_shape(apply)[1]['cache']
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def reorder_cache(cache: Any, rows_B: jax.Array, cfg: ModelConfig) -> Any:
  """The cache of rows `rows_B` (beam search keeps the caches of the surviving beams). The
  batch axis is 0, or 1 under `scan_layers` (a leading layer axis)."""
  axis = 1 if cfg.scan_layers else 0

  def take(path, x):
    if getattr(path[-1], 'key', None) == 'cache_index':
      return x
    return jnp.take(x, rows_B, axis=axis)
  return jax.tree_util.tree_map_with_path(take, cache)


# --- decoder-only --------------------------------------------------------------------------------


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tokens, segment_ids, positions), each (B, P): prompts right-aligned, padding segment 0."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError('every prompt needs at least one token (e.g. the tokenizer\'s bos_id)')
  P = max(len(p) for p in prompts)
  tokens = np.full((len(prompts), P), pad_id, np.int32)
  segments = np.zeros((len(prompts), P), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, P - len(prompt):] = prompt
    segments[row, P - len(prompt):] = 1
  positions = np.maximum(np.cumsum(segments, axis=1) - 1, 0).astype(np.int32)
  return tokens, segments, positions


_STATIC = ('model', 'num_tokens', 'temperature', 'top_k', 'top_p')


def _finish(token_B, done_B, eos_id):
  """After its eos a row repeats eos (eos_id -1: none, never done). eos_id is traced: another
  eos does not compile again."""
  token_B = jnp.where(done_B, eos_id, token_B)
  return token_B, done_B | (token_B == eos_id)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_cached(model, params, tokens_BxP, segments_BxP, positions_BxP, rng, *, num_tokens,
                     temperature, top_k, top_p, eos_id):
  B, P = tokens_BxP.shape
  cache = init_cache(model, params, B, P + num_tokens)
  logits_BxPxV, variables = model.apply({'params': params, 'cache': cache}, tokens_BxP,
                                        segment_ids=segments_BxP, positions=positions_BxP,
                                        use_cache=True, mutable=['cache'])

  def step(i, carry):
    cache, logits_BxV, position_B, out_BxN, done_B = carry
    token_B = choose(logits_BxV, jax.random.fold_in(rng, i), temperature, top_k, top_p)
    token_B, done_B = _finish(token_B, done_B, eos_id)
    logits_Bx1xV, variables = model.apply(
        {'params': params, 'cache': cache}, token_B[:, None], positions=position_B[:, None],
        use_cache=True, mutable=['cache'])
    return (variables['cache'], logits_Bx1xV[:, 0], position_B + 1, out_BxN.at[:, i].set(token_B),
            done_B)

  carry = (variables['cache'], logits_BxPxV[:, -1], positions_BxP[:, -1] + 1,
           jnp.zeros((B, num_tokens), jnp.int32), jnp.zeros((B,), bool))
  return jax.lax.fori_loop(0, num_tokens, step, carry)[3]


@functools.partial(jax.jit, static_argnames=_STATIC)
def _generate_uncached(model, params, tokens_BxP, segments_BxP, positions_BxP, rng, *,
                       num_tokens, temperature, top_k, top_p, eos_id):
  B, P = tokens_BxP.shape
  tokens_BxL = jnp.concatenate([tokens_BxP, jnp.zeros((B, num_tokens), jnp.int32)], axis=1)
  segments_BxL = jnp.concatenate([segments_BxP, jnp.ones((B, num_tokens), jnp.int32)], axis=1)
  positions_BxL = jnp.concatenate(
      [positions_BxP, positions_BxP[:, -1:] + 1 + jnp.arange(num_tokens)], axis=1)

  def step(i, carry):
    tokens_BxL, done_B = carry
    logits_BxLxV = model.apply({'params': params}, tokens_BxL, segment_ids=segments_BxL,
                               positions=positions_BxL)
    logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxLxV, P + i - 1, axis=1, keepdims=False)
    token_B = choose(logits_BxV, jax.random.fold_in(rng, i), temperature, top_k, top_p)
    token_B, done_B = _finish(token_B, done_B, eos_id)
    return tokens_BxL.at[:, P + i].set(token_B), done_B

  tokens_BxL, _ = jax.lax.fori_loop(0, num_tokens, step, (tokens_BxL, jnp.zeros((B,), bool)))
  return tokens_BxL[:, P:]


def _cut(row: list[int], eos_id: int | None) -> list[int]:
  """The tokens before the first eos."""
  return row[:row.index(eos_id)] if eos_id is not None and eos_id in row else row


def _trim(tokens_BxN: np.ndarray, eos_id: int | None) -> list[list[int]]:
  return [_cut(row, eos_id) for row in np.asarray(tokens_BxN).tolist()]


def _options(temperature, top_k, top_p, eos_id) -> dict:
  if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
    raise ValueError(f'temperature={temperature} (>= 0), top_k={top_k} (>= 0) and top_p={top_p} '
                     '(in (0, 1]) are out of range')
  return dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
              eos_id=jnp.int32(-1 if eos_id is None else eos_id))


def generate(model: nn.Module, params: Any, prompts: Sequence[Sequence[int]], num_tokens: int,
             rng: jax.Array, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             eos_id: int | None = None, max_context: int | None = None,
             cached: bool = True) -> list[list[int]]:
  """Up to `num_tokens` tokens continuing each prompt (a decoder-only model), cut at `eos_id`.

  With `max_context` (e.g. the training length), a sequence that would grow past it continues
  from its last max_context / 2 tokens (re-encoded at positions from 0), so the model never
  sees a longer context than it was trained on. `cached=False`: recompute every step (the
  reference)."""
  cfg = model.cfg
  options = _options(temperature, top_k, top_p, eos_id)
  limit = max_context or math.inf
  if cfg.position == 'learned':
    limit = min(limit, cfg.max_len)
  if max(len(p) for p in prompts) >= limit:
    raise ValueError(f'a prompt of {max(len(p) for p in prompts)} tokens leaves no room in a '
                     f'context of {limit}')
  run = _generate_cached if cached else _generate_uncached
  sequences = [list(p) for p in prompts]
  done = [False] * len(prompts)
  produced, round_ = 0, 0
  while produced < num_tokens and not all(done):
    contexts = [s if len(s) < limit else s[-int(limit) // 2:] for s in sequences]
    room = int(min(num_tokens - produced, limit - max(len(c) for c in contexts)))
    tokens, segments, positions = left_pad(contexts)
    new = np.asarray(run(model, params, jnp.asarray(tokens), jnp.asarray(segments),
                         jnp.asarray(positions), jax.random.fold_in(rng, round_),
                         num_tokens=room, **options))
    for row, row_tokens in enumerate(new.tolist()):
      if not done[row]:
        kept = _cut(row_tokens, eos_id)
        sequences[row] += kept
        done[row] = len(kept) < len(row_tokens)
    produced += room
    round_ += 1
  return [s[len(p):] for s, p in zip(sequences, prompts)]


# --- encoder-decoder -----------------------------------------------------------------------------


def right_pad(sources: Sequence[Sequence[int]], pad_id: int = 0, length: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
  """(tokens, segment_ids), each (B, S): sources left-aligned, padding segment 0. S is the
  longest source's length, or `length` (a fixed shape compiles once)."""
  if not sources or any(len(s) == 0 for s in sources):
    raise ValueError('every source needs at least one token (e.g. the tokenizer\'s eos_id)')
  S = max(max(len(s) for s in sources), length or 0)
  tokens = np.full((len(sources), S), pad_id, np.int32)
  segments = np.zeros((len(sources), S), np.int32)
  for row, source in enumerate(sources):
    tokens[row, :len(source)] = source
    segments[row, :len(source)] = 1
  return tokens, segments


def _encode(model, params, src_BxS, src_segments_BxS):
  return model.apply({'params': params}, src_BxS, src_segment_ids=src_segments_BxS,
                     method='encode')


def _decode_step(model, params, cache, encoded_BxSxD, src_segments_BxS, token_B, position_B):
  """(logits (B, V), cache) of the token after `token_B`, at `position_B`."""
  logits_Bx1xV, variables = model.apply(
      {'params': params, 'cache': cache}, encoded_BxSxD, token_B[:, None],
      src_segment_ids=src_segments_BxS, tgt_positions=position_B[:, None], use_cache=True,
      method='decode', mutable=['cache'])
  return logits_Bx1xV[:, 0], variables['cache']


@functools.partial(jax.jit, static_argnames=_STATIC + ('bos_id',))
def _translate_cached(model, params, src_BxS, src_segments_BxS, rng, *, num_tokens, temperature,
                      top_k, top_p, eos_id, bos_id):
  B = src_BxS.shape[0]
  encoded_BxSxD = _encode(model, params, src_BxS, src_segments_BxS)
  cache = init_cache(model, params, B, num_tokens, encoded_BxSxD)

  def step(i, carry):
    cache, token_B, out_BxN, done_B = carry
    logits_BxV, cache = _decode_step(model, params, cache, encoded_BxSxD, src_segments_BxS,
                                     token_B, jnp.full((B,), i, jnp.int32))
    token_B = choose(logits_BxV, jax.random.fold_in(rng, i), temperature, top_k, top_p)
    token_B, done_B = _finish(token_B, done_B, eos_id)
    return cache, token_B, out_BxN.at[:, i].set(token_B), done_B

  carry = (cache, jnp.full((B,), bos_id, jnp.int32), jnp.zeros((B, num_tokens), jnp.int32),
           jnp.zeros((B,), bool))
  return jax.lax.fori_loop(0, num_tokens, step, carry)[2]


@functools.partial(jax.jit, static_argnames=_STATIC + ('bos_id',))
def _translate_uncached(model, params, src_BxS, src_segments_BxS, rng, *, num_tokens,
                        temperature, top_k, top_p, eos_id, bos_id):
  B = src_BxS.shape[0]
  targets_BxN = jnp.zeros((B, num_tokens), jnp.int32).at[:, 0].set(bos_id)

  def step(i, carry):
    targets_BxN, out_BxN, done_B = carry
    logits_BxNxV = model.apply({'params': params}, src_BxS, targets_BxN,
                               src_segment_ids=src_segments_BxS)
    logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxNxV, i, axis=1, keepdims=False)
    token_B = choose(logits_BxV, jax.random.fold_in(rng, i), temperature, top_k, top_p)
    token_B, done_B = _finish(token_B, done_B, eos_id)
    targets_BxN = jax.lax.dynamic_update_index_in_dim(
        targets_BxN, token_B[:, None], jnp.minimum(i + 1, num_tokens - 1), axis=1)
    return targets_BxN, out_BxN.at[:, i].set(token_B), done_B

  carry = (targets_BxN, jnp.zeros((B, num_tokens), jnp.int32), jnp.zeros((B,), bool))
  return jax.lax.fori_loop(0, num_tokens, step, carry)[1]


def translate(model: nn.Module, params: Any, sources: Sequence[Sequence[int]], max_len: int,
              rng: jax.Array, *, bos_id: int, eos_id: int | None, temperature: float = 0.0,
              top_k: int = 0, top_p: float = 1.0, cached: bool = True) -> list[list[int]]:
  """One target per source (an encoder-decoder model), up to `max_len` tokens, cut at eos:
  greedy by default, or sampled. `cached=False`: recompute every step (the reference)."""
  longest = max(max_len, max(len(s) for s in sources))
  model.cfg.check_length(longest, f'the longest sequence ({longest} tokens)')
  src, segments = right_pad(sources)
  run = _translate_cached if cached else _translate_uncached
  out = run(model, params, jnp.asarray(src), jnp.asarray(segments), rng, num_tokens=max_len,
            bos_id=int(bos_id), **_options(temperature, top_k, top_p, eos_id))
  return _trim(np.asarray(out), eos_id)


# --- beam search ---------------------------------------------------------------------------------


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
  """GNMT's ((5 + length) / 6)^alpha (Wu et al. 2016); a hypothesis scores log p / penalty."""
  return ((5.0 + length) / 6.0) ** alpha


@functools.partial(jax.jit, static_argnames=('model', 'beam_size', 'max_len', 'alpha', 'bos_id',
                                             'eos_id'))
def _beam_search(model, params, src_BxS, src_segments_BxS, *, beam_size, max_len, alpha, bos_id,
                 eos_id):
  B, W = src_BxS.shape[0], beam_size
  encoded_BWxSxD = jnp.repeat(_encode(model, params, src_BxS, src_segments_BxS), W, axis=0)
  segments_BWxS = jnp.repeat(src_segments_BxS, W, axis=0)
  cache = init_cache(model, params, B * W, max_len, encoded_BWxSxD)
  NEG = jnp.float32(-1e9)  # finite: -inf - -inf would be nan in the comparisons below

  def step(i, state):
    cache, alive_BxWxN, alive_logp_BxW, done_BxWxN, done_score_BxW = state
    previous_B = jnp.where(i == 0, bos_id, alive_BxWxN[:, :, jnp.maximum(i - 1, 0)]).reshape(-1)
    logits_BWxV, cache = _decode_step(model, params, cache, encoded_BWxSxD, segments_BWxS,
                                      previous_B, jnp.full((B * W,), i, jnp.int32))
    V = logits_BWxV.shape[-1]
    logp_BxWxV = alive_logp_BxW[:, :, None] + jax.nn.log_softmax(
        logits_BWxV.astype(jnp.float32)).reshape(B, W, V)
    # 2W candidates: even if W of them end with eos, W can go on.
    top_logp_Bx2W, top_index_Bx2W = jax.lax.top_k(logp_BxWxV.reshape(B, W * V), 2 * W)
    beam_Bx2W, token_Bx2W = top_index_Bx2W // V, top_index_Bx2W % V
    seqs_Bx2WxN = jnp.take_along_axis(alive_BxWxN, beam_Bx2W[:, :, None], axis=1)
    seqs_Bx2WxN = seqs_Bx2WxN.at[:, :, i].set(token_Bx2W)
    ends_Bx2W = token_Bx2W == eos_id
    last = i == max_len - 1  # a hypothesis still going at max_len ends there
    # Finished: the best W of those before and those ending now (score: log p / penalty).
    score_Bx2W = jnp.where(ends_Bx2W | last, top_logp_Bx2W / length_penalty(i + 1.0, alpha), NEG)
    score_Bx3W = jnp.concatenate([done_score_BxW, score_Bx2W], axis=1)
    seqs_Bx3WxN = jnp.concatenate([done_BxWxN, seqs_Bx2WxN], axis=1)
    done_score_BxW, keep_BxW = jax.lax.top_k(score_Bx3W, W)
    done_BxWxN = jnp.take_along_axis(seqs_Bx3WxN, keep_BxW[:, :, None], axis=1)
    # Alive: the best W that did not end.
    alive_logp_BxW, keep_BxW = jax.lax.top_k(jnp.where(ends_Bx2W, NEG, top_logp_Bx2W), W)
    alive_BxWxN = jnp.take_along_axis(seqs_Bx2WxN, keep_BxW[:, :, None], axis=1)
    rows_BW = (jnp.arange(B)[:, None] * W + jnp.take_along_axis(beam_Bx2W, keep_BxW, 1)).reshape(-1)
    cache = reorder_cache(cache, rows_BW, model.cfg)
    return cache, alive_BxWxN, alive_logp_BxW, done_BxWxN, done_score_BxW

  def going_on(carry):
    # Stop once no alive hypothesis can beat the worst kept finished one: its log p can only
    # fall, and its penalty is at most that of max_len.
    i, state = carry
    best_possible_B = state[2][:, 0] / length_penalty(float(max_len), alpha)
    return (i < max_len) & jnp.any(best_possible_B > state[4][:, -1])

  def body(carry):
    i, state = carry
    return i + 1, step(i, state)

  state = (cache, jnp.zeros((B, W, max_len), jnp.int32),
           jnp.tile(jnp.concatenate([jnp.zeros(1), jnp.full(W - 1, NEG)]), (B, 1)),
           jnp.zeros((B, W, max_len), jnp.int32), jnp.full((B, W), NEG))
  _, state = jax.lax.while_loop(going_on, body, (jnp.int32(0), state))
  return state[3], state[4]


def beam_search(model: nn.Module, params: Any, sources: Sequence[Sequence[int]], *,
                beam_size: int = 4, max_len: int, alpha: float = 0.6, bos_id: int,
                eos_id: int, source_len: int | None = None) -> tuple[list[list[int]], list[float]]:
  """The best target of each source by beam search (an encoder-decoder model), and its score:
  log p(target | source) / ((5 + length) / 6)^alpha, where length counts the eos. A hypothesis
  ends at eos, or at `max_len` tokens. With beam_size 1 this is greedy decoding; with a beam
  wider than every hypothesis it is exhaustive search. `source_len`: pad sources to it."""
  if beam_size < 1 or max_len < 1:
    raise ValueError(f'beam_size={beam_size} and max_len={max_len} must be >= 1')
  longest = max(max_len, max(len(s) for s in sources))
  model.cfg.check_length(longest, f'the longest sequence ({longest} tokens)')
  src, segments = right_pad(sources, length=source_len)
  seqs_BxWxN, scores_BxW = _beam_search(
      model, params, jnp.asarray(src), jnp.asarray(segments), beam_size=int(beam_size),
      max_len=int(max_len), alpha=float(alpha), bos_id=int(bos_id), eos_id=int(eos_id))
  best = _trim(np.asarray(seqs_BxWxN)[:, 0], eos_id)
  return best, np.asarray(scores_BxW)[:, 0].tolist()
