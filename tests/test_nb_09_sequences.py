"""Chapter 09 (transformers over behaviour) in the smoke profile: invariants and recorded ranges.

Recorded on an idle 2-core smoke run (seed 42; 300 evaluated users of 4,082 sequences, 3,659 items;
68% of sequences longer than max_len = 20; 6 SASRec epochs, 10 BERT4Rec epochs, undertrained at
these sizes: cross-entropy 8.55 -> 7.44 against ln 3659 = 8.20). Recall@50 on all test purchases:
EASE^R 0.294, ALS 0.264, item-CF 0.216, popularity 0.157, BERT4Rec 0.149, SASRec ID + text 0.148,
SASRec (CE) 0.145, SASRec (BCE) 0.142, SASRec text only 0.114. On cold items only the text-only
item table retrieves anything: 0.101, +0.101 [+0.020, +0.205] over SASRec (CE) (every ID model 0);
on rare items +0.027 [+0.014, +0.041]. Sampled protocol: Kendall tau 0.94 with the full order,
1 of 36 pairs swapped; sampled AUC 0.75-0.84 while full NDCG@10 is 0.076-0.247.
"""

from __future__ import annotations

import math

import pytest

from ecrec.verdict import decide

pytestmark = pytest.mark.notebook

STEM = "09_sequences"
MODELS = {"popularity", "item-CF", "ALS", "EASE^R", "SASRec (CE)", "SASRec (BCE, 1 negative)", "BERT4Rec",
          "SASRec text only", "SASRec ID + text"}
RECORDED_R50_ALL = {"EASE^R": 0.294, "ALS": 0.264, "item-CF": 0.216, "popularity": 0.157, "BERT4Rec": 0.149,
                    "SASRec ID + text": 0.148, "SASRec (CE)": 0.145, "SASRec (BCE, 1 negative)": 0.142,
                    "SASRec text only": 0.114}
ID_MODELS = ["popularity", "item-CF", "ALS", "EASE^R", "SASRec (CE)", "SASRec (BCE, 1 negative)", "BERT4Rec",
             "SASRec ID + text"]


@pytest.fixture(scope="module")
def m(chapter_metrics):
    return chapter_metrics(STEM)


def test_sizes(m):
    assert m["n_users"] == 300 and m["n_items"] == 3659
    assert 4000 <= m["n_sequences"] <= 4200  # customers with a purchase before the test window
    assert 0.6 < m["truncated_share"] < 0.75
    assert m["n_eval"]["all"] == 300 and 20 <= m["n_eval"]["cold items"] <= 50


def test_training_lowered_every_loss(m):
    for name, losses in m["losses"].items():
        assert losses[-1] < losses[0], name
        assert all(math.isfinite(x) for x in losses), name


def test_baselines_in_recorded_range(m):
    for name in ("EASE^R", "ALS", "item-CF", "popularity"):  # deterministic up to BLAS: tight
        assert m["full"][f"all/{name}/Recall@50"] == pytest.approx(RECORDED_R50_ALL[name], abs=0.015), name


def test_sequence_models_in_recorded_range(m):
    for name in ("BERT4Rec", "SASRec ID + text", "SASRec (CE)", "SASRec (BCE, 1 negative)", "SASRec text only"):
        assert m["full"][f"all/{name}/Recall@50"] == pytest.approx(RECORDED_R50_ALL[name], abs=0.04), name


def test_only_a_text_table_reaches_items_nobody_bought(m):
    for name in ID_MODELS:  # an ID embedding of an unseen item is its random initialisation; IDs score 0
        assert m["full"][f"cold items/{name}/Recall@50"] == 0.0, name
    d = m["diffs"]["cold items/SASRec text only - SASRec (CE)"]
    assert d["diff"] == pytest.approx(0.101, abs=0.06)
    assert d["low"] > 0  # recorded: the interval clears 0 (+0.020 .. +0.205)


def test_metric_invariants(m):
    for key, v in m["full"].items():
        assert 0 <= v <= 1, key
        sl, name, metric = key.split("/")
        if metric == "Recall@10":
            assert v <= m["full"][f"{sl}/{name}/Recall@50"] + 1e-12, key  # a longer list never recalls less
    for name, row in m["sampled"].items():
        assert row["sampled HR@10"] >= row["full Recall@10"], name  # 100 negatives are easier than 3,658 items
        assert 0.5 < row["sampled AUC"] < 1.0, name
    assert set(m["sampled"]) == MODELS


def test_sampled_protocol_reorders_little_here_but_flatters_all(m):
    assert 0.8 <= m["kendall_tau"] <= 1.0 and 0 <= m["swapped_pairs"] <= 4
    for name, r in m["sampled"].items():
        assert r["sampled NDCG@10"] > r["full NDCG@10"], name  # every model looks better sampled


def test_diffs_are_consistent_and_thesis_rows_follow_the_rule(m):
    for key, d in m["diffs"].items():
        assert d["low"] <= d["diff"] + 1e-9 <= d["high"] + 2e-9, key
        assert d["level"] == 0.95
    assert len(m["thesis"]) == 6
    for row in m["thesis"]:
        assert row["chapter"] == "08" and row["metric"] == "Recall@50"
        r = {"diff": row["diff"], "low": row["low"], "high": row["high"]}
        assert row["verdict"] == decide(r).word, row
