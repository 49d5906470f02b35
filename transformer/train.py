"""Train an experiment.

  python -m transformer.train --workdir=DIR                     # the default experiment
  python -m transformer.train --config=configs/FILE.py[:PRESET] --workdir=DIR [--config.a.b=V]

The run resumes from the newest readable checkpoint in DIR (parameters, optimizer state, data
position and randomness: a resumed run is bitwise the run that never stopped). DIR receives
config.json, metrics.jsonl, TensorBoard events (with train.wandb_project, a W&B run too),
checkpoints/, and on finishing summary.json, loss.png (and sample.txt for language models).
SIGTERM saves a checkpoint and exits with 143; a non-finite loss stops the run (exit 1) naming
the step, leaving the last checkpoint intact.
The loop is transformer/training/loop.py.
"""

import os
import sys

import jax
from absl import flags

from transformer import cli
from transformer.errors import INTERRUPTED_EXIT_CODE, Interrupted, RunFailed, first_line
from transformer.training import loop, sharding


def define_flags():
  cli.define_workdir_flag('directory of the run: checkpoints, metrics, summary (required; an '
                          'existing run there is resumed)')
  flags.DEFINE_string(
      'coordinator_address', None, 'many hosts: HOST:PORT of process 0 (with --num_processes '
      'and --process_id); not needed under SLURM or on Cloud TPU VMs, where it is detected')
  flags.DEFINE_integer('num_processes', None, 'many hosts: number of processes')
  flags.DEFINE_integer('process_id', None, 'many hosts: this process, 0-based')
  flags.DEFINE_enum(
      'distributed', 'auto', ['auto', 'on', 'off'], 'jax.distributed.initialize: auto (with the '
      'flags above, under SLURM with several tasks, on Cloud TPU VMs), on (always), off')
  flags.DEFINE_integer(
      'heartbeat_timeout_s', 100, 'many hosts: a process that does not hear from the '
      'coordinator for this long fails instead of waiting forever')


def main(config, argv):
  f = flags.FLAGS
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not f.workdir:
    cli.fail('--workdir is required: the directory for checkpoints, metrics and the summary')
  sharding.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id,
                                  mode=f.distributed, heartbeat_timeout_s=f.heartbeat_timeout_s)
  cli.enable_compilation_cache()
  try:
    loop.train_and_evaluate(config, f.workdir)
  except Interrupted as e:
    if jax.process_index() == 0:
      print(e, flush=True)
    sys.exit(INTERRUPTED_EXIT_CODE)
  except RunFailed as e:
    cli.fail(str(e), code=1)
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    # A collective failed: another process of the job died. Exit now, without the shutdown
    # barrier (it would wait for the dead peer, then abort).
    print(f'error: process {jax.process_index()}: {first_line(e)}; another process of this job '
          f'has probably stopped. Checkpoints in {f.workdir}/checkpoints are intact: start '
          'every process again to resume', file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)


if __name__ == '__main__':
  define_flags()
  cli.run(main)
