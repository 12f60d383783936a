"""notebooks/solutions/01_exercises.py and 02_exercises.py: the worked solutions run, and their answers hold.

Both read the whole cleaned log and take seconds (about 15 s and 11 s on 2
shared CPU cores, mostly loading and cleaning the log). The values were
recorded on ``main(smoke=True)`` (seed 42):

* 01, exercise 1: 8,539 cancellation lines on 3,383 invoices; 34.7% of 4,334
  buyers cancelled at least once (13.5% of one-time buyers, 46.1% of repeat
  buyers); 87.9% of the lines undo an earlier purchase in the log; 28
  customers only cancel.
* 01, exercise 2: UK 90.4% of customers; repeat-customer rate 0.654 (UK) and
  0.636 (rest), repeat-pair rate 0.222 and 0.240; 6 countries with >= 20
  customers, Switzerland 0.600 to Belgium 0.750.
* 01, exercise 3: cutoff 2011-09-01, 100 test days: cold customers 34.4%
  (25.4% of lines), cold items 8.9%; cutoff 2011-11-10, 30 days: 15.5%
  (14.0%), 1.4%.
* 02, exercise 1: 8,819 rows, base rate 0.2535; relative error of the
  analytic gradient 1.4e-10 against finite differences, 1.0e-16 against
  autograd; gradient norm at the MLE 2.2e-10.
* 02, exercise 2: the naive loss non-finite for 8 of 26 (z, y); relative
  error lost from |z| = 40 (softplus(z) - y z at y = 1; torch float64 at
  y = 0), from 20 (torch float32, y = 0); the symmetric form exact.
"""

from __future__ import annotations

import math

import pytest
from conftest import load_solution as _load

# ---------------------------------------------------------------- chapter 01


@pytest.fixture(scope="module")
def ex01():
    return _load("01_exercises").main(smoke=True, verbose=False)


def test_01_exercise_1_cancellations(ex01):
    e = ex01["exercise_1"]
    assert e["cancellation_lines"] == 8539
    assert e["cancellation_invoices"] == 3383
    assert e["buyers"] == 4334  # chapter 01's n_customers
    assert 0.33 <= e["share_buyers_with_cancellation"] <= 0.36  # 0.3475 recorded
    assert e["median_cancellation_invoices_of_returners"] == 1.0
    # returning goes with buying often
    assert e["returners_among_repeat_buyers"] > 2 * e["returners_among_one_time_buyers"]  # 0.461 vs 0.135
    assert 0.85 <= e["share_lines_with_earlier_purchase"] <= 0.90  # 0.8793 recorded
    assert e["cancellations_without_a_purchase"] == 28
    assert e["cancellation_lines_per_purchase_line"] == pytest.approx(8539 / 391150, rel=0.05)


def test_01_exercise_2_repeat_by_country(ex01):
    e = ex01["exercise_2"]
    assert 0.89 <= e["uk_customer_share"] <= 0.92  # 0.9036 recorded
    assert e["repeat_customer_rate_uk"] == pytest.approx(0.6545, abs=0.005)
    assert e["repeat_customer_rate_rest"] == pytest.approx(0.6364, abs=0.005)
    assert e["repeat_pair_rate_uk"] == pytest.approx(0.2215, abs=0.005)
    assert e["repeat_pair_rate_rest"] == pytest.approx(0.2401, abs=0.005)
    assert e["countries_with_min_customers"] == 6
    table = e["table"]
    assert table.index[0] == "United Kingdom" and table["customers"].is_monotonic_decreasing
    assert (table["customers"] >= 20).all()
    assert e["highest_repeat_customer_rate"][0] == "Belgium"
    assert e["lowest_repeat_customer_rate"][0] == "Switzerland"


def test_01_exercise_3_cold_start_by_cutoff(ex01):
    e = ex01["exercise_3"]
    assert list(e) == ["2011-09-01", "2011-11-10"]
    early, default = e["2011-09-01"], e["2011-11-10"]
    assert early["test_days"] == 100 and default["test_days"] == 30
    assert early["cold_customer_share"] == pytest.approx(0.3438, abs=0.005)
    assert early["cold_item_share"] == pytest.approx(0.0893, abs=0.005)
    assert default["cold_customer_share"] == pytest.approx(0.1549, abs=0.005)  # chapter 01's cold_customer_share
    assert default["cold_item_share"] == pytest.approx(0.0139, abs=0.003)
    # an earlier cutoff: a longer window with more, and more often new, customers and items
    for key in ("test_customers", "test_items", "cold_customer_share", "cold_item_share"):
        assert early[key] > default[key]


# ---------------------------------------------------------------- chapter 02


@pytest.fixture(scope="module")
def ex02():
    return _load("02_exercises").main(smoke=True, verbose=False)


def test_02_exercise_1_gradient(ex02):
    e = ex02["exercise_1"]
    assert e["n"] == 8819
    assert e["base_rate"] == pytest.approx(0.2535, abs=0.001)
    assert e["random_grad_norm"] > 0.1  # 0.353: a point where the check means something
    assert e["rel_error_finite_diff"] < 1e-8  # 1.4e-10 recorded
    assert e["rel_error_autograd"] < 1e-12  # 1.0e-16 recorded
    # at the maximum-likelihood fit the gradient vanishes, and dL/db = 0 is calibration in the mean
    assert e["mle_grad_norm"] < 1e-6  # 2.2e-10 recorded
    assert e["mle_mean_prediction"] == pytest.approx(e["base_rate"], abs=1e-6)


def test_02_exercise_2_extreme_logits(ex02):
    e = ex02["exercise_2"]
    forms = e["forms"]
    assert forms["naive"]["non_finite"] == 8
    for name, row in forms.items():
        if name != "naive":
            assert row["non_finite"] == 0, name
    # absolutely accurate in float64: within a few rounding units of |z| <= 1000
    for name in ("softplus(z) - y z", "softplus((1-2y) z), log not log1p", "torch BCEWithLogits float64"):
        assert forms[name]["max_abs_error"] < 1e-14, name
    # the symmetric forms are exact
    assert forms["softplus((1-2y) z)"]["max_rel_error"] == 0.0
    assert forms["-logsigmoid((2y-1) z), torch"]["max_rel_error"] < 1e-15
    # where relative accuracy is lost, and for which label
    assert forms["softplus(z) - y z"]["rel_error_from_y1"] == 40.0
    assert forms["softplus(z) - y z"]["rel_error_from_y0"] is None
    assert forms["torch BCEWithLogits float64"]["rel_error_from_y0"] == 40.0
    assert forms["torch BCEWithLogits float64"]["rel_error_from_y1"] is None
    assert forms["torch BCEWithLogits float32"]["rel_error_from_y0"] == 20.0
    assert e["exact_y1_z40"] == pytest.approx(math.exp(-40), rel=1e-12)
    assert e["grad_max_abs_error_torch64"] < 1e-15


def test_01_exercise_2_country_gap_is_within_noise(ex01):
    # Belgium 0.750 minus Switzerland 0.600, each country's customers resampled (seed 0): the interval holds 0
    gap = ex01["exercise_2"]["highest_minus_lowest"]
    assert gap["diff"] == pytest.approx(0.15, abs=1e-9)
    assert gap["low"] < 0 < gap["high"] and gap["verdict"] == "within noise"
    assert gap["text"].startswith("+0.150 [")
