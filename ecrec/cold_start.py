"""Strict item cold start: a simulated catalogue refresh (issue 17, item 2).

The log has few **natural** cold items (:func:`ecrec.features.cold_items`:
nobody bought them before the cut-off), too few to measure how well a model
ranks or retrieves products it has never seen. This module **simulates** a
catalogue refresh instead, as the item cold-start splits of DropoutNet
(Volkovs, Yu and Poutanen, "DropoutNet: Addressing Cold Start in Recommender
Systems", NeurIPS 2017) do:

1. Candidates: the items sold both before ``test_start`` and in the test
   window (an item that never sells in the test window cannot be evaluated;
   an item first sold in it is already a natural cold item).
2. Hold out a seeded random ``share`` of them (default 20%).
3. Remove **every** interaction with a held-out item before ``test_start``
   (train and validation windows alike) from everything the models learn
   from: events, histories, popularity counts, negatives. Test-window rows
   stay untouched, so the held-out items keep their test purchases.
4. Evaluate on the test rows (ranking) or test positives (recall) of the
   held-out items only (:func:`cold_test_mask`).

How it differs from the natural cold items: the held-out items are
established products (they sold before, so their descriptions, prices and
categories look like the warm catalogue's, and they tend to be more popular
than truly new products); a real refresh brings products the shop never sold.
Say so where a chapter reports these numbers.

Two ways in, one rule:

* :func:`training_events` filters :func:`ecrec.features.purchase_events`;
* :func:`strip_clean_log` filters the cleaned Online Retail log itself, so
  that :func:`ecrec.features.build_ctr_dataset` and
  :func:`ecrec.recall_data.build_recall_data` built from it learn nothing
  about the held-out items (their point-in-time features, the histories and
  the negatives are computed from the stripped log).

Usage (chapter 03's split; ``clean`` from ``ecrec.data.load_clean_online_retail``)::

    events = features.purchase_events(clean)
    _, test_start = features.split_dates(events["ts"])
    refresh = cold_start.hold_out_items(events, test_start, share=0.2, seed=seed)
    stripped = cold_start.strip_clean_log(clean, refresh)
    # ranking: examples whose train/valid rows never show a held-out item
    data = features.load_or_build_ctr_dataset(stripped, config, cache_dir)
    cold_rows = cold_start.cold_test_mask(data, refresh)  # AUC/GAUC on these test rows
    # recall: same item indexes as the full catalogue; positives of held-out items only
    rd = recall_data.build_recall_data(stripped, test_start, catalogue=clean)
    keep = refresh.is_held_out(rd.items["item_id"])  # columns of rd.relevant_* to keep
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ecrec.features import cold_items
from ecrec.schema import ITEM_ID, TS

__all__ = ["ItemColdStart", "hold_out_items", "training_events", "strip_clean_log", "cold_test_mask"]


@dataclass(frozen=True)
class ItemColdStart:
    """A simulated catalogue refresh: which items are held out, and from when.

    Attributes:
        held_out: ``(k,)`` str array, sorted: the held-out item ids (stock codes).
        candidates: ``(m,)`` str array, sorted: the items sold both before
            ``test_start`` and in the test window; ``held_out`` is drawn from them.
        natural_cold: ``(c,)`` str array, sorted: items sold in the test window
            and never before it (the log's own cold items, for comparison).
        test_start: the start of the test window; interactions with held-out
            items before it are removed.
        share: the requested share of ``candidates`` held out.
        seed: the seed of the draw.
    """

    held_out: np.ndarray
    candidates: np.ndarray
    natural_cold: np.ndarray
    test_start: pd.Timestamp
    share: float
    seed: int

    def is_held_out(self, items) -> np.ndarray:
        """``(n,)`` bool: whether each item id of ``items`` (shape ``(n,)``) is held out."""
        return pd.Index(np.asarray(items).astype(str)).isin(self.held_out)

    def summary(self) -> dict:
        """JSON-ready counts for a chapter's ``metrics.json``."""
        return {"share": self.share, "seed": self.seed, "test_start": str(self.test_start),
                "candidates": int(len(self.candidates)), "held_out": int(len(self.held_out)),
                "natural_cold": int(len(self.natural_cold))}


def _check_columns(frame: pd.DataFrame, cols: tuple[str, ...], where: str, fix: str) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: missing columns {missing}; {fix}")


def _timestamp(test_start, ts: pd.Series, where: str) -> pd.Timestamp:
    """``test_start`` as a Timestamp that compares with ``ts`` (both naive or both aware)."""
    try:
        t = pd.Timestamp(test_start)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: test_start {test_start!r} is not a timestamp ({e})") from None
    if t is pd.NaT:
        raise ValueError(f"{where}: test_start is NaT; pass the second value of ecrec.features.split_dates")
    ts_aware = getattr(ts.dt, "tz", None) is not None
    if ts_aware != (t.tz is not None):
        raise ValueError(f"{where}: test_start {t} and the timestamps must both be naive or both time-zone-aware")
    return t


def hold_out_items(events: pd.DataFrame, test_start, *, share: float = 0.2, seed: int = 42) -> ItemColdStart:
    """Draw the held-out items of a simulated catalogue refresh (DropoutNet's item cold-start split).

    Args:
        events: purchase events with ``item_id`` and ``ts``
            (:func:`ecrec.features.purchase_events`), the whole log.
        test_start: start of the test window, e.g. the second value of
            :func:`ecrec.features.split_dates` (chapter 03's split).
        share: the share of candidate items to hold out, in (0, 1);
            ``round(share * m)`` items of the ``m`` candidates.
        seed: seed of the draw (an integer >= 0). The same events, test_start,
            share and seed give the same items, whatever the events' row order.

    Returns:
        An :class:`ItemColdStart`.

    Raises:
        ValueError: missing columns, a share outside (0, 1), a bad seed, a
            test_start that is not a timestamp or does not split the log
            (no candidate), or a share too small to hold out one candidate.
    """
    if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 < float(share) < 1:
        raise ValueError(f"share must be a number in (0, 1), e.g. 0.2 for 20% of the items; got {share!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    _check_columns(events, (ITEM_ID, TS), "hold_out_items", "pass ecrec.features.purchase_events(clean)")
    t = _timestamp(test_start, events[TS], "hold_out_items")
    before = events[TS] < t
    items = events[ITEM_ID].astype(str)
    sold_before = pd.unique(items[before])
    sold_test = np.sort(pd.unique(items[~before]).astype(str))
    candidates = np.sort(np.intersect1d(sold_before, sold_test).astype(str))
    if len(candidates) == 0:
        raise ValueError(f"hold_out_items: no item sells both before and after test_start {t}; "
                         "is test_start inside the log (ecrec.features.split_dates)?")
    n = int(round(float(share) * len(candidates)))
    if n < 1:
        raise ValueError(f"hold_out_items: share {share} of {len(candidates)} candidate items holds out none; "
                         f"use a share >= {0.5 / len(candidates):.3g}")
    # candidates are sorted, so the draw depends on the seed only, never on row order
    held = np.sort(np.random.default_rng(int(seed)).choice(candidates, size=n, replace=False))
    natural = sold_test[cold_items(events.assign(**{ITEM_ID: items}), sold_test, t)]
    return ItemColdStart(held_out=held, candidates=candidates, natural_cold=np.sort(natural), test_start=t,
                         share=float(share), seed=int(seed))


def training_events(events: pd.DataFrame, split: ItemColdStart) -> pd.DataFrame:
    """The events with every interaction with a held-out item before ``test_start`` removed.

    Args:
        events: purchase events with ``item_id`` and ``ts`` (any extra columns
            are kept), shape ``(n, ...)``.
        split: from :func:`hold_out_items`.

    Returns:
        A copy of the kept rows, order and index kept (``(n', ...)``, ``n' <= n``).
        Rows at or after ``test_start`` are all kept.

    Raises:
        ValueError: ``events`` lacks ``item_id`` or ``ts``.
    """
    _check_columns(events, (ITEM_ID, TS), "training_events", "pass ecrec.features.purchase_events(clean)")
    _timestamp(split.test_start, events[TS], "training_events")
    drop = split.is_held_out(events[ITEM_ID]) & (events[TS] < split.test_start).to_numpy()
    return events.loc[~drop].copy()


def strip_clean_log(clean: pd.DataFrame, split: ItemColdStart) -> pd.DataFrame:
    """The cleaned Online Retail log without any line of a held-out item before ``test_start``.

    Build chapter 03's dataset (:func:`ecrec.features.build_ctr_dataset`) or
    chapter 05's protocol (:func:`ecrec.recall_data.build_recall_data`) from
    the result, and nothing learnt (features, histories, popularity,
    negatives) has seen a held-out item before the test window. An invoice's
    time is its earliest line's, as in :func:`ecrec.features.purchase_events`;
    every kept line gets that time, so that an invoice that loses its first
    line keeps its moment and ``purchase_events`` of the result equals
    :func:`training_events` of ``purchase_events(clean)``.

    Args:
        clean: the cleaned log (``ecrec.data.load_clean_online_retail``), with
            at least InvoiceNo, StockCode and InvoiceDate.
        split: from :func:`hold_out_items`.

    Returns:
        A copy of the kept lines, order and index kept, ``InvoiceDate`` set
        to the invoice's time.

    Raises:
        ValueError: ``clean`` lacks one of those columns.
    """
    _check_columns(clean, ("InvoiceNo", "StockCode", "InvoiceDate"), "strip_clean_log",
                   "pass the cleaned Online Retail log (ecrec.data.load_clean_online_retail)")
    ts = clean.groupby("InvoiceNo")["InvoiceDate"].transform("min")
    _timestamp(split.test_start, ts, "strip_clean_log")
    drop = split.is_held_out(clean["StockCode"]) & (ts < split.test_start).to_numpy()
    out = clean.loc[~drop].copy()
    out["InvoiceDate"] = ts[~drop]
    return out


def cold_test_mask(rows: pd.DataFrame, split: ItemColdStart) -> np.ndarray:
    """``(n,)`` bool: the rows to evaluate strict item cold start on.

    True for a row at or after ``test_start`` whose item is held out: for
    ranking, chapter 03's test examples (positives and negatives) of held-out
    items; for recall, the test purchases (the positives) of held-out items.

    Args:
        rows: ``(n, ...)`` frame with ``item_id`` and ``ts`` (CTR examples or events).
        split: from :func:`hold_out_items`.

    Raises:
        ValueError: ``rows`` lacks ``item_id`` or ``ts``.
    """
    _check_columns(rows, (ITEM_ID, TS), "cold_test_mask", "pass CTR examples or purchase events")
    _timestamp(split.test_start, rows[TS], "cold_test_mask")
    return split.is_held_out(rows[ITEM_ID]) & (rows[TS] >= split.test_start).to_numpy()
