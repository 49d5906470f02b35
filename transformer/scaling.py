"""Fit and plot the scaling laws of finished sweeps (or of any results table), and predict.

  python -m transformer.scaling DIR [DIR ...] [--out=OUT] [--where=COND ...] [--predict=N=..,D=..]
  python -m transformer.scaling --csv=FILE --n_column=COL --loss_column=COL
      (--d_column=COL | --c_column=COL) [--drop_highest=K] [--out=OUT] [--predict=...]

reads each DIR/results.csv (written by `transformer.sweep`; several directories are fitted as
one set of points) or a CSV of published results, and writes OUT (default DIR/scaling/, or
FILE's name + _scaling/): report.md, fits.json and the plots (transformer/analysis/scaling.py):
L(N), L(C), IsoFLOP profiles and the joint L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al.
2022, approach 3; transformer/analysis/parametric.py). Examples:

  python -m transformer.scaling runs/scaling/model_size runs/scaling/isoflop --out=runs/joint \\
      --predict=N=3.46e6,D=1e6            # the loss of a bigger model, with 95% intervals
  python -m transformer.scaling runs/scaling/model_size --where='params_non_embedding<400000'
  python -m transformer.scaling --csv=svg_extracted_data.csv --n_column='Model Size' \\
      --c_column='Training FLOP' --loss_column=loss --drop_highest=5   # Besiroglu et al. 2024
"""

import os

from absl import app, flags

from transformer import cli, files
from transformer.analysis import scaling


def define_flags():
  flags.DEFINE_string('metric', scaling.DEFAULT_METRIC, 'the results.csv column to fit '
                      f'(default: {scaling.DEFAULT_METRIC}, {scaling.FALLBACK_METRIC} where a '
                      'point has none)')
  flags.DEFINE_integer('bootstrap', 1000, 'bootstrap resamples for the 95% intervals',
                       lower_bound=0)
  flags.DEFINE_integer('seed', 0, 'seed of the bootstrap resampling')
  flags.DEFINE_integer('starts', 100, 'L(N, D): L-BFGS runs from the grid starts of lowest '
                       'objective; 0 = all 4500 of Hoffmann et al.\'s grid', lower_bound=0)
  flags.DEFINE_string('out', None, 'where the report, fits.json and plots go (default: '
                      'DIR/scaling for one directory, FILE_scaling for --csv)')
  flags.DEFINE_multi_string('where', [], 'fit only the points with FIELD OP NUMBER (N, D, C, '
                            'loss, a result column or a swept field; OP: < <= > >= == !=), '
                            'e.g. --where=\'params_non_embedding<400000\'; repeatable')
  flags.DEFINE_multi_string('predict', [], 'N=...,D=... (or N and C, or C alone: the '
                            'compute-optimal N and D): the loss predicted by L(N, D) and L(N), '
                            'with 95% intervals; repeatable')
  flags.DEFINE_string('csv', None, 'fit a CSV file of results that is not a sweep (e.g. '
                      'published data), with the columns named by the flags below')
  flags.DEFINE_string('n_column', None, '--csv: the column of parameters N')
  flags.DEFINE_string('d_column', '', '--csv: the column of training tokens D')
  flags.DEFINE_string('c_column', '', '--csv: the column of training FLOPs C (D = C / 6N '
                      'without --d_column)')
  flags.DEFINE_string('loss_column', None, '--csv: the column of losses')
  flags.DEFINE_integer('drop_highest', 0, 'leave out the K points of highest loss (Besiroglu '
                       'et al. 2024 leave out 5 of the Chinchilla data)', lower_bound=0)


def _results(argv, f) -> tuple[scaling.Results, str]:
  """The points to fit and where the analysis goes."""
  directories = argv[1:]
  if f.csv:
    if directories:
      raise scaling.ResultsError('give sweep directories or --csv, not both')
    if not (f.n_column and f.loss_column):
      raise scaling.ResultsError('--csv needs --n_column and --loss_column (and --d_column or '
                                 '--c_column)')
    results = scaling.read_table(f.csv, f.n_column, f.loss_column, f.d_column, f.c_column)
    out = f.out or os.path.splitext(f.csv)[0] + '_scaling'
  else:
    if not directories:
      raise scaling.ResultsError('expected a sweep directory (python -m transformer.scaling DIR '
                                 '[DIR ...]) or --csv=FILE; got none')
    if len(directories) > 1 and not f.out:
      raise scaling.ResultsError(f'{len(directories)} directories are fitted together: name '
                                 'where the analysis goes with --out=DIR')
    results = scaling.combine([scaling.read_results(d, f.metric) for d in directories])
    out = f.out or str(files.path(directories[0]) / 'scaling')
  results = scaling.drop_highest(scaling.select(results, f.where), f.drop_highest)
  return results, out


def main(argv):
  f = flags.FLAGS
  try:
    queries = [scaling.parse_prediction(text) for text in f.predict]
    results, out = _results(argv, f)
    path, lines = scaling.write_analysis(results, out, f.bootstrap, f.seed, f.starts, queries)
  except scaling.ResultsError as e:
    cli.fail(str(e))
  print('\n'.join(lines))
  print(f'report: {path}')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
