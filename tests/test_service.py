"""ecrec.service and ecrec.loadtest: the HTTP answers equal the in-process pipeline's, bad input gets a 422
that says what was wrong, Redis stopped mid-run gives a 503 within its timeout and the service recovers, the
load generator is bounded; no redis-server or uvicorn process is left behind (no timings asserted)."""

from __future__ import annotations

import importlib
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from ecrec import system as S
from ecrec.feature_store import FeatureStore, RedisFeatureStore, RequestEncoder, write_to_redis
from ecrec.loadtest import run_level, run_load
from ecrec.online_store import RedisServer
from ecrec.service import Recommender, ServiceProcess, write_bundle

# the toy log, the toy DNN and the process check of the sibling test module (pytest puts tests/ on sys.path)
_fs = importlib.import_module("test_feature_store")
AT, toy_dnn, toy_events, _descendant_names = _fs.AT, _fs.toy_dnn, _fs.toy_events, _fs._descendant_names
needs_redis = pytest.mark.skipif(not _fs.REDIS_OK, reason=_fs.REDIS_MESSAGE)
USERS = [3, 7, 12, 17, 25]


@pytest.fixture(scope="module")
def setup():
    ev = toy_events()
    store = FeatureStore(ev, AT, history_len=5, pop_windows=(7, 30))
    model, catalog, text = toy_dnn(store, ev)
    item_ids = catalog["item_id"].to_numpy()
    rng = np.random.default_rng(4)
    candidates = {u: rng.permutation(len(item_ids))[:30] for u in USERS}
    candidates[USERS[0]] = np.r_[candidates[USERS[0]][:5], -1, -1]  # recall padding: dropped
    popular = np.arange(8)
    rec = Recommender(model, RequestEncoder(model.preprocessor, store, catalog, item_ids, text), store,
                      candidates, popular, np.arange(8, 0, -1).astype(float), AT, max_k=20)
    return rec, catalog, text


@pytest.fixture(scope="module")
def rec(setup):
    return setup[0]


def test_in_process_pipeline_equals_the_ranker_and_falls_back_for_unknown_users(setup):
    rec, catalog, text = setup
    ranker = S.DnnRanker(rec.model, rec.source, catalog, rec.item_ids, text)  # chapter 08's batch path
    for user in USERS[1:]:
        out = rec.recommend(user, 10)
        cand = rec.candidates[user]
        scores = ranker.score([user], cand[None, :], [np.datetime64(AT)], [rec.country])
        items, best = S.top_n(scores, cand[None, :], 10)
        assert [x["item_index"] for x in out["items"]] == items[0].tolist() and out["source"] == "ranked"
        np.testing.assert_allclose([x["score"] for x in out["items"]], best[0], atol=1e-5)
    short = rec.recommend(USERS[0], 10)
    assert len(short["items"]) == 5 and "only 5 items" in short["notes"][0]
    unknown = rec.recommend(424242, 3)
    assert unknown["source"] == "popular" and [x["item_index"] for x in unknown["items"]] == [0, 1, 2]
    assert "unknown to the recommender" in unknown["notes"][0]
    for bad in (0, -1, 21):
        with pytest.raises(ValueError, match="k must be between 1 and 20"):
            rec.recommend(USERS[1], bad)


@pytest.fixture(scope="module")
def service(rec, tmp_path_factory):
    """One uvicorn process over the in-memory store for the module (starting one costs seconds)."""
    folder = tmp_path_factory.mktemp("service")
    with ServiceProcess(write_bundle(rec, folder / "bundle.pkl"), workers=1, log=folder / "uvicorn.log") as server:
        yield server
    assert not server.running and "uvicorn" not in " ".join(_descendant_names())


def _get(url: str, query: str) -> httpx.Response:
    return httpx.get(f"{url}/recommend?{query}", timeout=10.0)


