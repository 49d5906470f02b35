"""Hugging Face checkpoints converted into our models: logits and greedy decoding equal the
Hugging Face implementation's (small random GPT-2, BERT and Marian models, saved and converted),
the fine-tuning start, and the command's bad inputs.

Needs the interop extra (torch, transformers); without it these tests are skipped.
"""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

SKIP = "the interop extra is not installed: pip install -e '.[interop]'"
torch = pytest.importorskip('torch', reason=SKIP)
transformers = pytest.importorskip('transformers', reason=SKIP)

from transformer import presets  # noqa: E402
from transformer.config import Experiment, ModelConfig  # noqa: E402
from transformer.errors import ConfigError  # noqa: E402
from transformer.inference import convert, export  # noqa: E402
from transformer.model import decode, models  # noqa: E402
from transformer.training import finetune, runs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V, PAD, EOS = 96, 95, 1  # vocabulary, Marian's pad (= its decoder start), end of sequence
TOLERANCE = 1e-4  # the bound on float32 logits


def _randomise(model, seed: int):
  """Every weight (and Marian's logit bias) perturbed, so that no mapping passes by accident:
  LayerNorm scales are not 1, biases are not 0, attention is far from uniform."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'embed_positions' not in name:  # Marian's sinusoids are fixed
        p.add_(0.3 * torch.randn(p.shape, generator=g))
    if hasattr(model, 'final_logits_bias'):
      model.final_logits_bias.copy_(torch.randn(model.final_logits_bias.shape, generator=g))
  return model.eval()


def gpt2(**overrides):
  cfg = dict(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=V,
             activation_function='gelu_new', bos_token_id=EOS, eos_token_id=EOS,
             pad_token_id=EOS, layer_norm_epsilon=1e-5)
  config = transformers.GPT2Config(**{**cfg, **overrides})
  return _randomise(transformers.GPT2LMHeadModel(config), 0)


def bert(kind='BertForMaskedLM', **overrides):
  cfg = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64,
             max_position_embeddings=64, vocab_size=V, type_vocab_size=2, hidden_act='gelu',
             layer_norm_eps=1e-12, num_labels=3)
  return _randomise(getattr(transformers, kind)(transformers.BertConfig(**{**cfg, **overrides})), 1)


def marian(**overrides):
  cfg = dict(encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
             decoder_attention_heads=4, d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64,
             vocab_size=V, max_position_embeddings=64, pad_token_id=PAD,
             decoder_start_token_id=PAD, eos_token_id=EOS, forced_eos_token_id=None,
             activation_function='swish', scale_embedding=True)
  config = transformers.MarianConfig(**{**cfg, **overrides})
  return _randomise(transformers.MarianMTModel(config), 2)


def llama(model_type='llama', **overrides):
  """Llama (or Mistral): grouped-query attention, 2 key/value heads for 4 query heads."""
  cfg = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
             intermediate_size=64, max_position_embeddings=64, vocab_size=V, rms_norm_eps=1e-5,
             bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS)
  config = transformers.AutoConfig.for_model(model_type, **{**cfg, **overrides})
  return _randomise(transformers.AutoModelForCausalLM.from_config(config), 3)


def saved(model, path) -> str:
  model.save_pretrained(path)
  return str(path)


def ours(directory: str, **kwargs):
  _, fields, params, _ = convert.convert_checkpoint(directory, **kwargs)
  cfg = ModelConfig(**fields)
  return cfg, models.build_model(cfg), params


def padded_batch(seed: int, lengths=(12, 7, 3), vocab=V - 1):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, vocab, size=(len(lengths), max(lengths)))
  mask = np.arange(max(lengths))[None, :] < np.asarray(lengths)[:, None]
  return np.where(mask, tokens, 0), mask


def assert_close_where(ours_BxTxV, theirs_BxTxV, mask_BxT):
  """Logits of real tokens agree within TOLERANCE, and are far from trivially small."""
  a, b = np.asarray(ours_BxTxV)[mask_BxT], np.asarray(theirs_BxTxV)[mask_BxT]
  assert b.std() > 0.5, 'logits too small for the tolerance to mean anything'
  assert np.abs(a - b).max() <= TOLERANCE, np.abs(a - b).max()


@pytest.mark.parametrize('tied', [True, False])
def test_gpt2_logits_match(tmp_path, tied):
  hf = gpt2(tie_word_embeddings=tied)
  _, model, params = ours(saved(hf, tmp_path))
  tokens, mask = padded_batch(0)
  with torch.no_grad():
    theirs = hf(torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))).logits
  logits = model.apply({'params': params}, jnp.asarray(tokens),
                       segment_ids=jnp.asarray(mask.astype(np.int32)))
  assert_close_where(logits, theirs.numpy(), mask)


@pytest.mark.parametrize('model_type,overrides', [
    ('llama', {}),
    ('llama', dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True)),
    ('llama', dict(num_key_value_heads=4, rope_parameters=dict(rope_type='default',
                                                               rope_theta=500000.0))),
    ('mistral', dict(num_key_value_heads=1, sliding_window=None)),  # multi-query attention
    ('qwen2', dict(tie_word_embeddings=True)),
])
def test_llama_logits_match(tmp_path, model_type, overrides):
  hf = llama(model_type, **overrides)
  cfg, model, params = ours(saved(hf, tmp_path))
  assert (cfg.num_kv_heads, cfg.tie_embeddings, cfg.use_bias) == (
      hf.config.num_key_value_heads, hf.config.tie_word_embeddings,
      getattr(hf.config, 'attention_bias', False))
  assert cfg.qkv_bias == (True if model_type == 'qwen2' else None)
  assert cfg.rope_base == hf.config.rope_parameters['rope_theta']
  tokens, mask = padded_batch(4, lengths=(40, 9, 3))  # right-padded: positions from 0 on both
  with torch.no_grad():
    theirs = hf(torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))).logits
  logits = model.apply({'params': params}, jnp.asarray(tokens),
                       segment_ids=jnp.asarray(mask.astype(np.int32)))
  assert_close_where(logits, theirs.numpy(), mask)


@pytest.mark.parametrize('kind', ['BertForMaskedLM', 'BertForSequenceClassification'])
def test_bert_logits_match(tmp_path, kind):
  hf = bert(kind)
  cfg, model, params = ours(saved(hf, tmp_path))
  tokens, mask = padded_batch(1)
  types = np.random.default_rng(3).integers(0, 2, size=tokens.shape) * mask
  with torch.no_grad():
    theirs = hf(torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                token_type_ids=torch.tensor(types)).logits.numpy()
  logits = model.apply({'params': params}, jnp.asarray(tokens),
                       segment_ids=jnp.asarray(mask.astype(np.int32)),
                       token_types=jnp.asarray(types))
  if kind == 'BertForMaskedLM':
    assert cfg.head == 'mlm'
    assert_close_where(logits, theirs, mask)
  else:
    assert cfg.head == 'classify' and cfg.num_classes == 3
    assert np.abs(np.asarray(logits) - theirs).max() <= TOLERANCE and theirs.std() > 0.5


def test_bert_pretraining_checkpoint_as_mlm_or_classifier(tmp_path):
  """bert-base-uncased is a BertForPreTraining: its pooler and next-sentence head are left out
  of the mlm model; --head=classify keeps the pooler and starts a classifier fresh."""
  hf = bert('BertForPreTraining')
  directory = saved(hf, tmp_path)
  _, model, params = ours(directory)
  tokens, mask = padded_batch(5)
  with torch.no_grad():
    theirs = hf(torch.tensor(tokens),
                attention_mask=torch.tensor(mask.astype(np.int64))).prediction_logits.numpy()
  logits = model.apply({'params': params}, jnp.asarray(tokens),
                       segment_ids=jnp.asarray(mask.astype(np.int32)))
  assert_close_where(logits, theirs, mask)
  assert convert.convert_checkpoint(directory)[3] == {'fresh': [], 'dropped': ['pooler']}
  _, fields, params, notes = convert.convert_checkpoint(directory, head='classify')
  assert fields['head'] == 'classify' and notes == {'fresh': ['classifier'], 'dropped': ['cls']}
  np.testing.assert_array_equal(params['pooler']['kernel'],
                                hf.bert.pooler.dense.weight.detach().numpy().T)


def _marian_logits(hf, model, params, src, src_mask, tgt, tgt_mask):
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(src), attention_mask=torch.tensor(src_mask.astype(np.int64)),
                decoder_input_ids=torch.tensor(tgt),
                decoder_attention_mask=torch.tensor(tgt_mask.astype(np.int64))).logits.numpy()
  logits = model.apply({'params': params}, jnp.asarray(src), jnp.asarray(tgt),
                       src_segment_ids=jnp.asarray(src_mask.astype(np.int32)),
                       tgt_segment_ids=jnp.asarray(tgt_mask.astype(np.int32)))
  return logits, theirs


def test_marian_logits_match_and_the_sinusoid_layout_matters(tmp_path):
  hf = marian()
  directory = saved(hf, tmp_path)
  cfg, model, params = ours(directory)
  assert cfg.sinusoidal_layout == 'concat' and cfg.activation == 'silu' and cfg.scale_embeddings
  src, src_mask = padded_batch(2, lengths=(10, 4, 6))
  tgt, tgt_mask = padded_batch(4, lengths=(5, 9, 2))
  tgt[:, 0] = PAD  # the decoder starts from <pad>
  logits, theirs = _marian_logits(hf, model, params, src, src_mask, tgt, tgt_mask)
  assert_close_where(logits, theirs, tgt_mask)
  # The same weights with the paper's interleaved sinusoids are another model: the check bites.
  wrong = models.build_model(ModelConfig(**{**cfg.__dict__, 'sinusoidal_layout': 'interleaved'}))
  wrong_logits, _ = _marian_logits(hf, wrong, params, src, src_mask, tgt, tgt_mask)
  assert np.abs(np.asarray(wrong_logits) - theirs)[tgt_mask].max() > 100 * TOLERANCE


def _cut(row, eos):
  row = list(row)
  return row[:row.index(eos) + 1] if eos in row else row


@pytest.mark.parametrize('make', [gpt2, llama], ids=['gpt2', 'llama'])
def test_greedy_generation_matches(tmp_path, make):
  hf = make()
  _, model, params = ours(saved(hf, tmp_path))
  prompts = [[5, 17, 33, 2, 9], [40, 41], [7, 7, 7, 60, 61, 62, 3]]
  new = 10
  theirs = []
  for p in prompts:  # one by one: no padding on their side
    out = hf.generate(torch.tensor([p]), max_new_tokens=new, do_sample=False,
                      eos_token_id=EOS, pad_token_id=EOS)
    theirs.append(_cut(out[0, len(p):].tolist(), EOS))
  mine = decode.generate(model, params, prompts, new, jax.random.key(0), temperature=0.0,
                         eos_id=EOS)  # all at once: left-padded
  assert [_cut(m, EOS) for m in mine] == [t[:len(_cut(m, EOS))] for m, t in zip(mine, theirs)]
  assert [len(t) for t in theirs] == [len(_cut(m + [EOS], EOS)) if len(m) < new else new
                                      for m in mine]


def test_marian_greedy_translation_matches(tmp_path):
  hf = marian()
  _, model, params = ours(saved(hf, tmp_path))
  sources = [[5, 17, 33, 2, 9, EOS], [40, 41, EOS], [7, 7, 60, 61, 62, 3, 8, 8, EOS]]
  new = 10
  theirs = []
  for s in sources:
    out = hf.generate(torch.tensor([s]), max_new_tokens=new, do_sample=False, num_beams=1)
    theirs.append(out[0, 1:].tolist())  # after the decoder start
  mine = decode.translate(model, params, sources, new, jax.random.key(0), bos_id=PAD, eos_id=EOS)
  for m, t in zip(mine, theirs):
    assert m == _cut(t, EOS)[:len(m)] and (len(m) == new or _cut(t, EOS) == m + [EOS])


def test_pytorch_bin_is_read_like_safetensors(tmp_path):
  """An older checkpoint: pytorch_model.bin (read with weights_only=True), tied weights saved
  under both names."""
  hf = bert()
  safetensors_dir = saved(hf, tmp_path / 'st')
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  torch.save(hf.state_dict(), bin_dir / 'pytorch_model.bin')
  (bin_dir / 'config.json').write_text((tmp_path / 'st' / 'config.json').read_text())
  a = convert.convert_checkpoint(safetensors_dir)[2]
  b = convert.convert_checkpoint(str(bin_dir))[2]
  jax.tree.map(np.testing.assert_array_equal, a, b)


# --- the run it writes: generate and fine-tuning ------------------------------------------------


def bpe_tokenizer(path) -> 'transformers.PreTrainedTokenizerFast':
  """A byte-level BPE tokenizer like GPT-2's, trained offline on a little text."""
  from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers
  tok = Tokenizer(tok_models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  text = ['To be, or not to be, that is the question:',
          'Whether tis nobler in the mind to suffer', 'The slings and arrows of outrageous fortune']
  tok.train_from_iterator(text * 50, trainers.BpeTrainer(
      vocab_size=300, special_tokens=['<|endoftext|>'],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<|endoftext|>',
                                              eos_token='<|endoftext|>')
  fast.save_pretrained(path)
  return fast


def _command(module, *args):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)


@pytest.mark.slow
def test_converted_gpt2_generates_and_fine_tunes(tmp_path, data_dir):
  source = tmp_path / 'hf'
  tokenizer = bpe_tokenizer(source)
  n = len(tokenizer)
  end = tokenizer.eos_token_id
  hf = gpt2(vocab_size=n, bos_token_id=end, eos_token_id=end, pad_token_id=end)
  hf.save_pretrained(source)
  converted, run = tmp_path / 'converted', tmp_path / 'run'
  # (the command's own line: test_bad_inputs_fail_in_one_line_and_write_nothing)
  assert convert.convert(str(source), str(converted))['model_type'] == 'gpt2'
  converted.rename(run)  # a moved run finds its own tokenizer

  # generate reads it like a trained run; greedy text = Hugging Face's greedy text
  prompt = 'To be, or not'
  done = _command('transformer.generate', f'--workdir={run}', f'--prompt={prompt}',
                  '--temperature=0', '--num_tokens=12')
  assert done.returncode == 0, done.stderr
  ids = [end] + tokenizer.encode(prompt)
  out = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=end,
                    pad_token_id=end)[0, len(ids):].tolist()
  expected = prompt + tokenizer.decode(_cut(out, end), skip_special_tokens=True)
  assert done.stdout.startswith(expected + '\n') and len(expected) > len(prompt) + 4

  # fine-tuning: a new run starts from its parameters and trains on text it tokenizes
  finetuned = tmp_path / 'ft'
  done = _command('transformer.train', f'--config=configs/finetune.py:{run}',
                  f'--workdir={finetuned}', f'--config.data.data_dir={data_dir}',
                  '--config.train.num_steps=2', '--config.train.eval_batches=1',
                  '--config.data.batch_size=2', '--config.data.seq_len=32')
  assert done.returncode == 0, done.stderr
  count = len(jax.tree.leaves(convert.convert_checkpoint(str(source))[2]))
  assert f'initialised from {run} (step 0): {count} of {count} parameters' in done.stdout
  summary = json.loads((finetuned / 'summary.json').read_text())
  assert summary['steps'] == 2 and np.isfinite(summary['final_train_loss'])


