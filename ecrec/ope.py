"""Off-policy evaluation: the value of a policy that never ran, estimated from a log of one that did.

A logging policy :math:`\\pi_b` chose action :math:`a_i` at position
:math:`k_i` with probability :math:`p_i = \\pi_b(a_i | x_i, k_i)` (the
propensity, logged) and saw reward :math:`r_i` (a click). An evaluation policy
:math:`\\pi_e` gives probabilities ``action_dist[i, a, k]``. Its value is the
expected reward per impression, :math:`V(\\pi_e) = E[\\sum_a \\pi_e(a|x,k) r(x, a, k)]`.

* **Direct method (DM)**: plug in a reward model :math:`\\hat q(x, a, k)`:
  :math:`\\frac1n \\sum_i \\sum_a \\pi_e(a|x_i,k_i)\\, \\hat q(x_i, a, k_i)`.
  Low variance, biased by whatever the model gets wrong.
* **Inverse propensity scoring (IPS)**, Horvitz & Thompson (1952): reweight the
  logged rewards, :math:`\\frac1n \\sum_i w_i r_i` with
  :math:`w_i = \\pi_e(a_i|x_i,k_i) / p_i`. Unbiased when every propensity is
  right and positive; its variance grows with the weights.
* **Self-normalised IPS (SNIPS)**, Swaminathan & Joachims (2015):
  :math:`\\sum_i w_i r_i / \\sum_i w_i`; a little bias, much less variance.
* **Doubly robust (DR)**, Dudík, Langford & Li (ICML 2011): DM plus IPS of the
  model's residual, :math:`\\hat V_{DM} + \\frac1n \\sum_i w_i (r_i - \\hat q(x_i, a_i, k_i))`;
  unbiased if either the propensities or the model are right.

Positions are 0-based and the arrays are those of :mod:`obp.ope` (the tests
hold every estimator against obp 0.4.1 on the same inputs). Every estimate
reports its **effective sample size** :math:`(\\sum w)^2 / \\sum w^2` (Kish
1965): how many unweighted rows the weighted average is worth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Estimate", "check_inputs", "importance_weights", "effective_sample_size", "ips", "snips",
           "direct_method", "doubly_robust", "ESTIMATORS", "bootstrap_values", "fit_reward_model"]


@dataclass(frozen=True)
class Estimate:
    """A policy value estimate.

    Attributes:
        value: estimated expected reward per impression (a CTR for clicks).
        ess: effective sample size of the importance weights (n for DM).
        n: rows used.
        max_weight: the largest importance weight (0 for DM).
    """

    value: float
    ess: float
    n: int
    max_weight: float


def check_inputs(action: np.ndarray, position: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray) -> None:
    """Refuse inputs that would give a silent inf or a wrong index.

    Raises:
        ValueError: a propensity is missing (NaN), 0 or negative or above 1
            (the logging policy must have given the logged action a positive
            probability, or the row cannot be reweighted); shapes disagree;
            an action or position falls outside ``action_dist``.
    """
    pscore = np.asarray(pscore, dtype=np.float64)
    n = len(pscore)
    if action_dist.ndim != 3 or action_dist.shape[0] != n:
        raise ValueError(f"action_dist must be (n_rounds, n_actions, len_list) with n_rounds = {n}, "
                         f"got {action_dist.shape}")
    if len(action) != n or len(position) != n:
        raise ValueError(f"action ({len(action)}), position ({len(position)}) and pscore ({n}) must align")
    bad = ~np.isfinite(pscore) | (pscore <= 0) | (pscore > 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{int(bad.sum())} propensities are missing, 0, negative or above 1 (first at row {i}: "
                         f"{pscore[i]!r}); IPS needs pi_b(a|x) > 0 for every logged action. Drop those rows or "
                         "log the propensities the policy really used.")
    if (np.asarray(action) < 0).any() or (np.asarray(action) >= action_dist.shape[1]).any():
        raise ValueError(f"actions must lie in [0, {action_dist.shape[1]})")
    if (np.asarray(position) < 0).any() or (np.asarray(position) >= action_dist.shape[2]).any():
        raise ValueError(f"positions must be 0-based, in [0, {action_dist.shape[2]})")


def importance_weights(action, position, pscore, action_dist, *, clip: float | None = None) -> np.ndarray:
    """``w_i = pi_e(a_i | x_i, k_i) / pi_b(a_i | x_i, k_i)``, float64 (n,); ``clip`` caps them (None: no cap)."""
    check_inputs(action, position, pscore, action_dist)
    w = action_dist[np.arange(len(pscore)), action, position] / np.asarray(pscore, dtype=np.float64)
    if clip is not None:
        if clip <= 0:
            raise ValueError(f"clip must be > 0 (a cap on the weights), got {clip}")
        w = np.minimum(w, clip)
    return w


def effective_sample_size(w: np.ndarray) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2``; 0 when every weight is 0."""
    s2 = float(np.sum(np.square(w)))
    return float(np.sum(w)) ** 2 / s2 if s2 > 0 else 0.0


