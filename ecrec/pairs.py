"""CTR examples as text, tokenized once: the inputs of chapter 04's text models.

Two shapes of input, one per architecture (:mod:`ecrec.bert`):

* **cross-encoder** (:class:`EncodedPairs`): one sequence per example,
  ``[CLS] history [SEP] candidate [SEP]``, where the history lists the
  descriptions of the user's most recent purchases, newest first
  (:func:`build_text_pairs`, :func:`encode_pairs`);
* **bi-encoder** (:class:`EncodedHistories`): every catalogue description is
  tokenized once; an example is the candidate's row in that table and the rows
  of its ``n_history`` most recent purchases (:func:`encode_histories`). The
  user vector is pooled from the history's item vectors, so item vectors can
  be computed once and cached.

Both hold unpadded token ids and give the trainer the same interface:
``len()``, ``labels`` (float32 0/1), ``lengths`` (tokens per example, for
length-grouped batching) and ``batch(idx, pad_id)`` -> the model's keyword
arguments as tensors, padded to the batch's longest sequence (dynamic padding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ecrec.metrics import _check_labels
from ecrec.schema import HIST_ITEMS, ITEM_ID, LABEL

__all__ = [
    "NO_HISTORY",
    "history_text",
    "build_text_pairs",
    "EncodedPairs",
    "encode_pairs",
    "EncodedHistories",
    "encode_histories",
    "length_grouped_batches",
    "sorted_batches",
]

NO_HISTORY = "no earlier purchases"



def history_text(
    hist_items: Sequence[str] | None,
    descriptions: Mapping[str, str],
    n_items: int = 5,
    sep: str = " ; ",
) -> str:
    """The user side of a pair: descriptions of the ``n_items`` most recent purchases.

    Args:
        hist_items: item ids bought strictly before the example's time, newest
            first (the ``hist_items`` column of chapter 03's examples).
        descriptions: item id -> description.
        n_items: how many recent items to keep (>= 1).
        sep: put between descriptions.

    Returns:
        The descriptions joined by ``sep``, newest first, lower-cased; or
        :data:`NO_HISTORY` for a user without earlier purchases.

    Raises:
        ValueError: ``n_items`` < 1.
        KeyError: an item id has no description.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    items = list(hist_items)[:n_items] if hist_items is not None else []
    if not items:
        return NO_HISTORY
    missing = [i for i in items if i not in descriptions]
    if missing:
        raise KeyError(f"no description for history item(s) {missing[:5]}")
    return sep.join(str(descriptions[i]).lower() for i in items)


def _check_examples(examples: pd.DataFrame, descriptions: Mapping[str, str]) -> np.ndarray:
    needed = {HIST_ITEMS, ITEM_ID, LABEL}
    missing = sorted(needed - set(examples.columns))
    if missing:
        raise ValueError(f"examples lack column(s) {missing}; need {sorted(needed)} (chapter 03's dataset)")
    labels = np.asarray(examples[LABEL], dtype=np.float64)
    _check_labels(labels, "label")  # 0 = not bought, 1 = bought
    unknown = sorted({i for i in examples[ITEM_ID] if i not in descriptions})
    if unknown:
        raise ValueError(f"{len(unknown)} candidate item(s) have no description, e.g. {unknown[:5]}")
    return labels


def build_text_pairs(
    examples: pd.DataFrame,
    descriptions: Mapping[str, str] | pd.Series,
    n_history: int = 5,
) -> pd.DataFrame:
    """Turn CTR examples into (history text, candidate text, label) rows.

    Args:
        examples: frame with columns ``hist_items`` (list of item ids, newest
            first), ``item_id`` (str) and ``label`` (0/1).
        descriptions: item id -> description (a dict or a Series indexed by id).
        n_history: most recent purchases kept in ``text_a``.

    Returns:
        Frame with the same index and columns ``text_a`` (str), ``text_b``
        (str, lower-cased description) and ``label`` (float32 0/1).

    Raises:
        ValueError: a column is missing, labels outside {0, 1}, or candidate
            items without a description.
        KeyError: a history item without a description.
    """
    if isinstance(descriptions, pd.Series):
        descriptions = descriptions.to_dict()
    labels = _check_examples(examples, descriptions)
    text_a = [history_text(h, descriptions, n_history) for h in examples[HIST_ITEMS]]
    text_b = [str(descriptions[i]).lower() for i in examples[ITEM_ID]]
    return pd.DataFrame(
        {"text_a": text_a, "text_b": text_b, "label": labels.astype(np.float32)}, index=examples.index
    )


def _pad(rows: list[list[int]], pad_id: int):
    """(len(rows), longest) int64 ids and 0/1 mask, padded on the right."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


@dataclass
class EncodedPairs:
    """Tokenized pairs for a cross-encoder, unpadded, plus float labels.

    ``input_ids[i]`` and ``token_type_ids[i]`` have the same length
    ``lengths[i] <= max_length``; ``labels`` is float32 (n,).
    """

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: np.ndarray
    max_length: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        """int64 (n,): tokens per example, special tokens included."""
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))

    def batch(self, idx: Sequence[int], pad_id: int = 0) -> dict:
        """The examples ``idx`` as model inputs: ``input_ids``, ``attention_mask``,
        ``token_type_ids``, each int64 (len(idx), longest in the batch)."""
        import torch

        ids, mask = _pad([self.input_ids[i] for i in idx], pad_id)
        types, _ = _pad([self.token_type_ids[i] for i in idx], 0)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types.to(torch.long)}

    def subset(self, idx: Sequence[int]) -> EncodedPairs:
        """A new EncodedPairs holding the examples ``idx`` (in that order)."""
        idx = list(idx)
        return EncodedPairs(
            [self.input_ids[i] for i in idx], [self.token_type_ids[i] for i in idx],
            self.labels[idx], self.max_length,
        )


def encode_pairs(
    tokenizer,
    text_a: Sequence[str],
    text_b: Sequence[str],
    labels: Sequence[float] | np.ndarray,
    max_length: int = 64,
) -> EncodedPairs:
    """Tokenize all pairs once, truncated to ``max_length`` tokens, without padding.

    Truncation is ``"longest_first"``: tokens are removed from the longer of
    the two texts until the pair fits, so a long history is cut before the
    (short) candidate description is touched, and both always fit.

    Args:
        tokenizer: a fast Hugging Face tokenizer (``ecrec.text.load_tokenizer``).
        text_a, text_b: n strings each.
        labels: n values in {0, 1}.
        max_length: tokens per pair, special tokens included (>= 8).

    Returns:
        :class:`EncodedPairs`, every pair ``<= max_length`` tokens.

    Raises:
        ValueError: lengths differ, no examples, labels outside {0, 1}, or
            ``max_length`` < 8.
        TypeError: a text is not a string.
    """
    text_a, text_b = list(text_a), list(text_b)
    y = np.asarray(labels, dtype=np.float32)
    if not (len(text_a) == len(text_b) == len(y)):
        raise ValueError(f"text_a, text_b, labels differ in length: {len(text_a)}, {len(text_b)}, {len(y)}")
    if not text_a:
        raise ValueError("no examples to encode")
    if max_length < 8:
        raise ValueError(f"max_length must be >= 8 tokens, got {max_length}")
    _check_labels(y, "labels")
    for name, texts in (("text_a", text_a), ("text_b", text_b)):
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"{name}[{bad}] is {type(texts[bad]).__name__}, not str")
    enc = tokenizer(
        text_a, text_b, truncation="longest_first", max_length=max_length,
        padding=False, return_token_type_ids=True,
    )
    out = EncodedPairs(list(enc["input_ids"]), list(enc["token_type_ids"]), y, max_length)
    assert out.lengths.max() <= max_length
    return out


@dataclass
class EncodedHistories:
    """Examples for a bi-encoder: rows into a table of tokenized item texts.

    ``item_tokens[j]``: token ids of item ``j``'s description (unpadded);
    ``cand`` int64 (n,): the candidate's row; ``hist`` int64 (n, h): rows of
    the ``h`` most recent purchases, newest first, ``-1`` where the user has
    fewer; ``labels`` float32 (n,).
    """

    item_tokens: list[list[int]]
    cand: np.ndarray
    hist: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.cand)

    @property
    def lengths(self) -> np.ndarray:
        """int64 (n,): tokens the example reads (candidate plus its history items)."""
        per_item = np.fromiter((len(t) for t in self.item_tokens), dtype=np.int64, count=len(self.item_tokens))
        hist_tokens = np.where(self.hist >= 0, per_item[np.maximum(self.hist, 0)], 0).sum(1)
        return per_item[self.cand] + hist_tokens

    def batch(self, idx: Sequence[int], pad_id: int = 0) -> dict:
        """Model inputs for the examples ``idx``: the batch's distinct items, tokenized
        (``input_ids``, ``attention_mask``: (m, longest)), and ``cand`` (len(idx),)
        and ``hist`` (len(idx), h) as rows of those m items (-1: no item)."""
        import torch

        idx = np.asarray(idx)
        cand, hist = self.cand[idx], self.hist[idx]
        rows = np.unique(np.concatenate([cand, hist[hist >= 0]]))
        ids, mask = _pad([self.item_tokens[j] for j in rows], pad_id)
        local = {int(j): k for k, j in enumerate(rows)}
        to_local = np.vectorize(lambda j: local.get(int(j), -1), otypes=[np.int64])
        return {
            "input_ids": ids, "attention_mask": mask,
            "cand": torch.as_tensor(to_local(cand)), "hist": torch.as_tensor(to_local(hist).reshape(hist.shape)),
        }


def encode_histories(
    tokenizer,
    examples: pd.DataFrame,
    item_texts: pd.Series,
    n_history: int = 5,
    max_length: int = 32,
) -> EncodedHistories:
    """Tokenize every item text once and index the examples into that table.

    Args:
        tokenizer: a fast Hugging Face tokenizer.
        examples: chapter 03's rows: ``hist_items`` (ids, newest first),
            ``item_id``, ``label``.
        item_texts: item id -> description (the catalogue); lower-cased here.
        n_history: most recent purchases pooled into the user vector (>= 1).
        max_length: tokens per item text, special tokens included (>= 4).

    Returns:
        :class:`EncodedHistories` whose rows follow ``item_texts``' order.

    Raises:
        ValueError: missing columns, labels outside {0, 1}, a candidate
            without a text, ``n_history`` < 1 or ``max_length`` < 4.
        KeyError: a history item without a text.
    """
    if n_history < 1 or max_length < 4:
        raise ValueError(f"n_history must be >= 1 and max_length >= 4, got {n_history}, {max_length}")
    pos = dict(zip(item_texts.index, range(len(item_texts)), strict=True))
    labels = _check_examples(examples, pos)
    hist = np.full((len(examples), n_history), -1, dtype=np.int64)
    for r, items in enumerate(examples[HIST_ITEMS]):
        items = list(items)[:n_history] if items is not None else []
        try:
            hist[r, : len(items)] = [pos[i] for i in items]
        except KeyError as exc:
            raise KeyError(f"no text for history item {exc.args[0]!r} (row {r})") from None
    cand = np.fromiter((pos[i] for i in examples[ITEM_ID]), dtype=np.int64, count=len(examples))
    tokens = tokenizer([str(t).lower() for t in item_texts], truncation=True, max_length=max_length)["input_ids"]
    return EncodedHistories(list(tokens), cand, hist, labels.astype(np.float32))


def length_grouped_batches(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    mega_batch_mult: int = 50,
) -> list[np.ndarray]:
    """Shuffled batches of similar lengths, so that dynamic padding pads little.

    The indices are shuffled, cut into mega-batches of ``batch_size *
    mega_batch_mult``, each mega-batch is sorted by length (longest first) and
    cut into batches, and the batch order is shuffled again: the idea of
    transformers' ``LengthGroupedSampler``, kept random enough for SGD.

    Args:
        lengths: (n,) token counts.
        batch_size: examples per batch (>= 1); the last batch may be smaller.
        seed: the shuffle's seed (pass ``seed + epoch`` for a new order each epoch).

    Returns:
        A list of int64 index arrays covering ``range(n)`` exactly once.

    Raises:
        ValueError: ``batch_size`` or ``mega_batch_mult`` < 1.
    """
    if batch_size < 1 or mega_batch_mult < 1:
        raise ValueError(f"batch_size and mega_batch_mult must be >= 1, got {batch_size}, {mega_batch_mult}")
    lengths = np.asarray(lengths)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(lengths))
    mega = batch_size * mega_batch_mult
    batches = []
    for start in range(0, len(perm), mega):
        chunk = perm[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i].astype(np.int64) for i in order]


def sorted_batches(lengths: Sequence[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Deterministic batches of indices sorted by length, for inference.

    Raises:
        ValueError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size].astype(np.int64) for i in range(0, len(order), batch_size)]
