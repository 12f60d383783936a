"""The main job's (`cpu` profile) numbers against the ranges recorded in ``tests/cpu_ranges.json``.

Runs only where ``ECREC_CPU_RUN_DIR`` points at a finished cpu run (``_output/auto`` after
``python -m ecrec.book all`` on a machine without a GPU); CI runs the smoke profile and skips it.
How the ranges were recorded and how to record them again: ``tests/cpu_ranges.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("ecrec_cpu_ranges", Path(__file__).with_name("cpu_ranges.py"))
_ranges = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ranges)  # the recorder beside this file, not an installed package
RANGES, lookup, thesis_key = _ranges.RANGES, _ranges.lookup, _ranges.thesis_key

pytestmark = pytest.mark.notebook
RECORDED: dict = json.loads(RANGES.read_text())
CASES = [(stem, key) for stem, chapter in sorted(RECORDED.items()) for key in sorted(chapter["values"])]


@pytest.fixture(scope="module")
def cpu_run() -> Path:
    folder = os.environ.get("ECREC_CPU_RUN_DIR")
    if not folder:
        pytest.skip("set ECREC_CPU_RUN_DIR to a cpu run folder (e.g. _output/auto) to check the main job's numbers")
    return Path(folder)


def _metrics(run: Path, stem: str) -> dict:
    path = run / stem / "metrics.json"
    assert path.is_file(), f"{path} is missing: did chapter {stem} fail? (see {run / 'executed'})"
    data = json.loads(path.read_text())
    assert data["profile"] == "cpu", f"{path} ran the '{data['profile']}' profile; these ranges are cpu's"
    return data["metrics"]


def test_every_chapter_with_cpu_sizes_is_recorded():
    assert {"04_bert_ctr", "05_recall", "06_multitask", "07_reviews"} <= set(RECORDED), sorted(RECORDED)
    assert all(chapter["values"] for chapter in RECORDED.values())


@pytest.mark.parametrize(("stem", "key"), CASES, ids=[f"{s}:{k[:90]}" for s, k in CASES])
def test_value_in_recorded_range(cpu_run, stem, key):
    metrics = _metrics(cpu_run, stem)
    expected = RECORDED[stem]["values"][key]
    if key.startswith("thesis: "):
        rows = {thesis_key(r): r for r in metrics.get("thesis", [])}
        name = key.removeprefix("thesis: ")
        assert name in rows, f"thesis row {name!r} is gone from {stem}; rows now: {sorted(rows)[:5]}..."
        value = rows[name]["diff"]
    else:
        value = lookup(metrics, key)
    assert value == pytest.approx(expected["value"], abs=expected["tol"]), (
        f"{stem} {key}: {value:.4f}, recorded {expected['value']:.4f} +- {expected['tol']}")