def test_service_answers_like_the_pipeline_and_rejects_bad_input(rec, service):
    assert httpx.get(f"{service.url}/health", timeout=5).json()["status"] == "ok"
    for user in [*USERS, 424242]:
        got = _get(service.url, f"user_id={user}&k=7")
        assert got.status_code == 200 and got.json() == rec.recommend(user, 7)
    when = "2011-03-04T15:00:00"
    got = _get(service.url, f"user_id={USERS[2]}&k=4&country=France&ts={when}").json()
    assert got == rec.recommend(USERS[2], 4, pd.Timestamp(when), "France")
    bad = {"user_id=3": "k: Field required", "user_id=3&k=0": "greater than or equal to 1",
           "user_id=3&k=-2": "greater than or equal to 1", "user_id=3&k=21": "less than or equal to 20",
           "user_id=3&k=ten": "k: Input should be a valid integer", "k=5": "user_id: Field required",
           "user_id=%ZZ&k=5": "user_id: Input should be a valid integer", "user_id=3&k=5&kk=1": "unknown parameter",
           "user_id=3&k=5&k=6": "given twice", "user_id=3&k=5&ts=yesterday": "ts: not an ISO time",
           "user_id=3&k=5=6": "k: Input should be a valid integer", "user_id=3&k=1e99": "valid integer",
           "user_id=3&k=5&country=": "country"}
    for query, message in bad.items():
        r = _get(service.url, query)
        assert r.status_code == 422, (query, r.status_code, r.text)
        assert message in r.json()["detail"] and "use /recommend?user_id=" in r.json()["detail"], query
    assert httpx.get(f"{service.url}/nowhere", timeout=5).status_code == 404


@needs_redis
def test_redis_down_mid_run_gives_503_fast_and_the_service_recovers(rec, tmp_path):
    with RedisServer() as redis_server:
        client = redis_server.client()
        write_to_redis(rec.source, client)
        client.close()
        online = Recommender(**{**rec.__dict__, "source": RedisFeatureStore(rec.source, redis_server.port,
                                                                               timeout_s=0.5)})
        bundle = write_bundle(online, tmp_path / "bundle.pkl")
        with ServiceProcess(bundle, workers=2, log=tmp_path / "uvicorn.log") as service:
            for user in USERS:  # Redis and memory: the same lists
                assert _get(service.url, f"user_id={user}&k=7").json() == rec.recommend(user, 7)
            redis_server.stop()
            started = time.perf_counter()
            r = _get(service.url, f"user_id={USERS[1]}&k=5")
            assert r.status_code == 503 and "feature store unavailable" in r.json()["detail"]
            assert time.perf_counter() - started < 5.0  # the store's 0.5 s timeout, not a hang
            assert httpx.get(f"{service.url}/health", timeout=5).status_code == 503
            assert _get(service.url, "user_id=424242&k=3").status_code == 200  # the fallback needs no store
            redis_server.start()
            for _ in range(4):  # both workers reconnect by themselves
                assert _get(service.url, f"user_id={USERS[1]}&k=5").json() == rec.recommend(USERS[1], 5)
            names = " ".join(_descendant_names())
            assert "redis-server" in names
        online.source.close()
    names = " ".join(_descendant_names())
    assert "redis-server" not in names and "uvicorn" not in names


def test_load_generator_is_bounded_and_counts_every_request(service):
    paths = [f"/recommend?user_id={u}&k=5" for u in USERS] + ["/recommend?user_id=3&k=0"]  # one in six: a 422
    table = run_load(service.url, paths, levels=(1, 4), n_requests=60, warmup=6)
    assert table.index.tolist() == [1, 4]
    assert (table["sent"] == 60).all() and (table["ok"] == 50).all() and (table["errors"] == 10).all()
    assert (table["n"] == table["ok"]).all() and (table["throughput_rps"] > 0).all()
    assert table.loc[1, "status"] == {"200": 50, "422": 10} and (table["stopped_by"] == "count").all()
    assert np.isnan(table.loc[1, "p99_ms"]) and "p99 needs" in table.loc[1, "note"]  # 50 samples: no p99
    timed = run_level(service.url, paths[:1], 2, 10**6, max_seconds=0.5)
    assert timed["stopped_by"] == "time" and timed["sent"] < 10**6 and timed["seconds"] < 10
    with pytest.raises(ValueError, match="loopback"):
        run_level("http://10.0.0.1:80", paths, 1, 1)
    with pytest.raises(ValueError, match="clients >= 1"):
        run_level("http://127.0.0.1:1", paths, 0, 1)
