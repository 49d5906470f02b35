"""The datasets `data.dataset` can name, and random-access sources of canonical examples.

Every dataset is one of three kinds, whatever its TFDS features:
  text      {'text': str}                       causal LM, masked LM
  pairs     {'inputs': str, 'targets': str}     encoder-decoder; decoder-only as prompt -> answer
  labelled  {'text': str, 'label': int}         classification (its text also serves LM / MLM)

TFDS datasets are read with `tfds.data_source` (ArrayRecord, random access, no TensorFlow).
The embedded corpus is built into the data directory on first use; synthetic tasks are
generated from their index; your own files (`files`) are converted once into ArrayRecord
shards (transformer/data/corpus.py). Shuffling, sharding and resuming work the same for all.
"""

import contextlib
import dataclasses
import fcntl
import os
import pathlib
from typing import Any

from transformer import files
from transformer.config import DataConfig
from transformer.data import corpus, synthetic
from transformer.errors import ConfigError, first_line, last_line

KINDS = ('text', 'pairs', 'labelled')


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  kind: str
  tfds_name: str | None  # None: generated on the fly (synthetic) or converted files
  splits: tuple[str, str]  # (training, evaluation) split names
  text_feature: str = 'text'
  num_classes: int = 0
  whole_text: bool = False  # one example per split holds a whole corpus: split it into passages
  languages: tuple[str, ...] = ()
  source: str = 'tfds'  # tfds, synthetic (generated from the index) or files (corpus.py)


SYNTHETIC = synthetic.TASKS

DATASETS: dict[str, DatasetSpec] = {
    'shakespeare': DatasetSpec('text', 'shakespeare_corpus', ('train', 'validation')),
    'tiny_shakespeare': DatasetSpec('text', 'tiny_shakespeare', ('train', 'validation'),
                                    whole_text=True),
    'lm1b': DatasetSpec('text', 'lm1b', ('train', 'test')),
    'wmt14_translate/de-en': DatasetSpec('pairs', 'wmt14_translate/de-en', ('train', 'validation'),
                                         languages=('de', 'en')),
    'wmt17_translate/de-en': DatasetSpec('pairs', 'wmt17_translate/de-en', ('train', 'validation'),
                                         languages=('de', 'en')),
    'imdb_reviews': DatasetSpec('labelled', 'imdb_reviews', ('train', 'test'), num_classes=2),
    'glue/sst2': DatasetSpec('labelled', 'glue/sst2', ('train', 'validation'),
                             text_feature='sentence', num_classes=2),
    **{name: DatasetSpec('pairs', None, ('train', 'validation'), source='synthetic')
       for name in SYNTHETIC},
}
FILES = 'files'  # data.dataset of your own files: its kind follows from the fields named
MIXTURE = 'mixture'  # data.dataset of a mixture of the others (data.mixture)

EMBEDDED = {'shakespeare_corpus'}  # built locally from files in the package


class PrepareError(RuntimeError):
  """Preparing a dataset failed (no network, no space): a runtime failure, not bad input."""


def get_spec(data: DataConfig) -> DatasetSpec:
  """What data.dataset holds (for files: the kind the fields name; its classes are known once
  the files are converted, `files_spec`)."""
  if data.dataset == FILES or corpus.is_hf(data):
    return DatasetSpec(data.files_kind, None, ('train', 'eval'), source='files')
  if data.dataset == MIXTURE:
    kinds = {get_spec(data.source(name)).kind for name in data.mixture_weights()}
    return DatasetSpec('+'.join(sorted(kinds)), None, ('train', 'eval'), source='mixture')
  if data.dataset not in DATASETS:
    raise ConfigError(f'data.dataset={data.dataset!r} is invalid: must be one of '
                      f'{", ".join(DATASETS)}, {FILES}, hf:NAME or {MIXTURE}')
  return DATASETS[data.dataset]


def files_spec(data: DataConfig) -> DatasetSpec:
  """The spec of converted files, with their number of classes (converting them if needed)."""
  manifest = corpus.read_manifest(convert_files(data))
  return dataclasses.replace(get_spec(data), num_classes=len(manifest['classes']))


HF_NETWORK_PROBE = 'huggingface.co:443'
HF_OFFLINE = ('HF_DATASETS_OFFLINE', 'HF_HUB_OFFLINE')


