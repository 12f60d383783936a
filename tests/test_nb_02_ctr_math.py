"""Chapter 02 (the math of a CTR model): the smoke run's metrics.json against recorded ranges.

Recorded smoke run (seed 42): test log loss 0.512 (logistic regression) and
0.514 (MLP), AUC 0.726 and 0.726, constant base-rate model 0.584; gradient
check 1.8e-9, numpy vs torch 1e-16.
"""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def m(chapter_metrics):
    return chapter_metrics("02_ctr_math")


def test_test_set_is_the_october_snapshot(m):
    # customers seen before 2011-10-01, 975 of them buying again by 2011-10-31
    assert m["n_test"] == 3613
    assert m["test_base_rate"] == pytest.approx(975 / 3613, abs=1e-12)
    assert m["n_train"] > m["n_test"]


@pytest.mark.parametrize("model", ["lr", "mlp"])
def test_models_in_recorded_range_and_beat_the_constant(m, model):
    assert 0.49 < m[f"test_log_loss_{model}"] < 0.535
    assert 0.70 < m[f"test_auc_{model}"] < 0.76
    assert m[f"test_log_loss_{model}"] < m["test_log_loss_constant"] - 0.05


def test_from_scratch_lr_close_to_sklearn(m):
    assert 0.70 < m["test_auc_sklearn_lr"] < 0.76
    assert abs(m["test_auc_lr"] - m["test_auc_sklearn_lr"]) < 0.01


def test_constant_model_log_loss_is_the_cross_entropy_of_the_two_rates(m):
    # predicting the train rate q for everyone scores -[r log q + (1 - r) log(1 - q)], r the test rate
    q, r = m["train_base_rate"], m["test_base_rate"]
    assert m["test_log_loss_constant"] == pytest.approx(-(r * math.log(q) + (1 - r) * math.log(1 - q)), rel=1e-12)
    assert 0.57 < m["test_log_loss_constant"] < 0.60


def test_hand_written_metrics_equal_sklearn(m):
    assert m["metrics_vs_sklearn_max_abs_diff"] < 1e-9


def test_gradient_checks(m):
    assert m["grad_check_rel_error"] < 1e-7
    assert m["torch_loss_rel_error"] < 1e-10
    assert m["torch_grad_rel_error"] < 1e-10


def test_shorthand_gradient_right_only_with_grad_z(m):
    assert m["shorthand_z_rel_error"] < 1e-10
    assert m["shorthand_yhat_rel_error"] > 0.1


def test_stable_loss_finite_at_extreme_logits(m):
    assert m["stable_loss_finite_at_extremes"] is True


def test_auc_blind_to_calibration_demo(m):
    # in-sample fitted logistic regression (recorded 0.4731 log loss, AUC 0.7549) against order-preserving distortions
    assert m["demo_train_log_loss_fitted"] == pytest.approx(0.4731, abs=1e-3)
    assert m["demo_train_auc_fitted"] == pytest.approx(0.7549, abs=1e-3)
    assert m["demo_train_log_loss_div10"] == pytest.approx(0.8867, abs=1e-3)
    assert m["demo_train_log_loss_cubed"] == pytest.approx(0.8833, abs=1e-3)
    # the constant is the entropy of the train base rate
    q = m["train_base_rate"]
    assert m["demo_train_log_loss_constant"] == pytest.approx(-(q * math.log(q) + (1 - q) * math.log(1 - q)), rel=1e-9)
    assert m["demo_train_log_loss_fitted"] < m["demo_train_log_loss_constant"] < m["demo_train_log_loss_cubed"]


def test_differences_carry_bootstrap_intervals_and_verdicts(m):
    # recorded (smoke, seed 42): MLP - LR log loss +0.002 [-0.004, +0.008]; LR - constant -0.072 [-0.085, -0.057]
    diffs = m["test_log_loss_diff"]
    for r in [*diffs.values(), *m["test_auc_diff"].values(), *m["demo_train_log_loss_minus_constant"].values()]:
        assert r["low"] <= r["diff"] <= r["high"] and r["level"] == 0.95
    assert diffs["MLP - logistic regression"]["diff"] == pytest.approx(m["test_log_loss_mlp"] - m["test_log_loss_lr"])
    assert -0.02 < diffs["MLP - logistic regression"]["diff"] < 0.02
    lr_const = diffs["logistic regression - constant (train base rate)"]
    assert lr_const["diff"] == pytest.approx(-0.072, abs=0.015) and lr_const["high"] < -0.03
    assert m["verdicts"]["LR - constant, log loss"] == "a gain"  # its interval clears 0 by far
    # in-sample, deterministic: the fitted probabilities against the constant, and the two distortions
    demo = m["demo_train_log_loss_minus_constant"]
    assert demo["p (fitted)"]["diff"] == pytest.approx(-0.093, abs=2e-3) and demo["p (fitted)"]["high"] < 0
    assert demo["p / 10"]["low"] > 0.2 and demo["p ** 3"]["low"] > 0.2


def test_lesson_is_computed_from_the_run(m):
    mlp_lr = m["test_log_loss_diff"]["MLP - logistic regression"]
    assert f"{mlp_lr['diff']:+.3f} [{mlp_lr['low']:+.3f}, {mlp_lr['high']:+.3f}]" in m["lesson"]
    assert m["verdicts"]["MLP - LR, log loss"] in m["lesson"]
