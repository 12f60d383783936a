"""Chapter 06, Part B: review text that a fine-tuned encoder really reads.

Women's E-Commerce Clothing Reviews (Brooks, 2018; :func:`ecrec.data.load_reviews`)
carries three labels per review, and the text speaks to each of them:

* **recommended** (``Recommended IND``, 0/1): binary, the click-like label;
* **rating** (``Rating``, 1-5 stars): here **5 classes** (softmax, cross-entropy);
  the expected rating ``sum_k k p_k`` serves as a continuous sentiment score;
* **department** (``Department Name``, 6 values): the topic.

The pieces:

* :func:`join_review_text`: one text per review from its title and body (the rule
  is stated there); :func:`prepare_reviews` drops rows without any text or label;
* :func:`stratified_split`: a fixed, seeded split stratified on rating x department;
* :class:`ReviewTask` / :data:`REVIEW_TASKS` and :func:`encode_labels`: label
  columns checked (present, not constant, known values) and coded 0..K-1;
* :class:`MultiTaskReviewModel`: one encoder with the checkpoint's own pooling
  (:func:`ecrec.bert.checkpoint_pooling`: mean for MiniLM), dropout, and one
  linear head per task (**hard parameter sharing**: Caruana, 1997, "Multitask
  Learning"); single-task models are the same class with one head;
* :func:`multitask_loss`: ``sum_t w_t L_t`` (binary cross-entropy for a binary
  task, cross-entropy for a multi-class task);
* :func:`train_multitask`: a short, visible loop (AdamW with the head's own
  learning rate, :func:`ecrec.finetune.optimizer_groups`; warm-up then linear
  decay; clipping; per-step loss, per-task losses and gradient norm;
  validation scored at step 0 and the best state kept);
* :func:`bootstrap_review_metrics`: AUC and log loss (recommended), macro-F1 and
  MAE (rating), macro-F1 (department), with percentile intervals over reviews
  and paired differences between models;
* :func:`item_sentiment_curve`: a per-item sentiment feature (the mean of the
  model's expected rating over the reviews seen so far) against the mean of the
  star ratings seen so far, as the number of reviews grows.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = [
    "TEXT",
    "ReviewTask",
    "REVIEW_TASKS",
    "DEPARTMENTS",
    "join_review_text",
    "prepare_reviews",
    "stratified_split",
    "stratified_sample",
    "encode_labels",
    "EncodedReviews",
    "encode_reviews",
    "MultiTaskReviewModel",
    "load_review_model",
    "check_heads",
    "multitask_loss",
    "MultiTaskConfig",
    "MultiTaskResult",
    "train_multitask",
    "predict_outputs",
    "review_features",
    "fit_linear_heads",
    "linear_outputs",
    "init_heads_from_probes",
    "trainable_state",
    "expected_rating",
    "review_metrics",
    "bootstrap_review_metrics",
    "item_sentiment_curve",
]

TEXT = "text"  # the joined title + review text (str)
TITLE_COLUMN, BODY_COLUMN = "Title", "Review Text"
DEPARTMENTS = ("Bottoms", "Dresses", "Intimate", "Jackets", "Tops", "Trend")
_SENTENCE_END = re.compile(r"[.!?]$")


# --- tasks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewTask:
    """One prediction task on a label column.

    ``kind``: ``"binary"`` (one logit, ``classes`` = (0, 1)) or ``"multiclass"``
    (one logit per class, softmax). ``classes``: the label values, in the order
    of the head's outputs. ``weight``: the task's weight in :func:`multitask_loss`.
    """

    name: str
    column: str
    kind: str
    classes: tuple
    weight: float = 1.0

    def __post_init__(self):
        if self.kind not in ("binary", "multiclass"):
            raise ValueError(f"task {self.name!r}: kind must be 'binary' or 'multiclass', got {self.kind!r}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"task {self.name!r}: classes must be >= 2 distinct values, got {self.classes}")
        if self.kind == "binary" and tuple(self.classes) != (0, 1):
            raise ValueError(f"task {self.name!r}: a binary task has classes (0, 1), got {self.classes}")
        if not self.weight >= 0:
            raise ValueError(f"task {self.name!r}: weight must be >= 0, got {self.weight}")

    @property
    def n_outputs(self) -> int:
        """Outputs of the task's head: 1 for a binary task, else the number of classes."""
        return 1 if self.kind == "binary" else len(self.classes)


