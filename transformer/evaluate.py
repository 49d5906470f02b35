"""Held-out evaluation of a trained model, outside the training loop: loss, perplexity, bits per
byte, accuracy, for any sequence length the model accepts (e.g. longer than it was trained on);
and BLEU of an encoder-decoder's beam-searched translations (sacrebleu).

  run = trained.load('runs/default')
  batches = held_out_batches(run.config, run.tokenizer(), num_batches=10, seq_len=512)
  evaluate(run.model, run.params, batches, task='lm', byte_tokens=True)

During training, `train.evaluate` computes the same numbers on the sharded train state.
"""

import copy
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer import losses


def held_out_batches(config: Any, tokenizer, num_batches: int, seq_len: int | None = None,
                     batch_size: int | None = None) -> list[dict]:
  """The first `num_batches` batches of the held-out split (fewer if it is shorter), packed to
  `seq_len` (default: the run's data.seq_len)."""
  from transformer.data import pipeline
  config = copy.deepcopy(config)
  with config.unlocked():
    if seq_len is not None:
      config.data.seq_len = seq_len
    if batch_size is not None:
      config.data.batch_size = batch_size
  iterator = iter(pipeline.make_dataset(config, 'eval', tokenizer))
  batches = []
  for _ in range(num_batches):
    batch = next(iterator, None)
    if batch is None:
      break
    batches.append(batch)
  iterator.close()
  return batches


_eval_sums = jax.jit(losses.eval_sums, static_argnames=('model', 'task'))


def add_sums(per_batch: list[dict]) -> dict[str, float]:
  """`losses.eval_sums` of several batches added up on the host, in float64 and in order."""
  totals = {key: 0.0 for key in losses.EVAL_SUMS}
  for sums_of_batch in jax.device_get(per_batch):
    for key in totals:
      totals[key] += float(sums_of_batch[key])
  return totals


def sums(model: nn.Module, params: Any, batches: list[dict], task: str) -> dict[str, float]:
  """nll, correct predictions and weight summed over the batches (every batch is dispatched
  before the first result is read)."""
  return add_sums([_eval_sums(model, params, batch, task) for batch in batches])


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


def evaluate(model: nn.Module, params: Any, batches: list[dict], task: str, *,
             byte_tokens: bool = False) -> dict[str, float]:
  """The metrics of `metrics_from_sums` over `batches`."""
  return metrics_from_sums(sums(model, params, batches, task), task, byte_tokens)


def evaluate_run(run, num_batches: int = 10, seq_len: int | None = None) -> dict[str, float]:
  """A `trained.Trained` run's metrics on `num_batches` held-out batches of length `seq_len`."""
  task = losses.task_of_model(run.cfg)
  batches = held_out_batches(run.config, run.tokenizer(), num_batches, seq_len)
  return evaluate(run.model, run.params, batches, task,
                  byte_tokens=run.config.data.tokenizer == 'byte')


# --- BLEU ----------------------------------------------------------------------------------------


def held_out_pairs(config: Any, tokenizer, num_examples: int) -> list[tuple[list[int], list[int]]]:
  """(source ids ending in eos, reference target ids without eos) of the first `num_examples`
  held-out examples of a seq2seq dataset, unpacked from its batches."""
  from transformer.data import pipeline
  iterator = iter(pipeline.make_dataset(config, 'eval', tokenizer))
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
  from transformer import decode
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
