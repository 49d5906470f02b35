"""Shared command-line plumbing: the --config flag and one-line errors with exit code 2.

Every entry point (`python -m transformer.X`) calls `run(main)`, where `main(config, argv)`
receives the loaded ConfigDict. Bad flags, a bad config file or preset, an unknown override
field and a `ConfigError` all end the program with one line on stderr and exit code 2, before
anything is compiled.
"""

import logging
import os
import pathlib
import re
import sys
from typing import Callable

from transformer.errors import INVALID_EXIT_CODE, ConfigError, last_line

DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parent.parent / 'configs' / 'default.py')


def fail(message: str, code: int = INVALID_EXIT_CODE):
  """Print one line on stderr and exit."""
  print(f'error: {" ".join(message.split())}', file=sys.stderr)
  sys.exit(code)


def _override_error(error: BaseException, argv: list[str], anonymous: bool = True) -> str | None:
  """Names the --config.X=V override that does not match a field, with config_dict's hint;
  without one to name, a generic line (or None where `anonymous` is False)."""
  text = str(error).encode().decode('unicode_escape').replace('\\n', '\n')
  name = re.search(r"'(\w+)'", text)
  hint = re.search(r'Did you mean "\w+" instead of "\w+"\?', text)
  overrides = [a.split('=')[0] for a in argv if a.startswith('--config.')]
  culprit = next((o for o in overrides if name and name.group(1) in o.split('.')), None)
  if culprit is None and not anonymous:
    return None
  message = f'{culprit or "a --config override"} is not a field of the config'
  return f'{message}. {hint.group(0)}' if hint else message


def enable_compilation_cache():
  """JAX's persistent compilation cache: a restarted run (after preemption, a crash, or the next
  point of a sweep with the same shapes) loads its compiled step instead of compiling again.
  $JAX_COMPILATION_CACHE_DIR wins; otherwise ~/.cache/transformer/jax. Unwritable: no cache."""
  import jax
  directory = os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.expanduser(
      '~/.cache/transformer/jax')
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError:
    return
  jax.config.update('jax_compilation_cache_dir', directory)


def keep_freed_host_memory():
  """Lets glibc's malloc keep the memory XLA:CPU frees, for the next step to reuse.

  On CPU a jitted step allocates its temporaries as one buffer (360 MB for the GPT-2-style
  config of experiments/perf/compare_pytorch.py). glibc serves a block that large with a fresh
  mmap and unmaps it when it is freed, so every step faulted the whole buffer in again: ~95k
  page faults per step, ~18% of the CPU time spent in the kernel, the step 9-18% slower
  (experiments/perf/RESULTS.md). One arena (the others cannot grow that far and fall back to
  mmap), no mmap and no trimming make freed blocks stay in the heap (a trim threshold, even
  mallopt's largest, 2 GiB, handed the wide config's freed temporaries back every few steps).
  Resident memory then stays at its peak, as with any caching allocator, and threads share one
  malloc lock.

  Applied on Linux with glibc, where JAX will run on the CPU: JAX_PLATFORMS starts with cpu, or
  it is unset and no GPU or TPU plugin is installed (an accelerator's temporaries are device
  memory). TRANSFORMER_MALLOC=system never applies it, =keep always does. It must run before
  JAX starts its threads: train, bench, generate, ablation and viz call it first."""
  import ctypes
  import platform
  choice = os.environ.get('TRANSFORMER_MALLOC', '')
  if (choice == 'system' or platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc'
      or (choice != 'keep' and not _cpu_host())):
    return
  try:
    libc = ctypes.CDLL('libc.so.6')
  except OSError:
    return
  m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # glibc's <malloc.h>
  libc.mallopt(m_arena_max, 1)
  libc.mallopt(m_mmap_max, 0)
  libc.mallopt(m_trim_threshold, -1)  # never trim (mallopt(3))


def _cpu_host() -> bool:
  """Whether JAX will compute on the CPU, judged without starting it."""
  import importlib.util
  platforms = os.environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  for plugin in ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin',
                 'jax_rocm7_plugin', 'libtpu'):
    try:
      if importlib.util.find_spec(plugin) is not None:
        return False
    except (ImportError, ValueError):
      pass
  return True


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with one-line, exit-2 errors, for commands without --config:
  `app.run(main, flags_parser=cli.parse_flags)`."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))


def define_workdir_flag(help_text: str = 'the directory of a trained run'):
  """--workdir: the run a command trains or reads (a sweep: its directory); listed by the
  command's --help with its own flags."""
  from absl import flags
  flags.DEFINE_string('workdir', None, help_text, module_name=sys.argv[0])


def begin_workdir_command(argv: list[str]):
  """The start of a command that reads a trained run: no positional arguments, --workdir given,
  libraries' INFO logs off, the compilation cache on. Returns the parsed flags."""
  from absl import flags, logging as absl_logging
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS.workdir:
    fail('--workdir is required: the directory of a trained run')
  absl_logging.set_verbosity(absl_logging.WARNING)
  keep_freed_host_memory()
  enable_compilation_cache()
  return flags.FLAGS


def run(main: Callable, default_config: str = DEFAULT_CONFIG):
  """absl `app.run` with a --config flag (file[:preset]) and one-line, exit-2 errors."""
  keep_freed_host_memory()
  from absl import app, flags
  from ml_collections import config_flags

  # Libraries log at INFO (jax: "no TPU"; TFDS: every dataset it opens; orbax: every save),
  # which absl shows by default; we start at WARNING (--verbosity=0 brings INFO back).
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)

  try:  # overrides of unknown fields raise here, while the flag is defined
    config_flags.DEFINE_config_file(
        'config', default_config, 'experiment config: FILE.py or FILE.py:PRESET', lock_config=True)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    fail(_override_error(e, sys.argv))

  def parse(argv):
    # Loading the config file logs its own warnings before flags are parsed (get_config()
    # returning None: "did you forget a return statement?"); the one-line error says it.
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      fail(last_line(e) if 'Error whilst parsing config file' not in str(e)
           else f'--config: {last_line(e)}')
    except Exception as e:  # an override of no field; a config file that does not load
      unknown = (_override_error(e, argv, anonymous=False)
                 if isinstance(e, (AttributeError, KeyError)) else None)
      given = [a for a in argv if a.startswith('--config=')]
      fail(unknown or f'{given[-1] if given else "--config"}: {type(e).__name__}: '
           f'{last_line(e)}')

  def wrapped(argv):
    if not any(a.startswith(('--verbosity', '-v')) for a in sys.argv[1:]):
      from absl import logging as absl_logging
      absl_logging.set_verbosity(absl_logging.WARNING)
    config = flags.FLAGS.config
    source = f'--config={flags.FLAGS["config"].config_filename}'
    try:
      config.get('model')
    except IOError as e:  # a config file that could not be loaded
      fail(f'{source}: {last_line(e)}')
    except AttributeError:
      fail(f'{source}: get_config() returned {type(config).__name__}, not a ConfigDict')
    try:
      return main(config, argv)
    except ConfigError as e:
      fail(str(e))

  app.run(wrapped, flags_parser=parse)
