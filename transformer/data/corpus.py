"""Your own data: text, JSON Lines and Parquet files, converted once into ArrayRecord shards.

  --config.data.dataset=files --config.data.train_files='corpus/*.txt'            # text
  --config.data.train_files='dump/*.jsonl.zst' --config.data.text_field=body      # JSON Lines
  --config.data.train_files=pairs.parquet --config.data.source_field=en \
      --config.data.target_field=de                                                # pairs

The fields named say what the data holds: `source_field` and `target_field` make pairs, a
`label_field` makes labelled data, else text (of `text_field`, or of the plain-text file: one
document per file, paragraph or line, `data.text_unit`). Without `eval_files`, the documents
whose content hashes below `eval_fraction` are held out: the same documents whatever the order
or number of the files.

The conversion streams each file (a corpus never sits in memory), in pieces of about
PIECE_BYTES over the CPU cores, into `<data_dir>/files/<name>-<key>/`: one ArrayRecord shard
per piece and split, and `manifest.json`. The key hashes the files' paths, sizes and
modification times and the options that shape the records, so a second run reuses the shards
and a changed file is converted again. A conversion is built in a temporary directory that is
renamed when complete: an interrupted one is never mistaken for complete. The pieces depend on
the files alone, so the records (and the batches made of them) are the same on any machine.
"""

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import functools
import glob
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import socket
from typing import Any, Iterator

from transformer import files as atomic
from transformer.config import DataConfig
from transformer.errors import ConfigError

FORMAT_VERSION = 1  # of the records and the manifest: part of the key
PIECE_BYTES = 64 << 20  # a piece of the conversion: one task, one shard per split
SUFFIXES = {'.txt': 'text', '.text': 'text', '.md': 'text', '.jsonl': 'jsonl', '.ndjson': 'jsonl',
            '.json': 'jsonl', '.parquet': 'parquet'}
COMPRESSIONS = ('.gz', '.zst')
MAX_REPORTED = 5  # skipped records named in the manifest


class BadRecord(ValueError):
  """A record that cannot be read: names the file and the line (or row)."""


@dataclasses.dataclass(frozen=True)
class Piece:
  """A task of the conversion: a file, or the lines starting in [start, end) of one."""

  path: str  # the file; for a Hugging Face dataset, its name or directory
  format: str  # text, jsonl, parquet or hf
  compression: str
  start: int = 0  # a byte (of a Hugging Face dataset: a row)
  end: int | None = None  # None: to the end of the file
  split: str = 'train'  # 'train' (held out by hash if there are no eval files) or 'eval'
  table: str = ''  # the split of a Hugging Face dataset it reads


@dataclasses.dataclass(frozen=True)
class Options:
  """What shapes the records: part of the conversion's key."""

  kind: str
  text_unit: str
  text_field: str
  source_field: str
  target_field: str
  label_field: str
  eval_fraction: float  # 0 with eval files
  skip_bad_records: bool

  @classmethod
  def of(cls, data: DataConfig) -> 'Options':
    own_eval = hf_splits(data)[1] is not None if is_hf(data) else bool(data.eval_files)
    return cls(data.files_kind, data.text_unit, data.text_field, data.source_field,
               data.target_field, data.label_field, 0.0 if own_eval else data.eval_fraction,
               data.skip_bad_records)


# --- finding the files ----------------------------------------------------------------------------


def expand(field: str, globs: str) -> list[str]:
  """The files `globs` (separated by commas) match, sorted, each with a known suffix."""
  paths = []
  for pattern in (g.strip() for g in globs.split(',')):
    if not pattern:
      continue
    found = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                   if os.path.isfile(p))
    if not found:
      raise ConfigError(f'data.{field}={globs!r} is invalid: {pattern!r} matches no file')
    paths.extend(os.path.abspath(p) for p in found)
  for path in paths:
    format_of(field, path)
  return sorted(set(paths))


