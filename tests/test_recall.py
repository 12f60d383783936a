"""ecrec.recall: split, protocol data, generators and retrieval, on hand-sized examples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics.pairwise import cosine_similarity

from ecrec import recall as R
from ecrec.features import split_dates

# --- protocol data -----------------------------------------------------------


def test_recency_weights_half_life():
    np.testing.assert_allclose(R.recency_weights([0, 30, 60], 30), [1, 0.5, 0.25])
    with pytest.raises(ValueError, match="negative age"):
        R.recency_weights([-1], 30)


def _toy_log() -> pd.DataFrame:
    rows = [
        # user 1: A, B before the test window; buys B again and C in it
        ("i1", "A", "a red bag", "2011-01-03", 1),
        ("i1", "B", "a blue mug", "2011-01-03", 1),
        ("i2", "B", "a blue mug", "2011-03-29", 1),
        ("i2", "C", "green lamp", "2011-03-29", 1),
        # user 2: no history; buys A in the test window
        ("i3", "A", "a red bag", "2011-03-30", 2),
        # user 3: history only
        ("i4", "C", "green lamp", "2011-02-01", 3),
        # D is first sold in the test window: a cold item
        ("i5", "D", "white candle", "2011-03-31", 1),
    ]
    df = pd.DataFrame(rows, columns=["InvoiceNo", "StockCode", "Description", "InvoiceDate", "CustomerID"])
    df["InvoiceDate"] = pd.to_datetime(df["InvoiceDate"])
    df["CustomerID"] = df["CustomerID"].astype("Int64")
    return df


def test_build_recall_data_ground_truth_and_groups():
    df = _toy_log()
    _, test_start = split_dates(df["InvoiceDate"], valid_days=7, test_days=7)  # chapter 03's split
    assert test_start == pd.Timestamp("2011-03-25")
    d = R.build_recall_data(df, test_start, half_life_days=30, short_max=1)
    assert d.end == pd.Timestamp("2011-04-01")
    assert d.items["StockCode"].tolist() == ["A", "B", "C", "D"]  # item ids 0..3
    assert d.users.tolist() == [1, 2]
    assert d.relevant_all.toarray().tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]
    assert d.relevant_new.toarray().tolist() == [[0, 0, 1, 1], [1, 0, 0, 0]]  # B was bought before
    assert d.user_group.tolist() == ["warm", "cold"]  # 2 past items > short_max=1
    age = (pd.Timestamp("2011-03-25") - pd.Timestamp("2011-01-03")).days
    np.testing.assert_allclose(d.history.toarray()[0], [0.5 ** (age / 30)] * 2 + [0, 0])
    assert d.history.toarray()[1].sum() == 0
    assert d.items["is_cold"].tolist() == [False, False, False, True]
    assert d.train_users.tolist() == [1, 3]
    assert d.train_row_of_user.tolist() == [0, -1]
    assert d.train_matrix.toarray().tolist() == [[1, 1, 0, 0], [0, 0, 1, 0]]


def test_build_recall_data_subsample_and_errors():
    df = _toy_log()
    test_start = pd.Timestamp("2011-03-25")
    assert len(R.build_recall_data(df, test_start, max_users=1, seed=0).users) == 1
    with pytest.raises(ValueError, match="missing columns"):
        R.build_recall_data(df.drop(columns="StockCode"), test_start)
    with pytest.raises(ValueError, match="inside the log"):
        R.build_recall_data(df, pd.Timestamp("2012-01-01"))
    with pytest.raises(ValueError, match="no purchase in the test window"):
        R.build_recall_data(df, pd.Timestamp("2011-03-31 12:00"))


# --- ranking helpers -----------------------------------------------------------


def test_top_k_ties_exclude_and_min_score():
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0]])
    # ties at 0.5 come in item-id order: 0, 2, 4
    assert R.top_k(scores, 4).tolist() == [[1, 0, 2, 4], [0, 1, 2, 3]]
    exclude = sp.csr_array(np.array([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0]]))
    assert R.top_k(scores, 3, exclude=exclude).tolist() == [[0, 4, 3], [0, 1, 2]]
    assert R.top_k(scores, 3, min_score=0.0).tolist() == [[1, 0, 2], [-1, -1, -1]]
    assert R.top_k(scores[:1], 7).tolist() == [[1, 0, 2, 4, 3, -1, -1]]
    with pytest.raises(ValueError, match="NaN"):
        R.top_k(np.array([[np.nan]]), 1)
    with pytest.raises(ValueError, match="exclude"):
        R.top_k(scores, 2, exclude=sp.csr_array((1, 5)))


def test_popular_scores_counts_distinct_buyers_in_window():
    ev = pd.DataFrame(
        {
            "user": [1, 1, 2, 3, 3],
            "item_id": [0, 0, 0, 2, 1],
            "t": pd.to_datetime(["2011-01-05", "2011-01-06", "2011-01-07", "2011-01-08", "2010-12-01"]),
        }
    )
    out = R.popular_scores(ev, 4, pd.Timestamp("2011-01-01"), pd.Timestamp("2011-02-01"))
    assert out.tolist() == [2, 0, 1, 0]  # user 1 counts once; item 1 is outside the window


def test_item_cosine_hand_computed_and_sklearn():
    x = sp.csr_array(np.array([[1, 1, 0], [1, 0, 1], [3, 1, 0]]))  # counts are binarised
    sim = R.item_cosine(x).toarray()
    # item 0 bought by 3 users, item 1 by 2 of them: 2 / sqrt(3 * 2)
    assert sim[0, 1] == pytest.approx(2 / np.sqrt(6))
    assert sim[1, 2] == 0 and np.all(np.diag(sim) == 0)
    expected = cosine_similarity((x.toarray() > 0).T.astype(float))
    np.fill_diagonal(expected, 0)
    np.testing.assert_allclose(sim, expected)


def test_fit_als_is_deterministic_and_fits_the_data():
    rng = np.random.default_rng(0)
    x = sp.csr_array((rng.random((60, 40)) < 0.1).astype(np.float32))
    u1, v1 = R.fit_als(x, factors=8, iterations=5, seed=3)
    u2, v2 = R.fit_als(x, factors=8, iterations=5, seed=3)
    assert u1.shape == (60, 8) and v1.shape == (40, 8)
    np.testing.assert_array_equal(u1, u2)
    np.testing.assert_array_equal(v1, v2)
    scores = u1 @ v1.T
    dense = x.toarray() > 0
    assert scores[dense].mean() > scores[~dense].mean() + 0.3  # bought items score higher


def test_user_vectors_recency_weighted_mean():
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    hist = sp.csr_array(np.array([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    out = R.user_vectors(hist, emb)
    np.testing.assert_allclose(out[0], np.array([3.0, 1.0]) / np.sqrt(10), rtol=1e-6)
    assert np.all(out[1] == 0)
    with pytest.raises(ValueError, match="items"):
        R.user_vectors(hist, emb[:2])


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_index_equals_brute_force_cosine_top_k():
    rng = np.random.default_rng(1)
    items, users = _unit(rng, 300, 16), _unit(rng, 50, 16)
    got = R.faiss_search(R.build_index(items * 3.0), users, 20)  # un-normalised input is normalised
    expected = R.top_k(users @ items.T, 20)
    np.testing.assert_array_equal(got, expected)


def test_faiss_search_exclude_zero_queries_and_padding():
    rng = np.random.default_rng(2)
    items, users = _unit(rng, 30, 8), _unit(rng, 4, 8)
    users[3] = 0  # a user without history
    exclude = sp.csr_array((np.ones(3), ([0, 0, 1], [5, 7, 0])), shape=(4, 30))
    got = R.faiss_search(R.build_index(items), users, 10, exclude=exclude)
    expected = R.top_k(users @ items.T, 10, exclude=exclude)
    np.testing.assert_array_equal(got[:3], expected[:3])
    assert (got[3] == -1).all()
    assert R.faiss_search(R.build_index(items), users[:1], 40).tolist()[0][30:] == [-1] * 10
    with pytest.raises(ValueError, match="queries"):
        R.faiss_search(R.build_index(items), users[:, :4], 5)


def test_hnsw_is_close_to_exact():
    rng = np.random.default_rng(3)
    items, users = _unit(rng, 2000, 32), _unit(rng, 100, 32)
    exact = R.faiss_search(R.build_index(items), users, 10)
    index = R.build_index(items, "hnsw")
    index.hnsw.efSearch = 128
    approx = R.faiss_search(index, users, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx, strict=True)])
    assert 0.9 <= overlap <= 1.0
    with pytest.raises(ValueError, match="kind"):
        R.build_index(items, "ivf")


def test_interleave_and_fallback():
    a = np.array([[1, 2, 3, 4], [7, 8, -1, -1]])
    b = np.array([[2, 9], [8, 5]])
    assert R.interleave([a, b], 4).tolist() == [[1, 2, 9, 3], [7, 8, 5, -1]]
    assert R.interleave([a, b], 5, weights=[3, 1]).tolist() == [[1, 2, 3, 4, 9], [7, 8, 5, -1, -1]]
    with pytest.raises(ValueError, match="weight"):
        R.interleave([a, b], 4, weights=[1])
    out = R.with_fallback(a, np.array([False, True]), np.array([0, 1, 2, 3]))
    assert out.tolist() == [[1, 2, 3, 4], [0, 1, 2, 3]]


# --- two-tower --------------------------------------------------------------


def _toy_events():
    return pd.DataFrame(
        {
            "user": [1, 1, 1, 1, 2, 2],
            "item_id": [0, 1, 2, 0, 3, 4],
            "invoice": ["a", "a", "b", "c", "d", "e"],
            "t": pd.to_datetime(["2011-01-01", "2011-01-01", "2011-01-11", "2011-01-21", "2011-01-01", "2011-03-01"]),
        }
    )


def test_sample_pairs_history_is_strictly_earlier_and_before_cutoff():
    pairs = R.sample_pairs(_toy_events(), pd.Timestamp("2011-02-01"), 20, max_history=3, half_life_days=10, seed=0)
    # eligible: user 1's item 2 (invoice b). Item 0 in c is a repeat; user 2's e is after the cut-off.
    assert set(pairs.target.tolist()) == {2}
    assert pairs.hist_items[0].tolist() == [1, 0, -1]  # most recent first; same invoice: later row first
    np.testing.assert_allclose(pairs.hist_weights[0], [0.5, 0.5, 0.0])
    repeats = R.sample_pairs(_toy_events(), pd.Timestamp("2011-02-01"), 50, new_items_only=False, seed=0)
    assert set(repeats.target.tolist()) == {0, 2}
    with pytest.raises(ValueError, match="no eligible"):
        R.sample_pairs(_toy_events(), pd.Timestamp("2011-01-05"), 5)
    assert (pairs.target_time == np.datetime64("2011-01-11")).all()


def test_sample_pairs_since_gives_held_out_targets_with_earlier_history():
    ev = _toy_events()
    held = R.sample_pairs(ev, pd.Timestamp("2011-02-01"), 10, new_items_only=False, since="2011-01-15", seed=0)
    assert set(held.target.tolist()) == {0}  # only invoice c (2011-01-21) is in [since, before)
    assert held.hist_items[0].tolist()[:3] == [2, 1, 0]  # its history starts before `since`
    assert (held.target_time >= np.datetime64("2011-01-15")).all()
    with pytest.raises(ValueError, match="no eligible"):
        R.sample_pairs(ev, pd.Timestamp("2011-02-01"), 10, since="2011-01-15", seed=0)  # c only repeats item 0
    with pytest.raises(ValueError, match="max_history"):
        R.sample_pairs(ev, pd.Timestamp("2011-02-01"), 10, max_history=0)


def test_cap_history_keeps_the_most_recent_items():
    hist = sp.csr_array(np.array([[0.2, 0.9, 0.5, 0.9], [0.0, 0.0, 0.3, 0.0]]))
    capped = R.cap_history(hist, 2).toarray()
    # row 0: weights 0.9 (items 1 and 3, tie -> both kept as the two largest); row 1 unchanged
    assert capped.tolist() == [[0.0, 0.9, 0.0, 0.9], [0.0, 0.0, 0.3, 0.0]]
    assert R.cap_history(hist, 1).toarray().tolist()[0] == [0.0, 0.9, 0.0, 0.0]  # tie: lower id
    with pytest.raises(ValueError, match="max_items"):
        R.cap_history(hist, 0)


def test_faiss_search_tie_margin_keeps_the_lower_id_rule_at_the_cut_off():
    # 12 identical item vectors (same description) and one other: at k=3 the
    # three lowest ids among the tied items must come back, whatever FAISS's order.
    base = np.array([[1.0, 0.0]], dtype=np.float32)
    items = np.vstack([np.array([[0.0, 1.0]], dtype=np.float32), np.repeat(base, 12, axis=0)])
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    got = R.faiss_search(R.build_index(items), q, 3, tie_margin=11)
    assert got.tolist() == [[1, 2, 3]]
    with pytest.raises(ValueError, match="tie_margin"):
        R.faiss_search(R.build_index(items), q, 3, tie_margin=-1)


@pytest.fixture(scope="module")
def minilm():
    from ecrec.text import load_encoder, load_tokenizer

    return load_encoder(), load_tokenizer()


TEXTS = ["white hanging heart t-light holder", "jumbo bag red retrospot", "lunch bag red retrospot",
         "regency cakestand 3 tier", "set of 3 cake tins pantry design"]


def test_cached_encoding_and_untrained_tower_equal_encode_texts(minilm):
    from ecrec.text import encode_texts

    model, tok = minilm
    emb, states, mask, _ = R.encode_with_cache(TEXTS, n_trainable=2, max_length=32, model=model, tokenizer=tok)
    np.testing.assert_allclose(emb, encode_texts(TEXTS, model=model, tokenizer=tok, max_length=32), atol=1e-5)
    tower = R.ItemTower(model, n_trainable=2)
    np.testing.assert_allclose(tower.embed_all(states, mask), emb, atol=1e-5)
    with pytest.raises(ValueError, match="n_trainable"):
        R.encode_with_cache(TEXTS, n_trainable=7, model=model, tokenizer=tok)


def test_train_two_tower_learns_the_pairs(minilm):
    import torch

    model, tok = minilm
    _, states, mask, _ = R.encode_with_cache(TEXTS, n_trainable=1, model=model, tokenizer=tok)
    # history {0} -> 3 and history {1} -> 4, repeated
    pairs = R.Pairs(
        hist_items=np.array([[0, -1], [1, -1]] * 8),
        hist_weights=np.array([[1.0, 0.0], [1.0, 0.0]] * 8, dtype=np.float32),
        target=np.array([3, 4] * 8),
    )
    torch.manual_seed(0)
    tower = R.ItemTower(model, 1)
    log = []
    losses = R.train_two_tower(tower, states, mask, pairs, steps=15, batch_size=2, lr=1e-3,
                               temperature=0.1, logq_correction=False, progress=False,
                               eval_pairs=pairs, eval_every=5, eval_log=log)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert [e["step"] for e in log] == [0, 5, 10, 15]
    assert log[-1]["loss"] < log[0]["loss"]
    assert log[-1]["accuracy"] == 1.0  # both pairs ranked first in their batch after training
    with pytest.raises(ValueError, match="batch_size"):
        R.in_batch_eval(tower, states, mask, pairs, batch_size=64, temperature=0.1)
    with pytest.raises(ValueError, match="temperature"):
        R.train_two_tower(tower, states, mask, pairs, steps=1, temperature=0)
