"""Re-ranking for diversity: maximal marginal relevance (MMR).

A ranker scores each candidate on its own, so its top 10 can be ten near
copies of one product. MMR (Carbonell and Goldstein, 1998, "The use of MMR,
diversity-based reranking for reordering documents and producing summaries",
SIGIR) builds the list greedily: at each step it takes the candidate that
maximises

    lam * rel(i) - (1 - lam) * max_{j already chosen} sim(i, j),

relevance traded against redundancy with what is already in the list. With
``lam = 1`` it is the ranker's order; with ``lam = 0`` pure novelty with
respect to the list. Here ``sim`` is the cosine similarity of item vectors
(e.g. MiniLM description embeddings) and ``rel`` the ranker's score,
rescaled to [0, 1] within each user's candidates by default so that ``lam``
means the same for every user and every ranker. The greedy loop runs over
list positions (``k`` steps) and is vectorised over users.
"""

from __future__ import annotations

import numpy as np

from ecrec.metrics import _as_id_matrix, _check_k, _dedupe_source

__all__ = ["mmr_rerank"]

_CHUNK_FLOATS = 1 << 23  # users per chunk: (users, candidates, dim) float64 vectors of about 64 MB


def mmr_rerank(
    candidates, relevance, item_vectors, k: int, *, lam: float = 0.5, normalize: bool = True,
) -> np.ndarray:
    """Maximal marginal relevance re-ranking of each user's candidates (Carbonell and Goldstein, 1998).

    Step ``t`` picks, per user, the not yet chosen candidate with the largest
    ``lam * rel - (1 - lam) * max_sim`` (``max_sim``: its largest cosine
    similarity to the items chosen so far; 0 at the first step, so the first
    item is the most relevant). Equal values go to the candidate listed
    first, so with ``lam = 1`` the output is the candidates sorted by
    relevance, stably: a list already sorted by relevance comes back in its
    own order.

    Args:
        candidates: (n_users, L) int item ids, -1 = padding; each row is
            deduplicated first (first occurrence kept, with its relevance).
        relevance: (n_users, L) float scores of the candidates (higher =
            better; any scale, e.g. logits); ignored at padding.
        item_vectors: (n_items, dim) float item vectors; cosine similarity.
        k: length of the re-ranked lists (>= 1); rows with fewer candidates are padded with -1.
        lam: the trade-off in [0, 1]: 1 = relevance only, 0 = diversity only.
        normalize: rescale relevance to [0, 1] within each row (min-max over
            its candidates; a row of equal scores becomes all 0), so that
            relevance and similarity share a scale. ``False``: use it as given.

    Returns:
        int64 (n_users, k) item ids, -1 padded.

    Raises:
        ValueError: ``lam`` outside [0, 1]; ``k`` not a positive integer;
            shapes that differ; relevance NaN or infinite for a candidate;
            ``item_vectors`` not 2-D, non-finite, or zero for a candidate;
            a candidate id >= n_items; ids below -1.
        TypeError: ``candidates`` not integer.
    """
    k = _check_k(k)
    if not 0 <= lam <= 1:
        raise ValueError(f"lam is the weight of relevance, in [0, 1] (1 = the ranker's order), got {lam!r}")
    cand = _as_id_matrix(candidates)
    rel = np.asarray(relevance, dtype=np.float64)
    if rel.shape != cand.shape:
        raise ValueError(f"relevance must have the shape of candidates {cand.shape}, got {rel.shape}")
    cand, src = _dedupe_source(cand)
    rel = np.where(cand >= 0, np.take_along_axis(rel, np.maximum(src, 0), axis=1), -np.inf)
    real = cand >= 0
    bad = real & ~np.isfinite(rel)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"relevance must be finite for every candidate; row {r} has {float(rel[r, c])!r} for item "
                         f"{cand[r, c]} (give padding the id -1 instead)")
    unit = _unit(item_vectors, cand[real])
    rel = np.where(real, rel, 0.0)  # padding is never chosen (masked in the loop); 0 keeps lam * rel finite
    if normalize:
        rel = _minmax(rel, real)
    out = np.full((len(cand), k), -1, dtype=np.int64)
    step = max(1, _CHUNK_FLOATS // max(cand.shape[1] * unit.shape[1], 1))
    for s in range(0, len(cand), step):
        sl = slice(s, s + step)
        out[sl] = _greedy(cand[sl], rel[sl], unit, k, lam)
    return out


def _unit(item_vectors, used: np.ndarray) -> np.ndarray:
    """float64 (n_items, dim) L2-normalised vectors; checks the ones ``used``."""
    v = np.asarray(item_vectors)
    if v.ndim != 2 or v.shape[1] == 0:
        raise ValueError(f"item_vectors must be 2-D (n_items, dim), got shape {v.shape}")
    if v.dtype == object or not np.issubdtype(v.dtype, np.number):
        raise TypeError(f"item_vectors must be numeric, got dtype {v.dtype}")
    if used.size and used.max() >= len(v):
        raise ValueError(f"candidates hold item id {int(used.max())} but item_vectors has only {len(v)} rows")
    v = v.astype(np.float64)
    norm = np.linalg.norm(v, axis=1)
    bad = ~np.isfinite(norm[used]) | (norm[used] == 0)
    if bad.any():
        raise ValueError(f"item {int(used[bad][0])} has a zero or non-finite vector: its similarity is undefined")
    return v / np.where(np.isfinite(norm) & (norm > 0), norm, 1.0)[:, None]


def _minmax(rel: np.ndarray, real: np.ndarray) -> np.ndarray:
    lo = np.where(real, rel, np.inf).min(1, keepdims=True)
    hi = np.where(real, rel, -np.inf).max(1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.where(real, (rel - np.where(np.isfinite(lo), lo, 0.0)) / span, 0.0)


def _greedy(cand: np.ndarray, rel: np.ndarray, unit: np.ndarray, k: int, lam: float) -> np.ndarray:
    """The MMR loop for one chunk of users: k argmax steps over (users, L)."""
    n, width = cand.shape
    rows = np.arange(n)
    x = unit[np.maximum(cand, 0)]  # (n, L, dim)
    open_ = cand >= 0
    max_sim = np.zeros((n, width))  # nothing chosen yet: no redundancy
    out = np.full((n, k), -1, dtype=np.int64)
    for t in range(min(k, width)):
        gain = np.where(open_, lam * rel - (1.0 - lam) * max_sim, -np.inf)
        j = np.argmax(gain, axis=1)  # the first of equal values: the candidate listed first
        ok = open_[rows, j]
        out[:, t] = np.where(ok, cand[rows, j], -1)
        open_[rows[ok], j[ok]] = False
        sim = np.einsum("nld,nd->nl", x, x[rows, j])
        max_sim = sim if t == 0 else np.maximum(max_sim, sim)
    return out