def ips(reward, action, position, pscore, action_dist, *, clip: float | None = None) -> Estimate:
    """Inverse propensity scoring: ``mean(w * r)``. Shapes: (n,) x4 and (n, n_actions, len_list)."""
    w = importance_weights(action, position, pscore, action_dist, clip=clip)
    return Estimate(float(np.mean(w * reward)), effective_sample_size(w), len(w), float(w.max()))


def snips(reward, action, position, pscore, action_dist, *, clip: float | None = None) -> Estimate:
    """Self-normalised IPS: ``sum(w * r) / sum(w)``.

    Raises:
        ValueError: every weight is 0 (the evaluation policy never picks a logged action).
    """
    w = importance_weights(action, position, pscore, action_dist, clip=clip)
    if w.sum() <= 0:
        raise ValueError("every importance weight is 0: pi_e never takes a logged action, SNIPS is undefined")
    return Estimate(float(np.sum(w * reward) / np.sum(w)), effective_sample_size(w), len(w), float(w.max()))


def _dm_rows(position, action_dist, q_hat) -> np.ndarray:
    rows = np.arange(len(position))
    return np.sum(action_dist[rows, :, position] * q_hat[rows, :, position], axis=1)


def direct_method(position, action_dist, q_hat) -> Estimate:
    """DM: ``mean_i sum_a pi_e(a | x_i, k_i) q_hat(x_i, a, k_i)``; ``q_hat`` is (n, n_actions, len_list)."""
    if q_hat.shape != action_dist.shape:
        raise ValueError(f"q_hat {q_hat.shape} must have action_dist's shape {action_dist.shape}")
    v = _dm_rows(np.asarray(position), action_dist, q_hat)
    return Estimate(float(v.mean()), float(len(v)), len(v), 0.0)


def doubly_robust(reward, action, position, pscore, action_dist, q_hat, *, clip: float | None = None) -> Estimate:
    """DR: DM plus IPS of the reward model's residual on the logged actions."""
    if q_hat.shape != action_dist.shape:
        raise ValueError(f"q_hat {q_hat.shape} must have action_dist's shape {action_dist.shape}")
    w = importance_weights(action, position, pscore, action_dist, clip=clip)
    rows = np.arange(len(w))
    v = _dm_rows(np.asarray(position), action_dist, q_hat) + w * (reward - q_hat[rows, action, position])
    return Estimate(float(v.mean()), effective_sample_size(w), len(w), float(w.max()))


ESTIMATORS: dict[str, Callable[..., Estimate]] = {
    "DM": lambda r, a, k, p, pi, q: direct_method(k, pi, q),
    "IPS": lambda r, a, k, p, pi, q: ips(r, a, k, p, pi),
    "SNIPS": lambda r, a, k, p, pi, q: snips(r, a, k, p, pi),
    "DR": lambda r, a, k, p, pi, q: doubly_robust(r, a, k, p, pi, q),
}  # one signature (reward, action, position, pscore, action_dist, q_hat), for loops over estimators


