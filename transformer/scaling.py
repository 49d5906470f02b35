"""Fit and plot the scaling laws of a finished sweep.

  python -m transformer.scaling DIR [--metric=final_eval_loss] [--bootstrap=1000] [--seed=0]

reads DIR/results.csv (written by `transformer.sweep`) and writes DIR/scaling/: report.md,
fits.json and the plots (transformer/analysis/scaling.py).
"""

from absl import app, flags

from transformer import cli
from transformer.analysis import scaling


def define_flags():
  flags.DEFINE_string('metric', scaling.DEFAULT_METRIC, 'the results.csv column to fit '
                      f'(default: {scaling.DEFAULT_METRIC}, {scaling.FALLBACK_METRIC} where a '
                      'point has none)')
  flags.DEFINE_integer('bootstrap', 1000, 'bootstrap resamples for the 95% intervals',
                       lower_bound=0)
  flags.DEFINE_integer('seed', 0, 'seed of the bootstrap resampling')


def main(argv):
  if len(argv) != 2:
    given = f'got: {" ".join(argv[1:])}' if argv[1:] else 'got none'
    cli.fail(f'expected one argument, the sweep directory (python -m transformer.scaling DIR); '
             f'{given}')
  f = flags.FLAGS
  try:
    path, lines = scaling.analyze_sweep(argv[1], f.metric, f.bootstrap, f.seed)
  except scaling.ResultsError as e:
    cli.fail(str(e))
  print('\n'.join(lines))
  print(f'report: {path}')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
