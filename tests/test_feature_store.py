"""ecrec.feature_store and ecrec.online_store: the columnar snapshot against chapter 03's offline features
row for row, Redis against the in-memory store bit for bit, the request encoder against the DNN's own
preprocessing, and every server process stopped with its children (no timings)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from ecrec import ctr
from ecrec import features as F
from ecrec.feature_store import (
    FeatureStore,
    RedisFeatureStore,
    RequestEncoder,
    StoreUnavailable,
    write_to_redis,
)
from ecrec.online_store import LocalServer, RedisServer, free_port, redis_status

REDIS_OK, REDIS_MESSAGE = redis_status()
needs_redis = pytest.mark.skipif(not REDIS_OK, reason=REDIS_MESSAGE)


def toy_events(seed: int = 0) -> pd.DataFrame:
    """A small purchase log: 30 users, 40 items, two months, one user per invoice."""
    rng = np.random.default_rng(seed)
    n = 600
    ts = pd.Timestamp("2011-01-01") + pd.to_timedelta(rng.integers(0, 70 * 24, n), unit="h")
    ev = pd.DataFrame({"user_id": rng.integers(1, 31, n), "item_id": [f"s{k}" for k in rng.integers(0, 40, n)],
                       "invoice_no": [f"i{k}" for k in rng.integers(0, 200, n)], "ts": ts,
                       "price": rng.uniform(0.5, 5, n), "country": "UK"})
    ev["user_id"] = ev.groupby("invoice_no")["user_id"].transform("first")
    ev["ts"] = ev.groupby("invoice_no")["ts"].transform("min")
    ev = ev.drop_duplicates(["invoice_no", "item_id"]).reset_index(drop=True)
    ev["quantity"] = 1
    ev["spend"] = ev["price"]
    return ev


AT = pd.Timestamp("2011-03-01")
USERS = np.r_[np.arange(1, 31), 999]  # 999: never seen
ITEMS = [f"s{k}" for k in range(40)] + ["new-item"]


@pytest.fixture(scope="module")
def toy():
    ev = toy_events()
    return ev, FeatureStore(ev, AT, history_len=5, pop_windows=(7, 30))


def _descendant_names() -> list[str]:
    """Command names of this process's live descendants (Linux /proc)."""
    from ecrec.distributed import _descendants

    names = []
    for pid in _descendants(os.getpid()):
        try:
            names.append(open(f"/proc/{pid}/comm").read().strip())
        except OSError:
            pass
    return names


def test_lookup_equals_point_in_time_features_row_for_row(toy):
    ev, store = toy
    grid = pd.DataFrame([(u, i) for u in USERS for i in ITEMS], columns=["user_id", "item_id"])
    offline = F.point_in_time_features(grid.assign(ts=AT), ev, history_len=5, pop_windows=(7, 30))
    cols = store.lookup(store.user_rows(grid["user_id"]), store.item_rows(grid["item_id"]))
    compared = [c for c in offline.columns if c.startswith(("u_", "i_", "ui_")) or c == "hist_len"]
    assert {"ui_n_before", "i_share_7d", "u_days_since_last"} <= set(compared) <= set(cols)
    for c in compared:  # NaN where NaN; equal up to the order of the offline code's cumulative sums of spend
        np.testing.assert_allclose(cols[c], offline[c].to_numpy(), rtol=1e-12, atol=0, err_msg=c)
        assert np.array_equal(np.isnan(cols[c]), np.isnan(offline[c].to_numpy()))
    for c in ("hist_len", "u_n_invoices", "ui_n_before", "i_pop_all", "i_price"):  # counts and prices: exact
        np.testing.assert_array_equal(cols[c], offline[c].to_numpy(), err_msg=c)
    assert (cols["ui_n_before"] > 0).sum() > 20  # the pair table is exercised
    # the history as item rows: the same items, newest first
    rows = store.hist_rows[store.user_rows([3])[0]]
    assert [store.items[r] for r in rows[rows >= 0]] == list(offline.loc[grid["user_id"] == 3, "hist_items"].iloc[0])
    # the DataFrame view and the one-request view agree with it
    frame = store.frame(grid["user_id"], grid["item_id"], AT, "UK")
    pd.testing.assert_frame_equal(frame[compared + ["hist_items"]], offline[compared + ["hist_items"]],
                                  check_dtype=False)
    one = store.fetch(3, store.item_rows(ITEMS))
    sel = (grid["user_id"] == 3).to_numpy()
    np.testing.assert_array_equal(one.pairs["ui_days_since_last"], offline.loc[sel, "ui_days_since_last"])
    np.testing.assert_array_equal(one.items["i_price"], offline.loc[sel, "i_price"])
    assert one.known and not store.fetch(999, [0]).known and store.user_row(999) == -1
    assert store.item_rows(["new-item"])[0] == -1 and store.nbytes() > 0


