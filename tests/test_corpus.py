"""Your own files (data.dataset='files'): every format and unit read as a plain Python reading
of the same files reads them, every task kind batched, the held-out split by content, reuse and
change detection, pieces and workers that change nothing, and bad records named by file and
line."""

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from transformer import presets
from transformer.config import Experiment
from transformer.data import corpus, datasets, pipeline, tokenizers
from transformer.errors import ConfigError
from transformer.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ('the quick brown fox jumps over a lazy dog while seven wise owls sing of ünïcode and '
         'snow').split()


def sentence(rng, n):
  return ' '.join(rng.choice(WORDS) for _ in range(n))


def data_config(tmp_path, train_files, family='decoder_only', head=None, **fields):
  config = presets.get_config(family, 'tiny')
  fields = {'data_dir': str(tmp_path / 'dd'), 'batch_size': 4, 'seq_len': 64, 'prefetch': 0,
            **fields}
  config.data.update(dataset='files', train_files=str(train_files), **fields)
  if head:
    config.model.head = head
  return config


def experiment_of(config):
  experiment = Experiment.from_config(config)
  pipeline.check_data(experiment)
  pipeline.prepare_data(experiment)
  return experiment


def read_all(config, split='train'):
  data = Experiment.from_config(config).data
  source = datasets.open_split(data, split)
  return [source[i] for i in range(len(source))]


def both_splits(config):
  return read_all(config, 'train') + read_all(config, 'eval')


def texts(examples):
  return sorted(e['text'] for e in examples)


# --- formats and units --------------------------------------------------------------------------


@pytest.fixture
def text_files(tmp_path):
  """Two plain-text files of paragraphs (with CRLF, blank runs and a last line without a
  newline), and what a plain Python reading finds in them."""
  rng = random.Random(0)
  contents = []
  for name in ('a.txt', 'b.txt'):
    paragraphs = ['\n'.join(sentence(rng, 8) for _ in range(rng.randint(1, 3)))
                  for _ in range(40)]
    content = '\n\n\n'.join(paragraphs[:20]) + '\n\n' + '\n\n'.join(paragraphs[20:])
    (tmp_path / name).write_text(content, encoding='utf-8')
    contents.append(content)
  return tmp_path, contents


@pytest.mark.parametrize('unit', ['file', 'paragraph', 'line'])
def test_plain_text_documents_are_files_paragraphs_or_lines(text_files, unit):
  directory, contents = text_files
  config = data_config(directory, directory / '*.txt', text_unit=unit, eval_fraction=0.2)
  if unit == 'file':
    expected = contents
  elif unit == 'paragraph':
    expected = [p.strip('\n') for c in contents for p in c.split('\n\n') if p.strip()]
  else:
    expected = [line for c in contents for line in c.splitlines() if line.strip()]
  assert texts(both_splits(config)) == sorted(expected)


def test_json_lines_plain_gzip_and_zstandard_give_the_same_records(tmp_path):
  rng = random.Random(1)
  records = [{'body': sentence(rng, 12), 'id': i} for i in range(200)]
  lines = ''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in records)
  (tmp_path / 'plain.jsonl').write_text(lines, encoding='utf-8')
  with gzip.open(tmp_path / 'gz.jsonl.gz', 'wt', encoding='utf-8') as f:
    f.write(lines)
  (tmp_path / 'zst.jsonl.zst').write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
  expected = sorted(r['body'] for r in records)
  for name in ('plain.jsonl', 'gz.jsonl.gz', 'zst.jsonl.zst'):
    config = data_config(tmp_path, tmp_path / name, text_field='body', eval_fraction=0.1)
    assert texts(both_splits(config)) == expected, name


