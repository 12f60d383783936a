"""Chapter 08 benchmark: what a request costs, printed as ratios measured side by side (no timed assertions).

1. Feature lookup for one user's K candidates, four ways, the same numbers
   from each (checked): recomputed from the log
   (``ecrec.features.point_in_time_features``), the snapshot assembled as a
   pandas DataFrame (``FeatureStore.frame``, the old serving path), the
   snapshot's columnar arrays (``FeatureStore.fetch``: integer-indexed
   lookups), and the same snapshot in Redis (``RedisFeatureStore.fetch``:
   one pipelined round trip over loopback; skipped without ``redis-server``).
2. The ranking stage per request: feature lookup, the DNN's input arrays
   (old: DataFrame + item attributes + ``preprocessor.transform``; new:
   ``RequestEncoder.encode`` on the arrays) and the DNN's forward pass: which
   part dominates, at batch 1, with ``--threads`` threads.
3. The text ranker's item tower (chapter 04's MiniLM bi-encoder): fp32
   against dynamic int8 and ONNX Runtime (when installed), one new item at
   batch 1 and the catalogue's first 512 items in batches, with 1 and 2
   threads: speed-up ratios and the smallest cosine to the fp32 vectors.

Run: ``python benchmarks/bench_serving.py [--sections 1 2 3] [--requests 1000]`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from ecrec import ctr
from ecrec import feature_store as FS
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


def _requests(ranker, users, k: int, n: int, seed: int) -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(int(u), rng.choice(len(ranker.item_ids), k, replace=False)) for u in rng.choice(users, n)]


def section_features(events, at, ranker, users, k: int, n: int, seed: int) -> None:
    from ecrec.online_store import RedisServer, redis_status

    reqs = _requests(ranker, users, k, n + 20, seed)
    store, enc = ranker.store, FS.RequestEncoder(ranker.model.preprocessor, ranker.store, ranker.catalog,
                                                 ranker.item_ids, ranker.text)

    def from_log(r):
        return F.point_in_time_features(pd.DataFrame({"user_id": r[0], "item_id": ranker.item_ids[r[1]], "ts": at}),
                                        events)

    def as_frame(r):
        return store.frame(np.full(k, r[0]), ranker.item_ids[r[1]], at, "United Kingdom")

    few = reqs[: min(n, 30) + 5]  # recomputing from the log is slow: fewer requests
    table = {"point_in_time_features from the log": S.latency_ms(from_log, few, warmup=5),
             "snapshot as a DataFrame (FeatureStore.frame)": S.latency_ms(as_frame, reqs, warmup=20),
             "snapshot as arrays (FeatureStore.fetch)": S.latency_ms(
                 lambda r: store.fetch(r[0], enc.store_row[r[1]]), reqs, warmup=20)}
    ok, message = redis_status()
    if ok:
        with RedisServer() as server:
            client = server.client(timeout_s=10)
            FS.write_to_redis(store, client)
            client.close()
            online = FS.RedisFeatureStore(store, server.port)
            table["snapshot in Redis (one pipelined round trip)"] = S.latency_ms(
                lambda r: online.fetch(r[0], enc.store_row[r[1]]), reqs, warmup=20)
            a, b = store.fetch(*reqs[0][:1], enc.store_row[reqs[0][1]]), online.fetch(reqs[0][0],
                                                                                    enc.store_row[reqs[0][1]])
            assert all(np.array_equal(a.items[c], b.items[c], equal_nan=True) for c in a.items)
            online.close()
    cols = [c for c in from_log(reqs[0]).columns if c.startswith(("u_", "i_", "ui_", "hist"))]
    pd.testing.assert_frame_equal(as_frame(reqs[0])[cols], from_log(reqs[0])[cols], check_dtype=False)
    t = pd.DataFrame(table).T
    print(f"\n1. Features of one user's {k} candidates (the same numbers from each, checked)"
          + ("" if ok else f"; Redis skipped: {message}"))
    print(t[["p50_ms", "p95_ms", "p99_ms", "mean_ms", "n"]].round(4).to_string())
    base = t.loc["snapshot as arrays (FeatureStore.fetch)", "p50_ms"]
    print("   p50 relative to the arrays: " + ", ".join(f"{name} {v / base:,.1f}x" for name, v in t["p50_ms"].items()))


def section_ranking(ranker, users, at, k: int, n: int, seed: int) -> None:
    reqs = _requests(ranker, users, k, n + 20, seed + 1)
    enc = FS.RequestEncoder(ranker.model.preprocessor, ranker.store, ranker.catalog, ranker.item_ids, ranker.text)
    when = np.datetime64(at)
    fetched = {i: ranker.store.fetch(r[0], enc.store_row[r[1]]) for i, r in enumerate(reqs)}
    arrays = {i: enc.encode(fetched[i], r[1], at, "United Kingdom", user_id=r[0]) for i, r in enumerate(reqs)}
    ids = list(range(len(reqs)))

    def old(i):
        frame, _ = ranker.features([reqs[i][0]], reqs[i][1][None, :], [when], ["United Kingdom"])
        return ranker.arrays(frame)

    np.testing.assert_allclose(old(0)["num"], arrays[0]["num"], atol=1e-6)
    table = {"old: DataFrame + attributes + preprocessor": S.latency_ms(old, ids, warmup=20),
             "new: lookup (arrays)": S.latency_ms(lambda i: ranker.store.fetch(reqs[i][0], enc.store_row[reqs[i][1]]),
                                                   ids, warmup=20),
             "new: encode (arrays -> DNN inputs)": S.latency_ms(
                 lambda i: enc.encode(fetched[i], reqs[i][1], at, "United Kingdom", user_id=reqs[i][0]), ids,
                 warmup=20),
             "DNN forward": S.latency_ms(lambda i: ranker.logits(arrays[i]), ids, warmup=20)}
    t = pd.DataFrame(table).T
    print(f"\n2. Ranking one user's {k} candidates, {torch.get_num_threads()} thread(s)")
    print(t[["p50_ms", "p95_ms", "p99_ms", "mean_ms", "n"]].round(4).to_string())
    new = t.loc["new: lookup (arrays)", "p50_ms"] + t.loc["new: encode (arrays -> DNN inputs)", "p50_ms"]
    print(f"   old path / new path (lookup + encode, p50): {t.iloc[0]['p50_ms'] / new:.0f}x; "
          f"DNN / (lookup + encode): {t.loc['DNN forward', 'p50_ms'] / new:.1f}x")


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
    parser.add_argument("--requests", type=int, default=1000)
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
