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

# %% tags=["remove-input"]
# The chapter's lesson in one sentence, computed from this run in the Summary and shown here as well.
from IPython.display import Markdown, display

LESSON = display(Markdown("*This chapter's lesson, in one sentence, appears here once the chapter has run.*"),
                 display_id=True)

# %% tags=["parameters", "remove-input"]
profile = "auto"  # "auto" | "smoke" | "cpu" | "full"
seed = 42
output_dir = "outputs/03_features"
sizes = None  # optional dict overriding the profile's sizes
cache_dir = None  # where the dataset parquet is cached; None: <output_dir>/../cache
negatives = "uniform"  # negative sampling: "uniform" | "popularity"
model_name = "minilm"  # sentence encoder for the description embeddings

# %% tags=["remove-input"]
# In Colab: fetch the book's code and data, then install it (skipped elsewhere).
import os
import subprocess
import sys

if "google.colab" in sys.modules and not os.path.isdir("ecrec-book"):
    subprocess.run(["git", "clone", "--depth", "1", "https://github.com/ecrec-book/ecrec", "ecrec-book"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements.txt"], cwd="ecrec-book", check=True)
    sys.path.insert(0, os.path.abspath("ecrec-book"))

# %% tags=["remove-input"]
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
from ecrec.stats import bootstrap_auc, bootstrap_log_loss, user_resample_weights, weighted_auc_many
from ecrec.text import encode_texts
from ecrec.verdict import compare, decide

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

# %% tags=["remove-input"]
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

# %% tags=["remove-input"]
per_day = events.groupby("split")["ts"].agg(lambda t: len(t) / t.dt.normalize().nunique())
Markdown(
    f"Per trading day the test window has {per_day['test']:,.0f} purchase events, the validation window "
    f"{per_day['valid']:,.0f} and the train window {per_day['train']:,.0f}: a model is always tested on busier days "
    "than it learnt from, so raw counts must be turned into shares (section 3.3)."
)

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

# %% tags=["remove-input"]
Markdown(
    f"{int(summary['examples'].sum()):,} examples for {config.max_users or 'all'} customers; one in "
    f"{1 + config.neg_ratio} is a positive in every split ({summary.loc['test', 'positive_rate']:.1%} in test), because "
    f"the sampler draws {config.neg_ratio} negatives per purchase. {summary.loc['test', 'cold_user']:.1%} of the test "
    f"examples have a cold customer and {summary.loc['test', 'cold_item']:.1%} a cold item; none in train, by "
    "definition."
)

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
# One row per example: who, what, when and the label, the split and the cold
# flags, then the features, every one of them computed from the past only.

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

# %% tags=["remove-input"]
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
for ax, col in zip(axes, ["i_share_30d", "ui_n_before", "u_days_since_last"], strict=True):
    for label, part in data[data["split"] == "train"].groupby("label"):
        ax.hist(np.log1p(part[col].dropna()), bins=30, alpha=0.6, density=True, label=f"label {label}")
    ax.set_title(f"log1p({col})")
axes[0].legend()
fig.suptitle("Train split: positives and negatives differ in item popularity and repeat purchases")
fig.tight_layout()
save(fig, output_dir, "feature_histograms")

# %% tags=["remove-input"]
tr = data[data["split"] == "train"]
by_label = tr.groupby("label").agg(share=("i_share_30d", "median"), repeat=("ui_n_before", lambda v: (v > 0).mean()))
Markdown(
    f"In train the median positive's item holds {by_label.loc[1, 'share']:.2f} of every 1,000 purchases of the last "
    f"30 days, the median negative's {by_label.loc[0, 'share']:.2f}; {by_label.loc[1, 'repeat']:.0%} of the positives "
    f"and {by_label.loc[0, 'repeat']:.0%} of the negatives are items the customer had bought before. Popularity and "
    "repeat purchases are where the signal is."
)

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
strict_on_default = s_model.predict_proba(test)[:, 1]
strict_default = ctr.evaluate(test, strict_on_default)
policy_ll = bootstrap_log_loss(test["label"].to_numpy(), {"strict": strict_on_default, "default": probs["lr_all"]},
                               test["user_id"].to_numpy(), pairs=[("strict", "default")], seed=seed)
policy_verdict = decide(policy_ll["strict - default"], better="lower")
policy = pd.DataFrame(
    [[results["lr_all"]["auc"], results["lr_all"]["log_loss"], results["lr_all"]["auc"], results["lr_all"]["log_loss"]],
     [strict_own["auc"], strict_own["log_loss"], strict_default["auc"], strict_default["log_loss"]]],
    index=["default (basket only)", "strict (bought in split)"],
    columns=["AUC own test", "log loss own test", "AUC default test", "log loss default test"],
)
s_bought = strict["ui_n_before"] > 0
p_strict = strict[s_bought].groupby("split")["label"].mean().loc[list(F.SPLITS)]
display(policy.round(4))

# %% tags=["remove-input"]
display(Markdown(
    f"Under the default policy {bought_share['train']:.1%} of the train negatives ({bought_share['test']:.1%} in test) "
    f"are items the same customer bought at another time in the same split window. Excluding them moves "
    f"P(label 1 | bought before) in train from {shortcut.loc['train', 'P(label 1 | bought before)']:.1%} to "
    f"{p_strict['train']:.1%} ({p_strict['test']:.1%} in test), and the logistic regression's test AUC from "
    f"{results['lr_all']['auc']:.3f} to {strict_own['auc']:.3f} on its own test split; on the default test split "
    f"the strict model scores AUC {strict_default['auc']:.3f} and log loss {strict_default['log_loss']:.3f} "
    f"(default model: {results['lr_all']['log_loss']:.3f}; strict minus default {policy_verdict.text}). Numbers on "
    "two different sets of negatives are not comparable as such: only the last pair compares the two policies on the "
    "same examples."
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

# %% tags=["remove-input"]
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
loss_curves({"train": dnns["dnn_all"].history["train_loss"], "valid": dnns["dnn_all"].history["valid_loss"]}, ax=axes[0])
loss_curves({k: v.history["valid_auc"] for k, v in dnns.items()}, ax=axes[1], ylabel="validation AUC")
fig.suptitle("DNN training: early stopping keeps the epoch with the lowest validation log loss")
fig.tight_layout()
save(fig, output_dir, "dnn_training")

# %% tags=["remove-input"]
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

# %% [markdown]
# Which of these differences are more than the luck of the test customers? The
# same bootstrap as in chapter 02: resample the test **customers** 1,000 times
# (all of a customer's examples move together), recompute every model's AUC and
# log loss on each resample, and read the middle 95% of the paired differences.

# %%
y_test = test["label"].to_numpy()
test_users = test["user_id"].to_numpy()
PAIRS = [("lr_all", "lr_ids"), ("dnn_no_text", "lr_all"), ("dnn_all", "lr_all"), ("dnn_all", "dnn_no_text")]
auc_ci = bootstrap_auc(y_test, probs, test_users, pairs=PAIRS, seed=seed)
ll_ci = bootstrap_log_loss(y_test, probs, test_users, pairs=PAIRS, seed=seed)
pair_table = pd.DataFrame({
    f"{a} - {b}": {"AUC": decide(auc_ci[f"{a} - {b}"]).text,
                   "log loss": decide(ll_ci[f"{a} - {b}"], better="lower").text} for a, b in PAIRS}).T
pair_table


# %%
def slice_gap(y, p, users, a, b, n_boot=1000, seed=0):
    """AUC on rows ``a`` minus AUC on rows ``b`` (bool masks), with a 95% interval over resampled users."""
    counts, index = user_resample_weights(users, n_boot, seed)
    w = counts[:, index]
    boots = weighted_auc_many(y[a], p[a], w[:, a]) - weighted_auc_many(y[b], p[b], w[:, b])
    point = weighted_auc_many(y[a], p[a], np.ones(a.sum()))[0] - weighted_auc_many(y[b], p[b], np.ones(b.sum()))[0]
    low, high = np.nanquantile(boots, [0.025, 0.975])
    return {"diff": float(point), "low": float(low), "high": float(high), "level": 0.95}


cold_user_rows = test["cold_user"].to_numpy()
warm_rows = ~(cold_user_rows | test["cold_item"].to_numpy())
cold_gap_ci = slice_gap(y_test, probs["lr_all"], test_users, cold_user_rows, warm_rows, seed=seed)
cold_gap = decide(cold_gap_ci)
print(f"lr_all, AUC on cold-customer examples minus AUC on warm ones: {cold_gap.text}")

# %% tags=["remove-input"]
r0 = results["lr_ids"]
display(Markdown(
    f"On {r0['n']:,} test examples ({r0['n_cold_user']:,} with a cold customer, {r0['n_cold_item']:,} with a cold item), "
    f"IDs alone reach AUC {table.loc['lr_ids', 'auc']:.3f}; every feature lifts the logistic regression to "
    f"{table.loc['lr_all', 'auc']:.3f} ({decide(auc_ci['lr_all - lr_ids']).text}): the features do most of the work. "
    f"On the same features, {compare('the DNN', 'the logistic regression', auc_ci['dnn_no_text - lr_all'])} in AUC "
    f"and {compare('it', 'the logistic regression', ll_ci['dnn_no_text - lr_all'], better='lower')} in log loss; "
    f"with the description embeddings added, {compare('the DNN', 'itself without text', auc_ci['dnn_all - dnn_no_text'])}"
    f" in AUC. Per-user GAUC ({table.loc['lr_all', 'gauc']:.3f} for `lr_all`; {r0['gauc_skipped_users']} of the test "
    f"users skipped, one label only) is {'lower' if table.loc['lr_all', 'gauc'] < table.loc['lr_all', 'auc'] else 'not lower'} "
    f"than AUC: within one customer there is no busy-vs-quiet customer contrast to lean on. Per-invoice GAUC "
    f"({table.loc['lr_all', 'gauc_invoice']:.3f}; {r0['gauc_skipped_invoices']} invoices skipped) compares a basket "
    f"with its own negatives only. Cold customers: `lr_all` scores AUC {table.loc['lr_all', 'auc_cold_user']:.3f} on "
    f"their examples against {table.loc['lr_all', 'auc_warm']:.3f} on warm ones, a difference of {cold_gap.text}."
))

# %% tags=["remove-input"]
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
reliability(test["label"].to_numpy(), probs, ax=axes[0])
segments = ["auc_warm", "auc_cold_user", "auc_cold_item"]
table[segments].plot.bar(ax=axes[1], rot=0)
axes[1].set_ylim(min(0.5, float(table[segments].min().min()) - 0.05), 1.0)
axes[1].set_title("Test AUC: warm vs cold start")
fig.tight_layout()
save(fig, output_dir, "calibration_and_cold_start")

# %% tags=["remove-input"]
top_bin = {}
for name, p in probs.items():
    top = p >= np.quantile(p, 0.9)
    top_bin[name] = (float(p[top].mean()), float(y_test[top].mean()))
display(Markdown(
    "In the 10% of test examples each model is most sure about, predicted vs observed purchase rate: "
    + "; ".join(f"`{k}` {a:.2f} vs {b:.2f}" for k, (a, b) in top_bin.items())
    + f". The test positive rate is {y_test.mean():.3f}, as in train (the sampler fixes it), so no model has to shift "
    f"its base rate; what is left are bins where a model is too sure or not sure enough. On the right, point "
    f"estimates: cold customers ({int(test['cold_user'].sum()):,} examples) score below warm examples for "
    f"{int((table['auc_cold_user'] < table['auc_warm']).sum())} of {len(table)} models (for `lr_all` by "
    f"{cold_gap.text}), cold items ({int(test['cold_item'].sum()):,} examples: most items of the last month were sold "
    f"before) for {int((table['auc_cold_item'] < table['auc_warm']).sum())} of {len(table)}."
))

# %% [markdown]
# ## 3.7 Ablation: which feature groups matter?
#
# Logistic regression on all groups but one (cheap enough to repeat). A big
# drop means the group carries information the others do not.

# %%
ablation, ablation_probs = {"all": results["lr_all"]}, {"all": probs["lr_all"]}
for group in ALL:
    ablation_probs[f"without {group}"] = fit_lr([g for g in ALL if g != group])
    ablation[f"without {group}"] = ctr.evaluate(test, ablation_probs[f"without {group}"])
ablation = pd.DataFrame(ablation).T[["auc", "log_loss", "auc_cold", "auc_warm"]].astype(float)
ablation["delta_auc"] = ablation["auc"] - ablation.loc["all", "auc"]
ablation["delta_log_loss"] = ablation["log_loss"] - ablation.loc["all", "log_loss"]
drop_pairs = [(k, "all") for k in ablation_probs if k != "all"]
ablation_auc_ci = bootstrap_auc(y_test, ablation_probs, test_users, pairs=drop_pairs, seed=seed)
ablation_ll_ci = bootstrap_log_loss(y_test, ablation_probs, test_users, pairs=drop_pairs, seed=seed)
ablation_verdict = {k: decide(ablation_auc_ci[f"{k} - all"]) for k, _ in drop_pairs}
ablation_ll_verdict = {k: decide(ablation_ll_ci[f"{k} - all"], better="lower") for k, _ in drop_pairs}
ablation["delta_auc [95% interval], verdict"] = pd.Series({k: v.text for k, v in ablation_verdict.items()})
display(ablation.round(4))

# %% tags=["remove-input"]
drop = ablation.drop(index="all")
worst = drop["delta_auc"].idxmin()


def name(k):
    return f"`{k.removeprefix('without ')}`"


costly = [k for k, v in ablation_verdict.items() if v.is_loss]
noise = [k for k, v in ablation_verdict.items() if v.word in ("within noise", "identical")]
gains = [k for k, v in ablation_verdict.items() if v.is_gain]
month_seen = float(test["month"].isin(train["month"]).mean())
display(Markdown(
    f"Removing {name(worst)} costs the most: AUC {ablation_verdict[worst].text}; log loss "
    f"{ablation_ll_verdict[worst].text}. "
    + (f"Removing {', '.join(name(k) for k in costly)} costs AUC beyond noise. " if costly else "")
    + (f"Removing {', '.join(name(k) for k in noise)} changes AUC within noise: those groups' information is already "
       "carried by the others (IDs vs counts, text vs category), or the linear model cannot use it. " if noise else "")
    + (f"Removing {', '.join(f'{name(k)} ({ablation_verdict[k].text})' for k in gains)} *raises* test AUC: such a "
       f"group fits the train months but shifts in the test window (only {month_seen:.0%} of the test examples fall in "
       "a calendar month seen in train, and customers' counts grow over the year). " if gains else "")
    + f"Removing `user_item` changes log loss by {ablation_ll_verdict['without user_item'].text}"
    + (": repeat purchases help the probabilities, as they should once the sampler no longer makes them a shortcut."
       if ablation_ll_verdict["without user_item"].is_loss else
       ": look for a train/test shift in repeat purchases." if ablation_ll_verdict["without user_item"].is_gain else ".")
))

# %% tags=["remove-input"]
dnn_vs_lr = decide(auc_ci["dnn_all - lr_all"])
lesson = (
    "With leak-free point-in-time features, the counts and recency of the customer, the item and the pair do what "
    f"IDs cannot: the logistic regression's test AUC rises from {table.loc['lr_ids', 'auc']:.3f} (IDs only) to "
    f"{table.loc['lr_all', 'auc']:.3f} ({decide(auc_ci['lr_all - lr_ids']).text}), the DNN with text "
    + ("adds nothing measurable on top" if dnn_vs_lr.word in ("within noise", "identical")
       else "adds a little on top" if dnn_vs_lr.is_gain else "does worse")
    + f" ({dnn_vs_lr.text}), and "
    + ("cold customers stay the hard part" if cold_gap.is_loss else "cold customers")
    + f" (their AUC minus the warm examples': {cold_gap.text})."
)
LESSON.update(Markdown(f"**In one sentence (from this run):** {lesson}"))

# %% tags=["remove-input"]
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
        "auc_diff": {f"{a} - {b}": auc_ci[f"{a} - {b}"] for a, b in PAIRS},
        "log_loss_diff": {f"{a} - {b}": ll_ci[f"{a} - {b}"] for a, b in PAIRS},
        "ablation_auc_diff": {k: ablation_auc_ci[f"{k} - all"] for k, _ in drop_pairs},
        "ablation_verdicts": {k: v.word for k, v in ablation_verdict.items()},
        "lr_all_cold_user_minus_warm_auc": cold_gap_ci,
        "policy_strict_minus_default_log_loss": policy_ll["strict - default"],
        "lesson": lesson,
    },
    profile=run_profile,
    seed=seed,
    started=STARTED,
)
print(f"chapter ran in {time.time() - STARTED:.0f} s")

# %% [markdown]
# ## Summary

# %% tags=["remove-input"]
Markdown(f"**The lesson.** {lesson}")

# %% [markdown]
# * A purchase log becomes a CTR dataset only through a negative sampler, and
#   the sampler can hand the model the answer: exclude only the basket, and
#   draw from what was on sale at that moment. Check for shortcuts by
#   comparing how a feature relates to the label in train and in test.
# * Point in time is testable: delete the future, recompute, and the features
#   must not move.
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
