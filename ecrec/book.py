"""Execute the chapters with papermill and build the HTML book with Jupyter Book 1.x.

The percent-format ``notebooks/NN_slug.py`` files are the source. For each one
the runner

1. reads it with jupytext and checks that it has exactly one cell tagged
   ``parameters`` and that every parameter passed in is defined there
   (papermill itself only warns about unknown names);
2. executes it with papermill on the ``python3`` kernel, failing on the first
   cell error or on a cell that runs longer than ``--cell-timeout`` seconds
   (default 1800), and keeps the executed notebook, error or not, with the
   outcome in its metadata (``metadata.ecrec``);
3. tidies the executed notebook's text streams: a progress bar leaves one
   line, its final state, instead of one output per refresh
   (:func:`tidy_streams`);
4. leaves ``metrics.json`` where the notebook's ``output_dir`` says.

The kernels run offline (``HF_HUB_OFFLINE``), with ``PYTHONHASHSEED=0`` so
that ``hash()`` of a string, and the order of a set of strings, is the same
in every run, with tqdm refreshing only at the start and the end of a loop
(``TQDM_MININTERVAL``), and without tqdm's "IProgress not found" warning.

``build`` refuses to build from a failed run: it names the failed chapters
and exits non-zero.

Layout of a run (``--output``, default ``_output``)::

    _output/<profile>/executed/NN_slug.ipynb   executed notebooks
    _output/<profile>/NN_slug/metrics.json     each chapter's numbers and figures
    _output/<profile>/book/_build/html/        the built book

Command line (the README's main job is ``python -m ecrec.book all``)::

    python -m ecrec.book run   [--profile auto] [--only 01 03] [-p name=value ...] [--cell-timeout 1800]
    python -m ecrec.book build [--profile auto]
    python -m ecrec.book all   [--profile auto] [-p name=value ...]
    python -m ecrec.book sync-colab   # after changing repository.url in book/_config.yml

A ``-p name=value`` goes to every chapter that defines ``name`` in its
parameters cell; a name that no chapter (of those run) defines is an error.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BOOK_SRC = ROOT / "book"
KERNEL = "python3"
DEFAULT_CELL_TIMEOUT = 1800.0  # seconds; the longest smoke cell takes well under a minute

# The environment of every chapter's kernel (only where the caller has not set it).
KERNEL_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    # hash() of str is seeded at interpreter start-up: fix it for the kernel.
    "PYTHONHASHSEED": "0",
    # tqdm >= 4.66 reads TQDM_<ARG> as the default of <arg>: draw a bar when it
    # starts and when it ends, not every 0.1 s (the executed notebook stores
    # every refresh as an output; tidy_streams keeps the last).
    "TQDM_MININTERVAL": "1e9",
    "TQDM_MAXINTERVAL": "1e9",
}
# tqdm.auto warns that ipywidgets is missing and falls back to text bars,
# which are what a static book shows anyway.
KERNEL_WARNING_FILTERS = ("ignore:IProgress not found",)


def _ipc_prefix() -> Path:
    """A fresh prefix for a kernel's IPC socket files, in the temporary folder.

    Unique, so that chapters run at the same time by other runners get other
    files; short, as a Unix socket's path must be (about 100 bytes).
    """
    import tempfile
    import uuid

    return Path(tempfile.gettempdir()) / f"ecrec-kernel-{uuid.uuid4().hex[:12]}-ipc"


def _kernel_manager_class(ipc_prefix: Path | None):
    """``AsyncKernelManager`` talking to its kernel over IPC (Unix sockets ``ipc_prefix-N``), not TCP.

    Over TCP, ipykernel logs "Kernel is running over TCP without encryption"
    to the runner's stderr at every chapter. IPC keeps the messages on this
    machine, in socket files (removed by the kernel manager at shutdown, and
    by :func:`execute` on every path), so there is nothing to warn about.
    ``ipc_prefix`` None (Windows: no Unix sockets): TCP.
    """
    from jupyter_client import AsyncKernelManager

    if ipc_prefix is None:  # pragma: no cover - Windows
        return AsyncKernelManager

    class IpcKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any):
            kwargs.setdefault("ip", str(ipc_prefix))
            super().__init__(transport="ipc", **kwargs)

    return IpcKernelManager


class NotebookError(RuntimeError):
    """A notebook is malformed, got a bad parameter, or failed while executing."""


@dataclass
class RunResult:
    """The outcome of executing one chapter (``ok`` False: ``error`` says why)."""

    name: str
    executed: Path
    output_dir: Path
    ok: bool
    seconds: float
    error: str = ""
    cpu_seconds: float | None = None  # user + system CPU of the kernel and what it ran; None where unmeasurable


def _cpu_seconds() -> float | None:
    """User + system CPU seconds of this process and its reaped children (POSIX ``getrusage``); None elsewhere.

    Around one chapter its change is the chapter's CPU: the kernel is a child
    of this process, reaped at shutdown, and its torch threads and worker
    processes count in it. CPU seconds / wall seconds is the share of cores
    the chapter kept busy (2.0: both of two cores all the time).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def is_appendix(stem: str) -> bool:
    """True for an appendix's stem (``A1_ddp``: a capital letter, a digit), False for a chapter's (``04_bert_ctr``)."""
    return bool(re.match(r"[A-Z][0-9]_", stem))


