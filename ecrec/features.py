"""Chapter 03's point-in-time CTR dataset, built from the cleaned Online Retail log.

The contract that the chapters reading chapter 03's examples share: 03 (ID-based
CTR models), 04 (BERT), 06 (multi-task) and 07. Each calls
:func:`load_or_build_ctr_dataset` with the :class:`CtrDatasetConfig` of
:func:`dataset_config`, so they all read exactly the same examples and split
from one parquet file cached under a hash of the config, of the code that builds
it and of the data (:func:`dataset_key`). Chapter 05 (recall) does not read this
dataset: :func:`ecrec.recall.build_recall_data` starts from the same
:func:`purchase_events` and :func:`item_catalog`.

Functions
---------
* :func:`purchase_events` (clean -> one row per (invoice, item): the positives
  and the history every feature is computed from).
* :func:`split_dates` (timestamps -> ``(valid_start, test_start)``) and
  :func:`assign_split` (timestamps -> ``"train"|"valid"|"test"``): one
  global time split, test last.
* :func:`sample_negatives` (seeded, ``"uniform"`` or ``"popularity"`` over
  the items sold in the 30 days before the positive; only the positive's
  own basket is excluded).
* :func:`point_in_time_features` (examples + event log -> features that use
  only events strictly before each example's ``ts``).
* :func:`build_ctr_dataset`, :func:`load_or_build_ctr_dataset`,
  :func:`dataset_key`, :func:`item_catalog`.

Columns of the CTR dataset (one row per example, sorted by ``ts``, ``user_id``,
``invoice_no``, ``label`` descending, ``item_id``; fresh RangeIndex)
-------------------------------------------------------------------------------
======================  =====================  ===================================================
column                  dtype                  meaning
======================  =====================  ===================================================
``user_id``             int64                  CustomerID
``item_id``             str                    StockCode
``ts``                  datetime64[us]         the invoice's time (a negative shares its positive's)
``invoice_no``          str                    the positive's invoice: one "impression list"
``label``               int8                   1 bought, 0 sampled negative
``split``               str                    ``"train"``, ``"valid"`` or ``"test"`` (by ``ts``)
``cold_user``           bool                   user bought nothing before ``valid_start`` (whole log)
``cold_item``           bool                   nobody bought the item before ``valid_start`` (whole log)
``country``             str                    the invoice's country (context, known at ``ts``)
``hist_items``          list<string>[pyarrow]  up to ``history_len`` items the user bought
                                               strictly before ``ts``, newest first
``hist_len``            int64                  ``len(hist_items)``
``u_n_invoices``        float64                user's invoices before ``ts`` (frequency)
``u_n_lines``           float64                user's invoice lines before ``ts``
``u_spend``             float64                user's spend before ``ts``, pounds (monetary)
``u_days_since_last``   float64                days since the user's last invoice (recency), NaN if none
``u_tenure_days``       float64                days since the user's first invoice, NaN if none
``i_pop_all``           float64                item's purchases (any user) before ``ts``
``i_pop_<w>d``          float64                ... in the ``w`` days before ``ts`` (``pop_windows``)
``i_share_all``         float64                ``i_pop_all`` per 1,000 purchases (all items) before ``ts``
``i_share_<w>d``        float64                ``i_pop_<w>d`` per 1,000 purchases in the same window
``i_price``             float64                item's last unit price before ``ts``, NaN if never sold
``i_age_days``          float64                days since the item's first sale, NaN if never sold
``ui_n_before``         float64                times this user bought this item before ``ts``
``ui_days_since_last``  float64                days since the user last bought it, NaN if never
``hour``                int64                  hour of ``ts`` (0-23)
``weekday``             int64                  day of week of ``ts`` (Monday 0)
``month``               int64                  month of ``ts`` (1-12)
======================  =====================  ===================================================

NaN means "no history" and is left for the encoders (:func:`ecrec.encoders.numeric_encoder`)
to impute with an explicit missing indicator. Static item attributes
(description, category) come from :func:`item_catalog`; join on ``item_id``.

Point in time: every ``u_*``, ``i_*``, ``ui_*`` and ``hist_*`` value of an
example is computed from purchase events with a time strictly before the
example's ``ts`` (items of the same invoice are not "before"). The event log
is the whole cleaned log (all users), also when ``max_users`` subsamples the
users that get examples: popularity is a global statistic.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

SPLITS = ("train", "valid", "test")
NEGATIVE_SAMPLING = ("uniform", "popularity")
HIST_DTYPE = pd.ArrowDtype(pa.list_(pa.string()))
_DAY_S = 86_400


# --- events and the global time split ---------------------------------------


def purchase_events(clean: pd.DataFrame) -> pd.DataFrame:
    """One row per (invoice, item): the purchase events, de-duplicated within an invoice.

    Args:
        clean: cleaned Online Retail (:func:`ecrec.data.load_clean_online_retail`),
            columns InvoiceNo, StockCode, Quantity, InvoiceDate, UnitPrice,
            CustomerID, Country (Description is not used).

    Returns:
        Frame sorted by ``ts``, ``user_id``, ``item_id``, ``invoice_no`` with
        columns ``invoice_no`` (str), ``user_id`` (int64), ``item_id`` (str),
        ``ts`` (datetime64; the invoice's earliest line time, so one invoice is
        one moment), ``quantity`` (int64, summed), ``price`` (float64, the mean
        unit price, pounds), ``spend`` (float64, sum of quantity x price,
        pounds), ``country`` (str).

    Raises:
        ValueError: a required column is missing, or a row has no CustomerID.
    """
    need = ["InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]
    missing = [c for c in need if c not in clean.columns]
    if missing:
        raise ValueError(f"purchase_events needs the cleaned Online Retail columns; missing {missing}")
    if clean["CustomerID"].isna().any():
        raise ValueError("purchase_events: rows without CustomerID; pass the *cleaned* log (clean_online_retail)")
    df = pd.DataFrame(
        {
            "invoice_no": clean["InvoiceNo"].astype(str),
            "user_id": clean["CustomerID"].astype("int64"),
            "item_id": clean["StockCode"].astype(str),
            "ts": clean.groupby("InvoiceNo")["InvoiceDate"].transform("min"),
            "quantity": clean["Quantity"].astype("int64"),
            "price": clean["UnitPrice"].astype("float64"),
            "spend": clean["Quantity"] * clean["UnitPrice"],
            "country": clean["Country"].astype(str),
        }
    )
    out = df.groupby(["invoice_no", "item_id"], sort=False, as_index=False).agg(
        user_id=("user_id", "first"),
        ts=("ts", "first"),
        quantity=("quantity", "sum"),
        price=("price", "mean"),
        spend=("spend", "sum"),
        country=("country", "first"),
    )
    out = out[["invoice_no", "user_id", "item_id", "ts", "quantity", "price", "spend", "country"]]
    return out.sort_values(["ts", "user_id", "item_id", "invoice_no"], kind="stable").reset_index(drop=True)


def _datetime_index(ts, where: str) -> pd.DatetimeIndex:
    """Timestamps as a DatetimeIndex, keeping a time zone if they have one (naive stays naive)."""
    if isinstance(ts, (pd.Series, pd.Index)):
        out = pd.DatetimeIndex(pd.to_datetime(ts))
    else:
        arr = np.asarray(ts)
        out = pd.DatetimeIndex(pd.to_datetime(arr)) if arr.dtype != object else pd.DatetimeIndex(list(arr))
    if out.hasnans:
        raise ValueError(f"{where}: timestamps contain NaT")
    return out


def split_dates(ts, valid_days: int = 30, test_days: int = 30) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Global time split: the last ``test_days`` whole days are test, the ``valid_days`` before are validation.

    The windows are in calendar days ending at midnight after the last
    timestamp: ``test_start = ceil_day(max ts) - test_days``,
    ``valid_start = test_start - valid_days``. Everything before
    ``valid_start`` is train. Use with :func:`assign_split`.

    Time zones: naive timestamps (the Online Retail log) are read as local
    wall-clock time. Time-zone-aware timestamps are handled in their own
    zone: the boundaries are local midnights, stepped in calendar days
    (``pandas.DateOffset``), so a window across a daylight-saving change
    (Europe/London, 30 October 2011) still starts at 00:00 local, not 01:00;
    the boundaries are returned aware, in that zone.

    Args:
        ts: timestamps (Series, DatetimeIndex or array of datetime64), e.g.
            the ``ts`` column of :func:`purchase_events`; naive or aware
            (one zone).
        valid_days, test_days: window lengths in days, >= 1.

    Returns:
        ``(valid_start, test_start)`` as :class:`pandas.Timestamp` (midnight;
        aware in ``ts``'s zone when ``ts`` is aware).

    Raises:
        ValueError: empty ``ts``, NaT values, non-positive window lengths, or
            windows so long that the train window would be empty (also for
            non-integer window lengths).
    """
    for name, days in (("valid_days", valid_days), ("test_days", test_days)):
        if not isinstance(days, (int, np.integer)) or isinstance(days, bool) or days < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {days!r}")
    if len(ts) == 0:
        raise ValueError("split_dates: no timestamps")
    ts = _datetime_index(ts, "split_dates")
    end = ts.max().normalize() + pd.DateOffset(days=1)
    test_start = end - pd.DateOffset(days=int(test_days))
    valid_start = test_start - pd.DateOffset(days=int(valid_days))
    if valid_start <= ts.min():
        raise ValueError(
            f"split_dates: valid_days={valid_days} + test_days={test_days} cover all the data "
            f"({ts.min()} .. {ts.max()}); nothing is left for training"
        )
    return valid_start, test_start


