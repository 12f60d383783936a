"""Chapter 07: linear baselines on fixed features, the review metrics, the item sentiment curve.

* :func:`fit_linear_heads` / :func:`linear_outputs`: one logistic regression
  per task on fixed features (TF-IDF, a frozen encoder's vectors; the probes);
* :func:`review_metrics`, :func:`bootstrap_review_metrics`: AUC and log loss
  (recommended), macro-F1 and MAE (rating), macro-F1 (department), with
  percentile intervals over reviews and paired differences between models;
* :func:`expected_rating`; :func:`item_sentiment_curve`: a per-item sentiment
  feature against the mean of the star ratings seen so far.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ecrec.review_data import REVIEW_TASKS, ReviewTask

__all__ = ["fit_linear_heads", "linear_outputs", "expected_rating", "review_metrics",
           "bootstrap_review_metrics", "item_sentiment_curve"]

# --- linear models on fixed features (TF-IDF, frozen encoder, the heads' probes) -----------------


def fit_linear_heads(
    x_train,
    y_train: Mapping[str, np.ndarray],
    x_valid,
    y_valid: Mapping[str, np.ndarray],
    tasks: Sequence[ReviewTask],
    *,
    cs: Sequence[float] = (0.1, 1.0, 10.0, 100.0),
    max_iter: int = 2000,
    tol: float = 1e-4,
) -> dict[str, Any]:
    """One scikit-learn ``LogisticRegression`` per task (multinomial for a multi-class task),
    its ``C`` chosen on the validation log loss.

    Args:
        x_train, x_valid: (n, d) features, dense or sparse.
        y_train, y_valid: task -> int64 class indices.
        cs: the inverse regularisation strengths tried.
        max_iter, tol: the lbfgs solver's; ``tol=1e-3`` needs about half the
            iterations of the default on TF-IDF features (multinomial rating).

    Returns:
        ``{task: fitted LogisticRegression}``; ``.C`` is the chosen value.

    Raises:
        ValueError: a class of a task is absent from ``y_train`` (the head
            would have fewer outputs than the task): sample more training reviews.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    models = {}
    for task in tasks:
        k = len(task.classes)
        absent = sorted(set(range(k)) - set(np.unique(y_train[task.name]).tolist()))
        if absent:
            raise ValueError(f"task {task.name!r}: classes {[task.classes[i] for i in absent]} of column "
                             f"{task.column!r} are absent from the training labels; use more training reviews")
        best = None
        for c in cs:
            lr = LogisticRegression(C=c, max_iter=max_iter, tol=tol).fit(x_train, y_train[task.name])
            loss = log_loss(y_valid[task.name], lr.predict_proba(x_valid), labels=list(range(k)))
            if best is None or loss < best[0]:
                best = (loss, lr)
        models[task.name] = best[1]
    return models


def linear_outputs(models: Mapping[str, Any], x) -> dict[str, np.ndarray]:
    """Logits of :func:`fit_linear_heads`' models: (n,) for a binary task, (n, K) otherwise."""
    return {name: np.asarray(m.decision_function(x), dtype=np.float32) for name, m in models.items()}


# --- metrics ---------------------------------------------------------------------------------


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def expected_rating(logits: np.ndarray, classes: Sequence[float] = (1, 2, 3, 4, 5)) -> np.ndarray:
    """``sum_k classes[k] * softmax(z)_k``: float64 (n,) expected stars of (n, K) rating logits."""
    return _softmax(logits) @ np.asarray(classes, dtype=np.float64)


def _per_review(labels: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                tasks: Sequence[ReviewTask]) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """Per-review quantities the metrics are weighted sums of."""
    per, conf = {}, {}
    for task in tasks:
        y, z = np.asarray(labels[task.name]), np.asarray(outputs[task.name], dtype=np.float64)
        if len(y) != len(z):
            raise ValueError(f"task {task.name!r}: {len(y)} labels but {len(z)} predictions")
        if not np.isfinite(z).all():
            raise ValueError(f"task {task.name!r}: non-finite predictions")
        if task.kind == "binary":
            per[f"{task.name}/log_loss"] = np.logaddexp(0.0, z) - y * z
            per[f"{task.name}/_auc"] = z
        else:
            k = len(task.classes)
            if z.ndim != 2 or z.shape[1] != k:
                raise ValueError(f"task {task.name!r}: predictions {z.shape}, expected (n, {k})")
            pred = z.argmax(axis=1)
            conf[task.name] = (y * k + pred, k)
            if task.name == "rating" or all(isinstance(c, (int, float, np.number)) for c in task.classes):
                values = np.asarray(task.classes, dtype=np.float64)
                per[f"{task.name}/mae"] = np.abs(values[pred] - values[y])
    return per, conf