def discover(only: list[str] | None = None, notebooks_dir: Path = NOTEBOOKS) -> list[Path]:
    """The chapter sources ``NN_slug.py``, sorted, then the appendices ``A1_slug.py``, sorted.

    ``only`` filters by prefix ("01", "03_features", "A1").

    Raises:
        NotebookError: a prefix in ``only`` matches no chapter.
    """
    paths = sorted(notebooks_dir.glob("[0-9][0-9]_*.py")) + sorted(notebooks_dir.glob("[A-Z][0-9]_*.py"))
    if only:
        wanted = [p for p in paths if any(p.stem.startswith(o) for o in only)]
        unknown = [o for o in only if not any(p.stem.startswith(o) for p in paths)]
        if unknown:
            raise NotebookError(f"no notebook matches {unknown}; available: {[p.stem for p in paths]}")
        paths = wanted
    return paths


def read_notebook(path: Path):
    """Read a percent ``.py`` (or ``.ipynb``) as an nbformat notebook with the python3 kernel.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    import jupytext

    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    return nb


def parameters_cell(nb, source: str = "notebook") -> dict[str, Any]:
    """Names and default values assigned in the one cell tagged ``parameters``.

    A value that is not a Python literal (e.g. ``Path("x")``) is read as ``None``.

    Raises:
        NotebookError: no cell, or more than one cell, carries the tag.
        SyntaxError: the parameters cell is not valid Python.
    """
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise NotebookError(
            f"{source}: expected exactly one cell tagged 'parameters', found {len(cells)}. "
            "Tag it in the .py with `# %% tags=[\"parameters\"]`."
        )
    params: dict[str, Any] = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    try:
                        params[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        params[target.id] = None
    return params


def check_parameters(given: dict[str, Any], defined: dict[str, Any], source: str) -> None:
    """Check that every name in ``given`` is defined in the notebook's parameters cell.

    Raises:
        NotebookError: a name in ``given`` is not in ``defined``.
    """
    unknown = sorted(set(given) - set(defined))
    if unknown:
        raise NotebookError(
            f"{source}: unknown parameter(s) {unknown}; this notebook accepts {sorted(defined)}."
        )


def parameters_source(parameters: dict[str, Any], source: str = "notebook") -> str:
    """The injected parameters cell: ``name = <value as a Python literal>``, one per line.

    Papermill's own translation writes a tuple, a set, or a dict key that is
    not a string as a *string* (``(64, 32)`` arrives as ``"(64, 32)"``); here
    each value is written with ``repr`` and must read back equal with
    ``ast.literal_eval``, nested containers included.

    Raises:
        NotebookError: a value is not a Python literal (str, bytes, int,
            float, complex, bool, None, and tuples, lists, dicts and sets of
            these; NaN and inf are not literals), or a name is not an identifier.
    """
    lines = ["# Parameters"]
    for name, value in parameters.items():
        if not str(name).isidentifier():
            raise NotebookError(f"{source}: parameter name {name!r} is not a Python identifier")
        text = repr(value)
        try:
            ok = ast.literal_eval(text) == value
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            ok = False
        if not ok:
            raise NotebookError(
                f"{source}: parameter {name} = {text} is not a Python literal; pass str, int, float, bool, None, "
                "or tuples, lists, dicts and sets of these (e.g. -p \"sizes={'n_train': 256, 'dims': (64, 32)}\")"
            )
        lines.append(f"{name} = {text}")
    return "\n".join(lines) + "\n"


def inject_parameters(nb, parameters: dict[str, Any], source: str = "notebook") -> None:
    """Insert (or replace) the cell tagged ``injected-parameters`` right after the ``parameters`` cell.

    Papermill's convention, with the values written by :func:`parameters_source`.
    The cell is also tagged ``remove-input``: plumbing, hidden in the book.

    Raises:
        NotebookError: see :func:`parameters_source`; no ``parameters`` cell.
    """
    import nbformat

    cell = nbformat.v4.new_code_cell(parameters_source(parameters, source),
                                     metadata={"tags": ["injected-parameters", "remove-input"]})
    tags = [c.get("metadata", {}).get("tags", []) for c in nb.cells]
    old = [i for i, t in enumerate(tags) if "injected-parameters" in t]
    if old:
        nb.cells[old[0]] = cell
        return
    where = [i for i, t in enumerate(tags) if "parameters" in t]
    if not where:
        raise NotebookError(f"{source}: no cell tagged 'parameters' to inject the parameters after")
    nb.cells.insert(where[0] + 1, cell)


def _kernel_env() -> dict[str, str]:
    """``os.environ`` with :data:`KERNEL_ENV` filled in and tqdm's widget warning silenced."""
    env = dict(os.environ)
    for key, value in KERNEL_ENV.items():
        env.setdefault(key, value)
    filters = [f for f in env.get("PYTHONWARNINGS", "").split(",") if f]
    env["PYTHONWARNINGS"] = ",".join(filters + [f for f in KERNEL_WARNING_FILTERS if f not in filters])
    return env


