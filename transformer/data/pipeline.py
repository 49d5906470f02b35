"""grain pipelines: canonical examples -> tokenized, packed, fixed-shape batches for each task.

The task follows from the model family and the dataset's kind:
  lm        decoder_only on text (or on pairs: 'inputs <sep> targets', loss on the targets)
  mlm       encoder_only with the mlm head, on text (15% of tokens chosen: 80% [MASK],
            10% a random token, 10% unchanged)
  seq2seq   encoder_decoder on pairs (teacher forcing: decoder_inputs = <bos> + targets[:-1])
  classify  encoder_only with the classify head, on labelled data

Batches are dicts of NumPy arrays with the per-host batch first. Token tasks give (B, T)
`inputs`, `targets`, `weights` (loss weight per target: 0 for padding, prompts and unmasked
MLM tokens), `segment_ids` (0 = padding, 1, 2, ... = packed documents) and `positions`
(restarting per document); seq2seq gives those for both sides (`inputs_segment_ids`,
`targets_segment_ids`, ...) plus `decoder_inputs`; classify gives `label` and `weights` (B,).

Training iterators shuffle (seeded, reshuffled every epoch), repeat forever and carry their
state (`get_state` / `set_state`): a resumed run continues on exactly the next batch. Their
global batches are the same on any number of hosts (each reads its rows: `make_dataset`).
"""

import itertools
import os
from typing import Any

import grain
import numpy as np

from transformer import files
from transformer.config import DataConfig, Experiment, ModelConfig
from transformer.data import corpus, datasets, synthetic, tokenizers
from transformer.data.datasets import DatasetSpec
from transformer.errors import ConfigError

MAX_CHUNKS_PER_DOCUMENT = 4096  # rows of one document at most (beyond: truncated)


def check_data(experiment: Experiment) -> DatasetSpec:
  """The rules that depend on what the dataset holds (the config sections have checked every
  field alone): that the model's task can train on it, that its options fit it, and that a
  pretrained tokenizer's directory exists. Returns the dataset's spec; a ConfigError names the
  field."""
  cfg, data = experiment.model, experiment.data
  if data.dataset == datasets.MIXTURE:
    for source in sources(experiment).values():
      try:
        check_data(source)
      except ConfigError as e:
        raise ConfigError(f'data.mixture={data.mixture!r} is invalid: {e}') from None
    return datasets.get_spec(data)
  spec = datasets.get_spec(data)

  def fail(name, allowed):
    raise ConfigError(f'data.{name}={getattr(data, name)!r} is invalid: {allowed}')

  datasets.check_remote_data_dir(data)
  if data.tokenizer == 'huggingface' and files.is_remote(data.hf_tokenizer):
    fail('hf_tokenizer', 'must be a local directory: transformers reads a tokenizer from local '
         'files (copy it here)')
  if data.tokenizer == 'huggingface' and not os.path.isdir(data.hf_tokenizer):
    fail('hf_tokenizer', "must be a directory holding a saved tokenizer with "
         "data.tokenizer='huggingface' (python -m transformer.convert writes one)")
  if spec.source == 'synthetic':
    if data.synthetic_len < 1:
      fail('synthetic_len', 'must be a positive integer')
    if data.recall_distance < 0:
      fail('recall_distance', 'must be >= 0')
  if spec.languages:
    for name in ('source_lang', 'target_lang'):
      if getattr(data, name) not in spec.languages:
        fail(name, f'must be one of {", ".join(spec.languages)} for {data.dataset}')
    if data.source_lang == data.target_lang:
      fail('target_lang', 'must differ from data.source_lang')
  _check_task(cfg, spec, data.dataset)
  if spec.source == 'files':
    corpus.check_files(data)
  if spec.source == 'synthetic' and data.tokenizer == 'byte':
    _check_synthetic_fits(data, cfg.task)
  if cfg.task == 'classify' and data.seq_len < 2:
    fail('seq_len', 'must be >= 2 for classification (<bos> text <eos>)')
  if cfg.task == 'classify' and spec.source != 'files' and cfg.num_classes != spec.num_classes:
    raise ConfigError(f'model.num_classes={cfg.num_classes} is invalid: {data.dataset} has '
                      f'{spec.num_classes} classes')
  return spec


