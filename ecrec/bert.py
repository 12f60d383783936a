"""Chapter 04: fine-tuning a pretrained BERT (MiniLM by default) for CTR prediction.

CTR prediction as a text-pair task: for one example (a user, a candidate item,
a moment), ``text_a`` lists the descriptions of the user's most recent
purchases, newest first, and ``text_b`` is the candidate's description. A
``BertForSequenceClassification`` reads ``[CLS] text_a [SEP] text_b [SEP]``
and outputs **one logit** ``z``; ``p = sigmoid(z)`` is the purchase
probability and the loss is binary cross-entropy with logits, which *is* the
log loss that chapter 03 reports. (Two classes with a softmax cross-entropy are
the same model: ``softmax([z0, z1])[1] = sigmoid(z1 - z0)``; one logit simply
drops the redundant parameter vector.) We compute the loss ourselves in fp32
(:func:`ctr_loss`) and also set ``problem_type="multi_label_classification"``,
because ``num_labels=1`` with the default settings makes transformers treat
the task as *regression* and use MSE.

The training loop (:func:`train_ctr_model`) is explicit, to be read: tokenize
once up front, length-grouped batches padded per batch
(``DataCollatorWithPadding``), AdamW with linear warm-up then decay
(``get_linear_schedule_with_warmup``), gradient accumulation and clipping,
mixed precision (bf16 where supported, on CPU too; fp16 with a ``GradScaler``
on T4-class GPUs), early stopping on validation AUC, atomic safetensors
checkpoints. Options: LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of
Large Language Models") through peft, and FGM adversarial training on the
word embeddings (Miyato, Dai and Goodfellow, 2017, "Adversarial Training
Methods for Semi-Supervised Text Classification").

:func:`train_naive` and :func:`naive_argmax_predictions` keep the common
tutorial loop (per-example tokenization padded to 128, fp32, ``argmax`` over
``dim=2``) so that the chapter and ``benchmarks/bench_bert.py`` can measure it
against ours.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ecrec.text import DEFAULT_MODEL, model_path

__all__ = [
    "NO_HISTORY",
    "history_text",
    "build_text_pairs",
    "EncodedPairs",
    "encode_pairs",
    "length_grouped_batches",
    "sorted_batches",
    "load_ctr_model",
    "add_lora",
    "count_params",
    "ctr_loss",
    "pick_device",
    "AmpPlan",
    "amp_plan",
    "FGM",
    "TrainConfig",
    "TrainResult",
    "train_ctr_model",
    "predict_logits",
    "predict_proba",
    "save_checkpoint",
    "load_checkpoint",
    "pair_features",
    "train_naive",
    "predict_naive",
    "naive_argmax_predictions",
    "peak_bf16_flops",
    "transformer_flops",
]

NO_HISTORY = "no earlier purchases"
CHECKPOINT_FORMAT = "ecrec-bert-ctr/1"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "ecrec_checkpoint.json"


# --- examples as text pairs -------------------------------------------------


def history_text(
    hist_items: Sequence[str],
    descriptions: Mapping[str, str],
    n_items: int = 5,
    sep: str = " ; ",
) -> str:
    """The user side of a pair: descriptions of the ``n_items`` most recent purchases.

    Args:
        hist_items: item ids bought strictly before the example's time, newest
            first (the ``hist_items`` column of chapter 03's examples).
        descriptions: item id -> description.
        n_items: how many recent items to keep (>= 1).
        sep: put between descriptions.

    Returns:
        The descriptions joined by ``sep``, newest first, lower-cased; or
        :data:`NO_HISTORY` for a user without earlier purchases.

    Raises:
        ValueError: ``n_items`` < 1.
        KeyError: an item id has no description.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    items = list(hist_items)[:n_items] if hist_items is not None else []
    if not items:
        return NO_HISTORY
    missing = [i for i in items if i not in descriptions]
    if missing:
        raise KeyError(f"no description for history item(s) {missing[:5]}")
    return sep.join(str(descriptions[i]).lower() for i in items)


def build_text_pairs(
    examples: pd.DataFrame,
    descriptions: Mapping[str, str] | pd.Series,
    n_history: int = 5,
) -> pd.DataFrame:
    """Turn CTR examples into (history text, candidate text, label) rows.

    Args:
        examples: frame with columns ``hist_items`` (list of item ids, newest
            first), ``item_id`` (str) and ``label`` (0/1).
        descriptions: item id -> description (a dict or a Series indexed by id).
        n_history: most recent purchases kept in ``text_a``.

    Returns:
        Frame with the same index and columns ``text_a`` (str), ``text_b``
        (str, lower-cased description) and ``label`` (float32 0/1).

    Raises:
        ValueError: a column is missing, labels outside {0, 1}, or candidate
            items without a description.
        KeyError: a history item without a description.
    """
    needed = {"hist_items", "item_id", "label"}
    missing = sorted(needed - set(examples.columns))
    if missing:
        raise ValueError(f"examples lack column(s) {missing}; need {sorted(needed)}")
    if isinstance(descriptions, pd.Series):
        descriptions = descriptions.to_dict()
    labels = np.asarray(examples["label"], dtype=np.float64)
    if len(labels) and not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError("label must hold only 0 and 1")
    unknown = sorted({i for i in examples["item_id"] if i not in descriptions})
    if unknown:
        raise ValueError(f"{len(unknown)} candidate item(s) have no description, e.g. {unknown[:5]}")
    text_a = [history_text(h, descriptions, n_history) for h in examples["hist_items"]]
    text_b = [str(descriptions[i]).lower() for i in examples["item_id"]]
    return pd.DataFrame(
        {"text_a": text_a, "text_b": text_b, "label": labels.astype(np.float32)}, index=examples.index
    )


# --- tokenize once ------------------------------------------------------------


@dataclass
class EncodedPairs:
    """Tokenized pairs, unpadded: one list of token ids per example, plus float labels.

    ``input_ids[i]``, ``token_type_ids[i]`` and ``attention_mask[i]`` have the
    same length ``lengths[i] <= max_length``; ``labels`` is float32 (n,).
    """

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    attention_mask: list[list[int]]
    labels: np.ndarray
    max_length: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        """int64 (n,): tokens per example, special tokens included."""
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))

    def features(self, idx: Sequence[int]) -> list[dict[str, list[int]]]:
        """The examples ``idx`` as the list of dicts a ``DataCollatorWithPadding`` takes."""
        return [
            {
                "input_ids": self.input_ids[i],
                "token_type_ids": self.token_type_ids[i],
                "attention_mask": self.attention_mask[i],
            }
            for i in idx
        ]

    def subset(self, idx: Sequence[int]) -> EncodedPairs:
        """A new EncodedPairs holding the examples ``idx`` (in that order)."""
        idx = list(idx)
        return EncodedPairs(
            [self.input_ids[i] for i in idx],
            [self.token_type_ids[i] for i in idx],
            [self.attention_mask[i] for i in idx],
            self.labels[idx],
            self.max_length,
        )


