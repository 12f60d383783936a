"""notebooks/solutions/06_exercises.py: the worked solutions of chapter 06 run, and their answers hold.

``main(smoke=True)`` reads chapter 06's smoke sample (1,000 users of chapter 03's dataset), the raw log's
cancellations and fits two logistic regressions (28 s measured on 2 loaded CPU cores), so the tests are
marked ``notebook``. Recorded on the smoke run (seed 42):

* exercise 1: train return rate 0.0079 / 0.0118 / 0.0143 for 7 / 14 / 28 days; observed test share
  0.785 / 0.567 / 0.056; observed test returns 46 / 48 / 3.
* exercise 2: feature alone AUC 0.555; logistic regression without / with the feature 0.762 / 0.770,
  paired difference +0.008 [-0.010, +0.027] (not shown).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import load_solution as _load


def test_06_sizes():
    ex = _load("06_exercises")
    assert set(ex.SIZES) == {"smoke", "full"}
    assert set(ex.SIZES["smoke"]) == set(ex.SIZES["full"])
    assert ex.SIZES["smoke"]["max_users"] == 1000  # chapter 06's smoke users: the recorded ranges below


def test_06_cancellations_before_is_point_in_time():
    ex = _load("06_exercises")
    t0 = pd.Timestamp("2011-01-01")
    canc = pd.DataFrame({"user_id": [1, 1, 2], "cancel_ts": [t0, t0 + pd.Timedelta(days=2), t0]})
    examples = pd.DataFrame({"user_id": [1, 1, 1, 2, 3],
                             "ts": [t0, t0 + pd.Timedelta(days=1), t0 + pd.Timedelta(days=3), t0 + pd.Timedelta(hours=1), t0]})
    # strictly before: a cancellation at the example's own time does not count
    np.testing.assert_array_equal(ex.cancellations_before(examples, canc), [0, 1, 2, 1, 0])


@pytest.fixture(scope="module")
def ex06(tmp_path_factory):
    return _load("06_exercises").main(smoke=True, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)


@pytest.mark.notebook
def test_06_exercise_1_windows(ex06):
    e = ex06["exercise_1"]
    assert list(e) == [7, 14, 28]
    # the purchases do not depend on the window; a longer window finds more train returns ...
    assert e[7]["train"]["purchases"] == e[28]["train"]["purchases"] == 61622
    assert e[7]["train"]["returns_observed"] < e[14]["train"]["returns_observed"] < e[28]["train"]["returns_observed"]
    # ... and censors more of the valid and test windows (train is never censored: its horizon is the test start)
    for split in ("valid", "test"):
        assert e[7][split]["observed_share"] > e[14][split]["observed_share"] > e[28][split]["observed_share"]
    assert all(e[w]["train"]["observed_share"] == 1.0 for w in e)
    recorded = {7: (0.0079, 0.785, 46), 14: (0.0118, 0.567, 48), 28: (0.0143, 0.056, 3)}
    for w, (rate, share, n) in recorded.items():
        assert e[w]["train"]["return_rate"] == pytest.approx(rate, abs=0.001)
        assert e[w]["test"]["observed_share"] == pytest.approx(share, abs=0.02)
        assert abs(e[w]["test"]["returns_observed"] - n) <= 5


@pytest.mark.notebook
def test_06_exercise_2_return_feature(ex06):
    e = ex06["exercise_2"]
    assert e["test_returns"] == 48 and e["test_purchases"] == 7939  # the chapter's 14-day window, observed
    assert 0.52 <= e["feature_auc"] <= 0.59  # 0.555 recorded
    assert 0.73 <= e["without"]["auc"] <= 0.79  # 0.762 recorded
    assert 0.74 <= e["with"]["auc"] <= 0.80  # 0.770 recorded
    d = e["with_minus_without"]
    assert d["low"] <= d["diff"] <= d["high"]
    assert d["diff"] == pytest.approx(e["with"]["auc"] - e["without"]["auc"])