def _check_task(cfg: ModelConfig, spec: DatasetSpec, dataset: str):
  """The model's task needs a dataset of a certain kind."""
  if spec.source == 'files':
    need = {'seq2seq': 'pairs', 'classify': 'labelled'}.get(cfg.task)
    if (need and spec.kind != need) or (cfg.task == 'mlm' and spec.kind == 'pairs'):
      fields = {'pairs': 'data.source_field and data.target_field',
                'labelled': 'data.label_field'}
      raise ConfigError(f'data.dataset={dataset!r} is invalid for task {cfg.task}: the fields '
                        f'named make {spec.kind} data; it needs '
                        f'{need or "text or labelled"} data'
                        + (f' (set {fields[need]})' if need else ''))
    return
  if cfg.task == 'seq2seq' and spec.kind != 'pairs':
    raise ConfigError(f'data.dataset={dataset!r} is invalid for model.family=encoder_decoder: '
                      f'it holds {spec.kind}, the encoder-decoder needs pairs (a translation '
                      f'dataset or a synthetic task: {", ".join(datasets.SYNTHETIC)})')
  if cfg.task == 'classify' and spec.kind != 'labelled':
    raise ConfigError(f'data.dataset={dataset!r} is invalid for model.head=classify: it holds '
                      f'{spec.kind}; use a labelled dataset (imdb_reviews, glue/sst2)')
  if cfg.task == 'mlm' and spec.kind == 'pairs':
    raise ConfigError(f'data.dataset={dataset!r} is invalid for model.head=mlm: it holds pairs; '
                      'use a text or labelled dataset')


def _check_synthetic_fits(data: DataConfig, task: str):
  """Synthetic examples must fit a row whole (one byte per character), or the task is broken."""
  inputs, targets = synthetic.max_lengths(data.dataset, data.synthetic_len, data.recall_distance)
  need = inputs + targets + 3 if task == 'lm' else max(inputs, targets) + 1  # specials
  limit = data.seq_len + 1 if task == 'lm' else data.seq_len
  if need > limit:
    knob = 'recall_distance' if data.dataset == 'recall' else 'synthetic_len'
    raise ConfigError(
        f'data.seq_len={data.seq_len} is invalid: the longest {data.dataset} example needs '
        f'{need - (task == "lm")} tokens here; raise data.seq_len or lower data.{knob}')


def prepare_data(experiment: Experiment):
  """What must happen before a run reads its data: your files are converted (a bad record is a
  ConfigError naming the file and line), and their classes are checked against the model's."""
  data, cfg = experiment.data, experiment.model
  data_dir = datasets.resolve_data_dir(data.data_dir)
  if files.is_remote(data_dir) and _reads_data_dir(experiment):
    files.check_remote(data_dir, datasets.data_dir_flag(data).partition('=')[0], write=False)
  if data.dataset == datasets.MIXTURE:
    for source in sources(experiment).values():
      prepare_data(source)
    return
  spec = datasets.get_spec(data)
  if spec.tfds_name in datasets.EMBEDDED and files.is_remote(data_dir):
    datasets.build_embedded(spec.tfds_name, data_dir)  # refused unless it is there already
  if spec.source != 'files':
    return
  spec = datasets.files_spec(data)
  if cfg.task == 'classify' and cfg.num_classes != spec.num_classes:
    where = 'data.train_files hold' if data.dataset == datasets.FILES else f'{data.dataset} has'
    raise ConfigError(f'model.num_classes={cfg.num_classes} is invalid: {where} '
                      f'{spec.num_classes} classes')


def _reads_data_dir(experiment: Experiment) -> bool:
  """Whether the data directory is read: a TFDS dataset (the embedded corpus included), or a
  SentencePiece model trained and cached there."""
  data = experiment.data
  if data.tokenizer == 'sentencepiece' and not data.spm_model:
    return True
  return any(datasets.get_spec(source.data).source == 'tfds'
             for source in sources(experiment).values())


def sources(experiment: Experiment) -> dict[str, Experiment]:
  """{dataset: the experiment on it alone} of a mixture (data.mixture), or {dataset: itself}."""
  data = experiment.data
  if data.dataset != datasets.MIXTURE:
    return {data.dataset: experiment}
  return {name: experiment.replace(data={'dataset': name, 'mixture': ''})
          for name in data.mixture_weights()}


# --- tokenizers -----------------------------------------------------------------------------------


