"""Purchase events and the book's one global time split (chapter 03 onwards).

* :func:`purchase_events` (clean -> one row per (invoice, item): the positives
  and the history every feature is computed from);
* :func:`split_dates` (timestamps -> ``(valid_start, test_start)``) and
  :func:`assign_split` (timestamps -> ``"train"|"valid"|"test"``): one
  global time split, test last;
* :func:`cold_items`: the book's one definition of a cold item.

:mod:`ecrec.features` re-exports every name here (``from ecrec.features import
split_dates`` keeps working); :mod:`ecrec.negatives` and
:mod:`ecrec.pit_features` build on it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["SPLITS", "purchase_events", "split_dates", "assign_split", "cold_items"]

SPLITS = ("train", "valid", "test")
_DAY_S = 86_400


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



def _seconds(ts) -> np.ndarray:
    """Timestamps as int64 seconds since the epoch (naive times read as they are)."""
    return pd.DatetimeIndex(pd.to_datetime(np.asarray(ts))).as_unit("s").asi8

