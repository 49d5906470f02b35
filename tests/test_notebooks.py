"""The notebooks of experiments/notebooks/ (every *.ipynb there, found by glob): each follows the
convention of experiments/notebooks/README.md and runs top to bottom in its smoke setting.

A smoke run executes a temporary copy with papermill (kernel 'python3', this interpreter) and
SMOKE=True injected after the cell tagged `parameters`; any cell that raises fails the test,
naming the cell. The committed notebook itself is only read.
"""

import ast
import glob
import os
import sys

import nbformat
import papermill
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, 'experiments', 'notebooks', '*.ipynb')))
COLAB = ('https://colab.research.google.com/github/transformer-research/transformer/blob/main/'
         'experiments/notebooks/')
INSTALL_URL = 'git+https://github.com/transformer-research/transformer'
SMOKE_TIMEOUT_S = 300  # per cell; a smoke run takes ~30 s in all


def _name(path: str) -> str:
  return os.path.basename(path)


def _code_cells(notebook) -> list:
  return [cell for cell in notebook.cells if cell.cell_type == 'code']


def _assigned(source: str) -> dict:
  """{name: value} of the top-level `NAME = <literal>` assignments of a cell."""
  values = {}
  for node in ast.parse(source).body:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
        node.targets[0], ast.Name):
      try:
        values[node.targets[0].id] = ast.literal_eval(node.value)
      except ValueError:
        values[node.targets[0].id] = None  # not a literal
  return values


def test_there_are_notebooks():
  assert NOTEBOOKS, 'no notebooks found in experiments/notebooks/'


@pytest.mark.parametrize('path', NOTEBOOKS, ids=_name)
def test_notebook_follows_the_convention(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  name = _name(path)

  title = notebook.cells[0]
  assert title.cell_type == 'markdown' and title.source.lstrip().startswith('# '), (
      f'{name}: the first cell must be a markdown title')
  assert COLAB + name in title.source and 'colab-badge.svg' in title.source, (
      f'{name}: the title cell needs the "Open in Colab" badge linking to {COLAB + name}')

  install = _code_cells(notebook)[0].source
  assert 'pip' in install and INSTALL_URL in install, (
      f'{name}: the first code cell must install {INSTALL_URL} (on Colab)')
  assert 'import transformer' in install and 'except ImportError' in install, (
      f'{name}: the install cell must install nothing where `import transformer` works')

  parameters = [cell for cell in _code_cells(notebook)
                if 'parameters' in cell.metadata.get('tags', [])]
  assert len(parameters) == 1, f'{name}: exactly one code cell must be tagged `parameters`'
  assert _assigned(parameters[0].source).get('SMOKE', None) is False, (
      f'{name}: the `parameters` cell must set SMOKE = False (the full setting)')

  # Committed with the outputs of a full run, top to bottom: a reader sees the results.
  counts = [cell.execution_count for cell in _code_cells(notebook)]
  assert None not in counts and counts == sorted(counts), (
      f'{name}: commit it executed top to bottom (execution counts {counts})')
  assert not any('injected-parameters' in cell.metadata.get('tags', [])
                 for cell in notebook.cells), (
      f'{name}: the committed run must be the full setting (it has injected parameters)')


@pytest.mark.slow(10)
@pytest.mark.parametrize('path', NOTEBOOKS, ids=_name)
def test_notebook_runs_in_smoke_setting(path, tmp_path, data_dir, monkeypatch):
  name = _name(path)
  # The kernel: `python` of kernelspec 'python3' is this interpreter, importing this checkout.
  monkeypatch.setenv('PATH', os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  monkeypatch.setenv('TFDS_DATA_DIR', data_dir)  # the corpus, already built
  monkeypatch.setenv('TMPDIR', str(tmp_path))  # the notebooks' temporary workdirs
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')  # compiling dominates a smoke run
  failure = None
  try:
    papermill.execute_notebook(
        path, str(tmp_path / name), parameters={'SMOKE': True}, kernel_name='python3',
        cwd=str(tmp_path), progress_bar=False, log_output=False,
        execution_timeout=SMOKE_TIMEOUT_S)
  except papermill.PapermillExecutionError as e:
    failure = e
  if failure is not None:
    sources = [cell.source for cell in nbformat.read(path, as_version=4).cells]
    where = (f'cell {sources.index(failure.source) + 1} of {len(sources)}'
             if failure.source in sources else 'a cell')
    pytest.fail(f'{name}: {where} raised {failure.ename}: {failure.evalue}\n'
                f'--- the cell ---\n{failure.source}', pytrace=False)