def format_of(field: str, path: str) -> tuple[str, str]:
  """(format, compression) of a file by its suffixes: ('jsonl', '.zst')."""
  stem, compression = path, ''
  for suffix in COMPRESSIONS:
    if path.endswith(suffix):
      stem, compression = path[:-len(suffix)], suffix
  kind = SUFFIXES.get(os.path.splitext(stem)[1].lower())
  if kind is None or (kind == 'parquet' and compression):
    raise ConfigError(f'data.{field}: {path} is not a file the conversion reads: its name must '
                      f'end in {", ".join(SUFFIXES)} (text and JSON Lines also compressed: '
                      f'{", ".join(COMPRESSIONS)})')
  return kind, compression


def check_files(data: DataConfig):
  """What can be checked without reading the files: they exist, are of known formats, and plain
  text is not asked for pairs or labels (of a Hugging Face dataset: that the library is
  installed and a local directory exists)."""
  if is_hf(data):
    _hf_library(data.dataset)
    name, _ = hf_name(data.dataset)
    if name.startswith(('/', '.', '~')) and not os.path.isdir(os.path.expanduser(name)):
      raise ConfigError(f'data.dataset={data.dataset!r} is invalid: {name} is not a directory '
                        "(one written by the datasets library's save_to_disk)")
    return
  for field in ('train_files', 'eval_files'):
    if getattr(data, field):
      for path in expand(field, getattr(data, field)):
        if format_of(field, path)[0] == 'text' and data.files_kind != 'text':
          raise ConfigError(f'data.{field}: {path} is plain text, which holds text only: '
                            f'{data.files_kind} data needs JSON Lines or Parquet files')


def pieces(data: DataConfig) -> list[Piece]:
  """The conversion's tasks, from the files alone (not the number of CPU cores)."""
  if is_hf(data):
    return _hf_pieces(data)
  out = []
  for field, split in (('train_files', 'train'), ('eval_files', 'eval')):
    if not getattr(data, field):
      continue
    for path in expand(field, getattr(data, field)):
      form, compression = format_of(field, path)
      size = os.path.getsize(path)
      splittable = not compression and (form == 'jsonl' or (form == 'text'
                                                            and data.text_unit == 'line'))
      if splittable and size > PIECE_BYTES:
        out.extend(Piece(path, form, compression, start, min(start + PIECE_BYTES, size), split)
                   for start in range(0, size, PIECE_BYTES))
      else:
        out.append(Piece(path, form, compression, split=split))
  return out


def key_of(data: DataConfig, tasks: list[Piece]) -> str:
  stats = _hf_fingerprint(data) if is_hf(data) else []
  for path in sorted({p.path for p in tasks if p.format != 'hf'}):
    st = os.stat(path)
    stats.append([path, st.st_size, st.st_mtime_ns])
  blob = json.dumps([FORMAT_VERSION, dataclasses.asdict(Options.of(data)), stats,
                     [dataclasses.astuple(p) for p in tasks]], sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:12]


def files_dir(data_dir: str) -> str:
  return os.path.join(data_dir, 'files')


def name_of(data: DataConfig) -> str:
  """A readable prefix of the conversion's directory: the first glob's file or folder name."""
  first = 'hf-' + hf_name(data.dataset)[0] if is_hf(data) else data.train_files.split(',')[0]
  first = first.strip().rstrip('/')
  stem = next((part for part in reversed(first.split('/')) if part and '*' not in part), 'files')
  return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in stem)[:40]


# --- reading records ------------------------------------------------------------------------------


def _open_binary(path: str, compression: str):
  if compression == '.gz':
    return gzip.open(path, 'rb')
  if compression == '.zst':
    import zstandard
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, 'rb'),
                                                                        closefd=True))
  return open(path, 'rb')


def _lines(piece: Piece) -> Iterator[tuple[int, bytes]]:
  """(number, line) of the lines that start in the piece's byte range, numbered from 1 at the
  piece's first line (see `_where` for the number in the file)."""
  with _open_binary(piece.path, piece.compression) as f:
    if piece.start:
      f.seek(piece.start - 1)
      if f.read(1) != b'\n':
        f.readline()  # the line that started in the previous piece
    number, position = 0, f.tell()
    while piece.end is None or position < piece.end:
      line = f.readline()
      if not line:
        return
      number += 1
      position += len(line)
      yield number, line


