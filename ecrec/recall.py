"""Chapter 05's candidate generators and the data they are evaluated on.

Recall (candidate generation) picks a few hundred items out of the catalogue
for each user; a ranker (chapters 03 and 04) orders them. Every generator here
returns the same thing, a ``(n_users, K)`` int64 array of item indexes (``item_idx``), best
first, padded with -1, so that one evaluation (:mod:`ecrec.metrics`) serves all.

Protocol (:func:`build_recall_data`)
------------------------------------
* Global time split, the same as chapter 03's (``ecrec.features.split_dates``):
  everything before ``test_start`` is history (its train + valid windows);
  from ``test_start`` to the end of the log is test.
* Test users: customers with at least one purchase in the test window.
  Ground truth: the items they bought in the test window (gain = number of
  distinct test invoices holding the item). Two settings:

  - ``"all"``: every test purchase, repeat purchases included;
  - ``"new-to-user"`` (``relevant_new``): only items the user never bought
    before ``test_start``; the user's history is then EXCLUDED from the
    candidates of every generator (an already-bought item can never hit).
    Not to be confused with **cold items** (new to the shop, below).

* User groups by distinct items bought before ``test_start``: ``cold`` (0),
  ``short`` (1..``short_max``), ``warm`` (more). Cold users have nothing to
  personalise on: every generator falls back to the popularity list for them.
* Item groups: ``cold`` items (new to the shop: no purchase before
  ``test_start``, so ID models know nothing about them) and ``tail`` items
  (outside the most popular 20%). The catalogue is every product of the
  cleaned log with its description, including items first sold in the test
  window (a shop knows its catalogue). Survivorship: because the catalogue
  comes from the whole log, every cold item sells in the test window (items
  listed but never sold are not in the log at all).

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ecrec.features import cold_items, item_catalog, purchase_events
from ecrec.metrics import dedupe_rows
from ecrec.schema import COLD_ITEM, INVOICE_NO, ITEM_ID, ITEM_IDX, TS, USER_ID

__all__ = [
    "RecallData", "build_recall_data", "top_k", "popular_scores",
    "item_cosine", "fit_als", "user_vectors", "build_index", "faiss_search", "interleave",
    "with_fallback", "cap_history", "tie_margin", "ShortResultWarning", "encode_with_cache", "ItemTower", "sample_pairs", "train_two_tower",
    "in_batch_eval", "target_log_q",
]


# --- protocol data ---------------------------------------------------------


@dataclass
class RecallData:
    """Everything the chapter's generators and evaluation need (see the module notes).

    Rows of ``history*``, ``relevant_*`` and ``user_group`` are the evaluated
    test users (``users``); rows of ``train_matrix`` are ``train_users``.
    Columns are item indexes (``item_idx``) 0..n_items-1 (``items`` row order).
    """

    test_start: pd.Timestamp  # first instant of the test window
    end: pd.Timestamp  # exclusive: midnight after the last event
    items: pd.DataFrame  # item_id (stock code), item_idx, description, category, price, train_buyers,
    #                      cold_item, tail_item (ecrec.features.item_catalog + the recall columns)
    events: pd.DataFrame  # ecrec.features.purchase_events + item_idx: one row per (invoice, item)
    users: np.ndarray  # CustomerID of each evaluated test user
    user_group: np.ndarray  # "cold" | "short" | "warm"
    history: sp.csr_array  # (n_users, n_items) recency weights of purchases before test_start
    history_count: sp.csr_array  # (n_users, n_items) distinct invoices before test_start
    relevant_all: sp.csr_array  # (n_users, n_items) distinct test invoices per item
    relevant_new: sp.csr_array  # same, items bought before test_start removed
    train_users: np.ndarray  # CustomerID of each train_matrix row
    train_matrix: sp.csr_array  # (n_train_users, n_items) distinct invoices before test_start
    train_row_of_user: np.ndarray  # (n_users,) row in train_matrix, -1 for cold users
    half_life_days: float = 30.0
    meta: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.items)


def recency_weights(age_days, half_life_days: float) -> np.ndarray:
    """``0.5 ** (age / half_life)``: a purchase ``half_life_days`` old counts half.

    Raises:
        ValueError: non-positive half-life or negative ages (future events).
    """
    if half_life_days <= 0:
        raise ValueError(f"half_life_days must be > 0, got {half_life_days}")
    age = np.asarray(age_days, dtype=np.float64)
    if (age < 0).any():
        raise ValueError("recency weights got events after the reference time (negative age)")
    return np.power(0.5, age / half_life_days)


def build_recall_data(
    clean: pd.DataFrame,
    test_start,
    *,
    half_life_days: float = 30.0,
    short_max: int = 5,
    tail_share: float = 0.8,
    max_users: int | None = None,
    seed: int = 0,
    catalogue: pd.DataFrame | None = None,
) -> RecallData:
    """Build items, events, histories and ground truths for the recall protocol.

    Args:
        clean: the cleaned Online Retail frame (``ecrec.data.load_clean_online_retail``).
        test_start: start of the test window, e.g. the second value of
            ``ecrec.features.split_dates(clean["InvoiceDate"])`` (chapter 03's split).
        half_life_days: recency half-life of the user histories.
        short_max: users with 1..short_max distinct past items are "short".
        tail_share: the least popular ``tail_share`` of items (by distinct
            buyers before test_start) are "tail" items.
        max_users: evaluate a random subsample of this many test users (smoke
            runs); ``None`` keeps all.
        seed: seed of that subsample.
        catalogue: a cleaned log to build the item table from with
            :func:`ecrec.features.item_catalog` (StockCode, Description, UnitPrice)
            item table from (default: ``clean`` itself). Pass the full log when
            ``clean`` is a truncated log (a validation split) so that item indexes
            match the test split's.

    Raises:
        ValueError: missing columns, no test user, an item of ``clean``
            missing from ``catalogue``, or bad parameters.
    """
    need = {"InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"}
    missing = need - set(clean.columns)
    if missing:
        raise ValueError(f"clean is missing columns {sorted(missing)}; pass ecrec.data.load_clean_online_retail()[0]")
    test_start = pd.Timestamp(test_start)
    end = clean["InvoiceDate"].max().normalize() + pd.DateOffset(days=1)  # calendar day, also across DST
    if not clean["InvoiceDate"].min() < test_start < end:
        raise ValueError(f"test_start {test_start} must fall inside the log ({clean['InvoiceDate'].min()} .. {end})")
    if not 0 < tail_share < 1:
        raise ValueError(f"tail_share must be in (0, 1), got {tail_share}")
    # chapter 03's tables: one events table and one item table for the whole book
    items = item_catalog(clean if catalogue is None else catalogue)
    items.insert(1, ITEM_IDX, np.arange(len(items), dtype=np.int64))
    idx_of = pd.Series(items[ITEM_IDX].to_numpy(), index=items[ITEM_ID])
    events = purchase_events(clean)
    unknown = ~events[ITEM_ID].isin(idx_of.index)
    if unknown.any():
        raise ValueError(f"{int(unknown.sum())} purchase events of clean have a StockCode missing from catalogue, "
                         f"e.g. {events.loc[unknown, ITEM_ID].iloc[0]!r}; pass the full log as catalogue")
    events.insert(3, ITEM_IDX, events[ITEM_ID].map(idx_of).to_numpy(np.int64))
    n_items = len(items)
    past = events[events[TS] < test_start]
    test = events[(events[TS] >= test_start) & (events[TS] < end)]
    if test.empty:
        raise ValueError("no purchase in the test window")

    buyers = past.groupby(ITEM_IDX)[USER_ID].nunique().reindex(range(n_items), fill_value=0)
    items["train_buyers"] = buyers.to_numpy()
    items[COLD_ITEM] = cold_items(events, items[ITEM_ID], test_start)  # the book's one definition
    rank = items["train_buyers"].rank(method="first", ascending=False).to_numpy()
    items["tail_item"] = rank > (1 - tail_share) * n_items

    train_users = np.sort(past[USER_ID].unique())
    train_row = pd.Series(np.arange(len(train_users)), index=train_users)
    counts = past.groupby([USER_ID, ITEM_IDX]).size().reset_index(name="n")
    train_matrix = sp.csr_array(
        (counts["n"].to_numpy(np.float64), (train_row[counts[USER_ID]].to_numpy(), counts[ITEM_IDX].to_numpy())),
        shape=(len(train_users), n_items),
    )

    users = np.sort(test[USER_ID].unique())
    if max_users is not None and max_users < len(users):
        rng = np.random.default_rng(seed)
        users = np.sort(rng.choice(users, size=max_users, replace=False))
    row = pd.Series(np.arange(len(users)), index=users)

    def matrix(frame: pd.DataFrame, values: np.ndarray) -> sp.csr_array:
        keep = frame[USER_ID].isin(row.index).to_numpy()
        f = frame[keep]
        m = sp.csr_array(
            (values[keep], (row[f[USER_ID]].to_numpy(), f[ITEM_IDX].to_numpy())), shape=(len(users), n_items)
        )
        m.sum_duplicates()
        m.sort_indices()
        return m

    age = (test_start - past[TS]).dt.total_seconds().to_numpy() / 86400.0
    history = matrix(past, recency_weights(age, half_life_days))
    history_count = matrix(past, np.ones(len(past)))
    relevant_all = matrix(test, np.ones(len(test)))
    seen = history_count.copy()
    seen.data[:] = 1.0
    relevant_new = relevant_all - relevant_all.multiply(seen)
    relevant_new = sp.csr_array(relevant_new)
    relevant_new.eliminate_zeros()
    relevant_new.sort_indices()

    n_hist = np.diff(history_count.indptr)
    group = np.where(n_hist == 0, "cold", np.where(n_hist <= short_max, "short", "warm"))
    return RecallData(
        test_start=test_start,
        end=end,
        items=items,
        events=events,
        users=users,
        user_group=group,
        history=history,
        history_count=history_count,
        relevant_all=relevant_all,
        relevant_new=relevant_new,
        train_users=train_users,
        train_matrix=train_matrix,
        train_row_of_user=train_row.reindex(users).fillna(-1).to_numpy(np.int64),
        half_life_days=half_life_days,
        meta={"short_max": short_max, "tail_share": tail_share, "n_test_users_total": int(test[USER_ID].nunique())},
    )


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


def _search_params(index, kk: int):
    """Search parameters with a breadth >= ``kk`` results (HNSW efSearch, IVF nprobe), or None.

    Returns ``(params, description)``; the index's own settings are left untouched.
    """
    import faiss

    if not isinstance(index, faiss.Index):
        return None, "exact"  # a stand-in object: searched as it is
    base = faiss.downcast_index(index)
    if isinstance(base, faiss.IndexHNSW):
        ef = max(int(base.hnsw.efSearch), kk)
        return faiss.SearchParametersHNSW(efSearch=ef), f"efSearch={ef}"
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None, "exact"
    # the smallest nprobe lists must together hold >= kk vectors: then every query sees >= kk candidates
    sizes = np.sort([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
    enough = int(np.searchsorted(np.cumsum(sizes), kk)) + 1
    nprobe = min(max(int(ivf.nprobe), enough), int(ivf.nlist))
    return faiss.SearchParametersIVF(nprobe=nprobe), f"nprobe={nprobe}"


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
    what raw FAISS costs (``benchmarks/bench_recall.py``).

    Breadth: an approximate index is searched with a breadth at least as
    large as the number of results asked for (HNSW ``efSearch``, IVF
    ``nprobe`` such that the probed lists hold that many vectors), set per
    call through FAISS search parameters (the index itself is not changed);
    a larger setting on the index is kept. If some non-zero queries still
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
    if q.ndim != 2 or q.shape[1] != index.d:
        raise ValueError(f"queries must be (n, {index.d}), got shape {q.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if tie_margin < 0:
        raise ValueError(f"tie_margin must be >= 0, got {tie_margin}")
    n = len(q)
    ex = sp.csr_array(exclude) if exclude is not None else None
    if ex is not None and ex.shape != (n, index.ntotal):
        raise ValueError(f"exclude has shape {ex.shape}, expected {(n, index.ntotal)}")
    n_ex = np.diff(ex.indptr) if ex is not None else np.zeros(n, dtype=np.int64)
    rows_q = np.flatnonzero(np.any(q != 0, axis=1))  # zero queries: nothing to search
    kk = min(k + (int(n_ex[rows_q].max()) if ex is not None and len(rows_q) else 0) + tie_margin, index.ntotal)
    ids_all = np.full((n, max(kk, 1)), -1, dtype=np.int64)
    sc_all = np.full((n, max(kk, 1)), -np.inf, dtype=np.float32)
    if len(rows_q) and kk > 0:
        params, _ = _search_params(index, kk)
        step = max(1, int(max_batch_bytes // (12 * kk)))
        for s0 in range(0, len(rows_q), step):
            sel = rows_q[s0 : s0 + step]
            d_, i_ = index.search(q[sel], kk, params=params) if params is not None else index.search(q[sel], kk)
            ids_all[sel], sc_all[sel] = i_, d_
    ids = ids_all
    valid = ids >= 0
    if ex is not None:
        rows = np.broadcast_to(np.arange(n)[:, None], ids.shape)
        valid &= ~_in_sparse(ex, rows, np.maximum(ids, 0))
    ranked = np.where(valid, ids, -1)
    ranked_s = np.where(valid, sc_all, np.float32(-np.inf))
    # FAISS returns each row best first; only rows with an equal-score pair or a dropped slot
    # before a kept one need re-sorting by (score, item index): keeps the wrapper close to raw FAISS
    fix = (ranked_s[:, 1:] == ranked_s[:, :-1]).any(1) & (ranked[:, 1:] >= 0).any(1)
    fix |= (~valid[:, :-1] & valid[:, 1:]).any(1)
    if fix.any():
        sub_ids, sub_s = ranked[fix], ranked_s[fix]
        order = np.lexsort((np.where(sub_ids >= 0, sub_ids, np.iinfo(np.int64).max), -sub_s.astype(np.float64)), axis=1)
        ranked[fix] = np.take_along_axis(sub_ids, order, axis=1)
        ranked_s[fix] = np.take_along_axis(sub_s, order, axis=1)
    ranked_s = ranked_s.astype(np.float64) if return_scores else ranked_s
    found = (ranked >= 0).sum(1)
    available = np.minimum(k, index.ntotal - n_ex)
    short = np.zeros(n, dtype=bool)
    short[rows_q] = found[rows_q] < available[rows_q]
    if short.any():
        import warnings

        _, what = _search_params(index, kk)
        warnings.warn(
            f"faiss_search: {int(short.sum())} of {len(rows_q)} queries got fewer than k={k} items "
            f"(fewest: {int(found[short].min())}) although the index holds enough ({what}); the missing "
            "slots are -1. Raise the search breadth or use an exact index.",
            ShortResultWarning,
            stacklevel=2,
        )
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


# --- MiniLM two-tower --------------------------------------------------------


def encode_with_cache(
    texts: Sequence[str],
    *,
    n_trainable: int = 1,
    max_length: int = 32,
    batch_size: int = 256,
    model=None,
    tokenizer=None,
    progress: bool = False,
):
    """Zero-shot MiniLM embeddings AND the hidden states a partial fine-tune starts from.

    One forward pass over the catalogue (:func:`ecrec.text.encode_texts`, the
    book's one text encoder) gives (a) the mean-pooled, L2-normalised sentence
    embeddings and (b) the hidden states entering the last ``n_trainable``
    transformer layers. Fine-tuning only those layers on cached inputs makes a
    training step ~6/n_trainable times cheaper than a full fine-tune: what
    keeps it feasible on a CPU.

    Returns:
        ``(emb float32 (n, hidden), states float32 tensor (n, L, hidden),
        mask int64 tensor (n, L), encoder)``; ``L`` = the longest tokenised text.

    Raises:
        ValueError: ``n_trainable`` outside 1..num_hidden_layers.
        TypeError: a text is not a string.
    """
    from ecrec.text import encode_texts, load_encoder

    model = model or load_encoder()
    n_layers = model.config.num_hidden_layers
    if not 1 <= n_trainable <= n_layers:
        raise ValueError(f"n_trainable must be in 1..{n_layers}, got {n_trainable}")
    emb, states, mask = encode_texts(
        texts, model=model, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size,
        progress=progress, hidden_states_at=n_layers - n_trainable,
    )
    return emb, states, mask, model


class ItemTower(torch.nn.Module):
    """The item tower: MiniLM's last ``n_trainable`` layers (trainable copies) + mean pooling + L2 norm.

    Input: cached hidden states (batch, L, hidden) and their attention mask,
    from :func:`encode_with_cache` with the same ``n_trainable``. Before
    training it reproduces the zero-shot embeddings (up to float rounding).
    """

    def __init__(self, encoder, n_trainable: int = 1):
        super().__init__()
        import copy

        layers = encoder.encoder.layer
        if not 1 <= n_trainable <= len(layers):
            raise ValueError(f"n_trainable must be in 1..{len(layers)}, got {n_trainable}")
        self.layers = torch.nn.ModuleList(copy.deepcopy(layer) for layer in layers[-n_trainable:])

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, L, hidden) float states, (batch, L) 0/1 mask -> (batch, hidden) unit vectors."""
        from ecrec.text import mean_pool

        h = states
        ext = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.layers:
            h = layer(h, attention_mask=ext)
            if isinstance(h, tuple):  # older transformers return (hidden,)
                h = h[0]
        return torch.nn.functional.normalize(mean_pool(h, mask), dim=-1)

    def embed_all(self, states: torch.Tensor, mask: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Item vectors for the whole catalogue, float32 (n_items, hidden), computed in eval mode."""
        was = self.training
        self.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(states), batch_size):
                sl = slice(start, start + batch_size)
                out.append(self(states[sl], mask[sl]).numpy())
        self.train(was)
        return np.concatenate(out).astype(np.float32)


@dataclass
class Pairs:
    """Training pairs (history -> next item) from purchases BEFORE a cut-off.

    ``hist_items``/``hist_weights``: (n_pairs, max_history), -1 / 0 padded,
    most recent first; ``target``: (n_pairs,) item indexes; ``target_time``:
    (n_pairs,) datetime64 of the target purchase (for leakage checks).
    """

    hist_items: np.ndarray
    hist_weights: np.ndarray
    target: np.ndarray
    target_time: np.ndarray | None = None


def sample_pairs(
    events: pd.DataFrame,
    before,
    n_pairs: int,
    *,
    max_history: int = 10,
    half_life_days: float = 30.0,
    new_items_only: bool = True,
    since=None,
    seed: int = 0,
) -> Pairs:
    """Sample (history -> next purchased item) pairs from events strictly before ``before``.

    A pair picks a purchase (user, item, invoice) that is not in the user's
    first invoice; its history is the user's distinct items from EARLIER
    invoices (most recent first, at most ``max_history``), weighted by
    recency relative to that invoice. With ``new_items_only`` the target is an
    item the user had not bought before (the harder, more useful "new items"
    task). Nothing at or after ``before`` is read: no test leakage. With
    ``since``, only purchases at or after ``since`` are targets (their
    history may start earlier): held-out pairs from a validation window.

    Raises:
        ValueError: no eligible purchase, ``n_pairs < 1`` or ``max_history < 1``.
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    ev = events[events[TS] < before].sort_values([USER_ID, TS, INVOICE_NO, ITEM_IDX]).reset_index(drop=True)
    user = ev[USER_ID].to_numpy()
    t = ev[TS].to_numpy()
    item = ev[ITEM_IDX].to_numpy()
    # first row of the user's current invoice, and first row of the user
    new_user = np.r_[True, user[1:] != user[:-1]]
    new_inv = new_user | np.r_[True, ev[INVOICE_NO].to_numpy()[1:] != ev[INVOICE_NO].to_numpy()[:-1]]
    inv_start = np.maximum.accumulate(np.where(new_inv, np.arange(len(ev)), 0))
    user_start = np.maximum.accumulate(np.where(new_user, np.arange(len(ev)), 0))
    eligible = inv_start > user_start
    if new_items_only:
        first_buy = ev.groupby([USER_ID, ITEM_IDX])[TS].transform("min").to_numpy()
        eligible &= first_buy == t
    if since is not None:
        eligible &= t >= pd.Timestamp(since).to_datetime64()
    cand = np.flatnonzero(eligible)
    if cand.size == 0:
        raise ValueError("no eligible (history -> next item) purchase before the cut-off")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(cand, size=n_pairs, replace=cand.size < n_pairs)
    hist_items = np.full((n_pairs, max_history), -1, dtype=np.int64)
    hist_w = np.zeros((n_pairs, max_history), dtype=np.float32)
    for p, r in enumerate(chosen):
        lo, hi = user_start[r], inv_start[r]
        rows = np.arange(hi - 1, lo - 1, -1)  # most recent first
        _, first = np.unique(item[rows], return_index=True)
        keep = rows[np.sort(first)][:max_history]
        age = (t[r] - t[keep]) / np.timedelta64(1, "D")
        hist_items[p, : len(keep)] = item[keep]
        hist_w[p, : len(keep)] = recency_weights(age, half_life_days)
    return Pairs(hist_items, hist_w, item[chosen].astype(np.int64), t[chosen])


def target_log_q(pairs: Pairs, n_items: int) -> torch.Tensor:
    """log of each item's share of the training targets (how often it is an in-batch negative).

    Items never a target get a count of 1 (a small share, not log 0).
    """
    freq = np.bincount(pairs.target, minlength=n_items).astype(np.float64)
    return torch.from_numpy(np.log(np.maximum(freq, 1.0) / freq.sum()).astype(np.float32))


def _in_batch_logits(tower, states, mask, hist, w, tgt, temperature, log_q):
    """(B, B) logits user_i . item_j / temperature (- log q_j), same-item duplicates masked."""
    uniq = np.unique(np.r_[hist[hist >= 0], tgt])
    vec = tower(states[uniq], mask[uniq])
    lookup = torch.from_numpy(np.searchsorted(uniq, np.where(hist >= 0, hist, uniq[0])))
    hv = vec[lookup] * torch.as_tensor(w)[..., None]  # padding has weight 0
    users = torch.nn.functional.normalize(hv.sum(1), dim=-1)
    targets = vec[torch.from_numpy(np.searchsorted(uniq, tgt))]
    logits = users @ targets.T / temperature
    if log_q is not None:
        logits = logits - log_q[tgt][None, :]
    same = torch.from_numpy(tgt[:, None] == tgt[None, :]) & ~torch.eye(len(tgt), dtype=torch.bool)
    return logits.masked_fill(same, float("-inf"))


def in_batch_eval(
    tower, states, mask, pairs: Pairs, *, batch_size: int, temperature: float, log_q=None
) -> tuple[float, float]:
    """Held-out in-batch loss and top-1 accuracy over consecutive batches of ``pairs``.

    The same objective as :func:`train_two_tower` (pass its ``log_q`` to
    compare with the training loss), on pairs the model was not trained on,
    e.g. targets from the validation window (``sample_pairs(..., since=...)``).
    Accuracy = share of pairs whose own target gets the highest logit among
    the batch's targets WITHOUT the logQ shift (what serving ranks by); a
    random scorer gets about 1 / batch_size. An incomplete last batch is dropped.

    Returns:
        ``(mean loss, accuracy)``.

    Raises:
        ValueError: fewer pairs than one batch, ``batch_size < 2``, ``temperature <= 0``.
    """
    n = len(pairs.target)
    if batch_size < 2 or temperature <= 0 or n < batch_size:
        raise ValueError(f"need batch_size >= 2, temperature > 0 and >= batch_size pairs; got {batch_size}, "
                         f"{temperature}, {n} pairs")
    was = tower.training
    tower.eval()
    losses, correct, seen = [], 0, 0
    with torch.inference_mode():
        for start in range(0, n - batch_size + 1, batch_size):
            sl = slice(start, start + batch_size)
            tgt = pairs.target[sl]
            raw = _in_batch_logits(tower, states, mask, pairs.hist_items[sl], pairs.hist_weights[sl], tgt,
                                   temperature, None)
            logits = raw - log_q[tgt][None, :] if log_q is not None else raw
            losses.append(float(torch.nn.functional.cross_entropy(logits, torch.arange(len(tgt)))))
            correct += int((raw.argmax(1) == torch.arange(len(tgt))).sum())
            seen += len(tgt)
    tower.train(was)
    return float(np.mean(losses)), correct / seen


def train_two_tower(
    tower,
    states,
    mask,
    pairs: Pairs,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-4,
    temperature: float = 0.1,
    logq_correction: bool = True,
    seed: int = 0,
    progress: bool = True,
    eval_pairs: Pairs | None = None,
    eval_every: int = 0,
    eval_log: list | None = None,
) -> list[float]:
    """Fine-tune the item tower with in-batch negatives (sampled softmax).

    For a batch of pairs, the user vector is the recency-weighted mean of the
    tower's vectors of the history items (L2-normalised: the same tower on
    both sides), the target's vector is the positive and the other targets of
    the batch are the negatives: ``loss = CE(U T^T / temperature, diag)``.
    In-batch copies of the same target item are masked out of the negatives.

    In-batch negatives are drawn in proportion to popularity, so without a
    correction the model learns to push popular items DOWN. With
    ``logq_correction`` each logit gets ``- log q_j`` (q_j = item j's share of
    the training targets, :func:`target_log_q`; Yi et al., 2019), which
    removes that bias. The shifted loss is no longer ``ln B`` for a uniform
    scorer: compare it with the held-out loss at step 0 instead.

    Args:
        eval_pairs, eval_every, eval_log: if all given, :func:`in_batch_eval`
            on ``eval_pairs`` (same batch size, temperature and log q) runs
            before step 1 and every ``eval_every`` steps (and after the last);
            ``{"step", "loss", "accuracy"}`` dicts are appended to ``eval_log``.

    Returns:
        The loss of every step (for a loss curve).

    Raises:
        ValueError: non-positive temperature, steps or batch size.
    """
    from tqdm.auto import tqdm

    if temperature <= 0 or steps < 1 or batch_size < 2:
        raise ValueError(f"need temperature > 0, steps >= 1, batch_size >= 2; got {temperature}, {steps}, {batch_size}")
    gen = np.random.default_rng(seed)
    n_items = int(max(pairs.target.max(), states.shape[0] - 1)) + 1
    log_q = target_log_q(pairs, n_items)
    evaluate = eval_pairs is not None and eval_every > 0 and eval_log is not None

    def record(step):
        loss, acc = in_batch_eval(tower, states, mask, eval_pairs, batch_size=batch_size, temperature=temperature,
                                  log_q=log_q if logq_correction else None)
        eval_log.append({"step": step, "loss": loss, "accuracy": acc})

    opt = torch.optim.AdamW(tower.parameters(), lr=lr)
    if evaluate:
        record(0)
    tower.train()
    losses = []
    n = len(pairs.target)
    for step in tqdm(range(1, steps + 1), disable=not progress, desc="fine-tune two-tower"):
        idx = gen.choice(n, size=min(batch_size, n), replace=False)
        tgt = pairs.target[idx]
        logits = _in_batch_logits(tower, states, mask, pairs.hist_items[idx], pairs.hist_weights[idx], tgt,
                                  temperature, log_q if logq_correction else None)
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(tgt)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if evaluate and (step % eval_every == 0 or step == steps):
            record(step)
    tower.eval()
    return losses


def per_1000_users(seconds: float, n_users: int) -> float:
    """Seconds per 1,000 users from a timing over ``n_users``."""
    return float(seconds / max(n_users, 1) * 1000)

