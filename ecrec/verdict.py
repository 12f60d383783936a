"""One rule for every computed verdict in the book: "identical", "a gain", "a loss", "within noise".

A sentence that a chapter computes from its run ("the hybrid beats ALS by ...")
must not say more than the run shows. The rule, applied everywhere:

1. **Identical.** Two models whose scores are the same (the difference and both
   ends of its interval are within ``noise`` of 0, e.g. 1e-19 from summation
   order) are *identical*, never a gain, a loss or "+0.000".
2. **Did not move.** A fine-tuned model that early stopping left at its step-0
   weights is its starting point (its probe): the caller says so with
   ``kept_start=True``, and the verdict is "= its probe (fine-tuning did not
   move it)". Such a model is never compared as an architecture.
3. **A gain / a loss** only when the interval clears 0 by more than ``noise``
   **and** the sign holds for every seed the chapter ran (``seed_diffs``).
4. Otherwise **within noise**, with the seed range beside it where there is one.

"Better" is ``higher`` (AUC, Recall@K) or ``lower`` (log loss): a difference
``a - b`` of -0.01 in log loss is a gain.

Intervals are dicts ``{"diff", "low", "high"}`` as :mod:`ecrec.stats` returns
them, optionally with ``"level"`` (the coverage, e.g. 0.95), which the rendered
text shows.

The scorecard (``book/scorecard.md``, built by :func:`ecrec.scorecard`) reads
the rows that :func:`thesis_row` writes into each chapter's ``metrics.json``
under ``"thesis"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["NOISE", "Verdict", "decide", "fmt_interval", "compare", "thesis_row", "WORDS"]

NOISE = 1e-9  # |difference| below this is numerical noise (summation order, fp reassociation)
WORDS = ("identical", "= its probe (fine-tuning did not move it)", "a gain", "a loss", "within noise")


@dataclass(frozen=True)
class Verdict:
    """A decided verdict.

    Attributes:
        word: one of :data:`WORDS`.
        diff, low, high: the difference ``a - b`` and its interval (NaN when absent).
        level: the interval's coverage (NaN when the interval did not say).
        seed_range: ``(min, max)`` of the per-seed differences, or None.
        text: the verdict rendered for a sentence, numbers included, e.g.
            ``"+0.004 [+0.001, +0.007] (a gain)"``.
    """

    word: str
    diff: float
    low: float
    high: float
    level: float
    seed_range: tuple[float, float] | None
    text: str

    @property
    def is_gain(self) -> bool:
        return self.word == "a gain"

    @property
    def is_loss(self) -> bool:
        return self.word == "a loss"

    def __str__(self) -> str:
        return self.text


def _get(r: Mapping[str, float], key: str) -> float:
    v = r.get(key, float("nan"))
    return float("nan") if v is None else float(v)


def fmt_interval(r: Mapping[str, float], digits: int = 3, *, signed: bool = True) -> str:
    """``"+0.004 [+0.001, +0.007]"`` from ``{"diff"|"auc"|"value", "low", "high"}``.

    An interval whose ends and point are all within :data:`NOISE` of 0 renders
    as ``"0 (identical)"``: never ``"+0.000 [+0.000, +0.000]"``.
    """
    value = next((float(r[k]) for k in ("diff", "auc", "value", "log_loss") if k in r), float("nan"))
    lo, hi = _get(r, "low"), _get(r, "high")
    if signed and max(abs(value), abs(lo) if not math.isnan(lo) else 0, abs(hi) if not math.isnan(hi) else 0) <= NOISE:
        return "0 (identical)"
    s = "+" if signed else ""
    if math.isnan(lo) or math.isnan(hi):
        return f"{value:{s}.{digits}f}"
    # an end that is not 0 but rounds to it would read as touching 0 ("[-0.011, -0.000]" beside "a loss"):
    # add digits until every non-zero end shows a non-zero digit (at most 6)
    while digits < 6 and any(x != 0 and abs(x) > NOISE and round(abs(x), digits) == 0 for x in (lo, hi)):
        digits += 1
    return f"{value:{s}.{digits}f} [{lo:{s}.{digits}f}, {hi:{s}.{digits}f}]"


def direction(r: Mapping[str, float], *, digits: int = 3) -> str:
    """``"+0.03 [+0.02, +0.04] (95% interval), higher"``: a difference read as a direction, through :func:`decide`.

    For numbers where neither side is "better" (novelty, diversity): "higher"/"lower" only when the interval
    clears 0, "within noise" otherwise, "identical" when the difference is numerical noise.
    """
    v = decide(r, digits=digits)
    if v.word == "identical":
        return "identical"
    return f"{fmt_interval(r, digits)} ({v.level:.0%} interval), " + {"a gain": "higher", "a loss": "lower"}.get(
        v.word, "within noise")


def decide(
    r: Mapping[str, float],
    *,
    better: str = "higher",
    seed_diffs: Sequence[float] | None = None,
    kept_start: bool = False,
    noise: float = NOISE,
    digits: int = 3,
) -> Verdict:
    """The verdict on a difference ``a - b`` with its interval.

    Args:
        r: ``{"diff", "low", "high"}`` (``"level"`` optional), e.g. an entry
            ``"a - b"`` of :func:`ecrec.stats.bootstrap_auc`.
        better: ``"higher"`` (AUC, recall) or ``"lower"`` (log loss, latency).
        seed_diffs: the same difference under every seed the chapter ran
            (None or empty: one seed). A gain needs every one of them > 0.
        kept_start: ``a`` is a fine-tuned model that kept its step-0 weights
            (``result.best_step == 0``): the verdict says so and nothing else.
        noise: differences within this of 0 are numerical noise.
        digits: decimals in the text.

    Returns:
        A :class:`Verdict`.

    Raises:
        ValueError: ``better`` is not "higher"/"lower", or ``r`` has no ``"diff"``.
    """
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', got {better!r}")
    if "diff" not in r:
        raise ValueError(f"an interval needs a 'diff' (a - b); got keys {sorted(r)}")
    diff, lo, hi, level = _get(r, "diff"), _get(r, "low"), _get(r, "high"), _get(r, "level")
    seeds = [float(d) for d in (seed_diffs or [])]
    seed_range = (min(seeds), max(seeds)) if seeds else None
    sign = 1.0 if better == "higher" else -1.0
    ends = [x for x in (diff, lo, hi) if not math.isnan(x)]
    if kept_start:
        word = WORDS[1]
    elif ends and max(abs(x) for x in ends) <= noise and all(abs(d) <= noise for d in seeds):
        word = "identical"
    else:
        cleared_up = not math.isnan(lo) and sign * (lo if sign > 0 else hi) > noise
        cleared_down = not math.isnan(hi) and sign * (hi if sign > 0 else lo) < -noise
        if cleared_up and all(sign * d > noise for d in seeds):
            word = "a gain"
        elif cleared_down and all(sign * d < -noise for d in seeds):
            word = "a loss"
        else:
            word = "within noise"
    numbers = fmt_interval(r, digits)
    if not math.isnan(level) and "[" in numbers:
        numbers += f" ({level:.0%} interval)"
    if word == "identical":
        text = "identical (difference exactly 0 up to rounding)"
    elif word == WORDS[1]:
        text = word
    else:
        text = f"{numbers}, {word}"
        if seed_range is not None and len(seeds) > 1:
            text += f"; over {len(seeds)} seeds {seed_range[0]:+.{digits + 1}f} to {seed_range[1]:+.{digits + 1}f}"
    return Verdict(word, diff, lo, hi, level, seed_range, text)


def compare(a: str, b: str, r: Mapping[str, float], **kwargs) -> str:
    """A sentence comparing ``a`` with ``b``: "a beats b by ...", "a is within noise of b", ...

    Keyword arguments go to :func:`decide`.
    """
    v = decide(r, **kwargs)
    if v.word == "identical":
        return f"{a} and {b} are identical (the same scores)"
    if v.word == WORDS[1]:
        return f"{a} = its probe (fine-tuning did not move it), so it is not compared with {b}"
    verb = {"a gain": "beats", "a loss": "loses to", "within noise": "is within noise of"}[v.word]
    return f"{a} {verb} {b}: {fmt_interval(r)}" + (f" ({v.level:.0%} interval)" if not math.isnan(v.level) else "") + (
        f"; over {len(seed_diffs)} seeds {min(seed_diffs):+.4f} to {max(seed_diffs):+.4f}"
        if (seed_diffs := kwargs.get("seed_diffs")) and len(seed_diffs) > 1 else "")


def thesis_row(
    *,
    chapter: str,
    question: str,
    metric: str,
    lm: str,
    baseline: str,
    r: Mapping[str, float],
    train_size: int | str,
    better: str = "higher",
    seed_diffs: Sequence[float] | None = None,
    kept_start: bool = False,
    slice: str = "all",
) -> dict:
    """One row of the book's scorecard: where a language model wins, ties or loses.

    Written by a chapter into ``metrics.json`` under ``"thesis"`` (a list of
    rows); ``python -m ecrec.book build`` gathers them into the scorecard page.

    Args:
        chapter: e.g. ``"04"``.
        question: what is compared, in words ("text added to the ID DNN").
        metric: "AUC", "Recall@50", ... (``better`` says its direction).
        lm, baseline: the two models' names (``lm - baseline`` is ``r``).
        r: the paired difference ``lm - baseline`` with its interval.
        train_size: training examples (or a description) at this point.
        seed_diffs, kept_start, better: as :func:`decide`.
        slice: the test slice ("all", "cold items", ...).

    Returns:
        A JSON-ready dict with the verdict's word and text.
    """
    v = decide(r, better=better, seed_diffs=seed_diffs, kept_start=kept_start)

    def num(x: float) -> float | None:
        return None if math.isnan(x) else round(float(x), 4)

    return {"chapter": chapter, "question": question, "metric": metric, "slice": slice, "lm": lm,
            "baseline": baseline, "diff": num(v.diff), "low": num(v.low), "high": num(v.high),
            "level": num(v.level), "better": better, "train_size": train_size, "verdict": v.word, "text": v.text,
            "seed_range": list(v.seed_range) if v.seed_range else None}
