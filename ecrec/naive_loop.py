"""The fine-tuning loop most tutorials show, kept as chapter 04's contrast: do not use it.

What makes it slow, next to :func:`ecrec.finetune.train_ctr_model` (same model,
loss, AdamW, warm-up and clipping, so that only these differ):

* each example is tokenized again every time it is fetched, inside a torch
  ``Dataset`` (:class:`NaivePairs`), and **padded to 128 tokens** whatever its
  length (chapter 04's pairs average about 30 tokens: most of the compute
  goes to ``[PAD]``);
* batches are drawn at random, fp32 throughout, inference in ``torch.no_grad``
  at 128 tokens.

And what makes it wrong: its evaluation, ``torch.argmax(logits, dim=2)``
(:func:`naive_argmax_predictions`), was copied from token classification,
whose logits are 3-D; on a sequence classifier it raises. Sources: the
pattern of many "fine-tune BERT for classification" tutorials; the model is
:class:`ecrec.bert.CrossEncoderCtr` (``model(**batch)`` -> logits ``(batch,)``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ecrec.bert import ctr_loss

__all__ = ["NaivePairs", "train_naive", "predict_naive", "naive_argmax_predictions"]


class NaivePairs(torch.utils.data.Dataset):
    """A torch Dataset that tokenizes each (text_a, text_b) pair when fetched, padded to ``max_length``.

    ``dataset[i]`` -> ``{"input_ids", "token_type_ids", "attention_mask"}``
    int64 (max_length,) and ``"labels"`` float32 scalar.

    Raises:
        ValueError: ``text_a``, ``text_b`` and ``labels`` differ in length, or
            ``max_length`` < 8.
    """

    def __init__(
        self,
        tokenizer,
        text_a: Sequence[str],
        text_b: Sequence[str],
        labels: Sequence[float] | np.ndarray,
        max_length: int = 128,
    ):
        self.tokenizer, self.a, self.b = tokenizer, list(text_a), list(text_b)
        self.y = np.asarray(labels, dtype=np.float32)
        if not (len(self.a) == len(self.b) == len(self.y)):
            raise ValueError(f"text_a, text_b, labels differ in length: {len(self.a)}, {len(self.b)}, {len(self.y)}")
        if max_length < 8:
            raise ValueError(f"max_length must be >= 8 tokens, got {max_length}")
        self.max_length = int(max_length)

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
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
    labels: Sequence[float] | np.ndarray,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 5e-5,
    max_length: int = 128,
    seed: int = 42,
    progress: bool = True,
) -> dict[str, float]:
    """Train ``model`` for ``steps`` optimizer steps the tutorial way (fp32, pad to 128, random batches).

    To compare like with like, the loss (:func:`ecrec.bert.ctr_loss`), AdamW
    (weight decay 0.01, one learning rate for every parameter, as tutorials
    do), the linear warm-up over 10% of the steps then decay, and clipping
    at norm 1 are those of :func:`ecrec.finetune.train_ctr_model`. The data
    is cycled when ``steps`` needs more than one pass.

    Args:
        model: a :class:`ecrec.bert.CrossEncoderCtr` (``model(input_ids=...,
            attention_mask=..., token_type_ids=...)`` -> logits ``(batch,)``),
            on the device to train on; left in train mode.
        tokenizer: its Hugging Face tokenizer (``ecrec.text.load_tokenizer``).
        text_a, text_b: n strings each (history, candidate).
        labels: n values in {0, 1}.
        steps: optimizer steps (>= 1).
        batch_size: examples per step (>= 1).
        lr: AdamW's peak learning rate.
        max_length: every pair is truncated *and padded* to it.
        seed: seeds the shuffling (and torch's global RNG: dropout).
        progress: show a tqdm bar.

    Returns:
        ``{"steps", "samples", "seconds", "samples_per_s"}``: the training loop
        only (the data loader's tokenization included, since it is part of it).

    Raises:
        ValueError: ``steps`` or ``batch_size`` < 1, no examples, or as
            :class:`NaivePairs`.
        FloatingPointError: a NaN/inf loss (:func:`ecrec.bert.ctr_loss`).
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    data = NaivePairs(tokenizer, text_a, text_b, labels, max_length)
    if len(data) == 0:
        raise ValueError("no training examples")
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    model.train()
    step, samples = 0, 0
    started = time.perf_counter()
    with tqdm(total=steps, desc="naive train (fp32, pad to 128)", disable=not progress) as bar:
        while step < steps:
            for batch in loader:
                batch = {k: v.to(device) for k, v in batch.items()}
                labels_t = batch.pop("labels")
                loss = ctr_loss(model(**batch), labels_t)
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
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return {"steps": step, "samples": samples, "seconds": seconds, "samples_per_s": samples / max(seconds, 1e-9)}


def predict_naive(
    model,
    tokenizer,
    text_a: Sequence[str],
    text_b: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int = 128,
) -> np.ndarray:
    """Tutorial-style inference: every pair padded to ``max_length``, fp32, ``torch.no_grad``.

    Returns:
        float32 (n,) logits, in the input order (``sigmoid`` gives the
        probability: the *corrected* read-out, not the tutorial's argmax).
        The model is left in eval mode.

    Raises:
        ValueError: as :class:`NaivePairs`.
    """
    text_a = list(text_a)
    data = NaivePairs(tokenizer, text_a, text_b, np.zeros(len(text_a), dtype=np.float32), max_length)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            out.append(model(**batch).float().reshape(-1).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.empty(0, dtype=np.float32)


def naive_argmax_predictions(logits: torch.Tensor) -> Any:
    """What many tutorials do at evaluation: ``torch.argmax(logits, dim=2)``. Kept to show the bug.

    It was written for token classification, whose logits are 3-D (batch,
    seq, classes). A sequence classifier's logits are 2-D (batch, labels)
    (ours, ``(batch,)`` unsqueezed to ``(batch, 1)``), so this raises;
    "fixed" to ``dim=1`` on a one-logit model it returns 0 for every example
    (an AUC of exactly 0.5, which looks like a model that learned nothing).

    Args:
        logits: a float tensor.

    Returns:
        ``torch.argmax(logits, dim=2)``: int64 (batch, seq) for 3-D logits.

    Raises:
        IndexError: ``logits`` has fewer than 3 dimensions ("Dimension out of range").
    """
    return torch.argmax(logits, dim=2)
