"""Chapter 02, exercises 1 and 2: worked solutions.

Run from the repository root (offline, CPU is enough, seconds)::

    python notebooks/solutions/02_exercises.py

``tests/test_solutions_01_02.py`` runs ``main(smoke=True)`` and checks the
numbers it returns, so the answers below stay true when the package changes.
``smoke`` and ``full`` differ only in how many training snapshots exercise 1
stacks.

Exercise 1. The gradient of logistic regression's mean log loss,

    dL/dw = X^T (sigmoid(X w + b) - y) / n,    dL/db = mean(sigmoid(X w + b) - y),

checked on real data (the chapter's buy-again task, four RFM features)
against central finite differences and against torch autograd through
``binary_cross_entropy_with_logits``; then evaluated at scikit-learn's
unpenalised maximum-likelihood fit.

    On 8,819 customer snapshots (three monthly cutoffs, base rate 0.254)
    and random weights (gradient norm 0.35) the formula agrees with central
    differences to a relative error of 1e-10 (the O(eps^2) truncation and
    rounding of a difference quotient) and with autograd to 1e-16 (rounding
    only: both compute the same sums). At the maximum-likelihood fit the
    gradient is zero to 2e-10, and its last component says something useful:
    dL/db = mean(sigmoid(z) - y) = 0 means the fitted probabilities average
    exactly the base rate (0.2535 and 0.2535). That is the chapter's claim
    that logistic regression with an intercept is "calibrated in the mean on
    its own training data", derived from the gradient.

Exercise 2. The loss at extreme logits: the naive probability-space formula,
the chapter's ``softplus(z) - y z`` taken literally (softplus as the
log-sum-exp ``log(e^0 + e^z)``, ``numpy.logaddexp``), the symmetric form
``softplus((1 - 2y) z) = -log sigmoid((2y - 1) z)``, and torch's
``binary_cross_entropy_with_logits`` in float64 and float32, each against
the float64 symmetric form (no cancellation: ``max(u, 0) + log1p(e^{-|u|})``).

    The naive formula gives inf or nan for 8 of the 26 (z, y) pairs, and
    where it is finite it is already off by 4e-8 for a confidently wrong
    prediction (y = 0, z = 20: 1 - sigmoid(20) loses digits). Every
    logit form is finite everywhere, and its absolute error is at most about
    one rounding unit of |z| (9e-16 in float64). Their *relative* error on the
    tiny losses of confident right answers differs: ``softplus(z) - y z``
    subtracts two nearly equal numbers for y = 1, z >= 40 and returns 0
    instead of 4.2e-18; torch's ``binary_cross_entropy_with_logits``
    computes ``(1 - y) z - logsigmoid(z)``, which cancels in the mirror case,
    y = 0, z <= -40 in float64 and already from |z| = 20 in float32; a
    log-sum-exp written with ``log(1 + e^{-|u|})`` instead of ``log1p`` loses
    both. Only ``softplus((1 - 2y) z)`` with log1p (``numpy.logaddexp``,
    ``-logsigmoid``) is right to the last digit for both labels. For
    training none of this matters: those losses are below 1e-8 next to a mean
    loss of about 0.5, and the gradient sigmoid(z) - y from autograd is exact
    (error 0 on the grid). "Stable" means finite and absolutely accurate, not
    relatively accurate in the tails; where relative accuracy matters (a
    log-likelihood of rare events, a p-value) use the symmetric form.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

SIZES = {
    "smoke": {"train_cutoffs": 3},
    "full": {"train_cutoffs": 6},
}
FEATURES = ["log_recency_days", "log_invoices", "log_spend", "is_uk"]
Z_GRID = np.array([-1000.0, -100.0, -40.0, -20.0, -10.0, -1.0, 0.0, 1.0, 10.0, 20.0, 40.0, 100.0, 1000.0])


def snapshot(clean: pd.DataFrame, cutoff, horizon_days: int = 30) -> pd.DataFrame:
    """The chapter's task, four features: customers seen before ``cutoff``; label: an order in the next 30 days."""
    cutoff = pd.Timestamp(cutoff)
    past = clean[clean["InvoiceDate"] < cutoff]
    future = clean[(clean["InvoiceDate"] >= cutoff) & (clean["InvoiceDate"] < cutoff + pd.Timedelta(days=horizon_days))]
    days_ago = (cutoff - past["InvoiceDate"]).dt.total_seconds() / 86400
    g = past.assign(days_ago=days_ago, amount=past["Quantity"] * past["UnitPrice"]).groupby("CustomerID")
    out = pd.DataFrame({
        "log_recency_days": np.log1p(g["days_ago"].min()),
        "log_invoices": np.log1p(g["InvoiceNo"].nunique()),
        "log_spend": np.log1p(g["amount"].sum()),
        "is_uk": (g["Country"].first() == "United Kingdom").astype(float),
    })
    out["label"] = out.index.isin(future["CustomerID"].unique()).astype(float)
    return out