@functools.lru_cache(maxsize=64)
def _lines_before(path: str, start: int) -> int:
  """Lines of the file before the first line that starts at or after `start` (read only when
  a record of a piece is reported)."""
  if not start:
    return 0
  count, read = 0, 0
  with open(path, 'rb') as f:
    while read < start - 1:
      chunk = f.read(min(1 << 20, start - 1 - read))
      count, read = count + chunk.count(b'\n'), read + len(chunk)
    last = f.read(1)
    rest = b'' if last == b'\n' else f.readline()
  return count + (last == b'\n') + (1 if rest else 0)


def _where(piece: Piece, number: int) -> str:
  return f'{piece.path} line {number + _lines_before(piece.path, piece.start)}'


def _decode(raw: bytes, piece: Piece, number: int) -> str:
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise BadRecord(f'{_where(piece, number)}: not UTF-8 (byte 0x{raw[e.start]:02x} at column '
                    f'{e.start + 1})') from None


Item = tuple[dict[str, Any] | None, BadRecord | None]  # an example, or why a record is bad


def _text_documents(piece: Piece, unit: str) -> Iterator[Item]:
  """The documents of a plain-text file: per line, paragraph or the whole file."""
  lines, bad = [], None
  for number, raw in _lines(piece):
    try:
      line = _decode(raw, piece, number)
    except BadRecord as e:
      if unit == 'line':
        yield None, e
      else:  # the document it belongs to is bad
        bad = bad or e
      continue
    if unit == 'line':
      if line.strip():
        yield {'text': line.rstrip('\r\n')}, None
    elif unit == 'paragraph' and not line.strip():
      yield from _document(lines, bad, strip=True)
      lines, bad = [], None
    else:
      lines.append(line)
  if unit != 'line':
    yield from _document(lines, bad, strip=unit == 'paragraph')


def _document(lines: list[str], bad: BadRecord | None, strip: bool) -> Iterator[Item]:
  if bad is not None:
    yield None, bad
  elif ''.join(lines).strip():
    text = ''.join(lines)
    yield {'text': text.strip('\r\n') if strip else text}, None


def _json_records(piece: Piece, options: Options) -> Iterator[Item]:
  for number, raw in _lines(piece):
    if not raw.strip():
      continue
    try:
      record = json.loads(_decode(raw, piece, number).rstrip('\r\n'))
    except BadRecord as e:
      yield None, e
      continue
    except json.JSONDecodeError as e:
      reason = e.msg.removesuffix(' at')
      yield None, BadRecord(f'{_where(piece, number)}: invalid JSON ({reason} at column '
                            f'{e.colno})')
      continue
    yield _example(record, options, lambda: _where(piece, number))


def _parquet_records(piece: Piece, options: Options) -> Iterator[Item]:
  import pyarrow.parquet as pq
  table, columns = pq.ParquetFile(piece.path), list(_fields(options).values())
  for column in columns:
    if column not in table.schema_arrow.names:
      raise ConfigError(f'data.{_option_name(column, options)}={column!r} is invalid: it is not '
                        f'a column of {piece.path} (its columns: '
                        f'{", ".join(table.schema_arrow.names)})')
  row = 0
  for batch in table.iter_batches(batch_size=1024, columns=columns):
    for record in batch.to_pylist():
      row += 1
      yield _example(record, options, lambda: f'{piece.path} row {row}')


def _fields(options: Options) -> dict[str, str]:
  """{canonical key: the user's field}."""
  if options.kind == 'pairs':
    return {'inputs': options.source_field, 'targets': options.target_field}
  fields = {'text': options.text_field}
  if options.kind == 'labelled':
    fields['label'] = options.label_field
  return fields


def _option_name(field: str, options: Options) -> str:
  """The config field that names `field` (a column or JSON key)."""
  names = {'inputs': 'source_field', 'targets': 'target_field', 'text': 'text_field',
           'label': 'label_field'}
  return next(names[k] for k, v in _fields(options).items() if v == field)


