"""Checkpoints with orbax: the train state, the data position and run metadata, per step.

A checkpoint is a step directory under WORKDIR/checkpoints holding three items: `state`
(arrays, orbax's tensorstore format), `data` (the data iterator's state, JSON) and `meta`
(JSON: wall seconds, tokens seen). Nothing is pickled. Saves are asynchronous; orbax writes to
a temporary directory and renames it when complete, so a run killed mid-save leaves the
previous checkpoints intact. On restore, a step that cannot be read is renamed to
`N.corrupted` (kept, never deleted) and the previous one is used. Reading a trained model
(`restore_params`) reads the parameters alone, not the optimizer's state (two more copies of
the parameters under AdamW).

The directory may be remote (gs://...): orbax writes it itself (tensorstore's GCS driver for
the arrays, epath for the rest), and what this module does there (listing steps, setting a
corrupted one aside) goes through epath too.

A save that storage refuses (a full disk, a read-only or forbidden directory) raises RunFailed,
one line naming the directory and the errno: at once if the step's directory cannot be created,
else at the first `check()` after the background write failed (the loop checks after every
step). The previous checkpoints stay intact; the failed step's temporary directory is removed.
"""

import logging
import os
import sys
import threading
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from transformer import files
from transformer.errors import RunFailed, first_line

ITEMS = ('state', 'data', 'meta')


class Checkpoints:
  def __init__(self, directory: str | os.PathLike, keep: int = 3):
    self.directory = str(files.absolute(directory))
    # The step's directory is created in the calling thread: created in the background (orbax's
    # default), a refusal left the caller waiting 300 s for a signal that never came.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=True, create=True,
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
    handlers = {'state': ocp.StandardCheckpointHandler(), 'data': ocp.JsonCheckpointHandler(),
                'meta': ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS,
                                          item_handlers=handlers)
    self._saving: int | None = None  # the step of the newest save
    self._failure: Exception | None = None  # the failure of a background save, once known
    _silence_failed_read_leftovers()
    _drop_orbax_error_logs()

  def steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def saved_shapes(self, step: int) -> Any | None:
    """The state of a checkpoint as a tree of jax.ShapeDtypeStructs, from its metadata; None if
    unreadable."""
    try:
      tree = self._manager.item_metadata(step)['state']
      return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), dict(tree))
    except Exception:  # noqa: BLE001 - unreadable metadata: restore will set it aside
      return None

  def save(self, step: int, state: Any, data_state: dict, meta: dict):
    """Starts an asynchronous save; returns once the arrays are copied off the devices (and the
    previous save has ended). A thread waits for it in the background, so that `check()` knows
    of a failure without waiting."""
    self.wait()
    self._saving = step
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
          meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as e:  # noqa: BLE001 - storage errors become one line; others stay as they are
      self._failure = self._failed(step, e)
      raise self._failure from None
    threading.Thread(target=self._watch, args=(step,), name='checkpoint-watch', daemon=True
                     ).start()

  def _watch(self, step: int):
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - reported by check(), in the caller's thread
      self._failure = self._failed(step, e)

  def check(self):
    """Raises the failure of a background save, if one has failed (without waiting)."""
    if self._failure is not None:
      raise self._failure

  def _failed(self, step: int, error: Exception) -> Exception:
    """RunFailed naming the directory and the errno of a save that storage refused; any other
    error as it is."""
    code = files.storage_errno(error)
    if code is None:
      return error
    kept = [s for s in self._steps_on_disk() if s != step]
    intact = (f'the checkpoint of step {max(kept)} is intact' if kept else
              'no checkpoint was saved')
    return RunFailed(f'cannot save the checkpoint of step {step} in {self.directory}: '
                     f'{files.describe_errno(code)}; {intact}. Free space or make the directory '
                     'writable, then run the same command to resume')

  def _names(self) -> list[str]:
    directory = files.path(self.directory)
    return [p.name for p in directory.iterdir()] if directory.is_dir() else []

  def _steps_on_disk(self) -> list[int]:
    return [int(n) for n in self._names() if n.isdigit()]

  def restore_step(self, step: int, abstract_state: Any) -> tuple[int, Any, dict, dict]:
    """(step, state, data_state, meta) of checkpoint `step`; raises if it cannot be read."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return step, restored.state, restored.data, restored.meta

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """The parameters of checkpoint `step` (on the first local device), read without the rest of
    the state; raises if they cannot be read."""
    target = {'params': abstract_params}
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(dtype=a.dtype, sharding=device),
                                target)
    # The state item is an ordinary orbax PyTree: its handler reads a subtree of it directly.
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
      restored = reader.restore(
          files.path(self.directory) / str(step) / 'state',
          args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                      partial_restore=True))
    return restored['params']

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict, dict] | None:
    """(step, state, data_state, meta) of the newest readable checkpoint, or None. An unreadable
    one is renamed N.corrupted and skipped."""
    return self._newest_readable(lambda step: self.restore_step(step, abstract_state),
                                 set_aside=True)

  def restore_latest_params(self, abstract_params: Any) -> tuple[int, Any] | None:
    """(step, params) of the newest checkpoint whose parameters can be read, or None; an
    unreadable one is left as it is (this only reads) and skipped."""
    return self._newest_readable(
        lambda step: (step, self.restore_params(step, abstract_params)), set_aside=False)

  def _newest_readable(self, read, set_aside: bool):
    for step in sorted(self.steps(), reverse=True):
      try:
        return read(step)
      except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: fall back
        time.sleep(0.5)  # the failed read's other reads end now (silenced), not at exit
        reason = first_line(e, 200)
        moved = f'moved to {self._set_aside(step)}; ' if set_aside else ''
        print(f'warning: checkpoint at step {step} is unreadable ({reason}); {moved}using the '
              'previous one', flush=True)
    return None

  def _set_aside(self, step: int) -> str:
    path = files.path(self.directory) / str(step)
    aside = f'{path}.corrupted'
    n = 1
    while files.path(aside).exists():
      aside, n = f'{path}.corrupted{n}', n + 1
    if jax.process_index() == 0:
      path.rename(aside)
    self._manager.reload()
    return aside

  def wait(self):
    """Waits for the save in flight; RunFailed (see `save`) if it failed."""
    self.check()
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - as in save
      self._failure = self._failed(self._saving, e)
      raise self._failure from None

  def close(self):
    """Waits for the save in flight (RunFailed if it failed, unless that was reported already)
    and closes orbax's manager. After a failure, the failed step's temporary directory is
    removed: it holds what filled the disk, and a resumed run ignores it anyway."""
    failed = self._failure is not None
    try:
      if not failed:
        self.wait()
    except BaseException:
      failed = True
      raise
    finally:
      failed = failed or self._failure is not None
      if failed:
        self._remove_temporary()
      try:
        self._manager.close()  # after a failure, it waits again for the failed save: ignored
      except Exception as e:  # noqa: BLE001 - a last write refused: one line too
        if not failed:
          raise self._failed(self._saving, e) from None

  def _remove_temporary(self):
    if jax.process_index() != 0:
      return
    for name in self._names():
      if '.orbax-checkpoint-tmp' in name:
        try:
          (files.path(self.directory) / name).rmtree()
        except OSError:
          pass  # as before: what cannot be removed stays (a resumed run ignores it)


def _drop_orbax_error_logs():
  """orbax logs each failure of a background save with its traceback, several times (the
  writing thread, the committing thread, the finalising thread, each waiter): 5-95 tracebacks
  for one full disk. Every such failure reaches this module as an exception, which the run
  reports in one line; orbax's error records are dropped (its warnings are kept)."""
  absl_logger = logging.getLogger('absl')
  if any(isinstance(f, _OrbaxErrors) for f in absl_logger.filters):
    return
  absl_logger.addFilter(_OrbaxErrors())