def exercise_1(clean: pd.DataFrame, size: dict, *, seed: int) -> dict:
    """Analytic gradient vs finite differences vs autograd, at random weights and at the MLE."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from ecrec.mlp import log_loss_from_logits, relative_error, sigmoid

    cutoffs = pd.date_range(end="2011-08-01", periods=size["train_cutoffs"], freq="MS")
    data = pd.concat([snapshot(clean, c) for c in cutoffs], ignore_index=True)
    X = data[FEATURES].to_numpy(np.float64)
    X = (X - X.mean(0)) / X.std(0)
    y = data["label"].to_numpy(np.float64, copy=True)

    def loss(theta):  # theta = [w, b]
        return log_loss_from_logits(y, X @ theta[:-1] + theta[-1])

    def analytic(theta):
        r = sigmoid(X @ theta[:-1] + theta[-1]) - y
        return np.r_[X.T @ r / len(y), r.mean()]

    def finite_diff(theta, eps=1e-6):
        e = np.eye(len(theta)) * eps
        return np.array([(loss(theta + e[i]) - loss(theta - e[i])) / (2 * eps) for i in range(len(theta))])

    def autograd(theta):
        t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
        z = torch.from_numpy(X) @ t[:-1] + t[-1]
        torch.nn.functional.binary_cross_entropy_with_logits(z, torch.from_numpy(y)).backward()
        return t.grad.numpy()

    theta_random = np.random.default_rng(seed).normal(0.0, 1.0, len(FEATURES) + 1)
    mle = LogisticRegression(C=np.inf, max_iter=1000, tol=1e-10).fit(X, y)
    theta_mle = np.r_[mle.coef_[0], mle.intercept_]
    g_rand, g_mle = analytic(theta_random), analytic(theta_mle)
    p_mle = sigmoid(X @ theta_mle[:-1] + theta_mle[-1])
    return {
        "n": len(y),
        "base_rate": float(y.mean()),
        "random_grad_norm": float(np.linalg.norm(g_rand)),
        "rel_error_finite_diff": relative_error(g_rand, finite_diff(theta_random)),
        "rel_error_autograd": relative_error(g_rand, autograd(theta_random)),
        "mle_grad_norm": float(np.linalg.norm(g_mle)),
        "mle_grad_b": float(g_mle[-1]),
        "mle_mean_prediction": float(p_mle.mean()),
    }


def exercise_2() -> dict:
    """Every formulation of the log loss on ``Z_GRID`` x {0, 1}, against the float64 symmetric form."""
    import torch

    z = np.r_[Z_GRID, Z_GRID]
    y = np.r_[np.zeros_like(Z_GRID), np.ones_like(Z_GRID)]
    u = (1 - 2 * y) * z
    exact = np.maximum(u, 0) + np.log1p(np.exp(-np.abs(u)))  # softplus(u), no cancellation
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        p = 1.0 / (1.0 + np.exp(-z))
        naive = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        lse_log = np.maximum(u, 0) + np.log(1 + np.exp(-np.abs(u)))  # log instead of log1p
    forms = {
        "naive": naive,
        "softplus(z) - y z": np.logaddexp(0.0, z) - y * z,
        "softplus((1-2y) z), log not log1p": lse_log,
        "softplus((1-2y) z)": np.logaddexp(0.0, u),
        "-logsigmoid((2y-1) z), torch": -torch.nn.functional.logsigmoid(torch.from_numpy(-u)).numpy(),
    }
    for dt in (torch.float64, torch.float32):
        zt = torch.tensor(z, dtype=dt, requires_grad=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(zt, torch.tensor(y, dtype=dt), reduction="none")
        loss.sum().backward()
        tag = str(dt).removeprefix("torch.")
        forms[f"torch BCEWithLogits {tag}"] = loss.detach().double().numpy()
        if dt is torch.float64:
            grad64 = zt.grad.numpy()
    from ecrec.mlp import sigmoid

    grad_exact = sigmoid(z) - y
    rows = {}
    for name, v in forms.items():
        with np.errstate(invalid="ignore"):
            abs_err = np.abs(v - exact)
            rel_err = np.where(exact > 0, abs_err / np.where(exact > 0, exact, 1.0), abs_err)
        finite = np.isfinite(v)
        bad = finite & (rel_err > 0.01)
        rows[name] = {
            "non_finite": int((~finite).sum()),
            "max_abs_error": float(abs_err[finite].max()),
            "max_rel_error": float(rel_err[finite].max()),
            # where the relative error is lost: the smallest |z| of each label with > 1 % error
            "rel_error_from_y0": float(np.abs(z[bad & (y == 0)]).min()) if (bad & (y == 0)).any() else None,
            "rel_error_from_y1": float(np.abs(z[bad & (y == 1)]).min()) if (bad & (y == 1)).any() else None,
        }
    return {
        "forms": rows,
        "grad_max_abs_error_torch64": float(np.abs(grad64 - grad_exact).max()),
        "exact_y1_z40": float(exact[(y == 1) & (z == 40)][0]),
        "exact_loss_range": (float(exact.min()), float(exact.max())),
    }


def main(smoke: bool = True, *, seed: int = 42, verbose: bool = True) -> dict:
    """Both exercises; returns ``{"exercise_1": ..., "exercise_2": ..., "seconds"}``."""
    from ecrec.data import load_clean_online_retail

    started = time.time()
    size = SIZES["smoke" if smoke else "full"]
    clean, _ = load_clean_online_retail()
    out = {"exercise_1": exercise_1(clean, size, seed=seed), "exercise_2": exercise_2()}
    if verbose:
        print("Exercise 1: the gradient of logistic regression's log loss")
        print(pd.Series(out["exercise_1"]).to_string())
        print("\nExercise 2: the log loss at extreme logits, against softplus((1 - 2y) z) in float64")
        print(pd.DataFrame(out["exercise_2"]["forms"]).T.to_string())
        print("torch float64 gradient vs sigmoid(z) - y, max abs error:", out["exercise_2"]["grad_max_abs_error_torch64"])
    out["seconds"] = time.time() - started
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="six training snapshots instead of three")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    result = main(smoke=not args.full, seed=args.seed)
    print(f"\n{result['seconds']:.0f} s")
