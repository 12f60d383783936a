"""Beyond accuracy: novelty, intra-list diversity, popularity bias and exposure of recommended lists.

Accuracy metrics (:mod:`ecrec.metrics`) ask whether the user's purchases are
in the list. These ask what the lists look like, whatever the user bought:
how surprising the recommended items are (novelty), how different from each
other (intra-list diversity), how much of the exposure goes to the few most
popular items (popularity bias), and how exposure is shared between groups
of items (e.g. price bands). Catalogue coverage is
:func:`ecrec.metrics.catalogue_coverage`. Every function is re-exported by
:mod:`ecrec.metrics`.

Input conventions are those of :mod:`ecrec.metrics`: ``retrieved`` is an
(n_users, L) integer array of item ids (0..n_items-1), best first, -1 =
padding; each row is deduplicated first (first occurrence kept), then cut to
``k``; a list shorter than ``k`` counts only its items (no slot is invented).
With ``scores`` (non-increasing along each row), items of equal score form a
tie group and every metric is the EXACT expectation over a uniformly random
order within the group tied at the cut-off, the book's one tie rule. Every
metric depends on the item *set* of the top ``k`` only (not its order), and
the number of items in a top ``k`` does not depend on the tie order, so the
expectation of each ratio below is the ratio of expectations.

Sources: Zhou et al. (2010, "Solving the apparent diversity-accuracy dilemma
of recommender systems", PNAS) for novelty as self-information; Vargas and
Castells (2011, "Rank and relevance in novelty and diversity metrics for
recommender systems", RecSys) for the same quantity as ``-log2 p(seen|i)``;
Smyth and McClave (2001) and Ziegler et al. (2005) for intra-list
diversity; Abdollahpouri et al. (2019, "The unfairness of popularity bias in
recommendation") for the exposure share of the popular head.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ecrec.metrics import _as_id_matrix, _check_k, _Ranked, dedupe_rows

__all__ = [
    "novelty_at_k", "intra_list_diversity_at_k", "popularity_head", "popularity_bias_at_k",
    "exposure_by_group_at_k",
]

_CHUNK_FLOATS = 1 << 23  # rows of (users, width, dim) vectors per chunk: 64 MB of float64


def _top_k_weights(retrieved, k: int, scores, n_items: int, who: str) -> tuple[np.ndarray, np.ndarray]:
    """The deduplicated top-``k`` items and each one's probability of being in it.

    Returns:
        ``(items, p)``: int64 (n_users, w) item ids (-1 padding) and float64
        (n_users, w) inclusion probabilities, 1 or 0 without ties; with
        ``scores``, the group tied at the cut-off gets (free slots) / (group
        size) each, and ``w`` reaches the last column any row may include.

    Raises:
        ValueError: no row, ``k`` not a positive integer, an item id >= ``n_items``,
            malformed ``scores`` (see :func:`ecrec.metrics.recall_at_k`).
        TypeError: ``retrieved`` not integer.
    """
    k = _check_k(k)
    arr = _as_id_matrix(retrieved)
    if arr.shape[0] == 0:
        raise ValueError(f"{who}: retrieved has no rows (no user): nothing to measure")
    if scores is None:
        items = dedupe_rows(arr, k)
        p = (items >= 0).astype(np.float64)
    else:  # relevance plays no role: a dummy "relevant" column keeps _Ranked's checks (as catalogue_coverage)
        ranked = _Ranked(arr, [[0]] * arr.shape[0], k, scores)
        p, items = ranked.inclusion(k), ranked.full_top
        width = int(np.flatnonzero((p > 0).any(0)).max()) + 1 if (p > 0).any() else 1
        items, p = items[:, :width], p[:, :width]
    used = items[p > 0]
    if used.size and used.max() >= n_items:
        raise ValueError(f"{who}: retrieved holds item id {int(used.max())} but only {n_items} items are described "
                         f"(ids must be 0..{n_items - 1})")
    return items, p


def _finish(values: np.ndarray, per_user: bool, who: str, empty: str):
    if per_user:
        return values
    if np.isnan(values).all():
        raise ValueError(f"{who}: {empty} in any row: the mean is undefined")
    return float(np.nanmean(values))


def novelty_at_k(
    retrieved, item_users, n_train_users: int, k: int, *, scores=None, pseudo_count: float = 1.0,
    per_user: bool = False,
):
    """Novelty@K: mean self-information ``-log2 p(i)`` of the recommended items, in bits.

    ``p(i)`` is the share of training users who interacted with item ``i``
    (Zhou et al., 2010: ``I_i = log2(U / k_i)`` with ``k_i`` the item's
    degree; Vargas and Castells, 2011: ``-log2 p(seen | i)``, the same
    quantity), smoothed so that an item no training user touched (a cold
    item) is finite: ``p(i) = (k_i + s) / (U + s)`` with ``s`` =
    ``pseudo_count``. An item every user bought scores 0 bits; one bought by 1
    of 1,024 users scores about 10. Per user: the mean over the items of the
    top K; then the mean over users with at least one item.

    Args:
        retrieved: (n_users, L) int item ids, best first, -1 padding.
        item_users: (n_items,) int, distinct training users per item (>= 0, <= ``n_train_users``).
        n_train_users: U, the number of training users (>= 1).
        k: cut-off, a positive integer.
        scores: optional (n_users, L) non-increasing scores (ties: expectation over their orders).
        pseudo_count: ``s`` >= 0; with 0, an item of zero count in a list is an error.
        per_user: return the float64 (n_users,) values (NaN for an empty list).

    Returns:
        Mean novelty in bits (float >= 0), or the per-user array.

    Raises:
        ValueError: ``item_users`` not 1-D, negative, NaN, above ``n_train_users``
            or not whole; ``n_train_users < 1``; ``pseudo_count < 0``; a listed
            item of zero count with ``pseudo_count=0``; every list empty; and
            what :func:`ecrec.metrics.recall_at_k` raises for ``retrieved``,
            ``k`` and ``scores``.
        TypeError: ``retrieved`` not integer.
    """
    counts = _counts(item_users, "item_users")
    if isinstance(n_train_users, bool) or not isinstance(n_train_users, (int, np.integer)) or n_train_users < 1:
        raise ValueError(f"n_train_users must be a positive integer (the training users), got {n_train_users!r}")
    if counts.size and counts.max() > n_train_users:
        raise ValueError(f"item_users holds {int(counts.max())} users for item {int(counts.argmax())}, more than "
                         f"n_train_users={n_train_users}: count distinct users per item in the same training data")
    if not pseudo_count >= 0:
        raise ValueError(f"pseudo_count must be >= 0, got {pseudo_count!r}")
    items, p = _top_k_weights(retrieved, k, scores, len(counts), "novelty_at_k")
    ids = np.maximum(items, 0)
    zero = (p > 0) & (counts[ids] + pseudo_count == 0)
    if zero.any():
        raise ValueError(f"novelty_at_k: item {int(items[zero][0])} has no training user and pseudo_count=0: its "
                         "self-information is infinite; pass pseudo_count > 0 (e.g. 1)")
    with np.errstate(divide="ignore"):
        info = np.log2(n_train_users + pseudo_count) - np.log2(counts + pseudo_count)
    total = p.sum(1)
    with np.errstate(invalid="ignore"):
        values = np.where(p > 0, p * info[ids], 0.0).sum(1) / total
    return _finish(np.where(total > 0, values, np.nan), per_user, "novelty_at_k", "no item was recommended")


def _counts(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (n_items,), one count per item, got shape {arr.shape}")
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)):
        raise TypeError(f"{name} must be numeric counts, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr) | (arr < 0) | (arr != np.round(arr))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must hold whole counts >= 0; found {float(arr[i])!r} at item {i}")
    return arr


def _unit_rows(item_vectors, items: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The listed items' L2-normalised vectors: (float64 (m, dim) for the m distinct listed items, int64 positions
    of ``items`` in them (0 where not listed)). Only listed vectors are read and checked."""
    v = np.asarray(item_vectors)
    listed = np.unique(items[p > 0])
    sub = v[listed].astype(np.float64, copy=False)  # the gather already copied
    if not np.isfinite(sub).all():
        i = int(listed[np.flatnonzero(~np.isfinite(sub).all(1))[0]])
        raise ValueError(f"item_vectors has NaN or inf in the vector of item {i}")
    norm = np.linalg.norm(sub, axis=1)
    if (norm == 0).any():
        raise ValueError(f"intra_list_diversity_at_k: item {int(listed[norm == 0][0])} has a zero vector: "
                         "its cosine distance is undefined; give it a vector or drop it from the lists")
    pos = np.where(p > 0, np.searchsorted(listed, np.maximum(items, 0)), 0)
    return sub / norm[:, None], np.minimum(pos, max(len(listed) - 1, 0))


