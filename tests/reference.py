"""An independent float64 NumPy implementation of the three families, for comparison.

It reads the parameter tree (unrolled layout) of our models but computes everything with its own
NumPy code written from the papers' formulas: explicit loops over heads for attention, the
sinusoid formula term by term, RoPE as 2x2 rotations, ALiBi's -m|i-j|. Heads can be gated
(Michel et al. 2019): a head with gate 0 contributes nothing to its layer's output.
"""

import math

import numpy as np


def f64(tree):
  if isinstance(tree, dict):
    return {k: f64(v) for k, v in tree.items()}
  return np.asarray(tree, dtype=np.float64)


def layer_norm(x, scale, bias, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def rms_norm(x, scale, eps):
  return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * scale


_erf = np.vectorize(math.erf)

ACTIVATIONS = {
    'relu': lambda x: np.maximum(x, 0.0),
    'gelu': lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    'gelu_tanh': lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi)
                                                     * (x + 0.044715 * x ** 3))),
    'silu': lambda x: x / (1.0 + np.exp(-x)),
}


def sinusoid(positions, d):
  """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
  pe = np.zeros(positions.shape + (d,))
  for i in range(d // 2):
    angle = positions / 10000.0 ** (2 * i / d)
    pe[..., 2 * i] = np.sin(angle)
    pe[..., 2 * i + 1] = np.cos(angle)
  return pe


def rope(x_BTNH, positions_BT, base=10000.0):
  """Rotate each pair (x[i], x[i + H/2]) by pos * base^(-2i/H)."""
  H = x_BTNH.shape[-1]
  out = x_BTNH.copy()
  for i in range(H // 2):
    theta = positions_BT[:, :, None] * base ** (-2.0 * i / H)
    a, b = x_BTNH[..., i], x_BTNH[..., i + H // 2]
    out[..., i] = a * np.cos(theta) - b * np.sin(theta)
    out[..., i + H // 2] = b * np.cos(theta) + a * np.sin(theta)
  return out


def alibi_slopes(n):
  def geometric(m):
    return [2.0 ** (-8.0 * (i + 1) / m) for i in range(m)]
  if math.log2(n).is_integer():
    return np.array(geometric(n))
  lower = 2 ** math.floor(math.log2(n))
  return np.array(geometric(lower) + geometric(2 * lower)[0::2][:n - lower])


def attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS=None, bias_BNTS=None):
  """Head by head; query head n uses key/value head n // (N / K). Masked rows give zeros."""
  B, T, N, H = q_BTNH.shape
  K = k_BSKH.shape[2]
  out = np.zeros((B, T, N, H))
  weights = np.zeros((B, N, T, k_BSKH.shape[1]))
  for b in range(B):
    for n in range(N):
      kv = n // (N // K)
      logits = q_BTNH[b, :, n] @ k_BSKH[b, :, kv].T / math.sqrt(H)
      if bias_BNTS is not None:
        logits = logits + bias_BNTS[b, n]
      for t in range(T):
        visible = np.ones(logits.shape[1], bool) if mask_BTS is None else mask_BTS[b, t]
        if not visible.any():
          continue
        e = np.exp(logits[t][visible] - logits[t][visible].max())
        weights[b, n, t, visible] = e / e.sum()
      out[b, :, n] = weights[b, n] @ v_BSKH[b, :, kv]
  return out, weights


def norm(cfg, p, x):
  if cfg.norm == 'rmsnorm':
    return rms_norm(x, p['scale'], cfg.norm_eps)
  return layer_norm(x, p['scale'], p['bias'], cfg.norm_eps)


def dense(p, x, equation):
  y = np.einsum(equation, x, p['kernel'])
  return y + p['bias'] if 'bias' in p else y


def mha(cfg, p, x, kv, mask_BTS, positions_BT=None, position='none', gate_N=None):
  """Multi-head attention; gate_N (if given) multiplies each head's output before the out
  projection."""
  q = dense(p['query'], x, 'btd,dnh->btnh')
  k = dense(p['key'], kv, 'bsd,dkh->bskh')
  v = dense(p['value'], kv, 'bsd,dkh->bskh')
  bias = None
  if position == 'rope':
    q, k = rope(q, positions_BT, cfg.rope_base), rope(k, positions_BT, cfg.rope_base)
  elif position == 'alibi':
    distance = np.abs(positions_BT[:, :, None] - positions_BT[:, None, :])
    bias = -alibi_slopes(cfg.num_heads)[None, :, None, None] * distance[:, None]
  out, _ = attention(q, k, v, mask_BTS, bias)
  if gate_N is not None:
    out = out * np.asarray(gate_N, np.float64)[None, None, :, None]
  return dense(p['out'], out, 'btnh,nhd->btd')


def ffn(cfg, p, x):
  h = dense(p['wi'], x, 'btd,df->btf')
  if cfg.activation == 'swiglu':
    h = ACTIVATIONS['silu'](dense(p['wi_gate'], x, 'btd,df->btf')) * h
  else:
    h = ACTIVATIONS[cfg.activation](h)
  return dense(p['wo'], h, 'btf,fd->btd')


def sublayer(cfg, norm_p, f, x):
  return x + f(norm(cfg, norm_p, x)) if cfg.pre_norm else norm(cfg, norm_p, x + f(x))


def positions_of(segment_ids_BT):
  pos = np.zeros(segment_ids_BT.shape)
  for b in range(segment_ids_BT.shape[0]):
    for t in range(1, segment_ids_BT.shape[1]):
      same = segment_ids_BT[b, t] == segment_ids_BT[b, t - 1]
      pos[b, t] = pos[b, t - 1] + 1 if same else 0
  return pos


