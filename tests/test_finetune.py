"""ecrec.finetune: the training loop's correctness (accumulation, evaluation, early stopping, FGM)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ecrec import bert, finetune, pairs
from ecrec.text import load_tokenizer

ITEMS = pd.Series({
    "A": "WHITE HANGING HEART T-LIGHT HOLDER", "B": "RED WOOLLY HOTTIE WHITE HEART",
    "C": "JUMBO BAG RED RETROSPOT", "D": "PACK OF 72 RETROSPOT CAKE CASES",
    "E": "REGENCY CAKESTAND 3 TIER", "F": "SET OF 3 CAKE TINS PANTRY DESIGN",
})
FAST = dict(progress=False, precision="fp32", seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def _encoded(tokenizer, n: int, seed: int = 0) -> pairs.EncodedHistories:
    rng = np.random.default_rng(seed)
    ex = pd.DataFrame([{"hist_items": list(rng.choice(ITEMS.index, size=int(rng.integers(0, 3)), replace=False)),
                        "item_id": str(rng.choice(ITEMS.index)), "label": int(i % 2)} for i in range(n)])
    return pairs.encode_histories(tokenizer, ex, ITEMS, n_history=2, max_length=16)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("n,batch,accum", [(6, 2, 4), (5, 2, 3), (7, 3, 3)])
def test_accumulated_gradient_is_the_mean_over_examples(tiny_st, tokenizer, n, batch, accum):
    """6 pairs / batch 2 / accumulation 4 and 5 / 2 / 3: every example weighs 1/n, short windows too."""
    data = _encoded(tokenizer, n)
    model = bert.load_ctr_model(tiny_st, architecture="bi", dropout=0.0).eval()
    plan = finetune.amp_plan("cpu", "fp32")
    idx = np.arange(n)
    model.zero_grad()
    finetune.backward_window(model, data, [idx], device="cpu", plan=plan)
    full = _grads(model)
    model.zero_grad()
    micro = [idx[i : i + batch] for i in range(0, n, batch)][:accum]  # one window, uneven micro-batches
    assert sum(len(m) for m in micro) == n
    finetune.backward_window(model, data, micro, device="cpu", plan=plan)
    acc = _grads(model)
    for k in full:
        assert torch.allclose(full[k], acc[k], atol=1e-6, rtol=1e-4), k


def test_validation_auc_comes_from_logits_not_saturated_probabilities():
    y, z = np.array([0, 0, 1, 1]), np.array([36.0, 37.0, 40.0, 45.0])
    assert finetune.evaluate_logits(y, z)["auc"] == 1.0
    p = 1.0 / (1.0 + np.exp(-z))  # float64 sigmoid: all four round to 1.0
    assert roc_auc_score(y, p) == 0.75  # why the loop never scores probabilities
    ll = finetune.evaluate_logits(np.array([1, 0]), np.array([0.0, 0.0]))["log_loss"]
    assert ll == pytest.approx(np.log(2))
    big = finetune.evaluate_logits(np.array([0, 1]), np.array([800.0, 900.0]))["log_loss"]
    assert big == pytest.approx(400.0)  # (800 + 0) / 2, no overflow
    with pytest.raises(ValueError, match="non-finite"):
        finetune.evaluate_logits(y, np.array([0.0, np.inf, 1.0, 2.0]))


def test_early_stopping_considers_step_0_and_never_ends_below_it(tiny_st, tokenizer):
    train, valid = _encoded(tokenizer, 32, seed=1), _encoded(tokenizer, 24, seed=2)
    model = bert.load_ctr_model(tiny_st, architecture="bi")
    cfg = finetune.TrainConfig(batch_size=8, epochs=3, lr=5e-2, head_lr=5e-1, eval_every=2, patience=2, **FAST)
    res = finetune.train_ctr_model(model, train, valid, cfg, pad_id=tokenizer.pad_token_id, device="cpu")
    assert res.history[0]["step"] == 0 and res.start_valid_auc == res.history[0]["valid_auc"]
    assert res.best_valid_auc == max(h["valid_auc"] for h in res.history)
    assert res.best_valid_auc >= res.start_valid_auc
    end = finetune.evaluate_logits(valid.labels, finetune.predict_logits(model, valid))["auc"]
    assert end == pytest.approx(res.best_valid_auc)  # the model holds the best state, step 0 possibly
    assert len(res.steps) == res.optimizer_steps and {"loss", "grad_norm", "logit_std"} <= set(res.steps[0])


def test_training_is_deterministic(tiny_st, tokenizer):
    train, valid = _encoded(tokenizer, 24, seed=3), _encoded(tokenizer, 16, seed=4)
    cfg = finetune.TrainConfig(batch_size=8, epochs=1, lr=1e-3, grad_accum=2, **FAST)
    runs = []
    for _ in range(2):
        model = bert.load_ctr_model(tiny_st, architecture="bi", seed=5)
        res = finetune.train_ctr_model(model, train, valid, cfg, device="cpu")
        runs.append((res.history, finetune.predict_logits(model, valid)))
    assert runs[0][0] == runs[1][0] and np.array_equal(runs[0][1], runs[1][1])
    assert res.optimizer_steps == 2  # 3 batches of 8, 2 per step: windows of 2 and 1


def test_fgm_trains_with_full_finetuning_and_with_lora(tiny_st, tokenizer):
    train, valid = _encoded(tokenizer, 16, seed=5), _encoded(tokenizer, 16, seed=6)
    for lora in (False, True):
        model = bert.load_ctr_model(tiny_st, architecture="bi")
        if lora:
            bert.add_lora(model, r=2, alpha=4)
        before = model.head.weight.detach().clone()
        cfg = finetune.TrainConfig(batch_size=8, epochs=1, lr=1e-3, head_lr=1e-2, fgm_epsilon=0.5, **FAST)
        finetune.train_ctr_model(model, train, valid, cfg, device="cpu")
        res_state = model.head.weight.detach()
        assert res_state.shape == before.shape  # trained or kept the step-0 state; no error either way


def test_fgm_perturbation_has_norm_epsilon_per_sequence():
    g = torch.randn(3, 5, 4)
    g[1] *= 100
    r = finetune.FGM(0.5).perturbation(g)
    assert torch.allclose(r.flatten(1).norm(dim=1), torch.full((3,), 0.5), atol=1e-6)
    assert torch.allclose(torch.nn.functional.cosine_similarity(r.flatten(1), g.flatten(1)), torch.ones(3), atol=1e-6)
    with pytest.raises(ValueError):
        finetune.FGM(0.0)


def test_config_and_precision_errors():
    for bad, match in [({"batch_size": 0}, "batch_size"), ({"warmup_ratio": 1.0}, "warmup_ratio"),
                       ({"fgm_epsilon": -1}, "fgm_epsilon"), ({"head_lr": 0.0}, "head_lr"),
                       ({"monitor": "acc"}, "monitor"), ({"max_steps": 0}, "max_steps")]:
        with pytest.raises(ValueError, match=match):
            finetune.TrainConfig(**bad)
    assert finetune.amp_plan("cpu", "auto").name == "fp32"  # same numbers on every CPU
    with pytest.raises(ValueError, match="CUDA"):
        finetune.amp_plan("cpu", "fp16")
    with pytest.raises(ValueError, match="precision"):
        finetune.amp_plan("cpu", "int8")


def test_minilm_bi_encoder_overfits_256_pairs(tokenizer):
    """The real model can memorise 256 random labels on distinct product texts (train AUC > 0.95)."""
    from ecrec.data import load_clean_online_retail
    from ecrec.features import item_catalog

    catalog = item_catalog(load_clean_online_retail()[0])
    rng = np.random.default_rng(0)
    items = catalog.sample(256, random_state=0)
    texts = pd.Series(items.description.to_numpy(), index=items.item_id.to_numpy())
    ex = pd.DataFrame({"hist_items": [[] for _ in range(256)], "item_id": texts.index,
                       "label": rng.permutation(np.repeat([0, 1], 128))})
    data = pairs.encode_histories(tokenizer, ex, texts, n_history=1, max_length=16)
    model = bert.load_ctr_model("minilm", architecture="bi", dropout=0.0, seed=0)
    cfg = finetune.TrainConfig(batch_size=32, epochs=8, lr=3e-4, head_lr=3e-2, warmup_ratio=0.0,
                               patience=8, **FAST)
    res = finetune.train_ctr_model(model, data, data, cfg, pad_id=tokenizer.pad_token_id, device="cpu")
    assert res.best_valid_auc > 0.95, [round(h["valid_auc"], 3) for h in res.history]
    assert res.start_valid_auc < 0.7  # it was learned, not there at the start


def test_fastest_precision_is_bf16_only_on_cpus_with_bf16(monkeypatch):
    monkeypatch.setattr(finetune, "cpu_bf16_supported", lambda: True)
    assert finetune.fastest_precision("cpu") == "bf16"
    assert finetune.amp_plan("cpu", finetune.fastest_precision("cpu")).dtype == torch.bfloat16
    monkeypatch.setattr(finetune, "cpu_bf16_supported", lambda: False)
    assert finetune.fastest_precision("cpu") == "fp32"
    assert finetune.amp_plan("cpu", "auto").name == "fp32"  # "auto" itself stays fp32 on every CPU


def test_train_ctr_model_pieces_stay_short():
    """22.14: the loop is split into pieces under ~100 lines each."""
    import inspect

    for fn in (finetune.train_ctr_model, finetune._set_up, finetune._optimizer_step, finetune._EarlyStopping,
               finetune.backward_window):
        assert len(inspect.getsource(fn).splitlines()) <= 100, fn.__name__


@pytest.mark.parametrize("lora", [False, True])
def test_the_checkpoint_written_during_training_reloads_the_best_model(tiny_st, tokenizer, tmp_path, lora):
    """Chapter 04's former section 4.11, as a test: the best state is saved atomically while training
    (adapters and head only under LoRA) and reloading it reproduces the returned model's logits."""
    train, valid = _encoded(tokenizer, 24, seed=7), _encoded(tokenizer, 16, seed=8)
    model = bert.load_ctr_model(tiny_st, architecture="bi", seed=3)
    if lora:
        model = bert.add_lora(model, r=2, alpha=4)
    cfg = finetune.TrainConfig(batch_size=8, epochs=2, lr=1e-2, head_lr=1e-1, eval_every=1, patience=5, **FAST)
    res = finetune.train_ctr_model(model, train, valid, cfg, pad_id=tokenizer.pad_token_id, device="cpu",
                                   checkpoint_dir=tmp_path / "ckpt", checkpoint_meta={"regime": "test"})
    again = bert.load_checkpoint(tmp_path / "ckpt")
    a = finetune.predict_logits(model, valid, pad_id=tokenizer.pad_token_id, precision="fp32")
    b = finetune.predict_logits(again, valid, pad_id=tokenizer.pad_token_id, precision="fp32")
    assert np.abs(a - b).max() < 1e-5
    assert finetune.evaluate_logits(valid.labels, b)["auc"] == pytest.approx(res.best_valid_auc)
    assert not list((tmp_path / "ckpt").glob("*.tmp"))  # atomic: no temporary file left behind
