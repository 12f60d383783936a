"""Uncertainty: bootstrap intervals over users for AUC and its differences.

Examples of one user are not independent (same tastes, same day), so the
unit of resampling is the **user** (a cluster bootstrap): each resample draws
users with replacement and keeps all their rows, as many times as the user was
drawn. A difference between two models is resampled *paired* (the same users
for both), which is what makes small but consistent gaps visible.

AUC under resampling weights is the weighted Mann-Whitney statistic, ties
counted as one half (as scikit-learn's ``roc_auc_score`` with
``sample_weight``); it is computed for all resamples at once from one sort per
score, so a thousand resamples of 70,000 rows take about a second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "user_resample_weights", "weighted_auc_many", "bootstrap_auc", "bootstrap_log_loss", "paired_mean_diff",
    "interval_table", "level_label",
]


def _check_level(level: float) -> list[float]:
    """The two quantiles of a central ``level`` interval. Raises ValueError outside (0, 1)."""
    if not 0 < level < 1:
        raise ValueError(f"level is the interval's coverage, strictly between 0 and 1 (e.g. 0.95), got {level!r}")
    return [(1 - level) / 2, 1 - (1 - level) / 2]


def _check_users(users, n: int, who: str) -> np.ndarray:
    """``users`` as a 1-D array of ``n`` entries, one per row. Raises ValueError naming both lengths."""
    u = np.asarray(users)
    if u.ndim != 1 or len(u) != n:
        raise ValueError(
            f"{who}: users must give the user of every row, shape ({n},) like the labels; got shape {u.shape} "
            f"({len(u) if u.ndim else 0} entries for {n} rows): align users with y and the scores"
        )
    return u


def level_label(level: float) -> str:
    """``0.95`` -> ``"95%"``, ``0.9`` -> ``"90%"``, ``0.999`` -> ``"99.9%"`` (a coverage as people write it)."""
    return f"{100 * level:.10g}%"


def user_resample_weights(users: Sequence | np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row multiplicities of ``n_boot`` user-level bootstrap resamples.

    Args:
        users: (n,) user id of every row.
        n_boot: resamples (>= 1).
        seed: the generator's seed.

    Returns:
        ``(counts, user_index)``: int32 (n_boot, n_users) times each user is
        drawn, and int64 (n,) each row's user position; a row's weight in
        resample ``b`` is ``counts[b, user_index]``.

    Raises:
        ValueError: ``n_boot`` < 1 or no rows.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    codes, user_index = np.unique(np.asarray(users), return_inverse=True)
    if len(user_index) == 0:
        raise ValueError("no rows to resample")
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, len(codes), size=(n_boot, len(codes)))
    counts = np.zeros((n_boot, len(codes)), dtype=np.int32)
    np.add.at(counts, (np.arange(n_boot)[:, None], drawn), 1)
    return counts, user_index.astype(np.int64)


def _merge_one_class_runs(group: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Renumber ascending score groups so that consecutive groups holding one class only share a group.

    Exact for the AUC: positives in a run of positive-only groups see the same negative
    weight below them, and a run of negative-only groups lies wholly below or above every
    positive; groups holding both classes (ties across classes) stay alone. Fewer groups
    make the (resamples x groups) sums of :func:`weighted_auc_many` cheaper.
    """
    n_groups = int(group.max()) + 1
    has_pos = np.bincount(group[pos], minlength=n_groups) > 0
    has_neg = np.bincount(group[~pos], minlength=n_groups) > 0
    kind = has_pos.astype(np.int8) + 2 * has_neg.astype(np.int8)  # 1 positives only, 2 negatives only, 3 both
    starts = np.ones(n_groups, dtype=bool)
    starts[1:] = (kind[1:] != kind[:-1]) | (kind[1:] == 3)
    return (np.cumsum(starts) - 1)[group]


