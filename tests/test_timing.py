from __future__ import annotations

import pytest

from ecrec.timing import best_of


def test_best_of_runs_repeats_times_and_returns_the_last_result():
    calls = []
    seconds, out = best_of(lambda: calls.append(1) or len(calls), repeats=4)
    assert calls == [1, 1, 1, 1] and out == 4 and seconds >= 0.0
    with pytest.raises(ValueError, match="repeats"):
        best_of(lambda: None, repeats=0)