def convert_files(data: DataConfig, progress: bool = True) -> str:
  """The directory of the conversion of data.train_files or of a Hugging Face dataset
  (converted on first use). A dataset of the Hub needs the network (probed first, in seconds)
  unless the library is told to read its cache (HF_DATASETS_OFFLINE=1)."""
  check_remote_data_dir(data)
  if corpus.is_hf(data) and not corpus.is_local(corpus.hf_name(data.dataset)[0]) and not any(
      os.environ.get(v) in ('1', 'true', 'TRUE') for v in HF_OFFLINE):
    try:
      check_network(HF_NETWORK_PROBE, 'save the dataset with save_to_disk on a machine with '
                    'network and name its directory (hf:DIR)',
                    bypass='set HF_DATASETS_OFFLINE=1 to read it from the Hugging Face cache')
    except PrepareError as e:
      raise ConfigError(f'data.dataset={data.dataset!r}: {e}') from None
  return corpus.convert(data, resolve_data_dir(data.data_dir), progress=progress)


def resolve_data_dir(data_dir: str) -> str:
  """data.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (TFDS's own default)."""
  return os.path.expanduser(data_dir or os.environ.get('TFDS_DATA_DIR')
                            or '~/tensorflow_datasets')


def data_dir_flag(data: DataConfig) -> str:
  """How a message names the data directory: 'data.data_dir=DIR', or '$TFDS_DATA_DIR=DIR' where
  the field is empty and the variable gave it."""
  name = 'data.data_dir' if data.data_dir or not os.environ.get('TFDS_DATA_DIR') else (
      '$TFDS_DATA_DIR')
  return f'{name}={resolve_data_dir(data.data_dir)}'


def check_remote_data_dir(data: DataConfig):
  """A remote data directory (gs://...) serves TFDS datasets prepared elsewhere and copied there
  (TFDS reads it with epath, grain with ArrayRecord's GCS reader) and caches SentencePiece
  models; your files are converted with ArrayRecord's local writer under a file lock, which
  need a local directory. A ConfigError in one line for that; no network needed."""
  if not files.is_remote(resolve_data_dir(data.data_dir)) or get_spec(data).source != 'files':
    return
  raise ConfigError(f'{data_dir_flag(data)} is invalid for data.dataset={data.dataset!r}: your '
                    'files are converted into the data directory with ArrayRecord\'s local '
                    'writer and a file lock, which need a local directory; set data.data_dir '
                    'to one')


def prepare_command(name: str, data_dir: str) -> str:
  return (f'python -m transformer.data --prepare --config.data.dataset={name} '
          f'--config.data.data_dir={data_dir}')


NETWORK_PROBE = 'storage.googleapis.com:443'  # reached in seconds on a machine with network


def prepare(data: DataConfig, network_probe: str = NETWORK_PROBE):
  """Downloads and prepares a TFDS dataset as ArrayRecord (needs network: `network_probe` is
  checked first), builds the embedded corpus or converts your files (both need nothing).
  Synthetic tasks need no preparation."""
  spec, name, data_dir = get_spec(data), data.dataset, resolve_data_dir(data.data_dir)
  if spec.source == 'files':
    convert_files(data)
    return
  if spec.source == 'synthetic':
    return
  import tensorflow_datasets as tfds
  if spec.tfds_name in EMBEDDED:
    build_embedded(spec.tfds_name, data_dir)
    return
  if files.is_remote(data_dir):  # TFDS writes ArrayRecord with a writer of local files only
    raise ConfigError(f'{data_dir_flag(data)}: TFDS cannot prepare {name} there (it writes '
                      'ArrayRecord files with a local writer); prepare it in a local '
                      f'data.data_dir, then copy that directory\'s {spec.tfds_name} folder to '
                      f'{data_dir} (gcloud storage cp -r)')
  check_network(network_probe, f'prepare {name} on a machine with network and copy {data_dir} '
                'here')
  try:
    tfds.builder(spec.tfds_name, data_dir=data_dir,
                 file_format='array_record').download_and_prepare()
  except Exception as e:  # noqa: BLE001 - offline, disk full, ...: say it in one line
    raise PrepareError(f'could not prepare {name} in {data_dir}: {type(e).__name__}: '
                       f'{last_line(e)[:300]}') from None


def check_network(probe: str, advice: str, timeout_s: float = 5.0,
                  bypass: str = 'pass --network_probe= to try anyway'):
  """Raises PrepareError within about `timeout_s` when `probe` (HOST:PORT) cannot be reached:
  offline, TFDS's downloader retries for minutes (each name lookup waiting for its timeout)
  before it fails. Skipped for an empty probe, and behind a proxy (only the proxy knows)."""
  if not probe:
    return
  reason = files.connect_error(probe, timeout_s)
  if reason is not None:
    raise PrepareError(f'no network: {probe} cannot be reached ({reason}); {advice} (or '
                       f'{bypass})')


