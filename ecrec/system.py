"""Chapter 08's two-stage system: recall -> ranking -> the final list, and what each stage costs.

Pipeline (one request = one user at one moment)
-----------------------------------------------
1. **Recall** (:class:`RecallStage`): chapter 05's generators (most popular,
   item-to-item CF, implicit ALS, the zero-shot MiniLM two-tower searched with
   FAISS), plus any added with :meth:`RecallStage.with_generator` (chapter 09's
   SASRec, :class:`ecrec.seqrec.SeqGenerator`), merged into a hybrid
   (:func:`ecrec.recall.interleave`), K items. Cold users (no history) get the
   popularity list.
2. **Features** (:class:`FeatureStore`): chapter 03's point-in-time features of
   every (user, candidate) pair, from a snapshot of the log frozen at one
   instant ``at`` (a nightly batch job in a real shop), plus the request's own
   context (country, hour, weekday, month).
3. **Ranking** (:class:`DnnRanker`): chapter 03's embedding + MLP DNN scores
   the K candidates; the final list is the top 10 by score.

Every stage returns a defined result for the awkward inputs, with a message
instead of a crash: an item outside the ranker's vocabulary is scored through
the unknown-id bucket (and counted), an empty recall list gives an empty
final list, ``k`` larger than the candidates pads with -1, and a -1 padding
slot is never looked up or scored as an item (:class:`Ranked`).

Cost
----
:func:`latency_ms` (per-request percentiles at batch 1, warm-up excluded,
:func:`time.perf_counter`), :func:`throughput` (items per second in batches)
and :func:`serving_threads` (one thread count for torch, FAISS and BLAS while
measuring; an ONNX Runtime session takes its own, :class:`OnnxItemTower`).

Lighter text rankers
--------------------
Chapter 04's bi-encoder with a linear-probe head (:func:`fit_probe_head`):
its item tower (MiniLM + mean pooling) runs once per item and its vectors are
cached, so a request only runs the head. The tower is what a new item costs
and what a catalogue refresh costs; it is dynamically quantised to int8
(:func:`quantize_int8`: ``torch.ao``'s ``quantize_dynamic`` on the ``Linear``
layers; weights int8, activations quantised on the fly; Jacob et al., 2018)
and exported to ONNX Runtime (:func:`export_onnx`, :class:`OnnxItemTower`;
optional: without the ``onnx`` and ``onnxruntime`` packages
:func:`onnx_status` says so and the chapter skips it).
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ecrec import features as F
from ecrec import recall as R
from ecrec.feature_store import FeatureStore  # re-exported for chapter 08 and its callers
from ecrec.schema import INVOICE_NO, ITEM_ID, TS, USER_ID
from ecrec.timing import best_of, percentiles_ms

__all__ = [
    "serving_threads", "latency_ms", "throughput", "subset_users", "first_visits", "recall_ceiling", "RecallStage",
    "FeatureStore", "Ranked", "DnnRanker", "top_n", "list_quality", "fit_probe_head", "quantize_int8", "model_bytes",
    "onnx_status", "export_onnx", "OnnxItemTower", "item_tower_vectors",
]

_DAY_S = 86_400.0
BUILTIN_GENERATORS = ("item_cf", "als", "text", "popular")  # RecallStage.lists' own keys


# --- measuring ----------------------------------------------------------------


@contextlib.contextmanager
def serving_threads(n: int):
    """Run the block with ``n`` threads in torch, FAISS and BLAS/OpenMP pools; restore them after.

    Latencies depend on the thread count: state it with every number.

    Raises:
        ValueError: ``n < 1``.
    """
    import faiss
    from threadpoolctl import threadpool_limits

    if n < 1:
        raise ValueError(f"n must be >= 1 thread, got {n}")
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield n
    finally:
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)


def latency_ms(fn: Callable, requests: Sequence, *, warmup: int = 20) -> dict[str, float | int | str]:
    """Per-request latency of ``fn(request)`` at batch 1: p50/p95/p99/mean in milliseconds.

    The first ``warmup`` requests (taken from the front of ``requests``) are
    run but not timed (caches, lazy initialisation, allocator); every other
    request is timed alone with :func:`time.perf_counter`.

    Args:
        fn: called once per request.
        requests: at least ``warmup + 1`` requests.
        warmup: untimed requests, >= 0.

    Returns:
        ``{"p50_ms", "p95_ms", "p99_ms", "mean_ms", "n", "note"}`` (``n`` timed
        requests): a percentile is NaN unless at least 10 timed requests lie
        beyond it (p50: 20 requests, p95: 200, p99: 1,000;
        :func:`ecrec.timing.percentiles_ms`), and ``note`` says which and why.

    Raises:
        ValueError: fewer than ``warmup + 1`` requests or ``warmup < 0``.
    """
    if warmup < 0 or len(requests) <= warmup:
        raise ValueError(f"need more than warmup={warmup} requests, got {len(requests)}")
    for r in requests[:warmup]:
        fn(r)
    times = np.empty(len(requests) - warmup)
    for i, r in enumerate(requests[warmup:]):
        t0 = time.perf_counter()
        fn(r)
        times[i] = time.perf_counter() - t0
    return percentiles_ms(times)


def throughput(fn: Callable, n_items: int, *, repeats: int = 3) -> float:
    """Items per second of one batched call ``fn()`` handling ``n_items`` items (best of ``repeats``).

    Raises:
        ValueError: ``n_items < 1`` or ``repeats < 1``.
    """
    if n_items < 1 or repeats < 1:
        raise ValueError(f"need n_items >= 1 and repeats >= 1, got {n_items}, {repeats}")
    best, _ = best_of(fn, repeats)
    return float(n_items / best)


# --- recall -------------------------------------------------------------------


_USER_ROW_FIELDS = ("users", "user_group", "history", "history_count", "relevant_all", "relevant_new",
                    "train_row_of_user")


def subset_users(data: R.RecallData, keep) -> R.RecallData:
    """The same :class:`ecrec.recall.RecallData` restricted to some evaluated users.

    Args:
        data: from :func:`ecrec.recall.build_recall_data`.
        keep: bool (n_users,) mask or an array of customer ids (``data.users`` values).

    Returns:
        A new RecallData whose per-user rows (``users``, ``user_group``,
        ``history*``, ``relevant_*``, ``train_row_of_user``) are the kept
        users, in ``data.users`` order; item and training tables are shared.

    Raises:
        ValueError: a mask of the wrong length, or ids not among ``data.users``.
    """
    keep = np.asarray(keep)
    if keep.dtype == bool:
        if keep.shape != (len(data.users),):
            raise ValueError(f"mask must have shape ({len(data.users)},), got {keep.shape}")
        rows = np.flatnonzero(keep)
    else:
        missing = np.setdiff1d(keep, data.users)
        if missing.size:
            raise ValueError(f"{missing.size} user ids are not evaluated test users, e.g. {missing[:3].tolist()}")
        rows = np.flatnonzero(np.isin(data.users, keep))
    out = {}
    for name in _USER_ROW_FIELDS:
        value = getattr(data, name)
        out[name] = sp.csr_array(value[rows]) if sp.issparse(value) else np.asarray(value)[rows]
    return replace(data, **out)


def first_visits(events: pd.DataFrame, users: np.ndarray, since) -> pd.DataFrame:
    """Each user's first invoice at or after ``since``: the moment (and country) of the request.

    Args:
        events: :func:`ecrec.features.purchase_events` (``user_id``, ``ts``, ``country``).
        users: customer ids, each with an event at or after ``since``.
        since: start of the window (the test start).

    Returns:
        Frame indexed like ``users`` (same order) with ``user_id``, ``ts`` and ``country``.

    Raises:
        ValueError: a user has no event at or after ``since``.
    """
    later = events[events[TS] >= pd.Timestamp(since)].sort_values([TS, INVOICE_NO], kind="stable")
    first = later.drop_duplicates(USER_ID).set_index(USER_ID)
    missing = ~pd.Index(users).isin(first.index)
    if missing.any():
        raise ValueError(f"{int(missing.sum())} users have no event at or after {since}, e.g. {users[missing][:3]}")
    return first.loc[users, [TS, "country"]].rename_axis(USER_ID).reset_index()


def recall_ceiling(lists: np.ndarray, relevant, k: int) -> float:
    """Share of all relevant (user, item) pairs that appear in the users' first ``k`` candidates.

    Pooled over users (a purchase is a purchase, whoever made it): the most any
    ranker reordering these candidates can find. Duplicates and -1 padding
    in a list count once / not at all.

    Args:
        lists: int (n_users, L) item indexes, -1 = padding.
        relevant: sparse (n_users, n_items); non-zero = relevant.
        k: candidates per user, >= 1 (all L when ``k >= L``).

    Returns:
        A share in [0, 1] (NaN when nothing is relevant).

    Raises:
        ValueError: ``k < 1`` or different numbers of users.
    """
    rel = sp.csr_array(relevant)
    x = np.asarray(lists, dtype=np.int64)[:, :k]
    if k < 1 or x.ndim != 2 or len(x) != rel.shape[0]:
        raise ValueError(f"need k >= 1 and lists with one row per user ({rel.shape[0]}), got k={k}, {x.shape}")
    rows, cols = np.nonzero(x >= 0)
    found = sp.csr_array((np.ones(len(rows)), (rows, x[rows, cols])), shape=rel.shape)
    rel_bin = (rel != 0).astype(np.float64)
    total = rel_bin.sum()
    return float(rel_bin.multiply(found != 0).sum() / total) if total else float("nan")


@dataclass
class RecallStage:
    """Chapter 05's generators, fitted on purchases before ``data.test_start`` only, and their hybrid.

    Attributes:
        pop: (n_items,) distinct buyers in the ``pop_days`` before the test start.
        sim: (n_items, n_items) item-item cosine of co-purchases.
        user_f, item_f: ALS factors (rows of ``data.train_matrix`` and items).
        text_emb: (n_items, d) unit MiniLM vectors of the descriptions (the zero-shot item tower), or None.
        text_index: an exact FAISS index over ``text_emb`` (None without text).
        max_history: the user tower reads the ``max_history`` most recent items.
        tie_margin: extra FAISS results so that identical vectors tie by lower item index.
        extra: more generators by name (:meth:`with_generator`), e.g. a sequence model
            (:class:`ecrec.seqrec.SeqGenerator`); listed after the built-in ones.
    """

    pop: np.ndarray
    sim: sp.csr_array
    user_f: np.ndarray
    item_f: np.ndarray
    text_emb: np.ndarray | None
    text_index: object
    max_history: int = 10
    tie_margin: int = 0
    extra: dict[str, Callable[[R.RecallData, int], np.ndarray]] = field(default_factory=dict)

    @classmethod
    def fit(cls, data: R.RecallData, text_emb: np.ndarray | None, *, pop_days: int = 30, als_factors: int = 64,
            als_iterations: int = 10, max_history: int = 10, seed: int = 0) -> RecallStage:
        """Fit every generator on ``data`` (purchases before its ``test_start``).

        ``text_emb=None`` leaves the text tower out (no MiniLM needed).

        Raises:
            ValueError: ``text_emb`` rows differ from the catalogue size.
        """
        if text_emb is not None and len(text_emb) != data.n_items:
            raise ValueError(f"text_emb has {len(text_emb)} rows for {data.n_items} items")
        since = data.test_start - pd.Timedelta(days=pop_days)
        pop = R.popular_scores(data.events, data.n_items, since, data.test_start)
        user_f, item_f = R.fit_als(data.train_matrix, factors=als_factors, iterations=als_iterations, seed=seed)
        index, margin = None, 0
        if text_emb is not None:
            _, counts = np.unique(text_emb, axis=0, return_counts=True)
            index, margin = R.build_index(text_emb), int(counts.max() - 1)
        return cls(pop, R.item_cosine(data.train_matrix), user_f, item_f, text_emb, index, max_history, margin)

    def user_vectors(self, history) -> np.ndarray:
        """(n, d) text-tower user vectors from (n, n_items) recency weights (zero rows: no history).

        Raises:
            ValueError: the stage has no text tower.
        """
        if self.text_emb is None:
            raise ValueError("this RecallStage was fitted without text vectors (text_emb=None)")
        return R.user_vectors(R.cap_history(history, self.max_history), self.text_emb)

    def with_generator(self, name: str, generator: Callable[[R.RecallData, int], np.ndarray]) -> RecallStage:
        """A copy of the stage with one more generator, merged by :meth:`hybrid` like the others.

        Args:
            name: its key in :meth:`lists` and in the hybrid's weights.
            generator: ``generator(data, k)`` -> int (len(data.users), k) item
                indexes best first, -1 = padding; a row of -1 only means "no
                answer for this user" (e.g. a history of items the model does not
                know) and gets the popularity list, as cold users do.

        Raises:
            ValueError: ``name`` is already a generator of the stage.
            TypeError: ``generator`` is not callable.
        """
        if name in (*BUILTIN_GENERATORS, *self.extra):
            raise ValueError(f"the stage already has a generator named {name!r}; pick another name")
        if not callable(generator):
            raise TypeError(f"generator must be callable as generator(data, k), got {type(generator).__name__}")
        return replace(self, extra={**self.extra, name: generator})

    def lists(self, data: R.RecallData, k: int) -> dict[str, np.ndarray]:
        """Each generator's top ``k`` (n_users, k) item indexes; cold users get the popularity list.

        Keys: ``item_cf``, ``als``, ``text`` (when the stage has text vectors), ``popular``,
        then the :attr:`extra` generators (their all -1 rows also get the popularity list).

        Raises:
            ValueError: an extra generator's lists are not (n_users, k).
        """
        n = len(data.users)
        cold = data.user_group == "cold"
        popular = R.top_k(self.pop[None, :], k)[0]
        out = {"item_cf": R.top_k(np.asarray((data.history @ self.sim).toarray()), k, min_score=0.0)}
        rows = data.train_row_of_user
        out["als"] = R.top_k(np.where(rows[:, None] >= 0, self.user_f[np.maximum(rows, 0)] @ self.item_f.T, 0.0), k)
        if self.text_emb is not None:
            out["text"] = R.faiss_search(self.text_index, self.user_vectors(data.history), k,
                                         tie_margin=self.tie_margin)
        out["popular"] = np.broadcast_to(popular, (n, len(popular)))
        lists = {g: R.with_fallback(x, cold, popular) for g, x in out.items()}
        for name, generator in self.extra.items():
            x = np.asarray(generator(data, k), dtype=np.int64)
            if x.shape != (n, k):
                raise ValueError(f"generator {name!r} returned lists of shape {x.shape}, expected {(n, k)}")
            lists[name] = R.with_fallback(x, cold | (x < 0).all(1), popular)
        return lists

    @staticmethod
    def hybrid(lists: dict[str, np.ndarray], weights: dict[str, int], k: int) -> np.ndarray:
        """:func:`ecrec.recall.interleave` of the generators with positive weight, cut to ``k``.

        Raises:
            ValueError: no positive weight, or a generator missing from ``lists``.
        """
        used = {g: w for g, w in weights.items() if w > 0}
        if not used or set(used) - set(lists):
            raise ValueError(f"weights {weights} must name at least one of {sorted(lists)} with weight > 0")
        return R.interleave([lists[g] for g in used], k, weights=list(used.values()))


# --- features -----------------------------------------------------------------


# The snapshot (FeatureStore) lives in ecrec.feature_store: columnar arrays, in memory or in Redis.


# --- ranking ------------------------------------------------------------------


@dataclass
class Ranked:
    """One user's final list: item indexes best first (-1 padded), their scores (-inf padded), messages."""

    items: np.ndarray
    scores: np.ndarray
    notes: list[str] = field(default_factory=list)


