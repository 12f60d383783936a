"""Chapter 04's cross-encoder trained by the Hugging Face ``Trainer``, configured like ours.

The library a reader would pick instead of :func:`ecrec.finetune.train_ctr_model`,
set up the same way so that a comparison measures the loops, not the settings:

* length-grouped batches (``train_sampling_strategy="group_by_length"``:
  transformers' ``LengthGroupedSampler``) padded to their longest sequence
  (``DataCollatorWithPadding``): dynamic padding;
* the same precision (:func:`ecrec.finetune.amp_plan`: ``bf16=True`` /
  ``fp16=True`` / fp32), AdamW with the same parameter groups (the fresh
  head at its own learning rate, no decay on biases and LayerNorm:
  :func:`ecrec.finetune.optimizer_groups`, passed as ``optimizers=``), the
  same linear warm-up then decay, the same clipping,
  the same gradient accumulation weighting every example equally (the loss is
  summed and divided by ``num_items_in_batch``, the examples of the whole
  accumulation window);
* the loss is :func:`ecrec.bert.ctr_loss` on the model's logits: our model
  returns a logits tensor ``(batch,)``, not a ``ModelOutput`` with ``.loss``,
  so :class:`CtrTrainer` overrides ``Trainer.compute_loss``;
* no checkpoints, no evaluation during training, no logging, no reporting
  (``report_to=[]``), no progress bar: ``Trainer``'s early stopping needs
  checkpoints (``load_best_model_at_end``), so this runs a fixed number of
  steps and scores validation once at the end. Nothing touches the network.

The AdamW *implementation* is ``Trainer``'s default, ``optim="adamw_torch_fused"``
(transformers 5 with torch >= 2.8): ``torch.optim.AdamW(..., fused=True)``, one
kernel for all parameters, where :func:`ecrec.finetune.train_ctr_model` uses
torch's default (``foreach``); pass ``fused_adamw=False`` for the latter. On a
CPU the fused step is about 4x faster for MiniLM's 22.7M parameters (0.055 s
against 0.21 s per step, 1 thread), a large share of a small model's step.

What ``Trainer`` does not do here that ours does: validation before the
first step and early stopping on it, FGM, per-step diagnostics.

Needs transformers >= 5 and accelerate (``Trainer``'s own requirement).
Source: ``transformers.Trainer`` (5.x: ``compute_loss(model, inputs,
return_outputs, num_items_in_batch)``, ``loss_is_scaled_for_ga``).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer

from ecrec.bert import ctr_loss
from ecrec.finetune import TrainConfig, amp_plan, evaluate_logits, optimizer_groups, pick_device
from ecrec.pairs import EncodedPairs

__all__ = ["PairsDataset", "CtrTrainer", "trainer_steps", "train_with_hf_trainer"]


class PairsDataset(torch.utils.data.Dataset):
    """:class:`ecrec.pairs.EncodedPairs` as the list-of-dicts ``Trainer`` expects.

    ``dataset[i]`` -> ``{"input_ids", "token_type_ids", "attention_mask"}``
    (lists of ints, unpadded: the collator pads) and ``"labels"`` (float 0/1).
    """

    def __init__(self, pairs: EncodedPairs):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids = self.pairs.input_ids[i]
        return {"input_ids": ids, "token_type_ids": self.pairs.token_type_ids[i],
                "attention_mask": [1] * len(ids), "labels": float(self.pairs.labels[i])}


class CtrTrainer(Trainer):
    """``Trainer`` whose loss is :func:`ecrec.bert.ctr_loss` on a model that returns logits ``(batch,)``.

    The loss of a micro-batch is the *sum* over its examples divided by
    ``num_items_in_batch`` (the examples of the whole accumulation window,
    which ``Trainer`` counts from the ``labels``), hence already scaled for
    gradient accumulation (``loss_is_scaled_for_ga = True``). Counts the
    training examples and real tokens it sees (``samples_seen``, ``tokens_seen``).
    In prediction it returns ``{"logits": logits}`` so that ``Trainer.predict``
    gives the logits ``(n,)`` as ``predictions``.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # True makes Trainer count each window's labels (num_items_in_batch) for compute_loss below;
        # our compute_loss does not forward it to the model (its forward would reject the keyword).
        self.model_accepts_loss_kwargs = True
        self.samples_seen = 0
        self.tokens_seen = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        logits = model(**inputs)
        n = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        loss = ctr_loss(logits, labels, reduction="sum") / n
        if model.training:
            self.samples_seen += int(labels.numel())
            self.tokens_seen += int(inputs["attention_mask"].sum())
        return (loss, {"logits": logits}) if return_outputs else loss


