"""Chapter 04's cost without changing what it measures: three changes, each against what it replaced, in one run.

* **bi-encoder evaluation** (:func:`ecrec.finetune.predict_logits` on a bi-encoder and
  :class:`ecrec.pairs.EncodedHistories`): every distinct item encoded once, then the head on the
  cached vectors; *before*: every batch encodes the items it names (the generic loop, reached here
  through :class:`ecrec.distributed._Rows`, a view that is not an ``EncodedHistories``). Real MiniLM,
  real item descriptions, histories of 3 items, as chapter 04's early-stopping evaluation
  (1,024 rows); also checks that both give the same logits.
* **BiProbe's cross-validation** (:class:`ecrec.bert.BiProbe`): folds in worker processes
  (``n_jobs=-1``) against one process (``n_jobs=1``); the same C, coefficients equal up to the order of
  floating-point sums (the workers' BLAS runs on fewer threads).
* **bootstrap AUC** (:func:`ecrec.stats.weighted_auc_many`): consecutive one-class score groups
  merged, against the same sums over every score group (the previous code, kept below as the
  reference); values must be equal to the last bit.

    python benchmarks/bench_ch04_cost.py            # ~2 min on 2 cores
    python benchmarks/bench_ch04_cost.py --repeats 3

``--repeats`` interleaves the pairs and keeps each side's fastest run. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd


def best_of(fns: dict, repeats: int) -> dict[str, tuple[float, object]]:
    """Run each callable ``repeats`` times, interleaved; fastest seconds and the last result per name."""
    out: dict[str, tuple[float, object]] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            res = fn()
            dt = time.perf_counter() - t
            out[name] = (min(dt, out.get(name, (np.inf, None))[0]), res)
    return out


def auc_every_group(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The previous weighted_auc_many: one column per distinct score (no merging)."""
    from scipy import sparse

    _, group = np.unique(score, return_inverse=True)
    n_groups = int(group.max()) + 1
    pos, neg = y == 1, y == 0
    g_pos = sparse.csr_array((np.ones(pos.sum()), (np.arange(pos.sum()), group[pos])), shape=(pos.sum(), n_groups))
    g_neg = sparse.csr_array((np.ones(neg.sum()), (np.arange(neg.sum()), group[neg])), shape=(neg.sum(), n_groups))
    out = np.empty(len(weights))
    for start in range(0, len(weights), 64):
        wb = weights[start : start + 64]
        wp = np.asarray((g_pos.T @ wb[:, pos].T).T)
        wn = np.asarray((g_neg.T @ wb[:, neg].T).T)
        below = np.cumsum(wn, axis=1) - wn
        out[start : start + 64] = (wp * (below + 0.5 * wn)).sum(1) / (wp.sum(1) * wn.sum(1))
    return out


def bench_eval(n_rows: int, repeats: int) -> dict:
    import torch

    from ecrec import bert, finetune, pairs
    from ecrec.data import load_clean_online_retail
    from ecrec.distributed import _Rows
    from ecrec.features import item_catalog
    from ecrec.text import load_tokenizer

    torch.manual_seed(0)
    catalog = item_catalog(load_clean_online_retail()[0])
    descriptions = catalog.set_index("item_id")["description"]
    rng = np.random.default_rng(0)
    ids = descriptions.index.to_numpy()
    # popularity-skewed draws, as the log's histories and candidates are
    p = 1 / np.arange(1, len(ids) + 1) ** 0.8
    p /= p.sum()
    frame = pd.DataFrame({"item_id": rng.choice(ids, n_rows, p=p),
                          "hist_items": [list(rng.choice(ids, 3, p=p)) for _ in range(n_rows)],
                          "label": rng.integers(0, 2, n_rows)})
    tok = load_tokenizer()
    enc = pairs.encode_histories(tok, frame, descriptions, n_history=3, max_length=24)
    model = bert.load_ctr_model("minilm", architecture="bi").eval()
    precision = finetune.fastest_precision(torch.device("cpu"))
    runs = best_of({
        "each item once": lambda: finetune.predict_logits(model, enc, pad_id=tok.pad_token_id, precision=precision),
        "per batch (before)": lambda: finetune.predict_logits(model, _Rows(enc, np.arange(len(enc))),
                                                              pad_id=tok.pad_token_id, precision=precision)}, repeats)
    hist = enc.hist[enc.hist >= 0]
    per_batch = sum(len(np.unique(np.r_[enc.cand[b], enc.hist[b][enc.hist[b] >= 0]]))
                    for b in pairs.sorted_batches(enc.lengths, 128))
    a, b = runs["each item once"][1], runs["per batch (before)"][1]
    return {"rows": n_rows, "precision": precision, "items encoded (once)": len(np.unique(np.r_[enc.cand, hist])),
            "items encoded (per batch)": per_batch, "s once": runs["each item once"][0],
            "s per batch": runs["per batch (before)"][0],
            "speed-up": runs["per batch (before)"][0] / runs["each item once"][0],
            "max |logit difference|": float(np.abs(a - b).max())}


