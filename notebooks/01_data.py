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
# # 1. The data
#
# Every model in this book learns from a **behaviour log**: a record of what
# customers did. A CTR model predicts whether a user will click (or buy) an
# item. A recall stage picks a few hundred candidates out of thousands of items.
# Both can only be as good as that log. Before we train anything, we look at
# the data carefully and ask:
#
# * What is one row, and which rows are not purchases at all?
# * How many users, items and orders are there, and how do they change over time?
# * How skewed is item popularity (the **long tail**)?
# * Do customers come back and buy the same things again?
# * How much **text** does each product have? That text is what BERT will read.
# * What do these facts force on later chapters: negative sampling, time-based
#   splits and **cold start**?
#
# We use two real, public datasets (sources, licences and checksums in
# `data/README.md`):
#
# * **Online Retail** (UCI; Chen, Sain and Guo, 2012): the invoice lines of
#   a UK online gift shop over about a year (we count them in section 1.1).
# * **Women's E-Commerce Clothing Reviews** (Brooks, 2018): product reviews with
#   a star rating and a "would recommend" flag (counted in section 1.9).
#
# **You will learn to**
#
# * read a transaction log row by row and turn it into purchases with named
#   cleaning rules, counting what each rule removes;
# * measure users, items and orders over time, the long tail of item
#   popularity, repeat purchases and basket sizes;
# * look at product text the way a language model sees it: words and
#   WordPiece tokens;
# * measure cold start at a time cutoff, and say what these facts force on
#   the later chapters (sampled negatives, time splits, text);
# * relate the two labels of a review dataset, and choose a `max_length` from
#   token lengths.
#
# **You need** Python and pandas (`groupby`, `value_counts`); no machine
# learning yet. The data ship with the repository under `data/` and are
# checked against their sha256 when loaded, offline.

# %% tags=["remove-input"]
# The chapter's lesson in one sentence, computed from this run in the Summary and shown here as well.
from IPython.display import Markdown, display

LESSON = display(Markdown("*This chapter's lesson, in one sentence, appears here once the chapter has run.*"),
                 display_id=True)

# %% tags=["parameters", "remove-input"]
profile = "auto"  # "auto" | "smoke" | "cpu" | "full"
seed = 42
output_dir = "outputs/01_data"
sizes = None  # optional dict overriding the profile's sizes
cutoff = None  # start of the test window for cold start; None: chapter 03's split (last 30 days)

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
import re
import time
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown

from ecrec.cold_start import cold_test_mask, hold_out_items
from ecrec.data import (
    clean_online_retail,
    is_cancellation,
    is_non_product,
    load_online_retail,
    load_reviews,
)
from ecrec.features import purchase_events, split_dates
from ecrec.io import write_metrics
from ecrec.plots import save
from ecrec.profiles import pick_sizes, seed_everything
from ecrec.text import load_tokenizer

STARTED = time.time()
SIZES = {
    # _minutes: wall time measured on 2 CPU cores, smoke 10 s, full 14 s (no model runs: a GPU
    # does not change it)
    "smoke": {"top_words": 15, "reviews_tokenized": 2000, "_minutes": 0.2},
    "full": {"top_words": 30, "reviews_tokenized": 23486, "_minutes": 0.3},
}
run_profile, size = pick_sizes(profile, SIZES, sizes)
seed_everything(seed)
print(f"sizes={size}")


def show(fig, name):
    """Save the figure as output_dir/name.png, then display it."""
    save(fig, output_dir, name)
    plt.show()


# %% [markdown]
# ## 1.1 One row = one invoice line
#
# Online Retail is a **transaction log**. Each row says that a customer
# (`CustomerID`) bought `Quantity` units of a product (`StockCode`,
# `Description`) at `UnitPrice` pounds, on invoice `InvoiceNo`, at
# `InvoiceDate`. One invoice (one order, or **basket**) has many rows.
# `load_online_retail` checks the file's sha256 and its column types before it
# returns anything.

# %%
raw = load_online_retail()
print(f"{len(raw):,} rows x {raw.shape[1]} columns, "
      f"{raw['InvoiceDate'].min():%Y-%m-%d} to {raw['InvoiceDate'].max():%Y-%m-%d}")
