"""The notebook machinery: pairing, the parameters cell, the runner, and the executed run."""

from __future__ import annotations

import json
import os
import re
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


def test_runner_measures_the_chapters_cpu(tmp_path):
    """A chapter that keeps one core busy for 1.5 s reports at least that much CPU, and no more than its cores allow."""
    path = tmp_path / "98_busy.py"
    path.write_text(TOY + "import time\nt0 = time.process_time()\nwhile time.process_time() - t0 < 1.5:\n    pass\n")
    result = book.execute(path, tmp_path / "run", progress=False)
    assert result.ok, result.error
    assert 1.5 <= result.cpu_seconds <= result.seconds * os.cpu_count() + 0.5
    meta = nbformat.read(result.executed, as_version=4).metadata["ecrec"]
    assert meta["cpu_seconds"] == result.cpu_seconds


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


def test_discover_puts_the_appendices_after_the_chapters(tmp_path):
    for name in ("A1_x.py", "10_c.py", "02_b.py", "01_a.py", "B1_y.py", "notes.py", "A1_x.ipynb"):
        (tmp_path / name).write_text("")
    assert [p.stem for p in book.discover(notebooks_dir=tmp_path)] == ["01_a", "02_b", "10_c", "A1_x", "B1_y"]
    assert [p.stem for p in book.discover(["02", "A1"], notebooks_dir=tmp_path)] == ["02_b", "A1_x"]
    assert book.is_appendix("A1_ddp") and not book.is_appendix("10_real_clicks")


def test_toc_lists_the_appendices_as_their_own_part():
    toc = book.toc_yaml(["01_a", "02_b", "A1_x"]).splitlines()
    assert toc == ["format: jb-book", "root: intro", "parts:",
                   "- caption: Chapters", "  chapters:", "  - file: scorecard", "  - file: chapters/01_a",
                   "  - file: chapters/02_b",
                   "- caption: Appendix", "  chapters:", "  - file: chapters/A1_x",
                   "- chapters:", "  - file: credits"]
    assert "Appendix" not in book.toc_yaml(["01_a"])  # no appendix, no empty part


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


def test_cli_accepts_the_cpu_profile(capsys):
    # argparse accepts cpu; the run then stops at the (checked first) unknown parameter
    assert book.main(["run", "--profile", "cpu", "--only", "01", "-p", "no_such_knob=1"]) == 2
    assert "unknown parameter(s) ['no_such_knob']" in capsys.readouterr().err


# --- parameters arrive as values; the kernel's stderr stays quiet ---------------

TYPES = """# %% tags=["parameters"]
profile = "auto"
seed = 0
output_dir = "out"
sizes = None
dims = (8,)

# %%
import json, os
def shape(v):
    if isinstance(v, dict):
        return {"dict": [[shape(k), shape(x)] for k, x in v.items()]}
    if isinstance(v, (list, tuple, set)):
        return {type(v).__name__: [shape(x) for x in sorted(v, key=repr)]}
    return [type(v).__name__, v]
os.makedirs(output_dir, exist_ok=True)
json.dump({"sizes": shape(sizes), "dims": shape(dims)}, open(os.path.join(output_dir, "metrics.json"), "w"))
"""


