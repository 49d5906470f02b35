"""The data layer, offline: TFDS paths under mock_data, the embedded corpus, tokenizers,
synthetic tasks, packing, masking, order, resume and per-host shards."""

import collections
import functools
import json
import os
import pickle
import re
import subprocess
import sys
import tarfile

import jax
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from transformer import presets
from transformer.config import Experiment, ModelConfig
from transformer.data import datasets, pipeline, synthetic, tokenizers
from transformer.errors import ConfigError
from transformer.model import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BYTES = tokenizers.ByteTokenizer()


def make_config(family='decoder_only', dataset='shakespeare', data_dir='', head=None, **data):
  config = presets.get_config(family, 'tiny')
  config.data.update(dataset=dataset, data_dir=data_dir, batch_size=4, seq_len=64, prefetch=2)
  config.data.update(data)
  if head:
    config.model.head = head
  return config


def check_data(config):
  """The validation a run does before it starts: the sections, then what the dataset holds."""
  pipeline.check_data(Experiment.from_config(config))


def take(config, n, which='train', tokenizer=BYTES, **shard):
  iterator = iter(pipeline.make_dataset(Experiment.from_config(config), which, tokenizer, **shard))
  batches = [next(iterator) for _ in range(n)]
  iterator.close()
  return batches


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# --- TFDS datasets under mock_data -----------------------------------------------------------


MOCKED = [  # (dataset, family, head, expected task)
    ('tiny_shakespeare', 'decoder_only', None, 'lm'),
    ('lm1b', 'encoder_only', 'mlm', 'mlm'),
    ('wmt14_translate/de-en', 'encoder_decoder', None, 'seq2seq'),
    ('wmt17_translate/de-en', 'decoder_only', None, 'lm'),
    ('imdb_reviews', 'encoder_only', 'classify', 'classify'),
    ('glue/sst2', 'encoder_only', 'classify', 'classify'),
]


@pytest.mark.parametrize('dataset,family,head,task', MOCKED)
def test_tfds_datasets_through_grain_under_mock_data(tmp_path, dataset, family, head, task):
  config = make_config(family, dataset, str(tmp_path), head, pack=False)
  pipeline.check_data(Experiment.from_config(config))
  assert Experiment.from_config(config).task == task
  with tfds.testing.mock_data(num_examples=16):
    for which in ('train', 'eval'):
      (batch,) = take(config, 1, which)
      B, T = 4, 64
      assert batch['inputs'].shape == (B, T) and batch['inputs'].dtype == np.int32
      assert batch['weights'].sum() > 0
      text = BYTES.decode(batch['inputs'][0])
      assert re.search(r'[a-j]{3}', text), text  # mock_data's random letters came through
      if task == 'classify':
        assert set(batch['label'].tolist()) <= {0, 1} and batch['weights'].shape == (B,)
        lengths = (batch['inputs'] != BYTES.pad_id).sum(1)  # <bos> text <eos>, <eos> kept if cut
        assert (batch['inputs'][:, 0] == BYTES.bos_id).all()
        assert (batch['inputs'][np.arange(B), lengths - 1] == BYTES.eos_id).all()
      if task == 'seq2seq':
        assert batch['decoder_inputs'].shape == (B, T)


def test_classification_rows_keep_eos_when_the_text_is_cut():
  row = pipeline.ClassifyExample(BYTES, 6).map({'text': 'abcdefgh', 'label': 1})
  assert row['inputs'].tolist() == [BYTES.bos_id, *b'abcd', BYTES.eos_id]
  row = pipeline.ClassifyExample(BYTES, 8).map({'text': 'ab', 'label': 0})
  assert row['inputs'].tolist() == [BYTES.bos_id, *b'ab', BYTES.eos_id, 0, 0, 0, 0]
  assert row['inputs_segment_ids'].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


# --- the embedded corpus -----------------------------------------------------------------------


