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
# # 3. Features on real transactions, and ID-based CTR models
#
# Online Retail is a purchase log, not an ad log: there are no impressions and
# no clicks. To study click-through-rate (CTR) models on it we turn each
# purchase into a positive example and sample items the customer did *not*
# buy as negatives. Two things decide whether the numbers we get mean
# anything:
#
# 1. **No look into the future.** Every feature of an example may use only
#    what happened strictly before the example's time, and the test examples
#    must come after the training ones.
# 2. **Honest baselines.** The BERT chapter (04) has to beat a logistic
#    regression and a DNN that already use every ID, count and text feature we
#    can compute cheaply, especially on *cold-start* examples, whose user or
#    item never appears in training.
#
# The dataset built here is saved as a parquet file keyed by its
# configuration, so that chapters 04 and 06 read exactly the same examples.
# Chapter 05 (recall) does not read these examples: it builds its own data
# from the same purchase events (`ecrec.features.purchase_events`) and item
# table (`ecrec.features.item_catalog`).
#
# **You will learn to**
#
# * cut a purchase log on *global* time into train, validation and test
#   windows, and say why a per-user random split leaks the future;
# * turn purchases into CTR examples with sampled negatives, and check that
#   the sampler does not hand the model the label (a shortcut);
# * compute point-in-time user, item, user x item and sequence features
#   without a Python loop, and *test* that they cannot see the future;
# * fit a logistic regression and an embedding + MLP DNN with early stopping
#   on validation log loss, and read AUC, log loss, GAUC (per user and per
#   invoice) and the cold-start slices;
# * measure which feature groups matter with an ablation.
#
# **You need** chapter 01 (the cleaned Online Retail data) and chapter 02
# (logistic regression and an MLP trained on log loss, AUC). "CTR" here is a
# purchase against sampled negatives, not a click on an impression.

# %% tags=["parameters"]
profile = "auto"  # "auto" | "smoke" | "cpu" | "full"
seed = 42
output_dir = "outputs/03_features"
sizes = None  # optional dict overriding the profile's sizes
cache_dir = None  # where the dataset parquet is cached; None: <output_dir>/../cache
negatives = "uniform"  # negative sampling: "uniform" | "popularity"
model_name = "minilm"  # sentence encoder for the description embeddings

# %%
# In Colab: fetch the book's code and data, then install it (skipped elsewhere).
import os
import subprocess
import sys

