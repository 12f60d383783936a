"""notebooks/solutions/: the worked solutions run, and their answers hold.

``04_exercises.main(smoke=True)`` fine-tunes MiniLM twice on 128 pairs (about a
minute on 2 CPU cores), so that test is marked ``notebook``. The ranges were
recorded on its smoke run (seed 42): probe validation AUC 0.6020 (= the
warm-started run's step-0 AUC), random head step-0 AUC 0.5228 and logit std
0.021; test AUC of i_pop_7d 0.7873 and of i_pop_30d 0.7912.
"""

from __future__ import annotations

import math

import pytest
from conftest import load_solution as _load


def test_04_exercises_sizes_and_helpers():
    ex = _load("04_exercises")
    assert set(ex.SIZES) == {"smoke", "cpu"}
    assert set(ex.SIZES["smoke"]) == set(ex.SIZES["cpu"])
    assert ex.base_rate_log_loss(0.5) == pytest.approx(math.log(2))
    assert ex.base_rate_log_loss(0.2) == pytest.approx(-(0.2 * math.log(0.2) + 0.8 * math.log(0.8)))


@pytest.fixture(scope="module")
def ex04(tmp_path_factory):
    ex = _load("04_exercises")
    return ex.main(smoke=True, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)


@pytest.mark.notebook
def test_04_exercise_1_random_head_vs_warm_start(ex04):
    e = ex04["exercise_1"]
    random, warm = e["runs"]["random_head"], e["runs"]["warm_head"]
    assert e["n_train"] == 128 and e["n_valid"] == 128
    assert 0.15 <= e["base_rate"] <= 0.25  # 1 positive per 4 sampled negatives
    # the warm start IS the probe: same validation rows, same logits, the encoder untouched
    assert warm["start_valid_auc"] == pytest.approx(e["probe_valid_auc"], abs=1e-6)
    assert 0.56 <= e["probe_valid_auc"] <= 0.64  # 0.6020 recorded
    assert warm["best_valid_auc"] >= e["probe_valid_auc"]  # step 0 is kept unless beaten
    # a random head: logits near 0 (p ~ 0.5, not the base rate) with almost no spread
    assert abs(random["step0_logit_mean"]) < 0.05
    assert random["step0_logit_std"] < 0.1
    assert random["first_step_logit_std"] < 0.1
    assert max(s["logit_std"] for s in random["steps"]) < 0.1  # still flat after every step
    assert 0.40 <= random["start_valid_auc"] <= 0.60  # 0.5228: a random projection, no ranking
    assert random["start_valid_log_loss"] == pytest.approx(math.log(2), abs=0.01)
    # what its steps learn first is the base rate: validation log loss falls towards its entropy
    assert e["base_rate_log_loss"] < random["end_valid_log_loss"] < random["start_valid_log_loss"]
    # the warm head: the probe's intercept already holds the base rate, and a real spread
    assert warm["step0_logit_mean"] < -0.5
    assert warm["first_step_logit_std"] > 5 * random["first_step_logit_std"]
    assert len(random["steps"]) == len(warm["steps"]) == 8  # 128 pairs / batch 16, 1 epoch
    assert [h["step"] for h in random["history"]] == [0, 4, 8]


@pytest.mark.notebook
def test_04_exercise_2_popularity_windows(ex04):
    e = ex04["exercise_2"]
    assert 0.782 <= e["auc"]["i_pop_7d"] <= 0.792  # 0.7873 recorded
    assert 0.786 <= e["auc"]["i_pop_30d"] <= 0.796  # 0.7912 recorded
    # the 7-day count is 0 (a tie) far more often than the 30-day count
    assert e["ties_share"]["i_pop_7d"] > 0.1 > 0.01 > e["ties_share"]["i_pop_30d"]
    d = e["bootstrap"]["i_pop_30d - i_pop_7d"]
    assert d["diff"] == pytest.approx(e["auc"]["i_pop_30d"] - e["auc"]["i_pop_7d"])
    assert d["low"] <= d["diff"] <= d["high"]
