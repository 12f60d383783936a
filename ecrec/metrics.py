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
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

__all__ = [
    "log_loss", "roc_auc", "gauc", "dedupe_rows", "as_relevance_csr", "recall_at_k",
    "recall_capped_at_k", "precision_at_k", "hit_rate_at_k", "mrr_at_k", "ndcg_at_k",
    "map_at_k", "catalogue_coverage", "ranking_metrics",
]


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
#   - a list of n_users sequences of item ids (duplicates ignored);
#   - a (n_users, R) integer array padded with -1.
# * Users with NO relevant item are EXCLUDED from the means (their recall is
#   0/0); ``per_user=True`` returns NaN for them. If no user has a relevant
#   item, the functions raise ValueError.
# * Every metric lies in [0, 1].

RELEVANT_HELP = (
    "relevant must be a scipy sparse matrix (n_users, n_items), a list of n_users "
    "sequences of item ids, or a (n_users, R) int array padded with -1"
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
        parts = [np.asarray(r, dtype=np.int64).ravel() for r in relevant]
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
    """Expected per-position gains of the ranked lists and of the ideal list (shared by all metrics).

    Every quantity is per position ``i`` (0-based) of the deduplicated list,
    as an expectation over random orders within tie groups (see the module
    notes); without scores every group is a single item and the expectations
    are the realised values.
    """

    def __init__(self, retrieved, relevant, k: int, scores=None):
        arr = _as_id_matrix(retrieved)
        n = arr.shape[0]
        top, src = _dedupe_source(arr)
        width = max(top.shape[1], k)
        top, src = _pad(top, width, -1), _pad(src, width, -1)
        rel = as_relevance_csr(relevant, n)
        self.k = k
        self.top = top[:, :k]
        self.n_relevant = np.diff(rel.indptr).astype(np.float64)
        self.valid = self.n_relevant > 0
        if not self.valid.any():
            raise ValueError("no user has a relevant item: ranking metrics are undefined")
        # Look up (user, item) pairs: keys user * span + item are sorted in CSR order.
        span = max(int(rel.shape[1]), int(top.max()) + 1, 1)
        rel_rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(rel.indptr))
        rel_keys = rel_rows * span + rel.indices.astype(np.int64)
        keys = np.arange(n, dtype=np.int64)[:, None] * span + np.maximum(top, 0)
        pos = np.searchsorted(rel_keys, keys)
        pos_c = np.minimum(pos, max(len(rel_keys) - 1, 0))
        found = (top >= 0) & (len(rel_keys) > 0)
        if len(rel_keys):
            found &= rel_keys[pos_c] == keys
        hit = found.astype(np.float64)
        gain = np.where(found, rel.data[pos_c] if len(rel_keys) else 0.0, 0.0)
        idx = np.arange(width)
        # tie groups: a new group starts where the score changes (or at padding)
        new = np.ones((n, width), dtype=bool)
        if scores is not None:
            sc = np.asarray(scores, dtype=np.float64)
            if sc.shape != arr.shape:
                raise ValueError(f"scores must have the shape of retrieved {arr.shape}, got {sc.shape}")
            real = arr >= 0
            if np.isnan(sc[real]).any():
                r, c = np.argwhere(np.isnan(sc) & real)[0]
                raise ValueError(f"scores contain NaN for a retrieved item, e.g. row {r}, column {c}")
            masked = np.where(real, sc, np.nan)
            filled = np.where(real, sc, np.inf)
            run_min = np.minimum.accumulate(filled, axis=1)
            rising = real[:, 1:] & (masked[:, 1:] > run_min[:, :-1])
            if rising.any():
                r, c = np.argwhere(rising)[0]
                raise ValueError(
                    f"scores must be non-increasing along each row (best first); row {r} rises at column {c + 1}"
                )
            s = np.take_along_axis(sc, np.maximum(src, 0), axis=1)
            new[:, 1:] = (top[:, 1:] < 0) | (top[:, :-1] < 0) | (s[:, 1:] != s[:, :-1])
        start = np.maximum.accumulate(np.where(new, idx, 0), axis=1)
        group = np.cumsum(new, axis=1) - 1  # group number within the row
        rows = np.broadcast_to(np.arange(n)[:, None], (n, width))
        gid = (rows * width + group).ravel()
        size = np.bincount(gid, minlength=n * width).reshape(n, width)
        g_hits = np.bincount(gid, weights=hit.ravel(), minlength=n * width).reshape(n, width)
        g_gain = np.bincount(gid, weights=gain.ravel(), minlength=n * width).reshape(n, width)
        g = np.take_along_axis(size, group, axis=1).astype(np.float64)
        h = np.take_along_axis(g_hits, group, axis=1)
        self.m_hit = h / g  # expected hit at each position
        self.m_gain = np.take_along_axis(g_gain, group, axis=1) / g
        cum_excl = np.concatenate([np.zeros((n, 1)), np.cumsum(hit, axis=1)], axis=1)
        h_before = np.take_along_axis(cum_excl, start, axis=1)  # hits in the groups before
        j = idx[None, :] - start  # offset within the group
        # HitRate with the cut right after position i: P(at least one hit in positions <= i)
        s_in = j + 1
        p_none = np.exp(_log_comb(g - h, s_in) - _log_comb(g, s_in))
        self.hit_upto = np.where(h_before > 0, 1.0, 1.0 - p_none)
        # MRR: the first hit lies in the first group holding one; P(first hit at offset j)
        first_grp = (h_before == 0) & (h > 0)
        p_first = np.exp(_log_comb(g - 1 - j, h - 1) - _log_comb(g, h))
        self.rr_terms = np.where(first_grp, p_first / (idx[None, :] + 1), 0.0)
        # AP: E[rel_i * hits(<= i)] / (i + 1)
        pair = np.where(g > 1, h * (h - 1) / np.maximum(g * (g - 1), 1), 0.0)
        self.ap_terms = (self.m_hit * (1 + h_before) + j * pair) / (idx[None, :] + 1)
        # inclusion probability of each listed item in the top K (for coverage): needs start and size
        self.start, self.size, self.full_top = start, g, top
        # Ideal ranking: ALL relevant items by decreasing gain, cut to k.
        order = np.lexsort((-rel.data, rel_rows))
        rank_in_row = np.arange(len(order)) - rel.indptr[rel_rows[order]]
        keep = rank_in_row < k
        self.ideal_gains = np.zeros((n, k))
        self.ideal_gains[rel_rows[order][keep], rank_in_row[keep]] = rel.data[order][keep]

    @property
    def hits(self) -> np.ndarray:
        """(n, k) expected hit at each position of the top k."""
        return self.m_hit[:, : self.k]

    @property
    def gains(self) -> np.ndarray:
        return self.m_gain[:, : self.k]

    def expected_hits(self, k: int) -> np.ndarray:
        return self.m_hit[:, :k].sum(1)

    def inclusion(self, k: int) -> np.ndarray:
        """(n, width) probability that the item listed at each position is in the top ``k``."""
        idx = np.arange(self.full_top.shape[1])[None, :]
        end = self.start + self.size
        p = np.where(end <= k, 1.0, np.where(self.start < k, (k - self.start) / self.size, 0.0))
        return np.where((self.full_top >= 0) & (idx >= 0), p, 0.0)

    def finish(self, values: np.ndarray, per_user: bool):
        values = np.where(self.valid, values, np.nan)
        if per_user:
            return values
        return float(np.nanmean(values))


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
        relevant: sparse (n_users, n_items), list of id sequences, or padded array.
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
    return r.finish(r.hit_upto[:, k - 1], per_user)