REVIEW_TASKS: tuple[ReviewTask, ...] = (
    ReviewTask("recommended", "Recommended IND", "binary", (0, 1)),
    ReviewTask("rating", "Rating", "multiclass", (1, 2, 3, 4, 5)),
    ReviewTask("department", "Department Name", "multiclass", DEPARTMENTS),
)


# --- text and split ---------------------------------------------------------------------------


def join_review_text(title: pd.Series, body: pd.Series) -> pd.Series:
    """One text per review: the title, then the review text.

    The rule: whitespace is collapsed and trimmed in both; an empty string
    counts as missing. Both present: ``title + ". " + body``, or
    ``title + " " + body`` when the title already ends in ``.``, ``!`` or ``?``
    ("Love it!" stays one sentence). One present: that one. Neither: missing
    (``pd.NA``), for the caller to drop.

    Args:
        title, body: text Series of the same index (missing values allowed).

    Returns:
        A text Series with the same index.

    Raises:
        ValueError: the two Series have different indexes.
    """
    from ecrec.data import normalise_whitespace

    if not title.index.equals(body.index):
        raise ValueError("title and body must share one index (the same reviews, in the same order)")
    t = normalise_whitespace(title.astype("string")).replace("", pd.NA)
    b = normalise_whitespace(body.astype("string")).replace("", pd.NA)
    sep = pd.Series(np.where(t.fillna("").str.contains(_SENTENCE_END), " ", ". "), index=t.index)
    both = t + sep + b
    return both.fillna(t).fillna(b).astype("string")


def prepare_reviews(df: pd.DataFrame, tasks: Sequence[ReviewTask] = REVIEW_TASKS) -> tuple[pd.DataFrame, dict]:
    """Add the joined ``text`` column; drop reviews without text or without a task label.

    Args:
        df: :func:`ecrec.data.load_reviews`'s frame (``Title``, ``Review Text``
            and each task's column).

    Returns:
        ``(frame, report)``: the kept rows (original index kept) with ``text``,
        and counts ``{"rows", "no_text", "no_label", "kept"}``.

    Raises:
        KeyError: a needed column is missing (named).
    """
    need = [TITLE_COLUMN, BODY_COLUMN, *[t.column for t in tasks]]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise KeyError(f"review frame lacks column(s) {missing}; load it with ecrec.data.load_reviews()")
    out = df.copy()
    out[TEXT] = join_review_text(df[TITLE_COLUMN], df[BODY_COLUMN])
    no_text = out[TEXT].isna()
    no_label = out[[t.column for t in tasks]].isna().any(axis=1) & ~no_text
    kept = out[~no_text & ~no_label].copy()
    kept[TEXT] = kept[TEXT].astype(str)
    report = {"rows": len(df), "no_text": int(no_text.sum()), "no_label": int(no_label.sum()), "kept": len(kept)}
    return kept, report


def _strata(df: pd.DataFrame, by: Sequence[str]) -> np.ndarray:
    return df[list(by)].astype(str).agg("|".join, axis=1).to_numpy()