def test_parquet_pairs_and_labels(tmp_path):
  rng = random.Random(2)
  rows = {'en': [sentence(rng, 5) for _ in range(120)], 'de': [sentence(rng, 6) for _ in
                                                               range(120)]}
  rows['stars'] = [rng.choice(['good', 'bad', 'meh']) for _ in range(120)]
  pq.write_table(pa.table(rows), tmp_path / 'rows.parquet', row_group_size=50)
  pairs = data_config(tmp_path, tmp_path / 'rows.parquet', 'encoder_decoder', source_field='en',
                      target_field='de', eval_fraction=0.2)
  got = sorted((e['inputs'], e['targets']) for e in both_splits(pairs))
  assert got == sorted(zip(rows['en'], rows['de']))
  labelled = data_config(tmp_path, tmp_path / 'rows.parquet', 'encoder_only', 'classify',
                         text_field='en', label_field='stars', eval_fraction=0.2)
  labelled.model.num_classes = 3
  experiment_of(labelled)
  classes = ['bad', 'good', 'meh']  # names: classes in sorted order
  got = sorted((e['text'], classes[e['label']]) for e in both_splits(labelled))
  assert got == sorted(zip(rows['en'], rows['stars']))


@pytest.fixture
def jsonl_corpus(tmp_path):
  rng = random.Random(3)
  with open(tmp_path / 'train.jsonl', 'w') as f:
    for i in range(300):
      f.write(json.dumps({'text': sentence(rng, 20), 'label': i % 2,
                          'q': sentence(rng, 3), 'a': sentence(rng, 2)}) + '\n')
  return tmp_path


@pytest.mark.parametrize('family,head,fields,keys', [
    ('decoder_only', None, {}, {'inputs', 'targets', 'weights', 'segment_ids', 'positions'}),
    ('encoder_only', 'mlm', {}, {'inputs', 'targets', 'weights', 'segment_ids', 'positions'}),
    ('decoder_only', None, {'source_field': 'q', 'target_field': 'a'},  # prompt -> answer
     {'inputs', 'targets', 'weights', 'segment_ids', 'positions'}),
    ('encoder_decoder', None, {'source_field': 'q', 'target_field': 'a'},
     {'inputs', 'decoder_inputs', 'targets', 'weights', 'inputs_segment_ids',
      'targets_segment_ids', 'inputs_positions', 'targets_positions'}),
    ('encoder_only', 'classify', {'label_field': 'label'},
     {'inputs', 'label', 'weights', 'segment_ids', 'positions'}),
])
def test_every_task_kind_batches_from_files(jsonl_corpus, family, head, fields, keys):
  config = data_config(jsonl_corpus, jsonl_corpus / 'train.jsonl', family, head, **fields)
  experiment = experiment_of(config)
  for which in ('train', 'eval'):
    batch = next(iter(pipeline.make_dataset(experiment, which, tokenizers.ByteTokenizer())))
    assert set(batch) == keys
    assert batch['weights'].sum() > 0
  if head == 'classify':  # labels are the file's
    source = datasets.open_split(experiment.data, 'train')
    lines = [json.loads(line) for line in open(jsonl_corpus / 'train.jsonl')]
    by_text = {r['text']: r['label'] for r in lines}
    assert all(source[i]['label'] == by_text[source[i]['text']] for i in range(len(source)))


# --- the held-out split, reuse, changes, pieces and workers --------------------------------------


def test_held_out_documents_follow_their_content_not_the_files(tmp_path):
  rng = random.Random(4)
  docs = [sentence(rng, 10) + f' {i}' for i in range(2000)]
  (tmp_path / 'one').mkdir()
  (tmp_path / 'one' / 'all.txt').write_text('\n'.join(docs))
  (tmp_path / 'two').mkdir()
  shuffled = rng.sample(docs, len(docs))
  (tmp_path / 'two' / 'x.txt').write_text('\n'.join(shuffled[:700]))
  (tmp_path / 'two' / 'y.txt').write_text('\n'.join(shuffled[700:]))
  held = []
  for folder in ('one', 'two'):
    config = data_config(tmp_path, tmp_path / folder / '*.txt', text_unit='line',
                         eval_fraction=0.1)
    held.append(texts(read_all(config, 'eval')))
    assert not set(held[-1]) & set(texts(read_all(config, 'train')))
  assert held[0] == held[1]
  assert 200 - 4 * 13.4 < len(held[0]) < 200 + 4 * 13.4  # binomial(2000, 0.1): sd 13.4