raw.head()

# %%
raw.dtypes.to_frame("dtype")

# %% [markdown]
# Not every row is a purchase. Here is one example of each kind of row that is
# not a purchase. A cancellation has an invoice number starting with `C` and a
# negative quantity. Some rows have no customer. Some stock codes are postage or
# fees, not products. Some rows appear twice, and some items cost nothing.

# %%
known = raw["CustomerID"].notna()
examples = pd.concat([
    raw[is_cancellation(raw) & ~is_non_product(raw)].head(1).assign(why="cancellation"),
    raw[~known].head(1).assign(why="no customer"),
    raw[is_non_product(raw)].head(1).assign(why="not a product"),
    raw[raw.duplicated(keep="first")].head(1).assign(why="exact duplicate"),
    raw[(raw["UnitPrice"] <= 0) & known].head(1).assign(why="price 0"),
])
examples.set_index("why")

# %% [markdown]
# Each of these rows would teach a model something false about what customers
# buy; the next section removes them, one named rule at a time.

# %% [markdown]
# ## 1.2 Cleaning: from a log to purchases
#
# We want **purchases of real products by known customers**.
# `clean_online_retail` applies five rules in order, and a sixth step that
# removes no rows. Each rule is a decision you could make differently:
#
# 1. **cancellations**: invoices starting with `C`, or a negative quantity
#    (returns and stock corrections). A return is a signal too, but not a purchase.
# 2. **missing_customer**: a purchase we cannot tie to a user is useless for
#    personalisation.
# 3. **non_product**: postage (`POST`, `DOT`, `C2`), manual entries (`M`),
#    discounts (`D`), samples, bank and Amazon fees, gift vouchers...
# 4. **exact_duplicates**: rows identical in every column, most likely logged twice.
# 5. **non_positive_price**: free items and corrections.
# 6. **canonical description**: a `StockCode` can have several spellings
#    (stray or doubled spaces, edits). Whitespace is normalised first (trimmed,
#    inner runs collapsed to one space), then each code keeps its most frequent
#    spelling, with ties going to the alphabetically first one.

# %%
clean, report = clean_online_retail(raw)
# The cutoff between past and future: by default the test window of chapter 03.
CUTOFF = pd.Timestamp(cutoff) if cutoff else split_dates(clean["InvoiceDate"])[1]
table = report.to_frame()
table["share_of_raw_%"] = (100 * table["rows_removed"] / report.rows_in).round(2)
print(f"{report.rows_in:,} rows in -> {report.rows_out:,} rows out "
      f"({100 * report.rows_out / report.rows_in:.1f}% kept); "
      f"{report.descriptions_unified:,} stock codes got a unified description "
      f"({report.whitespace_normalised:,} distinct raw spellings had stray or doubled whitespace)")
table

# %% tags=["remove-input"]
fig, ax = plt.subplots(figsize=(7, 3))
ax.barh(table["rule"][::-1], table["rows_removed"][::-1], color="tab:red")
for y, n in enumerate(table["rows_removed"][::-1]):
    ax.text(n, y, f" {n:,}", va="center", fontsize=9)
ax.set_xscale("log")
ax.set_xlabel("rows removed (log scale)")
ax.set_title(f"Cleaning Online Retail: {report.rows_in:,} -> {report.rows_out:,} rows")
show(fig, "cleaning_report")

# %% tags=["remove-input"]
biggest_rule = max(report.removed, key=report.removed.get)
missing_share = report.removed["missing_customer"] / report.rows_in
others_share = (sum(report.removed.values()) - report.removed["missing_customer"]) / report.rows_in
Markdown(
    f"The biggest loss is `{biggest_rule}`: {100 * missing_share:.1f}% of the raw log has no "
    f"`CustomerID`. The other rules together remove {100 * others_share:.1f}% of the rows, but each kind "
    "would teach a model something false. For example, \"POSTAGE\" would look like the most popular "
    "item among foreign customers."
)

# %% [markdown]
# ## 1.3 Users, items and orders over time
#
# The counts we will keep meeting: **users** (customers), **items** (stock
# codes) and **invoices** (orders).