def test_embedded_corpus_splits_every_work_deterministically(data_dir):
  """Counted independently from the shipped texts: every passage is in exactly one split, and
  validation is the last 10% of each work."""
  expected = {'train': collections.Counter(), 'validation': collections.Counter()}
  with tarfile.open(os.path.join(ROOT, 'transformer/data/shakespeare/texts.tar.xz')) as tar:
    names = tar.getnames()
    for member in tar.getmembers():
      work = member.name[:-len('_gut.txt')]
      paragraphs = [p.strip('\n') for p in tar.extractfile(member).read().decode().split('\n\n')
                    if p.strip()]
      n_val = max(1, round(0.1 * len(paragraphs)))
      expected['train'].update((work, p) for p in paragraphs[:-n_val])
      expected['validation'].update((work, p) for p in paragraphs[-n_val:])
  assert len(names) == 42
  for split, counts in expected.items():
    source = tfds.data_source('shakespeare_corpus', split=split, data_dir=data_dir)
    got = collections.Counter((datasets.as_text(r['work']), datasets.as_text(r['text']))
                              for r in source)
    assert got == counts
  assert sum(expected['train'].values()) > 30_000 and sum(expected['validation'].values()) > 3000


def test_default_experiment_reads_the_embedded_corpus(data_dir):
  config = presets.get_config('decoder_only', 'tiny')
  config.data.data_dir = data_dir
  (batch,) = take(config, 1)
  assert batch['inputs'].shape == (config.data.batch_size, config.data.seq_len)
  assert re.search(r'[A-Z]{3,}\.', BYTES.decode(batch['inputs'].ravel()))  # 'HAMLET.' etc.


# --- tokenizers ----------------------------------------------------------------------------------


def test_byte_tokenizer_round_trips_and_reserves_control_bytes():
  text = 'To be, or not to be — ça va?\n'
  ids = BYTES.encode(text)
  assert ids.dtype == np.int32 and ids.max() < 256 and len(ids) == len(text.encode())
  assert BYTES.decode(ids) == text
  assert BYTES.decode(BYTES.encode('a\x02b\x1ac')) == 'abc'  # special bytes never enter text
  assert BYTES.decode([BYTES.bos_id, *ids, BYTES.eos_id, BYTES.pad_id]) == text


@pytest.fixture(scope='session')
def spm_config(tmp_path_factory):
  """SentencePiece trained on the corpus and cached in this worker's own data directory (the
  tests watch the cached file, which another worker must not replace)."""
  data_dir = str(tmp_path_factory.mktemp('spm_data'))
  datasets.build_embedded('shakespeare_corpus', data_dir)
  return make_config(data_dir=data_dir, tokenizer='sentencepiece', vocab_size=300,
                     spm_examples=3000)


def test_sentencepiece_is_trained_once_cached_and_read_back(spm_config):
  tokenizer = pipeline.get_tokenizer(Experiment.from_config(spm_config))
  path = tokenizer.model_path
  assert path.startswith(spm_config.data.data_dir) and tokenizer.vocab_size == 300
  mtime = os.path.getmtime(path)
  assert pipeline.get_tokenizer(Experiment.from_config(spm_config)).model_path == path
  assert os.path.getmtime(path) == mtime  # reused, not retrained
  experiment = pipeline.with_vocab(Experiment.from_config(spm_config), tokenizer)
  assert experiment.model.vocab_size == 300
  text = 'Now is the winter of our discontent'
  assert tokenizer.decode(tokenizer.encode(text)) == text
  assert len(tokenizer.encode(text)) < len(text) / 2  # pieces, not characters
  assert {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id} == {0, 2, 3}
  assert pickle.loads(pickle.dumps(tokenizer)).encode(text).tolist() == (
      tokenizer.encode(text).tolist())