def test_tuples_lists_and_nested_literals_reach_the_notebook_as_values(tmp_path, capfd, monkeypatch):
    used = []
    monkeypatch.setattr(book, "_kernel_manager_class", lambda prefix, real=book._kernel_manager_class: (
        used.append(prefix) or real(prefix)))
    path = tmp_path / "96_types.py"
    path.write_text(TYPES)
    params = book._parse_params(["dims=(64, 32)", "sizes={'hidden': (64, 32), 'lrs': [1e-3, (2,)], 3: {'a'}}"])
    result = book.execute(path, tmp_path / "run", params, progress=False)
    assert result.ok, result.error
    got = json.loads((result.output_dir / "metrics.json").read_text())
    assert got["dims"] == {"tuple": [["int", 32], ["int", 64]]}
    assert got["sizes"] == {"dict": [
        [["str", "hidden"], {"tuple": [["int", 32], ["int", 64]]}],
        [["str", "lrs"], {"list": [{"tuple": [["int", 2]]}, ["float", 0.001]]}],
        [["int", 3], {"set": [["str", "a"]]}],
    ]}
    injected = [c for c in nbformat.read(result.executed, as_version=4).cells
                if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "remove-input" in injected[0].metadata["tags"]
    assert "dims = (64, 32)\n" in injected[0].source
    # the kernel talks over IPC: ipykernel's "running over TCP without encryption" warning is gone
    err = capfd.readouterr().err
    assert "without encryption" not in err and "Kernel is running over TCP" not in err, err
    assert len(used) == 1 and list(used[0].parent.glob(used[0].name + "-*")) == []  # its sockets removed


def test_parameter_values_that_are_not_literals_are_refused(tmp_path):
    assert book._parse_params(["seed=7", "model_name=minilm", "lr=1e-3", "x=[1, (2, 3)]"]) == {
        "seed": 7, "model_name": "minilm", "lr": 1e-3, "x": [1, (2, 3)]}
    for broken in ["sizes={'a': foo}", "dims=(64, 32", "x=[1, 2,,]"]:
        with pytest.raises(book.NotebookError, match=r"not a Python literal.*quote the whole option"):
            book._parse_params([broken])
    with pytest.raises(book.NotebookError, match="name=value"):
        book._parse_params(["seed"])
    assert book.parameters_source({"a": (1, 2), "b": {1: [None, True]}}) == (
        "# Parameters\na = (1, 2)\nb = {1: [None, True]}\n")
    for bad in [float("nan"), Path("x"), {"k": float("inf")}]:
        with pytest.raises(book.NotebookError, match="is not a Python literal"):
            book.parameters_source({"v": bad})
    toy = tmp_path / "95_toy.py"
    toy.write_text(TOY)
    with pytest.raises(book.NotebookError, match=r"parameter seed = nan is not a Python literal"):
        book.execute(toy, tmp_path / "run", {"seed": float("nan")}, progress=False)
    assert not (tmp_path / "run" / "executed").exists()  # refused before anything ran or was written
    assert book.main(["run", "--profile", "smoke", "--only", "01", "-p", "sizes={'n': (1,"]) == 2


@pytest.mark.parametrize("text,shown", [
    ("abc\n", "abc\n"),  # nothing to do: unchanged
    ("a 0%|\ra 50%|\ra 100%|\n", "a 100%|\n"),  # a bar's refreshes: its final state
    ("loss 1\rloss 2\nnext\n", "loss 2\nnext\n"),  # the overwritten line is not glued to the next
    ("x\r\ny\r\n", "x\ny\n"),  # \r\n is a line end
    ("abcdef\rxy\n", "xycdef\n"),  # a shorter text overwrites the start only, as on a terminal
    ("bar 50%\r       \r", ""),  # a bar that clears itself (leave=False) leaves nothing
    ("done\r", "done"),  # a trailing \r moves the cursor and erases nothing
    ("abcdef\rab\x1b[K\n", "ab\n"),  # ESC[K erases to the end of the line
    # nested tqdm bars: the inner bar one line down, then the cursor back up (ESC[A)
    ("outer 0%\n\rinner 0%\x1b[A\router 50%\n\rinner 100%\x1b[A\router 100%\n", "outer 100%\ninner 100%"),
    ("plain \x1b[31mred\x1b[0m\n", "plain \x1b[31mred\x1b[0m\n"),  # colours are kept
])
def test_collapse_carriage_returns_shows_what_a_terminal_shows(text, shown):
    assert book._collapse_carriage_returns(text) == shown
    assert book._collapse_carriage_returns(shown) == shown  # idempotent


# --- a cell that never returns ------------------------------------------------

HANGS = '''# %% tags=["parameters"]
profile = "auto"
seed = 0
output_dir = "out"
sizes = None

# %%
x = 1

# %%
# spins forever
while True:
    pass

# %%
y = 2
'''


def test_runner_stops_a_cell_at_the_timeout_and_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(book, "_ipc_prefix", lambda: tmp_path / "kernel-ipc")
    path = tmp_path / "98_hangs.py"
    path.write_text(HANGS)
    result = book.execute(path, tmp_path / "run", progress=False, cell_timeout=2)
    assert not result.ok
    assert "did not finish within 2 s (--cell-timeout)" in result.error
    # In [1] parameters, In [2] the injected parameters, In [3] x = 1
    assert "cell In [4] ('while True:')" in result.error, result.error
    executed = nbformat.read(result.executed, as_version=4)
    assert executed.metadata["ecrec"]["ok"] is False and executed.metadata["ecrec"]["cell_timeout"] == 2
    assert executed.cells[-1].get("execution_count") is None, "the cell after the timeout must not run"
    assert list(tmp_path.glob("kernel-ipc-*")) == []  # the stopped kernel's IPC sockets are gone too
    assert book.run_failures(executed)


def test_runner_refuses_a_negative_timeout(toy, tmp_path):
    with pytest.raises(book.NotebookError, match="cell_timeout"):
        book.execute(toy, tmp_path / "run", progress=False, cell_timeout=-1)


# --- progress bars, warnings and the kernel's environment ---------------------

BARS = '''# %% tags=["parameters"]
profile = "auto"
seed = 0
output_dir = "out"
sizes = None

# %%
import os, time
from tqdm.auto import tqdm
for i in tqdm(range(40), desc="outer"):
    time.sleep(0.01)
print("after")

# %%
for i in tqdm(range(30), desc="inner", leave=False):
    time.sleep(0.01)
    if i % 10 == 0:
        print("step", i)

# %%
print(os.environ["PYTHONHASHSEED"], hash("ecrec"))
'''


def test_executed_progress_bar_leaves_one_line_and_no_warning(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "97_bars.py"
    path.write_text(BARS)
    result = book.execute(path, tmp_path / "run", progress=False)
    assert result.ok, result.error
    code = [c for c in nbformat.read(result.executed, as_version=4).cells if c.cell_type == "code"]
    outer, inner, hashes = code[-3:]
    streams = [(o["name"], o["text"]) for o in outer.outputs]
    assert len(streams) == 2, streams  # one bar line (final state), one print; no IProgress warning
    (name, bar), printed = streams[0], streams[1]
    assert name == "stderr" and bar.startswith("outer: 100%|") and "40/40" in bar and "\r" not in bar
    assert printed == ("stdout", "after\n")
    # leave=False: the bar clears itself, only the prints remain
    assert [(o["name"], o["text"]) for o in inner.outputs] == [("stdout", "step 0\nstep 10\nstep 20\n")]
    assert book.stderr_findings(nbformat.read(result.executed, as_version=4)) == []
    # the kernel's hash() is fixed by PYTHONHASHSEED=0
    seed, value = hashes.outputs[0]["text"].split()
    oracle = subprocess.run([sys.executable, "-c", "print(hash('ecrec'))"], capture_output=True, text=True,
                            env={"PYTHONHASHSEED": "0"}, check=True).stdout.strip()
    assert (seed, value) == ("0", oracle)


FLOOD = book.FLOOD_LINES


def _stream(name, text):
    return nbformat.v4.new_output("stream", name=name, text=text)


def _cell(outputs, tags=(), count=1):
    cell = nbformat.v4.new_code_cell("pass", execution_count=count, metadata={"tags": list(tags)})
    cell.outputs = outputs
    return cell


def test_tidy_streams_keeps_the_final_state_of_each_bar():
    nb = nbformat.v4.new_notebook()
    refreshes = [_stream("stderr", f"\rloop: {p:3d}%|") for p in range(0, 101, 10)]
    nb.cells = [
        _cell([_stream("stderr", "warn line\n")] + refreshes[:5] + [_stream("stdout", "epoch 1\n")]
              + refreshes[5:] + [_stream("stdout", "done\n"), _stream("stderr", "\n")]),
        _cell([_stream("stderr", "\rx:   0%|"), _stream("stdout", "a\n"),
               _stream("stderr", "\r            "), _stream("stderr", "\r")]),
        _cell([_stream("stdout", "a\n"), _stream("stdout", "b\n"), nbformat.v4.new_output(
            "execute_result", data={"text/plain": "1"}, execution_count=1), _stream("stdout", "\n")]),
    ]
    removed = book.tidy_streams(nb)
    got = [[(o.get("name"), o.get("text")) for o in c.outputs] for c in nb.cells]
    assert got == [
        [("stderr", "warn line\n"), ("stdout", "epoch 1\n"), ("stderr", "loop: 100%|\n"), ("stdout", "done\n")],
        [("stdout", "a\n")],
        [("stdout", "a\nb\n"), (None, None), ("stdout", "\n")],  # a plain empty print stays
    ]
    assert removed == (15 - 4) + (4 - 1) + (4 - 3)
    before = nbformat.writes(nb)
    assert book.tidy_streams(nb) == 0 and nbformat.writes(nb) == before  # idempotent


def test_stderr_findings_kinds_and_allow_tags():
    nb = nbformat.v4.new_notebook()
    warning = "/x/y.py:3: FutureWarning: `is_gradient_checkpointing` is deprecated\n  warnings.warn(\n"
    traceback = "Traceback (most recent call last):\n  File ...\nValueError: boom\n"
    bars = "".join(f"epoch {i}: 100%|##########| 5/5 [00:00<00:00]\n" for i in range(FLOOD + 1))
    nb.cells = [
        _cell([_stream("stderr", warning)], count=1),
        _cell([_stream("stderr", traceback)], count=2),
        _cell([nbformat.v4.new_output("error", ename="KeyError", evalue="'a'", traceback=[])], count=3),
        _cell([_stream("stderr", bars)], count=4),
        _cell([_stream("stderr", "\rloop: 10%|#| 1/10 [\rloop: 20%|#| 2/10 [")], count=5),
        _cell([_stream("stderr", warning), nbformat.v4.new_output("error", ename="E", evalue="", traceback=[])],
              tags=["show-warnings"], count=6),
        _cell([_stream("stdout", "UserWarning: printed on stdout is prose\n")], count=7),
    ]
    found = [(f.kind, f.cell) for f in book.stderr_findings(nb)]
    assert found == [("warning", "In [1]"), ("traceback", "In [2]"), ("error", "In [3]"),
                     ("progress-flood", "In [4]"), ("progress-flood", "In [5]")]
    assert book.stderr_findings(nb)[0].text.startswith("/x/y.py:3: FutureWarning: `is_gradient")


# --- building from a failed run ---------------------------------------------


def _fake_executed(run_dir: Path, stem: str, *, error: bool = False, runner_failed: bool = False,
                   unrun: bool = False) -> None:
    nb = nbformat.v4.new_notebook()
    ok_cell = nbformat.v4.new_code_cell("x = 1", execution_count=1)
    ok_cell.outputs = []
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {stem}"), ok_cell]
    if error:
        bad = nbformat.v4.new_code_cell("1 / 0", execution_count=2)
        bad.outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                                              traceback=[])]
        nb.cells.append(bad)
    if unrun:
        nb.cells.append(nbformat.v4.new_code_cell("y = 2"))
    nb.metadata["ecrec"] = {"ok": not runner_failed, "error": "the kernel died" if runner_failed else ""}
    (run_dir / "executed").mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, run_dir / "executed" / f"{stem}.ipynb")


