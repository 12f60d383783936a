"""Wall-clock timing for the chapters and ``benchmarks/``: never asserted in tests.

Times are this machine's, under whatever else it runs; chapters print them
and benchmarks compare ratios measured side by side in one run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")

__all__ = ["best_of", "TAIL_SAMPLES", "min_samples", "percentiles_ms"]

TAIL_SAMPLES = 10  # samples that must lie beyond a percentile before it is reported


def best_of(fn: Callable[[], T], repeats: int = 3) -> tuple[float, T]:
    """Run ``fn()`` ``repeats`` times; return (fastest wall time in seconds, the last result).

    The minimum is the least disturbed run (other processes only ever add
    time), the usual choice of ``timeit``.

    Raises:
        ValueError: ``repeats`` < 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def min_samples(q: float) -> int:
    """Timed samples needed to report the ``q``-th percentile: ``ceil(10 * 100 / (100 - q))``.

    The rule: at least :data:`TAIL_SAMPLES` (10) samples must lie beyond the
    percentile, i.e. ``n * (1 - q/100) >= 10``. So p50 needs 20 samples, p90
    100, p95 200, p99 1,000 and p99.9 10,000. From fewer, the "p99" of 30
    requests is the second-slowest one plus interpolation, a number that
    moves with every run.

    Args:
        q: the percentile, in percent, 0 <= q < 100.

    Raises:
        ValueError: ``q`` outside [0, 100).
    """
    if not 0 <= q < 100:
        raise ValueError(f"q is a percentile in percent, 0 <= q < 100, got {q!r}")
    return int(math.ceil(TAIL_SAMPLES * 100 / (100 - q) - 1e-9))


def percentiles_ms(seconds: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float | int | str]:
    """Latency percentiles in milliseconds, each only where enough samples support it (:func:`min_samples`).

    Args:
        seconds: (n,) timed durations in seconds.
        qs: percentiles in percent.

    Returns:
        ``{"p50_ms": ..., "p95_ms": ..., "p99_ms": ..., "mean_ms", "n", "note"}``:
        a percentile with fewer than ``min_samples(q)`` samples is NaN, and
        ``note`` says which and why (``""`` when every percentile is reported);
        ``n`` is the number of samples behind every percentile (``numpy.percentile``,
        linear interpolation).

    Raises:
        ValueError: no sample, a NaN or negative duration, or a ``q`` outside [0, 100).
    """
    ms = np.asarray(seconds, dtype=np.float64).ravel() * 1000
    if ms.size == 0:
        raise ValueError("no timed sample: nothing to take percentiles of")
    if np.isnan(ms).any() or (ms < 0).any():
        raise ValueError("durations must be >= 0 seconds and not NaN")
    out: dict[str, float | int | str] = {}
    short = []
    for q in qs:
        need = min_samples(q)
        key = f"p{q:g}_ms"
        if ms.size >= need:
            out[key] = float(np.percentile(ms, q))
        else:
            out[key] = float("nan")
            short.append(f"p{q:g} needs >= {need:,}")
    out["mean_ms"] = float(ms.mean())
    out["n"] = int(ms.size)
    out["note"] = (f"not reported from {ms.size:,} samples: {', '.join(short)} "
                   f"({TAIL_SAMPLES} samples beyond the percentile)") if short else ""
    return out
