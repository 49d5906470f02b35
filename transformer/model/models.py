"""The three Transformer families, built from one validated, frozen `ModelConfig`.

  EncoderOnly     BERT-like: bidirectional encoder with a masked-LM or a classification head.
  DecoderOnly     GPT-like: causal decoder, next-token logits.
  EncoderDecoder  the translation Transformer (Vaswani et al. 2017).

Inputs are integer tokens (B, T). `segment_ids` (B, T) mark padding (0) and packed documents
(1, 2, ...): attention never crosses segments and never sees padding; ids outside the
vocabulary (e.g. a padding id of -1) are clipped, never NaN. `positions` (B, T) default to the
index within each segment. Logits are computed in float32 whatever the compute dtype.
Pass `train=True` for dropout (then an rng named 'dropout' is needed).

muP (`parametrization='mup'`, Yang et al. 2022): output logits (LM and classifier) are
multiplied by 1/m, m = d_model / mup_base_d_model; embeddings keep their init (a scaled
embedding uses the base width's sqrt(d)); the hidden matrices' rules live in layers.py.
"""

import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer.config import ModelConfig
from transformer.model import attention, layers, positional
from transformer.model.dropout import Dropout

# What a rematerialised block keeps from its forward pass (model.remat_policy); the rest is
# recomputed in the backward pass. 'dots_no_batch' keeps the matmuls with weights (projections,
# feed-forward) but not the batched attention scores, whose memory grows with T x S.
REMAT_POLICIES = {
    'full': None,  # nothing but the block's inputs
    'dots': jax.checkpoint_policies.dots_saveable,
    'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def default_positions(tokens_BxT: jax.Array, segment_ids_BxT: jax.Array | None) -> jax.Array:
  if segment_ids_BxT is not None:
    return positional.positions_from_segments(segment_ids_BxT)
  return jnp.broadcast_to(jnp.arange(tokens_BxT.shape[-1]), tokens_BxT.shape)


def attention_mask(q_segment_ids_BxT: jax.Array | None,
                   kv_segment_ids_BxS: jax.Array | None) -> jax.Array | None:
  """(B, 1, T, S) from segment ids (either may be None: then all its tokens are real)."""
  if q_segment_ids_BxT is None and kv_segment_ids_BxS is None:
    return None
  if q_segment_ids_BxT is None:
    return (kv_segment_ids_BxS != 0)[:, None, None, :]
  if kv_segment_ids_BxS is None:
    return (q_segment_ids_BxT != 0)[:, None, :, None]
  return attention.segment_mask(q_segment_ids_BxT, kv_segment_ids_BxS)


def embedding_scale_width(cfg: ModelConfig) -> int:
  """The d of scaled embeddings (x * sqrt(d), table std d^-1/2): d_model, or under muP the
  base width, so that embeddings and their updates do not grow with width."""
  return cfg.mup_base_d_model if cfg.parametrization == 'mup' else cfg.d_model


def readout(cfg: ModelConfig, x: jax.Array) -> jax.Array:
  """muP's output multiplier 1/m, on an output layer's logits before the bias (or on its input:
  the same); SP: x unchanged."""
  if cfg.parametrization == 'mup':
    return x / cfg.width_mult
  return x


class Embedder(nn.Module):
  """Token (+ token-type) embeddings with sinusoidal or learned positions; the tied output."""

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    # With scaled embeddings (the paper's x * sqrt(d)), start at std d^-1/2 so inputs are O(1).
    std = embedding_scale_width(cfg) ** -0.5 if cfg.scale_embeddings else cfg.init_std
    self.embedding = self.param(
        'embedding', nn.with_logical_partitioning(nn.initializers.normal(std), ('vocab', 'embed')),
        (cfg.vocab_size, cfg.d_model), jnp.dtype(cfg.param_dtype))
    if cfg.type_vocab_size:
      self.type_embedding = self.param(
          'type_embedding',
          nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ('types', 'embed')),
          (cfg.type_vocab_size, cfg.d_model), jnp.dtype(cfg.param_dtype))
    if cfg.position == 'learned':
      self.positions = positional.LearnedPositions(
          cfg.max_len, cfg.d_model, cfg.init_std, jnp.dtype(cfg.param_dtype))
    if cfg.embed_norm:
      self.norm = layers.make_norm(cfg, 'norm')
    self.dropout = Dropout(cfg.dropout)

  def encode(self, tokens_BxT: jax.Array, positions_BxT: jax.Array,
             token_types_BxT: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    cfg = self.cfg
    # FSDP: gather the table's width before the lookup (a lookup into an embed-sharded table
    # makes XLA replicate its output); its rows stay split over the tensor axis.
    table = nn.with_logical_constraint(self.embedding, ('vocab', None))
    x_BxTxD = jnp.take(table, tokens_BxT, axis=0, mode='clip')
    if cfg.scale_embeddings:
      x_BxTxD = x_BxTxD * math.sqrt(embedding_scale_width(cfg))
    if cfg.position == 'sinusoidal':
      x_BxTxD = x_BxTxD + positional.sinusoidal(positions_BxT, cfg.d_model,
                                                   layout=cfg.sinusoidal_layout)
    elif cfg.position == 'learned':
      x_BxTxD = x_BxTxD + self.positions(positions_BxT)
    if cfg.type_vocab_size:
      if token_types_BxT is None:
        token_types_BxT = jnp.zeros_like(tokens_BxT)
      types = nn.with_logical_constraint(self.type_embedding, (None, None))
      x_BxTxD = x_BxTxD + jnp.take(types, token_types_BxT, axis=0, mode='clip')
    if cfg.embed_norm:
      x_BxTxD = self.norm(x_BxTxD)
    x_BxTxD = self.dropout(x_BxTxD, deterministic=deterministic).astype(cfg.dtype)
    return nn.with_logical_constraint(x_BxTxD, ('batch', 'length', 'embed'))


class Unembed(nn.Module):
  """Output logits: x E^T with the (tied) embedding table E, or a separate projection."""

  cfg: ModelConfig
  use_bias: bool

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, tied_table_VxD: jax.Array | None) -> jax.Array:
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    if tied_table_VxD is None:
      kernel_DxV = self.param(
          'kernel',
          nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), ('embed', 'vocab')),
          (cfg.d_model, cfg.vocab_size), jnp.dtype(cfg.param_dtype))
      logits_BxTxV = jnp.einsum('BTD,DV->BTV', x_BxTxD.astype(dtype), kernel_DxV.astype(dtype),
                                preferred_element_type=jnp.float32)
    else:
      logits_BxTxV = jnp.einsum('BTD,VD->BTV', x_BxTxD.astype(dtype), tied_table_VxD.astype(dtype),
                                preferred_element_type=jnp.float32)
    # muP: the readout is divided by m. An untied kernel keeps its init_std (no zero init):
    # then m = 1 is SP exactly, and its share of the initial logits still shrinks as m^-1/2.
    logits_BxTxV = readout(cfg, logits_BxTxV)
    if self.use_bias:
      bias_V = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)),
                          (cfg.vocab_size,), jnp.dtype(cfg.param_dtype))
      logits_BxTxV = logits_BxTxV + bias_V.astype(jnp.float32)
    logits_BxTxV = nn.with_logical_constraint(logits_BxTxV, ('batch', 'length', 'vocab'))
    return logits_BxTxV.astype(jnp.float32)