def top_n(scores: np.ndarray, candidates: np.ndarray, n: int, *,
          keep_ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` best candidates of each row by score; ties keep the recall order (stable sort).

    A served list needs one order, and the recall order is a deterministic
    one. To EVALUATE the lists, pass ``keep_ties=True`` and give the scores to
    the metrics (:func:`list_quality`, or ``scores=`` of :mod:`ecrec.metrics`):
    the lists then also hold every candidate tied with a row's ``n``-th one,
    so that a tie at the cut-off counts as the expectation over its orders,
    chapter 05's rule (``ecrec.recall.top_k(..., return_scores=True)``), and
    a constant-score ranker scores what a random order scores instead of
    inheriting recall's order.

    Args:
        scores: float (u, K) scores of ``candidates``; -inf for padding.
        candidates: int (u, K) item indexes, -1 = padding (never returned as an item).
        n: list length, >= 1; rows with fewer than ``n`` candidates are padded with -1 / -inf.
        keep_ties: also return the candidates tied with each row's ``n``-th
            (the lists are then ``n + e`` wide, ``e`` the most extra tied items
            of any row; other rows padded with -1 / -inf).

    Returns:
        ``(items int64 (u, n) or (u, n + e), scores float64 of the same shape)``, best first.

    Raises:
        ValueError: shapes differ or ``n < 1``.
    """
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(candidates, dtype=np.int64)
    if s.shape != c.shape or s.ndim != 2:
        raise ValueError(f"scores {s.shape} and candidates {c.shape} must be the same 2-D shape")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    s = np.where(c >= 0, s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    width = min(n, c.shape[1])
    if keep_ties and c.shape[1] > n:
        ranked = np.take_along_axis(s, order, axis=1)
        kth = ranked[:, n - 1 : n]
        tied = (ranked[:, n:] == kth) & (kth > -np.inf)  # sorted: the tied ones follow the n-th directly
        width = n + int(tied.sum(1).max())
    order = order[:, :width]
    items = np.take_along_axis(c, order, axis=1)
    best = np.take_along_axis(s, order, axis=1)
    if width > n:  # beyond n keep only the n-th one's tie group
        beyond = (np.arange(width)[None, :] >= n) & (best != best[:, n - 1 : n])
        best = np.where(beyond, -np.inf, best)
    items = np.where(best == -np.inf, -1, items)
    if items.shape[1] < n:
        pad = n - items.shape[1]
        items = np.hstack([items, np.full((len(items), pad), -1, dtype=np.int64)])
        best = np.hstack([best, np.full((len(best), pad), -np.inf)])
    return items, best


def list_quality(items: np.ndarray, relevant, k: int, *, scores: np.ndarray | None = None) -> dict[str, float]:
    """Recall@k, NDCG@k and HitRate@k of final lists, ties as the expectation over their orders.

    The book's one tie rule (chapter 05, :mod:`ecrec.metrics`): with
    ``scores``, items of equal score count as every order of them equally
    likely; pass the lists and scores of :func:`top_n` with
    ``keep_ties=True``. Without ``scores`` the list order is taken as strict
    (a list that has no scores, e.g. recall's interleaved hybrid).

    Args:
        items: int (u, L >= k) item indexes best first, -1 = padding.
        relevant: sparse (u, n_items) or a list of u collections of item indexes.
        k: the cut-off.
        scores: float (u, L) non-increasing scores (-inf for padding), or None.

    Returns:
        ``{"recall@k", "ndcg@k", "hit_rate@k"}`` means over users with a relevant item.

    Raises:
        ValueError / TypeError: as :func:`ecrec.metrics.ranking_metrics`.
    """
    from ecrec.metrics import ranking_metrics

    table = ranking_metrics(items, relevant, [k], scores=scores)
    return {f"{m}@{k}": float(table.loc[k, m]) for m in ("recall", "ndcg", "hit_rate")}


class DnnRanker:
    """Chapter 03's DNN (:class:`ecrec.ctr.TrainedDnn`) scoring recall's candidates through a :class:`FeatureStore`.

    Args:
        model: the trained DNN (categorical, numeric and text inputs as in chapter 03).
        store: the feature snapshot.
        catalog: :func:`ecrec.features.item_catalog` rows (``item_id``, ``description``, ``category``).
        item_ids: (n_items,) stock code of each item index of recall's catalogue.
        text: ``(item_ids, vectors)`` as given to :func:`ecrec.ctr.train_dnn`, or ``None``.
    """

    def __init__(self, model, store: FeatureStore, catalog: pd.DataFrame, item_ids: np.ndarray, text=None):
        self.model, self.store, self.catalog, self.text = model, store, catalog, text
        self.item_ids = np.asarray(item_ids).astype(str)
        vocab = model.preprocessor.encoders_[ITEM_ID].vocabulary_ if ITEM_ID in model.preprocessor.encoders_ else None
        self.in_vocabulary = (np.asarray(pd.Index(vocab).get_indexer(self.item_ids)) >= 0) if vocab is not None \
            else np.ones(len(self.item_ids), dtype=bool)

    def features(self, user_ids, candidates: np.ndarray, when, country) -> tuple[pd.DataFrame, np.ndarray]:
        """The model's input frame for the non-padding candidates, and their (row, column) positions.

        Args:
            user_ids: (u,) customer ids; candidates: int (u, K) item indexes, -1 = padding;
            when, country: (u,) request times and countries.

        Returns:
            ``(frame, (rows, cols))``: one frame row per candidate >= 0, in row-major order.

        Raises:
            ValueError: an item index outside the catalogue (other than -1), or shapes that differ.
        """
        c = np.asarray(candidates, dtype=np.int64)
        if c.ndim != 2 or len(c) != len(user_ids):
            raise ValueError(f"candidates must be (len(user_ids), K), got {c.shape} for {len(user_ids)} users")
        if c.size and (c.min() < -1 or c.max() >= len(self.item_ids)):
            raise ValueError(f"candidate item indexes must be -1 (padding) or in 0..{len(self.item_ids) - 1}")
        rows, cols = np.nonzero(c >= 0)
        frame = self.store.frame(np.asarray(user_ids)[rows], self.item_ids[c[rows, cols]],
                                 np.asarray(when, dtype="datetime64[ns]")[rows], np.asarray(country, dtype=object)[rows])
        frame = F.add_item_attributes(frame, self.catalog, self.text)
        return frame, (rows, cols)

    def arrays(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """The preprocessed model inputs of a feature frame (the feature-lookup stage ends here)."""
        return self.model.preprocessor.transform(frame)

    def logits(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """(r,) float64 logits of preprocessed rows (the DNN-scoring stage)."""
        return self.model.predict_logits_arrays(arrays)

    def score(self, user_ids, candidates: np.ndarray, when, country, *, chunk_rows: int = 200_000) -> np.ndarray:
        """(u, K) float64 logits of the candidates; -inf where a slot is padding (-1).

        Users are processed in chunks of about ``chunk_rows`` candidate rows.
        """
        c = np.asarray(candidates, dtype=np.int64)
        out = np.full(c.shape, -np.inf)
        if c.size == 0:
            return out
        step = max(1, chunk_rows // max(c.shape[1], 1))
        when = np.asarray(when, dtype="datetime64[ns]")
        country = np.asarray(country, dtype=object)
        for s in range(0, len(c), step):
            sl = slice(s, s + step)
            frame, (rows, cols) = self.features(np.asarray(user_ids)[sl], c[sl], when[sl], country[sl])
            if len(frame):
                out[sl][rows, cols] = self.logits(self.arrays(frame))
        return out

    def rank(self, user_id, candidates: Sequence[int], when, country, k: int = 10) -> Ranked:
        """One request: score one user's candidates and return the top ``k``, with messages, never a crash.

        * an empty candidate list gives ``k`` slots of -1 and a note;
        * -1 entries are padding: dropped, never scored;
        * candidates outside the DNN's item vocabulary are scored through its
          unknown-id bucket (their features and text still count); the note says how many;
        * ``k`` larger than the number of candidates pads with -1 and says so.

        Raises:
            ValueError: ``k < 1`` or an item index outside the catalogue (not a padding -1).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        c = np.asarray(list(candidates), dtype=np.int64).reshape(1, -1)
        notes = []
        valid = c[c >= 0]
        if valid.size == 0:
            notes.append(f"user {user_id}: empty recall list, nothing to rank; returning {k} empty slots (-1)")
            return Ranked(np.full(k, -1, dtype=np.int64), np.full(k, -np.inf), notes)
        if valid.size < c.size:
            notes.append(f"user {user_id}: {c.size - valid.size} padding slots (-1) dropped before ranking")
        if len(np.unique(valid)) < valid.size:
            notes.append(f"user {user_id}: {valid.size - len(np.unique(valid))} duplicate candidates kept once")
            _, first = np.unique(valid, return_index=True)
            valid = valid[np.sort(first)]
        c = valid.reshape(1, -1)
        if not (c < len(self.item_ids)).all():
            raise ValueError(f"candidate item indexes must be in 0..{len(self.item_ids) - 1} (or -1 for padding)")
        oov = int((~self.in_vocabulary[c[0]]).sum())
        if oov:
            notes.append(f"user {user_id}: {oov} of {c.size} candidates are outside the ranker's item vocabulary; "
                         "scored through its unknown-item embedding")
        if k > c.size:
            notes.append(f"user {user_id}: k={k} but only {c.size} candidates; the last {k - c.size} slots are -1")
        scores = self.score([user_id], c, [np.datetime64(pd.Timestamp(when))], [country])
        items, best = top_n(scores, c, k)
        return Ranked(items[0], best[0], notes)


# --- text rankers: fp32, int8, ONNX ------------------------------------------


def fit_probe_head(model, vectors: np.ndarray, hist: np.ndarray, cand: np.ndarray, labels: np.ndarray, *,
                   C: float = 1.0, seed: int = 0) -> float:
    """Fit a logistic-regression probe on a bi-encoder's frozen features and copy it into its head.

    Chapter 04's linear probe ("LP" of Kumar et al., 2022): the features are
    ``[u, v, u * v]`` (:func:`ecrec.bert.bi_features`) from the frozen item
    vectors; only the head learns.

    Args:
        model: a :class:`ecrec.bert.BiEncoderCtr`.
        vectors: float (n_items, hidden) item vectors of the frozen model.
        hist, cand, labels: chapter 04's :class:`ecrec.pairs.EncodedHistories` fields.

    Returns:
        The probe's training AUC.

    Raises:
        ValueError: one label only.
    """
    from sklearn.linear_model import LogisticRegression

    from ecrec.bert import bi_features, init_head_from_probe
    from ecrec.metrics import roc_auc

    if len(np.unique(labels)) != 2:
        raise ValueError("fit_probe_head needs both labels (0 and 1)")
    x = bi_features(vectors, hist, cand)
    probe = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(x, labels)
    init_head_from_probe(model, probe.coef_, probe.intercept_)
    return roc_auc(labels, probe.decision_function(x))


def quantize_int8(model):
    """A copy of ``model`` with every ``nn.Linear`` dynamically quantised to int8 (CPU inference only).

    Weights are stored as int8 with one scale per tensor; activations are
    quantised per batch at run time (``torch.ao.quantization.quantize_dynamic``).
    Embeddings and LayerNorm stay fp32. The original model is not modified.
    """
    q = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice in favour of torchao
        return torch.ao.quantization.quantize_dynamic(q, {torch.nn.Linear}, dtype=torch.qint8)


def model_bytes(model) -> int:
    """Bytes of the model's ``state_dict`` as torch saves it (int8 weights count 1 byte each)."""
    import io

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def onnx_status() -> tuple[bool, str]:
    """Whether the ONNX export and runtime are installed: ``(ok, message)``.

    The export needs the ``onnx`` package, running it ``onnxruntime``; both
    are optional in ecrec (``pip install onnx onnxruntime``).
    """
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        return False, (f"ONNX Runtime comparison skipped: {', '.join(missing)} not installed "
                       f"(pip install {' '.join(missing)})")
    import onnxruntime

    return True, f"onnxruntime {onnxruntime.__version__}"


class _ItemTower(torch.nn.Module):
    """(input_ids, attention_mask) -> pooled item vectors: what the exporter traces."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.item_vectors(input_ids, attention_mask)


def export_onnx(model, path: str | Path, example_tokens: Sequence[Sequence[int]], *, pad_id: int = 0,
                opset: int = 17) -> Path:
    """Export a bi-encoder's item tower (encoder + pooling) to ONNX, batch and sequence axes dynamic.

    Args:
        model: a :class:`ecrec.bert.BiEncoderCtr` (exported in eval mode; not modified).
        path: the ``.onnx`` file to write.
        example_tokens: token ids of a few items, to trace with.

    Raises:
        ImportError / torch.onnx errors: ``onnx`` is not installed (see :func:`onnx_status`).
    """
    from ecrec.pairs import _pad

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids, mask = _pad(list(example_tokens), pad_id)
    wrapped = _ItemTower(copy.deepcopy(model).eval())
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "vectors": {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(wrapped, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["vectors"], dynamic_axes=axes, opset_version=opset, dynamo=False)
    return path


class OnnxItemTower:
    """An exported item tower run by ONNX Runtime on the CPU with ``threads`` threads.

    ``item_vectors(input_ids, attention_mask)`` returns a torch tensor (batch, hidden), like the torch model.
    """

    def __init__(self, path: str | Path, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.path = Path(path)

    def item_vectors(self, input_ids, attention_mask):
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])


def item_tower_vectors(tower, item_tokens: Sequence[Sequence[int]], *, pad_id: int = 0,
                       batch_size: int = 256) -> np.ndarray:
    """Item vectors from a bi-encoder's tower: torch (fp32 or int8) or :class:`OnnxItemTower`.

    Items are batched sorted by length (little padding) and put back in order.
    A torch tower runs in eval mode (no dropout) and is handed back in the
    train/eval mode it came in (every submodule's own flag restored), also
    when encoding fails.

    Returns:
        float32 (n_items, hidden).
    """
    from ecrec.pairs import _pad, sorted_batches

    lengths = np.fromiter((len(t) for t in item_tokens), dtype=np.int64, count=len(item_tokens))
    out = None
    modes = [(m, m.training) for m in tower.modules()] if isinstance(tower, torch.nn.Module) else []
    if hasattr(tower, "eval"):
        tower.eval()
    try:
        with torch.inference_mode():
            for idx in sorted_batches(lengths, batch_size):
                ids, mask = _pad([item_tokens[i] for i in idx], pad_id)
                vec = tower.item_vectors(ids, mask).float().numpy()
                if out is None:
                    out = np.empty((len(item_tokens), vec.shape[1]), dtype=np.float32)
                out[idx] = vec
    finally:
        for module, training in modes:  # the caller's mode, e.g. a model mid-training
            module.training = training
    return out
