"""Chapter 08 benchmark: exact search vs HNSW vs IVF-PQ as the catalogue grows (no timed assertions anywhere).

For each catalogue size, one run builds the three indexes over the same
vectors and prints, side by side: build time, bytes per item, overlap with
the exact top K (the share of the exact top K returned), p50/p95/p99 latency
of single-query searches (batch 1) and batch throughput; then the ratios
(speed-up over exact search, memory over exact search) and, per size, the
fastest index whose overlap meets the target (``ecrec.ann.right_choice``).

Vectors: a synthetic catalogue resampled from real text embeddings
(``--base minilm``, the default: MiniLM vectors of the real descriptions,
about a minute to encode, each synthetic item one of them plus noise) or from
2,000 random directions in ``--dim`` dimensions (``--base random``: no
clusters to exploit, the hard case for the approximate indexes). Queries come
from the same generator. Every approximate search sets its breadth explicitly
(``ecrec.ann.set_breadth``) and ``ecrec.recall.faiss_search`` raises it to at
least K. Indexes are built with one thread (deterministic HNSW graph): the
1,000,000-item HNSW build takes several minutes.

A second part (``--overhead``, alone with ``--overhead-only``) measures what
``ecrec.recall.faiss_search`` adds to raw FAISS, side by side for every index
type at batch 1 (single-query searches, as a request is served) and at batch
4,000 (one call): the wrapper against ``index.search`` at the SAME breadth
(the breadth the wrapper searches, :func:`ecrec.ann.searched_breadth`, set on
the index). Interleaved query by query (batch 1) and call by call (batch
4,000), in a rotating order, best of ``--repeats``; target <= 1.1x. It also
checks that both give the same lists (raw FAISS's ties put in the wrapper's
order, lower item index first). ``--reference PATH`` adds another version of
``ecrec/recall.py`` (e.g. ``git show REV:ecrec/recall.py > /tmp/old.py``) as a
third contender: before and after in one run.

Run: ``python benchmarks/bench_ann.py [--sizes 10000 100000 1000000] [--k 100] [--threads 1]``
(the default sizes take about 15 minutes on 2 cores; ``--sizes 10000 50000`` about 2);
``python benchmarks/bench_ann.py --overhead-only --base random`` about two minutes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from ecrec import ann
from ecrec import system as S


def base_vectors(kind: str, d: int, seed: int) -> np.ndarray:
    if kind == "minilm":
        from ecrec.data import load_clean_online_retail
        from ecrec.features import item_catalog
        from ecrec.text import encode_texts

        clean, _ = load_clean_online_retail()
        return encode_texts(item_catalog(clean)["description"].tolist())
    return np.random.default_rng(seed).normal(size=(2000, d)).astype(np.float32)


def _load_reference(path: str):
    """Another version of ``ecrec/recall.py``, loaded as a module of its own (its caches are its own)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("recall_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _interleaved(fns: dict, singles: list[np.ndarray], batch: np.ndarray, repeats: int) -> dict:
    """name -> (best seconds per single-query call, best seconds of one ``batch`` call), over ``repeats``.

    Each single query is searched by every contender in turn, the order rotating
    from query to query, so that a load that comes and goes slows all alike.
    """
    names = list(fns)
    best = {name: [np.inf, np.inf] for name in names}
    for r in range(repeats):
        total = dict.fromkeys(names, 0.0)
        for i, x in enumerate(singles):
            for j in range(len(names)):
                name = names[(i + j) % len(names)]
                t0 = time.perf_counter()
                fns[name](x)
                total[name] += time.perf_counter() - t0
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            t0 = time.perf_counter()
            fns[name](batch)
            best[name][1] = min(best[name][1], time.perf_counter() - t0)
        for name in names:
            best[name][0] = min(best[name][0], total[name] / len(singles))
    return best


def _same_lists(index, q: np.ndarray, k: int) -> float:
    """Share of queries where faiss_search's list equals raw FAISS's with ties ordered by lower item index."""
    from ecrec import recall as R

    sc, ids = index.search(q, k)
    order = np.lexsort((ids, -sc.astype(np.float64)), axis=1)
    return float((R.faiss_search(index, q, k) == np.take_along_axis(ids, order, axis=1)).all(axis=1).mean())


def wrapper_overhead(base: np.ndarray, n_items: int, k: int, n_batch: int, n_single: int, repeats: int,
                     seed: int, reference: str | None = None) -> pd.DataFrame:
    """faiss_search against raw index.search at the same breadth, batch 1 and batch ``n_batch``, every index type.

    One row per index type: the raw times, each contender's time / raw (best
    of ``repeats`` interleaved), and the share of queries whose lists agree.
    """
    from ecrec import recall as R

    items = ann.synthetic_catalogue(base, n_items, seed=seed)
    q = ann.synthetic_catalogue(base, n_batch, seed=seed + 1)
    singles = [q[i : i + 1] for i in range(n_single)]
    ref = _load_reference(reference) if reference else None
    rows = []
    for kind, breadth in (("flat", None), ("hnsw", 2 * k), ("ivfpq", 32)):
        index = ann.build_ann_index(items, kind, seed=seed)
        ann.set_breadth(index, breadth)
        searched = ann.searched_breadth(index, k)
        if kind != "flat":  # raw FAISS searches at the breadth the wrapper searches
            ann.set_breadth(index, int(searched.split("=")[1]))
        fns = {"raw": lambda x, i=index: i.search(x, k), "faiss_search": lambda x, i=index: R.faiss_search(i, x, k)}
        if ref is not None:
            fns["reference faiss_search"] = lambda x, i=index: ref.faiss_search(i, x, k)
        best = _interleaved(fns, singles, q, repeats)
        row = {"index": kind, "breadth searched": searched, "batch 1: raw ms/query": 1000 * best["raw"][0]}
        row |= {f"batch 1: {name} / raw": best[name][0] / best["raw"][0] for name in fns if name != "raw"}
        # the wrapper's own time per single-query call, in microseconds (what a ratio hides on a fast index)
        row |= {f"batch 1: {name} - raw, us": 1e6 * (best[name][0] - best["raw"][0]) for name in fns if name != "raw"}
        row[f"batch {n_batch:,}: raw s"] = best["raw"][1]
        row |= {f"batch {n_batch:,}: {name} / raw": best[name][1] / best["raw"][1] for name in fns if name != "raw"}
        row["same lists as raw"] = _same_lists(index, q, k)
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--base", choices=["random", "minilm"], default="minilm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-overlap", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overhead", action="store_true", help="also measure faiss_search against raw FAISS")
    parser.add_argument("--overhead-only", action="store_true", help="only that measurement")
    parser.add_argument("--overhead-items", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference", help="another ecrec/recall.py to time beside the installed one")
    args = parser.parse_args()

    base = base_vectors(args.base, args.dim, args.seed)
    if args.overhead or args.overhead_only:
        with S.serving_threads(args.threads):
            over = wrapper_overhead(base, args.overhead_items, args.k, 4000, 300, args.repeats, args.seed,
                                    args.reference)
        pd.set_option("display.width", 200)
        print(f"faiss_search against raw FAISS, {args.overhead_items:,} items, k = {args.k}, "
              f"{args.threads} thread(s), vectors: {args.base}, d = {base.shape[1]} (target <= 1.1x)")
        print(over.round(4).to_string(index=False))
        ratios = over[[c for c in over.columns if c.endswith("faiss_search / raw") and "reference" not in c]]
        print(f"target <= 1.1x: {'met' if (ratios <= 1.1).all().all() else 'NOT met'} "
              f"(worst {ratios.max().max():.3f}x)")
        if args.overhead_only:
            return
    queries = ann.synthetic_catalogue(base, args.queries, seed=args.seed + 1)
    k = args.k
    breadths = {"flat": [None], "hnsw": [k, 2 * k, 4 * k], "ivfpq": [8, 32, 128]}
    parts = []
    with S.serving_threads(args.threads):
        for n in args.sizes:
            t0 = time.perf_counter()
            items = ann.synthetic_catalogue(base, n, seed=args.seed)
            part = ann.compare_indexes(items, queries, k, breadths, n_latency=min(args.queries, 500), seed=args.seed,
                                       label=f"{n:,}")
            parts.append(part)
            print(f"{n:,} items: measured in {time.perf_counter() - t0:.0f} s", flush=True)
            del items
    table = pd.concat(parts, ignore_index=True)
    flat = table[table["index"] == "flat"].set_index("n_items")
    table["speed-up vs exact (p50)"] = table["n_items"].map(flat["p50_ms"]) / table["p50_ms"]
    table["memory / exact"] = table["bytes_per_item"] / table["n_items"].map(flat["bytes_per_item"])
    table["throughput / exact"] = table["batch_qps"] / table["n_items"].map(flat["batch_qps"])
    pd.set_option("display.width", 200)
    print(f"\nk = {k}, {args.queries} queries, {args.threads} thread(s), vectors: {args.base}, d = {base.shape[1]}")
    print(table.drop(columns=["catalogue"]).round(3).to_string(index=False))
    print(f"\nFastest index with overlap >= {args.min_overlap}, per catalogue size:")
    print(ann.right_choice(table, k, args.min_overlap).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
