"""Synthetic sequence-to-sequence tasks, generated from their index.

Example i of a split is a pure function of (task, split, i), so the tasks shuffle, shard and
resume exactly like stored datasets, and the training and evaluation splits never share a
random stream. Examples are text, so every tokenizer reads them:

  copy      'qhwbz'          -> 'qhwbz'
  reverse   'qhwbz'          -> 'zbwhq'
  sort      'qhwbz'          -> 'bhqwz'
  addition  '4821+907'       -> '5728'
  recall    'k7' + `distance` characters of distractor pairs ('a3f1...') + '?k' -> '7':
            associative recall across a chosen distance, a long-range probe

`length` bounds the sequence (copy, reverse, sort: 1..length letters; addition: operands of
1..length digits).
"""

import string

import numpy as np

TASKS = ('copy', 'reverse', 'sort', 'addition', 'recall')
LETTERS = np.array(list(string.ascii_lowercase))
DIGITS = np.array(list(string.digits))
SPLIT_STREAM = {'train': 0, 'eval': 1}
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
    return getattr(self, f'_{self.task}')(rng)

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
    n_pairs = (self.distance + 1) // 2
    filler = ''.join(f'{k}{v}' for k, v in zip(rng.choice(others, n_pairs),
                                                rng.choice(DIGITS, n_pairs)))
    return {'inputs': f'{key}{value}{filler[:self.distance]}?{key}', 'targets': str(value)}
