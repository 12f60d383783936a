"""Chapter 07: learning curves at equal data, and the verdicts read off them.

Whether a fine-tuned language model beats a bag of words depends on how many
labelled reviews both get. A curve measures it: at each training size ``n``
(a log scale, the samples nested, :func:`ecrec.review_data.nested_samples`)
every model trains on **the same** ``n`` reviews and is scored on the same
test reviews; a baseline trained on more data is a separate reference line.

* :func:`max_length_for`: the truncation length from the token-length
  distribution (the share of reviews cut is what the chapter reports);
* :func:`tfidf_outputs`: TF-IDF (words and word pairs) + one logistic
  regression per task, the bag-of-words baseline;
* :func:`curve_table`: every model's metrics and the paired differences at
  every point (size, seed), with bootstrap intervals over the test reviews
  (:func:`ecrec.review_metrics.bootstrap_review_metrics`: the same resamples
  for every model at a point);
* :func:`curve_verdicts`: per size, the verdict of ``a - b``
  (:func:`ecrec.verdict.decide`: the interval of the chapter's seed, the sign
  over every seed run at that size, "= its probe" for a run that kept its
  step-0 weights); :func:`crossover_sentence` states where ``a`` overtakes
  ``b`` (or that it does not); :func:`curve_thesis_rows` writes the
  scorecard's rows (:func:`ecrec.verdict.thesis_row`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ecrec.review_data import TEXT, ReviewTask, encode_labels
from ecrec.review_metrics import bootstrap_review_metrics, fit_linear_heads, linear_outputs

__all__ = ["max_length_for", "tfidf_outputs", "curve_table", "curve_verdicts", "crossover_sentence",
           "curve_thesis_rows", "CurvePoint"]

CurvePoint = tuple[int, int]  # (training reviews, seed)


def max_length_for(lengths: Sequence[int] | np.ndarray, coverage: float, *, cap: int = 256, multiple: int = 8) -> int:
    """The shortest truncation length, a multiple of ``multiple``, that keeps ``coverage`` of the texts whole.

    Args:
        lengths: tokens per text, special tokens included (e.g.
            ``tokenizer(texts)["input_ids"]`` lengths).
        coverage: the share of texts that must fit, in (0, 1].
        cap: the longest length allowed (the encoder's training length;
            all-MiniLM-L6-v2 was trained on 128-token inputs and reads 256).
        multiple: round up to this (vectorised kernels like multiples of 8).

    Returns:
        The length, in tokens, in ``[multiple, cap]``.

    Raises:
        ValueError: empty ``lengths`` or ``coverage`` outside (0, 1].
    """
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        raise ValueError("no lengths given")
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    need = float(np.quantile(lengths, coverage, method="inverted_cdf"))  # smallest L with share(<= L) >= coverage
    return int(min(cap, max(multiple, multiple * math.ceil(need / multiple))))


def tfidf_outputs(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame,
    tasks: Sequence[ReviewTask],
    *,
    cs: Sequence[float] = (1.0, 10.0),
    tol: float = 1e-3,
    max_features: int = 30000,
) -> dict[str, np.ndarray]:
    """TF-IDF (words and word pairs, sublinear tf, ``min_df=2``) + one logistic regression per task.

    The vocabulary and idf come from ``train`` only; each regression's ``C``
    is chosen on ``valid``'s log loss (:func:`ecrec.review_metrics.fit_linear_heads`).

    Args:
        train, valid, test: frames with the ``text`` column and the tasks' label columns
            (``test`` needs only ``text``).

    Returns:
        ``{task: test logits}``: (n,) for a binary task, (n, K) otherwise.

    Raises:
        KeyError, ValueError: as :func:`ecrec.review_data.encode_labels` and
            :func:`ecrec.review_metrics.fit_linear_heads` (e.g. a class absent from ``train``).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=max_features, sublinear_tf=True)
    x_train = vectorizer.fit_transform(train[TEXT])
    heads = fit_linear_heads(x_train, encode_labels(train, tasks), vectorizer.transform(valid[TEXT]),
                             encode_labels(valid, tasks), tasks, cs=cs, tol=tol)
    return linear_outputs(heads, vectorizer.transform(test[TEXT]))


