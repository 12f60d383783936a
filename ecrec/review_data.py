"""Chapter 07: the review data and its tasks.

Women's E-Commerce Clothing Reviews (Brooks, 2018; :func:`ecrec.data.load_reviews`)
carries three labels per review, and the text speaks to each of them:

* **recommended** (``Recommended IND``, 0/1): binary, the click-like label;
* **rating** (``Rating``, 1-5 stars): here **5 classes** (softmax, cross-entropy);
* **department** (``Department Name``, 6 values): the topic.

The pieces: :func:`join_review_text` (one text per review, the rule stated
there) and :func:`prepare_reviews`; :func:`stratified_split`,
:func:`stratified_sample` and :func:`nested_samples` (training sets of growing
size, each inside the next, for learning curves); :class:`ReviewTask` /
:data:`REVIEW_TASKS` and :func:`encode_labels` (labels checked and coded
0..K-1); :class:`EncodedReviews` / :func:`encode_reviews` (tokenized once).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

__all__ = ["TEXT", "ReviewTask", "REVIEW_TASKS", "DEPARTMENTS", "join_review_text", "prepare_reviews",
           "stratified_split", "stratified_sample", "nested_samples", "encode_labels", "EncodedReviews",
           "encode_reviews"]

TEXT = "text"  # the joined title + review text (str)
TITLE_COLUMN, BODY_COLUMN = "Title", "Review Text"
DEPARTMENTS = ("Bottoms", "Dresses", "Intimate", "Jackets", "Tops", "Trend")
_SENTENCE_END = re.compile(r"[.!?]$")


# --- tasks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewTask:
    """One prediction task on a label column.

    ``kind``: ``"binary"`` (one logit, ``classes`` = (0, 1)) or ``"multiclass"``
    (one logit per class, softmax). ``classes``: the label values, in the order
    of the head's outputs. ``weight``: the task's weight in :func:`multitask_loss`.
    """

    name: str
    column: str
    kind: str
    classes: tuple
    weight: float = 1.0

    def __post_init__(self):
        if self.kind not in ("binary", "multiclass"):
            raise ValueError(f"task {self.name!r}: kind must be 'binary' or 'multiclass', got {self.kind!r}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"task {self.name!r}: classes must be >= 2 distinct values, got {self.classes}")
        if self.kind == "binary" and tuple(self.classes) != (0, 1):
            raise ValueError(f"task {self.name!r}: a binary task has classes (0, 1), got {self.classes}")
        if not self.weight >= 0:
            raise ValueError(f"task {self.name!r}: weight must be >= 0, got {self.weight}")

    @property
    def n_outputs(self) -> int:
        """Outputs of the task's head: 1 for a binary task, else the number of classes."""
        return 1 if self.kind == "binary" else len(self.classes)


REVIEW_TASKS: tuple[ReviewTask, ...] = (
    ReviewTask("recommended", "Recommended IND", "binary", (0, 1)),
    ReviewTask("rating", "Rating", "multiclass", (1, 2, 3, 4, 5)),
    ReviewTask("department", "Department Name", "multiclass", DEPARTMENTS),
)


# --- text and split ---------------------------------------------------------------------------


def join_review_text(title: pd.Series, body: pd.Series) -> pd.Series:
    """One text per review: the title, then the review text.

    The rule: whitespace is collapsed and trimmed in both; an empty string
    counts as missing. Both present: ``title + ". " + body``, or
    ``title + " " + body`` when the title already ends in ``.``, ``!`` or ``?``
    ("Love it!" stays one sentence). One present: that one. Neither: missing
    (``pd.NA``), for the caller to drop.

    Args:
        title, body: text Series of the same index (missing values allowed).

    Returns:
        A text Series with the same index.

    Raises:
        ValueError: the two Series have different indexes.
    """
    from ecrec.data import normalise_whitespace

    if not title.index.equals(body.index):
        raise ValueError("title and body must share one index (the same reviews, in the same order)")
    t = normalise_whitespace(title.astype("string")).replace("", pd.NA)
    b = normalise_whitespace(body.astype("string")).replace("", pd.NA)
    sep = pd.Series(np.where(t.fillna("").str.contains(_SENTENCE_END), " ", ". "), index=t.index)
    both = t + sep + b
    return both.fillna(t).fillna(b).astype("string")


