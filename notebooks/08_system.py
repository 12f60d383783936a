# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 8. The two-stage system, end to end: quality, latency and memory
#
# Chapters 03 to 05 built the parts of a recommender one at a time: a ranker
# that scores (user, item) pairs and candidate generators that pick a few
# hundred items out of the catalogue. A shop serves them **together**, for
# one customer at a time, within a latency budget. Two things only show up
# when the parts are joined. First, quality: the ranker can only reorder what
# recall found, and it was trained on examples that may not look like recall's
# candidates. Second, cost: every request pays for a user vector, a nearest-
# neighbour search, a feature lookup and one model call per candidate, and a
# catalogue of a million items changes which index is the right one.
#
# This chapter evaluates the pipeline as one system on the test window, then
# serves it for real: the features from an online store (Redis), the ranking
# behind an HTTP service (FastAPI on uvicorn), measured under concurrent load
# on this machine. It measures what each stage costs, and what lighter models
# (int8, ONNX Runtime) and approximate indexes (HNSW, IVF-PQ) buy.
#
# **You will learn to**
#
# * join recall and ranking and evaluate the **final** top 10 with chapter
#   05's metric definitions: recall alone, recall + ranking, and ranking over
#   the whole catalogue;
# * read the **recall ceiling** (the share of purchases that survive recall)
#   and see how quality and ranking cost change with the number of candidates K;
# * serve chapter 03's point-in-time features from a snapshot held as columnar
#   arrays (a feature store), check it against the offline features row for
#   row, and compare it with the same snapshot in **Redis** (the network hop);
# * measure latency percentiles at batch 1 and batch throughput per stage,
#   honestly (warm-up excluded, threads stated, the sample count beside each);
# * put the pipeline behind an **HTTP service** (`GET /recommend`), check that
#   it answers exactly like the in-process pipeline, refuses bad input with a
#   message, survives its store going down, and find where 2 cores saturate
#   under 1, 8 and 32 concurrent clients;
# * shrink a text ranker with dynamic int8 quantisation and ONNX Runtime, and
#   measure what it costs in AUC;
# * choose between exact search, HNSW and IVF-PQ by catalogue size;
# * measure what the final lists look like beyond their hits (coverage,
#   novelty, intra-list diversity, popularity and price exposure) and trade
#   NDCG for diversity with an MMR re-ranker, with intervals.
#
# **You need** chapter 03 (the time split, point-in-time features, the DNN),
# chapter 04 (the MiniLM bi-encoder and its linear probe) and chapter 05
# (the generators, FAISS, Recall@K and NDCG@K). The online store needs
# `redis-server` (Debian/Ubuntu: `apt-get install redis-server`; the Colab
# cell installs it); without it, the Redis parts are skipped and say so.

# %% tags=["remove-input"]
# The chapter's lesson in one sentence, computed from this run in the Summary and shown here as well.
from IPython.display import Markdown, display

LESSON = display(Markdown("*This chapter's lesson, in one sentence, appears here once the chapter has run.*"),
                 display_id=True)

# %% tags=["parameters", "remove-input"]
profile = "auto"  # "auto" | "smoke" | "cpu" | "full"
seed = 42
output_dir = "outputs/08_system"
sizes = None  # optional dict overriding the profile's sizes
model_name = "minilm"
cache_dir = None  # chapter 03's dataset cache; None: <output_dir>/../cache
threads = 1  # threads per request when measuring latency (torch, FAISS, BLAS, ONNX Runtime)

# %% tags=["remove-input"]
# In Colab: fetch the book's code and data, then install it, and Debian's redis-server (skipped elsewhere).
import os
import subprocess
import sys

