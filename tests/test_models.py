"""The three families: agreement with a float64 reference, causality, padding, packing,
scan/remat equivalence, mixed precision, heads and tying."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import reference
from transformer.config import ModelConfig
from transformer.model import models

POSITIONS = ('sinusoidal', 'learned', 'rope', 'alibi', 'none')


def make_cfg(family='decoder_only', **overrides) -> ModelConfig:
  fields = dict(family=family, head='lm' if family != 'encoder_only' else 'mlm', vocab_size=32,
                max_len=16, num_layers=2, d_model=16, num_heads=4, d_ff=32, dropout=0.0)
  fields.update(overrides)
  return ModelConfig(**fields)


def perturbed_params(cfg, seed=0, scale=0.1):
  """Initial parameters plus noise, so that biases and norm scales are not trivial."""
  params = models.init_params(cfg, jax.random.key(seed))
  noise = np.random.default_rng(seed + 1)
  return jax.tree.map(
      lambda x: x + jnp.asarray(scale * noise.standard_normal(x.shape), x.dtype), params)


def run(cfg, params, tokens, segment_ids=None, tgt_tokens=None, tgt_segment_ids=None, **kw):
  model = models.build_model(cfg)
  if cfg.family == 'encoder_decoder':
    return model.apply({'params': params}, tokens, tgt_tokens, src_segment_ids=segment_ids,
                       tgt_segment_ids=tgt_segment_ids, **kw)
  return model.apply({'params': params}, tokens, segment_ids=segment_ids, **kw)


def random_tokens(rng, shape, vocab=32):
  return jnp.asarray(rng.integers(1, vocab, shape), jnp.int32)


REFERENCE_CASES = {
    'gpt2_style': dict(family='decoder_only', position='learned', activation='gelu_tanh'),
    'llama_style': dict(family='decoder_only', position='rope', norm='rmsnorm', use_bias=False,
                        activation='swiglu', num_kv_heads=2, tie_embeddings=False),
    'alibi_post_ln_mqa': dict(family='decoder_only', position='alibi', activation='relu',
                              pre_norm=False, num_kv_heads=1, logits_bias=True),
    'sinusoidal_scaled': dict(family='decoder_only', position='sinusoidal', scale_embeddings=True),
    'no_positions': dict(family='decoder_only', position='none', activation='gelu'),
    'bert_style': dict(family='encoder_only', position='learned', activation='gelu',
                       pre_norm=False, embed_norm=True, type_vocab_size=2, norm_eps=1e-12),
    'classify_mean_rope': dict(family='encoder_only', head='classify', pooling='mean',
                               position='rope', num_classes=3),
    'paper_style': dict(family='encoder_decoder', position='sinusoidal', activation='relu',
                        pre_norm=False, scale_embeddings=True, num_decoder_layers=3),
    'enc_dec_pre_ln_untied': dict(family='encoder_decoder', position='learned', num_kv_heads=2,
                                  share_embeddings=False, tie_embeddings=False),
}


@pytest.mark.parametrize('case', sorted(REFERENCE_CASES))
def test_matches_float64_reference(case, rng):
  cfg = make_cfg(**REFERENCE_CASES[case])
  params = perturbed_params(cfg)
  tokens = random_tokens(rng, (2, 7))
  segment_ids = jnp.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 2, 2, 2, 2]])  # padding; packing
  if cfg.family == 'encoder_decoder':
    tgt = random_tokens(rng, (2, 5))
    tgt_segment_ids = jnp.array([[1, 1, 1, 0, 0], [1, 1, 2, 2, 2]])
    ours = run(cfg, params, tokens, segment_ids, tgt, tgt_segment_ids)
    ref = reference.forward(cfg, params, tokens, segment_ids, tgt, tgt_segment_ids)
  else:
    ours = run(cfg, params, tokens, segment_ids)
    ref = reference.forward(cfg, params, tokens, segment_ids)
  assert ours.dtype == jnp.float32
  assert np.abs(ref).max() > 0.1  # the comparison is not between near-zero numbers
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('position', POSITIONS)
def test_decoder_only_is_causal(position, rng):
  cfg = make_cfg(position=position)
  params = perturbed_params(cfg)
  tokens = random_tokens(rng, (2, 10))
  t = 6
  changed = tokens.at[:, t].set((tokens[:, t] + 1) % 32)
  before, after = run(cfg, params, tokens), run(cfg, params, changed)
  np.testing.assert_array_equal(before[:, :t], after[:, :t])
  assert np.abs(before[:, t:] - after[:, t:]).max() > 1e-3  # the change did reach the future


@pytest.mark.parametrize('position', POSITIONS)
def test_encoder_decoder_decoder_is_causal(position, rng):
  cfg = make_cfg('encoder_decoder', position=position)
  params = perturbed_params(cfg)
  src, tgt = random_tokens(rng, (2, 8)), random_tokens(rng, (2, 10))
  t = 4
  changed = tgt.at[:, t].set((tgt[:, t] + 1) % 32)
  before = run(cfg, params, src, tgt_tokens=tgt)
  after = run(cfg, params, src, tgt_tokens=changed)
  np.testing.assert_array_equal(before[:, :t], after[:, :t])
  assert np.abs(before[:, t:] - after[:, t:]).max() > 1e-3


def test_encoder_only_sees_the_future(rng):
  """The contrast to causality: a bidirectional encoder's first output depends on the last token."""
  cfg = make_cfg('encoder_only')
  params = perturbed_params(cfg)
  tokens = random_tokens(rng, (2, 8))
  changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % 32)
  assert np.abs(run(cfg, params, tokens)[:, 0] - run(cfg, params, changed)[:, 0]).max() > 1e-4