def _first_line(source: str) -> str:
    lines = [line for line in source.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    text = lines[0].strip() if lines else source.strip()[:60]
    return text if len(text) <= 60 else text[:57] + "..."


def _timed_out_cell(nb) -> str:
    """Name the cell a timeout stopped: the last code cell that started, as "In [n]: first line"."""
    started = [c for c in nb.cells if c.cell_type == "code" and c.get("execution_count") is not None]
    if not started:
        return "an unknown cell"
    cell = started[-1]
    return f"cell In [{cell.execution_count}] ({_first_line(cell.source)!r})"


def execute(
    path: Path,
    run_dir: Path,
    parameters: dict[str, Any] | None = None,
    *,
    progress: bool = True,
    cell_timeout: float | None = DEFAULT_CELL_TIMEOUT,
    requested_profile: str | None = None,
) -> RunResult:
    """Execute one chapter into ``run_dir``; never raises for a cell error, see ``RunResult.ok``.

    ``output_dir`` is set to ``run_dir/<stem>`` unless given in ``parameters``.
    A cell that runs longer than ``cell_timeout`` seconds (``None`` or 0: no
    limit) stops the chapter; ``RunResult.error`` names the cell. The outcome is
    also written into the executed notebook's ``metadata.ecrec`` (``ok``,
    ``error``, ``requested_profile``, ``cell_timeout``), where :func:`build`
    reads it, and its streams are tidied with :func:`tidy_streams`.

    Raises:
        NotebookError: malformed parameters cell, unknown parameter name, or a
            negative ``cell_timeout``.
    """
    import nbformat
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    if cell_timeout is not None and cell_timeout < 0:
        raise NotebookError(f"cell_timeout must be >= 0 seconds (0: no limit), got {cell_timeout}")
    timeout = cell_timeout or None
    nb = read_notebook(path)
    defined = parameters_cell(nb, str(path))
    parameters = dict(parameters or {})
    check_parameters(parameters, defined, str(path))
    # output_dir is created per chapter by the runner so the chapters cannot collide.
    output_dir = Path(parameters.get("output_dir", run_dir / path.stem)).resolve()
    # Shown in the executed notebook: relative to the notebooks folder where possible.
    parameters["output_dir"] = os.path.relpath(output_dir, NOTEBOOKS) if _is_below(output_dir, ROOT) else str(output_dir)
    inject_parameters(nb, parameters, str(path))  # before anything is written: a bad value runs nothing
    output_dir.mkdir(parents=True, exist_ok=True)
    executed_dir = run_dir / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    source_ipynb = executed_dir / f".{path.stem}.input.ipynb"
    nbformat.write(nb, source_ipynb)
    executed = executed_dir / f"{path.stem}.ipynb"
    executed.unlink(missing_ok=True)  # never leave an older run's notebook behind a failed start
    started, cpu_started = time.time(), _cpu_seconds()
    ipc_prefix = _ipc_prefix() if os.name != "nt" else None
    env_before = dict(os.environ)
    os.environ.clear()
    os.environ.update(_kernel_env())  # the kernel inherits the runner's environment
    try:
        papermill.execute_notebook(
            str(source_ipynb),
            str(executed),
            parameters=None,  # injected above (inject_parameters): papermill would turn tuples into strings
            kernel_name=KERNEL,
            kernel_manager_class=_kernel_manager_class(ipc_prefix),  # IPC: no "running over TCP" warning
            cwd=str(NOTEBOOKS),
            # the runner's own bar stays live: explicit values beat the kernel's TQDM_* defaults
            progress_bar={"mininterval": 0.1, "maxinterval": 10.0} if progress else False,
            log_output=False,
            execution_timeout=timeout,
        )
        ok, error = True, ""
    except papermill.PapermillExecutionError as exc:
        ok, error = False, f"{exc.ename}: {exc.evalue} (cell {exc.exec_count})"
    except CellTimeoutError:
        cell = _timed_out_cell(nbformat.read(executed, as_version=4)) if executed.is_file() else "a cell"
        ok, error = False, (f"{cell} did not finish within {timeout:g} s (--cell-timeout); "
                            "the chapter was stopped there")
    except DeadKernelError as exc:
        ok, error = False, f"the kernel died (out of memory?): {exc}"
    finally:
        os.environ.clear()
        os.environ.update(env_before)
        source_ipynb.unlink(missing_ok=True)
        for socket_file in ipc_prefix.parent.glob(ipc_prefix.name + "-*") if ipc_prefix else ():
            socket_file.unlink(missing_ok=True)  # a killed kernel's manager may not have cleaned up
    seconds = time.time() - started
    cpu_now = _cpu_seconds()
    cpu = None if cpu_now is None or cpu_started is None else round(cpu_now - cpu_started, 1)
    if executed.is_file():
        from ecrec.io import atomic_write_text

        done = nbformat.read(executed, as_version=4)
        tidy_streams(done)
        done.metadata["ecrec"] = {
            "ok": ok, "error": error, "seconds": round(seconds, 1), "cpu_seconds": cpu,
            "requested_profile": requested_profile or parameters.get("profile"),
            "cell_timeout": timeout,
        }
        atomic_write_text(executed, nbformat.writes(done))
    elif ok:  # pragma: no cover - papermill always writes its output
        ok, error = False, "papermill wrote no executed notebook"
    return RunResult(path.stem, executed, output_dir, ok, seconds, error, cpu)


# --- tidying the executed notebooks' text streams ---------------------------


_CSI = re.compile(r"\x1b\[(\d*)([A-Za-z])")


def _collapse_carriage_returns(text: str) -> str:
    r"""What a terminal shows after printing ``text``.

    ``\r`` moves the cursor to the start of its line and what follows
    overwrites the line in place (a shorter text leaves the end of the longer
    one, as a terminal would; progress bars pad with spaces); ``\r\n`` is a
    plain line end; ``ESC[nA`` / ``ESC[nB`` move the cursor n lines up /
    down (nested tqdm bars), ``ESC[K`` erases to the end of the line. Other
    escape sequences (colours) are kept as they are. On lines that were
    overwritten, trailing spaces (a cleared bar's padding) are dropped.
    Text without ``\r`` or cursor moves comes back unchanged.
    """
    if "\r" not in text and not any(m.group(2) in "ABK" for m in _CSI.finditer(text)):
        return text
    text = text.replace("\r\n", "\n")
    rows: list[list[str]] = [[]]
    row = col = 0
    touched: set[int] = set()
    i = 0
    while i < len(text):
        ch = text[i]
        esc = _CSI.match(text, i) if ch == "\x1b" else None
        if esc is not None and esc.group(2) in "ABK":
            n = int(esc.group(1) or 1)
            if esc.group(2) == "K":
                del rows[row][col:]
            else:
                row = max(0, row - n) if esc.group(2) == "A" else row + n
                rows.extend([] for _ in range(row + 1 - len(rows)))
            touched.add(row)
            i = esc.end()
            continue
        token = esc.group(0) if esc is not None else ch
        i += len(token)
        if ch == "\n":
            row, col = row + 1, 0
            rows.extend([] for _ in range(row + 1 - len(rows)))
        elif ch == "\r":
            col = 0
            touched.add(row)
        else:
            line = rows[row]
            line.extend(" " for _ in range(col - len(line)))
            if col < len(line):
                line[col] = token
            else:
                line.append(token)
            col += 1
    lines = ["".join(r).rstrip(" ") if k in touched else "".join(r) for k, r in enumerate(rows)]
    return "\n".join(lines)


def tidy_streams(nb) -> int:
    r"""Make each code cell's ``stdout``/``stderr`` outputs read as a terminal would show them.

    A progress bar redraws its line with ``\r``; a kernel sends each redraw as
    its own stream output, so an executed notebook stores one output per
    refresh (hundreds of grey blocks in the book). Per cell and per stream,
    this

    * drops an unfinished line (no ``\n`` yet) that a later output of the
      same stream overwrites with ``\r``, even across other outputs between
      them (a loop that prints while its bar runs), and moves a lone
      ``\n`` that finishes such a line back onto it;
    * merges consecutive outputs of the same stream;
    * keeps, on each line, the text after the last ``\r``; and drops outputs
      left empty or blank (a bar with ``leave=False`` clears itself).

    It is idempotent and changes nothing else. Returns how many outputs it removed.
    """
    removed = 0
    for cell in nb.cells:
        if cell.cell_type != "code" or not cell.get("outputs"):
            continue
        new: list = []
        open_line: dict[str, Any] = {}  # stream name -> the output holding its unfinished line
        had_cr: set[int] = set()
        for out in cell.outputs:
            if out.get("output_type") != "stream":
                new.append(out)
                continue
            name, text = out.get("name", "stdout"), out.get("text", "")
            if isinstance(text, list):
                text = "".join(text)
            holder = open_line.get(name)
            if holder is not None and holder is not (new[-1] if new else None):
                if text.startswith("\r"):
                    cut = holder["text"].rfind("\n")
                    holder["text"] = holder["text"][: cut + 1]
                elif text.startswith("\n"):
                    holder["text"] += "\n"
                    text = text[1:]
                    open_line.pop(name)
            prev = new[-1] if new else None
            if prev is not None and prev.get("output_type") == "stream" and prev.get("name") == name:
                prev["text"] += text
                target = prev
            else:
                target = out
                target["text"] = text
                new.append(target)
            if "\r" in text:
                had_cr.add(id(target))
            open_line[name] = None if target["text"].endswith("\n") else target
        kept = []
        for out in new:
            if out.get("output_type") == "stream":
                if "\r" in out["text"]:
                    had_cr.add(id(out))
                out["text"] = _collapse_carriage_returns(out["text"])
                if not out["text"] or (id(out) in had_cr and not out["text"].strip()):
                    continue
                last = kept[-1] if kept else None
                if last is not None and last.get("output_type") == "stream" and last.get("name") == out["name"]:
                    last["text"] += out["text"]  # neighbours again once what stood between is gone
                    continue
            kept.append(out)
        removed += len(cell.outputs) - len(kept)
        cell.outputs = kept
    return removed


# --- what a chapter shows that it did not mean to ----------------------------

ALLOW_TAGS = frozenset({"raises-exception", "show-warnings"})
FLOOD_LINES = 20  # more progress-bar lines than this in one cell is a flood
_WARNING = re.compile(r"(\b\w*Warning\b:|^WARNING\b|^\[W[ \d:]|^W\d{4} )", re.MULTILINE)
_PROGRESS = re.compile(r"\d+%\|.*\|\s*\d+(\.\d+)?[kMG]?/")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Finding:
    """Something a chapter shows that a reader should not see: ``kind`` is
    "warning", "traceback", "error" or "progress-flood"; ``cell`` is "In [n]"."""

    kind: str
    cell: str
    text: str


def stderr_findings(nb) -> list[Finding]:
    """Warnings, tracebacks, error outputs and progress-bar floods in an executed notebook.

    A cell tagged ``raises-exception`` or ``show-warnings`` means to show its
    warnings and errors and is skipped for those (never for floods). A flood is
    a cell with more than :data:`FLOOD_LINES` progress-bar lines, or a stream
    that still redraws its line with ``\\r`` (run :func:`tidy_streams`).
    """
    found: list[Finding] = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        where = f"In [{cell.get('execution_count')}]" if cell.get("execution_count") else f"cell {index}"
        allowed = bool(ALLOW_TAGS & set(cell.get("metadata", {}).get("tags", [])))
        bars = 0
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "error" and not allowed:
                found.append(Finding("error", where, f"{out.get('ename')}: {out.get('evalue')}"))
            if kind != "stream":
                continue
            text = _ANSI.sub("", out.get("text", "") if isinstance(out.get("text"), str) else "".join(out["text"]))
            bars += sum(1 for line in text.split("\n") for piece in line.split("\r") if _PROGRESS.search(piece))
            if re.search(r"\r[^\n]", text):
                found.append(Finding("progress-flood", where, "a stream still redraws its line with \\r"))
            if out.get("name") != "stderr" or allowed:
                continue
            if "Traceback (most recent call last)" in text:
                found.append(Finding("traceback", where, _first_line(text[text.index("Traceback"):])))
            for match in _WARNING.finditer(text):
                start = text.rfind("\n", 0, match.start()) + 1
                end = text.find("\n", match.end())
                found.append(Finding("warning", where, text[start: end if end >= 0 else None].strip()))
        if bars > FLOOD_LINES:
            found.append(Finding("progress-flood", where, f"{bars} progress-bar lines in one cell"))
    return found


def run_failures(nb) -> list[str]:
    """Why an executed notebook does not count as a successful run ([] if it does).

    Reasons: the runner recorded a failure (``metadata.ecrec.ok`` false), a
    cell shows an error (except cells tagged ``raises-exception``), or a
    non-empty code cell never ran (the run stopped early).
    """
    reasons = []
    record = nb.metadata.get("ecrec", {})
    if record.get("ok") is False:
        reasons.append(record.get("error") or "the runner recorded a failure")
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tags = set(cell.get("metadata", {}).get("tags", []))
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors and "raises-exception" not in tags:
            reasons.append(f"cell In [{cell.get('execution_count')}] raised "
                           f"{errors[0].get('ename')}: {errors[0].get('evalue')}")
            break
        if cell.source.strip() and cell.get("execution_count") is None:
            reasons.append(f"cell {index} ({_first_line(cell.source)!r}) never ran")
            break
    return list(dict.fromkeys(reasons))


def _is_below(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def plan_parameters(
    paths: list[Path], parameters: dict[str, Any] | None = None
) -> dict[Path, dict[str, Any]]:
    """Which of ``parameters`` each chapter gets: those its parameters cell defines.

    A name that none of ``paths`` defines is an error, so that a typo is never
    silently ignored; ``output_dir`` and ``sizes`` differ per chapter and are
    refused when more than one chapter runs.

    Raises:
        NotebookError: a name no chapter defines, ``output_dir`` or ``sizes``
            given for several chapters, or a malformed parameters cell.
    """
    params = dict(parameters or {})
    defined = {path: parameters_cell(read_notebook(path), str(path)) for path in paths}
    nobody = sorted(name for name in params if not any(name in d for d in defined.values()))
    if nobody:
        accepted = sorted({name for d in defined.values() for name in d})
        raise NotebookError(
            f"unknown parameter(s) {nobody}: no chapter of {[p.stem for p in paths]} defines it; "
            f"they accept {accepted}."
        )
    per_chapter = [name for name in ("output_dir", "sizes") if name in params]
    if per_chapter and len(paths) > 1:
        raise NotebookError(
            f"-p {', '.join(per_chapter)} differs per chapter: pass it with --only NN (one chapter)."
        )
    return {path: {k: v for k, v in params.items() if k in defined[path]} for path in paths}


def run(
    profile: str = "auto",
    only: list[str] | None = None,
    output: Path = ROOT / "_output",
    parameters: dict[str, Any] | None = None,
    *,
    cell_timeout: float | None = DEFAULT_CELL_TIMEOUT,
    progress: bool = True,
) -> list[RunResult]:
    """Execute every chapter (or ``only`` those) in order with ``profile``; returns one result each.

    Every chapter runs even if an earlier one failed, so that one error does
    not hide the state of the others. Each chapter gets the ``parameters`` its
    parameters cell defines (:func:`plan_parameters`); ``cell_timeout`` is the
    limit per cell in seconds (``None`` or 0: none). Writes
    ``run_summary.json`` beside the executed notebooks.

    Raises:
        NotebookError: unknown profile or chapter, a parameter no chapter
            defines, ``-p profile``, or a malformed parameters cell (all
            checked before anything runs).
    """
    from ecrec.profiles import PROFILES

    if profile not in PROFILES:
        raise NotebookError(f"unknown profile {profile!r}; use one of {PROFILES}")
    params = dict(parameters or {})
    if "profile" in params:
        raise NotebookError("pass the profile with --profile, not -p profile=...")
    run_dir = Path(output) / profile
    paths = discover(only)
    plan = plan_parameters(paths, {**params, "profile": profile})
    parameters_source(params, "-p")  # a value that is not a Python literal stops the run before it starts
    for name in sorted(params):
        takers = [p.stem for p in paths if name in plan[p]]
        if len(takers) < len(paths):
            print(f"[ecrec] -p {name} applies to {', '.join(takers)}", flush=True)
    results = []
    for path in paths:
        print(f"[ecrec] executing {path.name} (profile={profile})", flush=True)
        result = execute(path, run_dir, plan[path], progress=progress, cell_timeout=cell_timeout,
                         requested_profile=profile)
        status = "ok" if result.ok else f"FAILED: {result.error}"
        cpu = "" if result.cpu_seconds is None else f" (CPU {result.cpu_seconds / max(result.seconds, 1e-9):.0%})"
        print(f"[ecrec] {path.stem}: {status} in {result.seconds:.0f} s{cpu} -> {result.executed}", flush=True)
        results.append(result)
    summary_path = run_dir / "run_summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    summary.update({r.name: {"ok": r.ok, "seconds": round(r.seconds, 1), "cpu_seconds": r.cpu_seconds,
                             "error": r.error} for r in results})
    from ecrec.io import atomic_write_text

    atomic_write_text(summary_path, json.dumps(summary, indent=2, sort_keys=True))
    return results