def test_a_conversion_is_reused_and_a_changed_file_is_converted_again(tmp_path, capsys):
  (tmp_path / 'a.txt').write_text('first document\n\nsecond one\n\nthird\n\nfourth')
  (tmp_path / 'b.txt').write_text('another file\n\nwith two paragraphs')
  config = data_config(tmp_path, tmp_path / '*.txt', text_unit='paragraph', eval_fraction=0.5)
  data = Experiment.from_config(config).data
  first = datasets.convert_files(data, progress=False)
  stamp = os.stat(os.path.join(first, 'manifest.json')).st_mtime_ns
  assert datasets.convert_files(data, progress=False) == first  # reused, not rebuilt
  assert os.stat(os.path.join(first, 'manifest.json')).st_mtime_ns == stamp
  (tmp_path / 'b.txt').write_text('another file\n\nwith three\n\nparagraphs now')
  second = datasets.convert_files(data, progress=False)
  assert second != first
  assert 'the files changed since' in capsys.readouterr().out
  assert 'paragraphs now' in texts(read_all(config) + read_all(config, 'eval'))
  assert 'with two paragraphs' not in texts(read_all(config) + read_all(config, 'eval'))


def test_pieces_and_workers_change_nothing_and_lines_are_counted_in_the_file(tmp_path,
                                                                             monkeypatch):
  rng = random.Random(5)
  for name in ('a', 'b', 'c'):
    with open(tmp_path / f'{name}.jsonl', 'w') as f:
      for i in range(150):
        f.write(json.dumps({'text': f'{name}{i} ' + sentence(rng, rng.randint(1, 30))}) + '\n')
  config = data_config(tmp_path, tmp_path / '*.jsonl', eval_fraction=0.2)
  whole = read_all(config), read_all(config, 'eval')
  data = Experiment.from_config(config).data
  monkeypatch.setattr(corpus, 'PIECE_BYTES', 997)  # pieces that start and end mid-line
  tasks = corpus.pieces(data)
  assert len(tasks) > 20 and any(t.start for t in tasks)
  directory = corpus.convert(data, str(tmp_path / 'pieces'), workers=2, progress=False)
  split = corpus.Records(directory, 'train'), corpus.Records(directory, 'eval')
  assert [[s[i] for i in range(len(s))] for s in split] == list(whole)  # the same, in order
  # a bad record in a later piece is named by its line in the file
  lines = open(tmp_path / 'b.jsonl').read().splitlines()
  lines[120] = '{"text": oops}'
  (tmp_path / 'b.jsonl').write_text('\n'.join(lines) + '\n')
  with pytest.raises(ConfigError, match=rf'{tmp_path}/b.jsonl line 121: invalid JSON'):
    corpus.convert(data, str(tmp_path / 'pieces'), workers=2, progress=False)
  assert not [n for n in os.listdir(tmp_path / 'pieces' / 'files') if '.tmp-' in n]


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize('content,fields,message', [
    (b'{"text": "a"}\n{"text": "b",}\n', {}, r'x.jsonl line 2: invalid JSON'),
    (b'{"text": "a"}\n\n{"body": "b"}\n', {}, r"x.jsonl line 3: no field 'text' "
                                              r'\(data.text_field\); its fields: body'),
    (b'{"text": "a"}\n[1, 2]\n', {}, r'x.jsonl line 2: a record must be an object'),
    (b'{"text": 5}\n', {}, r"x.jsonl line 1: field 'text' is int, not text"),
    (b'{"text": "a", "y": -1}\n', {'label_field': 'y'}, r'line 1: label -1 is not a class'),
    (b'{"text": "caf\xe9"}\n', {}, r'x.jsonl line 1: not UTF-8 \(byte 0xe9 at column 14\)'),
])
def test_a_bad_record_is_named_by_file_and_line(tmp_path, content, fields, message):
  (tmp_path / 'x.jsonl').write_bytes(content)
  family, head = ('encoder_only', 'classify') if 'label_field' in fields else ('decoder_only',
                                                                               None)
  config = data_config(tmp_path, tmp_path / 'x.jsonl', family, head, **fields)
  with pytest.raises(ConfigError, match=message):
    experiment_of(config)
  assert all(n.endswith('.lock') for n in os.listdir(tmp_path / 'dd' / 'files'))  # nothing else


