"""Generate text from a trained checkpoint.

  python -m transformer.generate --workdir=runs/default --prompt='ROMEO.' [--num_tokens=200]
      [--temperature=0.8] [--top_k=40] [--top_p=0.95] [--num_samples=3] [--seed=0] [--step=N]
  python -m transformer.generate --workdir=RUN --prompt='source text' [--beam_size=4 --alpha=0.6]

A decoder-only run continues each --prompt (repeat the flag for several; --num_samples draws
that many continuations of each). An encoder-only run answers each --prompt: a masked LM
fills every [MASK] with its --top_k most likely tokens (default 5) and their probabilities,
a classifier prints the probability of each class. An encoder-decoder run decodes a target
for each --prompt (the source): by beam search with --beam_size > 0, else greedily or sampled
as above. The tokens are decoded with a KV cache (transformer/model/decode.py).
"""

import sys

from absl import app, flags

from transformer import cli
from transformer.errors import ConfigError
from transformer.inference import generation, trained
from transformer.training import runs


def check_flags(f, cfg) -> None:
  """One line naming the flag, before anything is compiled."""
  if cfg.family == 'encoder_only':
    if not f.prompt or '' in f.prompt:
      raise ConfigError('--prompt is required: the text to classify, or with [MASK] where a '
                        'token is to be filled (an encoder_only run)')
    if not 1 <= f.top_k <= cfg.vocab_size and cfg.head == 'mlm':
      raise ConfigError(f'--top_k={f.top_k} is invalid: must be in [1, {cfg.vocab_size}] (the '
                        'candidates shown for each [MASK]; 0 means 5 here)')
    return
  if cfg.family == 'encoder_decoder' and (not f.prompt or '' in f.prompt):
    raise ConfigError('--prompt is required (the source text, for an encoder_decoder run)')
  checks = [('num_tokens', f.num_tokens >= 1, '>= 1'), ('temperature', f.temperature >= 0, '>= 0'),
            ('top_k', 0 <= f.top_k <= cfg.vocab_size, f'in [0, {cfg.vocab_size}]'),
            ('top_p', 0 < f.top_p <= 1, 'in (0, 1]'), ('num_samples', f.num_samples >= 1, '>= 1'),
            ('beam_size', f.beam_size >= 0, '>= 0 (0: no beam search)'),
            ('alpha', f.alpha >= 0, '>= 0')]
  for name, ok, allowed in checks:
    if not ok:
      raise ConfigError(f'--{name}={getattr(f, name)} is invalid: must be {allowed}')
  if f.beam_size and cfg.family != 'encoder_decoder':
    raise ConfigError(f'--beam_size={f.beam_size}: beam search is for encoder_decoder runs; '
                      f'this one is {cfg.family} (sample with --temperature/--top_k/--top_p)')
  if cfg.family == 'encoder_decoder':
    cfg.check_length(f.num_tokens, f'--num_tokens={f.num_tokens}')


def define_flags():
  cli.define_workdir_flag()
  flags.DEFINE_multi_string('prompt', [''], 'the text to continue (decoder_only) or the source '
                            '(encoder_decoder); repeat for several')
  flags.DEFINE_integer('num_tokens', 200, 'tokens to generate (at most)')
  flags.DEFINE_float('temperature', 0.8, 'sampling temperature; 0 = greedy')
  flags.DEFINE_integer('top_k', 0, 'sample from the k most likely tokens (0 = all)')
  flags.DEFINE_float('top_p', 1.0, 'sample from the nucleus holding this much probability')
  flags.DEFINE_integer('num_samples', 1, 'samples per prompt')
  flags.DEFINE_integer('seed', 0, 'randomness of the samples')
  flags.DEFINE_integer('step', None, 'checkpoint to read (default: the newest)')
  flags.DEFINE_integer('beam_size', 0, 'encoder_decoder: beam search with this many beams')
  flags.DEFINE_float('alpha', 0.6, 'beam search: length penalty ((5 + length) / 6)^alpha')


def answer_encoder(run, f) -> None:
  """An encoder_only run: the [MASK] fillings (mlm) or the class probabilities (classify)."""
  from transformer.inference import encoder
  if run.cfg.head == 'mlm':
    for prompt, masks in zip(f.prompt, encoder.fill_mask(run, f.prompt, f.top_k)):
      print(prompt)
      for i, candidates in enumerate(masks):
        shown = ', '.join(f'{token!r} {prob:.3f}' for token, prob in candidates)
        print(f'  [MASK] {i + 1}: {shown}')
    return
  names = encoder.class_names(run)
  for prompt, probs in zip(f.prompt, encoder.classify(run, f.prompt)):
    best = int(probs.argmax())
    shown = ', '.join(f'{name} {p:.3f}' for name, p in zip(names, probs))
    print(f'{prompt} -> {names[best]} ({shown})')


def main(argv):
  f = cli.begin_workdir_command(argv)
  try:
    cfg = runs.read_experiment(f.workdir).model
    if cfg.family == 'encoder_only' and cfg.head == 'mlm' and f.top_k == 0:
      f.top_k = 5
    check_flags(f, cfg)
    run = trained.load(f.workdir, f.step)
    if cfg.family == 'encoder_only':
      answer_encoder(run, f)
      return
  except ConfigError as e:
    cli.fail(str(e))
  try:  # decode checks lengths (a prompt longer than the model's context) before compiling
    texts = generation.generate_text(
        run, f.prompt, num_tokens=f.num_tokens, temperature=f.temperature, top_k=f.top_k,
        top_p=f.top_p, num_samples=f.num_samples, seed=f.seed, beam_size=f.beam_size,
        alpha=f.alpha)
  except ValueError as e:
    cli.fail(f'--prompt: {e}')
  for i, text in enumerate(texts):
    prompt = f.prompt[i // f.num_samples]
    if run.cfg.family == 'decoder_only':
      print(prompt + text)
    else:
      print(f'{prompt} -> {text}')
    if i + 1 < len(texts):
      print('-' * 40)
  sys.stdout.flush()


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
