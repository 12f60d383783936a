# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. The math of a CTR model: from logistic regression to a DNN
#
# Every model in this book, from logistic regression on counts to a fine-tuned
# BERT, ends the same way: a number $z$ (the **logit**), a sigmoid that turns it
# into a probability $\hat y = \sigma(z)$, and the **log loss** that compares
# $\hat y$ with what happened. Get those three right and every later chapter
# inherits them; get one wrong and a model trains slowly, produces `nan`, or
# silently learns nothing.
#
# This chapter derives each piece and checks it in executed code, on a real
# task from Online Retail.
#
# **You will learn to**
#
# * say why a click (or a purchase) is a Bernoulli event and why log loss,
#   not AUC, is the loss to train on;
# * write the forward pass of an MLP with the shape of every tensor;
# * derive the gradient $\partial L / \partial z = \hat y - y$ and
#   back-propagation, and spot a wrong "shorthand" gradient;
# * compute the loss from logits so that it never overflows, and see what
#   clamping and half precision do to the loss and its gradient;
# * check an MLP written from scratch in numpy (`ecrec.mlp`) against finite
#   differences and torch autograd;
# * train logistic regression and that MLP on real data and read their loss
#   curves, test metrics and calibration.
#
# **You need** chapter 01 (the cleaned Online Retail log), calculus up to the
# chain rule, and a little numpy and torch. The whole chapter runs on a CPU in
# seconds.

# %% tags=["remove-input"]
# The chapter's lesson in one sentence, computed from this run in the Summary and shown here as well.
from IPython.display import Markdown, display

LESSON = display(Markdown("*This chapter's lesson, in one sentence, appears here once the chapter has run.*"),
                 display_id=True)

# %% tags=["parameters", "remove-input"]
profile = "auto"  # "auto" | "smoke" | "cpu" | "full"
seed = 42
output_dir = "outputs/02_ctr_math"
sizes = None  # optional dict overriding the profile's sizes

# %% tags=["remove-input"]
# In Colab: fetch the book's code and data, then install it (skipped elsewhere).
import os
import subprocess
import sys

