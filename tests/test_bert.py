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


def tiny_st_folder(folder, mode: str, normalize: bool) -> str:
    """A tiny random BERT saved as a sentence-transformers folder with ``mode`` pooling ("mean" or "cls")."""
    import shutil

    torch.manual_seed(1)
    BertModel(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).save_pretrained(folder)
    minilm = model_path("minilm")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                 "sentence_bert_config.json"):
        shutil.copy(f"{minilm}/{name}", folder / name)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean", "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    return str(folder)


@pytest.mark.parametrize("mode,normalize", [("mean", True), ("cls", True), ("cls", False), ("mean", False)])
def test_pooling_matches_sentence_transformers_output(tmp_path, tokenizer, mode, normalize):
    """Each pooling convention gives sentence-transformers' own vectors (the oracle), in both models:
    a CLS checkpoint reads the [CLS] token's hidden state, never BERT's pooler."""
    from sentence_transformers import SentenceTransformer

    from ecrec import reviews

    folder = tiny_st_folder(tmp_path / "st", mode, normalize)
    assert bert.checkpoint_pooling(folder) == bert.Pooling(mode, normalize)
    texts = ["red heart", "a much longer text about cake tins and tea", "ok"]
    oracle = SentenceTransformer(folder, device="cpu").encode(texts, convert_to_numpy=True)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    model = bert.load_ctr_model(folder, architecture="cross").eval()
    assert not any("pooler" in n for n, _ in model.named_parameters())  # not loaded, so never read
    review_model = reviews.load_review_model(reviews.REVIEW_TASKS, folder).eval()
    with torch.no_grad():
        ours = model.pool(**batch).numpy()
        ours_reviews = review_model.features(batch["input_ids"], batch["attention_mask"]).numpy()
    assert np.abs(ours - oracle).max() < 1e-5
    assert np.abs(ours_reviews - oracle).max() < 1e-5
    if mode == "cls":  # by hand: the first token's last hidden state
        with torch.no_grad():
            first = model.encoder(**batch).last_hidden_state[:, 0]
        expected = torch.nn.functional.normalize(first, dim=-1) if normalize else first
        assert np.abs(ours - expected.numpy()).max() < 1e-5


def test_pooler_mode_without_a_pooler_is_refused():
    out = BertModel(tiny_config(), add_pooling_layer=False)(input_ids=torch.tensor([[101, 102]]))
    with pytest.raises(ValueError, match="pooler"):
        bert.pool_output(out, torch.ones(1, 2, dtype=torch.long), bert.Pooling("pooler", False))
    with pytest.raises(ValueError, match="pooling mode"):
        bert.Pooling("max")


def test_cls_checkpoint_keeps_its_pooler(tmp_path, tokenizer):
    """A plain BERT folder (no sentence-transformers pooling) with a 2-label head loads as a 1-logit model."""
    BertForSequenceClassification(tiny_config(num_labels=2)).save_pretrained(tmp_path)
    assert bert.checkpoint_pooling(str(tmp_path)) == bert.Pooling("pooler", normalize=False)
    model = bert.load_ctr_model(str(tmp_path), architecture="cross").eval()
    assert any("pooler" in n for n, _ in model.named_parameters())
    batch = tokenizer(["red heart"], ["cake"], return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).shape == (1,)  # our one-logit head, not the checkpoint's 2-label classifier
        out = model.encoder(**batch)
        assert torch.allclose(model.pool(**batch), out.pooler_output)  # BERT's trained pooler, dense + tanh


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