def test_sentencepiece_specials_cannot_come_from_text_and_layout_survives(spm_config):
  tokenizer = pipeline.get_tokenizer(Experiment.from_config(spm_config))
  ids = tokenizer.encode('a <mask> b <sep> c').tolist()
  assert tokenizer.mask_id not in ids and tokenizer.sep_id not in ids
  text = 'KING.\nNow  is the winter'
  assert tokenizer.decode(tokenizer.encode(text)) == text  # newlines and spaces kept


def test_sentencepiece_cache_is_keyed_by_what_shapes_it(spm_config):
  other = spm_config.copy_and_resolve_references()
  other.data.spm_examples = 2000
  paths = {tokenizers.sentencepiece_cache_path(c.data.data_dir, c.data.dataset, c.data.vocab_size,
                                               c.data.spm_type, c.data.spm_examples,
                                               c.data.train_split)
           for c in (spm_config, other)}
  assert len(paths) == 2


def test_a_sentencepiece_model_without_our_specials_is_rejected(tmp_path):
  import sentencepiece as spm
  texts = ['the quick brown fox jumps over the lazy dog'] * 50
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(tmp_path / 'p'),
                                 vocab_size=30, minloglevel=2)
  with pytest.raises(ConfigError, match=r'lacks the pieces pad, <sep>, <mask>'):
    tokenizers.load_sentencepiece(str(tmp_path / 'p.model'), 0)
  (tmp_path / 'text.model').write_text('not a model')
  with pytest.raises(ConfigError, match='not a SentencePiece model'):
    tokenizers.load_sentencepiece(str(tmp_path / 'text.model'), 0)


def test_a_given_sentencepiece_model_must_match_the_config(spm_config):
  path = pipeline.get_tokenizer(Experiment.from_config(spm_config)).model_path
  assert tokenizers.load_sentencepiece(path, 300).vocab_size == 300
  assert tokenizers.load_sentencepiece(path, 0).vocab_size == 300
  with pytest.raises(ConfigError, match=r'data\.vocab_size=512 .*has 300 pieces'):
    tokenizers.load_sentencepiece(path, 512)
  with pytest.raises(ConfigError, match=r"data\.spm_model='/no/such\.model' .*no such file"):
    tokenizers.load_sentencepiece('/no/such.model', 300)


# --- synthetic tasks -----------------------------------------------------------------------------


@pytest.mark.parametrize('task', synthetic.TASKS)
def test_synthetic_tasks_are_correct_and_deterministic(task):
  source = synthetic.SyntheticTask(task, 'train', length=12, distance=20)
  pair_positions = set()
  for i in range(300):
    ex = source[i]
    x, y = ex['inputs'], ex['targets']
    longest = synthetic.max_lengths(task, 12, 20)
    assert len(x) <= longest[0] and len(y) <= longest[1]
    if task == 'copy':
      assert y == x and 1 <= len(x) <= 12
    elif task == 'reverse':
      assert y == x[::-1]
    elif task == 'sort':
      assert y == ''.join(sorted(x))
    elif task == 'addition':
      a, b = x.split('+')
      assert int(y) == int(a) + int(b) and max(len(a), len(b)) <= 12
    else:  # the queried key occurs once before the query, 20 characters before it ends
      key = x[-1]
      assert x[-2] == '?' and x[:-2].count(key) == 1
      p = x.index(key)
      assert x[p + 1] == y and len(x) - 2 - (p + 2) == 20
      pair_positions.add(p)
  if task == 'recall':
    assert len(pair_positions) > 5  # the answer is not at a fixed position
  assert source[5] == synthetic.SyntheticTask(task, 'train', 12, 20)[5]


@pytest.mark.parametrize('task,length', [('addition', 2), ('sort', 3), ('copy', 2)])
def test_synthetic_train_and_eval_never_share_an_example(task, length):
  """Even where the space of examples is small enough for every one to be drawn."""
  train = {synthetic.SyntheticTask(task, 'train', length, 4)[i]['inputs'] for i in range(3000)}
  evals = {synthetic.SyntheticTask(task, 'eval', length, 4)[i]['inputs'] for i in range(300)}
  assert train and evals and not train & evals


