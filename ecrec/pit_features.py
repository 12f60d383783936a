"""Point-in-time features of chapter 03's CTR examples: only events strictly before each example.

* :func:`point_in_time_features` (examples + event log -> user, history, item,
  user x item and context features), built in named steps: :func:`_user_features`,
  :func:`_history`, :func:`_item_features`, :func:`_pair_features`,
  :func:`_context_features`, each on :class:`_Sorted` event keys (no per-row
  Python loop).

:mod:`ecrec.features` re-exports :func:`point_in_time_features` and
:data:`HIST_DTYPE`; the columns are listed in its module docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from ecrec.events import _DAY_S, _seconds

__all__ = ["HIST_DTYPE", "point_in_time_features"]

HIST_DTYPE = pd.ArrowDtype(pa.list_(pa.string()))


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
    _check_pit_inputs(examples, events)
    c = _codes(examples, events, pop_windows)
    out = pd.DataFrame(index=examples.index)
    # per distinct (user, ts): the user's history and invoices are the same for every row of that moment
    uq = pd.DataFrame({"u": c.ex_u, "t": c.ex_t})
    uq_unique = uq.drop_duplicates().reset_index(drop=True)
    uq_pos = pd.MultiIndex.from_frame(uq_unique).get_indexer(pd.MultiIndex.from_frame(uq))
    qu, qt = uq_unique["u"].to_numpy(), uq_unique["t"].to_numpy()
    user_feats = _user_features(events, c, qu, qt)
    hist, lengths = _history(c, qu, qt, history_len)
    out["hist_items"] = pd.Series(pd.arrays.ArrowExtensionArray(hist.take(pa.array(uq_pos))),
                                  index=examples.index, dtype=HIST_DTYPE)
    out["hist_len"] = lengths[uq_pos].astype(np.int64)
    for name, values_ in user_feats.items():
        out[name] = values_[uq_pos]
    for part in (_item_features(events, c, pop_windows), _pair_features(c), _context_features(examples)):
        for name, values_ in part.items():
            out[name] = values_
    return out


def _check_pit_inputs(examples: pd.DataFrame, events: pd.DataFrame) -> None:
    """Refuse missing columns and NaT times (:func:`point_in_time_features`' ``Raises``)."""
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


@dataclass
class _Codes:
    """Users and items as int64 codes and times as seconds since ``t0``, for the events (``ev_*``) and examples."""

    users: pd.Index
    items: pd.Index
    span: int  # every time is in [0, span)
    ev_u: np.ndarray
    ev_i: np.ndarray
    ev_t: np.ndarray
    ex_u: np.ndarray
    ex_i: np.ndarray
    ex_t: np.ndarray


def _codes(examples: pd.DataFrame, events: pd.DataFrame, pop_windows: tuple[int, ...]) -> _Codes:
    """Shared codes of users and items and a time origin early enough for the longest window."""
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
    return _Codes(
        users=users, items=items, span=span, ev_t=ev_t, ex_t=ex_t,
        ev_u=users.get_indexer(events["user_id"].to_numpy()).astype(np.int64),
        ev_i=items.get_indexer(events["item_id"].astype(str).to_numpy()).astype(np.int64),
        ex_u=users.get_indexer(examples["user_id"].to_numpy()).astype(np.int64),
        ex_i=items.get_indexer(examples["item_id"].astype(str).to_numpy()).astype(np.int64),
    )


def _user_features(events: pd.DataFrame, c: _Codes, qu: np.ndarray, qt: np.ndarray) -> dict[str, np.ndarray]:
    """``u_*`` (frequency, lines, spend, recency, tenure) per distinct (user ``qu``, time ``qt``)."""
    # one row per (user, invoice)
    inv = (
        pd.DataFrame({"u": c.ev_u, "t": c.ev_t, "inv": events["invoice_no"].to_numpy(),
                      "spend": events["spend"].to_numpy()})
        .groupby(["u", "t", "inv"], sort=True, as_index=False)
        .agg(n_lines=("spend", "size"), spend=("spend", "sum"))
    )
    inv_s = _Sorted(inv["u"].to_numpy(), inv["t"].to_numpy(), c.span)
    start, stop = inv_s.before(qu, qt)
    n_inv = stop - start
    cs_lines = np.concatenate([[0], np.cumsum(inv["n_lines"].to_numpy()[inv_s.order])])
    cs_spend = np.concatenate([[0.0], np.cumsum(inv["spend"].to_numpy()[inv_s.order])])
    has = n_inv > 0
    last_t = np.where(has, inv_s.t[np.maximum(stop - 1, 0)], 0)
    first_t = np.where(has, inv_s.t[np.minimum(start, len(inv_s.t) - 1)] if len(inv_s.t) else 0, 0)
    return {
        "u_n_invoices": n_inv.astype(np.float64),
        "u_n_lines": (cs_lines[stop] - cs_lines[start]).astype(np.float64),
        "u_spend": cs_spend[stop] - cs_spend[start],
        "u_days_since_last": np.where(has, (qt - last_t) / _DAY_S, np.nan),
        "u_tenure_days": np.where(has, (qt - first_t) / _DAY_S, np.nan),
    }


def _history(c: _Codes, qu: np.ndarray, qt: np.ndarray, history_len: int) -> tuple[pa.ListArray, np.ndarray]:
    """The user's last ``history_len`` items strictly before ``qt``, newest first: (list array, lengths)."""
    ev_s_sorted = _Sorted(c.ev_u, c.ev_t, c.span, tiebreak=c.ev_i)
    h_start, h_stop = ev_s_sorted.before(qu, qt)
    offs = np.arange(1, history_len + 1)
    pos = h_stop[:, None] - offs[None, :]
    valid = pos >= h_start[:, None]
    hist_codes = np.where(valid, c.ev_i[ev_s_sorted.order][np.maximum(pos, 0)] if len(c.ev_i) else -1, -1)
    lengths = valid.sum(1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    item_names = pa.array(np.asarray(c.items, dtype=object), pa.string())
    values = pa.DictionaryArray.from_arrays(pa.array(hist_codes[valid], pa.int32()), item_names).cast(pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values), lengths


def _item_features(events: pd.DataFrame, c: _Codes, pop_windows: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``i_*``: popularity (all time and per window), shares of all purchases, last price, age."""
    n, ex_i, ex_t, span = len(c.ex_t), c.ex_i, c.ex_t, c.span
    out: dict[str, np.ndarray] = {}
    it_s = _Sorted(c.ev_i, c.ev_t, span)
    i_start, i_stop = it_s.before(ex_i, ex_t)
    out["i_pop_all"] = (i_stop - i_start).astype(np.float64)
    for w in pop_windows:
        w_start = np.searchsorted(it_s.keys, ex_i * span + ex_t - w * _DAY_S, "left")
        out[f"i_pop_{w}d"] = (i_stop - np.maximum(w_start, i_start)).astype(np.float64)
    # traffic grows towards Christmas: shares of all purchases travel across windows, raw counts do not
    all_t = np.sort(c.ev_t)
    n_all = np.searchsorted(all_t, ex_t, "left")
    out["i_share_all"] = 1000.0 * out["i_pop_all"] / np.maximum(n_all, 1)
    for w in pop_windows:
        n_w = n_all - np.searchsorted(all_t, ex_t - w * _DAY_S, "left")
        out[f"i_share_{w}d"] = 1000.0 * out[f"i_pop_{w}d"] / np.maximum(n_w, 1)
    i_has = i_stop > i_start
    price_sorted = events["price"].to_numpy()[it_s.order]
    out["i_price"] = np.where(i_has, price_sorted[np.maximum(i_stop - 1, 0)] if len(price_sorted) else 0, np.nan)
    first_it = it_s.t[np.minimum(i_start, max(len(it_s.t) - 1, 0))] if len(it_s.t) else np.zeros(n)
    out["i_age_days"] = np.where(i_has, (ex_t - first_it) / _DAY_S, np.nan)
    return out


def _pair_features(c: _Codes) -> dict[str, np.ndarray]:
    """``ui_*``: how often and how long ago this user bought this item before ``ts``."""
    n_items = len(c.items)
    ui_s = _Sorted(c.ev_u * n_items + c.ev_i, c.ev_t, c.span)
    p_start, p_stop = ui_s.before(c.ex_u * n_items + c.ex_i, c.ex_t)
    p_has = p_stop > p_start
    last_pair = ui_s.t[np.maximum(p_stop - 1, 0)] if len(ui_s.t) else np.zeros(len(c.ex_t))
    return {"ui_n_before": (p_stop - p_start).astype(np.float64),
            "ui_days_since_last": np.where(p_has, (c.ex_t - last_pair) / _DAY_S, np.nan)}


def _context_features(examples: pd.DataFrame) -> dict[str, np.ndarray]:
    """``hour``, ``weekday`` (Monday 0) and ``month`` of ``ts``, int64."""
    when = pd.DatetimeIndex(examples["ts"])
    return {"hour": np.asarray(when.hour, dtype=np.int64),
            "weekday": np.asarray(when.day_of_week, dtype=np.int64),
            "month": np.asarray(when.month, dtype=np.int64)}