class Stack(nn.Module):
  """`num_layers` blocks, unrolled or under `nn.scan`, optionally rematerialised.

  Call as stack(x, *block_args, deterministic): every block gets the same block_args.
  Pre-LN stacks end with a final norm. Scanned parameters (and KV caches) carry a leading
  'layers' axis.
  """

  cfg: ModelConfig
  num_layers: int
  cross_attention: bool = False  # CrossAttentionBlocks (the translation decoder), else
  #   SelfAttentionBlocks
  causal: bool = False  # SelfAttentionBlocks with causal self-attention (the GPT stack)

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, *block_args, use_cache: bool = False) -> jax.Array:
    cfg = self.cfg
    if self.cross_attention:
      block_cls, kwargs = layers.CrossAttentionBlock, {'use_cache': use_cache}
    else:
      block_cls, kwargs = layers.SelfAttentionBlock, {'causal': self.causal,
                                                      'use_cache': use_cache}
    if cfg.remat:  # `deterministic`, the last argument, is static (self is 0, x is 1)
      block_cls = nn.remat(block_cls, prevent_cse=not cfg.scan_layers,
                           policy=REMAT_POLICIES[cfg.remat_policy],
                           static_argnums=(1 + len(block_args),))
    if cfg.scan_layers:
      def body(block, carry, *args):
        return block(carry, *args), None
      scanned = nn.scan(body, variable_axes={'params': 0, 'intermediates': 0, 'cache': 0},
                        split_rngs={'params': True, 'dropout': True},
                        in_axes=(nn.broadcast,) * len(block_args), length=self.num_layers,
                        metadata_params={nn.PARTITION_NAME: 'layers'})
      x_BxTxD, _ = scanned(block_cls(cfg, self.num_layers, **kwargs, name='layers'),
                           x_BxTxD, *block_args)
    else:
      for i in range(self.num_layers):
        x_BxTxD = block_cls(cfg, self.num_layers, **kwargs, name=f'layers_{i}')(
            x_BxTxD, *block_args)
    if cfg.pre_norm:
      x_BxTxD = layers.make_norm(cfg, 'final_norm')(x_BxTxD)
    return x_BxTxD