def encode_pairs(
    tokenizer,
    text_a: Sequence[str],
    text_b: Sequence[str],
    labels: Sequence[float] | np.ndarray,
    max_length: int = 64,
) -> EncodedPairs:
    """Tokenize all pairs once, truncated to ``max_length`` tokens, without padding.

    Truncation is ``"longest_first"``: tokens are removed from the longer of
    the two texts until the pair fits, so a long history is cut before the
    (short) candidate description is touched, and both always fit.

    Args:
        tokenizer: a fast Hugging Face tokenizer (``ecrec.text.load_tokenizer``).
        text_a, text_b: n strings each.
        labels: n values in {0, 1}.
        max_length: tokens per pair, special tokens included (>= 8).

    Returns:
        :class:`EncodedPairs`, every pair ``<= max_length`` tokens.

    Raises:
        ValueError: lengths differ, no examples, labels outside {0, 1}, or
            ``max_length`` < 8.
        TypeError: a text is not a string.
    """
    text_a, text_b = list(text_a), list(text_b)
    y = np.asarray(labels, dtype=np.float32)
    if not (len(text_a) == len(text_b) == len(y)):
        raise ValueError(f"text_a, text_b, labels differ in length: {len(text_a)}, {len(text_b)}, {len(y)}")
    if not text_a:
        raise ValueError("no examples to encode")
    if max_length < 8:
        raise ValueError(f"max_length must be >= 8 tokens, got {max_length}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must hold only 0 and 1")
    for name, texts in (("text_a", text_a), ("text_b", text_b)):
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"{name}[{bad}] is {type(texts[bad]).__name__}, not str")
    enc = tokenizer(
        text_a, text_b, truncation="longest_first", max_length=max_length,
        padding=False, return_token_type_ids=True, return_attention_mask=True,
    )
    out = EncodedPairs(
        list(enc["input_ids"]), list(enc["token_type_ids"]), list(enc["attention_mask"]), y, max_length
    )
    assert out.lengths.max() <= max_length
    return out