def _adamw(groups: list[dict], *, fused: bool) -> torch.optim.AdamW:
    """``torch.optim.AdamW(groups, fused=True)``, or the default implementation where fused is unsupported."""
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True)
        except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
            pass
    return torch.optim.AdamW(groups)


def trainer_steps(n: int, config: TrainConfig) -> int:
    """Optimizer steps of one run: ``ceil(ceil(n / batch_size) / grad_accum) * epochs``, capped by ``max_steps``.

    The same count as :func:`ecrec.finetune.train_ctr_model` (the last batch
    and the last accumulation window may be short).
    """
    steps = math.ceil(math.ceil(n / config.batch_size) / config.grad_accum) * config.epochs
    return min(steps, config.max_steps) if config.max_steps is not None else steps


def _check_inputs(train: EncodedPairs, valid: EncodedPairs, config: TrainConfig) -> None:
    """Refuse what :func:`train_with_hf_trainer` cannot run (its Raises section says what)."""
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__).major < 5:
        raise RuntimeError(
            f"ecrec.hf_trainer is written for transformers 5 (train_sampling_strategy, loss_is_scaled_for_ga); "
            f"this is {transformers.__version__}: pip install -r requirements.txt -c constraints.txt"
        )
    if len(train) == 0:
        raise ValueError("no training examples")
    if len(np.unique(valid.labels)) < 2:
        raise ValueError("valid must hold both positive and negative examples for AUC")
    if config.fgm_epsilon > 0:
        raise ValueError("FGM is not wired into the Trainer comparison; use ecrec.finetune.train_ctr_model")


def _clock(device: torch.device):
    """A ``TrainerCallback`` that times the training loop alone (after set-up, before validation)."""
    from transformers import TrainerCallback

    class _Clock(TrainerCallback):
        started = stopped = 0.0

        def _now(self) -> float:
            if device.type == "cuda":  # queued kernels count: wait for them
                torch.cuda.synchronize(device)
            return time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = self._now()

        def on_train_end(self, args, state, control, **kwargs):
            self.stopped = self._now()

    return _Clock()