def test_build_refuses_a_failed_run_and_names_the_chapters(tmp_path, capsys):
    stems = [p.stem for p in CHAPTERS]
    run_dir = tmp_path / "smoke"
    for i, stem in enumerate(stems):
        _fake_executed(run_dir, stem, error=i == 0, runner_failed=i == 1, unrun=i == 2)
    assert book.main(["build", "--profile", "smoke", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "refusing to build the book from a failed run" in err
    assert f"{stems[0]}: cell In [2] raised ZeroDivisionError: division by zero" in err
    assert f"{stems[1]}: the kernel died" in err
    assert f"{stems[2]}: cell 2 ('y = 2') never ran" in err
    assert not any(f"{stem}:" in err for stem in stems[3:])
    assert not (run_dir / "book").exists(), "nothing may be built from a failed run"


def test_build_writes_the_scorecard_right_after_the_intro(tmp_path, monkeypatch):
    import subprocess

    from ecrec.verdict import thesis_row

    run_dir = tmp_path / "auto"
    for stem in (p.stem for p in CHAPTERS):
        _fake_executed(run_dir, stem)
    row = thesis_row(chapter="04", question="text added to the ID DNN", metric="AUC", lm="DNN + text",
                     baseline="DNN", r={"diff": 0.01, "low": 0.004, "high": 0.016}, train_size=1536)
    (run_dir / CHAPTERS[0].stem).mkdir()
    (run_dir / CHAPTERS[0].stem / "metrics.json").write_text(json.dumps({"metrics": {"thesis": [row]},
                                                                          "profile": "cpu"}))
    calls = []
    monkeypatch.setattr(book.subprocess, "run",  # no Sphinx here: the page and the toc are what is tested
                        lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0, "", ""))
    book.build("auto", output=tmp_path)
    book_dir = run_dir / "book"
    toc = (book_dir / "_toc.yml").read_text().splitlines()
    assert toc[:6] == ["format: jb-book", "root: intro", "parts:", "- caption: Chapters", "  chapters:",
                       "  - file: scorecard"]
    assert toc[6] == f"  - file: chapters/{CHAPTERS[0].stem}" and toc[-2:] == ["- chapters:", "  - file: credits"]
    appendices = [p.stem for p in CHAPTERS if book.is_appendix(p.stem)]
    if appendices:  # after every numbered chapter, under their own caption
        at = toc.index("- caption: Appendix")
        assert toc[at + 2:at + 2 + len(appendices)] == [f"  - file: chapters/{s}" for s in appendices]
        assert all(toc.index(f"  - file: chapters/{p.stem}") < at for p in CHAPTERS if not book.is_appendix(p.stem))
    page = (book_dir / "scorecard.md").read_text()
    assert ("| 04 | text added to the ID DNN | all | AUC (higher is better) | DNN + text vs DNN "
            "| +0.010 [+0.004, +0.016] | a gain | 1,536 | cpu |") in page
    assert f"| {CHAPTERS[0].stem} | `cpu` |" in page and "(requested: `auto`)" in page
    assert "[scorecard](scorecard.md)" in (book_dir / "intro.md").read_text()
    assert calls and calls[0][1:3] == ["build", str(book_dir)]


def test_build_refuses_malformed_thesis_rows(tmp_path, monkeypatch):
    run_dir = tmp_path / "smoke"
    for stem in (p.stem for p in CHAPTERS):
        _fake_executed(run_dir, stem)
    (run_dir / CHAPTERS[0].stem).mkdir()
    (run_dir / CHAPTERS[0].stem / "metrics.json").write_text(json.dumps({"metrics": {"thesis": [{"x": 1}]}}))
    with pytest.raises(book.NotebookError, match="cannot build the scorecard: .*thesis row 0 lacks"):
        book.build("smoke", output=tmp_path)


def test_build_refuses_missing_chapters(tmp_path):
    _fake_executed(tmp_path / "smoke", CHAPTERS[0].stem)
    with pytest.raises(book.NotebookError, match=r"no executed notebook for \['" + CHAPTERS[1].stem):
        book.build("smoke", output=tmp_path)


def test_run_failures_accepts_a_clean_run_and_intended_errors():
    nb = nbformat.v4.new_notebook()
    intended = _cell([nbformat.v4.new_output("error", ename="ValueError", evalue="shown on purpose",
                                             traceback=[])], tags=["raises-exception"])
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), intended, nbformat.v4.new_code_cell("  ")]
    assert book.run_failures(nb) == []