def stratified_split(
    df: pd.DataFrame,
    by: Sequence[str] = ("Rating", "Department Name"),
    *,
    valid: float = 0.1,
    test: float = 0.2,
    seed: int = 42,
) -> pd.Series:
    """A fixed train/valid/test split, stratified on the columns ``by`` jointly, seeded.

    Every stratum (e.g. 1-star Trend reviews) keeps its share in each part
    (scikit-learn's ``train_test_split(stratify=...)``, twice: test first, then
    valid out of the rest).

    Returns:
        A Series of "train" / "valid" / "test" on ``df``'s index.

    Raises:
        ValueError: fractions outside (0, 1) or summing to >= 1, or a stratum
            with fewer than 2 rows (scikit-learn cannot split it).
    """
    from sklearn.model_selection import train_test_split

    if not (0 < valid < 1 and 0 < test < 1 and valid + test < 1):
        raise ValueError(f"valid and test must be in (0, 1) with valid + test < 1, got {valid}, {test}")
    key = _strata(df, by)
    pos = np.arange(len(df))
    rest, te = train_test_split(pos, test_size=test, stratify=key, random_state=seed)
    tr, va = train_test_split(rest, test_size=valid / (1 - test), stratify=key[rest], random_state=seed)
    split = np.empty(len(df), dtype=object)
    split[tr], split[va], split[te] = "train", "valid", "test"
    return pd.Series(split, index=df.index, name="split").astype("string")


def stratified_sample(df: pd.DataFrame, n: int | None, by: Sequence[str], *, seed: int = 42) -> pd.DataFrame:
    """``n`` rows of ``df`` drawn without replacement, stratified on ``by``; all rows if ``n`` is None
    or >= len(df). Rows keep ``df``'s order.

    Raises:
        ValueError: ``n`` < 2.
    """
    from sklearn.model_selection import train_test_split

    if n is None or n >= len(df):
        return df
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    pos, _ = train_test_split(np.arange(len(df)), train_size=n, stratify=_strata(df, by), random_state=seed)
    return df.iloc[np.sort(pos)]


# --- labels ----------------------------------------------------------------------------------


def encode_labels(df: pd.DataFrame, tasks: Sequence[ReviewTask] = REVIEW_TASKS) -> dict[str, np.ndarray]:
    """Each task's label column as int64 class indices 0..K-1 (the order of ``task.classes``).

    Raises:
        KeyError: a task's column is missing (the error names it and the columns there are).
        ValueError: missing values, a value not in ``task.classes``, or a
            constant column (nothing to learn), each naming the column and the fix.
    """
    out = {}
    for task in tasks:
        if task.column not in df.columns:
            raise KeyError(
                f"task {task.name!r} needs the label column {task.column!r}, which is not in the frame "
                f"(columns: {list(df.columns)}); rename the column or build the task with column=<its name>")
        col = df[task.column]
        if col.isna().any():
            raise ValueError(
                f"label column {task.column!r} has {int(col.isna().sum())} missing value(s); "
                "drop those rows first (prepare_reviews does)")
        if col.nunique() < 2:
            raise ValueError(
                f"label column {task.column!r} is constant ({col.iloc[0]} in every row): nothing to learn; "
                f"drop the task {task.name!r} or use a sample that holds several classes")
        index = {c: i for i, c in enumerate(task.classes)}
        unknown = sorted({str(v) for v in col.unique() if v not in index})
        if unknown:
            raise ValueError(
                f"label column {task.column!r} holds {unknown}, not in the task's classes {list(task.classes)}; "
                f"set ReviewTask(..., classes=...) to every value, {len(task.classes) + len(unknown)} head outputs")
        out[task.name] = np.array(col.map(index).to_numpy(), dtype=np.int64)  # a writable copy
    return out


# --- encoded reviews ---------------------------------------------------------------------------


@dataclass
class EncodedReviews:
    """Tokenized review texts (unpadded) and their task labels.

    ``input_ids[i]`` has ``lengths[i] <= max_length`` ids; ``labels[name]`` is
    int64 (n,) class indices per task; ``tasks`` the tasks, in head order.
    """

    input_ids: list[list[int]]
    labels: dict[str, np.ndarray]
    tasks: tuple[ReviewTask, ...]
    max_length: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        """int64 (n,): tokens per review, special tokens included."""
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))

    def batch(self, idx: Sequence[int], pad_id: int = 0) -> dict:
        """``input_ids``, ``attention_mask``: int64 (len(idx), longest in the batch)."""
        from ecrec.pairs import _pad

        ids, mask = _pad([self.input_ids[i] for i in idx], pad_id)
        return {"input_ids": ids, "attention_mask": mask}

    def batch_labels(self, idx: Sequence[int], device=None) -> dict[str, torch.Tensor]:
        """Each task's labels for ``idx``: int64 (len(idx),) tensors."""
        return {k: torch.as_tensor(v[np.asarray(idx)], device=device) for k, v in self.labels.items()}

    def subset(self, idx: Sequence[int]) -> EncodedReviews:
        idx = np.asarray(idx)
        return EncodedReviews([self.input_ids[i] for i in idx], {k: v[idx] for k, v in self.labels.items()},
                              self.tasks, self.max_length)


