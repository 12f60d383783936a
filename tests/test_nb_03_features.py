"""Chapter 03's smoke-run numbers stay in their recorded ranges."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.notebook

MODELS = ("lr_ids", "lr_all", "dnn_no_text", "dnn_all")


@pytest.fixture(scope="module")
def m(chapter_metrics):
    return chapter_metrics("03_features")


def test_records_the_sampling_choice(m):
    assert m["negative_sampling"] == "uniform" and m["neg_ratio"] == 4
    assert set(m["n_examples"]) == {"train", "valid", "test"}
    assert 0.18 < m["test_positive_rate"] < 0.23  # 1 positive per <= 4 negatives
    assert 0.05 < m["test_cold_share"] < 0.6


def test_every_model_has_overall_and_cold_numbers(m):
    assert set(m["models"]) == set(MODELS)
    for name in MODELS:
        r = m["models"][name]
        for key in ("auc", "log_loss", "auc_cold", "log_loss_cold", "auc_warm"):
            assert r[key] is not None, (name, key)
        assert 0.5 < r["auc_cold"] < 1.0 and 0.2 < r["log_loss"] < 0.7


def test_recorded_ranges(m):
    models = m["models"]
    assert 0.60 < models["lr_ids"]["auc"] < 0.80
    for name in ("lr_all", "dnn_no_text", "dnn_all"):
        assert 0.78 < models[name]["auc"] < 0.95, name
        # features beat bare IDs, most on cold-start examples
        assert models[name]["auc"] > models["lr_ids"]["auc"] + 0.05, name
        assert models[name]["auc_cold"] > models["lr_ids"]["auc_cold"], name


def test_ablation_covers_every_group(m):
    ab = m["ablation_auc"]
    assert set(ab) == {"all"} | {f"without {g}" for g in ("ids", "user", "item", "user_item", "context", "sequence", "text")}
    assert ab["all"] == pytest.approx(m["models"]["lr_all"]["auc"])
