"""ecrec.metrics: hand-computed values and scikit-learn as the oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from ecrec import metrics as M

# --- log loss --------------------------------------------------------------


def test_log_loss_hand_computed():
    # -(ln 0.8 + ln(1 - 0.4)) / 2
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert M.log_loss([1, 0], [0.8, 0.4]) == pytest.approx(expected, rel=1e-12)


def test_log_loss_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = rng.uniform(0.01, 0.99, 500)
    assert M.log_loss(y, p) == pytest.approx(skm.log_loss(y, p), rel=1e-10)


def test_log_loss_clips_certain_mistakes():
    # p = 0 for a positive costs -ln(eps), not infinity.
    assert M.log_loss([1], [0.0], eps=1e-7) == pytest.approx(-math.log(1e-7))
    assert M.log_loss([0, 1], [0.0, 1.0]) == pytest.approx(-math.log(1 - 1e-15), abs=1e-12)


@pytest.mark.parametrize(
    "y, p, match",
    [
        ([0, 2], [0.1, 0.2], "only 0 and 1"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([0, np.nan], [0.1, 0.2], "NaN"),
        ([0, 1], [0.1, 0.2, 0.3], "same length"),
        ([0, 1], [0.1, 1.5], r"\[0, 1\]"),
        ([0, 1], [[0.1, 0.2]], "1-D"),
        ([], [], "empty"),
    ],
)
def test_log_loss_rejects_bad_input(y, p, match):
    with pytest.raises(ValueError, match=match):
        M.log_loss(y, p)


def test_log_loss_rejects_bad_eps_and_text():
    with pytest.raises(ValueError, match="eps"):
        M.log_loss([0, 1], [0.2, 0.8], eps=0.7)
    with pytest.raises(TypeError, match="numeric"):
        M.log_loss(["a", "b"], [0.2, 0.8])


# --- ROC AUC ---------------------------------------------------------------


def test_roc_auc_hand_computed_with_tie():
    # positives score 0.9 and 0.5, negatives 0.5 and 0.1:
    # pairs (0.9>0.5) 1, (0.9>0.1) 1, (0.5=0.5) 1/2, (0.5>0.1) 1 -> 3.5 / 4
    assert M.roc_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875)
    assert M.roc_auc([1, 0], [0.0, 1.0]) == 0.0
    assert M.roc_auc([1, 0, 1, 0], [3, 3, 3, 3]) == 0.5


def test_roc_auc_matches_sklearn_with_many_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    s = rng.integers(0, 7, 2000) + 0.3 * y  # few distinct values: many ties
    assert M.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), rel=1e-12)


def test_roc_auc_one_class_is_an_error():
    with pytest.raises(ValueError, match="both classes"):
        M.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="same length"):
        M.roc_auc([1, 0], [0.1])


# --- GAUC ------------------------------------------------------------------


def test_gauc_hand_computed_and_skips_single_class_users():
    users = ["a", "a", "a", "b", "b", "c", "c"]
    y = [1, 0, 0, 1, 0, 1, 1]
    s = [0.9, 0.5, 0.95, 0.2, 0.8, 0.1, 0.3]
    # a: pos 0.9 vs negs 0.5, 0.95 -> 1/2 ; b: pos 0.2 < neg 0.8 -> 0 ; c: all positive -> skipped
    value, skipped = M.gauc(users, y, s)
    assert skipped == 1
    assert value == pytest.approx((3 * 0.5 + 2 * 0.0) / 5)
    assert M.gauc(users, y, s, weight="uniform")[0] == pytest.approx(0.25)
    assert M.gauc(users, y, s, weight="clicks")[0] == pytest.approx(0.25)  # 1 click each


def test_gauc_matches_per_user_sklearn_loop():
    rng = np.random.default_rng(2)
    n = 3000
    users = rng.integers(0, 150, n)
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(size=n) + 0.5 * y, 1)  # rounded: ties inside users
    num = den = 0.0
    skipped = 0
    for u in np.unique(users):
        m = users == u
        if y[m].min() == y[m].max():
            skipped += 1
            continue
        num += m.sum() * skm.roc_auc_score(y[m], s[m])
        den += m.sum()
    value, n_skipped = M.gauc(users, y, s)
    assert n_skipped == skipped
    assert value == pytest.approx(num / den, rel=1e-12)


def test_gauc_errors():
    with pytest.raises(ValueError, match="none of the 2 users"):
        M.gauc([1, 1, 2], [1, 1, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="weight"):
        M.gauc([1, 1], [1, 0], [0.1, 0.2], weight="rows")
    with pytest.raises(ValueError, match="same length"):
        M.gauc([1, 1, 2], [1, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="only 0 and 1"):
        M.gauc([1, 1], [1, 3], [0.1, 0.2])