def assign_split(ts, valid_start, test_start) -> np.ndarray:
    """Label each timestamp ``"train"`` (< valid_start), ``"valid"`` (< test_start) or ``"test"``.

    Args:
        ts: n timestamps (Series, DatetimeIndex or datetime64 array).
        valid_start, test_start: from :func:`split_dates` (or any timestamps
            with ``valid_start <= test_start``); aware exactly when ``ts`` is
            (aware instants compare correctly across zones).

    Returns:
        (n,) object array of str.

    Raises:
        ValueError: ``valid_start > test_start``, NaT in ``ts``, or naive
            timestamps mixed with aware ones (which instant a naive time means
            is ambiguous).
    """
    valid_start, test_start = pd.Timestamp(valid_start), pd.Timestamp(test_start)
    ts = _datetime_index(ts, "assign_split")
    aware = {"ts": ts.tz is not None, "valid_start": valid_start.tz is not None, "test_start": test_start.tz is not None}
    if len(set(aware.values())) > 1:
        raise ValueError(
            f"assign_split: naive and time-zone-aware timestamps mixed ({aware}); localise them to one zone "
            "(Series.dt.tz_localize) or pass naive times throughout"
        )
    if valid_start > test_start:
        raise ValueError(f"assign_split: valid_start {valid_start} is after test_start {test_start}")
    out = np.full(len(ts), "test", dtype=object)
    out[ts < test_start] = "valid"
    out[ts < valid_start] = "train"
    return out


# --- configuration and negatives --------------------------------------------


