"""Held-out evaluation, one path for the training loop and for a trained run: loss, perplexity,
bits per byte and accuracy; and BLEU of an encoder-decoder's beam-searched translations
(sacrebleu).

  held_out_metrics(eval_fn, experiment, tokenizer)    # eval_fn(batch) -> sums of eval_step

The training loop passes its sharded `eval` step; `evaluate_run` passes a jitted one on a
trained run's parameters, at any sequence length the model accepts (e.g. longer than it was
trained on):

  run = trained.load('runs/default')
  evaluate_run(run, num_batches=10, seq_len=512)
"""

import math
from typing import Any, Callable

import flax.linen as nn
import jax

from transformer.config import Experiment
from transformer.data import pipeline
from transformer.model import decode
from transformer.training import losses, sharding


def held_out_metrics(eval_fn: Callable[[dict], dict], experiment: Experiment, tokenizer,
                     num_batches: int | None = None, template: dict | None = None
                     ) -> dict[str, float]:
  """The metrics (`metrics_from_sums`) of the held-out split: its first `num_batches` batches
  (default train.eval_batches; 0: the whole split). `eval_fn(batch)` returns `eval_step`'s sums
  over the (global) batch; every batch is dispatched before the first result is read, and the
  sums are added on the host in float64.

  With several processes each reads its rows of the global batches, and every process must
  call this: a host whose rows run out evaluates batches of zero weight shaped like `template`
  (e.g. a training batch), and over the whole split the hosts go on until every one is done. A
  mixture gives each dataset's metrics too ('eval_loss/copy'), each on its own held-out
  split."""
  by_source = pipeline.sources(experiment)
  sums = {name: _held_out_sums(eval_fn, source, tokenizer, num_batches, template)
          for name, source in by_source.items()}
  sums = {name: totals for name, totals in sums.items() if totals is not None}
  if not sums:
    return {}
  byte_tokens = experiment.data.tokenizer == 'byte'
  out = metrics_from_sums(add_sums(list(sums.values())), experiment.task, byte_tokens)
  if len(by_source) > 1:  # a mixture: each dataset's too
    for name, totals in sums.items():
      out.update({f'{key}/{name}': value for key, value in
                  metrics_from_sums(totals, experiment.task, byte_tokens).items()})
  return out


def _held_out_sums(eval_fn: Callable[[dict], dict], experiment: Experiment, tokenizer,
                   num_batches: int | None, template: dict | None) -> dict[str, float] | None:
  limit = experiment.train.eval_batches if num_batches is None else num_batches
  iterator = iter(pipeline.make_dataset(experiment, 'eval', tokenizer))
  per_batch = []
  while not limit or len(per_batch) < limit:
    batch = next(iterator, None)
    if not limit and not sharding.any_process(batch is not None):
      break
    if batch is None:
      if jax.process_count() == 1 or template is None:
        break
      batch = pipeline.empty_batch(template)
    template = batch
    per_batch.append(eval_fn(batch))
  iterator.close()
  return add_sums(per_batch) if per_batch else None


def add_sums(per_batch: list[dict]) -> dict[str, float]:
  """`losses.eval_sums` of several batches added up on the host, in float64 and in order."""
  totals = {key: 0.0 for key in losses.EVAL_SUMS}
  for sums_of_batch in jax.device_get(per_batch):
    for key in totals:
      totals[key] += float(sums_of_batch[key])
  return totals


def metrics_from_sums(totals: dict[str, float], task: str, byte_tokens: bool
                      ) -> dict[str, float]:
  """eval_loss (mean nll per target), eval_accuracy, and for token tasks eval_perplexity and,
  with a byte tokenizer, eval_bits_per_byte (one token is one byte)."""
  weight = max(totals['weight'], 1.0)
  out = {'eval_loss': totals['nll'] / weight, 'eval_accuracy': totals['correct'] / weight}
  if task != 'classify':
    out['eval_perplexity'] = math.exp(min(out['eval_loss'], 700.0))
    if byte_tokens:
      out['eval_bits_per_byte'] = out['eval_loss'] / math.log(2)
  return out


_eval_sums = jax.jit(losses.eval_sums, static_argnames=('model', 'task'))