def _book_config() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((BOOK_SRC / "_config.yml").read_text(encoding="utf-8"))


def repository_url() -> str:
    """The book's GitHub repository: ``repository.url`` in ``book/_config.yml``.

    That line is the one source of truth: the book's Colab links are built from
    it, and every chapter's Colab set-up cell clones it (``python -m ecrec.book
    sync-colab`` copies it there; a test checks that they agree).

    Raises:
        NotebookError: ``repository.url`` is missing or not a github.com address.
    """
    url = str((_book_config().get("repository") or {}).get("url", "")).rstrip("/")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise NotebookError(f"book/_config.yml: repository.url must be https://github.com/OWNER/REPO, got {url!r}")
    return url


def colab_url(stem: str) -> str:
    """The Colab address of ``notebooks/<stem>.ipynb`` on the repository's main branch.

    Raises:
        NotebookError: see :func:`repository_url`.
    """
    path = repository_url().split("github.com/", 1)[1]
    return f"https://colab.research.google.com/github/{path}/blob/main/notebooks/{stem}.ipynb"


_CLONE_URL = re.compile(r'("git",\s*"clone",[^\n]*?")(https://github\.com/[^"]+)(")')


def colab_clone_urls(path: Path) -> list[str]:
    """The repository addresses that a chapter's Colab set-up cell clones.

    Raises:
        OSError: ``path`` cannot be read.
    """
    return [m.group(2) for m in _CLONE_URL.finditer(Path(path).read_text(encoding="utf-8"))]


