"""Chapter 08, exercises 1 and 2: worked solutions.

Run from the repository root (offline, CPU is enough)::

    python notebooks/solutions/08_exercises.py --smoke      # chapter 03's smoke users (250), a few minutes
    python notebooks/solutions/08_exercises.py              # 600 users, as the chapter's cpu profile

``tests/test_solutions_08.py`` runs ``main(smoke=True)`` and checks the
numbers it returns, so the answers below stay true when the package changes.

Exercise 1. The ranker trained on uniform negatives (chapter 03's default)
against the same DNN trained on popularity-matched negatives, each ranking the
hybrid's first K candidates (K = 50, 100, 500) and the whole catalogue.

    No, the whole catalogue stays a trap: both samplers draw negatives only
    among the items sold in the 30 days before a purchase, so neither ever
    shows the ranker a dormant item as a negative. Over the whole catalogue
    both DNNs fill every top-10 slot with items not sold in the last 30 days
    (Recall@10 0.0026 with uniform negatives, 0.0038 with popularity-matched
    ones, on the 93 smoke users). What changes is the ranking of recall's
    candidates. Uniform negatives are mostly slow sellers, so "popular and
    bought before" separates them from purchases, and that signal is right
    for the hybrid's candidates too: Recall@10 is flat in K (0.150 at K = 50,
    0.149 at K = 500). Popularity-matched negatives are as popular as the
    purchases, so the DNN learns to ignore popularity; among recall's popular
    candidates it then does worse, and the more so the more candidates it
    gets: 0.142 at K = 50 (within noise of uniform) but 0.097 at K = 500,
    0.052 below the uniform ranker (95% interval 0.034 to 0.075 over users).
    A ranker's negatives should look like what it will rank: recall's own
    candidates, or a pool that covers the whole catalogue if it must rank that.

Exercise 2. HNSW's graph degree ``M`` (links per node) on a synthetic
catalogue: memory per item, build time and overlap with the exact top K at
``efSearch = K``.

    Every node stores up to 2M links on its bottom layer (4 bytes each) on top
    of its vector, so memory grows linearly with M; a denser graph is slower
    to build but easier to navigate, so at the same efSearch its overlap with
    the exact top K is higher. On 10,000 synthetic items (384 dimensions), M =
    8, 16, 32 and 48 take 1,617, 1,680, 1,808 and 1,936 bytes per item (the
    vector alone is 1,536) and return 78%, 88%, 92% and 96% of the exact top
    100 at efSearch = 100; the build time grows with M too. M = 32 (FAISS's
    usual choice, and ``ecrec.recall.build_index``'s) costs 18% more memory
    than the vectors; where that is too much, raise efSearch rather than M.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ecrec.verdict import decide

K_VALUES = (50, 100, 500)
TOP = 10
MIX = {"item_cf": 1, "als": 1, "popular": 1}  # the hybrid without the text tower (no MiniLM needed here)
SIZES = {
    # smoke: chapter 03's smoke dataset (250 users) and 2 DNN epochs; cpu: the chapter's cpu profile
    "smoke": {"max_users": 250, "neg_ratio": 4, "history_len": 10, "dnn_epochs": 2, "als_iterations": 10,
              "ann_items": 10_000, "ann_queries": 200},
    "cpu": {"max_users": 600, "neg_ratio": 4, "history_len": 10, "dnn_epochs": 4, "als_iterations": 15,
            "ann_items": 50_000, "ann_queries": 500},
}
HNSW_M = (8, 16, 32, 48)
K_ANN = 100


def exercise_1(size: dict, *, seed: int, cache_dir: Path, verbose: bool = True) -> dict:
    """Recall@10 / NDCG@10 of the final lists for a ranker trained on each negative sampler."""
    from ecrec import ctr
    from ecrec import features as F
    from ecrec import metrics as M
    from ecrec import recall as R
    from ecrec import system as S
    from ecrec.data import load_clean_online_retail
    from ecrec.stats import paired_mean_diff

    clean, _ = load_clean_online_retail()
    _, test_start = F.split_dates(clean["InvoiceDate"])
    data_all = R.build_recall_data(clean, test_start)
    no_text = [g for g in ctr.GROUPS if g != "text"]
    out: dict = {}
    per_user: dict = {}
    for sampler in ("uniform", "popularity"):
        t0 = time.time()
        config = F.dataset_config(size, seed=seed, negatives=sampler)
        dataset = F.load_or_build_ctr_dataset(clean, config, cache_dir)
        data = S.subset_users(data_all, np.isin(data_all.users, dataset["user_id"].unique()))
        catalog = data.items[["item_id", "description", "category", "price"]]
        frame = F.add_item_attributes(dataset, catalog)
        train, valid = (frame[frame["split"] == s].reset_index(drop=True) for s in ("train", "valid"))
        cats, nums = ctr.group_columns(no_text, frame.columns)
        dnn = ctr.train_dnn(train, valid, categorical=cats, numeric=nums, config=ctr.DnnConfig(
            max_epochs=size["dnn_epochs"], history_len=config.history_len, seed=seed, monitor="log_loss"))
        if sampler == "uniform":  # the recall stage does not depend on the ranker's negatives: fit it once
            stage = S.RecallStage.fit(data_all, None, als_iterations=size["als_iterations"], seed=seed)
        hybrid = S.RecallStage.hybrid(stage.lists(data, max(K_VALUES)), MIX, max(K_VALUES))
        requests = S.first_visits(data.events, data.users, test_start)
        store = S.FeatureStore(data.events, test_start, history_len=config.history_len)
        ranker = S.DnnRanker(dnn, store, catalog, catalog["item_id"].to_numpy())
        all_items = np.broadcast_to(np.arange(data.n_items), (len(data.users), data.n_items))
        scores = ranker.score(data.users, all_items, requests["ts"].to_numpy(), requests["country"].to_numpy())

        def final(cand, scores=scores):
            s = np.take_along_axis(scores, np.maximum(cand, 0), axis=1)
            return S.top_n(np.where(cand >= 0, s, -np.inf), cand, TOP)[0]

        lists = {f"K={k}": final(hybrid[:, :k]) for k in K_VALUES} | {"whole catalogue": final(all_items)}
        out[sampler] = {
            name: {"recall@10": M.recall_at_k(x, data.relevant_all, TOP),
                   "ndcg@10": M.ndcg_at_k(x, data.relevant_all, TOP)} for name, x in lists.items()
        }
        out[sampler]["dormant_share_whole"] = float((stage.pop[lists["whole catalogue"]] == 0).mean())
        out[sampler]["n_users"] = len(data.users)
        out[sampler]["recall_alone@10"] = M.recall_at_k(hybrid[:, :TOP], data.relevant_all, TOP)
        per_user[sampler] = {name: M.recall_at_k(x, data.relevant_all, TOP, per_user=True) for name, x in lists.items()}
        if verbose:
            print(f"{sampler}: {time.time() - t0:.0f} s")
    pu, pp = per_user["uniform"], per_user["popularity"]
    out["diff"] = {  # paired over users, 95% bootstrap intervals
        "popularity - uniform, K=500": paired_mean_diff(pp["K=500"], pu["K=500"], seed=seed),
        "popularity - uniform, K=50": paired_mean_diff(pp["K=50"], pu["K=50"], seed=seed),
        "popularity: K=500 - K=50": paired_mean_diff(pp["K=500"], pp["K=50"], seed=seed),
        "uniform: K=500 - K=50": paired_mean_diff(pu["K=500"], pu["K=50"], seed=seed),
    }
    out["verdict"] = {name: decide(r).word for name, r in out["diff"].items()}  # ecrec.verdict's one rule
    return out


def exercise_2(size: dict, *, seed: int) -> dict:
    """Bytes per item, build time and overlap@K_ANN at efSearch = K_ANN for each HNSW degree M."""
    from ecrec import ann
    from ecrec import recall as R
    from ecrec.system import serving_threads

    base = np.random.default_rng(seed).normal(size=(1000, 384)).astype(np.float32)
    items = ann.synthetic_catalogue(base, size["ann_items"], seed=seed)
    queries = ann.synthetic_catalogue(base, size["ann_queries"], seed=seed + 1)
    exact = R.faiss_search(R.build_index(items), queries, K_ANN)
    out = {}
    with serving_threads(1):
        for m in HNSW_M:
            t0 = time.perf_counter()
            index = R.build_index(items, "hnsw", hnsw_m=m)
            build = time.perf_counter() - t0
            ann.set_breadth(index, K_ANN)
            found = R.faiss_search(index, queries, K_ANN)
            out[m] = {"bytes_per_item": ann.index_bytes(index) / len(items), "build_s": build,
                      f"overlap@{K_ANN}": ann.overlap_at_k(found, exact, K_ANN)}
    return out


def main(smoke: bool = False, *, seed: int = 42, cache_dir: str | Path | None = None, verbose: bool = True) -> dict:
    """Both exercises; returns ``{"exercise_1": ..., "exercise_2": ...}``."""
    size = SIZES["smoke" if smoke else "cpu"]
    cache_dir = Path(cache_dir) if cache_dir else Path("_output") / "cache"
    ex1 = exercise_1(size, seed=seed, cache_dir=cache_dir, verbose=verbose)
    ex2 = exercise_2(size, seed=seed)
    if verbose:
        rows = {(s, name): v for s in ("uniform", "popularity") for name, v in ex1[s].items() if isinstance(v, dict)}
        print(pd.DataFrame(rows).T.round(4))
        print(f"recall alone, Recall@10: {ex1['uniform']['recall_alone@10']:.4f}")
        diffs = pd.DataFrame(ex1["diff"]).T.round(4)
        diffs["verdict"] = [decide(r).text for r in ex1["diff"].values()]
        print(diffs.to_string())
        print(pd.DataFrame(ex2).T.round(3))
    return {"exercise_1": ex1, "exercise_2": ex2}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Chapter 08's exercises 1 and 2")
    parser.add_argument("--smoke", action="store_true")
    main(smoke=parser.parse_args().smoke)