def curve_table(
    labels: Mapping[str, np.ndarray],
    points: Mapping[CurvePoint, Mapping[str, Mapping[str, np.ndarray]]],
    tasks: Sequence[ReviewTask],
    *,
    pairs: Sequence[tuple[str, str]],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Metrics and paired differences with bootstrap intervals at every point of a learning curve.

    Args:
        labels: task -> int64 (n_test,) class indices of the test reviews.
        points: ``(n, seed)`` -> model -> task -> test logits; a model at a
            point trained on that point's ``n`` reviews (a reference line, e.g.
            TF-IDF on all reviews, is simply the same logits at every point).
        pairs: ``(a, b)`` model names; rows ``"a - b"`` are added where both exist.
        n_boot, seed, level: the bootstrap's resamples (the same at every point), seed and coverage.

    Returns:
        One row per (n, seed, model, metric): ``value``, ``low``, ``high``,
        ``level``; model ``"a - b"`` for a paired difference.

    Raises:
        ValueError: no points; as :func:`ecrec.review_metrics.bootstrap_review_metrics`.
    """
    if not points:
        raise ValueError("no curve points: give {(n, seed): {model: {task: logits}}}")
    rows = []
    for (n, run_seed), outputs in sorted(points.items()):
        have = [(a, b) for a, b in pairs if a in outputs and b in outputs]
        boot = bootstrap_review_metrics(labels, outputs, tasks, pairs=have, n_boot=n_boot, seed=seed, level=level)
        for (model, metric), r in boot.iterrows():
            rows.append({"n": int(n), "seed": int(run_seed), "model": model, "metric": metric,
                         "value": float(r["value"]), "low": float(r["low"]), "high": float(r["high"]),
                         "level": level})
    return pd.DataFrame(rows)


def curve_verdicts(
    table: pd.DataFrame,
    a: str,
    b: str,
    metric: str,
    *,
    main_seed: int,
    better: str = "higher",
    kept_start: Mapping[int, bool] | None = None,
) -> pd.DataFrame:
    """The verdict on ``a - b`` at every training size of :func:`curve_table`'s ``table``.

    The interval is the ``main_seed`` run's; the sign must hold over every
    seed run at that size (``seed_diffs``); ``kept_start[n]`` says the
    fine-tuned model ``a`` kept its step-0 weights at ``n`` (then "= its probe").

    Returns:
        One row per size (sorted): ``n``, ``diff``, ``low``, ``high``, ``level``,
        ``seeds`` (how many), ``seed_min``, ``seed_max``, ``word``, ``text``.

    Raises:
        KeyError: no row ``"a - b"`` for ``metric`` at the main seed.
    """
    from ecrec.verdict import decide

    name = f"{a} - {b}"
    rows = table[(table.model == name) & (table.metric == metric)]
    out = []
    for n, at_n in rows.groupby("n"):
        main = at_n[at_n.seed == main_seed]
        if main.empty:
            raise KeyError(f"no {name!r} {metric!r} row for seed {main_seed} at n={n}")
        r = main.iloc[0]
        diffs = at_n.value.tolist()
        v = decide({"diff": r.value, "low": r.low, "high": r.high, "level": r.level}, better=better,
                   seed_diffs=diffs if len(diffs) > 1 else None, kept_start=bool((kept_start or {}).get(n, False)))
        out.append({"n": int(n), "diff": r.value, "low": r.low, "high": r.high, "level": r.level,
                    "seeds": len(diffs), "seed_min": min(diffs), "seed_max": max(diffs), "word": v.word,
                    "text": v.text})
    return pd.DataFrame(out).sort_values("n").reset_index(drop=True)


def crossover_sentence(verdicts: pd.DataFrame, a: str, b: str, metric: str) -> str:
    """One sentence on where ``a`` overtakes ``b`` along a curve (or that it does not), from :func:`curve_verdicts`.

    The crossover is the smallest size from which ``a`` is "a gain" at that
    size and every larger one. Every size's verdict is listed with its numbers.
    The sentence names ``b`` in every clause (no "it"): it may open a chapter.

    Raises:
        ValueError: an empty ``verdicts``.
    """
    if verdicts.empty:
        raise ValueError("no verdicts: the curve has no sizes")
    words = verdicts.word.tolist()
    sizes = verdicts.n.tolist()
    per_size = "; ".join(f"{n:,}: {t}" for n, t in zip(sizes, verdicts.text, strict=True))
    tail_gain = [i for i in range(len(words)) if all(w == "a gain" for w in words[i:])]
    if tail_gain and tail_gain[0] == 0:
        head = f"{a} beats {b} in {metric} at every training size, from {sizes[0]:,} reviews on"
    elif tail_gain:
        head = f"{a} overtakes {b} in {metric} from {sizes[tail_gain[0]]:,} training reviews on"
    elif all(w == "a loss" for w in words):
        head = f"{b} beats {a} in {metric} at every training size up to {sizes[-1]:,} reviews: no crossover"
    else:  # mixed: say where a is ahead, behind and level, never just "does not overtake"
        at = {w: [f"{n:,}" for n, x in zip(sizes, words, strict=True) if x == w] for w in ("a gain", "a loss")}
        level = [f"{n:,}" for n, x in zip(sizes, words, strict=True) if x not in ("a gain", "a loss")]
        parts = ([f"ahead of {b} at {', '.join(at['a gain'])}"] if at["a gain"] else []) + (
            [f"behind {b} at {', '.join(at['a loss'])}"] if at["a loss"] else []) + (
            [f"level with {b} (within noise or unmoved) at {', '.join(level)}"] if level else [])
        head = (f"{a} in {metric} is {'; '.join(parts)} training reviews: no size from which it wins at every "
                f"larger one (up to {sizes[-1]:,})")
    return f"{head} ({per_size})."


def curve_thesis_rows(
    verdicts: pd.DataFrame,
    *,
    question: str,
    metric: str,
    lm: str,
    baseline: str,
    table: pd.DataFrame,
    metric_key: str,
    better: str = "higher",
    kept_start: Mapping[int, bool] | None = None,
    chapter: str = "07",
    slice: str = "all",
) -> list[dict]:
    """The scorecard's rows (:func:`ecrec.verdict.thesis_row`), one per training size of ``verdicts``.

    Args:
        verdicts: :func:`curve_verdicts` of ``lm - baseline``.
        question, metric, lm, baseline, chapter, slice: as :func:`ecrec.verdict.thesis_row`.
        table, metric_key: the :func:`curve_table` and its metric (for the seed differences).
    """
    from ecrec.verdict import thesis_row

    rows = []
    name = f"{lm} - {baseline}"
    for v in verdicts.itertuples():
        seeds = table[(table.model == name) & (table.metric == metric_key) & (table.n == v.n)].value.tolist()
        rows.append(thesis_row(chapter=chapter, question=question, metric=metric, lm=lm, baseline=baseline,
                               r={"diff": v.diff, "low": v.low, "high": v.high, "level": v.level},
                               train_size=int(v.n), better=better, seed_diffs=seeds if len(seeds) > 1 else None,
                               kept_start=bool((kept_start or {}).get(v.n, False)), slice=slice))
    return rows
