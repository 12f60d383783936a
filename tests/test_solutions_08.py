"""notebooks/solutions/08_exercises.py: the worked solutions run, and their answers hold.

``main(smoke=True)`` builds chapter 03's smoke dataset with both negative samplers, trains two
DNNs and scores the whole catalogue for every evaluated user (exercise 1), then builds four HNSW
graphs on a 10,000-item synthetic catalogue (exercise 2); it is marked ``notebook`` (slow).
Recorded on its smoke run (seed 42, 93 users):

* exercise 1, Recall@10 with uniform / popularity-matched negatives: K=50 0.1495 / 0.1416,
  K=100 0.1573 / 0.1287, K=500 0.1489 / 0.0966, whole catalogue 0.0026 / 0.0038 (every top-10
  slot a dormant item under both); popularity - uniform at K=500 -0.052 [-0.075, -0.034],
  at K=50 -0.008 [-0.024, +0.009]; popularity K=500 - K=50 -0.045 [-0.071, -0.025];
  recall alone (item-CF + ALS + popular, 1:1:1) 0.0820.
* exercise 2 (10,000 items): bytes per item for M = 8, 16, 32, 48: 1616.6, 1680.0, 1807.8,
  1935.7; overlap@100 at efSearch=100: 0.782, 0.876, 0.924, 0.960.
"""

from __future__ import annotations

import pytest
from conftest import load_solution as _load


def test_08_exercises_sizes():
    ex = _load("08_exercises")
    assert set(ex.SIZES) == {"smoke", "cpu"}
    assert set(ex.SIZES["smoke"]) == set(ex.SIZES["cpu"])
    assert ex.SIZES["smoke"]["max_users"] == 250  # chapter 03's smoke users: the recorded ranges below


@pytest.fixture(scope="module")
def ex08(tmp_path_factory):
    ex = _load("08_exercises")
    return ex.main(smoke=True, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False)


@pytest.mark.notebook
def test_08_exercise_1_negatives_decide_the_whole_catalogue(ex08):
    e = ex08["exercise_1"]
    uni, pop = e["uniform"], e["popularity"]
    assert uni["n_users"] == pop["n_users"]  # the same users under both samplers
    assert uni["recall_alone@10"] == pytest.approx(pop["recall_alone@10"])  # recall does not see the ranker
    for r in (uni, pop):
        for name in ("K=50", "K=100", "K=500", "whole catalogue"):
            assert 0 <= r[name]["recall@10"] <= 1 and 0 <= r[name]["ndcg@10"] <= 1
    # neither sampler draws a dormant item as a negative: the whole catalogue is a trap for both
    for r in (uni, pop):
        assert r["whole catalogue"]["recall@10"] < 0.02  # 0.0026 and 0.0038 recorded
        assert r["dormant_share_whole"] > 0.9  # 1.0 recorded
    assert 0.13 <= uni["K=100"]["recall@10"] <= 0.18  # 0.1573
    assert 0.06 <= uni["recall_alone@10"] <= 0.10  # 0.0820
    d = e["diff"]
    # orderings whose intervals clear 0: matched negatives rank recall's (popular) candidates worse at K=500,
    # and worse at K=500 than at K=50
    assert d["popularity - uniform, K=500"]["high"] < 0  # -0.052 [-0.075, -0.034]
    assert d["popularity: K=500 - K=50"]["high"] < 0  # -0.045 [-0.071, -0.025]
    for key, v in d.items():
        assert v["low"] <= v["diff"] <= v["high"], key
        # the printed verdict follows ecrec.verdict's rule: "a loss" exactly where the interval is below 0
        expected = "a loss" if v["high"] < 0 else "a gain" if v["low"] > 0 else "within noise"
        assert e["verdict"][key] == expected, key


@pytest.mark.notebook
def test_08_exercise_2_hnsw_degree(ex08):
    e = ex08["exercise_2"]
    ms = sorted(e)
    assert ms == [8, 16, 32, 48]
    bytes_ = [e[m]["bytes_per_item"] for m in ms]
    assert bytes_ == sorted(bytes_)  # more links, more memory
    # bottom layer: up to 2M links of 4 bytes on top of the 384 float32 (1,536 bytes) vector
    for m in ms:
        assert 1536 < e[m]["bytes_per_item"] <= 1536 + 4 * 2 * m * 1.5 + 64
    overlap = [e[m]["overlap@100"] for m in ms]
    assert overlap[-1] > overlap[0]  # a denser graph finds more of the exact top 100 at the same efSearch
    assert all(0 < o <= 1 for o in overlap)