def test_non_utf8_text_names_the_line_and_bad_records_can_be_skipped(tmp_path, capsys):
  (tmp_path / 't.txt').write_bytes(b'good line\nbad \xff line\nanother good line\nand more\n')
  config = data_config(tmp_path, tmp_path / 't.txt', text_unit='line', eval_fraction=0.5)
  with pytest.raises(ConfigError, match=r't.txt line 2: not UTF-8 \(byte 0xff at column 5\); '
                                        r'fix the record, or set data.skip_bad_records=True'):
    experiment_of(config)
  config.data.skip_bad_records = True
  experiment_of(config)
  assert 'skipped 1 bad records' in capsys.readouterr().out
  assert texts(both_splits(config)) == ['and more', 'another good line', 'good line']


@pytest.mark.parametrize('files,fields,message', [
    ('nothing/*.txt', {}, r"data.train_files='\S+nothing/\*.txt' is invalid: '\S+' matches no "
                          r'file'),
    ('x.csv', {}, r'x.csv is not a file the conversion reads: its name must end in .txt'),
    ('t.txt', {'source_field': 'q', 'target_field': 'a'},
     r't.txt is plain text, which holds text only: pairs data needs JSON Lines or Parquet'),
    ('p.parquet', {'text_field': 'body'}, r"data.text_field='body' is invalid: it is not a "
                                          r'column of \S+p.parquet \(its columns: text\)'),
    ('t.txt', {'source_field': 'q'}, r'data.target_field=.* must be set too'),
    ('empty.jsonl', {}, r'the files hold no text document to train on'),
    ('t.txt', {'eval_fraction': 1e-9}, r'data.eval_fraction=1e-09 is invalid: it holds out none'),
])
def test_bad_files_input_gives_one_line(tmp_path, files, fields, message):
  (tmp_path / 'x.csv').write_text('a,b\n')
  (tmp_path / 't.txt').write_text('one\n')
  (tmp_path / 'empty.jsonl').write_text('\n{"text": "  "}\n')
  pq.write_table(pa.table({'text': ['a']}), tmp_path / 'p.parquet')
  config = data_config(tmp_path, tmp_path / files, **fields)
  with pytest.raises(ConfigError, match=message):
    experiment_of(config)


def test_the_task_and_the_classes_must_suit_the_files(jsonl_corpus):
  config = data_config(jsonl_corpus, jsonl_corpus / 'train.jsonl', 'encoder_decoder')
  with pytest.raises(ConfigError, match='the fields named make text data; it needs pairs data '
                                        r'\(set data.source_field and data.target_field\)'):
    experiment_of(config)
  config = data_config(jsonl_corpus, jsonl_corpus / 'train.jsonl', 'encoder_only', 'classify',
                       label_field='label')
  config.model.num_classes = 3
  with pytest.raises(ConfigError, match='model.num_classes=3 is invalid: data.train_files hold '
                                        '2 classes'):
    experiment_of(config)


def test_a_run_converts_its_files_and_the_command_names_a_bad_record_in_one_line(tmp_path):
  rng = random.Random(6)
  (tmp_path / 'c.jsonl').write_text(''.join(json.dumps({'text': sentence(rng, 30)}) + '\n'
                                            for _ in range(200)))
  config = data_config(tmp_path, f'{tmp_path}/*.jsonl', seq_len=32)
  config.train.update(num_steps=4, eval_every=4, eval_batches=1, log_every=2)
  summary = loop.train_and_evaluate(config, str(tmp_path / 'run'), devices=jax.devices()[:1])
  assert np.isfinite(summary['final_eval_loss']) and summary['steps'] == 4
  with open(tmp_path / 'c.jsonl', 'a') as f:
    f.write('{"text": "unterminated\n')
  command = [sys.executable, '-m', 'transformer.train', f'--workdir={tmp_path / "run"}',
             '--config=configs/decoder_only.py:tiny', '--config.data.dataset=files',
             f'--config.data.train_files={tmp_path}/*.jsonl',
             f'--config.data.data_dir={tmp_path}/dd', '--config.train.num_steps=8']
  bad = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2
  assert [line for line in bad.stderr.splitlines() if '%|' not in line and line.strip()] == [
      f'error: data.train_files: {tmp_path}/c.jsonl line 201: invalid JSON (Unterminated '
      'string starting at column 10); fix the record, or set data.skip_bad_records=True to '
      'skip bad records (they are counted)'], bad.stderr[-2000:]


