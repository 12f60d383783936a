"""Shared fixtures.

``smoke_run`` executes the chapters once per test session in the ``smoke``
profile (what CI does), or reuses an existing run folder when the environment
variable ``ECREC_RUN_DIR`` points at one (e.g. ``_output/smoke``).

It executes only the chapters that the selected tests read: running
``pytest tests/test_nb_03_features.py`` executes chapter 03 alone, while the
whole suite (CI) executes every chapter, once. A test that needs the smoke run
but belongs to no single chapter (the browser tests, the book's index) asks for
all of them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from ecrec import book

_NEEDED = pytest.StashKey[set]()
_CHAPTER_FILE = re.compile(r"test_nb_(\d\d|[A-Z]\d)_")  # a chapter (04) or an appendix (A1)


def _chapters_of(item) -> set[str] | None:
    """The chapter stems a collected test reads from the smoke run (None: every chapter)."""
    if "built_html" in getattr(item, "fixturenames", ()):
        return None  # the book is built from every chapter
    stems = [p.stem for p in book.discover()]
    match = _CHAPTER_FILE.search(item.path.name)
    if match:
        return {s for s in stems if s.startswith(match.group(1))}
    params = getattr(item, "callspec", None)
    for value in (params.params.values() if params else []):
        name = value.stem if isinstance(value, Path) else value
        if name in stems:
            return {name}
    return None


def pytest_collection_modifyitems(config, items):
    needed: set[str] = set()
    for item in items:
        if not {"smoke_run", "chapter_metrics"} & set(getattr(item, "fixturenames", ())):
            continue
        chapters = _chapters_of(item)
        needed |= chapters if chapters is not None else {p.stem for p in book.discover()}
    config.stash[_NEEDED] = needed


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, request) -> Path:
    """The folder of a smoke run: ``executed/``, ``NN_slug/metrics.json``, ``book/``.

    Only the chapters the selected tests need are executed (see the module's docstring).
    """
    reuse = os.environ.get("ECREC_RUN_DIR")
    if reuse:
        return Path(reuse)
    output = tmp_path_factory.mktemp("book")
    needed = request.config.stash.get(_NEEDED, None)
    only = sorted(needed) if needed else None
    book.run("smoke", only=only, output=output)
    return output / "smoke"


@pytest.fixture(scope="session")
def chapter_metrics(smoke_run):
    """``chapter_metrics("03_features")`` -> the ``metrics`` dict of that chapter's smoke run."""

    def load(stem: str) -> dict:
        path = smoke_run / stem / "metrics.json"
        assert path.is_file(), f"{stem} wrote no metrics.json (did the notebook fail? see {smoke_run / 'executed'})"
        record = json.loads(path.read_text())
        if record.get("profile", "smoke") != "smoke":  # these modules record smoke's ranges only
            pytest.fail(f"{path} comes from a '{record['profile']}' run, but the ranges here are the smoke "
                        "profile's: point ECREC_RUN_DIR at a smoke run, or check a cpu run with "
                        "ECREC_CPU_RUN_DIR=<output>/auto python -m pytest tests/test_cpu_ranges.py")
        return record["metrics"]

    return load


@pytest.fixture(scope="session")
def tiny_st(tmp_path_factory) -> str:
    """A tiny random BERT without dropout, saved as a sentence-transformers folder
    (mean pooling + Normalize, like MiniLM): fast tests of chapter 04's models and loop."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from ecrec.text import model_path

    folder = tmp_path_factory.mktemp("tiny_st")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(folder)
    minilm = Path(model_path("minilm"))
    shutil.copytree(minilm / "1_Pooling", folder / "1_Pooling")
    shutil.copy(minilm / "modules.json", folder / "modules.json")
    return str(folder)


def load_solution(name: str):
    """Import ``notebooks/solutions/<name>.py`` (a chapter's worked exercises) as a module."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "notebooks" / "solutions" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"solutions_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