def prepare_reviews(df: pd.DataFrame, tasks: Sequence[ReviewTask] = REVIEW_TASKS) -> tuple[pd.DataFrame, dict]:
    """Add the joined ``text`` column; drop reviews without text or without a task label.

    Args:
        df: :func:`ecrec.data.load_reviews`'s frame (``Title``, ``Review Text``
            and each task's column).

    Returns:
        ``(frame, report)``: the kept rows (original index kept) with ``text``,
        and counts ``{"rows", "no_text", "no_label", "kept"}``.

    Raises:
        KeyError: a needed column is missing (named).
    """
    need = [TITLE_COLUMN, BODY_COLUMN, *[t.column for t in tasks]]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise KeyError(f"review frame lacks column(s) {missing}; load it with ecrec.data.load_reviews()")
    out = df.copy()
    out[TEXT] = join_review_text(df[TITLE_COLUMN], df[BODY_COLUMN])
    no_text = out[TEXT].isna()
    no_label = out[[t.column for t in tasks]].isna().any(axis=1) & ~no_text
    kept = out[~no_text & ~no_label].copy()
    kept[TEXT] = kept[TEXT].astype(str)
    report = {"rows": len(df), "no_text": int(no_text.sum()), "no_label": int(no_label.sum()), "kept": len(kept)}
    return kept, report


def _strata(df: pd.DataFrame, by: Sequence[str]) -> np.ndarray:
    return df[list(by)].astype(str).agg("|".join, axis=1).to_numpy()


def stratified_split(
    df: pd.DataFrame,
    by: Sequence[str] = ("Rating", "Department Name"),
    *,
    valid: float = 0.1,
    test: float = 0.2,
    seed: int = 42,
) -> pd.Series:
    """A fixed train/valid/test split, stratified on the columns ``by`` jointly, seeded.

    Every stratum (e.g. 1-star Trend reviews) keeps its share in each part
    (scikit-learn's ``train_test_split(stratify=...)``, twice: test first, then
    valid out of the rest).

    Returns:
        A Series of "train" / "valid" / "test" on ``df``'s index.

    Raises:
        ValueError: fractions outside (0, 1) or summing to >= 1, or a stratum
            with fewer than 2 rows (scikit-learn cannot split it).
    """
    from sklearn.model_selection import train_test_split

    if not (0 < valid < 1 and 0 < test < 1 and valid + test < 1):
        raise ValueError(f"valid and test must be in (0, 1) with valid + test < 1, got {valid}, {test}")
    key = _strata(df, by)
    pos = np.arange(len(df))
    rest, te = train_test_split(pos, test_size=test, stratify=key, random_state=seed)
    tr, va = train_test_split(rest, test_size=valid / (1 - test), stratify=key[rest], random_state=seed)
    split = np.empty(len(df), dtype=object)
    split[tr], split[va], split[te] = "train", "valid", "test"
    return pd.Series(split, index=df.index, name="split").astype("string")


def stratified_sample(df: pd.DataFrame, n: int | None, by: Sequence[str], *, seed: int = 42) -> pd.DataFrame:
    """``n`` rows of ``df`` drawn without replacement, stratified on ``by``; all rows if ``n`` is None
    or >= len(df). Rows keep ``df``'s order.

    Raises:
        ValueError: ``n`` < 2.
    """
    from sklearn.model_selection import train_test_split

    if n is None or n >= len(df):
        return df
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    pos, _ = train_test_split(np.arange(len(df)), train_size=n, stratify=_strata(df, by), random_state=seed)
    return df.iloc[np.sort(pos)]


def nested_samples(df: pd.DataFrame, ns: Sequence[int], by: Sequence[str], *, seed: int = 42,
                   cover: Sequence[str] = ()) -> dict[int, pd.DataFrame]:
    """Training sets of growing size, each inside the next, stratified on ``by``: for learning curves.

    Every row gets a seeded random rank inside its stratum, spread evenly over
    [0, 1) (``(position + u) / stratum size``, ``u`` uniform); the sample of
    size ``n`` is the ``n`` rows of smallest rank. So each stratum keeps its
    share (within one row) at every size, and a smaller sample is always a
    subset of a larger one: a model at 500 reviews saw nothing the model at
    1,000 did not. ``cover`` columns: one row of each of their values comes
    first (the lowest-ranked), so every sample of at least that many rows holds
    every class a classifier must output (a 1-star review in a sample of 24).

    Args:
        df: the pool (e.g. all training reviews).
        ns: sample sizes (each in [1, len(df)]).
        by: stratification columns.
        seed: fixes the ranks.
        cover: columns whose every value must appear in every sample.

    Returns:
        ``{n: rows}`` for every ``n``, rows in ``df``'s order.

    Raises:
        ValueError: a size outside [1, len(df)], or smaller than the rows ``cover`` needs.
    """
    bad = [n for n in ns if not 1 <= int(n) <= len(df)]
    if bad:
        raise ValueError(f"sample sizes {bad} are outside [1, {len(df)}] (the pool's rows)")
    rng = np.random.default_rng(seed)
    key = pd.Series(_strata(df, by))
    rank = np.empty(len(df))
    for _, rows in key.groupby(key).indices.items():
        rank[rows] = (rng.permutation(len(rows)) + rng.random(len(rows))) / len(rows)
    for column in cover:  # the lowest-ranked row of each value goes first
        values = df[column].to_numpy()
        for value in pd.unique(values):
            rows = np.flatnonzero(values == value)
            rank[rows[np.argmin(rank[rows])]] = -1.0 - rng.random()
    need = int((rank < 0).sum())
    if ns and min(ns) < need:
        raise ValueError(f"sample size {min(ns)} cannot hold one row of each value of {list(cover)}: "
                         f"use at least {need} rows")
    order = np.argsort(rank, kind="stable")
    return {int(n): df.iloc[np.sort(order[: int(n)])] for n in ns}


