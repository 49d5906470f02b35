"""Draw a trained run, the model's definitions, or the loss curves of runs and sweeps.

  python -m transformer.viz attention --workdir=RUN --text='...' [--target='...'] [--step=N]
  python -m transformer.viz positions [--d_model=128 --max_len=128] [--workdir=RUN]
  python -m transformer.viz activations
  python -m transformer.viz loss DIR [DIR ...] [--against=step|tokens|compute] [--log]

PNGs go to --out (a directory; for `loss` a file), else RUN/viz/ for plots of a run (for `loss`,
DIR/viz/ when one DIR is given), else viz/ in the current directory; the paths are printed
(transformer/inference/inspect.py computes, transformer/plots.py draws).
"""

from absl import app, flags, logging as absl_logging

from transformer import cli
from transformer.errors import ConfigError
from transformer.inference import inspect

COMMANDS = ('attention', 'positions', 'activations', 'loss')


def define_flags():
  cli.define_workdir_flag()
  flags.DEFINE_string('text', None, 'attention: the input text (the source, for encoder_decoder)')
  flags.DEFINE_string('target', None, 'attention: the target text an encoder_decoder decodes')
  flags.DEFINE_integer('step', None, 'attention: the checkpoint to read (default: the newest)')
  flags.DEFINE_string('out', None, 'output directory (loss: output file); default RUN/viz/ '
                      'for a run, else viz/')
  flags.DEFINE_integer('d_model', 128, 'positions: width of the sinusoidal encoding (with '
                       '--workdir: the run\'s)', lower_bound=2)
  flags.DEFINE_integer('max_len', 128, 'positions: number of positions (with --workdir: the '
                       'run\'s model.max_len)', lower_bound=2)
  flags.DEFINE_enum('against', 'step', list(inspect.AGAINST), 'loss: the x axis')
  flags.DEFINE_bool('log', False, 'loss: logarithmic axes')


def main(argv):
  command, args = (argv[1], argv[2:]) if len(argv) > 1 else ('', [])
  if command not in COMMANDS:
    cli.fail(f'the first argument selects the plot: one of {", ".join(COMMANDS)}; got '
             f'{command or "none"}')
  if args and command != 'loss':
    cli.fail(f'{command}: unexpected arguments: {" ".join(args)}')
  absl_logging.set_verbosity(absl_logging.WARNING)
  cli.keep_freed_host_memory()
  cli.enable_compilation_cache()
  f = flags.FLAGS
  try:
    if command == 'attention':
      paths = inspect.draw_attention(f.workdir, f.text, f.target, f.step, f.out)
    elif command == 'positions':
      paths = inspect.draw_positions(f.d_model if f['d_model'].present else None,
                                     f.max_len if f['max_len'].present else None, f.workdir,
                                     f.out)
    elif command == 'activations':
      paths = inspect.draw_activations(f.out)
    else:
      paths = inspect.draw_loss_curves(args, f.out, f.against, f.log)
  except ConfigError as e:
    cli.fail(f'{command}: {e}')
  print('\n'.join(paths))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