if "google.colab" in sys.modules and not os.path.isdir("ecrec-book"):
    subprocess.run(["git", "clone", "--depth", "1", "https://github.com/ecrec-book/ecrec", "ecrec-book"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements.txt"], cwd="ecrec-book", check=True)
    sys.path.insert(0, os.path.abspath("ecrec-book"))

# %%
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from ecrec import ctr
from ecrec import features as F
from ecrec.data import load_clean_online_retail
from ecrec.io import write_metrics
from ecrec.plots import loss_curves, reliability, save
from ecrec.profiles import pick_sizes, seed_everything
from ecrec.text import encode_texts

STARTED = time.time()
SIZES = {
    # _minutes: smoke measured on 2 CPU cores (3.4-4.5 min); full is an estimate, not measured: all
    # 4,334 users are ~20x the smoke rows (1.87M examples, built in ~10 s), and the logistic
    # regressions (ablation) and the DNN, twice the epochs, dominate
    # the dataset's own sizes (users, negatives per positive, history length) come from
    # F.DATASET_SIZES, shared with every chapter that reads these examples
    "smoke": {**F.DATASET_SIZES["smoke"], "dnn_epochs": 4, "lr_max_iter": 100, "_minutes": (3.5, 4.5)},
    "full": {**F.DATASET_SIZES["full"], "dnn_epochs": 8, "lr_max_iter": 200, "_minutes": (30, 60)},
}
run_profile, size = pick_sizes(profile, SIZES, sizes)
seed_everything(seed)
output_dir = Path(output_dir)
cache_dir = Path(cache_dir) if cache_dir else output_dir.parent / "cache"
# quantile buckets of counts that are mostly 0 have empty bins; scikit-learn merges them and says so
warnings.filterwarnings("ignore", message="Bins whose width")
size

# %% [markdown]
# ## 3.1 One global time split, test last
#
# A recommender is trained on the past and used on the future. A per-user
# random split, or "leave the last purchase of each user out", breaks that:
# customer A's test purchase in March can sit before customer B's training
# purchase in November, so the model learns November's bestsellers and is
# tested on March. Item popularity, seasonality (Christmas!) and the catalog
# itself leak backwards. We cut on *global* time instead: everything before
# `valid_start` is train, the next 30 days validation, the last 30 days test.

# %%
clean, _ = load_clean_online_retail()
events = F.purchase_events(clean)
valid_start, test_start = F.split_dates(events["ts"], valid_days=30, test_days=30)
events["split"] = F.assign_split(events["ts"], valid_start, test_start)
print(f"{len(events):,} purchase events (invoice x item), valid from {valid_start:%Y-%m-%d}, test from {test_start:%Y-%m-%d}")

daily = events.set_index("ts").resample("D").size()
fig, ax = plt.subplots(figsize=(8, 3))
daily.plot(ax=ax, lw=0.6, color="tab:blue", alpha=0.5, label="per day (0 on days without trading)")
daily.rolling(7).mean().plot(ax=ax, lw=1.8, color="tab:blue", label="7-day rolling mean")
for when, name in ((valid_start, "valid"), (test_start, "test")):
    ax.axvline(when, color="tab:red", ls="--")
    ax.text(when, daily.max() * 0.95, f" {name}", color="tab:red")
ax.set_xlabel("date")
ax.set_ylabel("purchase events per day")
ax.legend(loc="upper left", fontsize=8)
ax.set_title("Traffic grows towards Christmas: the test window is the busiest")
save(fig, output_dir, "daily_events_split")

# %% [markdown]
# ## 3.2 Positives, and negatives that are not impressions
#
# A positive is a (customer, item, invoice time), de-duplicated within an
# invoice. For each positive we draw `neg_ratio` negatives. Two choices decide
# whether the negatives teach the model something true:
#
# * **What is excluded: only the basket.** A negative is *an item the customer
#   did not buy in this basket*: all of the customer's invoices at the same
#   moment count as one basket (some customers split one order into two
#   invoices in the same minute). Excluding everything the customer
#   bought anywhere in the split window (10 months for train) sounds safer but
#   creates a label shortcut: then in train *every* item the customer had bought
#   before is a positive, while in test (a shorter window) it is not, so the
#   model learns "bought before = bought now" and is over-confident on test.
#   We also could exclude a short horizon after the invoice (items bought in
#   the next days); the basket is the simplest rule that is the same in every
#   split. The price: a negative may be bought by the customer later. The
#   other policy is one switch away (`neg_exclude_bought_in_split`); we
#   measure what it changes once the models are fitted.
# * **Where candidates come from: what was on sale.** Negatives are drawn from
#   the items somebody bought in the 30 days before the example's time,
#   uniformly or in proportion to those sales (`negatives` parameter). Drawing
#   from every item of the window would offer items not yet on sale, and
#   "never sold before" would then mark negatives.
#
# Sampled negatives are **not impressions**: the customer probably never saw
# them. Most are easy to tell apart from real purchases (an obscure item is
# rarely bought), so AUC on sampled negatives is much higher than AUC on real
# impression logs would be, and it changes with the sampler: popularity
# sampling makes harder negatives and lower AUC. Compare models on the same
# sampler only; the choice is recorded in `metrics.json`.

# %%
config = F.dataset_config(size, seed=seed, negatives=negatives)
t0 = time.time()
data = F.load_or_build_ctr_dataset(clean, config, cache_dir)
print(f"dataset {F.dataset_key(clean, config)} in {time.time() - t0:.1f} s, cached in {cache_dir}")
summary = data.groupby("split").agg(
    examples=("label", "size"), positive_rate=("label", "mean"),
    cold_user=("cold_user", "mean"), cold_item=("cold_item", "mean"),
).loc[list(F.SPLITS)]
summary

# %% [markdown]
# **Check: no shortcut from the sampler.** If the sampler were the one that
# decides a label, the same feature value would mean different things in train
# and test. Two diagnostics per split: the share of positives among examples
# whose customer bought the item before, and the share of examples with an
# item nobody bought in the previous 30 days.

# %%
bought_before = data["ui_n_before"] > 0
no_recent_sale = data["i_pop_30d"] == 0
shortcut = pd.DataFrame(
    {
        "P(label 1 | bought before)": data[bought_before].groupby("split")["label"].mean(),
        "negatives bought before": bought_before[data["label"] == 0].groupby(data["split"]).mean(),
        "positives without a sale in 30 d": no_recent_sale[data["label"] == 1].groupby(data["split"]).mean(),
        "negatives without a sale in 30 d": no_recent_sale[data["label"] == 0].groupby(data["split"]).mean(),
    }
).loc[list(F.SPLITS)]
display(shortcut.round(4))
display(Markdown(
    f"A repeat purchase is a strong signal but not a certain one in every split: "
    f"{shortcut.loc['train', 'P(label 1 | bought before)']:.1%} of the train examples the customer had bought before "
    f"are positives, {shortcut.loc['test', 'P(label 1 | bought before)']:.1%} in test "
    f"(with the old window exclusion it was 100% in train). "
    f"No negative is an item without a sale in the previous 30 days, by construction; "
    f"{shortcut.loc['train', 'positives without a sale in 30 d']:.1%} of the train positives "
    f"({shortcut.loc['test', 'positives without a sale in 30 d']:.1%} in test) are, so a small shortcut is left: "
    f"a first sale or a comeback after a month is always a positive. Real impression logs would show such items too."
))

# %%
data.head(3).T

# %% [markdown]
# ## 3.3 Point-in-time features
#
# Every feature of an example uses purchases strictly before its time (the
# other lines of the same invoice are not "before"):
#
# * **user**: invoices, lines and spend so far (frequency, monetary), days
#   since the last and the first invoice (recency, tenure), country;
# * **item**: share of all purchases over the last 7 and 30 days and ever,
#   last price paid, days since first sale, a category (the description's
#   last word);
# * **user x item**: times this customer bought this item before, days since;
# * **context**: hour, weekday, month; **sequence**: the last 10 items bought;
# * **text**: TF-IDF and MiniLM embeddings of the description.
#
# They are computed without a Python loop over rows: each family of events is
# sorted once by (user or item, time), and one `numpy.searchsorted` per
# example finds how many events come before it; cumulative sums give totals.
# Popularity enters as a *share* because raw counts grow with traffic (see the
# figure above) and would make every test item look popular.

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
for ax, col in zip(axes, ["i_share_30d", "ui_n_before", "u_days_since_last"], strict=True):
    for label, part in data[data["split"] == "train"].groupby("label"):
        ax.hist(np.log1p(part[col].dropna()), bins=30, alpha=0.6, density=True, label=f"label {label}")
    ax.set_title(f"log1p({col})")
axes[0].legend()
fig.suptitle("Train split: positives and negatives differ in item popularity and repeat purchases")
fig.tight_layout()
save(fig, output_dir, "feature_histograms")

# %% [markdown]
# **Check: the features cannot see the future.** For 20 distinct example
# times across the three splits, delete every event at or after that time and
# recompute the examples of that moment: the features must not move
# (`tests/test_features.py` also changes future prices and items).

# %%
cols = [c for c in data.columns if c.startswith(("u_", "i_", "ui_", "hist"))]
times = pd.Series(data["ts"].unique()).sample(20, random_state=seed).sort_values()
checked = 0
for cut in times:
    rows = data[data["ts"] == cut]
    full_feats = F.point_in_time_features(rows, events, history_len=config.history_len)
    past_feats = F.point_in_time_features(rows, events[events["ts"] < cut], history_len=config.history_len)
    pd.testing.assert_frame_equal(full_feats[cols], past_feats[cols])
    pd.testing.assert_frame_equal(full_feats[cols], data.loc[rows.index, cols])
    checked += len(rows)
print(f"{len(times)} times from {times.min():%Y-%m-%d} to {times.max():%Y-%m-%d}, {checked} examples: "
      "identical features with and without the future")

# %% [markdown]
# ## 3.4 Text: TF-IDF and MiniLM embeddings of the descriptions
#
# An item ID says nothing about an item never seen in training; its
# description does. We embed the ~3.7k distinct descriptions once with MiniLM
# (offline) and, for each example, compare the candidate's embedding with the
# mean embedding of the customer's history (`text_sim_hist`). TF-IDF words are
# given to the logistic regression.
#
# **What the text knows about the future.** Descriptions are catalogue data,
# not behaviour: an item has its description from its first day on sale. But
# the log spells some items several ways, and `item_catalog` picks the most
# frequent spelling over the *whole* log (test months included); the category
# is that spelling's last word. That is a mild leak, measured below: how many
# items would get another spelling if we counted only the train window.

# %%
catalog = F.item_catalog(clean)
vectors = encode_texts(catalog["description"].tolist(), model_name, progress=True)
text = (pd.Index(catalog["item_id"]), vectors)
frame = F.add_item_attributes(data, catalog, text)
train, valid, test = (frame[frame["split"] == s].reset_index(drop=True) for s in F.SPLITS)
print(f"{vectors.shape[0]} descriptions -> {vectors.shape[1]}-d vectors; train {len(train):,}, valid {len(valid):,}, test {len(test):,}")
from ecrec.data import canonical_descriptions  # noqa: E402

train_spelling = canonical_descriptions(clean[clean["InvoiceDate"] < valid_start])
whole = catalog.set_index("item_id")["description"].reindex(train_spelling.index)
spelling_changed = float((whole != train_spelling).mean())
display(Markdown(
    f"Of the {len(train_spelling):,} items sold in the train window, {int(round(spelling_changed * len(train_spelling)))} "
    f"({spelling_changed:.2%}) would get another "
    f"canonical description from the train window alone: the leak through the text is that small. "
    f"{len(catalog) - len(train_spelling):,} items are first sold after it; their description is the one they "
    f"were listed with, known from their first sale."
))

# %% [markdown]
# ## 3.5 Models
#
# Encoders are fitted on the train split only. Unseen users and items fall in
# an explicit unknown bucket (one-hot "infrequent" column for the logistic
# regression, index 0 of the embedding tables for the DNN; the DNN replaces 5%
# of training IDs by "unknown" so that this bucket is trained). Numerics get
# log1p, median imputation with a missing indicator and standardisation; the
# logistic regression also gets quantile buckets so that it can bend.
#
# Four models: a logistic regression on IDs only, one on everything, and the
# embedding + MLP DNN (chapter 02's model with embeddings) without and with
# the text features.
#
# **Early stopping on validation log loss.** The DNN has an embedding per
# customer and per item, and it memorises them fast: validation log loss
# usually bottoms out after an epoch or two and then climbs while validation
# AUC barely moves. We keep the epoch with the lowest validation log loss:
# it is the training objective measured on unseen data, it is a proper
# scoring rule (it rewards honest probabilities, which a CTR model is for:
# bids and rankings multiply them), and ranking quality comes with it. AUC
# alone would accept a model whose probabilities have drifted to
# over-confidence.

# %%
ALL = list(ctr.GROUPS)
NO_TEXT = [g for g in ALL if g != "text"]
results, probs = {}, {}


def fit_lr(groups):
    model = ctr.make_logistic(groups, frame.columns, max_iter=size["lr_max_iter"], seed=seed)
    model.fit(train, train["label"])
    return model.predict_proba(test)[:, 1]


for name, groups in {"lr_ids": ["ids"], "lr_all": ALL}.items():
    t0 = time.time()
    probs[name] = fit_lr(groups)
    results[name] = ctr.evaluate(test, probs[name])
    print(f"{name}: AUC {results[name]['auc']:.4f}, log loss {results[name]['log_loss']:.4f} ({time.time() - t0:.1f} s)")

# %% [markdown]
# **The other exclusion policy, measured.** With `neg_exclude_bought_in_split=True`
# no negative is an item the customer bought at any time in the same split
# window. How many of our negatives does that touch, and what does it do to
# the same logistic regression (all features)? "Own test" scores each model on
# its own dataset's test split; "default test" scores the strict model on the
# test split above, the same examples for both.

# %%
import dataclasses  # noqa: E402

strict_config = dataclasses.replace(config, neg_exclude_bought_in_split=True)
strict = F.load_or_build_ctr_dataset(clean, strict_config, cache_dir)
bought_in_split = data.loc[data["label"] == 1, ["user_id", "split", "item_id"]].drop_duplicates().assign(b=True)
negs = data[data["label"] == 0].merge(bought_in_split, how="left", on=["user_id", "split", "item_id"])
bought_share = negs["b"].fillna(False).astype(bool).groupby(negs["split"]).mean().loc[list(F.SPLITS)]
s_frame = F.add_item_attributes(strict, catalog, text)
s_train, s_test = (s_frame[s_frame["split"] == s].reset_index(drop=True) for s in ("train", "test"))
s_model = ctr.make_logistic(ALL, s_frame.columns, max_iter=size["lr_max_iter"], seed=seed).fit(s_train, s_train["label"])
strict_own = ctr.evaluate(s_test, s_model.predict_proba(s_test)[:, 1])
strict_default = ctr.evaluate(test, s_model.predict_proba(test)[:, 1])
policy = pd.DataFrame(
    [[results["lr_all"]["auc"], results["lr_all"]["log_loss"], results["lr_all"]["auc"], results["lr_all"]["log_loss"]],
     [strict_own["auc"], strict_own["log_loss"], strict_default["auc"], strict_default["log_loss"]]],
    index=["default (basket only)", "strict (bought in split)"],
    columns=["AUC own test", "log loss own test", "AUC default test", "log loss default test"],
)
s_bought = strict["ui_n_before"] > 0
p_strict = strict[s_bought].groupby("split")["label"].mean().loc[list(F.SPLITS)]
display(policy.round(4))
display(Markdown(
    f"Under the default policy {bought_share['train']:.1%} of the train negatives ({bought_share['test']:.1%} in test) "
    f"are items the same customer bought at another time in the same split window. Excluding them moves "
    f"P(label 1 | bought before) in train from {shortcut.loc['train', 'P(label 1 | bought before)']:.1%} to "
    f"{p_strict['train']:.1%} ({p_strict['test']:.1%} in test), and the logistic regression's test AUC from "
    f"{results['lr_all']['auc']:.3f} to {strict_own['auc']:.3f} on its own test split; on the default test split "
    f"the strict model scores AUC {strict_default['auc']:.3f} and log loss {strict_default['log_loss']:.3f} "
    f"(default model: {results['lr_all']['log_loss']:.3f}). Numbers on two different sets of negatives are not "
    f"comparable as such: only the last pair compares the two policies on the same examples."
))

# %%
dnn_config = ctr.DnnConfig(max_epochs=size["dnn_epochs"], history_len=config.history_len, seed=seed, monitor="log_loss")
dnns = {}
for name, groups, use_text in (("dnn_no_text", NO_TEXT, None), ("dnn_all", ALL, text)):
    cats, nums = ctr.group_columns(groups, frame.columns)
    t0 = time.time()
    dnns[name] = ctr.train_dnn(train, valid, categorical=cats, numeric=nums, text=use_text, config=dnn_config, progress=True)
    probs[name] = dnns[name].predict_proba(test)
    results[name] = ctr.evaluate(test, probs[name])
    print(f"{name}: AUC {results[name]['auc']:.4f}, best epoch {dnns[name].best_epoch} ({time.time() - t0:.1f} s)")

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
loss_curves({"train": dnns["dnn_all"].history["train_loss"], "valid": dnns["dnn_all"].history["valid_loss"]}, ax=axes[0])
loss_curves({k: v.history["valid_auc"] for k, v in dnns.items()}, ax=axes[1], ylabel="validation AUC")
fig.suptitle("DNN training: early stopping keeps the epoch with the lowest validation log loss")
fig.tight_layout()
save(fig, output_dir, "dnn_training")
hist = dnns["dnn_all"].history
display(Markdown(
    f"`dnn_all`: validation log loss per epoch {', '.join(f'{v:.4f}' for v in hist['valid_loss'])}; "
    f"validation AUC {', '.join(f'{v:.4f}' for v in hist['valid_auc'])}. "
    f"Kept epoch {dnns['dnn_all'].best_epoch} (`dnn_no_text`: epoch {dnns['dnn_no_text'].best_epoch}). "
    f"The training loss keeps falling ({hist['train_loss'][0]:.4f} to {hist['train_loss'][-1]:.4f}): "
    f"what the later epochs learn is specific to the train months."
))

# %% [markdown]
# ## 3.6 Results on the test window
#
# AUC ranks all test examples together; log loss also checks the
# probabilities. GAUC is the AUC within a group, averaged with the group's
# rows as weight: `gauc` groups by **user**, the standard definition (Zhu et
# al., 2017; Zhou et al., 2018), and `gauc_invoice` by **invoice** (one basket
# and its sampled negatives, the nearest thing to an impression list here).
# Groups with a single label have no AUC and are skipped. The cold columns are
# examples whose customer bought nothing, or whose item nobody bought, in the
# train window of the whole log.

# %%
table = pd.DataFrame(results).T[
    ["auc", "log_loss", "gauc", "gauc_invoice", "auc_warm", "auc_cold", "auc_cold_user", "auc_cold_item", "log_loss_cold"]
].astype(float).round(4)
table

# %%
best = table["auc"].idxmax()
lowest = table["log_loss"].idxmin()
r0 = results["lr_ids"]
display(Markdown(
    f"On {r0['n']:,} test examples ({r0['n_cold_user']:,} with a cold customer, {r0['n_cold_item']:,} with a cold item), "
    f"IDs alone reach AUC {table.loc['lr_ids', 'auc']:.3f}; every feature lifts the logistic regression to "
    f"{table.loc['lr_all', 'auc']:.3f}, and the best model by AUC is `{best}` ({table.loc[best, 'auc']:.3f}), by log loss "
    f"`{lowest}` ({table.loc[lowest, 'log_loss']:.4f} against {table.loc['lr_all', 'log_loss']:.4f} for `lr_all`). "
    f"The spread among the three feature models is {table.drop(index='lr_ids')['auc'].max() - table.drop(index='lr_ids')['auc'].min():.3f} AUC, "
    f"the lift over IDs only {table.loc['lr_all', 'auc'] - table.loc['lr_ids', 'auc']:.3f}: the features do most of the work. "
    f"Per-user GAUC ({table.loc[best, 'gauc']:.3f} for `{best}`; {r0['gauc_skipped_users']} of the test users skipped, "
    f"one label only) is {'lower' if table.loc[best, 'gauc'] < table.loc[best, 'auc'] else 'not lower'} than AUC: "
    f"within one customer there is no busy-vs-quiet customer contrast to lean on. Per-invoice GAUC ({table.loc[best, 'gauc_invoice']:.3f}; "
    f"{r0['gauc_skipped_invoices']} invoices skipped) compares a basket with its own negatives only. "
    f"Cold customers are the hard part: AUC {table.loc[best, 'auc_cold_user']:.3f} against "
    f"{table.loc[best, 'auc_warm']:.3f} on warm examples."
))

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
reliability(test["label"].to_numpy(), probs, ax=axes[0])
segments = ["auc_warm", "auc_cold_user", "auc_cold_item"]
table[segments].plot.bar(ax=axes[1], rot=0)
axes[1].set_ylim(min(0.5, float(table[segments].min().min()) - 0.05), 1.0)
axes[1].set_title("Test AUC: warm vs cold start")
fig.tight_layout()
save(fig, output_dir, "calibration_and_cold_start")

# %%
y_test = test["label"].to_numpy()
top_bin = {}
for name, p in probs.items():
    top = p >= np.quantile(p, 0.9)
    top_bin[name] = (float(p[top].mean()), float(y_test[top].mean()))
display(Markdown(
    "In the 10% of test examples each model is most sure about, predicted vs observed purchase rate: "
    + "; ".join(f"`{k}` {a:.2f} vs {b:.2f}" for k, (a, b) in top_bin.items())
    + f". The test positive rate is {y_test.mean():.3f}, as in train (the sampler fixes it), so no model has to shift "
    f"its base rate; what is left are bins where a model is too sure or not sure enough. On the right: "
    f"cold customers ({int(test['cold_user'].sum()):,} examples) score below warm examples for "
    f"{int((table['auc_cold_user'] < table['auc_warm']).sum())} of {len(table)} models, cold items "
    f"({int(test['cold_item'].sum()):,} examples: most items of the last month were sold before) for "
    f"{int((table['auc_cold_item'] < table['auc_warm']).sum())} of {len(table)}."
))

# %% [markdown]
# ## 3.7 Ablation: which feature groups matter?
#
# Logistic regression on all groups but one (cheap enough to repeat). A big
# drop means the group carries information the others do not.

# %%
ablation = {"all": results["lr_all"]}
for group in ALL:
    ablation[f"without {group}"] = ctr.evaluate(test, fit_lr([g for g in ALL if g != group]))
ablation = pd.DataFrame(ablation).T[["auc", "log_loss", "auc_cold", "auc_warm"]].astype(float)
ablation["delta_auc"] = ablation["auc"] - ablation.loc["all", "auc"]
ablation["delta_log_loss"] = ablation["log_loss"] - ablation.loc["all", "log_loss"]
display(ablation.round(4))
drop = ablation.drop(index="all")
worst = drop["delta_auc"].idxmin()
gains = {g.removeprefix("without "): d for g, d in drop["delta_auc"].items() if d > 0.002}
month_seen = float(test["month"].isin(train["month"]).mean())
useless = drop.index[drop["delta_auc"].abs() < 0.002].tolist()
display(Markdown(
    f"Removing `{worst.removeprefix('without ')}` costs the most: AUC {drop.loc[worst, 'delta_auc']:+.4f}, "
    f"log loss {drop.loc[worst, 'delta_log_loss']:+.4f}. "
    + (f"Groups whose removal moves AUC by less than 0.002: {', '.join(u.removeprefix('without ') for u in useless)}; "
       "the others already carry their information (IDs vs counts, text vs category) or the linear model cannot use it. "
       if useless else "Every group moves AUC by at least 0.002. ")
    + (f"Removing {', '.join(f'`{g}` ({d:+.4f})' for g, d in gains.items())} *raises* test AUC: such a group fits the "
       f"train months but shifts in the test window (only {month_seen:.0%} of the test examples fall in a calendar month "
       "seen in train, and customers' counts grow over the year). " if gains else "")
    + f"Removing user_item changes log loss by {drop.loc['without user_item', 'delta_log_loss']:+.4f} "
    + ("(worse without it: repeat purchases help the probabilities, as they should once the sampler no longer "
       "makes them a shortcut)." if drop.loc["without user_item", "delta_log_loss"] > 0
       else "(better without it: look for a train/test shift in repeat purchases).")
))

# %%
keep = ["auc", "log_loss", "gauc", "gauc_invoice", "gauc_skipped_users", "auc_cold", "log_loss_cold", "auc_cold_user", "auc_cold_item", "auc_warm"]
write_metrics(
    output_dir,
    {
        "negative_sampling": negatives,
        "negative_exclusion": "same basket (a user's invoices at one moment)",
        "negative_policy": {
            "bought_in_split_share": bought_share.round(6).to_dict(),
            "p_pos_given_bought_before_strict": p_strict.round(6).to_dict(),
            "lr_all_strict_own_test": {k: strict_own[k] for k in ("auc", "log_loss")},
            "lr_all_strict_on_default_test": {k: strict_default[k] for k in ("auc", "log_loss")},
        },
        "negative_window_days": config.neg_window_days,
        "neg_ratio": config.neg_ratio,
        "dnn_monitor": dnn_config.monitor,
        "dnn_best_epoch": {name: m.best_epoch for name, m in dnns.items()},
        "train_cold_share": float((train["cold_user"] | train["cold_item"]).mean()),
        "test_cold_item_share": float(test["cold_item"].mean()),
        "p_pos_given_bought_before": shortcut["P(label 1 | bought before)"].round(6).to_dict(),
        "description_spelling_changed": spelling_changed,
        "dataset_key": F.dataset_key(clean, config),
        "n_examples": {s: int(v) for s, v in summary["examples"].items()},
        "test_positive_rate": float(test["label"].mean()),
        "test_cold_share": float((test["cold_user"] | test["cold_item"]).mean()),
        "models": {name: {k: r[k] for k in keep} for name, r in results.items()},
        "ablation_auc": ablation["auc"].round(6).to_dict(),
    },
    profile=run_profile,
    seed=seed,
    started=STARTED,
)
print(f"chapter ran in {time.time() - STARTED:.0f} s")

# %% [markdown]
# ## Summary
#
# * A purchase log becomes a CTR dataset only through a negative sampler, and
#   the sampler can hand the model the answer: exclude only the basket, and
#   draw from what was on sale at that moment. Check for shortcuts by
#   comparing how a feature relates to the label in train and in test.
# * Point in time is testable: delete the future, recompute, and the features
#   must not move.
# * The results table and the ablation above say how much the counts and
#   recency of the customer, the item and the pair add to the IDs, and how
#   cold customers and cold items fare against warm examples.
# * Stop on validation log loss when probabilities matter; report GAUC with
#   its grouping and the groups it skipped.
# * AUC on sampled negatives depends on the sampler: compare models on the
#   same negatives only.
#
# ## Exercises
#
# 1. *(runnable)* Switch `negatives` to `"popularity"` and score the test
#    examples with the item's 30-day sales share alone (`i_share_30d`), then
#    with a logistic regression on every group but text. How much of the AUC
#    under uniform negatives was popularity? A worked solution is in
#    `notebooks/solutions/03_exercises.py`.
# 2. *(runnable)* Build a feature that looks into the future on purpose: each
#    item's number of buyers over the *whole* log, test months included. Compare
#    its test AUC with the point-in-time `i_pop_30d`, and run this chapter's
#    "delete the future" check on it. (solution in the same file)
# 3. Give the DNN an attention over the history (DIN) instead of a mean pool.
#    Does it help the warm examples, where there is a history to attend to?
# 4. Add an FM or DeepFM cross term and see whether it beats the MLP's implicit
#    crosses on the warm examples.
# 5. The cold-item AUC is the number chapter 04 attacks: how far does a
#    fine-tuned BERT score (`train_dnn(..., extra_numeric=["bert_score"])`) move it?