class _OrbaxErrors(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR or f'{os.sep}orbax{os.sep}' not in record.pathname


def _silence_failed_read_leftovers():
  """When a read fails, the reads orbax still has in flight end on their own: each raises into
  the asyncio loop orbax has closed ('Event loop is closed'), or in a coroutine nobody awaits
  any more, where nothing can catch it; Python printed 100-200 such tracebacks (through
  sys.unraisablehook, or sys.excepthook from tensorstore's threads), and asyncio logged each
  task ("Task exception was never retrieved"). The failure itself is reported once, by the
  caller. Once this process opens checkpoints, those leftovers are dropped; every other
  exception is passed on (in this process only orbax uses asyncio)."""
  if getattr(sys.unraisablehook, 'drops_failed_read_leftovers', False):
    return
  unraisable_hook, except_hook = sys.unraisablehook, sys.excepthook

  def leftover(error, origin=None) -> bool:
    closed_loop = isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'
    code = getattr(origin, 'cr_code', None)  # a coroutine of orbax's that died unawaited
    return closed_loop or (code is not None and f'{os.sep}orbax{os.sep}' in code.co_filename)

  def on_unraisable(unraisable):
    if not leftover(unraisable.exc_value, unraisable.object):
      unraisable_hook(unraisable)

  def on_exception(kind, error, traceback):
    if not leftover(error):
      except_hook(kind, error, traceback)

  on_unraisable.drops_failed_read_leftovers = True
  sys.unraisablehook, sys.excepthook = on_unraisable, on_exception
  logging.getLogger('asyncio').setLevel(logging.CRITICAL)