def test_profile_that_ran_reads_metrics(tmp_path):
    (tmp_path / "01_data").mkdir()
    (tmp_path / "01_data" / "metrics.json").write_text(json.dumps({"profile": "smoke", "metrics": {}}))
    assert book.profile_that_ran(tmp_path, "01_data") == "smoke"
    assert book.profile_that_ran(tmp_path, "02_none") is None
    header = book.chapter_header("01_data", "auto", tmp_path)
    assert header.endswith("executed with profile `smoke` (requested `auto`)")
    assert header.startswith(f"[Open this chapter in Colab]({book.colab_url('01_data')})")
    assert book.chapter_header("01_data", "smoke", tmp_path).endswith("executed with profile `smoke`")
    assert book.chapter_header("02_none", "cpu", tmp_path).endswith("executed with profile `cpu`")


# --- parameters across chapters ----------------------------------------------


def test_a_parameter_goes_only_to_the_chapters_that_define_it():
    defines = {p: "model_name" in book.parameters_cell(book.read_notebook(p)) for p in CHAPTERS}
    assert any(defines.values()) and not all(defines.values()), "needs chapters with and without model_name"
    plan = book.plan_parameters(CHAPTERS, {"model_name": "bert-base-uncased", "seed": 7})
    for path, params in plan.items():
        assert params["seed"] == 7
        assert ("model_name" in params) == defines[path], path.stem
    with pytest.raises(book.NotebookError, match=r"unknown parameter\(s\) \['modle_name'\]: no chapter"):
        book.plan_parameters(CHAPTERS, {"modle_name": "x"})
    with pytest.raises(book.NotebookError, match="--only"):
        book.plan_parameters(CHAPTERS, {"output_dir": "x"})
    one = [p for p in CHAPTERS if not defines[p]][:1]
    with pytest.raises(book.NotebookError, match=r"unknown parameter\(s\) \['model_name'\]"):
        book.plan_parameters(one, {"model_name": "x"})


