"""Model-size scaling: L(N) over non-embedding parameters, each size with its own token budget.

  python -m transformer.sweep --config=configs/sweeps/model_size.py --workdir=runs/sweeps/model_size
  python -m transformer.scaling runs/sweeps/model_size

Six sizes from 25k to 790k non-embedding parameters (31x), heads of 16, d_ff = 4 d_model.
Each trains on 3 tokens per parameter, but at least 1M tokens (~490 steps), so the small models
come close to convergence while the run stays about 15 minutes on 2 CPU cores (the largest
point takes 6 of them). Kaplan et al. (2020) fit L(N) = (N_c / N)^0.076 with data unlimited;
Hoffmann et al. (2022) train 20 tokens per parameter. `:gpu` runs sizes from 0.8M to 50M
non-embedding parameters at 20 tokens per parameter.
"""

from transformer.analysis import studies, sweeps

# (num_layers, d_model) of each size; the parameters are 12 L d^2 plus biases and norms.
SIZES = {
    'cpu': [(2, 32), (2, 48), (3, 64), (3, 96), (4, 112), (4, 128)],
    'gpu': [(4, 128), (4, 256), (6, 320), (8, 448), (10, 576), (12, 768)],
}
TOKENS_PER_PARAM = {'cpu': 3, 'gpu': 20}
MIN_TOKENS = {'cpu': 1_000_000, 'gpu': 20_000_000}


def get_config(arg=None):
  return studies.base(arg)


def get_sweep(arg=None):
  scale = studies.check_scale(arg)
  layers, widths = zip(*SIZES[scale])

  def token_budget(config) -> int:
    non_embedding = sweeps.counts(config)['params_non_embedding']
    tokens = max(TOKENS_PER_PARAM[scale] * non_embedding, MIN_TOKENS[scale])
    return sweeps.steps_for_tokens(config, tokens)

  return sweeps.Sweep(
      grid=sweeps.zipit(sweeps.axis('model.num_layers', layers),
                        sweeps.axis('model.d_model', widths)),
      derived={'model.d_ff': studies.ffn_4x,
               'model.num_heads': studies.heads_of_size(16 if scale == 'cpu' else 64),
               'train.num_steps': token_budget,
               'opt.warmup_steps': studies.warmup_fraction(0.05),
               'train.eval_every': studies.eval_at_end})
