"""The errors and exit codes every layer shares.

Exit codes of the commands: 0 success, 2 invalid config or arguments (one line on stderr, before
anything compiles), 1 any other failure, 143 (128 + SIGTERM) stopped on request with a
checkpoint saved: rerun the same command to resume.
"""

import re

INVALID_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 143


class ConfigError(ValueError):
  """An invalid configuration or argument; its message is one line naming the field, the value
  and what is allowed."""


def first_line(error: BaseException, limit: int = 300) -> str:
  """The first line of an error's message (its type where it has none), at most `limit`
  characters: enough to say what went wrong on one line."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return (lines[0] if lines else type(error).__name__)[:limit]


def last_line(error: BaseException) -> str:
  """The useful line of an error whose text holds a whole traceback (e.g. a config file that
  failed to load): its last line, without the exception-type prefix."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  line = lines[-1] if lines else type(error).__name__
  return re.sub(r'^[\w.]*(Error|Exception): ', '', line)


class RunFailed(RuntimeError):
  """A run that cannot go on (a non-finite loss): exit code 1; its checkpoints are intact."""


class Interrupted(Exception):
  """A run stopped on request (SIGTERM) with a checkpoint saved: exit code 143; the same command
  resumes it."""
