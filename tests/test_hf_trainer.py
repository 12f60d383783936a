"""Unit tests of ecrec.hf_trainer: Hugging Face Trainer configured like train_ctr_model (real MiniLM, 2 steps)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ecrec import bert
from ecrec.finetune import TrainConfig
from ecrec.hf_trainer import train_with_hf_trainer, trainer_steps
from ecrec.pairs import encode_pairs
from ecrec.text import load_tokenizer

WORDS = "jumbo bag red retrospot cake cases white heart holder lunch tin pantry christmas paper chain".split()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def data(tokenizer):
    """16 train and 16 valid tiny pairs, both classes in each."""
    rng = np.random.default_rng(0)
    a = [" ".join(rng.choice(WORDS, int(rng.integers(2, 10)))) for _ in range(32)]
    b = [" ".join(rng.choice(WORDS, 3)) for _ in range(32)]
    y = (np.arange(32) % 2).astype(np.float32)
    return encode_pairs(tokenizer, a[:16], b[:16], y[:16], 32), encode_pairs(tokenizer, a[16:], b[16:], y[16:], 32)


def _query(model) -> torch.Tensor:
    return model.encoder.encoder.layer[0].attention.self.query.weight.detach().clone()


def test_two_steps_honour_the_head_lr_group_and_count_steps(tokenizer, data):
    train, valid = data
    model = bert.load_ctr_model(seed=0)
    head, query = model.head.weight.detach().clone(), _query(model)
    # encoder at 1e-9, head at 1e-2, no warm-up: Adam moves each weight by about its lr per step,
    # so the head moves ~1e-2 and the encoder ~1e-9; a single learning rate for all would fail one side.
    config = TrainConfig(batch_size=8, lr=1e-9, head_lr=1e-2, warmup_ratio=0.0, precision="fp32", progress=False)
    out = train_with_hf_trainer(model, train, valid, config, tokenizer=tokenizer, device="cpu")
    assert out["steps"] == math.ceil(16 / 8) == trainer_steps(16, config)
    assert out["samples"] == 16 and out["tokens"] == int(train.lengths.sum())
    assert out["samples_per_s"] > 0 and out["train_seconds"] > 0
    assert np.isfinite(out["valid_auc"]) and 0 <= out["valid_auc"] <= 1
    assert np.isfinite(out["valid_log_loss"])
    assert (model.head.weight - head).abs().max() > 1e-3
    assert (_query(model) - query).abs().max() < 1e-6
    assert not model.training


def test_gradient_accumulation_counts_windows_like_train_ctr_model(tokenizer, data):
    train, valid = data
    # 16 pairs, batch 4 -> 4 micro-batches; accumulation 3 -> windows of 3 and 1 -> 2 optimizer steps
    config = TrainConfig(batch_size=4, grad_accum=3, lr=1e-5, precision="fp32", progress=False)
    out = train_with_hf_trainer(bert.load_ctr_model(seed=0), train, valid, config, tokenizer=tokenizer, device="cpu")
    assert out["steps"] == trainer_steps(16, config) == 2
    assert out["samples"] == 16


def test_refuses_what_it_cannot_do(tokenizer, data):
    train, valid = data
    model = bert.load_ctr_model(seed=0)
    with pytest.raises(ValueError, match="FGM"):
        train_with_hf_trainer(model, train, valid, TrainConfig(fgm_epsilon=0.1), tokenizer=tokenizer, device="cpu")
    one_class = valid.subset([i for i in range(len(valid)) if valid.labels[i] == 1])
    with pytest.raises(ValueError, match="both positive and negative"):
        train_with_hf_trainer(model, train, one_class, TrainConfig(), tokenizer=tokenizer, device="cpu")
