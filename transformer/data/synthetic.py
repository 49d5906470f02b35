"""Synthetic sequence-to-sequence tasks, generated from their index.

Example i of a split is a pure function of (task, split, i), so the tasks shuffle, shard and
resume exactly like stored datasets. The splits never share an example: one example in ten
(by a hash of its input) belongs to evaluation, the others to training. Examples are text, so
every tokenizer reads them:

  copy      'qhwbz'          -> 'qhwbz'
  reverse   'qhwbz'          -> 'zbwhq'
  sort      'qhwbz'          -> 'bhqwz'
  addition  '4821+907'       -> '5728'
  recall    distractor pairs, then 'k7', then `distance` characters of distractor pairs,
            then '?k' -> '7': associative recall across a chosen distance (the stored pair
            sits at a random position; only its distance to the query is fixed)

`length` bounds the sequence (copy, reverse, sort: 1..length letters; addition: operands of
1..length digits).
"""

import string
import zlib

import numpy as np

TASKS = ('copy', 'reverse', 'sort', 'addition', 'recall')
LETTERS = np.array(list(string.ascii_lowercase))
DIGITS = np.array(list(string.digits))
SPLIT_STREAM = {'train': 0, 'eval': 1}
EVAL_BUCKETS = 10  # one example in ten (by input hash) is evaluation-only
TRAIN_SIZE = 1_000_000  # examples per training epoch (more are never needed: they are fresh)
EVAL_SIZE = 1_000


class SyntheticTask:
  """A random-access source of {'inputs': str, 'targets': str}."""

  def __init__(self, task: str, split: str, length: int, distance: int):
    if task not in TASKS:
      raise ValueError(f'unknown synthetic task {task!r}')
    self.task, self.length, self.distance = task, length, distance
    self.stream = SPLIT_STREAM[split]
    self.size = TRAIN_SIZE if split == 'train' else EVAL_SIZE

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index: int) -> dict[str, str]:
    if not 0 <= index < self.size:
      raise IndexError(index)
    rng = np.random.default_rng([self.stream, index])
    while True:  # draw until the example belongs to this split
      example = getattr(self, f'_{self.task}')(rng)
      in_eval = zlib.crc32(example['inputs'].encode()) % EVAL_BUCKETS == 0
      if in_eval == (self.stream == SPLIT_STREAM['eval']):
        return example

  def _letters(self, rng) -> str:
    return ''.join(rng.choice(LETTERS, rng.integers(1, self.length + 1)))

  def _copy(self, rng):
    s = self._letters(rng)
    return {'inputs': s, 'targets': s}

  def _reverse(self, rng):
    s = self._letters(rng)
    return {'inputs': s, 'targets': s[::-1]}

  def _sort(self, rng):
    s = self._letters(rng)
    return {'inputs': s, 'targets': ''.join(sorted(s))}

  def _addition(self, rng):
    def number() -> str:  # 1..length digits, no leading zero
      digits = rng.choice(DIGITS, int(rng.integers(1, self.length + 1)))
      return ''.join(digits).lstrip('0') or '0'
    a, b = number(), number()
    return {'inputs': f'{a}+{b}', 'targets': str(int(a) + int(b))}

  def _recall(self, rng):
    key, value = rng.choice(LETTERS), rng.choice(DIGITS)
    others = LETTERS[LETTERS != key]

    def distractors(n: int) -> str:
      pairs = ''.join(f'{k}{v}' for k, v in zip(rng.choice(others, (n + 1) // 2),
                                                  rng.choice(DIGITS, (n + 1) // 2)))
      return pairs[:n]

    before = distractors(2 * int(rng.integers(0, self.distance // 2 + 1)))
    return {'inputs': f'{before}{key}{value}{distractors(self.distance)}?{key}',
            'targets': str(value)}


def max_lengths(task: str, length: int, distance: int) -> tuple[int, int]:
  """Longest (inputs, targets), in characters, a task can produce."""
  return {'copy': (length, length), 'reverse': (length, length), 'sort': (length, length),
          'addition': (2 * length + 1, length + 1),
          'recall': (2 * (distance // 2) + distance + 4, 1)}[task]
