"""Execute the chapters with papermill and build the HTML book with Jupyter Book 1.x.

The percent-format ``notebooks/NN_slug.py`` files are the source. For each one
the runner

1. reads it with jupytext and checks that it has exactly one cell tagged
   ``parameters`` and that every parameter passed in is defined there
   (papermill itself only warns about unknown names);
2. executes it with papermill on the ``python3`` kernel, failing on the first
   cell error, and keeps the executed notebook, error or not;
3. leaves ``metrics.json`` where the notebook's ``output_dir`` says.

Layout of a run (``--output``, default ``_output``)::

    _output/<profile>/executed/NN_slug.ipynb   executed notebooks
    _output/<profile>/NN_slug/metrics.json     each chapter's numbers and figures
    _output/<profile>/book/_build/html/        the built book

Command line (the README's main job is ``python -m ecrec.book all``)::

    python -m ecrec.book run   [--profile auto] [--only 01 03] [-p name=value ...]
    python -m ecrec.book build [--profile auto]
    python -m ecrec.book all   [--profile auto]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
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


class NotebookError(RuntimeError):
    """A notebook is malformed, got a bad parameter, or failed while executing."""


@dataclass
class RunResult:
    name: str
    executed: Path
    output_dir: Path
    ok: bool
    seconds: float
    error: str = ""


def discover(only: list[str] | None = None, notebooks_dir: Path = NOTEBOOKS) -> list[Path]:
    """The chapter sources ``NN_slug.py``, sorted; ``only`` filters by prefix ("01", "03_features")."""
    paths = sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.py"))
    if only:
        wanted = [p for p in paths if any(p.stem.startswith(o) for o in only)]
        unknown = [o for o in only if not any(p.stem.startswith(o) for p in paths)]
        if unknown:
            raise NotebookError(f"no notebook matches {unknown}; available: {[p.stem for p in paths]}")
        paths = wanted
    return paths


def read_notebook(path: Path):
    """Read a percent ``.py`` (or ``.ipynb``) as an nbformat notebook with the python3 kernel."""
    import jupytext

    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    return nb


def parameters_cell(nb, source: str = "notebook") -> dict[str, Any]:
    """Names and default values assigned in the one cell tagged ``parameters``.

    Raises:
        NotebookError: no cell, or more than one cell, carries the tag.
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
    """Raise :class:`NotebookError` for a parameter name the notebook does not define."""
    unknown = sorted(set(given) - set(defined))
    if unknown:
        raise NotebookError(
            f"{source}: unknown parameter(s) {unknown}; this notebook accepts {sorted(defined)}."
        )