if "google.colab" in sys.modules and not os.path.isdir("ecrec-book"):
    subprocess.run(["git", "clone", "--depth", "1", "https://github.com/ecrec-book/ecrec", "ecrec-book"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements.txt"], cwd="ecrec-book", check=True)
    sys.path.insert(0, os.path.abspath("ecrec-book"))

# %% tags=["remove-input"]
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from ecrec import plots
from ecrec.data import load_clean_online_retail
from ecrec.io import write_metrics
from ecrec.metrics import log_loss, roc_auc
from ecrec.mlp import (
    Adam,
    gradient_check,
    init_mlp,
    log_loss_from_logits,
    log_loss_grad,
    loss_and_grads,
    mlp_backward,
    mlp_forward,
    predict_proba,
    relative_error,
    sigmoid,
)
from ecrec.profiles import pick_sizes, seed_everything
from ecrec.stats import bootstrap_auc, bootstrap_log_loss
from ecrec.verdict import compare, decide

STARTED = time.time()
SIZES = {
    # train_cutoffs: how many monthly snapshots to train on (the last one is 2011-08-01).
    # _minutes: wall time measured on 2 CPU cores, smoke 10 s, full 24 s (numpy and CPU torch:
    # a GPU does not change it)
    "smoke": {"train_cutoffs": 3, "hidden": [32, 16], "epochs": 40, "batch_size": 256, "deep_layers": 8,
              "_minutes": 0.2},
    "full": {"train_cutoffs": 6, "hidden": [64, 32], "epochs": 80, "batch_size": 256, "deep_layers": 8,
             "_minutes": 0.5},
}
run_profile, size = pick_sizes(profile, SIZES, sizes)
seed_everything(seed)
torch.set_default_dtype(torch.float64)
print(size)

# %% [markdown]
# ## 2.1 The task: will this customer buy again within 30 days?
#
# Online Retail has no ad impressions, so we build the closest honest binary
# event it does hold. At a **cutoff date** $t$ we look at every customer who
# has bought before $t$ and ask: does this customer place an order in
# $[t, t + 30\,\text{days})$? That is a click-through problem in miniature:
# an exposure (the customer exists at $t$), an action or not, and a probability
# to predict from what we knew at $t$.
#
# The features are recency, frequency and monetary value (RFM), computed
# **strictly before** $t$; the label strictly after. We train on monthly
# snapshots up to 2011-08-01, pick the epoch on 2011-09-01, and test on
# 2011-10-01, so the test set lies entirely in the model's future.

# %%
clean, _ = load_clean_online_retail()
clean = clean.assign(Amount=clean["Quantity"] * clean["UnitPrice"])  # pounds
clean[["InvoiceNo", "CustomerID", "InvoiceDate", "Amount"]].head(3)

# %%
FEATURES = [
    "log_recency_days", "log_tenure_days", "log_invoices", "log_invoices_30d",
    "log_invoices_90d", "log_spend", "log_avg_basket", "log_products", "is_uk",
]


def snapshot(df: pd.DataFrame, cutoff: str, horizon_days: int = 30) -> pd.DataFrame:
    """One row per customer seen before `cutoff`: RFM features from the past, label from the next `horizon_days`."""
    cutoff = pd.Timestamp(cutoff)
    past = df[df["InvoiceDate"] < cutoff]
    future = df[(df["InvoiceDate"] >= cutoff) & (df["InvoiceDate"] < cutoff + pd.Timedelta(days=horizon_days))]
    past = past.assign(days_ago=(cutoff - past["InvoiceDate"]).dt.total_seconds() / 86400)
    invoices = past.groupby(["CustomerID", "InvoiceNo"]).agg(days_ago=("days_ago", "min"), amount=("Amount", "sum"))
    inv = invoices.assign(in_30d=invoices["days_ago"] < 30, in_90d=invoices["days_ago"] < 90).groupby(level=0)
    lines = past.groupby("CustomerID")
    out = pd.DataFrame({
        "log_recency_days": np.log1p(lines["days_ago"].min()),
        "log_tenure_days": np.log1p(lines["days_ago"].max()),
        "log_invoices": np.log1p(inv.size()),
        "log_invoices_30d": np.log1p(inv["in_30d"].sum()),
        "log_invoices_90d": np.log1p(inv["in_90d"].sum()),
        "log_spend": np.log1p(lines["Amount"].sum()),
        "log_avg_basket": np.log1p(inv["amount"].mean()),
        "log_products": np.log1p(lines["StockCode"].nunique()),
        "is_uk": (lines["Country"].first() == "United Kingdom").astype(float),
    })
    assert past["InvoiceDate"].max() < cutoff <= future["InvoiceDate"].min()  # point in time
    out["label"] = out.index.isin(future["CustomerID"].unique()).astype(int)
    out["cutoff"] = cutoff
    return out.reset_index()


train_cutoffs = pd.date_range(end="2011-08-01", periods=size["train_cutoffs"], freq="MS")
train = pd.concat([snapshot(clean, c) for c in tqdm(train_cutoffs, desc="train snapshots")], ignore_index=True)
valid, test = snapshot(clean, "2011-09-01"), snapshot(clean, "2011-10-01")
pd.DataFrame({
    name: {"cutoffs": f"{d['cutoff'].min().date()} .. {d['cutoff'].max().date()}", "rows": len(d),
           "customers": d["CustomerID"].nunique(), "positive rate": round(d["label"].mean(), 4)}
    for name, d in {"train": train, "valid": valid, "test": test}.items()
}).T

# %% tags=["remove-input"]
Markdown(
    f"Training holds {len(train):,} rows from {len(train_cutoffs)} monthly snapshots (a customer appears once per "
    f"snapshot); {train['label'].mean():.1%} of them buy again within 30 days, against {valid['label'].mean():.1%} "
    f"in the validation month and {test['label'].mean():.1%} in the test month: the base rate moves with the season."
)

# %% [markdown]
# Features are standardised with the **training** mean and standard deviation
# only (the validation and test sets must not leak into anything we fit).

# %%
mu, sd = train[FEATURES].mean(), train[FEATURES].std()
X_train, X_valid, X_test = (((d[FEATURES] - mu) / sd).to_numpy(np.float64) for d in (train, valid, test))
y_train, y_valid, y_test = (d["label"].to_numpy(np.float64) for d in (train, valid, test))
X_train.shape, X_train.dtype, y_train.shape

# %% [markdown]
# ## 2.2 A click is a Bernoulli event
#
# For one example with features $x$ the outcome $y \in \{0, 1\}$ is a coin
# flip whose bias depends on $x$: $y \sim \text{Bernoulli}(p(x))$. A CTR model
# estimates $\hat y = \hat p(\text{click} \mid x)$. The probability the model
# gives to what actually happened is
#
# $$P(y \mid x) = \hat y^{\,y} (1 - \hat y)^{1 - y},$$
#
# and over $n$ independent examples the negative log-likelihood, divided by $n$, is
#
# $$L = -\frac{1}{n} \sum_{i=1}^n \big[\, y_i \log \hat y_i + (1 - y_i) \log (1 - \hat y_i) \big].$$
#
# That is the **log loss** (binary cross-entropy). Minimising it is maximum
# likelihood, and it is a *proper* scoring rule: its expected value is smallest
# when $\hat y$ equals the true probability. The simplest check: the best
# constant prediction on our training labels should be their mean.

# %%
q = np.linspace(0.01, 0.99, 981)
nll = [log_loss(y_train, np.full_like(y_train, qi)) for qi in q]
best_q = q[int(np.argmin(nll))]
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(q, nll)
ax.axvline(y_train.mean(), color="grey", ls="--", label=f"base rate {y_train.mean():.3f}")
ax.set(xlabel="constant prediction q", ylabel="log loss (nats)", title="Log loss of a constant model")
ax.legend()
plots.save(fig, output_dir, "constant_model_log_loss")
plt.show()
print(f"argmin q = {best_q:.3f}, base rate = {y_train.mean():.4f}")
assert abs(best_q - y_train.mean()) < 1e-3

# %% tags=["remove-input"]
Markdown(
    f"The curve bottoms out at $q = {best_q:.3f}$, the training base rate ({y_train.mean():.4f}): the log loss "
    "rewards the honest probability, which is what *proper* means."
)

# %% [markdown]
# **Why not train on AUC?** AUC only looks at the *order* of the scores: any
# increasing transformation leaves it unchanged, so it cannot tell a calibrated
# $\hat y$ from one divided by ten. And as a function of the parameters it is a
# step function (it changes only when two scores swap), so its gradient is zero
# almost everywhere. We report AUC, we train on log loss.
#
# For a calibrated $\hat y$ we fit scikit-learn's `LogisticRegression` on the
# training snapshots and score those same rows. A logistic regression with an
# intercept, fitted by maximum likelihood, is calibrated in the mean on its own
# training data: its probabilities average exactly the base rate. Then we
# distort it without changing the order of any pair.

# %%
lr_reference = LogisticRegression(max_iter=1000).fit(X_train, y_train)
p_model = lr_reference.predict_proba(X_train)[:, 1]
scores = {"p (fitted)": p_model, "p / 10": p_model / 10, "p ** 3": p_model**3,
          "constant (base rate)": np.full_like(y_train, y_train.mean())}
auc_vs_loss = pd.DataFrame({
    "mean score": [s.mean() for s in scores.values()],
    "AUC": [roc_auc(y_train, s) for s in scores.values()],
    "log loss": [log_loss(y_train, s) for s in scores.values()],
}, index=list(scores))
assert auc_vs_loss.loc["p (fitted)", "log loss"] == auc_vs_loss["log loss"].min()
auc_vs_loss.round(4)

# %% [markdown]
# Are these differences more than the luck of which customers we happened to
# have? A **bootstrap** over customers answers that: resample the customers
# with replacement 1,000 times, recompute each log loss on every resample, and
# read the middle 95% of the differences. A difference is called a gain or a
# loss only when that interval excludes 0 (`ecrec.verdict.decide` applies the
# book's one rule).

# %%
constant = "constant (base rate)"
demo_ci = bootstrap_log_loss(y_train, scores, train["CustomerID"].to_numpy(), seed=seed,
                             pairs=[(name, constant) for name in scores if name != constant])
demo_verdict = {name: decide(demo_ci[f"{name} - {constant}"], better="lower") for name in scores if name != constant}
pd.Series({name: v.text for name, v in demo_verdict.items()}, name="log loss minus the constant's")

# %% tags=["remove-input"]
distortions_lose = all(demo_verdict[k].is_loss for k in ("p / 10", "p ** 3"))
Markdown(
    f"The fitted probabilities average {p_model.mean():.4f}, the base rate is {y_train.mean():.4f}, and their "
    f"log loss ({auc_vs_loss.loc['p (fitted)', 'log loss']:.4f}) against the constant base rate's "
    f"({auc_vs_loss.loc[constant, 'log loss']:.4f}) differs by {demo_verdict['p (fitted)'].text}. Dividing by ten "
    f"or cubing keeps every pair in the same order, so AUC stays at {auc_vs_loss.loc['p (fitted)', 'AUC']:.4f}, "
    f"but the log loss rises to {auc_vs_loss.loc['p / 10', 'log loss']:.4f} and "
    f"{auc_vs_loss.loc['p ** 3', 'log loss']:.4f}"
    + (": both distortions are worse than predicting the base rate for everyone "
       f"({demo_verdict['p / 10'].text}; {demo_verdict['p ** 3'].text}), and AUC cannot see it."
       if distortions_lose else
       f" (against the constant: {demo_verdict['p / 10'].text}; {demo_verdict['p ** 3'].text}), and AUC cannot see it.")
)

# %% [markdown]
# ## 2.3 The forward pass: from logistic regression to an MLP
#
# Logistic regression is one affine map and a sigmoid:
# $\hat y = \sigma(w^\top x + b)$ with $\sigma(z) = 1 / (1 + e^{-z})$.
# An MLP inserts hidden layers, each an affine map followed by a non-linearity $a$:
#
# $$A_0 = X,\qquad Z_l = A_{l-1} W_l^\top + b_l,\qquad A_l = a(Z_l)\ (l < L),\qquad z = Z_L,\qquad \hat y = \sigma(z).$$
#
# With a batch of $n$ rows and layer widths $d_0$ (one per feature), $d_1, d_2$
# hidden units and $d_L = 1$: $W_l$ is $(d_l, d_{l-1})$, $b_l$ is $(d_l)$, and
# $Z_l, A_l$ are $(n, d_l)$. `ecrec.mlp` stores weights the way
# `torch.nn.Linear` does, so they copy across unchanged. The shapes on a real
# batch of customers (the first rows of the training set):

# %%
layer_sizes = [len(FEATURES), *size["hidden"], 1]
params = init_mlp(layer_sizes, seed=seed)
z, cache = mlp_forward(params, X_train[:64])
print(f"d_0 = {len(FEATURES)} features, hidden widths {size['hidden']}, n = {len(z)} rows")
shapes = pd.DataFrame(cache.shapes(), columns=["tensor", "shape"])
weights = pd.DataFrame({"tensor": [f"{k}{i // 2 + 1}" for i, k in enumerate(["W", "b"] * (len(params) // 2))],
                        "shape": [p.shape for p in params]})
pd.concat([shapes, weights], ignore_index=True).set_index("tensor")

# %% [markdown]
# Every activation is (rows, width of its layer) and every weight is (width out,
# width in), so one affine map is one matrix product, `A @ W.T + b`, for the
# whole batch at once.

# %% [markdown]
# The sigmoid squashes the logit into $(0, 1)$. Its derivative is
# $\sigma'(z) = \sigma(z)(1 - \sigma(z))$: at most $1/4$, and tiny once $|z|$
# is more than a few units.

# %% tags=["remove-input"]
zs = np.linspace(-8, 8, 401)
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(zs, sigmoid(zs), label=r"$\sigma(z)$")
ax.plot(zs, sigmoid(zs) * (1 - sigmoid(zs)), label=r"$\sigma'(z)$ (max 1/4)")
ax.set(xlabel="logit z", title="Sigmoid and its derivative")
ax.legend()
plots.save(fig, output_dir, "sigmoid")
plt.show()

# %% [markdown]
# **Why hidden layers use ReLU, not sigmoid.** Back-propagation multiplies by
# $a'(Z_l)$ once per layer. With the sigmoid that factor is at most $1/4$, so
# the gradient reaching the first layer of a deep stack shrinks roughly
# geometrically (*vanishing gradients*). ReLU's derivative is exactly 1
# where the unit is active, so with He initialisation the gradient keeps its
# scale. Below: the gradient norm of every weight matrix of a
# `deep_layers`-hidden-layer MLP (width 32) at initialisation, on the same real batch.

# %%
deep = [len(FEATURES), *[32] * size["deep_layers"], 1]
grad_norms = {}
for act in ("sigmoid", "relu"):
    ps = init_mlp(deep, seed=seed, activation=act)
    zz, c = mlp_forward(ps, X_train[:256], act)
    gs = mlp_backward(ps, c, log_loss_grad(y_train[:256], zz))
    grad_norms[act] = [np.linalg.norm(g) for g in gs[0::2]]
grad_norms = pd.DataFrame(grad_norms, index=pd.RangeIndex(1, len(deep), name="layer"))
fig, ax = plt.subplots(figsize=(5.5, 3.2))
grad_norms.plot.bar(ax=ax, logy=True, rot=0)
ax.set(ylabel=r"$\|\partial L / \partial W_l\|$", title="Gradient norm per layer at initialisation")
plots.save(fig, output_dir, "gradient_norm_per_layer")
plt.show()
ratio = grad_norms.iloc[0] / grad_norms.iloc[-1]
print("first-layer / last-layer gradient norm:", ratio.round(6).to_dict())

# %% tags=["remove-input"]
Markdown(
    f"With sigmoid hidden units the first layer's gradient is {ratio['sigmoid']:.1e} times the last layer's; with "
    f"ReLU and He initialisation it is {ratio['relu']:.2g} times: the sigmoid stack barely trains its lower layers."
)

# %% [markdown]
# ## 2.4 The gradient
#
# For one example write $\ell = -[y \log \hat y + (1 - y) \log (1 - \hat y)]$. Then
#
# $$\frac{\partial \ell}{\partial \hat y} = -\frac{y}{\hat y} + \frac{1 - y}{1 - \hat y} = \frac{\hat y - y}{\hat y (1 - \hat y)},$$
#
# and since $\partial \hat y / \partial z = \hat y (1 - \hat y)$, the chain rule cancels the denominator:
#
# $$\frac{\partial \ell}{\partial z} = \frac{\hat y - y}{\hat y (1 - \hat y)} \cdot \hat y (1 - \hat y) = \hat y - y.$$
#
# The gradient at the logit is simply *prediction minus label*: bounded in
# $[-1, 1]$, largest for a confident mistake, zero for a perfect prediction.
# Let torch autograd confirm both formulas on real logits:

# %%
zt = torch.tensor(z, requires_grad=True)
yhat = torch.sigmoid(zt)
yhat.retain_grad()
yt = torch.tensor(y_train[:64])
torch.nn.functional.binary_cross_entropy(yhat, yt, reduction="sum").backward()
yh = yhat.detach().numpy()
err_dz = relative_error(zt.grad.numpy(), yh - y_train[:64])
err_dyhat = relative_error(yhat.grad.numpy(), (yh - y_train[:64]) / (yh * (1 - yh)))
print(f"dL/dz    vs  yhat - y:                      relative error {err_dz:.1e}")
print(f"dL/dyhat vs (yhat - y) / (yhat (1 - yhat)): relative error {err_dyhat:.1e}")

# %% [markdown]
# **A common shorthand, checked.** Many texts write
# $\nabla_\theta L = -(y - \hat y)\,\nabla_\theta \hat y$. Taken literally that is
# wrong: by the chain rule $\nabla_\theta \hat y = \hat y (1 - \hat y)\,\nabla_\theta z$, so the
# shorthand carries an extra factor $\hat y (1 - \hat y)$. It is, in fact, the
# gradient of the **squared error** $\tfrac12 (y - \hat y)^2$. The correct form is
#
# $$\nabla_\theta L = -(y - \hat y)\, \nabla_\theta z = (\hat y - y)\, \nabla_\theta z,$$
#
# i.e. the shorthand is right only with $\nabla_\theta z$ in place of $\nabla_\theta \hat y$
# (or for a model whose output *is* its logit, such as linear regression with squared loss).
# The shorthand against the log-loss and squared-error gradients of the MLP's
# parameters on the same batch, all by autograd:

# %%
net = torch.nn.Sequential(
    *[m for i in range(0, len(params), 2)
      for m in (torch.nn.Linear(params[i].shape[1], params[i].shape[0]),
                torch.nn.ReLU() if i < len(params) - 2 else torch.nn.Identity())]
)
with torch.no_grad():
    for lin, W, b in zip(net[0::2], params[0::2], params[1::2], strict=True):
        lin.weight.copy_(torch.from_numpy(W))
        lin.bias.copy_(torch.from_numpy(b))
Xb, n_b = torch.tensor(X_train[:64]), 64


def flat_grad(outputs, grad_outputs=None):
    gs = torch.autograd.grad(outputs, list(net.parameters()), grad_outputs=grad_outputs)
    return torch.cat([g.reshape(-1) for g in gs]).numpy()


logit = net(Xb).squeeze(1)
p_hat = torch.sigmoid(logit)
true_grad = flat_grad(torch.nn.BCEWithLogitsLoss()(net(Xb).squeeze(1), yt))
shorthand_z = flat_grad(net(Xb).squeeze(1), -(yt - p_hat.detach()) / n_b)
shorthand_yhat = flat_grad(torch.sigmoid(net(Xb).squeeze(1)), -(yt - p_hat.detach()) / n_b)
mse_grad = flat_grad(0.5 * ((yt - torch.sigmoid(net(Xb).squeeze(1))) ** 2).mean())
shorthand = pd.Series({
    "-(y - yhat) grad z     vs log-loss gradient": relative_error(shorthand_z, true_grad),
    "-(y - yhat) grad yhat  vs log-loss gradient": relative_error(shorthand_yhat, true_grad),
    "-(y - yhat) grad yhat  vs squared-error gradient": relative_error(shorthand_yhat, mse_grad),
}, name="relative error")
shorthand.to_frame()

# %% tags=["remove-input"]
Markdown(
    f"With $\\nabla_\\theta z$ the shorthand is the log-loss gradient (relative error {shorthand.iloc[0]:.0e}); with "
    f"$\\nabla_\\theta \\hat y$ it is off by {shorthand.iloc[1]:.0%} and is the squared-error gradient instead "
    f"(relative error {shorthand.iloc[2]:.0e})."
)

# %% [markdown]
# **Back-propagation** carries $\delta_L = \partial L / \partial z$ (shape
# $(n, 1)$, equal to $(\hat y - y)/n$ for the mean loss) down the network. At each layer
#
# $$\frac{\partial L}{\partial W_l} = \delta_l^\top A_{l-1},\qquad \frac{\partial L}{\partial b_l} = \textstyle\sum_i \delta_{l,i},\qquad \delta_{l-1} = (\delta_l W_l) \odot a'(Z_{l-1}).$$
#
# `ecrec.mlp.mlp_backward` is exactly these three lines in a loop. The shapes,
# layer by layer, on our batch:

# %%
delta = log_loss_grad(y_train[:64], z)[:, None]
rows = []
for layer in range(len(params) // 2, 0, -1):
    W, A_prev = params[2 * (layer - 1)], cache.inputs[layer - 1]
    rows.append({"layer": layer, "delta": delta.shape, "A_prev": A_prev.shape, "dW = delta.T @ A_prev": (delta.T @ A_prev).shape,
                 "W": W.shape, "|dW|": np.linalg.norm(delta.T @ A_prev)})
    if layer > 1:
        delta = (delta @ W) * (cache.pre[layer - 2] > 0)
pd.DataFrame(rows).set_index("layer")

# %% [markdown]
# Each $\partial L / \partial W_l$ has the shape of $W_l$, and $\delta$ shrinks from
# the width of one layer to the width of the one below: back-propagation is the
# forward pass run backwards with transposed weights.
#
# ## 2.5 Numerics: why frameworks compute the loss from logits
#
# Computing $\hat y = \sigma(z)$ and then $\log \hat y$ fails at both ends. In
# float64 $\sigma(40) = 1 - 4 \cdot 10^{-18}$ rounds to exactly $1$, so
# $\log(1 - \hat y) = \log 0 = -\infty$; for $z = -1000$ the naive
# $1/(1 + e^{1000})$ overflows $e^{1000}$ first. The fix is to never form
# $\hat y$: since $\log \sigma(z) = -\operatorname{softplus}(-z)$ and
# $\log(1 - \sigma(z)) = -\operatorname{softplus}(z)$,
#
# $$\ell(z, y) = \operatorname{softplus}(z) - y z,\qquad \operatorname{softplus}(z) = \log(1 + e^z) = \max(z, 0) + \log(1 + e^{-|z|}),$$
#
# a log-sum-exp in which $e$ only ever sees a non-positive argument. That is
# what `torch.nn.BCEWithLogitsLoss` and `ecrec.mlp.log_loss_from_logits`
# compute. Compare on extreme logits, loss and gradient:

# %%
z_ext = np.array([-1000.0, -40.0, -20.0, 0.0, 20.0, 40.0, 1000.0])
rows = []
for y_val in (1.0, 0.0):
    y_ext = np.full_like(z_ext, y_val)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        p_naive = 1.0 / (1.0 + np.exp(-z_ext))
        loss_naive = -(y_ext * np.log(p_naive) + (1 - y_ext) * np.log(1 - p_naive))
        # chain rule through p: dL/dp * dp/dz
        grad_naive = (p_naive - y_ext) / (p_naive * (1 - p_naive)) * (p_naive * (1 - p_naive))
    rows += [{"y": int(y_val), "z": zi, "p naive": pn, "loss naive": ln, "loss stable": ls, "grad naive": gn, "grad stable": gs}
             for zi, pn, ln, ls, gn, gs in zip(z_ext, p_naive, loss_naive, log_loss_from_logits(y_ext, z_ext, "none"),
                                               grad_naive, log_loss_grad(y_ext, z_ext, "none"), strict=True)]
numerics = pd.DataFrame(rows)
stable_finite = bool(np.isfinite(numerics[["loss stable", "grad stable"]].to_numpy()).all())
numerics

# %% [markdown]
# The naive column gives `inf` losses and `nan` gradients exactly where a model
# is confidently wrong, the examples it most needs to learn from; the stable
# column gives the right answer: loss $|z|$ and gradient $\pm 1$. Even the
# term that should vanish fails: for $y = 1$, $z = 40$ the naive sum contains
# $(1 - y) \log(1 - \hat y) = 0 \cdot (-\infty)$, which is `nan`.
# The same curves over a range of logits:

# %% tags=["remove-input"]
zs = np.linspace(-10, 10, 401)
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(zs, log_loss_from_logits(np.ones_like(zs), zs, "none"), label="y = 1: softplus(-z)")
ax.plot(zs, log_loss_from_logits(np.zeros_like(zs), zs, "none"), label="y = 0: softplus(z)")
ax.set(xlabel="logit z", ylabel="log loss (nats)", title="Log loss against the logit")
ax.legend()
plots.save(fig, output_dir, "log_loss_vs_logit")
plt.show()

# %% [markdown]
# Far from zero each curve becomes a straight line of slope $\pm 1$: the loss
# of a confident mistake grows linearly in $|z|$ and its gradient never vanishes.
#
# **What clamping does.** A common patch is to clamp $\hat y$ to
# $[\varepsilon, 1 - \varepsilon]$ before the log. The value becomes finite,
# but the clamp has zero derivative outside its range, so the gradient of a
# confident mistake becomes **zero**: the model stops learning from exactly the
# examples it gets most wrong. torch's own probability-space `BCELoss` is
# subtler: it clamps $\log$ at $-100$ (so the loss is right down to
# $z \approx -100$) and the denominator $\hat y(1 - \hat y)$ of its gradient at
# $10^{-12}$, so its gradient collapses once $|z| > \ln 10^{12}$. One positive
# example ($y = 1$), autograd:

# %%
rows = []
for z0 in (-5.0, -20.0, -40.0, -200.0):
    for name in ("BCEWithLogitsLoss", "sigmoid, clamp(1e-7), log", "sigmoid, BCELoss"):
        zt = torch.tensor([z0], requires_grad=True)
        one = torch.ones(1)
        if name == "BCEWithLogitsLoss":
            loss = torch.nn.functional.binary_cross_entropy_with_logits(zt, one)
        elif name.startswith("sigmoid, clamp"):
            loss = -torch.log(torch.sigmoid(zt).clamp(1e-7, 1 - 1e-7)).sum()
        else:
            loss = torch.nn.functional.binary_cross_entropy(torch.sigmoid(zt), one)
        loss.backward()
        rows.append({"z": z0, "method": name, "loss": loss.item(), "dL/dz": zt.grad.item()})
clamping = pd.DataFrame(rows).pivot(index="z", columns="method")
clamping

# %% tags=["remove-input"]
grad_at = clamping["dL/dz"].loc[-40.0]
Markdown(
    f"At $z = -40$ the logits loss has gradient {grad_at['BCEWithLogitsLoss'] + 0.0:.3g}; the clamped one "
    f"{grad_at['sigmoid, clamp(1e-7), log'] + 0.0:.3g} and torch's `BCELoss` {grad_at['sigmoid, BCELoss'] + 0.0:.3g}: "
    "the confident mistake stops teaching the model."
)

# %% [markdown]
# **Half precision.** float16 has 10 mantissa bits and a largest value of
# 65504; bfloat16 has float32's range but only 7 mantissa bits. So in float16
# $e^{z}$ overflows for $z > 11$, and in both formats $\sigma(z)$ rounds to
# exactly 1 long before float64 does: $1 - \sigma(z) \approx e^{-z}$ falls
# below half the spacing of numbers near 1 ($2^{-11}$ in fp16, $2^{-8}$ in
# bf16). The naive loss of a negative example, $-\log(1 - \sigma(z))$, then
# becomes `inf`, and it is already wrong before that; the loss from logits
# stays right.

# %%
z_half = torch.tensor([4.0, 6.0, 8.0, 10.0, 12.0, 16.0])
rows = {"exact (float64)": log_loss_from_logits(np.zeros(6), z_half.numpy(), "none")}
for dt in (torch.float16, torch.bfloat16):
    zh = z_half.to(dt)
    tag = str(dt).removeprefix("torch.")
    rows[f"{tag} sigmoid(z)"] = torch.sigmoid(zh).double().numpy()
    rows[f"{tag} exp(z)"] = torch.exp(zh).double().numpy()
    rows[f"{tag} naive -log(1 - sigmoid)"] = (-torch.log1p(-torch.sigmoid(zh))).double().numpy()
    rows[f"{tag} with logits"] = torch.nn.functional.binary_cross_entropy_with_logits(
        zh, torch.zeros_like(zh), reduction="none").double().numpy()
half = pd.DataFrame(rows, index=pd.Index(z_half.numpy(), name="z (y = 0)")).T
half

# %%
exact_row, naive16 = half.loc["exact (float64)"], half.loc["float16 naive -log(1 - sigmoid)"]
z_wrong = naive16.index[(naive16 - exact_row).abs() / exact_row > 0.01][0]
z_inf16 = naive16.index[np.isinf(naive16)][0]
logits_err = max((half.loc[f"{t} with logits"] - exact_row).abs().div(exact_row).max() for t in ("float16", "bfloat16"))
Markdown(
    f"In float16 the naive loss is already more than 1% off at $z = {z_wrong:g}$ ({naive16[z_wrong]:.2f} "
    f"instead of {exact_row[z_wrong]:.2f}) and `inf` from $z = {z_inf16:g}$; the loss from logits stays within "
    f"{100 * logits_err:.2g}% of the exact value in both half formats."
)

# %% [markdown]
# This is why mixed-precision training (`torch.autocast`) runs
# `binary_cross_entropy_with_logits` in float32 and refuses the probability-space
# `binary_cross_entropy` outright.
#
# ## 2.6 The MLP from scratch, checked two ways
#
# `ecrec.mlp` implements the forward pass, the stable loss and
# back-propagation in numpy (float64). Before training anything with it we
# check its gradient:
#
# 1. against **central finite differences**, $\frac{L(\theta + \epsilon e_i) - L(\theta - \epsilon e_i)}{2\epsilon}$
#    for every single parameter (a truncation error $O(\epsilon^2)$ plus float64 rounding; the
#    printed relative error must be below $10^{-7}$);
#    this needs nothing but the loss itself;
# 2. against **torch**: the same weights copied into `torch.nn.Linear` layers,
#    the loss computed by `BCEWithLogitsLoss` and every gradient by autograd
#    (loss and gradients must agree to a relative error below $10^{-6}$).
#
# We use a small network and a real batch; biases are set to small non-zero
# values because with all-zero biases an example whose hidden units are all off
# feeds exactly $0$ into a ReLU, the one point where it has no derivative.

# %%
check_rng = np.random.default_rng(seed)
check_params = init_mlp([len(FEATURES), 8, 4, 1], seed=seed)
for b in check_params[1::2]:
    b += check_rng.normal(0, 0.1, b.shape)
X_chk, y_chk = X_train[:32], y_train[:32]
grad_check_error = gradient_check(check_params, X_chk, y_chk, "relu", l2=1e-3)
print(f"finite differences vs back-propagation: max relative error {grad_check_error:.2e}")
assert grad_check_error < 1e-7

# %%
twin = torch.nn.Sequential(torch.nn.Linear(len(FEATURES), 8), torch.nn.ReLU(), torch.nn.Linear(8, 4), torch.nn.ReLU(),
                           torch.nn.Linear(4, 1))
with torch.no_grad():
    for lin, W, b in zip(twin[0::2], check_params[0::2], check_params[1::2], strict=True):
        lin.weight.copy_(torch.from_numpy(W))
        lin.bias.copy_(torch.from_numpy(b))
torch_loss = torch.nn.BCEWithLogitsLoss()(twin(torch.tensor(X_chk)).squeeze(1), torch.tensor(y_chk))
torch_loss.backward()
np_loss, np_grads = loss_and_grads(check_params, X_chk, y_chk, "relu")
torch_grads = [t.grad.numpy() for lin in twin[0::2] for t in (lin.weight, lin.bias)]
torch_loss_error = abs(np_loss - torch_loss.item()) / abs(torch_loss.item())
torch_grad_error = max(relative_error(a, b) for a, b in zip(np_grads, torch_grads, strict=True))
print(f"loss: numpy {np_loss:.15f}  torch {torch_loss.item():.15f}  relative error {torch_loss_error:.1e}")
print(f"gradients: max relative error over {len(np_grads)} tensors {torch_grad_error:.1e}")
assert torch_loss_error < 1e-6 and torch_grad_error < 1e-6

# %% [markdown]
# ## 2.7 Training on real data: logistic regression against the MLP
#
# Both models are trained by the same loop: mini-batches, the from-scratch
# gradient, and Adam written out in `ecrec.mlp.Adam` (its unit test holds it
# equal to `torch.optim.Adam`). Logistic regression is simply the MLP with no
# hidden layer. After each epoch we record the training and validation loss
# and keep the weights of the best validation epoch (early stopping).

# %%
def fit(layer_sizes, lr=3e-3, l2=1e-4, epochs=size["epochs"], batch_size=size["batch_size"]):
    """Train an MLP with mini-batch Adam; return the best-validation weights, the curves and the best epoch."""
    params = init_mlp(layer_sizes, seed=seed)
    opt, order_rng = Adam(params, lr=lr), np.random.default_rng(seed)
    history, best = {"train": [], "valid": []}, (np.inf, None, 0)
    for epoch in tqdm(range(1, epochs + 1), desc=f"{layer_sizes}", leave=False):
        order = order_rng.permutation(len(y_train))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            opt.step(loss_and_grads(params, X_train[idx], y_train[idx], l2=l2)[1])
        history["train"].append(log_loss_from_logits(y_train, mlp_forward(params, X_train)[0]))
        history["valid"].append(log_loss_from_logits(y_valid, mlp_forward(params, X_valid)[0]))
        if history["valid"][-1] < best[0]:
            best = (history["valid"][-1], [p.copy() for p in params], epoch)
    return best[1], history, best[2]


# logistic regression is convex and has len(FEATURES) + 1 parameters: a larger step is safe
models = {"logistic regression": ([len(FEATURES), 1], 1e-2), "MLP": (layer_sizes, 3e-3)}
trained = {name: fit(sizes_, lr=lr) for name, (sizes_, lr) in models.items()}
{name: f"best epoch {t[2]} of {size['epochs']}" for name, t in trained.items()}

# %% tags=["remove-input"]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
for ax, (name, (_, history, best_epoch)) in zip(axes, trained.items(), strict=True):
    plots.loss_curves(history, ax=ax)
    ax.axvline(best_epoch, color="grey", ls=":", label="best valid")
    ax.set_title(name)
plots.save(fig, output_dir, "loss_curves")
plt.show()

# %% tags=["remove-input"]
n_params = {name: sum(p.size for p in t[0]) for name, t in trained.items()}
Markdown(
    "The gap between the training and validation curves of logistic regression is not overfitting: "
    f"{n_params['logistic regression']} parameters cannot memorise {len(y_train):,} training rows. "
    f"It is **drift**: the validation month's base rate is {y_valid.mean():.3f}, the training months' "
    f"{y_train.mean():.3f}, and a time-later set measures that too. The MLP ({n_params['MLP']:,} parameters) "
    "has a noisier validation loss from epoch to epoch; early stopping keeps its best epoch."
)

# %% [markdown]
# Now the test set, a month later than anything the models or the early stopping saw.
# The log loss and AUC come from the hand-written `ecrec.metrics`; scikit-learn
# computes the same numbers as an independent check. We add scikit-learn's own
# `LogisticRegression` (L-BFGS, default L2) as a reference for ours, and the
# constant base-rate prediction as the floor any model must beat.

# %%
probs = {name: predict_proba(params_, X_test) for name, (params_, _, _) in trained.items()}
probs["sklearn LogisticRegression"] = lr_reference.predict_proba(X_test)[:, 1]
probs["constant (train base rate)"] = np.full_like(y_test, y_train.mean())
results = pd.DataFrame({
    name: {"log loss": log_loss(y_test, p), "log loss (sklearn)": sk_log_loss(y_test, p),
           "AUC": roc_auc(y_test, p), "AUC (sklearn)": roc_auc_score(y_test, p)}
    for name, p in probs.items()
}).T
metric_gap = float(max((results["log loss"] - results["log loss (sklearn)"]).abs().max(),
                       (results["AUC"] - results["AUC (sklearn)"]).abs().max()))
print(f"hand-written vs scikit-learn: largest absolute difference {metric_gap:.1e}")
results.round(4)

# %% [markdown]
# The differences between the models, with bootstrap intervals over the test
# customers (one row each), the same resamples for every model:

# %%
LR, MLP, CONST = "logistic regression", "MLP", "constant (train base rate)"
test_users = test["CustomerID"].to_numpy()
test_ll = bootstrap_log_loss(y_test, {k: probs[k] for k in (LR, MLP, CONST)}, test_users, seed=seed,
                             pairs=[(MLP, LR), (LR, CONST), (MLP, CONST)])
test_auc = bootstrap_auc(y_test, {k: probs[k] for k in (LR, MLP)}, test_users, seed=seed, pairs=[(MLP, LR)])
verdicts = {
    "MLP - LR, log loss": decide(test_ll[f"{MLP} - {LR}"], better="lower"),
    "MLP - LR, AUC": decide(test_auc[f"{MLP} - {LR}"]),
    "LR - constant, log loss": decide(test_ll[f"{LR} - {CONST}"], better="lower"),
    "MLP - constant, log loss": decide(test_ll[f"{MLP} - {CONST}"], better="lower"),
}
pd.Series({k: v.text for k, v in verdicts.items()}, name="difference [95% interval], verdict")

# %% tags=["remove-input"]
lr_row, mlp_row = results.loc[LR], results.loc[MLP]
constant_loss = results.loc[CONST, "log loss"]
mlp_gains = [k for k in ("MLP - LR, log loss", "MLP - LR, AUC") if verdicts[k].is_gain]
Markdown(
    f"On {len(FEATURES)} dense RFM features, in test log loss "
    f"{compare('the MLP', 'logistic regression', test_ll[f'{MLP} - {LR}'], better='lower')}, and in AUC "
    f"{compare('the MLP', 'logistic regression', test_auc[f'{MLP} - {LR}'])}. "
    + ("The relationship between recency, frequency and buying again is close to monotone, which a linear model on "
       "log features already captures; capacity pays off when the inputs are rich (IDs, text), the subject of the "
       "next chapters. " if not mlp_gains else
       "The hidden layers find something the linear model misses here, on nine features; chapters 03 and 04 give "
       "them far richer inputs (IDs, text). ")
    + f"Against predicting the training base rate for everyone (log loss {constant_loss:.4f}): logistic regression "
    f"{verdicts['LR - constant, log loss'].text}, the MLP {verdicts['MLP - constant, log loss'].text}."
)

# %% [markdown]
# **Calibration.** Log loss rewards probabilities that mean what they say: of
# the customers given $\hat y \approx 0.4$, about 40 % should come back. The
# reliability diagram bins the test set by predicted probability and plots the
# observed rate in each bin; a calibrated model lies on the diagonal.

# %% tags=["remove-input"]
fig, ax = plt.subplots(figsize=(4.8, 4.8))
plots.reliability(y_test, {k: probs[k] for k in models}, n_bins=10, ax=ax)
plots.save(fig, output_dir, "reliability")
plt.show()

# %% [markdown]
# Where a curve lies below the diagonal the model over-predicts, above it
# under-predicts. Both models are trained on months whose base rate is close to
# the test month's (both are in the table at the top), so the curves stay near
# the diagonal where most customers are (low probabilities); the few
# high-probability bins are noisier. A test month with a different base rate
# (November's pre-Christmas rush) would shift the whole curve, one reason to
# monitor calibration in production.

# %% tags=["remove-input"]
mlp_vs_lr = verdicts["MLP - LR, log loss"]
lesson = (
    "Train on the log loss computed from the logit: its gradient there is simply $\\hat y - y$ (back-propagation "
    f"agrees with finite differences to {grad_check_error:.0e}), it stays finite where the naive formula gives `inf` "
    "and `nan`, and on nine RFM features "
    + ("an MLP adds nothing measurable to logistic regression" if mlp_vs_lr.word in ("within noise", "identical")
       else f"an MLP {'beats' if mlp_vs_lr.is_gain else 'loses to'} logistic regression")
    + f" (test log loss {mlp_vs_lr.text})"
    + (": depth needs richer inputs to pay." if not mlp_vs_lr.is_gain else ".")
)
LESSON.update(Markdown(f"**In one sentence (from this run):** {lesson}"))

# %% tags=["remove-input"]
_ = write_metrics(output_dir, {
    "n_train": len(y_train), "n_valid": len(y_valid), "n_test": len(y_test),
    "train_base_rate": float(y_train.mean()), "test_base_rate": float(y_test.mean()),
    "test_log_loss_lr": float(results.loc["logistic regression", "log loss"]),
    "test_auc_lr": float(results.loc["logistic regression", "AUC"]),
    "test_log_loss_mlp": float(results.loc["MLP", "log loss"]),
    "test_auc_mlp": float(results.loc["MLP", "AUC"]),
    "test_auc_sklearn_lr": float(results.loc["sklearn LogisticRegression", "AUC"]),
    "test_log_loss_constant": float(results.loc["constant (train base rate)", "log loss"]),
    "metrics_vs_sklearn_max_abs_diff": metric_gap,
    "grad_check_rel_error": grad_check_error,
    "torch_loss_rel_error": torch_loss_error,
    "torch_grad_rel_error": torch_grad_error,
    "shorthand_z_rel_error": float(shorthand.iloc[0]),
    "shorthand_yhat_rel_error": float(shorthand.iloc[1]),
    "stable_loss_finite_at_extremes": stable_finite,
    "demo_train_auc_fitted": float(auc_vs_loss.loc["p (fitted)", "AUC"]),
    "demo_train_log_loss_fitted": float(auc_vs_loss.loc["p (fitted)", "log loss"]),
    "demo_train_log_loss_div10": float(auc_vs_loss.loc["p / 10", "log loss"]),
    "demo_train_log_loss_cubed": float(auc_vs_loss.loc["p ** 3", "log loss"]),
    "demo_train_log_loss_constant": float(auc_vs_loss.loc["constant (base rate)", "log loss"]),
    "best_epoch_lr": trained["logistic regression"][2], "best_epoch_mlp": trained["MLP"][2],
    "demo_train_log_loss_minus_constant": {k: demo_ci[f"{k} - {constant}"] for k in demo_verdict},
    "test_log_loss_diff": {k: test_ll[k] for k in (f"{MLP} - {LR}", f"{LR} - {CONST}", f"{MLP} - {CONST}")},
    "test_auc_diff": {f"{MLP} - {LR}": test_auc[f"{MLP} - {LR}"]},
    "verdicts": {k: v.word for k, v in verdicts.items()},
    "lesson": lesson,
}, profile=run_profile, seed=seed, started=STARTED)

# %% [markdown]
# ## Summary

# %% tags=["remove-input"]
Markdown(
    f"**The lesson.** {lesson}\n\n"
    "* A click is a Bernoulli event; its negative log-likelihood is the log loss, a proper scoring rule. "
    f"AUC cannot see calibration: dividing the fitted probabilities by ten keeps AUC at "
    f"{auc_vs_loss.loc['p (fitted)', 'AUC']:.3f} and raises the log loss from "
    f"{auc_vs_loss.loc['p (fitted)', 'log loss']:.3f} to {auc_vs_loss.loc['p / 10', 'log loss']:.3f}.\n"
    "* The gradient at the logit is $\\hat y - y$; back-propagation carries it down with three lines per "
    f"layer. The from-scratch gradient agrees with finite differences to {grad_check_error:.0e} and with "
    f"torch autograd to {torch_grad_error:.0e}.\n"
    "* Compute the loss from logits, $\\operatorname{softplus}(z) - yz$: finite and with gradient "
    "$\\pm 1$ where the naive formula gives `inf` and `nan`; clamping keeps the value finite but kills the "
    "gradient of confident mistakes, and half precision breaks the naive loss already at moderate logits.\n"
    f"* On {len(FEATURES)} RFM features the MLP (test AUC {mlp_row['AUC']:.3f}) against logistic regression "
    f"({lr_row['AUC']:.3f}): AUC {verdicts['MLP - LR, AUC'].text}, log loss {verdicts['MLP - LR, log loss'].text}. "
    f"Against the constant base rate, test log loss: logistic regression {verdicts['LR - constant, log loss'].text}; "
    f"the MLP {verdicts['MLP - constant, log loss'].text}."
)

# %% [markdown]
# ## Exercises
#
# 1. *(runnable)* Derive the gradient of logistic regression's mean log loss,
#    $\nabla_w L = \frac1n X^\top (\sigma(Xw + b) - y)$ and
#    $\partial L / \partial b = \frac1n \sum_i (\sigma(z_i) - y_i)$, and check
#    it on this chapter's task against central finite differences and torch
#    autograd (`binary_cross_entropy_with_logits`). Then evaluate it at
#    scikit-learn's unpenalised fit: what does $\partial L / \partial b = 0$
#    say about the mean prediction? A worked solution is in
#    `notebooks/solutions/02_exercises.py`.
# 2. *(runnable)* Evaluate the log loss at $z \in \{\pm 1000, \pm 100,
#    \pm 40, \pm 20, \dots\}$ for both labels in five ways: the naive formula,
#    $\operatorname{softplus}(z) - yz$ literally (softplus as the log-sum-exp
#    `np.logaddexp(0, z)`), $\operatorname{softplus}((1 - 2y) z)$, and
#    `torch.nn.functional.binary_cross_entropy_with_logits` in float64 and
#    float32. Which are finite, which are accurate to the last digit, and for
#    which label does each lose *relative* accuracy? Does it matter for
#    training? (solution in the same file)
# 3. Make the MLP deeper with `activation="sigmoid"` (`init_mlp(...,
#    activation="sigmoid")`, `loss_and_grads(..., activation="sigmoid")`) and
#    watch the loss curves: the vanishing gradients of section 2.3 turn into
#    slow training.
# 4. Break the backward pass on purpose (change one sign in a copy of
#    `mlp_backward`) and see how large `gradient_check` becomes.
# 5. Train with the clamped loss of section 2.5 on a batch with a few labels
#    flipped: do the confidently wrong examples ever move?
# 6. Change the horizon from 30 to 7 or 90 days, or test on 2011-11-01: how
#    do the base rate, log loss and calibration change, and does AUC?