def sync_colab(notebooks_dir: Path = NOTEBOOKS) -> list[Path]:
    """Write :func:`repository_url` into every chapter's Colab set-up cell and its ``.ipynb`` pair.

    Returns the ``.py`` files it changed (their pairs are rewritten with jupytext).

    Raises:
        NotebookError: see :func:`repository_url`, or a chapter has no set-up cell that clones.
        OSError: a notebook cannot be read or written.
    """
    import jupytext

    url = repository_url()
    changed = []
    for path in discover(notebooks_dir=notebooks_dir):
        source = path.read_text(encoding="utf-8")
        if not _CLONE_URL.search(source):
            raise NotebookError(f"{path}: no Colab set-up cell with `\"git\", \"clone\", ..., \"<url>\"`")
        updated = _CLONE_URL.sub(lambda m: m.group(1) + url + m.group(3), source)
        if updated != source:
            path.write_text(updated, encoding="utf-8")
            jupytext.write(jupytext.read(path), path.with_suffix(".ipynb"), fmt="ipynb")
            changed.append(path)
    return changed


def profile_that_ran(run_dir: Path, stem: str) -> str | None:
    """The profile a chapter actually ran with (``profile`` in its ``metrics.json``), or None."""
    try:
        return json.loads((Path(run_dir) / stem / "metrics.json").read_text(encoding="utf-8")).get("profile")
    except (OSError, ValueError):
        return None