def evaluate_run(run: Any, num_batches: int = 10, seq_len: int | None = None
                 ) -> dict[str, float]:
  """A trained run's (`transformer.inference.trained.load`) metrics on `num_batches` held-out
  batches of length `seq_len` (default: the run's data.seq_len), on one device."""
  experiment = run.config
  if seq_len is not None:  # the data's rules again, at this length (a synthetic task must fit)
    experiment = experiment.replace(data={'seq_len': seq_len})
    pipeline.check_data(experiment)
  task = experiment.task
  return held_out_metrics(lambda batch: _eval_sums(run.model, run.params, batch, task),
                          experiment, run.tokenizer(), num_batches)


def evaluate_batches(model: nn.Module, params: Any, batches: list[dict], task: str, *,
                     byte_tokens: bool = False) -> dict[str, float]:
  """The metrics of `metrics_from_sums` over given batches (e.g. the same held-out batches for
  several models), on one device."""
  return metrics_from_sums(add_sums([_eval_sums(model, params, batch, task)
                                     for batch in batches]), task, byte_tokens)


def held_out_batches(experiment: Experiment, tokenizer, num_batches: int) -> list[dict]:
  """The first `num_batches` batches of the held-out split (fewer if it is shorter)."""
  iterator = iter(pipeline.make_dataset(experiment, 'eval', tokenizer))
  batches = []
  for _ in range(num_batches):
    batch = next(iterator, None)
    if batch is None:
      break
    batches.append(batch)
  iterator.close()
  return batches


# --- BLEU ----------------------------------------------------------------------------------------


def held_out_pairs(experiment: Experiment, tokenizer, num_examples: int
                   ) -> list[tuple[list[int], list[int]]]:
  """(source ids ending in eos, reference target ids without eos) of the first `num_examples`
  held-out examples of a seq2seq dataset, unpacked from its batches."""
  iterator = iter(pipeline.make_dataset(experiment, 'eval', tokenizer))
  pairs = []
  for batch in iterator:
    for row in range(len(batch['inputs'])):
      src_ids, tgt_ids = batch['inputs_segment_ids'][row], batch['targets_segment_ids'][row]
      for segment in sorted(set(src_ids[src_ids > 0].tolist())):
        target = batch['targets'][row][tgt_ids == segment].tolist()
        pairs.append((batch['inputs'][row][src_ids == segment].tolist(),
                      target[:-1] if target[-1:] == [tokenizer.eos_id] else target))
    if len(pairs) >= num_examples:
      break
  iterator.close()
  return pairs[:num_examples]


def bleu(model: nn.Module, params: Any, pairs: list[tuple[list[int], list[int]]], tokenizer, *,
         max_len: int, beam_size: int = 4, alpha: float = 0.6, tokenize: str = '13a',
         chunk: int = 32) -> dict[str, Any]:
  """Corpus BLEU (sacrebleu) of beam-searched translations of the pairs' sources against their
  references; also the exact-match rate and the hypotheses. Sources go `chunk` at a time,
  padded to one shape (one compilation)."""
  import sacrebleu
  source_len = max(len(s) for s, _ in pairs)
  hypotheses = []
  for start in range(0, len(pairs), chunk):
    part = [source for source, _ in pairs[start:start + chunk]]
    padded = part + [[tokenizer.eos_id]] * (chunk - len(part))
    out, _ = decode.beam_search(model, params, padded, beam_size=beam_size, max_len=max_len,
                                alpha=alpha, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                                source_len=source_len)
    hypotheses += [tokenizer.decode(ids) for ids in out[:len(part)]]
  references = [tokenizer.decode(target) for _, target in pairs]
  score = sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize)
  exact = sum(h == r for h, r in zip(hypotheses, references)) / max(len(pairs), 1)
  return {'bleu': score.score, 'exact_match': exact, 'hypotheses': hypotheses,
          'references': references}


def bleu_metrics(model: nn.Module, params: Any, pairs, tokenizer, experiment: Experiment
                 ) -> dict[str, float]:
  """eval_bleu and eval_exact_match with the train section's beam size, length penalty and
  sacrebleu tokenizer (what the loop logs at each evaluation)."""
  t = experiment.train
  result = bleu(model, params, pairs, tokenizer, max_len=experiment.data.seq_len,
                beam_size=t.bleu_beam_size, alpha=t.bleu_alpha, tokenize=t.bleu_tokenize)
  return {'eval_bleu': result['bleu'], 'eval_exact_match': result['exact_match']}