def mrr_at_k(retrieved, relevant, k: int, *, scores=None, per_user: bool = False):
    """MRR@K: 1 / rank of the FIRST relevant item in the top K (1-based), 0 if none.

    With ties: the expectation of that reciprocal rank over random orders of
    the tied items. Same conventions as :func:`recall_at_k`.
    """
    k = _check_k(k)
    r = _Ranked(retrieved, relevant, k, scores)
    return r.finish(r.rr_terms[:, :k].sum(1), per_user)


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
    disc = _discount(r.k)
    gains = r.gains if graded else r.hits
    if ideal == "all":
        best = r.ideal_gains if graded else (r.ideal_gains > 0).astype(np.float64)
    else:
        best = -np.sort(-gains, axis=1)  # the retrieved gains, best first
    idcg = best @ disc
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(idcg > 0, (gains @ disc) / np.where(idcg > 0, idcg, 1.0), 0.0)
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
        return r.finish(r.ap_terms[:, :k].sum(1) / d, per_user)


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


def ranking_metrics(
    retrieved,
    relevant,
    ks,
    *,
    n_items: int | None = None,
    scores=None,
    per_user: bool = False,
):
    """All ranking metrics at several cut-offs from ONE lookup (for curves and tables).

    Equal to calling :func:`recall_at_k`, :func:`recall_capped_at_k`,
    :func:`precision_at_k`, :func:`hit_rate_at_k`, :func:`mrr_at_k`,
    :func:`ndcg_at_k` (binary, and ``graded=True`` as ``ndcg_graded``) and
    :func:`map_at_k` (default denominator) at each K, and
    :func:`catalogue_coverage` when ``n_items`` is given, all with the same
    ``scores`` (tie handling, see the module notes).

    Args:
        ks: iterable of cut-offs >= 1.
        scores: optional (n_users, L) scores of the retrieved items.
        per_user: if True, return ``{metric: (n_users, len(ks)) array}`` (NaN
            for users without relevant items; coverage omitted).

    Returns:
        ``pandas.DataFrame`` indexed by K with one column per metric (means over
        users with >= 1 relevant item, plus ``n_users`` evaluated), or the
        per-user dict.

    Raises:
        ValueError: ``ks`` empty or holding a non-positive integer, an item id
            ``>= n_items``, and everything :func:`recall_at_k` raises.
        TypeError: as :func:`recall_at_k`.
    """
    ks = sorted({_check_k(k) for k in ks})
    if not ks:
        raise ValueError("ks is empty")
    kmax = ks[-1]
    r = _Ranked(retrieved, relevant, kmax, scores)
    disc = _discount(kmax)
    cum_hits = np.cumsum(r.hits, axis=1)
    dcg = np.cumsum(r.hits * disc, axis=1)
    dcg_g = np.cumsum(r.gains * disc, axis=1)
    idcg = np.cumsum((r.ideal_gains > 0) * disc, axis=1)
    idcg_g = np.cumsum(r.ideal_gains * disc, axis=1)
    ap_num = np.cumsum(r.ap_terms[:, :kmax], axis=1)
    rr = np.cumsum(r.rr_terms[:, :kmax], axis=1)
    out: dict[str, list] = {m: [] for m in RANKING_METRICS}
    nrel = r.n_relevant
    with np.errstate(invalid="ignore", divide="ignore"):
        for k in ks:
            c = k - 1
            out["recall"].append(cum_hits[:, c] / nrel)
            out["recall_capped"].append(cum_hits[:, c] / np.minimum(k, nrel))
            out["precision"].append(cum_hits[:, c] / k)
            out["hit_rate"].append(r.hit_upto[:, c])
            out["mrr"].append(rr[:, c])
            out["ndcg"].append(dcg[:, c] / idcg[:, c])
            out["ndcg_graded"].append(dcg_g[:, c] / idcg_g[:, c])
            out["map"].append(ap_num[:, c] / np.minimum(k, nrel))
    per = {m: np.where(r.valid[:, None], np.stack(v, axis=1), np.nan) for m, v in out.items()}
    if per_user:
        return per
    table = pd.DataFrame({m: np.nanmean(v, axis=0) for m, v in per.items()}, index=pd.Index(ks, name="K"))
    if n_items is not None:
        table["coverage"] = [_expected_coverage(r, n_items, k) for k in ks]
    table["n_users"] = int(r.valid.sum())
    return table
