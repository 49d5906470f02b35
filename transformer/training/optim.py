"""Optimizers and learning-rate schedules from the `opt` config section, all optax.

Schedules (step counts optimizer updates; every schedule starts at 0 and ramps linearly to
`opt.lr` over `opt.warmup_steps`):
  constant  lr after warmup
  cosine    cosine decay from lr to lr * opt.final_lr_ratio at train.num_steps
  linear    linear decay from lr to lr * opt.final_lr_ratio at train.num_steps
  rsqrt     the paper's schedule (Vaswani et al. 2017, eq. 3): lr * min(s / w, sqrt(w / s)),
            peaking at lr when s = w; with lr = (d_model * w)^-1/2 it is exactly
            d_model^-1/2 * min(s^-1/2, s * w^-3/2)

muP (`model.parametrization='mup'`, AdamW only): the hidden matrices' Adam updates are scaled
by 1/m, m = d_model / mup_base_d_model (Yang et al. 2022, Table 3); every other parameter
(embeddings, biases, norms, the output layer) keeps the learning rate. As in the mup package's
MuAdamW, the decoupled weight decay is not scaled: a hidden weight still shrinks by lr * wd per
step (its decay coefficient is wd * m relative to its learning rate lr / m). The schedule, and
the logged learning rate, are the base rate. Clipping stays global, before the rule.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from transformer.config import ModelConfig, OptConfig
from transformer.model import models


def make_schedule(opt: OptConfig, num_steps: int) -> optax.Schedule:
  lr, warmup = opt.lr, opt.warmup_steps
  if opt.schedule == 'rsqrt':
    def rsqrt(step):
      s = jnp.maximum(step, 1).astype(jnp.float32)
      return lr * jnp.minimum(s / warmup, jnp.sqrt(warmup / s))
    return rsqrt
  end = lr * opt.final_lr_ratio
  decay_steps = max(num_steps - warmup, 1)
  if opt.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=opt.final_lr_ratio)
  elif opt.schedule == 'linear':
    decay = optax.linear_schedule(lr, end, decay_steps)
  else:
    decay = optax.constant_schedule(lr)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def decay_mask(params: Any) -> Any:
  """True for the weights that get weight decay: matrices of projections, not norms, biases
  or embedding tables (whose names say so)."""
  def decays(path, leaf):
    names = models.path_name(path).split('/')
    exempt = ('norm' in n or n == 'bias' or 'embedding' in n or n == 'scale' for n in names)
    return leaf.ndim > 1 and not any(exempt)
  return jax.tree_util.tree_map_with_path(decays, params)


def hidden_mask(cfg: ModelConfig) -> Any:
  """True for muP's hidden matrices: parameters with two dimensions that grow with width (the
  mup package's "matrix-like"), found as it finds them, by comparing the parameter shapes at
  d_model and at 2 * d_model (d_ff along). Embedding tables, the output layer, biases and norm
  scales grow in one dimension at most."""
  wider = dataclasses.replace(cfg, d_model=2 * cfg.d_model, d_ff=2 * cfg.d_ff)
  narrow, wide = (jax.eval_shape(functools.partial(models.init_params, c), jax.random.key(0))
                  for c in (cfg, wider))
  return jax.tree.map(lambda a, b: sum(i != j for i, j in zip(a.shape, b.shape)) == 2,
                      narrow, wide)


def mup_adamw(opt: OptConfig, schedule: optax.Schedule, mask: Any,
              cfg: ModelConfig) -> optax.GradientTransformation:
  """optax.adamw with the hidden matrices' updates scaled by 1/m before the weight decay."""
  return optax.chain(
      optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps),
      optax.masked(optax.scale(1 / cfg.width_mult), hidden_mask(cfg)),
      optax.add_decayed_weights(opt.weight_decay, mask),
      optax.scale_by_learning_rate(schedule))


def make_optimizer(opt: OptConfig, num_steps: int, cfg: ModelConfig | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(optimizer, schedule): clipping, then the update rule with its schedule. `cfg`, the model
  config, is needed for muP (None: standard parametrization; `Experiment` has checked that muP
  comes with AdamW)."""
  schedule = make_schedule(opt, num_steps)
  mask = None if opt.decay_all_params else decay_mask
  if cfg is not None and cfg.parametrization == 'mup':
    rule = mup_adamw(opt, schedule, mask, cfg)
  elif opt.name == 'adamw':
    rule = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                       weight_decay=opt.weight_decay, mask=mask)
  elif opt.name == 'adafactor':
    rule = optax.adafactor(schedule, weight_decay_rate=opt.weight_decay or None,
                           weight_decay_mask=mask)
  else:
    rule = optax.sgd(schedule, momentum=opt.momentum or None)
    if opt.weight_decay:
      rule = optax.chain(optax.add_decayed_weights(opt.weight_decay, mask), rule)
  if opt.clip_norm:
    rule = optax.chain(optax.clip_by_global_norm(opt.clip_norm), rule)
  return rule, schedule