def execute(
    path: Path,
    run_dir: Path,
    parameters: dict[str, Any] | None = None,
    *,
    progress: bool = True,
) -> RunResult:
    """Execute one chapter into ``run_dir``; never raises for a cell error, see ``RunResult.ok``.

    ``output_dir`` is set to ``run_dir/<stem>`` unless given in ``parameters``.

    Raises:
        NotebookError: malformed parameters cell or unknown parameter name.
    """
    import nbformat
    import papermill

    nb = read_notebook(path)
    defined = parameters_cell(nb, str(path))
    parameters = dict(parameters or {})
    check_parameters(parameters, defined, str(path))
    # output_dir is created per chapter by the runner so the chapters cannot collide.
    output_dir = Path(parameters.get("output_dir", run_dir / path.stem)).resolve()
    # Shown in the executed notebook: relative to the notebooks folder where possible.
    parameters["output_dir"] = os.path.relpath(output_dir, NOTEBOOKS) if _is_below(output_dir, ROOT) else str(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    executed_dir = run_dir / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    source_ipynb = executed_dir / f".{path.stem}.input.ipynb"
    nbformat.write(nb, source_ipynb)
    executed = executed_dir / f"{path.stem}.ipynb"
    started = time.time()
    env_before = dict(os.environ)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    try:
        papermill.execute_notebook(
            str(source_ipynb),
            str(executed),
            parameters=parameters,
            kernel_name=KERNEL,
            cwd=str(NOTEBOOKS),
            progress_bar=progress,
            log_output=False,
        )
        ok, error = True, ""
    except papermill.PapermillExecutionError as exc:
        ok, error = False, f"{exc.ename}: {exc.evalue} (cell {exc.exec_count})"
    finally:
        os.environ.clear()
        os.environ.update(env_before)
        source_ipynb.unlink(missing_ok=True)
    return RunResult(path.stem, executed, output_dir, ok, time.time() - started, error)


def _is_below(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def run(
    profile: str = "auto",
    only: list[str] | None = None,
    output: Path = ROOT / "_output",
    parameters: dict[str, Any] | None = None,
) -> list[RunResult]:
    """Execute every chapter (or ``only`` those) in order with ``profile``; returns one result each.

    Every chapter runs even if an earlier one failed, so that one error does
    not hide the state of the others.
    """
    run_dir = Path(output) / profile
    paths = discover(only)
    params = dict(parameters or {})
    params["profile"] = profile
    # Validate every notebook's parameters before spending time executing any.
    for path in paths:
        check_parameters(params, parameters_cell(read_notebook(path), str(path)), str(path))
    results = []
    for path in paths:
        print(f"[ecrec] executing {path.name} (profile={profile})", flush=True)
        result = execute(path, run_dir, params)
        status = "ok" if result.ok else f"FAILED: {result.error}"
        print(f"[ecrec] {path.stem}: {status} in {result.seconds:.0f} s -> {result.executed}", flush=True)
        results.append(result)
    summary = {r.name: {"ok": r.ok, "seconds": round(r.seconds, 1), "error": r.error} for r in results}
    from ecrec.io import atomic_write_text

    atomic_write_text(run_dir / "run_summary.json", json.dumps(summary, indent=2))
    return results


def _book_config() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((BOOK_SRC / "_config.yml").read_text(encoding="utf-8"))


def colab_url(stem: str) -> str:
    """The Colab address of ``notebooks/<stem>.ipynb`` on the repository's main branch."""
    repo = _book_config()["repository"]["url"].rstrip("/")
    path = repo.split("github.com/", 1)[1]
    return f"https://colab.research.google.com/github/{path}/blob/main/notebooks/{stem}.ipynb"


def build(profile: str = "auto", output: Path = ROOT / "_output") -> Path:
    """Build the HTML book from the executed notebooks of ``profile``; returns the html folder.

    Raises:
        NotebookError: a chapter has no executed notebook yet, or the build failed.
    """
    import nbformat

    run_dir = Path(output) / profile
    book_dir = run_dir / "book"
    if book_dir.exists():
        shutil.rmtree(book_dir)
    shutil.copytree(BOOK_SRC, book_dir, ignore=shutil.ignore_patterns("_build"))
    chapters = []
    for path in discover():
        executed = run_dir / "executed" / f"{path.stem}.ipynb"
        if not executed.is_file():
            raise NotebookError(
                f"{executed} is missing: run `python -m ecrec.book run --profile {profile}` first."
            )
        nb = nbformat.read(executed, as_version=4)
        link = nbformat.v4.new_markdown_cell(
            f"[Open this chapter in Colab]({colab_url(path.stem)}) · "
            f"executed with profile `{profile}`"
        )
        # After the title cell, so that the title stays the page's first heading.
        title_first = nb.cells and nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
        nb.cells.insert(1 if title_first else 0, link)
        (book_dir / "chapters").mkdir(exist_ok=True)
        nbformat.write(nb, book_dir / "chapters" / f"{path.stem}.ipynb")
        chapters.append(f"chapters/{path.stem}")
    toc = ["format: jb-book", "root: intro", "chapters:"]
    toc += [f"- file: {c}" for c in chapters]
    toc += ["- file: credits"]
    (book_dir / "_toc.yml").write_text("\n".join(toc) + "\n", encoding="utf-8")
    _vendor_mathjax(book_dir)
    cmd = [_jupyter_book_executable(), "build", str(book_dir), "--builder", "html"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NotebookError(f"jupyter-book build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    html = book_dir / "_build" / "html"
    print(f"[ecrec] book built: {html / 'index.html'}", flush=True)
    return html


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
    params = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"-p expects name=value, got {item!r}")
        name, value = item.split("=", 1)
        try:
            params[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[name] = value
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecrec.book", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "build", "all"])
    parser.add_argument("--profile", default="auto", choices=["auto", "smoke", "full"])
    parser.add_argument("--only", nargs="*", help="chapter prefixes, e.g. 01 03")
    parser.add_argument("--output", type=Path, default=ROOT / "_output")
    parser.add_argument("-p", "--param", action="append", default=[], help="name=value, passed to every notebook")
    args = parser.parse_args(argv)
    try:
        if args.command in ("run", "all"):
            results = run(args.profile, args.only, args.output, _parse_params(args.param))
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
