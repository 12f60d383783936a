"""Ranking metrics: ``ecrec.metrics`` against ranx and a per-user Python loop, side by side (no timed asserts).

Chapter 05's setting: every test user of the real data, ALS's top 200
(``K = 200``), relevance = the user's test purchases. Printed, best of
``--repeats`` each, interleaved so that a busy machine slows every contender alike:

1. ONE call for all metrics at K: ``ecrec.metrics.ranking_metrics`` (nine
   metrics: recall, capped recall, precision, hit rate, MRR, NDCG binary and
   graded, MAP with both denominators) against ONE ``ranx.evaluate`` of the
   six metrics ranx shares (recall, precision, hit rate, MRR, NDCG, MAP).
2. Single-metric calls: each of those six metrics alone, ``ecrec.metrics.<m>_at_k``
   against ``ranx.evaluate(qrels, run, "<m>@K")``; the total of the calls.
3. The vectorised ``ranking_metrics`` against a plain per-user Python loop
   computing recall, precision, NDCG and MAP.
4. The cost of ties: the same lists with scores rounded so that ties exist
   (exact tie expectation) against the lists without ties.

ranx is the oracle: every shared metric must equal ranx's to 1e-10 (ranx's
MAP divides by |relevant|: ``map_at_k(..., denominator="n_relevant")``;
ranx's NDCG uses linear gains and the ideal list from all relevant items, as
ecrec's). ranx runs its numba kernels on every core it sees; the ranx objects
(``Qrels``, ``Run``) are built once, outside the timings, and its kernels are
compiled before timing. ``ecrec.metrics`` is given the scores (``scores=``)
so that it checks for ties, as the chapters do.

Run: ``python benchmarks/bench_metrics.py [--repeats 5]`` (about a minute on 2 cores,
most of it loading the data and fitting ALS).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ecrec import metrics as M

RANX_METRICS = {"recall": "recall", "precision": "precision", "hit_rate": "hit_rate", "mrr": "mrr",
                "ndcg": "ndcg", "map": "map"}


def chapter05_lists(k: int, cache: Path | None) -> tuple[np.ndarray, np.ndarray, object]:
    """ALS's top ``k`` of every test user of the real data: (ids, scores, relevant csr)."""
    import scipy.sparse as sp

    if cache is not None and cache.exists():
        z = np.load(cache)
        rel = sp.csr_array((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
        return z["ids"], z["scores"], rel
    from ecrec import recall as R
    from ecrec.data import load_clean_online_retail
    from ecrec.features import split_dates

    clean, _ = load_clean_online_retail()
    _, test_start = split_dates(clean["InvoiceDate"])
    data = R.build_recall_data(clean, test_start)
    user_f, item_f = R.fit_als(data.train_matrix, factors=64, iterations=10, seed=0)
    rows = data.train_row_of_user
    queries = np.where(rows[:, None] >= 0, user_f[np.maximum(rows, 0)], 0.0).astype(np.float32)
    ids, scores = R.top_k(queries @ item_f.T, k, return_scores=True)
    ids, scores = ids[:, :k], scores[:, :k]
    rel = sp.csr_array(data.relevant_all)
    if cache is not None:
        np.savez(cache, ids=ids, scores=scores, data=rel.data, indices=rel.indices, indptr=rel.indptr,
                 shape=np.array(rel.shape))
    return ids, scores, rel


def ranx_objects(ids: np.ndarray, rel):
    """ranx ``Qrels`` (binary) and ``Run`` (score = K - rank: a strict order, ranx's own tie rule unused)."""
    from ranx import Qrels, Run

    qrels, run = {}, {}
    for u in range(len(ids)):
        items = rel.indices[rel.indptr[u] : rel.indptr[u + 1]]
        if len(items) == 0:
            continue  # ecrec excludes users without a relevant item from the means; so does ranx without a qrel
        qrels[f"u{u}"] = {f"i{i}": 1 for i in items}
        row = ids[u][ids[u] >= 0]
        run[f"u{u}"] = {f"i{i}": float(len(row) - r) for r, i in enumerate(row)} or {"none": 0.0}
    return Qrels(qrels), Run(run)


def loop_metrics(retrieved: np.ndarray, relevant: list[set], k: int) -> dict[str, float]:
    """Recall, precision, NDCG and MAP@k with one Python iteration per user (the plain way)."""
    sums = {"recall": 0.0, "precision": 0.0, "ndcg": 0.0, "map": 0.0}
    n = 0
    for row, rel in zip(retrieved, relevant, strict=True):
        if not rel:
            continue
        n += 1
        seen, top = set(), []
        for item in row:
            if item >= 0 and item not in seen:
                seen.add(item)
                top.append(item)
        hits = [i in rel for i in top[:k]]
        n_hit = sum(hits)
        sums["recall"] += n_hit / len(rel)
        sums["precision"] += n_hit / k
        sums["ndcg"] += sum(1 / np.log2(i + 2) for i, h in enumerate(hits) if h) / sum(
            1 / np.log2(i + 2) for i in range(min(k, len(rel))))
        cum, ap = 0, 0.0
        for i, h in enumerate(hits):
            if h:
                cum += 1
                ap += cum / (i + 1)
        sums["map"] += ap / min(k, len(rel))
    return {m: v / n for m, v in sums.items()}


def single(name: str, ids, rel, k: int, scores) -> float:
    if name == "map":
        return M.map_at_k(ids, rel, k, denominator="n_relevant", scores=scores)
    return getattr(M, f"{name}_at_k")(ids, rel, k, scores=scores)


def timed(fns: dict[str, callable], repeats: int) -> tuple[dict[str, float], dict[str, object], dict[str, float]]:
    """Best wall time and best CPU time (all threads) of each function, interleaved in every round."""
    best, cpu, out = dict.fromkeys(fns, np.inf), dict.fromkeys(fns, np.inf), {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
            cpu[name] = min(cpu[name], time.process_time() - c0)
    return best, out, cpu


def frame(wall: dict[str, float], cpu: dict[str, float], base: str) -> pd.DataFrame:
    f = pd.DataFrame({"wall_s": wall, "cpu_s": cpu})
    return f.assign(**{f"wall / {base}": f["wall_s"] / f.loc[base, "wall_s"]}).round(4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=None, help="an .npz to keep ALS's lists between runs")
    args = parser.parse_args()
    from ranx import evaluate

    k = args.k
    ids, tie_scores, rel = chapter05_lists(k, args.cache)
    # The chapter's lists are strict: rows whose ALS scores tie (users without history score 0
    # everywhere, listed by lower item index) get their rank as score, the order top_k listed them in.
    tied_rows = (tie_scores[:, 1:] == tie_scores[:, :-1]).any(1)
    scores = np.where(tied_rows[:, None], np.arange(k, 0, -1, dtype=np.float64)[None, :], tie_scores)
    qrels, run = ranx_objects(ids, rel)
    names = [f"{m}@{k}" for m in RANX_METRICS.values()]
    evaluate(qrels, run, names)  # compile ranx's numba kernels before timing
    n_users = int((np.diff(rel.indptr) > 0).sum())
    print(f"{len(ids)} test users ({n_users} with a test purchase), K={k}; ranx on {numba_threads()} thread(s)")

    # 1. one call for everything
    ours, theirs = "ecrec ranking_metrics (9 metrics, both MAP)", "ranx evaluate (6 metrics)"
    t, out, c = timed({ours: lambda: M.ranking_metrics(ids, rel, [k], scores=scores, map_denominator="both"),
                       theirs: lambda: evaluate(qrels, run, names)}, args.repeats)
    table, ref = out[ours], out[theirs]
    cols = {"recall": "recall", "precision": "precision", "hit_rate": "hit_rate", "mrr": "mrr", "ndcg": "ndcg",
            "map": "map_n_relevant"}
    diffs = {m: abs(float(table.loc[k, c_]) - float(ref[f"{m}@{k}"])) for m, c_ in cols.items()}
    assert max(diffs.values()) < 1e-10, diffs  # ranx is the oracle
    print(f"\n1. one call, all metrics at K={k} (largest difference from ranx: {max(diffs.values()):.1e})")
    print(frame(t, c, ours).to_string())
    print(f"   -> ecrec is {t[theirs] / t[ours]:.2f}x ranx, wall (target >= 5)")

    # 2. single-metric calls
    fns = {}
    for m, rm in RANX_METRICS.items():
        fns[f"ecrec {m}"] = lambda m=m: single(m, ids, rel, k, scores)
        fns[f"ranx {rm}"] = lambda rm=rm: evaluate(qrels, run, f"{rm}@{k}")
    t2, out2, c2 = timed(fns, args.repeats)
    for m, rm in RANX_METRICS.items():
        assert abs(out2[f"ecrec {m}"] - out2[f"ranx {rm}"]) < 1e-10, (m, out2[f"ecrec {m}"], out2[f"ranx {rm}"])
    rows = pd.DataFrame({"ecrec_wall_s": [t2[f"ecrec {m}"] for m in RANX_METRICS],
                         "ranx_wall_s": [t2[f"ranx {rm}"] for rm in RANX_METRICS.values()],
                         "ecrec_cpu_s": [c2[f"ecrec {m}"] for m in RANX_METRICS],
                         "ranx_cpu_s": [c2[f"ranx {rm}"] for rm in RANX_METRICS.values()]}, index=list(RANX_METRICS))
    rows.loc["total (6 calls)"] = rows.sum()
    rows["ranx / ecrec (wall)"] = rows["ranx_wall_s"] / rows["ecrec_wall_s"]
    print(f"\n2. single-metric calls at K={k} (values equal to ranx's within 1e-10; target >= 1 per call)")
    print(rows.round(4).to_string())

    # 3. vectorised vs per-user loop (the loop's four metrics, same numbers)
    rel_sets = [set(rel.indices[a:b].tolist()) for a, b in zip(rel.indptr[:-1], rel.indptr[1:], strict=True)]
    vec, loop = "vectorised ranking_metrics", "per-user Python loop (4 metrics)"
    t3, out3, c3 = timed({vec: lambda: M.ranking_metrics(ids, rel, [k], scores=scores),
                          loop: lambda: loop_metrics(ids, rel_sets, k)}, max(1, args.repeats // 2))
    for m, v in out3[loop].items():
        assert abs(out3[vec].loc[k, m] - v) < 1e-9, m
    print(f"\n3. ranking_metrics against a per-user loop, K={k} (target: the loop >= 10x slower)")
    print(frame(t3, c3, vec).to_string())

    # 4. the price of ties: the real ALS scores (users without history all tied), and scores rounded
    rounded = np.round(tie_scores, 2)
    fns4 = {"strict lists (no tie: fast path)": lambda: M.ranking_metrics(ids, rel, [k], scores=scores),
            f"ALS scores ({int(tied_rows.sum())} rows with a tie)":
                lambda: M.ranking_metrics(ids, rel, [k], scores=tie_scores),
            f"rounded to 0.01 ({int((rounded[:, 1:] == rounded[:, :-1]).any(1).sum())} rows with a tie)":
                lambda: M.ranking_metrics(ids, rel, [k], scores=rounded)}
    t4, _, c4 = timed(fns4, args.repeats)
    print("\n4. the cost of ties (exact expectation over tie orders, only in the rows that hold one)")
    print(frame(t4, c4, next(iter(fns4))).to_string())


def numba_threads() -> int:
    import numba

    return int(numba.get_num_threads())


if __name__ == "__main__":
    main()
