"""ecrec.metrics: hand-computed values and scikit-learn as the oracle."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas.testing as pdt
import pytest
import scipy.sparse as sp
from sklearn import metrics as skm

from ecrec import metrics as M

# --- log loss --------------------------------------------------------------


def test_log_loss_hand_computed():
    # -(ln 0.8 + ln(1 - 0.4)) / 2
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert M.log_loss([1, 0], [0.8, 0.4]) == pytest.approx(expected, rel=1e-12)


def test_log_loss_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = rng.uniform(0.01, 0.99, 500)
    assert M.log_loss(y, p) == pytest.approx(skm.log_loss(y, p), rel=1e-10)


def test_log_loss_clips_certain_mistakes():
    # p = 0 for a positive costs -ln(eps), not infinity.
    assert M.log_loss([1], [0.0], eps=1e-7) == pytest.approx(-math.log(1e-7))
    assert M.log_loss([0, 1], [0.0, 1.0]) == pytest.approx(-math.log(1 - 1e-15), abs=1e-12)


@pytest.mark.parametrize(
    "y, p, match",
    [
        ([0, 2], [0.1, 0.2], "only 0 and 1"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([0, np.nan], [0.1, 0.2], "NaN"),
        ([0, 1], [0.1, 0.2, 0.3], "same length"),
        ([0, 1], [0.1, 1.5], r"\[0, 1\]"),
        ([0, 1], [[0.1, 0.2]], "1-D"),
        ([], [], "empty"),
    ],
)
def test_log_loss_rejects_bad_input(y, p, match):
    with pytest.raises(ValueError, match=match):
        M.log_loss(y, p)


def test_log_loss_rejects_bad_eps_and_text():
    with pytest.raises(ValueError, match="eps"):
        M.log_loss([0, 1], [0.2, 0.8], eps=0.7)
    with pytest.raises(TypeError, match="numeric"):
        M.log_loss(["a", "b"], [0.2, 0.8])


# --- ROC AUC ---------------------------------------------------------------


def test_roc_auc_hand_computed_with_tie():
    # positives score 0.9 and 0.5, negatives 0.5 and 0.1:
    # pairs (0.9>0.5) 1, (0.9>0.1) 1, (0.5=0.5) 1/2, (0.5>0.1) 1 -> 3.5 / 4
    assert M.roc_auc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875)
    assert M.roc_auc([1, 0], [0.0, 1.0]) == 0.0
    assert M.roc_auc([1, 0, 1, 0], [3, 3, 3, 3]) == 0.5


def test_roc_auc_matches_sklearn_with_many_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    s = rng.integers(0, 7, 2000) + 0.3 * y  # few distinct values: many ties
    assert M.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), rel=1e-12)


def test_roc_auc_one_class_is_an_error():
    with pytest.raises(ValueError, match="both classes"):
        M.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="same length"):
        M.roc_auc([1, 0], [0.1])


# --- GAUC ------------------------------------------------------------------


def test_gauc_hand_computed_and_skips_single_class_users():
    users = ["a", "a", "a", "b", "b", "c", "c"]
    y = [1, 0, 0, 1, 0, 1, 1]
    s = [0.9, 0.5, 0.95, 0.2, 0.8, 0.1, 0.3]
    # a: pos 0.9 vs negs 0.5, 0.95 -> 1/2 ; b: pos 0.2 < neg 0.8 -> 0 ; c: all positive -> skipped
    value, skipped = M.gauc(users, y, s)
    assert skipped == 1
    assert value == pytest.approx((3 * 0.5 + 2 * 0.0) / 5)
    assert M.gauc(users, y, s, weight="uniform")[0] == pytest.approx(0.25)
    assert M.gauc(users, y, s, weight="clicks")[0] == pytest.approx(0.25)  # 1 click each


def test_gauc_matches_per_user_sklearn_loop():
    rng = np.random.default_rng(2)
    n = 3000
    users = rng.integers(0, 150, n)
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(size=n) + 0.5 * y, 1)  # rounded: ties inside users
    num = den = 0.0
    skipped = 0
    for u in np.unique(users):
        m = users == u
        if y[m].min() == y[m].max():
            skipped += 1
            continue
        num += m.sum() * skm.roc_auc_score(y[m], s[m])
        den += m.sum()
    value, n_skipped = M.gauc(users, y, s)
    assert n_skipped == skipped
    assert value == pytest.approx(num / den, rel=1e-12)


def test_gauc_errors():
    with pytest.raises(ValueError, match="none of the 2 users"):
        M.gauc([1, 1, 2], [1, 1, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="weight"):
        M.gauc([1, 1], [1, 0], [0.1, 0.2], weight="impressions")  # renamed "rows": sampled negatives are not impressions
    with pytest.raises(ValueError, match="same length"):
        M.gauc([1, 1, 2], [1, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="only 0 and 1"):
        M.gauc([1, 1], [1, 3], [0.1, 0.2])


# --- ranking ---------------------------------------------------------------

# user 0: duplicates and padding; user 1: nothing relevant (excluded);
# user 2: an empty list; user 3: one relevant item at rank 1.
RETRIEVED = np.array(
    [
        [5, 5, 2, -1, 9],
        [1, 2, 3, 4, 5],
        [-1, -1, -1, -1, -1],
        [8, 0, 1, 2, 3],
    ]
)
RELEVANT = [[2, 9, 4], [], [0], [8, 8]]
L2, L3, L4 = math.log2(2), math.log2(3), math.log2(4)


def test_dedupe_rows_keeps_first_occurrence_and_shifts_left():
    out = M.dedupe_rows(np.array([[5, 5, 2, -1, 9, 2], [3, -1, 3, 3, 1, 0]]), k=4)
    np.testing.assert_array_equal(out, [[5, 2, 9, -1], [3, 1, 0, -1]])
    assert M.dedupe_rows(np.array([[1, 2]]), k=4).tolist() == [[1, 2, -1, -1]]


def test_ranking_hand_computed_k3():
    # user 0 scored on [5, 2, 9]: hits at ranks 2 and 3, 3 relevant items.
    u0 = {
        "recall": 2 / 3,
        "recall_capped": 2 / 3,
        "precision": 2 / 3,
        "hit_rate": 1.0,
        "mrr": 1 / 2,
        "ndcg": (1 / L3 + 1 / L4) / (1 / L2 + 1 / L3 + 1 / L4),
        "map": (1 / 2 + 2 / 3) / 3,
    }
    u2 = dict.fromkeys(u0, 0.0)
    u3 = {"recall": 1, "recall_capped": 1, "precision": 1 / 3, "hit_rate": 1, "mrr": 1, "ndcg": 1, "map": 1}
    fns = {
        "recall": M.recall_at_k,
        "recall_capped": M.recall_capped_at_k,
        "precision": M.precision_at_k,
        "hit_rate": M.hit_rate_at_k,
        "mrr": M.mrr_at_k,
        "ndcg": M.ndcg_at_k,
        "map": M.map_at_k,
    }
    table = M.ranking_metrics(RETRIEVED, RELEVANT, [3, 5])
    for name, fn in fns.items():
        expected = (u0[name] + u2[name] + u3[name]) / 3  # user 1 excluded
        assert fn(RETRIEVED, RELEVANT, 3) == pytest.approx(expected), name
        assert table.loc[3, name] == pytest.approx(expected), name
        per = fn(RETRIEVED, RELEVANT, 3, per_user=True)
        assert np.isnan(per[1]) and per[0] == pytest.approx(u0[name]), name
    assert table.loc[3, "n_users"] == 3


def test_recall_denominators_differ_when_more_relevant_than_k():
    retrieved = np.array([[1, 2]])
    relevant = [[1, 2, 3, 4]]
    assert M.recall_at_k(retrieved, relevant, 2) == pytest.approx(0.5)  # 2 / 4
    assert M.recall_capped_at_k(retrieved, relevant, 2) == pytest.approx(1.0)  # 2 / min(2, 4)
    assert M.map_at_k(retrieved, relevant, 2) == pytest.approx(1.0)
    assert M.map_at_k(retrieved, relevant, 2, denominator="n_relevant") == pytest.approx(0.5)


def test_fewer_than_k_candidates_are_misses():
    # 2 candidates, both relevant, at K=4: precision 2/4, recall 2/2.
    assert M.precision_at_k(np.array([[3, 4]]), [[3, 4]], 4) == pytest.approx(0.5)
    assert M.recall_at_k(np.array([[3, 4]]), [[3, 4]], 4) == pytest.approx(1.0)
    assert M.ndcg_at_k(np.array([[3, 4]]), [[3, 4]], 4) == pytest.approx(1.0)


def test_duplicates_do_not_inflate_hits():
    # Without deduplication [7, 7] would count 2 hits for 1 relevant item.
    assert M.precision_at_k(np.array([[7, 7]]), [[7]], 2) == pytest.approx(0.5)
    assert M.recall_at_k(np.array([[7, 7, 8]]), [[7, 8]], 2) == pytest.approx(1.0)


def test_graded_ndcg_uses_ideal_from_all_relevant_items():
    # gains: item 1 -> 1, item 2 -> 3, item 9 -> 2 (never retrieved)
    rel = sp.csr_array(([1.0, 3.0, 2.0], ([0, 0, 0], [1, 2, 9])), shape=(1, 10))
    dcg = 1 / L2 + 3 / L3
    idcg = 3 / L2 + 2 / L3
    assert M.ndcg_at_k(np.array([[1, 2]]), rel, 2, graded=True) == pytest.approx(dcg / idcg)
    assert M.ndcg_at_k(np.array([[1, 2]]), rel, 2) == pytest.approx(1.0)  # binary: both relevant


def test_loose_ndcg_with_ideal_from_retrieved_items_is_inflated():
    # user 0: one hit at rank 1 out of 3 relevant -> loose 1.0, strict 1 / (1 + 1/log2 3)
    # user 1: its only relevant item at rank 2 -> 1/log2 3 in both; user 2: no hit -> 0 in both
    retrieved = np.array([[1, 5], [6, 2], [7, 8]])
    relevant = [[1, 2, 3], [2], [9]]
    strict = M.ndcg_at_k(retrieved, relevant, 2, per_user=True)
    loose = M.ndcg_at_k(retrieved, relevant, 2, ideal="retrieved", per_user=True)
    np.testing.assert_allclose(strict, [1 / (1 / L2 + 1 / L3), 1 / L3, 0.0])
    np.testing.assert_allclose(loose, [1.0, 1 / L3, 0.0])
    with pytest.raises(ValueError, match="ideal"):
        M.ndcg_at_k(retrieved, relevant, 2, ideal="some")


def _random_case(seed, n_users=40, n_items=60, width=25):
    rng = np.random.default_rng(seed)
    retrieved = np.stack([rng.permutation(n_items)[:width] for _ in range(n_users)])
    gains = rng.integers(0, 4, (n_users, n_items)) * (rng.random((n_users, n_items)) < 0.15)
    gains[np.arange(n_users), rng.integers(0, n_items, n_users)] += 1  # >= 1 relevant per user
    return retrieved, gains


@pytest.mark.parametrize("k", [1, 5, 25])
def test_ndcg_matches_sklearn(k):
    retrieved, gains = _random_case(k)
    n_users, n_items = gains.shape
    scores = np.zeros((n_users, n_items))
    np.put_along_axis(scores, retrieved, np.arange(retrieved.shape[1], 0, -1, dtype=float), axis=1)
    rel = sp.csr_array(gains.astype(float))
    assert M.ndcg_at_k(retrieved, rel, k, graded=True) == pytest.approx(
        skm.ndcg_score(gains, scores, k=k), rel=1e-10
    )
    assert M.ndcg_at_k(retrieved, rel, k) == pytest.approx(skm.ndcg_score(gains > 0, scores, k=k), rel=1e-10)


def _loop_reference(retrieved, relevant, k):
    """A plain per-user loop, written independently, for the binary metrics."""
    out = {m: [] for m in ("recall", "recall_capped", "precision", "hit_rate", "mrr", "map")}
    for row, rel in zip(retrieved, relevant, strict=True):
        rel = set(rel)
        if not rel:
            continue
        seen, top = set(), []
        for item in row:
            if item >= 0 and item not in seen:
                seen.add(item)
                top.append(item)
        top = top[:k]
        hits = [i in rel for i in top]
        n_hit = sum(hits)
        out["recall"].append(n_hit / len(rel))
        out["recall_capped"].append(n_hit / min(k, len(rel)))
        out["precision"].append(n_hit / k)
        out["hit_rate"].append(float(n_hit > 0))
        out["mrr"].append(1 / (hits.index(True) + 1) if n_hit else 0.0)
        ap = sum(sum(hits[: i + 1]) / (i + 1) for i, h in enumerate(hits) if h)
        out["map"].append(ap / min(k, len(rel)))
    return {m: float(np.mean(v)) for m, v in out.items()}


def test_ranking_metrics_match_a_plain_loop_with_duplicates_padding_and_empty_users():
    rng = np.random.default_rng(7)
    retrieved = rng.integers(-1, 30, (200, 40))  # duplicates and -1 everywhere
    relevant = [list(rng.integers(0, 30, rng.integers(0, 6))) for _ in range(200)]
    for k in (1, 10, 40, 60):
        table = M.ranking_metrics(retrieved, relevant, [k])
        for name, value in _loop_reference(retrieved, relevant, k).items():
            assert table.loc[k, name] == pytest.approx(value, rel=1e-12), (name, k)


def test_relevant_forms_agree_and_metrics_are_in_unit_interval():
    retrieved, gains = _random_case(3)
    lists = [np.flatnonzero(g) for g in gains]
    width = max(len(x) for x in lists)
    padded = np.full((len(lists), width), -1)
    for i, x in enumerate(lists):
        padded[i, : len(x)] = x
    a = M.ranking_metrics(retrieved, sp.csr_matrix(gains), [5, 20], n_items=60)
    b = M.ranking_metrics(retrieved, lists, [5, 20], n_items=60)
    c = M.ranking_metrics(retrieved, padded, [5, 20], n_items=60)
    cols = [m for m in a.columns if m != "ndcg_graded"]
    pdt.assert_frame_equal(a[cols], b[cols])
    pdt.assert_frame_equal(b, c)
    values = a.drop(columns="n_users").to_numpy()
    assert ((values >= 0) & (values <= 1)).all()


def test_catalogue_coverage():
    retrieved = np.array([[0, 1, 1, -1], [1, 2, 3, 4]])
    assert M.catalogue_coverage(retrieved, 10, 2) == pytest.approx(3 / 10)  # {0, 1} U {1, 2}
    assert M.catalogue_coverage(retrieved, 10, 4) == pytest.approx(5 / 10)
    table = M.ranking_metrics(retrieved, [[1], [9]], [2, 4], n_items=10)
    assert table["coverage"].tolist() == pytest.approx([0.3, 0.5])
    with pytest.raises(ValueError, match="n_items"):
        M.catalogue_coverage(retrieved, 3, 4)


@pytest.mark.parametrize(
    "retrieved, relevant, k, err, match",
    [
        (np.array([1, 2]), [[1]], 2, ValueError, "2-D"),
        (np.array([[1.0, 2.0]]), [[1]], 2, TypeError, "integer"),
        (np.array([[1, -3]]), [[1]], 2, ValueError, ">= 0"),
        (np.array([[1, 2]]), [[1], [2]], 2, ValueError, "1 users"),
        (np.array([[1, 2]]), [[1]], 0, ValueError, "positive"),
        (np.array([[1, 2]]), [[]], 2, ValueError, "no user has a relevant"),
        (np.array([[1, 2]]), {"a": 1}, 2, TypeError, "sparse"),
        (np.array([[1, 2]]), sp.csr_array(np.array([[0.0, -1.0]])), 2, ValueError, ">= 0"),
    ],
)
def test_ranking_bad_input(retrieved, relevant, k, err, match):
    with pytest.raises(err, match=match):
        M.recall_at_k(retrieved, relevant, k)


def test_map_rejects_unknown_denominator():
    with pytest.raises(ValueError, match="denominator"):
        M.map_at_k(np.array([[1]]), [[1]], 1, denominator="k")


# --- ties in the scores (issue 10, item 1) ---------------------------------


def test_log_loss_clips_like_sklearn_at_both_ends():
    # scikit-learn clips at the float64 machine epsilon: -ln(2.220446e-16) = 36.0437 nats
    eps = np.finfo(np.float64).eps
    assert M.log_loss([1], [0.0]) == pytest.approx(-math.log(eps), rel=1e-12)
    assert M.log_loss([1], [0.0]) == pytest.approx(36.04365338911715, rel=1e-12)
    assert M.log_loss([0], [1.0]) == pytest.approx(-math.log(eps), rel=1e-12)
    assert M.log_loss([1], [1.0]) == pytest.approx(-math.log1p(-eps), rel=1e-9)
    for y, p in (([1], [0.0]), ([0], [1.0]), ([1, 0], [1.0, 0.0]), ([1, 0, 1], [0.0, 1.0, 0.5])):
        assert M.log_loss(y, p) == pytest.approx(skm.log_loss(y, p, labels=[0, 1]), rel=1e-12)
    # the older 1e-15 convention stays available and is named
    assert M.log_loss([1], [0.0], eps=1e-15) == pytest.approx(-math.log(1e-15))


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_log_loss_names_a_non_finite_probability(bad):
    with pytest.raises(ValueError, match=r"p\[1\]"):
        M.log_loss([0, 1], [0.5, bad])


def test_constant_scores_count_as_random_order_hand_computed():
    # five candidates all scored 0.5, the relevant one listed first: every metric at K=1 is 1/5
    retrieved = np.array([[0, 1, 2, 3, 4]])
    scores = np.full((1, 5), 0.5)
    for fn in (M.recall_at_k, M.recall_capped_at_k, M.precision_at_k, M.hit_rate_at_k, M.mrr_at_k,
               M.ndcg_at_k, M.map_at_k):
        assert fn(retrieved, [[0]], 1, scores=scores) == pytest.approx(0.2), fn.__name__
        assert fn(retrieved, [[0]], 1) == 1.0, fn.__name__  # without scores the order is strict
    # K=2: recall 2/5; hit rate 1 - C(4,2)/C(5,2) = 2/5; MRR (1/5)(1) + (1/5)(1/2) = 0.3
    assert M.recall_at_k(retrieved, [[0]], 2, scores=scores) == pytest.approx(0.4)
    assert M.hit_rate_at_k(retrieved, [[0]], 2, scores=scores) == pytest.approx(0.4)
    assert M.mrr_at_k(retrieved, [[0]], 2, scores=scores) == pytest.approx(0.3)
    # two relevant among the five, K=1: hit rate 2/5, recall (2/5)/2
    assert M.hit_rate_at_k(retrieved, [[0, 3]], 1, scores=scores) == pytest.approx(0.4)
    assert M.recall_at_k(retrieved, [[0, 3]], 1, scores=scores) == pytest.approx(0.2)
    table = M.ranking_metrics(retrieved, [[0]], [1, 2, 5], scores=scores, n_items=5)
    assert table.loc[1, "recall"] == pytest.approx(0.2)
    assert table.loc[1, "coverage"] == pytest.approx(0.2)  # each item has probability 1/5
    assert table.loc[5, "coverage"] == pytest.approx(1.0)
    assert M.catalogue_coverage(retrieved, 5, 2, scores=scores) == pytest.approx(0.4)


def _tie_orders(row, scores):
    """Every order of ``row`` that permutes items within equal scores (the oracle's sample space)."""
    groups = [list(g) for _, g in itertools.groupby(zip(row, scores, strict=True), key=lambda x: x[1])]
    for perms in itertools.product(*[itertools.permutations([i for i, _ in g]) for g in groups]):
        yield [i for p in perms for i in p]


def test_tie_expectations_equal_brute_force_enumeration():
    # the oracle: the independent plain loop above, averaged over every order of the tied items
    rng = np.random.default_rng(11)
    n_users, width = 25, 7
    retrieved = np.stack([rng.permutation(12)[:width] for _ in range(n_users)])
    scores = -np.sort(-rng.integers(0, 3, (n_users, width)).astype(float), axis=1)  # many ties
    relevant = [list(np.flatnonzero(rng.random(12) < 0.3)) + [0] for _ in range(n_users)]
    ks = [1, 2, 4, 7]
    got = M.ranking_metrics(retrieved, relevant, ks, scores=scores, per_user=True)
    for u in range(n_users):
        orders = list(_tie_orders(retrieved[u], scores[u]))
        for c, k in enumerate(ks):
            per_order = [_loop_reference([o], [relevant[u]], k) for o in orders]
            for name in per_order[0]:
                expected = np.mean([v[name] for v in per_order])
                assert got[name][u, c] == pytest.approx(expected, rel=1e-10, abs=1e-12), (name, u, k)


def test_tied_ndcg_matches_sklearn_tie_averaging():
    rng = np.random.default_rng(5)
    n_users, n_items = 30, 20
    item_scores = rng.integers(0, 4, (n_users, n_items)).astype(float)  # heavy ties
    gains = (rng.random((n_users, n_items)) < 0.25) * rng.integers(1, 4, (n_users, n_items))
    gains[:, 1] += 1
    order = np.argsort(-item_scores, axis=1, kind="stable")
    listed = np.take_along_axis(item_scores, order, axis=1)
    rel = sp.csr_array(gains.astype(float))
    for k in (1, 3, 10, 20):
        assert M.ndcg_at_k(order, rel, k, graded=True, scores=listed) == pytest.approx(
            skm.ndcg_score(gains, item_scores, k=k), rel=1e-10
        )
        assert M.ndcg_at_k(order, rel, k, scores=listed) == pytest.approx(
            skm.ndcg_score(gains > 0, item_scores, k=k), rel=1e-10
        )


def test_scores_are_checked():
    retrieved = np.array([[0, 1, 2]])
    with pytest.raises(ValueError, match="non-increasing"):
        M.recall_at_k(retrieved, [[0]], 1, scores=[[0.1, 0.5, 0.2]])
    with pytest.raises(ValueError, match="shape"):
        M.recall_at_k(retrieved, [[0]], 1, scores=[[0.1, 0.5]])
    with pytest.raises(ValueError, match="NaN"):
        M.recall_at_k(retrieved, [[0]], 1, scores=[[np.nan, 0.5, 0.2]])
    with pytest.raises(ValueError, match="retrieved"):
        M.ndcg_at_k(retrieved, [[0]], 1, ideal="retrieved", scores=[[1.0, 1.0, 1.0]])
    # padding slots are ignored, whatever their score
    assert M.recall_at_k(np.array([[0, -1]]), [[0]], 1, scores=[[0.3, 9.0]]) == 1.0


def test_ranking_metrics_offers_both_map_denominators_hand_computed():
    # hits at ranks 1 and 3 among 5 relevant items: sum of precisions at hits = 1/1 + 2/3 = 5/3
    retrieved, relevant = np.array([[1, 9, 2]]), [[1, 2, 3, 4, 5]]
    both = M.ranking_metrics(retrieved, relevant, [1, 3], map_denominator="both")
    assert both.loc[3, "map"] == pytest.approx((5 / 3) / 3)  # min(K, |relevant|) = 3: Kaggle apk, RecBole
    assert both.loc[3, "map_n_relevant"] == pytest.approx((5 / 3) / 5)  # |relevant| = 5: trec_eval, ranx
    assert both.loc[1, "map"] == pytest.approx(1.0) and both.loc[1, "map_n_relevant"] == pytest.approx(1 / 5)
    only = M.ranking_metrics(retrieved, relevant, [3], map_denominator="n_relevant")
    assert "map" not in only and only.loc[3, "map_n_relevant"] == pytest.approx(1 / 3)
    assert "map_n_relevant" not in M.ranking_metrics(retrieved, relevant, [3])  # the default: unchanged columns
    assert only.loc[3, "map_n_relevant"] == pytest.approx(M.map_at_k(retrieved, relevant, 3, denominator="n_relevant"))
    with pytest.raises(ValueError, match="map_denominator"):
        M.ranking_metrics(retrieved, relevant, [3], map_denominator="trec")


def test_relevant_as_python_sets_is_accepted():
    retrieved = np.array([[5, 2, 9], [1, 2, 3]])
    as_lists = M.ranking_metrics(retrieved, [[2, 9, 7], []], [1, 3])
    as_sets = M.ranking_metrics(retrieved, [{2, 9, 7}, set()], [1, 3])
    pdt.assert_frame_equal(as_lists, as_sets)
    assert M.recall_at_k(retrieved, [{2, 9, 7}, frozenset({1})], 3) == pytest.approx((2 / 3 + 1) / 2)
    with pytest.raises(TypeError, match=r"relevant\[1\] must hold integer item ids.*sets"):
        M.recall_at_k(retrieved, [{2}, {"a"}], 3)
    with pytest.raises(ValueError, match="non-integer"):
        M.recall_at_k(retrieved, [[2.5], [1]], 3)


def test_rows_with_and_without_ties_in_one_call_equal_each_row_alone():
    # the fast path (rows without a tie) and the tie path (rows with one) side by side, with
    # duplicates and padding: each row's value must not depend on its neighbours
    rng = np.random.default_rng(7)
    n_users, width = 40, 9
    retrieved = rng.integers(-1, 15, (n_users, width))
    retrieved[::3] = np.stack([rng.permutation(15)[:width] for _ in range(len(retrieved[::3]))])
    strict = -np.sort(-rng.random((n_users, width)), axis=1)
    tied = -np.sort(-rng.integers(0, 3, (n_users, width)).astype(float), axis=1)
    scores = np.where((np.arange(n_users) % 2 == 0)[:, None], strict, tied)
    relevant = [list(np.flatnonzero(rng.random(15) < 0.3)) + [u % 15] for u in range(n_users)]
    ks = [1, 3, 9, 12]
    together = M.ranking_metrics(retrieved, relevant, ks, scores=scores, per_user=True, map_denominator="both")
    for u in range(n_users):
        alone = M.ranking_metrics(retrieved[u : u + 1], [relevant[u]], ks, scores=scores[u : u + 1], per_user=True,
                                  map_denominator="both")
        for name, values in together.items():
            np.testing.assert_allclose(values[u], alone[name][0], rtol=1e-12, atol=1e-15, err_msg=f"{name} user {u}")
    # strict scores give exactly what no scores give
    no_ties = M.ranking_metrics(retrieved[::2], relevant[::2], ks, per_user=True)
    with_scores = M.ranking_metrics(retrieved[::2], relevant[::2], ks, scores=strict[::2], per_user=True)
    for name in no_ties:
        np.testing.assert_array_equal(no_ties[name], with_scores[name])