def _example(record: Any, options: Options, where) -> Item:
  """The canonical example of a JSON or Parquet record (None for an empty text), or why it is
  bad. `where()` names the record (computed only for a bad one)."""
  if not isinstance(record, dict):
    return None, BadRecord(f'{where()}: a record must be an object, not '
                           f'{type(record).__name__}')
  example = {}
  for key, field in _fields(options).items():
    value = record.get(field)
    if value is None:
      return None, BadRecord(f'{where()}: no field {field!r} (data.{_option_name(field, options)})'
                             f'; its fields: {", ".join(map(str, record)) or "none"}')
    if key == 'label':
      if isinstance(value, bool) or not isinstance(value, (int, str)) or (
          isinstance(value, int) and value < 0):
        return None, BadRecord(f'{where()}: label {value!r} is not a class: an integer >= 0 or '
                               'a name')
    elif not isinstance(value, str):
      return None, BadRecord(f'{where()}: field {field!r} is {type(value).__name__}, not text')
    example[key] = value
  if not any(example[k].strip() for k in example if k != 'label'):
    return None, None  # nothing to learn from
  return example, None


def examples(piece: Piece, options: Options) -> Iterator[Item]:
  """The piece's examples, or why a record is bad. A missing Parquet column raises
  ConfigError."""
  if piece.format == 'text':
    return _text_documents(piece, options.text_unit)
  if piece.format == 'jsonl':
    return _json_records(piece, options)
  if piece.format == 'hf':
    return _hf_records(piece, options)
  return _parquet_records(piece, options)


def held_out(example: dict[str, Any], fraction: float) -> bool:
  """Whether the example is held out for evaluation: by a hash of its content, so the same
  documents are held out whatever the files' order."""
  digest = hashlib.blake2b(json.dumps(example, sort_keys=True).encode(), digest_size=8).digest()
  return int.from_bytes(digest, 'little') < fraction * 2.0 ** 64


# --- converting -----------------------------------------------------------------------------------


def convert_piece(index: int, piece: Piece, options: Options, directory: str) -> dict[str, Any]:
  """Writes the piece's records into the `train` / `eval` shards `index` of `directory`;
  returns their counts, the labels seen and the bad records skipped (or raises BadRecord for
  the first one, without data.skip_bad_records)."""
  from array_record.python.array_record_module import ArrayRecordWriter
  counts, labels, skipped, reported, writers = {'train': 0, 'eval': 0}, set(), 0, [], {}
  try:
    for example, bad in examples(piece, options):
      if bad is not None:
        if not options.skip_bad_records:
          raise bad
        skipped += 1
        if len(reported) < MAX_REPORTED:
          reported.append(str(bad))
        continue
      if example is None:
        continue
      split = piece.split
      if split == 'train' and options.eval_fraction and held_out(example, options.eval_fraction):
        split = 'eval'
      if split not in writers:
        writers[split] = ArrayRecordWriter(os.path.join(directory, shard_name(split, index)),
                                           'group_size:1')
      writers[split].write(json.dumps(example, ensure_ascii=False).encode('utf-8'))
      counts[split] += 1
      if 'label' in example:
        labels.add(example['label'])
  finally:
    for w in writers.values():
      w.close()
  return {'index': index, 'counts': counts, 'labels': sorted(labels, key=repr),
          'skipped': skipped, 'reported': reported}


def shard_name(split: str, index: int) -> str:
  return f'{split}-{index:05d}.array_record'


def convert(data: DataConfig, data_dir: str, workers: int = 0, progress: bool = True
            ) -> str:
  """The directory of the conversion of data.train_files (and data.eval_files), converting them
  unless a complete conversion of the same files and options exists. `workers`: processes
  (0: one per CPU core; a single piece converts in this process). Raises ConfigError for a bad
  record (naming the file and line) and for data that yields nothing to train or evaluate on."""
  tasks = pieces(data)
  options = Options.of(data)
  root = files_dir(data_dir)
  target = os.path.join(root, f'{name_of(data)}-{key_of(data, tasks)}')
  if os.path.exists(os.path.join(target, 'manifest.json')):
    return target
  try:
    os.makedirs(root, exist_ok=True)
    lock = open(os.path.join(root, f'.{os.path.basename(target)}.lock'), 'w')
  except OSError as e:
    raise ConfigError(f'data.data_dir={data_dir!r} is invalid: cannot convert data.train_files '
                      f'there ({e.strerror or e})') from None
  with lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # another process converting the same files: wait for it
    if not os.path.exists(os.path.join(target, 'manifest.json')):
      _note_changes(root, target, data)
      _build(data, tasks, options, target, workers, progress)
  return target