def encode_reviews(
    tokenizer,
    df: pd.DataFrame,
    tasks: Sequence[ReviewTask] = REVIEW_TASKS,
    *,
    text_column: str = TEXT,
    max_length: int = 128,
) -> EncodedReviews:
    """Tokenize every review once (truncated to ``max_length`` tokens, no padding) and code its labels.

    Raises:
        KeyError: ``text_column`` or a label column is missing.
        ValueError: missing text (NaN), an empty frame, ``max_length`` < 8, or a
            bad label column (:func:`encode_labels`).
    """
    if text_column not in df.columns:
        raise KeyError(f"no text column {text_column!r}; build it with prepare_reviews() (title + review text)")
    if len(df) == 0:
        raise ValueError("no reviews to encode")
    if max_length < 8:
        raise ValueError(f"max_length must be >= 8 tokens, got {max_length}")
    text = df[text_column]
    bad = text.isna() | ~text.map(lambda t: isinstance(t, str))
    if bad.any():
        raise ValueError(
            f"text column {text_column!r} has {int(bad.sum())} missing/non-text value(s) (e.g. at index "
            f"{list(df.index[bad.to_numpy()][:3])}); join title and review text with join_review_text() and drop "
            "reviews with neither (prepare_reviews does both)")
    labels = encode_labels(df, tasks)
    ids = tokenizer(text.tolist(), truncation=True, max_length=max_length, padding=False)["input_ids"]
    return EncodedReviews(list(ids), labels, tuple(tasks), max_length)


# --- the model ---------------------------------------------------------------------------