def _macro_f1(confusion: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 of (B, k*k) confusion counts (row = true * k + predicted); absent classes score 0."""
    c = confusion.reshape(len(confusion), k, k)
    tp = np.diagonal(c, axis1=1, axis2=2)
    denom = c.sum(2) + c.sum(1)  # true + predicted per class
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
    return f1.mean(1)


def _metrics_under(weights: np.ndarray, labels, per, conf, tasks) -> dict[str, np.ndarray]:
    from ecrec.stats import weighted_auc_many

    w = np.atleast_2d(weights).astype(np.float64)
    total = w.sum(1)
    out = {}
    for task in tasks:
        if task.kind == "binary":
            out[f"{task.name}/auc"] = weighted_auc_many(np.asarray(labels[task.name]), per[f"{task.name}/_auc"], w)
            out[f"{task.name}/log_loss"] = w @ per[f"{task.name}/log_loss"] / total
        else:
            cell, k = conf[task.name]
            onehot = np.zeros((len(cell), k * k))
            onehot[np.arange(len(cell)), cell] = 1.0
            out[f"{task.name}/macro_f1"] = _macro_f1(w @ onehot, k)
            if f"{task.name}/mae" in per:
                out[f"{task.name}/mae"] = w @ per[f"{task.name}/mae"] / total
    return out


def review_metrics(labels: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                   tasks: Sequence[ReviewTask] = REVIEW_TASKS, weights: np.ndarray | None = None) -> dict[str, float]:
    """The metrics of one model on one set of reviews (optionally weighted).

    ``<binary>/auc`` and ``<binary>/log_loss`` (nats, from logits);
    ``<multiclass>/macro_f1`` (argmax class; unweighted mean of the per-class
    F1, a class never true nor predicted scoring 0, as scikit-learn's
    ``f1_score(average="macro", labels=all, zero_division=0)``) and, for
    numeric classes (rating), ``/mae``: mean |stars of the argmax - true stars|.

    Args:
        labels: task -> int64 (n,) class indices.
        outputs: task -> logits, (n,) binary or (n, K).
        weights: (n,) non-negative review weights (None: all 1).

    Raises:
        ValueError: lengths or shapes that do not fit, non-finite predictions.
    """
    per, conf = _per_review(labels, outputs, tasks)
    n = len(next(iter(labels.values())))
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    return {k: float(v[0]) for k, v in _metrics_under(w, labels, per, conf, tasks).items()}


def bootstrap_review_metrics(
    labels: Mapping[str, np.ndarray],
    outputs: Mapping[str, Mapping[str, np.ndarray]],
    tasks: Sequence[ReviewTask] = REVIEW_TASKS,
    *,
    pairs: Sequence[tuple[str, str]] = (),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Every model's metrics with percentile intervals over reviews, and paired differences.

    Each resample draws the reviews with replacement (as weights: times drawn);
    the same resamples serve every model, so a difference ``a - b`` is paired.

    Args:
        labels: task -> int64 (n,) class indices of the evaluation reviews.
        outputs: model -> task -> logits on those reviews.
        pairs: ``(a, b)`` model names; rows ``"a - b"`` are added.

    Returns:
        A frame indexed by (model, metric) with columns value, low, high
        (and ``excludes_0`` for differences).

    Raises:
        KeyError: a pair names an unknown model.
        ValueError: as :func:`review_metrics`; ``n_boot`` < 1.
    """
    from ecrec.stats import user_resample_weights

    n = len(next(iter(labels.values())))
    counts, index = user_resample_weights(np.arange(n), n_boot, seed)
    w = counts[:, index]
    q = [(1 - level) / 2, 1 - (1 - level) / 2]
    boots, points, rows = {}, {}, []
    for name, out in outputs.items():
        per, conf = _per_review(labels, out, tasks)
        points[name] = {k: float(v[0]) for k, v in _metrics_under(np.ones(n), labels, per, conf, tasks).items()}
        boots[name] = _metrics_under(w, labels, per, conf, tasks)
        for metric, values in boots[name].items():
            lo, hi = np.nanquantile(values, q)
            rows.append({"model": name, "metric": metric, "value": points[name][metric], "low": lo, "high": hi})
    for a, b in pairs:
        if a not in outputs or b not in outputs:
            raise KeyError(f"pair ({a!r}, {b!r}) names a model not in {sorted(outputs)}")
        for metric in boots[a]:
            d = boots[a][metric] - boots[b][metric]
            lo, hi = np.nanquantile(d, q)
            value = points[a][metric] - points[b][metric]
            rows.append({"model": f"{a} - {b}", "metric": metric, "value": value, "low": lo, "high": hi,
                         "excludes_0": bool(lo > 0 or hi < 0)})
    return pd.DataFrame(rows).set_index(["model", "metric"])


# --- the item-level sentiment feature --------------------------------------------------------


def item_sentiment_curve(
    item_ids: np.ndarray,
    stars: np.ndarray,
    scores: np.ndarray,
    ks: Sequence[int],
    *,
    prior: float,
    n_perm: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """How well the mean of a per-review score over an item's first ``k`` reviews tracks the
    item's average rating, against the mean of the first ``k`` star ratings and a constant prior.

    For each item and each of ``n_perm`` random orders of its *scored*
    reviews (finite ``scores``), the first ``k`` are "seen"; the target is the
    mean star rating of all the item's other reviews, scored or not (so no
    estimator sees its target). The estimators: the mean ``score`` of the seen
    reviews (e.g. the model's expected rating, :func:`expected_rating`), the
    mean of their stars, and ``prior``. An item takes part at ``k`` when it has
    at least ``k`` scored reviews and more than ``k`` reviews.

    Args:
        item_ids: (n,) item of each review.
        stars: (n,) star ratings.
        scores: (n,) the model's per-review score, in stars; NaN = not scored.
        ks: numbers of seen reviews (>= 1).
        prior: the constant baseline (e.g. the training reviews' mean rating).

    Returns:
        One row per ``k``: ``items`` taking part; ``mae_score_mean``,
        ``mae_star_mean``, ``mae_prior`` (mean absolute error against the target
        over items and orders); ``corr_score_mean``, ``corr_star_mean``
        (Pearson correlation with the target across items, averaged over the
        orders; NaN with fewer than 3 items).

    Raises:
        ValueError: lengths differ, non-finite stars, or a ``k`` < 1.
    """
    item_ids, stars, scores = np.asarray(item_ids), np.asarray(stars, float), np.asarray(scores, float)
    if not (len(item_ids) == len(stars) == len(scores)):
        raise ValueError(f"item_ids, stars, scores differ in length: {len(item_ids)}, {len(stars)}, {len(scores)}")
    if not np.isfinite(stars).all():
        raise ValueError("stars must be finite")
    if min(ks) < 1:
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    rng = np.random.default_rng(seed)
    codes, inverse = np.unique(item_ids, return_inverse=True)
    # est[k][perm] -> rows of (score mean, star mean, target), one per item taking part
    est = {k: [[] for _ in range(n_perm)] for k in ks}
    for item in range(len(codes)):
        rows = np.flatnonzero(inverse == item)
        scored = rows[np.isfinite(scores[rows])]
        total, count = stars[rows].sum(), len(rows)
        for p in range(n_perm):
            order = scored[rng.permutation(len(scored))]
            for k in ks:
                if len(order) < k or count <= k:
                    continue
                seen = order[:k]
                target = (total - stars[seen].sum()) / (count - k)
                est[k][p].append((scores[seen].mean(), stars[seen].mean(), target))
    out = []
    for k in ks:
        per = [np.asarray(e).reshape(-1, 3) for e in est[k]]
        allrows = np.concatenate(per)
        row = {"k": k, "items": len(per[0])}
        if len(allrows):
            row |= {"mae_score_mean": float(np.abs(allrows[:, 0] - allrows[:, 2]).mean()),
                    "mae_star_mean": float(np.abs(allrows[:, 1] - allrows[:, 2]).mean()),
                    "mae_prior": float(np.abs(prior - allrows[:, 2]).mean())}
        else:
            row |= {"mae_score_mean": float("nan"), "mae_star_mean": float("nan"), "mae_prior": float("nan")}
        for j, name in ((0, "score_mean"), (1, "star_mean")):
            cors = [np.corrcoef(e[:, j], e[:, 2])[0, 1] for e in per
                    if len(e) >= 3 and e[:, j].std() > 0 and e[:, 2].std() > 0]
            row[f"corr_{name}"] = float(np.mean(cors)) if cors else float("nan")
        out.append(row)
    return pd.DataFrame(out).set_index("k")