class DecoderOnly(nn.Module):
  """GPT-like causal language model: tokens (B, T) -> next-token logits (B, T, V)."""

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.embedder = Embedder(cfg)
    self.decoder = Stack(cfg, cfg.num_layers, causal=True)
    self.lm_head = Unembed(cfg, use_bias=cfg.logits_bias)

  def __call__(self, tokens_BxT: jax.Array, *, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None, train: bool = False,
               use_cache: bool = False) -> jax.Array:
    """With `use_cache` (decoding; the 'cache' collection mutable) the tokens continue those
    already cached: pass their `positions`, which do not restart at 0."""
    if positions is None:
      positions = default_positions(tokens_BxT, segment_ids)
    x_BxTxD = self.embedder.encode(tokens_BxT, positions, deterministic=not train)
    mask = attention_mask(segment_ids, segment_ids)
    x_BxTxD = self.decoder(x_BxTxD, mask, positions, not train, use_cache=use_cache)
    tied = self.embedder.embedding if self.cfg.tie_embeddings else None
    return self.lm_head(x_BxTxD, tied)


class EncoderOnly(nn.Module):
  """BERT-like encoder: masked-LM logits (B, T, V), or class logits (B, C) with head='classify'."""

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.embedder = Embedder(cfg)
    self.encoder = Stack(cfg, cfg.num_layers)
    dense = lambda features, axes, name, std: nn.Dense(
        features, use_bias=cfg.use_bias, **layers.dtypes(cfg), name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(std), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))
    hidden_std = layers.hidden_init_std(cfg, cfg.init_std)  # D x D: a hidden matrix under muP
    if cfg.head == 'mlm':  # BERT's head: dense, activation, norm, then the tied output + bias
      self.mlm_dense = dense(cfg.d_model, ('embed', 'hidden'), 'mlm_dense', hidden_std)
      self.mlm_norm = layers.make_norm(cfg, 'mlm_norm')
      self.lm_head = Unembed(cfg, use_bias=True)
    else:  # BERT's pooler (dense + tanh), dropout, then the classifier (a readout under muP)
      self.pooler = dense(cfg.d_model, ('embed', 'hidden'), 'pooler', hidden_std)
      self.classifier = dense(cfg.num_classes, ('hidden', 'classes'), 'classifier',
                              cfg.init_std)
      self.dropout = Dropout(cfg.dropout)

  def encode(self, tokens_BxT: jax.Array, *, segment_ids: jax.Array | None = None,
             positions: jax.Array | None = None, token_types: jax.Array | None = None,
             train: bool = False) -> jax.Array:
    """Hidden states (B, T, D) of the last layer."""
    if positions is None:
      positions = default_positions(tokens_BxT, segment_ids)
    x_BxTxD = self.embedder.encode(tokens_BxT, positions, token_types, deterministic=not train)
    return self.encoder(x_BxTxD, attention_mask(segment_ids, segment_ids), positions, not train)

  def __call__(self, tokens_BxT: jax.Array, *, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None, token_types: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    cfg = self.cfg
    x_BxTxD = self.encode(tokens_BxT, segment_ids=segment_ids, positions=positions,
                          token_types=token_types, train=train)
    if cfg.head == 'mlm':
      activation = layers.ACTIVATIONS['gelu' if cfg.activation == 'swiglu' else cfg.activation]
      h_BxTxD = self.mlm_norm(activation(self.mlm_dense(x_BxTxD)))
      tied = self.embedder.embedding if cfg.tie_embeddings else None
      return self.lm_head(h_BxTxD, tied)
    if cfg.pooling == 'first':
      pooled_BxD = x_BxTxD[:, 0]
    else:
      real_BxTx1 = (jnp.ones(tokens_BxT.shape, bool) if segment_ids is None
                    else segment_ids != 0)[..., None].astype(x_BxTxD.dtype)
      pooled_BxD = (x_BxTxD * real_BxTx1).sum(1) / jnp.maximum(real_BxTx1.sum(1), 1)
    pooled_BxD = jnp.tanh(self.pooler(pooled_BxD))
    pooled_BxD = self.dropout(pooled_BxD, deterministic=not train)
    return self.classifier(readout(cfg, pooled_BxD)).astype(jnp.float32)


class EncoderDecoder(nn.Module):
  """The translation Transformer: source (B, S) and shifted target (B, T) -> logits (B, T, V)."""

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    if cfg.share_embeddings:  # one table (and position table) for source and target
      self.embedder = Embedder(cfg)
    else:
      self.source_embedder = Embedder(cfg)
      self.target_embedder = Embedder(cfg)
    self.encoder = Stack(cfg, cfg.num_layers)
    self.decoder = Stack(cfg, cfg.num_decoder_layers, cross_attention=True)
    self.lm_head = Unembed(cfg, use_bias=cfg.logits_bias)

  def _embedders(self):
    if self.cfg.share_embeddings:
      return self.embedder, self.embedder
    return self.source_embedder, self.target_embedder

  def encode(self, src_tokens_BxS: jax.Array, *, src_segment_ids: jax.Array | None = None,
             src_positions: jax.Array | None = None, train: bool = False) -> jax.Array:
    """Encoder output (B, S, D)."""
    if src_positions is None:
      src_positions = default_positions(src_tokens_BxS, src_segment_ids)
    x_BxSxD = self._embedders()[0].encode(src_tokens_BxS, src_positions, deterministic=not train)
    mask = attention_mask(src_segment_ids, src_segment_ids)
    return self.encoder(x_BxSxD, mask, src_positions, not train)

  def decode(self, encoded_BxSxD: jax.Array, tgt_tokens_BxT: jax.Array, *,
             src_segment_ids: jax.Array | None = None, tgt_segment_ids: jax.Array | None = None,
             tgt_positions: jax.Array | None = None, train: bool = False,
             use_cache: bool = False) -> jax.Array:
    """Logits (B, T, V) of the next target token, attending to the encoder output. With
    `use_cache` the target tokens continue those already cached (pass `tgt_positions`)."""
    if tgt_positions is None:
      tgt_positions = default_positions(tgt_tokens_BxT, tgt_segment_ids)
    target_embedder = self._embedders()[1]
    y_BxTxD = target_embedder.encode(tgt_tokens_BxT, tgt_positions, deterministic=not train)
    self_mask = attention_mask(tgt_segment_ids, tgt_segment_ids)
    cross_mask = attention_mask(tgt_segment_ids, src_segment_ids)
    y_BxTxD = self.decoder(y_BxTxD, self_mask, tgt_positions, encoded_BxSxD, cross_mask,
                           not train, use_cache=use_cache)
    tied = target_embedder.embedding if self.cfg.tie_embeddings else None
    return self.lm_head(y_BxTxD, tied)

  def __call__(self, src_tokens_BxS: jax.Array, tgt_tokens_BxT: jax.Array, *,
               src_segment_ids: jax.Array | None = None,
               tgt_segment_ids: jax.Array | None = None,
               src_positions: jax.Array | None = None, tgt_positions: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    encoded_BxSxD = self.encode(src_tokens_BxS, src_segment_ids=src_segment_ids,
                                src_positions=src_positions, train=train)
    return self.decode(encoded_BxSxD, tgt_tokens_BxT, src_segment_ids=src_segment_ids,
                       tgt_segment_ids=tgt_segment_ids, tgt_positions=tgt_positions, train=train)


FAMILY_MODULES = {
    'encoder_only': EncoderOnly,
    'decoder_only': DecoderOnly,
    'encoder_decoder': EncoderDecoder,
}


def build_model(cfg: ModelConfig) -> nn.Module:
  return FAMILY_MODULES[cfg.family](cfg)


def example_inputs(cfg: ModelConfig, batch_size: int = 1, seq_len: int = 8) -> tuple[tuple, dict]:
  """(args, kwargs) of zeros with which `model.init` builds every parameter."""
  tokens_BxT = jnp.zeros((batch_size, seq_len), jnp.int32)
  if cfg.family == 'encoder_decoder':
    return (tokens_BxT, tokens_BxT), {}
  return (tokens_BxT,), {}


def init_variables(cfg: ModelConfig, rng: jax.Array, seq_len: int = 8) -> dict:
  """Variables with logical-axis metadata (`nn.LogicallyPartitioned` boxes)."""
  args, kwargs = example_inputs(cfg, 1, min(seq_len, cfg.max_len))
  return build_model(cfg).init({'params': rng}, *args, **kwargs)


def init_params(cfg: ModelConfig, rng: jax.Array) -> dict:
  """Plain parameter arrays."""
  return nn.unbox(init_variables(cfg, rng)['params'])


def abstract_variables(cfg: ModelConfig) -> dict:
  """Shapes, dtypes and logical axes of every variable; nothing is allocated."""
  return jax.eval_shape(lambda rng: init_variables(cfg, rng), jax.random.key(0))


# --- parameter trees ------------------------------------------------------------------------------
# A parameter's path ('decoder/layers_0/mlp/wi/kernel') is a public contract: checkpoints and
# converted runs are read by it (tests/test_param_paths.py pins every path).


def path_name(path) -> str:
  """'decoder/layers_0/mlp/wi/kernel' for a jax tree path."""
  return '/'.join(str(getattr(k, 'key', k)) for k in path)


def flat_params(tree: Any, is_leaf=None) -> dict[str, Any]:
  """{path name: leaf} of a parameter tree, in tree order."""
  return {path_name(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]}


def first_mismatch(want: Any, have: Any, dtypes: bool = False) -> tuple[str, str, str] | None:
  """The first parameter of `want` that `have` lacks or holds with another shape (or, with
  `dtypes`, dtype), as (name, what `have` holds or 'absent', what `want` holds); None when
  every one matches. Leaves are arrays or jax.ShapeDtypeStructs."""
  describe = lambda x: str(tuple(x.shape)) + (f' {x.dtype}' if dtypes else '')
  have_flat = flat_params(have)
  for name, leaf in flat_params(want).items():
    if name not in have_flat:
      return name, 'absent', describe(leaf)
    if describe(have_flat[name]) != describe(leaf):
      return name, describe(have_flat[name]), describe(leaf)
  return None


def in_layout(cfg: ModelConfig, params: Any) -> Any:
  """Parameters in `cfg`'s layer layout (scanned or unrolled), whichever layout they are in."""
  return stack_layers(params) if cfg.scan_layers else unstack_layers(params)


_LAYER = re.compile(r'^layers_(\d+)$')


def stack_layers(params: dict) -> dict:
  """Unrolled layout (layers_0, layers_1, ...) -> scanned layout ('layers', leading axis)."""
  if not isinstance(params, dict):
    return params
  indexed = sorted((int(m.group(1)), k) for k in params if (m := _LAYER.match(k)))
  out = {k: stack_layers(v) for k, v in params.items() if not _LAYER.match(k)}
  if indexed:
    out['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[k] for _, k in indexed])
  return out


def unstack_layers(params: dict) -> dict:
  """Scanned layout -> unrolled layout; the inverse of `stack_layers`."""
  if not isinstance(params, dict):
    return params
  out = {k: unstack_layers(v) for k, v in params.items() if k != 'layers'}
  if 'layers' in params:
    length = jax.tree.leaves(params['layers'])[0].shape[0]
    for i in range(length):
      out[f'layers_{i}'] = jax.tree.map(lambda x: x[i], params['layers'])
  return out
