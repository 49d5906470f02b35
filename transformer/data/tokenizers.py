"""Tokenizers behind one interface: byte-level (the default), SentencePiece, and a pretrained
model's Hugging Face tokenizer (for checkpoints converted by transformer/inference/convert.py).

Byte-level and SentencePiece reserve the same special tokens: padding, beginning and end of
sequence, a separator (between a prompt and its completion) and a mask (masked-LM). The byte
tokenizer keeps a vocabulary of exactly 256 by giving those roles to ASCII control bytes that
text does not use (they are removed from input text); SentencePiece gets them as reserved
pieces.
"""

import dataclasses
import hashlib
import os
import pathlib
import tempfile
from typing import Iterable, Protocol

import numpy as np

from transformer import files
from transformer.errors import ConfigError, first_line, last_line


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int
  sep_id: int
  mask_id: int

  def encode(self, text: str) -> np.ndarray: ...

  def encode_target(self, text: str) -> np.ndarray:
    """The target side of a translation pair: `encode`, except where the target language has
    its own vocabulary (Marian's target SentencePiece model)."""

  def decode(self, ids: Iterable[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  """UTF-8 bytes as tokens. Special roles go to control bytes: NUL pads, STX/ETX begin and
  end a sequence, GS separates, SUB masks."""

  vocab_size: int = 256
  pad_id: int = 0x00
  bos_id: int = 0x02
  eos_id: int = 0x03
  sep_id: int = 0x1D
  mask_id: int = 0x1A

  @property
  def special_ids(self) -> frozenset[int]:
    return frozenset({self.pad_id, self.bos_id, self.eos_id, self.sep_id, self.mask_id})

  def encode(self, text: str) -> np.ndarray:
    ids = np.frombuffer(text.encode('utf-8'), dtype=np.uint8)
    return ids[_ORDINARY_BYTE[ids]].astype(np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    data = bytes(int(i) for i in ids if 0 <= int(i) < 256 and int(i) not in self.special_ids)
    return data.decode('utf-8', errors='replace')

  def encode_target(self, text: str) -> np.ndarray:  # one vocabulary for both sides
    return self.encode(text)


_ORDINARY_BYTE = np.ones(256, bool)
_ORDINARY_BYTE[list(ByteTokenizer().special_ids)] = False

SPM_VERSION = 2  # of our training recipe: part of the cache key
SPM_SPECIALS = dict(pad_id=0, unk_id=1, bos_id=2, eos_id=3)
SPM_SYMBOLS = ('<sep>', '<mask>')  # ids 4 and 5; control symbols: text never produces them


class SentencePieceTokenizer:
  """A trained SentencePiece model (unigram or BPE)."""

  def __init__(self, model_path: str | os.PathLike):
    import sentencepiece as spm
    self.model_path = str(model_path)
    if files.is_remote(self.model_path):  # SentencePiece reads local files: give it the bytes
      self._sp = spm.SentencePieceProcessor(model_proto=files.path(model_path).read_bytes())
    else:
      self._sp = spm.SentencePieceProcessor(model_file=self.model_path)
    self.vocab_size = self._sp.get_piece_size()
    self.pad_id, self.bos_id, self.eos_id = self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id()
    self.unk_id = self._sp.unk_id()
    self.sep_id, self.mask_id = (self._sp.piece_to_id(s) for s in SPM_SYMBOLS)
    self.special_ids = frozenset({self.pad_id, self.bos_id, self.eos_id, self.sep_id,
                                  self.mask_id})

  def __getstate__(self):  # worker processes reload the model from its file
    return {'model_path': self.model_path}

  def __setstate__(self, state):
    self.__init__(state['model_path'])

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), dtype=np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids if int(i) not in self.special_ids])

  def encode_target(self, text: str) -> np.ndarray:  # one vocabulary for both sides
    return self.encode(text)


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_path: str | os.PathLike,
                        model_type: str = 'unigram', max_sentences: int = 1_000_000):
  """Trains on `texts` and writes `model_path` atomically (safe with concurrent runs): beside
it, then renamed; a remote `model_path` (gs://...) in a local temporary directory, then
uploaded whole."""
  import sentencepiece as spm
  remote = files.is_remote(model_path)
  model_path = files.path(model_path)
  try:
    files.makedirs(model_path.parent)
  except OSError as e:
    raise ConfigError(f'data.data_dir: cannot cache the tokenizer in {model_path.parent} '
                      f'({e.strerror or e})') from None
  with tempfile.TemporaryDirectory(dir=None if remote else model_path.parent) as tmp:
    prefix = os.path.join(tmp, 'spm')
    try:  # identity normalisation, whitespace kept: decoding gives back the text's layout
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(texts), model_prefix=prefix, vocab_size=vocab_size,
          model_type=model_type, character_coverage=1.0, input_sentence_size=max_sentences,
          shuffle_input_sentence=True, control_symbols=list(SPM_SYMBOLS),
          normalization_rule_name='identity', remove_extra_whitespaces=False,
          max_sentence_length=1 << 16, minloglevel=2, **SPM_SPECIALS)
    except RuntimeError as e:
      raise ConfigError(f'data.vocab_size={vocab_size} is invalid: SentencePiece could not train '
                        f'it on this data ({last_line(e)})') from None
    if remote:
      model_path.write_bytes(pathlib.Path(prefix + '.model').read_bytes())
    else:
      os.replace(prefix + '.model', model_path)


