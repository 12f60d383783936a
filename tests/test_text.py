"""ecrec.text's vector cache: keyed by model and text, invalidated when either changes."""

from __future__ import annotations

import numpy as np
import pytest

from ecrec import text


@pytest.fixture
def counting(monkeypatch):
    """Wrap encode_texts to record which texts were actually encoded."""
    calls: list[list[str]] = []
    real = text.encode_texts

    def encode(texts, *args, **kwargs):
        calls.append(list(texts))
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(text, "encode_texts", encode)
    return calls


def test_cache_equals_the_encoder_and_encodes_each_text_once(tmp_path, counting):
    texts = ["jumbo bag red retrospot", "white hanging heart t-light holder", "jumbo bag red retrospot"]
    first = text.cached_text_vectors(texts, cache_dir=tmp_path, max_length=24)
    direct = text.encode_texts(["jumbo bag red retrospot", "white hanging heart t-light holder"], max_length=24)
    assert first.shape == (3, 384) and first.dtype == np.float32
    np.testing.assert_allclose(first[[0, 1]], direct, atol=1e-5)
    np.testing.assert_array_equal(first[0], first[2])  # the same text, the same row
    assert counting[0] == texts[:2]  # a repeated text is encoded once
    again = text.cached_text_vectors(texts[::-1], cache_dir=tmp_path, max_length=24)
    np.testing.assert_array_equal(again, first[::-1])
    assert len(counting) == 2  # the second call encoded nothing (the 2nd call above is the oracle's)


def test_a_changed_text_is_encoded_and_the_rest_served(tmp_path, counting):
    text.cached_text_vectors(["pink polkadot cup", "red cup"], cache_dir=tmp_path, max_length=16)
    out = text.cached_text_vectors(["pink polkadot cup", "red cups"], cache_dir=tmp_path, max_length=16)
    assert counting[-1] == ["red cups"]
    np.testing.assert_allclose(out[1], text.encode_texts(["red cups"], max_length=16)[0], atol=1e-5)


def test_a_changed_model_or_length_gets_its_own_entry(tmp_path, counting, monkeypatch):
    text.cached_text_vectors(["red cup"], cache_dir=tmp_path, max_length=16)
    text.cached_text_vectors(["red cup"], cache_dir=tmp_path, max_length=8)  # other truncation: re-encoded
    assert len(counting) == 2
    monkeypatch.setattr(text, "model_fingerprint", lambda name="minilm": "0123456789abcdef")
    text.cached_text_vectors(["red cup"], cache_dir=tmp_path, max_length=16)  # "new weights": re-encoded
    assert len(counting) == 3
    assert len(list((tmp_path / "text_vectors").glob("*.npz"))) == 3


def test_fingerprint_follows_the_files(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 4}')
    (folder / "model.safetensors").write_bytes(b"\x00" * 10)
    monkeypatch.setattr(text, "model_path", lambda name: str(folder))
    before = text.model_fingerprint("x")
    (folder / "model.safetensors").write_bytes(b"\x00" * 9 + b"\x01")
    assert text.model_fingerprint("x") != before
    assert len(before) == 16


def test_bad_input_and_foreign_cache(tmp_path):
    with pytest.raises(TypeError, match="element 1 is int"):
        text.cached_text_vectors(["a", 3], cache_dir=tmp_path)
    text.cached_text_vectors(["a"], cache_dir=tmp_path, max_length=8)
    path = next((tmp_path / "text_vectors").glob("*.npz"))
    np.savez(path, format="other", fingerprint="x", keys=np.zeros((0, 16), np.uint8), vectors=np.zeros((0, 4)))
    with pytest.raises(ValueError, match="delete it"):
        text.cached_text_vectors(["a"], cache_dir=tmp_path, max_length=8)
