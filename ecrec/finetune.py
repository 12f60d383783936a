"""Fine-tuning chapter 04's text CTR models: the training loop, mixed precision, FGM.

:func:`train_ctr_model` is the plain loop (forward, log loss, backward, step)
plus what makes it correct and fast, each a few lines:

* length-grouped batches padded to their own longest sequence (dynamic padding);
* gradient accumulation that weights every example equally (:func:`backward_window`);
* mixed precision where it pays (:func:`amp_plan`: bf16 on recent GPUs, fp16
  with a loss scaler on older ones, fp32 on CPUs by default);
* gradient clipping, AdamW with a separate learning rate for the fresh head,
  linear warm-up then decay (transformers' ``get_linear_schedule_with_warmup``);
* **honest early stopping**: validation is scored *before* the first step, so
  the kept weights are never worse on validation than the starting point
  (e.g. a head warm-started from the linear probe);
* per-step logs of the loss, gradient norm and logit spread, to diagnose a
  model that does not learn;
* optional FGM adversarial training (:class:`FGM`) and atomic checkpoints;
* the same loop under ``torch.distributed`` (DDP, started with ``torchrun``):
  :class:`ecrec.distributed.DistContext` shards each batch over the ranks and
  is the identity in a single process (appendix A).

Validation AUC is computed from **logits**: sigmoid saturates in float64
(``sigmoid(36) == sigmoid(40) == 1.0``) and would turn a perfect ranking into ties.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecrec.bert import bi_logits, count_params, ctr_loss, fresh_parameter_names, save_checkpoint
from ecrec.pairs import EncodedHistories, length_grouped_batches, sorted_batches

__all__ = [
    "pick_device",
    "AmpPlan",
    "amp_plan",
    "fastest_precision",
    "cpu_bf16_supported",
    "FGM",
    "TrainConfig",
    "TrainResult",
    "optimizer_groups",
    "adamw",
    "backward_window",
    "evaluate_logits",
    "train_ctr_model",
    "predict_logits",
    "predict_proba",
    "item_vectors",
]


# --- device and precision --------------------------------------------------------


def pick_device(device: str | None = None, *, verbose: bool = True) -> torch.device:
    """``torch.device`` to use: ``device`` if given, else cuda, mps or cpu.

    Prints a notice when no GPU is found (training then runs on the CPU,
    slowly: the ``smoke`` and ``cpu`` sizes are made for it).
    """
    from ecrec.profiles import device_name

    if device is not None:
        return torch.device(device)
    name = device_name()
    if name == "cpu" and verbose:
        print("[ecrec] No GPU found: training runs on the CPU in fp32.")
    return torch.device(name)


@dataclass(frozen=True)
class AmpPlan:
    """Mixed-precision plan: autocast ``dtype`` (None = fp32) and whether to scale the loss."""

    name: str  # "fp32", "bf16" or "fp16"
    dtype: Any  # torch.bfloat16, torch.float16 or None
    use_scaler: bool

    def autocast(self, device):
        """The autocast context for ``device`` (a no-op context in fp32)."""
        import contextlib

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.dtype)


def cpu_bf16_supported() -> bool:
    """True when this CPU has bf16 instructions (AVX512-BF16 or AMX) that oneDNN uses."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - older or stripped builds
        return False


def amp_plan(device, precision: str = "auto") -> AmpPlan:
    """Choose the mixed precision for ``device``.

    ``"auto"``: bf16 on a GPU that supports it (Ampere and later); fp16 with a
    ``GradScaler`` on older GPUs (T4, V100), since fp16's narrow range
    underflows small gradients unless the loss is scaled; **fp32 on CPUs**
    (and MPS): many CPUs have no bf16 instructions, and fp32 gives the same
    numbers on every CPU. Ask for ``"bf16"`` to use it on a CPU that has it.

    Raises:
        ValueError: unknown ``precision``, fp16 asked for off CUDA, or bf16 on
            a device without it.
    """
    kind = torch.device(device).type
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision == "auto":
        if kind == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    if precision == "fp16" and kind != "cuda":
        raise ValueError("fp16 training needs a CUDA GPU (with a GradScaler); use bf16 or fp32 here")
    if precision == "bf16" and kind == "cpu" and not cpu_bf16_supported():
        raise ValueError("this CPU has no bf16 instructions; use precision='fp32'")
    if precision == "fp32":
        return AmpPlan("fp32", None, False)
    if precision == "bf16":
        return AmpPlan("bf16", torch.bfloat16, False)
    return AmpPlan("fp16", torch.float16, True)


