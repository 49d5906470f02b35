"""Learning-rate transfer: SP against muP, learning rate x width, the same tokens for every point.

  python -m transformer.sweep --config=configs/sweeps/mup_lr_transfer.py \
      --workdir=runs/sweeps/mup_lr_transfer
  python -m transformer.sweep --config=configs/sweeps/mup_lr_transfer.py:gpu \
      --workdir=runs/sweeps/mup_lr_transfer_gpu

Byte-level GPT-style models on the embedded Shakespeare corpus, 2 layers of widths 32 to 256
(`:gpu`: 4 layers, 128 to 1024), always 4 heads (the head size grows with width, as muP's base
model assumes here) and d_ff = 4 d_model, each trained with AdamW at six peak learning rates
a factor 2 apart (1.25e-3 to 0.16) and two seeds, in the standard parametrization and in muP with
the narrowest width as the base (where the two coincide: those points are the same runs, bit for
bit).

What to look for (`python -m transformer.scaling DIR` draws it in lr_transfer.png):
final_eval_loss against opt.lr, one curve per model.d_model (the mean over seeds), one panel per
model.parametrization. Under SP the best learning rate moves down as the model
widens (and the widest models fall apart at rates the narrow ones like best); under muP the
minima stay at about the same learning rate and wider models are no worse at it, so a rate
tuned at the base width can be used at any width. 128 points of 200 steps (205k tokens each):
about 40 minutes on 2 CPU cores with --parallel=2, most of it in the width-256 points (~0.3 s a
step). Results: experiments/scaling/README.md.
"""

from transformer import presets
from transformer.analysis import sweeps

LEARNING_RATES = [1.25e-3 * 2**k for k in range(8)]  # peak AdamW rates, a factor 2 apart
SEEDS = [0, 1]


def _scale(arg) -> str:
  if arg not in (None, '', 'cpu', 'gpu'):
    raise ValueError(f"configs/sweeps/mup_lr_transfer.py takes 'cpu' (the default) or 'gpu', "
                     f'not {arg!r}')
  return 'gpu' if arg == 'gpu' else 'cpu'


def _widths(arg) -> list[int]:
  return [32, 64, 128, 256] if _scale(arg) == 'cpu' else [128, 256, 512, 1024]


def get_config(arg=None):
  config = presets.get_config('decoder_only', 'tiny')  # 2 layers, 4 heads, learned positions
  gpu = _scale(arg) == 'gpu'
  config.model.mup_base_d_model = _widths(arg)[0]  # muP = SP at the narrowest width
  config.model.num_heads = 4  # fixed head count: head size d_model / 4 grows with width
  config.model.num_layers = 4 if gpu else 2  # depth is not swept
  config.model.dropout = 0.0  # short runs on a 4.5 MB corpus do not overfit
  config.data.seq_len = 256 if gpu else 64  # bytes per row
  config.data.batch_size = 32 if gpu else 16  # rows per step: 8192 (gpu) or 1024 tokens
  config.train.num_steps = 2000 if gpu else 200  # 16M (gpu) or 205k tokens per point
  config.train.log_every = 50 if gpu else 25  # steps between metric records
  config.train.eval_every = config.train.num_steps  # evaluate once, at the end
  config.train.eval_batches = 20  # batches of held-out text per evaluation
  config.train.checkpoint_every = config.train.num_steps  # one checkpoint, at the end
  config.opt.warmup_steps = 200 if gpu else 20  # then cosine decay to 0.1 x the peak rate
  return config


def get_sweep(arg=None) -> sweeps.Sweep:
  return sweeps.Sweep(
      grid=sweeps.product(sweeps.axis('model.parametrization', ['sp', 'mup']),
                          sweeps.axis('model.d_model', _widths(arg)),
                          sweeps.axis('opt.lr', LEARNING_RATES),
                          sweeps.axis('train.seed', SEEDS)),
      derived={'model.d_ff': lambda c: 4 * c.model.d_model})
