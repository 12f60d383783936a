"""The notebook machinery: pairing, the parameters cell, the runner, and the executed run."""

from __future__ import annotations

import json
from pathlib import Path

import jupytext
import nbformat
import pytest

from ecrec import book

CHAPTERS = book.discover()
REQUIRED_PARAMETERS = {"profile", "seed", "output_dir", "sizes"}


def test_there_are_chapters():
    stems = [p.stem for p in CHAPTERS]
    assert stems == sorted(stems)
    assert stems[0] == "01_data"


def _cells(nb):
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_pair_in_sync_and_without_outputs(path: Path):
    ipynb = path.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb} missing: run `jupytext --to ipynb {path}`"
    paired = nbformat.read(ipynb, as_version=4)
    for cell in paired.cells:
        if cell.cell_type == "code":
            assert cell.get("outputs", []) == [], f"{ipynb} carries outputs: clear them"
            assert cell.get("execution_count") is None, f"{ipynb} carries execution counts"
    assert _cells(jupytext.read(path)) == _cells(jupytext.read(ipynb)), (
        f"{ipynb} has drifted from {path}: run `jupytext --to ipynb {path}`"
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_one_parameters_cell_with_required_names(path: Path):
    params = book.parameters_cell(book.read_notebook(path), str(path))
    assert REQUIRED_PARAMETERS <= set(params), f"{path} lacks {REQUIRED_PARAMETERS - set(params)}"
    assert params["profile"] == "auto"
    assert isinstance(params["seed"], int)


def test_parameters_cell_must_be_unique():
    nb = nbformat.v4.new_notebook()
    with pytest.raises(book.NotebookError, match="exactly one cell tagged 'parameters', found 0"):
        book.parameters_cell(nb)
    tagged = nbformat.v4.new_code_cell("a = 1", metadata={"tags": ["parameters"]})
    nb.cells = [tagged, tagged]
    with pytest.raises(book.NotebookError, match="found 2"):
        book.parameters_cell(nb)


TOY = '''# %% tags=["parameters"]
profile = "auto"
seed = 0
output_dir = "out"
sizes = None

# %%
import json, os
os.makedirs(output_dir, exist_ok=True)
assert seed != 13, "unlucky seed"
json.dump({"metrics": {"seed": seed}}, open(os.path.join(output_dir, "metrics.json"), "w"))
'''


@pytest.fixture
def toy(tmp_path) -> Path:
    path = tmp_path / "99_toy.py"
    path.write_text(TOY)
    return path


def test_runner_rejects_unknown_parameter(toy, tmp_path):
    with pytest.raises(book.NotebookError, match=r"unknown parameter\(s\) \['sede'\].*accepts"):
        book.execute(toy, tmp_path / "run", {"sede": 1}, progress=False)
    assert not (tmp_path / "run" / "executed" / "99_toy.ipynb").exists()


def test_runner_executes_and_keeps_notebook(toy, tmp_path):
    result = book.execute(toy, tmp_path / "run", {"seed": 7}, progress=False)
    assert result.ok, result.error
    assert json.loads((result.output_dir / "metrics.json").read_text()) == {"metrics": {"seed": 7}}
    executed = nbformat.read(result.executed, as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)


def test_runner_reports_cell_error_and_keeps_notebook(toy, tmp_path):
    result = book.execute(toy, tmp_path / "run", {"seed": 13}, progress=False)
    assert not result.ok
    assert "AssertionError" in result.error and "unlucky seed" in result.error
    assert result.executed.is_file(), "the failed notebook must be kept for inspection"


def test_cli_rejects_unknown_parameter(capsys):
    assert book.main(["run", "--profile", "smoke", "-p", "no_such_knob=1"]) == 2
    assert "unknown parameter(s) ['no_such_knob']" in capsys.readouterr().err


def test_discover_rejects_unknown_chapter():
    with pytest.raises(book.NotebookError, match="no notebook matches"):
        book.discover(["77"])


# --- the smoke run of every chapter (what CI executes) ----------------------


@pytest.mark.notebook
@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_executed_every_cell_without_error(smoke_run, path: Path):
    executed = smoke_run / "executed" / f"{path.stem}.ipynb"
    assert executed.is_file(), f"{path.stem} was not executed"
    nb = nbformat.read(executed, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    for cell in code:
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{path.stem}: cell failed: {errors[0].get('ename')}: {errors[0].get('evalue')}"
        assert cell.get("execution_count") is not None, f"{path.stem}: a cell never ran:\n{cell.source[:200]}"
    record = json.loads((smoke_run / path.stem / "metrics.json").read_text())
    assert record["profile"] == "smoke"
    assert {"seed", "wall_time_s", "device", "versions", "metrics"} <= set(record)
    assert record["versions"]["torch"] != "not installed"