def _build(data: DataConfig, tasks: list[Piece], options: Options, target: str, workers: int,
           progress: bool):
  temporary = f'{target}.tmp-{socket.gethostname()}-{os.getpid()}'
  shutil.rmtree(temporary, ignore_errors=True)
  os.makedirs(temporary)
  try:
    results = _run(tasks, options, temporary, workers, progress)
    manifest = _manifest(data, tasks, options, results)
    _check_manifest(data, manifest)
    atomic.write_json(os.path.join(temporary, 'manifest.json'), manifest)
    os.rename(temporary, target)  # complete, or absent
  finally:
    shutil.rmtree(temporary, ignore_errors=True)


def _run(tasks: list[Piece], options: Options, directory: str, workers: int, progress: bool
         ) -> list[dict[str, Any]]:
  from tqdm import tqdm
  total = sum(_size(p) for p in tasks)
  workers = min(workers or _auto_workers(sum(_bytes(p) for p in tasks)), len(tasks))
  unit = 'rows' if tasks and tasks[0].format == 'hf' else 'B'
  bar = tqdm(total=total, unit=unit, unit_scale=True, desc=f'converting {len(tasks)} pieces',
             disable=not progress, leave=False)
  results = []
  try:
    if workers <= 1:
      for i, piece in enumerate(tasks):
        results.append(_convert_or_fail(i, piece, options, directory))
        bar.update(_size(piece))
      return results
    context = multiprocessing.get_context('spawn')  # forking a process that runs JAX is unsafe
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      futures = {pool.submit(_convert_or_fail, i, p, options, directory): p
                 for i, p in enumerate(tasks)}
      try:
        for future in concurrent.futures.as_completed(futures):
          results.append(future.result())
          bar.update(_size(futures[future]))
      except BaseException:
        for future in futures:
          future.cancel()
        raise
    return sorted(results, key=lambda r: r['index'])
  finally:
    bar.close()


def _convert_or_fail(index: int, piece: Piece, options: Options, directory: str
                     ) -> dict[str, Any]:
  """convert_piece, with a bad record as the one-line ConfigError a user reads."""
  try:
    return convert_piece(index, piece, options, directory)
  except BadRecord as e:
    field = 'dataset' if piece.format == 'hf' else (
        'eval_files' if piece.split == 'eval' else 'train_files')
    raise ConfigError(f'data.{field}: {e}; fix the record, or set data.skip_bad_records=True '
                      'to skip bad records (they are counted)') from None
  except OSError as e:
    raise ConfigError(f'data.train_files: cannot read {piece.path}: {e.strerror or e}') from None


SMALL_BYTES = 16 << 20  # converted in this process: starting workers would take longer


def _auto_workers(total_bytes: int) -> int:
  return 1 if total_bytes < SMALL_BYTES else os.cpu_count() or 1


def _bytes(piece: Piece) -> int:
  """Bytes a piece reads (of a Hugging Face dataset: none known; counted as large)."""
  return SMALL_BYTES if piece.format == 'hf' else _size(piece)


def _size(piece: Piece) -> int:
  """Bytes of a file's piece, rows of a Hugging Face dataset's."""
  end = piece.end if piece.end is not None else os.path.getsize(piece.path)
  return end - piece.start