def test_an_interrupted_conversion_is_never_taken_for_complete(tmp_path):
  rng = random.Random(7)
  with open(tmp_path / 'big.jsonl', 'w') as f:
    for _ in range(30_000):
      f.write(json.dumps({'text': sentence(rng, 40)}) + '\n')
  command = [sys.executable, '-m', 'transformer.data', '--prepare',
             '--config=configs/decoder_only.py:tiny', '--config.data.dataset=files',
             f'--config.data.train_files={tmp_path}/big.jsonl',
             f'--config.data.data_dir={tmp_path}']
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  root = tmp_path / 'files'
  deadline = time.time() + 120
  while time.time() < deadline and not (root.exists() and any(
      list((root / n).iterdir()) for n in os.listdir(root) if '.tmp-' in n)):
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)  # while the shards are written
  process.wait()
  assert not [n for n in os.listdir(root) if not n.startswith('.') and '.tmp-' not in n]
  config = data_config(tmp_path, tmp_path / 'big.jsonl', data_dir=str(tmp_path))
  assert len(read_all(config)) + len(read_all(config, 'eval')) == 30_000  # converted again


# --- Hugging Face datasets (the interop extra; nothing downloads) --------------------------------


@pytest.fixture
def saved_hf(tmp_path):
  hf = pytest.importorskip('datasets')
  hf.disable_progress_bars()
  rng = random.Random(8)
  rows = {split: {'question': [sentence(rng, 6) for _ in range(n)],
                  'answer': [sentence(rng, 3) for _ in range(n)],
                  'label': [rng.randint(0, 2) for _ in range(n)]}
          for split, n in (('train', 150), ('validation', 30))}
  hf.DatasetDict({k: hf.Dataset.from_dict(v) for k, v in rows.items()}).save_to_disk(
      tmp_path / 'saved')
  hf.Dataset.from_dict(rows['train']).save_to_disk(tmp_path / 'single')
  return tmp_path, rows


def test_a_saved_hugging_face_dataset_converts_like_files(saved_hf):
  tmp_path, rows = saved_hf
  config = data_config(tmp_path, '', 'encoder_decoder', source_field='question',
                       target_field='answer')
  config.data.dataset = f'hf:{tmp_path}/saved'
  experiment_of(config)
  for split, name in (('train', 'train'), ('eval', 'validation')):  # its own validation split
    got = sorted((e['inputs'], e['targets']) for e in read_all(config, split))
    assert got == sorted(zip(rows[name]['question'], rows[name]['answer']))
  labelled = data_config(tmp_path, '', 'encoder_only', 'classify', text_field='question',
                         label_field='label', eval_fraction=0.2)
  labelled.data.dataset = f'hf:{tmp_path}/single'  # one split: documents held out by hash
  labelled.model.num_classes = 3
  experiment_of(labelled)
  got = sorted((e['text'], e['label']) for e in both_splits(labelled))
  assert got == sorted(zip(rows['train']['question'], rows['train']['label']))
  assert 0 < len(read_all(labelled, 'eval')) < 75