def test_fine_tuning_a_new_head_starts_only_it_fresh(tmp_path):
  hf = bert()  # masked LM, no pooler
  run = tmp_path / 'run'
  convert.convert(saved(hf, tmp_path / 'hf'), str(run))
  config = runs.read_config(str(run))
  config.train.init_from = str(run)
  config.model.head = 'classify'
  experiment = Experiment.from_config(config)
  finetune.check_init_from(experiment)
  fresh = models.init_params(experiment.model, jax.random.key(0))
  start, note = finetune.initial_params(experiment, fresh)
  assert 'fresh: classifier/bias, classifier/kernel, pooler/bias, pooler/kernel;' in note
  converted = convert.convert_checkpoint(str(tmp_path / 'hf'))[2]
  np.testing.assert_array_equal(start['encoder']['layers_1']['mlp']['wo']['kernel'],
                                converted['encoder']['layers_1']['mlp']['wo']['kernel'])
  np.testing.assert_array_equal(start['embedder']['type_embedding'],
                                converted['embedder']['type_embedding'])
  for name in ('pooler', 'classifier'):
    jax.tree.map(np.testing.assert_array_equal, start[name], fresh[name])
  # a shape that disagrees is refused before anything is built
  config.model.d_ff = 48
  with pytest.raises(ConfigError, match=r"init_from=.*layers_0/mlp/wi/bias is \(64,\), this "
                     r"model's is \(48,\)"):
    finetune.check_init_from(Experiment.from_config(config))


