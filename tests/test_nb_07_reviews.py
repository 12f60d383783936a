"""Chapter 07's smoke-run numbers (language models for review text) stay in their recorded ranges.

Recorded smoke run (seed 42; learning curve at 24, 48, 96, 192 training reviews, a second seed at 24;
single-task and LoRA at 96; 128 validation / 400 test reviews; bf16 on a 2-core AVX512-BF16 EPYC; the
cells run as a script when they were chapter 06's second part): recommended AUC at 96 reviews multi-task
0.877, frozen MiniLM + LR 0.853, TF-IDF + LR 0.842, item prior 0.522; at 192 multi-task 0.901, TF-IDF + LR
0.865; reference (TF-IDF on 2,000) 0.944. Verdicts: multi-task vs TF-IDF at equal data within noise at
48-192 (= its probe at 24, seed 42), rating macro-F1 within noise at 96 and 192. Ranges are wide: fp32 on
another CPU moves every MiniLM number.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def b(chapter_metrics):
    return chapter_metrics("07_reviews")


@pytest.fixture(scope="module")
def thesis(chapter_metrics):
    return chapter_metrics("07_reviews")["thesis"]


def _curve(b, model, metric, n, seed=42):
    rows = [r for r in b["curve"] if (r["model"], r["metric"], r["n"], r["seed"]) == (model, metric, n, seed)]
    assert len(rows) == 1, (model, metric, n, seed)
    return rows[0]


def test_reviews_prepared_and_split(b):
    assert b["prep"] == {"rows": 23486, "no_text": 844, "no_label": 13, "kept": 22629}
    assert b["split"] == {"train": 15840, "valid": 2263, "test": 4526}
    assert (b["n_train"], b["n_valid"], b["n_test"]) == (192, 128, 400)
    assert b["curve_sizes"] == [24, 48, 96, 192] and b["compare_n"] == 96 and b["reference_n"] == 2000
    # the truncation length comes from the training reviews' token lengths (data facts, any CPU)
    assert b["max_length"] == 80 and b["cut_share"]["64"] == pytest.approx(0.6263, abs=1e-4)
    assert b["precision"] in ("bf16", "fp32") and b["torch_threads"] >= 1


def test_review_runs_start_from_the_probe_and_never_end_below_it(b):
    for name, run in {**b["runs"], **b["curve_runs"]}.items():
        assert run["best_valid_loss"] <= run["start_valid_loss"] + 1e-9, name
    for name in ("multi-task", "LoRA multi-task"):
        assert b["runs"][name]["start_valid_loss"] == pytest.approx(b["probe_valid_loss"], abs=1e-3), name
    assert b["runs"]["multi-task"] == {k: v for k, v in b["curve_runs"]["96/42"].items() if k != "train_seconds"}
    assert set(b["curve_runs"]) == {"24/42", "24/43", "48/42", "96/42", "192/42"}  # no model trained twice
    assert b["overfit_loss_end"] < 0.5 * b["overfit_loss_start"]
    assert b["lora_trainable_params"] == 78_348 and b["lora_saved_tensors"] == 30


def test_learning_curve_every_point_with_intervals(b):
    models = ("multi-task", "TF-IDF + LR", "frozen MiniLM + LR", "TF-IDF + LR (reference)")
    for n, seed in ((24, 42), (24, 43), (48, 42), (96, 42), (192, 42)):
        for model in models:
            for metric in ("recommended/auc", "rating/macro_f1", "department/macro_f1"):
                r = _curve(b, model, metric, n, seed)
                assert r["low"] <= r["value"] <= r["high"] and r["level"] == 0.95
    # the reference line is one model: the same numbers at every point
    ref = {_curve(b, "TF-IDF + LR (reference)", "recommended/auc", n)["value"] for n in (24, 48, 96, 192)}
    assert len(ref) == 1
    # a paired difference is the difference of the two models' values
    d = _curve(b, "multi-task - TF-IDF + LR", "recommended/auc", 192)
    assert d["value"] == pytest.approx(_curve(b, "multi-task", "recommended/auc", 192)["value"]
                                       - _curve(b, "TF-IDF + LR", "recommended/auc", 192)["value"], abs=2e-4)


def test_learning_curve_recorded_ranges(b):
    assert 0.83 <= _curve(b, "multi-task", "recommended/auc", 96)["value"] <= 0.92  # 0.877
    assert 0.81 <= _curve(b, "frozen MiniLM + LR", "recommended/auc", 96)["value"] <= 0.89  # 0.853
    assert 0.80 <= _curve(b, "TF-IDF + LR", "recommended/auc", 96)["value"] <= 0.88  # 0.842
    assert 0.86 <= _curve(b, "multi-task", "recommended/auc", 192)["value"] <= 0.94  # 0.901
    assert 0.82 <= _curve(b, "TF-IDF + LR", "recommended/auc", 192)["value"] <= 0.90  # 0.865
    assert 0.92 <= _curve(b, "TF-IDF + LR (reference)", "recommended/auc", 192)["value"] <= 0.97  # 0.944
    assert 0.15 <= _curve(b, "multi-task", "rating/macro_f1", 192)["value"] <= 0.25  # 0.195
    assert 0.19 <= _curve(b, "TF-IDF + LR", "rating/macro_f1", 192)["value"] <= 0.29  # 0.240


def test_review_recorded_ranges(b):
    models = b["models"]
    assert models["multi-task/recommended/auc"] == {k: _curve(b, "multi-task", "recommended/auc", 96)[k]
                                                   for k in ("value", "low", "high")}  # the curve's point
    assert 0.45 <= models["item prior (no text)/recommended/auc"]["value"] <= 0.60  # 0.522
    assert 0.80 <= models["LoRA multi-task/recommended/auc"]["value"] <= 0.90  # 0.856


def test_thesis_rows_follow_the_verdict_rule(thesis):
    from ecrec.verdict import WORDS, decide

    assert len(thesis) == 10  # 2 metrics x (4 sizes + the all-data reference)
    for row in thesis:
        assert row["chapter"] == "07" and row["verdict"] in WORDS and row["level"] == 0.95
        seeds = row["seed_range"]
        again = decide({"diff": row["diff"], "low": row["low"], "high": row["high"]},
                       seed_diffs=seeds, better=row["better"])
        if row["verdict"] != WORDS[1]:  # "= its probe" comes from the run, not from the numbers
            assert again.word == row["verdict"], row
    sizes = [r["train_size"] for r in thesis if r["metric"] == "recommended AUC"]
    assert sizes == [24, 48, 96, 192, "192 vs 2000"]


def test_review_orderings_whose_interval_clears_0(b):
    d = b["diffs"]
    # the words carry the label: a frozen encoder's vectors beat the item's prior (+0.341 [0.256, 0.435] before)
    assert d["frozen MiniLM + LR - item prior (no text)/recommended/auc"]["low"] > 0