def test_lookup_errors_say_what_is_wrong(toy):
    _, store = toy
    with pytest.raises(ValueError, match="differ in shape"):
        store.lookup([0, 1], [0])
    with pytest.raises(ValueError, match="differ in length"):
        store.frame([1, 2], ["s1"], AT, "UK")
    with pytest.raises(ValueError, match="no purchase event before"):
        FeatureStore(toy_events(), "2000-01-01")


@needs_redis
def test_redis_store_answers_like_the_memory_store_and_fails_fast(toy):
    _, store = toy
    item_rows = store.item_rows(ITEMS)
    with RedisServer() as server:
        client = server.client()
        written = write_to_redis(store, client)
        client.close()
        assert written["users"] == len(store.users) and written["pairs"] == len(store.pair_keys)
        online = RedisFeatureStore(store, server.port, timeout_s=0.5)
        for user in (1, 7, 999):
            a, b = store.fetch(user, item_rows), online.fetch(user, item_rows)
            assert a.known == b.known
            np.testing.assert_array_equal(a.hist, b.hist)
            for left, right in ((a.user, b.user), (a.items, b.items), (a.pairs, b.pairs)):
                assert left.keys() == right.keys()
                for c in left:
                    np.testing.assert_array_equal(left[c], right[c], err_msg=c)
                    assert np.asarray(left[c]).dtype == np.asarray(right[c]).dtype
        assert "redis-server" in _descendant_names()
        server.stop()  # mid-run: a clear error, fast, never a hang
        with pytest.raises(StoreUnavailable, match="did not answer within 0.5 s"):
            online.fetch(1, item_rows)
        server.start()  # back, with the saved snapshot: the same client recovers
        np.testing.assert_array_equal(online.fetch(7, item_rows).pairs["ui_n_before"],
                                      store.fetch(7, item_rows).pairs["ui_n_before"])
        online.close()
    assert "redis-server" not in _descendant_names()
    assert not server.dir.exists()


@needs_redis
def test_an_empty_redis_is_an_error_not_a_silent_default(toy):
    _, store = toy
    with RedisServer() as server:
        online = RedisFeatureStore(store, server.port)
        with pytest.raises(StoreUnavailable, match="holds no snapshot"):
            online.fetch(1, [0, 1])
        online.close()


def test_local_server_stops_its_children_and_reports_a_failed_start(tmp_path):
    port = free_port()
    # a shell that starts a child and serves nothing: never ready, so start() must stop both and say why
    server = LocalServer(["bash", "-c", "sleep 60 & echo started; wait"], port, start_timeout_s=1.0,
                         log=tmp_path / "log.txt")
    with pytest.raises(RuntimeError, match="did not start within 1 s(.|\n)*started"):
        server.start()
    assert not server.running and "sleep" not in _descendant_names()
    # a real server: python's http.server; ready when the port answers; SIGTERM to the group stops it
    http = LocalServer(["python", "-m", "http.server", str(port), "--bind", "127.0.0.1"], port,
                       log=tmp_path / "http.txt")
    with http:
        assert http.running
        pid = http.proc.pid
    assert not http.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # signal 0: does the process exist?


# --- the request encoder against the DNN's own preprocessing ------------------------------
# (chapter 08 repeats this check on the real log, for its evaluated users, every run)