# %%
n_customers = clean["CustomerID"].nunique()
n_items = clean["StockCode"].nunique()
n_invoices = clean["InvoiceNo"].nunique()
pairs = clean.groupby(["CustomerID", "StockCode"])["InvoiceNo"].nunique()
density = len(pairs) / (n_customers * n_items)
print(f"{n_customers:,} customers, {n_items:,} items, {n_invoices:,} invoices, "
      f"{len(pairs):,} distinct (customer, item) pairs")
print(f"the customer x item matrix is {100 * density:.2f}% filled ({100 * (1 - density):.2f}% empty)")

# %%
monthly = (
    clean.assign(month=clean["InvoiceDate"].dt.to_period("M").dt.to_timestamp())
    .groupby("month")
    .agg(customers=("CustomerID", "nunique"), items=("StockCode", "nunique"), invoices=("InvoiceNo", "nunique"))
)
monthly

# %% tags=["remove-input"]
fig, ax = plt.subplots(figsize=(8, 3.5))
for col, marker in zip(monthly.columns, "os^", strict=True):
    ax.plot(monthly.index, monthly[col], marker=marker, label=f"active {col}")
ax.axvline(CUTOFF, color="grey", ls="--", lw=1)
ax.text(CUTOFF, ax.get_ylim()[0], "cutoff ", color="grey", ha="right", va="bottom")
ax.set_ylabel("distinct per month")
last_day = clean["InvoiceDate"].max()
ax.set_title(f"Monthly active customers, items and invoices ({last_day:%b %Y} has only {last_day.day} days)")
ax.legend(loc="upper left")
show(fig, "monthly_activity")

# %% tags=["remove-input"]
full_months = monthly.iloc[:-1]  # the last month is cut short by the end of the log
peak = full_months["invoices"].idxmax()
Markdown(
    f"Activity climbs towards the Christmas season: invoices peak in {peak:%B %Y} at "
    f"{full_months['invoices'].max():,}, {full_months['invoices'].max() / full_months['invoices'].median():.1f} "
    "times the median month. The data is not **stationary**: a model trained on spring data and tested in "
    "November sees a different world. That is one reason we always split by time. The last point of each "
    f"line is low only because the log stops on {last_day.day} {last_day:%B %Y}."
)

# %% [markdown]
# ## 1.4 The long tail of item popularity
#
# Rank the items by how many distinct customers bought them, and plot
# popularity against rank on log-log axes. A few **head** items are bought by
# hundreds of customers. Most items are in the **long tail**. Models that only
# learn from IDs know little about tail items. Text features (the product
# description) can help there: that is the promise of BERT in this book.

# %%
popularity = clean.groupby("StockCode")["CustomerID"].nunique().sort_values(ascending=False, kind="stable")
# purchase lines per item, in the same order (the same ranking by distinct customers)
lines_per_item = clean["StockCode"].value_counts().reindex(popularity.index)
top20 = int(np.ceil(0.2 * n_items))
top20_share = lines_per_item.iloc[:top20].sum() / lines_per_item.sum()
rare_share = (popularity < 5).mean()
print(f"the top 20% of items by customers ({top20:,}) account for {100 * top20_share:.1f}% of purchase lines")
print(f"{100 * rare_share:.1f}% of items were bought by fewer than 5 customers; "
      f"median item: {popularity.median():.0f} customers")

# %% tags=["remove-input"]
rank = np.arange(1, len(popularity) + 1)
fig, ax = plt.subplots(figsize=(6, 4))
ax.loglog(rank, popularity.to_numpy(), lw=2)
ax.axvline(top20, color="grey", ls="--", lw=1)
ax.text(1.2, 2, f"left of the line: the top 20% of items,\n{100 * top20_share:.0f}% of all purchase lines", fontsize=9)
ax.text(1.2, popularity.iloc[0] / 1.6, f"rank 1: {popularity.iloc[0]:,} customers", va="top", fontsize=9)
ax.set_xlabel("item rank (1 = most popular)")
ax.set_ylabel("distinct customers who bought it")
ax.set_title("Item popularity: a short head and a long tail")
show(fig, "item_long_tail")