def test_synthetic_examples_must_fit_the_row():
  with pytest.raises(ConfigError, match=r'data\.seq_len=32 .*longest recall example needs '
                                        r'\d+ tokens.*data\.recall_distance'):
    check_data(make_config(dataset='recall', seq_len=32, recall_distance=30))
  with pytest.raises(ConfigError, match=r'longest copy example.*data\.synthetic_len'):
    check_data(make_config('encoder_decoder', 'copy', seq_len=16,
                                           synthetic_len=16))
  check_data(make_config('encoder_decoder', 'copy', seq_len=17, synthetic_len=16))


# --- packing, masking -----------------------------------------------------------------------------


def token_losses(cfg, params, tokens, targets, **kw):
  logits = models.build_model(cfg).apply({'params': params}, tokens, **kw)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def segments(row_ids):
  return [s for s in np.unique(row_ids) if s != 0]


def alone(at, length):
  """One document of a packed row, by itself, padded to `length` (segment 0 = padding)."""
  n = int(at.sum())
  pad = lambda x: np.pad(x[at], (0, length - n))[None]
  return pad, np.pad(np.ones(n, np.int32), (0, length - n))[None], n


def test_packed_lm_batch_gives_each_documents_own_loss(data_dir):
  config = make_config(data_dir=data_dir, seq_len=96)
  (batch,) = take(config, 1)
  cfg = ModelConfig.from_config(config)
  params = models.init_params(cfg, jax.random.key(0))
  losses_fn = jax.jit(functools.partial(token_losses, cfg))
  packed = losses_fn(params, batch['inputs'], batch['targets'],
                     segment_ids=batch['segment_ids'], positions=batch['positions'])
  n_docs = 0
  for b in range(len(batch['inputs'])):
    for s in segments(batch['segment_ids'][b]):
      at = batch['segment_ids'][b] == s
      np.testing.assert_array_equal(batch['positions'][b][at], np.arange(at.sum()))
      pad, seg, n = alone(at, 96)
      by_itself = losses_fn(params, pad(batch['inputs'][b]), pad(batch['targets'][b]),
                            segment_ids=seg)
      np.testing.assert_allclose(packed[b][at], by_itself[0, :n], rtol=1e-5, atol=1e-5)
      n_docs += 1
  assert n_docs > len(batch['inputs'])  # rows really held several documents
  # Within a document, targets are the inputs shifted by one.
  same = batch['segment_ids'][:, 1:] == batch['segment_ids'][:, :-1]
  np.testing.assert_array_equal(batch['inputs'][:, 1:][same], batch['targets'][:, :-1][same])


def test_packed_seq2seq_batch_gives_each_pairs_own_loss():
  config = make_config('encoder_decoder', 'reverse', seq_len=48, synthetic_len=10)
  (batch,) = take(config, 1)
  cfg = ModelConfig.from_config(config)
  params = models.init_params(cfg, jax.random.key(0))
  model = models.build_model(cfg)

  @jax.jit
  def token_losses_s2s(src, dec, tgt, src_seg, tgt_seg, src_pos=None, tgt_pos=None):
    logits = model.apply({'params': params}, src, dec, src_segment_ids=src_seg,
                         tgt_segment_ids=tgt_seg, src_positions=src_pos, tgt_positions=tgt_pos)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tgt)

  packed = token_losses_s2s(batch['inputs'], batch['decoder_inputs'], batch['targets'],
                            batch['inputs_segment_ids'], batch['targets_segment_ids'],
                            batch['inputs_positions'], batch['targets_positions'])
  b = 0
  pairs = segments(batch['targets_segment_ids'][b])
  assert len(pairs) >= 3
  for s in pairs:
    src_at = batch['inputs_segment_ids'][b] == s
    at = batch['targets_segment_ids'][b] == s
    src, dec, tgt = batch['inputs'][b][src_at], batch['decoder_inputs'][b][at], \
        batch['targets'][b][at]
    assert dec[0] == BYTES.bos_id and src[-1] == tgt[-1] == BYTES.eos_id
    np.testing.assert_array_equal(dec[1:], tgt[:-1])
    assert BYTES.decode(tgt) == BYTES.decode(src)[::-1]  # the reverse task
    pad_src, src_seg, _ = alone(src_at, 48)
    pad_tgt, tgt_seg, n = alone(at, 48)
    by_itself = token_losses_s2s(pad_src(batch['inputs'][b]), pad_tgt(batch['decoder_inputs'][b]),
                                 pad_tgt(batch['targets'][b]), src_seg, tgt_seg)
    np.testing.assert_allclose(packed[b][at], by_itself[0, :n], rtol=1e-5, atol=1e-5)