def test_run_refuses_profile_as_a_parameter(tmp_path):
    with pytest.raises(book.NotebookError, match="--profile"):
        book.run("smoke", ["01"], tmp_path, {"profile": "full"})


# --- the repository address: one source of truth -------------------------------


def test_colab_cells_clone_the_configured_repository():
    url = book.repository_url()
    assert url == book._book_config()["repository"]["url"].rstrip("/")
    for path in CHAPTERS:
        assert book.colab_clone_urls(path) == [url], (
            f"{path}: its Colab set-up cell must clone {url}; run `python -m ecrec.book sync-colab`"
        )
    assert book.colab_url("01_data") == (
        f"https://colab.research.google.com/github/{url.split('github.com/')[1]}/blob/main/notebooks/01_data.ipynb"
    )


def test_sync_colab_rewrites_the_clone_address(tmp_path, monkeypatch):
    source = CHAPTERS[0].read_text().replace(book.repository_url(), "https://github.com/someone/old")
    copy = tmp_path / CHAPTERS[0].name
    copy.write_text(source)
    assert book.colab_clone_urls(copy) == ["https://github.com/someone/old"]
    assert book.sync_colab(tmp_path) == [copy]
    assert book.colab_clone_urls(copy) == [book.repository_url()]
    paired = jupytext.read(copy.with_suffix(".ipynb"))
    assert any(book.repository_url() in c.source for c in paired.cells)
    assert _cells(paired) == _cells(jupytext.read(copy))
    assert book.sync_colab(tmp_path) == []