def test_bi_encoder_logits_encode_each_item_once_and_equal_the_batched_forward(tiny_st, tokenizer):
    """predict_logits on a bi-encoder scores from each distinct item's vector, encoded once: the same
    logits as model(**batch) batch by batch (fp32, eval mode), at any batch size, order kept."""
    ex = _examples(37, seed=3)
    enc = pairs.encode_histories(tokenizer, ex, ITEMS, n_history=2, max_length=16)
    model = bert.load_ctr_model(tiny_st, architecture="bi").eval()
    torch.nn.init.normal_(model.head.weight, std=1.0)  # a head that spreads the logits
    with torch.no_grad():
        direct = np.concatenate([model(**enc.batch(np.arange(s, min(s + 5, len(enc))))).numpy()
                                 for s in range(0, len(enc), 5)])
    calls = []
    model.encoder.register_forward_hook(lambda _m, _a, kw, _out: calls.append(len(kw["input_ids"])), with_kwargs=True)
    for batch_size in (4, 128):
        calls.clear()
        logits = finetune.predict_logits(model, enc, precision="fp32", batch_size=batch_size)
        np.testing.assert_allclose(logits, direct, atol=1e-5)
        assert sum(calls) == len(np.unique(np.r_[enc.cand, enc.hist[enc.hist >= 0]]))  # each item once
    assert model.training is False
    empty = pairs.EncodedHistories(enc.item_tokens, enc.cand[:0], enc.hist[:0], enc.labels[:0])
    assert finetune.predict_logits(model, empty).shape == (0,)


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
    layer_norm = next(p for n, p in model.named_parameters() if "LayerNorm" in n)
    layer_norm.requires_grad_(True)
    with pytest.raises(ValueError, match="trainable pretrained"):
        bert.save_checkpoint(model, tmp_path / "stray")
    layer_norm.requires_grad_(False)
    with pytest.raises(TypeError, match="CrossEncoderCtr"):
        bert.save_checkpoint(model.encoder.merge_and_unload(), tmp_path / "merged_bare")


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


def _save_and_reload(model, enc, folder):
    before = finetune.predict_logits(model, enc, precision="fp32")
    bert.save_checkpoint(model, folder)
    after = finetune.predict_logits(bert.load_checkpoint(folder), enc, precision="fp32")
    return float(np.abs(before - after).max())


@pytest.mark.parametrize("state", ["plain", "lora", "merged with merge_lora", "merged and reassigned",
                                   "merged but not reassigned"])
def test_checkpoint_round_trip_for_every_state(tiny_st, tokenizer, tmp_path, state):
    """Every state a model can be in comes back from its checkpoint, or is refused at save time."""
    model, enc = _trained_tiny(tiny_st, tokenizer, "bi", lora=state != "plain")
    if state == "merged with merge_lora":
        bert.merge_lora(model)
    elif state == "merged and reassigned":
        model.encoder = model.encoder.merge_and_unload()
    elif state == "merged but not reassigned":
        before = finetune.predict_logits(model, enc, precision="fp32")
        model.encoder.merge_and_unload()  # the common slip: the merged encoder is returned, not kept
        with pytest.raises(ValueError, match=r"not assigned back.*merge_lora\(model\)"):
            bert.save_checkpoint(model, tmp_path / "bad")
        assert not (tmp_path / "bad" / bert.WEIGHTS_FILE).exists()
        bert.merge_lora(model)  # what the message says to do; the merged weights are kept
        assert np.abs(finetune.predict_logits(model, enc, precision="fp32") - before).max() < 1e-4
    assert _save_and_reload(model, enc, tmp_path / "ok") < 1e-4