def get_tokenizer(experiment: Experiment) -> tokenizers.Tokenizer:
  """The byte tokenizer, a given SentencePiece model, or one trained on the training split
  (cached in the data directory, so later runs and other hosts reuse it)."""
  data = experiment.data
  if data.tokenizer == 'byte':
    return tokenizers.ByteTokenizer()
  if data.tokenizer == 'huggingface':
    return tokenizers.HuggingFaceTokenizer(data.hf_tokenizer)
  if data.spm_model:
    return tokenizers.load_sentencepiece(data.spm_model, data.vocab_size)
  data_dir = datasets.resolve_data_dir(data.data_dir)
  name = data.dataset if data.dataset != datasets.MIXTURE else f'mixture-{data.mixture}'
  path = tokenizers.sentencepiece_cache_path(data_dir, name, data.vocab_size,
                                             data.spm_type, data.spm_examples, data.train_split)
  if not files.path(path).exists():  # a mixture's: each dataset's share of the examples
    weights = data.mixture_weights() if data.mixture else {data.dataset: 1.0}
    texts = itertools.chain.from_iterable(
        datasets.training_texts(datasets.open_split(source.data, 'train'),
                                max(1, round(data.spm_examples * weights[name])))
        for name, source in sources(experiment).items())
    tokenizers.train_sentencepiece(texts, data.vocab_size, path, data.spm_type)
  return tokenizers.SentencePieceTokenizer(path)


def with_vocab(experiment: Experiment, tokenizer: tokenizers.Tokenizer) -> Experiment:
  """The experiment with the tokenizer's vocabulary size as model.vocab_size. A pretrained
  model's vocabulary is fixed by its checkpoint (and may be padded past the tokenizer's): it
  must only hold every token id."""
  if experiment.data.tokenizer == 'huggingface':
    if tokenizer.vocab_size > experiment.model.vocab_size:
      raise ConfigError(f'model.vocab_size={experiment.model.vocab_size} is invalid: the '
                        f'tokenizer {experiment.data.hf_tokenizer} has {tokenizer.vocab_size} '
                        'tokens')
    return experiment
  return experiment.replace(model={'vocab_size': tokenizer.vocab_size})


# --- per-example transforms (classes, so worker processes can pickle them) ------------------------


def _ids(*parts) -> np.ndarray:
  return np.concatenate([np.atleast_1d(np.asarray(p, np.int32)) for p in parts])


def _encoded(tokenizer, example: dict, key: str, target: bool = False) -> np.ndarray:
  """The ids of a text field: stored by the conversion (data.pretokenize), else encoded now."""
  ids = example.get(f'{key}_ids')
  if ids is not None:
    return ids
  return (tokenizer.encode_target if target else tokenizer.encode)(example[key])


class LMChunks(grain.experimental.FlatMapTransform):
  """<bos> text <eos>, cut into rows of at most seq_len next-token predictions.

  For pairs: <bos> inputs <sep> targets <eos>, one row, weights only on the targets.
  """

  max_fan_out = MAX_CHUNKS_PER_DOCUMENT

  def __init__(self, tokenizer, seq_len: int):
    self.tokenizer, self.seq_len = tokenizer, seq_len

  def flat_map(self, example):
    tok, T = self.tokenizer, self.seq_len
    if 'text' in example or 'text_ids' in example:
      seq = _ids(tok.bos_id, _encoded(tok, example, 'text'), tok.eos_id)
      starts = range(0, len(seq) - 1, T)[:self.max_fan_out]
      rows = []
      for s in starts:
        piece = seq[s:s + T + 1]
        rows.append({'inputs': piece[:-1], 'targets': piece[1:],
                     'weights': np.ones(len(piece) - 1, np.float32)})
      return rows
    prompt = _ids(tok.bos_id, _encoded(tok, example, 'inputs'), tok.sep_id)
    seq = _ids(prompt, _encoded(tok, example, 'targets'), tok.eos_id)[:T + 1]
    weights = (np.arange(1, len(seq)) >= len(prompt)).astype(np.float32)
    return [{'inputs': seq[:-1], 'targets': seq[1:], 'weights': weights}]


class MLMChunks(grain.experimental.FlatMapTransform):
  """<bos> text <eos>, cut into rows of at most seq_len tokens (masked after packing)."""

  max_fan_out = MAX_CHUNKS_PER_DOCUMENT

  def __init__(self, tokenizer, seq_len: int):
    self.tokenizer, self.seq_len = tokenizer, seq_len

  def flat_map(self, example):
    tok, T = self.tokenizer, self.seq_len
    seq = _ids(tok.bos_id, _encoded(tok, example, 'text'), tok.eos_id)
    return [{'inputs': seq[s:s + T]} for s in range(0, len(seq), T)][:self.max_fan_out]


