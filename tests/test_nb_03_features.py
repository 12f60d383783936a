"""Chapter 03's smoke-run numbers stay in their recorded ranges.

Recorded smoke run (seed 42, uniform negatives, 250 users, dataset format 5): test AUC / log loss
lr_ids 0.717 / 0.472, lr_all 0.840 / 0.369, dnn_no_text 0.844 / 0.370,
dnn_all 0.844 / 0.374; cold AUC 0.620, 0.767, 0.775, 0.773.
Re-recorded after issue 10 (a user's invoices at one moment are one basket; the last few
negative draws finished exactly): the negatives changed, the logistic regressions barely
(<= 0.0013), the DNNs more (dnn_all log loss 0.357 -> 0.374, dnn_no_text 0.361 -> 0.370):
in smoke the DNNs now match the logistic regression's log loss instead of beating it.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.notebook

MODELS = ("lr_ids", "lr_all", "dnn_no_text", "dnn_all")
RECORDED = {  # name: (auc, log_loss, auc_cold)
    "lr_ids": (0.7167, 0.4720, 0.6201),
    "lr_all": (0.8395, 0.3693, 0.7673),
    "dnn_no_text": (0.8439, 0.3695, 0.7745),
    "dnn_all": (0.8440, 0.3735, 0.7728),
}


@pytest.fixture(scope="module")
def m(chapter_metrics):
    return chapter_metrics("03_features")


def test_records_the_sampling_choice(m):
    assert m["negative_sampling"] == "uniform" and m["neg_ratio"] == 4
    assert m["negative_exclusion"] == "same basket (a user's invoices at one moment)"
    assert m["negative_window_days"] == 30
    assert m["dnn_monitor"] == "log_loss"
    assert m["n_examples"] == pytest.approx({"train": 68_886, "valid": 12_229, "test": 14_712}, rel=0.02)
    assert m["test_positive_rate"] == pytest.approx(0.2056, abs=0.005)  # 1 positive per <= 4 negatives


def test_no_shortcut_and_cold_flags(m):
    # with basket-only exclusion a repeat purchase means the same in train and test
    p = m["p_pos_given_bought_before"]
    assert p["train"] < 0.9 and abs(p["train"] - p["test"]) < 0.05
    assert m["train_cold_share"] == 0.0  # cold = absent from the whole log's train window
    assert m["test_cold_item_share"] == pytest.approx(0.038, abs=0.01)
    assert m["test_cold_share"] == pytest.approx(0.329, abs=0.02)
    assert m["description_spelling_changed"] < 0.01


def test_every_model_has_overall_and_cold_numbers(m):
    assert set(m["models"]) == set(MODELS)
    for name in MODELS:
        r = m["models"][name]
        for key in ("auc", "log_loss", "gauc", "gauc_invoice", "auc_cold", "log_loss_cold", "auc_warm"):
            assert r[key] is not None, (name, key)
        assert r["gauc_skipped_users"] >= 0


def test_recorded_ranges(m):
    models = m["models"]
    for name, (auc, loss, cold) in RECORDED.items():
        r = models[name]
        assert r["auc"] == pytest.approx(auc, abs=0.015), name
        assert r["log_loss"] == pytest.approx(loss, abs=0.015), name
        assert r["auc_cold"] == pytest.approx(cold, abs=0.02), name
    for name in ("lr_all", "dnn_no_text", "dnn_all"):
        # features beat bare IDs, also on cold-start examples, and cold customers stay harder than warm ones
        assert models[name]["auc"] > models["lr_ids"]["auc"] + 0.08, name
        assert models[name]["auc_cold"] > models["lr_ids"]["auc_cold"] + 0.1, name
        assert models[name]["auc_cold_user"] < models[name]["auc_warm"], name
    for name in ("dnn_no_text", "dnn_all"):
        # was "<= lr_all"; with the format-5 negatives the smoke DNNs are level with it (0.370, 0.374 vs 0.369)
        assert models[name]["log_loss"] <= models["lr_all"]["log_loss"] + 0.01, name
    assert 1 <= min(m["dnn_best_epoch"].values()) and max(m["dnn_best_epoch"].values()) <= 4


def test_ablation_covers_every_group(m):
    ab = m["ablation_auc"]
    assert set(ab) == {"all"} | {f"without {g}" for g in ("ids", "user", "item", "user_item", "context", "sequence", "text")}
    assert ab["all"] == pytest.approx(m["models"]["lr_all"]["auc"])
    # repeat purchases and item popularity carry the most; neither is a sampler artefact any more
    assert ab["without user_item"] < ab["all"] - 0.03 and ab["without item"] < ab["all"] - 0.02
    assert min(ab, key=ab.get) == "without user_item"


def test_the_other_exclusion_policy_is_measured(m):
    # recorded (smoke, seed 42): 2.8% of train negatives (0.4% test) are the user's purchases elsewhere in the
    # split window; excluding them makes "bought before" a certain positive in train (P = 1.0 vs 0.785) and the
    # strict logistic regression's log loss on the default test split 0.463 vs 0.369
    pol = m["negative_policy"]
    assert 0.02 <= pol["bought_in_split_share"]["train"] <= 0.036
    assert pol["bought_in_split_share"]["test"] < pol["bought_in_split_share"]["train"]
    assert pol["p_pos_given_bought_before_strict"]["train"] == 1.0  # the label shortcut, measured
    assert pol["p_pos_given_bought_before_strict"]["train"] > m["p_pos_given_bought_before"]["train"] + 0.1
    strict = pol["lr_all_strict_on_default_test"]
    assert strict["log_loss"] == pytest.approx(0.463, abs=0.02)
    assert strict["log_loss"] > m["models"]["lr_all"]["log_loss"] + 0.05


def test_differences_carry_bootstrap_intervals(m):
    # recorded (smoke, seed 42): the intervals over test customers of the paired differences
    for group in ("auc_diff", "log_loss_diff", "ablation_auc_diff"):
        for name, r in m[group].items():
            assert r["low"] <= r["diff"] <= r["high"] and r["level"] == 0.95, (group, name)
    models = m["models"]
    lift = m["auc_diff"]["lr_all - lr_ids"]
    assert lift["diff"] == pytest.approx(models["lr_all"]["auc"] - models["lr_ids"]["auc"])
    assert lift["low"] > 0.08  # features beat bare IDs: the interval clears 0 by far
    assert m["ablation_verdicts"]["without user_item"] == "a loss"  # its interval clears 0 by far
    for name, r in m["ablation_auc_diff"].items():
        assert r["diff"] == pytest.approx(m["ablation_auc"][name] - m["ablation_auc"]["all"], abs=2e-6), name
    gap = m["lr_all_cold_user_minus_warm_auc"]
    assert gap["low"] <= gap["diff"] <= gap["high"]
    assert gap["diff"] == pytest.approx(models["lr_all"]["auc_cold_user"] - models["lr_all"]["auc_warm"], abs=1e-9)
    pol = m["policy_strict_minus_default_log_loss"]
    assert pol["diff"] == pytest.approx(m["negative_policy"]["lr_all_strict_on_default_test"]["log_loss"]
                                        - models["lr_all"]["log_loss"], abs=1e-6)


def test_lesson_is_computed_from_the_run(m):
    lift = m["auc_diff"]["lr_all - lr_ids"]
    assert f"{lift['diff']:+.3f} [{lift['low']:+.3f}, {lift['high']:+.3f}]" in m["lesson"]
    dnn = m["auc_diff"]["dnn_all - lr_all"]
    assert f"{dnn['diff']:+.3f}" in m["lesson"] or "identical" in m["lesson"]