def fastest_precision(device) -> str:
    """The precision a chapter should train in on ``device``: what it names, never "auto".

    bf16 autocast on a CPU that has bf16 instructions (AVX512-BF16 or AMX; measured
    1.6-1.7x fp32's training throughput for MiniLM on a 2-core AVX512-BF16 EPYC,
    ``benchmarks/bench_bert.py``), fp32 on other CPUs, and :func:`amp_plan`'s
    ``"auto"`` choice on a GPU. Unlike ``"auto"``, results then depend on the CPU's
    instruction set, so a chapter using it prints which precision ran.

    Returns:
        ``"bf16"``, ``"fp32"`` or ``"fp16"``.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return "bf16" if cpu_bf16_supported() else "fp32"
    return amp_plan(device).name


# --- FGM ---------------------------------------------------------------------------


class FGM:
    """Fast Gradient Method on the word embeddings (Miyato, Dai and Goodfellow, 2017).

    For each batch the clean loss is back-propagated while its gradient ``g``
    with respect to the word-embedding output ``e`` is kept; then the loss at
    ``e + r`` with ``r = epsilon * g / ||g||_2`` (per sequence, over all its
    tokens and dimensions: the direction that raises the loss fastest) is
    back-propagated too. The optimizer step uses the sum of both gradients:
    the model learns to keep its prediction when the input moves a little.
    Works with full fine-tuning and with LoRA (the perturbation is on
    activations, not on frozen weights).

    Args:
        epsilon: the perturbation's L2 norm per sequence (> 0), in the units
            of the word embeddings (MiniLM's rows have norm of about 1-2).

    Raises:
        ValueError: ``epsilon`` <= 0.
    """

    def __init__(self, epsilon: float):
        if not epsilon > 0:
            raise ValueError(f"FGM epsilon must be > 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def perturbation(self, grad: torch.Tensor) -> torch.Tensor:
        """``epsilon * g / ||g||`` per sequence; ``grad`` is (batch, seq, hidden) fp32."""
        norm = grad.flatten(1).norm(dim=1).clamp(min=1e-12)
        return self.epsilon * grad / norm[:, None, None]


def _word_embeddings(model) -> torch.nn.Module:
    return model.encoder.get_input_embeddings()


# --- configuration and result ------------------------------------------------------------


@dataclass
class TrainConfig:
    """Knobs of :func:`train_ctr_model`.

    ``batch_size`` examples per forward pass; ``grad_accum`` passes per
    optimizer step (effective batch = product). ``lr`` is AdamW's peak
    learning rate of the pretrained weights (or of the LoRA adapters),
    ``head_lr`` (None: ``lr``) that of every parameter created fresh (the
    head). Both rise linearly over ``warmup_ratio`` of the steps and decay
    linearly to 0. ``eval_every`` is in optimizer steps (None: once per
    epoch); validation is also scored before the first step. Training stops
    after ``patience`` evaluations without a better ``monitor`` (``"auc"`` or
    ``"log_loss"``), or after ``max_steps`` steps. ``fgm_epsilon`` > 0 turns
    FGM on. ``precision``: see :func:`amp_plan`.
    """

    epochs: int = 1
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-5
    head_lr: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    precision: str = "auto"
    eval_every: int | None = None
    patience: int = 2
    max_steps: int | None = None
    monitor: str = "auc"
    fgm_epsilon: float = 0.0
    eval_batch_size: int = 128
    seed: int = 42
    progress: bool = True

    def __post_init__(self):
        for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or (self.head_lr is not None and not self.head_lr > 0):
            raise ValueError(f"lr and head_lr must be > 0, got {self.lr}, {self.head_lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.fgm_epsilon < 0:
            raise ValueError(f"fgm_epsilon must be >= 0, got {self.fgm_epsilon}")
        if self.monitor not in ("auc", "log_loss"):
            raise ValueError(f"monitor must be 'auc' or 'log_loss', got {self.monitor!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be None or >= 1, got {self.max_steps}")


@dataclass
class TrainResult:
    """What :func:`train_ctr_model` did.

    ``history``: one dict per evaluation, the first at step 0 (step, epoch,
    train_loss = mean since the previous evaluation, valid_auc,
    valid_log_loss). ``steps``: one dict per optimizer step (loss, grad_norm
    before clipping, logit_std of the batch, lr of the encoder group).
    ``train_seconds`` counts the optimisation only (not evaluation);
    ``samples_per_s`` = examples forwarded for training / ``train_seconds``.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    best_valid_auc: float = float("nan")
    best_valid_log_loss: float = float("nan")
    start_valid_auc: float = float("nan")
    optimizer_steps: int = 0
    train_samples: int = 0
    train_tokens: int = 0
    train_seconds: float = 0.0
    samples_per_s: float = 0.0
    trainable_params: int = 0
    total_params: int = 0
    precision: str = "fp32"
    device: str = "cpu"
    stopped_early: bool = False


# --- pieces of the loop ----------------------------------------------------------------------


def optimizer_groups(model, lr: float, head_lr: float | None, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: fresh head at ``head_lr``, the rest at ``lr``; no decay on
    biases and LayerNorm. Frozen parameters are left out.

    Returns:
        A list of ``{"params", "lr", "weight_decay", "names"}`` dicts (``names``
        for inspection; torch ignores unknown keys).
    """
    fresh = {n for n in fresh_parameter_names(model) if "lora_" not in n}
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        wd = 0.0 if p.ndim < 2 or "LayerNorm" in name or name.endswith("bias") else weight_decay
        group_lr = head_lr if (head_lr is not None and name in fresh) else lr
        g = groups.setdefault((group_lr, wd), {"params": [], "lr": group_lr, "weight_decay": wd, "names": []})
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


def adamw(groups: list[dict]) -> torch.optim.AdamW:
    """AdamW (Loshchilov and Hutter, 2019) with torch's fused kernel where the device has one
    (Hugging Face ``Trainer``'s default, ``adamw_torch_fused``): about 4x faster per step
    than the default implementation for MiniLM's 22.7M parameters on a CPU."""
    try:
        return torch.optim.AdamW(groups, fused=True)
    except (RuntimeError, ValueError):  # pragma: no cover - a device without the fused kernel
        return torch.optim.AdamW(groups)


def backward_window(
    model,
    data,
    window: Sequence[np.ndarray],
    *,
    device,
    plan: AmpPlan,
    pad_id: int = 0,
    scaler=None,
    fgm: FGM | None = None,
    denominator: float | None = None,
) -> tuple[float, float, int]:
    """Forward and backward over the micro-batches of one optimizer step.

    Each micro-batch's loss is the *sum* over its examples divided by the
    number of examples in the whole window, so the accumulated gradient is
    the mean over the window's examples, whatever the micro-batch sizes
    (a short last window included).

    Under DDP (``model`` a ``DistributedDataParallel``, appendix A) each rank
    passes its shard of the window and ``denominator`` = examples in the
    *global* window / world size: DDP averages the ranks' gradients, so every
    example still weighs 1 / (global window), however unequal the shards.
    Gradients are all-reduced on the window's last micro-batch (``no_sync``
    before it; with FGM after both of its passes, which is still the mean). An
    empty micro-batch (a rank without an example in a short last batch), or
    an FGM pass whose gradient overflowed (fp16), runs with weight 0 instead of
    being skipped, so that every rank takes part in every all-reduce.

    Args:
        denominator: what each micro-batch's loss sum is divided by; None: the
            examples in ``window``.

    Returns:
        ``(mean loss over the window, std of the window's logits, tokens)``
        (this rank's examples; 0.0, 0.0, 0 for a window without any).
    """
    n_window = sum(len(idx) for idx in window)
    denominator = n_window if denominator is None else denominator
    total, tokens, logits_seen = 0.0, 0, []
    embed = _word_embeddings(getattr(model, "module", model)) if fgm is not None else None
    ddp = hasattr(model, "no_sync")  # DistributedDataParallel: all-reduce on the last micro-batch only

    def sync(last: bool):  # no_sync must cover the forward and the backward
        return model.no_sync() if ddp and not last else contextlib.nullcontext()

    for i, idx in enumerate(window):
        last = i == len(window) - 1
        dummy = len(idx) == 0
        if dummy:
            idx = np.zeros(1, dtype=np.int64)
        batch = {k: v.to(device) for k, v in data.batch(idx, pad_id).items()}
        labels = torch.as_tensor(data.labels[idx], dtype=torch.float32, device=device)
        captured: dict[str, torch.Tensor] = {}
        hook = None
        if fgm is not None:
            def keep(_m, _i, out, captured=captured):
                out = out if out.requires_grad else out.detach().requires_grad_(True)
                out.retain_grad()
                captured["emb"] = out
                return out

            hook = embed.register_forward_hook(keep)
        try:
            with sync(last):
                with plan.autocast(device):
                    logits = model(**batch)
                loss = ctr_loss(logits, labels, reduction="sum")
                loss = loss * 0.0 if dummy else loss
                (scaler.scale(loss / denominator) if scaler else loss / denominator).backward()
        finally:
            if hook is not None:
                hook.remove()
        if fgm is not None:
            grad = captured["emb"].grad.float()
            if scaler is not None:
                grad = grad / scaler.get_scale()
            finite = bool(grad.isfinite().all())  # fp16: an overflowed gradient has no direction
            if finite or ddp:
                r_adv = fgm.perturbation(grad if finite else torch.zeros_like(grad)).to(captured["emb"].dtype)
                hook = embed.register_forward_hook(lambda _m, _i, out, r=r_adv: out + r)
                try:
                    with sync(last):
                        with plan.autocast(device):
                            adv = ctr_loss(model(**batch), labels, reduction="sum")
                        adv = adv * 0.0 if dummy or not finite else adv
                        (scaler.scale(adv / denominator) if scaler else adv / denominator).backward()
                finally:
                    hook.remove()
        if dummy:
            continue
        total += float(loss.detach())
        logits_seen.append(logits.detach().float().reshape(-1))
        tokens += int(batch["attention_mask"].sum())
    spread = float(torch.cat(logits_seen).std()) if n_window > 1 else 0.0
    return (total / n_window if n_window else 0.0), spread, tokens


def evaluate_logits(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Validation AUC and log loss from **logits** (no sigmoid round-off ties).

    Returns:
        ``{"auc", "log_loss"}``; the log loss is ``mean(log(1 + e^z) - y z)``,
        computed stably.

    Raises:
        ValueError: lengths differ, one class only, or non-finite logits.
    """
    from ecrec.metrics import roc_auc

    y = np.asarray(labels, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    if y.shape != z.shape:
        raise ValueError(f"labels {y.shape} and logits {z.shape} differ in shape")
    bad = np.flatnonzero(~np.isfinite(z))
    if len(bad):
        raise ValueError(f"{len(bad)} non-finite logit(s), e.g. at {bad[:5].tolist()}")
    return {"auc": float(roc_auc(y, z)), "log_loss": float(np.mean(np.logaddexp(0.0, z) - y * z))}


# --- the loop --------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything one call of :func:`train_ctr_model` sets up: device, precision,
    optimizer, schedule, the (possibly DDP-wrapped) model, and the result being filled."""

    device: torch.device
    plan: AmpPlan
    dist: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    fgm: FGM | None
    params: list
    net: Any
    result: TrainResult
    total_steps: int
    eval_every: int


def _set_up(model, train, valid, config: TrainConfig, device) -> _Run:
    """Check the inputs, move ``model``, build the optimizer groups, AdamW, the warm-up
    schedule, the loss scaler (fp16), FGM and the DDP wrapper."""
    from transformers import get_linear_schedule_with_warmup

    from ecrec.distributed import DistContext

    if len(train) == 0:
        raise ValueError("no training examples")
    if len(np.unique(valid.labels)) < 2:
        raise ValueError("valid must hold both positive and negative examples for AUC")
    device = pick_device(device) if device is None else torch.device(device)
    plan = amp_plan(device, config.precision)
    model.to(device)
    dist = DistContext.current()  # rank 0 of 1 without torch.distributed: every dist.* is the identity
    torch.manual_seed(config.seed + dist.rank)
    n_batches = math.ceil(len(train) / (config.batch_size * dist.world_size))
    steps_per_epoch = math.ceil(n_batches / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    groups = optimizer_groups(model, config.lr, config.head_lr, config.weight_decay)
    optimizer = adamw(groups)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler("cuda") if plan.use_scaler else None
    fgm = FGM(config.fgm_epsilon) if config.fgm_epsilon > 0 else None
    params = [p for g in groups for p in g["params"]]
    net = dist.wrap(model, device)  # DistributedDataParallel under torch.distributed, else model
    trainable, total = count_params(model)
    result = TrainResult(trainable_params=trainable, total_params=total, precision=plan.name, device=str(device))
    return _Run(device, plan, dist, optimizer, scheduler, scaler, fgm, params, net, result, total_steps,
                config.eval_every or steps_per_epoch)


class _EarlyStopping:
    """Scores validation, keeps the best state (step 0 included) and writes it as a checkpoint."""

    def __init__(self, model, valid, config: TrainConfig, run: _Run, pad_id: int,
                 checkpoint_dir: str | Path | None, checkpoint_meta: Mapping[str, Any] | None):
        self.model, self.valid, self.config, self.run, self.pad_id = model, valid, config, run, pad_id
        self.checkpoint_dir, self.checkpoint_meta = checkpoint_dir, checkpoint_meta
        self.sign = 1.0 if config.monitor == "auc" else -1.0
        self.best_score = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_evals = 0
        self.running, self.running_n = 0.0, 0  # training loss since the previous evaluation

    def add_loss(self, loss: float, n: int) -> None:
        self.running, self.running_n = self.running + loss * n, self.running_n + n

    def __call__(self, step: int, epoch: int) -> bool:
        """Score valid, keep the state if best; True when patience is exhausted."""
        run, model, result = self.run, self.model, self.run.result
        scores = evaluate_logits(self.valid.labels, run.dist.predict_logits(
            model, self.valid, pad_id=self.pad_id, batch_size=self.config.eval_batch_size, device=run.device,
            precision=run.plan.name))
        result.history.append({"step": step, "epoch": epoch,
                               "train_loss": self.running / self.running_n if self.running_n else None,
                               "valid_auc": scores["auc"], "valid_log_loss": scores["log_loss"]})
        self.running, self.running_n = 0.0, 0
        score = self.sign * scores[self.config.monitor]
        if score > self.best_score:
            self.best_score, self.bad_evals = score, 0
            result.best_step, result.best_valid_auc, result.best_valid_log_loss = step, scores["auc"], scores["log_loss"]
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if self.checkpoint_dir is not None and run.dist.is_main:
                save_checkpoint(model, self.checkpoint_dir, **dict(self.checkpoint_meta or {}))
            if self.checkpoint_dir is not None:
                run.dist.barrier()  # the checkpoint is on disk before any rank goes on
        else:
            self.bad_evals += 1
        model.train()
        return self.bad_evals >= self.config.patience


def _optimizer_step(run: _Run, train, window: Sequence[np.ndarray], config: TrainConfig, pad_id: int) -> dict:
    """One optimizer step on ``window`` (its micro-batches): backward, unscale (fp16), clip,
    AdamW, schedule. Returns the step's log (loss, grad_norm, logit_std, lr) and its counts."""
    started = time.perf_counter()
    run.optimizer.zero_grad(set_to_none=True)
    shards = [run.dist.shard(b) for b in window]
    loss, spread, tokens = backward_window(run.net, train, shards, device=run.device, plan=run.plan, pad_id=pad_id,
                                           scaler=run.scaler, fgm=run.fgm, denominator=run.dist.denominator(window))
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.params, config.max_grad_norm))
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    run.result.train_seconds += time.perf_counter() - started
    n = sum(len(i) for i in window)
    loss, tokens = run.dist.window_totals(loss, sum(len(i) for i in shards), tokens, n)
    return {"loss": loss, "grad_norm": grad_norm, "logit_std": spread, "lr": run.optimizer.param_groups[0]["lr"],
            "n": n, "tokens": tokens}


def train_ctr_model(
    model,
    train,
    valid,
    config: TrainConfig,
    *,
    pad_id: int = 0,
    device=None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_meta: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` on ``train``, early-stopping on ``valid``; keeps the best weights.

    One optimizer step = ``grad_accum`` micro-batches (:func:`backward_window`),
    then unscale (fp16), clip the gradient norm, AdamW step, scheduler step.
    Validation logits are scored at step 0 and every ``eval_every`` steps
    (:func:`evaluate_logits`); the best state, step 0 included, is kept and
    written to ``checkpoint_dir`` atomically.

    **Under torch.distributed** (a process group initialised, e.g. by
    :func:`ecrec.distributed.init_distributed` under ``torchrun``) the same
    loop runs on every rank (:class:`ecrec.distributed.DistContext`): every
    rank draws the same global batches of ``batch_size * world_size``
    examples and takes its ``batch[rank::world_size]`` share; the model is
    wrapped in ``DistributedDataParallel``; the gradient is the mean over the
    global window (:func:`backward_window`); validation is sharded and
    gathered, so every rank takes the same early-stopping decisions; only rank
    0 shows progress and writes the checkpoint; dropout draws from ``seed +
    rank``. ``batch_size`` is then per rank, and the logged loss, samples and
    tokens are the global ones (``logit_std``: rank 0's examples). In a single
    process every one of these is the identity and the loop is unchanged.

    Args:
        model: from :func:`ecrec.bert.load_ctr_model` (possibly with LoRA); moved to ``device``.
        train, valid: :class:`ecrec.pairs.EncodedPairs` for a cross-encoder,
            :class:`ecrec.pairs.EncodedHistories` for a bi-encoder.
        config: :class:`TrainConfig`.
        pad_id: the tokenizer's padding id (``tokenizer.pad_token_id``).
        device: None picks cuda/mps/cpu (:func:`pick_device`).
        checkpoint_dir: where to save the best model (:func:`ecrec.bert.save_checkpoint`).
        checkpoint_meta: extra JSON-able fields for the checkpoint.

    Returns:
        :class:`TrainResult`; ``model`` holds the best weights, in eval mode.

    Raises:
        ValueError: empty ``train``, ``valid`` with a single class, or a bad
            precision for the device (:func:`amp_plan`).
        FloatingPointError: a NaN/inf loss.
    """
    from tqdm.auto import tqdm

    run = _set_up(model, train, valid, config, device)
    result, dist = run.result, run.dist
    evaluate = _EarlyStopping(model, valid, config, run, pad_id, checkpoint_dir, checkpoint_meta)
    evaluate(0, 0)
    result.start_valid_auc = result.history[0]["valid_auc"]
    step, done = 0, False
    bar = tqdm(total=run.total_steps, desc=f"train ({run.plan.name}, {run.device.type})",
               disable=not (config.progress and dist.is_main))
    for epoch in range(config.epochs):
        batches = length_grouped_batches(train.lengths, config.batch_size * dist.world_size, seed=config.seed + epoch)
        windows = [batches[i : i + config.grad_accum] for i in range(0, len(batches), config.grad_accum)]
        model.train()
        for window in windows:
            log = _optimizer_step(run, train, window, config, pad_id)
            n, tokens = log.pop("n"), log.pop("tokens")
            step += 1
            result.train_samples += n
            result.train_tokens += tokens
            evaluate.add_loss(log["loss"], n)
            result.steps.append({"step": step, **log})
            bar.update(1)
            bar.set_postfix(loss=f"{log['loss']:.4f}")
            if step % run.eval_every == 0 or step == run.total_steps:
                done = evaluate(step, epoch + 1)
                result.stopped_early = done and step < run.total_steps
            if done or step >= run.total_steps:
                done = True
                break
        if done:
            break
    bar.close()
    result.optimizer_steps = step
    result.samples_per_s = result.train_samples / max(result.train_seconds, 1e-9)
    del run.net  # DDP's gradient hooks go with it
    model.load_state_dict(evaluate.best_state)
    model.eval()
    return result


# --- inference ---------------------------------------------------------------------------


def predict_logits(
    model,
    data,
    *,
    pad_id: int = 0,
    batch_size: int = 128,
    device=None,
    precision: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """Logits for every example, in ``model.eval()`` under ``torch.inference_mode()``.

    Examples are batched sorted by length (little padding) and put back in order.
    A bi-encoder (``model.architecture == "bi"``) on :class:`ecrec.pairs.EncodedHistories`
    encodes each distinct item once and applies the head to the cached vectors
    (:func:`ecrec.bert.bi_logits`): the same logits as ``model(**batch)``, without
    encoding an item again for every batch that holds it.

    Returns:
        float32 array (n,), one logit per example (``sigmoid`` gives the probability).

    Raises:
        ValueError: a bad precision for the device (:func:`amp_plan`).
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else next(model.parameters()).device
    plan = amp_plan(device, precision)
    if getattr(model, "architecture", None) == "bi" and isinstance(data, EncodedHistories):
        return _bi_encoder_logits(model, data, pad_id=pad_id, batch_size=batch_size, device=device,
                                  precision=precision, progress=progress)
    out = np.empty(len(data), dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for idx in tqdm(sorted_batches(data.lengths, batch_size), desc="predict", disable=not progress):
            batch = {k: v.to(device) for k, v in data.batch(idx, pad_id).items()}
            with plan.autocast(device):
                logits = model(**batch)
            out[idx] = logits.float().reshape(-1).cpu().numpy()
    model.train(was_training)
    return out


def _bi_encoder_logits(model, data: EncodedHistories, *, pad_id: int, batch_size: int, device, precision: str,
                       progress: bool) -> np.ndarray:
    """:func:`predict_logits` for a bi-encoder: the items the examples name, each encoded once."""
    if len(data) == 0:
        return np.zeros(0, dtype=np.float32)
    hist = np.asarray(data.hist)
    rows = np.unique(np.concatenate([np.asarray(data.cand), hist[hist >= 0]]))
    vectors = item_vectors(model, [data.item_tokens[j] for j in rows], pad_id=pad_id, batch_size=batch_size,
                           device=device, precision=precision, progress=progress)
    local = np.full(len(data.item_tokens), -1, dtype=np.int64)
    local[rows] = np.arange(len(rows))
    return bi_logits(model, vectors, np.where(hist >= 0, local[np.maximum(hist, 0)], -1), local[data.cand])


def predict_proba(model, data, **kwargs) -> np.ndarray:
    """``sigmoid(predict_logits(...))`` as float64 (n,) probabilities; same arguments."""
    from scipy.special import expit

    return expit(predict_logits(model, data, **kwargs).astype(np.float64))


def item_vectors(
    model,
    item_tokens: Sequence[Sequence[int]],
    *,
    pad_id: int = 0,
    batch_size: int = 256,
    device=None,
    precision: str = "fp32",
    progress: bool = False,
) -> np.ndarray:
    """A bi-encoder's item tower applied to every item: the vectors to cache.

    Args:
        model: a :class:`ecrec.bert.BiEncoderCtr`.
        item_tokens: token ids per item (``EncodedHistories.item_tokens``).
        precision: "fp32" (default), "bf16", "fp16" or "auto", as :func:`amp_plan`.

    Returns:
        float32 (n_items, hidden), in the model's pooling (unit norm for MiniLM).
    """
    from tqdm.auto import tqdm

    from ecrec.pairs import _pad

    device = torch.device(device) if device is not None else next(model.parameters()).device
    plan = amp_plan(device, precision)
    lengths = np.fromiter((len(t) for t in item_tokens), dtype=np.int64, count=len(item_tokens))
    out = np.empty((len(item_tokens), model.hidden_size), dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for idx in tqdm(sorted_batches(lengths, batch_size), desc="item vectors", disable=not progress):
            ids, mask = _pad([item_tokens[i] for i in idx], pad_id)
            with plan.autocast(device):
                out[idx] = model.item_vectors(ids.to(device), mask.to(device)).float().cpu().numpy()
    model.train(was_training)
    return out