class Seq2SeqExample(grain.transforms.Map):
  """inputs <eos> -> targets <eos>, with decoder_inputs = <bos> targets (shifted right)."""

  def __init__(self, tokenizer, seq_len: int):
    self.tokenizer, self.seq_len = tokenizer, seq_len

  def map(self, example):
    tok, T = self.tokenizer, self.seq_len
    source = _ids(_encoded(tok, example, 'inputs')[:T - 1], tok.eos_id)
    target = _ids(_encoded(tok, example, 'targets', target=True)[:T - 1], tok.eos_id)
    return {'inputs': source, 'targets': target, 'decoder_inputs': _ids(tok.bos_id, target[:-1]),
            'weights': np.ones(len(target), np.float32)}


class ClassifyExample(grain.transforms.Map):
  """<bos> text <eos> (BERT's [CLS] text [SEP]), the text truncated so that <eos> stays, padded
  to seq_len, with its label."""

  def __init__(self, tokenizer, seq_len: int):
    self.tokenizer, self.seq_len = tokenizer, seq_len

  def map(self, example):
    tok = self.tokenizer
    ids = _ids(tok.bos_id, _encoded(tok, example, 'text')[:self.seq_len - 2], tok.eos_id)
    row = pad_features({'inputs': ids}, self.seq_len)
    row.update(label=np.int32(example['label']), weights=np.float32(1.0))
    return row


def pad_features(example: dict, length: int) -> dict:
  """One unpacked example padded to `length`, with the keys packing produces."""
  out = {}
  for key, value in example.items():
    n = len(value)
    out[key] = np.pad(value, (0, length - n))
    out[f'{key}_segment_ids'] = (np.arange(length) < n).astype(np.int32)
    out[f'{key}_positions'] = np.where(np.arange(length) < n, np.arange(length), 0).astype(np.int32)
  return out


class PadExample(grain.transforms.Map):
  def __init__(self, seq_len: int):
    self.seq_len = seq_len

  def map(self, example):
    return pad_features(example, self.seq_len)


class MaskTokens(grain.transforms.RandomMap):
  """BERT's masking: choose `rate` of the real tokens; of those, 80% become <mask>, 10% a
  random token, 10% stay. The loss weights mark the chosen tokens."""

  def __init__(self, tokenizer, rate: float):
    self.mask_id, self.rate = tokenizer.mask_id, rate
    specials = sorted(tokenizer.special_ids) + [getattr(tokenizer, 'unk_id', -1)]
    self.specials = np.asarray(specials, np.int32)
    self.replacements = np.setdiff1d(np.arange(tokenizer.vocab_size), self.specials)

  def random_map(self, row, rng: np.random.Generator):
    ids = row['inputs']
    candidates = (row['inputs_segment_ids'] != 0) & ~np.isin(ids, self.specials)
    chosen = candidates & (rng.random(ids.shape) < self.rate)
    r = rng.random(ids.shape)
    masked = np.where(chosen & (r < 0.8), self.mask_id, ids)
    random_ids = rng.choice(self.replacements, ids.shape)
    masked = np.where(chosen & (r >= 0.8) & (r < 0.9), random_ids, masked)
    return dict(row, inputs=masked.astype(np.int32), targets=ids.astype(np.int32),
                weights=chosen.astype(np.float32))


# Final batch keys of each task, from the keys after packing / padding.
OUTPUT_KEYS = {
    'lm': {'inputs': 'inputs', 'targets': 'targets', 'weights': 'weights',
           'segment_ids': 'inputs_segment_ids', 'positions': 'inputs_positions'},
    'mlm': {'inputs': 'inputs', 'targets': 'targets', 'weights': 'weights',
            'segment_ids': 'inputs_segment_ids', 'positions': 'inputs_positions'},
    'seq2seq': {k: k for k in ('inputs', 'inputs_segment_ids', 'inputs_positions',
                               'decoder_inputs', 'targets', 'targets_segment_ids',
                               'targets_positions', 'weights')},
    'classify': {'inputs': 'inputs', 'segment_ids': 'inputs_segment_ids',
                 'positions': 'inputs_positions', 'label': 'label', 'weights': 'weights'},
}


class SelectKeys(grain.transforms.Map):
  def __init__(self, task: str):
    self.keys = OUTPUT_KEYS[task]

  def map(self, row):
    return {out: (row[key].astype(np.float32) if out == 'weights' else row[key].astype(np.int32))
            for out, key in self.keys.items()}