def weighted_auc_many(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of one score under many row weightings, ties counted one half.

    Args:
        y: (n,) 0/1 labels.
        score: (n,) float scores (logits or probabilities; only their order matters).
        weights: (B, n) non-negative row weights, or (n,) for one weighting.

    Returns:
        float64 (B,) AUCs (NaN where a weighting leaves one class without weight).

    Raises:
        ValueError: shapes disagree, labels outside {0, 1}, non-finite scores.
    """
    y = np.asarray(y)
    score = np.asarray(score, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if y.shape != score.shape or w.shape[1] != len(y):
        raise ValueError(f"y {y.shape}, score {score.shape} and weights {w.shape} do not fit")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must hold only 0 and 1")
    if not np.isfinite(score).all():
        raise ValueError("scores must be finite")
    from scipy import sparse

    _, group = np.unique(score, return_inverse=True)  # tied scores share a group, ascending
    pos, neg = y == 1, y == 0
    group = _merge_one_class_runs(group, pos)
    n_groups = int(group.max()) + 1
    # (rows of one class) x (score groups) indicators: weights @ G sums the weight per group
    g_pos = sparse.csr_array((np.ones(pos.sum()), (np.arange(pos.sum()), group[pos])), shape=(pos.sum(), n_groups))
    g_neg = sparse.csr_array((np.ones(neg.sum()), (np.arange(neg.sum()), group[neg])), shape=(neg.sum(), n_groups))
    out = np.empty(len(w))
    for start in range(0, len(w), 64):  # bounded memory: 64 x n_groups at a time
        wb = w[start : start + 64]
        wp = np.asarray((g_pos.T @ wb[:, pos].T).T)
        wn = np.asarray((g_neg.T @ wb[:, neg].T).T)
        below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each group
        num = (wp * (below + 0.5 * wn)).sum(1)
        den = wp.sum(1) * wn.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + 64] = np.where(den > 0, num / den, np.nan)
    return out


def _auc_of_each(y: np.ndarray, scores: Mapping[str, np.ndarray], w: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`weighted_auc_many` of every score under the same weights, one thread per core.

    The scores are independent and the time goes to numpy and scipy calls that
    release the GIL (sparse products, cumulative sums), so threads keep every
    core busy; each score's result is the one a single thread computes.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    workers = min(len(scores), os.cpu_count() or 1)
    if workers <= 1:
        return {k: weighted_auc_many(y, s, w) for k, s in scores.items()}
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(scores, pool.map(lambda s: weighted_auc_many(y, s, w), scores.values()), strict=True))


def bootstrap_auc(
    y: np.ndarray,
    scores: Mapping[str, np.ndarray],
    users: Sequence | np.ndarray,
    *,
    pairs: Sequence[tuple[str, str]] = (),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """AUC of each score, and paired differences, with percentile intervals over users.

    Args:
        y: (n,) 0/1 labels.
        scores: name -> (n,) scores on the same rows.
        users: (n,) user of every row (the resampling unit).
        pairs: ``(a, b)`` names; the result has ``"a - b"`` entries.
        n_boot: resamples.
        seed: seeds the resamples (the same resamples for every score: paired).
        level: the interval's coverage.

    Returns:
        ``{name: {"auc", "low", "high", "level"}}`` and ``{"a - b": {"diff", "low",
        "high", "excludes_0", "level"}}``; point estimates are on the full
        sample, ``level`` is the interval's coverage (as passed).

    Raises:
        KeyError: a pair names an unknown score.
        ValueError: ``users`` not one entry per row of ``y`` (both lengths
            named), ``level`` outside (0, 1), and as :func:`weighted_auc_many`.
    """
    q = _check_level(level)
    users = _check_users(users, len(np.asarray(y)), "bootstrap_auc")
    counts, user_index = user_resample_weights(users, n_boot, seed)
    w = counts[:, user_index]
    point = {k: float(weighted_auc_many(y, s, np.ones(len(y)))[0]) for k, s in scores.items()}
    boots = _auc_of_each(y, scores, w)
    out: dict[str, dict[str, float]] = {}
    for k in scores:
        lo, hi = np.nanquantile(boots[k], q)
        out[k] = {"auc": point[k], "low": float(lo), "high": float(hi), "level": float(level)}
    for a, b in pairs:
        if a not in scores or b not in scores:
            raise KeyError(f"pair ({a!r}, {b!r}) names a score not in {sorted(scores)}")
        d = boots[a] - boots[b]
        lo, hi = np.nanquantile(d, q)
        out[f"{a} - {b}"] = {"diff": point[a] - point[b], "low": float(lo), "high": float(hi),
                             "excludes_0": bool(lo > 0 or hi < 0), "level": float(level)}
    return out


def bootstrap_log_loss(
    y: np.ndarray,
    probs: Mapping[str, np.ndarray],
    users: Sequence | np.ndarray,
    *,
    pairs: Sequence[tuple[str, str]] = (),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    eps: float = 1e-7,
) -> dict[str, dict[str, float]]:
    """Log loss of each model, and paired differences, with percentile intervals over users.

    The same user resamples as :func:`bootstrap_auc` (same ``seed``:
    the same resamples): a resample's log loss is the row losses averaged with
    the rows' multiplicities as weights.

    Args:
        y: (n,) 0/1 labels.
        probs: name -> (n,) probabilities (clipped to ``[eps, 1 - eps]``).
        users: (n,) user of each row.
        pairs: ``(a, b)``: adds ``"a - b"`` (negative: ``a`` has the lower loss).
        level: the interval's coverage.

    Returns:
        ``{name: {"log_loss", "low", "high", "level"}}`` and ``{"a - b": {"diff",
        "low", "high", "excludes_0", "level"}}``.

    Raises:
        KeyError: a pair names an unknown model.
        ValueError: lengths differ (``users`` against the labels: both named),
            labels outside {0, 1}, or ``level`` outside (0, 1).
    """
    from ecrec.metrics import _check_labels

    q = _check_level(level)
    y = _check_labels(y, "y")
    users = _check_users(users, len(y), "bootstrap_log_loss")
    counts, user_index = user_resample_weights(users, n_boot, seed)
    w = counts[:, user_index].astype(np.float64)  # (B, n)
    rows, boots, point = {}, {}, {}
    for k, p in probs.items():
        p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
        if p.shape != y.shape:
            raise ValueError(f"bootstrap_log_loss: {k!r} has shape {p.shape}, labels {y.shape}")
        rows[k] = -(y * np.log(p) + (1 - y) * np.log1p(-p))
        point[k] = float(rows[k].mean())
        boots[k] = (w @ rows[k]) / w.sum(1)
    out: dict[str, dict[str, float]] = {}
    for k in probs:
        lo, hi = np.quantile(boots[k], q)
        out[k] = {"log_loss": point[k], "low": float(lo), "high": float(hi), "level": float(level)}
    for a, b in pairs:
        if a not in probs or b not in probs:
            raise KeyError(f"pair ({a!r}, {b!r}) names a model not in {sorted(probs)}")
        lo, hi = np.quantile(boots[a] - boots[b], q)
        out[f"{a} - {b}"] = {"diff": point[a] - point[b], "low": float(lo), "high": float(hi),
                             "excludes_0": bool(lo > 0 or hi < 0), "level": float(level)}
    return out


def paired_mean_diff(a, b, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b`` over users with a paired bootstrap interval (users resampled with replacement).

    ``a`` and ``b`` are one value per user (e.g. each user's Recall@K under two
    generators), aligned; users where ``a`` is NaN (nothing to evaluate) are
    dropped from both. The same ``seed`` and number of users give the same
    resamples, so every comparison in a chapter sees the same users.

    Args:
        a, b: float (n_users,).
        n_boot: resamples; seed: their seed; level: interval coverage.

    Returns:
        ``{"diff", "low", "high", "excludes_0", "level"}``.

    Raises:
        ValueError: shapes differ, ``b`` is NaN where ``a`` is not, no user is
            left, or ``level`` outside (0, 1).
    """
    _check_level(level)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a {a.shape} and b {b.shape} must be aligned 1-d arrays, one value per user")
    ok = ~np.isnan(a)
    if np.isnan(b[ok]).any():
        raise ValueError("b is NaN for a user where a is not: align both on the same evaluated users")
    d = (a - b)[ok]
    if d.size == 0:
        raise ValueError("no user left to compare (a is NaN everywhere)")
    idx = np.random.default_rng(seed).integers(0, d.size, (n_boot, d.size))
    lo, hi = np.quantile(d[idx].mean(1), [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(d.mean()), "low": float(lo), "high": float(hi), "excludes_0": bool(lo > 0 or hi < 0),
            "level": float(level)}


def interval_table(result: Mapping[str, Mapping[str, float]], digits: int = 3):
    """A bootstrap result as a pandas frame with a printable "value [low, high]" column.

    The column is named from the entries' own ``"level"``: ``"with 95%
    interval"`` for ``level=0.95``, ``"with 90% interval"`` for 0.9.

    Args:
        result: :func:`bootstrap_auc`, :func:`bootstrap_log_loss` or
            ``{name: paired_mean_diff(...)}``; every entry has ``"low"``,
            ``"high"``, ``"level"`` and one of ``"auc"``, ``"log_loss"``, ``"diff"``.
        digits: decimals printed.

    Returns:
        One row per entry: its fields plus ``"with <level> interval"``.

    Raises:
        ValueError: no entry, an entry without ``"level"`` (not computed by
            this module), or entries at different levels (one column, one label).
    """
    import pandas as pd

    if not result:
        raise ValueError("interval_table: the result has no entry")
    levels = {k: r.get("level") for k, r in result.items()}
    missing = [k for k, v in levels.items() if v is None]
    if missing:
        raise ValueError(f"interval_table: entries {missing} carry no 'level'; pass a result of ecrec.stats")
    if len(set(levels.values())) > 1:
        raise ValueError(f"interval_table: entries mix interval levels {levels}; tabulate each level on its own")
    column = f"with {level_label(next(iter(levels.values())))} interval"
    rows = {}
    for k, r in result.items():
        value = next(r[f] for f in ("auc", "log_loss", "diff") if f in r)
        sign = "+" if "diff" in r else ""
        rows[k] = {**r, column: f"{value:{sign}.{digits}f} [{r['low']:{sign}.{digits}f}, {r['high']:{sign}.{digits}f}]"}
    return pd.DataFrame(rows).T