def length_grouped_batches(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    mega_batch_mult: int = 50,
) -> list[np.ndarray]:
    """Shuffled batches of similar lengths, so that dynamic padding pads little.

    The indices are shuffled, cut into mega-batches of ``batch_size *
    mega_batch_mult``, each mega-batch is sorted by length (longest first) and
    cut into batches, and the batch order is shuffled again. This is
    transformers' ``LengthGroupedSampler`` idea, kept random enough for SGD.

    Args:
        lengths: (n,) token counts.
        batch_size: examples per batch (>= 1); the last batch may be smaller.
        seed: the shuffle's seed (pass ``seed + epoch`` for a new order each epoch).

    Returns:
        A list of int64 index arrays covering ``range(n)`` exactly once.

    Raises:
        ValueError: ``batch_size`` or ``mega_batch_mult`` < 1.
    """
    if batch_size < 1 or mega_batch_mult < 1:
        raise ValueError(f"batch_size and mega_batch_mult must be >= 1, got {batch_size}, {mega_batch_mult}")
    lengths = np.asarray(lengths)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(lengths))
    mega = batch_size * mega_batch_mult
    batches = []
    for start in range(0, len(perm), mega):
        chunk = perm[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i].astype(np.int64) for i in order]


def sorted_batches(lengths: Sequence[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Deterministic batches of indices sorted by length, for inference.

    Raises:
        ValueError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size].astype(np.int64) for i in range(0, len(order), batch_size)]


# --- model ---------------------------------------------------------------------


def load_ctr_model(model_name: str = DEFAULT_MODEL, *, seed: int = 42):
    """A pretrained encoder with a fresh one-logit classification head.

    ``AutoModelForSequenceClassification`` (a ``BertForSequenceClassification``
    for MiniLM) with ``num_labels=1`` and
    ``problem_type="multi_label_classification"``, so that even the model's
    own ``loss`` (when ``labels`` are passed) is BCE-with-logits and not the
    MSE that ``num_labels=1`` means by default. The head is initialised from
    ``seed``.

    Args:
        model_name: ``"minilm"`` (offline) or any Hugging Face model name.

    Returns:
        The model on CPU in train mode; its forward returns logits (batch, 1).
    """
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "classifier weights newly initialized" is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path(model_name), num_labels=1, problem_type="multi_label_classification"
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.train()


