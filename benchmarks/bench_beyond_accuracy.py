"""Beyond-accuracy metrics and MMR re-ranking, vectorised against plain loops, side by side in one run.

1. Intra-list diversity@K for every user: ``ecrec.metrics.intra_list_diversity_at_k``
   (``|sum v|^2`` per list, no similarity matrix) against scipy's ``pdist``
   called once per user, on MiniLM-sized vectors (384 dimensions).
2. MMR re-ranking of each user's top 100 to a top 10: ``ecrec.rerank.mmr_rerank``
   (vectorised over users, one argmax per list position) against
   Carbonell and Goldstein's greedy loop, one user and one candidate at a time.

Synthetic data (random unit vectors, random lists): the timings depend on the
sizes only. Both sides are checked equal before they are timed. No timed
assertion anywhere; the ratios are printed.

Run: ``python benchmarks/bench_beyond_accuracy.py [--users 400]`` (well under a minute on 2 cores).
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.spatial.distance import pdist

from ecrec import metrics as M
from ecrec.rerank import mmr_rerank
from ecrec.timing import best_of


def ild_loop(lists: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """ILD@k per user with one pdist call per user."""
    return np.array([pdist(vectors[row[:k]], "cosine").mean() for row in lists])


def mmr_loop(cand: np.ndarray, rel: np.ndarray, vectors: np.ndarray, k: int, lam: float) -> np.ndarray:
    """The greedy MMR loop per user and candidate, relevance min-max rescaled per user."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    out = np.full((len(cand), k), -1)
    for u in range(len(cand)):
        r = (rel[u] - rel[u].min()) / (rel[u].max() - rel[u].min())
        pool, chosen = list(range(cand.shape[1])), []
        while pool and len(chosen) < k:
            values = [lam * r[p] - (1 - lam) * max((float(unit[cand[u, p]] @ unit[cand[u, c]]) for c in chosen),
                                                   default=0.0) for p in pool]
            chosen.append(pool.pop(int(np.argmax(values))))
        out[u, : len(chosen)] = cand[u, chosen]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--items", type=int, default=3659)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.items, 384))
    lists = np.stack([rng.choice(args.items, 100, replace=False) for _ in range(args.users)])
    rel = -np.sort(-rng.normal(size=lists.shape), axis=1)

    for k in (10, 50):
        fast_s, fast = best_of(lambda k=k: M.intra_list_diversity_at_k(lists, vectors, k, per_user=True),
                               args.repeats)
        loop_s, slow = best_of(lambda k=k: ild_loop(lists, vectors, k), args.repeats)
        assert np.allclose(fast, slow, atol=1e-6)
        print(f"ILD@{k}, {args.users} users: vectorised {fast_s * 1e3:.1f} ms, pdist per user {loop_s * 1e3:.1f} ms, "
              f"ratio loop / vectorised {loop_s / fast_s:.1f}x")

    n_loop = min(args.users, 50)  # the loop is slow: time it on fewer users, compare per user
    fast_s, fast = best_of(lambda: mmr_rerank(lists, rel, vectors, 10, lam=0.5), args.repeats)
    loop_s, slow = best_of(lambda: mmr_loop(lists[:n_loop], rel[:n_loop], vectors, 10, 0.5), 1)
    assert np.array_equal(fast[:n_loop], slow)
    per_fast, per_loop = fast_s / args.users, loop_s / n_loop
    print(f"MMR top 100 -> 10, lam 0.5: vectorised {per_fast * 1e3:.3f} ms per user ({args.users} users, "
          f"{fast_s * 1e3:.0f} ms), loop {per_loop * 1e3:.2f} ms per user ({n_loop} users); ratio {per_loop / per_fast:.0f}x")


if __name__ == "__main__":
    main()