def bootstrap_values(reward, action, position, pscore, action_dist, q_hat, *, n_boot: int, seed: int,
                     clip: float | None = None) -> dict[str, np.ndarray]:
    """Every estimator of :data:`ESTIMATORS` on ``n_boot`` resamples of the log's rows (with replacement).

    The same resamples for every estimator (paired). ``q_hat`` is kept fixed
    (fitted once on the whole log): the interval covers the log's sampling
    noise given the reward model. Each estimator is a (weighted) mean of
    per-row terms, so a resample is a matrix product, not a loop.

    Returns:
        name -> float64 (n_boot,) values.

    Raises:
        ValueError: ``n_boot`` < 1, or as :func:`check_inputs`.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    w = importance_weights(action, position, pscore, action_dist, clip=clip)
    rows = np.arange(len(w))
    dm = _dm_rows(np.asarray(position), action_dist, q_hat)
    reward = np.asarray(reward, dtype=np.float64)
    terms = {"DM": dm, "IPS": w * reward, "DR": dm + w * (reward - q_hat[rows, action, position])}
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, len(w)))
    for b in range(n_boot):  # multiplicity of each row in resample b
        counts[b] = np.bincount(rng.integers(0, len(w), len(w)), minlength=len(w))
    out = {k: counts @ v / len(w) for k, v in terms.items()}
    out["SNIPS"] = (counts @ (w * reward)) / (counts @ w)
    return {k: out[k] for k in ESTIMATORS}


def fit_reward_model(frame, n_items: int, len_list: int = 3, *, folds: int = 2, seed: int = 0,
                     C: float = 1.0) -> np.ndarray:
    """The direct method's reward model: a cross-fitted logistic regression of click on item, position, user.

    Features are one-hot: the item, the position and each categorical user
    feature (``user_feature_*`` columns). Being linear in one-hot blocks, the
    logit of every (row, item, position) is ``c_i + beta_item + gamma_position``,
    so all ``n x n_items x len_list`` predictions come from broadcasting, not
    from scoring every combination. Each row is predicted by the model fitted
    on the other folds (cross-fitting), so DM and DR do not reuse a row's own
    click, as in Chernozhukov et al. (2018) and obp's ``RegressionModel``.

    Args:
        frame: the log (:class:`ecrec.obd.BanditLog.frame`): ``item_id``, 0-based
            ``position``, ``click``, ``user_feature_*``.
        n_items, len_list: the action space.
        folds: cross-fitting folds (>= 2); seed: their assignment; C: inverse L2 strength.

    Returns:
        float64 (n, n_items, len_list) predicted click probabilities.

    Raises:
        ValueError: ``folds`` < 2, or a training fold holds only one class.
    """
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder

    if folds < 2:
        raise ValueError(f"folds must be >= 2 for cross-fitting, got {folds}")
    users = frame[[c for c in frame.columns if c.startswith("user_feature_")]].to_numpy()
    item, pos, y = (frame[c].to_numpy() for c in ("item_id", "position", "click"))
    fold = np.random.default_rng(seed).integers(0, folds, len(frame))
    q_hat = np.empty((len(frame), n_items, len_list))
    for f in range(folds):
        train, test = fold != f, fold == f
        if len(np.unique(y[train])) < 2:
            raise ValueError(f"cross-fitting fold {f}: its training rows hold one class only; use fewer folds")
        enc = OneHotEncoder(handle_unknown="ignore").fit(users[train])
        eye_i, eye_p = np.eye(n_items)[item[train]], np.eye(len_list)[pos[train]]
        X = sparse.hstack([sparse.csr_matrix(eye_i), sparse.csr_matrix(eye_p), enc.transform(users[train])]).tocsr()
        lr = LogisticRegression(C=C, max_iter=2000).fit(X, y[train])
        coef = lr.coef_[0]
        beta, gamma, user_w = coef[:n_items], coef[n_items:n_items + len_list], coef[n_items + len_list:]
        c = lr.intercept_[0] + enc.transform(users[test]) @ user_w
        logit = c[:, None, None] + beta[None, :, None] + gamma[None, None, :]
        q_hat[test] = 1.0 / (1.0 + np.exp(-logit))
    return q_hat