@dataclass(frozen=True)
class CtrDatasetConfig:
    """Everything that decides the examples; its hash names the cached parquet.

    Attributes:
        seed: seeds user subsampling and negative sampling.
        neg_ratio: negatives drawn per positive (>= 1).
        negatives: ``"uniform"`` over the items sold in the ``neg_window_days``
            days before the example's ``ts``, or ``"popularity"``:
            proportional to their sales in that window. The items of the
            positive's basket (all of the user's invoices at that moment)
            are excluded (:func:`sample_negatives`).
        history_len: length cap of ``hist_items`` (>= 1).
        max_users: keep a seeded random sample of this many customers
            (``None``: all 4,334).
        valid_days, test_days: see :func:`split_dates`.
        pop_windows: trailing windows in days for ``i_pop_<w>d``.
        neg_window_days: trailing window of the negative candidates, days.
        neg_exclude_bought_in_split: also exclude, as negatives, the items
            the same user bought at any time in the positive's split window
            (``False``, the default: only the basket; see
            :func:`sample_negatives` for the trade-off).

    Raises:
        ValueError: unknown ``negatives``, a count or window below 1 or not
            an integer, ``max_users`` not ``None`` or >= 1, ``pop_windows``
            empty, repeated or below 1, or ``neg_exclude_bought_in_split``
            not a bool.
    """

    seed: int = 42
    neg_ratio: int = 4
    negatives: str = "uniform"
    history_len: int = 10
    max_users: int | None = None
    valid_days: int = 30
    test_days: int = 30
    pop_windows: tuple[int, ...] = field(default=(7, 30))
    neg_window_days: int = 30
    neg_exclude_bought_in_split: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.neg_exclude_bought_in_split, (bool, np.bool_)):
            raise ValueError(f"neg_exclude_bought_in_split must be a bool, got {self.neg_exclude_bought_in_split!r}")
        if self.negatives not in NEGATIVE_SAMPLING:
            raise ValueError(f"negatives must be one of {NEGATIVE_SAMPLING}, got {self.negatives!r}")
        for name in ("neg_ratio", "history_len", "valid_days", "test_days", "neg_window_days"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_users is not None and (not isinstance(self.max_users, (int, np.integer)) or self.max_users < 1):
            raise ValueError(f"max_users must be None or an integer >= 1, got {self.max_users!r}")
        windows = tuple(int(w) for w in self.pop_windows)
        if not windows or any(w < 1 for w in windows) or len(set(windows)) != len(windows):
            raise ValueError(f"pop_windows must be distinct integers >= 1, got {self.pop_windows!r}")
        object.__setattr__(self, "pop_windows", windows)


# Chapter 03's dataset sizes per profile: the one source every chapter that reads
# chapter 03's examples starts from (a chapter may override ``max_users`` only).
DATASET_SIZES: dict[str, dict[str, int | None]] = {
    "smoke": {"max_users": 250, "neg_ratio": 4, "history_len": 10},
    "full": {"max_users": None, "neg_ratio": 4, "history_len": 10},
}


def dataset_config(size: dict, *, seed: int, negatives: str = "uniform") -> CtrDatasetConfig:
    """Chapter 03's :class:`CtrDatasetConfig` from a chapter's resolved sizes.

    Every chapter that reads chapter 03's examples (03, 04, 06, 07) builds its
    configuration here, so that the examples cannot drift between chapters.

    Args:
        size: a chapter's sizes (``ecrec.profiles.pick_sizes``); must hold
            ``max_users``, ``neg_ratio`` and ``history_len`` (start a chapter's
            size table from :data:`DATASET_SIZES`).
        seed: user subsampling and negative sampling seed.
        negatives: ``"uniform"`` or ``"popularity"``.

    Raises:
        KeyError: a size is missing (the message names it and the fix).
        ValueError: as :class:`CtrDatasetConfig`.
    """
    missing = [k for k in ("max_users", "neg_ratio", "history_len") if k not in size]
    if missing:
        raise KeyError(f"dataset_config: sizes lack {missing}; start the chapter's SIZES from "
                       "ecrec.features.DATASET_SIZES[profile]")
    return CtrDatasetConfig(seed=seed, negatives=negatives, max_users=size["max_users"],
                            neg_ratio=size["neg_ratio"], history_len=size["history_len"])


def cold_items(events: pd.DataFrame, items, before) -> np.ndarray:
    """The book's one definition of a **cold item**: nobody bought it before ``before``.

    ``before`` is the end of the data the model learns from: chapter 03's
    ranking models train on the train window (``valid_start``); chapter 05's
    generators on train + valid (``test_start``). An ID model has no row for
    such an item; only its text or attributes can speak for it.

    Args:
        events: purchase events with ``item_id`` and ``ts`` (:func:`purchase_events`).
        items: item ids to flag, shape ``(n,)``.
        before: the cut-off (a timestamp).

    Returns:
        ``(n,)`` bool array, True for cold items.

    Raises:
        ValueError: ``events`` lacks ``item_id`` or ``ts``.
    """
    missing = [c for c in ("item_id", "ts") if c not in events.columns]
    if missing:
        raise ValueError(f"cold_items: events lack {missing}; pass purchase_events(clean)")
    seen = events.loc[events["ts"] < pd.Timestamp(before), "item_id"].unique()
    return ~pd.Index(np.asarray(items)).isin(seen)


def _sorted_member(keys_sorted: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Whether each query key is in the sorted array (one searchsorted, no re-sort)."""
    if keys_sorted.size == 0:
        return np.zeros(q.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(keys_sorted, q), keys_sorted.size - 1)
    return keys_sorted[pos] == q


def sample_negatives(
    positives: pd.DataFrame,
    events: pd.DataFrame,
    *,
    neg_ratio: int,
    method: str,
    seed: int,
    window_days: int = 30,
    max_rounds: int = 50,
    exclude_bought_in_split: bool = False,
) -> pd.DataFrame:
    """Draw ``neg_ratio`` items per positive: on sale just before its ``ts``, not in its basket.

    A negative is "an item the customer did not buy in this basket". The
    basket is everything the customer bought at that moment: all of the
    user's invoices with the same ``ts`` are ONE basket (a customer with two
    invoices in the same minute did not "not buy" the items of the other
    one). By default only the basket is excluded: excluding everything the
    customer bought anywhere in a long window (as a first version did) makes
    "bought this item before" a perfect positive signal in train but not in
    test, a label shortcut that inflates AUC and breaks calibration. With
    ``exclude_bought_in_split=True`` an item the same user bought at ANY time
    in the positive's split window (train, valid or test) is excluded too:
    no negative is a purchase of the same user in the same window, at the
    price of that shortcut (chapter 03 measures what it changes).

    Candidates are the items sold (by anyone) in the ``window_days`` days
    strictly before the positive's ``ts``: items on sale at that moment, never
    one that only appears later. ``method="uniform"`` draws every such item
    with equal probability (rejection sampling against the item's sale
    times), ``"popularity"`` proportionally to its purchase events in that
    window (a uniformly drawn event of the window). Vectorised over all
    positives: the exclusion keys are sorted once and every round looks its
    draws up with one :func:`numpy.searchsorted`. A rejected draw (excluded,
    or for ``"uniform"`` not sold in the window) is redrawn, up to
    ``max_rounds`` times. Once few draws remain (<= 2,000, or <= 20,000 when
    a round accepts under 10%), they are finished exactly: each draws from
    the acceptable items of its window (the same distribution as rejection
    sampling, conditional on acceptance), and a draw with no acceptable item
    (every item sold in the window is excluded) is dropped at once instead
    of using up the rounds; draws still rejected after ``max_rounds`` (only
    if that point is never reached) are dropped too. An item drawn twice for the same
    invoice is kept once. A positive with no sale at all in its window (the
    first moments of the log) gets no negative. Sampled negatives are not
    impressions: items the customer probably never saw.

    Args:
        positives: rows of :func:`purchase_events` with a ``split`` column
            (the users whose examples are wanted).
        events: all purchase events (``invoice_no``, ``user_id``,
            ``item_id``, ``ts``; plus ``split`` with
            ``exclude_bought_in_split``): the candidate pool, the popularity
            and the baskets. Must contain the positives' purchases.
        neg_ratio: negatives drawn per positive (integer >= 1).
        method: ``"uniform"`` or ``"popularity"``.
        seed: seeds the generator; same inputs and seed give the same frame.
        window_days: length of the trailing candidate window (integer >= 1).
        max_rounds: redraw rounds before a rejected draw is dropped (>= 1).
        exclude_bought_in_split: also exclude the user's purchases anywhere
            in the positive's split window (see above).

    Returns:
        Frame with ``invoice_no``, ``user_id``, ``item_id``, ``ts``,
        ``country``, ``split`` (one row per negative), same dtypes as
        ``positives``. ``attrs["negative_sampling"]`` reports the draws:
        ``requested``, ``no_window`` (empty candidate window), ``impossible``
        (every candidate excluded), ``exhausted`` (still rejected after
        ``max_rounds``), ``duplicates`` (same item twice for an invoice),
        ``kept`` and ``rounds`` run.

    Raises:
        ValueError: unknown ``method``, ``neg_ratio``/``window_days``/
            ``max_rounds`` not an integer >= 1, missing columns, or NaT in ``ts``.
    """
    if method not in NEGATIVE_SAMPLING:
        raise ValueError(f"method must be one of {NEGATIVE_SAMPLING}, got {method!r}")
    for name, value in (("neg_ratio", neg_ratio), ("window_days", window_days), ("max_rounds", max_rounds)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"sample_negatives: {name} must be an integer >= 1, got {value!r}")
    ev_cols = ["invoice_no", "user_id", "item_id", "ts"] + (["split"] if exclude_bought_in_split else [])
    for frame, name, cols in (
        (positives, "positives", ["invoice_no", "user_id", "item_id", "ts", "country", "split"]),
        (events, "events", ev_cols),
    ):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"sample_negatives: {name} lacks columns {missing}")
        if frame["ts"].isna().any():
            raise ValueError(f"sample_negatives: {name} have NaT in ts")
    rng = np.random.default_rng(seed)
    items = pd.Index(np.sort(events["item_id"].astype(str).unique()))
    n_items = len(items)
    ev_item = items.get_indexer(events["item_id"].astype(str).to_numpy()).astype(np.int64)
    ev_secs, pos_secs = _seconds(events["ts"]), _seconds(positives["ts"])
    t0 = int(min(ev_secs.min(), pos_secs.min())) - (window_days + 1) * _DAY_S if len(ev_secs) else 0
    ev_t = ev_secs - t0
    # baskets: one per (user, moment), over the events and the positives together
    both = pd.DataFrame({
        "u": np.concatenate([events["user_id"].to_numpy(np.int64), positives["user_id"].to_numpy(np.int64)]),
        "t": np.concatenate([ev_secs, pos_secs]),
    })
    basket_of = pd.MultiIndex.from_frame(both).factorize()[0].astype(np.int64)
    ev_basket, pos_basket = basket_of[: len(events)], basket_of[len(events) :]
    excluded = np.unique(ev_basket * n_items + ev_item)  # sorted once
    if exclude_bought_in_split:
        split_code = {name: i for i, name in enumerate(SPLITS)}
        users = pd.Index(np.unique(both["u"].to_numpy()))
        ev_us = users.get_indexer(events["user_id"].to_numpy()) * len(SPLITS) + events["split"].map(split_code).to_numpy()
        user_split_keys = np.unique(ev_us.astype(np.int64) * n_items + ev_item)
        pos_us = (users.get_indexer(positives["user_id"].to_numpy()) * len(SPLITS)
                  + positives["split"].map(split_code).to_numpy()).astype(np.int64)
    # events by time (popularity draws) and by (item, time) (uniform: was the item sold in the window?)
    by_time = np.argsort(ev_t, kind="stable")
    t_sorted, item_by_time = ev_t[by_time], ev_item[by_time]
    rep = np.repeat(np.arange(len(positives)), neg_ratio)
    t = pos_secs[rep] - t0
    span = int(max(ev_t.max() if len(ev_t) else 0, t.max() if len(t) else 0)) + 1
    item_keys = np.sort(ev_item * span + ev_t)
    w_start = t - window_days * _DAY_S
    lo, hi = np.searchsorted(t_sorted, w_start, "left"), np.searchsorted(t_sorted, t, "left")
    bas = pos_basket[rep]
    us = pos_us[rep] if exclude_bought_in_split else None

    def is_excluded(idx: np.ndarray, cand: np.ndarray) -> np.ndarray:
        out = _sorted_member(excluded, bas[idx] * n_items + cand)
        if exclude_bought_in_split:
            out |= _sorted_member(user_split_keys, us[idx] * n_items + cand)
        return out

    def finish(idx: np.ndarray) -> np.ndarray:
        """Exactly, once few draws remain: draw from the acceptable items of each window, or none.

        Conditional on acceptance, rejection sampling draws uniformly (``"uniform"``) or in
        proportion to sales (``"popularity"``) among the items of the window that are not
        excluded; drawing from that set directly gives the same distribution without rounds.
        Returns the drawn item per entry of ``idx``, -1 where no item is acceptable.
        """
        out = np.full(len(idx), -1, dtype=np.int64)
        key = pd.MultiIndex.from_arrays([bas[idx], lo[idx], hi[idx]] + ([us[idx]] if us is not None else []))
        codes, uniq = key.factorize()
        for c in range(len(uniq)):
            members = np.flatnonzero(codes == c)
            first = idx[members[0]]
            window = item_by_time[lo[first] : hi[first]]  # one entry per sale: popularity weights
            pool = window if method == "popularity" else np.unique(window)
            pool = pool[~is_excluded(np.full(len(pool), first), pool)]
            if len(pool):
                out[members] = pool[rng.integers(0, len(pool), size=len(members))]
        return out

    drawn = np.full(len(rep), -1, dtype=np.int64)
    todo = np.flatnonzero(hi > lo)  # an empty window: nothing on sale yet, no negative
    report = {"requested": int(len(rep)), "no_window": int(len(rep) - len(todo)), "impossible": 0,
              "exhausted": 0, "duplicates": 0, "kept": 0, "rounds": 0}
    checked = False
    for _ in range(max_rounds):
        if len(todo) == 0:
            break
        report["rounds"] += 1
        if method == "popularity":
            j = lo[todo] + np.floor(rng.random(len(todo)) * (hi[todo] - lo[todo])).astype(np.int64)
            cand = item_by_time[np.minimum(j, hi[todo] - 1)]
            ok = np.ones(len(todo), dtype=bool)
        else:
            cand = rng.integers(0, n_items, size=len(todo))
            ok = np.searchsorted(item_keys, cand * span + t[todo], "left") > np.searchsorted(
                item_keys, cand * span + w_start[todo], "left"
            )
        ok &= ~is_excluded(todo, cand)
        drawn[todo[ok]] = cand[ok]
        todo = todo[~ok]
        stalled = ok.mean() < 0.1 if len(ok) else False
        if not checked and 0 < len(todo) and (len(todo) <= 2000 or (stalled and len(todo) <= 20000)):
            checked = True  # few left: finish them exactly, dropping the draws that can never be accepted
            last = finish(todo)
            report["impossible"] = int((last < 0).sum())
            drawn[todo] = last
            todo = todo[:0]
    report["exhausted"] = int(len(todo))
    keep = drawn >= 0
    cols = ["invoice_no", "user_id", "ts", "country", "split"]
    neg = positives[cols].iloc[rep[keep]].reset_index(drop=True)
    neg.insert(2, "item_id", np.asarray(items)[drawn[keep]])
    neg["item_id"] = neg["item_id"].astype(positives["item_id"].dtype)
    out = neg.drop_duplicates(["invoice_no", "item_id"]).reset_index(drop=True)
    report["duplicates"] = int(len(neg) - len(out))
    report["kept"] = int(len(out))
    out.attrs["negative_sampling"] = report
    return out


# --- point-in-time features ---------------------------------------------------


def _seconds(ts) -> np.ndarray:
    return pd.DatetimeIndex(pd.to_datetime(np.asarray(ts))).as_unit("s").asi8


class _Sorted:
    """Events sorted by (code, time) with composite int64 keys ``code * span + t``."""

    def __init__(self, codes: np.ndarray, t: np.ndarray, span: int, tiebreak: np.ndarray | None = None):
        order = np.lexsort((tiebreak, t, codes) if tiebreak is not None else (t, codes))
        self.order = order
        self.codes = codes[order]
        self.t = t[order]
        self.span = span
        self.keys = self.codes * span + self.t

    def before(self, codes: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, stop): the events of ``codes`` strictly before ``t`` are ``[start, stop)``."""
        base = codes * self.span
        return np.searchsorted(self.keys, base, "left"), np.searchsorted(self.keys, base + t, "left")


def point_in_time_features(
    examples: pd.DataFrame,
    events: pd.DataFrame,
    *,
    history_len: int = 10,
    pop_windows: tuple[int, ...] = (7, 30),
) -> pd.DataFrame:
    """Features of each example from the events strictly before its ``ts`` (no per-row Python loop).

    Each family of events is sorted once by a composite int64 key
    ``code * span + seconds``; one :func:`numpy.searchsorted` per example
    then finds how many events of that user, item or (user, item) pair come
    strictly before ``ts``, and cumulative sums give counts and totals.

    Args:
        examples: frame with ``user_id`` (int), ``item_id`` (str), ``ts``
            (datetime64); users or items absent from ``events`` are fine
            (they get zero counts and NaN).
        events: :func:`purchase_events` frame (``user_id``, ``item_id``,
            ``invoice_no``, ``ts``, ``price``, ``spend``).
        history_len: cap of ``hist_items``.
        pop_windows: trailing windows in days for ``i_pop_<w>d``.

    Returns:
        Frame indexed like ``examples`` with the feature columns listed in
        the module docstring (``hist_items``, ``hist_len``, ``u_*``, ``i_*``,
        ``ui_*``, ``hour``, ``weekday``, ``month``).

    Raises:
        ValueError: missing columns or NaT in ``ts``.
    """
    for frame, name, cols in (
        (examples, "examples", ["user_id", "item_id", "ts"]),
        (events, "events", ["user_id", "item_id", "invoice_no", "ts", "price", "spend"]),
    ):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"point_in_time_features: {name} lacks columns {missing}")
    for frame, name in ((examples, "examples"), (events, "events")):
        if frame["ts"].isna().any():
            raise ValueError(f"point_in_time_features: {name} have NaT in ts")
    n = len(examples)
    max_w = max(pop_windows) if pop_windows else 0
    ex_s, ev_s = _seconds(examples["ts"]), _seconds(events["ts"])
    t0 = min(ex_s.min() if n else 0, ev_s.min() if len(ev_s) else 0) - (max_w + 1) * _DAY_S
    ex_t, ev_t = ex_s - t0, ev_s - t0
    span = int(max(ex_t.max() if n else 0, ev_t.max() if len(ev_t) else 0)) + 1

    users = pd.Index(np.union1d(events["user_id"].to_numpy(), examples["user_id"].to_numpy()))
    items = pd.Index(np.union1d(events["item_id"].astype(str).to_numpy(), examples["item_id"].astype(str).to_numpy()))
    if len(users) * len(items) * span >= 2**62:
        raise ValueError("point_in_time_features: too many users x items x seconds for int64 keys")
    ev_u = users.get_indexer(events["user_id"].to_numpy()).astype(np.int64)
    ev_i = items.get_indexer(events["item_id"].astype(str).to_numpy()).astype(np.int64)
    ex_u = users.get_indexer(examples["user_id"].to_numpy()).astype(np.int64)
    ex_i = items.get_indexer(examples["item_id"].astype(str).to_numpy()).astype(np.int64)
    out = pd.DataFrame(index=examples.index)

    # user level: one row per (user, invoice); computed once per distinct (user, ts)
    inv = (
        pd.DataFrame({"u": ev_u, "t": ev_t, "inv": events["invoice_no"].to_numpy(), "spend": events["spend"].to_numpy()})
        .groupby(["u", "t", "inv"], sort=True, as_index=False)
        .agg(n_lines=("spend", "size"), spend=("spend", "sum"))
    )
    inv_s = _Sorted(inv["u"].to_numpy(), inv["t"].to_numpy(), span)
    uq = pd.DataFrame({"u": ex_u, "t": ex_t})
    uq_unique = uq.drop_duplicates().reset_index(drop=True)
    uq_pos = pd.MultiIndex.from_frame(uq_unique).get_indexer(pd.MultiIndex.from_frame(uq))
    qu, qt = uq_unique["u"].to_numpy(), uq_unique["t"].to_numpy()
    start, stop = inv_s.before(qu, qt)
    n_inv = stop - start
    cs_lines = np.concatenate([[0], np.cumsum(inv["n_lines"].to_numpy()[inv_s.order])])
    cs_spend = np.concatenate([[0.0], np.cumsum(inv["spend"].to_numpy()[inv_s.order])])
    has = n_inv > 0
    last_t = np.where(has, inv_s.t[np.maximum(stop - 1, 0)], 0)
    first_t = np.where(has, inv_s.t[np.minimum(start, len(inv_s.t) - 1)] if len(inv_s.t) else 0, 0)
    user_feats = {
        "u_n_invoices": n_inv.astype(np.float64),
        "u_n_lines": (cs_lines[stop] - cs_lines[start]).astype(np.float64),
        "u_spend": cs_spend[stop] - cs_spend[start],
        "u_days_since_last": np.where(has, (qt - last_t) / _DAY_S, np.nan),
        "u_tenure_days": np.where(has, (qt - first_t) / _DAY_S, np.nan),
    }

    # sequence: the user's last items strictly before ts, newest first
    ev_s_sorted = _Sorted(ev_u, ev_t, span, tiebreak=ev_i)
    h_start, h_stop = ev_s_sorted.before(qu, qt)
    offs = np.arange(1, history_len + 1)
    pos = h_stop[:, None] - offs[None, :]
    valid = pos >= h_start[:, None]
    hist_codes = np.where(valid, ev_i[ev_s_sorted.order][np.maximum(pos, 0)] if len(ev_i) else -1, -1)
    lengths = valid.sum(1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    item_names = pa.array(np.asarray(items, dtype=object), pa.string())
    values = pa.DictionaryArray.from_arrays(pa.array(hist_codes[valid], pa.int32()), item_names).cast(pa.string())
    hist = pa.ListArray.from_arrays(pa.array(offsets), values).take(pa.array(uq_pos))
    out["hist_items"] = pd.Series(pd.arrays.ArrowExtensionArray(hist), index=examples.index, dtype=HIST_DTYPE)
    out["hist_len"] = lengths[uq_pos].astype(np.int64)
    for name, values_ in user_feats.items():
        out[name] = values_[uq_pos]

    # item level
    it_s = _Sorted(ev_i, ev_t, span)
    i_start, i_stop = it_s.before(ex_i, ex_t)
    out["i_pop_all"] = (i_stop - i_start).astype(np.float64)
    for w in pop_windows:
        w_start = np.searchsorted(it_s.keys, ex_i * span + ex_t - w * _DAY_S, "left")
        out[f"i_pop_{w}d"] = (i_stop - np.maximum(w_start, i_start)).astype(np.float64)
    # traffic grows towards Christmas: shares of all purchases travel across windows, raw counts do not
    all_t = np.sort(ev_t)
    n_all = np.searchsorted(all_t, ex_t, "left")
    out["i_share_all"] = 1000.0 * out["i_pop_all"].to_numpy() / np.maximum(n_all, 1)
    for w in pop_windows:
        n_w = n_all - np.searchsorted(all_t, ex_t - w * _DAY_S, "left")
        out[f"i_share_{w}d"] = 1000.0 * out[f"i_pop_{w}d"].to_numpy() / np.maximum(n_w, 1)
    i_has = i_stop > i_start
    price_sorted = events["price"].to_numpy()[it_s.order]
    out["i_price"] = np.where(i_has, price_sorted[np.maximum(i_stop - 1, 0)] if len(price_sorted) else 0, np.nan)
    first_it = it_s.t[np.minimum(i_start, max(len(it_s.t) - 1, 0))] if len(it_s.t) else np.zeros(n)
    out["i_age_days"] = np.where(i_has, (ex_t - first_it) / _DAY_S, np.nan)

    # user x item
    ui_s = _Sorted(ev_u * len(items) + ev_i, ev_t, span)
    p_start, p_stop = ui_s.before(ex_u * len(items) + ex_i, ex_t)
    p_has = p_stop > p_start
    out["ui_n_before"] = (p_stop - p_start).astype(np.float64)
    last_pair = ui_s.t[np.maximum(p_stop - 1, 0)] if len(ui_s.t) else np.zeros(n)
    out["ui_days_since_last"] = np.where(p_has, (ex_t - last_pair) / _DAY_S, np.nan)

    # context
    when = pd.DatetimeIndex(examples["ts"])
    out["hour"] = np.asarray(when.hour, dtype=np.int64)
    out["weekday"] = np.asarray(when.day_of_week, dtype=np.int64)
    out["month"] = np.asarray(when.month, dtype=np.int64)
    return out


# --- the dataset --------------------------------------------------------------


def _select_users(events: pd.DataFrame, max_users: int | None, seed: int) -> np.ndarray:
    users = np.sort(events["user_id"].unique())
    if max_users is None or max_users >= len(users):
        return users
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(users, size=max_users, replace=False))