class MultiTaskReviewModel(torch.nn.Module):
    """Encoder -> the checkpoint's pooling -> dropout -> one linear head per task.

    Every task reads the same pooled vector (hard parameter sharing); a
    single-task model is this class with one head. Heads are initialised as
    BERT initialises its own (weights N(0, 0.02), bias 0); they are the only
    fresh parameters (:func:`ecrec.bert.fresh_parameter_names` names them,
    ``head.<task>.*``), so :func:`ecrec.finetune.optimizer_groups` gives them
    ``head_lr`` and :func:`ecrec.bert.add_lora` keeps them trainable.

    Inputs: ``input_ids``, ``attention_mask`` int64 (batch, seq).
    Output of ``forward``: ``{task: logits}``, fp32 (batch, n_outputs).
    """

    def __init__(self, encoder, pooling, heads: Mapping[str, int], dropout: float = 0.1):
        super().__init__()
        if not heads:
            raise ValueError("give at least one head: {task name: outputs}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.encoder, self.pooling = encoder, pooling
        self.dropout = torch.nn.Dropout(dropout)
        hidden = int(encoder.config.hidden_size)
        self.head = torch.nn.ModuleDict({name: torch.nn.Linear(hidden, int(k)) for name, k in heads.items()})
        for layer in self.head.values():
            torch.nn.init.normal_(layer.weight, std=0.02)
            torch.nn.init.zeros_(layer.bias)

    def features(self, input_ids=None, attention_mask=None) -> torch.Tensor:
        """(batch, hidden) fp32 pooled vectors: what every head reads (before dropout)."""
        from ecrec.bert import pool_output

        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return pool_output(out, attention_mask, self.pooling)  # the checkpoint's convention, as in chapter 04

    def forward(self, input_ids=None, attention_mask=None) -> dict[str, torch.Tensor]:
        h = self.dropout(self.features(input_ids, attention_mask))
        return {name: layer(h).float() for name, layer in self.head.items()}


def load_review_model(
    tasks: Sequence[ReviewTask] = REVIEW_TASKS,
    model_name: str = "minilm",
    *,
    dropout: float = 0.1,
    seed: int = 42,
) -> MultiTaskReviewModel:
    """The pretrained encoder with its own pooling and fresh heads for ``tasks`` (CPU, train mode)."""
    from ecrec.bert import load_encoder

    encoder, pooling = load_encoder(model_name)
    torch.manual_seed(seed)
    model = MultiTaskReviewModel(encoder, pooling, {t.name: t.n_outputs for t in tasks}, dropout)
    model.model_name = model_name
    return model.train()


def check_heads(model, tasks: Sequence[ReviewTask]) -> None:
    """Every task has a head with as many outputs as it needs.

    Raises:
        ValueError: a task without a head, or a head whose output count does
            not match its label column's classes (naming the column and the fix).
    """
    for task in tasks:
        if task.name not in model.head:
            raise ValueError(f"the model has no head for task {task.name!r} (heads: {list(model.head)}); "
                             f"build it with heads including {task.name!r}: {task.n_outputs}")
        got = model.head[task.name].out_features
        if got != task.n_outputs:
            raise ValueError(
                f"head {task.name!r} has {got} outputs but label column {task.column!r} needs {task.n_outputs} "
                f"({task.kind}, classes {list(task.classes)}); build the model with heads={{{task.name!r}: "
                f"{task.n_outputs}}}")


# --- the loss -------------------------------------------------------------------------------


def multitask_loss(
    logits: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
    tasks: Sequence[ReviewTask],
) -> tuple[torch.Tensor, dict[str, float]]:
    """``L = sum_t w_t L_t`` over the tasks, each the mean over the batch, in fp32.

    ``L_t`` is the binary cross-entropy on the logit for a binary task,
    ``-mean(y log sigmoid(z) + (1 - y) log(1 - sigmoid(z)))``, and the
    cross-entropy ``-mean(log softmax(z)_y)`` for a multi-class one.

    Args:
        logits: task -> (batch, n_outputs) float tensors.
        labels: task -> (batch,) int64 class indices.

    Returns:
        ``(total, {task: L_t as a float})``.

    Raises:
        ValueError: a task's logits have the wrong number of outputs.
        FloatingPointError: a non-finite loss.
    """
    total = None
    parts = {}
    for task in tasks:
        z, y = logits[task.name].float(), labels[task.name]
        if z.ndim != 2 or z.shape[1] != task.n_outputs:
            raise ValueError(f"task {task.name!r} (column {task.column!r}): logits {tuple(z.shape)}, expected "
                             f"(batch, {task.n_outputs})")
        if task.kind == "binary":
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], y.float())
        else:
            loss = torch.nn.functional.cross_entropy(z, y)
        if not bool(loss.isfinite()):
            raise FloatingPointError(f"task {task.name!r}: loss is {loss.item()}; lower the learning rate")
        parts[task.name] = float(loss.detach())
        total = task.weight * loss if total is None else total + task.weight * loss
    return total, parts


# --- training --------------------------------------------------------------------------------


@dataclass
class MultiTaskConfig:
    """Knobs of :func:`train_multitask` (as :class:`ecrec.finetune.TrainConfig`'s).

    ``lr``: peak learning rate of the encoder (or LoRA adapters); ``head_lr``
    (None: ``lr``) of the fresh heads. Warm-up over ``warmup_ratio`` of the
    steps, then linear decay to 0. Validation (the weighted loss
    :func:`multitask_loss`) at step 0 and every ``eval_every`` steps; stop after
    ``patience`` evaluations without improvement or ``max_steps`` steps.
    """

    epochs: int = 1
    batch_size: int = 16
    lr: float = 5e-5
    head_lr: float | None = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    precision: str = "auto"
    eval_every: int | None = None
    patience: int = 2
    max_steps: int | None = None
    eval_batch_size: int = 128
    seed: int = 42
    progress: bool = True

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or (self.head_lr is not None and not self.head_lr > 0):
            raise ValueError(f"lr and head_lr must be > 0, got {self.lr}, {self.head_lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be None or >= 1, got {self.max_steps}")