def intra_list_diversity_at_k(retrieved, item_vectors, k: int, *, scores=None, per_user: bool = False):
    """ILD@K: mean pairwise cosine distance ``1 - cos(v_a, v_b)`` within each top K (Ziegler et al., 2005).

    ``ILD(L) = 2 / (n (n - 1)) * sum_{a < b in L} (1 - cos(v_a, v_b))`` over
    the ``n`` items of a user's top K, then the mean over users with at least
    two items (a single item has no pair: NaN per user). It lies in [0, 2]: 0
    for a list of identical vectors (e.g. one product in several colours with
    the same description), 1 for orthogonal ones. Computed without the
    (n, n) similarity matrix: for unit vectors, ``sum_{a != b} v_a . v_b =
    |sum_a v_a|^2 - n``; with ``scores``, pairs are weighted by their
    probability of both being in the top K (within the group tied at the
    cut-off, m free slots of g: ``m (m - 1) / (g (g - 1))``).

    Args:
        retrieved: (n_users, L) int item ids, best first, -1 padding.
        item_vectors: (n_items, dim) float item vectors, e.g. MiniLM
            description embeddings (normalised here; their scale is irrelevant).
        k: cut-off, a positive integer.
        scores: optional (n_users, L) non-increasing scores (ties: expectation over their orders).
        per_user: return the float64 (n_users,) values (NaN for lists under 2 items).

    Returns:
        Mean ILD@K (float in [0, 2]), or the per-user array.

    Raises:
        ValueError: ``item_vectors`` not 2-D, or with NaN/inf or a zero vector
            for a listed item (cosine undefined); no list with 2 items; and what
            :func:`ecrec.metrics.recall_at_k` raises for ``retrieved``, ``k`` and ``scores``.
        TypeError: ``retrieved`` or ``item_vectors`` not numeric.
    """
    v = np.asarray(item_vectors)
    if v.ndim != 2 or v.shape[1] == 0:
        raise ValueError(f"item_vectors must be 2-D (n_items, dim), got shape {v.shape}")
    if v.dtype == object or not np.issubdtype(v.dtype, np.number):
        raise TypeError(f"item_vectors must be numeric, got dtype {v.dtype}")
    items, p = _top_k_weights(retrieved, k, scores, len(v), "intra_list_diversity_at_k")
    unit, pos = _unit_rows(v, items, p)
    sim_sum, pair_sum = np.zeros(len(items)), np.zeros(len(items))
    step = max(1, _CHUNK_FLOATS // max(items.shape[1] * unit.shape[1], 1))
    for s in range(0, len(items), step):
        sl = slice(s, s + step)
        sim_sum[sl], pair_sum[sl] = _pair_sums(pos[sl], p[sl], unit)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(pair_sum > 0.5, 1.0 - sim_sum / np.where(pair_sum > 0.5, pair_sum, 1.0), np.nan)
    return _finish(values, per_user, "intra_list_diversity_at_k", "fewer than 2 items were recommended")


def _pair_sums(pos: np.ndarray, p: np.ndarray, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: sum over ordered pairs a != b of P(both in top K) * cos(a, b), and of P(both in top K)."""
    x = unit[pos]  # (n, w, dim); slots with p = 0 weigh nothing below
    s = (p[:, None, :] @ x)[:, 0]
    sq = (p * p).sum(1)
    sim = (s * s).sum(1) - sq  # sum_{a != b} p_a p_b cos(a, b), unit vectors
    pairs = p.sum(1) ** 2 - sq
    part = (p > 0) & (p < 1)  # the one tie group crossing the cut-off: P(both in) = m(m-1)/(g(g-1)), not (m/g)^2
    if part.any():
        g = part.sum(1).astype(np.float64)
        m = np.where(part, p, 0.0).sum(1)
        delta = np.where(g > 1, m * (m - 1) / np.maximum(g * (g - 1), 1) - (m / np.maximum(g, 1)) ** 2, 0.0)
        s_part = (part.astype(np.float64)[:, None, :] @ x)[:, 0]
        sim += delta * ((s_part * s_part).sum(1) - g)
        pairs += delta * g * (g - 1)
    return sim, pairs


def popularity_head(popularity, head_share: float = 0.1) -> np.ndarray:
    """Each item's membership of the popular head: the ``head_share`` most popular items of the catalogue.

    The head holds ``h = ceil(head_share * n_items)`` items. Items more popular
    than the h-th one are in (1.0); items tied with it share the places left
    (each gets places / group size), the expectation over a random order of
    the tie: no item is in or out because of its id.

    Args:
        popularity: (n_items,) float >= 0, e.g. distinct training buyers per item.
        head_share: in (0, 1].

    Returns:
        float64 (n_items,) in [0, 1], summing to ``h``.

    Raises:
        ValueError: ``popularity`` not 1-D, empty, NaN or negative; ``head_share`` outside (0, 1].
    """
    pop = np.asarray(popularity)
    if pop.ndim != 1 or pop.size == 0:
        raise ValueError(f"popularity must be 1-D (n_items,) and non-empty, got shape {pop.shape}")
    if pop.dtype == object or not np.issubdtype(pop.dtype, np.number):
        raise TypeError(f"popularity must be numeric, got dtype {pop.dtype}")
    pop = pop.astype(np.float64)
    if not (np.isfinite(pop).all() and (pop >= 0).all()):
        i = int(np.flatnonzero(~(np.isfinite(pop) & (pop >= 0)))[0])
        raise ValueError(f"popularity must be finite and >= 0; found {float(pop[i])!r} at item {i}")
    if not 0 < head_share <= 1:
        raise ValueError(f"head_share is the share of the catalogue in the head, in (0, 1] (e.g. 0.1), "
                         f"got {head_share!r}")
    h = int(np.ceil(head_share * pop.size - 1e-9))
    kth = np.sort(pop)[::-1][h - 1]
    above = pop > kth
    tied = pop == kth
    return np.where(above, 1.0, np.where(tied, (h - above.sum()) / tied.sum(), 0.0))


def popularity_bias_at_k(
    retrieved, popularity, k: int, *, head_share: float = 0.1, scores=None, per_user: bool = False,
):
    """Share of the top-K slots taken by the most popular ``head_share`` of the catalogue.

    All filled slots of all users are pooled (the exposure the head gets):
    ``sum_u |top_K(u) ∩ head| / sum_u |top_K(u)|``, with the head of
    :func:`popularity_head` (ties at its edge count fractionally). A list
    that ignored popularity would score about ``head_share``; a list of the
    most popular items (by the same ``popularity``) scores 1. See Abdollahpouri et al. (2019) for the
    exposure view of popularity bias.

    Args:
        retrieved: (n_users, L) int item ids, best first, -1 padding.
        popularity: (n_items,) float >= 0, popularity in the TRAINING data
            (e.g. distinct buyers before the test window).
        k: cut-off, a positive integer.
        head_share: the share of the catalogue called the head, in (0, 1].
        scores: optional (n_users, L) non-increasing scores (ties: expectation over their orders).
        per_user: return each user's own share, float64 (n_users,) (NaN for an empty list).

    Returns:
        The pooled share in [0, 1], or the per-user array.

    Raises:
        ValueError: as :func:`popularity_head`; every list empty; and what
            :func:`ecrec.metrics.recall_at_k` raises for ``retrieved``, ``k`` and ``scores``.
        TypeError: ``retrieved`` or ``popularity`` not numeric.
    """
    head = popularity_head(popularity, head_share)
    items, p = _top_k_weights(retrieved, k, scores, len(head), "popularity_bias_at_k")
    in_head = np.where(p > 0, p * head[np.maximum(items, 0)], 0.0).sum(1)
    total = p.sum(1)
    if per_user:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, in_head / np.where(total > 0, total, 1.0), np.nan)
    if total.sum() == 0:
        raise ValueError("popularity_bias_at_k: no item was recommended in any row: the share is undefined")
    return float(in_head.sum() / total.sum())


def exposure_by_group_at_k(retrieved, groups, k: int, *, scores=None) -> pd.DataFrame:
    """How the top-K slots of all users are shared between groups of items (e.g. price bands).

    Columns:

    * ``exposure``: the group's share of all filled top-K slots (pooled over
      users; sums to 1 over groups);
    * ``catalogue``: the group's share of the catalogue's items (sums to 1);
    * ``ratio`` = exposure / catalogue: 1 when a group is shown in proportion
      to its size, above 1 over-exposed, below 1 under-exposed, 0 never shown.

    Args:
        retrieved: (n_users, L) int item ids, best first, -1 padding.
        groups: (n_items,) the group label of every item (strings, numbers or
            a pandas Categorical, whose category order is kept; otherwise
            groups are sorted).
        k: cut-off, a positive integer.
        scores: optional (n_users, L) non-increasing scores (ties: expectation over their orders).

    Returns:
        ``pandas.DataFrame`` indexed by group (named ``group``), columns
        ``exposure``, ``catalogue``, ``ratio``, ``items``, ``slots`` (the
        expected number of slots).

    Raises:
        ValueError: ``groups`` not 1-D or with a missing label (NaN/None); every
            list empty; and what :func:`ecrec.metrics.recall_at_k` raises for
            ``retrieved``, ``k`` and ``scores``.
        TypeError: ``retrieved`` not integer.
    """
    if np.ndim(groups) != 1:
        raise ValueError(f"groups must be 1-D (n_items,), one label per item, got shape {np.shape(groups)}")
    labels = groups.reset_index(drop=True) if isinstance(groups, pd.Series) else pd.Series(groups)
    if labels.isna().any():
        i = int(np.flatnonzero(labels.isna().to_numpy())[0])
        raise ValueError(f"groups has no label for item {i}; give every item a group (e.g. 'unknown')")
    if isinstance(labels.dtype, pd.CategoricalDtype):  # keep the category order, drop unused ones
        labels = labels.cat.remove_unused_categories()
        codes, uniques = labels.cat.codes.to_numpy(), labels.cat.categories
    else:
        codes, uniques = pd.factorize(labels, sort=True)
    items, p = _top_k_weights(retrieved, k, scores, len(codes), "exposure_by_group_at_k")
    ok = p > 0
    slots = np.bincount(codes[items[ok]], weights=p[ok], minlength=len(uniques))
    if slots.sum() == 0:
        raise ValueError("exposure_by_group_at_k: no item was recommended in any row: exposure is undefined")
    n_in = np.bincount(codes, minlength=len(uniques))
    table = pd.DataFrame({"exposure": slots / slots.sum(), "catalogue": n_in / n_in.sum()},
                         index=pd.Index(list(uniques), name="group"))
    table["ratio"] = table["exposure"] / table["catalogue"]
    table["items"] = n_in
    table["slots"] = slots
    return table
