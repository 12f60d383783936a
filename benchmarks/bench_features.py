"""How long the full point-in-time CTR dataset takes to build, and how it grows with rows.

Builds the dataset (positives, negatives, all point-in-time features) on half
the customers, all of them, and twice the data (every customer repeated
under a shifted ID, so twice the rows with the same shape), and prints the
seconds and the ratio to the full build side by side (linear growth: the
"twice" row at <= 2.1x the full build's time). Then the full build with the
negative sampler of format 3 (an ``np.isin`` over the whole basket key set in
each of up to 50 rounds, re-sorting it every call) against today's (keys
sorted once, ``searchsorted``, impossible draws dropped early), with the ratio.

    python benchmarks/bench_features.py [--repeat 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from ecrec import features as F
from ecrec.data import load_clean_online_retail


def doubled(clean: pd.DataFrame) -> pd.DataFrame:
    """The log twice: the copy's customers get IDs shifted by 100,000 and invoices a 'X' prefix."""
    shift = 100_000
    copy = clean.assign(CustomerID=clean["CustomerID"] + shift, InvoiceNo="X" + clean["InvoiceNo"].astype(str))
    return pd.concat([clean, copy], ignore_index=True)


def half(clean: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    users = clean["CustomerID"].unique()
    keep = np.random.default_rng(seed).choice(users, size=len(users) // 2, replace=False)
    return clean[clean["CustomerID"].isin(keep)].reset_index(drop=True)


def old_sample_negatives(positives, events, *, neg_ratio, method, seed, window_days=30, max_rounds=50,
                         exclude_bought_in_split=False):
    """The format-3 sampler, kept here only to time it (invoice baskets, np.isin every round)."""
    _DAY_S = F._DAY_S
    rng = np.random.default_rng(seed)
    items = pd.Index(np.sort(events["item_id"].astype(str).unique()))
    n_items = len(items)
    ev_item = items.get_indexer(events["item_id"].astype(str).to_numpy()).astype(np.int64)
    ev_t = F._seconds(events["ts"])
    t0 = int(min(ev_t.min(), F._seconds(positives["ts"]).min())) - (window_days + 1) * _DAY_S
    ev_t = ev_t - t0
    invoices = pd.Index(np.unique(np.concatenate([events["invoice_no"].astype(str).to_numpy(),
                                                  positives["invoice_no"].astype(str).to_numpy()])))
    basket = np.unique(invoices.get_indexer(events["invoice_no"].astype(str).to_numpy()).astype(np.int64) * n_items
                       + ev_item)
    by_time = np.argsort(ev_t, kind="stable")
    t_sorted, item_by_time = ev_t[by_time], ev_item[by_time]
    rep = np.repeat(np.arange(len(positives)), neg_ratio)
    t = F._seconds(positives["ts"])[rep] - t0
    span = int(max(ev_t.max(), t.max())) + 1
    item_keys = np.sort(ev_item * span + ev_t)
    w_start = t - window_days * _DAY_S
    lo, hi = np.searchsorted(t_sorted, w_start, "left"), np.searchsorted(t_sorted, t, "left")
    inv = invoices.get_indexer(positives["invoice_no"].astype(str).to_numpy())[rep].astype(np.int64)
    drawn = np.full(len(rep), -1, dtype=np.int64)
    todo = np.flatnonzero(hi > lo)
    for _ in range(max_rounds):
        if len(todo) == 0:
            break
        if method == "popularity":
            j = lo[todo] + np.floor(rng.random(len(todo)) * (hi[todo] - lo[todo])).astype(np.int64)
            cand = item_by_time[np.minimum(j, hi[todo] - 1)]
            ok = np.ones(len(todo), dtype=bool)
        else:
            cand = rng.integers(0, n_items, size=len(todo))
            ok = np.searchsorted(item_keys, cand * span + t[todo], "left") > np.searchsorted(
                item_keys, cand * span + w_start[todo], "left")
        ok &= ~np.isin(inv[todo] * n_items + cand, basket)
        drawn[todo[ok]] = cand[ok]
        todo = todo[~ok]
    keep = drawn >= 0
    neg = positives[["invoice_no", "user_id", "ts", "country", "split"]].iloc[rep[keep]].reset_index(drop=True)
    neg.insert(2, "item_id", np.asarray(items)[drawn[keep]])
    return neg.drop_duplicates(["invoice_no", "item_id"]).reset_index(drop=True)


def timed_build(data: pd.DataFrame, config: F.CtrDatasetConfig, repeat: int, sampler=None) -> tuple[float, int]:
    original = F.sample_negatives
    if sampler is not None:
        F.sample_negatives = sampler
    try:
        best, n = np.inf, 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = F.build_ctr_dataset(data, config)
            best = min(best, time.perf_counter() - t0)
            n = len(out)
    finally:
        F.sample_negatives = original
    return best, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1, help="builds per size; the best time is kept")
    args = parser.parse_args()
    clean, _ = load_clean_online_retail()
    config = F.CtrDatasetConfig()
    rows = []
    for name, data in (("half", half(clean)), ("full", clean), ("twice", doubled(clean))):
        best, n = timed_build(data, config, args.repeat)
        rows.append({"data": name, "clean_rows": len(data), "examples": n, "seconds": best})
    table = pd.DataFrame(rows).set_index("data")
    table["x_rows_vs_full"] = table["examples"] / table.loc["full", "examples"]
    table["x_time_vs_full"] = table["seconds"] / table.loc["full", "seconds"]
    table["us_per_example"] = 1e6 * table["seconds"] / table["examples"]
    print(f"build_ctr_dataset, neg_ratio={config.neg_ratio}, history_len={config.history_len}")
    print(table.round(3).to_string())
    t_old, n_old = timed_build(clean, config, args.repeat, sampler=old_sample_negatives)
    t_new = table.loc["full", "seconds"]
    print("\nfull build, negative sampler of format 3 vs today's")
    print(pd.DataFrame(
        {"examples": [n_old, table.loc["full", "examples"]], "seconds": [t_old, t_new]},
        index=["old sampler (np.isin every round)", "new sampler (sorted once, searchsorted)"],
    ).assign(x_faster=lambda f: t_old / f["seconds"]).round(3).to_string())


if __name__ == "__main__":
    main()