# %% tags=["remove-input"]
Markdown(
    f"The head is short and the tail is long: {top20:,} items (20%) carry {100 * top20_share:.0f}% of the purchase "
    f"lines, while {100 * rare_share:.0f}% of the items have fewer than 5 customers, too few for an ID embedding to "
    "learn much from. A description is there for every item, popular or not."
)

# %% [markdown]
# ## 1.5 Do customers come back?
#
# A **repeat customer** has more than one invoice. A **repeat pair** is a
# (customer, item) pair bought on more than one invoice. Repeat pairs matter
# because "buy it again" is a strong, easy baseline for recommendation in
# this shop. A model must beat it.

# %%
invoices_per_customer = clean.groupby("CustomerID")["InvoiceNo"].nunique()
repeat_customer_rate = (invoices_per_customer > 1).mean()
repeat_pair_rate = (pairs > 1).mean()
print(f"repeat customers: {100 * repeat_customer_rate:.1f}% of {n_customers:,} "
      f"(median {invoices_per_customer.median():.0f} invoices per customer)")
print(f"repeat (customer, item) pairs: {100 * repeat_pair_rate:.1f}% of {len(pairs):,}")

# %% tags=["remove-input"]
fig, ax = plt.subplots(figsize=(6, 3.5))
counts = invoices_per_customer.clip(upper=30).value_counts().sort_index()
ax.bar(counts.index, counts.to_numpy(), color=["tab:grey"] + ["tab:blue"] * (len(counts) - 1))
ax.set_yscale("log")
ax.set_xlabel("invoices per customer (30 = 30 or more)")
ax.set_ylabel("customers (log scale)")
ax.set_title(f"{100 * repeat_customer_rate:.0f}% of customers order more than once")
show(fig, "invoices_per_customer")

# %% tags=["remove-input"]
Markdown(
    f"The grey bar, customers with a single invoice, is {100 * (1 - repeat_customer_rate):.0f}% of them; the rest "
    f"come back, and {100 * repeat_pair_rate:.0f}% of all (customer, item) pairs are bought on more than one invoice. "
    "A model that has seen a customer's past has a lot to go on; one that has not (a cold customer) has little."
)

# %% [markdown]
# ## 1.6 Basket sizes
#
# How many distinct items does one invoice hold? Many customers are
# wholesalers, so baskets are large. That is good for learning which items go
# together (co-purchase), and it makes one invoice a natural "session".

# %%
basket = clean.groupby("InvoiceNo")["StockCode"].nunique()
print(f"items per invoice: median {basket.median():.0f}, mean {basket.mean():.1f}, "
      f"90th percentile {basket.quantile(0.9):.0f}, max {basket.max()}")

# %% tags=["remove-input"]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.hist(basket.clip(upper=100), bins=np.arange(0.5, 101.5, 1), color="tab:green")
ax.axvline(basket.median(), color="black", ls="--", lw=1, label=f"median {basket.median():.0f}")
ax.set_xlabel("distinct items per invoice (100 = 100 or more)")
ax.set_ylabel("invoices")
ax.set_title("Basket sizes")
ax.legend()
show(fig, "basket_sizes")

# %% tags=["remove-input"]
Markdown(
    f"Half the invoices hold {basket.median():.0f} distinct items or more and one in ten holds "
    f"{basket.quantile(0.9):.0f} or more: a basket is a list of many purchases at one moment, which is why chapter 03 "
    "treats one invoice and its sampled negatives as one \"impression list\"."
)

# %% [markdown]
# ## 1.7 The product text
#
# Each item has one description (after cleaning), such as "WHITE HANGING HEART
# T-LIGHT HOLDER". This short text is all a language model will know about an
# item. How long is it, and what words does it use?

# %%
items = clean.drop_duplicates("StockCode")[["StockCode", "Description"]].reset_index(drop=True)
words = items["Description"].str.lower().map(lambda s: re.findall(r"[a-z0-9]+", s))
word_counts = Counter(w for ws in words for w in ws)
n_words = words.str.len()
print(f"{len(items):,} item descriptions: median {n_words.median():.0f} words "
      f"(min {n_words.min()}, max {n_words.max()}), vocabulary of {len(word_counts):,} words")
top_words = pd.DataFrame(word_counts.most_common(size["top_words"]), columns=["word", "items"])
top_words.T

