"""Wall-clock timing for the chapters and ``benchmarks/``: never asserted in tests.

Times are this machine's, under whatever else it runs; chapters print them
and benchmarks compare ratios measured side by side in one run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["best_of"]


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
