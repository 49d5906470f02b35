"""Building blocks: feed-forward, norms, residual sublayers, and the two blocks every stack is
made of: `SelfAttentionBlock` (BERT's encoder, GPT's decoder with causal=True, the translation
encoder) and `CrossAttentionBlock` (the translation decoder, which also attends to the encoder).

A sublayer f is wrapped as in the original paper (post-LN: norm(x + dropout(f(x)))) or as in
GPT-2 and most later models (pre-LN: x + dropout(f(norm(x)))); `ModelConfig.pre_norm` picks.

With `parametrization='mup'` the hidden matrices (attention q/k/v/out, feed-forward wi/wo)
start smaller by 1/sqrt(m) and attention logits are divided by the head size instead of its
square root (Yang et al. 2022, Table 3); at m = d_model / mup_base_d_model = 1 both are SP's.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer.config import ModelConfig
from transformer.model.attention import MultiHeadAttention
from transformer.model.dropout import Dropout

ACTIVATIONS = {
    'relu': jax.nn.relu,
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),  # exact, with erf (BERT)
    'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),  # tanh approximation (GPT-2)
    'silu': jax.nn.silu,  # x sigmoid(x), ungated (Marian's 'swish')
    'swiglu': jax.nn.silu,  # the gate of SwiGLU (Shazeer 2020)
}


def dtypes(cfg: ModelConfig) -> dict:
  """Compute and parameter dtypes of a config, as module keyword arguments."""
  return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


def out_init_std(cfg: ModelConfig, num_layers: int) -> float:
  """Residual-branch output projections start smaller by 1/sqrt(2L), as in GPT-2."""
  return cfg.init_std / math.sqrt(2 * num_layers)


def hidden_init_std(cfg: ModelConfig, std: float) -> float:
  """muP: a hidden matrix (fan-in grows with width) starts at std / sqrt(m), variance ~ 1/fan_in.
  SP: std."""
  if cfg.parametrization == 'mup':
    return std / math.sqrt(cfg.width_mult)
  return std


def attention_logit_scale(cfg: ModelConfig) -> float | None:
  """What multiplies Q K^T. SP: None (1 / sqrt(H)). muP: 1 / H, times sqrt(H0) so that m = 1
  is SP exactly: scale = H^-1/2 * sqrt(H0 / H) = sqrt(H0) / H, with H = d_model / num_heads and
  H0 = mup_base_d_model / num_heads, the head size of the base model (same number of heads)."""
  if cfg.parametrization != 'mup':
    return None
  H, H0 = cfg.head_dim, cfg.mup_base_d_model / cfg.num_heads
  return H ** -0.5 * math.sqrt(H0 / H)


def make_norm(cfg: ModelConfig, name: str) -> nn.Module:
  """LayerNorm (scale and bias) or RMSNorm (scale); statistics in float32."""
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ('embed',))
  if cfg.norm == 'rmsnorm':
    return nn.RMSNorm(epsilon=cfg.norm_eps, **dtypes(cfg),
                      scale_init=scale_init, name=name)
  return nn.LayerNorm(epsilon=cfg.norm_eps, **dtypes(cfg),
                      scale_init=scale_init,
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
                      name=name)


class FeedForward(nn.Module):
  """Position-wise feed-forward: wo(act(wi x)), or wo(silu(wi_gate x) * wi x) for SwiGLU."""

  d_ff: int
  activation: str = 'relu'
  use_bias: bool = True
  init_std: float = 0.02
  out_init_std: float = 0.02
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _dense(self, name, x, features, axes, std):
    return nn.Dense(
        features, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(std), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
        name=name)(x)

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    D = x_BxTxD.shape[-1]
    h_BxTxF = self._dense('wi', x_BxTxD, self.d_ff, ('embed', 'mlp'), self.init_std)
    if self.activation == 'swiglu':
      gate_BxTxF = self._dense('wi_gate', x_BxTxD, self.d_ff, ('embed', 'mlp'), self.init_std)
      h_BxTxF = ACTIVATIONS['swiglu'](gate_BxTxF) * h_BxTxF
    else:
      h_BxTxF = ACTIVATIONS[self.activation](h_BxTxF)
    h_BxTxF = nn.with_logical_constraint(h_BxTxF, ('batch', 'length', 'mlp'))
    return self._dense('wo', h_BxTxF, D, ('mlp', 'embed'), self.out_init_std)


def attention(cfg: ModelConfig, num_layers: int, name: str, position: str) -> MultiHeadAttention:
  return MultiHeadAttention(
      num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
      position=position, rope_base=cfg.rope_base, use_bias=cfg.use_bias, qkv_bias=cfg.qkv_bias,
      dropout_rate=cfg.attention_dropout, impl=cfg.attention_impl,
      init_std=hidden_init_std(cfg, cfg.init_std),
      out_init_std=hidden_init_std(cfg, out_init_std(cfg, num_layers)),
      logit_scale=attention_logit_scale(cfg), **dtypes(cfg),
      name=name)


def feed_forward(cfg: ModelConfig, num_layers: int) -> FeedForward:
  return FeedForward(
      d_ff=cfg.d_ff, activation=cfg.activation, use_bias=cfg.use_bias,
      init_std=hidden_init_std(cfg, cfg.init_std),
      out_init_std=hidden_init_std(cfg, out_init_std(cfg, num_layers)), **dtypes(cfg),
      name='mlp')


def residual(cfg: ModelConfig, norm: nn.Module, f, x_BxTxD: jax.Array,
             deterministic: bool) -> jax.Array:
  """Pre-LN: x + dropout(f(norm(x))).  Post-LN: norm(x + dropout(f(x)))."""
  drop = Dropout(cfg.dropout, deterministic=deterministic)
  if cfg.pre_norm:
    x_BxTxD = x_BxTxD + drop(f(norm(x_BxTxD)))
  else:
    x_BxTxD = norm(x_BxTxD + drop(f(x_BxTxD)))
  return nn.with_logical_constraint(x_BxTxD, ('batch', 'length', 'embed'))


class SelfAttentionBlock(nn.Module):
  """Self-attention then feed-forward: an encoder block, or with causal=True the GPT
  (decoder-only) block."""

  cfg: ModelConfig
  num_layers: int  # depth of the stack, for the residual init scale
  causal: bool = False
  use_cache: bool = False  # self-attention with a KV cache (decoding)

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, mask: jax.Array | None, positions_BxT: jax.Array,
               deterministic: bool) -> jax.Array:
    cfg = self.cfg
    attn = attention(cfg, self.num_layers, 'attention', cfg.position)
    x_BxTxD = residual(
        cfg, make_norm(cfg, 'attention_norm'),
        lambda h: attn(h, mask=mask, is_causal=self.causal, q_positions_BxT=positions_BxT,
                       deterministic=deterministic, use_cache=self.use_cache),
        x_BxTxD, deterministic)
    return residual(cfg, make_norm(cfg, 'mlp_norm'), feed_forward(cfg, self.num_layers),
                    x_BxTxD, deterministic)


class CrossAttentionBlock(nn.Module):
  """The encoder-decoder's decoder block: masked self-attention, then cross-attention to the
  encoder output, then feed-forward."""

  cfg: ModelConfig
  num_layers: int
  use_cache: bool = False  # self-attention with a KV cache (decoding)

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, self_mask: jax.Array | None, positions_BxT: jax.Array,
               encoded_BxSxD: jax.Array, cross_mask: jax.Array | None,
               deterministic: bool) -> jax.Array:
    cfg = self.cfg
    self_attn = attention(cfg, self.num_layers, 'self_attention', cfg.position)
    cross_attn = attention(cfg, self.num_layers, 'cross_attention', 'none')
    x_BxTxD = residual(
        cfg, make_norm(cfg, 'self_attention_norm'),
        lambda h: self_attn(h, mask=self_mask, is_causal=True, q_positions_BxT=positions_BxT,
                            deterministic=deterministic, use_cache=self.use_cache),
        x_BxTxD, deterministic)
    x_BxTxD = residual(
        cfg, make_norm(cfg, 'cross_attention_norm'),
        lambda h: cross_attn(h, encoded_BxSxD, mask=cross_mask, deterministic=deterministic),
        x_BxTxD, deterministic)
    return residual(cfg, make_norm(cfg, 'mlp_norm'), feed_forward(cfg, self.num_layers),
                    x_BxTxD, deterministic)