@dataclass
class MultiTaskResult:
    """What :func:`train_multitask` did: ``steps`` (one dict per step: loss, ``loss_<task>``,
    grad_norm before clipping, lr), ``history`` (one dict per validation: step, train_loss,
    valid_loss, ``valid_<task>``), the best step and its validation loss."""

    history: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    best_valid_loss: float = float("nan")
    start_valid_loss: float = float("nan")
    train_seconds: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    precision: str = "fp32"


def _valid_losses(model, data: EncodedReviews, *, batch_size, device, plan, pad_id) -> dict[str, float]:
    """Weighted total and per-task validation losses (means over all reviews)."""
    logits = predict_outputs(model, data, batch_size=batch_size, device=device, pad_id=pad_id,
                             precision=plan.name)
    tensors = {k: torch.as_tensor(v).reshape(len(data), -1) for k, v in logits.items()}
    labels = {k: torch.as_tensor(v) for k, v in data.labels.items()}
    total, parts = multitask_loss(tensors, labels, data.tasks)
    return {"valid_loss": float(total), **{f"valid_{k}": v for k, v in parts.items()}}


def train_multitask(
    model: MultiTaskReviewModel,
    train: EncodedReviews,
    valid: EncodedReviews,
    config: MultiTaskConfig,
    *,
    pad_id: int = 0,
    device=None,
) -> MultiTaskResult:
    """Fine-tune ``model`` on every task of ``train`` at once; early-stop on ``valid``'s weighted loss.

    One step: a length-grouped batch (:func:`ecrec.pairs.length_grouped_batches`),
    forward, :func:`multitask_loss`, backward, clip, AdamW, scheduler. The
    weights with the best validation loss, step 0 included, are kept: no run
    ends below its start.

    Returns:
        :class:`MultiTaskResult`; ``model`` holds the best weights, in eval mode.

    Raises:
        ValueError: empty ``train``, train and valid with different tasks, or a
            head that does not fit its task (:func:`check_heads`).
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from ecrec.bert import count_params
    from ecrec.finetune import adamw, amp_plan, optimizer_groups, pick_device
    from ecrec.pairs import length_grouped_batches

    if len(train) == 0:
        raise ValueError("no training reviews")
    if [t.name for t in train.tasks] != [t.name for t in valid.tasks]:
        raise ValueError(f"train tasks {[t.name for t in train.tasks]} differ from valid's {[t.name for t in valid.tasks]}")
    check_heads(model, train.tasks)
    device = pick_device(device)
    plan = amp_plan(device, config.precision)
    model.to(device)
    torch.manual_seed(config.seed)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = min(steps_per_epoch * config.epochs, config.max_steps or 10**12)
    eval_every = config.eval_every or steps_per_epoch
    groups = optimizer_groups(model, config.lr, config.head_lr, config.weight_decay)
    optimizer = adamw(groups)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler("cuda") if plan.use_scaler else None
    params = [p for g in groups for p in g["params"]]
    trainable, total = count_params(model)
    result = MultiTaskResult(trainable_params=trainable, total_params=total, precision=plan.name)
    best_state, bad_evals, running = None, 0, []

    def evaluate(step: int) -> bool:
        """Score valid; keep the state if best. True when patience is exhausted."""
        nonlocal best_state, bad_evals, running
        scores = _valid_losses(model, valid, batch_size=config.eval_batch_size, device=device, plan=plan,
                               pad_id=pad_id)
        result.history.append({"step": step, "train_loss": float(np.mean(running)) if running else None, **scores})
        running = []
        model.train()
        if best_state is None or scores["valid_loss"] < result.best_valid_loss:
            result.best_step, result.best_valid_loss, bad_evals = step, scores["valid_loss"], 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        bad_evals += 1
        return bad_evals >= config.patience

    evaluate(0)
    result.start_valid_loss = result.history[0]["valid_loss"]
    step, done = 0, False
    bar = tqdm(total=total_steps, desc=f"multi-task ({plan.name}, {device.type})", disable=not config.progress)
    model.train()
    for epoch in range(config.epochs):
        for idx in length_grouped_batches(train.lengths, config.batch_size, seed=config.seed + epoch):
            started = time.perf_counter()
            batch = {k: v.to(device) for k, v in train.batch(idx, pad_id).items()}
            with plan.autocast(device):
                logits = model(**batch)
            loss, parts = multitask_loss(logits, train.batch_labels(idx, device), train.tasks)
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            result.train_seconds += time.perf_counter() - started
            step += 1
            running.append(float(loss.detach()))
            result.steps.append({"step": step, "loss": running[-1], **{f"loss_{k}": v for k, v in parts.items()},
                                 "grad_norm": grad_norm, "lr": optimizer.param_groups[0]["lr"]})
            bar.update(1)
            if step % eval_every == 0 or step == total_steps:
                done = evaluate(step)
            if done or step >= total_steps:
                break
        if done or step >= total_steps:
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return result


def predict_outputs(
    model: MultiTaskReviewModel,
    data: EncodedReviews,
    *,
    batch_size: int = 128,
    device=None,
    pad_id: int = 0,
    precision: str = "auto",
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Each head's logits for every review, in eval mode under ``torch.inference_mode()``.

    Returns:
        ``{task: float32 (n,) logits}`` for a binary head, ``(n, K)`` for a multi-class one.
    """
    from tqdm.auto import tqdm

    from ecrec.finetune import amp_plan
    from ecrec.pairs import sorted_batches

    device = torch.device(device) if device is not None else next(model.parameters()).device
    plan = amp_plan(device, precision)
    out = {name: np.empty((len(data), layer.out_features), dtype=np.float32) for name, layer in model.head.items()}
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for idx in tqdm(sorted_batches(data.lengths, batch_size), desc="predict", disable=not progress):
            batch = {k: v.to(device) for k, v in data.batch(idx, pad_id).items()}
            with plan.autocast(device):
                logits = model(**batch)
            for name, z in logits.items():
                out[name][idx] = z.float().cpu().numpy()
    model.train(was_training)
    return {k: (v[:, 0] if v.shape[1] == 1 else v) for k, v in out.items()}


