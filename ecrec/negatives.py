"""Sampled negatives for chapter 03's CTR examples: items on sale, not in the basket.

* :func:`sample_negatives`: seeded ``"uniform"`` or ``"popularity"`` draws over
  the items sold in the days before each positive, the positive's own basket
  excluded. Built in named steps: :func:`_check_negative_inputs`, :func:`_prepare_draws`
  (the sorted keys every round looks its draws up in, :class:`_Draws`),
  :func:`_draw_rounds` (vectorised rejection sampling, finished exactly once
  few draws are left) and :func:`_negative_frame`.

:mod:`ecrec.features` re-exports :func:`sample_negatives` and
:data:`NEGATIVE_SAMPLING`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ecrec.events import _DAY_S, SPLITS, _seconds

__all__ = ["NEGATIVE_SAMPLING", "sample_negatives"]

NEGATIVE_SAMPLING = ("uniform", "popularity")


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
    _check_negative_inputs(positives, events, neg_ratio=neg_ratio, method=method, window_days=window_days,
                  max_rounds=max_rounds, exclude_bought_in_split=exclude_bought_in_split)
    rng = np.random.default_rng(seed)
    draws = _prepare_draws(positives, events, neg_ratio=neg_ratio, method=method, window_days=window_days,
                           exclude_bought_in_split=exclude_bought_in_split)
    drawn, report = _draw_rounds(draws, rng, max_rounds)
    return _negative_frame(positives, draws, drawn, report)



def _check_negative_inputs(positives: pd.DataFrame, events: pd.DataFrame, *, neg_ratio, method, window_days, max_rounds,
                  exclude_bought_in_split: bool) -> None:
    """Refuse what :func:`sample_negatives` cannot sample from (its ``Raises``)."""
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


@dataclass
class _Draws:
    """One entry per requested draw (``rep``: its positive) and the sorted keys the rounds look draws up in.

    Times are seconds since ``t0``; an item is its position in ``items``; a
    draw's candidate window is ``[w_start, t)`` and its events in time order
    are ``item_by_time[lo:hi]``.
    """

    method: str
    items: pd.Index
    rep: np.ndarray  # (m,) positive of each draw
    t: np.ndarray  # (m,) the positive's time
    w_start: np.ndarray  # (m,) start of its candidate window
    lo: np.ndarray  # (m,) first event of the window in item_by_time
    hi: np.ndarray  # (m,) one past its last event
    bas: np.ndarray  # (m,) the positive's basket
    us: np.ndarray | None  # (m,) user x split code (exclude_bought_in_split only)
    item_by_time: np.ndarray  # item of every event, in time order
    item_keys: np.ndarray  # sorted item * span + t of every event (uniform: sold in the window?)
    span: int
    excluded: np.ndarray  # sorted basket * n_items + item keys
    user_split_keys: np.ndarray | None  # sorted (user x split) * n_items + item keys

    def is_excluded(self, idx: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Whether item ``cand`` is excluded for draw ``idx`` (its basket, or its user's split window)."""
        n_items = len(self.items)
        out = _sorted_member(self.excluded, self.bas[idx] * n_items + cand)
        if self.us is not None:
            out |= _sorted_member(self.user_split_keys, self.us[idx] * n_items + cand)
        return out

    def finish(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Exactly, once few draws remain: draw from the acceptable items of each window, or none.

        Conditional on acceptance, rejection sampling draws uniformly (``"uniform"``) or in
        proportion to sales (``"popularity"``) among the items of the window that are not
        excluded; drawing from that set directly gives the same distribution without rounds.
        Returns the drawn item per entry of ``idx``, -1 where no item is acceptable.
        """
        out = np.full(len(idx), -1, dtype=np.int64)
        key = pd.MultiIndex.from_arrays([self.bas[idx], self.lo[idx], self.hi[idx]]
                                        + ([self.us[idx]] if self.us is not None else []))
        codes, uniq = key.factorize()
        for c in range(len(uniq)):
            members = np.flatnonzero(codes == c)
            first = idx[members[0]]
            window = self.item_by_time[self.lo[first] : self.hi[first]]  # one entry per sale: popularity weights
            pool = window if self.method == "popularity" else np.unique(window)
            pool = pool[~self.is_excluded(np.full(len(pool), first), pool)]
            if len(pool):
                out[members] = pool[rng.integers(0, len(pool), size=len(members))]
        return out

    def draw(self, todo: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One rejection round for draws ``todo``: (candidate items, accepted mask)."""
        lo, hi = self.lo[todo], self.hi[todo]
        if self.method == "popularity":  # a uniformly drawn sale of the window
            j = lo + np.floor(rng.random(len(todo)) * (hi - lo)).astype(np.int64)
            cand = self.item_by_time[np.minimum(j, hi - 1)]
            ok = np.ones(len(todo), dtype=bool)
        else:  # a uniformly drawn item, accepted if it sold in the window
            cand = rng.integers(0, len(self.items), size=len(todo))
            ok = np.searchsorted(self.item_keys, cand * self.span + self.t[todo], "left") > np.searchsorted(
                self.item_keys, cand * self.span + self.w_start[todo], "left"
            )
        ok &= ~self.is_excluded(todo, cand)
        return cand, ok


def _prepare_draws(positives: pd.DataFrame, events: pd.DataFrame, *, neg_ratio: int, method: str,
                   window_days: int, exclude_bought_in_split: bool) -> _Draws:
    """Items, baskets, exclusion keys and candidate windows, each sorted once for every round."""
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
    user_split_keys = pos_us = None
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
    return _Draws(method=method, items=items, rep=rep, t=t, w_start=w_start, lo=lo, hi=hi, bas=pos_basket[rep],
                  us=pos_us[rep] if exclude_bought_in_split else None, item_by_time=item_by_time,
                  item_keys=item_keys, span=span, excluded=excluded, user_split_keys=user_split_keys)


def _draw_rounds(d: _Draws, rng: np.random.Generator, max_rounds: int) -> tuple[np.ndarray, dict[str, int]]:
    """Rejection rounds, finished exactly once few draws remain: (m,) item per draw (-1: none) and the report."""
    drawn = np.full(len(d.rep), -1, dtype=np.int64)
    todo = np.flatnonzero(d.hi > d.lo)  # an empty window: nothing on sale yet, no negative
    report = {"requested": int(len(d.rep)), "no_window": int(len(d.rep) - len(todo)), "impossible": 0,
              "exhausted": 0, "duplicates": 0, "kept": 0, "rounds": 0}
    checked = False
    for _ in range(max_rounds):
        if len(todo) == 0:
            break
        report["rounds"] += 1
        cand, ok = d.draw(todo, rng)
        drawn[todo[ok]] = cand[ok]
        todo = todo[~ok]
        stalled = ok.mean() < 0.1 if len(ok) else False
        if not checked and 0 < len(todo) and (len(todo) <= 2000 or (stalled and len(todo) <= 20000)):
            checked = True  # few left: finish them exactly, dropping the draws that can never be accepted
            last = d.finish(todo, rng)
            report["impossible"] = int((last < 0).sum())
            drawn[todo] = last
            todo = todo[:0]
    report["exhausted"] = int(len(todo))
    return drawn, report


def _negative_frame(positives: pd.DataFrame, d: _Draws, drawn: np.ndarray, report: dict[str, int]) -> pd.DataFrame:
    """One row per accepted draw, its positive's columns and the drawn item; an item twice per invoice kept once."""
    keep = drawn >= 0
    cols = ["invoice_no", "user_id", "ts", "country", "split"]
    neg = positives[cols].iloc[d.rep[keep]].reset_index(drop=True)
    neg.insert(2, "item_id", np.asarray(d.items)[drawn[keep]])
    neg["item_id"] = neg["item_id"].astype(positives["item_id"].dtype)
    out = neg.drop_duplicates(["invoice_no", "item_id"]).reset_index(drop=True)
    report["duplicates"] = int(len(neg) - len(out))
    report["kept"] = int(len(out))
    out.attrs["negative_sampling"] = report
    return out