# %% [markdown]
# MiniLM (our BERT) does not see words: it sees **WordPiece tokens**. Common
# words are one token; rare ones are split into pieces (`##` marks a piece
# that continues a word). The tokenizer ships with the model, offline.

# %%
tokenizer = load_tokenizer()
for text in items["Description"].head(3):
    print(f"{text!r:45} -> {tokenizer.tokenize(text)}")
n_tokens = np.array([len(ids) for ids in tokenizer(items["Description"].tolist(), add_special_tokens=False)["input_ids"]])
print(f"tokens per description: median {np.median(n_tokens):.0f}, max {n_tokens.max()} "
      f"(+2 for [CLS] and [SEP]); {np.mean(n_tokens > n_words):.0%} of descriptions need more tokens than words")

# %% tags=["remove-input"]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
bins = np.arange(0.5, max(n_tokens.max(), n_words.max()) + 1.5)
axes[0].hist([n_words, n_tokens], bins=bins, label=["words", "MiniLM tokens"])
axes[0].set_xlabel("length of one item description")
axes[0].set_ylabel("items")
axes[0].legend()
axes[0].set_title("Descriptions are short")
axes[1].barh(top_words["word"][::-1], top_words["items"][::-1], color="tab:purple")
axes[1].set_xlabel("items whose description contains the word")
axes[1].set_title(f"The {len(top_words)} most common words")
fig.tight_layout()
show(fig, "description_text")

# %% tags=["remove-input"]
Markdown(
    f"A typical description has {n_words.median():.0f} words ({np.median(n_tokens):.0f} tokens). The most "
    f"common words ({', '.join(top_words['word'].head(8))}, ...) name product types, colours, materials and "
    "themes. A pretrained "
    "model already knows that \"pink\" and \"rose\" are related, and that \"Christmas\" and \"tree\" go "
    "together. An item ID cannot tell a model that."
)

# %% [markdown]
# ## 1.8 What this means for the later chapters
#
# * **Implicit feedback, no impressions.** The log only records purchases. It
#   does not say which items a customer saw and did not buy. A CTR model needs
#   negatives (label 0), so chapter 03 **samples negatives**: items the customer
#   did not buy at that time.
# * **Time order.** Activity changes with the season, and in real use we
#   predict the future from the past. So we **split by time**: train before a
#   cutoff, test after it. A random split would leak the future into training.
# * **Cold start.** Some test-window customers and items never appear before
#   the cutoff. ID-based models know nothing about them. Text can still
#   describe a new item. Let us measure this at the cutoff, which is the start
#   of chapter 03's test window (by default `split_dates`' last 30 days of the log).

# %%
before = clean[clean["InvoiceDate"] < CUTOFF]
after = clean[clean["InvoiceDate"] >= CUTOFF]
test_users = after["CustomerID"].drop_duplicates()
test_items = after["StockCode"].drop_duplicates()
cold_user_share = (~test_users.isin(before["CustomerID"])).mean()
cold_item_share = (~test_items.isin(before["StockCode"])).mean()
cold_user_rows = (~after["CustomerID"].isin(before["CustomerID"])).mean()
cold_item_rows = (~after["StockCode"].isin(before["StockCode"])).mean()
cold = pd.DataFrame(
    {
        "in test window": [len(test_users), len(test_items)],
        "unseen before cutoff": [round(cold_user_share * len(test_users)), round(cold_item_share * len(test_items))],
        "share unseen %": [100 * cold_user_share, 100 * cold_item_share],
        "share of test rows %": [100 * cold_user_rows, 100 * cold_item_rows],
    },
    index=["customers", "items"],
).round(1)
print(f"train: {len(before):,} rows before {CUTOFF.date()}; test: {len(after):,} rows "
      f"({100 * len(after) / len(clean):.1f}%) from {CUTOFF.date()} to {clean['InvoiceDate'].max():%Y-%m-%d}")
cold