def test_hugging_face_input_errors_are_one_line(saved_hf, monkeypatch):
  tmp_path, _ = saved_hf
  config = data_config(tmp_path, '', text_field='body')
  config.data.dataset = f'hf:{tmp_path}/saved'
  with pytest.raises(ConfigError, match=r"data.text_field='body' is invalid: it is not a column "
                                        r'of \S+saved \(its columns: question, answer, label\)'):
    experiment_of(config)
  config.data.update(text_field='question', eval_split='dev')
  with pytest.raises(ConfigError, match="data.eval_split='dev' is invalid: .* has the splits "
                                        'train, validation'):
    experiment_of(config)
  config.data.update(dataset=f'hf:{tmp_path}/missing', eval_split='')
  with pytest.raises(ConfigError, match='missing is not a directory'):
    experiment_of(config)
  config.data.dataset = 'hf:no-such-dataset-here'
  monkeypatch.setattr(datasets, 'HF_NETWORK_PROBE', 'hub.invalid:443')  # offline, in seconds
  for variable in datasets.HF_OFFLINE:
    monkeypatch.delenv(variable, raising=False)
  start = time.time()
  with pytest.raises(ConfigError, match='no network: hub.invalid:443 cannot be reached'):
    experiment_of(config)
  assert time.time() - start < 15
  monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')  # the cache only: not there
  import datasets as hf
  import huggingface_hub
  monkeypatch.setattr(hf.config, 'HF_HUB_OFFLINE', True)  # as the variable does at import
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
  with pytest.raises(ConfigError, match="data.dataset='hf:no-such-dataset-here' is invalid: the "
                                        'datasets library cannot load it'):
    experiment_of(config)


# --- token ids stored once (data.pretokenize) ----------------------------------------------------


@pytest.mark.parametrize('family,head,fields', [
    ('decoder_only', None, {}),
    ('encoder_decoder', None, {'source_field': 'q', 'target_field': 'a'}),
    ('encoder_only', 'classify', {'label_field': 'label'}),
])
def test_stored_token_ids_give_the_batches_of_tokenising_on_the_fly(jsonl_corpus, family, head,
                                                                    fields):
  config = data_config(jsonl_corpus, jsonl_corpus / 'train.jsonl', family, head,
                       tokenizer='sentencepiece', vocab_size=64, spm_type='bpe', eval_fraction=0.1,
                       **fields)

  def batches(pretokenize, which):
    config.data.pretokenize = pretokenize
    experiment = experiment_of(config)
    tokenizer = pipeline.get_tokenizer(experiment)
    experiment = pipeline.with_vocab(experiment, tokenizer)
    iterator = iter(pipeline.make_dataset(experiment, which, tokenizer))
    out = [next(iterator) for _ in range(3 if which == 'train' else 1)]
    iterator.close()
    return out

  for which in ('train', 'eval'):
    on_the_fly, stored = batches(False, which), batches(True, which)
    for a, b in zip(on_the_fly, stored):
      assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  conversion = datasets.convert_files(Experiment.from_config(config).data, progress=False)
  [tokens] = [n for n in os.listdir(conversion) if n.startswith('tokens-')]
  done = os.path.join(conversion, tokens, 'done')
  stamp = os.stat(done).st_mtime_ns
  batches(True, 'train')  # reused
  assert os.stat(done).st_mtime_ns == stamp
  config.data.vocab_size = 72  # another tokenizer: other ids
  batches(True, 'train')
  assert len([n for n in os.listdir(conversion) if n.startswith('tokens-')]) == 2


def test_pretokenize_is_only_for_converted_data():
  config = presets.get_config('decoder_only', 'tiny')
  config.data.pretokenize = True
  with pytest.raises(ConfigError, match="data.pretokenize=True is invalid: it is only for the "
                                        "datasets converted here"):
    Experiment.from_config(config)


def test_a_classifier_of_files_names_its_classes_as_written(tmp_path):
  from transformer.inference import encoder, trained
  rng = random.Random(5)
  with open(tmp_path / 'reviews.jsonl', 'w') as f:
    for i in range(60):
      f.write(json.dumps({'text': sentence(rng, 8), 'mood': ['pos', 'neg', 'mixed'][i % 3]})
              + '\n')
  config = data_config(tmp_path, tmp_path / 'reviews.jsonl', 'encoder_only', 'classify',
                       label_field='mood')
  config.model.num_classes = 3
  experiment = experiment_of(config)
  run = trained.Trained(workdir=str(tmp_path), config=experiment, params={}, step=0)
  assert encoder.class_names(run) == ['mixed', 'neg', 'pos']  # the conversion sorts them
