"""Evaluation metrics: classification (log loss, AUC, GAUC) and ranking (Recall@K...).

Every function checks its input and raises :class:`ValueError` (or
:class:`TypeError`) with a message that names what is wrong: shapes that do not
match, labels outside {0, 1}, NaN, a single class where two are needed.

Classification metrics (CTR prediction)
---------------------------------------
* :func:`log_loss`: mean binary cross-entropy, natural log (nats).
* :func:`roc_auc`: area under the ROC curve computed from ranks
  (Mann and Whitney, 1947; Hanley and McNeil, 1982); tied scores count 1/2.
* :func:`gauc`: group (per-user) AUC, averaged with weights
  (Zhu et al., 2017, "Optimized Cost per Click in Taobao Display
  Advertising"; Zhou et al., 2018, "Deep Interest Network").

Ranking metrics (candidate generation, chapter 05), vectorised over users
-----------------------------------------------------------------------
:func:`recall_at_k` (denominator: all relevant items), :func:`recall_capped_at_k`
(denominator min(K, relevant)), :func:`precision_at_k`, :func:`hit_rate_at_k`,
:func:`mrr_at_k`, :func:`ndcg_at_k` (binary or graded; ideal list from ALL
relevant items), :func:`map_at_k` (denominator named), :func:`catalogue_coverage`,
and :func:`ranking_metrics` for all of them at several K at once. The shared
conventions (deduplication, -1 padding, users without relevant items, ties)
are spelled out above :func:`dedupe_rows`.

Beyond accuracy (the lists themselves), defined in :mod:`ecrec.beyond_accuracy`
and re-exported here: :func:`novelty_at_k`, :func:`intra_list_diversity_at_k`,
:func:`popularity_head`, :func:`popularity_bias_at_k`, :func:`exposure_by_group_at_k`.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import pandas as pd

_BEYOND_ACCURACY = (  # defined in ecrec.beyond_accuracy, re-exported lazily (module __getattr__ below)
    "novelty_at_k", "intra_list_diversity_at_k", "popularity_head", "popularity_bias_at_k", "exposure_by_group_at_k",
)
__all__ = [
    "log_loss", "roc_auc", "gauc", "dedupe_rows", "as_relevance_csr", "recall_at_k",
    "recall_capped_at_k", "precision_at_k", "hit_rate_at_k", "mrr_at_k", "ndcg_at_k",
    "map_at_k", "catalogue_coverage", "ranking_metrics",
    *_BEYOND_ACCURACY,
]


def __getattr__(name: str):
    """``ecrec.metrics.novelty_at_k`` etc.: the beyond-accuracy metrics, imported on first use.

    They live in :mod:`ecrec.beyond_accuracy`, which imports this module's list
    conventions; importing it lazily keeps the import graph free of cycles.
    """
    if name in _BEYOND_ACCURACY:
        from ecrec import beyond_accuracy

        return getattr(beyond_accuracy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- input checks ----------------------------------------------------------


def _as_float(x, name: str, dtype=None) -> np.ndarray:
    """``x`` as a float array of any shape (``dtype``, else its own float dtype, else float64).

    The package's one numeric check (also used by :mod:`ecrec.mlp`).

    Raises:
        TypeError: not numeric (strings, objects).
        ValueError: NaN (its index is named).
    """
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    if dtype is None:
        dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
    arr = arr.astype(dtype, copy=False)
    nan = np.isnan(arr)
    if nan.any():
        where = np.unravel_index(int(np.flatnonzero(nan)[0]), arr.shape)
        raise ValueError(f"{name} contains NaN at index {tuple(int(i) for i in where)}")
    return arr


def _as_1d_float(x, name: str) -> np.ndarray:
    """``x`` as a 1-D float64 array. Raises as :func:`_as_float`, and ValueError when not 1-D."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D of shape (n,), got shape {arr.shape}")
    return _as_float(arr, name, np.float64)