# --- what the executed chapters show (the smoke run) ---------------------------

# Warnings a chapter shows on purpose, or is known to show until fixed:
# chapter stem -> regexes matched against each finding's text. An entry that
# matches nothing fails the test too: remove it once the warning is gone.
ALLOWED_STDERR: dict[str, list[str]] = {
    # known, to be fixed in the chapter or the package (issue 11 section 6):
}


@pytest.mark.notebook
@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_shows_no_unintended_warnings_or_floods(smoke_run, path: Path):
    nb = nbformat.read(smoke_run / "executed" / f"{path.stem}.ipynb", as_version=4)
    allowed = [re.compile(r) for r in ALLOWED_STDERR.get(path.stem, [])]
    findings = book.stderr_findings(nb)
    unexpected = [f for f in findings if f.kind == "progress-flood" or not any(a.search(f.text) for a in allowed)]
    assert not unexpected, f"{path.stem} shows, unintended:\n" + "\n".join(
        f"  {f.cell} {f.kind}: {f.text}" for f in unexpected)
    stale = [a.pattern for a in allowed if not any(a.search(f.text) for f in findings)]
    assert not stale, f"{path.stem}: ALLOWED_STDERR entries that match nothing any more, remove them: {stale}"


def test_smoke_run_executes_only_the_chapters_the_selected_tests_read():
    from types import SimpleNamespace

    from conftest import _chapters_of

    stems = [p.stem for p in CHAPTERS]

    def item(name, fixtures=("smoke_run",), **params):
        return SimpleNamespace(path=Path("tests") / name, fixturenames=list(fixtures),
                               callspec=SimpleNamespace(params=params) if params else None)

    assert _chapters_of(item("test_nb_03_features.py", ("chapter_metrics",))) == {"03_features"}
    assert _chapters_of(item("test_nb_A1_ddp.py", ("chapter_metrics",))) == {"A1_ddp"}  # an appendix too
    assert _chapters_of(item("test_book.py", path=CHAPTERS[1])) == {stems[1]}
    assert _chapters_of(item("test_browser.py", ("smoke_run", "built_html"), stem=stems[0])) is None
    assert _chapters_of(item("test_browser.py", ("smoke_run",))) is None