def _manifest(data: DataConfig, tasks: list[Piece], options: Options,
              results: list[dict[str, Any]]) -> dict[str, Any]:
  splits = {}
  for split in ('train', 'eval'):
    shards = [shard_name(split, r['index']) for r in results if r['counts'][split]]
    splits[split] = {'shards': shards, 'examples': sum(r['counts'][split] for r in results)}
  labels = sorted({label for r in results for label in r['labels']}, key=repr)
  if all(isinstance(label, int) for label in labels):
    classes = [str(i) for i in range(max(labels, default=-1) + 1)]
  else:  # names: classes in sorted order (integers among names are names too)
    classes = sorted({str(label) for label in labels})
  stats = {p.path: os.stat(p.path) for p in tasks if p.format != 'hf'}
  return {
      'version': FORMAT_VERSION, 'kind': options.kind, 'options': dataclasses.asdict(options),
      'dataset': data.dataset, 'train_files': data.train_files, 'eval_files': data.eval_files,
      'files': [{'path': path, 'size': st.st_size, 'mtime_ns': st.st_mtime_ns}
                for path, st in sorted(stats.items())],
      'splits': splits, 'classes': classes if options.kind == 'labelled' else [],
      'skipped': sum(r['skipped'] for r in results),
      'skipped_examples': [m for r in results for m in r['reported']][:MAX_REPORTED],
  }


def _check_manifest(data: DataConfig, manifest: dict[str, Any]):
  train, held = manifest['splits']['train']['examples'], manifest['splits']['eval']['examples']
  if not train:
    what = (f'data.dataset={data.dataset!r}' if is_hf(data) else
            f'data.train_files={data.train_files!r}')
    raise ConfigError(f'{what} is invalid: the files hold no {manifest["kind"]} document to '
                      'train on')
  if not held:
    if data.eval_files:
      raise ConfigError(f'data.eval_files={data.eval_files!r} is invalid: the files hold no '
                        f'{manifest["kind"]} document')
    raise ConfigError(f'data.eval_fraction={data.eval_fraction} is invalid: it holds out none '
                      f'of the {train} documents; raise it or set data.eval_files')
  if manifest['skipped']:
    print(f'note: skipped {manifest["skipped"]} bad records (data.skip_bad_records); the first: '
          f'{manifest["skipped_examples"][0]}', flush=True)


def _note_changes(root: str, target: str, data: DataConfig):
  """Says which files changed since the newest conversion of the same globs, if there is one."""
  if is_hf(data):
    return
  previous = []
  for name in os.listdir(root):
    path = os.path.join(root, name, 'manifest.json')
    if name.startswith(f'{name_of(data)}-') and os.path.exists(path):
      with contextlib.suppress(OSError, ValueError):
        manifest = json.load(open(path))
        if (manifest.get('train_files'), manifest.get('eval_files')) == (
            data.train_files, data.eval_files):
          previous.append((os.path.getmtime(path), manifest, name))
  if not previous:
    return
  _, manifest, name = max(previous, key=lambda p: p[0])
  old = {f['path']: (f['size'], f['mtime_ns']) for f in manifest['files']}
  new = {}
  for field in ('train_files', 'eval_files'):
    for path in expand(field, getattr(data, field)) if getattr(data, field) else []:
      st = os.stat(path)
      new[path] = (st.st_size, st.st_mtime_ns)
  changed = [os.path.basename(p) for p in new if p in old and old[p] != new[p]]
  added = [os.path.basename(p) for p in new if p not in old]
  removed = [os.path.basename(p) for p in old if p not in new]
  what = '; '.join(f'{label}: {", ".join(names[:3])}{" ..." if len(names) > 3 else ""}'
                   for label, names in (('changed', changed), ('new', added),
                                        ('removed', removed)) if names)
  print(f'the files changed since {os.path.join(root, name)} ({what or "options differ"}): '
        f'converting them again', flush=True)


# --- Hugging Face datasets -----------------------------------------------------------------------

HF_PREFIX = 'hf:'
PIECE_ROWS = 100_000  # rows of a Hugging Face dataset per piece


def is_hf(data: DataConfig) -> bool:
  return data.dataset.startswith(HF_PREFIX)


def hf_name(dataset: str) -> tuple[str, str | None]:
  """(name or directory, configuration) of 'hf:NAME[:CONFIG]'."""
  name, _, config = dataset[len(HF_PREFIX):].partition(':')
  return name, config or None


def is_local(name: str) -> bool:
  return os.path.isdir(os.path.expanduser(name))


def _hf_library(dataset: str):
  try:
    import datasets as hf
  except ImportError:
    raise ConfigError(f'data.dataset={dataset!r} needs the datasets library: pip install '
                      "-e '.[interop]'") from None
  return hf


