"""Beyond-accuracy metrics (ecrec.beyond_accuracy, re-exported by ecrec.metrics).

Each metric against a value computed by hand on a tiny example written out
here, against an oracle where one exists (scipy's pdist for the pairwise
cosine distances; the mean over every order of a tie group, enumerated, for
the tie expectations), and with its bad inputs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import pdist

from ecrec import beyond_accuracy as B
from ecrec import metrics as M

# four items in the plane: 0 = east, 1 = north, 2 = north-east, 3 = west
VECTORS = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])


def test_reexported_by_metrics():
    for name in ("novelty_at_k", "intra_list_diversity_at_k", "popularity_head", "popularity_bias_at_k",
                 "exposure_by_group_at_k"):
        assert getattr(M, name) is getattr(B, name)
        assert name in M.__all__
    with pytest.raises(AttributeError, match="no attribute"):
        M.not_a_metric  # noqa: B018


# --- novelty ----------------------------------------------------------------------------------------


def test_novelty_hand_computed():
    # 8 training users; item 0 bought by all (0 bits), item 1 by 4 (1 bit), item 2 by 1 (3 bits)
    counts = np.array([8, 4, 1, 0])
    retrieved = np.array([[0, 1, 2], [1, -1, -1]])
    per = M.novelty_at_k(retrieved, counts, 8, 3, pseudo_count=0, per_user=True)
    np.testing.assert_allclose(per, [4 / 3, 1.0])
    assert M.novelty_at_k(retrieved, counts, 8, 3, pseudo_count=0) == pytest.approx(7 / 6)
    # k cuts the list: [0, 1] -> (0 + 1) / 2
    assert M.novelty_at_k(retrieved, counts, 8, 2, pseudo_count=0, per_user=True)[0] == pytest.approx(0.5)
    # the smoothing keeps a cold item finite: p = (0 + 1) / (8 + 1)
    assert M.novelty_at_k(np.array([[3]]), counts, 8, 1) == pytest.approx(math.log2(9))


def test_novelty_duplicates_and_empty_rows():
    counts = np.array([8, 4, 1, 0])
    per = M.novelty_at_k(np.array([[2, 2, 1], [-1, -1, -1]]), counts, 8, 2, pseudo_count=0, per_user=True)
    assert per[0] == pytest.approx(2.0)  # [2, 2, 1] is [2, 1]: (3 + 1) / 2
    assert np.isnan(per[1])


def test_novelty_ties_are_the_mean_over_orders():
    counts = np.array([8, 4, 1, 0])
    # item 0 first; items 1 and 2 tied for the one slot left: (0 + 1) / 2 and (0 + 3) / 2, equally likely
    value = M.novelty_at_k(np.array([[0, 1, 2]]), counts, 8, 2, scores=np.array([[3.0, 1.0, 1.0]]), pseudo_count=0)
    assert value == pytest.approx((0.5 + 1.5) / 2)


def test_novelty_bad_input():
    counts = np.array([8, 4, 1, 0])
    with pytest.raises(ValueError, match="infinite; pass pseudo_count > 0"):
        M.novelty_at_k(np.array([[3]]), counts, 8, 1, pseudo_count=0)
    with pytest.raises(ValueError, match="more than n_train_users=3"):
        M.novelty_at_k(np.array([[0]]), counts, 3, 1)
    with pytest.raises(ValueError, match="whole counts >= 0"):
        M.novelty_at_k(np.array([[0]]), np.array([1, -2]), 3, 1)
    with pytest.raises(ValueError, match="n_train_users must be a positive integer"):
        M.novelty_at_k(np.array([[0]]), counts, 0, 1)
    with pytest.raises(ValueError, match="only 4 items"):
        M.novelty_at_k(np.array([[4]]), counts, 8, 1)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        M.novelty_at_k(np.array([[0]]), counts, 8, 0)
    with pytest.raises(TypeError, match="integer item ids"):
        M.novelty_at_k(np.array([[0.0]]), counts, 8, 1)
    with pytest.raises(ValueError, match="no item was recommended"):
        M.novelty_at_k(np.array([[-1, -1]]), counts, 8, 2)
    with pytest.raises(ValueError, match="non-increasing"):
        M.novelty_at_k(np.array([[0, 1]]), counts, 8, 1, scores=np.array([[1.0, 2.0]]))


# --- intra-list diversity ---------------------------------------------------------------------------


def test_ild_hand_computed():
    # row 0: east/north 1 - 0 = 1; east/north-east and north/north-east 1 - 1/sqrt(2) each
    # row 1: west/east 1 - (-1) = 2; row 2 has one item: no pair
    retrieved = np.array([[0, 1, 2], [3, 0, -1], [1, -1, -1]])
    per = M.intra_list_diversity_at_k(retrieved, VECTORS, 3, per_user=True)
    row0 = (1 + 2 * (1 - 1 / math.sqrt(2))) / 3
    np.testing.assert_allclose(per[:2], [row0, 2.0])
    assert np.isnan(per[2])
    assert M.intra_list_diversity_at_k(retrieved, VECTORS, 3) == pytest.approx((row0 + 2.0) / 2)
    # the scale of a vector does not matter (cosine)
    assert M.intra_list_diversity_at_k(retrieved, VECTORS * [[3.0], [0.5], [2.0], [7.0]], 3) == pytest.approx(
        (row0 + 2.0) / 2)


def test_ild_against_scipy_pdist():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 8))
    retrieved = np.stack([rng.permutation(30)[:12] for _ in range(40)])
    retrieved[5, 7:] = -1  # a short list
    retrieved[6, 1:] = -1  # one item: no pair
    per = M.intra_list_diversity_at_k(retrieved, vectors, 10, per_user=True)
    for u in range(len(retrieved)):
        items = retrieved[u, :10][retrieved[u, :10] >= 0]
        if len(items) < 2:
            assert np.isnan(per[u])
        else:
            assert per[u] == pytest.approx(pdist(vectors[items], "cosine").mean(), abs=1e-12)
    assert np.nanmin(per) >= 0 and np.nanmax(per) <= 2


def test_ild_identical_vectors_is_zero_and_opposite_is_two():
    assert M.intra_list_diversity_at_k(np.array([[0, 1]]), np.array([[1.0, 2.0], [2.0, 4.0]]), 2) == pytest.approx(0)
    assert M.intra_list_diversity_at_k(np.array([[0, 3]]), VECTORS, 2) == pytest.approx(2)


def _mean_over_tie_orders(fn, items, scores, k):
    """The metric of the strict list, averaged over every order of every tie group (the oracle)."""
    groups = [list(g) for _, g in itertools.groupby(range(len(items)), key=lambda i: scores[i])]
    values = []
    for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
        order = [i for g in orders for i in g]
        values.append(fn(np.array([[items[i] for i in order]]), k))
    return float(np.mean(values))


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_ild_ties_against_every_order(k):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(9, 5))
    items = [4, 0, 7, 2, 5, 8, 1]
    scores = [9.0, 8.0, 5.0, 5.0, 5.0, 2.0, 2.0]  # a group of three across most cut-offs

    def strict(lists, k_):
        return M.intra_list_diversity_at_k(lists, vectors, k_)

    value = M.intra_list_diversity_at_k(np.array([items]), vectors, k, scores=np.array([scores]))
    assert value == pytest.approx(_mean_over_tie_orders(strict, items, scores, k), abs=1e-12)


def test_ild_bad_input():
    with pytest.raises(ValueError, match="zero vector"):
        M.intra_list_diversity_at_k(np.array([[0, 1]]), np.array([[1.0, 0.0], [0.0, 0.0]]), 2)
    with pytest.raises(ValueError, match="2-D"):
        M.intra_list_diversity_at_k(np.array([[0, 1]]), np.ones(4), 2)
    with pytest.raises(ValueError, match="NaN or inf in the vector of item 1"):
        M.intra_list_diversity_at_k(np.array([[0, 1]]), np.array([[1.0, 0.0], [np.nan, 1.0]]), 2)
    with pytest.raises(ValueError, match="fewer than 2 items"):
        M.intra_list_diversity_at_k(np.array([[0, -1]]), VECTORS, 2)
    with pytest.raises(ValueError, match="item id 9"):
        M.intra_list_diversity_at_k(np.array([[0, 9]]), VECTORS, 2)
    with pytest.raises(ValueError, match="no rows"):
        M.intra_list_diversity_at_k(np.zeros((0, 3), dtype=int), VECTORS, 2)


# --- popularity bias --------------------------------------------------------------------------------

POPULARITY = np.array([10, 7, 7, 3, 2, 1, 0, 0, 0, 0])


def test_popularity_head_hand_computed():
    np.testing.assert_array_equal(M.popularity_head(POPULARITY, 0.1), [1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    # two places: item 0, and items 1 and 2 tied for the second: half each
    np.testing.assert_array_equal(M.popularity_head(POPULARITY, 0.2), [1, 0.5, 0.5, 0, 0, 0, 0, 0, 0, 0])
    head = M.popularity_head(POPULARITY, 0.9)  # 9 places: the four zeros share three
    np.testing.assert_allclose(head, [1, 1, 1, 1, 1, 1, 0.75, 0.75, 0.75, 0.75])
    assert M.popularity_head(POPULARITY, 1.0).sum() == 10


def test_popularity_bias_hand_computed():
    retrieved = np.array([[0, 1, 5], [2, 3, -1]])
    # head (20%): item 0 (1), items 1 and 2 (1/2 each); slots: 3 + 2
    assert M.popularity_bias_at_k(retrieved, POPULARITY, 3, head_share=0.2) == pytest.approx((1.5 + 0.5) / 5)
    np.testing.assert_allclose(M.popularity_bias_at_k(retrieved, POPULARITY, 3, head_share=0.2, per_user=True),
                               [0.5, 0.25])
    assert M.popularity_bias_at_k(retrieved, POPULARITY, 3) == pytest.approx(1 / 5)  # 10%: item 0 only
    # the most-popular list is all head
    assert M.popularity_bias_at_k(np.array([[0], [0]]), POPULARITY, 1) == 1.0


def test_popularity_bias_ties_are_the_mean_over_orders():
    items, scores = [0, 5, 4], [2.0, 1.0, 1.0]

    def strict(lists, k_):
        return M.popularity_bias_at_k(lists, POPULARITY, k_, head_share=0.2)

    for k in (1, 2, 3):
        value = M.popularity_bias_at_k(np.array([items]), POPULARITY, k, head_share=0.2, scores=np.array([scores]))
        assert value == pytest.approx(_mean_over_tie_orders(strict, items, scores, k))


def test_popularity_bias_bad_input():
    with pytest.raises(ValueError, match=r"head_share .* in \(0, 1\]"):
        M.popularity_bias_at_k(np.array([[0]]), POPULARITY, 1, head_share=0)
    with pytest.raises(ValueError, match=r"head_share"):
        M.popularity_bias_at_k(np.array([[0]]), POPULARITY, 1, head_share=1.5)
    with pytest.raises(ValueError, match="finite and >= 0; found -1"):
        M.popularity_head(np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match="non-empty"):
        M.popularity_head(np.array([]))
    with pytest.raises(ValueError, match="only 10 items"):
        M.popularity_bias_at_k(np.array([[10]]), POPULARITY, 1)
    with pytest.raises(ValueError, match="no item was recommended"):
        M.popularity_bias_at_k(np.array([[-1]]), POPULARITY, 1)


# --- exposure by group ------------------------------------------------------------------------------


def test_exposure_by_group_hand_computed():
    groups = np.array(["a", "a", "b", "c"])
    table = M.exposure_by_group_at_k(np.array([[0, 1, 2], [0, 3, -1]]), groups, 3)
    # slots: a 3 (0, 1, 0), b 1, c 1 of 5; catalogue: a 2, b 1, c 1 of 4
    assert list(table.index) == ["a", "b", "c"]
    np.testing.assert_allclose(table["exposure"], [0.6, 0.2, 0.2])
    np.testing.assert_allclose(table["catalogue"], [0.5, 0.25, 0.25])
    np.testing.assert_allclose(table["ratio"], [1.2, 0.8, 0.8])
    np.testing.assert_allclose(table["slots"], [3, 1, 1])
    assert table["exposure"].sum() == pytest.approx(1) and table["catalogue"].sum() == pytest.approx(1)


def test_exposure_keeps_category_order_and_unshown_groups():
    groups = pd.Categorical(["high", "low", "mid", "low"], categories=["low", "mid", "high", "unused"])
    table = M.exposure_by_group_at_k(np.array([[1, 3]]), groups, 2)
    assert list(table.index) == ["low", "mid", "high"]
    np.testing.assert_allclose(table["exposure"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(table["ratio"], [2.0, 0.0, 0.0])


def test_exposure_ties_are_the_mean_over_orders():
    groups = np.array(["a", "a", "b", "c"])
    table = M.exposure_by_group_at_k(np.array([[0, 2, 3]]), groups, 2, scores=np.array([[1.0, 0.5, 0.5]]))
    np.testing.assert_allclose(table["exposure"], [0.5, 0.25, 0.25])


def test_exposure_bad_input():
    with pytest.raises(ValueError, match="no label for item 1"):
        M.exposure_by_group_at_k(np.array([[0]]), np.array(["a", None, "b"], dtype=object), 1)
    with pytest.raises(ValueError, match="1-D"):
        M.exposure_by_group_at_k(np.array([[0]]), np.array([["a", "b"]]), 1)
    with pytest.raises(ValueError, match="only 2 items"):
        M.exposure_by_group_at_k(np.array([[2]]), np.array(["a", "b"]), 1)
    with pytest.raises(ValueError, match="no item was recommended"):
        M.exposure_by_group_at_k(np.array([[-1]]), np.array(["a", "b"]), 1)