# %% tags=["remove-input"]
fig, ax = plt.subplots(figsize=(6, 3))
x = np.arange(2)
ax.bar(x - 0.2, cold["share unseen %"], width=0.4, label="of distinct users / items")
ax.bar(x + 0.2, cold["share of test rows %"], width=0.4, label="of test purchase lines")
ax.set_xticks(x, ["cold customers", "cold items"])
ax.set_ylabel("% of the test window")
ax.set_title(f"Cold start after the {CUTOFF.date()} cutoff")
ax.legend()
show(fig, "cold_start")

# %% tags=["remove-input"]
larger = "customers" if cold_user_share > cold_item_share else "items"
Markdown(
    f"{100 * cold_user_share:.1f}% of the test-window customers (about one in "
    f"{1 / cold_user_share:.0f}) never bought before the cutoff, and they place "
    f"{100 * cold_user_rows:.1f}% of the test purchase lines. Only {100 * cold_item_share:.1f}% of the "
    f"items sold in the test window are new ({100 * cold_item_rows:.1f}% of the lines). Here cold "
    f"{larger} are the larger problem. Cold items still matter in any shop that adds products, "
    "and that is where text helps most."
)

# %% [markdown]
# **Too few new products to measure: a simulated catalogue refresh.** A few
# dozen cold items are not enough to measure how well a model ranks or
# retrieves products it has never seen. The later chapters therefore also
# *simulate* a catalogue refresh, the item cold-start split of DropoutNet
# (Volkovs, Yu and Poutanen, NeurIPS 2017), with `ecrec.cold_start`: among
# the items sold both before and after the cutoff, hold out a seeded random
# 20%, and remove every purchase of them before the cutoff from everything a
# model learns from. Their purchases after the cutoff become a cold-item test
# set.

# %%
events = purchase_events(clean)  # one row per (invoice, item): the book's events table
refresh = hold_out_items(events, CUTOFF, share=0.2, seed=seed)
held_test = cold_test_mask(events, refresh)  # test-window purchases of held-out items
pd.Series({**refresh.summary(), "test purchases of held-out items": int(held_test.sum()),
           "test purchases in all": int((events["ts"] >= CUTOFF).sum())}).to_frame("simulated refresh")

# %% tags=["remove-input"]
n_test_events = int((events["ts"] >= CUTOFF).sum())
Markdown(
    f"{len(refresh.held_out):,} of the {len(refresh.candidates):,} items sold on both sides of the cutoff are held out; "
    f"their {int(held_test.sum()):,} purchases after it ({held_test.sum() / n_test_events:.0%} of the test window's) "
    f"are a cold-item test set far larger than the {len(refresh.natural_cold)} natural cold items give. It is a "
    "simulation, and it differs from real new products: the held-out items are established ones, drawn at random "
    "from the items that sell on both sides of the cutoff (more popular than the average item), while products a shop "
    "has just added may be described, priced and bought differently."
)

# %% [markdown]
# ## 1.9 A second dataset: reviews with text and labels
#
# Online Retail has product names but no review text and no explicit
# feedback. The Women's Clothing Reviews data has both: a 1–5 star **rating**,
# a binary **recommend** flag and a free-text review. Chapter 07 predicts both
# labels from the review text with MiniLM, one task at a time and together
# (chapter 04 fine-tunes MiniLM on Online Retail's purchases). First, how do
# the two labels relate?

# %%
reviews = load_reviews()
print(f"{len(reviews):,} reviews of {reviews['Clothing ID'].nunique():,} items; "
      f"{reviews['Review Text'].isna().sum():,} without text")
crosstab = pd.crosstab(reviews["Rating"], reviews["Recommended IND"], margins=True)
crosstab

# %%
recommend_by_rating = reviews.groupby("Rating")["Recommended IND"].mean()

# %% tags=["remove-input"]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.bar(recommend_by_rating.index, 100 * recommend_by_rating.to_numpy(), color="tab:orange")
for r, v in recommend_by_rating.items():
    ax.text(r, 100 * v, f"{100 * v:.0f}%", ha="center", va="bottom")
ax.set_xlabel("star rating")
ax.set_ylabel("% who recommend the item")
ax.set_ylim(0, 110)
ax.set_title(f"Recommend rate by rating (overall {100 * reviews['Recommended IND'].mean():.0f}%)")
show(fig, "reviews_recommend_by_rating")