def test_mlm_masking_statistics(data_dir):
  config = make_config('encoder_only', data_dir=data_dir, batch_size=16, seq_len=128)
  batches = take(config, 25)
  inputs, targets, weights, seg = (np.concatenate([b[k] for b in batches])
                                   for k in ('inputs', 'targets', 'weights', 'segment_ids'))
  chosen = weights == 1
  special = np.isin(targets, sorted(BYTES.special_ids))
  candidates = (seg != 0) & ~special
  assert not (chosen & ~candidates).any()  # never padding, never <bos>/<eos>
  np.testing.assert_array_equal(inputs[~chosen], targets[~chosen])
  assert candidates.sum() > 40_000
  assert abs(chosen.sum() / candidates.sum() - 0.15) < 0.01
  masked = (inputs[chosen] == BYTES.mask_id).mean()
  kept = (inputs[chosen] == targets[chosen]).mean()  # 10% kept, + random picks of the same id
  assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02
  assert abs(1 - masked - kept - 0.1) < 0.02


def test_hosts_draw_their_own_masks(data_dir):
  """Where both hosts have a maskable token at the same place, their choices are independent."""
  config = make_config('encoder_only', data_dir=data_dir, batch_size=8, seq_len=128)
  a, b = (np.concatenate([x['weights'] for x in take(config, 6, shard_index=i, shard_count=2)])
          for i in range(2))
  both = (a == 1) & (b == 1)
  assert a.sum() > 300 and both.sum() / a.sum() < 0.3  # independent: ~15%; identical: 100%


# --- order, resume, shards ------------------------------------------------------------------------


def test_same_seed_same_order_other_seed_other_order(data_dir):
  config = make_config(data_dir=data_dir)
  first, again = take(config, 3), take(config, 3)
  assert_batches_equal(first, again)
  config.train.seed = 1
  other = take(config, 3)
  assert not np.array_equal(first[0]['inputs'], other[0]['inputs'])


TOPOLOGIES = [
    ('decoder_only', 'shakespeare', None, {}),  # packed
    ('encoder_only', 'shakespeare', None, {}),  # random masks
    ('encoder_decoder', 'sort', None, {}),
    ('decoder_only', 'recall', None, {'pack': False}),
    ('encoder_only', 'imdb_reviews', 'classify', {}),
    ('decoder_only', 'mixture', None, {'mixture': 'shakespeare=0.7,copy=0.3'}),
]


