"""Fine-tuning: a run (a checkpoint converted by transformer.convert, or any trained run) as the
start of a new one.

  python -m transformer.convert --from=gpt2 --to=runs/gpt2
  python -m transformer.train --config=configs/finetune.py:runs/gpt2 --workdir=runs/gpt2-ft \
      --config.data.dataset=shakespeare --config.train.num_steps=500

get_config(RUN) is RUN's config.json (its model, tokenizer, data and optimizer settings) with
train.init_from=RUN: the new run starts from RUN's newest parameters with a fresh optimizer at
step 0, in its own --workdir (RUN is only read). Change anything with --config overrides;
changing the head (e.g. --config.model.head=classify on a masked-LM BERT) starts the new
head's parameters fresh.
"""

import os

from transformer.training import runs


def get_config(run: str | None = None):
  if not run:
    raise ValueError('name the run to fine-tune: --config=configs/finetune.py:RUN_DIR')
  config = runs.read_config(run)
  config.train.init_from = os.path.abspath(run)
  return config