@pytest.mark.parametrize('family', ['decoder_only', 'encoder_only', 'encoder_decoder'])
@pytest.mark.parametrize('position', POSITIONS)
def test_padding_changes_no_real_output(family, position, rng):
  cfg = make_cfg(family, position=position)
  params = perturbed_params(cfg)
  n, pad = 6, 4
  tokens = random_tokens(rng, (2, n))
  padded = jnp.concatenate([tokens, random_tokens(rng, (2, pad))], axis=1)  # garbage padding
  segment_ids = jnp.concatenate([jnp.ones((2, n), int), jnp.zeros((2, pad), int)], axis=1)
  if family == 'encoder_decoder':
    tgt = random_tokens(rng, (2, 5))
    tgt_padded = jnp.concatenate([tgt, random_tokens(rng, (2, 3))], axis=1)
    tgt_segment_ids = jnp.concatenate([jnp.ones((2, 5), int), jnp.zeros((2, 3), int)], axis=1)
    plain = run(cfg, params, tokens, tgt_tokens=tgt)
    with_padding = run(cfg, params, padded, segment_ids, tgt_padded, tgt_segment_ids)[:, :5]
  else:
    plain = run(cfg, params, tokens)
    with_padding = run(cfg, params, padded, segment_ids)[:, :n]
  np.testing.assert_allclose(with_padding, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('family', ['decoder_only', 'encoder_only'])
@pytest.mark.parametrize('position', POSITIONS)
def test_packed_documents_do_not_see_each_other(family, position, rng):
  cfg = make_cfg(family, position=position)
  params = perturbed_params(cfg)
  doc_a, doc_b = random_tokens(rng, (1, 5)), random_tokens(rng, (1, 4))
  packed = jnp.concatenate([doc_a, doc_b], axis=1)
  segment_ids = jnp.array([[1] * 5 + [2] * 4])
  out = run(cfg, params, packed, segment_ids)
  np.testing.assert_allclose(out[:, :5], run(cfg, params, doc_a), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[:, 5:], run(cfg, params, doc_b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('pad_id', [-1, 32, 10**6])
def test_padding_ids_outside_the_vocabulary_are_harmless(rng, pad_id):
  cfg = make_cfg(position='learned')
  params = perturbed_params(cfg)
  tokens = random_tokens(rng, (2, 5))
  padded = jnp.concatenate([tokens, jnp.full((2, 3), pad_id)], axis=1)
  segment_ids = jnp.array([[1] * 5 + [0] * 3] * 2)
  out = run(cfg, params, padded, segment_ids)
  assert np.isfinite(out).all()
  np.testing.assert_allclose(out[:, :5], run(cfg, params, tokens), rtol=1e-5, atol=1e-6)


def test_classification_mean_pooling_ignores_padding(rng):
  cfg = make_cfg('encoder_only', head='classify', pooling='mean', num_classes=3)
  params = perturbed_params(cfg)
  tokens = random_tokens(rng, (2, 6))
  padded = jnp.concatenate([tokens, random_tokens(rng, (2, 3))], axis=1)
  segment_ids = jnp.array([[1] * 6 + [0] * 3] * 2)
  logits = run(cfg, params, tokens)
  assert logits.shape == (2, 3)
  np.testing.assert_allclose(run(cfg, params, padded, segment_ids), logits, rtol=1e-5, atol=1e-6)


# --- scan and remat ------------------------------------------------------------------------------


def loss_and_grads(cfg, params, tokens, train=False):
  """A scalar of the logits and its gradients, compiled once (scan compiles anyway)."""
  model = models.build_model(cfg)
  args = (tokens, tokens) if cfg.family == 'encoder_decoder' else (tokens,)

  def f(params):
    logits = model.apply({'params': params}, *args, train=train,
                         rngs={'dropout': jax.random.key(7)})
    return jnp.mean(jnp.sin(3.0 * logits)), logits

  (value, logits), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
  return value, logits, grads


@pytest.mark.parametrize('family', ['decoder_only', 'encoder_only', 'encoder_decoder'])
def test_scan_equals_unrolled(family, rng):
  cfg = make_cfg(family, num_layers=3, position='rope')
  params = perturbed_params(cfg)
  tokens = random_tokens(rng, (2, 6))
  value, logits, grads = loss_and_grads(cfg, params, tokens)
  scanned = make_cfg(family, num_layers=3, position='rope', scan_layers=True)
  s_value, s_logits, s_grads = loss_and_grads(scanned, models.stack_layers(params), tokens)
  np.testing.assert_allclose(s_logits, logits, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(s_value, value, rtol=1e-5, atol=1e-7)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               models.unstack_layers(s_grads), grads)


@pytest.mark.parametrize('family,scan,policy', [
    ('decoder_only', False, 'full'), ('encoder_decoder', False, 'dots_no_batch'),
    ('decoder_only', True, 'dots')])
def test_remat_equals_plain_with_dropout(family, scan, policy, rng):
  """Same outputs and gradients, dropout included (remat replays the same random bits)."""
  base = dict(num_layers=2, dropout=0.2, attention_dropout=0.1, scan_layers=scan)
  cfg = make_cfg(family, **base)
  cfg_remat = make_cfg(family, remat=True, remat_policy=policy, **base)
  params = perturbed_params(cfg)
  params = models.stack_layers(params) if scan else params
  tokens = random_tokens(rng, (2, 6))
  value, logits, grads = loss_and_grads(cfg, params, tokens, train=True)
  r_value, r_logits, r_grads = loss_and_grads(cfg_remat, params, tokens, train=True)
  eval_logits = jax.jit(lambda p: run(cfg, p, tokens, tgt_tokens=tokens))(params)
  assert np.abs(logits - eval_logits).max() > 1e-3  # dropout was active
  np.testing.assert_allclose(r_logits, logits, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(r_value, value, rtol=1e-5, atol=1e-7)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
               r_grads, grads)


def test_remat_policies_order_the_memory_of_the_step():
  """XLA's buffer assignment of a scanned train step's gradient: keeping nothing (full) <
  keeping projection and feed-forward outputs (dots_no_batch) < keeping every matmul output,
  attention scores too (dots) < no remat. (Unrolled stacks on XLA:CPU show no saving: its
  scheduler runs the recomputation early; see experiments/perf/RESULTS.md.)"""
  def temp_bytes(**kw):
    cfg = make_cfg('decoder_only', num_layers=3, d_model=32, num_heads=2, d_ff=64, max_len=32,
                   scan_layers=True, **kw)
    params = models.init_params(cfg, jax.random.key(0))
    tokens = jnp.zeros((2, 32), jnp.int32)
    grad = jax.jit(jax.grad(lambda p: run(cfg, p, tokens).sum()))
    return grad.lower(params).compile().memory_analysis().temp_size_in_bytes
  none = temp_bytes()
  full, no_batch, dots = (temp_bytes(remat=True, remat_policy=p)
                          for p in ('full', 'dots_no_batch', 'dots'))
  assert full < no_batch < dots < none, (full, no_batch, dots, none)


def test_stack_and_unstack_are_inverse():
  cfg = make_cfg('encoder_decoder', num_layers=3, num_decoder_layers=2)
  params = models.init_params(cfg, jax.random.key(0))
  stacked = models.stack_layers(params)
  assert stacked['encoder']['layers']['mlp']['wi']['kernel'].shape == (3, 16, 32)
  assert stacked['decoder']['layers']['mlp']['wi']['kernel'].shape == (2, 16, 32)
  jax.tree.map(np.testing.assert_array_equal, models.unstack_layers(stacked), params)


# --- dtypes, heads, tying, inspection -----------------------------------------------------------


def test_bfloat16_compute_keeps_float32_params_and_logits(rng):
  cfg = make_cfg(position='rope')
  cfg_bf16 = make_cfg(position='rope', dtype='bfloat16')
  params = perturbed_params(cfg)
  bf16_params = models.init_params(cfg_bf16, jax.random.key(0))
  assert {x.dtype for x in jax.tree.leaves(bf16_params)} == {jnp.dtype('float32')}
  tokens = random_tokens(rng, (2, 8))
  logits, logits_bf16 = run(cfg, params, tokens), run(cfg_bf16, params, tokens)
  assert logits_bf16.dtype == jnp.float32
  error = np.abs(logits_bf16 - logits).max() / np.abs(logits).max()
  assert 1e-5 < error < 5e-2  # bfloat16 really was used, and stayed close
  # The output projection accumulates in float32: logits are not bfloat16 values in disguise.
  as_bf16 = np.asarray(logits_bf16.astype(jnp.bfloat16).astype(jnp.float32))
  assert np.mean(as_bf16 != np.asarray(logits_bf16)) > 0.5


def test_weight_tying_and_sharing():
  tied = models.init_params(make_cfg(), jax.random.key(0))
  untied = models.init_params(make_cfg(tie_embeddings=False), jax.random.key(0))
  assert 'lm_head' not in tied
  assert untied['lm_head']['kernel'].shape == (16, 32)
  shared = models.init_params(make_cfg('encoder_decoder'), jax.random.key(0))
  separate = models.init_params(make_cfg('encoder_decoder', share_embeddings=False),
                                jax.random.key(0))
  assert 'embedder' in shared and 'source_embedder' not in shared
  assert {'source_embedder', 'target_embedder'} <= set(separate)


def test_grouped_query_attention_shapes():
  params = models.init_params(make_cfg(num_heads=4, num_kv_heads=2), jax.random.key(0))
  attn = params['decoder']['layers_0']['attention']
  assert attn['query']['kernel'].shape == (16, 4, 4)
  assert attn['key']['kernel'].shape == (16, 2, 4)
  assert attn['value']['kernel'].shape == (16, 2, 4)


def test_attention_weights_can_be_inspected(rng):
  cfg = make_cfg('encoder_decoder', num_decoder_layers=3)
  params = perturbed_params(cfg)
  src, tgt = random_tokens(rng, (2, 7)), random_tokens(rng, (2, 5))
  model = models.build_model(cfg)
  logits, state = model.apply({'params': params}, src, tgt, mutable=['intermediates'])
  np.testing.assert_array_equal(logits, model.apply({'params': params}, src, tgt))
  inter = state['intermediates']
  enc = inter['encoder']['layers_0']['attention']['attention_weights'][0]
  self_w = inter['decoder']['layers_2']['self_attention']['attention_weights'][0]
  cross = inter['decoder']['layers_2']['cross_attention']['attention_weights'][0]
  assert enc.shape == (2, 4, 7, 7) and self_w.shape == (2, 4, 5, 5) and cross.shape == (2, 4, 5, 7)
  for w in (enc, self_w, cross):
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(np.triu(self_w, k=1), 0.0)  # causal: nothing above the diagonal


def test_learned_positions_reject_long_sequences(rng):
  cfg = make_cfg(max_len=8)
  params = models.init_params(cfg, jax.random.key(0))
  with pytest.raises(ValueError, match='max_len=8'):
    run(cfg, params, random_tokens(rng, (1, 9)))


def test_sinusoidal_positions_take_any_length(rng):
  cfg = make_cfg(position='sinusoidal', max_len=8)
  params = models.init_params(cfg, jax.random.key(0))
  assert run(cfg, params, random_tokens(rng, (1, 40))).shape == (1, 40, 32)


def test_grouped_queries_with_a_padding_mask_on_the_source_alone(rng):
  """An encoder-decoder with grouped-query attention called with src_segment_ids only: its
  cross-attention mask is (B, 1, 1, S). It used to fail on the einsum path; it must give what
  the same call with every target token marked real gives."""
  cfg = make_cfg('encoder_decoder', num_kv_heads=2, num_layers=1)
  params = perturbed_params(cfg)
  src, tgt = random_tokens(rng, (2, 6)), random_tokens(rng, (2, 5))
  src_segment_ids = jnp.array([[1] * 6, [1] * 4 + [0] * 2])
  alone = run(cfg, params, src, src_segment_ids, tgt)
  both = run(cfg, params, src, src_segment_ids, tgt, jnp.ones((2, 5), int))
  np.testing.assert_allclose(alone, both, rtol=1e-5, atol=1e-6)
