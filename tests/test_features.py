"""ecrec.features: time split, negatives, point-in-time features (leakage), cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecrec import features as F


def _clean(rows):
    """A tiny cleaned log: (invoice, customer, stock code, 'YYYY-MM-DD HH:MM', qty, price)."""
    df = pd.DataFrame(rows, columns=["InvoiceNo", "CustomerID", "StockCode", "InvoiceDate", "Quantity", "UnitPrice"])
    df["InvoiceDate"] = pd.to_datetime(df["InvoiceDate"])
    df["CustomerID"] = df["CustomerID"].astype("Int64")
    df["Description"] = df["StockCode"].map({"A": "RED MUG", "B": "BLUE MUG", "C": "PAPER BAG", "D": "TEA LIGHT HOLDER"})
    df["Country"] = "United Kingdom"
    return df


TOY = _clean(
    [
        ("1", 10, "A", "2011-01-01 10:00", 2, 1.0),
        ("1", 10, "A", "2011-01-01 10:00", 3, 1.0),  # same invoice, same item: one event
        ("1", 10, "B", "2011-01-01 10:00", 1, 2.0),
        ("2", 11, "A", "2011-01-02 09:00", 1, 1.5),
        ("3", 10, "C", "2011-01-05 12:00", 4, 0.5),
        ("4", 10, "A", "2011-01-10 08:00", 1, 1.2),
        ("5", 11, "D", "2011-01-10 08:00", 1, 3.0),
        ("6", 12, "B", "2011-01-20 15:00", 2, 2.5),
    ]
)


def test_purchase_events_dedupes_within_invoice():
    ev = F.purchase_events(TOY)
    assert len(ev) == 7
    first = ev[(ev["invoice_no"] == "1") & (ev["item_id"] == "A")].iloc[0]
    assert first["quantity"] == 5 and first["spend"] == pytest.approx(5.0)
    assert ev["user_id"].dtype == np.int64 and ev["ts"].is_monotonic_increasing


def test_purchase_events_rejects_missing_customer():
    bad = TOY.copy()
    bad.loc[0, "CustomerID"] = pd.NA
    with pytest.raises(ValueError, match="CustomerID"):
        F.purchase_events(bad)


def test_split_dates_and_assign_split():
    ts = pd.to_datetime(["2011-01-01 10:00", "2011-01-15 00:00", "2011-01-25 23:59", "2011-01-31 12:00"])
    valid_start, test_start = F.split_dates(ts, valid_days=10, test_days=5)
    assert test_start == pd.Timestamp("2011-01-27") and valid_start == pd.Timestamp("2011-01-17")
    assert F.assign_split(ts, valid_start, test_start).tolist() == ["train", "train", "valid", "test"]
    # boundaries belong to the later split
    assert F.assign_split([test_start, valid_start], valid_start, test_start).tolist() == ["test", "valid"]


@pytest.mark.parametrize("kwargs", [{"valid_days": 0}, {"test_days": -1}, {"valid_days": 1.5}, {"valid_days": 20, "test_days": 20}])
def test_split_dates_rejects_bad_windows(kwargs):
    ts = pd.to_datetime(["2011-01-01", "2011-01-31"])
    with pytest.raises(ValueError):
        F.split_dates(ts, **{"valid_days": 5, "test_days": 5, **kwargs})


def test_assign_split_rejects_reversed_bounds():
    with pytest.raises(ValueError, match="after"):
        F.assign_split(pd.to_datetime(["2011-01-01"]), "2011-02-01", "2011-01-15")


def test_config_validation():
    with pytest.raises(ValueError, match="negatives"):
        F.CtrDatasetConfig(negatives="hard")
    with pytest.raises(ValueError, match="neg_ratio"):
        F.CtrDatasetConfig(neg_ratio=0)
    with pytest.raises(ValueError, match="max_users"):
        F.CtrDatasetConfig(max_users=0)


def _events(rows):
    """Purchase events from (invoice, user, item, 'YYYY-MM-DD HH:MM')."""
    ev = pd.DataFrame(rows, columns=["invoice_no", "user_id", "item_id", "ts"])
    ev["ts"] = pd.to_datetime(ev["ts"])
    return ev.assign(country="United Kingdom", split="train", price=1.0, spend=1.0)


def _window_toy(n_invoices=2000):
    # in the 30 days before 2011-02-15: X three times, Y once; OLD only 60 days before, NEW only after
    past = [("h1", 1, "X", "2011-02-01 10:00"), ("h2", 1, "X", "2011-02-02 10:00"), ("h3", 1, "X", "2011-02-03 10:00"),
            ("h4", 1, "Y", "2011-02-04 10:00"), ("h0", 1, "OLD", "2010-12-15 10:00"), ("h9", 1, "NEW", "2011-03-01 10:00")]
    baskets = [(f"b{k}", 2, "P", "2011-02-15 12:00") for k in range(n_invoices)]
    # X is in this basket (another user: user 2's invoices at 12:00 are one basket with bx otherwise)
    baskets += [("bx", 4, "P", "2011-02-15 12:00"), ("bx", 4, "X", "2011-02-15 12:00")]
    baskets += [("first", 3, "P", "2010-12-15 10:00")]  # same moment as the first sale: nothing on sale before
    ev = _events(past + baskets)
    return ev, ev[ev["user_id"] != 1].reset_index(drop=True)


@pytest.mark.parametrize("method, x_share", [("uniform", 0.5), ("popularity", 0.75)])
def test_sample_negatives_trailing_window_and_basket(method, x_share):
    ev, pos = _window_toy()
    neg = F.sample_negatives(pos, ev, neg_ratio=1, method=method, seed=0)
    # only items sold in the 30 days before ts: never OLD (too old), NEW (later) or P (same moment)
    assert set(neg["item_id"]) == {"X", "Y"}
    share = (neg["item_id"] == "X").mean()
    assert share == pytest.approx(x_share, abs=0.035)  # 2000 draws: 3.5 standard errors
    # the basket's own items are never its negatives; the other invoices still get X
    assert neg.loc[neg["invoice_no"] == "bx", "item_id"].tolist() == ["Y"]
    assert "first" not in set(neg["invoice_no"])  # empty window: no negative
    assert list(neg.columns) == ["invoice_no", "user_id", "item_id", "ts", "country", "split"]
    again = F.sample_negatives(pos, ev, neg_ratio=1, method=method, seed=0)
    pd.testing.assert_frame_equal(neg, again)


def test_sample_negatives_window_length_and_errors():
    ev, pos = _window_toy(50)
    # a 60-day window reaches OLD
    wide = F.sample_negatives(pos, ev, neg_ratio=4, method="uniform", seed=1, window_days=80)
    assert "OLD" in set(wide["item_id"]) and "NEW" not in set(wide["item_id"])
    for bad in ({"neg_ratio": 0}, {"neg_ratio": -2}, {"neg_ratio": 1.5}, {"window_days": 0}):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            F.sample_negatives(pos, ev, **{"neg_ratio": 1, "method": "uniform", "seed": 0, **bad})
    with pytest.raises(ValueError, match="method"):
        F.sample_negatives(pos, ev, neg_ratio=1, method="hard", seed=0)
    with pytest.raises(ValueError, match="lacks columns"):
        F.sample_negatives(pos.drop(columns="split"), ev, neg_ratio=1, method="uniform", seed=0)
    nat = pos.copy()
    nat.loc[0, "ts"] = pd.NaT
    with pytest.raises(ValueError, match="NaT"):
        F.sample_negatives(nat, ev, neg_ratio=1, method="uniform", seed=0)


def test_point_in_time_features_rejects_bad_input():
    ev = F.purchase_events(TOY)
    ex = pd.DataFrame({"user_id": [10], "item_id": ["A"], "ts": pd.to_datetime(["2011-01-10 08:00"])})
    with pytest.raises(ValueError, match=r"examples lacks columns \['ts'\]"):
        F.point_in_time_features(ex.drop(columns="ts"), ev)
    with pytest.raises(ValueError, match=r"events lacks columns \['spend'\]"):
        F.point_in_time_features(ex, ev.drop(columns="spend"))
    with pytest.raises(ValueError, match="examples have NaT"):
        F.point_in_time_features(ex.assign(ts=pd.NaT), ev)
    bad = ev.copy()
    bad.loc[0, "ts"] = pd.NaT
    with pytest.raises(ValueError, match="events have NaT"):
        F.point_in_time_features(ex, bad)


def test_point_in_time_features_hand_computed():
    ev = F.purchase_events(TOY)
    ex = pd.DataFrame(
        {"user_id": [10, 10, 99], "item_id": ["A", "A", "Z"], "ts": pd.to_datetime(["2011-01-10 08:00"] * 2 + ["2011-01-02 09:00"])}
    )
    f = F.point_in_time_features(ex, ev, history_len=2, pop_windows=(7,))
    r = f.iloc[0]
    # user 10 before 2011-01-10 08:00: invoices 1 (A, B; spend 5 + 2) and 3 (C; spend 2)
    assert r["u_n_invoices"] == 2 and r["u_n_lines"] == 3 and r["u_spend"] == pytest.approx(9.0)
    assert r["u_days_since_last"] == pytest.approx(4 + 20 / 24)
    assert r["u_tenure_days"] == pytest.approx(8 + 22 / 24)
    # item A before then: invoices 1 and 2 (the 01-10 line is not *before*); 1 of them in the last 7 days? no: 01-02 09:00 is 7.96 days back
    assert r["i_pop_all"] == 2 and r["i_pop_7d"] == 0
    assert r["i_share_all"] == pytest.approx(1000 * 2 / 4)
    assert r["i_price"] == pytest.approx(1.5)
    assert r["ui_n_before"] == 1 and r["ui_days_since_last"] == pytest.approx(8 + 22 / 24)
    assert list(r["hist_items"]) == ["C", "B"] and r["hist_len"] == 2  # newest first, capped at 2
    assert (r["hour"], r["weekday"], r["month"]) == (8, 0, 1)
    # an unknown user and item: zero counts and NaN, never an error
    u = f.iloc[2]
    assert u["u_n_invoices"] == 0 and np.isnan(u["u_days_since_last"]) and np.isnan(u["i_price"])
    assert list(u["hist_items"]) == [] and u["i_pop_all"] == 0


@pytest.fixture(scope="module")
def real():
    from ecrec.data import load_clean_online_retail

    clean, _ = load_clean_online_retail()
    return clean


@pytest.fixture(scope="module")
def small(real):
    return F.build_ctr_dataset(real, F.CtrDatasetConfig(max_users=60, seed=3))


def test_leakage_deleting_and_changing_the_future_changes_nothing(real, small):
    events = F.purchase_events(real)
    probe = small[small["split"] != "train"].sample(40, random_state=0)
    cols = [c for c in small.columns if c.startswith(("u_", "i_", "ui_", "hist"))]
    for cut in sorted(probe["ts"].unique())[:5]:
        rows = probe[probe["ts"] == cut]
        base = F.point_in_time_features(rows, events)
        deleted = F.point_in_time_features(rows, events[events["ts"] < cut])
        changed = events.copy()
        future = changed["ts"] >= cut
        changed.loc[future, "price"] *= 7.0
        changed.loc[future, "spend"] += 100.0
        changed.loc[future, "item_id"] = changed.loc[future, "item_id"].to_numpy()[::-1]
        edited = F.point_in_time_features(rows, changed)
        pd.testing.assert_frame_equal(base[cols], deleted[cols])
        pd.testing.assert_frame_equal(base[cols], edited[cols])
        pd.testing.assert_frame_equal(base[cols], small.loc[rows.index, cols])
    # and the check can fail: an event strictly before the cut does change a feature
    rows = probe[probe["ts"] == probe["ts"].max()]
    past = events["ts"] < rows["ts"].iloc[0]
    more = events.copy()
    more.loc[past, "spend"] += 1.0
    assert not np.allclose(F.point_in_time_features(rows, more)["u_spend"], F.point_in_time_features(rows, events)["u_spend"])


def test_dataset_contract(small):
    assert small["user_id"].dtype == np.int64 and small["label"].dtype == np.int8
    assert pd.api.types.is_datetime64_dtype(small["ts"]) and small["cold_user"].dtype == bool
    assert set(small["split"]) == set(F.SPLITS) and small["user_id"].nunique() <= 60
    assert small[["ts"]].apply(lambda s: s.is_monotonic_increasing).all()
    # a negative is never an item of its own basket (invoice)
    pos = small[small["label"] == 1][["invoice_no", "item_id"]]
    assert small[small["label"] == 0].merge(pos, on=["invoice_no", "item_id"]).empty
    ratio = (small["label"] == 0).sum() / (small["label"] == 1).sum()
    # 4 drawn per positive; duplicates within an invoice dropped, which thins the baskets of
    # several hundred items (they draw ~2,000 negatives from the ~2,500 items on sale)
    assert 3.0 < ratio <= 4.0
    # every negative was on sale (bought by someone) in the 30 days before its ts
    assert (small.loc[small["label"] == 0, "i_pop_30d"] > 0).all()
    assert (small.loc[small["label"] == 1, "i_pop_30d"] == 0).any()  # a positive need not be


def test_no_repeat_purchase_shortcut(small):
    # negatives the user bought before exist in train at a rate comparable to test, so
    # "bought before" is not a perfect positive signal in train (it was with window exclusion)
    # (one heavy repeat buyer moves the raw rate a lot in 60 users: compare P(label 1 | bought before))
    rate, precision = {}, {}
    for s in ("train", "test"):
        part = small[small["split"] == s]
        rate[s] = (part.loc[part["label"] == 0, "ui_n_before"] > 0).mean()
        precision[s] = part.loc[part["ui_n_before"] > 0, "label"].mean()
    assert rate["train"] > 0.01 and rate["test"] > 0.01
    assert precision["train"] < 0.9 and abs(precision["train"] - precision["test"]) < 0.15


def test_cold_flags_use_the_whole_log(real, small):
    events = F.purchase_events(real)
    valid_start, _ = F.split_dates(events["ts"])
    before = events[events["ts"] < valid_start]
    assert not small.loc[small["split"] == "train", ["cold_user", "cold_item"]].any().any()
    assert (small["cold_item"] == ~small["item_id"].isin(before["item_id"])).all()
    assert (small["cold_user"] == ~small["user_id"].isin(before["user_id"])).all()
    test = small[small["split"] == "test"]
    assert 0.0 < test["cold_item"].mean() < 0.1  # few items are new in the last month of the whole log
    assert (small["hist_len"] == small["hist_items"].list.len()).all() and small["hist_len"].max() <= 10


def test_same_seed_same_dataset_other_seed_other_negatives(real, small):
    again = F.build_ctr_dataset(real, F.CtrDatasetConfig(max_users=60, seed=3))
    pd.testing.assert_frame_equal(small, again)
    other = F.build_ctr_dataset(real, F.CtrDatasetConfig(max_users=60, seed=4))
    assert not other["user_id"].equals(small["user_id"])


def test_popularity_sampling_draws_popular_items(real):
    events = F.purchase_events(real)
    vs, ts = F.split_dates(events["ts"])
    events["split"] = F.assign_split(events["ts"], vs, ts)
    pos = events[events["user_id"].isin(events["user_id"].unique()[:100]) & (events["split"] == "test")]
    feats = {}
    for method in F.NEGATIVE_SAMPLING:
        neg = F.sample_negatives(pos, events, neg_ratio=2, method=method, seed=0)
        feats[method] = F.point_in_time_features(neg, events, pop_windows=(30,))["i_pop_30d"]
    # uniform: every item on sale in the window equally; popularity: busy items far more often
    assert (feats["uniform"] > 0).all() and (feats["popularity"] > 0).all()
    assert feats["popularity"].median() > 3 * feats["uniform"].median()


def test_cache_round_trip_and_key(real, tmp_path):
    config = F.CtrDatasetConfig(max_users=30, seed=1)
    built = F.load_or_build_ctr_dataset(real, config, tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    key = F.dataset_key(real, config)
    assert files == [f"ctr_{key}.json", f"ctr_{key}.parquet"]
    again = F.load_or_build_ctr_dataset(real, config, tmp_path)
    pd.testing.assert_frame_equal(built, again)
    assert again["hist_items"].dtype == F.HIST_DTYPE
    assert F.dataset_key(real, F.CtrDatasetConfig(max_users=30, seed=2)) != key
    assert F.dataset_key(real.iloc[1:], config) != key


def test_dataset_key_follows_config_and_builder_code(real, monkeypatch):
    config = F.CtrDatasetConfig(max_users=30, seed=1)
    key = F.dataset_key(real, config)
    assert F.dataset_key(real, F.CtrDatasetConfig(max_users=30, seed=1)) == key  # stable across calls
    assert F.dataset_key(real, F.CtrDatasetConfig(max_users=30, seed=1, neg_ratio=3)) != key
    assert F.dataset_key(real, F.CtrDatasetConfig(max_users=30, seed=1, negatives="popularity")) != key
    sources = F.builder_sources()
    # the builders and the helpers they call, found from their code
    assert {"build_ctr_dataset", "sample_negatives", "point_in_time_features", "purchase_events", "split_dates",
            "assign_split", "_select_users", "_sorted_member", "_Sorted", "_seconds", "CtrDatasetConfig"} <= set(sources)
    assert "item_catalog" not in sources and "dataset_key" not in sources
    # an edit to a helper's source names a new key
    real_getsource = F.inspect.getsource
    monkeypatch.setattr(F.inspect, "getsource", lambda obj: real_getsource(obj) + ("# edited" if obj is F._sorted_member else ""))
    monkeypatch.setattr(F, "_code_fingerprint", F._code_fingerprint.__wrapped__)
    assert F.dataset_key(real, config) != key


def test_item_catalog_rejects_missing_columns(real):
    with pytest.raises(ValueError, match=r"missing columns \['Description'\]"):
        F.item_catalog(real.drop(columns="Description"))


def test_item_catalog(real):
    cat = F.item_catalog(real)
    assert len(cat) == real["StockCode"].nunique() == cat["item_id"].nunique()
    row = cat.set_index("item_id").loc["85123A"]
    assert row["description"] == "WHITE HANGING HEART T-LIGHT HOLDER" and row["category"] == "HOLDER"
    assert row["price"] == pytest.approx(real.loc[real["StockCode"] == "85123A", "UnitPrice"].median())


def test_hist_matrix_and_text_similarity():
    df = pd.DataFrame({"item_id": ["A", "B", "Z"], "invoice_no": ["1", "1", "2"]})
    df["hist_items"] = pd.Series([["A", "X"], ["A", "X"], []], dtype=F.HIST_DTYPE)
    m = F.hist_matrix(df["hist_items"], pd.Index(["A", "B"]), 3)
    assert m.tolist() == [[0, -2, -1], [0, -2, -1], [-1, -1, -1]]
    vec = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    sim = F.text_history_similarity(df, pd.Index(["A", "B"]), vec)
    np.testing.assert_allclose(sim, [1.0, 0.6, 0.0], atol=1e-6)
    with pytest.raises(ValueError):
        F.text_history_similarity(df, pd.Index(["A"]), vec)
    with pytest.raises(ValueError):
        F.hist_matrix(df["hist_items"], pd.Index(["A"]), 0)


def test_add_item_attributes_counts_same_category():
    cat = pd.DataFrame({"item_id": ["A", "B", "C"], "description": ["RED MUG", "BLUE MUG", "PAPER BAG"], "category": ["MUG", "MUG", "BAG"], "price": [1.0, 1.0, 1.0]})
    df = pd.DataFrame({"item_id": ["B", "C", "Q"], "invoice_no": ["1", "1", "1"]})
    df["hist_items"] = pd.Series([["A", "A", "C"]] * 3, dtype=F.HIST_DTYPE)
    out = F.add_item_attributes(df, cat)
    assert out["seq_same_category"].tolist() == [2.0, 1.0, 0.0]
    assert out["category"].tolist() == ["MUG", "BAG", "UNKNOWN"]


# --- time zones in the split (issue 10, item 6) ------------------------------


def test_split_dates_naive_and_aware_across_daylight_saving():
    # Europe/London leaves summer time on 30 October 2011 (02:00 BST -> 01:00 GMT)
    naive = pd.Series(pd.date_range("2011-08-01", "2011-11-15 18:00", freq="6h"))
    vs, ts = F.split_dates(naive, valid_days=30, test_days=30)
    assert (vs, ts) == (pd.Timestamp("2011-09-17"), pd.Timestamp("2011-10-17"))
    aware = naive.dt.tz_localize("Europe/London")
    vs_a, ts_a = F.split_dates(aware, valid_days=30, test_days=30)
    # hand-computed: local midnights, although 30 days of 24 h would land at 01:00 BST
    assert vs_a == pd.Timestamp("2011-09-17 00:00", tz="Europe/London")
    assert ts_a == pd.Timestamp("2011-10-17 00:00", tz="Europe/London")
    assert (vs_a.hour, ts_a.hour) == (0, 0)
    # a window that crosses the change: test = the last 20 days (26 Oct .. 15 Nov)
    _, t20 = F.split_dates(aware, valid_days=10, test_days=20)
    assert t20 == pd.Timestamp("2011-10-27 00:00", tz="Europe/London") and t20.hour == 0
    end = pd.Timestamp("2011-11-16 00:00", tz="Europe/London")
    assert (end - t20) == pd.Timedelta(days=20, hours=1)  # 20 calendar days hold 481 hours here
    # the first hour of the test start day is test, the last hour before it is valid
    labels = F.assign_split(
        pd.Series(pd.to_datetime(["2011-10-27 00:30", "2011-10-26 23:30"])).dt.tz_localize("Europe/London"),
        *F.split_dates(aware, valid_days=10, test_days=20),
    )
    assert labels.tolist() == ["test", "valid"]
    # the same instants in UTC get the same labels
    utc = aware.dt.tz_convert("UTC")
    assert (F.assign_split(utc, vs_a, ts_a) == F.assign_split(aware, vs_a, ts_a)).all()
    # naive labels equal the aware ones read as wall-clock time
    assert (F.assign_split(naive, vs, ts) == F.assign_split(aware, vs_a, ts_a)).all()


def test_assign_split_refuses_naive_mixed_with_aware():
    aware = pd.Series(pd.to_datetime(["2011-10-01"])).dt.tz_localize("Europe/London")
    with pytest.raises(ValueError, match="naive and time-zone-aware"):
        F.assign_split(aware, pd.Timestamp("2011-09-01"), pd.Timestamp("2011-09-15"))


# --- negatives that are positives (issue 10, item 5) ---------------------------


def _same_minute_toy():
    # user 7 has two invoices at the same minute (like customer 17850, 2010-12-02 09:44): i1 holds A, i2 holds B
    rows = [("h1", 1, "A", "2011-02-01 10:00"), ("h2", 1, "B", "2011-02-02 10:00"), ("h3", 1, "C", "2011-02-03 10:00"),
            ("i1", 7, "A", "2011-02-15 12:00"), ("i2", 7, "B", "2011-02-15 12:00"),
            ("j1", 7, "C", "2011-02-10 09:00")]  # C: bought by user 7 earlier in the same split window
    ev = _events(rows)
    return ev, ev[ev["invoice_no"].isin(["i1", "i2"])].reset_index(drop=True)


@pytest.mark.parametrize("method", F.NEGATIVE_SAMPLING)
def test_invoices_at_one_moment_are_one_basket(method):
    ev, pos = _same_minute_toy()
    neg = F.sample_negatives(pos, ev, neg_ratio=3, method=method, seed=0)
    # candidates in the window: A, B, C; A and B are the user's basket at 12:00 -> only C remains
    assert set(neg["item_id"]) == {"C"}
    assert sorted(neg["invoice_no"]) == ["i1", "i2"]
    # the policy option: C was bought by the same user in the same split window -> nothing can be drawn
    strict = F.sample_negatives(pos, ev, neg_ratio=3, method=method, seed=0, exclude_bought_in_split=True)
    assert strict.empty
    rep = strict.attrs["negative_sampling"]
    # hand count: 2 positives x 3 draws, every one impossible, found without running all 50 rounds
    assert rep["requested"] == 6 and rep["impossible"] == 6 and rep["exhausted"] == 0 and rep["kept"] == 0
    assert rep["rounds"] == 1
    # C bought in ANOTHER split window does not count
    other = ev.assign(split=np.where(ev["invoice_no"] == "j1", "valid", "train"))
    pos_o = other[other["invoice_no"].isin(["i1", "i2"])].reset_index(drop=True)
    again = F.sample_negatives(pos_o, other, neg_ratio=3, method=method, seed=0, exclude_bought_in_split=True)
    assert set(again["item_id"]) == {"C"}


def test_negative_sampling_report_counts_every_draw():
    ev, pos = _window_toy(200)
    neg = F.sample_negatives(pos, ev, neg_ratio=2, method="uniform", seed=0)
    rep = neg.attrs["negative_sampling"]
    assert rep["requested"] == 2 * len(pos)
    assert rep["no_window"] == 2  # the "first" invoice: nothing on sale before it
    assert rep["requested"] == rep["no_window"] + rep["impossible"] + rep["exhausted"] + rep["duplicates"] + rep["kept"]
    assert rep["kept"] == len(neg)


def test_sample_negatives_matches_a_plain_loop_oracle(real):
    # every drawn negative: sold in the trailing window, not in the user's basket at that moment
    events = F.purchase_events(real)
    vs, ts = F.split_dates(events["ts"])
    events["split"] = F.assign_split(events["ts"], vs, ts)
    pos = events[events["user_id"].isin(events["user_id"].unique()[:40])].reset_index(drop=True)
    for strict in (False, True):
        neg = F.sample_negatives(pos, events, neg_ratio=2, method="uniform", seed=3, exclude_bought_in_split=strict)
        basket = events.groupby(["user_id", "ts"])["item_id"].agg(set)
        bought = events.groupby(["user_id", "split"])["item_id"].agg(set)
        for row in neg.sample(200, random_state=0).itertuples():
            assert row.item_id not in basket[(row.user_id, row.ts)]
            if strict:
                assert row.item_id not in bought[(row.user_id, row.split)]
            sold = events[(events["item_id"] == row.item_id) & (events["ts"] < row.ts)
                          & (events["ts"] >= row.ts - pd.Timedelta(days=30))]
            assert len(sold) > 0


def test_config_exposes_the_negative_policy():
    assert F.CtrDatasetConfig().neg_exclude_bought_in_split is False
    assert F.CtrDatasetConfig(neg_exclude_bought_in_split=True).neg_exclude_bought_in_split is True
    with pytest.raises(ValueError, match="neg_exclude_bought_in_split"):
        F.CtrDatasetConfig(neg_exclude_bought_in_split="yes")