def _training_arguments(config: TrainConfig, *, steps: int, precision: str, device: torch.device,
                        output_dir: str):
    """``TrainingArguments`` matching :func:`ecrec.finetune.train_ctr_model`'s settings (module docstring)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.grad_accum,
        max_steps=steps,
        max_grad_norm=config.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device.type == "cpu",
        train_sampling_strategy="group_by_length",
        label_names=["labels"],
        remove_unused_columns=False,  # our forward takes **batch: nothing would survive the filter
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_pin_memory=device.type == "cuda",
        seed=config.seed,
    )


def train_with_hf_trainer(
    model,
    train: EncodedPairs,
    valid: EncodedPairs,
    config: TrainConfig,
    *,
    tokenizer,
    output_dir: str | Path | None = None,
    device=None,
    fused_adamw: bool = True,
) -> dict[str, Any]:
    """Fine-tune a cross-encoder with ``transformers.Trainer`` set up like :func:`ecrec.finetune.train_ctr_model`.

    Runs :func:`trainer_steps` optimizer steps (no early stopping, see the
    module's docstring), then scores ``valid`` with ``Trainer.predict``;
    the AUC comes from the logits (:func:`ecrec.finetune.evaluate_logits`).

    Args:
        model: a :class:`ecrec.bert.CrossEncoderCtr` (possibly with LoRA);
            trained in place, left in eval mode on the training device.
        train, valid: :class:`ecrec.pairs.EncodedPairs` (``valid`` with both classes).
        config: :class:`ecrec.finetune.TrainConfig`: ``epochs``, ``batch_size``,
            ``grad_accum``, ``lr``, ``head_lr``, ``weight_decay``,
            ``warmup_ratio``, ``max_grad_norm``, ``precision``, ``max_steps``,
            ``eval_batch_size`` and ``seed`` are honoured; ``eval_every``,
            ``patience`` and ``monitor`` do not apply.
        tokenizer: the model's tokenizer (its ``pad`` is the collator).
        output_dir: ``TrainingArguments.output_dir`` (``Trainer`` creates it
            but, with these settings, writes nothing in it); None: a temporary folder.
        device: None picks cuda/mps/cpu (:func:`ecrec.finetune.pick_device`);
            ``Trainer`` then trains on ``cpu`` or on its default accelerator.
        fused_adamw: ``torch.optim.AdamW(fused=True)`` as ``Trainer``'s default
            optimizer (falls back to the ``foreach`` implementation where the
            device has no fused kernel); False: torch's default, as ecrec's loop.

    Returns:
        ``{"samples_per_s", "train_seconds", "valid_auc", "valid_log_loss",
        "steps", "samples", "tokens", "precision", "device", "fused_adamw"}``:
        ``train_seconds`` from ``Trainer``'s ``on_train_begin`` to
        ``on_train_end`` (set-up and validation excluded, as in
        ``TrainResult.train_seconds``); ``samples_per_s`` = examples
        forwarded for training / ``train_seconds``; ``steps``: optimizer steps.

    Raises:
        RuntimeError: transformers older than 5.
        ValueError: empty ``train``, ``valid`` with a single class,
            ``config.fgm_epsilon`` > 0 (not supported here), or a precision the
            device lacks (:func:`ecrec.finetune.amp_plan`).
        FloatingPointError: a NaN/inf loss (:func:`ecrec.bert.ctr_loss`).
    """
    from transformers import (
        DataCollatorWithPadding,
        PrinterCallback,
        get_linear_schedule_with_warmup,
    )

    _check_inputs(train, valid, config)
    device = pick_device(device) if device is None else torch.device(device)
    plan = amp_plan(device, config.precision)
    model.to(device)
    steps = trainer_steps(len(train), config)

    groups = optimizer_groups(model, config.lr, config.head_lr, config.weight_decay)
    optimizer = _adamw(groups, fused=fused_adamw)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * steps), steps)
    clock = _clock(device)
    with tempfile.TemporaryDirectory(prefix="ecrec-trainer-") as tmp:
        args = _training_arguments(config, steps=steps, precision=plan.name, device=device,
                                   output_dir=str(output_dir or tmp))
        trainer = CtrTrainer(
            model=model,
            args=args,
            train_dataset=PairsDataset(train),
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
            optimizers=(optimizer, scheduler),
            callbacks=[clock],
        )
        trainer.remove_callback(PrinterCallback)  # with disable_tqdm it would print the final metrics dict
        out = trainer.train()
        pred = trainer.predict(PairsDataset(valid))
    seconds = max(clock.stopped - clock.started, 1e-9)
    scores = evaluate_logits(np.asarray(pred.label_ids).reshape(-1), np.asarray(pred.predictions).reshape(-1))
    model.eval()
    return {
        "samples_per_s": trainer.samples_seen / seconds,
        "train_seconds": seconds,
        "valid_auc": scores["auc"],
        "valid_log_loss": scores["log_loss"],
        "steps": int(out.global_step),
        "samples": trainer.samples_seen,
        "tokens": trainer.tokens_seen,
        "precision": plan.name,
        "device": str(device),
        "fused_adamw": bool(optimizer.defaults.get("fused")),
    }