def build_embedded(tfds_name: str, data_dir: str):
  """Builds the embedded corpus once; concurrent runs wait for the first (a file lock)."""
  import tensorflow_datasets as tfds

  from transformer.data.shakespeare.shakespeare_corpus import ShakespeareCorpus
  assert tfds_name == 'shakespeare_corpus'
  if is_prepared(tfds_name, data_dir):  # e.g. a shared, read-only data directory
    return
  if files.is_remote(data_dir):
    raise ConfigError(f'data.data_dir={data_dir} does not hold the embedded corpus, and it is '
                      'built with a file lock and ArrayRecord\'s local writer: build it in a '
                      'local directory (python -m transformer.data --prepare '
                      f'--config.data.data_dir=DIR), then copy DIR/{tfds_name} to {data_dir} '
                      '(gcloud storage cp -r), or use a local data.data_dir')
  try:
    pathlib.Path(data_dir).mkdir(parents=True, exist_ok=True)
    lock = open(os.path.join(data_dir, f'.{tfds_name}.lock'), 'w')
  except OSError as e:
    raise ConfigError(f'data.data_dir={data_dir!r} is invalid: cannot build the embedded corpus '
                      f'there ({e.strerror or e})') from None
  with lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    with quiet_absl():
      builder = ShakespeareCorpus(data_dir=data_dir, file_format='array_record')
      if not builder.is_prepared():
        tfds.disable_progress_bar()
        builder.download_and_prepare()


@contextlib.contextmanager
def quiet_absl():
  """TFDS logs at INFO and WARNING while opening a dataset; keep the console for results."""
  from absl import logging
  level = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(level)


def is_prepared(tfds_name: str, data_dir: str) -> bool:
  import tensorflow_datasets as tfds
  try:
    with quiet_absl():
      return tfds.builder(tfds_name, data_dir=data_dir, file_format='array_record').is_prepared()
  except Exception:  # noqa: BLE001 - an unreadable directory is not prepared
    return False


def as_text(value: Any) -> str:
  """mock_data gives str, real data gives bytes."""
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


class CanonicalSource:
  """Random access to canonical examples of one split of a dataset."""

  def __init__(self, records, spec: DatasetSpec, source_lang: str = '', target_lang: str = ''):
    self._records, self._spec = records, spec
    self._source_lang, self._target_lang = source_lang, target_lang

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self._records[index]
    if self._spec.tfds_name is None or isinstance(record, str):  # synthetic, files; passages
      return record if isinstance(record, dict) else {'text': record}
    if self._spec.kind == 'pairs':
      return {'inputs': as_text(record[self._source_lang]),
              'targets': as_text(record[self._target_lang])}
    example = {'text': as_text(record[self._spec.text_feature])}
    if self._spec.kind == 'labelled':
      example['label'] = int(record['label'])
    return example


def _passages(records) -> list[str]:
  """Blank-line-separated passages of corpora stored as one example per split."""
  out = []
  for i in range(len(records)):
    out.extend(p.strip('\n') for p in as_text(records[i]['text']).split('\n\n') if p.strip())
  return out


def open_split(data: DataConfig, which: str, tokenizer: Any = None) -> CanonicalSource:
  """The training ('train') or evaluation ('eval') split of `data.dataset`. Converted data read
  with data.pretokenize and a `tokenizer` gives token ids ({'text_ids': ...}), tokenised once."""
  spec = get_spec(data)
  split = spec.splits[0 if which == 'train' else 1]
  if spec.source == 'files':
    directory = convert_files(data)
    tokens = corpus.tokenize(directory, tokenizer) if data.pretokenize and tokenizer else None
    return CanonicalSource(corpus.Records(directory, split, tokens), spec)
  split = (data.train_split if which == 'train' else data.eval_split) or split
  if spec.source == 'synthetic':
    records = synthetic.SyntheticTask(data.dataset, which, data.synthetic_len,
                                      data.recall_distance)
    return CanonicalSource(records, spec)
  import tensorflow_datasets as tfds
  data_dir = resolve_data_dir(data.data_dir)
  if spec.tfds_name in EMBEDDED:
    build_embedded(spec.tfds_name, data_dir)
  try:
    with quiet_absl():
      records = tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # not prepared (or prepared as TFRecord), or a bad split name
    if not is_prepared(spec.tfds_name, data_dir):
      raise ConfigError(
          f'data.dataset={data.dataset!r} is not prepared in {data_dir} (as ArrayRecord, the '
          f'format grain reads); on a machine with network run: '
          f'{prepare_command(data.dataset, data_dir)}') from None
    raise ConfigError(f'data.dataset={data.dataset!r}: cannot read split {split!r} from '
                      f'{data_dir}: {first_line(e)}') from None
  if spec.whole_text:
    records = _passages(records)
  return CanonicalSource(records, spec, data.source_lang, data.target_lang)


def training_texts(source: CanonicalSource, limit: int):
  """Texts of up to `limit` examples, to train a tokenizer on (both sides of pairs)."""
  for i in range(min(len(source), limit)):
    example = source[i]
    if 'text' in example:
      yield example['text']
    else:
      yield example['inputs']
      yield example['targets']