def review_features(model, data: EncodedReviews, *, batch_size: int = 128, device=None, pad_id: int = 0,
                    progress: bool = False) -> np.ndarray:
    """The pooled vectors every head reads, float32 (n, hidden), in eval mode (no dropout)."""
    from tqdm.auto import tqdm

    from ecrec.pairs import sorted_batches

    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = np.empty((len(data), int(model.encoder.config.hidden_size)), dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for idx in tqdm(sorted_batches(data.lengths, batch_size), desc="features", disable=not progress):
            batch = {k: v.to(device) for k, v in data.batch(idx, pad_id).items()}
            out[idx] = model.features(**batch).float().cpu().numpy()
    model.train(was_training)
    return out


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


def init_heads_from_probes(model: MultiTaskReviewModel, probes: Mapping[str, Any]) -> None:
    """Copy fitted linear probes (on :func:`review_features` of the frozen model) into the heads.

    The model's step-0 logits are then the probes' (LP-FT: Kumar et al., 2022).

    Raises:
        ValueError: a probe's shape does not fit its head.
    """
    for name, probe in probes.items():
        layer = model.head[name]
        w = np.asarray(probe.coef_, dtype=np.float32)
        b = np.asarray(probe.intercept_, dtype=np.float32).reshape(-1)
        if w.shape != tuple(layer.weight.shape) or b.shape != tuple(layer.bias.shape):
            raise ValueError(f"probe {name!r} {w.shape} does not fit head {tuple(layer.weight.shape)}")
        with torch.no_grad():
            layer.weight.copy_(torch.as_tensor(w))
            layer.bias.copy_(torch.as_tensor(b))


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable tensors (CPU copies): what a LoRA model must save (adapters and heads)."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


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
