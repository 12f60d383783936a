"""Chapter 07: the multi-head MiniLM review model, its loss and its training loop.

* :class:`MultiTaskReviewModel`: one encoder with the checkpoint's own pooling
  (:func:`ecrec.bert.pool_output`: mean for MiniLM, the ``[CLS]`` token's
  vector for a sentence-transformers CLS checkpoint), dropout, and one linear
  head per task (**hard parameter sharing**: Caruana, 1997, "Multitask
  Learning"); single-task models are the same class with one head;
* :func:`multitask_loss`: ``sum_t w_t L_t`` (binary cross-entropy for a binary
  task, cross-entropy for a multi-class task);
* :func:`train_review_model`: a short, visible loop (AdamW with the head's own
  learning rate, :func:`ecrec.finetune.optimizer_groups`; warm-up then linear
  decay; clipping; per-step loss, per-task losses and gradient norm;
  validation scored at step 0 and the best state kept). Not to be confused
  with :func:`ecrec.multitask.train_multitask`, chapter 06's tabular networks;
* :func:`predict_outputs`, :func:`review_features`; :func:`init_heads_from_probes`
  (LP-FT), :func:`trainable_state` (what a LoRA model must save).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ecrec.review_data import REVIEW_TASKS, EncodedReviews, ReviewTask

__all__ = ["MultiTaskReviewModel", "load_review_model", "check_heads", "multitask_loss", "ReviewTrainConfig",
           "ReviewTrainResult", "train_review_model", "predict_outputs", "review_features",
           "init_heads_from_probes", "trainable_state", "START_CHECK_ROWS"]

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
class ReviewTrainConfig:
    """Knobs of :func:`train_review_model` (as :class:`ecrec.finetune.TrainConfig`'s).

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
class ReviewTrainResult:
    """What :func:`train_review_model` did: ``steps`` (one dict per step: loss, ``loss_<task>``,
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


def _valid_losses(model, data: EncodedReviews, *, batch_size, device, plan, pad_id,
                  logits: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    """Weighted total and per-task validation losses (means over all reviews); ``logits`` given: from them."""
    if logits is None:
        logits = predict_outputs(model, data, batch_size=batch_size, device=device, pad_id=pad_id,
                                 precision=plan.name)
    tensors = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)).reshape(len(data), -1) for k, v in logits.items()}
    labels = {k: torch.as_tensor(v) for k, v in data.labels.items()}
    total, parts = multitask_loss(tensors, labels, data.tasks)
    return {"valid_loss": float(total), **{f"valid_{k}": v for k, v in parts.items()}}


START_CHECK_ROWS = 16  # validation reviews on which given step-0 logits are checked against the model


def _check_start_logits(model, valid: EncodedReviews, logits: Mapping[str, np.ndarray], *, device, plan,
                        pad_id: int) -> None:
    """Raise unless ``logits`` has every task's (n_valid[, K]) logits and matches the model on a few reviews.

    The tolerance (0.05 + 5% of the logit) covers bf16 autocast against a probe's float64 arithmetic.
    """
    tasks = {t.name: t for t in valid.tasks}
    if set(logits) != set(tasks):
        raise ValueError(f"start_valid_logits has tasks {sorted(logits)}; the validation data has {sorted(tasks)}")
    for name, z in logits.items():
        want = (len(valid),) if tasks[name].n_outputs == 1 else (len(valid), tasks[name].n_outputs)
        if np.shape(z) != want:
            raise ValueError(f"start_valid_logits[{name!r}] has shape {np.shape(z)}; expected {want} "
                             "(one row per validation review)")
    rows = valid.subset(range(min(START_CHECK_ROWS, len(valid))))
    got = predict_outputs(model, rows, device=device, pad_id=pad_id, precision=plan.name)
    for name, z in got.items():
        given = np.asarray(logits[name], dtype=np.float64)[: len(rows)]
        gap = np.abs(z - given) - (0.05 + 0.05 * np.abs(given))
        if (gap > 0).any():
            raise ValueError(f"start_valid_logits[{name!r}] are not this model's: the model gives {z.ravel()[:3]} on "
                             f"the first validation reviews where {given.ravel()[:3]} were given. Pass the logits of "
                             "the model as it is (e.g. its probes' outputs after init_heads_from_probes), or None")


class _BestKeeper:
    """Scores validation, keeps the best weights (step 0 included) and counts evaluations without gain."""

    def __init__(self, model, valid: EncodedReviews, config: ReviewTrainConfig, result: ReviewTrainResult, *,
                 device, plan, pad_id: int):
        self.model, self.valid, self.config, self.result = model, valid, config, result
        self.device, self.plan, self.pad_id = device, plan, pad_id
        self.state, self.bad_evals, self.running = None, 0, []

    def __call__(self, step: int, logits: Mapping[str, np.ndarray] | None = None) -> bool:
        """Score valid at ``step`` (from ``logits`` when given); keep the state if best. True when patience is exhausted."""
        scores = _valid_losses(self.model, self.valid, batch_size=self.config.eval_batch_size, device=self.device,
                               plan=self.plan, pad_id=self.pad_id, logits=logits)
        train_loss = float(np.mean(self.running)) if self.running else None
        self.result.history.append({"step": step, "train_loss": train_loss, **scores})
        self.running = []
        self.model.train()
        if self.state is None or scores["valid_loss"] < self.result.best_valid_loss:
            self.result.best_step, self.result.best_valid_loss, self.bad_evals = step, scores["valid_loss"], 0
            self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            return False
        self.bad_evals += 1
        return self.bad_evals >= self.config.patience


def _train_step(model, train: EncodedReviews, idx, *, device, plan, optimizer, scheduler, scaler, params,
                max_grad_norm: float, pad_id: int) -> dict[str, float]:
    """One optimisation step on the reviews ``idx``; returns loss, per-task losses, grad norm, lr."""
    batch = {k: v.to(device) for k, v in train.batch(idx, pad_id).items()}
    with plan.autocast(device):
        logits = model(**batch)
    loss, parts = multitask_loss(logits, train.batch_labels(idx, device), train.tasks)
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler else loss).backward()
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    return {"loss": float(loss.detach()), **{f"loss_{k}": v for k, v in parts.items()}, "grad_norm": grad_norm,
            "lr": optimizer.param_groups[0]["lr"]}


def train_review_model(
    model: MultiTaskReviewModel,
    train: EncodedReviews,
    valid: EncodedReviews,
    config: ReviewTrainConfig,
    *,
    pad_id: int = 0,
    device=None,
    start_valid_logits: Mapping[str, np.ndarray] | None = None,
) -> ReviewTrainResult:
    """Fine-tune the review model on every task of ``train`` at once; early-stop on ``valid``'s weighted loss.

    One step: a length-grouped batch (:func:`ecrec.pairs.length_grouped_batches`),
    forward, :func:`multitask_loss`, backward, clip, AdamW, scheduler. The
    weights with the best validation loss, step 0 included, are kept: no run
    ends below its start on validation (``result.best_step == 0``: the model
    is its starting point, e.g. its probe).

    ``start_valid_logits``: the model's own logits on ``valid`` before any
    step, when the caller has them already, e.g. a model whose heads are its
    probes (:func:`init_heads_from_probes`): the probes' outputs on the frozen
    features. Step 0 is then scored from them, saving a pass over ``valid``;
    they are checked against the model on the first
    :data:`START_CHECK_ROWS` validation reviews.

    Returns:
        :class:`ReviewTrainResult`; ``model`` holds the best weights, in eval mode.

    Raises:
        ValueError: empty ``train``, train and valid with different tasks, a
            head that does not fit its task (:func:`check_heads`), or
            ``start_valid_logits`` of the wrong shape or not this model's.
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
    step_kw = {"device": device, "plan": plan, "optimizer": optimizer, "scheduler": scheduler,
               "scaler": torch.amp.GradScaler("cuda") if plan.use_scaler else None,
               "params": [p for g in groups for p in g["params"]], "max_grad_norm": config.max_grad_norm,
               "pad_id": pad_id}
    trainable, total = count_params(model)
    result = ReviewTrainResult(trainable_params=trainable, total_params=total, precision=plan.name)
    keeper = _BestKeeper(model, valid, config, result, device=device, plan=plan, pad_id=pad_id)
    if start_valid_logits is not None:
        _check_start_logits(model, valid, start_valid_logits, device=device, plan=plan, pad_id=pad_id)
    keeper(0, start_valid_logits)
    result.start_valid_loss = result.history[0]["valid_loss"]
    step, done = 0, False
    bar = tqdm(total=total_steps, desc=f"fine-tune ({plan.name}, {device.type})", disable=not config.progress)
    model.train()
    for epoch in range(config.epochs):
        for idx in length_grouped_batches(train.lengths, config.batch_size, seed=config.seed + epoch):
            started = time.perf_counter()
            logged = _train_step(model, train, idx, **step_kw)
            result.train_seconds += time.perf_counter() - started
            step += 1
            keeper.running.append(logged["loss"])
            result.steps.append({"step": step, **logged})
            bar.update(1)
            if step % eval_every == 0 or step == total_steps:
                done = keeper(step)
            if done or step >= total_steps:
                break
        if done or step >= total_steps:
            break
    bar.close()
    model.load_state_dict(keeper.state)
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
                    precision: str = "auto", progress: bool = False) -> np.ndarray:
    """The pooled vectors every head reads, float32 (n, hidden), in eval mode (no dropout).

    ``precision``: as :func:`ecrec.finetune.amp_plan` (``"bf16"``: autocast, the vectors cast back to fp32).
    """
    from tqdm.auto import tqdm

    from ecrec.finetune import amp_plan
    from ecrec.pairs import sorted_batches

    device = torch.device(device) if device is not None else next(model.parameters()).device
    plan = amp_plan(device, precision)
    out = np.empty((len(data), int(model.encoder.config.hidden_size)), dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for idx in tqdm(sorted_batches(data.lengths, batch_size), desc="features", disable=not progress):
            batch = {k: v.to(device) for k, v in data.batch(idx, pad_id).items()}
            with plan.autocast(device):
                out[idx] = model.features(**batch).float().cpu().numpy()
    model.train(was_training)
    return out


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
