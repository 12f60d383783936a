"""Every chapter's rendered verdicts, read from its executed smoke notebook, say no more than their intervals.

Generic, for every chapter (issue 21): the computed sentences must come from
:mod:`ecrec.verdict`, so an executed chapter never shows

* a zero difference dressed as a number, ``+0.000 [+0.000, +0.000]`` (or
  ``+0.000, 95% interval +0.000 to +0.000``): the verdict says "identical";
* "a gain" or "beats" next to a signed difference whose interval does not
  clear 0 in the better direction: for a higher-is-better metric (AUC,
  Recall@K, ...) its low end must be > 0; for a lower-is-better one (log loss,
  MAE, latency) its high end must be < 0. The metric is the one named nearest
  before the interval in its clause, else before the clause in the same
  output, else after it; an interval that holds 0 is never a gain, whatever
  the metric.

The scanner is unit-tested on hand-written sentences; the notebook test reads
``executed/NN_slug.ipynb`` of the ``smoke_run`` fixture (``ECREC_RUN_DIR`` to
reuse a run), outputs and markdown cells alike.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(ROOT.glob("notebooks/[0-9][0-9]_*.py")) + sorted(ROOT.glob("notebooks/[A-Z][0-9]_*.py"))

NUM = r"[+\-−]?\d+(?:\.\d+)?"
INTERVAL = re.compile(
    rf"(?P<diff>[+\-−]\d+(?:\.\d+)?)\s*(?:\((?:\d+%\s+interval)?\)\s*)?"
    rf"(?:\[(?P<lo>{NUM}),\s*(?P<hi>{NUM})\]|,\s*\d+(?:\.\d+)?%\s+interval\s+(?P<lo2>{NUM})\s+to\s+(?P<hi2>{NUM}))")
GAIN_AFTER = re.compile(r"\s*(?:\(\d+(?:\.\d+)?% interval\))?\s*(?:,\s*a gain\b|\(a gain\))")
BEATS = re.compile(r"\bbeats\b")
_L, _R = r"(?<![A-Za-z])", r"(?![A-Za-z])"  # word edges that let "delta_auc" or "log_loss" name their metric
METRIC = re.compile(rf"{_L}(?P<lower>log[ _-]loss|(?<!a )loss|MAE|RMSE|latency|ms|seconds|error){_R}|"
                    rf"{_L}(?P<higher>AUC|GAUC|Recall|NDCG|F1|accuracy|precision|hit rate|MRR){_R}", re.IGNORECASE)
CLAUSE_SPLIT = re.compile(r"\n|;\s|(?<=[.!?])\s+(?=[A-Z`*(])")


def _float(s: str) -> float:
    return float(s.replace("−", "-"))


def _lower_is_better(text: str, clause_start: int, clause: str, at: int) -> bool | None:
    """The direction of the metric an interval at ``at`` in ``clause`` measures: the metric named nearest
    before it in the clause, else nearest before the clause in ``text``, else first after it; None: unnamed."""
    before = list(METRIC.finditer(clause, 0, at)) or list(METRIC.finditer(text, 0, clause_start))
    found = before[-1] if before else METRIC.search(text, clause_start + at)
    return None if found is None else bool(found.group("lower"))


def verdict_problems(text: str) -> list[str]:
    """The verdicts in ``text`` that their intervals do not support (empty: none).

    A verdict belongs to one interval: "a gain" right after it (``"... (95% interval), a gain"``,
    ``"... (a gain)"``), or "beats" between the previous interval of its clause and it.
    """
    problems = []
    starts = [0] + [m.end() for m in CLAUSE_SPLIT.finditer(text)]
    for start, clause in zip(starts, CLAUSE_SPLIT.split(text), strict=True):
        previous_end = 0
        for m in INTERVAL.finditer(clause):
            diff = _float(m.group("diff"))
            lo = _float(m.group("lo") or m.group("lo2"))
            hi = _float(m.group("hi") or m.group("hi2"))
            claims_gain = bool(GAIN_AFTER.match(clause, m.end()) or BEATS.search(clause, previous_end, m.start()))
            previous_end = m.end()
            if diff == 0 and lo == 0 and hi == 0:
                problems.append(f"a zero difference printed as a number (say 'identical'): {clause.strip()!r}")
                continue
            if not claims_gain:
                continue
            lower = _lower_is_better(text, start, clause, m.start())
            if lo <= 0 <= hi or (lower is True and hi >= 0) or (lower is False and lo <= 0):
                better = {True: "lower", False: "higher", None: "direction unnamed"}[lower]
                problems.append(f"'a gain'/'beats' on an interval that does not clear 0 ({better} is better): "
                                f"{m.group(0)!r} in {clause.strip()!r}")
    return problems


@pytest.mark.parametrize("text", [
    "fine-tuned vectors +0.004 [+0.001, +0.007] (a gain)",
    "hybrid beats popularity: +0.012 [+0.004, +0.020] (95% interval)",
    "MLP log loss -0.012 [-0.020, -0.004] (95% interval), a gain",
    "the MLP beats logistic regression in log loss: -0.010 [-0.015, -0.002]",
    "+0.002 [-0.001, +0.005] (95% interval), within noise; over 3 seeds +0.0001 to +0.0038",
    "the two lists are identical (difference exactly 0 up to rounding)",
    "lr_all AUC 0.840 [0.832, 0.848] beats nothing here",
    "Against the constant, test log loss: logistic regression -0.072 [-0.085, -0.057], a gain; "
    "the MLP -0.070 [-0.084, -0.054], a gain.",
    "p (fitted)    -0.093 [-0.104, -0.083] (95% interval), a gain\nName: log loss minus the constant's",
    "AUC rises to 0.840 (+0.123 [+0.104, +0.140] (95% interval), a gain), the DNN adds nothing "
    "(+0.004 [-0.000, +0.009] (95% interval), within noise), cold users (-0.107 [-0.159, -0.056], a loss)",
    "  auc  delta_log_loss  delta_auc [95% interval], verdict\nwithout item  -0.031 [-0.042, -0.021], a loss\n"
    "without context  +0.008 [+0.002, +0.014], a gain",
])
def test_scanner_accepts_honest_verdicts(text):
    assert verdict_problems(text) == []


@pytest.mark.parametrize("text, why", [
    ("hybrid beats als (+0.000, 95% interval +0.000 to +0.000)", "zero difference"),
    ("+0.000 [+0.000, +0.000] (within noise)", "zero difference"),
    ("fine-tuned vectors +0.004 [-0.001, +0.007] (a gain)", "does not clear 0"),
    ("text beats ids on AUC: +0.010 [+0.000, +0.020]", "does not clear 0"),
    ("the MLP beats it in log loss: -0.010 [-0.015, +0.002]", "does not clear 0"),
    ("the MLP beats it in log loss: +0.010 [+0.004, +0.020]", "does not clear 0"),
    ("the MLP beats it on AUC: −0.010 [−0.015, −0.002]", "does not clear 0"),
    ("Recall@50, hybrid minus ALS.\nhybrid -0.010 [-0.015, -0.002], a gain", "does not clear 0"),
    ("no metric named: +0.010 [-0.015, +0.020], a gain", "does not clear 0"),
    ("AUC: a +0.123 [+0.104, +0.140], a gain; b +0.004 [-0.000, +0.009] (a gain)", "does not clear 0"),
    ("AUC: a beats b +0.123 [+0.104, +0.140], c beats d +0.004 [-0.001, +0.009]", "does not clear 0"),
])
def test_scanner_catches_verdicts_that_lie(text, why):
    problems = verdict_problems(text)
    assert len(problems) == 1 and (why == "zero difference") == problems[0].startswith("a zero difference")


def _texts(nb: dict) -> list[tuple[str, str]]:
    """``(where, text)`` for every markdown cell and every text output of an executed notebook."""
    out = []
    for i, cell in enumerate(nb["cells"]):
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "markdown":
            out.append((f"markdown cell {i}", src))
            continue
        for o in cell.get("outputs", []):
            pieces = [o.get("text", "")] if o.get("output_type") == "stream" else [
                o.get("data", {}).get(mime, "") for mime in ("text/markdown", "text/plain")]
            for p in pieces:
                out.append((f"cell {i} ({src.strip()[:40]!r}...)", "".join(p) if isinstance(p, list) else p))
    return out


@pytest.mark.notebook
@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_rendered_verdicts_match_their_intervals(path, smoke_run):
    executed = Path(smoke_run) / "executed" / f"{path.stem}.ipynb"
    assert executed.is_file(), f"{path.stem} has no executed notebook in {smoke_run / 'executed'} (did it fail?)"
    nb = json.loads(executed.read_text(encoding="utf-8"))
    found = [f"{where}: {p}" for where, text in _texts(nb) for p in verdict_problems(text)]
    assert not found, f"{path.stem} renders verdicts its intervals do not support:\n" + "\n".join(found)
