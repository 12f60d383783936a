"""Chapter 07 benchmark: what a request costs, printed as ratios measured side by side (no timed assertions).

1. Feature lookup: ``ecrec.system.FeatureStore.frame`` (a snapshot, array
   lookups) against recomputing the same rows from the log with
   ``ecrec.features.point_in_time_features`` per request, for one user's K
   candidates; the ratio, and a check that both give the same numbers.
2. The ranking stage per request: feature frame + item attributes +
   preprocessing against the DNN's forward pass (which part dominates), at
   batch 1 (one user, K candidates) and in batches of users.
3. The text ranker's item tower (chapter 04's MiniLM bi-encoder): fp32
   against dynamic int8 and ONNX Runtime (when installed), one new item at
   batch 1 and the catalogue's first 512 items in batches, with 1 and 2
   threads: speed-up ratios and the smallest cosine to the fp32 vectors.

Run: ``python benchmarks/bench_serving.py [--sections 1 2 3] [--requests 300]`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from ecrec import ctr
from ecrec import features as F
from ecrec import system as S


def setup(max_users: int, seed: int):
    """Chapter 03's data for ``max_users`` users, a 1-epoch DNN and a snapshot at the test start."""
    from ecrec.data import load_clean_online_retail

    clean, _ = load_clean_online_retail()
    _, test_start = F.split_dates(clean["InvoiceDate"])
    dataset = F.build_ctr_dataset(clean, F.CtrDatasetConfig(max_users=max_users, seed=seed))
    catalog = F.item_catalog(clean)
    vectors = np.random.default_rng(seed).normal(size=(len(catalog), 32)).astype(np.float32)
    text = (pd.Index(catalog["item_id"]), vectors)
    frame = F.add_item_attributes(dataset, catalog, text)
    train, valid, _ = (frame[frame["split"] == s].reset_index(drop=True) for s in F.SPLITS)
    cats, nums = ctr.group_columns(list(ctr.GROUPS), frame.columns)
    dnn = ctr.train_dnn(train, valid, categorical=cats, numeric=nums, text=text, config=ctr.DnnConfig(max_epochs=1))
    events = F.purchase_events(clean)
    store = S.FeatureStore(events, test_start)
    ranker = S.DnnRanker(dnn, store, catalog, catalog["item_id"].to_numpy(), text)
    users = np.sort(dataset["user_id"].unique())
    return events, test_start, ranker, users


