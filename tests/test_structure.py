"""The layout's rules, read from the source: the import graph of transformer/ has no cycle,
every module imports only its own layer and those below it (the model imports no training,
data, command-line or plotting code), importing the library defines no command-line flags, and
functions stay short enough to read on one screen."""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'transformer'
COMMANDS = {'train', 'describe', 'bench', 'sweep', 'scaling', 'generate', 'viz', 'ablation',
            'evaluate', 'convert', 'data.__main__', 'cli'}
# Each layer may import itself and the layers listed for it (and nothing of the commands).
LAYERS = {
    'base': set(),  # config, errors, files
    'model': {'base'},
    'data': {'base'},
    'plots': set(),
    'presets': {'base'},
    'training': {'base', 'model', 'data', 'plots', 'presets'},
    'inference': {'base', 'model', 'data', 'plots', 'presets', 'training'},
    'analysis': {'base', 'model', 'data', 'plots', 'presets', 'training', 'inference'},
}
MODEL_THIRD_PARTY = {'jax', 'flax', 'numpy', 'optax'}  # what the model may import beyond stdlib
MAX_FUNCTION_LINES = 80


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def modules() -> dict[str, ast.Module]:
  return {module_name(p): ast.parse(p.read_text(), str(p)) for p in PACKAGE.rglob('*.py')}


def layer(module: str) -> str:
  short = module.removeprefix('transformer.')
  if short in COMMANDS:
    return 'command'
  if short in ('config', 'errors', 'files', 'transformer'):
    return 'base'
  return short.split('.')[0]


def imports(tree: ast.Module, known: set[str]) -> set[str]:
  """Our modules a module imports, anywhere in it (inside functions too)."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f'{node.module}.{alias.name}' for alias in node.names] + [node.module]
    else:
      continue
    for name in names:
      while name and name not in known:  # `from transformer.model import models` -> the module
        name = name.rpartition('.')[0]
      if name and name != 'transformer':
        found.add(name)
  return found


def graph() -> dict[str, set[str]]:
  trees = modules()
  known = set(trees)
  return {name: imports(tree, known) - {name} for name, tree in trees.items()}


def test_the_import_graph_has_no_cycle():
  edges = graph()
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(edges[node]):
      if state.get(nxt) == 'open':
        cycle = stack[stack.index(nxt):] + [nxt]
        pytest.fail('import cycle: ' + ' -> '.join(cycle))
      if nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = 'done'

  for node in sorted(edges):
    if node not in state:
      visit(node)


def test_every_module_imports_only_its_layer_and_those_below():
  edges = graph()
  assert len(edges) > 40  # the whole package was read
  wrong = []
  for module, targets in sorted(edges.items()):
    if layer(module) == 'command':
      continue
    allowed = LAYERS[layer(module)] | {layer(module)}
    for target in sorted(targets):
      if layer(target) not in allowed:
        wrong.append(f'{module} ({layer(module)}) imports {target} ({layer(target)})')
  assert not wrong, '\n'.join(wrong)


def test_the_model_imports_jax_and_flax_alone():
  stdlib = set(sys.stdlib_module_names)
  for path in (PACKAGE / 'model').glob('*.py'):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
      for name in names:
        top = name.split('.')[0]
        assert top in stdlib | MODEL_THIRD_PARTY | {'transformer'}, f'{path.name}: {name}'


def test_the_rules_can_fail():
  """The checks above see a violation when there is one."""
  tree = ast.parse('from transformer.training import loop\nimport transformer.plots\n')
  found = imports(tree, {'transformer.training.loop', 'transformer.plots'})
  assert found == {'transformer.training.loop', 'transformer.plots'}
  assert layer('transformer.model.models') == 'model'
  assert 'training' not in LAYERS['model'] and 'plots' not in LAYERS['model']
  assert layer('transformer.data.__main__') == 'command'


def test_importing_the_library_defines_no_flags():
  """Flags belong to the commands that read them (defined in their define_flags()), so any
  module imports into a notebook or another command without clashing flags."""
  names = sorted(m for m in modules() if layer(m) != 'command' or m == 'transformer.cli')
  commands = sorted(m for m in modules() if layer(m) == 'command' and m != 'transformer.cli')
  script = (
      'import importlib, sys\n'
      'from absl import flags\n'
      'import jax, flax, optax, orbax.checkpoint, grain, ml_collections, tensorflow_datasets\n'
      'before = set(flags.FLAGS)\n'
      f'for name in {names + commands!r}:\n'
      '  importlib.import_module(name)\n'
      'print(sorted(set(flags.FLAGS) - before))\n')
  done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        timeout=120, cwd=PACKAGE.parent)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == '[]', done.stdout


def test_ruff_passes():
  """The lint configured in pyproject.toml ([tool.ruff]): pyflakes, pycodestyle, import order
  and bugbear, over the library, configs, experiments and tests."""
  pytest.importorskip('ruff', reason="ruff comes with the test extra: pip install -e '.[test]'")
  done = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', '.'],
                        capture_output=True, text=True, timeout=120, cwd=PACKAGE.parent)
  assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_functions_fit_on_a_screen():
  long = []
  for name, tree in modules().items():
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES:
          long.append(f'{name}.{node.name}: {lines} lines')
  assert not long, '\n'.join(long)
