"""Head ablation of a trained run (Michel et al. 2019): the held-out loss with attention heads
masked, one at a time or several together.

  python -m transformer.ablation --workdir=RUN [--step=N] [--eval_batches=10]
                                 [--heads=KIND:LAYER:HEAD,...]

Without --heads every head is masked alone and RUN/ablation/ receives head_importance.json and
a heatmap per attention kind; with --heads those heads are masked, alone and together
(transformer/inference/ablation.py). The run's checkpoints are only read.
"""

from absl import app, flags

from transformer import cli
from transformer.errors import ConfigError
from transformer.inference import ablation


def define_flags():
  cli.define_workdir_flag()
  flags.DEFINE_integer('step', None, 'checkpoint to evaluate (default: the newest)')
  flags.DEFINE_integer('eval_batches', 10, 'held-out batches to evaluate each masked model on')
  flags.DEFINE_string('heads', '', 'KIND:LAYER:HEAD,...: mask these heads, alone and together, '
                      'instead of every head alone (e.g. decoder/attention:0:3)')


def main(argv):
  f = cli.begin_workdir_command(argv)
  try:
    lines = ablation.ablate(f.workdir, f.step, f.eval_batches, f.heads)
  except ConfigError as e:
    cli.fail(str(e))
  print('\n'.join(lines))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
