"""ecrec.cold_start: the strict item cold-start protocol (a simulated catalogue refresh)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecrec import cold_start as C
from ecrec import features as F

T0 = pd.Timestamp("2011-02-01")


def _clean(rows):
    """A tiny cleaned log: (invoice, customer, stock code, 'YYYY-MM-DD HH:MM')."""
    df = pd.DataFrame(rows, columns=["InvoiceNo", "CustomerID", "StockCode", "InvoiceDate"])
    df["InvoiceDate"] = pd.to_datetime(df["InvoiceDate"])
    df["CustomerID"] = df["CustomerID"].astype("Int64")
    df["Quantity"] = 1
    df["UnitPrice"] = 1.0
    df["Description"] = "ITEM " + df["StockCode"]
    df["Country"] = "United Kingdom"
    return df


# Items A-E sell before and after T0 (the candidates), F only before, G only after (natural cold).
# Invoice 10 straddles midnight: its time is its first line's (before T0), as in purchase_events.
LOG = _clean(
    [
        ("1", 10, "A", "2011-01-05 10:00"),
        ("1", 10, "B", "2011-01-05 10:00"),
        ("2", 11, "C", "2011-01-10 10:00"),
        ("3", 11, "D", "2011-01-12 10:00"),
        ("4", 12, "E", "2011-01-20 10:00"),
        ("5", 12, "F", "2011-01-25 10:00"),
        ("9", 13, "A", "2011-01-31 23:58"),
        ("10", 13, "C", "2011-01-31 23:59"),
        ("10", 13, "C", "2011-02-01 00:01"),
        ("6", 10, "A", "2011-02-02 10:00"),
        ("6", 10, "C", "2011-02-02 10:00"),
        ("7", 11, "B", "2011-02-03 10:00"),
        ("7", 11, "D", "2011-02-03 10:00"),
        ("8", 12, "E", "2011-02-05 10:00"),
        ("8", 12, "G", "2011-02-05 10:00"),
    ]
)
EVENTS = F.purchase_events(LOG)


def _fixed(held=("A", "C")) -> C.ItemColdStart:
    """A split with hand-chosen held-out items, to hand-compute what is removed."""
    return C.ItemColdStart(held_out=np.array(sorted(held)), candidates=np.array(list("ABCDE")),
                           natural_cold=np.array(["G"]), test_start=T0, share=0.4, seed=0)


def test_candidates_natural_cold_and_count():
    split = C.hold_out_items(EVENTS, T0, share=0.4, seed=1)
    assert split.candidates.tolist() == list("ABCDE")  # F never sells after T0, G never before
    assert split.natural_cold.tolist() == ["G"]
    assert len(split.held_out) == 2  # round(0.4 * 5)
    assert set(split.held_out) <= set("ABCDE") and list(split.held_out) == sorted(split.held_out)
    assert len(C.hold_out_items(EVENTS, T0, share=0.2, seed=1).held_out) == 1  # round(0.2 * 5)
    assert split.summary() == {"share": 0.4, "seed": 1, "test_start": "2011-02-01 00:00:00", "candidates": 5,
                               "held_out": 2, "natural_cold": 1}


def test_draw_is_deterministic_order_free_and_seeded():
    a = C.hold_out_items(EVENTS, T0, share=0.4, seed=7)
    shuffled = EVENTS.sample(frac=1.0, random_state=3)
    assert a.held_out.tolist() == C.hold_out_items(shuffled, T0, share=0.4, seed=7).held_out.tolist()
    draws = {tuple(C.hold_out_items(EVENTS, T0, share=0.4, seed=s).held_out) for s in range(40)}
    assert len(draws) > 1  # the seed matters
    assert set().union(*draws) == set("ABCDE")  # every candidate can be drawn


def test_training_events_hand_computed():
    kept = C.training_events(EVENTS, _fixed())
    # before T0 the events are (1,A) (1,B) (2,C) (3,D) (4,E) (5,F) (9,A) (10,C); A and C go
    before = kept[kept["ts"] < T0]
    assert sorted(zip(before["invoice_no"], before["item_id"], strict=True)) == [("1", "B"), ("3", "D"), ("4", "E"), ("5", "F")]
    # the six test-window events stay, held-out items included
    pd.testing.assert_frame_equal(kept[kept["ts"] >= T0], EVENTS[EVENTS["ts"] >= T0])
    assert len(kept) == 10 and len(EVENTS) == 14


def test_strip_clean_log_hand_computed_and_agrees_with_events():
    stripped = C.strip_clean_log(LOG, _fixed())
    # lines 1/A, 2/C, 9/A and both lines of invoice 10 (its time is 23:59, before T0) go
    assert len(stripped) == 10 and "10" not in set(stripped["InvoiceNo"]) and "9" not in set(stripped["InvoiceNo"])
    # an invoice that loses its first line keeps its moment
    late = _clean([("1", 10, "A", "2011-01-05 10:00"), ("1", 10, "B", "2011-01-05 10:02")])
    assert C.strip_clean_log(late, _fixed())["InvoiceDate"].tolist() == [pd.Timestamp("2011-01-05 10:00")]
    pd.testing.assert_frame_equal(F.purchase_events(stripped), C.training_events(EVENTS, _fixed()).reset_index(drop=True))


def test_cold_test_mask_hand_computed():
    mask = C.cold_test_mask(EVENTS, _fixed())
    assert sorted(zip(EVENTS.loc[mask, "invoice_no"], EVENTS.loc[mask, "item_id"], strict=True)) == [("6", "A"), ("6", "C")]
    assert mask.dtype == bool and mask.shape == (len(EVENTS),)


@pytest.mark.parametrize("share", [0, 1, 1.5, -0.1, True, "0.2", None])
def test_bad_share(share):
    with pytest.raises(ValueError, match="share must be a number in"):
        C.hold_out_items(EVENTS, T0, share=share)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3"])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed must be an integer"):
        C.hold_out_items(EVENTS, T0, seed=seed)


def test_share_too_small_and_no_candidates_and_bad_inputs():
    with pytest.raises(ValueError, match="holds out none; use a share >= 0.1"):
        C.hold_out_items(EVENTS, T0, share=0.05)
    with pytest.raises(ValueError, match="no item sells both before and after"):
        C.hold_out_items(EVENTS, "2012-01-01")
    with pytest.raises(ValueError, match=r"missing columns \['ts'\]"):
        C.hold_out_items(EVENTS.drop(columns="ts"), T0)
    with pytest.raises(ValueError, match="not a timestamp"):
        C.hold_out_items(EVENTS, "not a date")
    with pytest.raises(ValueError, match="both be naive or both time-zone-aware"):
        C.hold_out_items(EVENTS, T0.tz_localize("Europe/London"))
    with pytest.raises(ValueError, match=r"missing columns \['item_id'\]"):
        C.training_events(EVENTS.drop(columns="item_id"), _fixed())
    with pytest.raises(ValueError, match=r"missing columns \['StockCode'\]"):
        C.strip_clean_log(LOG.drop(columns="StockCode"), _fixed())
    with pytest.raises(ValueError, match=r"missing columns \['ts'\]"):
        C.cold_test_mask(EVENTS.drop(columns="ts"), _fixed())


@pytest.fixture(scope="module")
def real():
    from ecrec.data import load_clean_online_retail

    clean, _ = load_clean_online_retail()
    return clean


def test_real_log_invariants(real):
    events = F.purchase_events(real)
    _, test_start = F.split_dates(events["ts"])
    split = C.hold_out_items(events, test_start)  # 20%, seed 42
    assert len(split.held_out) == round(0.2 * len(split.candidates)) and len(split.held_out) > 100
    assert not set(split.held_out) & set(split.natural_cold)
    kept = C.training_events(events, split)
    assert not kept.loc[kept["ts"] < test_start, "item_id"].isin(split.held_out).any()
    pd.testing.assert_frame_equal(kept[kept["ts"] >= test_start], events[events["ts"] >= test_start])
    # only held-out items' rows went, and all of theirs before the test window
    gone = events.loc[events.index.difference(kept.index)]
    assert gone["item_id"].isin(split.held_out).all() and (gone["ts"] < test_start).all()
    # the cleaned-log route gives the same events (chapters 03-05 build their tables from it)
    stripped = C.strip_clean_log(real, split)
    pd.testing.assert_frame_equal(F.purchase_events(stripped), kept.reset_index(drop=True))
    # every held-out item is now cold at test_start, by the book's one definition
    assert F.cold_items(F.purchase_events(stripped), split.held_out, test_start).all()
    mask = C.cold_test_mask(events, split)
    assert mask.sum() == events.loc[events["ts"] >= test_start, "item_id"].isin(split.held_out).sum() > 0


def test_ctr_dataset_from_the_stripped_log_never_sees_a_held_out_item(real):
    """Chapter 03's examples built on the stripped log: no held-out item in any train/valid row or history."""
    events = F.purchase_events(real)
    _, test_start = F.split_dates(events["ts"])
    split = C.hold_out_items(events, test_start, seed=3)
    df = F.build_ctr_dataset(C.strip_clean_log(real, split), F.CtrDatasetConfig(max_users=30, seed=3))
    held = set(split.held_out)
    learn = df[df["split"] != "test"]
    assert not learn["item_id"].isin(held).any()  # neither as a positive nor as a sampled negative
    assert not learn["hist_items"].map(lambda h: bool(held.intersection(h))).any()
    mask = C.cold_test_mask(df, split)
    assert mask.sum() > 0 and (df.loc[mask, "split"] == "test").all()
    assert df.loc[mask, "cold_item"].all()  # cold by the book's one definition
    # a held-out item's popularity counts only its test-window sales before the example
    test_ev = events[events["ts"] >= test_start]
    rows = df.loc[mask, ["item_id", "ts", "i_pop_all"]]
    expect = [int(((test_ev["item_id"] == i) & (test_ev["ts"] < t)).sum()) for i, t in zip(rows["item_id"], rows["ts"],
                                                                                            strict=True)]
    assert rows["i_pop_all"].astype(int).tolist() == expect


def test_recall_data_from_the_stripped_log_sees_held_out_items_only_in_test(real):
    """Chapter 05's protocol on the stripped log: held-out items are cold, with no history and their test positives."""
    from ecrec import recall_data

    events = F.purchase_events(real)
    _, test_start = F.split_dates(events["ts"])
    split = C.hold_out_items(events, test_start, seed=5)
    rd = recall_data.build_recall_data(C.strip_clean_log(real, split), test_start, catalogue=real, max_users=100)
    keep = split.is_held_out(rd.items["item_id"])
    assert keep.sum() == len(split.held_out)  # same catalogue, same item indexes
    assert rd.items.loc[keep, "cold_item"].all() and (rd.items.loc[keep, "train_buyers"] == 0).all()
    assert rd.train_matrix[:, keep].sum() == 0 and rd.history[:, keep].sum() == 0
    assert rd.relevant_all[:, keep].sum() > 0