# %% tags=["remove-input"]
Markdown(
    "The recommend flag is almost a threshold on the rating: at least "
    f"{100 * recommend_by_rating.loc[[4, 5]].min():.0f}% of the 4 and 5 star reviews recommend the item, "
    f"and at most {100 * recommend_by_rating.loc[[1, 2]].max():.0f}% of the 1 and 2 star reviews do. "
    f"Three stars is the uncertain middle ({100 * recommend_by_rating.loc[3]:.0f}%). The classes are "
    f"imbalanced ({100 * reviews['Recommended IND'].mean():.0f}% positive), so in later chapters we report "
    "log loss and AUC, not accuracy."
)

# %% [markdown]
# How long are the reviews? This decides the `max_length` we give BERT.

# %%
texts = reviews["Review Text"].dropna()
review_words = texts.str.split().str.len()
sample = texts.sample(n=min(size["reviews_tokenized"], len(texts)), random_state=seed)
review_tokens = np.array([len(ids) for ids in tokenizer(sample.tolist(), add_special_tokens=True)["input_ids"]])
over_128 = (review_tokens > 128).mean()
print(f"words per review: median {review_words.median():.0f}, max {review_words.max()}; "
      f"MiniLM tokens (sample of {len(sample):,}): median {np.median(review_tokens):.0f}, "
      f"{100 * over_128:.1f}% over 128")

# %% tags=["remove-input"]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.hist(review_tokens, bins=40, color="tab:cyan")
ax.axvline(128, color="black", ls="--", lw=1, label="max_length = 128")
ax.set_xlabel("MiniLM tokens per review (with [CLS] and [SEP])")
ax.set_ylabel("reviews")
ax.set_title("Review lengths")
ax.legend()
show(fig, "review_lengths")

# %% tags=["remove-input"]
Markdown(
    f"The median review is {np.median(review_tokens):.0f} tokens and {100 * over_128:.1f}% are longer than 128: "
    + ("`max_length = 128` keeps almost every review whole."
       if over_128 < 0.1 else
       "`max_length = 128` cuts a noticeable share of the reviews; a chapter that uses less must say how many it cuts.")
)

# %% tags=["remove-input"]
lesson = (
    "The log records purchases only, so every later chapter samples its negatives; activity is seasonal "
    f"(invoices peak at {full_months['invoices'].max() / full_months['invoices'].median():.1f} times the median "
    "month), so every chapter splits by time; and at that split "
    f"{100 * cold_user_share:.0f}% of the test customers but only {100 * cold_item_share:.1f}% of the test items "
    f"({round(cold_item_share * len(test_items))}) are new, so new products are simulated by holding out "
    f"{len(refresh.held_out):,} items, for which only their text and attributes can speak."
)
LESSON.update(Markdown(f"**In one sentence (from this run):** {lesson}"))

# %% [markdown]
# ## 1.10 The numbers, saved
#
# `metrics.json` keeps this chapter's headline numbers, so tests and later
# chapters can check them.

# %% tags=["remove-input"]
metrics = {
    "rows_raw": report.rows_in,
    "rows_clean": report.rows_out,
    **{f"removed_{rule}": n for rule, n in report.removed.items()},
    "descriptions_unified": report.descriptions_unified,
    "whitespace_normalised": report.whitespace_normalised,
    "n_customers": n_customers,
    "n_items": n_items,
    "n_invoices": n_invoices,
    "n_pairs": len(pairs),
    "matrix_density": density,
    "months": len(monthly),
    "top20pct_items_share_of_lines": top20_share,
    "items_under_5_customers_share": rare_share,
    "repeat_customer_rate": repeat_customer_rate,
    "repeat_pair_rate": repeat_pair_rate,
    "median_invoices_per_customer": float(invoices_per_customer.median()),
    "median_basket_size": float(basket.median()),
    "mean_basket_size": float(basket.mean()),
    "description_median_words": float(n_words.median()),
    "description_vocabulary": len(word_counts),
    "description_median_tokens": float(np.median(n_tokens)),
    "description_max_tokens": int(n_tokens.max()),
    "cutoff": str(CUTOFF.date()),
    "rows_before_cutoff": len(before),
    "rows_after_cutoff": len(after),
    "test_customers": len(test_users),
    "test_items": len(test_items),
    "cold_customer_share": cold_user_share,
    "cold_item_share": cold_item_share,
    "cold_customer_row_share": cold_user_rows,
    "cold_item_row_share": cold_item_rows,
    "reviews_rows": len(reviews),
    "reviews_without_text": int(reviews["Review Text"].isna().sum()),
    "reviews_recommend_rate": float(reviews["Recommended IND"].mean()),
    "reviews_recommend_rate_by_rating": {int(r): float(v) for r, v in recommend_by_rating.items()},
    "reviews_median_words": float(review_words.median()),
    "reviews_tokenized": len(sample),
    "reviews_median_tokens": float(np.median(review_tokens)),
    "reviews_share_over_128_tokens": float(over_128),
    "simulated_refresh": {**refresh.summary(), "test_events_held_out": int(held_test.sum()),
                          "test_events": n_test_events},
    "lesson": lesson,
}
write_metrics(output_dir, metrics, profile=run_profile, seed=seed, started=STARTED)
pd.Series({k: v for k, v in metrics.items() if not isinstance(v, dict)}).to_frame("value")

