"""What an encoder-only run answers: a masked LM fills the [MASK] positions of a text with its
most likely tokens, a classifier gives the probability of each class.

  run = trained.load('runs/mlm')
  fill_mask(run, ['To be, or not to [MASK]'], top_k=5)   # per text, per mask: (token, prob)
  classify(run, ['a wonderful film'])                    # per text: the class probabilities

Inputs are laid out as in training (transformer/data/pipeline.py): <bos> text <eos>, one row
per text, padded to one length. `[MASK]` in a text marks a position to fill (it becomes the
tokenizer's mask id).
"""

import numpy as np

from transformer.errors import ConfigError

MASK = '[MASK]'


def _rows(run, tokenizer, texts: list[str], masks: bool) -> tuple[np.ndarray, np.ndarray]:
  """(tokens BxT, segment ids BxT) of <bos> text <eos> per text, [MASK] as the mask id."""
  rows = []
  for text in texts:
    ids = [tokenizer.bos_id]
    pieces = text.split(MASK) if masks else [text]
    for i, piece in enumerate(pieces):
      if i:
        ids.append(tokenizer.mask_id)
      ids += list(tokenizer.encode(piece)) if piece else []
    ids.append(tokenizer.eos_id)
    rows.append(ids)
  length = max(len(ids) for ids in rows)
  run.cfg.check_length(length, f'--prompt ({length} tokens with <bos> and <eos>)')
  tokens = np.zeros((len(rows), length), np.int32)
  segments = np.zeros((len(rows), length), np.int32)
  for i, ids in enumerate(rows):
    tokens[i, :len(ids)], segments[i, :len(ids)] = ids, 1
  return tokens, segments


def _probabilities(run, tokens, segments) -> np.ndarray:
  """The softmax of the model's logits, in float64 (probabilities that sum to 1)."""
  logits = np.asarray(run.model.apply({'params': run.params}, tokens, segment_ids=segments),
                      np.float64)
  exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return exp / exp.sum(axis=-1, keepdims=True)


def fill_mask(run, texts: list[str], top_k: int = 5) -> list[list[list[tuple[str, float]]]]:
  """For each text, for each [MASK] in it (left to right), the `top_k` most likely tokens
  (special tokens left out) and their probabilities."""
  if run.cfg.head != 'mlm':
    raise ConfigError(f'--workdir={run.workdir} holds a {run.cfg.head} model; filling [MASK] '
                      'needs the mlm head')
  missing = [text for text in texts if MASK not in text]
  if missing:
    raise ConfigError(f'--prompt={missing[0]!r} has no {MASK} to fill')
  tokenizer = run.tokenizer()
  tokens, segments = _rows(run, tokenizer, texts, masks=True)
  probs_BxTxV = _probabilities(run, tokens, segments)
  special = sorted(i for i in tokenizer.special_ids if i < probs_BxTxV.shape[-1])
  answers = []
  for row in range(len(texts)):
    filled = []
    for position in np.flatnonzero(tokens[row] == tokenizer.mask_id):
      probs = probs_BxTxV[row, position].copy()
      probs[special] = -1.0  # never proposed
      best = np.argsort(-probs, kind='stable')[:top_k]
      filled.append([(tokenizer.decode([int(i)]), float(probs[i])) for i in best])
    answers.append(filled)
  return answers


def classify(run, texts: list[str]) -> np.ndarray:
  """The class probabilities of each text (texts x classes)."""
  if run.cfg.head != 'classify':
    raise ConfigError(f'--workdir={run.workdir} holds a {run.cfg.head} model; class '
                      'probabilities need the classify head')
  tokens, segments = _rows(run, run.tokenizer(), texts, masks=False)
  return _probabilities(run, tokens, segments)


def class_names(run) -> list[str]:
  """The names of the classes where the data has them (files and hf: datasets: the labels as
  written), else 'class 0', 'class 1', ..."""
  from transformer.data import corpus, datasets
  names = []
  if datasets.get_spec(run.config.data).source == 'files':  # the conversion records them
    try:
      manifest = corpus.read_manifest(datasets.convert_files(run.config.data))
      names = [str(name) for name in manifest['classes']]
    except (ConfigError, OSError, KeyError, ValueError):
      names = []
  count = run.cfg.num_classes
  return names if len(names) == count else [f'class {i}' for i in range(count)]