def add_lora(
    model,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.1,
    target_modules: Sequence[str] = ("query", "value"),
):
    """Wrap ``model`` with LoRA adapters (Hu et al., 2021) using peft.

    Every ``target_modules`` linear layer ``W`` gets a trainable low-rank
    update ``W + (alpha / r) * B @ A`` (A: r x d_in, B: d_out x r, B starts at
    zero); everything else is frozen except the classification head, which is
    new and so must be trained and saved (``modules_to_save=["classifier"]``).

    Returns:
        A ``peft.PeftModel``.

    Raises:
        ValueError: ``r`` < 1.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if r < 1:
        raise ValueError(f"LoRA rank r must be >= 1, got {r}")
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=dropout,
        target_modules=list(target_modules), modules_to_save=["classifier"],
    )
    return get_peft_model(model, config)


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameter counts of a torch module."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def ctr_loss(logits, labels):
    """Mean binary cross-entropy with logits, computed in fp32: the log loss.

    Args:
        logits: float tensor (batch,) or (batch, 1), any float dtype (bf16
            under autocast); cast to fp32 before the loss.
        labels: (batch,) 0/1 tensor.

    Returns:
        fp32 scalar tensor, ``-mean(y log sigmoid(z) + (1-y) log(1 - sigmoid(z)))``.

    Raises:
        ValueError: shapes do not match.
        FloatingPointError: the loss is NaN or infinite.
    """
    import torch.nn.functional as F

    z = logits.float()
    if z.ndim == 2 and z.shape[1] == 1:
        z = z.squeeze(1)
    if z.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    loss = F.binary_cross_entropy_with_logits(z, labels.float())
    if not bool(loss.isfinite()):
        raise FloatingPointError(f"loss is {loss.item()}; lower the learning rate or use fp32/bf16")
    return loss


# --- device and precision --------------------------------------------------------


def pick_device(device: str | None = None, *, verbose: bool = True):
    """``torch.device`` to use: ``device`` if given, else cuda, mps or cpu.

    Prints a notice when no GPU is found (training then runs on the CPU,
    slowly: use the ``smoke`` or ``cpu`` sizes).
    """
    import torch

    from ecrec.profiles import device_name

    if device is not None:
        return torch.device(device)
    name = device_name()
    if name == "cpu" and verbose:
        print("[ecrec] No GPU found: running on the CPU (bf16 autocast where the CPU supports it).")
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

        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.dtype)


def _cpu_bf16_supported() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - older or stripped builds
        return False


def amp_plan(device, precision: str = "auto") -> AmpPlan:
    """Choose the mixed precision for ``device``.

    ``"auto"``: bf16 on a GPU that supports it (Ampere and later) and on a CPU
    with bf16 instructions (AVX512-BF16/AMX); fp16 with a ``GradScaler`` on
    older GPUs (T4, V100), since fp16's narrow range underflows small
    gradients unless the loss is scaled; fp32 elsewhere (MPS included).

    Raises:
        ValueError: unknown ``precision``, or fp16 asked for off CUDA.
    """
    import torch

    kind = torch.device(device).type
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision == "auto":
        if kind == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif kind == "cpu" and _cpu_bf16_supported():
            precision = "bf16"
        else:
            precision = "fp32"
    if precision == "fp16" and kind != "cuda":
        raise ValueError("fp16 training needs a CUDA GPU (with a GradScaler); use bf16 or fp32 here")
    if precision == "fp32":
        return AmpPlan("fp32", None, False)
    if precision == "bf16":
        return AmpPlan("bf16", torch.bfloat16, False)
    return AmpPlan("fp16", torch.float16, True)


# --- FGM ---------------------------------------------------------------------------


class FGM:
    """Fast Gradient Method on the word embeddings (Miyato, Dai and Goodfellow, 2017).

    For each batch: the clean loss is back-propagated while its gradient ``g``
    with respect to the sequence's word embeddings is kept; the embeddings are
    then moved by ``r = epsilon * g / ||g||_2`` (per example, over all its
    tokens and dimensions: the direction that raises the loss fastest) and the
    loss on the perturbed input is back-propagated too. The optimizer step
    then uses the sum of both gradients: the model learns to keep its
    prediction when the input moves a little in embedding space.

    Args:
        epsilon: the perturbation's L2 norm per example (> 0), in the units
            of the word embeddings (MiniLM's rows have norm of about 1-2).

    Raises:
        ValueError: ``epsilon`` <= 0.
    """

    def __init__(self, epsilon: float):
        if not epsilon > 0:
            raise ValueError(f"FGM epsilon must be > 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def perturbation(self, grad):
        """``epsilon * g / ||g||`` per example; ``grad`` is (batch, seq, hidden) fp32."""
        norm = grad.flatten(1).norm(dim=1).clamp(min=1e-12)
        return self.epsilon * grad / norm[:, None, None]


# --- training ------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Knobs of :func:`train_ctr_model`.

    ``batch_size`` examples per forward pass; ``grad_accum`` passes per
    optimizer step (effective batch = product). ``lr`` is AdamW's peak
    learning rate, reached linearly over ``warmup_ratio`` of the steps then
    decayed linearly to 0. ``eval_every`` is in optimizer steps (None: once
    per epoch). Training stops after ``patience`` evaluations without a better
    validation AUC, or after ``max_steps`` optimizer steps. ``fgm_epsilon`` > 0
    turns FGM on (full fine-tuning only). ``head_lr`` (None: ``lr``) is the
    learning rate of the classification head, which starts from random
    weights and so can move faster than the pretrained encoder.
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


@dataclass
class TrainResult:
    """What :func:`train_ctr_model` did.

    ``history``: one dict per evaluation (step, epoch, train_loss = mean
    since the previous evaluation, valid_auc, valid_log_loss).
    ``train_seconds`` counts the optimisation only (not evaluation);
    ``samples_per_s`` = examples forwarded for training / ``train_seconds``.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    best_valid_auc: float = float("nan")
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


def _to_batch(data: EncodedPairs, idx: np.ndarray, collator, device):
    import torch

    batch = collator(data.features(idx))
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = torch.as_tensor(data.labels[idx], dtype=torch.float32, device=device)
    return batch, labels


def _collator(tokenizer, device):
    from transformers import DataCollatorWithPadding

    multiple = 8 if getattr(device, "type", str(device)) == "cuda" else None  # tensor cores like multiples of 8
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple, return_tensors="pt")