def bench_probe(n_rows: int, repeats: int) -> dict:
    from ecrec.bert import BiProbe, pair_features

    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(n_rows, 384)), rng.normal(size=(n_rows, 384))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    y = (rng.random(n_rows) < 1 / (1 + np.exp(-(4 * (u * v).sum(1) + 3 * u[:, 0])))).astype(int)
    x = pair_features(u, v)
    runs = best_of({"workers": lambda: BiProbe(n_jobs=-1).fit(x, y),
                    "one process (before)": lambda: BiProbe(n_jobs=1).fit(x, y)}, repeats)
    a, b = runs["workers"][1], runs["one process (before)"][1]
    return {"rows": n_rows, "s workers": runs["workers"][0], "s one process": runs["one process (before)"][0],
            "speed-up": runs["one process (before)"][0] / runs["workers"][0],
            "same C": a.C_ == b.C_, "max |coef difference|": float(np.abs(a.coef_ - b.coef_).max()),
            "max |coef|": float(np.abs(b.coef_).max())}


def bench_bootstrap(n_rows: int, n_users: int, n_boot: int, repeats: int) -> dict:
    from ecrec.stats import user_resample_weights, weighted_auc_many

    rng = np.random.default_rng(0)
    users = rng.integers(0, n_users, n_rows)
    y = (rng.random(n_rows) < 0.2).astype(int)
    score = (rng.normal(size=n_rows) + 0.8 * y).astype(np.float32)  # float32 logits: few exact ties
    counts, index = user_resample_weights(users, n_boot, 0)
    w = counts[:, index]
    runs = best_of({"merged runs": lambda: weighted_auc_many(y, score, w),
                    "every group (before)": lambda: auc_every_group(y, score.astype(np.float64), w)}, repeats)
    a, b = runs["merged runs"][1], runs["every group (before)"][1]
    return {"rows": n_rows, "resamples": n_boot, "s merged": runs["merged runs"][0],
            "s every group": runs["every group (before)"][0],
            "speed-up": runs["every group (before)"][0] / runs["merged runs"][0],
            "identical": bool(np.array_equal(a, b))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--eval-rows", type=int, default=1024)
    ap.add_argument("--probe-rows", type=int, default=20000)
    ap.add_argument("--boot-rows", type=int, default=40000)
    args = ap.parse_args(argv)
    for name, res in [("bi-encoder evaluation", bench_eval(args.eval_rows, args.repeats)),
                      ("BiProbe cross-validation", bench_probe(args.probe_rows, args.repeats)),
                      ("bootstrap AUC, one score", bench_bootstrap(args.boot_rows, 700, 1000, args.repeats))]:
        print(f"\n{name}")
        for k, v in res.items():
            print(f"  {k}: {v:.3g}" if isinstance(v, float) else f"  {k}: {v}")


if __name__ == "__main__":
    main()