def toy_dnn(store: FeatureStore, ev: pd.DataFrame):
    """chapter 03's DNN (every feature group, text included) trained one epoch on the toy log.

    Returns ``(model, catalog, text)``; the catalogue has 45 items, five of them never sold.
    """
    rng = np.random.default_rng(0)
    sold = np.sort(ev["item_id"].unique())
    pos = ev[ev["ts"] < AT][["user_id", "item_id", "invoice_no", "ts", "country"]].assign(label=1)
    neg = pos.assign(item_id=rng.choice(sold, len(pos)), label=0)
    ex = pd.concat([pos, neg], ignore_index=True).sort_values(
        ["ts", "user_id", "invoice_no", "label"], ascending=[True, True, True, False], kind="stable")
    ex = ex.reset_index(drop=True)
    feats = F.point_in_time_features(ex, ev, history_len=store.history_len, pop_windows=store.pop_windows)
    frame = pd.concat([ex, feats.drop(columns=[c for c in feats.columns if c in ex.columns])], axis=1)
    words = np.array(["MUG", "BAG", "HEART", "LIGHT"])[np.arange(45) % 4]
    catalog = pd.DataFrame({"item_id": [f"s{k}" for k in range(45)], "description": [f"RED {w}" for w in words],
                            "category": words, "price": 1.0})
    text = (pd.Index(catalog["item_id"]), rng.normal(size=(45, 8)).astype(np.float32))
    frame = F.add_item_attributes(frame, catalog, text)
    early = (frame["ts"] < pd.Timestamp("2011-02-15")).to_numpy()
    cats, nums = ctr.group_columns(list(ctr.GROUPS), frame.columns)
    model = ctr.train_dnn(frame[early].reset_index(drop=True), frame[~early].reset_index(drop=True),
                          categorical=cats, numeric=nums, text=text,
                          config=ctr.DnnConfig(max_epochs=1, seed=0, history_len=store.history_len))
    return model, catalog, text


@pytest.fixture(scope="module")
def dnn_setup(toy):
    ev, store = toy
    model, catalog, text = toy_dnn(store, ev)
    return model, store, catalog, text, [3, 17, 999], AT


def test_encoder_equals_the_preprocessor_on_the_store_frame(dnn_setup):
    model, store, catalog, text, users, at = dnn_setup
    item_ids = catalog["item_id"].to_numpy()
    enc = RequestEncoder(model.preprocessor, store, catalog, item_ids, text)
    assert (enc.store_row < 0).sum() == 5  # items never sold before the snapshot are served too
    cands = np.random.default_rng(1).permutation(len(item_ids))
    when = at + pd.Timedelta(hours=30)
    for user in users:
        fast = enc.encode(store.fetch(user, enc.store_row[cands]), cands, when, "France", user_id=user)
        rows = store.frame(np.full(len(cands), user), item_ids[cands], np.datetime64(when), "France")
        slow = model.preprocessor.transform(F.add_item_attributes(rows, catalog, text))
        assert fast.keys() == slow.keys() == {"cat", "num", "hist", "text"}
        for key in ("cat", "hist", "text"):
            np.testing.assert_array_equal(fast[key], slow[key], err_msg=key)
        np.testing.assert_allclose(fast["num"], slow["num"], rtol=0, atol=1e-6)
        assert fast["num"].dtype == np.float32 and fast["cat"].dtype == np.int64
        np.testing.assert_allclose(model.predict_logits_arrays(fast), model.predict_logits_arrays(slow), atol=1e-5)
    # the numeric steps by hand for one value: log1p, then the scaler's fitted mean and scale
    j = model.preprocessor.numeric.index("u_n_invoices")
    scale = model.preprocessor.numeric_.named_steps["scale"]
    f = store.fetch(3, enc.store_row[cands[:1]])
    expected = (np.log1p(f.user["u_n_invoices"]) - scale.mean_[j]) / scale.scale_[j]
    assert enc.encode(f, cands[:1], when, "France", user_id=3)["num"][0, j] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="pass text"):
        RequestEncoder(model.preprocessor, store, catalog, item_ids, None)
