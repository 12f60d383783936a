"""Chapter 04 (fine-tuning BERT for CTR): the smoke run's metrics.json against recorded ranges.

Recorded smoke run (seed 42, CPU, fp32, chapter 03's format-5 smoke datasets of 250 users under
two negative samplers; bi-encoder fine-tuned on 256 pairs = 16 steps of 16, warm-started from the
frozen probe; 93 test users; 300 bootstrap resamples of users). Test AUC, whole test window:

======================  =======  ==================
model                   uniform  popularity-matched
======================  =======  ==================
popularity_30d          0.791    0.515
lr_popularity_counts    0.794    0.540
item_cf                 0.640    0.575
id_dnn                  0.844    0.712
zero_shot_text          0.562    0.555
frozen_probe            0.627    0.513
bi_ft                   0.609    0.513
id_dnn_frozen_text      0.842    0.714
id_dnn_ft_text          0.841    0.714
id_dnn_transfer         0.845    0.718
======================  =======  ==================

What holds with intervals that clear 0 (asserted): the ID DNN beats the best text-only model in
both regimes (+0.235 [+0.214, +0.257] uniform, +0.199 [+0.164, +0.231] matched); popularity
alone is strong under uniform negatives and near chance under matched ones. Text added to the
DNN is within noise at this size (asserted only as a range). Fine-tuning never ends below its
starting point on validation (an invariant of early stopping from step 0). Fine-tuned rows get
ranges of +-0.03 (thread count and kernels move them a little), frozen and DNN rows +-0.015-0.02.
Throughput is recorded, never asserted (benchmarks/bench_bert.py measures it).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.notebook

RECORDED = {  # regime/slice/model: (auc, tolerance)
    "uniform/all/popularity_30d": (0.7912, 0.01),
    "uniform/all/lr_popularity_counts": (0.7937, 0.01),
    "uniform/all/item_cf": (0.6396, 0.005),
    "popularity_matched/all/item_cf": (0.5748, 0.005),
    "uniform/all/id_dnn": (0.8435, 0.015),
    "uniform/all/zero_shot_text": (0.5616, 0.005),
    "uniform/all/frozen_probe": (0.6265, 0.015),
    "uniform/all/bi_ft": (0.6088, 0.03),
    "uniform/all/id_dnn_frozen_text": (0.8417, 0.015),
    "uniform/all/id_dnn_ft_text": (0.8409, 0.015),
    "uniform/all/id_dnn_transfer": (0.8454, 0.015),
    "popularity_matched/all/popularity_30d": (0.5147, 0.01),
    "popularity_matched/all/lr_popularity_counts": (0.5401, 0.01),
    "popularity_matched/all/id_dnn": (0.7122, 0.02),
    "popularity_matched/all/zero_shot_text": (0.5548, 0.005),
    "popularity_matched/all/frozen_probe": (0.5128, 0.015),
    "popularity_matched/all/bi_ft": (0.5128, 0.03),
    "popularity_matched/all/bi_lora": (0.5129, 0.03),
    "popularity_matched/all/bi_fgm": (0.5128, 0.03),
    "popularity_matched/all/id_dnn_frozen_text": (0.7140, 0.02),
    "popularity_matched/all/id_dnn_ft_text": (0.7140, 0.02),
    "popularity_matched/all/id_dnn_transfer": (0.7184, 0.02),
    "uniform/cold_item/id_dnn": (0.8308, 0.02),
    "popularity_matched/cold_item/id_dnn": (0.5842, 0.03),
    "popularity_matched/cold_item/zero_shot_text": (0.6079, 0.01),
}


@pytest.fixture(scope="module")
def m(chapter_metrics):
    return chapter_metrics("04_bert_ctr")


def test_sizes_and_precision(m):
    assert m["n_ft_train"] == 256 and m["n_test_users"] == 93
    assert m["precision"] == "fp32"  # CPUs train in fp32: the same numbers on every CPU
    assert all(r["steps"] == 16 for r in m["finetune"].values())  # 256 pairs / 16, one epoch
    assert len(m["hybrid_seed_diffs"]) == 1


@pytest.mark.parametrize("key", sorted(RECORDED))
def test_auc_in_recorded_range(m, key):
    value, tol = RECORDED[key]
    assert m["auc"][key] == pytest.approx(value, abs=tol), key


def test_every_model_and_slice_is_scored(m):
    for regime in ("uniform", "popularity_matched"):
        for sl in ("all", "cold_item", "new_to_user"):
            for model in ("popularity_30d", "item_cf", "id_dnn", "frozen_probe", "bi_ft", "id_dnn_ft_text", "id_dnn_transfer"):
                assert f"{regime}/{sl}/{model}" in m["auc"]
    for model in ("bi_lora", "bi_fgm"):
        assert f"popularity_matched/all/{model}" in m["auc"]


def test_finetuning_never_ends_below_its_start_on_validation(m):
    for name, run in m["finetune"].items():
        assert run["best_valid_auc"] >= run["start_valid_auc"], name
        assert 0 <= run["best_step"] <= run["steps"]


def test_orderings_whose_intervals_clear_zero(m):
    for regime in ("uniform", "popularity_matched"):
        d = m["diff"][f"{regime}/all/id_dnn - bi_ft"]
        assert d["low"] > 0.1, (regime, d)  # IDs beat text alone by a wide margin
    # the sampler decides what popularity is worth
    assert m["auc"]["uniform/all/popularity_30d"] - m["auc"]["popularity_matched/all/popularity_30d"] > 0.2


def test_intervals_are_consistent(m):
    for key, d in m["diff"].items():
        assert d["low"] <= d["diff"] + 1e-9 and d["diff"] <= d["high"] + 1e-9, key
        assert d["high"] - d["low"] < 0.3, key
    for key, r in m["cross"].items():
        assert r["low"] <= r.get("auc", r.get("diff")) + 1e-9 <= r["high"] + 2e-9, key


def test_text_added_to_ids_stays_close_to_the_ids(m):
    """At 250 users the gain is within noise (recorded +0.002 matched, -0.003 uniform); it must stay small."""
    for regime in ("uniform", "popularity_matched"):
        d = m["diff"][f"{regime}/all/id_dnn_ft_text - id_dnn"]
        assert abs(d["diff"]) < 0.015, (regime, d)


def test_model_done_right_checks(m):
    assert m["pooler_bias_max_abs"] == 0.0  # MiniLM's pooler never trained
    assert m["checkpoint_max_abs_logit_diff"] < 1e-5
    assert m["lora_trainable_params"] == 74_881  # 6 layers x (query, value) x 2 x 8 x 384 + head 1,153
    assert m["lora_checkpoint_mb"] < 1.0
    assert m["naive_argmax_dim1_auc"] == 0.5  # argmax over one logit: everyone class 0
    assert m["cross"]["cross_ft"]["auc"] == pytest.approx(0.467, abs=0.04)
    assert set(m["speed_samples_per_s"]) == {"tutorial loop (pad 128, fp32)", "ecrec train_ctr_model",
                                             "Hugging Face Trainer"}
