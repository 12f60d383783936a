"""Unit tests of ecrec.bert on small hand-made frames and the real MiniLM (few steps)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ecrec import bert
from ecrec.metrics import log_loss
from ecrec.text import load_tokenizer

DESCRIPTIONS = {
    "A": "WHITE HANGING HEART T-LIGHT HOLDER",
    "B": "RED WOOLLY HOTTIE WHITE HEART",
    "C": "JUMBO BAG RED RETROSPOT",
    "D": "PACK OF 72 RETROSPOT CAKE CASES",
    "E": "REGENCY CAKESTAND 3 TIER",
    "F": "SET OF 3 CAKE TINS PANTRY DESIGN",
    "G": "LUNCH BAG RED RETROSPOT",
    "H": "PAPER CHAIN KIT 50'S CHRISTMAS",
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def _examples(n: int = 48, seed: int = 0) -> pd.DataFrame:
    """Hand-made examples: label 1 when the candidate shares a word family with the history."""
    rng = np.random.default_rng(seed)
    items = list(DESCRIPTIONS)
    rows = []
    for _ in range(n):
        hist = list(rng.choice(items, size=int(rng.integers(0, 4)), replace=False))
        cand = str(rng.choice(items))
        rows.append({"hist_items": hist, "item_id": cand, "label": int("CAKE" in DESCRIPTIONS[cand])})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def encoded(tokenizer):
    pairs = bert.build_text_pairs(_examples(), DESCRIPTIONS, n_history=3)
    return bert.encode_pairs(tokenizer, pairs.text_a, pairs.text_b, pairs.label, max_length=32)


# --- text pairs -------------------------------------------------------------------------


def test_history_text_newest_first_and_limited():
    text = bert.history_text(["C", "A", "B"], DESCRIPTIONS, n_items=2)
    assert text == "jumbo bag red retrospot ; white hanging heart t-light holder"
    assert bert.history_text([], DESCRIPTIONS) == bert.NO_HISTORY
    with pytest.raises(KeyError, match="Z"):
        bert.history_text(["Z"], DESCRIPTIONS)
    with pytest.raises(ValueError, match="n_items"):
        bert.history_text(["A"], DESCRIPTIONS, n_items=0)


def test_build_text_pairs_values_and_errors():
    ex = pd.DataFrame({"hist_items": [["A", "B"], []], "item_id": ["C", "D"], "label": [1, 0]}, index=[10, 11])
    pairs = bert.build_text_pairs(ex, pd.Series(DESCRIPTIONS), n_history=5)
    assert list(pairs.index) == [10, 11]
    assert pairs.loc[10, "text_a"].startswith("white hanging heart")
    assert pairs.loc[11, "text_a"] == bert.NO_HISTORY
    assert pairs.loc[11, "text_b"] == "pack of 72 retrospot cake cases"
    assert pairs.label.dtype == np.float32 and pairs.label.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="hist_items"):
        bert.build_text_pairs(ex.drop(columns="hist_items"), DESCRIPTIONS)
    with pytest.raises(ValueError, match="no description"):
        bert.build_text_pairs(ex.assign(item_id=["C", "nope"]), DESCRIPTIONS)
    with pytest.raises(ValueError, match="only 0 and 1"):
        bert.build_text_pairs(ex.assign(label=[1, 2]), DESCRIPTIONS)


def test_every_encoded_pair_fits_and_keeps_the_candidate(tokenizer):
    long_history = " ; ".join(DESCRIPTIONS.values()) * 5
    a = [long_history, "short", bert.NO_HISTORY]
    b = [DESCRIPTIONS["E"].lower(), DESCRIPTIONS["C"].lower(), long_history]
    enc = bert.encode_pairs(tokenizer, a, b, [1, 0, 1], max_length=24)
    assert enc.lengths.tolist()[1] < 24 and enc.lengths.max() <= 24
    assert enc.lengths[0] == 24 and enc.lengths[2] == 24
    # longest_first trims the long history, the short candidate survives whole
    cand_ids = tokenizer(b[0], add_special_tokens=False)["input_ids"]
    ids, types = enc.input_ids[0], enc.token_type_ids[0]
    segment_b = [t for t, s in zip(ids, types, strict=True) if s == 1][:-1]  # drop the final [SEP]
    assert segment_b == cand_ids
    assert ids[0] == tokenizer.cls_token_id and ids.count(tokenizer.sep_token_id) == 2
    assert enc.labels.dtype == np.float32


def test_encode_pairs_rejects_bad_input(tokenizer):
    with pytest.raises(ValueError, match="differ in length"):
        bert.encode_pairs(tokenizer, ["a"], ["b", "c"], [1])
    with pytest.raises(ValueError, match="max_length"):
        bert.encode_pairs(tokenizer, ["a"], ["b"], [1], max_length=4)
    with pytest.raises(ValueError, match="only 0 and 1"):
        bert.encode_pairs(tokenizer, ["a"], ["b"], [0.5])
    with pytest.raises(TypeError, match=r"text_b\[0\]"):
        bert.encode_pairs(tokenizer, ["a"], [None], [1])
    with pytest.raises(ValueError, match="no examples"):
        bert.encode_pairs(tokenizer, [], [], [])


def test_length_grouped_batches_cover_once_and_pad_less():
    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 120, size=1000)
    batches = bert.length_grouped_batches(lengths, 32, seed=3, mega_batch_mult=8)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    assert all(len(b) <= 32 for b in batches)
    again = bert.length_grouped_batches(lengths, 32, seed=3, mega_batch_mult=8)
    assert all((x == y).all() for x, y in zip(batches, again, strict=True))
    padded = sum(lengths[b].max() * len(b) for b in batches)
    random = [np.arange(i, min(i + 32, 1000)) for i in range(0, 1000, 32)]
    padded_random = sum(lengths[rng.permutation(1000)][b].max() * len(b) for b in random)
    assert padded < 0.7 * padded_random
    sb = bert.sorted_batches(lengths, 100)
    assert (np.diff(lengths[np.concatenate(sb)]) >= 0).all()
    with pytest.raises(ValueError):
        bert.length_grouped_batches(lengths, 0)


# --- loss and model --------------------------------------------------------------------------


def test_ctr_loss_is_log_loss_not_mse():
    z = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    p = torch.sigmoid(z[:, 0]).numpy()
    loss = bert.ctr_loss(z, y).item()
    assert loss == pytest.approx(log_loss(y.numpy(), p), rel=1e-6)
    assert loss == pytest.approx(1.1157, abs=1e-3)  # (softplus(-2)+softplus(-1)+softplus(.5)+softplus(3))/4
    mse = torch.nn.functional.mse_loss(z[:, 0], y).item()
    assert abs(loss - mse) > 0.5
    assert bert.ctr_loss(z.bfloat16(), y).dtype == torch.float32
    with pytest.raises(ValueError, match="do not match"):
        bert.ctr_loss(z, y[:3])
    with pytest.raises(FloatingPointError):
        bert.ctr_loss(torch.tensor([float("nan")]), torch.tensor([1.0]))


def test_model_own_loss_is_bce_not_regression(tokenizer):
    model = bert.load_ctr_model(seed=0).eval()
    assert model.config.num_labels == 1
    assert model.config.problem_type == "multi_label_classification"
    batch = tokenizer(["red heart", "cake tin"], ["jumbo bag", "cake stand"], padding=True, return_tensors="pt")
    y = torch.tensor([1.0, 0.0])
    with torch.no_grad():
        out = model(**batch, labels=y[:, None])
    z = out.logits
    assert z.shape == (2, 1)
    assert out.loss.item() == pytest.approx(bert.ctr_loss(z, y).item(), rel=1e-5)
    assert out.loss.item() != pytest.approx(torch.nn.functional.mse_loss(z[:, 0], y).item(), rel=1e-3)


def test_amp_plan_choices():
    assert bert.amp_plan("cpu", "fp32").dtype is None
    assert bert.amp_plan("cpu", "bf16").dtype == torch.bfloat16
    assert bert.amp_plan("cpu", "auto").name in ("bf16", "fp32")
    assert not bert.amp_plan("cpu", "auto").use_scaler
    with pytest.raises(ValueError, match="CUDA"):
        bert.amp_plan("cpu", "fp16")
    with pytest.raises(ValueError, match="precision"):
        bert.amp_plan("cpu", "int8")


def test_fgm_perturbation_has_norm_epsilon_per_example():
    g = torch.randn(3, 5, 4)
    g[1] *= 100
    r = bert.FGM(0.5).perturbation(g)
    assert torch.allclose(r.flatten(1).norm(dim=1), torch.full((3,), 0.5), atol=1e-6)
    cos = torch.nn.functional.cosine_similarity(r.flatten(1), g.flatten(1))
    assert torch.allclose(cos, torch.ones(3), atol=1e-6)
    with pytest.raises(ValueError):
        bert.FGM(0.0)


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="batch_size"):
        bert.TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        bert.TrainConfig(warmup_ratio=1.0)
    with pytest.raises(ValueError, match="fgm_epsilon"):
        bert.TrainConfig(fgm_epsilon=-1)
    with pytest.raises(ValueError, match="head_lr"):
        bert.TrainConfig(head_lr=0.0)


# --- training and checkpoints (real MiniLM, a few steps) ----------------------------------------

FAST = dict(batch_size=8, lr=1e-4, progress=False, precision="fp32", seed=0)


def test_training_is_deterministic_and_keeps_the_best(tokenizer, encoded):
    train, valid = encoded.subset(range(32)), encoded.subset(range(32, 48))
    cfg = bert.TrainConfig(epochs=1, max_steps=3, eval_every=1, patience=5, **FAST)
    runs = []
    for _ in range(2):
        model = bert.load_ctr_model(seed=0)
        result = bert.train_ctr_model(model, train, valid, cfg, tokenizer=tokenizer, device="cpu")
        runs.append((result, bert.predict_logits(model, valid, tokenizer=tokenizer, precision="fp32")))
    (r1, z1), (r2, z2) = runs
    np.testing.assert_array_equal(z1, z2)
    assert r1.optimizer_steps == 3 and r1.train_samples == 24 and len(r1.history) == 3
    assert r1.trainable_params == r1.total_params > 20_000_000
    aucs = [h["valid_auc"] for h in r1.history]
    assert r1.best_valid_auc == max(aucs) and r1.best_step == 1 + int(np.argmax(aucs))
    from ecrec.metrics import roc_auc

    assert roc_auc(valid.labels, z1) == pytest.approx(r1.best_valid_auc, abs=1e-9)
    assert not model.training


def test_grad_accumulation_counts_optimizer_steps(tokenizer, encoded):
    cfg = bert.TrainConfig(epochs=1, grad_accum=2, head_lr=1e-3, **FAST)
    model = bert.load_ctr_model(seed=0)
    head_before = model.classifier.weight.detach().clone()
    result = bert.train_ctr_model(model, encoded.subset(range(32)), encoded.subset(range(32, 48)), cfg,
                                  tokenizer=tokenizer, device="cpu")
    assert result.optimizer_steps == 2 and result.train_samples == 32  # 4 batches / 2
    # AdamW's first steps move each weight by about lr: the head's lr is 10x the encoder's
    assert (model.classifier.weight - head_before).abs().max().item() > 5e-4


def test_valid_with_one_class_is_refused(tokenizer, encoded):
    one_class = encoded.subset(np.flatnonzero(encoded.labels == 0)[:4])
    with pytest.raises(ValueError, match="both"):
        bert.train_ctr_model(bert.load_ctr_model(), encoded, one_class, bert.TrainConfig(**FAST),
                             tokenizer=tokenizer, device="cpu")


def test_full_checkpoint_round_trip_same_logits(tokenizer, encoded, tmp_path):
    train, valid = encoded.subset(range(16)), encoded.subset(range(32, 48))
    model = bert.load_ctr_model(seed=0)
    bert.train_ctr_model(model, train, valid, bert.TrainConfig(max_steps=2, **FAST),
                         tokenizer=tokenizer, device="cpu", checkpoint_dir=tmp_path / "ckpt",
                         checkpoint_meta={"model_name": "minilm", "max_length": 32})
    before = bert.predict_logits(model, valid, tokenizer=tokenizer, precision="fp32")
    loaded = bert.load_checkpoint(tmp_path / "ckpt")
    after = bert.predict_logits(loaded, valid, tokenizer=tokenizer, precision="fp32")
    np.testing.assert_allclose(after, before, atol=1e-5)
    fresh = bert.predict_logits(bert.load_ctr_model(seed=1), valid, tokenizer=tokenizer, precision="fp32")
    assert np.abs(fresh - before).max() > 1e-3  # the test can tell a different model apart
    meta = json.loads((tmp_path / "ckpt" / bert.META_FILE).read_text())
    assert meta["max_length"] == 32 and meta["lora"] is None
    assert not list((tmp_path / "ckpt").glob(".*.tmp"))  # atomic writes left no temporaries


def test_lora_params_training_and_round_trip(tokenizer, encoded, tmp_path):
    model = bert.add_lora(bert.load_ctr_model(seed=0), r=8, alpha=16)
    trainable, total = bert.count_params(model)
    # 6 layers x (query, value) x (A: 8x384 + B: 384x8) + the classifier copy (384 + 1)
    assert trainable == 6 * 2 * (8 * 384 + 384 * 8) + 385
    assert total > 22_000_000
    train, valid = encoded.subset(range(32)), encoded.subset(range(32, 48))
    cfg = bert.TrainConfig(max_steps=3, **{**FAST, "lr": 1e-2})
    bert.train_ctr_model(model, train, valid, cfg, tokenizer=tokenizer, device="cpu")
    before = bert.predict_logits(model, valid, tokenizer=tokenizer, precision="fp32")
    bert.save_checkpoint(model, tmp_path / "lora", model_name="minilm")
    size = (tmp_path / "lora" / bert.WEIGHTS_FILE).stat().st_size
    assert size < 1_000_000  # adapters and head only, not the 90 MB encoder
    loaded = bert.load_checkpoint(tmp_path / "lora")
    after = bert.predict_logits(loaded, valid, tokenizer=tokenizer, precision="fp32")
    np.testing.assert_allclose(after, before, atol=1e-5)
    base = bert.predict_logits(bert.load_ctr_model(seed=0), valid, tokenizer=tokenizer, precision="fp32")
    assert np.abs(base - before).max() > 1e-3  # training moved the adapters/head


def test_fgm_trains_and_is_refused_with_lora(tokenizer, encoded):
    train, valid = encoded.subset(range(16)), encoded.subset(range(32, 48))
    cfg = bert.TrainConfig(max_steps=2, fgm_epsilon=1.0, **FAST)
    z = {}
    for eps in (0.0, 1.0):
        model = bert.load_ctr_model(seed=0)
        c = bert.TrainConfig(max_steps=2, fgm_epsilon=eps, **FAST)
        r = bert.train_ctr_model(model, train, valid, c, tokenizer=tokenizer, device="cpu")
        assert r.optimizer_steps == 2
        z[eps] = bert.predict_logits(model, valid, tokenizer=tokenizer, precision="fp32")
    assert np.abs(z[0.0] - z[1.0]).max() > 1e-5  # the adversarial gradient changed the update
    lora = bert.add_lora(bert.load_ctr_model(seed=0))
    with pytest.raises(ValueError, match="FGM"):
        bert.train_ctr_model(lora, train, valid, cfg, tokenizer=tokenizer, device="cpu")


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        bert.load_checkpoint(tmp_path)
    (tmp_path / bert.WEIGHTS_FILE).write_bytes(b"")
    (tmp_path / bert.META_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="format"):
        bert.load_checkpoint(tmp_path)


# --- the tutorial loop's evaluation bug, and helpers ---------------------------------------------


def test_naive_argmax_over_dim2_fails_on_2d_logits():
    logits = torch.tensor([[0.3], [-1.2], [2.0]])
    with pytest.raises(IndexError, match="out of range"):
        bert.naive_argmax_predictions(logits)
    assert torch.argmax(logits, dim=1).tolist() == [0, 0, 0]  # "fixed": a constant, AUC 0.5


def test_pair_features_and_flops():
    u = np.eye(2, 3, dtype=np.float32)
    v = np.ones((2, 3), dtype=np.float32)
    f = bert.pair_features(u, v)
    assert f.shape == (2, 9) and f[0].tolist() == [1, 0, 0, 1, 1, 1, 1, 0, 0]
    with pytest.raises(ValueError):
        bert.pair_features(u, v[:1])
    assert bert.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bert.peak_bf16_flops("Tesla T4") == 65e12
    assert bert.peak_bf16_flops("Some CPU") is None
    assert bert.transformer_flops(10, 100) == 6000 and bert.transformer_flops(10, 100, training=False) == 2000
