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
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

__all__ = ["log_loss", "roc_auc", "gauc"]


# --- input checks ----------------------------------------------------------


def _as_1d_float(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN at index {int(np.flatnonzero(np.isnan(arr))[0])}")
    return arr


def _check_labels(y_true, name: str = "y_true") -> np.ndarray:
    y = _as_1d_float(y_true, name)
    bad = (y != 0) & (y != 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must hold only 0 and 1; found {y[i]!r} at index {i}")
    return y


def _check_same_length(**arrays: np.ndarray) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")
    if next(iter(lengths.values())) == 0:
        raise ValueError("inputs are empty")


# --- classification --------------------------------------------------------


def log_loss(y_true, p, eps: float = 1e-15) -> float:
    """Mean binary cross-entropy of predicted probabilities, in nats.

    ``-mean(y * ln(p) + (1 - y) * ln(1 - p))`` with ``p`` clipped to
    ``[eps, 1 - eps]`` so that a confident wrong prediction costs
    ``-ln(eps)`` (about 34.5 for the default) instead of infinity. This is
    scikit-learn's ``log_loss`` for binary labels (which clips at the float
    machine epsilon).

    Args:
        y_true: (n,) labels in {0, 1} (int, float or bool).
        p: (n,) predicted probabilities of the label 1, in [0, 1].
        eps: clipping, 0 <= eps < 0.5.

    Returns:
        The mean loss, a float >= 0.

    Raises:
        ValueError: shapes differ, empty input, NaN, labels outside {0, 1},
            probabilities outside [0, 1] (pass probabilities, not logits),
            or ``eps`` outside [0, 0.5).
        TypeError: non-numeric input.
    """
    if not 0 <= eps < 0.5:
        raise ValueError(f"eps must be in [0, 0.5), got {eps}")
    y = _check_labels(y_true)
    prob = _as_1d_float(p, "p")
    _check_same_length(y_true=y, p=prob)
    if (prob < 0).any() or (prob > 1).any():
        raise ValueError(
            f"p must be probabilities in [0, 1], found range [{prob.min():.4g}, {prob.max():.4g}]; "
            "apply a sigmoid to logits first"
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
    weight: Literal["impressions", "clicks", "uniform"] = "impressions",
) -> tuple[float, int]:
    """Group AUC: the AUC of each user, averaged with weights.

    ``GAUC = sum_u w_u * AUC_u / sum_u w_u`` over users that have both a
    positive and a negative example; a user whose labels are all one class has
    no AUC and is skipped (their count is returned so that it can be reported).
    Per-user AUC uses average ranks within the user, so ties count 1/2 as in
    :func:`roc_auc`. Vectorised: one ``groupby().rank()`` and sums, no Python
    loop over users.

    Weights (the definitions differ between papers; say which one you use):

    * ``"impressions"`` (default; Zhu et al., 2017; Zhou et al., 2018):
      ``w_u`` = number of the user's examples (rows).
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
    if weight not in ("impressions", "clicks", "uniform"):
        raise ValueError(f"weight must be 'impressions', 'clicks' or 'uniform', got {weight!r}")
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
    w = {"impressions": per["n"], "clicks": per["pos"], "uniform": pd.Series(1.0, index=per.index)}[weight]
    return float((auc * w).sum() / w.sum()), n_skipped