# --- the pipeline -------------------------------------------------------------------------------

PACK_BINS = 16  # rows a slot packs at once (first fit)


def host_batch_size(global_batch: int, shard_count: int) -> int:
  if global_batch % shard_count:
    raise ConfigError(f'data.batch_size={global_batch} is invalid: must be divisible by the '
                      f'number of hosts ({shard_count})')
  return global_batch // shard_count


def host_slots(global_batch: int, shard_index: int, shard_count: int) -> list[int]:
  """The rows of each global batch that a host reads (in process order, as the batch is
  assembled across hosts)."""
  per_host = host_batch_size(global_batch, shard_count)
  return list(range(shard_index * per_host, (shard_index + 1) * per_host))


def make_dataset(experiment: Experiment, which: str, tokenizer: tokenizers.Tokenizer, *,
                 shard_index: int | None = None, shard_count: int | None = None
                 ) -> grain.IterDataset:
  """Batches of the training ('train': shuffled, endless) or evaluation ('eval': one pass, in
  order) split for this host (by default this JAX process: `jax.process_index()` of
  `jax.process_count()`).

  Batches are global: row j of every global batch comes from slot j, which reads documents
  j, j + B, j + 2B, ... of the split (B = data.batch_size; for training in its shuffled order)
  and packs them alone. A host reads its slots (`host_slots`), so the sequence of global
  batches depends on the dataset, the seed and the batch size, not on the number of hosts, and
  a run resumes on any number of them (`global_position`). In evaluation a slot that has run
  out gives empty rows (weight 0) until every slot has."""
  if shard_index is None or shard_count is None:
    shard_index, shard_count = host_shard()
  data, train = experiment.data, which == 'train'
  splits = [datasets.open_split(source.data, which, tokenizer)  # opened once, read by all
            for source in sources(experiment).values()]
  documents = _slot_documents if train else _eval_documents
  slots = host_slots(data.batch_size, shard_index, shard_count)
  ds = SlotBatches([_rows(experiment, tokenizer, documents(experiment, splits, j), train=train,
                          key=j) for j in slots], slots, finite=not train)
  if data.num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
  if data.prefetch > 0:
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=data.prefetch)
  return ds


def _slot_documents(experiment: Experiment, splits: list, slot: int) -> grain.IterDataset:
  """The documents of training slot `slot`: j, j + B, j + 2B, ... of the split's shuffled order
  (reshuffled every epoch); of a mixture, drawn from its datasets' slot streams in their
  proportions (deterministically: grain's mix)."""
  data, seed = experiment.data, experiment.train.seed
  weights = list(data.mixture_weights().values()) if data.mixture else [1.0]
  streams = []
  for i, (split, weight) in enumerate(zip(splits, weights)):
    if not weight:
      continue
    ds = grain.MapDataset.source(split)
    ds = ds.seed(seed if i == 0 else _seed(seed, i, 3)).shuffle().repeat(None)
    streams.append(ds[slot::data.batch_size].to_iter_dataset(_read_options(data)))
  if len(streams) == 1:
    return streams[0]
  return grain.IterDataset.mix(streams, [w for w in weights if w])


def _eval_documents(experiment: Experiment, splits: list, slot: int) -> grain.IterDataset:
  """The documents of evaluation slot `slot`: j, j + B, j + 2B, ... of the split, in order, once
  (of a mixture: its datasets' splits, one after the other)."""
  ds = grain.MapDataset.concatenate([grain.MapDataset.source(split) for split in splits])
  return ds[slot::experiment.data.batch_size].to_iter_dataset(_read_options(experiment.data))


def _read_options(data) -> grain.ReadOptions:
  """Records are read in the pipeline's thread by default (itself the prefetch thread);
  data.read_threads gives each slot its own reading threads (for remote file systems)."""
  threads = data.read_threads
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=4 * threads)