# --- bad input -----------------------------------------------------------------------------------


def _one_line_exit_2(done, pattern):
  assert done.returncode == 2, done.stderr
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in done.stderr, done.stderr
  assert re.search(pattern, lines[0]), lines[0]


def test_bad_inputs_fail_in_one_line_and_write_nothing(tmp_path):
  good = saved(gpt2(), tmp_path / 'gpt2')
  run = tmp_path / 'run'

  unsupported = tmp_path / 't5'
  unsupported.mkdir()
  (unsupported / 'config.json').write_text(json.dumps({'model_type': 't5'}))
  _one_line_exit_2(_command('transformer.convert', f'--from={unsupported}', f'--to={run}'),
                   r"model_type='t5' .* not supported; supported: gpt2, bert, marian, llama, "
                   r"mistral, qwen2")

  # The rest in this process (the command adds nothing but the line and the exit code).
  def refused(source, to, pattern, overwrite=False):
    with pytest.raises(ConfigError, match=pattern) as error:
      convert.convert(str(source), str(to), overwrite=overwrite)
    assert '\n' not in str(error.value)

  not_an_object = tmp_path / 'not_an_object'
  not_an_object.mkdir()
  for text, kind in (('[1, 2, 3]', 'array'), ('null', 'null'), ('"gpt2"', 'string')):
    (not_an_object / 'config.json').write_text(text)
    refused(not_an_object, run, f'config.json holds a JSON {kind}, not an object')

  no_weights = tmp_path / 'no_weights'
  no_weights.mkdir()
  (no_weights / 'config.json').write_text((tmp_path / 'gpt2' / 'config.json').read_text())
  refused(no_weights, run, r'no weights \(model.safetensors or pytorch_model.bin\)')
  refused(tmp_path / 'absent', run, r'absent is not a directory and could not be downloaded')

  wrong = tmp_path / 'wrong'
  wrong.mkdir()
  hf_config = json.loads((tmp_path / 'gpt2' / 'config.json').read_text())
  (wrong / 'config.json').write_text(json.dumps({**hf_config, 'n_inner': 48}))
  os.link(tmp_path / 'gpt2' / 'model.safetensors', wrong / 'model.safetensors')
  refused(wrong, run, r'weight h.0.mlp.c_fc.weight is \(32, 128\) in the checkpoint; '
                      r'config.json implies \(32, 48\)')
  assert not run.exists()
  assert not [n for n in os.listdir(tmp_path) if 'converting' in n]

  # an existing run is never replaced by a failed conversion, nor without --overwrite
  run.mkdir()
  (run / 'notes.txt').write_text('mine')
  refused(good, run, r'already exists and is not empty')
  refused(wrong, run, r'h.0.mlp.c_fc.weight', overwrite=True)
  assert os.listdir(run) == ['notes.txt']
  refused(good, tmp_path, r'holds the checkpoint being converted', overwrite=True)
  refused(good, 'gs://bucket/run', r'--to=gs://bucket/run: the conversion writes a local directory')
  refused('gs://bucket/gpt2', tmp_path / 'new',
          r'--from=gs://bucket/gpt2: a Hugging Face checkpoint is read from a local directory')
  assert not os.path.exists('gs:') and not (tmp_path / 'gs:').exists()
  done = _command('transformer.convert', f'--from={good}', f'--to={run}', '--overwrite')
  assert done.returncode == 0 and 'gpt2 as decoder_only (lm head)' in done.stdout, done.stderr
  assert sorted(os.listdir(run)) == ['checkpoints', 'config.json']


