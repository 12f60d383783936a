"""Shared fixtures.

``smoke_run`` executes every chapter once per test session in the ``smoke``
profile (what CI does), or reuses an existing run folder when the environment
variable ``ECREC_RUN_DIR`` points at one (e.g. ``_output/smoke``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ecrec import book


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """The folder of a complete smoke run: ``executed/``, ``NN_slug/metrics.json``, ``book/``."""
    reuse = os.environ.get("ECREC_RUN_DIR")
    if reuse:
        return Path(reuse)
    output = tmp_path_factory.mktemp("book")
    book.run("smoke", output=output)
    return output / "smoke"


@pytest.fixture(scope="session")
def chapter_metrics(smoke_run):
    """``chapter_metrics("03_features")`` -> the ``metrics`` dict of that chapter's smoke run."""

    def load(stem: str) -> dict:
        path = smoke_run / stem / "metrics.json"
        assert path.is_file(), f"{stem} wrote no metrics.json (did the notebook fail? see {smoke_run / 'executed'})"
        return json.loads(path.read_text())["metrics"]

    return load