def chapter_header(stem: str, requested: str, run_dir: Path) -> str:
    """The line under a chapter's title: its Colab link and the profile that actually ran.

    E.g. ``executed with profile `smoke` (requested `auto`)`` when ``auto``
    resolved to ``smoke``; the requested profile alone when no ``metrics.json``
    says otherwise.

    Raises:
        NotebookError: see :func:`repository_url`.
    """
    ran = profile_that_ran(run_dir, stem) or requested
    said = f"`{ran}`" + (f" (requested `{requested}`)" if ran != requested else "")
    return f"[Open this chapter in Colab]({colab_url(stem)}) · executed with profile {said}"


def build(profile: str = "auto", output: Path = ROOT / "_output") -> Path:
    """Build the HTML book from the executed notebooks of ``profile``; returns the html folder.

    Refuses to build from a failed run: every chapter's executed notebook is
    checked with :func:`run_failures` first. Each chapter's header says which
    profile actually ran (``metrics.json``), e.g. ``smoke (requested auto)``.
    The scorecard page (:mod:`ecrec.scorecard`), gathered from the chapters'
    ``"thesis"`` rows, comes right after the intro.

    Raises:
        NotebookError: a chapter has no executed notebook yet, a chapter's run
            failed (all failed chapters are named), ``jupyter-book`` is not
            installed, the build failed, ``repository.url`` is malformed, or a
            chapter's thesis rows are malformed (:func:`ecrec.scorecard.read_rows`).
    """
    import nbformat

    run_dir = Path(output) / profile
    notebooks, missing, failed = {}, [], []
    for path in discover():
        executed = run_dir / "executed" / f"{path.stem}.ipynb"
        if not executed.is_file():
            missing.append(path.stem)
            continue
        nb = nbformat.read(executed, as_version=4)
        reasons = run_failures(nb)
        if reasons:
            failed.append(f"{path.stem}: {'; '.join(reasons)} (see {executed})")
        notebooks[path.stem] = nb
    if missing:
        raise NotebookError(
            f"no executed notebook for {missing} in {run_dir / 'executed'}: "
            f"run `python -m ecrec.book run --profile {profile}` first."
        )
    if failed:
        raise NotebookError(
            "refusing to build the book from a failed run; failed chapters:\n  " + "\n  ".join(failed)
            + f"\nFix them and run `python -m ecrec.book run --profile {profile} --only NN` again."
        )
    book_dir = run_dir / "book"
    if book_dir.exists():
        shutil.rmtree(book_dir)
    shutil.copytree(BOOK_SRC, book_dir, ignore=shutil.ignore_patterns("_build"))
    pages = []
    for stem, nb in notebooks.items():
        tidy_streams(nb)
        link = nbformat.v4.new_markdown_cell(chapter_header(stem, profile, run_dir))
        # After the title cell, so that the title stays the page's first heading.
        title_first = nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
        nb.cells.insert(1 if title_first else 0, link)
        (book_dir / "chapters").mkdir(exist_ok=True)
        nbformat.write(nb, book_dir / "chapters" / f"{stem}.ipynb")
        pages.append(stem)
    scorecard = _write_scorecard(run_dir, book_dir, profile)
    (book_dir / "_toc.yml").write_text(toc_yaml(pages, scorecard), encoding="utf-8")
    _vendor_mathjax(book_dir)
    cmd = [_jupyter_book_executable(), "build", str(book_dir), "--builder", "html"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NotebookError(f"jupyter-book build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    html = book_dir / "_build" / "html"
    print(f"[ecrec] book built: {html / 'index.html'}", flush=True)
    return html


def toc_yaml(stems: list[str], scorecard: str = "scorecard") -> str:
    """The book's ``_toc.yml`` (Jupyter Book 1.x, ``jb-book``) for the executed ``stems``, in order.

    Three parts: "Chapters" (the scorecard page, right after the intro, then
    ``chapters/NN_slug``), "Appendix" (``chapters/A1_slug``; the part is left
    out when there is none) and the credits page without a caption.
    """
    def part(caption: str | None, files: list[str]) -> list[str]:
        head = [f"- caption: {caption}", "  chapters:"] if caption else ["- chapters:"]
        return head + [f"  - file: {f}" for f in files]

    lines = ["format: jb-book", "root: intro", "parts:"]
    lines += part("Chapters", [scorecard] + [f"chapters/{s}" for s in stems if not is_appendix(s)])
    appendices = [f"chapters/{s}" for s in stems if is_appendix(s)]
    if appendices:
        lines += part("Appendix", appendices)
    lines += part(None, ["credits"])
    return "\n".join(lines) + "\n"


def _write_scorecard(run_dir: Path, book_dir: Path, profile: str) -> str:
    """Write the scorecard page into ``book_dir`` (:func:`ecrec.scorecard.build_scorecard`); its toc entry.

    Raises:
        NotebookError: a chapter's ``metrics.json`` holds malformed thesis rows.
    """
    from ecrec.scorecard import build_scorecard

    try:
        page = build_scorecard(run_dir, book_dir, requested=profile)
    except ValueError as exc:
        raise NotebookError(f"cannot build the scorecard: {exc}") from None
    return page.stem


MATHJAX_FILE = "tex-svg-full.js"


def _vendor_mathjax(book_dir: Path) -> None:
    """Copy MathJax 3 into the book so that its math renders with no network.

    The file comes from the ``django-static-mathjax`` wheel (MathJax 3.2,
    Apache-2.0; it is only a packaged copy of MathJax). SVG output embeds the
    glyphs, so no web fonts are needed. ``_config.yml`` points
    ``mathjax_path`` at it.
    """
    from importlib import resources

    source = resources.files("mathjax") / "static" / "mathjax" / "es5" / MATHJAX_FILE
    static = book_dir / "_static"
    static.mkdir(exist_ok=True)
    shutil.copyfile(str(source), static / MATHJAX_FILE)


def _jupyter_book_executable() -> str:
    """The ``jupyter-book`` script of this interpreter's environment (falls back to PATH)."""
    sibling = Path(sys.executable).with_name("jupyter-book")
    found = str(sibling) if sibling.is_file() else shutil.which("jupyter-book")
    if not found:
        raise NotebookError("jupyter-book is not installed: run `pip install -r requirements.txt`.")
    return found


def _parse_params(items: list[str]) -> dict[str, Any]:
    """``-p name=value`` options as a dict: each value read as a Python literal.

    ``-p seed=7`` gives 7, ``-p "sizes={'dims': (64, 32)}"`` a dict holding a
    tuple; a value that is not a literal is a plain string (``-p
    model_name=minilm``), unless it opens like a container (``(``, ``[``,
    ``{``): a mistyped tuple, list or dict is refused, never passed on as text.

    Raises:
        NotebookError: an item without ``=``, or a container that does not parse.
    """
    params = {}
    for item in items:
        if "=" not in item:
            raise NotebookError(f"-p expects name=value, got {item!r}")
        name, value = item.split("=", 1)
        try:
            params[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError) as exc:
            if value.lstrip()[:1] in ("(", "[", "{"):
                raise NotebookError(
                    f"-p {name}={value}: not a Python literal ({exc.__class__.__name__}: {exc}); "
                    "quote the whole option for the shell and write strings with quotes, "
                    "e.g. -p \"sizes={'n_train': 256, 'dims': (64, 32)}\""
                ) from None
            params[name] = value
    return params


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status.

    0: done; 1: a chapter failed while running; 2: nothing ran or the book was
    not built (bad parameter, unknown chapter, a failed run given to ``build``,
    a failed ``jupyter-book build``). Errors are printed, never raised.
    """
    from ecrec.profiles import PROFILES

    parser = argparse.ArgumentParser(prog="python -m ecrec.book", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "build", "all", "sync-colab"])
    parser.add_argument("--profile", default="auto", choices=list(PROFILES))
    parser.add_argument("--only", nargs="*", help="chapter prefixes, e.g. 01 03")
    parser.add_argument("--output", type=Path, default=ROOT / "_output")
    parser.add_argument("-p", "--param", action="append", default=[],
                        help="name=value, passed to every chapter that defines name")
    parser.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT, metavar="SECONDS",
                        help=f"stop a chapter whose cell runs longer (default {DEFAULT_CELL_TIMEOUT:g}; 0: no limit)")
    args = parser.parse_args(argv)
    try:
        if args.command == "sync-colab":
            changed = sync_colab()
            print(f"[ecrec] Colab set-up cells now clone {repository_url()}; changed: "
                  f"{[str(p) for p in changed] or 'nothing'}", flush=True)
            return 0
        if args.command in ("run", "all"):
            results = run(args.profile, args.only, args.output, _parse_params(args.param),
                          cell_timeout=args.cell_timeout)
            failed = [r for r in results if not r.ok]
            if failed:
                for r in failed:
                    print(f"[ecrec] {r.name} failed: {r.error}; see {r.executed}", file=sys.stderr)
                return 1
        if args.command in ("build", "all"):
            build(args.profile, args.output)
    except NotebookError as exc:
        print(f"[ecrec] error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