@pytest.mark.parametrize('change,pattern', [
    (dict(rope_parameters=dict(rope_type='llama3', rope_theta=5e5, factor=8.0)),
     r"rope_type='llama3' is not supported \(supported: default"),
    (dict(model_type='mistral', sliding_window=16),
     r'sliding_window=16 is shorter than max_position_embeddings=64; supported: full causal'),
    (dict(head_dim=16), r'head_dim=16 is not supported \(head_dim = hidden_size / '
                        r'num_attention_heads = 8\)'),
    (dict(attention_bias=True), r'attention_bias=True and mlp_bias=False differ'),
    (dict(hidden_act='gelu'), r"hidden_act='gelu' is not supported \(SwiGLU: silu\)"),
])
def test_llama_options_we_cannot_express_are_refused(tmp_path, change, pattern):
  directory = saved(llama(), tmp_path)
  path = os.path.join(directory, 'config.json')
  with open(path) as f:
    hf_config = json.load(f)
  with open(path, 'w') as f:
    json.dump({**hf_config, **change}, f)
  with pytest.raises(ConfigError, match=pattern) as error:
    convert.convert_checkpoint(directory)
  assert '\n' not in str(error.value)


def marian_tokenizer(path) -> 'transformers.MarianTokenizer':
  """A Marian tokenizer with its own SentencePiece model per language, trained offline."""
  import sentencepiece as spm
  texts = {'source': ['the cat sat on the mat', 'a dog ran in the park', 'hello world'],
           'target': ['die katze sass auf der matte', 'ein hund lief im park', 'hallo welt']}
  pieces = ['<pad>', '</s>', '<unk>']
  for side, lines in texts.items():
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 20), model_prefix=str(path / side), vocab_size=40,
        character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
        minloglevel=2)
    model = spm.SentencePieceProcessor(model_file=str(path / f'{side}.model'))
    pieces += [p for p in map(model.id_to_piece, range(model.get_piece_size()))
               if p not in pieces]
  (path / 'vocab.json').write_text(json.dumps({p: i for i, p in enumerate(pieces)}))
  tokenizer = transformers.MarianTokenizer(str(path / 'source.model'),
                                           str(path / 'target.model'), str(path / 'vocab.json'))
  tokenizer.save_pretrained(path / 'saved')
  return tokenizer