def build_ctr_dataset(clean: pd.DataFrame, config: CtrDatasetConfig | None = None) -> pd.DataFrame:
    """Positives, seeded negatives, global time split, cold flags and point-in-time features.

    Args:
        clean: cleaned Online Retail (:func:`ecrec.data.load_clean_online_retail`).
        config: :class:`CtrDatasetConfig` (default one if ``None``).

    Returns:
        The CTR dataset, columns as in the module docstring. Same ``clean``
        and config give an identical frame.

    Raises:
        ValueError: ``clean`` lacks columns, or the split leaves no training data.
    """
    config = config or CtrDatasetConfig()
    events = purchase_events(clean)
    valid_start, test_start = split_dates(events["ts"], config.valid_days, config.test_days)
    events["split"] = assign_split(events["ts"], valid_start, test_start)
    keep_users = _select_users(events, config.max_users, config.seed)
    positives = events[events["user_id"].isin(keep_users)].reset_index(drop=True)
    negatives = sample_negatives(
        positives, events, neg_ratio=config.neg_ratio, method=config.negatives, seed=config.seed + 1,
        window_days=config.neg_window_days, exclude_bought_in_split=bool(config.neg_exclude_bought_in_split),
    )
    cols = ["invoice_no", "user_id", "item_id", "ts", "country", "split"]
    examples = pd.concat(
        [positives[cols].assign(label=np.int8(1)), negatives[cols].assign(label=np.int8(0))],
        ignore_index=True,
    )
    examples["label"] = examples["label"].astype(np.int8)
    examples = examples.sort_values(
        ["ts", "user_id", "invoice_no", "label", "item_id"],
        ascending=[True, True, True, False, True],
        kind="stable",
    ).reset_index(drop=True)
    # cold = no purchase in the train window of the WHOLE log (not only of the sampled users)
    train_events = events[events["split"] == "train"]
    examples["cold_user"] = ~examples["user_id"].isin(train_events["user_id"].unique())
    examples["cold_item"] = cold_items(events, examples["item_id"], valid_start)
    feats = point_in_time_features(
        examples, events, history_len=config.history_len, pop_windows=config.pop_windows
    )
    out = pd.concat([examples, feats], axis=1)
    front = ["user_id", "item_id", "ts", "invoice_no", "label", "split", "cold_user", "cold_item", "country"]
    out = out[front + [c for c in out.columns if c not in front]]
    out["split"] = out["split"].astype(str)
    out.attrs["negative_sampling"] = negatives.attrs.get("negative_sampling", {})
    return out