def _check_labels(y_true, name: str = "y_true", n: int | None = None) -> np.ndarray:
    """Labels as a 1-D float64 array of 0s and 1s; with ``n``, exactly ``n`` of them.

    The package's one label check (also used by :mod:`ecrec.mlp`).

    Raises:
        ValueError: not 1-D, NaN, a value other than 0 and 1, or not ``n`` labels.
        TypeError: not numeric.
    """
    y = _as_1d_float(y_true, name)
    bad = (y != 0) & (y != 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must hold only 0 and 1; found {float(y[i])!r} at index {i}")
    if n is not None and len(y) != n:
        raise ValueError(f"{name} has {len(y)} labels but there are {n} logits/examples")
    return y


def _check_same_length(**arrays: np.ndarray) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")
    if next(iter(lengths.values())) == 0:
        raise ValueError("inputs are empty")


# --- classification --------------------------------------------------------


def log_loss(y_true, p, eps: float | None = None) -> float:
    """Mean binary cross-entropy of predicted probabilities, in nats.

    ``-mean(y * ln(p) + (1 - y) * ln(1 - p))`` with ``p`` clipped to
    ``[eps, 1 - eps]`` so that a confident wrong prediction costs
    ``-ln(eps)`` instead of infinity. The default ``eps`` is the float64
    machine epsilon (``numpy.finfo(numpy.float64).eps`` = 2.22e-16, so a
    certain mistake costs ``-ln(2.22e-16)`` = 36.04 nats): exactly
    scikit-learn's ``log_loss`` (>= 1.5) for binary labels, at both ends
    (``p = 0`` and ``p = 1``). Older code and papers often clip at 1e-15
    (34.54 nats): pass ``eps=1e-15`` to reproduce them.

    Args:
        y_true: (n,) labels in {0, 1} (int, float or bool).
        p: (n,) predicted probabilities of the label 1, in [0, 1] (float64 is
            used for the computation).
        eps: clipping, 0 <= eps < 0.5; ``None`` (default) = float64 machine epsilon.

    Returns:
        The mean loss, a float >= 0.

    Raises:
        ValueError: shapes differ, empty input, not 1-D, NaN (its index is
            named), labels outside {0, 1}, probabilities outside [0, 1]
            (including +-inf; the first offending index is named; pass
            probabilities, not logits), or ``eps`` outside [0, 0.5).
        TypeError: non-numeric input.
    """
    if eps is None:
        eps = float(np.finfo(np.float64).eps)
    if not 0 <= eps < 0.5:
        raise ValueError(f"eps must be in [0, 0.5), got {eps}")
    y = _check_labels(y_true)
    prob = _as_1d_float(p, "p")
    _check_same_length(y_true=y, p=prob)
    bad = (prob < 0) | (prob > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"p must be probabilities in [0, 1]; {int(bad.sum())} value(s) outside, first p[{i}] = {prob[i]!r} "
            f"(range [{prob.min():.4g}, {prob.max():.4g}]); apply a sigmoid to logits first"
        )
    prob = np.clip(prob, eps, 1 - eps)
    with np.errstate(divide="ignore"):
        loss = -(y * np.log(prob) + (1 - y) * np.log1p(-prob))
    return float(loss.mean())


def roc_auc(y_true, score) -> float:
    """Area under the ROC curve, from ranks (Mann-Whitney U / (n_pos * n_neg)).

    AUC is the probability that a random positive scores higher than a random
    negative; a tied (positive, negative) pair counts 1/2. Ranks are average
    ranks (``scipy.stats.rankdata(method="average")``), which is exactly that
    tie rule. Equal to scikit-learn's ``roc_auc_score``.

    Args:
        y_true: (n,) labels in {0, 1}.
        score: (n,) any real scores (probabilities, logits...); higher = more
            likely positive.

    Returns:
        AUC in [0, 1].

    Raises:
        ValueError: shapes differ, empty input, NaN, labels outside {0, 1},
            or only one class present (AUC is undefined).
    """
    from scipy.stats import rankdata

    y = _check_labels(y_true)
    s = _as_1d_float(score, "score")
    _check_same_length(y_true=y, score=s)
    n_pos = float(y.sum())
    n_neg = float(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"roc_auc needs both classes; y_true has {int(n_pos)} positives and {int(n_neg)} negatives"
        )
    ranks = rankdata(s, method="average")
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def gauc(
    user_ids,
    y_true,
    score,
    weight: Literal["rows", "clicks", "uniform"] = "rows",
) -> tuple[float, int]:
    """Group AUC: the AUC of each user, averaged with weights.

    ``GAUC = sum_u w_u * AUC_u / sum_u w_u`` over users that have both a
    positive and a negative example; a user whose labels are all one class has
    no AUC and is skipped (their count is returned so that it can be reported).
    Per-user AUC uses average ranks within the user, so ties count 1/2 as in
    :func:`roc_auc`. Vectorised: one ``groupby().rank()`` and sums, no Python
    loop over users.

    Weights (the definitions differ between papers; say which one you use):

    * ``"rows"`` (default): ``w_u`` = number of the user's examples (rows).
      On an impression log this is the papers' impression weighting (Zhu et
      al., 2017; Zhou et al., 2018); on this book's data the rows are the
      user's purchases plus their *sampled* negatives, so the weight follows
      the sampler's ``neg_ratio``, not what the user saw.
    * ``"clicks"``: ``w_u`` = number of the user's positives.
    * ``"uniform"``: every user counts the same.

    Args:
        user_ids: (n,) any hashable ids (ints, strings).
        y_true: (n,) labels in {0, 1}.
        score: (n,) real scores.
        weight: one of the above.

    Returns:
        ``(gauc, n_skipped_users)``.

    Raises:
        ValueError: shapes differ, empty input, NaN in labels/scores, labels
            outside {0, 1}, unknown ``weight``, NaN user ids, or no user has
            both classes.
    """
    if weight not in ("rows", "clicks", "uniform"):
        raise ValueError(f"weight must be 'rows', 'clicks' or 'uniform', got {weight!r}")
    y = _check_labels(y_true)
    s = _as_1d_float(score, "score")
    users = np.asarray(user_ids)
    if users.ndim != 1:
        raise ValueError(f"user_ids must be 1-D, got shape {users.shape}")
    _check_same_length(user_ids=users, y_true=y, score=s)
    frame = pd.DataFrame({"u": users, "y": y, "s": s})
    if frame["u"].isna().any():
        raise ValueError("user_ids contains missing values")
    frame["r"] = frame.groupby("u", sort=False)["s"].rank(method="average")
    frame["ry"] = frame["r"] * frame["y"]
    per = frame.groupby("u", sort=False).agg(n=("y", "size"), pos=("y", "sum"), rpos=("ry", "sum"))
    neg = per["n"] - per["pos"]
    valid = (per["pos"] > 0) & (neg > 0)
    n_skipped = int((~valid).sum())
    if not valid.any():
        raise ValueError(
            f"gauc: none of the {len(per)} users has both a positive and a negative example"
        )
    per = per[valid]
    neg = neg[valid]
    auc = (per["rpos"] - per["pos"] * (per["pos"] + 1) / 2) / (per["pos"] * neg)
    w = {"rows": per["n"], "clicks": per["pos"], "uniform": pd.Series(1.0, index=per.index)}[weight]
    return float((auc * w).sum() / w.sum()), n_skipped


# --- ranking (retrieval / recall) -------------------------------------------
#
# Conventions shared by every ranking metric below.
#
# * ``retrieved``: (n_users, L) integer array of item ids, best first; -1 is
#   padding (what FAISS returns when an index has fewer than L results).
#   Negative ids other than -1 are an error.
# * Ties (``scores``): every ranking metric takes an optional ``scores``
#   (n_users, L) array, the generator's score of each retrieved item
#   (non-increasing along a row; padding slots are ignored). Items of a row
#   with EQUAL scores form a tie group, and the metric is the EXACT
#   EXPECTATION over a uniformly random order within every tie group (not the
#   value of one arbitrary order). So a constant scorer gets what a random
#   one gets on average: five candidates all scored 0.5 with the relevant one
#   listed first have Recall@1 = 1/5, not 1. Without ``scores`` the list order
#   is taken as strict (each item its own group). Only the listed items are
#   seen: a tie group cut by the end of the list is treated as if it had only
#   its listed members, so ask the generator for the WHOLE tie group at its
#   cut-off (``ecrec.recall.top_k(..., return_scores=True)`` and
#   ``ecrec.recall.faiss_search(..., return_scores=True)`` do).
# * Duplicates: each row is deduplicated FIRST, keeping the first occurrence
#   (and its score), and the remaining items are moved up; only then is the
#   list cut to K. So a list [5, 5, 7] at K=2 is scored as [5, 7].
# * Fewer than K candidates (padding, or L < K): the missing slots are misses.
#   Precision@K still divides by K.
# * ``relevant``: the ground truth per user, one of
#   - a scipy sparse matrix (n_users, n_items): column = item id, value =
#     gain > 0 (e.g. number of purchases; binary metrics use only its
#     non-zero pattern);
#   - a list of n_users collections of item ids: lists, tuples, arrays or
#     Python sets (duplicates ignored);
#   - a (n_users, R) integer array padded with -1.
# * Users with NO relevant item are EXCLUDED from the means (their recall is
#   0/0); ``per_user=True`` returns NaN for them. If no user has a relevant
#   item, the functions raise ValueError.
# * Every metric lies in [0, 1].

RELEVANT_HELP = (
    "relevant must be a scipy sparse matrix (n_users, n_items), a list of n_users "
    "collections of item ids (lists, arrays or sets), or a (n_users, R) int array padded with -1"
)


def _as_id_matrix(retrieved) -> np.ndarray:
    arr = np.asarray(retrieved)
    if arr.ndim != 2:
        raise ValueError(f"retrieved must be 2-D (n_users, K), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"retrieved must hold integer item ids (-1 = padding), got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < -1:
        raise ValueError(f"retrieved ids must be >= 0, or -1 for padding; found {int(arr.min())}")
    return arr


def _dedupe_source(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(deduplicated ids, column of each kept id in ``arr`` or -1): first occurrences moved left."""
    n, width = arr.shape
    if width == 0:
        return arr.copy(), np.zeros((n, 0), dtype=np.int64)
    order = np.argsort(arr, axis=1, kind="stable")  # equal ids: first column first
    srt = np.take_along_axis(arr, order, axis=1)
    dup_sorted = np.zeros_like(srt, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    keep = (arr >= 0) & ~dup
    move = np.argsort(~keep, axis=1, kind="stable")  # kept items first, in their order
    kept = np.take_along_axis(keep, move, axis=1)
    out = np.where(kept, np.take_along_axis(arr, move, axis=1), -1)
    return out, np.where(kept, move, -1)


def _pad(x: np.ndarray, width: int, value) -> np.ndarray:
    if x.shape[1] >= width:
        return x[:, :width]
    return np.hstack([x, np.full((x.shape[0], width - x.shape[1]), value, dtype=x.dtype)])


def dedupe_rows(retrieved, k: int | None = None) -> np.ndarray:
    """Deduplicate each row keeping first occurrences, shift items left, pad with -1, cut to ``k``.

    Args:
        retrieved: (n_users, L) integer item ids, -1 = padding.
        k: keep the first ``k`` columns after deduplication (``None``: all L).
            If ``k > L`` the result is padded to ``k`` columns with -1.

    Returns:
        int64 array (n_users, k or L).

    Raises:
        TypeError: not an integer array.
        ValueError: not 2-D, ids below -1, or ``k < 1``.
    """
    arr = _as_id_matrix(retrieved)
    if k is None:
        k = arr.shape[1]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    out, _ = _dedupe_source(arr)
    return _pad(out, k, -1)


def _id_sequence(ids, user: int) -> np.ndarray:
    """One user's relevant ids (a list, tuple, array, set or any iterable of ints) as int64 (m,)."""
    if isinstance(ids, (set, frozenset, dict)) or not hasattr(ids, "__len__"):
        ids = list(ids)  # sets, dict keys, generators: numpy cannot read them as sequences
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"relevant[{user}] must hold integer item ids, got {type(ids).__name__} of dtype {arr.dtype}; "
                        f"{RELEVANT_HELP}")
    if np.issubdtype(arr.dtype, np.floating) and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise ValueError(f"relevant[{user}] holds non-integer item ids, e.g. {arr.ravel()[0]!r}")
    return arr.astype(np.int64).ravel()


def as_relevance_csr(relevant, n_users: int):
    """Turn any accepted ``relevant`` form into a CSR matrix of gains, sorted, no zeros.

    Returns:
        ``scipy.sparse.csr_array`` (n_users, n_items) float64; lists and padded
        arrays give gain 1 per distinct item.

    Raises:
        ValueError: wrong number of rows, negative/NaN gains, ids below -1.
        TypeError: an unsupported type (see ``RELEVANT_HELP``).
    """
    import scipy.sparse as sp

    if sp.issparse(relevant):
        mat = sp.csr_array(relevant, dtype=np.float64)
        if mat.shape[0] != n_users:
            raise ValueError(f"relevant has {mat.shape[0]} rows but retrieved has {n_users} users")
        mat.sum_duplicates()
        if not np.isfinite(mat.data).all() or (mat.data < 0).any():
            raise ValueError("relevant gains must be finite and >= 0")
        mat.eliminate_zeros()
        mat.sort_indices()
        return mat
    if isinstance(relevant, np.ndarray) and relevant.ndim == 2:
        if not np.issubdtype(relevant.dtype, np.integer):
            raise TypeError(f"a padded relevant array must be integer, got {relevant.dtype}")
        if relevant.shape[0] != n_users:
            raise ValueError(f"relevant has {relevant.shape[0]} rows but retrieved has {n_users} users")
        rows = np.repeat(np.arange(n_users), relevant.shape[1])
        cols = relevant.ravel().astype(np.int64)
    elif isinstance(relevant, (list, tuple)) or (isinstance(relevant, np.ndarray) and relevant.dtype == object):
        if len(relevant) != n_users:
            raise ValueError(f"relevant has {len(relevant)} entries but retrieved has {n_users} users")
        parts = [_id_sequence(r, u) for u, r in enumerate(relevant)]
        lengths = np.array([len(p) for p in parts], dtype=np.int64)
        rows = np.repeat(np.arange(n_users), lengths)
        cols = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    else:
        raise TypeError(f"{RELEVANT_HELP}; got {type(relevant).__name__}")
    if cols.size and cols.min() < -1:
        raise ValueError(f"relevant item ids must be >= 0 (or -1 padding); found {int(cols.min())}")
    ok = cols >= 0
    rows, cols = rows[ok], cols[ok]
    n_items = int(cols.max()) + 1 if cols.size else 1
    mat = sp.csr_array((np.ones(len(cols)), (rows, cols)), shape=(n_users, n_items))
    mat.sum_duplicates()
    mat.data[:] = 1.0  # a list says "relevant", not how much
    mat.sort_indices()
    return mat


def _log_comb(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log C(a, b), -inf where b < 0 or b > a."""
    from scipy.special import gammaln

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = (b >= 0) & (b <= a)
    a_, b_ = np.where(ok, a, 0.0), np.where(ok, b, 0.0)
    return np.where(ok, gammaln(a_ + 1) - gammaln(b_ + 1) - gammaln(a_ - b_ + 1), -np.inf)


class _Ranked:
    """Expected per-position hits and gains of the ranked lists and of the ideal list (shared by all metrics).

    Every quantity is per position ``i`` (0-based) of the deduplicated list,
    as an expectation over random orders within tie groups (see the module
    notes); without ties every group is a single item and the expectations
    are the realised values. Ties are paid for only where they exist: rows
    with no tie (the common case, and every row without ``scores``) are
    summed over their hits alone (row, position), and only the rows holding
    a tie group go through the hypergeometric expectations
    (:class:`_TieRows`), whose values replace theirs. Only the first ``k``
    positions are looked up (a tie group crossing the cut-off is read whole).
    """

    def __init__(self, retrieved, relevant, k: int, scores=None):
        arr = _as_id_matrix(retrieved)
        n = arr.shape[0]
        top, src = _dedupe_fast(arr)
        width = max(top.shape[1], k)
        top = _pad(top, width, -1)
        self.rel = rel = as_relevance_csr(relevant, n)
        self.n, self.k = n, k
        self.top = top[:, :k]
        self.full_top = top
        self.n_relevant = np.diff(rel.indptr).astype(np.float64)
        self.valid = self.n_relevant > 0
        if not self.valid.any():
            raise ValueError("no user has a relevant item: ranking metrics are undefined")
        # the hits in the first k positions, row-major: (row, position), and their rank among the row's hits
        self.hit_row, self.hit_pos = np.nonzero(_lookup(rel, self.top))
        first = np.flatnonzero(np.r_[True, self.hit_row[1:] != self.hit_row[:-1]]) if len(self.hit_row) else \
            np.zeros(0, dtype=np.int64)
        self.hit_rank = np.arange(len(self.hit_row)) - np.repeat(first, np.diff(np.r_[first, len(self.hit_row)]))
        self.first_hit = np.full(n, k, dtype=np.int64)  # position of each row's first hit (k: none)
        self.first_hit[self.hit_row[first]] = self.hit_pos[first]
        self.ties = None  # the rows holding a tie group, with their group statistics
        if scores is not None:
            new = _tie_starts(arr, scores, top, src)
            tied = ~new[:, 1:].all(1) if width > 1 else np.zeros(n, dtype=bool)
            if tied.any():
                rows = np.flatnonzero(tied)
                sub = top[rows]
                found = _lookup(rel, sub, rows)  # the whole width: groups may cross k
                gain = np.zeros(found.shape)
                gain[found] = _gain_at(rel, rows[np.nonzero(found)[0]], sub[found])
                self.ties = _TieRows(rows, new[rows], found.astype(np.float64), gain)

    def _per_row(self, k: int, weights: np.ndarray | None, tied: np.ndarray | None) -> np.ndarray:
        """(n,) sum over each row's hits in the top ``k`` of ``weights`` (1 each when None); tie rows: ``tied``."""
        sel = self.hit_pos < k
        w = None if weights is None else weights[sel]
        out = np.bincount(self.hit_row[sel], weights=w, minlength=self.n).astype(np.float64)
        if self.ties is not None:
            out[self.ties.rows] = tied
        return out

    @functools.cached_property
    def _hit_gain(self) -> np.ndarray:
        """The relevance value (gain) of every hit."""
        return _gain_at(self.rel, self.hit_row, self.top[self.hit_row, self.hit_pos])

    def expected_hits(self, k: int) -> np.ndarray:
        """(n,) expected number of hits in the top ``k``."""
        t = self.ties
        return self._per_row(k, None, None if t is None else t.m_hit[:, :k].sum(1))

    def dcg(self, k: int, graded: bool) -> np.ndarray:
        """(n,) expected DCG at ``k``: gains (graded) or hits (binary) over log2(position + 2)."""
        disc = _discount(k)
        t = self.ties
        tied = None if t is None else (t.m_gain if graded else t.m_hit)[:, :k] @ disc
        w = disc[np.minimum(self.hit_pos, k - 1)]
        return self._per_row(k, w * self._hit_gain if graded else w, tied)

    def hit_rate(self, k: int) -> np.ndarray:
        """(n,) P(at least one hit in the top ``k``)."""
        out = (self.first_hit < k).astype(np.float64)
        if self.ties is not None:
            out[self.ties.rows] = self.ties.hit_upto(k - 1)
        return out

    def reciprocal_rank(self, k: int) -> np.ndarray:
        """(n,) expected 1 / (rank of the first hit) within the top ``k``, 0 without a hit."""
        out = np.where(self.first_hit < k, 1.0 / (self.first_hit + 1.0), 0.0)
        if self.ties is not None:
            out[self.ties.rows] = self.ties.rr_terms[:, :k].sum(1)
        return out

    def ap_sum(self, k: int) -> np.ndarray:
        """(n,) sum over positions i < k of E[rel_i * hits(<= i)] / (i + 1) (AP before its denominator)."""
        t = self.ties
        return self._per_row(k, (self.hit_rank + 1.0) / (self.hit_pos + 1.0),
                             None if t is None else t.ap_terms[:, :k].sum(1))

    def dense(self, graded: bool) -> np.ndarray:
        """(n, k) expected hit (or gain) at each position of the top k."""
        out = np.zeros((self.n, self.k))
        out[self.hit_row, self.hit_pos] = self._hit_gain if graded else 1.0
        if self.ties is not None:
            out[self.ties.rows] = (self.ties.m_gain if graded else self.ties.m_hit)[:, : self.k]
        return out

    def ideal_dcg(self, k: int, graded: bool) -> np.ndarray:
        """(n,) DCG of the ideal list at ``k``: ALL relevant items by decreasing gain.

        Binary (or every gain 1): the sum of the first min(k, |relevant|) discounts.
        """
        rel = self.rel
        if not graded or (rel.data == 1).all():
            return np.concatenate([[0.0], np.cumsum(_discount(k))])[np.minimum(self.n_relevant, k).astype(np.int64)]
        rel_rows = np.repeat(np.arange(self.n, dtype=np.int64), np.diff(rel.indptr))
        order = np.lexsort((-rel.data, rel_rows))
        rank_in_row = np.arange(len(order)) - rel.indptr[rel_rows[order]]
        keep = rank_in_row < k
        return np.bincount(rel_rows[order][keep], weights=rel.data[order][keep] * _discount(k)[rank_in_row[keep]],
                           minlength=self.n)

    def inclusion(self, k: int) -> np.ndarray:
        """(n, width) probability that the item listed at each position is in the top ``k``."""
        p = np.broadcast_to((np.arange(self.full_top.shape[1]) < k).astype(np.float64), self.full_top.shape)
        if self.ties is not None:
            p = p.copy()
            p[self.ties.rows] = self.ties.inclusion(k)
        return np.where(self.full_top >= 0, p, 0.0)

    def finish(self, values: np.ndarray, per_user: bool):
        values = np.where(self.valid, values, np.nan)
        if per_user:
            return values
        return float(np.nanmean(values))


def _gain_at(rel, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The relevance values of (user ``rows``, ``items``) pairs that ARE in ``rel``."""
    if (rel.data == 1).all():
        return np.ones(len(rows))
    span = max(int(rel.shape[1]), int(items.max()) + 1 if len(items) else 1)
    rel_rows = np.repeat(np.arange(rel.shape[0], dtype=np.int64), np.diff(rel.indptr))
    keys = rel_rows * span + rel.indices.astype(np.int64)  # sorted: CSR order
    return rel.data[np.searchsorted(keys, rows.astype(np.int64) * span + items)]


class _TieRows:
    """Expectations over random orders within tie groups, for the rows that hold a tie.

    Per position ``i`` (the whole listed width): ``g`` the size of its tie
    group, ``h`` the hits in the group, ``j`` its offset in the group,
    ``h_before`` the hits in the groups before. A random order inside the
    group makes the hits at the group's positions hypergeometric.
    """

    def __init__(self, rows: np.ndarray, new: np.ndarray, hit: np.ndarray, gain: np.ndarray):
        m, width = new.shape
        self.rows = rows
        idx = np.arange(width)
        start = np.maximum.accumulate(np.where(new, idx, 0), axis=1)
        group = np.cumsum(new, axis=1) - 1  # group number within the row
        gid = (np.arange(m)[:, None] * width + group).ravel()
        size = np.bincount(gid, minlength=m * width).reshape(m, width)
        g_hits = np.bincount(gid, weights=hit.ravel(), minlength=m * width).reshape(m, width)
        g_gain = np.bincount(gid, weights=gain.ravel(), minlength=m * width).reshape(m, width)
        self.g = np.take_along_axis(size, group, axis=1).astype(np.float64)
        self.h = np.take_along_axis(g_hits, group, axis=1)
        self.m_hit = self.h / self.g
        self.m_gain = np.take_along_axis(g_gain, group, axis=1) / self.g
        cum_excl = np.concatenate([np.zeros((m, 1)), np.cumsum(hit, axis=1)], axis=1)
        self.h_before = np.take_along_axis(cum_excl, start, axis=1)
        self.j = idx[None, :] - start
        self.start, self.idx = start, idx

    def hit_upto(self, i: int) -> np.ndarray:
        """(m,) P(at least one hit in positions <= i)."""
        g, h, j = self.g[:, i], self.h[:, i], self.j[:, i]
        p_none = np.exp(_log_comb(g - h, j + 1) - _log_comb(g, j + 1))
        return np.where(self.h_before[:, i] > 0, 1.0, 1.0 - p_none)

    @functools.cached_property
    def rr_terms(self) -> np.ndarray:
        # the first hit lies in the first group holding one; P(first hit at offset j)
        first_grp = (self.h_before == 0) & (self.h > 0)
        p_first = np.exp(_log_comb(self.g - 1 - self.j, self.h - 1) - _log_comb(self.g, self.h))
        return np.where(first_grp, p_first / (self.idx[None, :] + 1), 0.0)

    @functools.cached_property
    def ap_terms(self) -> np.ndarray:
        g, h = self.g, self.h
        pair = np.where(g > 1, h * (h - 1) / np.maximum(g * (g - 1), 1), 0.0)
        return (self.m_hit * (1 + self.h_before) + self.j * pair) / (self.idx[None, :] + 1)

    def inclusion(self, k: int) -> np.ndarray:
        end = self.start + self.g
        return np.where(end <= k, 1.0, np.where(self.start < k, (k - self.start) / self.g, 0.0))


def _dedupe_fast(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_dedupe_source`, skipped (source ``None``) when no row has a duplicate or a gap."""
    if arr.shape[1] < 2:
        return arr, None
    srt = np.sort(arr, axis=1)
    dup = ((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)).any()
    gap = ((arr[:, :-1] < 0) & (arr[:, 1:] >= 0)).any()  # padding before an item: items move up
    if dup or gap:
        return _dedupe_source(arr)
    return arr, None


def _lookup(rel, top: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """bool, True where ``top[r, c]`` is relevant to user ``rows[r]`` (default: row r) in ``rel``."""
    n_all = rel.shape[0]
    rows = np.arange(n_all, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(rel.indices) == 0 or top.size == 0:
        return np.zeros(top.shape, dtype=bool)
    span = max(int(rel.shape[1]), int(top.max()) + 1, 1)
    rel_rows = np.repeat(np.arange(n_all, dtype=np.int64), np.diff(rel.indptr))
    rel_keys = rel_rows * span + rel.indices.astype(np.int64)  # sorted: CSR order
    keys = rows[:, None] * span + np.maximum(top, 0)
    if n_all * span <= 1 << 25:  # up to 32 MB: a dense (user, item) bitmap and one gather
        table = np.zeros(n_all * span, dtype=bool)
        table[rel_keys] = True
        return table[keys] & (top >= 0)
    pos = np.minimum(np.searchsorted(rel_keys, keys), len(rel_keys) - 1)
    return (top >= 0) & (rel_keys[pos] == keys)


def _tie_starts(arr: np.ndarray, scores, top: np.ndarray, src: np.ndarray | None) -> np.ndarray:
    """(n, width) True where a new tie group starts (the score changes, or padding). Checks ``scores``."""
    n, width = top.shape
    sc = np.asarray(scores, dtype=np.float64)
    if sc.shape != arr.shape:
        raise ValueError(f"scores must have the shape of retrieved {arr.shape}, got {sc.shape}")
    real = arr >= 0
    nan = np.isnan(sc) & real
    if nan.any():
        r, c = np.argwhere(nan)[0]
        raise ValueError(f"scores contain NaN for a retrieved item, e.g. row {r}, column {c}")
    if ((~real[:, :-1]) & real[:, 1:]).any():  # padding between items: compare with the running minimum
        run_min = np.minimum.accumulate(np.where(real, sc, np.inf), axis=1)
        rising = real[:, 1:] & (sc[:, 1:] > run_min[:, :-1])
    else:  # items first, padding after: neighbours suffice
        rising = real[:, 1:] & (sc[:, 1:] > sc[:, :-1])
    if rising.any():
        r, c = np.argwhere(rising)[0]
        raise ValueError(f"scores must be non-increasing along each row (best first); row {r} rises at column {c + 1}")
    s = sc if src is None else np.take_along_axis(sc, np.maximum(src, 0), axis=1)
    s = _pad(s, width, -np.inf)
    new = np.ones((n, width), dtype=bool)
    new[:, 1:] = (top[:, 1:] < 0) | (top[:, :-1] < 0) | (s[:, 1:] != s[:, :-1])
    return new


def _expected_coverage(r: _Ranked, n_items: int, k: int) -> float:
    """Expected share of the catalogue in at least one top K (independent tie orders per user)."""
    p = r.inclusion(k)
    items = r.full_top
    ok = (items >= 0) & (p > 0)
    if ok.any() and items[ok].max() >= n_items:
        raise ValueError(f"retrieved holds item id {int(items[ok].max())} >= n_items={n_items}")
    certain = np.zeros(n_items, dtype=bool)
    sure = ok & (p >= 1.0)
    certain[items[sure]] = True
    log_miss = np.zeros(n_items)
    part = ok & ~sure
    np.add.at(log_miss, items[part], np.log1p(-p[part]))
    covered = np.where(certain, 1.0, 1.0 - np.exp(log_miss))
    return float(covered.sum() / n_items)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _discount(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


_RANKING_ARGS = """
    Args:
        retrieved: (n_users, L) int item ids, best first, -1 padding.
        relevant: sparse (n_users, n_items), list of id collections (lists, arrays, sets), or padded array.
        k: cut-off, a positive integer.
        scores: optional (n_users, L) float scores of the retrieved items,
            non-increasing along each row: tied items count as the expectation
            over random orders within the tie (module notes). ``None``: the
            list order is strict.
        per_user: return the (n_users,) values (NaN for users without relevant items).

    Returns:
        Mean over users with >= 1 relevant item (float in [0, 1]), or per-user array.

    Raises:
        ValueError: ``retrieved`` not 2-D or with ids below -1, ``k`` not a
            positive integer, ``relevant`` with a wrong number of rows,
            negative/NaN gains or ids below -1, ``scores`` of another shape,
            with NaN for a retrieved item or increasing along a row, or no user
            with a relevant item.
        TypeError: ``retrieved`` not integer, or ``relevant`` of an unsupported type.
"""


def recall_at_k(retrieved, relevant, k: int, *, scores=None, per_user: bool = False):
    """Recall@K = |relevant items in the top K| / |relevant items|.

    The denominator is the number of ALL the user's relevant items, so a user
    with 300 purchases cannot reach 1 at K=50 (see :func:`recall_capped_at_k`
    for the min(K, |relevant|) variant). Conventions (deduplication, padding,
    ties, excluded users): see the module notes above.
    """
    k = _check_k(k)
    r = _Ranked(retrieved, relevant, k, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        return r.finish(r.expected_hits(k) / r.n_relevant, per_user)


def recall_capped_at_k(retrieved, relevant, k: int, *, scores=None, per_user: bool = False):
    """Capped recall@K = hits@K / min(K, |relevant|) (the "R-precision-like" variant).

    Reaches 1 whenever the top K is full of relevant items, even if the user
    has more than K of them. Used e.g. by Liang et al. (2018, "Variational
    Autoencoders for Collaborative Filtering"). Same conventions as :func:`recall_at_k`.
    """
    k = _check_k(k)
    r = _Ranked(retrieved, relevant, k, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        return r.finish(r.expected_hits(k) / np.minimum(k, r.n_relevant), per_user)


def precision_at_k(retrieved, relevant, k: int, *, scores=None, per_user: bool = False):
    """Precision@K = hits@K / K: the share of the K slots holding a relevant item.

    The denominator is K even when fewer than K candidates were returned (an
    empty slot is a miss). Same conventions as :func:`recall_at_k`.
    """
    k = _check_k(k)
    r = _Ranked(retrieved, relevant, k, scores)
    return r.finish(r.expected_hits(k) / k, per_user)


def hit_rate_at_k(retrieved, relevant, k: int, *, scores=None, per_user: bool = False):
    """HitRate@K: 1 if at least one relevant item is in the top K, else 0, averaged over users.

    With ties at the cut-off it is the probability of at least one hit
    (hypergeometric over the tied group). Same conventions as :func:`recall_at_k`.
    """
    k = _check_k(k)
    r = _Ranked(retrieved, relevant, k, scores)
    return r.finish(r.hit_rate(k), per_user)


def mrr_at_k(retrieved, relevant, k: int, *, scores=None, per_user: bool = False):
    """MRR@K: 1 / rank of the FIRST relevant item in the top K (1-based), 0 if none.

    With ties: the expectation of that reciprocal rank over random orders of
    the tied items. Same conventions as :func:`recall_at_k`.
    """
    k = _check_k(k)
    r = _Ranked(retrieved, relevant, k, scores)
    return r.finish(r.reciprocal_rank(k), per_user)


def ndcg_at_k(
    retrieved,
    relevant,
    k: int,
    *,
    graded: bool = False,
    ideal: Literal["all", "retrieved"] = "all",
    scores=None,
    per_user: bool = False,
):
    """NDCG@K with linear gains and log2 discounts (Jarvelin and Kekalainen, 2002).

    ``DCG@K = sum_{i=1..K} gain_i / log2(i + 1)``; ``IDCG@K`` is the DCG of the
    ideal list built from ALL the user's relevant items sorted by decreasing
    gain (not only those that were retrieved), cut to K. This is scikit-learn's
    ``ndcg_score`` (linear gains, not 2^gain - 1), including its treatment of
    ties (``ignore_ties=False``: the gains of a tied group are averaged over
    its positions, which is the expectation over random tie orders).

    Args:
        graded: ``False``: every relevant item has gain 1. ``True``: gains are
            the values of a sparse ``relevant`` (e.g. purchase counts); a list
            or padded array has gain 1 anyway.
        ideal: ``"all"`` (the standard): the ideal list holds ALL relevant
            items. ``"retrieved"``: a LOOSE variant found in the wild, whose
            ideal list holds only the relevant items that were retrieved in
            the top K (their gains sorted); it is inflated (one hit at rank 1
            scores 1 however many items were missed) and is here only to
            measure that inflation. Users with no hit score 0 in both. Not
            defined with ``scores`` (a ratio of random quantities).
        (others): as :func:`recall_at_k`.

    Returns:
        Mean NDCG@K in [0, 1] over users with >= 1 relevant item, or per-user.

    Raises:
        ValueError: unknown ``ideal``, ``ideal="retrieved"`` with ``scores``,
            and everything :func:`recall_at_k` raises.
        TypeError: as :func:`recall_at_k`.
    """
    if ideal not in ("all", "retrieved"):
        raise ValueError(f"ideal must be 'all' or 'retrieved', got {ideal!r}")
    if ideal == "retrieved" and scores is not None:
        raise ValueError("ideal='retrieved' is not defined with scores (ties); use ideal='all'")
    r = _Ranked(retrieved, relevant, _check_k(k), scores)
    if ideal == "all":
        idcg = r.ideal_dcg(r.k, graded)
    else:
        idcg = -np.sort(-r.dense(graded), axis=1) @ _discount(r.k)  # the retrieved gains, best first
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(idcg > 0, r.dcg(r.k, graded) / np.where(idcg > 0, idcg, 1.0), 0.0)
        return r.finish(values, per_user)


MAP_DENOMINATORS = ("min_k_relevant", "n_relevant")


def map_at_k(
    retrieved,
    relevant,
    k: int,
    *,
    denominator: Literal["min_k_relevant", "n_relevant"] = "min_k_relevant",
    scores=None,
    per_user: bool = False,
):
    """MAP@K: mean over users of AP@K = (1/D) * sum_{i<=K} Precision@i * rel_i.

    Which denominator D (papers and libraries differ):

    * ``"min_k_relevant"`` (default): D = min(K, |relevant|), so a perfect
      top-K scores 1 (Kaggle's ``apk``, RecBole's MAP).
    * ``"n_relevant"``: D = |relevant|, truncated TREC average precision;
      cannot reach 1 when |relevant| > K.

    With ties: the exact expectation over random tie orders. Same
    conventions as :func:`recall_at_k`.

    Raises:
        ValueError: unknown ``denominator``, and everything :func:`recall_at_k` raises.
        TypeError: as :func:`recall_at_k`.
    """
    if denominator not in MAP_DENOMINATORS:
        raise ValueError(f"denominator must be one of {MAP_DENOMINATORS}, got {denominator!r}")
    k = _check_k(k)
    r = _Ranked(retrieved, relevant, k, scores)
    d = np.minimum(k, r.n_relevant) if denominator == "min_k_relevant" else r.n_relevant
    with np.errstate(invalid="ignore", divide="ignore"):
        return r.finish(r.ap_sum(k) / d, per_user)


for _f in (recall_at_k, recall_capped_at_k, precision_at_k, hit_rate_at_k, mrr_at_k):
    _f.__doc__ += _RANKING_ARGS


def catalogue_coverage(retrieved, n_items: int, k: int, *, scores=None) -> float:
    """Share of the catalogue that appears in at least one user's top K.

    ``|union of top-K items over ALL rows| / n_items``; rows are deduplicated
    first and -1 padding is ignored. All users count (relevance plays no role).
    With ``scores``, the expectation over random orders within tie groups
    (independently per user): an item tied at a user's cut-off counts with
    its probability of making that top K.

    Raises:
        ValueError: ``n_items < 1``, ``k`` not a positive integer, an item id
            ``>= n_items`` in the top K, malformed ``retrieved`` or ``scores``
            (see :func:`recall_at_k`).
        TypeError: ``retrieved`` not integer.
    """
    k = _check_k(k)
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    arr = _as_id_matrix(retrieved)
    # relevance plays no role: a dummy "relevant" column keeps _Ranked's checks
    r = _Ranked(arr, [[0]] * arr.shape[0], k, scores) if arr.shape[0] else None
    if r is None:
        return 0.0
    return _expected_coverage(r, n_items, k)


RANKING_METRICS = (
    "recall", "recall_capped", "precision", "hit_rate", "mrr", "ndcg", "ndcg_graded", "map",
)
MAP_COLUMNS = {"min_k_relevant": ("map",), "n_relevant": ("map_n_relevant",), "both": ("map", "map_n_relevant")}


def ranking_metrics(
    retrieved,
    relevant,
    ks,
    *,
    n_items: int | None = None,
    scores=None,
    per_user: bool = False,
    map_denominator: Literal["min_k_relevant", "n_relevant", "both"] = "min_k_relevant",
):
    """All ranking metrics at several cut-offs from ONE lookup (for curves and tables).

    Equal to calling :func:`recall_at_k`, :func:`recall_capped_at_k`,
    :func:`precision_at_k`, :func:`hit_rate_at_k`, :func:`mrr_at_k`,
    :func:`ndcg_at_k` (binary, and ``graded=True`` as ``ndcg_graded``) and
    :func:`map_at_k` at each K, and :func:`catalogue_coverage` when
    ``n_items`` is given, all with the same ``scores`` (tie handling, see the
    module notes).

    MAP comes in the two conventions that peers publish (:func:`map_at_k`):
    column ``map`` divides each user's sum of precisions by min(K,
    |relevant|) (Kaggle's ``apk``, RecBole), column ``map_n_relevant`` by
    |relevant| (truncated TREC average precision: ``trec_eval``, ranx,
    pytrec_eval). ``map_denominator`` picks which column(s) appear.

    Args:
        ks: iterable of cut-offs >= 1.
        scores: optional (n_users, L) scores of the retrieved items.
        per_user: if True, return ``{metric: (n_users, len(ks)) array}`` (NaN
            for users without relevant items; coverage omitted).
        map_denominator: ``"min_k_relevant"`` (default: column ``map``),
            ``"n_relevant"`` (column ``map_n_relevant``) or ``"both"``.

    Returns:
        ``pandas.DataFrame`` indexed by K with one column per metric (means over
        users with >= 1 relevant item, plus ``n_users`` evaluated), or the
        per-user dict.

    Raises:
        ValueError: ``ks`` empty or holding a non-positive integer, an item id
            ``>= n_items``, an unknown ``map_denominator``, and everything
            :func:`recall_at_k` raises.
        TypeError: as :func:`recall_at_k`.
    """
    if map_denominator not in MAP_COLUMNS:
        raise ValueError(f"map_denominator must be one of {tuple(MAP_COLUMNS)}, got {map_denominator!r}")
    ks = sorted({_check_k(k) for k in ks})
    if not ks:
        raise ValueError("ks is empty")
    r = _Ranked(retrieved, relevant, ks[-1], scores)
    names = [m for m in RANKING_METRICS if m != "map"] + list(MAP_COLUMNS[map_denominator])
    out: dict[str, list] = {m: [] for m in names}
    nrel = r.n_relevant
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in ks:
            hits = r.expected_hits(k)
            out["recall"].append(hits / nrel)
            out["recall_capped"].append(hits / np.minimum(k, nrel))
            out["precision"].append(hits / k)
            out["hit_rate"].append(r.hit_rate(k))
            out["mrr"].append(r.reciprocal_rank(k))
            out["ndcg"].append(r.dcg(k, graded=False) / r.ideal_dcg(k, graded=False))
            out["ndcg_graded"].append(r.dcg(k, graded=True) / r.ideal_dcg(k, graded=True))
            ap = r.ap_sum(k)
            if "map" in out:
                out["map"].append(ap / np.minimum(k, nrel))
            if "map_n_relevant" in out:
                out["map_n_relevant"].append(ap / nrel)
    per = {m: np.where(r.valid[:, None], np.stack(v, axis=1), np.nan) for m, v in out.items()}
    if per_user:
        return per
    table = pd.DataFrame({m: np.nanmean(v, axis=0) for m, v in per.items()}, index=pd.Index(ks, name="K"))
    if n_items is not None:
        table["coverage"] = [_expected_coverage(r, n_items, k) for k in ks]
    table["n_users"] = int(r.valid.sum())
    return table