@pytest.mark.parametrize('family,dataset,head,extra', TOPOLOGIES)
def test_global_batches_are_the_same_on_any_number_of_hosts_and_resume_across_them(
    data_dir, family, dataset, head, extra):
  """The rows of 2 or 4 hosts, side by side in process order, are the batches of one host (of
  evaluation too); a position saved by 2 hosts resumes on 1 and on 4 with the next global
  batches."""
  config = make_config(family, dataset, data_dir, head, batch_size=8, seq_len=48, **extra)
  experiment = Experiment.from_config(config)

  def hosts(count, which='train'):
    return [iter(pipeline.make_dataset(experiment, which, BYTES, shard_index=i,
                                       shard_count=count)) for i in range(count)]

  def global_batches(iterators, n):
    out = []
    for _ in range(n):
      parts = [next(it) for it in iterators]
      out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return out

  with tfds.testing.mock_data(num_examples=64):  # only imdb_reviews reads TFDS here
    one = global_batches(hosts(1), 7)
    two, four = hosts(2), hosts(4)
    assert_batches_equal(global_batches(two, 4), one[:4])
    assert_batches_equal(global_batches(four, 7), one)
    saved = json.loads(json.dumps(pipeline.global_position([it.get_state() for it in two])))
    for count in (1, 4):
      resumed = hosts(count)
      for i, it in enumerate(resumed):
        it.set_state(pipeline.host_position(saved, pipeline.host_slots(8, i, count)))
      assert_batches_equal(global_batches(resumed, 3), one[4:])
    held_out = global_batches(hosts(1, 'eval'), 2)  # evaluation too: the same batches
    assert_batches_equal(global_batches(hosts(4, 'eval'), 2), held_out)


def test_host_shards_are_disjoint_and_cover_the_data():
  """On the evaluation split (one pass, no shuffle): the rows of 3 hosts, together, are
  exactly the rows of one host reading everything (as multisets: no row lost, none doubled),
  and the global batches are the same."""
  config = make_config(dataset='copy', pack=False, batch_size=12)

  def rows(**shard):
    out = []
    for batch in pipeline.make_dataset(Experiment.from_config(config), 'eval', BYTES, **shard):
      out += [tuple(r) for r, w in zip(batch['inputs'], batch['weights']) if w.sum() > 0]
    return out

  everything = rows()
  shards = [rows(shard_index=i, shard_count=3) for i in range(3)]
  assert len(everything) == synthetic.EVAL_SIZE
  # host i reads the documents of its rows of the batch: j, j + 12, j + 24, ... for its 4 rows j
  assert [len(s) for s in shards] == [sum(len(range(j, synthetic.EVAL_SIZE, 12))
                                          for j in range(4 * i, 4 * i + 4)) for i in range(3)]
  assert collections.Counter(sum(shards, [])) == collections.Counter(everything)
  with pytest.raises(ConfigError, match='data.batch_size=12 .*divisible by the number of hosts'):
    pipeline.make_dataset(Experiment.from_config(config), 'eval', BYTES, shard_index=0,
                          shard_count=5)


# --- validation and the command line --------------------------------------------------------------


