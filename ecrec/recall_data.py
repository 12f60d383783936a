"""Chapter 05's evaluation protocol: the data every recall generator is evaluated on.

Built on chapter 03's tables (one data contract, :mod:`ecrec.schema`): the
events are :func:`ecrec.features.purchase_events`, the items
:func:`ecrec.features.item_catalog`, with ``item_idx`` (an item's column in
every matrix here) added; a cold item is :func:`ecrec.features.cold_items`.

Protocol (:func:`build_recall_data`)
------------------------------------
* Global time split, the same as chapter 03's (``ecrec.features.split_dates``):
  everything before ``test_start`` is history (its train + valid windows);
  from ``test_start`` to the end of the log is test.
* Test users: customers with at least one purchase in the test window.
  Ground truth: the items they bought in the test window (gain = number of
  distinct test invoices holding the item). Two settings:

  - ``"all"``: every test purchase, repeat purchases included;
  - ``"new-to-user"`` (``relevant_new``): only items the user never bought
    before ``test_start``; the user's history is then EXCLUDED from the
    candidates of every generator (an already-bought item can never hit).
    Not to be confused with **cold items** (new to the shop, below).

* User groups by distinct items bought before ``test_start``: ``cold`` (0),
  ``short`` (1..``short_max``), ``warm`` (more). Cold users have nothing to
  personalise on: every generator falls back to the popularity list for them.
* Item groups: ``cold`` items (new to the shop: no purchase before
  ``test_start``, so ID models know nothing about them) and ``tail`` items
  (outside the most popular 20%). The catalogue is every product of the
  cleaned log with its description, including items first sold in the test
  window (a shop knows its catalogue). Survivorship: because the catalogue
  comes from the whole log, every cold item sells in the test window (items
  listed but never sold are not in the log at all).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ecrec.features import cold_items, item_catalog, purchase_events
from ecrec.schema import COLD_ITEM, ITEM_ID, ITEM_IDX, TS, USER_ID

__all__ = ["RecallData", "build_recall_data", "recency_weights"]


# --- protocol data ---------------------------------------------------------


@dataclass
class RecallData:
    """Everything the chapter's generators and evaluation need (see the module notes).

    Rows of ``history*``, ``relevant_*`` and ``user_group`` are the evaluated
    test users (``users``); rows of ``train_matrix`` are ``train_users``.
    Columns are item indexes (``item_idx``) 0..n_items-1 (``items`` row order).
    """

    test_start: pd.Timestamp  # first instant of the test window
    end: pd.Timestamp  # exclusive: midnight after the last event
    items: pd.DataFrame  # item_id (stock code), item_idx, description, category, price, train_buyers,
    #                      cold_item, tail_item (ecrec.features.item_catalog + the recall columns)
    events: pd.DataFrame  # ecrec.features.purchase_events + item_idx: one row per (invoice, item)
    users: np.ndarray  # CustomerID of each evaluated test user
    user_group: np.ndarray  # "cold" | "short" | "warm"
    history: sp.csr_array  # (n_users, n_items) recency weights of purchases before test_start
    history_count: sp.csr_array  # (n_users, n_items) distinct invoices before test_start
    relevant_all: sp.csr_array  # (n_users, n_items) distinct test invoices per item
    relevant_new: sp.csr_array  # same, items bought before test_start removed
    train_users: np.ndarray  # CustomerID of each train_matrix row
    train_matrix: sp.csr_array  # (n_train_users, n_items) distinct invoices before test_start
    train_row_of_user: np.ndarray  # (n_users,) row in train_matrix, -1 for cold users
    half_life_days: float = 30.0
    meta: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.items)


def recency_weights(age_days, half_life_days: float) -> np.ndarray:
    """``0.5 ** (age / half_life)``: a purchase ``half_life_days`` old counts half.

    Raises:
        ValueError: non-positive half-life or negative ages (future events).
    """
    if half_life_days <= 0:
        raise ValueError(f"half_life_days must be > 0, got {half_life_days}")
    age = np.asarray(age_days, dtype=np.float64)
    if (age < 0).any():
        raise ValueError("recency weights got events after the reference time (negative age)")
    return np.power(0.5, age / half_life_days)


def build_recall_data(
    clean: pd.DataFrame,
    test_start,
    *,
    half_life_days: float = 30.0,
    short_max: int = 5,
    tail_share: float = 0.8,
    max_users: int | None = None,
    seed: int = 0,
    catalogue: pd.DataFrame | None = None,
) -> RecallData:
    """Build items, events, histories and ground truths for the recall protocol.

    Args:
        clean: the cleaned Online Retail frame (``ecrec.data.load_clean_online_retail``).
        test_start: start of the test window, e.g. the second value of
            ``ecrec.features.split_dates(clean["InvoiceDate"])`` (chapter 03's split).
        half_life_days: recency half-life of the user histories.
        short_max: users with 1..short_max distinct past items are "short".
        tail_share: the least popular ``tail_share`` of items (by distinct
            buyers before test_start) are "tail" items.
        max_users: evaluate a random subsample of this many test users (smoke
            runs); ``None`` keeps all.
        seed: seed of that subsample.
        catalogue: a cleaned log to build the item table from with
            :func:`ecrec.features.item_catalog` (StockCode, Description, UnitPrice)
            item table from (default: ``clean`` itself). Pass the full log when
            ``clean`` is a truncated log (a validation split) so that item indexes
            match the test split's.

    Raises:
        ValueError: missing columns, no test user, an item of ``clean``
            missing from ``catalogue``, or bad parameters.
    """
    need = {"InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"}
    missing = need - set(clean.columns)
    if missing:
        raise ValueError(f"clean is missing columns {sorted(missing)}; pass ecrec.data.load_clean_online_retail()[0]")
    test_start = pd.Timestamp(test_start)
    end = clean["InvoiceDate"].max().normalize() + pd.DateOffset(days=1)  # calendar day, also across DST
    if not clean["InvoiceDate"].min() < test_start < end:
        raise ValueError(f"test_start {test_start} must fall inside the log ({clean['InvoiceDate'].min()} .. {end})")
    if not 0 < tail_share < 1:
        raise ValueError(f"tail_share must be in (0, 1), got {tail_share}")
    # chapter 03's tables: one events table and one item table for the whole book
    items = item_catalog(clean if catalogue is None else catalogue)
    items.insert(1, ITEM_IDX, np.arange(len(items), dtype=np.int64))
    idx_of = pd.Series(items[ITEM_IDX].to_numpy(), index=items[ITEM_ID])
    events = purchase_events(clean)
    unknown = ~events[ITEM_ID].isin(idx_of.index)
    if unknown.any():
        raise ValueError(f"{int(unknown.sum())} purchase events of clean have a StockCode missing from catalogue, "
                         f"e.g. {events.loc[unknown, ITEM_ID].iloc[0]!r}; pass the full log as catalogue")
    events.insert(3, ITEM_IDX, events[ITEM_ID].map(idx_of).to_numpy(np.int64))
    n_items = len(items)
    past = events[events[TS] < test_start]
    test = events[(events[TS] >= test_start) & (events[TS] < end)]
    if test.empty:
        raise ValueError("no purchase in the test window")

    buyers = past.groupby(ITEM_IDX)[USER_ID].nunique().reindex(range(n_items), fill_value=0)
    items["train_buyers"] = buyers.to_numpy()
    items[COLD_ITEM] = cold_items(events, items[ITEM_ID], test_start)  # the book's one definition
    rank = items["train_buyers"].rank(method="first", ascending=False).to_numpy()
    items["tail_item"] = rank > (1 - tail_share) * n_items

    train_users = np.sort(past[USER_ID].unique())
    train_row = pd.Series(np.arange(len(train_users)), index=train_users)
    counts = past.groupby([USER_ID, ITEM_IDX]).size().reset_index(name="n")
    train_matrix = sp.csr_array(
        (counts["n"].to_numpy(np.float64), (train_row[counts[USER_ID]].to_numpy(), counts[ITEM_IDX].to_numpy())),
        shape=(len(train_users), n_items),
    )

    users = np.sort(test[USER_ID].unique())
    if max_users is not None and max_users < len(users):
        rng = np.random.default_rng(seed)
        users = np.sort(rng.choice(users, size=max_users, replace=False))
    row = pd.Series(np.arange(len(users)), index=users)

    def matrix(frame: pd.DataFrame, values: np.ndarray) -> sp.csr_array:
        keep = frame[USER_ID].isin(row.index).to_numpy()
        f = frame[keep]
        m = sp.csr_array(
            (values[keep], (row[f[USER_ID]].to_numpy(), f[ITEM_IDX].to_numpy())), shape=(len(users), n_items)
        )
        m.sum_duplicates()
        m.sort_indices()
        return m

    age = (test_start - past[TS]).dt.total_seconds().to_numpy() / 86400.0
    history = matrix(past, recency_weights(age, half_life_days))
    history_count = matrix(past, np.ones(len(past)))
    relevant_all = matrix(test, np.ones(len(test)))
    seen = history_count.copy()
    seen.data[:] = 1.0
    relevant_new = relevant_all - relevant_all.multiply(seen)
    relevant_new = sp.csr_array(relevant_new)
    relevant_new.eliminate_zeros()
    relevant_new.sort_indices()

    n_hist = np.diff(history_count.indptr)
    group = np.where(n_hist == 0, "cold", np.where(n_hist <= short_max, "short", "warm"))
    return RecallData(
        test_start=test_start,
        end=end,
        items=items,
        events=events,
        users=users,
        user_group=group,
        history=history,
        history_count=history_count,
        relevant_all=relevant_all,
        relevant_new=relevant_new,
        train_users=train_users,
        train_matrix=train_matrix,
        train_row_of_user=train_row.reindex(users).fillna(-1).to_numpy(np.int64),
        half_life_days=half_life_days,
        meta={"short_max": short_max, "tail_share": tail_share, "n_test_users_total": int(test[USER_ID].nunique())},
    )