def _word_embeddings(model):
    return model.get_input_embeddings()


def train_ctr_model(
    model,
    train: EncodedPairs,
    valid: EncodedPairs,
    config: TrainConfig,
    *,
    tokenizer,
    device=None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_meta: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` on ``train`` with early stopping on ``valid`` AUC; keeps the best weights.

    The loop, step by step (one optimizer step = ``grad_accum`` batches):

    1. batches of similar lengths (:func:`length_grouped_batches`), padded
       per batch by ``DataCollatorWithPadding``;
    2. forward under autocast (:func:`amp_plan`), loss in fp32 (:func:`ctr_loss`),
       divided by ``grad_accum``, backward (through a ``GradScaler`` in fp16);
    3. with FGM, a second forward/backward on perturbed word embeddings;
    4. every ``grad_accum`` batches: unscale, clip the gradient norm to
       ``max_grad_norm``, AdamW step, scheduler step, zero the gradients;
    5. every ``eval_every`` steps (or each epoch): validation AUC and log
       loss in ``model.eval()`` under ``torch.inference_mode()``; the best
       weights are kept (and saved to ``checkpoint_dir`` atomically).

    Args:
        model: from :func:`load_ctr_model` (or :func:`add_lora`); moved to ``device``.
        train, valid: :class:`EncodedPairs`; ``valid`` must hold both labels.
        config: :class:`TrainConfig`.
        tokenizer: the model's tokenizer (for padding).
        device: None picks cuda/mps/cpu (:func:`pick_device`).
        checkpoint_dir: where to save the best model (:func:`save_checkpoint`).
        checkpoint_meta: extra JSON-able fields for the checkpoint (e.g. model_name).

    Returns:
        :class:`TrainResult`; ``model`` holds the best weights, in eval mode.

    Raises:
        ValueError: empty ``train``, or ``valid`` with a single class.
        FloatingPointError: a NaN/inf loss.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from ecrec.metrics import log_loss, roc_auc

    if len(train) == 0:
        raise ValueError("no training examples")
    if len(np.unique(valid.labels)) < 2:
        raise ValueError("valid must hold both positive and negative examples for AUC")
    if config.fgm_epsilon > 0 and not _word_embeddings(model).weight.requires_grad:
        raise ValueError("FGM perturbs trainable word embeddings; use it with full fine-tuning, not LoRA")
    device = pick_device(device) if device is None else torch.device(device)
    plan = amp_plan(device, config.precision)
    model.to(device)
    torch.manual_seed(config.seed)
    collator = _collator(tokenizer, device)
    lengths = train.lengths
    n_batches = math.ceil(len(train) / config.batch_size)
    steps_per_epoch = math.ceil(n_batches / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    eval_every = config.eval_every or steps_per_epoch

    # AdamW groups: no weight decay on biases and LayerNorm; the new head may have its own lr.
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            wd = 0.0 if p.ndim < 2 or "LayerNorm" in name or "bias" in name else config.weight_decay
            lr = config.head_lr if config.head_lr is not None and "classifier" in name else config.lr
            groups.setdefault((lr, wd), []).append(p)
    optimizer = torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()])
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler("cuda") if plan.use_scaler else None
    fgm = FGM(config.fgm_epsilon) if config.fgm_epsilon > 0 else None
    embed = _word_embeddings(model)

    trainable, total = count_params(model)
    result = TrainResult(
        trainable_params=trainable, total_params=total, precision=plan.name, device=str(device)
    )
    best_state: dict[str, Any] | None = None
    bad_evals = 0
    running, running_n = 0.0, 0
    step = 0
    bar = tqdm(total=total_steps, desc=f"train ({plan.name}, {device.type})", disable=not config.progress)

    def forward(batch, inputs_embeds=None):
        with plan.autocast(device):
            if inputs_embeds is None:
                return model(**batch).logits
            rest = {k: v for k, v in batch.items() if k != "input_ids"}
            return model(inputs_embeds=inputs_embeds, **rest).logits

    def backward(loss):
        (scaler.scale(loss) if scaler else loss).backward()

    done = False
    for epoch in range(config.epochs):
        batches = length_grouped_batches(lengths, config.batch_size, seed=config.seed + epoch)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        started = time.perf_counter()
        for b, idx in enumerate(batches):
            batch, labels = _to_batch(train, idx, collator, device)
            if fgm is None:
                loss = ctr_loss(forward(batch), labels)
                backward(loss / config.grad_accum)
            else:
                emb = embed(batch["input_ids"])
                emb.retain_grad()
                loss = ctr_loss(forward(batch, emb), labels)
                backward(loss / config.grad_accum)
                grad = emb.grad.float()
                if scaler is not None:
                    grad = grad / scaler.get_scale()
                # fp16: an overflowed gradient has no direction; the scaler skips this step anyway
                if bool(grad.isfinite().all()):
                    r_adv = fgm.perturbation(grad).to(emb.dtype)
                    adv_loss = ctr_loss(forward(batch, embed(batch["input_ids"]) + r_adv), labels)
                    backward(adv_loss / config.grad_accum)
            running += loss.item() * len(idx)
            running_n += len(idx)
            result.train_samples += len(idx)
            result.train_tokens += int(batch["attention_mask"].sum())
            last = b == len(batches) - 1
            if (b + 1) % config.grad_accum and not last:
                continue
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{running / running_n:.4f}")
            if step % eval_every == 0 or step == total_steps or last:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                result.train_seconds += time.perf_counter() - started
                p = predict_proba(
                    model, valid, tokenizer=tokenizer, batch_size=config.eval_batch_size,
                    device=device, precision=plan.name,
                )
                auc, ll = roc_auc(valid.labels, p), log_loss(valid.labels, p)
                result.history.append(
                    {"step": step, "epoch": epoch + 1, "train_loss": running / running_n,
                     "valid_auc": auc, "valid_log_loss": ll}
                )
                running, running_n = 0.0, 0
                if best_state is None or auc > result.best_valid_auc:
                    result.best_valid_auc, result.best_step, bad_evals = auc, step, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    if checkpoint_dir is not None:
                        save_checkpoint(model, checkpoint_dir, **dict(checkpoint_meta or {}))
                else:
                    bad_evals += 1
                model.train()
                if bad_evals >= config.patience:
                    result.stopped_early = True
                    done = True
                if step >= total_steps:
                    done = True
                started = time.perf_counter()
            if done:
                break
        if done:
            break
    bar.close()
    result.optimizer_steps = step
    result.samples_per_s = result.train_samples / max(result.train_seconds, 1e-9)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


def predict_logits(
    model,
    data: EncodedPairs,
    *,
    tokenizer,
    batch_size: int = 128,
    device=None,
    precision: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """Logits for every pair, in ``model.eval()`` under ``torch.inference_mode()``.

    Pairs are batched sorted by length (little padding) and put back in order.

    Returns:
        float32 array (n,), one logit per pair (``sigmoid`` gives the probability).
    """
    import torch
    from tqdm.auto import tqdm

    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    plan = amp_plan(device, precision)
    collator = _collator(tokenizer, device)
    out = np.empty(len(data), dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for idx in tqdm(sorted_batches(data.lengths, batch_size), desc="predict", disable=not progress):
            batch, _ = _to_batch(data, idx, collator, device)
            with plan.autocast(device):
                logits = model(**batch).logits
            out[idx] = logits.float().reshape(len(idx), -1)[:, 0].cpu().numpy()
    model.train(was_training)
    return out


def predict_proba(model, data: EncodedPairs, **kwargs) -> np.ndarray:
    """``sigmoid(predict_logits(...))`` as float64 (n,) probabilities; same arguments."""
    z = predict_logits(model, data, **kwargs).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-z))


# --- checkpoints ---------------------------------------------------------------------------


def save_checkpoint(model, directory: str | Path, *, model_name: str = DEFAULT_MODEL, **meta: Any) -> Path:
    """Save ``model`` to ``directory`` as safetensors + a JSON description, each written atomically.

    A plain model saves its whole ``state_dict``; a LoRA ``PeftModel`` saves
    only what training changed: the adapters and the ``modules_to_save``
    (the classifier head), a few hundred kilobytes, plus its LoRA config.

    Args:
        model: from :func:`load_ctr_model`, possibly wrapped by :func:`add_lora`.
        directory: created if needed.
        model_name: the base model to rebuild from (``"minilm"`` or a HF name).
        meta: extra JSON-able fields kept in the description.

    Returns:
        ``directory`` as a Path.
    """
    from safetensors.torch import save_file

    from ecrec.io import atomic_write, atomic_write_text

    directory = Path(directory)
    lora = None
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        cfg = model.peft_config["default"]
        state = get_peft_model_state_dict(model)
        lora = {
            "r": cfg.r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
            "target_modules": sorted(cfg.target_modules),
        }
    else:
        state = model.state_dict()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    description = {"format": CHECKPOINT_FORMAT, "model_name": model_name, "lora": lora, **meta}
    atomic_write_text(directory / META_FILE, json.dumps(description, indent=2, sort_keys=True))
    return directory


def load_checkpoint(directory: str | Path, device: str = "cpu"):
    """Rebuild the model saved by :func:`save_checkpoint`, in eval mode on ``device``.

    Raises:
        FileNotFoundError: the folder lacks the weights or the description.
        ValueError: not an ecrec checkpoint, or weights that do not fit.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in (WEIGHTS_FILE, META_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} is missing: not a checkpoint folder")
    meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{directory}: format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    state = load_file(str(directory / WEIGHTS_FILE))
    if meta["lora"] is not None:
        from peft import set_peft_model_state_dict

        lora = meta["lora"]
        model = add_lora(
            load_ctr_model(meta["model_name"]), r=lora["r"], alpha=lora["alpha"],
            dropout=lora["dropout"], target_modules=lora["target_modules"],
        )
        result = set_peft_model_state_dict(model, state)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{directory}: adapter weights do not fit the model: {unexpected[:5]}")
    else:
        from transformers import AutoConfig, AutoModelForSequenceClassification

        config = AutoConfig.from_pretrained(
            model_path(meta["model_name"]), num_labels=1, problem_type="multi_label_classification"
        )
        model = AutoModelForSequenceClassification.from_config(config)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{directory}: weights do not fit {meta['model_name']}: {exc}") from exc
    return model.to(device).eval()


# --- frozen encoder baseline ------------------------------------------------------------------


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Features of (history, candidate) embedding pairs for a linear head: ``[u, v, u * v]``.

    Args:
        u, v: float arrays (n, d), e.g. L2-normalised sentence embeddings.

    Returns:
        float32 (n, 3d). ``u * v`` summed is the cosine similarity, so a
        logistic regression on these features can weight it per dimension.

    Raises:
        ValueError: shapes differ or are not 2-D.
    """
    u, v = np.asarray(u), np.asarray(v)
    if u.ndim != 2 or u.shape != v.shape:
        raise ValueError(f"u and v must be 2-D of the same shape, got {u.shape} and {v.shape}")
    return np.hstack([u, v, u * v]).astype(np.float32)


# --- the common tutorial loop, kept for comparison ---------------------------------------------


class _NaivePairs:
    """A torch Dataset that tokenizes each example when it is fetched, padded to max_length."""

    def __init__(self, tokenizer, text_a, text_b, labels, max_length: int = 128):
        self.tokenizer, self.a, self.b = tokenizer, list(text_a), list(text_b)
        self.y = np.asarray(labels, dtype=np.float32)
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i):
        import torch

        enc = self.tokenizer(
            self.a[i], self.b[i], truncation=True, max_length=self.max_length,
            padding="max_length", return_tensors="pt",
        )
        item = {k: v.squeeze(0) for k, v in enc.items()}
        item["labels"] = torch.tensor(self.y[i])
        return item


def train_naive(
    model,
    tokenizer,
    text_a: Sequence[str],
    text_b: Sequence[str],
    labels: Sequence[float],
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 5e-5,
    max_length: int = 128,
    seed: int = 42,
    progress: bool = True,
) -> dict[str, float]:
    """The loop most tutorials show, for comparison: do not use it.

    Each example is tokenized when fetched and padded to ``max_length``
    (128) whatever its length; batches are random; everything runs in fp32.
    To compare like with like, the loss (:func:`ctr_loss`), AdamW, warm-up
    schedule and clipping are the same as :func:`train_ctr_model`'s.

    Returns:
        ``{"steps", "samples", "seconds", "samples_per_s"}`` (training only).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    data = _NaivePairs(tokenizer, text_a, text_b, labels, max_length)
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    model.train()
    step, samples = 0, 0
    started = time.perf_counter()
    with tqdm(total=steps, desc="naive train (fp32, pad 128)", disable=not progress) as bar:
        while step < steps:
            for batch in loader:
                batch = {k: v.to(device) for k, v in batch.items()}
                labels_t = batch.pop("labels")
                loss = ctr_loss(model(**batch).logits, labels_t)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                step += 1
                samples += len(labels_t)
                bar.update(1)
                if step >= steps:
                    break
    seconds = time.perf_counter() - started
    return {"steps": step, "samples": samples, "seconds": seconds, "samples_per_s": samples / seconds}


def predict_naive(
    model, tokenizer, text_a, text_b, *, batch_size: int = 32, max_length: int = 128
) -> np.ndarray:
    """Tutorial-style inference: pad every pair to 128, fp32, ``torch.no_grad``.

    Returns:
        float64 (n,) probabilities (the *corrected* read-out: ``sigmoid`` of the one logit).
    """
    import torch

    data = _NaivePairs(tokenizer, text_a, text_b, np.zeros(len(text_a)), max_length)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            out.append(torch.sigmoid(model(**batch).logits.float()[:, 0]).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def naive_argmax_predictions(logits) -> Any:
    """What many tutorials do at evaluation: ``torch.argmax(logits, dim=2)``.

    It was written for token classification, whose logits are 3-D (batch,
    seq, classes). A sequence classifier's logits are 2-D (batch, labels), so
    this raises ``IndexError: Dimension out of range``; "fixing" it to
    ``dim=1`` on our one-logit model returns 0 for every example. Kept so the
    chapter can show both failures.
    """
    import torch

    return torch.argmax(logits, dim=2)


# --- GPU accounting (benchmarks) ------------------------------------------------------------------

# Dense bf16 (fp16 for T4/V100) tensor-core peaks, FLOP/s, from the vendors' data sheets.
_PEAKS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "A10": 125e12,
    "L40S": 362e12, "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "T4": 65e12, "V100": 125e12,
}


def peak_bf16_flops(device_name: str) -> float | None:
    """The card's dense bf16 (fp16 on T4/V100) peak in FLOP/s from its name, or None if unknown."""
    for key, peak in _PEAKS.items():
        if key.lower() in device_name.lower():
            return peak
    return None


def transformer_flops(n_params: int, tokens: int, *, training: bool = True) -> float:
    """Approximate FLOPs: ``6 N T`` for a training step, ``2 N T`` for inference.

    ``N`` = parameters excluding the embedding tables, ``T`` = tokens
    processed (Kaplan et al., 2020, "Scaling Laws for Neural Language Models";
    attention's ``seq^2`` term is small at 64-128 tokens and left out).
    """
    return (6.0 if training else 2.0) * n_params * tokens


def non_embedding_params(model) -> int:
    """Parameters of ``model`` outside its embedding tables."""
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """``TrainConfig`` as a plain dict (for metrics.json)."""
    return asdict(config)
