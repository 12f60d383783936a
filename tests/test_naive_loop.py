"""Unit tests of ecrec.naive_loop: the tutorial loop kept as chapter 04's contrast (real MiniLM, 2 steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecrec import bert
from ecrec.naive_loop import NaivePairs, naive_argmax_predictions, predict_naive, train_naive
from ecrec.text import load_tokenizer

WORDS = "jumbo bag red retrospot cake cases white heart holder lunch tin pantry christmas paper chain".split()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def _texts(n: int, seed: int = 0) -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    a = [" ".join(rng.choice(WORDS, int(rng.integers(2, 8)))) for _ in range(n)]
    b = [" ".join(rng.choice(WORDS, 3)) for _ in range(n)]
    return a, b, (np.arange(n) % 2).astype(np.float32)


def test_argmax_over_dim2_raises_on_2d_logits():
    for logits in (torch.zeros(4, 1), torch.zeros(4, 2), torch.zeros(4)):
        with pytest.raises(IndexError):
            naive_argmax_predictions(logits)
    # what it was written for: token classification's (batch, seq, classes)
    assert naive_argmax_predictions(torch.zeros(2, 5, 3)).shape == (2, 5)


def test_dataset_pads_every_pair_to_max_length(tokenizer):
    a, b, y = _texts(3)
    item = NaivePairs(tokenizer, a, b, y, max_length=24)[0]
    assert {k: tuple(v.shape) for k, v in item.items()} == {
        "input_ids": (24,), "token_type_ids": (24,), "attention_mask": (24,), "labels": ()}
    assert item["attention_mask"].sum() < 24  # mostly padding: the tutorial's waste
    with pytest.raises(ValueError, match="differ in length"):
        NaivePairs(tokenizer, a, b[:2], y)


def test_train_naive_two_steps_on_16_pairs(tokenizer):
    a, b, y = _texts(16)
    model = bert.load_ctr_model(seed=0)
    head = model.head.weight.detach().clone()
    out = train_naive(model, tokenizer, a, b, y, steps=2, batch_size=8, lr=1e-3, max_length=32, progress=False)
    assert set(out) == {"steps", "samples", "seconds", "samples_per_s"}
    assert out["steps"] == 2 and out["samples"] == 16
    assert out["seconds"] > 0 and out["samples_per_s"] > 0
    assert not torch.equal(model.head.weight, head)  # it did train
    z = predict_naive(model, tokenizer, a[:5], b[:5], batch_size=2, max_length=32)
    assert z.shape == (5,) and z.dtype == np.float32 and np.isfinite(z).all()
    with pytest.raises(ValueError, match="steps"):
        train_naive(model, tokenizer, a, b, y, steps=0, progress=False)
