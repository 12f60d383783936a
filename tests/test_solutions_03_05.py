"""notebooks/solutions/03_exercises.py and 05_exercises.py: the worked solutions run, and their answers hold.

``03_exercises.main(smoke=True)`` builds chapter 03's smoke dataset twice (uniform
and popularity negatives) and fits two logistic regressions (37 s measured on 2 CPU cores shared with
another job), so its tests are marked ``notebook``; ``05_exercises`` takes about
6 s and is not. The ranges were recorded on their smoke runs (seed 42):

* 03, exercise 1: test AUC of ``i_share_30d`` 0.7917 (uniform) and 0.5154
  (popularity); logistic regression without text 0.8373 and 0.7056; median
  ``i_pop_30d`` of the negatives 11 and 40 (positives 43); 3,026 test positives.
* 03, exercise 2: test AUC of the leaky whole-log count 0.7639, of ``i_pop_30d``
  0.7912; deleting the future moves the leaky count for 82.6% of 1,452 rows.
* 05, exercise 1 (400 users): Recall@50 of "most popular" over 7/30/90 days,
  all 0.1483/0.1508/0.1364, new-to-user 0.1513/0.1490/0.1181.
* 05, exercise 2: new-to-user Recall@50 with/without excluding the history,
  item-CF 0.1338/0.0999, ALS 0.1388/0.0920; slots on bought items without the
  exclusion 0.270 (item-CF) and 0.426 (ALS).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_solution as _load

# ---------------------------------------------------------------- chapter 03


def test_03_exercises_sizes():
    ex = _load("03_exercises")
    assert set(ex.SIZES) == {"smoke", "full"}
    assert set(ex.SIZES["smoke"]) == set(ex.SIZES["full"])
    assert ex.SIZES["smoke"]["max_users"] == 250  # chapter 03's smoke users: the recorded ranges below


@pytest.fixture(scope="module")
def ex03(tmp_path_factory):
    ex = _load("03_exercises")
    return ex.main(smoke=True, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)


@pytest.mark.notebook
def test_03_exercise_1_popularity_negatives(ex03):
    e = ex03["exercise_1"]
    uni, pop = e["uniform"], e["popularity"]
    # the same positives under both samplers (only the negatives change)
    n_pos = {k: round(v["test_rows"] * v["test_positive_rate"]) for k, v in e.items()}
    assert n_pos["uniform"] == n_pos["popularity"] == 3026
    assert 0.18 <= uni["test_positive_rate"] <= 0.23  # 1 positive per 4 sampled negatives
    # popularity sampling makes the negatives as popular as the positives
    assert uni["median_i_pop_30d_neg"] < 0.5 * uni["median_i_pop_30d_pos"]  # 11 vs 43 recorded
    assert pop["median_i_pop_30d_neg"] > 0.8 * pop["median_i_pop_30d_pos"]  # 40 vs 43 recorded
    assert 0.78 <= uni["auc_i_share_30d"] <= 0.80  # 0.7917 recorded
    assert 0.48 <= pop["auc_i_share_30d"] <= 0.55  # 0.5154 recorded: popularity alone is near chance
    assert 0.82 <= uni["auc_lr_no_text"] <= 0.85  # 0.8373 recorded
    assert 0.68 <= pop["auc_lr_no_text"] <= 0.73  # 0.7056 recorded
    # the features beyond popularity hold up: the regression loses less than the popularity score
    drop_pop = uni["auc_i_share_30d"] - pop["auc_i_share_30d"]
    drop_lr = uni["auc_lr_no_text"] - pop["auc_lr_no_text"]
    assert drop_lr < 0.7 * drop_pop
    assert pop["auc_lr_no_text"] > pop["auc_i_share_30d"] + 0.1


@pytest.mark.notebook
def test_03_exercise_2_leaky_feature(ex03):
    e = ex03["exercise_2"]
    assert 0.74 <= e["test_auc"]["leaky_count"] <= 0.78  # 0.7639 recorded
    assert 0.78 <= e["test_auc"]["i_pop_30d"] <= 0.80  # 0.7912 recorded (the same as 04's exercise 2)
    # the leak does not flatter the AUC here: only the delete-the-future check reveals it
    assert e["test_auc"]["leaky_count"] < e["test_auc"]["i_pop_30d"]
    assert e["n_times"] == 20 and e["checked_rows"] > 500  # 1,452 recorded
    assert e["moved_share_i_pop_30d"] == 0.0  # point in time: deleting the future changes nothing
    assert e["checked_positives"] > 0
    assert e["moved_share_leaky_positives"] == 1.0  # a positive's own purchase is deleted
    assert 0.7 <= e["moved_share_leaky"] <= 0.95  # 0.826 recorded


# ---------------------------------------------------------------- chapter 05


def test_05_slots_on_bought():
    import scipy.sparse as sp

    ex = _load("05_exercises")
    history = sp.csr_array(np.array([[1, 0, 0, 2], [0, 0, 0, 0]]))
    ids = np.array([[0, 1, 3, -1], [0, 1, 2, 3]])
    # user 0: items 0 and 3 bought, 3 valid slots; user 1: nothing bought, 4 slots
    assert ex.slots_on_bought(ids, history, k=4) == pytest.approx(2 / 7)
    assert ex.slots_on_bought(ids, history, k=1) == pytest.approx(1 / 2)


@pytest.fixture(scope="module")
def ex05():
    return _load("05_exercises").main(smoke=True, verbose=False)


def test_05_exercise_1_popularity_window(ex05):
    e = ex05["exercise_1"]
    assert ex05["n_users"] == 400
    assert list(e) == [7, 30, 90]
    # a longer window sees more items sold
    assert e[7]["items_with_a_buyer"] < e[30]["items_with_a_buyer"] < e[90]["items_with_a_buyer"]
    recorded = {7: (0.1483, 0.1513), 30: (0.1508, 0.1490), 90: (0.1364, 0.1181)}
    for days, (rec_all, rec_new) in recorded.items():
        assert e[days]["all"] == pytest.approx(rec_all, abs=0.01)
        assert e[days]["new_to_user"] == pytest.approx(rec_new, abs=0.01)
    # the 90-day list is the worst in both settings, clearly so for new-to-user purchases
    for setting in ("all", "new_to_user"):
        assert e[90][setting] < min(e[7][setting], e[30][setting])
    assert e[7]["new_to_user"] - e[90]["new_to_user"] > 0.02


def test_05_exercise_2_exclude_history(ex05):
    e = ex05["exercise_2"]
    recorded = {"item_cf": (0.1338, 0.0999, 0.270), "als": (0.1388, 0.0920, 0.426)}
    for name, (rec_ex, rec_no, slots) in recorded.items():
        r = e[name]
        assert r["excluded"]["recall"] == pytest.approx(rec_ex, abs=0.01)
        assert r["not_excluded"]["recall"] == pytest.approx(rec_no, abs=0.01)
        assert r["not_excluded"]["slots_on_bought"] == pytest.approx(slots, abs=0.05)
        # excluding the history leaves no bought item in the lists ...
        assert r["excluded"]["slots_on_bought"] == 0.0
        # ... and only removes items: the list can only find more, user by user
        assert r["users_worse_when_excluded"] == 0
        assert r["excluded"]["recall"] > r["not_excluded"]["recall"] + 0.02
        # the same users are evaluated either way (those with a new-to-user purchase)
        assert np.array_equal(np.isnan(r["excluded"]["per_user"]), np.isnan(r["not_excluded"]["per_user"]))
        assert 0 < r["n_users_evaluated"] < ex05["n_users"]