@functools.lru_cache(maxsize=4)
def _hf_load(dataset: str) -> dict[str, Any]:
  """{split: datasets.Dataset} of 'hf:NAME[:CONFIG]' (a directory: load_from_disk)."""
  hf, (name, config) = _hf_library(dataset), hf_name(dataset)
  hf.disable_progress_bars()
  try:
    if is_local(name):
      loaded = hf.load_from_disk(os.path.expanduser(name))
    else:
      loaded = hf.load_dataset(name, config)
  except Exception as e:  # noqa: BLE001 - not found, offline, not a dataset: one line
    raise ConfigError(f'data.dataset={dataset!r} is invalid: the datasets library cannot load '
                      f'it ({type(e).__name__}: {str(e).strip().splitlines()[0][:300]})'
                      ) from None
  return dict(loaded) if isinstance(loaded, dict) else {'train': loaded}


def hf_splits(data: DataConfig) -> tuple[str, str | None]:
  """(training split, evaluation split or None: hold out data.eval_fraction)."""
  tables = _hf_load(data.dataset)
  train = data.train_split or 'train'
  held = data.eval_split or next((s for s in ('validation', 'test') if s in tables), None)
  for field, split in (('train_split', train), ('eval_split', held)):
    if split is not None and split not in tables:
      raise ConfigError(f'data.{field}={split!r} is invalid: {data.dataset} has the splits '
                        f'{", ".join(tables)}')
  return train, held


def _hf_pieces(data: DataConfig) -> list[Piece]:
  tables, (train, held) = _hf_load(data.dataset), hf_splits(data)
  name = data.dataset[len(HF_PREFIX):]  # with its configuration
  out = []
  for table, split in ((train, 'train'), (held, 'eval')):
    if table is not None:
      rows = len(tables[table])
      out.extend(Piece(name, 'hf', '', start, min(start + PIECE_ROWS, rows), split, table)
                 for start in range(0, rows, PIECE_ROWS))
  return out


def _hf_fingerprint(data: DataConfig) -> list:
  """What identifies the dataset's content: a directory's files (paths, sizes, times), else the
  library's fingerprints of the splits read."""
  name = hf_name(data.dataset)[0]
  if is_local(name):
    root = os.path.abspath(os.path.expanduser(name))
    stats = []
    for directory, _, names in sorted(os.walk(root)):
      for n in sorted(names):
        st = os.stat(os.path.join(directory, n))
        stats.append([os.path.join(directory, n), st.st_size, st.st_mtime_ns])
    return stats
  tables = _hf_load(data.dataset)
  return [[data.dataset, split, tables[split]._fingerprint]
          for split in hf_splits(data) if split is not None]


def _hf_records(piece: Piece, options: Options) -> Iterator[Item]:
  table = _hf_load(HF_PREFIX + piece.path)[piece.table]
  columns = list(_fields(options).values())
  for column in columns:
    if column not in table.column_names:
      raise ConfigError(f'data.{_option_name(column, options)}={column!r} is invalid: it is not '
                        f'a column of {piece.path} (its columns: {", ".join(table.column_names)})')
  row = piece.start
  for batch in table.select(range(piece.start, piece.end)).select_columns(columns).iter(1024):
    for values in zip(*(batch[c] for c in columns)):
      row += 1
      yield _example(dict(zip(columns, values)), options,
                     lambda: f'{piece.path} {piece.table} row {row}')


# --- token ids (data.pretokenize) ----------------------------------------------------------------

TOKENS_VERSION = 1


