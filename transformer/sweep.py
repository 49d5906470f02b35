"""Run every point of a sweep, then collect results.csv.

  python -m transformer.sweep --config=configs/sweeps/FILE.py[:ARG] --workdir=DIR [--dry_run]
      [--parallel=N] [--launcher=local|submitit_local|slurm] [--submitit=KEY=VALUE,...]
      [--config.a.b=V ...]

Each point is an ordinary run in DIR/<id>/; a relaunch skips finished points and resumes the
others (transformer/analysis/sweeps.py). Exit code 0 if every point finished, 1 if one failed,
143 if the sweep was stopped.
"""

import os

from absl import flags
from ml_collections import config_flags

from transformer import cli, files
from transformer.analysis import sweeps


def define_flags():
  cli.define_workdir_flag('the sweep directory: one subdirectory per point, and results.csv')
  flags.DEFINE_bool('dry_run', False, 'list the points (values, parameters, FLOPs) and exit; '
                    'nothing is compiled or run')
  flags.DEFINE_integer('parallel', 1, 'points run at a time (local: processes; slurm and '
                       'submitit_local: the job array\'s parallelism)')
  flags.DEFINE_enum('launcher', 'local', ['local', 'submitit_local', 'slurm'],
                    'local: subprocesses of this process; slurm: a SLURM job array through '
                    'submitit; submitit_local: the same through submitit\'s local executor')
  flags.DEFINE_list('submitit', None, 'KEY=VALUE,... for the submitit executor, e.g. '
                    'slurm_partition=gpu,gpus_per_node=1,timeout_min=600')


def main(config, argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  path, _, arg = f['config'].config_filename.partition(':')
  if not os.path.exists(path):
    cli.fail(f'--config={f["config"].config_filename}: no such file')
  sweep = sweeps.load_sweep(path, arg or None)
  if f.parallel < 1:
    cli.fail(f'--parallel={f.parallel} is invalid: must be >= 1')
  parameters = sweeps.parse_key_values(f.submitit or [])
  overrides = dict(config_flags.get_override_values(f['config']))
  if f.dry_run:
    if f.workdir:
      files.check_remote(f.workdir, '--workdir', write=False)
    sweeps.print_plan(sweeps.expand(config, sweep, list(overrides)),
                      f.workdir if f.workdir and files.path(f.workdir).is_dir() else None)
    return
  if not f.workdir:
    cli.fail('--workdir is required: the sweep directory (one subdirectory per point)')
  config_arg = os.path.abspath(path) + (f':{arg}' if arg else '')
  code = sweeps.run_sweep(config, config_arg, sweep, f.workdir, overrides, f.parallel,
                          f.launcher, parameters)
  raise SystemExit(code)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
