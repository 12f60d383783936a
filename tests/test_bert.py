"""ecrec.bert: the text CTR models, their parameters and checkpoints.

Fast tests use a tiny random BERT saved as a sentence-transformers folder
(mean pooling + Normalize, like MiniLM); a few use the real MiniLM.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

from ecrec import bert, finetune, pairs
from ecrec.text import load_tokenizer, model_path

ITEMS = pd.Series({
    "A": "WHITE HANGING HEART T-LIGHT HOLDER", "B": "RED WOOLLY HOTTIE WHITE HEART",
    "C": "JUMBO BAG RED RETROSPOT", "D": "PACK OF 72 RETROSPOT CAKE CASES",
    "E": "REGENCY CAKESTAND 3 TIER", "F": "SET OF 3 CAKE TINS PANTRY DESIGN",
})


def tiny_config(**kw) -> BertConfig:
    base = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=64)
    return BertConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def _examples(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"hist_items": list(rng.choice(ITEMS.index, size=int(rng.integers(0, 3)), replace=False)),
             "item_id": str(rng.choice(ITEMS.index)), "label": int(rng.random() < 0.5)} for _ in range(n)]
    return pd.DataFrame(rows)


def test_minilm_pooler_is_untrained_and_not_loaded():
    assert bert.checkpoint_pooling("minilm").as_dict() == {"mode": "mean", "normalize": True}
    full = BertModel.from_pretrained(model_path("minilm"))
    assert float(full.pooler.dense.bias.detach().abs().max()) == 0.0  # never trained
    model = bert.load_ctr_model("minilm")
    assert not any("pooler" in n for n, _ in model.named_parameters())
    assert bert.fresh_parameter_names(model) == ["head.weight", "head.bias"]


def test_mean_pooling_matches_sentence_transformers_convention(tokenizer):
    """The pooled vector is the mask-weighted mean of token vectors, L2-normalised (padding ignored)."""
    model = bert.load_ctr_model("minilm", architecture="cross").eval()
    batch = tokenizer(["red heart", "a much longer text about cake tins"], padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = model.pool(**batch)
        hidden = model.encoder(**batch).last_hidden_state
    n0 = int(batch["attention_mask"][0].sum())
    by_hand = torch.nn.functional.normalize(hidden[0, :n0].mean(0), dim=0)
    assert torch.allclose(pooled[0], by_hand, atol=1e-5)
    assert torch.allclose(pooled.norm(dim=1), torch.ones(2), atol=1e-5)


def test_cls_checkpoint_keeps_its_pooler(tmp_path, tokenizer):
    """A plain BERT folder (no sentence-transformers pooling) with a 2-label head loads as a 1-logit model."""
    BertForSequenceClassification(tiny_config(num_labels=2)).save_pretrained(tmp_path)
    assert bert.checkpoint_pooling(str(tmp_path)).mode == "cls"
    model = bert.load_ctr_model(str(tmp_path), architecture="cross").eval()
    assert any("pooler" in n for n, _ in model.named_parameters())
    batch = tokenizer(["red heart"], ["cake"], return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).shape == (1,)  # our one-logit head, not the checkpoint's 2-label classifier


def test_fresh_parameters_get_head_lr_and_train_under_lora(tiny_st):
    model = bert.load_ctr_model(tiny_st, architecture="bi")
    groups = finetune.optimizer_groups(model, lr=1e-5, head_lr=1e-3, weight_decay=0.01)
    lr_of = {n: g["lr"] for g in groups for n in g["names"]}
    fresh = bert.fresh_parameter_names(model)
    assert fresh == ["head.weight", "head.bias"]
    assert all(lr_of[n] == 1e-3 for n in fresh)
    assert all(lr == 1e-5 for n, lr in lr_of.items() if n not in fresh)  # pretrained weights: encoder lr
    decay = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert decay["head.bias"] == 0.0 and decay["head.weight"] == 0.01
    bert.add_lora(model, r=4, alpha=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    assert all("lora_" in n or n.startswith("head.") for n in trainable)
    lr_of = {n: g["lr"] for g in finetune.optimizer_groups(model, 5e-4, 1e-3, 0.0) for n in g["names"]}
    assert lr_of["head.weight"] == 1e-3 and all(v == 5e-4 for n, v in lr_of.items() if "lora_" in n)


def test_probe_warm_start_reproduces_the_probe(tiny_st, tokenizer):
    from sklearn.linear_model import LogisticRegression

    ex = _examples(40)
    enc = pairs.encode_histories(tokenizer, ex, ITEMS, n_history=2, max_length=16)
    model = bert.load_ctr_model(tiny_st, architecture="bi").eval()
    vectors = finetune.item_vectors(model, enc.item_tokens)
    x = bert.bi_features(vectors, enc.hist, enc.cand)
    probe = LogisticRegression(max_iter=500).fit(x, enc.labels)
    bert.init_head_from_probe(model, probe.coef_, probe.intercept_)
    logits = finetune.predict_logits(model, enc, precision="fp32")
    assert logits == pytest.approx(probe.decision_function(x), abs=1e-4)
    assert bert.bi_logits(model, vectors, enc.hist, enc.cand) == pytest.approx(logits, abs=1e-4)
    with pytest.raises(ValueError, match="coefficients"):
        bert.init_head_from_probe(model, np.zeros(5), 0.0)


def test_bi_features_by_hand():
    v = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    x = bert.bi_features(v, np.array([[0, 1], [-1, -1]]), np.array([2, 0]))
    assert x[0].tolist() == pytest.approx([0.5, 0.5, 0.6, 0.8, 0.3, 0.4])  # u = mean of rows 0, 1
    assert x[1].tolist() == pytest.approx([0, 0, 1, 0, 0, 0])  # no history: u = 0
    with pytest.raises(ValueError, match="out of range"):
        bert.bi_features(v, np.array([[5]]), np.array([0]))


def _trained_tiny(tiny_st, tokenizer, architecture="bi", lora=False):
    ex = _examples(24)
    enc = pairs.encode_histories(tokenizer, ex, ITEMS, n_history=2, max_length=16)
    if architecture == "cross":
        p = pairs.build_text_pairs(ex, ITEMS, 2)
        enc = pairs.encode_pairs(tokenizer, p.text_a, p.text_b, p.label, 32)
    model = bert.load_ctr_model(tiny_st, architecture=architecture)
    if lora:
        bert.add_lora(model, r=4, alpha=8)
    cfg = finetune.TrainConfig(batch_size=8, epochs=2, lr=1e-3, head_lr=1e-2, progress=False, precision="fp32")
    finetune.train_ctr_model(model, enc, enc, cfg, pad_id=tokenizer.pad_token_id, device="cpu")
    return model, enc


@pytest.mark.parametrize("architecture,lora", [("bi", False), ("cross", False), ("bi", True)])
def test_checkpoint_round_trip_same_logits(tiny_st, tokenizer, tmp_path, architecture, lora):
    model, enc = _trained_tiny(tiny_st, tokenizer, architecture, lora)
    bert.save_checkpoint(model, tmp_path)
    meta = json.loads((tmp_path / bert.META_FILE).read_text())
    assert meta["architecture"] == architecture and (meta["lora"] is not None) == lora
    again = bert.load_checkpoint(tmp_path)
    a = finetune.predict_logits(model, enc, precision="fp32")
    b = finetune.predict_logits(again, enc, precision="fp32")
    assert np.abs(a - b).max() < 1e-5
    if lora:  # only adapters and head are saved, the head included
        from safetensors.torch import load_file

        keys = set(load_file(str(tmp_path / bert.WEIGHTS_FILE)))
        assert {"head.weight", "head.bias"} <= keys and all("lora_" in k or k.startswith("head.") for k in keys)


def test_save_checkpoint_refuses_what_it_cannot_rebuild(tiny_st, tokenizer, tmp_path):
    model, enc = _trained_tiny(tiny_st, tokenizer, "bi", lora=True)
    with pytest.raises(TypeError, match="CrossEncoderCtr"):
        bert.save_checkpoint(model.encoder, tmp_path / "peft")  # a bare PeftModel
    with pytest.raises(TypeError, match="CrossEncoderCtr"):
        bert.save_checkpoint(model.encoder.merge_and_unload(), tmp_path / "merged_bare")
    next(p for n, p in model.named_parameters() if "LayerNorm" in n).requires_grad_(True)
    with pytest.raises(ValueError, match="trainable pretrained"):
        bert.save_checkpoint(model, tmp_path / "stray")


def test_merged_lora_saves_as_a_full_model(tiny_st, tokenizer, tmp_path):
    model, enc = _trained_tiny(tiny_st, tokenizer, "bi", lora=True)
    before = finetune.predict_logits(model, enc, precision="fp32")
    bert.merge_lora(model)
    assert bert.fresh_parameter_names(model) == ["head.weight", "head.bias"]
    bert.save_checkpoint(model, tmp_path)
    after = finetune.predict_logits(bert.load_checkpoint(tmp_path), enc, precision="fp32")
    assert np.abs(before - after).max() < 1e-4
    with pytest.raises(ValueError, match="no LoRA"):
        bert.merge_lora(model)


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        bert.load_checkpoint(tmp_path)
    (tmp_path / bert.WEIGHTS_FILE).write_bytes(b"")
    (tmp_path / bert.META_FILE).write_text(json.dumps({"format": "ecrec-bert-ctr/1"}))
    with pytest.raises(ValueError, match="format"):
        bert.load_checkpoint(tmp_path)


def test_ctr_loss_is_log_loss_not_mse():
    from sklearn.metrics import log_loss

    z = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    loss = bert.ctr_loss(z, y).item()
    assert loss == pytest.approx(log_loss(y.numpy(), torch.sigmoid(z[:, 0]).numpy()), rel=1e-6)
    assert loss == pytest.approx(1.1157, abs=1e-3)  # (softplus(-2)+softplus(-1)+softplus(.5)+softplus(3))/4
    assert bert.ctr_loss(z, y, reduction="sum").item() == pytest.approx(4 * loss, rel=1e-6)
    assert bert.ctr_loss(z.bfloat16(), y).dtype == torch.float32
    with pytest.raises(ValueError, match="do not match"):
        bert.ctr_loss(z, y[:3])
    with pytest.raises(FloatingPointError):
        bert.ctr_loss(torch.tensor([float("nan")]), torch.tensor([1.0]))


def test_load_ctr_model_rejects_unknown_architecture():
    with pytest.raises(ValueError, match="architecture"):
        bert.load_ctr_model("minilm", architecture="triple")