def sentencepiece_cache_path(data_dir: str, dataset: str, vocab_size: int, model_type: str,
                             examples: int, split: str) -> str:
  """Where a SentencePiece model trained on `dataset`'s training split is cached (keyed by
  everything that shapes it)."""
  key = hashlib.sha1(f'{dataset}|{vocab_size}|{model_type}|{examples}|{split}|'
                     f'{SPM_VERSION}'.encode()).hexdigest()[:8]
  safe = dataset.replace('/', '_')
  return str(files.path(data_dir) / 'tokenizers' / f'{safe}-{model_type}{vocab_size}-{key}.model')


def load_sentencepiece(model_path: str, expected_vocab_size: int | None) -> SentencePieceTokenizer:
  """A given model file (local or remote); its size must be what the config says."""
  files.check_remote(model_path, 'data.spm_model', write=False)
  if not files.path(model_path).is_file():
    raise ConfigError(f'data.spm_model={model_path!r} is invalid: no such file')
  try:
    tokenizer = SentencePieceTokenizer(model_path)
  except (RuntimeError, OSError) as e:
    raise ConfigError(f'data.spm_model={model_path!r} is invalid: not a SentencePiece model '
                      f'({last_line(e)})') from None
  missing = [name for name, i in (('pad', tokenizer.pad_id), ('bos', tokenizer.bos_id),
                                  ('eos', tokenizer.eos_id)) if i < 0]
  missing += [s for s, i in zip(SPM_SYMBOLS, (tokenizer.sep_id, tokenizer.mask_id))
              if i == tokenizer.unk_id]
  if missing:
    raise ConfigError(f'data.spm_model={model_path!r} is invalid: it lacks the pieces '
                      f'{", ".join(missing)} (train it with pad_id=0, unk_id=1, bos_id=2, '
                      f'eos_id=3, control_symbols=<sep>,<mask>; or leave data.spm_model empty '
                      'to train one)')
  if expected_vocab_size and tokenizer.vocab_size != expected_vocab_size:
    raise ConfigError(
        f'data.vocab_size={expected_vocab_size} is invalid: the SentencePiece model '
        f'{model_path} has {tokenizer.vocab_size} pieces; set data.vocab_size='
        f'{tokenizer.vocab_size} (or 0 to read it from the model)')
  return tokenizer


