"""MMR re-ranking (ecrec.rerank): a hand-computed example, a naive loop as oracle, lam = 1, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from ecrec.rerank import mmr_rerank

# item 0 east, item 1 almost east (cos 0.96 with item 0), item 2 north
VECTORS = np.array([[1.0, 0.0], [0.96, 0.28], [0.0, 1.0]])


def test_mmr_hand_computed():
    cand, rel = np.array([[0, 1, 2]]), np.array([[1.0, 0.9, 0.5]])  # rescaled: 1, 0.8, 0
    # lam 0.5: step 1 takes item 0 (0.5); step 2: item 1 0.4 - 0.5 * 0.96 = -0.08, item 2 0 - 0.5 * 0 = 0
    np.testing.assert_array_equal(mmr_rerank(cand, rel, VECTORS, 3, lam=0.5), [[0, 2, 1]])
    # lam 0.9: item 1 0.72 - 0.1 * 0.96 = 0.624 beats item 2 (0): the ranker's order
    np.testing.assert_array_equal(mmr_rerank(cand, rel, VECTORS, 3, lam=0.9), [[0, 1, 2]])
    # without the rescaling, item 1: 0.45 - 0.48 = -0.03, item 2: 0.25
    np.testing.assert_array_equal(mmr_rerank(cand, rel, VECTORS, 2, lam=0.5, normalize=False), [[0, 2]])


def naive_mmr(cand, rel, vectors, k, lam):
    """Carbonell and Goldstein's greedy loop, one user and one candidate at a time."""
    out = np.full((len(cand), k), -1)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for u in range(len(cand)):
        seen, pool = set(), []
        for c, r in zip(cand[u], rel[u], strict=True):
            if c >= 0 and c not in seen:
                seen.add(c)
                pool.append((int(c), float(r)))
        if pool:
            lo, hi = min(r for _, r in pool), max(r for _, r in pool)
            pool = [(c, (r - lo) / (hi - lo) if hi > lo else 0.0) for c, r in pool]
        chosen = []
        while pool and len(chosen) < k:
            best, best_value = None, -np.inf
            for pos, (c, r) in enumerate(pool):
                redundancy = max((float(unit[c] @ unit[s]) for s in chosen), default=0.0)
                value = lam * r - (1 - lam) * redundancy
                if value > best_value:
                    best, best_value = pos, value
            chosen.append(pool.pop(best)[0])
        out[u, : len(chosen)] = chosen
    return out


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7, 1.0])
def test_mmr_against_a_naive_loop(lam):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 8))
    cand = np.stack([rng.choice(40, 15, replace=False) for _ in range(25)])
    cand[3, 10:] = -1  # a short list
    cand[4, 1] = cand[4, 0]  # a duplicate
    cand[5, :] = -1  # nothing to rank
    rel = rng.normal(size=cand.shape)
    np.testing.assert_array_equal(mmr_rerank(cand, rel, vectors, 8, lam=lam), naive_mmr(cand, rel, vectors, 8, lam))


def test_lam_one_returns_the_input_order_exactly():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(200, 16))
    cand = np.stack([rng.choice(200, 100, replace=False) for _ in range(30)])
    rel = -np.sort(-rng.normal(size=cand.shape), axis=1)  # sorted by relevance, best first
    rel[:, 40:45] = rel[:, 40:41]  # a tie keeps its listed order
    np.testing.assert_array_equal(mmr_rerank(cand, rel, vectors, 100, lam=1.0), cand)
    np.testing.assert_array_equal(mmr_rerank(cand, rel, vectors, 10, lam=1.0, normalize=False), cand[:, :10])
    # unsorted input: the stable sort by relevance
    shuffled = rng.normal(size=cand.shape)
    order = np.argsort(-shuffled, axis=1, kind="stable")
    np.testing.assert_array_equal(mmr_rerank(cand, shuffled, vectors, 10, lam=1.0),
                                  np.take_along_axis(cand, order, axis=1)[:, :10])


def test_padding_duplicates_and_short_rows():
    cand = np.array([[1, 1, 2, -1], [-1, -1, -1, -1]])
    rel = np.array([[0.9, 0.1, 0.5, np.nan], [np.nan] * 4])  # NaN only at padding: ignored
    np.testing.assert_array_equal(mmr_rerank(cand, rel, VECTORS, 3, lam=1.0), [[1, 2, -1], [-1, -1, -1]])


def test_mmr_bad_input():
    cand, rel = np.array([[0, 1]]), np.array([[1.0, 0.5]])
    with pytest.raises(ValueError, match=r"lam .* in \[0, 1\]"):
        mmr_rerank(cand, rel, VECTORS, 2, lam=1.5)
    with pytest.raises(ValueError, match="shape of candidates"):
        mmr_rerank(cand, rel[:, :1], VECTORS, 2)
    with pytest.raises(ValueError, match="finite for every candidate; row 0"):
        mmr_rerank(cand, np.array([[1.0, np.nan]]), VECTORS, 2)
    with pytest.raises(ValueError, match="zero or non-finite vector"):
        mmr_rerank(cand, rel, np.array([[1.0, 0.0], [0.0, 0.0]]), 2)
    with pytest.raises(ValueError, match="only 3 rows"):
        mmr_rerank(np.array([[0, 3]]), rel, VECTORS, 2)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        mmr_rerank(cand, rel, VECTORS, 0)
    with pytest.raises(TypeError, match="integer item ids"):
        mmr_rerank(cand.astype(float), rel, VECTORS, 2)