@pytest.mark.parametrize('family,dataset,head,message', [
    ('encoder_decoder', 'shakespeare', None, 'the encoder-decoder needs pairs'),
    ('encoder_only', 'copy', None, 'model.head=mlm: it holds pairs'),
    ('encoder_only', 'shakespeare', 'classify', 'use a labelled dataset'),
    ('decoder_only', 'nope', None, "data.dataset='nope' is invalid: must be one of"),
])
def test_dataset_must_suit_the_family(family, dataset, head, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    check_data(make_config(family, dataset, head=head))


def test_classification_needs_room_for_bos_and_eos():
  config = make_config('encoder_only', 'imdb_reviews', head='classify')
  config.data.seq_len = 1
  with pytest.raises(ConfigError, match=re.escape('data.seq_len=1 is invalid: must be >= 2')):
    check_data(config)


def data_command(*args):
  return subprocess.run([sys.executable, '-m', 'transformer.data', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_data_command_shows_batches_and_throughput(data_dir):
  result = data_command(f'--config.data.data_dir={data_dir}', '--batches=3')
  assert result.returncode == 0, result.stderr
  assert 'task lm for decoder_only' in result.stdout
  assert re.search(r'3 batches, [\d,]+ tokens in .* tokens/s', result.stdout)


def test_preparing_without_network_says_so_in_seconds(tmp_path):
  """TFDS's downloader retries for minutes offline; the network is probed first (here a name
  that never resolves: RFC 2606's .invalid), so the command fails in seconds, in one line."""
  env = {k: v for k, v in os.environ.items() if 'proxy' not in k.lower()}
  result = subprocess.run(
      [sys.executable, '-m', 'transformer.data', '--prepare', '--config.data.dataset=lm1b',
       f'--config.data.data_dir={tmp_path}', '--network_probe=no-such-host.invalid:443'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)  # the retries take 200 s
  assert result.returncode == 1, result.stderr[-2000:]
  assert result.stderr.startswith('error: no network: no-such-host.invalid:443 cannot be reached')
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# The command line's part; the rules themselves are tested in-process (below and test_config.py).
@pytest.mark.parametrize('args,message', [
    (['--config.data.dataset=lm1b'], 'is not prepared in'),
    (['--config.data.mask_rate=1.5'], 'data.mask_rate=1.5'),
    (['--batches=0'], '--batches=0 is invalid'),
])
def test_data_command_rejects_bad_input_with_one_line(tmp_path, args, message):
  config_args = [a for a in args if a.startswith('--config=')]
  others = [a for a in args if not a.startswith('--config=')]
  result = data_command(*config_args, f'--config.data.data_dir={tmp_path}', *others)
  assert result.returncode == 2, result.stdout + result.stderr
  assert message in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  if 'not prepared' in message:
    assert 'python -m transformer.data --prepare --config.data.dataset=lm1b' in result.stderr


@pytest.mark.parametrize('family,fields,message', [
    ('decoder_only', {'data.dataset': 'lm2b'}, "data.dataset='lm2b' is invalid"),
    ('decoder_only', {'data.tokenizer': 'sentencepiece', 'data.spm_model': '/no/such.model'},
     "data.spm_model='/no/such.model' is invalid: no such file"),
    ('encoder_only', {'model.head': 'classify', 'data.dataset': 'imdb_reviews',
                      'model.num_classes': 3},
     'model.num_classes=3 is invalid: imdb_reviews has 2 classes'),
    ('decoder_only', {'train.seed': -1}, 'train.seed=-1 is invalid'),
    ('decoder_only', {'data.tokenizer': 'sentencepiece', 'data.spm_examples': 0},
     'data.spm_examples=0 is invalid'),
])
def test_bad_data_config_is_named_before_reading(tmp_path, family, fields, message):
  """What the data command (and train) check before reading anything: the sections, what the
  dataset holds, then the tokenizer's files."""
  config = make_config(family, data_dir=str(tmp_path))
  for field, value in fields.items():
    section, name = field.split('.')
    config[section][name] = value
  with pytest.raises(ConfigError, match=re.escape(message)):
    experiment = Experiment.from_config(config)
    pipeline.check_data(experiment)
    pipeline.get_tokenizer(experiment)


def test_a_sentencepiece_model_of_the_wrong_size_is_rejected(spm_config):
  path = pipeline.get_tokenizer(Experiment.from_config(spm_config)).model_path
  config = spm_config.copy_and_resolve_references()
  config.data.update(spm_model=path, vocab_size=8000)
  with pytest.raises(ConfigError, match='data.vocab_size=8000 is invalid: the SentencePiece '
                                        'model'):
    pipeline.get_tokenizer(Experiment.from_config(config))


def test_rows_render_as_the_model_sees_them():
  """Packed documents apart, specials by name, padding left out, multi-byte text whole."""
  tok = BYTES
  text = list('héllo'.encode())
  ids = [tok.bos_id, *text, tok.eos_id, tok.bos_id, ord('a'), tok.mask_id, ord('b'), 0, 0]
  segments = [1] * 8 + [2] * 4 + [0, 0]
  assert tokenizers.render(tok, ids, segments) == '<bos>héllo<eos> ‖ <bos>a[MASK]b'
  assert tokenizers.render(tok, [tok.bos_id, ord('q'), tok.sep_id, ord('a'), 0]) == \
      '<bos>q<sep>a'
  result = data_command('--config.data.dataset=copy', '--config.data.seq_len=64', '--batches=1',
                        '--show=1')
  assert result.returncode == 0, result.stderr
  inputs = re.search(r"\[0\]\s+inputs: '(.*)'", result.stdout).group(1)
  documents = inputs.split(' ‖ ')
  assert len(documents) > 1 and all(re.fullmatch(r'<bos>([a-z]+)<sep>\1', d) for d in documents)


# --- mixtures -------------------------------------------------------------------------------------


def test_a_mixture_draws_documents_in_its_proportions():
  """copy and reverse, 3:1: the documents of 30 batches (classified by their answer) follow the
  weights within 4 standard deviations of the binomial."""
  config = make_config('decoder_only', 'mixture', mixture='copy=3,reverse=1', seq_len=128,
                       batch_size=8)
  counts = collections.Counter()
  for batch in take(config, 30):
    for ids, segments in zip(batch['inputs'], batch['segment_ids']):
      for document in tokenizers.render(BYTES, ids, segments).split(tokenizers.DOCUMENT_BREAK):
        prompt, answer = re.fullmatch(r'<bos>([a-z]*)<sep>([a-z]*)', document).groups()
        if prompt != prompt[::-1]:  # a palindrome answers both tasks
          counts['copy' if answer == prompt else 'reverse'] += 1
  n = sum(counts.values())
  assert n > 500 and abs(counts['copy'] / n - 0.75) < 4 * (0.75 * 0.25 / n) ** 0.5, counts


def test_a_mixture_is_evaluated_on_each_dataset_and_on_all_together():
  from transformer.training import evaluation
  config = make_config('decoder_only', 'mixture', mixture='copy=1,reverse=0', seq_len=64)
  experiment = Experiment.from_config(config)
  model = models.build_model(experiment.model)
  params = models.init_params(experiment.model, jax.random.key(0))
  sums = []

  def eval_fn(batch):
    sums.append(jax.device_get(evaluation._eval_sums(model, params, batch, experiment.task)))
    return sums[-1]

  mixed = evaluation.held_out_metrics(eval_fn, experiment, BYTES, num_batches=2)
  assert len(sums) == 4  # two batches of each, reverse too (weight 0: evaluated, not trained on)
  for name in ('copy', 'reverse'):
    alone = evaluation.held_out_metrics(
        eval_fn, experiment.replace(data={'dataset': name, 'mixture': ''}), BYTES, num_batches=2)
    assert mixed[f'eval_loss/{name}'] == pytest.approx(alone['eval_loss'], rel=1e-12)
  nll = sum(float(s['nll']) for s in sums[:4])
  weight = sum(float(s['weight']) for s in sums[:4])
  assert mixed['eval_loss'] == pytest.approx(nll / weight, rel=1e-12)  # all tokens together


@pytest.mark.parametrize('mixture,message', [
    ('copy=1,copy=2', 'each dataset once'),
    ('copy=-1,sort=1', 'weights >= 0'),
    ('copy=0', 'not all 0'),
    ('copy', 'NAME=WEIGHT pairs'),
    ('copy=1,nope=1', r"data.mixture='copy=1,nope=1' is invalid: data.dataset='nope' is invalid"),
    ('copy=1,shakespeare=1', r"is invalid: data.dataset='shakespeare' is invalid for "
                             'model.family=encoder_decoder'),
])
def test_bad_mixtures_are_named(mixture, message):
  config = make_config('encoder_decoder', 'mixture', mixture=mixture)
  with pytest.raises(ConfigError, match=message):
    check_data(config)
