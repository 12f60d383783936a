"""ecrec.system and ecrec.ann: the pipeline's invariants, the feature snapshot against the offline
features, awkward requests, quantised vs fp32 text ranker, and the index comparison (no timings)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from ecrec import ann, ctr
from ecrec import features as F
from ecrec import recall as R
from ecrec import system as S

# --- ann ---------------------------------------------------------------------


def _exact_top(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    x = items / np.linalg.norm(items, axis=1, keepdims=True)
    return np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :k]


def test_synthetic_catalogue_is_unit_norm_seeded_and_near_its_base():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 16)).astype(np.float32)
    a = ann.synthetic_catalogue(base, 300, noise=0.1, seed=3)
    assert a.shape == (300, 16) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, ann.synthetic_catalogue(base, 300, noise=0.1, seed=3))
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    # small noise: each synthetic item is closest to some base item with cosine > 0.9
    assert (a @ unit.T).max(1).min() > 0.9
    with pytest.raises(ValueError, match="all-zero row"):
        ann.synthetic_catalogue(np.zeros((2, 4)), 5)
    with pytest.raises(ValueError, match="n >= 1"):
        ann.synthetic_catalogue(base, 0)


def test_overlap_and_index_bytes_by_hand():
    exact = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    approx = np.array([[3, 2, 9, -1], [4, 5, 6, 7]])
    assert ann.overlap_at_k(approx, exact, 4) == pytest.approx((2 / 4 + 1) / 2)
    assert ann.overlap_at_k(approx, exact, 2) == pytest.approx((0 + 1) / 2)
    items = np.random.default_rng(1).normal(size=(500, 8)).astype(np.float32)
    flat = R.build_index(items)
    assert 500 * 8 * 4 <= ann.index_bytes(flat) <= 500 * 8 * 4 + 1024


def test_indexes_against_numpy_exact_search_and_breadth_rules():
    rng = np.random.default_rng(2)
    items = ann.synthetic_catalogue(rng.normal(size=(40, 16)), 2000, noise=0.5, seed=2)
    queries = ann.synthetic_catalogue(rng.normal(size=(40, 16)), 50, noise=0.5, seed=4)
    truth = _exact_top(items, queries, 20)
    flat = ann.build_ann_index(items, "flat")
    assert ann.overlap_at_k(R.faiss_search(flat, queries, 20), truth, 20) == 1.0
    hnsw = ann.build_ann_index(items, "hnsw")
    assert ann.set_breadth(hnsw, 400) == "efSearch=400"
    assert ann.overlap_at_k(R.faiss_search(hnsw, queries, 20), truth, 20) >= 0.99
    ivf = ann.build_ann_index(items, "ivfpq", m=8, nbits=6)
    assert ann.set_breadth(ivf, 10_000) == f"nprobe={ivf.nlist}"  # capped at nlist
    found = R.faiss_search(ivf, queries, 20)
    assert (found >= 0).all()  # every cell visited: 20 results each, no -1 used as an item
    assert ann.overlap_at_k(found, truth, 20) >= 0.5  # lossy codes, but far above chance (20/2000)
    # the breadth searched, not the one asked for: faiss_search never searches narrower than k results
    assert ann.set_breadth(hnsw, 5) == "efSearch=5" and ann.searched_breadth(hnsw, 20) == "efSearch=20"
    assert ann.searched_breadth(hnsw, 3) == "efSearch=5" and ann.searched_breadth(flat, 20) == "exact"
    assert ann.set_breadth(ivf, 1) == "nprobe=1"
    sizes = np.sort([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
    need = int(np.searchsorted(np.cumsum(sizes), 20)) + 1  # smallest lists first: enough cells for 20 results
    assert ann.searched_breadth(ivf, 20) == f"nprobe={max(1, need)}"
    big = int(sizes[-3:].sum()) + 1  # more than the three largest lists hold: at least 4 cells
    assert int(ann.searched_breadth(ivf, big).split("=")[1]) >= 4
    with pytest.raises(ValueError, match="exact"):
        ann.set_breadth(flat, 10)
    with pytest.raises(ValueError, match="efSearch"):
        ann.set_breadth(hnsw, None)
    with pytest.raises(ValueError, match="kind"):
        ann.build_ann_index(items, "lsh")


def test_compare_indexes_and_right_choice():
    rng = np.random.default_rng(3)
    items = ann.synthetic_catalogue(rng.normal(size=(30, 8)), 800, seed=1)
    queries = ann.synthetic_catalogue(rng.normal(size=(30, 8)), 40, seed=2)
    table = ann.compare_indexes(items, queries, 10, {"flat": [None], "hnsw": [10, 200]}, n_latency=10, warmup=2,
                                label="toy")
    assert list(table["breadth"]) == ["exact", "efSearch=10", "efSearch=200"]
    assert list(table["breadth asked"]) == ["exact", "efSearch=10", "efSearch=200"]
    # 10 timed queries: a p50 needs 20, so every percentile is NaN with the reason; n beside them
    assert table["n_timed"].eq(10).all() and table["p50_ms"].isna().all()
    assert table["latency note"].str.contains("p50 needs >= 20").all()
    low = ann.compare_indexes(items, queries, 10, {"hnsw": [4]}, n_latency=20, warmup=2)
    assert low.loc[0, "breadth asked"] == "efSearch=4" and low.loc[0, "breadth"] == "efSearch=10"  # searched
    assert low.loc[0, "p50_ms"] > 0 and np.isnan(low.loc[0, "p95_ms"])
    assert table.loc[0, "overlap@10"] == 1.0 and table["n_items"].eq(800).all()
    assert table["bytes_per_item"].iloc[1] > table["bytes_per_item"].iloc[0]  # a graph on top of the vectors
    hand = pd.DataFrame({
        "n_items": [10, 10, 10, 99, 99],
        "index": ["flat", "hnsw", "ivfpq", "flat", "hnsw"],
        "breadth": ["exact", "efSearch=10", "nprobe=4", "exact", "efSearch=10"],
        "overlap@10": [1.0, 0.99, 0.5, 1.0, 0.96],
        "p50_ms": [1.0, 2.0, 0.1, 9.0, 3.0],
        "bytes_per_item": [32, 60, 4, 32, 60],
    })
    choice = ann.right_choice(hand, 10, 0.95)
    assert choice["index"].tolist() == ["flat", "hnsw"]  # ivfpq is fastest at 10 items but misses the target
    assert choice["speed-up vs flat"].tolist() == pytest.approx([1.0, 3.0])
    with pytest.raises(ValueError, match="min_overlap"):
        ann.right_choice(hand, 10, 1.5)


# --- measuring -----------------------------------------------------------------


def test_latency_counts_requests_and_excludes_warmup():
    calls = []
    out = S.latency_ms(calls.append, list(range(30)), warmup=5)
    assert calls == list(range(30)) and out["n"] == 25
    # 25 timed requests support a p50 (needs 20) but not a p95 (200) or a p99 (1,000)
    assert np.isfinite(out["p50_ms"]) and np.isnan(out["p95_ms"]) and np.isnan(out["p99_ms"])
    assert "p95 needs >= 200" in out["note"] and "p99 needs >= 1,000" in out["note"] and "25 samples" in out["note"]
    with pytest.raises(ValueError, match="warmup"):
        S.latency_ms(calls.append, [1, 2], warmup=2)
    with pytest.raises(ValueError, match="n_items"):
        S.throughput(lambda: None, 0)


def test_percentiles_only_where_ten_samples_lie_beyond_them():
    from ecrec.timing import min_samples, percentiles_ms

    assert [min_samples(q) for q in (0, 50, 90, 95, 99, 99.9)] == [10, 20, 100, 200, 1000, 10_000]
    # 200 hand-made samples 1..200 ms: p50 = 100.5 and p95 = 190.05 (numpy's linear interpolation
    # between the 190th and 191st smallest: 190 + 0.05), p99 needs 1,000 samples -> NaN with the reason
    out = percentiles_ms(np.arange(1, 201) / 1000)
    assert out["p50_ms"] == pytest.approx(100.5) and out["p95_ms"] == pytest.approx(190.05)
    assert np.isnan(out["p99_ms"]) and out["n"] == 200 and out["mean_ms"] == pytest.approx(100.5)
    assert out["note"] == "not reported from 200 samples: p99 needs >= 1,000 (10 samples beyond the percentile)"
    # 199 samples: p95 is one short
    assert np.isnan(percentiles_ms(np.ones(199))["p95_ms"])
    full = percentiles_ms(np.arange(1000) / 1000)  # 0..999 ms: p99 = 989.01
    assert full["p99_ms"] == pytest.approx(989.01) and full["note"] == ""
    assert percentiles_ms([0.002] * 19)["note"].startswith("not reported from 19 samples: p50 needs >= 20")
    with pytest.raises(ValueError, match="no timed sample"):
        percentiles_ms([])
    with pytest.raises(ValueError, match="percentile in percent"):
        min_samples(100)


def test_serving_threads_restores_the_thread_counts():
    import faiss

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    with S.serving_threads(1):
        assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == before
    with pytest.raises(ValueError):
        with S.serving_threads(0):
            pass


# --- pipeline pieces -------------------------------------------------------------


def test_recall_ceiling_by_hand():
    relevant = sp.csr_array(np.array([[1, 0, 2, 0], [0, 1, 0, 0], [0, 0, 0, 0]]))
    lists = np.array([[2, 2, 3], [0, -1, 3], [1, 2, 3]])
    # relevant pairs: (0,0), (0,2), (1,1); found in the first 3: (0,2) only (duplicates count once)
    assert S.recall_ceiling(lists, relevant, 3) == pytest.approx(1 / 3)
    assert S.recall_ceiling(lists, relevant, 1) == pytest.approx(1 / 3)
    assert np.isnan(S.recall_ceiling(lists, sp.csr_array((3, 4)), 2))
    with pytest.raises(ValueError, match="one row per user"):
        S.recall_ceiling(lists[:2], relevant, 2)


def test_top_n_keeps_recall_order_on_ties_and_never_returns_padding():
    cand = np.array([[5, 3, -1, 7], [-1, -1, -1, -1]])
    scores = np.array([[1.0, 2.0, 99.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    items, best = S.top_n(scores, cand, 3)
    np.testing.assert_array_equal(items, [[3, 7, 5], [-1, -1, -1]])  # 3 before 7: recall order on the tie
    np.testing.assert_array_equal(best[1], [-np.inf] * 3)
    items, _ = S.top_n(scores[:1], cand[:1], 6)  # more slots than candidates: -1 padded
    np.testing.assert_array_equal(items, [[3, 7, 5, -1, -1, -1]])


def test_top_n_keeps_the_tie_group_at_the_cut_for_evaluation():
    cand = np.array([[5, 3, 8, 7, 2], [4, 1, -1, 0, 6]])
    scores = np.array([[3.0, 2.0, 2.0, 2.0, 1.0], [5.0, 4.0, 9.0, 3.0, 2.0]])
    items, best = S.top_n(scores, cand, 2, keep_ties=True)
    # row 0: 3, 8 and 7 tie for the 2nd place, all kept; row 1 has no tie: padded after its top 2
    np.testing.assert_array_equal(items, [[5, 3, 8, 7], [4, 1, -1, -1]])
    np.testing.assert_array_equal(best, [[3.0, 2.0, 2.0, 2.0], [5.0, 4.0, -np.inf, -np.inf]])
    served, _ = S.top_n(scores, cand, 2)  # the served list: one order, recall's
    np.testing.assert_array_equal(served, items[:, :2])


def test_a_constant_score_ranker_scores_what_a_random_order_scores():
    # one user, five candidates in recall order, the relevant item (0) listed FIRST, a ranker scoring
    # every candidate 0.5: before the tie rule its top 2 kept recall's order and looked perfect (recall 1)
    cand = np.array([[0, 1, 2, 3, 4]])
    items, best = S.top_n(np.full((1, 5), 0.5), cand, 2, keep_ties=True)
    q = S.list_quality(items, [{0}], 2, scores=best)
    # by hand: the relevant item lands in each of the 5 places with probability 1/5
    assert q["recall@2"] == pytest.approx(2 / 5) and q["hit_rate@2"] == pytest.approx(2 / 5)
    assert q["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3)) / 5)  # = 0.326186
    # the oracle: the mean over all 120 orders of the five candidates, scored as strict lists
    perms = np.array(list(itertools.permutations(range(5))))
    random_order = S.list_quality(perms, [[0]] * len(perms), 2)
    assert q == pytest.approx(random_order)
    # a ranker that does separate the items is scored as it ranks
    items, best = S.top_n(np.array([[0.1, 0.9, 0.3, 0.2, 0.0]]), cand, 2, keep_ties=True)
    assert S.list_quality(items, [[0]], 2, scores=best)["recall@2"] == 0.0


def test_recall_stage_merges_an_extra_generator_and_falls_back_like_the_others():
    m = sp.csr_array(np.array([[0.0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]]))
    data = R.RecallData(
        test_start=pd.Timestamp("2011-02-01"), end=pd.Timestamp("2011-03-01"), items=pd.DataFrame({"x": range(4)}),
        events=pd.DataFrame(), users=np.array([10, 20, 30]), user_group=np.array(["cold", "warm", "warm"]),
        history=m, history_count=m, relevant_all=m, relevant_new=m, train_users=np.array([20, 30]),
        train_matrix=m[1:], train_row_of_user=np.array([-1, 0, 1]),
    )
    stage = S.RecallStage(pop=np.array([0.0, 3, 2, 1]), sim=sp.csr_array(np.eye(4)), user_f=np.eye(2),
                          item_f=np.array([[0.0, 1], [1, 0], [0, 2], [2, 0]]), text_emb=None, text_index=None)
    calls = []

    def seq(d, k):  # user 10 is cold, user 20 gets no answer (-1 row), user 30 gets [3, 0]
        calls.append(k)
        return np.array([[3, 2], [-1, -1], [3, 0]])[:, :k]

    plus = stage.with_generator("seq", seq)
    assert stage.extra == {} and list(plus.extra) == ["seq"]  # a copy: the fitted stage is unchanged
    base, lists = stage.lists(data, 2), plus.lists(data, 2)
    assert list(lists) == ["item_cf", "als", "popular", "seq"] and calls == [2]
    for g in base:  # adding a generator changes no other generator's lists
        np.testing.assert_array_equal(lists[g], base[g])
    np.testing.assert_array_equal(lists["popular"], [[1, 2]] * 3)
    np.testing.assert_array_equal(lists["seq"], [[1, 2], [1, 2], [3, 0]])  # cold and no answer: popularity
    # by hand, weights als 1, seq 1: user 30's ALS factors (0, 1) score the items 1, 0, 2, 0 -> als [2, 0]
    np.testing.assert_array_equal(lists["als"][2], [2, 0])
    hybrid = S.RecallStage.hybrid(lists, {"als": 1, "seq": 1}, 3)
    np.testing.assert_array_equal(hybrid[2], [2, 3, 0])  # a1 s1 a2 (s2 = 0 is a duplicate)
    np.testing.assert_array_equal(hybrid, R.interleave([lists["als"], lists["seq"]], 3))
    with pytest.raises(ValueError, match="already has a generator named 'als'"):
        stage.with_generator("als", seq)
    with pytest.raises(ValueError, match="already has a generator named 'seq'"):
        plus.with_generator("seq", seq)
    with pytest.raises(TypeError, match="callable"):
        stage.with_generator("seq", [1, 2])
    with pytest.raises(ValueError, match=r"shape \(3, 1\), expected \(3, 2\)"):
        stage.with_generator("short", lambda d, k: np.zeros((3, 1))).lists(data, 2)


def test_first_visits_and_subset_users():
    ev = pd.DataFrame({
        "user_id": [1, 1, 2, 2, 3],
        "ts": pd.to_datetime(["2011-01-01 00:00", "2011-02-03 10:00", "2011-02-05 00:00", "2011-02-02 09:00",
                             "2011-01-09 00:00"]),
        "invoice_no": ["a", "b", "c", "d", "e"],
        "country": ["UK", "France", "UK", "Spain", "UK"],
    })
    out = S.first_visits(ev, np.array([2, 1]), "2011-02-01")
    assert out["user_id"].tolist() == [2, 1] and out["country"].tolist() == ["Spain", "France"]
    assert out["ts"].tolist() == list(pd.to_datetime(["2011-02-02 09:00", "2011-02-03 10:00"]))
    with pytest.raises(ValueError, match="no event"):
        S.first_visits(ev, np.array([3]), "2011-02-01")

    m = sp.csr_array(np.arange(12.0).reshape(3, 4))
    data = R.RecallData(
        test_start=pd.Timestamp("2011-02-01"), end=pd.Timestamp("2011-03-01"), items=pd.DataFrame({"x": range(4)}),
        events=ev, users=np.array([10, 20, 30]), user_group=np.array(["cold", "warm", "short"]), history=m,
        history_count=m, relevant_all=m, relevant_new=m, train_users=np.array([20, 30]), train_matrix=m[1:],
        train_row_of_user=np.array([-1, 0, 1]),
    )
    sub = S.subset_users(data, np.array([30, 10]))
    assert sub.users.tolist() == [10, 30] and sub.user_group.tolist() == ["cold", "short"]
    np.testing.assert_array_equal(sub.history.toarray(), m.toarray()[[0, 2]])
    assert sub.train_row_of_user.tolist() == [-1, 1] and sub.train_matrix is data.train_matrix
    assert S.subset_users(data, np.array([False, True, False])).users.tolist() == [20]
    with pytest.raises(ValueError, match="not evaluated test users"):
        S.subset_users(data, np.array([99]))


def _toy_events() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 400
    ts = pd.Timestamp("2011-01-01") + pd.to_timedelta(np.sort(rng.integers(0, 90 * 24 * 60, n)), unit="min")
    ev = pd.DataFrame({
        "invoice_no": [f"i{j // 3}" for j in range(n)],
        "user_id": rng.integers(1, 20, n).astype(np.int64),
        "item_id": [f"s{k}" for k in rng.integers(0, 30, n)],
        "ts": ts,
        "price": rng.uniform(0.5, 5, n),
        "country": "UK",
    })
    ev["user_id"] = ev.groupby("invoice_no")["user_id"].transform("first")  # one user per invoice
    ev["ts"] = ev.groupby("invoice_no")["ts"].transform("min")
    ev = ev.drop_duplicates(["invoice_no", "item_id"]).reset_index(drop=True)
    ev["quantity"] = 1
    ev["spend"] = ev["price"]
    return ev


def test_feature_store_equals_offline_point_in_time_features():
    ev = _toy_events()
    at = pd.Timestamp("2011-03-01")
    store = S.FeatureStore(ev, at, history_len=5, pop_windows=(7, 30))
    users = np.r_[np.arange(1, 20), 999]  # 999: never seen
    items = [f"s{k}" for k in range(30)] + ["new-item"]
    grid = pd.DataFrame([(u, i) for u in users for i in items], columns=["user_id", "item_id"])
    served = store.frame(grid["user_id"], grid["item_id"], at, "UK")
    offline = F.point_in_time_features(grid.assign(ts=at), ev, history_len=5, pop_windows=(7, 30))
    cols = [c for c in offline.columns if c.startswith(("u_", "i_", "ui_", "hist"))]
    assert {"ui_n_before", "hist_items", "i_share_7d"} <= set(cols)
    pd.testing.assert_frame_equal(served[cols], offline[cols], check_dtype=False)
    assert (served["ui_n_before"] > 0).any()  # the pair table is exercised
    # the request's own context: hour/weekday/month of `when`, not of the snapshot
    later = store.frame([1], ["s1"], pd.Timestamp("2011-03-05 14:30"), "France")
    assert later[["hour", "weekday", "month"]].iloc[0].tolist() == [14, 5, 3]
    assert later["country"].iloc[0] == "France"
    with pytest.raises(ValueError, match="no purchase event before"):
        S.FeatureStore(ev, "2000-01-01")


# --- the DNN ranker on real data ---------------------------------------------------


@pytest.fixture(scope="module")
def ranker_setup():
    from ecrec.data import load_clean_online_retail

    clean, _ = load_clean_online_retail()
    _, test_start = F.split_dates(clean["InvoiceDate"])
    dataset = F.build_ctr_dataset(clean, F.CtrDatasetConfig(max_users=60, seed=5))
    catalog = F.item_catalog(clean)
    vectors = np.random.default_rng(0).normal(size=(len(catalog), 8)).astype(np.float32)
    text = (pd.Index(catalog["item_id"]), vectors)
    frame = F.add_item_attributes(dataset, catalog, text)
    train, valid, _ = (frame[frame["split"] == s].reset_index(drop=True) for s in F.SPLITS)
    cats, nums = ctr.group_columns(list(ctr.GROUPS), frame.columns)
    model = ctr.train_dnn(train, valid, categorical=cats, numeric=nums, text=text,
                          config=ctr.DnnConfig(max_epochs=1, seed=0))
    events = F.purchase_events(clean)
    store = S.FeatureStore(events, test_start)
    ranker = S.DnnRanker(model, store, catalog, catalog["item_id"].to_numpy(), text)
    user = int(train["user_id"].iloc[0])
    return ranker, frame, user, test_start


def test_ranker_scores_match_the_dnn_on_the_same_rows(ranker_setup):
    ranker, _, user, at = ranker_setup
    cand = np.array([[0, 5, -1, 17, 42]])
    scores = ranker.score([user], cand, [np.datetime64(at)], ["United Kingdom"])
    assert scores[0, 2] == -np.inf and np.isfinite(scores[0, [0, 1, 3, 4]]).all()
    rows = ranker.store.frame([user] * 4, ranker.item_ids[[0, 5, 17, 42]], at, "United Kingdom")
    rows = F.add_item_attributes(rows, ranker.catalog, ranker.text)
    expected = ranker.model.predict_logits_arrays(ranker.model.preprocessor.transform(rows))
    np.testing.assert_allclose(scores[0, [0, 1, 3, 4]], expected, rtol=1e-6)
    # the score of a pair does not depend on the other candidates of the list
    alone = ranker.score([user], np.array([[17]]), [np.datetime64(at)], ["United Kingdom"])
    assert alone[0, 0] == pytest.approx(scores[0, 3], rel=1e-6)


def test_ranker_answers_awkward_requests_without_crashing(ranker_setup):
    ranker, _, user, at = ranker_setup
    empty = ranker.rank(user, [], at, "United Kingdom", k=10)
    assert (empty.items == -1).all() and len(empty.items) == 10 and "empty recall list" in empty.notes[0]
    padded = ranker.rank(user, [-1, -1], at, "United Kingdom", k=3)
    assert (padded.items == -1).all() and "empty recall list" in padded.notes[0]
    few = ranker.rank(user, [3, -1, 8, 3], at, "United Kingdom", k=5)
    assert sorted(few.items[:2].tolist()) == [3, 8] and (few.items[2:] == -1).all()
    assert any("only 2 candidates" in n for n in few.notes) and any("duplicate" in n for n in few.notes)
    oov = np.flatnonzero(~ranker.in_vocabulary)[:2]
    known = np.flatnonzero(ranker.in_vocabulary)[:2]
    out = ranker.rank(user, [*oov, *known], at, "United Kingdom", k=4)
    assert sorted(out.items.tolist()) == sorted([*oov, *known]) and np.isfinite(out.scores).all()
    assert any("outside the ranker's item vocabulary" in n for n in out.notes)
    with pytest.raises(ValueError, match="item indexes"):
        ranker.rank(user, [len(ranker.item_ids)], at, "United Kingdom")
    unknown_user = ranker.rank(-5, known.tolist(), at, "Atlantis", k=2)  # never seen: defaults, still a list
    assert np.isfinite(unknown_user.scores).all()


# --- the text ranker: fp32, int8, ONNX ---------------------------------------------


@pytest.fixture(scope="module")
def text_setup(tiny_st):
    from ecrec import bert
    from ecrec.text import load_tokenizer

    tok = load_tokenizer()
    rng = np.random.default_rng(0)
    words = ["red", "blue", "bag", "mug", "heart", "light", "candle", "box", "paper", "garden"]
    texts = [" ".join(rng.choice(words, 3)) for _ in range(60)]
    tokens = tok(texts, truncation=True, max_length=16)["input_ids"]
    n = 300
    cand = rng.integers(0, 60, n)
    hist = rng.integers(-1, 60, (n, 3))
    labels = np.array([float("red" in texts[c]) for c in cand])  # learnable from the candidate's text
    torch.manual_seed(0)
    model = bert.load_ctr_model(tiny_st, architecture="bi", seed=0).eval()
    vectors = S.item_tower_vectors(model, tokens, pad_id=tok.pad_token_id)
    S.fit_probe_head(model, vectors, hist[:150], cand[:150], labels[:150], seed=0)
    return model, tokens, vectors, (hist[150:], cand[150:], labels[150:]), tok.pad_token_id


def test_item_tower_vectors_equal_the_models_own_features(text_setup):
    from ecrec import bert
    from ecrec.pairs import EncodedHistories

    model, tokens, vectors, (hist, cand, labels), pad = text_setup
    # batched, length-sorted tower vectors = what the model computes inside forward()
    data = EncodedHistories(tokens, cand, hist, labels.astype(np.float32))
    with torch.inference_mode():
        direct = model(**data.batch(np.arange(20), pad)).numpy()
    np.testing.assert_allclose(bert.bi_logits(model, vectors, hist[:20], cand[:20]), direct, atol=1e-5)


def test_item_tower_vectors_hand_back_the_mode_they_received(text_setup):
    model, tokens, vectors, _, pad = text_setup
    model.train()
    model.encoder.eval()  # a mixed state (e.g. a frozen encoder under a training head) comes back as it was
    before = [m.training for m in model.modules()]
    try:
        again = S.item_tower_vectors(model, tokens, pad_id=pad)
        assert [m.training for m in model.modules()] == before and model.training
        np.testing.assert_allclose(again, vectors, atol=1e-6)  # encoded in eval mode all the same (no dropout)
    finally:
        model.eval()


def test_int8_text_ranker_keeps_auc_within_tolerance(text_setup):
    from ecrec import bert
    from ecrec.metrics import roc_auc

    model, tokens, vectors, (hist, cand, labels), pad = text_setup
    q = S.quantize_int8(model)
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in q.modules())
    assert not any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())  # a copy
    v8 = S.item_tower_vectors(q, tokens, pad_id=pad)
    fp32 = bert.bi_logits(model, vectors, hist, cand)
    int8 = bert.bi_logits(model, v8, hist, cand)
    auc32 = roc_auc(labels, fp32)
    assert auc32 > 0.7  # the probe learned the rule, so the tolerance below is tested on a real ranking
    assert abs(roc_auc(labels, int8) - auc32) <= 0.02  # the stated tolerance
    assert (v8 * vectors).sum(1).min() > 0.95  # unit vectors that barely turn
    assert S.model_bytes(q) < S.model_bytes(model)


def test_onnx_item_tower_matches_torch_or_is_skipped_with_a_message(text_setup, tmp_path):
    model, tokens, vectors, _, pad = text_setup
    ok, message = S.onnx_status()
    if not ok:
        assert "not installed" in message and "pip install" in message
        pytest.skip(message)
    path = S.export_onnx(model, tmp_path / "tower.onnx", tokens[:2], pad_id=pad)
    runner = S.OnnxItemTower(path, threads=1)
    np.testing.assert_allclose(S.item_tower_vectors(runner, tokens, pad_id=pad), vectors, atol=1e-5)
