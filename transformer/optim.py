"""Optimizers and learning-rate schedules from the `opt` config section, all optax.

Schedules (step counts optimizer updates; every schedule starts at 0 and ramps linearly to
`opt.lr` over `opt.warmup_steps`):
  constant  lr after warmup
  cosine    cosine decay from lr to lr * opt.final_lr_ratio at train.num_steps
  linear    linear decay from lr to lr * opt.final_lr_ratio at train.num_steps
  rsqrt     the paper's schedule (Vaswani et al. 2017, eq. 3): lr * min(s / w, sqrt(w / s)),
            peaking at lr when s = w; with lr = (d_model * w)^-1/2 it is exactly
            d_model^-1/2 * min(s^-1/2, s * w^-3/2)
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from transformer.config import ConfigError

OPTIMIZERS = ('adamw', 'adafactor', 'sgd')
SCHEDULES = ('constant', 'cosine', 'linear', 'rsqrt')


def check_opt_config(opt: Any):
  def fail(name, allowed):
    raise ConfigError(f'opt.{name}={opt[name]!r} is invalid: {allowed}')

  if opt.name not in OPTIMIZERS:
    fail('name', f'must be one of {", ".join(OPTIMIZERS)}')
  if opt.schedule not in SCHEDULES:
    fail('schedule', f'must be one of {", ".join(SCHEDULES)}')
  if not opt.lr > 0:
    fail('lr', 'must be > 0')
  for name in ('warmup_steps', 'weight_decay', 'clip_norm', 'momentum'):
    if opt[name] < 0:
      fail(name, 'must be >= 0')
  if opt.schedule == 'rsqrt' and opt.warmup_steps < 1:
    fail('warmup_steps', "must be >= 1 for opt.schedule='rsqrt'")
  if not 0 <= opt.final_lr_ratio <= 1:
    fail('final_lr_ratio', 'must be in [0, 1]')
  for name in ('b1', 'b2'):
    if not 0 <= opt[name] < 1:
      fail(name, 'must be in [0, 1)')


def make_schedule(opt: Any, num_steps: int) -> optax.Schedule:
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
    names = [str(getattr(k, 'key', k)) for k in path]
    exempt = ('norm' in n or n == 'bias' or 'embedding' in n or n == 'scale' for n in names)
    return leaf.ndim > 1 and not any(exempt)
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(opt: Any, num_steps: int) -> tuple[optax.GradientTransformation,
                                                      optax.Schedule]:
  """(optimizer, schedule): clipping, then the update rule with its schedule."""
  schedule = make_schedule(opt, num_steps)
  mask = None if opt.decay_all_params else decay_mask
  if opt.name == 'adamw':
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