def segment_mask(q_seg, kv_seg):
  return (q_seg[:, :, None] == kv_seg[:, None, :]) & (q_seg[:, :, None] != 0) & (
      kv_seg[:, None, :] != 0)


def embed(cfg, p, tokens, positions, token_types=None):
  x = p['embedding'][tokens]
  if cfg.scale_embeddings:
    x = x * math.sqrt(cfg.d_model)
  if cfg.position == 'sinusoidal':
    x = x + sinusoid(positions, cfg.d_model)
  elif cfg.position == 'learned':
    x = x + p['positions']['embedding'][positions.astype(int)]
  if cfg.type_vocab_size:
    types = np.zeros_like(tokens) if token_types is None else token_types
    x = x + p['type_embedding'][types]
  if cfg.embed_norm:
    x = norm(cfg, p['norm'], x)
  return x


def stack(cfg, p, x, num_layers, self_mask, positions, encoded=None, cross_mask=None,
          gates=None):
  """`gates`: {attention module name: (layers, heads)} head gates of this stack; None: all 1."""
  gates = gates or {}
  gate = lambda name, i: gates[name][i] if name in gates else None
  for i in range(num_layers):
    lp = p[f'layers_{i}']
    if encoded is None:
      x = sublayer(cfg, lp['attention_norm'],
                   lambda h: mha(cfg, lp['attention'], h, h, self_mask, positions, cfg.position,
                                 gate('attention', i)), x)
    else:
      x = sublayer(cfg, lp['self_attention_norm'],
                   lambda h: mha(cfg, lp['self_attention'], h, h, self_mask, positions,
                                 cfg.position, gate('self_attention', i)), x)
      x = sublayer(cfg, lp['cross_attention_norm'],
                   lambda h: mha(cfg, lp['cross_attention'], h, encoded, cross_mask,
                                 gate_N=gate('cross_attention', i)), x)
    x = sublayer(cfg, lp['mlp_norm'], lambda h: ffn(cfg, lp['mlp'], h), x)
  return norm(cfg, p['final_norm'], x) if cfg.pre_norm else x


def unembed(cfg, p, head, table, x):
  logits = x @ table.T if cfg.tie_embeddings else x @ p[head]['kernel']
  return logits + p[head]['bias'] if 'bias' in p.get(head, {}) else logits


def forward(cfg, params, tokens, segment_ids=None, tgt_tokens=None, tgt_segment_ids=None,
            head_gates=None):
  """Logits of any family in float64 (classify: (B, C); otherwise (B, T, V)). `head_gates`:
  {'stack/module': (layers, heads)}, e.g. {'decoder/attention': gates_LxN}; absent: all 1."""
  p = f64(params)
  head_gates = head_gates or {}
  gates = lambda stack_name: {kind.split('/')[1]: g for kind, g in head_gates.items()
                              if kind.split('/')[0] == stack_name}
  tokens = np.asarray(tokens)
  seg = np.ones(tokens.shape, int) if segment_ids is None else np.asarray(segment_ids)
  positions = positions_of(seg)
  causal = np.tril(np.ones((tokens.shape[1], tokens.shape[1]), bool))[None]
  if cfg.family == 'decoder_only':
    x = embed(cfg, p['embedder'], tokens, positions)
    x = stack(cfg, p['decoder'], x, cfg.num_layers, segment_mask(seg, seg) & causal, positions,
              gates=gates('decoder'))
    return unembed(cfg, p, 'lm_head', p['embedder']['embedding'], x)
  if cfg.family == 'encoder_only':
    x = embed(cfg, p['embedder'], tokens, positions)
    x = stack(cfg, p['encoder'], x, cfg.num_layers, segment_mask(seg, seg), positions,
              gates=gates('encoder'))
    if cfg.head == 'mlm':
      act = ACTIVATIONS['gelu' if cfg.activation == 'swiglu' else cfg.activation]
      h = norm(cfg, p['mlm_norm'], act(dense(p['mlm_dense'], x, 'btd,de->bte')))
      return unembed(cfg, p, 'lm_head', p['embedder']['embedding'], h)
    if cfg.pooling == 'first':
      pooled = x[:, 0]
    else:
      real = (seg != 0)[..., None]
      pooled = (x * real).sum(1) / real.sum(1)
    pooled = np.tanh(dense(p['pooler'], pooled, 'bd,de->be'))
    return dense(p['classifier'], pooled, 'bd,dc->bc')
  # encoder_decoder
  tgt = np.asarray(tgt_tokens)
  tseg = np.ones(tgt.shape, int) if tgt_segment_ids is None else np.asarray(tgt_segment_ids)
  src_embedder = p['embedder'] if cfg.share_embeddings else p['source_embedder']
  tgt_embedder = p['embedder'] if cfg.share_embeddings else p['target_embedder']
  encoded = stack(cfg, p['encoder'], embed(cfg, src_embedder, tokens, positions),
                  cfg.num_layers, segment_mask(seg, seg), positions, gates=gates('encoder'))
  tpos = positions_of(tseg)
  tcausal = np.tril(np.ones((tgt.shape[1], tgt.shape[1]), bool))[None]
  y = stack(cfg, p['decoder'], embed(cfg, tgt_embedder, tgt, tpos), cfg.num_decoder_layers,
            segment_mask(tseg, tseg) & tcausal, tpos, encoded, segment_mask(tseg, seg),
            gates=gates('decoder'))
  return unembed(cfg, p, 'lm_head', tgt_embedder['embedding'], y)
