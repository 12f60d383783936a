"""ecrec.io, ecrec.profiles and ecrec.text: atomic outputs, profiles, the offline model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ecrec import io, profiles, text


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.json"
    io.atomic_write_text(target, "old")

    def broken(path):
        path.write_text("half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"], "temporary file left behind"


def test_write_metrics_records_context(tmp_path):
    started = 1_000.0
    path = io.write_metrics(
        tmp_path, {"auc": np.float32(0.75), "curve": np.array([1, 2])},
        profile="smoke", seed=3, started=started, device="cpu",
    )
    record = json.loads(path.read_text())
    assert record["metrics"] == {"auc": 0.75, "curve": [1, 2]}
    assert (record["profile"], record["seed"], record["device"]) == ("smoke", 3, "cpu")
    assert record["wall_time_s"] > 0
    assert record["versions"]["numpy"] == np.__version__
    assert io.read_metrics(tmp_path) == record


def test_write_metrics_refuses_nan(tmp_path):
    with pytest.raises(ValueError, match="finite"):
        io.write_metrics(tmp_path, {"auc": math.nan}, profile="smoke", seed=0, started=0.0, device="cpu")
    assert not (tmp_path / "metrics.json").exists()


def test_resolve_profile(monkeypatch):
    monkeypatch.setattr(profiles, "has_cuda", lambda: False)
    assert profiles.resolve_profile("auto") == "smoke"
    assert profiles.resolve_profile("auto", ("smoke", "cpu", "full")) == "cpu"
    assert profiles.resolve_profile("full") == "full"
    monkeypatch.setattr(profiles, "has_cuda", lambda: True)
    assert profiles.resolve_profile("auto", ("smoke", "cpu", "full")) == "full"
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        profiles.resolve_profile("fast")


def test_pick_sizes(monkeypatch):
    monkeypatch.setattr(profiles, "has_cuda", lambda: False)
    sizes = {"smoke": {"n": 10, "epochs": 1}, "full": {"n": 1000, "epochs": 5}}
    assert profiles.pick_sizes("auto", sizes) == ("smoke", {"n": 10, "epochs": 1})
    assert profiles.pick_sizes("full", sizes, {"epochs": 2}) == ("full", {"n": 1000, "epochs": 2})
    with pytest.raises(ValueError, match=r"unknown size\(s\) \['batch'\]"):
        profiles.pick_sizes("smoke", sizes, {"batch": 4})
    with pytest.raises(ValueError, match="same sizes"):
        profiles.pick_sizes("smoke", {"smoke": {"n": 1}, "full": {"m": 2}})


@pytest.fixture(scope="module")
def minilm():
    return text.load_tokenizer(), text.load_encoder()


def test_encode_texts_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    texts = ["WHITE HANGING HEART T-LIGHT HOLDER", "REGENCY CAKESTAND 3 TIER", "JUMBO BAG RED RETROSPOT", "PEN"]
    tokenizer, model = minilm
    ours = text.encode_texts(texts, tokenizer=tokenizer, model=model, batch_size=3)
    oracle = SentenceTransformer(text.model_path(), device="cpu").encode(texts, normalize_embeddings=True)
    assert ours.shape == (4, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, oracle, atol=2e-5)
    # Length-sorted batching must not change any vector.
    one_by_one = np.vstack([text.encode_texts([t], tokenizer=tokenizer, model=model) for t in texts])
    np.testing.assert_allclose(ours, one_by_one, atol=2e-5)


def test_encode_texts_rejects_non_strings(minilm):
    tokenizer, model = minilm
    with pytest.raises(TypeError, match="element 1 is float"):
        text.encode_texts(["ok", float("nan")], tokenizer=tokenizer, model=model)