def test_format_2_checkpoint_reads_its_cls_as_the_pooler(tmp_path, tokenizer):
    """Format 2 named BERT's pooler "cls": such a folder still loads, reading the pooler it was trained with."""
    folder = tmp_path / "bert"
    BertModel(tiny_config()).save_pretrained(folder)
    model = bert.load_ctr_model(str(folder), architecture="cross").eval()
    bert.save_checkpoint(model, tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / bert.META_FILE).read_text())
    assert meta["format"] == bert.CHECKPOINT_FORMAT and meta["pooling"]["mode"] == "pooler"
    meta |= {"format": "ecrec-text-ctr/2", "pooling": {"mode": "cls", "normalize": False}}
    (tmp_path / "ckpt" / bert.META_FILE).write_text(json.dumps(meta))
    again = bert.load_checkpoint(tmp_path / "ckpt")
    assert again.pooling == bert.Pooling("pooler", False)
    batch = tokenizer(["red heart"], ["cake"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(again(**batch), model(**batch), atol=1e-6)


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


def test_bi_probe_folds_the_similarity_into_the_head():
    """BiProbe = scikit-learn's LR on [s * sum(u*v), u, v, u*v], folded into one linear head on [u, v, u*v]."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    u = rng.normal(size=(400, 8))
    v = rng.normal(size=(400, 8))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    x = bert.pair_features(u, v).astype(np.float64)
    y = (rng.random(400) < 1 / (1 + np.exp(-4 * (u * v).sum(1)))).astype(int)  # only the cosine matters
    probe = bert.BiProbe(C=0.5, similarity_scale=10.0).fit(x, y)
    oracle = LogisticRegression(C=0.5, max_iter=1000).fit(np.column_stack([10.0 * x[:, 16:].sum(1), x]), y)
    assert probe.decision_function(x) == pytest.approx(
        oracle.decision_function(np.column_stack([10.0 * x[:, 16:].sum(1), x])), abs=1e-6)
    assert probe.coef_.shape == (1, 24) and probe.similarity_weight_ == pytest.approx(10.0 * oracle.coef_[0, 0])
    # a strong penalty leaves only the (unpenalised) similarity: the ranking is the cosine's, exactly
    tight = bert.BiProbe(C=1e-8, similarity_scale=1e4).fit(x, y)
    assert np.array_equal(np.argsort(tight.decision_function(x)), np.argsort((u * v).sum(1)))
    with pytest.raises(ValueError, match="3d"):
        bert.BiProbe().fit(x[:, :5], y)
    with pytest.raises(ValueError, match="one class"):
        bert.BiProbe().fit(x, np.zeros(400))
    with pytest.raises(ValueError, match="> 0"):
        bert.BiProbe(C=0)


def test_bi_probe_picks_its_penalty_by_cross_validation():
    from sklearn.linear_model import LogisticRegressionCV

    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(300, 6)), rng.normal(size=(300, 6))
    x = bert.pair_features(u, v).astype(np.float64)
    y = (rng.random(300) < 1 / (1 + np.exp(-2 * (u * v).sum(1)))).astype(int)
    probe = bert.BiProbe(similarity_scale=10.0, Cs=(1e-3, 1e-1, 10.0)).fit(x, y)
    xs = np.column_stack([10.0 * x[:, 12:].sum(1), x])
    oracle = LogisticRegressionCV(Cs=[1e-3, 1e-1, 10.0], cv=3, scoring="roc_auc", l1_ratios=(0.0,), max_iter=1000,
                                  use_legacy_attributes=False).fit(xs, y)
    assert probe.C_ == float(np.ravel(oracle.C_)[0])
    assert probe.decision_function(x) == pytest.approx(oracle.decision_function(xs), abs=1e-6)
    assert np.array_equal(bert.BiProbe().fit(x, y).coef_, bert.BiProbe().fit(x, y).coef_)  # deterministic folds
    one_process = bert.BiProbe(similarity_scale=10.0, Cs=(1e-3, 1e-1, 10.0), n_jobs=1).fit(x, y)
    assert one_process.C_ == probe.C_  # the folds in worker processes: the same fit, up to float sums
    np.testing.assert_allclose(one_process.coef_, probe.coef_, rtol=0, atol=1e-10)
    few = np.zeros(300, int)
    few[:2] = 1  # 2 positives < 3 folds: the fixed C = 1 instead
    assert bert.BiProbe().fit(x, few).C_ == 1.0


def test_bi_probe_warm_start_reproduces_the_probe(tiny_st, tokenizer):
    ex = _examples(40)
    enc = pairs.encode_histories(tokenizer, ex, ITEMS, n_history=2, max_length=16)
    model = bert.load_ctr_model(tiny_st, architecture="bi").eval()
    vectors = finetune.item_vectors(model, enc.item_tokens)
    x = bert.bi_features(vectors, enc.hist, enc.cand)
    probe = bert.BiProbe().fit(x, enc.labels)
    bert.init_head_from_probe(model, probe.coef_, probe.intercept_)
    logits = finetune.predict_logits(model, enc, precision="fp32")
    assert logits == pytest.approx(probe.decision_function(x), abs=1e-4)
