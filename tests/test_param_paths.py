"""Parameter-tree paths are a public contract: checkpoints and converted runs written before a
change must still load after it. These tables pin every path and shape of each family's `tiny`
preset (unrolled and scanned), and of the heads and options that add parameters."""

import jax
import pytest

from transformer import presets
from transformer.config import ModelConfig
from transformer.model import models

D, H, F, V = 64, 16, 256, 256  # the tiny preset: d_model, head size (4 heads), d_ff, bytes
ATTENTION = {
    'query/kernel': (D, 4, H), 'query/bias': (4, H), 'key/kernel': (D, 4, H), 'key/bias': (4, H),
    'value/kernel': (D, 4, H), 'value/bias': (4, H), 'out/kernel': (4, H, D), 'out/bias': (D,)}
NORM = {'scale': (D,), 'bias': (D,)}
MLP = {'wi/kernel': (D, F), 'wi/bias': (F,), 'wo/kernel': (F, D), 'wo/bias': (D,)}


def _under(prefix, table):
  return {f'{prefix}/{name}': shape for name, shape in table.items()}


SELF_ATTENTION_BLOCK = {**_under('attention', ATTENTION), **_under('attention_norm', NORM),
                        **_under('mlp', MLP), **_under('mlp_norm', NORM)}
CROSS_ATTENTION_BLOCK = {
    **_under('self_attention', ATTENTION), **_under('self_attention_norm', NORM),
    **_under('cross_attention', ATTENTION), **_under('cross_attention_norm', NORM),
    **_under('mlp', MLP), **_under('mlp_norm', NORM)}

TOP = {
    'decoder_only': {'embedder/embedding': (V, D), 'embedder/positions/embedding': (V, D),
                     **_under('decoder/final_norm', NORM)},
    'encoder_only': {'embedder/embedding': (V, D), 'embedder/positions/embedding': (V, D),
                     'embedder/type_embedding': (2, D), **_under('embedder/norm', NORM),
                     'mlm_dense/kernel': (D, D), 'mlm_dense/bias': (D,),
                     **_under('mlm_norm', NORM), 'lm_head/bias': (V,)},
    'encoder_decoder': {'embedder/embedding': (V, D)},
}
STACKS = {'decoder_only': {'decoder': SELF_ATTENTION_BLOCK},
          'encoder_only': {'encoder': SELF_ATTENTION_BLOCK},
          'encoder_decoder': {'encoder': SELF_ATTENTION_BLOCK, 'decoder': CROSS_ATTENTION_BLOCK}}


def paths(config) -> dict[str, tuple[int, ...]]:
  cfg = ModelConfig.from_config(config)
  abstract = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
  return {'/'.join(str(k.key) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}


def expected(family, scanned, layers=2):
  want = dict(TOP[family])
  for stack, block in STACKS[family].items():
    for name, shape in block.items():
      if scanned:
        want[f'{stack}/layers/{name}'] = (layers, *shape)
      else:
        want.update({f'{stack}/layers_{i}/{name}': shape for i in range(layers)})
  return want


@pytest.mark.parametrize('scanned', [False, True])
@pytest.mark.parametrize('family', ['decoder_only', 'encoder_only', 'encoder_decoder'])
def test_tiny_parameter_paths_are_pinned(family, scanned):
  config = presets.get_config(family, 'tiny')
  config.model.scan_layers = scanned
  assert paths(config) == expected(family, scanned)


def test_optional_parameters_keep_their_paths():
  config = presets.get_config('encoder_only', 'tiny')
  config.model.head = 'classify'
  got = paths(config)
  assert {k: got[k] for k in ('pooler/kernel', 'pooler/bias', 'classifier/kernel',
                              'classifier/bias')} == {
      'pooler/kernel': (D, D), 'pooler/bias': (D,), 'classifier/kernel': (D, 2),
      'classifier/bias': (2,)}
  config = presets.get_config('decoder_only', 'tiny')
  config.model.update(tie_embeddings=False, logits_bias=True, activation='swiglu')
  got = paths(config)
  assert got['lm_head/kernel'] == (D, V) and got['lm_head/bias'] == (V,)
  assert got['decoder/layers_1/mlp/wi_gate/kernel'] == (D, F)
  config = presets.get_config('encoder_decoder', 'tiny')
  config.model.share_embeddings = False
  got = paths(config)
  assert got['source_embedder/embedding'] == got['target_embedder/embedding'] == (V, D)
  assert 'embedder/embedding' not in got