def tokenize(directory: str, tokenizer: Any, workers: int = 0, progress: bool = True) -> str:
  """The token ids of a conversion, written once per tokenizer beside its text
  (`<directory>/tokens-<key>/`, the same shards): each text field as int32 ids (targets with
  `encode_target`), so that runs read ids instead of tokenising every epoch."""
  from transformer.data import tokenizers
  key = hashlib.sha256(f'{TOKENS_VERSION}:{tokenizers.fingerprint(tokenizer)}'.encode())
  target = os.path.join(directory, f'tokens-{key.hexdigest()[:12]}')
  if os.path.exists(os.path.join(target, 'done')):
    return target
  with open(os.path.join(directory, '.tokens.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if os.path.exists(os.path.join(target, 'done')):
      return target
    temporary = f'{target}.tmp-{socket.gethostname()}-{os.getpid()}'
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    try:
      manifest = read_manifest(directory)
      shards = [s for split in ('train', 'eval') for s in manifest['splits'][split]['shards']]
      _tokenize_shards(directory, temporary, shards, tokenizer, workers, progress)
      atomic.atomic_write(os.path.join(temporary, 'done'), tokenizers.fingerprint(tokenizer))
      os.rename(temporary, target)
    finally:
      shutil.rmtree(temporary, ignore_errors=True)
  return target


def _tokenize_shards(directory: str, temporary: str, shards: list[str], tokenizer: Any,
                     workers: int, progress: bool):
  from tqdm import tqdm
  size = sum(os.path.getsize(os.path.join(directory, s)) for s in shards)
  workers = min(workers or _auto_workers(size), len(shards))
  jobs = [(os.path.join(directory, s), os.path.join(temporary, s), tokenizer) for s in shards]
  with tqdm(total=len(shards), unit='shard', desc='tokenising', disable=not progress,
            leave=False) as bar:
    if workers <= 1:
      for job in jobs:
        _tokenize_shard(*job)
        bar.update(1)
      return
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      for future in concurrent.futures.as_completed([pool.submit(_tokenize_shard, *j)
                                                     for j in jobs]):
        future.result()
        bar.update(1)


def _tokenize_shard(source: str, destination: str, tokenizer: Any):
  import grain
  from array_record.python.array_record_module import ArrayRecordWriter
  records = grain.sources.ArrayRecordDataSource([source])
  writer = ArrayRecordWriter(destination, 'group_size:1')
  try:
    for i in range(len(records)):
      writer.write(pack_ids(json.loads(records[i]), tokenizer))
  finally:
    writer.close()


def pack_ids(example: dict[str, Any], tokenizer: Any) -> bytes:
  """A record of token ids: a JSON header line (the fields, their lengths, the label), then the
  ids as int32."""
  import numpy as np
  arrays = {key: (tokenizer.encode_target if key == 'targets' else tokenizer.encode)(
      example[key]) for key in ('text', 'inputs', 'targets') if key in example}
  header = {'keys': list(arrays), 'lengths': [len(a) for a in arrays.values()]}
  if 'label' in example:
    header['label'] = example['label']
  body = b''.join(np.asarray(a, np.int32).tobytes() for a in arrays.values())
  return json.dumps(header).encode() + b'\n' + body


def unpack_ids(record: bytes) -> dict[str, Any]:
  """{'text_ids': ids, ...} (and the raw label) of a `pack_ids` record."""
  import numpy as np
  head, _, body = record.partition(b'\n')
  header, ids, offset, out = json.loads(head), np.frombuffer(body, np.int32), 0, {}
  for key, length in zip(header['keys'], header['lengths']):
    out[f'{key}_ids'] = ids[offset:offset + length]
    offset += length
  if 'label' in header:
    out['label'] = header['label']
  return out


# --- reading --------------------------------------------------------------------------------------


def read_manifest(directory: str) -> dict[str, Any]:
  with open(os.path.join(directory, 'manifest.json')) as f:
    return json.load(f)


class Records:
  """Random access to the canonical examples of one split of a conversion; with `tokens` (a
  directory of `tokenize`), to their token ids ({'text_ids': ...}: see `pack_ids`)."""

  def __init__(self, directory: str, split: str, tokens: str | None = None):
    import grain
    self.manifest = read_manifest(directory)
    shards = [os.path.join(tokens or directory, s)
              for s in self.manifest['splits'][split]['shards']]
    self._source = grain.sources.ArrayRecordDataSource(shards)
    self._read = unpack_ids if tokens else json.loads
    self._class = {name: i for i, name in enumerate(self.manifest['classes'])}

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self._read(self._source[index])
    if 'label' in example:
      example['label'] = self._class[str(example['label'])]
    return example

  def __repr__(self) -> str:  # grain prints its sources
    return f'Records({len(self)} examples)'