def _rows(experiment: Experiment, tokenizer: tokenizers.Tokenizer, ds: grain.IterDataset, *,
          train: bool, key: int) -> grain.IterDataset:
  """Tokenised, packed (or padded) rows of the document stream of one slot; `key` (the slot)
  seeds the packing and the masks."""
  data, task, T, seed = experiment.data, experiment.task, experiment.data.seq_len, \
      experiment.train.seed
  if task == 'lm':
    ds, lengths = grain.experimental.FlatMapIterDataset(ds, LMChunks(tokenizer, T)), (
        'inputs', 'targets', 'weights')
  elif task == 'mlm':
    ds, lengths = grain.experimental.FlatMapIterDataset(ds, MLMChunks(tokenizer, T)), ('inputs',)
  elif task == 'seq2seq':
    ds, lengths = ds.map(Seq2SeqExample(tokenizer, T)), (
        'inputs', 'targets', 'decoder_inputs', 'weights')
  else:
    ds, lengths = ds.map(ClassifyExample(tokenizer, T)), ()

  if lengths and data.pack:
    ds = grain.experimental.FirstFitPackIterDataset(
        ds, length_struct={k: T for k in lengths}, num_packing_bins=PACK_BINS,
        seed=_seed(seed, key, 2), shuffle_bins=train)
  elif lengths:
    ds = ds.map(PadExample(T))
  if task == 'mlm':  # every slot draws its own masks
    ds = ds.random_map(MaskTokens(tokenizer, data.mask_rate), seed=_seed(seed, key, 1))
  return ds.map(SelectKeys(task))


def _seed(seed: int, key: int, purpose: int) -> int:
  return int(np.random.SeedSequence([seed, key, purpose]).generate_state(1)[0])


class SlotBatches(grain.IterDataset):
  """A host's rows of each global batch: one row from each of its slots, stacked in order.
  `finite` (evaluation): a slot that has run out gives rows of zeros (weight 0) until every
  slot has."""

  def __init__(self, parents: list[grain.IterDataset], slots: list[int], finite: bool = False):
    super().__init__(parents)
    self._slots, self._finite = slots, finite

  def __iter__(self) -> grain.DatasetIterator:
    return _SlotIterator([p.__iter__() for p in self._parents], self._slots, self._finite)

  def __str__(self) -> str:
    return f'SlotBatches(slots {self._slots[0]}..{self._slots[-1]})'


class _SlotIterator(grain.DatasetIterator):
  def __init__(self, parents: list[grain.DatasetIterator], slots: list[int], finite: bool):
    super().__init__(parents)
    self._slots, self._finite = slots, finite
    self._done = [False] * len(parents)
    self._blank: dict | None = None  # a row of zeros, for slots that have run out

  def __next__(self) -> dict[str, np.ndarray]:
    if not self._finite:
      rows = [next(p) for p in self._parents]
      return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    rows = []
    for i, parent in enumerate(self._parents):
      row = None if self._done[i] else next(parent, None)
      self._done[i] = row is None
      rows.append(row)
      if row is not None and self._blank is None:
        self._blank = {k: np.zeros_like(v) for k, v in row.items()}
    if all(self._done):
      raise StopIteration
    rows = [self._blank if r is None else r for r in rows]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  def get_state(self) -> dict:
    return {SLOTS: {str(j): p.get_state() for j, p in zip(self._slots, self._parents)}}

  def set_state(self, state: dict):
    for j, p in zip(self._slots, self._parents):
      p.set_state(state[SLOTS][str(j)])


SLOTS = 'slots'  # the key of slot states in an iterator's state


def global_position(host_states: list[Any]) -> Any:
  """One state of the whole training data from every host's (in process order): their slot
  states merged; what else the states hold (prefetching, workers) is the same on every host."""
  first = host_states[0]
  if isinstance(first, dict) and SLOTS in first:
    merged = {}
    for state in host_states:
      merged.update(state[SLOTS])
    return {**first, SLOTS: merged}
  if isinstance(first, dict):
    return {k: global_position([s[k] for s in host_states]) for k in first}
  if isinstance(first, list):
    return [global_position(list(items)) for items in zip(*host_states)]
  return first


def host_position(position: Any, slots: list[int]) -> Any:
  """This host's part of a `global_position`; KeyError names a slot it lacks (the batch size
  changed)."""
  if isinstance(position, dict) and SLOTS in position:
    return {**position, SLOTS: {str(j): position[SLOTS][str(j)] for j in slots}}
  if isinstance(position, dict):
    return {k: host_position(v, slots) for k, v in position.items()}
  if isinstance(position, list):
    return [host_position(v, slots) for v in position]
  return position


def empty_batch(batch: dict) -> dict:
  """A batch of the same keys and shapes with every weight 0 (pads evaluation)."""
  return {k: np.zeros_like(v) for k, v in batch.items()}


def host_shard() -> tuple[int, int]:
  """(index, count) of this process among all hosts."""
  import jax
  return jax.process_index(), jax.process_count()