if "google.colab" in sys.modules and not os.path.isdir("ecrec-book"):
    subprocess.run(["git", "clone", "--depth", "1", "https://github.com/ecrec-book/ecrec", "ecrec-book"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements.txt"], cwd="ecrec-book", check=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True)
    sys.path.insert(0, os.path.abspath("ecrec-book"))

# %%
import dataclasses
import inspect
import itertools
import time
from pathlib import Path

import httpx
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from tqdm.auto import tqdm

from ecrec import ann, bert, ctr, pairs
from ecrec import feature_store as FS
from ecrec import features as F
from ecrec import metrics as M
from ecrec import recall as R
from ecrec import system as S
from ecrec.data import load_clean_online_retail
from ecrec.io import write_metrics
from ecrec.loadtest import run_load
from ecrec.online_store import RedisServer, redis_status
from ecrec.plots import save
from ecrec.profiles import pick_sizes, seed_everything
from ecrec.service import Recommender, ServiceProcess, write_bundle
from ecrec.stats import bootstrap_auc, paired_mean_diff
from ecrec.text import encode_texts, load_tokenizer
from ecrec.verdict import decide, direction

STARTED = time.time()

# %% tags=["remove-input"]
SIZES = {
    # The dataset's own sizes (users, negatives per positive, history length) start from
    # F.DATASET_SIZES, shared with chapters 03 and 04. Evaluated users: the dataset's users
    # with a test-window purchase. latency_requests: timed
    # requests per stage at batch 1; text_requests: the same for the item tower (one new item each);
    # ann_sizes: synthetic catalogues for the exact-vs-approximate study; load_requests: requests per load
    # level against the HTTP service (section 8.4.2).
    # _minutes: measured on 2 CPU cores: smoke 1.4 min with the serving sections (8.1.2, 8.4.1-8.4.2), the
    # machine otherwise idle (2026-12-07; DDP, once a section here, is appendix A), 8.6 min when it was shared
    # with 7 other jobs (load average ~12);
    # cpu (500 users, catalogues up to 50,000) 3.5 min, sized for the 25-minute main job; full is an estimate
    # (the 1M-item HNSW build on one thread dominates). seq_*: section 8.2.1's SASRec generator, chapter 09's
    # model and sizes with fewer epochs; in smoke its training takes 9 s of the chapter on 2 cores
    "smoke": {**F.DATASET_SIZES["smoke"], "dnn_epochs": 2, "als_iterations": 10, "latency_requests": 300,
              "seq_epochs": 3, "seq_len": 20, "seq_dim": 32, "seq_layers": 1, "seq_heads": 1, "seq_lr": 2e-3,
              "text_requests": 150, "cost_requests": 30, "n_probe": 512, "n_text_test": 400,
              "ann_sizes": [20_000], "ann_queries": 300, "n_boot": 300, "load_requests": 300,
              "_minutes": (1.5, 9)},
    "cpu": {**F.DATASET_SIZES["smoke"], "max_users": 500, "dnn_epochs": 4, "als_iterations": 15,
            "seq_epochs": 5, "seq_len": 50, "seq_dim": 64, "seq_layers": 1, "seq_heads": 2, "seq_lr": 1e-3,
            "latency_requests": 1000, "text_requests": 1000, "cost_requests": 100, "n_probe": 2000,
            "n_text_test": 1500, "ann_sizes": [20_000, 50_000], "ann_queries": 1000, "n_boot": 1000,
            "load_requests": 2000, "_minutes": (3.5, 7)},
    "full": {**F.DATASET_SIZES["full"], "dnn_epochs": 8, "als_iterations": 15, "latency_requests": 1000,
             "seq_epochs": 60, "seq_len": 100, "seq_dim": 128, "seq_layers": 2, "seq_heads": 2, "seq_lr": 1e-3,
             "text_requests": 1000, "cost_requests": 200, "n_probe": 10_000, "n_text_test": 5000,
             "ann_sizes": [30_000, 100_000, 300_000, 1_000_000], "ann_queries": 1000, "n_boot": 1000,
             "load_requests": 5000, "_minutes": (30, 45)},
}
run_profile, size = pick_sizes(profile, SIZES, sizes)


def plain_log_axis(axis, ticks=None) -> None:
    """A log-scaled axis labelled with plain numbers at ``ticks`` (or its major ticks), no minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if ticks is not None:
        axis.set_ticks(list(ticks))
    else:  # 1, 2, 5 per decade: labels even where the data span less than a decade
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


seed_everything(seed)
output_dir = Path(output_dir)
cache_dir = Path(cache_dir) if cache_dir else output_dir.parent / "cache"

# Settings of the system (the same in every profile).
KS = [50, 100, 200, 500]  # candidates per user handed to the ranker
K_SERVE = 100  # the K whose per-stage latency is measured
TOP = 10  # the final list
POP_DAYS, MAX_HISTORY, HALF_LIFE_DAYS = 30, 10, 30.0  # chapter 05's generator settings
GENERATORS = ("item_cf", "als", "text", "popular")
MIX_GRID = range(0, 3)  # each generator's weight in the hybrid, chosen on the validation window
N_HISTORY, ITEM_TOKENS = 3, 24  # the bi-encoder's user: the last 3 items; tokens per description
MIN_OVERLAP = 0.95  # an approximate index qualifies when >= 95% of the exact top K come back
WARMUP = 20  # untimed requests before every latency measurement
LOAD_LEVELS = (1, 8, 32)  # concurrent clients against the HTTP service
SERVICE_WORKERS = 2  # uvicorn worker processes, one per core of the 2-core machine the book is sized for
EXTRA_METRICS = {}  # sections merged into this chapter later add their headline numbers here (e.g. "beyond_accuracy")
print(size)

# %% [markdown]
# ## 8.1 One split, two stages, no look into the test window
#
# Both stages use chapter 03's global time split. The ranker (chapter 03's DNN
# with every feature group, text included) learns from the **train** window and
# stops early on the **validation** window; the recall generators (chapter 05)
# are fitted on everything before the **test** window. At serving time the
# features come from a snapshot of the log frozen at the test start (a nightly
# feature-store job): nothing the system uses happened in the test window.
#
# Each evaluated user sends **one request** at the moment of their first
# test-window invoice (its time and country are the request's context). The
# ground truth is chapter 05's "all" setting: every item the user buys in the
# test window, repeat purchases included. The evaluated users are the users
# of chapter 03's dataset who buy in the test window; the ranker has seen the
# id of those among them with a training example (counted below), and a user
# with no purchase before the test window is cold for both stages.

# %%
clean, _ = load_clean_online_retail()
valid_start, test_start = F.split_dates(clean["InvoiceDate"])
config = F.dataset_config(size, seed=seed)
dataset = F.load_or_build_ctr_dataset(clean, config, cache_dir)
data_all = R.build_recall_data(clean, test_start, half_life_days=HALF_LIFE_DAYS)
data = S.subset_users(data_all, np.isin(data_all.users, dataset["user_id"].unique()))
requests = S.first_visits(data.events, data.users, test_start)
n_users, n_items = len(data.users), data.n_items
assert dataset.loc[dataset["split"] == "test", "ts"].min() >= test_start > dataset.loc[
    dataset["split"] != "test", "ts"].max(), "chapter 03's split and chapter 05's must be the same"
display(Markdown(
    f"Test window from {test_start.date()}, validation window from {valid_start.date()}. Catalogue: "
    f"{n_items:,} items. Evaluated users: {n_users} (the users of chapter 03's {run_profile} dataset, "
    f"{dataset['user_id'].nunique():,} in all, who buy in the test window): "
    f"{int(np.isin(data.users, dataset.loc[dataset['split'] == 'train', 'user_id']).sum())} of them have training "
    f"examples (the ranker has seen their ids), {int((data.user_group == 'cold').sum())} have no purchase before "
    f"the test window. {data.relevant_all.sum():.0f} test purchases (distinct invoice × item) to find."
))

# %% [markdown]
# ### 8.1.1 The ranker: chapter 03's DNN, trained before the test window
#
# The same code as chapter 03 (`ecrec.ctr.train_dnn`): embeddings of the
# categorical fields, the mean-pooled purchase history, MiniLM vectors of the
# descriptions through a linear layer, numeric features, an MLP, early
# stopping on the validation log loss. The item text vectors are computed once
# for the whole catalogue and shared with recall's text tower.

# %%
catalog = data.items[["item_id", "description", "category", "price"]]
item_vectors = encode_texts(catalog["description"].tolist(), model_name, progress=True)
text = (pd.Index(catalog["item_id"]), item_vectors)
frame = F.add_item_attributes(dataset, catalog, text)
train, valid, test = (frame[frame["split"] == s].reset_index(drop=True) for s in F.SPLITS)
cats, nums = ctr.group_columns(list(ctr.GROUPS), frame.columns)
dnn_config = ctr.DnnConfig(max_epochs=size["dnn_epochs"], history_len=config.history_len, seed=seed,
                           monitor="log_loss")
dnn = ctr.train_dnn(train, valid, categorical=cats, numeric=nums, text=text, config=dnn_config, progress=True)
dnn_test = ctr.evaluate(test, dnn.predict_proba(test))
leakage = {
    # each must be > 0: checked by tests/test_nb_08_system.py
    "days_from_last_train_example_to_valid_start": (valid_start - train["ts"].max()) / pd.Timedelta(days=1),
    "days_from_last_valid_example_to_test_start": (test_start - valid["ts"].max()) / pd.Timedelta(days=1),
    "days_from_last_recall_event_to_test_start": (
        test_start - data.events.loc[data.events["ts"] < test_start, "ts"].max()) / pd.Timedelta(days=1),
}
assert all(v > 0 for v in leakage.values()), leakage
display(Markdown(
    f"DNN: {len(train):,} training examples up to {train['ts'].max():%Y-%m-%d %H:%M}, early stopping on "
    f"{len(valid):,} validation examples up to {valid['ts'].max():%Y-%m-%d %H:%M} (kept epoch {dnn.best_epoch}); "
    f"test AUC on chapter 03's sampled test examples {dnn_test['auc']:.3f}. The last example it learned from "
    f"is {leakage['days_from_last_valid_example_to_test_start']:.1f} days before the test start: checked, "
    "not assumed."
))

# %% [markdown]
# ### 8.1.2 The feature store: chapter 03's features, served from a snapshot
#
# Offline, `point_in_time_features` recomputes every feature from the whole log
# for every example. A request cannot wait for that, so a **feature store**
# computes the user and item features **once**, at the snapshot instant (the
# test start; a nightly batch job in a shop), and serves any (user, item) pair
# by lookups. `ecrec.feature_store.FeatureStore` holds the snapshot as
# **columnar arrays**: one numpy array per feature, one row per user (plus a
# "ghost" row for a newcomer), per item, and per past (user, item) purchase
# under a sorted int64 key. A request's lookup is integer indexing, with no
# DataFrame in sight:

# %%
store = S.FeatureStore(data.events, test_start, history_len=config.history_len, pop_windows=config.pop_windows)
print(inspect.getsource(FS.FeatureStore.fetch))
print(inspect.getsource(FS.FeatureStore._pairs))

# %% [markdown]
# It must give the same numbers as the offline code: we check that row for row
# on five random items for every evaluated user before trusting it. (One
# simplification, stated: recency features such as "days since the last
# purchase" are measured to the snapshot, not to the request; the request's
# own hour, weekday, month and country are exact.) Then the DNN's inputs:
# `FS.RequestEncoder` applies the DNN's fitted preprocessing (category codes,
# log1p, median imputation, standardisation) to a request's arrays, and must
# equal what the model's own preprocessor makes of the same rows as a DataFrame.

# %%
rng = np.random.default_rng(seed)
check_rows = pd.DataFrame({"user_id": np.repeat(data.users, 5),
                           "item_id": catalog["item_id"].to_numpy()[rng.integers(0, n_items, 5 * n_users)],
                           "ts": test_start})
served = store.lookup(store.user_rows(check_rows["user_id"]), store.item_rows(check_rows["item_id"]))
offline = F.point_in_time_features(check_rows, data.events, history_len=config.history_len,
                                   pop_windows=config.pop_windows)
compared = [c for c in offline.columns if c.startswith(("u_", "i_", "ui_")) or c == "hist_len"]
store_rel_diff = max(float(np.nanmax(np.abs(served[c] - offline[c].to_numpy())
                                     / np.maximum(np.abs(offline[c].to_numpy()), 1.0), initial=0.0))
                     for c in compared)
assert all(np.array_equal(np.isnan(served[c]), np.isnan(offline[c].to_numpy())) for c in compared)
assert store_rel_diff <= 1e-9, store_rel_diff  # the log's cumulative sums of spend: rounding only

encoder = FS.RequestEncoder(dnn.preprocessor, store, catalog, catalog["item_id"].to_numpy(), text)
encoder_diff = 0.0
for u in data.users[:: max(1, n_users // 20)]:  # about 20 users, 100 random candidates each
    cands = rng.choice(n_items, 100, replace=False)
    fast = encoder.encode(store.fetch(u, encoder.store_row[cands]), cands, test_start, "United Kingdom", user_id=u)
    slow = dnn.preprocessor.transform(F.add_item_attributes(
        store.frame(np.full(100, u), catalog["item_id"].to_numpy()[cands], test_start, "United Kingdom"),
        catalog, text))
    assert all(np.array_equal(fast[key], slow[key]) for key in ("cat", "hist", "text"))
    encoder_diff = max(encoder_diff, float(np.abs(fast["num"] - slow["num"]).max()))
assert encoder_diff <= 1e-5, encoder_diff
display(Markdown(
    f"{len(check_rows):,} (user, item) pairs: the snapshot's {len(compared)} feature columns equal chapter 03's "
    f"offline point-in-time features (largest relative difference {store_rel_diff:.0e}: the offline code sums "
    "spends cumulatively over the log, in another order). The DNN's inputs built from the arrays equal its "
    "preprocessor's on the same rows as a DataFrame: categories, history and text rows exactly, numeric columns "
    + ("exactly too." if encoder_diff == 0 else f"within {encoder_diff:.0e} (float32).")
))

# %% [markdown]
# ## 8.2 The recall stage and its ceiling
#
# Chapter 05's generators, fitted on the history before the test start:
# item-to-item CF, implicit ALS, the zero-shot MiniLM two-tower (exact FAISS
# search) and the most popular items; cold users get the popularity list. The
# hybrid interleaves them; its mix (a weight in {0, 1, 2} per generator) is
# chosen on the **validation** window by the share of purchases that survive at
# K = `K_SERVE`, with the generators refitted on the history before it.
#
# The **recall ceiling** at K is that share on the test window: the fraction of
# test purchases among the user's K candidates. No ranker can put an item in
# the final list that recall did not hand it.

# %%



vclean = clean[clean["InvoiceDate"] < test_start]
vdata = R.build_recall_data(vclean, valid_start, half_life_days=HALF_LIFE_DAYS, catalogue=clean)
vstage = S.RecallStage.fit(vdata, item_vectors, pop_days=POP_DAYS, als_iterations=size["als_iterations"],
                           max_history=MAX_HISTORY, seed=seed)
vlists = vstage.lists(vdata, K_SERVE)
mixes = [dict(zip(GENERATORS, w, strict=True)) for w in itertools.product(MIX_GRID, repeat=len(GENERATORS))
         if sum(w) > 0]
mix_scores = [S.recall_ceiling(S.RecallStage.hybrid(vlists, w, K_SERVE), vdata.relevant_all, K_SERVE) for w in mixes]
MIX = mixes[int(np.argmax(mix_scores))]  # the first of the best: ties go to the earlier grid point
stage = S.RecallStage.fit(data_all, item_vectors, pop_days=POP_DAYS, als_iterations=size["als_iterations"],
                          max_history=MAX_HISTORY, seed=seed)
lists = stage.lists(data, max(KS))
hybrid = S.RecallStage.hybrid(lists, MIX, max(KS))
display(Markdown(
    f"Validation window: {len(vdata.users):,} users, {len(mixes)} mixes; chosen "
    + ", ".join(f"{w}×{g}" for g, w in MIX.items() if w) + f" (validation ceiling at K = {K_SERVE}: "
    f"{max(mix_scores):.3f})."
))
ceil_table = pd.DataFrame({g: [S.recall_ceiling(x, data.relevant_all, k) for k in KS]
                           for g, x in {**lists, "hybrid": hybrid}.items()}, index=pd.Index(KS, name="K"))
ceil_table.round(3)

# %% [markdown]
# ### 8.2.1 A sequence model as one more generator
#
# Every generator above sees a customer as a bag of past items: item-CF and
# ALS through their purchase counts, the text tower through a recency-weighted
# mean. Chapter 09's sequence models read the **order** of the purchases and
# predict the next one. Its table of all test purchases (section 9.6) puts
# BERT4Rec first among them in its smoke run, 0.004 Recall@50 ahead of SASRec
# trained with full-softmax cross-entropy, a gap inside the intervals over
# users that the chapter reports between SASRec variants (half-widths of 0.006
# to 0.009): at that resolution its ID-based sequence models tie. We take the
# cheaper one to train and to serve, **SASRec (CE)**: chapter 09 gives
# BERT4Rec twice the epochs, and BERT4Rec's user vector needs an extra
# `[MASK]` position. As a generator (`ecrec.seqrec.SeqGenerator`):
#
# * the **user vector** is the hidden state at the customer's last purchase
#   before the test start (`ecrec.seqrec.user_states`), the state the model's
#   next-item scores are read from; it reads the last `seq_len` purchases;
# * the **item vectors** are the model's item table (`ecrec.seqrec.item_vectors`),
#   searched exactly with FAISS by **inner product**, not cosine: the model
#   scores by dot product, and an item's norm is part of its score;
# * a customer with no purchase before the test start gets the popularity list,
#   as from every other generator.
#
# It learns from this chapter's training window, the sequences of every
# customer up to the test start (seeded, the same split), and joins the
# hybrid chosen on the validation window with **weight 1**, one slot per round
# (`RecallStage.with_generator`). The weight is fixed before looking at the
# test window: choosing it on the validation window, as the others' were
# chosen, would mean training the model a second time on the history before
# that window. The hybrid that section 8.3 ranks stays the one without it.

# %%
import torch

from ecrec import seqrec
from ecrec.profiles import device_name

seq_train = seqrec.build_sequences(data_all.events, test_start, seed=seed)  # purchases before the test start
seq_tokens, _, seq_cut = seqrec.pad_right(list(seq_train.values()), size["seq_len"])
torch.manual_seed(seed)
sasrec = seqrec.SeqRec(n_items, dim=size["seq_dim"], max_len=size["seq_len"], layers=size["seq_layers"],
                       heads=size["seq_heads"], dropout=0.2, causal=True)
seq_log = seqrec.train_seqrec(sasrec, seq_tokens, objective="ce", epochs=size["seq_epochs"], batch_size=256,
                              lr=size["seq_lr"], seed=seed, device=device_name())

# %%
seq_gen = seqrec.SeqGenerator(sasrec, seq_train)  # served on the CPU, like the other generators
seq_stage = stage.with_generator("sasrec", seq_gen)
seq_lists = seq_stage.lists(data, max(KS))
assert all(np.array_equal(seq_lists[g], lists[g]) for g in lists)  # adding a generator changes no other list
MIX_SEQ = {**MIX, "sasrec": 1}
hybrid_seq = S.RecallStage.hybrid(seq_lists, MIX_SEQ, max(KS))
seq_ceil = pd.DataFrame({"SASRec alone": [S.recall_ceiling(seq_lists["sasrec"], data.relevant_all, k) for k in KS],
                         "hybrid": ceil_table["hybrid"],
                         "hybrid + SASRec": [S.recall_ceiling(hybrid_seq, data.relevant_all, k) for k in KS]},
                        index=ceil_table.index)
seq_ceil.round(3)

# %%
fig, ax = plt.subplots(figsize=(6, 3.4))
for g in ceil_table.columns.drop("hybrid"):
    ax.plot(KS, ceil_table[g], color="grey", lw=1, ls=":")
    ax.annotate(g, (KS[-1], ceil_table[g].iloc[-1]), fontsize=7, color="grey", xytext=(3, 0),
                textcoords="offset points", va="center")
for (name, col), mk in zip(seq_ceil.items(), ("o", "s", "^"), strict=True):
    ax.plot(KS, col, marker=mk, label=name)
ax.set_xscale("log")
plain_log_axis(ax.xaxis, KS)
ax.set_xlabel("K candidates per user")
ax.set_ylabel("recall ceiling")
ax.legend(fontsize="small")
ax.set_title("The recall stage with and without SASRec (dotted: the other generators)", fontsize="small")
save(fig, output_dir, "sequence_generator")
plt.show()

# %% tags=["remove-input"]
seq_has = seq_gen.user_vectors(data.users)[1]
assert (seq_has == (data.user_group != "cold")).all(), "every user with a purchase before the test has a sequence"
seq_recall = {name: M.recall_at_k(x, data.relevant_all, K_SERVE, per_user=True)
              for name, x in (("hybrid", hybrid), ("hybrid + SASRec", hybrid_seq))}
seq_diff = paired_mean_diff(seq_recall["hybrid + SASRec"], seq_recall["hybrid"], n_boot=size["n_boot"], seed=seed)
seq_verdict = decide(seq_diff)
seq_chance = float(np.log(n_items))  # the cross-entropy of a uniform guess over the catalogue
others = {g: float(ceil_table.loc[K_SERVE, g]) for g in ceil_table.columns.drop("hybrid")}
stronger = [g for g, w in MIX.items() if w > 0 and others[g] > seq_ceil.loc[K_SERVE, "SASRec alone"]]
n_used = sum(w > 0 for w in MIX.values())
why = ("With weight 1 it takes one candidate slot per round from the mix's generators, and alone it finds fewer "
       f"purchases than {len(stronger)} of the {n_used} it joins ({', '.join(stronger)})" if stronger else
       "Alone it finds as many purchases as any generator of the mix or more")
display(Markdown(
    f"SASRec trained {len(seq_log.losses)} epochs on {len(seq_train):,} sequences ({seq_cut.mean():.0%} of them "
    f"longer than {size['seq_len']} purchases, truncated to their last ones) in {seq_log.seconds:.0f} s; its "
    f"cross-entropy fell from {seq_log.losses[0]:.2f} to {seq_log.losses[-1]:.2f}, against ln {n_items:,} = "
    f"{seq_chance:.2f} for a uniform guess"
    + (f" (undertrained at the sizes of profile `{run_profile}`: what so little training gives, not what the "
       "architecture can do)" if seq_log.losses[-1] > seq_chance - 1.0 else "")
    + f". Alone it puts {seq_ceil.loc[K_SERVE, 'SASRec alone']:.3f} of the test purchases among a user's "
    f"{K_SERVE} candidates, against " + ", ".join(f"{g} {v:.3f}" for g, v in others.items())
    + f". Added to the hybrid with weight 1, the recall ceiling at K = {K_SERVE} goes from "
    f"{seq_ceil.loc[K_SERVE, 'hybrid']:.3f} to {seq_ceil.loc[K_SERVE, 'hybrid + SASRec']:.3f}; per user, the "
    f"recall stage's Recall@{K_SERVE} changes by {seq_verdict.text} over {n_users} users. "
    f"{int((~seq_has).sum())} of them have no purchase before the test start and get the popularity list from it. "
    f"{why}: a generator earns its slots only by finding purchases the others miss. Section 8.4 measures what it "
    "costs per request."
))

# %% tags=["remove-input"]
EXTRA_METRICS["sequence_generator"] = {
    "model": "SASRec (CE)", "epochs": len(seq_log.losses), "n_sequences": len(seq_train),
    "truncated_share": float(seq_cut.mean()), "train_losses": [float(x) for x in seq_log.losses],
    "mix": MIX_SEQ, "fallback_users": int((~seq_has).sum()),
    "ceiling": {name: {str(k): float(v) for k, v in col.items()} for name, col in seq_ceil.items()},
    f"recall@{K_SERVE}": {name: float(np.nanmean(v)) for name, v in seq_recall.items()},
    f"recall@{K_SERVE}_diff": seq_diff,
}

# %% [markdown]
# ## 8.3 Ranking the candidates: the final top 10
#
# The DNN scores a (user, item) pair the same way whatever else is in the list,
# so we score every user's **whole catalogue** once and read every variant from
# that one matrix:
#
# * **recall alone**: the hybrid's first 10 items;
# * **recall + ranking at K**: the 10 best-scored of the hybrid's first K;
# * **ranking over the whole catalogue**: the 10 best-scored of all items, the
#   usual "upper bound" of a ranker (no recall loss);
# * **ranking over the active catalogue**: the same, restricted to items sold
#   in the 30 days before the test start, the pool chapter 03's negatives were
#   drawn from, hence the only items the ranker learned to tell apart.
#
# Metrics are chapter 05's (`ecrec.metrics`): for a user with test purchases
# $G$ and final list $L$,
# $\mathrm{Recall@10} = |L_{10} \cap G| / |G|$,
# $\mathrm{HitRate@10} = \mathbb{1}[L_{10} \cap G \neq \emptyset]$ and
# $\mathrm{NDCG@10} = \sum_{i \le 10} \mathbb{1}[L_i \in G] / \log_2(i+1)$
# divided by the same sum for an ideal list built from all of $G$.
# Ties follow chapter 05's rule: candidates the DNN scores equally count as
# every order of them equally likely (the list keeps the whole group tied at
# the 10th place, `S.top_n(..., keep_ties=True)`), so a ranker that scores
# everything alike gets what a random order gets, not recall's order.

# %%
print(inspect.getsource(S.DnnRanker.score))
ranker = S.DnnRanker(dnn, store, catalog, catalog["item_id"].to_numpy(), text)
all_items = np.broadcast_to(np.arange(n_items), (n_users, n_items))
scores = ranker.score(data.users, all_items, requests["ts"].to_numpy(), requests["country"].to_numpy())
assert POP_DAYS == config.neg_window_days  # "active" = sold in the window the ranker's negatives came from
active = stage.pop > 0


def final_lists(candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The TOP best-scored candidates of each user, plus any tied with the TOP-th, and their scores."""
    cand_scores = np.take_along_axis(scores, np.maximum(candidates, 0), axis=1)
    return S.top_n(np.where(candidates >= 0, cand_scores, -np.inf), candidates, TOP, keep_ties=True)


def quality(lists_: np.ndarray, scores_: np.ndarray | None) -> dict[str, float]:
    """Chapter 05's tie rule: equal scores count as the expectation over their orders."""
    return S.list_quality(lists_, data.relevant_all, TOP, scores=scores_)


RANKED = {"recall alone": (hybrid[:, :TOP], None)}  # recall's interleaved order is strict: no scores
RANKED |= {f"recall@{k} + ranking": final_lists(hybrid[:, :k]) for k in KS}
RANKED["ranking, whole catalogue"] = final_lists(all_items)
RANKED["ranking, active catalogue"] = final_lists(np.where(active[None, :], all_items, -1))
FINAL = {name: x[:, :TOP] for name, (x, _) in RANKED.items()}  # the served top 10 (ties in recall order)
results = pd.DataFrame({name: quality(x, s_) for name, (x, s_) in RANKED.items()}).T
results["recall ceiling"] = [np.nan] + [S.recall_ceiling(hybrid, data.relevant_all, k) for k in KS] + [1.0, float(
    S.recall_ceiling(np.where(active[None, :], all_items, -1), data.relevant_all, n_items))]
results.round(4)

# %% [markdown]
# ### 8.3.1 How quality and ranking cost grow with K
#
# A request, in process, is `ecrec.service.Recommender`: the user's K recall
# candidates, their features from the store, the DNN's input arrays, one
# forward pass, the top 10 by score. (Recall's lists come from the nightly
# batch here, like the feature snapshot; section 8.4 times the text tower's
# user vector and search separately.) The ranking cost is measured per request
# at batch 1 (one user, K candidates: the feature lookup, the encoding and the
# DNN call, `threads` thread(s), `cost_requests` requests per K after `WARMUP`
# untimed ones).

# %%
req_rng = np.random.default_rng(seed + 1)
when, country = requests["ts"].to_numpy(), requests["country"].to_numpy()
popular = R.top_k(stage.pop[None, :], K_SERVE)[0]
rec = Recommender(dnn, encoder, store, {int(u): hybrid[i, :K_SERVE] for i, u in enumerate(data.users)},
                  popular, stage.pop[popular], test_start, max_k=K_SERVE)
print(inspect.getsource(Recommender.features))


def rank_request(i: int, k: int):
    cands = hybrid[i, :k][hybrid[i, :k] >= 0]
    return dnn.predict_logits_arrays(rec.features(int(data.users[i]), cands, when[i], country[i]))


cost = {}
with S.serving_threads(threads):
    for k in tqdm(KS, desc="ranking cost per K"):
        ids = req_rng.integers(0, n_users, size["cost_requests"] + WARMUP)
        cost[k] = S.latency_ms(lambda i, k=k: rank_request(i, k), ids, warmup=WARMUP)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for m, mk in (("recall@10", "o"), ("ndcg@10", "s")):
    axes[0].plot(KS, [results.loc[f"recall@{k} + ranking", m] for k in KS], marker=mk, label=f"{m}, recall + ranking")
    axes[0].axhline(results.loc["recall alone", m], ls=":", color="grey")
axes[0].plot(KS, [results.loc[f"recall@{k} + ranking", "recall ceiling"] for k in KS], marker="^", color="black",
             label="recall ceiling (share of purchases in the K)")
axes[0].set_xscale("log")
plain_log_axis(axes[0].xaxis, KS)
axes[0].set_xlabel("K candidates per user")
axes[0].legend(fontsize="small")
axes[0].set_title("Quality of the final top 10 (dotted: recall alone)", fontsize="small")
axes[1].plot(KS, [cost[k]["p50_ms"] for k in KS], marker="o", label=f"p50 (n = {cost[KS[0]]['n']} per K)")
axes[1].set_xscale("log")
plain_log_axis(axes[1].xaxis, KS)
axes[1].set_ylim(bottom=0)
axes[1].set_xlabel("K candidates per user")
axes[1].set_ylabel(f"ms per request ({threads} thread)")
axes[1].legend()
axes[1].set_title("Ranking cost: feature lookup + encoding + DNN", fontsize="small")
save(fig, output_dir, "quality_cost_vs_k")

# %%
per_user = {name: M.recall_at_k(x, data.relevant_all, TOP, scores=s_, per_user=True)
            for name, (x, s_) in RANKED.items()}
best_k = max(KS, key=lambda k: results.loc[f"recall@{k} + ranking", "recall@10"])
gain = paired_mean_diff(per_user[f"recall@{best_k} + ranking"], per_user["recall alone"], n_boot=size["n_boot"],
                        seed=seed)
drop = paired_mean_diff(per_user[f"recall@{max(KS)} + ranking"], per_user[f"recall@{min(KS)} + ranking"],
                        n_boot=size["n_boot"], seed=seed)
r = results["recall@10"]
gain_verdict, drop_verdict = decide(gain), decide(drop)
display(Markdown(
    f"Recall alone puts {r['recall alone']:.3f} of a user's test purchases in the top 10 (Recall@10). Ranking "
    f"the first K = {best_k} candidates with the DNN gives {r[f'recall@{best_k} + ranking']:.3f} "
    f"({gain_verdict.text}, over users). More candidates raise the ceiling from "
    f"{results.loc[f'recall@{min(KS)} + ranking', 'recall ceiling']:.3f} (K = {min(KS)}) to "
    f"{results.loc[f'recall@{max(KS)} + ranking', 'recall ceiling']:.3f} (K = {max(KS)}); Recall@10 after "
    f"ranking changes by {drop_verdict.text}, while the "
    f"ranking cost grows from {cost[min(KS)]['p50_ms']:.1f} to {cost[max(KS)]['p50_ms']:.1f} ms per request (p50). "
    f"Ranking the whole catalogue gives {r['ranking, whole catalogue']:.3f}, the active catalogue "
    f"{r['ranking, active catalogue']:.3f}."
))

# %% [markdown]
# **Why is the "upper bound" not one?** A ranker is only as good as the
# examples it was trained on. Chapter 03's negatives are drawn from items sold
# in the 30 days before each purchase, so the DNN never saw a negative that had
# not sold recently, while a first sale or a comeback after a quiet month is
# always a positive there. Over the whole catalogue it meets thousands of
# dormant items it has never seen as negatives, and ranks some of them high.
# Recall protects the ranker from that part of the catalogue: the two stages
# must be trained for each other (the ranker's negatives should look like
# recall's candidates; exercise 1 tries popularity-matched negatives).

# %%
dormant_share = {name: float((~active[np.maximum(x, 0)] & (x >= 0)).sum() / max((x >= 0).sum(), 1))
                 for name, x in FINAL.items()}
display(Markdown(
    "Share of final-list slots holding an item **not** sold in the 30 days before the test start: "
    + "; ".join(f"{name} {v:.1%}" for name, v in dormant_share.items()) + "."
))

# %% [markdown]
# ### 8.3.2 Awkward requests get a defined answer
#
# A serving system meets inputs an offline evaluation never does. `DnnRanker.rank`
# scores one request and answers every one of them with a list and a message:

# %%
oov_item = int(np.flatnonzero(~ranker.in_vocabulary)[0]) if (~ranker.in_vocabulary).any() else 0
awkward = {
    "empty recall list": ([], TOP),
    "only padding (-1)": ([-1, -1, -1], TOP),
    "k larger than the candidates": (hybrid[0, :3].tolist(), TOP),
    "an item outside the ranker's vocabulary": ([oov_item, *hybrid[0, :4].tolist()], 3),
}
awkward_rows = []
for case, (cands, k) in awkward.items():
    out = ranker.rank(data.users[0], cands, when[0], country[0], k=k)
    awkward_rows.append({"case": case, "returned": out.items.tolist(), "notes": " | ".join(out.notes) or "-"})
    assert len(out.items) == k and set(out.items[out.items >= 0]) <= set(c for c in cands if c >= 0)
oov_share = float((~ranker.in_vocabulary[hybrid[:, :K_SERVE][hybrid[:, :K_SERVE] >= 0]]).mean())
display(pd.DataFrame(awkward_rows).set_index("case"))
display(Markdown(f"{oov_share:.1%} of the hybrid's top-{K_SERVE} candidates are outside the DNN's item vocabulary "
                 "(items no training example held): the DNN scores them through its unknown-item embedding, "
                 "trained by dropping ids at random (`id_dropout`), plus their features and text."))

# %% [markdown]
# ## 8.4 Latency, throughput and memory, stage by stage
#
# One request at a time (batch 1, `threads` thread(s), `WARMUP` untimed
# requests first, `time.perf_counter` around each call), for the stages of a
# request at K = `K_SERVE`:
#
# 1. **user vector**: the recency-weighted mean of the text vectors of the
#    user's last `MAX_HISTORY` items (chapter 05's user tower);
# 2. **FAISS search**: exact inner product over the catalogue's text vectors;
# 3. **feature lookup**: the snapshot's arrays for the user and K candidates
#    (`FeatureStore.fetch`), in memory; section 8.4.1 adds the same lookup in Redis;
# 4. **DNN inputs**: the (user, item) columns (category matches, text
#    similarity) and the DNN's preprocessing, from the arrays (`RequestEncoder.encode`);
# 5. **DNN scoring**: one forward pass over the K rows;
# 6. **text-model scoring**: chapter 04's MiniLM bi-encoder with a probe head
#    over the K candidates, from cached item vectors, and its item tower on one
#    new item (the cost of a cache miss), in fp32, int8 and ONNX Runtime (section 8.5).
#
# For comparison, one more row: the same features assembled as a pandas
# DataFrame per request and run through the preprocessor as chapter 03 does
# offline (`DnnRanker.features` + `arrays`), the way this chapter served them
# before it had a feature store worth the name. Throughput is the same work in
# one large batch (best of 3), in items per second.

# %%
warm = np.flatnonzero(data.user_group != "cold")
user_vecs = stage.user_vectors(data.history)
lat_ids = np.random.default_rng(seed + 2).choice(warm, size["latency_requests"] + WARMUP, replace=True)
serve_cands = {i: hybrid[i, :K_SERVE][hybrid[i, :K_SERVE] >= 0] for i in np.unique(lat_ids)}
fetched = {i: store.fetch(int(data.users[i]), encoder.store_row[c]) for i, c in serve_cands.items()}
encoded = {i: encoder.encode(fetched[i], serve_cands[i], when[i], country[i], user_id=int(data.users[i]))
           for i in serve_cands}
LOOKUP, ENCODE, SCORE, OLD = (f"feature lookup, in memory (K={K_SERVE})", f"DNN inputs from the arrays (K={K_SERVE})",
                              f"DNN scoring (K={K_SERVE})", f"features as a DataFrame, the old way (K={K_SERVE})")


def old_way(i):
    frame_, _ = ranker.features(data.users[i : i + 1], serve_cands[i][None, :], when[i : i + 1], country[i : i + 1])
    return ranker.arrays(frame_)


batch_users = np.arange(min(n_users, 50))
with S.serving_threads(threads):
    latency = {
        "user vector": S.latency_ms(lambda i: stage.user_vectors(data.history[[i]]), lat_ids, warmup=WARMUP),
        "FAISS search (exact)": S.latency_ms(
            lambda i: R.faiss_search(stage.text_index, user_vecs[i : i + 1], K_SERVE), lat_ids, warmup=WARMUP),
        LOOKUP: S.latency_ms(lambda i: store.fetch(int(data.users[i]), encoder.store_row[serve_cands[i]]), lat_ids,
                             warmup=WARMUP),
        ENCODE: S.latency_ms(lambda i: encoder.encode(fetched[i], serve_cands[i], when[i], country[i],
                                                      user_id=int(data.users[i])), lat_ids, warmup=WARMUP),
        SCORE: S.latency_ms(lambda i: dnn.predict_logits_arrays(encoded[i]), lat_ids, warmup=WARMUP),
        OLD: S.latency_ms(old_way, lat_ids[: size["cost_requests"] + WARMUP], warmup=WARMUP),
    }
    u_rows = np.repeat(store.user_rows(data.users[batch_users]), K_SERVE)
    i_rows = encoder.store_row[np.maximum(hybrid[batch_users, :K_SERVE], 0)].ravel()
    big_frame, _ = ranker.features(data.users[batch_users], hybrid[batch_users, :K_SERVE], when[batch_users],
                                   country[batch_users])
    big_arrays = ranker.arrays(big_frame)
    batch = {
        "user vector": S.throughput(lambda: stage.user_vectors(data.history), n_users),
        "FAISS search (exact)": S.throughput(lambda: R.faiss_search(stage.text_index, user_vecs[warm], K_SERVE),
                                             len(warm)),
        LOOKUP: S.throughput(lambda: store.lookup(u_rows, i_rows), len(batch_users)),
        SCORE: S.throughput(lambda: dnn.predict_logits_arrays(big_arrays), len(batch_users)),
        OLD: S.throughput(lambda: ranker.arrays(ranker.features(data.users[batch_users], hybrid[batch_users, :K_SERVE],
                                                                when[batch_users], country[batch_users])[0]),
                          len(batch_users), repeats=1),
    }
UNITS = {"user vector": "user", "FAISS search (exact)": "query", LOOKUP: "user (K candidates)",
         ENCODE: "user (K candidates)", SCORE: "user (K candidates)", OLD: "user (K candidates)"}
print(f"measured with {threads} thread(s); {size['latency_requests']} timed requests per stage "
      f"({size['cost_requests']} for the old way)")

# %% [markdown]
# The sequence generator of section 8.2.1 is one more recall stage, measured
# the same way: SASRec's **user vector** (padding the user's last `seq_len`
# purchases and one forward pass of the Transformer) and the exact **FAISS
# search** over its item table.

# %%
SEQ_VEC, SEQ_SEARCH = "SASRec user vector (forward pass)", "FAISS search over SASRec's items (exact)"
seq_vecs = seq_gen.user_vectors(data.users)[0]
with S.serving_threads(threads):
    latency[SEQ_VEC] = S.latency_ms(lambda i: seq_gen.user_vectors(data.users[i : i + 1]), lat_ids, warmup=WARMUP)
    latency[SEQ_SEARCH] = S.latency_ms(lambda i: seq_gen.search(seq_vecs[i : i + 1], K_SERVE), lat_ids,
                                       warmup=WARMUP)
    batch[SEQ_VEC] = S.throughput(lambda: seq_gen.user_vectors(data.users), n_users)
    batch[SEQ_SEARCH] = S.throughput(lambda: seq_gen.search(seq_vecs[warm], K_SERVE), len(warm))
UNITS |= {SEQ_VEC: "user", SEQ_SEARCH: "query"}
seq_cost = pd.DataFrame({k: latency[k] for k in ("user vector", "FAISS search (exact)", SEQ_VEC, SEQ_SEARCH)}).T
display(seq_cost[["p50_ms", "p95_ms", "n"]].infer_objects().round(4))

# %% tags=["remove-input"]
seq_ms = latency[SEQ_VEC]["p50_ms"] + latency[SEQ_SEARCH]["p50_ms"]
text_ms = latency["user vector"]["p50_ms"] + latency["FAISS search (exact)"]["p50_ms"]
display(Markdown(
    f"SASRec as a generator costs {seq_ms:.2f} ms per request at the median ({latency[SEQ_VEC]['p50_ms']:.2f} ms "
    f"for the forward pass, p95 {latency[SEQ_VEC]['p95_ms']:.2f} ms; {latency[SEQ_SEARCH]['p50_ms']:.3f} ms for "
    f"the search over {size['seq_dim']}-dimensional vectors; n = {latency[SEQ_VEC]['n']:,} requests, {threads} "
    f"thread(s)), against {text_ms:.2f} ms for the text tower's user vector and search over "
    f"{item_vectors.shape[1]}-dimensional ones: the user vector is a Transformer's forward pass instead of a "
    "weighted mean, and the search is cheaper because its vectors are shorter."
))

# %% [markdown]
# ### 8.4.1 An online feature store: the same snapshot in Redis
#
# An in-process array is as fast as a lookup gets, but it lives in one
# process: every server holds its own copy, and a refresh means restarting
# them. Shops put the snapshot in a shared **online store** instead; Redis is
# the common one. `FS.write_to_redis` writes it (one string per user: its
# numbers and history; one per item; one hash per user of its past items),
# and `FS.RedisFeatureStore.fetch` answers exactly like
# `FeatureStore.fetch`, in **one pipelined round trip** (a `GET`, an `MGET` of
# the K items, an `HMGET` of the K pairs). The chapter starts Debian's
# `redis-server` on a free port of 127.0.0.1 and stops it at the end of the cell.

# %%
redis_ok, redis_message = redis_status()
redis_info = {"available": redis_ok, "message": redis_message}
if redis_ok:
    with RedisServer() as redis_server, S.serving_threads(threads):
        client = redis_server.client(timeout_s=30)
        started = time.perf_counter()
        redis_info |= FS.write_to_redis(store, client)
        redis_info["write_seconds"] = time.perf_counter() - started
        client.close()
        online = FS.RedisFeatureStore(store, redis_server.port)
        same = [(online.fetch(int(data.users[i]), encoder.store_row[c]), fetched[i]) for i, c in serve_cands.items()]
        redis_info["same_as_memory"] = all(
            np.array_equal(a.hist, b.hist) and all(np.array_equal(a.items[k], b.items[k], equal_nan=True)
                                                   for k in a.items)
            and all(np.array_equal(a.pairs[k], b.pairs[k], equal_nan=True) for k in a.pairs) for a, b in same)
        REDIS = f"feature lookup, Redis (K={K_SERVE})"
        latency[REDIS] = S.latency_ms(lambda i: online.fetch(int(data.users[i]), encoder.store_row[serve_cands[i]]),
                                      lat_ids, warmup=WARMUP)
        latency["Redis round trip (PING)"] = S.latency_ms(lambda i: online.client.ping(), lat_ids, warmup=WARMUP)
        UNITS |= {REDIS: "user (K candidates)", "Redis round trip (PING)": "request"}
        online.close()
    assert redis_info["same_as_memory"], "Redis must serve the same snapshot"
    side = pd.DataFrame({k: latency[k] for k in (LOOKUP, REDIS, "Redis round trip (PING)")}).T
    display(side[["p50_ms", "p95_ms", "p99_ms", "n"]].infer_objects().round(4))
    display(Markdown(
        f"Redis holds the snapshot of {redis_info['users']:,} users, {redis_info['items']:,} items and "
        f"{redis_info['pairs']:,} (user, item) pairs in {redis_info['bytes'] / 1e6:.0f} MB (written in "
        f"{redis_info['write_seconds']:.1f} s) and answers every request with the same numbers as the arrays. "
        f"A lookup of K = {K_SERVE} costs {latency[REDIS]['p50_ms']:.3f} ms at the median from Redis against "
        f"{latency[LOOKUP]['p50_ms']:.3f} ms from the process's own arrays "
        f"({latency[REDIS]['p50_ms'] / latency[LOOKUP]['p50_ms']:.0f}× as long). An empty round trip (`PING`) "
        f"costs {latency['Redis round trip (PING)']['p50_ms']:.3f} ms: the **network hop** itself (a system call "
        "to send, the server's turn, a system call to receive) is "
        f"{latency['Redis round trip (PING)']['p50_ms'] / latency[REDIS]['p50_ms']:.0%} of the lookup on "
        f"loopback. The rest is work per key that the arrays never do: writing {2 * K_SERVE + 2} keys and fields "
        "into commands, the server finding each, and the client parsing and decoding each reply. Between two "
        "machines every round trip also pays the wire's latency, which is why the request's keys go in one "
        "pipelined round trip and never one per key."
    ))
else:
    display(Markdown(f"The Redis comparison is skipped: {redis_message}."))

# %% [markdown]
# ### 8.4.2 The service: HTTP, bad input, a store that goes down, and load
#
# A shop does not call a Python function: it sends `GET
# /recommend?user_id=…&k=…` to a service. `ecrec.service` puts the
# `Recommender` behind FastAPI, run by uvicorn with `SERVICE_WORKERS` worker
# processes (one process per worker: Python runs one request per process at a
# time, so a second core needs a second process), bound to 127.0.0.1 only, its
# features read from Redis. Each worker loads the same pickled pipeline. We check
# that it answers **exactly** like the in-process pipeline, then what it does
# with bad input and with Redis stopped in the middle of the run, then put it
# under load: 1, 8 and 32 concurrent clients (`ecrec.loadtest`: closed-loop
# asyncio clients over loopback, each level bounded in requests and seconds).
# The clients run on the same 2 cores as the service, as a test rig on one
# machine does: what they cost is part of what we measure.

# %%
service_users = data.users[:: max(1, n_users // 20)][:20]
BAD = {"k missing": "user_id={u}", "k = 0": "user_id={u}&k=0", f"k = {K_SERVE + 1}": f"user_id={{u}}&k={K_SERVE + 1}",
       "k not a number": "user_id={u}&k=ten", "user_id malformed": "user_id=%ZZ&k=5",
       "an unknown parameter": "user_id={u}&k=5&debug=1", "unknown user": "user_id=999999&k=5"}


def probe(url: str, query: str) -> dict:
    started = time.perf_counter()
    r = httpx.get(f"{url}/recommend?{query}", timeout=10.0)
    body = r.json()
    return {"status": r.status_code, "ms": 1000 * (time.perf_counter() - started),
            "answer": body.get("detail") or " | ".join(body.get("notes", [])) or f"{len(body['items'])} items"}


service_info = {"available": redis_ok}
if redis_ok:
    with RedisServer() as redis_server:
        client = redis_server.client(timeout_s=30)
        FS.write_to_redis(store, client)
        client.close()
        served_rec = dataclasses.replace(rec, source=FS.RedisFeatureStore(store, redis_server.port, timeout_s=0.5))
        bundle = write_bundle(served_rec, output_dir / "service" / "pipeline.pkl")
        with ServiceProcess(bundle, workers=SERVICE_WORKERS, log=output_dir / "service" / "uvicorn.log") as service:
            i_of = {int(u): i for i, u in enumerate(data.users)}
            with S.serving_threads(1):  # one thread, as in each worker
                expected = {int(u): rec.recommend(int(u), TOP, when[i_of[u]], country[i_of[u]]) for u in service_users}
            service_info["same_lists"] = all(
                httpx.get(f"{service.url}/recommend", params={"user_id": int(u), "k": TOP, "country": country[i_of[u]],
                                                              "ts": str(pd.Timestamp(when[i_of[u]]))}).json()
                == expected[int(u)] for u in service_users)
            faults = {case: probe(service.url, q.format(u=int(service_users[0]))) for case, q in BAD.items()}
            redis_server.stop()  # mid-run
            faults["Redis stopped"] = probe(service.url, f"user_id={int(service_users[0])}&k=10")
            redis_server.start()
            faults["Redis back"] = probe(service.url, f"user_id={int(service_users[0])}&k=10")
            paths = [f"/recommend?user_id={int(u)}&k={TOP}" for u in data.users[warm]]
            load = run_load(service.url, paths, LOAD_LEVELS, size["load_requests"], warmup=WARMUP,
                            max_seconds=180, progress=True)
    faults = pd.DataFrame(faults).T
    assert service_info["same_lists"], "the service must answer like the in-process pipeline"
    display(faults)

# %% [markdown]
# Every bad request got a 422 and a message that says what was wrong and what
# is accepted; the unknown user got the popularity list, with a note saying so.
# With Redis stopped, the service answered 503 within the store's 0.5 s timeout
# instead of hanging, and the next request after Redis came back was served
# again (the snapshot reloaded from Redis' own file). Now the load:

# %% tags=["remove-input"]
if redis_ok:
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(10, 3.6))
    for q, mk in (("p50_ms", "o"), ("p95_ms", "s"), ("p99_ms", "^")):
        if load[q].notna().any():  # a percentile is drawn only where enough samples lie beyond it
            ax_lat.plot(load.index, load[q], marker=mk, label=q.replace("_ms", ""))
    ax_lat.set_xscale("log")
    plain_log_axis(ax_lat.xaxis, LOAD_LEVELS)
    ax_lat.set_yscale("log")
    plain_log_axis(ax_lat.yaxis)
    ax_lat.set_xlabel("concurrent clients")
    ax_lat.set_ylabel("ms per request (log scale)")
    ax_lat.legend(title=f"n = {int(load['n'].min()):,}+ per level", fontsize="small")
    ax_lat.set_title("Latency against load", fontsize="small")
    ax_tp.bar([str(c) for c in load.index], load["throughput_rps"], color="C2")
    ax_tp.set_xlabel("concurrent clients")
    ax_tp.set_ylabel("answered requests per second")
    ax_tp.set_title(f"Throughput, {SERVICE_WORKERS} workers on 2 cores", fontsize="small")
    save(fig, output_dir, "service_load")
    plt.show()
    best = load["throughput_rps"].max()
    knee = int(load.index[np.argmax(load["throughput_rps"].to_numpy() >= 0.9 * best)])
    first, last = load.iloc[0], load.iloc[-1]
    saturation_sentence = (
        f"One client at a time gets {first['throughput_rps']:.0f} answers per second at a median of "
        f"{first['p50_ms']:.1f} ms (n = {int(first['n']):,}). Throughput reaches 90% of its maximum "
        f"({best:.0f} per second) at **{knee} concurrent clients: that is where the 2 cores saturate**. "
        f"Beyond it more clients only wait in line: at {LOAD_LEVELS[-1]} clients throughput is "
        f"{last['throughput_rps']:.0f} per second while the median latency grows to {last['p50_ms']:.1f} ms "
        f"(p95 {last['p95_ms']:.1f} ms). Little's law ties the two: mean latency {last['mean_ms']:.1f} ms × "
        f"throughput {last['throughput_rps']:.0f} per second = {last['mean_ms'] * last['throughput_rps'] / 1000:.1f} "
        f"requests in flight, of the {LOAD_LEVELS[-1]} clients. "
        f"{int(load['errors'].sum())} of {int(load['sent'].sum()):,} requests failed."
    )
    display(load[["sent", "ok", "errors", "seconds", "throughput_rps", "p50_ms", "p95_ms", "p99_ms", "n", "note"]]
            .round(2))
    display(Markdown(saturation_sentence))
else:
    saturation_sentence = f"The service was not started: {redis_message}."
    display(Markdown(saturation_sentence))

# %% [markdown]
# ## 8.5 A lighter text ranker: int8 and ONNX Runtime
#
# Chapter 04's bi-encoder reads the candidate's description through MiniLM (the
# **item tower**, mean pooling, unit norm) and the user as the mean of their last
# `N_HISTORY` items' vectors; a linear head reads $[u, v, u \odot v]$. Its head
# here is chapter 04's linear probe ("LP": the encoder frozen, a logistic
# regression fitted on `n_probe` training examples). Item vectors depend on the
# item only, so they are computed once and cached: a request runs the head on K
# cached vectors, and the encoder runs only for an item without a vector (a new
# item, a catalogue refresh). A cross-encoder would run the encoder on every
# (user, candidate) pair instead: K encoder passes per request.
#
# The item tower is served three ways, and the ranker's AUC is measured with
# the vectors each one computes for the items of the same test examples:
#
# * **fp32**: the torch model;
# * **int8**: `torch.ao.quantization.quantize_dynamic` on every `Linear` layer
#   (weights stored as int8 with a scale, $w \approx s\,q$, $q \in \{-128..127\}$;
#   activations quantised per batch at run time);
# * **ONNX Runtime**: the fp32 tower exported to ONNX and run by ONNX Runtime's
#   CPU kernels (when `onnx` and `onnxruntime` are installed: they are optional).

# %%
descriptions = catalog.set_index("item_id")["description"]
tokenizer = load_tokenizer(model_name)
PAD = tokenizer.pad_token_id


def text_examples(part: pd.DataFrame, n: int, seed_: int) -> tuple[pairs.EncodedHistories, pd.DataFrame]:
    rows = part.iloc[np.sort(np.random.default_rng(seed_).choice(len(part), min(n, len(part)), replace=False))]
    return pairs.encode_histories(tokenizer, rows, descriptions, N_HISTORY, ITEM_TOKENS), rows


probe_ex, _ = text_examples(train, size["n_probe"], seed)
test_ex, test_rows = text_examples(test, size["n_text_test"], seed + 1)
bi = bert.load_ctr_model(model_name, architecture="bi", seed=seed).eval()
# the cached catalogue vectors ARE the frozen item tower's (same model, pooling and norm)
probe_train_auc = S.fit_probe_head(bi, item_vectors, probe_ex.hist, probe_ex.cand, probe_ex.labels, seed=seed)
TOWERS = {"fp32": bi, "int8": S.quantize_int8(bi)}
onnx_ok, onnx_message = S.onnx_status()
if onnx_ok:
    onnx_path = S.export_onnx(bi, output_dir / "item_tower.onnx", test_ex.item_tokens[:2], pad_id=PAD)
    TOWERS["onnx"] = S.OnnxItemTower(onnx_path, threads=threads)
print(onnx_message)
used = np.unique(np.r_[test_ex.cand, test_ex.hist[test_ex.hist >= 0]])  # the items the test examples read
used_tokens = [test_ex.item_tokens[j] for j in used]
text_scores, tower_vectors = {}, {}
with S.serving_threads(threads):
    for name, tower in TOWERS.items():
        tower_vectors[name] = S.item_tower_vectors(tower, used_tokens, pad_id=PAD)
        table = item_vectors.copy()
        table[used] = tower_vectors[name]
        text_scores[name] = bert.bi_logits(bi, table, test_ex.hist, test_ex.cand)  # the fp32 head on these vectors
        item_ids_ = np.random.default_rng(seed + 3).choice(used, size["text_requests"] + WARMUP)
        latency[f"item tower, {name} (1 new item)"] = S.latency_ms(
            lambda j, tower=tower: S.item_tower_vectors(tower, [test_ex.item_tokens[j]], pad_id=PAD), item_ids_,
            warmup=WARMUP)
        batch[f"item tower, {name} (1 new item)"] = S.throughput(
            lambda tower=tower: S.item_tower_vectors(tower, used_tokens, pad_id=PAD), len(used), repeats=1)
    user_rows = np.random.default_rng(seed + 4).integers(0, len(test_ex), size["latency_requests"] + WARMUP)
    cand_k = hybrid[0, :K_SERVE]
    latency[f"text scoring (K={K_SERVE}, cached vectors)"] = S.latency_ms(
        lambda r: bert.bi_logits(bi, item_vectors, np.repeat(test_ex.hist[r : r + 1], K_SERVE, axis=0), cand_k),
        user_rows, warmup=WARMUP)
    batch[f"text scoring (K={K_SERVE}, cached vectors)"] = S.throughput(
        lambda: bert.bi_logits(bi, item_vectors, np.repeat(test_ex.hist, K_SERVE, axis=0),
                               np.tile(cand_k, len(test_ex))), len(test_ex))
text_scores["DNN (same examples)"] = dnn.predict_proba(test_rows)
auc_text = bootstrap_auc(test_ex.labels, text_scores, test_rows["user_id"].to_numpy(),
                         pairs=[(n, "fp32") for n in TOWERS if n != "fp32"] + [("DNN (same examples)", "fp32")],
                         n_boot=size["n_boot"], seed=seed)
sizes_mb = {"fp32": S.model_bytes(bi) / 1e6, "int8": S.model_bytes(TOWERS["int8"]) / 1e6}
if onnx_ok:
    sizes_mb["onnx"] = onnx_path.stat().st_size / 1e6
light = pd.DataFrame({
    name: {"AUC": auc_text[name]["auc"],
           "AUC - fp32": auc_text[f"{name} - fp32"]["diff"] if name != "fp32" else 0.0,
           "min cosine to fp32 vector": float((tower_vectors[name] * tower_vectors["fp32"]).sum(1).min()),
           "p50 ms (1 item)": latency[f"item tower, {name} (1 new item)"]["p50_ms"],
           "p50 speed-up vs fp32": latency["item tower, fp32 (1 new item)"]["p50_ms"]
           / latency[f"item tower, {name} (1 new item)"]["p50_ms"],
           "items/s (batches of 256)": batch[f"item tower, {name} (1 new item)"],
           "size MB": sizes_mb[name]}
    for name in TOWERS
}).T
light.round(4)

# %% tags=["remove-input"]
i8 = light.loc["int8"]
dnn_text_verdict = decide(auc_text["DNN (same examples) - fp32"])
int8_verdict = decide(auc_text["int8 - fp32"], digits=4)


def speed(ratio: float) -> str:
    """'1.7× as fast' / '1.3× as slow' from a speed-up ratio (never '0.8× slower')."""
    return f"{ratio:.2f}× as fast as fp32" if ratio >= 1 else f"slower than fp32 ({1 / ratio:.2f}× its time)"


refresh_s = n_items / light["items/s (batches of 256)"]
display(Markdown(
    f"On {len(test_ex):,} test examples ({len(used):,} distinct items read), the probe-headed bi-encoder has AUC "
    f"{light.loc['fp32', 'AUC']:.3f} (training AUC of the probe {probe_train_auc:.3f}). With int8 item vectors "
    f"its AUC changes by {int8_verdict.text} (every int8 vector keeps a cosine of at least "
    f"{i8['min cosine to fp32 vector']:.4f} with its fp32 vector), and the int8 tower is "
    f"{speed(i8['p50 speed-up vs fp32'])} on one new item (p50), in a file "
    f"{light.loc['fp32', 'size MB'] / i8['size MB']:.1f}× smaller. "
    + (f"ONNX Runtime: AUC {decide(auc_text['onnx - fp32'], digits=4).text}, "
       f"{speed(light.loc['onnx', 'p50 speed-up vs fp32'])} on one item. " if onnx_ok else onnx_message + ". ")
    + f"Re-encoding the whole catalogue ({n_items:,} items) takes about {refresh_s['fp32']:.0f} s in fp32 and "
    f"{refresh_s['int8']:.0f} s in int8 on {threads} thread(s); a request pays none of it: scoring K = {K_SERVE} "
    f"cached candidates takes {latency[f'text scoring (K={K_SERVE}, cached vectors)']['p50_ms']:.2f} ms (p50). "
    f"Is the text ranker worth a place in the pipeline? The DNN scores the same examples with AUC "
    f"{auc_text['DNN (same examples)']['auc']:.3f}, against the text ranker {dnn_text_verdict.text}; it already "
    "reads the same MiniLM vectors (its text input and `text_sim_hist`), "
    + ("so as a separate ranker the text model adds nothing here. Whether the vectors help *inside* the DNN is "
       "another question, which chapter 04 measures (DNN with and without text, under the same negatives)."
       if dnn_text_verdict.is_gain else
       "and the text ranker does better on these examples: blending the two is exercise 3."
       if dnn_text_verdict.is_loss else "and the two cannot be told apart on these examples.")
))

# %% [markdown]
# ### 8.5.1 The latency table
#
# Every stage of a request, at batch 1, and the same work in batches. Item
# vectors are precomputed once for the catalogue and cached; their memory and
# the models' are listed below.

# %%
lat_table = pd.DataFrame(latency).T[["p50_ms", "p95_ms", "p99_ms", "mean_ms", "n", "note"]].infer_objects()
lat_table["batch throughput (items/s)"] = pd.Series(batch)
lat_table["unit"] = [UNITS.get(name, "item" if name.startswith("item tower") else "user (K candidates)")
                     for name in lat_table.index]
fig, ax = plt.subplots(figsize=(8, 3.6))
ypos = np.arange(len(lat_table))
ax.barh(ypos, lat_table["p50_ms"], color="C0", label="p50")
ax.errorbar(lat_table["p95_ms"], ypos, fmt="|", color="C3", markersize=12, label="p95")
ax.errorbar(lat_table["p99_ms"], ypos, fmt="x", color="black", label="p99")
ax.set_yticks(ypos, lat_table.index)
ax.invert_yaxis()
ax.set_xscale("log")
plain_log_axis(ax.xaxis)
ax.set_xlabel(f"ms per request, batch 1, {threads} thread(s) (log scale)")
ax.legend(fontsize="small")
save(fig, output_dir, "latency_per_stage")
memory_mb = {
    "item text vectors (float32, cached)": item_vectors.nbytes / 1e6,
    "exact FAISS index over them": ann.index_bytes(stage.text_index) / 1e6,
    "DNN (state dict, text table included)": S.model_bytes(dnn.net) / 1e6,
    "feature snapshot (user, item and pair arrays)": store.nbytes() / 1e6,
    **({"the same snapshot in Redis (used_memory)": redis_info["bytes"] / 1e6} if redis_ok else {}),
    **{f"item tower, {k}": v for k, v in sizes_mb.items()},
}
display(lat_table.round(3))
display(pd.Series(memory_mb, name="MB").round(2).to_frame())

# %% tags=["remove-input"]
STAGES = ["user vector", "FAISS search (exact)", LOOKUP, ENCODE, SCORE]
serve_ms = sum(latency[st]["p50_ms"] for st in STAGES)
dominant = max(STAGES, key=lambda st: latency[st]["p50_ms"])
new_path = latency[LOOKUP]["p50_ms"] + latency[ENCODE]["p50_ms"]
http_sentence = ""
if redis_ok:
    inside = latency[REDIS]["p50_ms"] + latency[ENCODE]["p50_ms"] + latency[SCORE]["p50_ms"]
    http_sentence = (
        f" Through the service, one client at a time waits {load.iloc[0]['p50_ms']:.1f} ms at the median for the "
        f"same ranking (lookup from Redis, inputs, DNN: {inside:.2f} ms of it in process): the rest, "
        f"{load.iloc[0]['p50_ms'] - inside:.1f} ms, is the service itself (HTTP parsing, validation, JSON, the "
        "event loop, the client's own turn on the same cores).")
stage_shares = {st: latency[st]["p50_ms"] / serve_ms for st in STAGES}
display(Markdown(
    f"A request at K = {K_SERVE} in process (user vector, search, feature lookup, DNN inputs, DNN) takes about "
    f"{serve_ms:.2f} ms at the median on {threads} thread(s) (n = {latency[SCORE]['n']:,} requests per stage). "
    f"The largest part is **{dominant}** ({stage_shares[dominant]:.0%}); the lookup from the arrays is "
    f"{stage_shares[LOOKUP]:.0%} and building the DNN's inputs {stage_shares[ENCODE]:.0%}. Assembled as a "
    f"DataFrame instead, the same features took {latency[OLD]['p50_ms']:.1f} ms "
    f"({latency[OLD]['p50_ms'] / new_path:.0f}× the lookup and inputs from arrays): a serving path's cost is "
    "mostly what its implementation does per request, so measure before deciding what dominates."
    + http_sentence + " The cached item vectors take "
    f"{memory_mb['item text vectors (float32, cached)']:.1f} MB for {n_items:,} items "
    f"({item_vectors.nbytes / n_items:.0f} bytes per item): a million items would need "
    f"{item_vectors.nbytes / n_items * 1e6 / 1e9:.2f} GB."
))

# %% [markdown]
# ## 8.6 Retrieval at catalogue scale: exact, HNSW or IVF-PQ?
#
# Exact search compares the query with every item: its cost grows linearly with
# the catalogue. **HNSW** (Malkov and Yashunin, 2018) walks a navigable graph and
# keeps `efSearch` candidates; **IVF-PQ** (Jégou et al., 2011) visits `nprobe` of
# its k-means cells and compares compressed codes (`m` sub-vectors of `nbits`
# bits each) instead of vectors. Every approximate search here sets its breadth
# explicitly, and `ecrec.recall.faiss_search` never searches narrower than the K
# results asked for: an IVF-PQ set to visit 8 cells visits as many as it takes
# for their lists to hold K vectors. The table's `breadth` is therefore the
# breadth each search **used** (`ecrec.ann.searched_breadth`), `breadth asked`
# the one set on the index. Quality is the **overlap** with the exact top K (the
# share of the exact top 100 that comes back).
#
# The real catalogue is small, so we also build synthetic catalogues from it:
# real item vectors resampled with noise (`ecrec.ann.synthetic_catalogue`), the
# same clusters at a larger size. The queries are real users' text-tower vectors.

# %%
queries = stage.user_vectors(data_all.history)
queries = queries[np.any(queries != 0, axis=1)]
queries = queries[np.random.default_rng(seed).choice(len(queries), min(size["ann_queries"], len(queries)),
                                                     replace=False)]
BREADTHS = {"flat": [None], "hnsw": [K_SERVE, 2 * K_SERVE, 4 * K_SERVE], "ivfpq": [8, 32, 128]}
catalogues = {"real": item_vectors} | {f"synthetic {n:,}": n for n in size["ann_sizes"]}
ann_parts = []
with S.serving_threads(threads):
    for label, spec in tqdm(catalogues.items(), desc="catalogues"):
        vecs = spec if isinstance(spec, np.ndarray) else ann.synthetic_catalogue(item_vectors, spec, seed=seed)
        ann_parts.append(ann.compare_indexes(vecs, queries, K_SERVE, BREADTHS, n_latency=len(queries) - WARMUP,
                                             warmup=WARMUP, seed=seed, label=label))
        del vecs
ann_table = pd.concat(ann_parts, ignore_index=True)
choice = ann.right_choice(ann_table, K_SERVE, MIN_OVERLAP)
display(ann_table.round(4))
choice.round(3)

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
best_rows = ann_table.loc[ann_table.assign(ok=ann_table[f"overlap@{K_SERVE}"] >= MIN_OVERLAP)
                          .sort_values(["ok", "p50_ms"], ascending=[False, True]).groupby(["n_items", "index"]).head(1)
                          .index]
for kind, part in best_rows.groupby("index"):
    part = part.sort_values("n_items")
    axes[0].plot(part["n_items"], part["p50_ms"], marker="o", label=kind)
    axes[1].plot(part["n_items"], part["bytes_per_item"], marker="o", label=kind)
    axes[2].plot(part["n_items"], part[f"overlap@{K_SERVE}"], marker="o", label=kind)
for ax, lab in zip(axes, ["p50 ms per query (batch 1)", "bytes per item", f"overlap with exact top {K_SERVE}"],
                   strict=True):
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis, sorted(ann_table["n_items"].unique()))
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_xlabel("catalogue size (items)")
    ax.set_ylabel(lab)
axes[0].set_yscale("log")
plain_log_axis(axes[0].yaxis)
axes[2].axhline(MIN_OVERLAP, ls="--", color="grey")
axes[0].legend()
fig.suptitle(f"Each index at its fastest breadth with overlap >= {MIN_OVERLAP} (else its best overlap)",
             fontsize="small")
save(fig, output_dir, "ann_scale")
flat_rows = ann_table[ann_table["index"] == "flat"].set_index("n_items")
first_ann = choice[choice["index"] != "flat"]
display(Markdown(
    f"Exact search costs {flat_rows['p50_ms'].iloc[0]:.2f} ms per query on the real {n_items:,} items and "
    f"{flat_rows['p50_ms'].iloc[-1]:.2f} ms on {flat_rows.index[-1]:,} items ({threads} thread). "
    + (f"The smallest catalogue measured where an approximate index is the faster choice at overlap ≥ "
       f"{MIN_OVERLAP} is {int(first_ann['n_items'].iloc[0]):,} items ({first_ann['index'].iloc[0]}, "
       f"{first_ann['breadth'].iloc[0]}, {first_ann['speed-up vs flat'].iloc[0]:.2f}× as fast as exact). "
       if len(first_ann) else f"At every size measured exact search is the right choice at overlap ≥ {MIN_OVERLAP}. ")
    + "IVF-PQ stores "
    f"{ann_table.loc[ann_table['index'] == 'ivfpq', 'bytes_per_item'].iloc[-1]:.0f} bytes per item against "
    f"{ann_table.loc[ann_table['index'] == 'flat', 'bytes_per_item'].iloc[-1]:.0f} for exact search and "
    f"{ann_table.loc[ann_table['index'] == 'hnsw', 'bytes_per_item'].iloc[-1]:.0f} for HNSW: it is the choice "
    "when memory, not latency, runs out; its compressed scores cap its overlap at "
    f"{ann_table.loc[ann_table['index'] == 'ivfpq', f'overlap@{K_SERVE}'].max():.3f} here. "
    "Timings vary with the machine and its load; overlaps and bytes do not."
))

# %% [markdown]
# ## 8.7 Beyond accuracy: coverage, novelty, diversity and an MMR re-ranker
#
# Section 8.3 judged the final top 10 by its hits. A customer also sees what
# the list *is*: ten variants of one lunch bag, or ten different products;
# the best-sellers everyone already knows, or items they would not have found.
# We measure the final lists with chapter 05's beyond-accuracy definitions
# (`ecrec.metrics`, ties counted as the expectation over their orders):
# **coverage** of the catalogue, **novelty** (mean self-information
# $-\log_2 p(i)$ of the listed items, in bits; $p(i)$ the share of training
# customers who bought $i$ before the test window, smoothed by one customer),
# **intra-list diversity** (ILD@10: the mean cosine distance $1 - \cos(v_a,
# v_b)$ over the 45 pairs of a top 10, $v$ the MiniLM description vectors of
# section 8.1.1), the **share of slots taken by the most bought 10%** of the
# catalogue, and **exposure by price band** (a band's share of the slots over
# its share of the catalogue; 1 = shown in proportion to its size).
#
# ### 8.7.1 What the final top 10 looks like

# %%
from ecrec import rerank
from ecrec.rerank import mmr_rerank

HEAD_SHARE = 0.1  # the popular head: the most bought 10% of the catalogue
PRICE_BANDS = pd.cut(catalog["price"], [-np.inf, 1, 2.5, 5, np.inf], right=False,
                     labels=["under £1", "£1 to £2.50", "£2.50 to £5", "£5 and over"])
buyers = data.items["train_buyers"].to_numpy()  # distinct customers per item before the test window
n_train_customers = data.train_matrix.shape[0]
beyond_rows, band_ratio = {}, {}
for name, (x, s_) in RANKED.items():
    beyond_rows[name] = {
        "recall@10": results.loc[name, "recall@10"], "ndcg@10": results.loc[name, "ndcg@10"],
        "coverage@10": M.catalogue_coverage(x, n_items, TOP, scores=s_),
        "novelty@10 (bits)": M.novelty_at_k(x, buyers, n_train_customers, TOP, scores=s_),
        "ILD@10": M.intra_list_diversity_at_k(x, item_vectors, TOP, scores=s_),
        f"top-{HEAD_SHARE:.0%} share@10": M.popularity_bias_at_k(x, buyers, TOP, head_share=HEAD_SHARE, scores=s_),
    }
    band_ratio[name] = M.exposure_by_group_at_k(x, PRICE_BANDS, TOP, scores=s_)["ratio"]
beyond_final = pd.DataFrame(beyond_rows).T
display(pd.concat({"": beyond_final, "exposure / catalogue share, by price band": pd.DataFrame(band_ratio).T},
                  axis=1).round(3))

# %% [markdown]
# ### 8.7.2 MMR: trading relevance for diversity, measured
#
# A ranker scores each candidate alone, so nothing stops it from filling the
# top 10 with near copies. **Maximal marginal relevance** (Carbonell and
# Goldstein, 1998) re-ranks greedily: each next item maximises
#
# $$\lambda \, \mathrm{rel}(i) - (1 - \lambda) \max_{j \in S} \cos(v_i, v_j),$$
#
# its relevance (the DNN's logit, rescaled to [0, 1] within the user's
# candidates) minus its redundancy with the items $S$ already chosen.
# $\lambda = 1$ is the ranker's own order (checked below, list for list);
# lower $\lambda$ buys diversity with relevance. We re-rank the DNN's top
# `K_SERVE` of the hybrid's candidates at several $\lambda$ and read the
# trade-off: NDCG@10 against ILD@10, each with a bootstrap interval over users,
# and the change against $\lambda = 1$ paired on the same users.

# %%
print(inspect.getsource(rerank._greedy))  # the loop of ecrec.rerank.mmr_rerank, vectorised over users

# %%
LAMBDAS = (1.0, 0.9, 0.7, 0.5, 0.3)
MMR_STARTED = time.time()
cand100 = hybrid[:, :K_SERVE]
top100, top100_logits = S.top_n(np.where(cand100 >= 0, np.take_along_axis(scores, np.maximum(cand100, 0), axis=1),
                                         -np.inf), cand100, K_SERVE)
mmr_lists = {lam: mmr_rerank(top100, top100_logits, item_vectors, TOP, lam=lam) for lam in LAMBDAS}
mmr_identity = bool(np.array_equal(mmr_lists[1.0], top100[:, :TOP]))
assert mmr_identity, "MMR at lambda = 1 must return the ranker's own top 10"
mmr_user = {lam: {"ndcg": M.ndcg_at_k(x, data.relevant_all, TOP, per_user=True),
                  "ild": M.intra_list_diversity_at_k(x, item_vectors, TOP, per_user=True)} for lam, x in mmr_lists.items()}


def mean_interval(values):
    """A mean over users with its bootstrap interval (ecrec.stats: the paired difference with 0)."""
    return paired_mean_diff(values, np.zeros_like(values), n_boot=size["n_boot"], seed=seed)


def vs_ranker(lam, key):
    """MMR at lam minus the ranker's own top 10 (lam = 1), paired over users."""
    a, b = mmr_user[lam][key], mmr_user[1.0][key]
    both = ~np.isnan(a) & ~np.isnan(b)  # ILD needs 2 items: a user with fewer has none
    return paired_mean_diff(np.where(both, a, np.nan), np.where(both, b, 0.0), n_boot=size["n_boot"], seed=seed)


mmr_curve = {lam: {key: mean_interval(u[key][~np.isnan(u[key])]) for key in ("ndcg", "ild")}
             for lam, u in mmr_user.items()}
mmr_change = {lam: {key: vs_ranker(lam, key) for key in ("ndcg", "ild")} for lam in LAMBDAS[1:]}
mmr_seconds = time.time() - MMR_STARTED
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
pts = np.array([[mmr_curve[lam][key][f] for key in ("ild", "ndcg") for f in ("diff", "low", "high")]
                for lam in LAMBDAS])
axes[0].errorbar(pts[:, 0], pts[:, 3], xerr=[pts[:, 0] - pts[:, 1], pts[:, 2] - pts[:, 0]],
                 yerr=[pts[:, 3] - pts[:, 4], pts[:, 5] - pts[:, 3]], fmt="o-", capsize=3)
for lam, (x_, y_) in zip(LAMBDAS, pts[:, [0, 3]], strict=True):
    axes[0].annotate(f"λ = {lam:g}", (x_, y_), xytext=(5, 5), textcoords="offset points", fontsize="small")
axes[0].margins(x=0.15, y=0.1)
axes[0].set_xlabel("ILD@10 (MiniLM cosine distance)")
axes[0].set_ylabel("NDCG@10")
axes[0].set_title(f"MMR over the DNN's top {K_SERVE} ({n_users} users, 95% intervals)", fontsize="small")
for key, mk in (("ndcg", "o"), ("ild", "s")):
    d_ = np.array([[mmr_change[lam][key][f] for f in ("diff", "low", "high")] for lam in LAMBDAS[1:]])
    axes[1].errorbar(LAMBDAS[1:], d_[:, 0], yerr=[d_[:, 0] - d_[:, 1], d_[:, 2] - d_[:, 0]], fmt=mk + "-",
                     capsize=3, label={"ndcg": "NDCG@10", "ild": "ILD@10"}[key])
axes[1].axhline(0, ls="--", color="grey")
axes[1].invert_xaxis()
axes[1].set_xlabel("λ (1 = the ranker's order)")
axes[1].set_ylabel("change against λ = 1")
axes[1].legend(fontsize="small")
save(fig, output_dir, "mmr_tradeoff")

# %% tags=["remove-input"]
free = [lam for lam in LAMBDAS[1:] if decide(mmr_change[lam]["ild"]).is_gain
        and not decide(mmr_change[lam]["ndcg"]).is_loss]
lowest = LAMBDAS[-1]
bf = beyond_final.loc[f"recall@{K_SERVE} + ranking"]
display(Markdown(
    f"The served lists (the DNN's top 10 of the hybrid's first {K_SERVE}): novelty {bf['novelty@10 (bits)']:.2f} "
    f"bits, ILD@10 {bf['ILD@10']:.3f}, {bf[f'top-{HEAD_SHARE:.0%} share@10']:.0%} of the slots to the most bought "
    f"{HEAD_SHARE:.0%} of the catalogue, coverage {bf['coverage@10']:.3f}. MMR at λ = 1 returns the ranker's top 10 "
    f"for all {n_users} users (checked). "
    + (f"The lowest λ tried at which ILD@10 rises beyond noise with no measurable loss of NDCG@10 is "
       f"{min(free):g}: ILD@10 changes by {direction(mmr_change[min(free)]['ild'])}, and NDCG@10 by "
       f"{decide(mmr_change[min(free)]['ndcg']).text}: diversity this run did not pay for in measurable "
       "accuracy. " if free else
       "At no λ tried does MMR raise ILD@10 beyond noise without a measurable loss of NDCG@10. ")
    + (f"At λ = {lowest:g}, ILD@10 changes by {direction(mmr_change[lowest]['ild'])}, and NDCG@10 by "
       f"{decide(mmr_change[lowest]['ndcg']).text}. " if not free or min(free) != lowest else "")
    + f"With {n_users} users the intervals are wide: which λ a shop wants is a business choice (an A/B test "
    "of engagement), not one this offline curve can make alone."
))
EXTRA_METRICS["beyond_accuracy"] = {
    "head_share": HEAD_SHARE, "item_vectors": "MiniLM description vectors (section 8.1.1)",
    "final_top10": {name: {k: float(v) for k, v in row.items()} for name, row in beyond_final.iterrows()},
    "price_band_ratio": {name: {str(b): float(v) for b, v in r_.items()} for name, r_ in band_ratio.items()},
    "mmr": {"k_candidates": K_SERVE, "lambdas": list(LAMBDAS), "lambda1_equals_ranker_top10": mmr_identity,
            "curve": {str(lam): v for lam, v in mmr_curve.items()},
            "change_vs_lambda1": {str(lam): v for lam, v in mmr_change.items()},
            "free_diversity_lambdas": free, "seconds": round(mmr_seconds, 2)},
}

# %% tags=["remove-input"]
lesson = (
    f"Served for real, a request for K = {K_SERVE} candidates costs {serve_ms:.1f} ms in process on "
    f"{threads} thread(s), the largest part being the stage '{dominant}', once its features are looked up from columnar "
    f"arrays ({latency[OLD]['p50_ms'] / new_path:.0f}× cheaper than assembling them as a DataFrame)"
    + (f"; behind HTTP, with its features in Redis, the service answers exactly like the pipeline and its 2 cores "
       f"saturate at {knee} concurrent clients ({best:.0f} requests per second)" if redis_ok else "")
    + f"; and ranking the hybrid's first {best_k} candidates changes Recall@10 against recall alone by "
    f"{gain_verdict.text}."
)
LESSON.update(Markdown(f"**In one sentence (from this run):** {lesson}"))


def finite(value):
    """NaN (a percentile with too few samples behind it) becomes None in metrics.json."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


serving = {"feature_store": {"rows_checked": len(check_rows), "max_rel_diff": store_rel_diff,
                             "encoder_max_abs_diff": encoder_diff},
           "redis": redis_info, "stage_share": stage_shares, "dominant_stage": dominant,
           "old_over_new_lookup": latency[OLD]["p50_ms"] / new_path}
if redis_ok:
    serving["service"] = {
        "workers": SERVICE_WORKERS, "same_lists": service_info["same_lists"], "users_checked": len(service_users),
        "faults": {case: {"status": int(row["status"]), "ms": float(row["ms"])} for case, row in faults.iterrows()},
        "load": {str(c): {k: row[k] for k in ("sent", "ok", "errors", "seconds", "throughput_rps", "p50_ms",
                                              "p95_ms", "p99_ms", "n")} for c, row in load.iterrows()},
        "saturation_clients": knee, "max_throughput_rps": best}

# %% tags=["remove-input"]
metrics = {
    "n_users": n_users, "n_items": n_items, "k_values": KS, "k_serve": K_SERVE, "threads": threads,
    "hybrid_mix": MIX, "validation_ceiling@100": max(mix_scores),
    "final_top10": {name: {m: float(v) for m, v in row.items() if not pd.isna(v)}
                    for name, row in results.iterrows()},
    "recall_ceiling": {str(k): float(ceil_table.loc[k, "hybrid"]) for k in KS},
    "generator_ceiling@100": {g: float(ceil_table.loc[K_SERVE, g]) for g in ceil_table.columns},
    "ranking_gain_recall@10": {**gain, "k": best_k}, "recall@10_change_k500_vs_k50": drop,
    "dormant_share": dormant_share, "oov_share@100": oov_share,
    "dnn_test_auc": dnn_test["auc"], "dnn_best_epoch": dnn.best_epoch, "leakage": leakage,
    "ranking_cost_ms": {str(k): v for k, v in cost.items()},
    "latency_ms": latency, "throughput_per_s": batch, "memory_mb": memory_mb,
    "text_ranker": {"auc": {k: v for k, v in auc_text.items()}, "probe_train_auc": probe_train_auc,
                    "onnx": onnx_message, "catalogue_refresh_s": refresh_s.to_dict(), "n_items_read": len(used),
                    "table": light.to_dict(orient="index")},
    "ann": ann_table.to_dict(orient="records"), "ann_right_choice": choice.to_dict(orient="records"),
    "feature_store_rows_checked": len(check_rows), "serving": serving, "lesson": lesson,
    **EXTRA_METRICS,
}
write_metrics(output_dir, finite(metrics), profile=run_profile, seed=seed, started=STARTED)
display(Markdown(f"This run used the **{run_profile}** profile; it took {time.time() - STARTED:.0f} s."))

# %% [markdown]
# ## Summary

# %% tags=["remove-input"]
Markdown(f"**The lesson.** {lesson}")

# %% [markdown]
# * Evaluate the system on its **final** list: recall alone, recall + ranking at
#   several K, and the ranker over the whole catalogue, with the same metric
#   definitions as the parts.
# * The recall ceiling rises with K, but the final quality need not: a ranker
#   trained on sampled negatives has only learned to tell apart the kind of
#   items its negatives were. Train the two stages for each other.
# * Serve point-in-time features from a snapshot and check them against the
#   offline code row for row: equal, or a train/serve skew you have measured
#   and stated. Hold it as columnar arrays with integer lookups: K = 100
#   candidates then cost microseconds, not the milliseconds of a DataFrame per request.
# * An online store (Redis) shares one snapshot between servers at the price
#   of a network hop per round trip: read a request's keys in one pipelined
#   round trip, and give the client a timeout so that a dead store is a fast
#   503, not a hang.
# * Measure latency per request at batch 1 as percentiles with their sample
#   count, warm-up excluded, and throughput in batches, with the thread count
#   stated; then measure the service under concurrent clients: throughput stops
#   growing where the cores saturate, and past that point latency only queues.
# * Cache what depends on the item only (its text vector): a request then pays
#   for the head, not the encoder. Dynamic int8 quantisation and ONNX Runtime
#   make the encoder cheaper at a measured change in AUC; whether a text ranker
#   earns its place depends on what it adds over the ranker you already have.
# * Exact search is right for small catalogues; approximate indexes pay off as
#   the catalogue grows (HNSW for latency, IVF-PQ for memory), always with an
#   explicit search breadth at least as large as K.
# * Look at the lists, not only their hits: coverage, novelty, intra-list
#   diversity, the popular head's share of the slots, exposure by price band.
#   MMR re-ranks the ranker's top 100 for diversity; λ = 1 is the ranker's own
#   order, and the trade-off curve (NDCG@10 against ILD@10, with intervals)
#   shows what each step of diversity costs in accuracy.
# * Fine-tuning itself scales out with data parallelism (PyTorch DDP and
#   `torchrun`): appendix A.
#
# ## Exercises
#
# 1. *(runnable)* Train the ranker on chapter 03's **popularity-matched**
#    negatives (`F.dataset_config(size, seed=seed, negatives="popularity")`) and
#    redo section 8.3. Does the whole catalogue stop being a trap? How does the
#    ranking of the hybrid's candidates change, at small and at large K, and
#    why? A worked solution is in `notebooks/solutions/08_exercises.py`.
# 2. *(runnable)* HNSW's graph degree `M` trades memory and build time for
#    quality: build the index with M = 8, 16, 32 and 48 on a synthetic catalogue
#    and compare bytes per item, build time and overlap at efSearch = K.
#    (solution in the same file)
# 3. Replace the probe by chapter 04's fine-tuned bi-encoder (`bi_ft`), blend its
#    logit with the DNN's (the weight chosen on the validation window) and rank
#    the hybrid's candidates with the blend. Does the final Recall@10 move beyond
#    the bootstrap noise, and what does it add to the p95 latency?
# 4. Redo section 8.3 in chapter 05's **new-to-user** setting (exclude each
#    user's history from the candidates). Which features does the ranker lean on
#    once repeat purchases are gone?
# 5. Measure the stages with `threads = 2` and with a batch of 8 users per call:
#    which stages scale, and where does p99 move?