class HuggingFaceTokenizer:
  """A pretrained model's tokenizer, as `save_pretrained` wrote it (read with
  `transformers.AutoTokenizer`: the `interop` extra). Its special tokens take our roles: GPT-2's
  <|endoftext|> begins and ends documents; BERT's [CLS] begins and [SEP] ends and separates;
  Marian's <pad> begins a target (its decoder start) and </s> ends it. Targets are encoded with
  Marian's target SentencePiece model (`text_target`), which `decode` also reads."""

  def __init__(self, directory: str | os.PathLike):
    try:
      from transformers import AutoTokenizer
    except ImportError:
      raise ConfigError("data.tokenizer='huggingface' needs the transformers package: pip "
                        "install -e '.[interop]'") from None
    self.directory = str(directory)
    try:
      self._tok = AutoTokenizer.from_pretrained(self.directory)
    except (OSError, ValueError, TypeError) as e:
      raise ConfigError(f'data.hf_tokenizer={self.directory!r} is invalid: no tokenizer could be '
                        f'read there ({first_line(e, 200)})') from None
    t = self._tok

    def first(*ids):
      return next((int(i) for i in ids if i is not None), None)

    self.vocab_size = len(t)
    self.eos_id = first(t.eos_token_id, t.sep_token_id, t.pad_token_id)
    self.bos_id = first(t.bos_token_id, t.cls_token_id, t.pad_token_id, self.eos_id)
    self.pad_id = first(t.pad_token_id, self.eos_id)
    self.sep_id = first(t.sep_token_id, self.eos_id)
    self.mask_id = first(t.mask_token_id, t.unk_token_id, self.eos_id)
    self.unk_id = first(t.unk_token_id, -1)
    if self.eos_id is None:
      raise ConfigError(f'data.hf_tokenizer={self.directory!r} is invalid: the tokenizer has no '
                        'end-of-sequence, separator or padding token')
    self.special_ids = frozenset(int(i) for i in t.all_special_ids)

  def __getstate__(self):  # worker processes read the tokenizer again from its directory
    return {'directory': self.directory}

  def __setstate__(self, state):
    self.__init__(state['directory'])

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False), dtype=np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def encode_target(self, text: str) -> np.ndarray:  # Marian: the target SentencePiece model
    ids = self._tok(text_target=text, add_special_tokens=False)['input_ids']
    return np.asarray(ids, dtype=np.int32)


SPECIAL_NAMES = (('mask_id', '[MASK]'), ('sep_id', '<sep>'), ('bos_id', '<bos>'),
                 ('eos_id', '<eos>'), ('pad_id', '<pad>'))
DOCUMENT_BREAK = ' ‖ '  # between packed documents, where rendered


def render(tokenizer: Tokenizer, ids: Iterable[int], segment_ids: Iterable[int] | None = None
           ) -> str:
  """A row as the model sees it: the special tokens by name ([MASK], <bos>, <sep>, <eos>),
  packed documents apart (DOCUMENT_BREAK), padding (segment 0) left out. Ordinary tokens are
  decoded in runs, so multi-byte characters and pieces read as text."""
  ids = [int(i) for i in ids]
  segments = [1] * len(ids) if segment_ids is None else [int(s) for s in segment_ids]
  names = {}
  for attribute, name in reversed(SPECIAL_NAMES):  # where roles share an id, the first wins
    if getattr(tokenizer, attribute, None) is not None:
      names[getattr(tokenizer, attribute)] = name
  out, run, previous = [], [], None
  for token, segment in zip(ids, segments):
    if segment == 0 or (segment_ids is None and token == tokenizer.pad_id):
      continue
    if previous is not None and segment != previous:
      out.append(tokenizer.decode(run) + DOCUMENT_BREAK)
      run = []
    previous = segment
    if token in names:
      out.append(tokenizer.decode(run) + names[token])
      run = []
    else:
      run.append(token)
  return ''.join(out) + tokenizer.decode(run)


def fingerprint(tokenizer: Tokenizer) -> str:
  """What identifies a tokenizer's ids: the byte tokenizer, or a hash of the SentencePiece model
  file or of the Hugging Face tokenizer's files."""
  if isinstance(tokenizer, ByteTokenizer):
    return 'byte'
  digest = hashlib.sha256()
  if isinstance(tokenizer, SentencePieceTokenizer):
    paths = [tokenizer.model_path]
  else:
    root = tokenizer.directory
    paths = sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names)
  for path in paths:
    digest.update(files.path(path).name.encode())
    digest.update(files.path(path).read_bytes())
  return f'{type(tokenizer).__name__}-{digest.hexdigest()[:16]}'
