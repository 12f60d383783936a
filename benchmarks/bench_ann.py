"""Chapter 07 benchmark: exact search vs HNSW vs IVF-PQ as the catalogue grows (no timed assertions anywhere).

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

Run: ``python benchmarks/bench_ann.py [--sizes 10000 100000 1000000] [--k 100] [--threads 1]``
(the default sizes take about 15 minutes on 2 cores; ``--sizes 10000 50000`` about 2).
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
    args = parser.parse_args()

    base = base_vectors(args.base, args.dim, args.seed)
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