def _data_fingerprint(clean: pd.DataFrame) -> str:
    cols = [c for c in ("InvoiceNo", "StockCode", "InvoiceDate", "Quantity", "UnitPrice", "CustomerID") if c in clean]
    digest = pd.util.hash_pandas_object(clean[cols], index=False).to_numpy()
    return hashlib.sha256(digest.tobytes()).hexdigest()[:16]


# The functions whose code decides the cached frame; the helpers they call are found from their code.
_BUILDERS = ("build_ctr_dataset", "sample_negatives", "point_in_time_features", "purchase_events",
             "split_dates", "assign_split", "_write_dataset", "_read_dataset")


def _names_used(code: types.CodeType) -> set[str]:
    """Global names a code object (and the functions, classes and lambdas nested in it) refers to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_used(const)
    return names


def _code_of(obj) -> list[types.CodeType]:
    if isinstance(obj, type):
        return [f.__code__ for f in vars(obj).values() if isinstance(f, types.FunctionType)]
    return [obj.__code__]


def builder_sources() -> dict[str, str]:
    """Source of every function and class of this module that building the dataset runs.

    Starts from the builders (:func:`build_ctr_dataset`, :func:`sample_negatives`,
    :func:`point_in_time_features`, :func:`purchase_events`, :func:`split_dates`,
    :func:`assign_split`, the parquet writer and reader) and follows the
    module-level functions and classes they name (``_select_users``,
    ``_Sorted``, :class:`CtrDatasetConfig`...), transitively; module-level
    constants they name (``_DAY_S``, ``HIST_DTYPE``...) enter as their ``repr``.

    Returns:
        ``{name: source}``, sorted by name.
    """
    module = globals()
    out: dict[str, str] = {}
    todo = list(_BUILDERS)
    while todo:
        name = todo.pop()
        if name in out or name not in module:
            continue
        obj = module[name]
        if isinstance(obj, (types.FunctionType, type)) and getattr(obj, "__module__", None) == __name__:
            out[name] = inspect.getsource(obj)
            for code in _code_of(obj):
                todo += sorted(_names_used(code))
        elif isinstance(obj, (int, float, str, tuple, frozenset, pd.api.extensions.ExtensionDtype)):
            out[name] = repr(obj)
    return dict(sorted(out.items()))


@functools.cache
def _code_fingerprint() -> str:
    """Hash of :func:`builder_sources` (computed once per process: the source does not change under it)."""
    return hashlib.sha256(json.dumps(builder_sources(), sort_keys=True).encode()).hexdigest()[:16]


def dataset_key(clean: pd.DataFrame, config: CtrDatasetConfig) -> str:
    """16 hex digits from the config, the builder's code and a hash of ``clean``'s content.

    The code part hashes the source of every function that builds the
    dataset (:func:`builder_sources`), so an edit to any of them (a comment
    included) names a new cache file instead of reading a stale one; there is
    no version number to remember to bump.
    """
    payload = json.dumps(
        {"config": asdict(config), "code": _code_fingerprint(), "data": _data_fingerprint(clean)},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _read_dataset(path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return table.to_pandas(types_mapper=lambda t: HIST_DTYPE if pa.types.is_list(t) else None)


def _write_dataset(df: pd.DataFrame, path: Path) -> None:
    import pyarrow.parquet as pq

    # pandas' own metadata for an ArrowDtype list column cannot be read back by pandas 3
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(table, path)


def load_or_build_ctr_dataset(
    clean: pd.DataFrame,
    config: CtrDatasetConfig | None = None,
    cache_dir: str | Path = "cache",
    *,
    rebuild: bool = False,
) -> pd.DataFrame:
    """Read ``cache_dir/ctr_<key>.parquet`` if present, else build it and save it atomically.

    ``key`` is :func:`dataset_key` (config + the builder's source + data hash), so
    the chapters that pass the same config (03, 04, 06, 07: :func:`dataset_config`) share one file, and a
    changed config or data never reads a stale one. A ``ctr_<key>.json``
    beside it records the config and row counts.

    Returns:
        The frame :func:`build_ctr_dataset` returns (identical after a round trip).

    Raises:
        ValueError: as :func:`build_ctr_dataset`.
    """
    from ecrec.io import atomic_write, atomic_write_text

    config = config or CtrDatasetConfig()
    cache_dir = Path(cache_dir)
    key = dataset_key(clean, config)
    path = cache_dir / f"ctr_{key}.parquet"
    if path.is_file() and not rebuild:
        return _read_dataset(path)
    df = build_ctr_dataset(clean, config)
    atomic_write(path, lambda p: _write_dataset(df, p))
    summary = {
        "config": asdict(config),
        "code": _code_fingerprint(),
        "rows": len(df),
        "rows_by_split": df["split"].value_counts().to_dict(),
        "positives": int(df["label"].sum()),
        "negative_sampling": df.attrs.get("negative_sampling", {}),
    }
    atomic_write_text(cache_dir / f"ctr_{key}.json", json.dumps(summary, indent=2, default=int))
    return _read_dataset(path)


def item_catalog(clean: pd.DataFrame) -> pd.DataFrame:
    """One row per item: ``item_id`` (str), ``description`` (str), ``category`` (str), ``price`` (float64).

    ``category`` is the description's last word (mostly the product noun:
    HOLDER, BAG, MUG...), a cheap category from text. ``price`` is the median
    unit price over the whole log, in pounds: a catalog attribute for display
    and text prompts; models use the point-in-time ``i_price`` instead.

    Raises:
        ValueError: ``clean`` lacks StockCode, Description or UnitPrice.
    """
    missing = [c for c in ("StockCode", "Description", "UnitPrice") if c not in clean.columns]
    if missing:
        raise ValueError(f"item_catalog: missing columns {missing}")
    from ecrec.data import canonical_descriptions

    desc = canonical_descriptions(clean)
    price = clean.groupby("StockCode")["UnitPrice"].median()
    cat = pd.DataFrame({"item_id": price.index.astype(str), "price": price.to_numpy(np.float64)})
    cat["description"] = cat["item_id"].map(desc).fillna("").astype(str)
    words = cat["description"].str.upper().str.findall(r"[A-Z]+")
    cat["category"] = words.str[-1].fillna("UNKNOWN").astype(str)
    return cat[["item_id", "description", "category", "price"]].sort_values("item_id").reset_index(drop=True)


def _list_array(values: pd.Series) -> pa.ListArray:
    arr = pa.array(values.array) if isinstance(values.dtype, pd.ArrowDtype) else pa.array(list(values))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_list(arr.type):
        raise TypeError(f"expected a column of lists of item ids, got arrow type {arr.type}")
    return arr


def hist_matrix(hist_items: pd.Series, vocabulary: pd.Index, history_len: int) -> np.ndarray:
    """Pad ``hist_items`` into an (n, history_len) int64 matrix of positions in ``vocabulary``.

    Keeps the stored order (newest first) and the first ``history_len``
    items. Items not in ``vocabulary`` become -2, padding -1 (the caller maps
    them to its own unknown and padding indices).

    Raises:
        ValueError: ``history_len < 1``.
        TypeError: ``hist_items`` does not hold lists.
    """
    import pyarrow.compute as pc

    if history_len < 1:
        raise ValueError(f"history_len must be >= 1, got {history_len}")
    arr = _list_array(hist_items)
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(arr)
    vocab = pa.array(np.asarray(vocabulary, dtype=object), pa.string())
    codes = pc.index_in(flat.cast(pa.string()), value_set=vocab).fill_null(-2)
    codes = codes.to_numpy(zero_copy_only=False).astype(np.int64)
    row = np.repeat(np.arange(len(arr)), lengths)
    pos = np.arange(len(codes)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out = np.full((len(arr), history_len), -1, dtype=np.int64)
    keep = pos < history_len
    out[row[keep], pos[keep]] = codes[keep]
    return out


def text_history_similarity(
    df: pd.DataFrame, item_ids: pd.Index, vectors: np.ndarray, *, chunk: int = 65_536
) -> np.ndarray:
    """Cosine between each candidate's text vector and the mean text vector of the user's history.

    The history is the same for every row of an invoice, so its mean vector
    is computed once per invoice, then the cosine per row in chunks. 0 where
    the history is empty or the candidate has no vector. Point in time as
    ``hist_items`` is; the vectors come from item descriptions (static).

    Args:
        df: frame with ``item_id``, ``hist_items``, ``invoice_no``.
        item_ids: (m,) ids of the rows of ``vectors``.
        vectors: (m, d) item text vectors (e.g. MiniLM of descriptions).

    Returns:
        (n,) float64 in [-1, 1].

    Raises:
        ValueError: ``vectors`` rows do not match ``item_ids``.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(item_ids):
        raise ValueError(f"vectors must be (len(item_ids), d), got {vectors.shape} for {len(item_ids)} ids")
    item_ids = pd.Index(np.asarray(item_ids, dtype=object))
    table = np.vstack([vectors, np.zeros((1, vectors.shape[1]), np.float32)])  # last row: missing
    miss = len(vectors)
    inv_codes, _ = pd.factorize(df["invoice_no"].astype(str))
    first = pd.Series(np.arange(len(df))).groupby(inv_codes).first().to_numpy()
    hist = df["hist_items"].iloc[first]
    width = max(int(hist.map(len).max()) if len(hist) else 1, 1)
    hm = hist_matrix(hist, item_ids, width)
    hm = np.where(hm >= 0, hm, miss)
    counts = (hm != miss).sum(1, keepdims=True)
    mean = table[hm].sum(1) / np.maximum(counts, 1)
    norms = np.linalg.norm(mean, axis=1, keepdims=True)
    mean = (mean / np.maximum(norms, 1e-12)).astype(np.float32)
    cand = item_ids.get_indexer(df["item_id"].astype(str).to_numpy())
    cand = np.where(cand >= 0, cand, miss)
    out = np.empty(len(df), dtype=np.float64)
    for s in range(0, len(df), chunk):
        c = table[cand[s : s + chunk]]
        cn = np.linalg.norm(c, axis=1)
        h = mean[inv_codes[s : s + chunk]]
        out[s : s + chunk] = np.where(cn > 0, (c * h).sum(1) / np.maximum(cn, 1e-12), 0.0)
    return out