# --- labels ----------------------------------------------------------------------------------


def encode_labels(df: pd.DataFrame, tasks: Sequence[ReviewTask] = REVIEW_TASKS) -> dict[str, np.ndarray]:
    """Each task's label column as int64 class indices 0..K-1 (the order of ``task.classes``).

    Raises:
        KeyError: a task's column is missing (the error names it and the columns there are).
        ValueError: missing values, a value not in ``task.classes``, or a
            constant column (nothing to learn), each naming the column and the fix.
    """
    out = {}
    for task in tasks:
        if task.column not in df.columns:
            raise KeyError(
                f"task {task.name!r} needs the label column {task.column!r}, which is not in the frame "
                f"(columns: {list(df.columns)}); rename the column or build the task with column=<its name>")
        col = df[task.column]
        if col.isna().any():
            raise ValueError(
                f"label column {task.column!r} has {int(col.isna().sum())} missing value(s); "
                "drop those rows first (prepare_reviews does)")
        if col.nunique() < 2:
            raise ValueError(
                f"label column {task.column!r} is constant ({col.iloc[0]} in every row): nothing to learn; "
                f"drop the task {task.name!r} or use a sample that holds several classes")
        index = {c: i for i, c in enumerate(task.classes)}
        unknown = sorted({str(v) for v in col.unique() if v not in index})
        if unknown:
            raise ValueError(
                f"label column {task.column!r} holds {unknown}, not in the task's classes {list(task.classes)}; "
                f"set ReviewTask(..., classes=...) to every value, {len(task.classes) + len(unknown)} head outputs")
        out[task.name] = np.array(col.map(index).to_numpy(), dtype=np.int64)  # a writable copy
    return out


# --- encoded reviews ---------------------------------------------------------------------------


@dataclass
class EncodedReviews:
    """Tokenized review texts (unpadded) and their task labels.

    ``input_ids[i]`` has ``lengths[i] <= max_length`` ids; ``labels[name]`` is
    int64 (n,) class indices per task; ``tasks`` the tasks, in head order.
    """

    input_ids: list[list[int]]
    labels: dict[str, np.ndarray]
    tasks: tuple[ReviewTask, ...]
    max_length: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        """int64 (n,): tokens per review, special tokens included."""
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))

    def batch(self, idx: Sequence[int], pad_id: int = 0) -> dict:
        """``input_ids``, ``attention_mask``: int64 (len(idx), longest in the batch)."""
        from ecrec.pairs import _pad

        ids, mask = _pad([self.input_ids[i] for i in idx], pad_id)
        return {"input_ids": ids, "attention_mask": mask}

    def batch_labels(self, idx: Sequence[int], device=None) -> dict[str, torch.Tensor]:
        """Each task's labels for ``idx``: int64 (len(idx),) tensors."""
        return {k: torch.as_tensor(v[np.asarray(idx)], device=device) for k, v in self.labels.items()}

    def subset(self, idx: Sequence[int]) -> EncodedReviews:
        idx = np.asarray(idx)
        return EncodedReviews([self.input_ids[i] for i in idx], {k: v[idx] for k, v in self.labels.items()},
                              self.tasks, self.max_length)


def encode_reviews(
    tokenizer,
    df: pd.DataFrame,
    tasks: Sequence[ReviewTask] = REVIEW_TASKS,
    *,
    text_column: str = TEXT,
    max_length: int = 128,
) -> EncodedReviews:
    """Tokenize every review once (truncated to ``max_length`` tokens, no padding) and code its labels.

    Raises:
        KeyError: ``text_column`` or a label column is missing.
        ValueError: missing text (NaN), an empty frame, ``max_length`` < 8, or a
            bad label column (:func:`encode_labels`).
    """
    if text_column not in df.columns:
        raise KeyError(f"no text column {text_column!r}; build it with prepare_reviews() (title + review text)")
    if len(df) == 0:
        raise ValueError("no reviews to encode")
    if max_length < 8:
        raise ValueError(f"max_length must be >= 8 tokens, got {max_length}")
    text = df[text_column]
    bad = text.isna() | ~text.map(lambda t: isinstance(t, str))
    if bad.any():
        raise ValueError(
            f"text column {text_column!r} has {int(bad.sum())} missing/non-text value(s) (e.g. at index "
            f"{list(df.index[bad.to_numpy()][:3])}); join title and review text with join_review_text() and drop "
            "reviews with neither (prepare_reviews does both)")
    labels = encode_labels(df, tasks)
    ids = tokenizer(text.tolist(), truncation=True, max_length=max_length, padding=False)["input_ids"]
    return EncodedReviews(list(ids), labels, tuple(tasks), max_length)