# %% [markdown]
# ## Summary

# %% tags=["remove-input"]
Markdown(
    f"**The lesson.** {lesson}\n\n"
    f"* Cleaning is a list of named decisions: {100 * report.rows_out / report.rows_in:.1f}% of the "
    f"{report.rows_in:,} raw rows are purchases of real products by known customers; `{biggest_rule}` "
    f"removes the most ({100 * report.removed[biggest_rule] / report.rows_in:.1f}% of the log).\n"
    f"* {n_customers:,} customers, {n_items:,} items and {n_invoices:,} invoices fill "
    f"{100 * density:.2f}% of the customer x item matrix. Item popularity has a long tail: the top 20% of "
    f"items hold {100 * top20_share:.0f}% of the purchase lines.\n"
    f"* Customers come back: {100 * repeat_customer_rate:.0f}% order more than once and "
    f"{100 * repeat_pair_rate:.0f}% of (customer, item) pairs are bought again, so \"buy it again\" is a "
    "baseline every recommender here must beat.\n"
    f"* A description is short ({n_words.median():.0f} words, {np.median(n_tokens):.0f} MiniLM tokens): all "
    "that a text model will know about an item.\n"
    f"* Activity is seasonal, so every later chapter splits by time. At the {CUTOFF.date()} cutoff "
    f"{100 * cold_user_share:.0f}% of the test customers and {100 * cold_item_share:.1f}% of the test "
    f"items are new: too few to measure, so the later chapters also simulate a catalogue refresh "
    f"({len(refresh.held_out):,} items held out, {int(held_test.sum()):,} test purchases).\n"
    f"* In the reviews the recommend flag is nearly a threshold on the rating, "
    f"{100 * reviews['Recommended IND'].mean():.0f}% positive, and {100 * over_128:.1f}% of the reviews "
    "are longer than 128 tokens."
)

# %% [markdown]
# ## Exercises
#
# 1. *(runnable)* Cleaning rule 1 drops every cancellation. Count them
#    instead, per customer (keep rules 2 and 3: known customers, real
#    products). What share of customers ever cancel, and is it the one-time
#    buyers or the repeat customers who do? Would "has returned" be a
#    negative signal? A worked solution is in
#    `notebooks/solutions/01_exercises.py`; chapter 06 turns returns into a
#    second label.
# 2. *(runnable)* The repeat-customer and repeat-pair rates of section 1.5,
#    by country (a customer's country: the one on most of its lines). Is
#    "buy it again" a UK habit? Mind how many customers each rate rests on.
#    (solution in the same file)
# 3. *(runnable)* Move the `cutoff` parameter to `"2011-09-01"` and compare
#    the cold-start shares of section 1.8 with the default. (solution in the
#    same file)
# 4. Count popularity by quantity sold instead of by distinct customers.
#    Which items move into the head, and why (wholesale orders of cheap
#    items)? Which count should a "most popular" recommender use?
# 5. In the reviews, read some 5-star reviews that do *not* recommend the
#    item. Are they label noise, or a different question ("would you
#    recommend it" vs "did you like it")?