def add_item_attributes(
    df: pd.DataFrame,
    catalog: pd.DataFrame,
    text: tuple[pd.Index, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Join static item attributes and the history-vs-candidate features a model reads.

    Adds ``description`` and ``category`` (from :func:`item_catalog`; "" and
    "UNKNOWN" for items missing from it), ``seq_same_category`` (float64:
    how many of ``hist_items`` share the candidate's category) and, when
    ``text=(item_ids, vectors)`` is given, ``text_sim_hist``
    (:func:`text_history_similarity`). Returns a new frame; ``df`` is not modified.
    """
    import pyarrow.compute as pc

    out = df.copy()
    cat = catalog.set_index("item_id")
    out["description"] = out["item_id"].map(cat["description"]).fillna("").astype(str)
    out["category"] = out["item_id"].map(cat["category"]).fillna("UNKNOWN").astype(str)
    categories = pd.Index(np.sort(cat["category"].unique()))
    item_cat = pd.Series(categories.get_indexer(cat["category"]), index=cat.index)
    arr = _list_array(out["hist_items"])
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pd.Index(np.asarray(pc.list_flatten(arr).to_numpy(zero_copy_only=False), dtype=object))
    flat_cat = item_cat.reindex(flat).fillna(-1).to_numpy(np.int64)
    cand_cat = item_cat.reindex(out["item_id"].astype(str)).fillna(-2).to_numpy(np.int64)
    row = np.repeat(np.arange(len(out)), lengths)
    match = flat_cat == cand_cat[row]
    out["seq_same_category"] = np.bincount(row[match], minlength=len(out)).astype(np.float64)
    if text is not None:
        out["text_sim_hist"] = text_history_similarity(out, text[0], text[1])
    return out
