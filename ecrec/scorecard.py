"""The book's scorecard: where a pretrained language model wins, ties or loses, gathered from one run.

Every chapter that compares a language model with a non-language baseline
writes rows made by :func:`ecrec.verdict.thesis_row` into its ``metrics.json``
under ``"thesis"`` (a list; inside ``"metrics"``, where
:func:`ecrec.io.write_metrics` puts what a chapter passes, or at the top level).
:func:`build_scorecard` reads those rows from every chapter folder of one run
(``<output>/<profile>/NN_slug/metrics.json``) and writes the page
``scorecard.md``: one table per outcome, never a typed number.

The outcome is the verdict that :func:`ecrec.verdict.decide` gave the row:
``"a gain"`` -> the language model **wins**, ``"a loss"`` -> it **loses**,
``"within noise"`` and ``"identical"`` -> a **tie**, and a fine-tuned model
that kept its step-0 weights is **not compared** (it is its probe).

``python -m ecrec.book build`` calls :func:`build_scorecard` and lists the
page right after the intro.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecrec.verdict import WORDS, fmt_interval

__all__ = ["ScoreRow", "OUTCOMES", "outcome", "read_rows", "render", "build_scorecard", "FULL_PROFILE_RUN",
           "SCORECARD_FILE"]

SCORECARD_FILE = "scorecard.md"
# Whether the `full` profile (the tutorial as intended, on a GPU) has been run anywhere, its results
# pasted into benchmarks/NOTES.md and its ranges recorded in the tests (issue 17, item 5). Set it to
# that record (e.g. "2026-12-24, NVIDIA H100, benchmarks/NOTES.md") once it is true; until then the
# page says plainly that `full` is untested.
FULL_PROFILE_RUN: str | None = None

# verdict word -> outcome; the order of OUTCOMES is the order of the page's sections
OUTCOMES = ("wins", "ties", "loses", "not compared")
_OUTCOME_OF = {"a gain": "wins", "a loss": "loses", "within noise": "ties", "identical": "ties",
               WORDS[1]: "not compared"}
_HEADINGS = {
    "wins": "Where the language model wins",
    "ties": "Where it ties (within noise, or identical)",
    "loses": "Where it loses",
    "not compared": "Not compared: fine-tuning did not move the model (it is its probe)",
}
_REQUIRED = ("chapter", "question", "metric", "lm", "baseline", "diff", "low", "high", "verdict", "train_size")


@dataclass(frozen=True)
class ScoreRow:
    """One ``"thesis"`` row of a chapter, with where it came from.

    Attributes:
        stem: the chapter folder, e.g. ``"04_bert_ctr"``.
        profile: the profile that chapter ran (``metrics.json``'s ``profile``).
        row: the row as :func:`ecrec.verdict.thesis_row` wrote it.
    """

    stem: str
    profile: str
    row: Mapping[str, Any]

    @property
    def outcome(self) -> str:
        """``"wins"``, ``"ties"``, ``"loses"`` or ``"not compared"`` (:func:`outcome`)."""
        return outcome(self.row["verdict"])


def outcome(verdict: str) -> str:
    """The scorecard's outcome for a verdict word of :data:`ecrec.verdict.WORDS`.

    Raises:
        ValueError: ``verdict`` is not one of :data:`ecrec.verdict.WORDS`.
    """
    if verdict not in _OUTCOME_OF:
        raise ValueError(f"unknown verdict {verdict!r}; ecrec.verdict.decide gives one of {list(WORDS)}")
    return _OUTCOME_OF[verdict]


def _chapter_metrics(run_dir: Path) -> dict[str, dict[str, Any]]:
    """``{stem: metrics.json's content}`` for every ``NN_slug`` (then appendix ``A1_slug``) folder that has one."""
    found = {}
    run_dir = Path(run_dir)
    for path in sorted(run_dir.glob("[0-9][0-9]_*/metrics.json")) + sorted(run_dir.glob("[A-Z][0-9]_*/metrics.json")):
        try:
            found[path.parent.name] = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); rerun that chapter") from None
    return found


def read_rows(run_dir: str | Path) -> tuple[list[ScoreRow], dict[str, str]]:
    """The thesis rows of every chapter of one run, and the profile each chapter ran.

    Args:
        run_dir: ``<output>/<profile>``, holding ``NN_slug/metrics.json`` per chapter.

    Returns:
        ``(rows, profiles)``: rows in chapter order, then in each chapter's
        order; ``profiles`` maps every chapter stem that has a ``metrics.json``
        to its ``profile`` (``"?"`` when the file does not say).

    Raises:
        ValueError: a ``metrics.json`` that is not JSON, a ``"thesis"`` that
            is not a list of objects, a row missing one of the keys
            :func:`ecrec.verdict.thesis_row` writes, or an unknown verdict
            word; the message names the file and the row.
    """
    rows, profiles = [], {}
    for stem, record in _chapter_metrics(Path(run_dir)).items():
        profile = str(record.get("profile") or "?")
        profiles[stem] = profile
        metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
        thesis = metrics.get("thesis", record.get("thesis", []))
        where = Path(run_dir) / stem / "metrics.json"
        if not isinstance(thesis, list):
            raise ValueError(f"{where}: 'thesis' must be a list of ecrec.verdict.thesis_row rows, "
                             f"got {type(thesis).__name__}")
        for i, row in enumerate(thesis):
            missing = [k for k in _REQUIRED if not isinstance(row, dict) or k not in row]
            if missing:
                raise ValueError(f"{where}: thesis row {i} lacks {missing}; write it with ecrec.verdict.thesis_row")
            try:
                outcome(row["verdict"])
            except ValueError as exc:
                raise ValueError(f"{where}: thesis row {i}: {exc}") from None
            rows.append(ScoreRow(stem, profile, row))
    return rows, profiles


def _cell(value: Any) -> str:
    """A markdown table cell: pipes escaped, no line breaks."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _difference(row: Mapping[str, Any]) -> str:
    """``"+0.004 [+0.001, +0.007] (95%)"``; ``"—"`` without a difference."""
    if row.get("diff") is None:
        return "—"
    r = {k: (math.nan if row.get(k) is None else float(row[k])) for k in ("diff", "low", "high")}
    text = fmt_interval(r)
    level = row.get("level")
    if level is not None and "[" in text:
        text += f" ({float(level):.0%})"
    seeds = row.get("seed_range")
    if seeds and float(seeds[0]) != float(seeds[1]):  # one seed (or all equal): no range to show
        text += f"; seeds {float(seeds[0]):+.4f} to {float(seeds[1]):+.4f}"
    return text


def _size(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


_COLUMNS = ("chapter", "question", "slice", "metric", "LM vs baseline", "difference (LM − baseline)",
            "verdict", "training size", "profile")


def _table(rows: Sequence[ScoreRow]) -> list[str]:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for s in rows:
        r = s.row
        metric = f"{r['metric']} ({'lower' if r.get('better') == 'lower' else 'higher'} is better)"
        cells = (r["chapter"], r["question"], r.get("slice", "all"), metric, f"{r['lm']} vs {r['baseline']}",
                 _difference(r), r["verdict"], _size(r["train_size"]), s.profile)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _profiles_section(profiles: Mapping[str, str], requested: str | None) -> list[str]:
    lines = ["## The profiles that ran", ""]
    if not profiles:
        return lines + ["No chapter of this run wrote a `metrics.json`.", ""]
    asked = f" (requested: `{requested}`)" if requested else ""
    lines += [f"Each chapter's numbers come from the profile it ran{asked}:", "",
              "| chapter | profile |", "|---|---|"]
    lines += [f"| {_cell(stem)} | `{_cell(p)}` |" for stem, p in profiles.items()]
    return lines + [""]


def _full_sentence(profiles: Mapping[str, str]) -> str:
    ran_full = [stem for stem, p in profiles.items() if p == "full"]
    if FULL_PROFILE_RUN is None and not ran_full:
        return ("**The `full` profile — the tutorial as intended, on a GPU — has not yet been run anywhere, "
                "and its numbers are not in this book.** Every number below comes from the smaller profiles "
                "listed here; an effect that needs more training data may not show at these sizes.")
    here = (f"In this run, {', '.join(ran_full)} ran `full`; the other chapters ran the profiles listed below."
            if ran_full else "No chapter of this run ran `full`: its numbers are not in this book.")
    where = f" The `full` profile was run: {FULL_PROFILE_RUN}." if FULL_PROFILE_RUN else ""
    return here + where


def render(rows: Sequence[ScoreRow], profiles: Mapping[str, str], requested: str | None = None) -> str:
    """The scorecard page (markdown) for ``rows`` of one run and the profile each chapter ran.

    Sections in the order of :data:`OUTCOMES`, each a table with the
    columns chapter, question, slice, metric (and its direction), LM vs
    baseline, the difference LM − baseline with its interval (and level,
    and the seed range where the chapter ran several seeds), the verdict
    word, the training size and the profile that ran. Empty outcomes say so;
    a run without any row says that plainly.
    """
    counts = {o: [s for s in rows if s.outcome == o] for o in OUTCOMES}
    lines = ["# Scorecard: where the language model wins, ties and loses", "",
             "Every row below is computed by a chapter of the run that built this book (its `metrics.json`, "
             "key `thesis`) and decided by one rule (`ecrec.verdict.decide`): **wins** and **loses** only "
             "when the interval of the difference clears 0 and every seed the chapter ran agrees on the sign; "
             "otherwise a **tie**. A fine-tuned model that kept its step-0 weights is its probe and is not "
             "compared.", "", _full_sentence(profiles), ""]
    if not rows:
        lines += ["**No chapter of this run has written scorecard rows yet**, so this page has no verdict "
                  "to show: the comparisons of the language model with its baselines are in the chapters' own "
                  "tables.", ""]
    else:
        summary = ", ".join(f"{o} {len(counts[o])}" for o in OUTCOMES)
        lines += [f"Of {len(rows)} comparison{'s' if len(rows) != 1 else ''}: {summary}.", ""]
        for o in OUTCOMES:
            lines += [f"## {_HEADINGS[o]} ({len(counts[o])})", ""]
            lines += (_table(counts[o]) if counts[o] else ["None in this run."]) + [""]
    lines += _profiles_section(profiles, requested)
    return "\n".join(lines).rstrip("\n") + "\n"


def build_scorecard(run_dir: str | Path, book_dir: str | Path, requested: str | None = None) -> Path:
    """Write ``book_dir/scorecard.md`` from the chapters of ``run_dir`` (atomically); returns its path.

    Args:
        run_dir: ``<output>/<profile>`` of the run.
        book_dir: the book's source folder being built.
        requested: the profile the run was asked for (``auto`` resolves per chapter).

    Raises:
        ValueError: see :func:`read_rows`.
        OSError: the page cannot be written.
    """
    from ecrec.io import atomic_write_text

    rows, profiles = read_rows(run_dir)
    return atomic_write_text(Path(book_dir) / SCORECARD_FILE, render(rows, profiles, requested))
