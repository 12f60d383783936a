"""Retrieval at catalogue scale: exact search against HNSW and IVF-PQ (chapter 08).

Chapter 05 retrieves from a catalogue of a few thousand items, where an exact
inner-product scan (``IndexFlatIP``) costs well under a millisecond. A shop
with a million products cannot scan every item per request; this module
measures where the approximate indexes start to pay off.

* :func:`synthetic_catalogue`: a catalogue of any size whose vectors look like
  the real ones (real item vectors resampled, plus isotropic noise, unit norm),
  so that the approximate indexes meet clustered data, not uniform noise.
* :func:`build_ann_index`: ``"flat"`` and ``"hnsw"`` come from
  :func:`ecrec.recall.build_index` (one thread, deterministic graph);
  ``"ivfpq"`` is an inverted file of ``nlist`` k-means cells whose vectors are
  stored as product-quantisation codes (:func:`build_ivfpq`; Jégou, Douze and
  Schmid, 2011, "Product quantization for nearest neighbor search").
* :func:`set_breadth`: the search breadth (HNSW ``efSearch``, IVF ``nprobe``)
  set explicitly on the index; :func:`ecrec.recall.faiss_search` then never
  searches narrower than the number of results asked for, and
  :func:`searched_breadth` says what it does search.
* :func:`index_bytes`, :func:`overlap_at_k` (the share of the exact top K that
  an index returns: "ANN recall", not the Recall@K of :mod:`ecrec.metrics`),
  :func:`compare_indexes` (build time, memory per item, overlap, latency at
  batch 1 and batch throughput in one table) and :func:`right_choice` (per
  catalogue size, the fastest index whose overlap meets a target).

Every search goes through :func:`ecrec.recall.faiss_search`: lists are -1
padded, never hold an invented item, and ties are broken by lower item id.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ecrec import recall as R
from ecrec.timing import percentiles_ms

__all__ = [
    "KINDS", "synthetic_catalogue", "build_ivfpq", "build_ann_index", "set_breadth", "searched_breadth", "index_bytes",
    "overlap_at_k", "compare_indexes", "right_choice",
]

KINDS = ("flat", "hnsw", "ivfpq")


def synthetic_catalogue(base: np.ndarray, n: int, *, noise: float = 0.5, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors built from real ones: ``normalise(base[j] + e)``, ``e ~ N(0, (noise^2 / d) I)``.

    Each synthetic item picks a random real item ``j`` (with replacement) and
    moves away from it by noise of expected norm ``noise`` (the real vectors
    have norm 1), so the synthetic catalogue keeps the real one's clusters and
    has no exact duplicates.

    Args:
        base: float (m, d) real item vectors (e.g. MiniLM embeddings of descriptions).
        n: number of synthetic items, >= 1.
        noise: expected norm of the perturbation, >= 0.
        seed: random seed.

    Returns:
        float32 (n, d), every row of norm 1.

    Raises:
        ValueError: ``base`` not 2-D or empty, a zero row in ``base``, ``n < 1`` or ``noise < 0``.
    """
    x = np.asarray(base, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"base must be a non-empty (m, d) array, got shape {x.shape}")
    if n < 1 or noise < 0:
        raise ValueError(f"need n >= 1 and noise >= 0, got n={n}, noise={noise}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("base has an all-zero row: it has no direction to resample")
    x = x / norms
    rng = np.random.default_rng(seed)
    out = np.empty((n, x.shape[1]), dtype=np.float32)
    step = 65_536
    for s in range(0, n, step):
        m = min(step, n - s)
        chunk = x[rng.integers(0, len(x), m)] + rng.normal(scale=noise / math.sqrt(x.shape[1]), size=(m, x.shape[1]))
        out[s : s + m] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def _ivfpq_shape(n: int, d: int, nlist: int | None, m: int | None, nbits: int | None) -> tuple[int, int, int]:
    """Defaults that FAISS can train without warnings: >= 39 training points per centroid."""
    if nlist is None:
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    if m is None:
        m = next(c for c in (48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1) if d % c == 0)
    if nbits is None:
        nbits = int(max(1, min(8, math.floor(math.log2(max(n // 39, 2))))))
    return nlist, m, nbits


def build_ivfpq(
    item_emb: np.ndarray,
    *,
    nlist: int | None = None,
    m: int | None = None,
    nbits: int | None = None,
    seed: int = 0,
    max_train: int = 100_000,
):
    """An inner-product ``IndexIVFPQ`` over L2-normalised item vectors, trained with one thread.

    The vectors are split into ``nlist`` k-means cells (the coarse quantiser,
    searched ``nprobe`` cells at a time); inside a cell each vector is stored
    as ``m`` sub-vector codes of ``nbits`` bits (product quantisation), about
    ``m * nbits / 8`` bytes per item instead of ``4 d``. Scores are
    approximate: the codes are lossy.

    Args:
        item_emb: float (n, d); normalised here (a copy).
        nlist: cells; default ``min(4 sqrt(n), n // 39)`` (FAISS wants >= 39
            training points per centroid), at least 1.
        m: sub-quantisers, must divide d; default the largest of 48, 32, ...
            that divides d.
        nbits: bits per code; default ``min(8, log2(n // 39))``.
        seed: seed of both k-means (coarse cells and PQ codebooks).
        max_train: train on at most this many vectors (a seeded sample).

    Returns:
        A trained ``faiss.IndexIVFPQ`` holding all n vectors (``nprobe`` 1:
        set the breadth with :func:`set_breadth`).

    Raises:
        ValueError: not 2-D, NaN, fewer than 2 vectors, or ``m`` not dividing d.
    """
    import faiss

    x = np.ascontiguousarray(item_emb, dtype=np.float32).copy()
    if x.ndim != 2 or np.isnan(x).any() or len(x) < 2:
        raise ValueError(f"item_emb must be a 2-D array of >= 2 vectors without NaN, got shape {x.shape}")
    faiss.normalize_L2(x)
    n, d = x.shape
    nlist, m, nbits = _ivfpq_shape(n, d, nlist, m, nbits)
    if d % m:
        raise ValueError(f"m={m} must divide the dimension d={d}")
    coarse = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQ(coarse, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    coarse.this.disown()
    index.cp.seed = seed
    index.pq.cp.seed = seed
    rng = np.random.default_rng(seed)
    train = x if n <= max_train else x[np.sort(rng.choice(n, max_train, replace=False))]
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.train(train)
        index.add(x)
    finally:
        faiss.omp_set_num_threads(threads)
    return index


def build_ann_index(item_emb: np.ndarray, kind: str, *, seed: int = 0, **kwargs):
    """``"flat"`` | ``"hnsw"`` (:func:`ecrec.recall.build_index`) | ``"ivfpq"`` (:func:`build_ivfpq`).

    Raises:
        ValueError: unknown kind (and as the builders).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "ivfpq":
        return build_ivfpq(item_emb, seed=seed, **kwargs)
    return R.build_index(item_emb, kind, **kwargs)


def set_breadth(index, breadth: int | None) -> str:
    """Set an approximate index's search breadth on the index itself; returns e.g. ``"efSearch=128"``.

    HNSW: ``efSearch`` (candidates kept while walking the graph); IVF:
    ``nprobe`` (cells visited, capped at ``nlist``). An exact index has no
    breadth (``breadth`` must then be ``None``). :func:`ecrec.recall.faiss_search`
    raises a breadth smaller than the number of results asked for.

    Raises:
        ValueError: ``breadth < 1``, or a breadth for an exact index.
    """
    import faiss

    base = faiss.downcast_index(index)
    if isinstance(base, faiss.IndexHNSW):
        if breadth is None or breadth < 1:
            raise ValueError(f"an HNSW index needs an explicit efSearch >= 1, got {breadth!r}")
        base.hnsw.efSearch = int(breadth)
        return f"efSearch={int(breadth)}"
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        if breadth is None or breadth < 1:
            raise ValueError(f"an IVF index needs an explicit nprobe >= 1, got {breadth!r}")
        ivf.nprobe = int(min(breadth, ivf.nlist))
        return f"nprobe={int(ivf.nprobe)}"
    if breadth is not None:
        raise ValueError(f"{type(base).__name__} is exact: it has no search breadth (pass None)")
    return "exact"


def index_bytes(index) -> int:
    """Bytes of the serialised index (vectors or codes, graph or lists, ids): its memory, to within headers."""
    import faiss

    return int(faiss.serialize_index(index).size)


def overlap_at_k(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean over queries of ``|approx[:k] & exact[:k]| / |exact[:k]|`` (-1 padding ignored).

    Raises:
        ValueError: different numbers of rows, or ``k < 1``.
    """
    a, e = np.asarray(approx), np.asarray(exact)
    if len(a) != len(e) or k < 1:
        raise ValueError(f"need the same number of rows and k >= 1, got {len(a)}, {len(e)}, k={k}")
    vals = []
    for x, y in zip(a[:, :k], e[:, :k], strict=True):
        y = y[y >= 0]
        if len(y):
            vals.append(np.intersect1d(x[x >= 0], y).size / len(y))
    return float(np.mean(vals)) if vals else float("nan")


def searched_breadth(index, k: int) -> str:
    """The breadth :func:`ecrec.recall.faiss_search` actually searches for ``k`` results, e.g. ``"nprobe=12"``.

    Not always the one set with :func:`set_breadth`: the search never goes
    narrower than ``k`` results (HNSW ``efSearch >= k``; IVF: enough cells
    that the smallest ``nprobe`` lists together hold ``k`` vectors), capped
    by the index (``nprobe <= nlist``). ``"exact"`` for an exact index.

    Raises:
        ValueError: ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return R._search_params(index, min(int(k), int(index.ntotal)))[1]


def compare_indexes(
    items: np.ndarray,
    queries: np.ndarray,
    k: int,
    breadths: dict[str, Sequence[int | None]],
    *,
    n_latency: int = 200,
    warmup: int = 20,
    seed: int = 0,
    label: str = "",
    index_kwargs: dict[str, dict] | None = None,
) -> pd.DataFrame:
    """Build each kind of index over ``items`` and measure it against the exact top ``k``.

    For every kind in ``breadths`` (e.g. ``{"flat": [None], "hnsw": [100, 200],
    "ivfpq": [8, 32]}``) the index is built once (build time), then for each
    breadth: the overlap of its top ``k`` with the exact (flat) top ``k`` over
    all ``queries``, the latency of single-query searches (batch 1, the first
    ``warmup`` excluded; p50/p95/p99, each only where at least 10 timed
    queries lie beyond it, :func:`ecrec.timing.percentiles_ms`) over
    ``n_latency`` queries, and the throughput of one batch search of all
    queries. ``breadth`` is the breadth searched (:func:`searched_breadth`),
    ``breadth asked`` the one set (:func:`set_breadth`). Timings use
    :func:`time.perf_counter` with whatever FAISS thread count is set.

    Args:
        items: float (n, d) item vectors.
        queries: float (q, d) non-zero query vectors (users with a history).
        k: results per query (>= 1).
        breadths: kind -> search breadths (``None`` for flat).
        n_latency, warmup: single-query timings, and the untimed searches before them.
        label: a name for the catalogue (a column of the result).
        index_kwargs: kind -> extra arguments of :func:`build_ann_index`.

    Returns:
        One row per (kind, breadth): ``catalogue``, ``n_items``, ``index``,
        ``breadth`` (searched), ``breadth asked``, ``build_s``,
        ``bytes_per_item``, ``overlap@k``, ``p50_ms``, ``p95_ms``, ``p99_ms``
        (NaN from too few queries), ``n_timed`` (queries behind every
        percentile), ``latency note`` (which percentile is NaN and why), ``batch_qps``.

    Raises:
        ValueError: unknown kind, ``k < 1``, or no query.
    """
    import warnings

    if k < 1 or len(queries) == 0:
        raise ValueError(f"need k >= 1 and at least one query, got k={k}, {len(queries)} queries")
    unknown = set(breadths) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown index kinds {sorted(unknown)}; choose from {KINDS}")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    rng = np.random.default_rng(seed)
    lat_rows = rng.choice(len(q), size=n_latency + warmup, replace=len(q) < n_latency + warmup)
    exact_index = R.build_index(items, "flat")
    exact = R.faiss_search(exact_index, q, k)
    rows = []
    for kind, values in breadths.items():
        t0 = time.perf_counter()
        index = exact_index if kind == "flat" else build_ann_index(
            items, kind, seed=seed, **(index_kwargs or {}).get(kind, {}))
        build_s = time.perf_counter() - t0 if kind != "flat" else None
        if kind == "flat":  # time the flat build on its own (it was built above for the reference)
            t0 = time.perf_counter()
            R.build_index(items, "flat")
            build_s = time.perf_counter() - t0
        per_item = index_bytes(index) / len(items)
        for breadth in values:
            asked = set_breadth(index, breadth)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", R.ShortResultWarning)  # a short list counts as missed items
                t0 = time.perf_counter()
                found = R.faiss_search(index, q, k)
                batch_s = time.perf_counter() - t0
                times = []
                for i, r in enumerate(lat_rows):
                    t0 = time.perf_counter()
                    R.faiss_search(index, q[r : r + 1], k)
                    if i >= warmup:
                        times.append(time.perf_counter() - t0)
            lat = percentiles_ms(times)
            rows.append({
                "catalogue": label, "n_items": len(items), "index": kind, "breadth": searched_breadth(index, k),
                "breadth asked": asked, "build_s": build_s, "bytes_per_item": per_item,
                f"overlap@{k}": overlap_at_k(found, exact, k), "p50_ms": lat["p50_ms"], "p95_ms": lat["p95_ms"],
                "p99_ms": lat["p99_ms"], "n_timed": lat["n"], "latency note": lat["note"], "batch_qps": len(q) / batch_s,
            })
    return pd.DataFrame(rows)


def right_choice(table: pd.DataFrame, k: int, min_overlap: float = 0.95) -> pd.DataFrame:
    """Per catalogue size, the index with the lowest p50 latency among those whose overlap >= ``min_overlap``.

    Exact search always qualifies (overlap 1), so every size has an answer.

    Args:
        table: rows of :func:`compare_indexes` (several catalogues concatenated).
        k: the ``k`` of its ``overlap@k`` column.
        min_overlap: the quality target, in [0, 1].

    Returns:
        One row per ``n_items`` (ascending): ``index``, ``breadth``, ``p50_ms``,
        ``overlap@k``, ``bytes_per_item``, ``flat_p50_ms`` and ``speed-up vs flat``.

    Raises:
        ValueError: ``min_overlap`` outside [0, 1] or a missing column.
    """
    col = f"overlap@{k}"
    if not 0 <= min_overlap <= 1:
        raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap}")
    missing = {col, "n_items", "index", "p50_ms"} - set(table.columns)
    if missing:
        raise ValueError(f"table lacks columns {sorted(missing)} (pass compare_indexes' output)")
    out = []
    for n, part in table.groupby("n_items", sort=True):
        ok = part[part[col] >= min_overlap].sort_values(["p50_ms", "index"], kind="stable")
        best = ok.iloc[0]
        flat = float(part.loc[part["index"] == "flat", "p50_ms"].min())
        out.append({"n_items": int(n), "index": best["index"], "breadth": best["breadth"], "p50_ms": best["p50_ms"],
                    col: best[col], "bytes_per_item": best["bytes_per_item"], "flat_p50_ms": flat,
                    "speed-up vs flat": flat / best["p50_ms"]})
    return pd.DataFrame(out)