def test_marian_targets_are_encoded_with_the_target_vocabulary(tmp_path):
  from transformer.data import pipeline, tokenizers
  hf = marian_tokenizer(tmp_path)
  ours = tokenizers.HuggingFaceTokenizer(tmp_path / 'saved')
  source, target = 'the cat sat', 'die katze sass'
  expected = hf(text_target=target, add_special_tokens=False)['input_ids']
  assert ours.encode_target(target).tolist() == expected
  assert ours.encode(target).tolist() != expected  # the source model splits it differently
  assert ours.encode(source).tolist() == hf(source, add_special_tokens=False)['input_ids']
  assert ours.decode(ours.encode_target(target)) == target
  row = pipeline.Seq2SeqExample(ours, 32).map({'inputs': source, 'targets': target})
  assert row['inputs'].tolist() == hf(source)['input_ids']  # ... </s>
  assert row['targets'].tolist() == hf(text_target=target)['input_ids']
  assert row['decoder_inputs'].tolist() == [ours.pad_id] + row['targets'][:-1].tolist()


# --- export: runs of ours as Hugging Face models -----------------------------------------------


def _tensors(directory) -> dict:
  from safetensors.numpy import load_file
  return load_file(os.path.join(directory, 'model.safetensors'))


@pytest.mark.parametrize('make', [
    gpt2, lambda: gpt2(tie_word_embeddings=False), bert,
    lambda: bert('BertForSequenceClassification'), marian,
    lambda: marian(share_encoder_decoder_embeddings=False), llama,
    lambda: llama('llama', tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
    lambda: llama('qwen2')], ids=['gpt2', 'gpt2-untied', 'bert-mlm', 'bert-classify', 'marian',
                                  'marian-unshared', 'llama-gqa', 'llama-tied-biased', 'qwen2'])
def test_export_round_trip_is_bitwise(tmp_path, make):
  """Hugging Face -> ours -> Hugging Face: the same tensors bit for bit, under the same names,
  and a model that loads with nothing missing or unexpected."""
  hf = make()
  source = saved(hf, tmp_path / 'hf')
  convert.convert(source, str(tmp_path / 'run'))
  summary = export.export(str(tmp_path / 'run'), str(tmp_path / 'back'))
  before, after = _tensors(source), _tensors(tmp_path / 'back')
  assert sorted(after) == sorted(before)
  for name, array in before.items():
    assert after[name].dtype == array.dtype and np.array_equal(after[name], array), name
  assert summary['model_type'] == hf.config.model_type and summary['step'] == 0
  back, info = type(hf).from_pretrained(tmp_path / 'back', output_loading_info=True)
  assert not any(info[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys')), info
  assert type(back.config) is type(hf.config)


def _train(workdir, data_dir, family, size, **model):
  from transformer import presets
  from transformer.training import loop
  config = presets.get_config(family, size)
  config.model.update(model)
  config.data.update(data_dir=data_dir, seq_len=32, batch_size=4, prefetch=0)
  config.train.update(num_steps=3, log_every=3, eval_every=3, checkpoint_every=3,
                      eval_batches=1, sample_tokens=0)
  loop.train_and_evaluate(config, str(workdir), devices=jax.devices()[:1])
  return str(workdir)


@pytest.mark.parametrize('family,size,model,hf_class', [
    ('decoder_only', 'tiny', None, 'GPT2LMHeadModel'),  # the session's trained LM
    # Three steps barely move a fresh model: a wider initialisation gives logits large enough
    # for the tolerance to mean something (it changes the weights, not the function).
    ('decoder_only', 'llama-tiny', dict(init_std=0.3), 'LlamaForCausalLM'),
    ('encoder_only', 'tiny', dict(init_std=0.3), 'BertForMaskedLM'),
])
def test_a_model_trained_here_runs_in_transformers(tmp_path, data_dir, trained_lm, family, size,
                                                   model, hf_class):
  """Trained here, exported by the command, loaded by transformers: our logits within 1e-4."""
  from transformer.inference import trained
  run = trained_lm if model is None else _train(tmp_path / 'run', data_dir, family, size,
                                                **model)
  if model is None:  # the command once; in this process otherwise
    done = _command('transformer.convert', '--to_hf', f'--from={run}', f'--to={tmp_path / "hf"}')
    assert done.returncode == 0, done.stderr
    assert f'as Hugging Face {hf_class}' in done.stdout and 'no tokenizer written' in done.stdout
  else:
    assert export.export(run, str(tmp_path / 'hf'))['architecture'] == hf_class
  hf = getattr(transformers, hf_class).from_pretrained(tmp_path / 'hf').eval()
  ours_run = trained.load(run)
  tokens, mask = padded_batch(5, lengths=(30, 11, 4), vocab=250)
  with torch.no_grad():
    theirs = hf(torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))).logits
  logits = ours_run.model.apply({'params': ours_run.params}, jnp.asarray(tokens),
                                segment_ids=jnp.asarray(mask.astype(np.int32)))
  assert_close_where(logits, theirs.numpy(), mask)


def test_export_refuses_what_hugging_face_cannot_express(tmp_path, trained_lm):
  """One line naming the option, before any checkpoint is read; nothing written."""
  def run_with(name, **model):
    run = tmp_path / name
    run.mkdir()
    config = json.loads(open(os.path.join(trained_lm, 'config.json')).read())
    config['model'].update(model)
    (run / 'config.json').write_text(json.dumps(config))
    return str(run)

  out = tmp_path / 'hf'
  done = _command('transformer.convert', '--to_hf', f'--from={run_with("alibi", position="alibi")}',
                  f'--to={out}')
  _one_line_exit_2(done, r"model.position='alibi' cannot be exported as Hugging Face gpt2, which "
                         r"has position='learned' \(decoder_only runs with model.position=rope "
                         r"are exported as llama\)")
  for name, model, pattern in [
      ('mup', dict(parametrization='mup'), r"model.parametrization='mup' cannot be exported as "
                                           r"Hugging Face gpt2, which has parametrization='sp'"),
      ('rmsnorm', dict(norm='rmsnorm'), r"model.norm='rmsnorm' .* gpt2, which has "
                                        r"norm='layernorm'"),
      ('swiglu', dict(activation='swiglu'), r"model.activation='swiglu' cannot be exported as "
                                            r"Hugging Face gpt2 \(it has gelu, gelu_tanh, relu"),
      ('rope-gelu', dict(position='rope'), r"model.activation='gelu_tanh' .* llama, which has "
                                           r"activation='swiglu'"),
      ('gqa-gpt2', dict(num_kv_heads=2), r'model.num_kv_heads=2 .* gpt2, which has num_kv_heads=4'),
      # The paper's sinusoids are interleaved; Marian's are not.
      ('enc-dec', dict(presets.get_config('encoder_decoder', 'tiny').model.to_dict()),
       r"model.sinusoidal_layout='interleaved' cannot be exported as Hugging Face marian, which "
       r"has sinusoidal_layout='concat'")]:
    with pytest.raises(ConfigError, match=pattern) as error:
      export.export(run_with(name, **model), str(out))
    assert '\n' not in str(error.value)
  assert not out.exists() and not [n for n in os.listdir(tmp_path) if 'exporting' in n]

  out.mkdir()
  (out / 'mine.txt').write_text('kept')
  with pytest.raises(ConfigError, match='already exists and is not empty'):
    export.export(trained_lm, str(out))
  with pytest.raises(ConfigError, match=r'--step=7 has no checkpoint .* steps saved: 20, 40'):
    export.export(trained_lm, str(out), step=7, overwrite=True)
  assert os.listdir(out) == ['mine.txt']
  with pytest.raises(ConfigError, match='overlap'):
    export.export(trained_lm, os.path.join(trained_lm, 'hf'))
  assert export.export(trained_lm, str(out), step=20, overwrite=True)['step'] == 20
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors']


def test_export_to_a_full_disk_is_one_line_and_keeps_what_was_there(tmp_path, trained_lm, mounts):
  """A real full disk (tmpfs): the export stops in one line naming --to and the errno; the
  model already there is kept, and no staging directory is left."""
  disk = tmp_path / 'disk'
  disk.mkdir()
  mounts('-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', disk)  # the safetensors file is ~450 kB
  out = disk / 'hf'
  out.mkdir()
  (out / 'config.json').write_text('{"kept": true}')
  with pytest.raises(ConfigError, match=r'--to=.*/disk/hf: writing failed \(.*No space left on '
                                        r'device.*\); nothing was replaced') as error:
    export.export(trained_lm, str(out), overwrite=True)
  assert '\n' not in str(error.value)
  assert os.listdir(disk) == ['hf'] and os.listdir(out) == ['config.json']
  assert json.loads((out / 'config.json').read_text()) == {'kept': True}
