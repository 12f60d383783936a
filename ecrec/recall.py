"""Chapter 05's candidate generators, FAISS retrieval and list utilities.

Recall (candidate generation) picks a few hundred items out of the catalogue
for each user; a ranker (chapters 03 and 04) orders them. Every generator here
returns the same thing, a ``(n_users, K)`` int64 array of item indexes (``item_idx``), best
first, padded with -1, so that one evaluation (:mod:`ecrec.metrics`) serves all.

Tie policy: whenever scores tie, the lower item index comes first
(:func:`top_k`, :func:`faiss_search`; the latter holds at the cut-off when
``tie_margin`` covers the largest group of identical item vectors), so lists
are deterministic.

Generators: :func:`popular_scores` (most popular over a recent window),
:func:`item_cosine` (item-to-item CF from co-purchases), :func:`fit_als`
(matrix factorisation, Hu, Koren and Volinsky, 2008, via ``implicit``),
MiniLM two-tower zero-shot (:func:`user_vectors` over description embeddings)
and fine-tuned with in-batch negatives (:class:`ItemTower`,
:func:`train_two_tower`; Yi et al., 2019, "Sampling-bias-corrected neural
modeling"), and :func:`interleave` to merge them into a hybrid.

Modules: the protocol's data is :mod:`ecrec.recall_data`, the two-tower
:mod:`ecrec.two_tower`; both are re-exported here so that a chapter needs one
``from ecrec import recall as R``.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ecrec.metrics import dedupe_rows
from ecrec.recall_data import RecallData, build_recall_data, recency_weights
from ecrec.schema import ITEM_IDX, TS, USER_ID
from ecrec.two_tower import (
    ItemTower,
    Pairs,
    encode_with_cache,
    in_batch_eval,
    in_batch_logits,
    sample_pairs,
    target_log_q,
    train_two_tower,
)

__all__ = [
    "top_k", "popular_scores", "item_cosine", "fit_als", "als_fold_in", "pairs_matrix", "user_vectors", "cap_history", "build_index",
    "tie_margin", "faiss_search", "forget_search_plan", "ShortResultWarning", "with_fallback", "interleave", "per_1000_users",
    # re-exported from ecrec.recall_data and ecrec.two_tower
    "RecallData", "build_recall_data", "recency_weights", "encode_with_cache", "ItemTower", "Pairs",
    "sample_pairs", "target_log_q", "in_batch_logits", "in_batch_eval", "train_two_tower",
]


# --- ranking helpers ---------------------------------------------------------


def _exclusion_mask(exclude, n_rows: int, n_cols: int) -> np.ndarray:
    ex = sp.csr_array(exclude)
    if ex.shape != (n_rows, n_cols):
        raise ValueError(f"exclude has shape {ex.shape}, expected {(n_rows, n_cols)}")
    return ex.toarray() != 0


def top_k(
    scores: np.ndarray, k: int, *, exclude=None, min_score: float | None = None, return_scores: bool = False
):
    """Top ``k`` item indexes per row of a dense score matrix; ties: lower item index first.

    Tie policy (shared with :mod:`ecrec.metrics`): a list alone cannot say
    which items were tied, so the plain result lists tied items by lower id
    (deterministic). For evaluation pass ``return_scores=True`` and give the
    scores to the metrics (``scores=``): they then count every tie as the
    expectation over random orders. In that mode the list also holds the
    WHOLE group tied with the ``k``-th item (so it may be longer than ``k``),
    because a metric at K = ``k`` needs every member of the tie at its cut-off.

    Args:
        scores: float (n_users, n_items); higher is better. NaN is an error.
        k: list length, >= 1 (more than n_items pads with -1).
        exclude: optional sparse (n_users, n_items); non-zero entries are
            never returned (the user's history in the new-to-user setting).
        min_score: items scoring ``<= min_score`` are not candidates (e.g. 0
            for co-purchase scores: no co-purchase, no candidate).
        return_scores: also return the scores of the listed items, with the
            complete tie group at the cut-off (see above).

    Returns:
        int64 (n_users, k), -1 where fewer than ``k`` candidates remain; with
        ``return_scores``, ``(ids (n_users, k + e), scores float64 (n_users,
        k + e))`` where ``e`` is the largest number of items tied with a
        row's ``k``-th item beyond it (padding: id -1, score -inf).

    Raises:
        ValueError: not 2-D, NaN (the first entry is named), ``k < 1``, or
            ``exclude`` of another shape.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_users, n_items), got shape {s.shape}")
    if np.isnan(s).any():
        r, c = np.argwhere(np.isnan(s))[0]
        raise ValueError(f"scores contain NaN, e.g. row {r}, item {c}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, m = s.shape
    dropped = np.zeros((n, m), dtype=bool)
    if exclude is not None:
        dropped |= _exclusion_mask(exclude, n, m)
    if min_score is not None:
        dropped |= s <= min_score
    s = np.where(dropped, -np.inf, s)
    kk = min(k, m)
    # A stable sort of -score keeps equal scores in item-id order.
    order = np.argsort(-s, axis=1, kind="stable")
    best = np.take_along_axis(s, order, axis=1)
    width = kk
    if return_scores and kk < m and n:
        kth = best[:, kk - 1]
        tied = (best[:, kk:] == kth[:, None]) & (kth[:, None] > -np.inf)
        width = kk + int(tied.sum(1).max())
    ids = np.where(best[:, :width] > -np.inf, order[:, :width], -1).astype(np.int64)
    vals = np.where(ids >= 0, best[:, :width], -np.inf)
    if return_scores and width > kk:  # only the tie groups reach past k
        kth = best[:, kk - 1][:, None]
        beyond = np.arange(width)[None, :] >= kk
        off = beyond & (vals != kth)
        ids, vals = np.where(off, -1, ids), np.where(off, -np.inf, vals)
    if k > width:
        ids = np.hstack([ids, np.full((n, k - width), -1, dtype=np.int64)])
        vals = np.hstack([vals, np.full((n, k - width), -np.inf)])
    return (ids, vals) if return_scores else ids


def popular_scores(events: pd.DataFrame, n_items: int, since, until) -> np.ndarray:
    """Distinct buyers of each item with a purchase in ``[since, until)``.

    Args:
        events: columns ``user_id``, ``item_idx``, ``ts`` (:attr:`RecallData.events`).

    Returns:
        float64 (n_items,) counts; use with :func:`top_k` on a broadcast row.

    Raises:
        KeyError: ``events`` lacks ``user_id``, ``item_idx`` or ``ts``.
        IndexError: an ``item_idx`` in the window is ``>= n_items``.
        TypeError: ``since``/``until`` cannot be compared with ``ts`` (e.g. a
            tz-naive bound against tz-aware times).
    """
    window = events[(events[TS] >= since) & (events[TS] < until)]
    counts = window.groupby(ITEM_IDX)[USER_ID].nunique()
    out = np.zeros(n_items)
    out[counts.index.to_numpy()] = counts.to_numpy()
    return out


def item_cosine(train_matrix) -> sp.csr_array:
    """Item-item cosine similarity of co-purchases (Sarwar et al., 2001; Linden et al., 2003).

    ``S_ij = |U_i & U_j| / sqrt(|U_i| |U_j|)`` with U_i the users who bought
    item i (binarised), diagonal set to 0. Score a user with ``h @ S`` (h the
    user's history weights).

    Args:
        train_matrix: sparse (n_users, n_items), non-zero = bought.

    Returns:
        csr_array (n_items, n_items) float64, symmetric, values in [0, 1].

    Raises:
        ValueError, TypeError: ``train_matrix`` is not a 2-D numeric matrix
            (scipy's own errors, e.g. for a scalar or a 1-D array).
    """
    x = sp.csr_array(train_matrix, dtype=np.float64, copy=True)  # never binarise the caller's counts
    x.data[:] = 1.0
    co = sp.csr_array(x.T @ x)
    norms = np.sqrt(co.diagonal())
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    sim = sp.csr_array(sp.diags_array(inv) @ co @ sp.diags_array(inv))
    sim.setdiag(0.0)
    sim.eliminate_zeros()
    return sim


def fit_als(
    train_matrix,
    *,
    factors: int = 64,
    regularization: float = 0.05,
    alpha: float = 10.0,
    iterations: int = 15,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Implicit-feedback ALS (Hu, Koren and Volinsky, 2008) with ``implicit``'s CPU solver.

    Confidence ``1 + alpha * r`` on the counts of ``train_matrix``; one thread
    and ``random_state=seed`` so that the factors are the same run after run.
    BLAS is limited to one thread (``threadpool_limits(1, "blas")``) while the
    model is built and fitted: implicit checks the BLAS thread count when the
    model is *constructed* and warns (``RuntimeWarning: OpenBLAS is configured
    to use N threads``) otherwise.

    Returns:
        (user_factors (n_users, factors), item_factors (n_items, factors)), float32.
        Items never bought get (near) zero factors: ALS cannot score them.

    Raises:
        ValueError: ``factors`` or ``iterations`` < 1.
    """
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    if factors < 1 or iterations < 1:
        raise ValueError(f"factors and iterations must be >= 1, got {factors}, {iterations}")
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=factors, regularization=regularization, alpha=alpha, iterations=iterations,
            random_state=seed, num_threads=1,
        )
        model.fit(sp.csr_matrix(train_matrix, dtype=np.float32), show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


def als_fold_in(item_factors: np.ndarray, counts, *, regularization: float = 0.05, alpha: float = 10.0) -> np.ndarray:
    """User factors of users ALS never saw, from fixed item factors (one exact least-squares step).

    The user half of an ALS iteration (Hu, Koren and Volinsky, 2008) with
    ``implicit``'s convention (confidence ``c = alpha * r`` on observed items,
    preference 1): ``x_u = (Y^T Y + Y^T (C_u - I) Y + reg I)^-1 Y^T C_u p_u``.
    It lets an ALS model trained on some users serve others from their history,
    as a text tower does: what a learning curve over training sizes needs.
    Same numbers as ``implicit``'s ``recalculate_user`` (tests/test_recall.py).

    Args:
        item_factors: float (n_items, f), e.g. the second value of :func:`fit_als`.
        counts: sparse (n_users, n_items) counts >= 0 (e.g. ``RecallData.history_count``).
        regularization, alpha: as :func:`fit_als`.

    Returns:
        float32 (n_users, f); all-zero rows for users without history.

    Raises:
        ValueError: ``counts`` has another number of items than ``item_factors``, or a negative count.
    """
    y = np.asarray(item_factors, dtype=np.float64)
    c = sp.csr_array(counts, dtype=np.float64)
    if c.shape[1] != y.shape[0]:
        raise ValueError(f"counts has {c.shape[1]} items but item_factors has {y.shape[0]} rows")
    if (c.data < 0).any():
        raise ValueError("counts must be >= 0 (purchases per user and item)")
    base = y.T @ y + regularization * np.eye(y.shape[1])
    out = np.zeros((c.shape[0], y.shape[1]), dtype=np.float32)
    for u in range(c.shape[0]):
        cols = c.indices[c.indptr[u] : c.indptr[u + 1]]
        if cols.size:
            conf = alpha * c.data[c.indptr[u] : c.indptr[u + 1]]
            yu = y[cols]
            out[u] = np.linalg.solve(base + (yu * (conf - 1.0)[:, None]).T @ yu, yu.T @ conf)
    return out


def pairs_matrix(pairs: Pairs, n_items: int) -> tuple[np.ndarray, sp.csr_array]:
    """The (user, item) purchases that training pairs contain, as an ID model's training matrix.

    A pair (history -> target) of user u tells a model that u bought its
    target and its history items; an ID model trained "on the same examples"
    as a two-tower fine-tuned on ``pairs`` gets exactly these entries (value 1
    per distinct (user, item)).

    Args:
        pairs: :class:`Pairs` with ``user`` (from :func:`sample_pairs`).
        n_items: catalogue size.

    Returns:
        ``(users (n_users,) sorted user ids, csr_array (n_users, n_items) float64 of 0/1)``.

    Raises:
        ValueError: ``pairs.user`` is missing or an item index is outside 0..n_items-1.
    """
    if pairs.user is None:
        raise ValueError("pairs.user is missing: build the pairs with ecrec.recall.sample_pairs")
    hist = pairs.hist_items
    width = hist.shape[1] + 1
    items = np.column_stack([hist, pairs.target]).ravel()
    user = np.repeat(np.asarray(pairs.user), width)
    keep = items >= 0
    items, user = items[keep], user[keep]
    if items.size and items.max() >= n_items:
        raise ValueError(f"item index {int(items.max())} is outside the catalogue of {n_items} items")
    users, row = np.unique(user, return_inverse=True)
    m = sp.csr_array((np.ones(items.size), (row, items)), shape=(len(users), n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return users, m


def user_vectors(history, item_emb: np.ndarray) -> np.ndarray:
    """Recency-weighted mean of the history's item embeddings, L2-normalised.

    Args:
        history: sparse (n_users, n_items) recency weights (>= 0).
        item_emb: float (n_items, d).

    Returns:
        float32 (n_users, d); all-zero rows for users without history.

    Raises:
        ValueError: column count differs from the number of item embeddings.
    """
    h = sp.csr_array(history, dtype=np.float64)
    if h.shape[1] != item_emb.shape[0]:
        raise ValueError(f"history has {h.shape[1]} items but item_emb has {item_emb.shape[0]} rows")
    u = np.asarray(h @ item_emb.astype(np.float64))
    norms = np.linalg.norm(u, axis=1, keepdims=True)
    return np.divide(u, norms, out=np.zeros_like(u), where=norms > 0).astype(np.float32)


def cap_history(history, max_items: int) -> sp.csr_array:
    """Keep each user's ``max_items`` most recent distinct items (largest recency weights).

    The two-tower model is trained on histories of at most ``max_history``
    items (:func:`sample_pairs`); serving must cap the same way. Ties in
    weight keep the lower item index.

    Args:
        history: sparse (n_users, n_items) recency weights (>= 0).
        max_items: >= 1.

    Raises:
        ValueError: ``max_items < 1``.
    """
    if isinstance(max_items, bool) or not isinstance(max_items, (int, np.integer)) or max_items < 1:
        raise ValueError(f"max_items must be an integer >= 1, got {max_items!r}")
    h = sp.csr_array(history, dtype=np.float64)
    h.sort_indices()
    n = h.shape[0]
    rows = np.repeat(np.arange(n), np.diff(h.indptr))
    order = np.lexsort((h.indices, -h.data, rows))  # per row: largest weight first, then lower id
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - h.indptr[rows[order]]
    keep = rank < max_items
    out = sp.csr_array((h.data[keep], (rows[keep], h.indices[keep])), shape=h.shape)
    out.sort_indices()
    return out


def build_index(item_emb: np.ndarray, kind: str = "flat", *, hnsw_m: int = 32, ef_construction: int = 80):
    """A FAISS inner-product index over L2-normalised item vectors (so IP = cosine).

    Args:
        item_emb: float (n_items, d); normalised here (a copy).
        kind: ``"flat"`` (exact, ``IndexFlatIP``) or ``"hnsw"`` (approximate,
            ``IndexHNSWFlat``, Malkov and Yashunin, 2018). Built with one thread
            so that the HNSW graph is the same run after run.

    Raises:
        ValueError: unknown kind, not 2-D, or NaN.
    """
    import faiss

    x = np.ascontiguousarray(item_emb, dtype=np.float32).copy()
    if x.ndim != 2 or np.isnan(x).any():
        raise ValueError("item_emb must be a 2-D array without NaN")
    faiss.normalize_L2(x)
    d = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    else:
        raise ValueError(f"kind must be 'flat' or 'hnsw', got {kind!r}")
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.add(x)
    finally:
        faiss.omp_set_num_threads(threads)
    return index


def _in_sparse(mat: sp.csr_array, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Whether (rows[i], cols[i]) is a stored non-zero of ``mat`` (vectorised lookup)."""
    mat = sp.csr_array(mat)
    mat.sort_indices()
    width = mat.shape[1] + 1
    nz_rows = np.repeat(np.arange(mat.shape[0], dtype=np.int64), np.diff(mat.indptr))
    keys = nz_rows * width + mat.indices.astype(np.int64)
    keys = keys[mat.data != 0]
    q = rows.astype(np.int64) * width + cols.astype(np.int64)
    if keys.size == 0:
        return np.zeros(q.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(keys, q), keys.size - 1)
    return keys[pos] == q


class ShortResultWarning(UserWarning):
    """A search returned fewer than ``k`` items for some queries although the index holds more."""


class _SearchPlan:
    """What :func:`faiss_search` needs of an index that changes only with its vectors: built once per index.

    ``kind`` is ``"exact"``, ``"hnsw"`` or ``"ivf"``; ``native`` says the index is
    a FAISS index (its results are float32 / int64 and a short row is padded
    with -1 at its end, FAISS's contract), not a stand-in object; ``direct``
    that the index object itself holds the breadth asked (a Python-built
    ``IndexHNSW*`` / ``IndexIVF*``: no downcast or IVF extraction, i.e. no new
    SWIG wrapper, per call); ``cum_sizes`` are an IVF's sorted list sizes,
    summed (the fewest lists that hold ``kk`` vectors); ``answers`` maps
    (breadth asked, kk) to (search parameters, description). A plan holds no
    reference to its index.
    """

    __slots__ = ("kind", "native", "direct", "d", "ntotal", "nlist", "cum_sizes", "answers")

    def __init__(self, kind: str, d: int, ntotal: int, *, native: bool = True, direct: bool = True,
                 sizes: np.ndarray | None = None):
        self.kind, self.native, self.direct, self.d, self.ntotal = kind, native, direct, d, ntotal
        self.nlist = 0 if sizes is None else len(sizes)
        self.cum_sizes = None if sizes is None else np.cumsum(np.sort(sizes))
        self.answers: dict[tuple[int, int], tuple[object, str]] = {}

    def answer(self, asked: int, kk: int) -> tuple[object, str]:
        """Search parameters and their description for ``kk`` results when the index asks ``asked`` (cached)."""
        hit = self.answers.get((asked, kk))
        if hit is None:
            if len(self.answers) > 256:  # bounded: breadths come from a handful of settings
                self.answers.clear()
            if self.kind == "hnsw":  # a graph walk keeping fewer than kk candidates cannot return kk
                name, value = "efSearch", max(asked, kk)
            else:  # the smallest nprobe lists must together hold >= kk vectors: every query sees >= kk candidates
                name, value = "nprobe", min(max(asked, int(np.searchsorted(self.cum_sizes, kk)) + 1), self.nlist)
            # the breadth set on the index is the one searched: no parameters (FAISS's own path, ~0.7 us less)
            hit = (None if value == asked else _breadth_params(name, value), f"{name}={value}")
            self.answers[(asked, kk)] = hit
        return hit


# id(index) -> (weak reference to the index, its plan): the weak reference both checks that the id is still
# this index's (a new index at a freed address gets its own plan) and drops the entry when the index goes
_PLANS: dict[int, tuple[weakref.ref, _SearchPlan]] = {}


def _plan(index) -> _SearchPlan:
    """The index's search plan: ``index.ntotal`` is read on every call and a plan is rebuilt when it changed.

    An index whose vectors change without ``ntotal`` changing (``reset`` then
    ``add`` of as many vectors, ``update_vectors``) keeps its IVF list sizes:
    call :func:`forget_search_plan` after such a change.
    """
    ntotal = index.ntotal
    hit = _PLANS.get(id(index))
    if hit is not None and hit[0]() is index and hit[1].ntotal == ntotal:
        return hit[1]
    return _build_plan(index, int(ntotal))


def _build_plan(index, ntotal: int) -> _SearchPlan:
    """Classify the index once (downcasts and IVF extraction build SWIG wrappers: not per call) and cache it."""
    import faiss

    if not isinstance(index, faiss.Index):
        return _SearchPlan("exact", int(index.d), ntotal, native=False)  # a stand-in object: searched as it is
    d = int(index.d)
    # an index built in Python already has its concrete class: downcasting (a new wrapper) only when it has not
    base = index if isinstance(index, (faiss.IndexHNSW, faiss.IndexIVF, faiss.IndexFlat)) else faiss.downcast_index(index)
    if isinstance(base, faiss.IndexHNSW):
        plan = _SearchPlan("hnsw", d, ntotal, direct=isinstance(index, faiss.IndexHNSW))
    elif isinstance(base, faiss.IndexFlat):
        plan = _SearchPlan("exact", d, ntotal)  # what extract_index_ivf's RuntimeError says below, without raising
    else:
        try:
            ivf = base if isinstance(base, faiss.IndexIVF) else faiss.extract_index_ivf(index)
        except RuntimeError:
            ivf = None
        if ivf is None:
            plan = _SearchPlan("exact", d, ntotal)
        else:  # one Python call per list (512 for 20,000 items): once per plan, never per query
            lists, nlist = ivf.invlists, int(ivf.nlist)
            sizes = np.array([lists.list_size(i) for i in range(nlist)], dtype=np.int64)
            plan = _SearchPlan("ivf", d, ntotal, direct=isinstance(index, faiss.IndexIVF), sizes=sizes)
    key = id(index)
    _PLANS[key] = (weakref.ref(index, lambda _, key=key: _PLANS.pop(key, None)), plan)
    return plan


def forget_search_plan(index) -> None:
    """Drop what :func:`faiss_search` cached for ``index`` (needed only after changing its vectors at equal ``ntotal``).

    :func:`faiss_search` caches per index what does not change between calls
    (the index's kind, an IVF's list sizes, the search parameters of each
    breadth) and rebuilds it when ``index.ntotal`` changes; the breadth set on
    the index is read on every call. ``reset`` then ``add`` of exactly as many
    vectors, or ``update_vectors``, moves vectors between IVF lists at equal
    ``ntotal``: call this after it. Does nothing for an index without a plan.
    """
    _PLANS.pop(id(index), None)


def _asked_breadth(index, plan: _SearchPlan) -> int:
    """The breadth set on the index now (HNSW efSearch, IVF nprobe): read live, one SWIG attribute or two."""
    if plan.direct:
        return index.hnsw.efSearch if plan.kind == "hnsw" else index.nprobe
    import faiss

    return faiss.downcast_index(index).hnsw.efSearch if plan.kind == "hnsw" else faiss.extract_index_ivf(index).nprobe


_PARAMS: dict[tuple[str, int], object] = {}


def _breadth_params(name: str, value: int):
    """A FAISS ``SearchParametersHNSW(efSearch=value)`` or ``SearchParametersIVF(nprobe=value)``, built once.

    The objects are only read by FAISS, so one per (name, value) serves every
    index and call; building one costs several SWIG calls, a noticeable share
    of a single-query search.
    """
    import faiss

    params = _PARAMS.get((name, value))
    if params is None:
        if len(_PARAMS) > 256:  # bounded: breadths come from a handful of settings
            _PARAMS.clear()
        kind = faiss.SearchParametersHNSW if name == "efSearch" else faiss.SearchParametersIVF
        params = _PARAMS[(name, value)] = kind(**{name: value})
    return params


_EXACT = (None, "exact")


def _search_params(index, kk: int, plan: _SearchPlan | None = None):
    """Search parameters with a breadth >= ``kk`` results (HNSW efSearch, IVF nprobe), or None.

    Returns ``(params, description)``; the index's own settings are left
    untouched, a larger breadth set on the index is kept. ``params`` is None
    where the index is exact or its own breadth is the one to search.
    """
    plan = _plan(index) if plan is None else plan
    return _EXACT if plan.kind == "exact" else plan.answer(_asked_breadth(index, plan), kk)


def tie_margin(item_emb: np.ndarray) -> int:
    """Size of the largest group of identical item vectors, minus 1.

    Items with identical descriptions get identical vectors and tie exactly;
    :func:`faiss_search` asks FAISS for this many extra results so that the
    lower-index tie rule holds at the cut-off too.

    Args:
        item_emb: float (n_items, dim).
    """
    _, counts = np.unique(np.asarray(item_emb), axis=0, return_counts=True)
    return int(counts.max() - 1)


def faiss_search(
    index,
    queries: np.ndarray,
    k: int,
    *,
    exclude=None,
    tie_margin: int = 0,
    return_scores: bool = False,
    max_batch_bytes: int = 1 << 28,
):
    """Top ``k`` items per query from a FAISS index, ties by lower item index, -1 padded.

    Zero query vectors (users without history) get an all -1 row and are not
    searched: fill them with :func:`with_fallback`. With ``exclude`` (sparse
    (n_queries, n_items)), FAISS is asked for ``k`` + (most excluded items of
    a row) results, the excluded ones are dropped, and ``k`` are kept.

    One ``index.search`` call for all queries (split only if its result
    arrays would exceed ``max_batch_bytes``), so the wrapper costs about
    what raw FAISS costs (``benchmarks/bench_ann.py --overhead-only``). A
    few non-zero queries without ``exclude`` or ``tie_margin`` (a request
    being served) take a lean path: FAISS's lists come back as they are
    whenever they hold no -1 and no two equal adjacent scores, the only
    cases where the general path would drop, re-sort or report anything;
    otherwise the general path takes over from the same search.

    Breadth: an approximate index is searched with a breadth at least as
    large as the number of results asked for (HNSW ``efSearch``, IVF
    ``nprobe`` such that the probed lists hold that many vectors), set per
    call through FAISS search parameters where it must be wider than the
    index's own setting (the index itself is not changed); a larger setting
    on the index is kept and searched as it is. What depends only on the index
    (its kind, an IVF's list sizes, the parameters of each breadth) is cached
    per index object and rebuilt when ``index.ntotal`` changes; after
    changing an IVF's vectors at equal ``ntotal`` (``reset`` + ``add`` of as
    many), call :func:`forget_search_plan`. If some non-zero queries still
    get fewer than ``k`` items while the index holds enough that are not
    excluded (an HNSW graph near many duplicate vectors can do that), a
    :class:`ShortResultWarning` says how many; the missing slots are -1,
    never an item.

    Ties: FAISS breaks ties at ITS cut-off in its own order, so an item tied
    with the k-th one may be missing. ``tie_margin`` extra results are
    requested and re-sorted by (score, item index) before the cut: with
    ``tie_margin`` >= (largest group of identical item vectors - 1), e.g.
    identical descriptions, the lower-id rule holds at the cut-off too. With
    ``return_scores`` the scores come back as well and the lists hold the
    whole group tied with the k-th item (up to what the margin fetched), so
    that :mod:`ecrec.metrics` (``scores=``) can count ties as the expectation
    over random orders, as for :func:`top_k`.

    Returns:
        int64 (n_queries, k); with ``return_scores``, ``(ids (n_queries, k +
        e), scores float64 (n_queries, k + e))`` (padding: -1, -inf).

    Raises:
        ValueError: queries not 2-D or of another dimension than the index,
            ``k < 1``, ``tie_margin < 0``, or ``exclude`` of another shape
            than (n_queries, index.ntotal).
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    # what depends only on the index (its kind, d, IVF list sizes): built once per index (_plan, inlined)
    ntotal, hit = index.ntotal, _PLANS.get(id(index))
    plan = hit[1] if hit is not None and hit[0]() is index and hit[1].ntotal == ntotal else _plan(index)
    if q.ndim != 2 or q.shape[1] != plan.d:
        raise ValueError(f"queries must be (n, {plan.d}), got shape {q.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if tie_margin < 0:
        raise ValueError(f"tie_margin must be >= 0, got {tie_margin}")
    n = len(q)
    lean = _lean_search(index, plan, q, k, max_batch_bytes) if exclude is None and tie_margin == 0 else None
    if lean is not None:
        ids, sc, final = lean
        if final:  # FAISS's order is final: nothing to drop, re-sort or report
            return ids if ids.shape[1] == k and not return_scores else _pad_to_k(ids, sc, k, return_scores)
        ex, rows_q, kk, n_ex = None, np.arange(n), ids.shape[1], np.zeros(n, dtype=np.int64)
    else:
        ex = sp.csr_array(exclude) if exclude is not None else None
        if ex is not None and ex.shape != (n, plan.ntotal):
            raise ValueError(f"exclude has shape {ex.shape}, expected {(n, plan.ntotal)}")
        n_ex = np.diff(ex.indptr) if ex is not None else np.zeros(n, dtype=np.int64)
        rows_q = np.flatnonzero(np.any(q != 0, axis=1))  # zero queries: nothing to search
        kk = min(k + (int(n_ex[rows_q].max()) if ex is not None and len(rows_q) else 0) + tie_margin, plan.ntotal)
        ids, sc = _search_rows(index, plan, q, rows_q, kk, max_batch_bytes)
    ranked, ranked_s = _drop_and_sort(ids, sc, ex)
    ranked_s = ranked_s.astype(np.float64) if return_scores else ranked_s
    _warn_if_short(index, ranked, rows_q, np.minimum(k, plan.ntotal - n_ex), k, kk)
    return _cut_keeping_ties(ranked, ranked_s, k, return_scores)


_LEAN_MAX_QUERIES = 64  # "few queries": where the general path's fixed numpy work rivals FAISS's own time


def _lean_search(index, plan: _SearchPlan, q: np.ndarray, k: int, max_batch_bytes: int):
    """FAISS's raw ``(ids, scores, final)`` for the common case, or None where the general path must search.

    The common case: at most ``_LEAN_MAX_QUERIES`` queries, all non-zero, a
    non-empty index, one batch (as :func:`_search_rows` would make it), and
    (the caller checks) no ``exclude`` and no ``tie_margin``. The search is
    exactly the general path's (same rows, breadth and batch); only its
    copies into -1 / -inf filled arrays are skipped. ``(n, min(k, ntotal))``.
    ``final``: the lists hold no -1 and no two equal adjacent scores, the only
    cases where the general path would drop, re-sort or report anything.
    """
    n, kk = len(q), min(k, plan.ntotal)
    if not 0 < n <= _LEAN_MAX_QUERIES or kk < 1 or n > max(1, max_batch_bytes // (12 * kk)):
        return None
    if not (np.count_nonzero(q) if n == 1 else q.any(axis=1).all()):  # a zero query: the general path's -1 row
        return None
    if plan.kind == "exact":
        params = None
    else:  # _search_params inlined (a Python call costs ~0.3 us here): the breadth asked read live, the rest cached
        asked = _asked_breadth(index, plan) if not plan.direct else \
            index.nprobe if plan.kind == "ivf" else index.hnsw.efSearch
        params = (plan.answers.get((asked, kk)) or plan.answer(asked, kk))[0]
    sc, ids = index.search(q, kk, params=params) if params is not None else index.search(q, kk)
    # Each numpy call here costs 1-3 us right after FAISS's search (cold caches), as much as 4% of an IVF-PQ
    # query: count_nonzero is one C call where .min() / .any() are Python-level reductions, and a FAISS index
    # pads a short row with -1 at its END (rows best first, a missing result scores -inf / +inf), so its last
    # column says whether any -1 is there; a stand-in object gets the full check and the general path's dtypes.
    if plan.native:
        short = ids[0, -1] < 0 if n == 1 else np.count_nonzero(ids[:, -1] < 0)
    else:
        ids, sc = np.asarray(ids, dtype=np.int64), np.asarray(sc, dtype=np.float32)
        short = np.count_nonzero(ids < 0)
    return ids, sc, not short and not np.count_nonzero(sc[:, 1:] == sc[:, :-1])


def _pad_to_k(ids: np.ndarray, sc: np.ndarray, k: int, return_scores: bool):
    """Lists already in final order, -1 / -inf padded to ``k`` columns (float64 scores), as :func:`_cut_keeping_ties`."""
    n, width = ids.shape
    if width < k:
        ids = np.hstack([ids, np.full((n, k - width), -1, dtype=np.int64)])
    if not return_scores:
        return ids
    sc = sc.astype(np.float64)
    return ids, (np.hstack([sc, np.full((n, k - width), -np.inf)]) if width < k else sc)


def _search_rows(index, plan: _SearchPlan, q: np.ndarray, rows_q: np.ndarray, kk: int, max_batch_bytes: int):
    """Raw FAISS results for the rows ``rows_q`` of ``q`` (others: -1 / -inf), in batches of bounded size."""
    n = len(q)
    ids_all = np.full((n, max(kk, 1)), -1, dtype=np.int64)
    sc_all = np.full((n, max(kk, 1)), -np.inf, dtype=np.float32)
    if len(rows_q) and kk > 0:
        params, _ = _search_params(index, kk, plan)
        step = max(1, int(max_batch_bytes // (12 * kk)))
        for s0 in range(0, len(rows_q), step):
            sel = rows_q[s0 : s0 + step]
            d_, i_ = index.search(q[sel], kk, params=params) if params is not None else index.search(q[sel], kk)
            ids_all[sel], sc_all[sel] = i_, d_
    return ids_all, sc_all


def _drop_and_sort(ids: np.ndarray, sc: np.ndarray, ex) -> tuple[np.ndarray, np.ndarray]:
    """Excluded and empty slots become -1 / -inf; rows are ordered by (score desc, item index asc)."""
    n = len(ids)
    valid = ids >= 0
    if ex is not None:
        rows = np.broadcast_to(np.arange(n)[:, None], ids.shape)
        valid &= ~_in_sparse(ex, rows, np.maximum(ids, 0))
    ranked = np.where(valid, ids, -1)
    ranked_s = np.where(valid, sc, np.float32(-np.inf))
    # FAISS returns each row best first; only rows with an equal-score pair or a dropped slot
    # before a kept one need re-sorting by (score, item index): keeps the wrapper close to raw FAISS
    fix = (ranked_s[:, 1:] == ranked_s[:, :-1]).any(1) & (ranked[:, 1:] >= 0).any(1)
    fix |= (~valid[:, :-1] & valid[:, 1:]).any(1)
    if fix.any():
        sub_ids, sub_s = ranked[fix], ranked_s[fix]
        order = np.lexsort((np.where(sub_ids >= 0, sub_ids, np.iinfo(np.int64).max), -sub_s.astype(np.float64)), axis=1)
        ranked[fix] = np.take_along_axis(sub_ids, order, axis=1)
        ranked_s[fix] = np.take_along_axis(sub_s, order, axis=1)
    return ranked, ranked_s


def _warn_if_short(index, ranked: np.ndarray, rows_q: np.ndarray, available: np.ndarray, k: int, kk: int) -> None:
    """:class:`ShortResultWarning` when searched rows hold fewer than the ``available`` items they could."""
    found = (ranked >= 0).sum(1)
    short = np.zeros(len(ranked), dtype=bool)
    short[rows_q] = found[rows_q] < available[rows_q]
    if short.any():
        import warnings

        _, what = _search_params(index, kk)
        warnings.warn(
            f"faiss_search: {int(short.sum())} of {len(rows_q)} queries got fewer than k={k} items "
            f"(fewest: {int(found[short].min())}) although the index holds enough ({what}); the missing "
            "slots are -1. Raise the search breadth or use an exact index.",
            ShortResultWarning,
            stacklevel=3,
        )


def _cut_keeping_ties(ranked: np.ndarray, ranked_s: np.ndarray, k: int, return_scores: bool):
    """The first ``k`` columns (-1 padded), plus, with scores, the items tied with the k-th one."""
    n = len(ranked)
    width = min(k, ranked.shape[1])
    if return_scores and ranked.shape[1] > k:
        kth = ranked_s[:, k - 1 : k]
        tied = (ranked_s[:, k:] == kth) & (ranked[:, k:] >= 0)
        width = k + int(tied.sum(1).max())
    out = ranked[:, :width].copy()
    out_s = ranked_s[:, :width].copy()
    if return_scores and width > k:
        off = (np.arange(width)[None, :] >= k) & (out_s != ranked_s[:, k - 1 : k])
        out[off], out_s[off] = -1, -np.inf
    if width < k:
        out = np.hstack([out, np.full((n, k - width), -1, dtype=np.int64)])
        out_s = np.hstack([out_s, np.full((n, k - width), -np.inf)])
    return (out, out_s) if return_scores else out


def with_fallback(retrieved: np.ndarray, use_fallback: np.ndarray, fallback: np.ndarray, *, pad=-1) -> np.ndarray:
    """Rows where ``use_fallback`` is True are replaced by the fallback list (e.g. popularity).

    Works for id lists and for their scores alike (pass ``pad=-np.inf`` for
    scores); lists of different widths are padded with ``pad`` to the wider one.

    Args:
        retrieved, fallback: (n_users, K) and (n_users, K') arrays; ``fallback``
            may also be one row (K',).
        use_fallback: bool (n_users,).
        pad: the padding value (-1 for ids, -inf for scores).

    Returns:
        (n_users, max(K, K')) array.

    Raises:
        ValueError: ``use_fallback`` not of shape (n_users,).
    """
    r = np.asarray(retrieved)
    f = np.asarray(fallback)
    f = f[None, :] if f.ndim == 1 else f
    width = max(r.shape[1], f.shape[1])

    def widen(x):
        if x.shape[1] == width:
            return x
        return np.hstack([x, np.full((x.shape[0], width - x.shape[1]), pad, dtype=np.result_type(x, pad))])

    r, f = widen(r), widen(f)
    f = np.broadcast_to(f, r.shape)
    mask = np.asarray(use_fallback, dtype=bool)
    if mask.shape != (r.shape[0],):
        raise ValueError(f"use_fallback must have shape ({r.shape[0]},), got {mask.shape}")
    return np.where(mask[:, None], f, r)


def interleave(lists: Sequence[np.ndarray], k: int, weights: Sequence[int] | None = None) -> np.ndarray:
    """Hybrid: round-robin merge of several generators' lists, deduplicated, cut to ``k``.

    Each round takes the next ``weights[i]`` items of list i, in list order
    (default one of each): weights (3, 1) give a1 a2 a3 b1 a4 a5 a6 b2 ...
    A repeated item keeps its first position, -1 padding is skipped, and
    the merged list is cut to ``k`` (:func:`ecrec.metrics.dedupe_rows`).

    Args:
        lists: (n_users, K_i) int arrays; K_i may differ.
        weights: positive ints, one per list.

    Raises:
        ValueError: no list, lists with different numbers of users, or bad weights.
    """
    if not lists:
        raise ValueError("interleave needs at least one list")
    weights = [1] * len(lists) if weights is None else [int(w) for w in weights]
    if len(weights) != len(lists) or min(weights) < 1:
        raise ValueError(f"need one positive weight per list, got {weights} for {len(lists)} lists")
    n = lists[0].shape[0]
    if any(x.shape[0] != n for x in lists):
        raise ValueError(f"lists have different numbers of users: {[x.shape[0] for x in lists]}")
    rounds = max(math.ceil(x.shape[1] / w) for x, w in zip(lists, weights, strict=True))
    chunks = []
    for x, w in zip(lists, weights, strict=True):
        pad = np.full((n, rounds * w - x.shape[1]), -1, dtype=np.int64)
        chunks.append(np.hstack([np.asarray(x, dtype=np.int64), pad]).reshape(n, rounds, w))
    merged = np.concatenate(chunks, axis=2).reshape(n, -1)
    return dedupe_rows(merged, k)


def per_1000_users(seconds: float, n_users: int) -> float:
    """Seconds per 1,000 users from a timing over ``n_users``."""
    return float(seconds / max(n_users, 1) * 1000)