def section_features(events, at, ranker, users, k: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    reqs = [(int(u), ranker.item_ids[rng.choice(len(ranker.item_ids), k, replace=False)])
            for u in rng.choice(users, n + 5)]

    def from_log(r):
        ex = pd.DataFrame({"user_id": r[0], "item_id": r[1], "ts": at})
        return F.point_in_time_features(ex, events)

    def from_store(r):
        return ranker.store.frame(np.full(k, r[0]), r[1], at, "United Kingdom")

    few = reqs[: min(n, 30) + 5]  # recomputing from the log is slow: fewer requests
    log_ms = S.latency_ms(from_log, few, warmup=5)
    store_ms = S.latency_ms(from_store, reqs, warmup=5)
    cols = [c for c in from_log(reqs[0]).columns if c.startswith(("u_", "i_", "ui_", "hist"))]
    pd.testing.assert_frame_equal(from_store(reqs[0])[cols], from_log(reqs[0])[cols], check_dtype=False)
    print(f"\n1. Features of one user's {k} candidates (same numbers from both, checked)")
    print(pd.DataFrame({"point_in_time_features from the log": log_ms, "FeatureStore snapshot": store_ms}).T.round(3))
    print(f"   snapshot speed-up (p50): {log_ms['p50_ms'] / store_ms['p50_ms']:.0f}x")


def section_ranking(ranker, users, at, k: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    ids = rng.choice(len(users), n + 20)
    cand = rng.integers(0, len(ranker.item_ids), (len(users), k))
    when, country = np.full(len(users), np.datetime64(at)), np.full(len(users), "United Kingdom", dtype=object)
    cache = {}

    def lookup(i):
        frame, _ = ranker.features(users[i : i + 1], cand[i : i + 1], when[i : i + 1], country[i : i + 1])
        cache[i] = ranker.arrays(frame)

    lookup_ms = S.latency_ms(lookup, ids, warmup=20)
    dnn_ms = S.latency_ms(lambda i: ranker.logits(cache[i]), ids, warmup=20)
    batch = np.arange(min(len(users), 64))
    big = ranker.arrays(ranker.features(users[batch], cand[batch], when[batch], country[batch])[0])
    lookup_tp = S.throughput(lambda: ranker.arrays(ranker.features(users[batch], cand[batch], when[batch],
                                                                   country[batch])[0]), len(batch) * k, repeats=1)
    dnn_tp = S.throughput(lambda: ranker.logits(big), len(batch) * k)
    print(f"\n2. Ranking one user's {k} candidates, {torch.get_num_threads()} thread(s)")
    print(pd.DataFrame({"feature lookup": lookup_ms, "DNN forward": dnn_ms}).T.round(3))
    print(f"   lookup / DNN (p50): {lookup_ms['p50_ms'] / dnn_ms['p50_ms']:.1f}x; rows/s in batches of "
          f"{len(batch)} users: lookup {lookup_tp:,.0f}, DNN {dnn_tp:,.0f}; batch-of-users speed-up over batch 1: "
          f"lookup {lookup_tp / (k / lookup_ms['mean_ms'] * 1000):.1f}x, DNN {dnn_tp / (k / dnn_ms['mean_ms'] * 1000):.1f}x")


def section_text(n: int, seed: int, tmp: str) -> None:
    from ecrec import bert
    from ecrec.data import load_clean_online_retail
    from ecrec.features import item_catalog
    from ecrec.text import load_tokenizer

    tok = load_tokenizer()
    clean, _ = load_clean_online_retail()
    texts = item_catalog(clean)["description"].str.lower().tolist()[:512]
    tokens = tok(texts, truncation=True, max_length=24)["input_ids"]
    model = bert.load_ctr_model(architecture="bi", seed=seed).eval()
    towers = {"fp32": model, "int8": S.quantize_int8(model)}
    ok, message = S.onnx_status()
    if ok:
        towers["onnx"] = S.export_onnx(model, f"{tmp}/bench_tower.onnx", tokens[:2], pad_id=tok.pad_token_id)
    ref = S.item_tower_vectors(model, tokens, pad_id=tok.pad_token_id)
    rng = np.random.default_rng(seed)
    rows = {}
    for threads in (1, 2):
        with S.serving_threads(threads):
            for name, t in towers.items():
                t = S.OnnxItemTower(t, threads) if name == "onnx" else t
                lat = S.latency_ms(lambda j, t=t: S.item_tower_vectors(t, [tokens[j]], pad_id=tok.pad_token_id),
                                   list(rng.integers(0, len(tokens), n + 20)), warmup=20)
                tp = S.throughput(lambda t=t: S.item_tower_vectors(t, tokens, pad_id=tok.pad_token_id), len(tokens),
                                  repeats=1)
                vec = S.item_tower_vectors(t, tokens, pad_id=tok.pad_token_id)
                rows[(threads, name)] = {**lat, "items/s (batches of 256)": tp,
                                         "min cosine to fp32": float((vec * ref).sum(1).min())}
    table = pd.DataFrame(rows).T
    for threads in (1, 2):
        fp = table.loc[(threads, "fp32")]
        table.loc[(threads, slice(None)), "speed-up p50"] = fp["p50_ms"] / table.loc[(threads, slice(None)), "p50_ms"]
        table.loc[(threads, slice(None)), "speed-up batch"] = (
            table.loc[(threads, slice(None)), "items/s (batches of 256)"] / fp["items/s (batches of 256)"])
    print(f"\n3. The bi-encoder's item tower (MiniLM), one new item at batch 1 and {len(tokens)} items in batches"
          + ("" if ok else f" ({message})"))
    print(table.round(3).to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="threads for sections 1 and 2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import tempfile

    pd.set_option("display.width", 200)
    if {1, 2} & set(args.sections):
        events, at, ranker, users = setup(80, args.seed)
        with S.serving_threads(args.threads):
            if 1 in args.sections:
                section_features(events, at, ranker, users, args.k, args.requests, args.seed)
            if 2 in args.sections:
                section_ranking(ranker, users, at, args.k, args.requests, args.seed)
    if 3 in args.sections:
        with tempfile.TemporaryDirectory() as tmp:
            section_text(args.requests, args.seed, tmp)


if __name__ == "__main__":
    main()
