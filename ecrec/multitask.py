"""Multi-task learning on chapter 03's examples: purchase and return (chapter 06).

Two tasks share one representation of an example (user, item, moment):

* **buy**: chapter 03's label (a purchase against sampled negatives), dense;
* **return**: the purchase came back, a cancellation line of the same customer
  and stock code within ``window_days`` after it (:func:`return_labels`),
  sparse: about 1 purchase in 100 within two weeks.

Labels
------
* :func:`cancellation_lines` (raw log -> the cancellations with a customer),
* :func:`return_labels` (examples + purchase events + cancellations ->
  ``returned`` and ``return_observed``), with the matching rules and what
  they miss in its docstring.

Models (``torch.nn.Module``, top level, inputs as :class:`ecrec.ctr.CtrPreprocessor` arrays)
--------------------------------------------------------------------------------------------
* :class:`ecrec.ctr.CtrInputs`: chapter 03's DNN input layer (embeddings,
  pooled history, numerics), one vector per example, shared with ``CtrNet``;
* :class:`SharedBottom`: one bottom MLP, one tower per task (Caruana, 1997,
  "Multitask learning"); with one task it is the single-task DNN;
* :class:`MMoE`: multi-gate mixture of experts (Ma, Zhao, Yi, Chen, Hong and
  Chi, "Modeling Task Relationships in Multi-task Learning with Multi-gate
  Mixture-of-Experts", KDD 2018);
* :class:`ESMM`: the entire-space multi-task model (Ma, Zhao, Huang, Wang, Hu,
  Zhu and Gai, "Entire Space Multi-Task Model: An Effective Approach for
  Estimating Post-Click Conversion Rate", SIGIR 2018):
  ``p(buy and return) = p(buy) * p(return | buy)``, trained on every example;
* :class:`UncertaintyWeighting`: learned task weights (Kendall, Gal and
  Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
  Geometry and Semantics", CVPR 2018).

Training and evaluation
-----------------------
* :func:`check_task_labels`, :func:`train_multitask` -> :class:`TrainedMultitask`;
* :func:`ecrec.stats.bootstrap_log_loss`: log loss and paired differences with intervals
  over users (the companion of :func:`ecrec.stats.bootstrap_auc`).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy.special import expit
from torch import nn

from ecrec.ctr import CtrInputs, CtrPreprocessor, DnnConfig, _check_finite_loss

__all__ = [
    "RETURN_WINDOW_DAYS", "cancellation_lines", "return_labels", "MultitaskConfig",
    "SharedBottom", "MMoE", "ESMM", "UncertaintyWeighting", "masked_bce", "check_task_labels",
    "train_multitask", "TrainedMultitask",
]

RETURN_WINDOW_DAYS = 14  # a cancellation counts as a return of a purchase within this many days of it
_DAY = pd.Timedelta(days=1)


# --- labels -------------------------------------------------------------------


def cancellation_lines(raw: pd.DataFrame) -> pd.DataFrame:
    """The cancellation lines of the raw log that name a customer.

    A cancellation line has an invoice number starting with "C"
    (:func:`ecrec.data.is_cancellation` also flags negative quantities
    without a "C" invoice: stock adjustments, none of them with a customer).
    :func:`ecrec.data.clean_online_retail` removes them, so read them from
    :func:`ecrec.data.load_online_retail`.

    Args:
        raw: the raw Online Retail log (columns InvoiceNo, StockCode,
            Quantity, InvoiceDate, CustomerID).

    Returns:
        Frame sorted by ``cancel_ts`` with ``user_id`` (int64), ``item_id``
        (str stock code), ``cancel_ts`` (datetime64), ``quantity`` (int64,
        negative: units taken back) and ``invoice_no`` (str).

    Raises:
        ValueError: a column is missing (pass the *raw* log, not the cleaned one).
    """
    from ecrec.data import is_cancellation

    need = ["InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "CustomerID"]
    missing = [c for c in need if c not in raw.columns]
    if missing:
        raise ValueError(f"cancellation_lines: the log lacks {missing}; pass ecrec.data.load_online_retail()")
    c_invoice = raw["InvoiceNo"].astype(str).str.startswith("C")
    keep = is_cancellation(raw).to_numpy(bool) & c_invoice.to_numpy(bool) & raw["CustomerID"].notna().to_numpy()
    lines = raw.loc[keep]
    out = pd.DataFrame({
        "user_id": lines["CustomerID"].astype("int64").to_numpy(),
        "item_id": lines["StockCode"].astype(str).to_numpy(),
        "cancel_ts": lines["InvoiceDate"].to_numpy(),
        "quantity": lines["Quantity"].astype("int64").to_numpy(),
        "invoice_no": lines["InvoiceNo"].astype(str).to_numpy(),
    })
    return out.sort_values(["cancel_ts", "user_id", "item_id"], kind="stable").reset_index(drop=True)


def return_labels(
    examples: pd.DataFrame,
    events: pd.DataFrame,
    cancellations: pd.DataFrame,
    *,
    window_days: float = RETURN_WINDOW_DAYS,
    observed_until,
) -> pd.DataFrame:
    """Return labels of CTR examples, read from the log itself, with censoring.

    Matching rules:

    1. A cancellation line (customer ``u``, stock code ``i``, time ``t``) is
       attributed to ``u``'s **most recent purchase of** ``i`` **strictly
       before** ``t`` (any invoice in ``events``, not only the examples'). A
       cancellation with no earlier purchase of the pair (the purchase was
       before the log starts, or the line is a correction) matches nothing.
    2. That purchase is **returned** when ``t - ts <= window_days`` (the edge
       is included). A purchase with several cancellations is returned once.
    3. Negatives (``label == 0``) are never returned: nothing was bought.
    4. **Censoring.** The label of a purchase at ``ts`` is known only once its
       window has passed: ``return_observed = ts + window_days <= observed_until``.
       ``returned`` never holds the future: only cancellations at or before
       the row's ``observed_until`` count, so a censored row (``return_observed``
       False) is 1 only when its return is already visible and 0 otherwise,
       though it may still come back after ``observed_until``. Such a 0 is
       "not yet", not "no": do not use it as a label (train on and evaluate
       only observed rows). Observed rows are unaffected (their whole window
       lies before ``observed_until``). Negatives share their positive's
       ``ts`` and are censored with it.

    What the rules miss: the quantity (a return of 1 of 12 units counts like a
    full return: ``returned`` means "at least one unit came back"); a return
    booked under another stock code or as a manual line ("M", "D"); a return of
    an earlier purchase when a later purchase of the same pair lies between
    (rule 1 credits the later one); a cancellation the shop made to correct
    an order rather than a customer's return (the log does not tell them apart).

    Args:
        examples: CTR examples with ``user_id``, ``item_id``, ``ts``, ``label``
            (:func:`ecrec.features.load_or_build_ctr_dataset`).
        events: purchase events with ``user_id``, ``item_id``, ``ts``
            (:func:`ecrec.features.purchase_events` of the cleaned log).
        cancellations: :func:`cancellation_lines` (``user_id``, ``item_id``, ``cancel_ts``).
        window_days: the return window in days (> 0).
        observed_until: the end of what may be looked at, a timestamp or an
            (n,) array of timestamps (one per example, e.g. the log's end for
            test rows and the test start for train/valid rows).

    Returns:
        Frame on ``examples``' index: ``returned`` (int8 0/1) and
        ``return_observed`` (bool).

    Raises:
        ValueError: a column is missing, ``window_days`` <= 0, or ``observed_until``
            has the wrong length.
    """
    for name, frame, cols in (("examples", examples, ["user_id", "item_id", "ts", "label"]),
                              ("events", events, ["user_id", "item_id", "ts"]),
                              ("cancellations", cancellations, ["user_id", "item_id", "cancel_ts"])):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"return_labels: {name} lacks {missing}")
    if not window_days > 0:
        raise ValueError(f"return_labels: window_days must be > 0, got {window_days!r}")
    window = pd.Timedelta(days=window_days)
    until = pd.to_datetime(np.broadcast_to(np.asarray(observed_until), (len(examples),))
                           if np.ndim(observed_until) == 0 else np.asarray(observed_until))
    if len(until) != len(examples):
        raise ValueError(f"return_labels: observed_until has {len(until)} values for {len(examples)} examples")

    # rule 1: each cancellation -> the pair's latest purchase strictly before it
    key = ["user_id", "item_id"]
    buys = events[key + ["ts"]].drop_duplicates().astype({"user_id": "int64", "item_id": str})
    canc = cancellations[key + ["cancel_ts"]].astype({"user_id": "int64", "item_id": str})
    buys = buys.assign(ts=buys["ts"].astype("datetime64[us]")).sort_values("ts", kind="stable")
    canc = canc.assign(cancel_ts=canc["cancel_ts"].astype("datetime64[us]")).sort_values("cancel_ts", kind="stable")
    matched = pd.merge_asof(canc, buys.rename(columns={"ts": "bought_ts"}), left_on="cancel_ts",
                            right_on="bought_ts", by=key, direction="backward", allow_exact_matches=False)
    # rule 2: within the window
    hit = matched["bought_ts"].notna() & (matched["cancel_ts"] - matched["bought_ts"] <= window)
    # a purchase returned several times: its first cancellation is when the return became visible
    first_return = (matched.loc[hit, key + ["bought_ts", "cancel_ts"]].rename(columns={"bought_ts": "ts"})
                    .groupby(key + ["ts"], as_index=False)["cancel_ts"].min())

    ex = examples[key + ["ts"]].astype({"user_id": "int64", "item_id": str})
    ex = ex.assign(ts=ex["ts"].astype("datetime64[us]"))
    seen_at = ex.merge(first_return, how="left", on=key + ["ts"])["cancel_ts"].to_numpy()
    until_us = until.to_numpy().astype("datetime64[us]")
    # rule 4 (censoring), first half: a return booked after observed_until is the future, not a label
    flag = (~np.isnat(seen_at) & (seen_at <= until_us)).astype(np.int8)
    # rule 3: negatives are never returned
    flag = np.where(examples["label"].to_numpy() == 1, flag, 0).astype(np.int8)
    # rule 4, second half: the label is known once the whole window has passed
    observed = (ex["ts"].to_numpy() + window) <= until_us
    return pd.DataFrame({"returned": flag, "return_observed": observed}, index=examples.index)


# --- models -------------------------------------------------------------------


@dataclass
class MultitaskConfig(DnnConfig):
    """:class:`ecrec.ctr.DnnConfig` plus the multi-task parts.

    Attributes (besides DnnConfig's; ``hidden`` is the bottom MLP):
        tower: hidden widths of each task tower, after the bottom (or the experts).
        n_experts: MMoE experts.
        expert_hidden: hidden widths of each MMoE expert.
        weighting: ``"equal"`` (sum of the task losses) or ``"uncertainty"``
            (:class:`UncertaintyWeighting`).
        weighting_lr: Adam learning rate of the log-variances (they need to
            travel ~1 in a few hundred steps).
        torch_threads: intra-op threads while :func:`train_multitask` runs
            (restored after; ``None`` leaves torch's setting). 1 by default:
            these nets are small (a step is ~100 small ops on a 1,024-row
            batch), and a second thread spends more CPU synchronising than it
            saves, far more on a busy machine (``benchmarks/NOTES.md``).

    Raises:
        ValueError: as DnnConfig, an unknown ``weighting``, or ``n_experts`` < 1.
    """

    tower: tuple[int, ...] = (32,)
    n_experts: int = 4
    expert_hidden: tuple[int, ...] = (64,)
    weighting: str = "equal"
    weighting_lr: float = 2e-2
    monitor: str = "log_loss"
    torch_threads: int | None = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weighting not in ("equal", "uncertainty"):
            raise ValueError(f"weighting must be 'equal' or 'uncertainty', got {self.weighting!r}")
        if self.n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {self.n_experts}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be None or >= 1, got {self.torch_threads}")


def _mlp(width: int, hidden: Sequence[int], dropout: float, out: int | None = None) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    if out is not None:
        layers.append(nn.Linear(width, out))
        width = out
    return nn.Sequential(*layers), width


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy from logits over the rows where ``mask`` is True; 0 when none is.

    Shapes: logits, labels, mask (n,) -> a 0-d tensor. ``softplus(-z)`` for
    label 1, ``softplus(z)`` for label 0 (:func:`ecrec.ctr.bce_with_logits`).
    """
    sp = nn.functional.softplus
    per_row = torch.where(labels > 0.5, sp(-logits), sp(logits))
    m = mask.float()
    return (per_row * m).sum() / m.sum().clamp(min=1.0)


class _MultitaskNet(nn.Module):
    """Common interface: ``forward`` -> (n, T) tower logits; ``task_losses``; ``probabilities``."""

    tasks: tuple[str, ...]

    def task_losses(self, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(T,) mean loss of each task over its own rows (``mask[:, t]``); logits, labels, mask (n, T)."""
        return torch.stack([masked_bce(logits[:, t], labels[:, t], mask[:, t]) for t in range(len(self.tasks))])

    def probabilities(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        """Task name -> (n,) probability, from the (n, T) tower logits."""
        return {name: expit(logits[:, t]) for t, name in enumerate(self.tasks)}


class SharedBottom(_MultitaskNet):
    """Shared-bottom multi-task network (Caruana, 1997): one bottom MLP, one tower per task.

    ``x = CtrInputs(...)``, ``h = bottom(x)``, ``logit_t = tower_t(h)``. With a
    single task it is the single-task DNN of the chapter (the same layers).

    Args:
        cardinalities, n_numeric, item_field: as :class:`CtrInputs`.
        tasks: task names, one tower each (T >= 1).
        config: :class:`MultitaskConfig` (``emb_dim``, ``hidden`` for the
            bottom, ``tower``, ``dropout``).

    Shapes in :meth:`forward`: as :class:`CtrInputs` -> (n, T) float32 logits.
    """

    def __init__(self, cardinalities, n_numeric, item_field, tasks: Sequence[str], config: MultitaskConfig) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        if not self.tasks:
            raise ValueError("SharedBottom needs at least one task")
        self.inputs = CtrInputs(cardinalities, n_numeric, item_field, config.emb_dim)
        self.bottom, width = _mlp(self.inputs.width, config.hidden, config.dropout)
        self.towers = nn.ModuleList(_mlp(width, config.tower, config.dropout, out=1)[0] for _ in self.tasks)

    def forward(self, cat, num, hist=None) -> torch.Tensor:
        h = self.bottom(self.inputs(cat, num, hist))
        return torch.cat([tower(h) for tower in self.towers], dim=1)


class MMoE(_MultitaskNet):
    r"""Multi-gate mixture of experts (Ma et al., KDD 2018).

    :math:`E` experts :math:`f_i` read the input :math:`x`; task :math:`k` has a
    gate :math:`g^k(x) = \mathrm{softmax}(W_{g^k} x)` over the experts and a
    tower :math:`h^k`: :math:`y_k = h^k\big(\sum_i g^k(x)_i f_i(x)\big)`.
    Tasks that disagree can lean on different experts; with one expert it is
    a shared bottom.

    Args:
        cardinalities, n_numeric, item_field: as :class:`CtrInputs`.
        tasks: task names (T >= 1).
        config: :class:`MultitaskConfig` (``n_experts``, ``expert_hidden``, ``tower``).

    Shapes: :meth:`forward` -> (n, T) logits; :meth:`gates` -> (n, T, E), each
    row summing to 1.
    """

    def __init__(self, cardinalities, n_numeric, item_field, tasks: Sequence[str], config: MultitaskConfig) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        if not self.tasks:
            raise ValueError("MMoE needs at least one task")
        self.inputs = CtrInputs(cardinalities, n_numeric, item_field, config.emb_dim)
        experts = [_mlp(self.inputs.width, config.expert_hidden, config.dropout) for _ in range(config.n_experts)]
        self.experts = nn.ModuleList(e for e, _ in experts)
        width = experts[0][1]
        self.gate_layers = nn.ModuleList(nn.Linear(self.inputs.width, config.n_experts) for _ in self.tasks)
        self.towers = nn.ModuleList(_mlp(width, config.tower, config.dropout, out=1)[0] for _ in self.tasks)

    def _gates(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.softmax(g(x), dim=1) for g in self.gate_layers], dim=1)  # (n, T, E)

    def gates(self, cat, num, hist=None) -> torch.Tensor:
        """(n, T, E) gate weights of every task over the experts."""
        return self._gates(self.inputs(cat, num, hist))

    def forward(self, cat, num, hist=None) -> torch.Tensor:
        x = self.inputs(cat, num, hist)
        expert_out = torch.stack([e(x) for e in self.experts], dim=1)  # (n, E, d)
        mixed = torch.einsum("nte,ned->ntd", self._gates(x), expert_out)  # (n, T, d)
        return torch.cat([tower(mixed[:, t]) for t, tower in enumerate(self.towers)], dim=1)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler, 2012)."""
    x = x.clamp(max=-1e-12)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


class ESMM(_MultitaskNet):
    r"""Entire-space multi-task model (Ma et al., SIGIR 2018), here for buy and return.

    Two towers share the embeddings (:class:`CtrInputs`): :math:`b(x)` gives
    :math:`p(\text{buy} \mid x) = \sigma(b)` and :math:`r(x)` gives
    :math:`p(\text{return} \mid \text{buy}, x) = \sigma(r)`. Their product is
    :math:`p(\text{buy} \wedge \text{return} \mid x) = \sigma(b)\,\sigma(r)`;
    both tasks are supervised on **every** example:

    .. math:: L = \sum_i \ell(y_i, \sigma(b_i)) + \sum_i \ell(y_i z_i, \sigma(b_i)\sigma(r_i))

    (:math:`y` buy, :math:`z` return, :math:`\ell` the binary cross-entropy), so
    the return tower is never trained on the purchases alone. Tasks are named
    ``("buy", "buy_and_return")``; the labels of the second are ``y * z``.

    Shapes: :meth:`forward` -> (n, 2) tower logits ``[b, r]``.
    """

    def __init__(self, cardinalities, n_numeric, item_field, config: MultitaskConfig) -> None:
        super().__init__()
        self.tasks = ("buy", "buy_and_return")
        self.inputs = CtrInputs(cardinalities, n_numeric, item_field, config.emb_dim)
        self.towers = nn.ModuleList(
            _mlp(self.inputs.width, tuple(config.hidden) + tuple(config.tower), config.dropout, out=1)[0]
            for _ in range(2)
        )

    def forward(self, cat, num, hist=None) -> torch.Tensor:
        x = self.inputs(cat, num, hist)
        return torch.cat([tower(x) for tower in self.towers], dim=1)

    def task_losses(self, logits, labels, mask) -> torch.Tensor:
        buy = masked_bce(logits[:, 0], labels[:, 0], mask[:, 0])
        log_p = nn.functional.logsigmoid(logits[:, 0]) + nn.functional.logsigmoid(logits[:, 1])  # log p(buy, ret)
        per_row = torch.where(labels[:, 1] > 0.5, -log_p, -_log1mexp(log_p))
        m = mask[:, 1].float()
        both = (per_row * m).sum() / m.sum().clamp(min=1.0)
        return torch.stack([buy, both])

    def probabilities(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        """``buy``, ``return_given_buy`` (the return tower) and ``buy_and_return`` (their product)."""
        p_buy, p_ret = expit(logits[:, 0]), expit(logits[:, 1])
        return {"buy": p_buy, "return_given_buy": p_ret, "buy_and_return": p_buy * p_ret}


class UncertaintyWeighting(nn.Module):
    r"""Learned task weights from homoscedastic uncertainty (Kendall, Gal and Cipolla, CVPR 2018).

    For classification tasks the paper's objective is
    :math:`\sum_k \frac{1}{\sigma_k^2} L_k + \log \sigma_k`. With the learned
    :math:`s_k = \log \sigma_k^2` (for stability):

    .. math:: L = \sum_k e^{-s_k} L_k + \tfrac{1}{2} s_k

    For fixed :math:`L_k` the minimum is at :math:`e^{-s_k} = 1 / (2 L_k)`:
    a task with a small loss gets a large weight.

    Args:
        n_tasks: T.

    Shapes: :meth:`forward` (T,) task losses -> 0-d total; :attr:`weights` (T,).
    """

    def __init__(self, n_tasks: int) -> None:
        super().__init__()
        self.log_var = nn.Parameter(torch.zeros(n_tasks))

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        if losses.shape != self.log_var.shape:
            raise ValueError(f"UncertaintyWeighting: {tuple(losses.shape)} losses for {self.log_var.numel()} tasks")
        return (torch.exp(-self.log_var) * losses + 0.5 * self.log_var).sum()

    @property
    def weights(self) -> np.ndarray:
        """(T,) the current weights :math:`e^{-s_k}`."""
        return torch.exp(-self.log_var.detach()).numpy().copy()


# --- training -----------------------------------------------------------------


def check_task_labels(
    df: pd.DataFrame, label_columns: Sequence[str], mask_columns: Sequence[str | None], n_heads: int
) -> None:
    """Refuse labels that a multi-task model cannot learn from.

    Args:
        df: the training frame.
        label_columns: one 0/1 column per task head.
        mask_columns: per task, a bool column choosing the rows of its loss, or ``None`` (every row).
        n_heads: the model's number of task heads.

    Raises:
        ValueError: the number of label columns differs from ``n_heads``; a label
            or mask column is missing; a label holds values other than 0/1 or
            NaN; a label is constant on its task's rows (the error names the
            column and the fix).
    """
    if len(label_columns) != n_heads or len(mask_columns) != n_heads:
        raise ValueError(
            f"the model has {n_heads} task head(s) but {len(label_columns)} label column(s) {list(label_columns)} "
            f"and {len(mask_columns)} mask(s) were given: pass one label column (and one mask) per head, "
            "or build the model with tasks matching the labels"
        )
    for col, mcol in zip(label_columns, mask_columns, strict=True):
        for c in (col, mcol):
            if c is not None and c not in df.columns:
                raise ValueError(f"task column {c!r} is not in the frame (columns: {list(df.columns)[:12]}...): "
                                 "add it (e.g. with return_labels) before training")
        y = df[col]
        rows = df[mcol].to_numpy(bool) if mcol is not None else np.ones(len(df), bool)
        values = y[rows]
        if values.isna().any() or not values.isin([0, 1]).all():
            raise ValueError(f"task label {col!r} must hold 0/1 on its rows; found {sorted(values.dropna().unique())[:5]} "
                             "or NaN: fill or mask those rows")
        if values.nunique() < 2:
            only = values.iloc[0] if len(values) else "no rows"
            raise ValueError(f"task label {col!r} is constant ({only}) on its {int(rows.sum())} rows"
                             f"{f' (mask {mcol!r})' if mcol else ''}: the task has nothing to learn; "
                             "widen the sample (more users, a longer window) or drop the task")


@dataclass
class TrainedMultitask:
    """A trained multi-task net with its preprocessor.

    ``history`` per epoch: ``train_loss`` and ``valid_loss`` (lists of (T,)
    task losses; each task's mean over its own rows, so the train value weights
    every batch's mean by the rows the task held in it, NaN for a task with no
    rows), ``weights`` ((T,) task weights used), ``grad_norm`` (mean
    global gradient norm per step).
    """

    preprocessor: CtrPreprocessor
    net: _MultitaskNet
    config: MultitaskConfig
    weighting: UncertaintyWeighting | None = None
    history: dict[str, list] = field(default_factory=dict)
    best_epoch: int = 0

    def logits_arrays(self, arrays: dict[str, np.ndarray], batch_size: int = 8192) -> np.ndarray:
        """(n, T) float64 tower logits of preprocessed ``arrays``."""
        self.net.eval()
        n = len(arrays["cat"])
        out = np.empty((n, len(self.net.tasks)), dtype=np.float64)
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                sl = slice(s, s + batch_size)
                hist = torch.as_tensor(arrays["hist"][sl]) if "hist" in arrays else None
                out[sl] = self.net(torch.as_tensor(arrays["cat"][sl]), torch.as_tensor(arrays["num"][sl]), hist).double().numpy()
        return out

    def predict(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Task name -> (n,) probabilities for the rows of ``df`` (see each net's ``probabilities``)."""
        return self.net.probabilities(self.logits_arrays(self.preprocessor.transform(df)))


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads (``None``: unchanged), then restore the setting."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _labels_masks(df: pd.DataFrame, label_columns, mask_columns) -> tuple[np.ndarray, np.ndarray]:
    y = np.stack([df[c].fillna(0).to_numpy(np.float32) for c in label_columns], axis=1)
    m = np.stack([df[c].to_numpy(bool) if c is not None else np.ones(len(df), bool) for c in mask_columns], axis=1)
    return y, m


def train_multitask(
    make_net,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    *,
    categorical: Sequence[str],
    numeric: Sequence[str],
    label_columns: Sequence[str],
    mask_columns: Sequence[str | None],
    config: MultitaskConfig | None = None,
    progress: bool = False,
) -> TrainedMultitask:
    r"""Train a multi-task net on chapter 03's features with masked task losses and early stopping.

    One step (the chapter shows it): the net gives (n, T) logits; each task's
    loss is its mean cross-entropy over its own rows (``mask_columns``); the
    total is :math:`\sum_k L_k` (``weighting="equal"``) or
    :class:`UncertaintyWeighting`'s :math:`\sum_k e^{-s_k} L_k + s_k/2`.
    Only rows that belong to at least one task are drawn. Early stopping keeps
    the epoch with the lowest validation :math:`\sum_k L_k` (unweighted, so
    that both weightings stop on the same criterion).

    Args:
        make_net: ``(cardinalities, n_numeric, item_field) -> _MultitaskNet``.
        train, valid: frames with the feature columns and the task columns.
        categorical, numeric: feature columns (:func:`ecrec.ctr.group_columns`);
            the history is pooled when ``item_id`` is categorical.
        label_columns: one 0/1 column per task head, in the net's task order.
        mask_columns: per task the bool column of its rows, or ``None`` (all rows).
        config: :class:`MultitaskConfig`.

    Returns:
        :class:`TrainedMultitask` holding the best epoch.

    Raises:
        ValueError: bad task columns (:func:`check_task_labels`, checked on
            both splits), NaN logits.
        FloatingPointError: the loss became infinite.
    """
    cfg = config or MultitaskConfig()
    with _torch_threads(cfg.torch_threads):
        return _train_multitask(make_net, train, valid, categorical=categorical, numeric=numeric,
                                label_columns=label_columns, mask_columns=mask_columns, cfg=cfg, progress=progress)


def _train_multitask(make_net, train, valid, *, categorical, numeric, label_columns, mask_columns,
                     cfg: MultitaskConfig, progress: bool) -> TrainedMultitask:
    """:func:`train_multitask`'s body, under the thread setting it chose."""
    from tqdm.auto import tqdm

    categorical = list(categorical)
    item_field = categorical.index("item_id") if "item_id" in categorical else None
    pre = CtrPreprocessor(categorical, numeric, sequence=item_field is not None, history_len=cfg.history_len).fit(train)
    torch.manual_seed(cfg.seed)
    net = make_net(pre.cardinalities, pre.n_numeric, item_field)
    for name, frame in (("train", train), ("valid", valid)):
        try:
            check_task_labels(frame, label_columns, mask_columns, len(net.tasks))
        except ValueError as exc:
            raise ValueError(f"train_multitask ({name} split): {exc}") from None
    weighting = UncertaintyWeighting(len(net.tasks)) if cfg.weighting == "uncertainty" else None
    model = TrainedMultitask(pre, net, cfg, weighting,
                             {"train_loss": [], "valid_loss": [], "weights": [], "grad_norm": []})
    groups = [{"params": list(net.parameters()), "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    if weighting is not None:
        groups.append({"params": list(weighting.parameters()), "lr": cfg.weighting_lr, "weight_decay": 0.0})
    opt = torch.optim.Adam(groups)

    y_tr, m_tr = _labels_masks(train, label_columns, mask_columns)
    rows = np.flatnonzero(m_tr.any(axis=1))  # rows of at least one task
    tr = {k: v[rows] for k, v in pre.transform(train).items()}
    y_tr, m_tr = torch.as_tensor(y_tr[rows]), torch.as_tensor(m_tr[rows])
    va = pre.transform(valid)
    y_va, m_va = (torch.as_tensor(a) for a in _labels_masks(valid, label_columns, mask_columns))
    id_cols = [i for i, c in enumerate(categorical) if c in ("user_id", "item_id")]
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, waited = np.inf, None, 0
    for epoch in tqdm(range(cfg.max_epochs), disable=not progress, desc="epochs"):
        net.train()
        perm = torch.randperm(len(rows), generator=gen).numpy()
        # per task: sum of its batch means weighted by the rows it held in the batch, and those rows
        sums, norms, n_task = np.zeros(len(net.tasks)), [], np.zeros(len(net.tasks))
        for s in range(0, len(perm), cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            cat = torch.as_tensor(tr["cat"][idx])
            if cfg.id_dropout > 0 and id_cols:
                drop = torch.rand(len(idx), len(id_cols), generator=gen) < cfg.id_dropout
                cat[:, id_cols] = cat[:, id_cols].masked_fill(drop, 0)
            hist = torch.as_tensor(tr["hist"][idx]) if "hist" in tr else None
            logits = net(cat, torch.as_tensor(tr["num"][idx]), hist)
            losses = net.task_losses(logits, y_tr[idx], m_tr[idx])  # (T,)
            loss = weighting(losses) if weighting is not None else losses.sum()
            _check_finite_loss(loss, logits.flatten(), f"train_multitask epoch {epoch + 1}")
            opt.zero_grad()
            loss.backward()
            norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in net.parameters() if p.grad is not None])))
            opt.step()
            held = m_tr[idx].sum(dim=0).numpy()  # (T,) rows of each task in this batch
            sums += losses.detach().numpy() * held
            n_task += held
        with torch.inference_mode():
            v_losses = net.task_losses(torch.as_tensor(model.logits_arrays(va)).float(), y_va, m_va).numpy()
        # the epoch's mean loss per task row (ESMM's and the masked return task's rows, not every row)
        model.history["train_loss"].append(np.divide(sums, n_task, out=np.full_like(sums, np.nan),
                                                     where=n_task > 0).tolist())
        model.history["valid_loss"].append(v_losses.tolist())
        model.history["weights"].append(weighting.weights.tolist() if weighting is not None else [1.0] * len(net.tasks))
        model.history["grad_norm"].append(float(np.mean(norms)))
        score = float(v_losses.sum())
        if score < best:
            best, waited, model.best_epoch = score, 0, epoch + 1
            best_state = (copy.deepcopy(net.state_dict()),
                          copy.deepcopy(weighting.state_dict()) if weighting is not None else None)
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    net.load_state_dict(best_state[0])
    if weighting is not None:
        weighting.load_state_dict(best_state[1])
    net.eval()
    return model


# --- evaluation ---------------------------------------------------------------

