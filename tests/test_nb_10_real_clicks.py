"""Chapter 10 (real clicks) in the smoke profile: the data's counts, invariants and recorded ranges.

Recorded on the smoke run (seed 42): clicks random 38 / 46 / 46 and BTS 42 / 69 / 46 (all / men /
women); CTR by slot 0.0038 / 0.0050 / 0.0041, top minus bottom -0.0003 [-0.0027, +0.0014];
IPS estimates of BTS 0.00454 / 0.00453 / 0.00681 against BTS's real 0.0042 / 0.0069 / 0.0046,
ESS 1,634 / 2,454 / 1,961; mean relative error DM 0.19, IPS 0.30, DR 0.31, SNIPS 0.32, no pair
of estimators separated; replay kept 118-298 rows per run.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.notebook

STEM = "10_real_clicks"
CAMPAIGNS = ("all", "men", "women")


@pytest.fixture(scope="module")
def m(chapter_metrics):
    return chapter_metrics(STEM)


def test_the_data_are_the_sample(m):
    assert m["clicks"] == {"random/all": 38, "random/men": 46, "random/women": 46,
                           "bts/all": 42, "bts/men": 69, "bts/women": 46}
    assert m["bts_ctr"] == {"all": 0.0042, "men": 0.0069, "women": 0.0046}
    pos = m["position_ctr"]
    assert sum(p["impressions"] for p in pos.values()) == 30_000
    assert sum(p["clicks"] for p in pos.values()) == 38 + 46 + 46


def test_position_ctr_intervals(m):
    for k, p in m["position_ctr"].items():
        assert p["low"] < p["CTR"] < p["high"], k
        assert p["CTR"] == pytest.approx(p["clicks"] / p["impressions"], abs=1e-5)
    t = m["top_minus_bottom"]
    assert t["low"] < t["diff"] < t["high"] and t["level"] == 0.95
    assert t["diff"] == pytest.approx(-0.0003, abs=0.0002)


def test_ope_invariants_and_ranges(m):
    ope = m["ope"]
    for c in CAMPAIGNS:
        assert ope[f"{c}/IPS"]["ess"] == ope[f"{c}/SNIPS"]["ess"] == ope[f"{c}/DR"]["ess"] < 10_000
        assert ope[f"{c}/DM"]["ess"] == 10_000
        for est in ("DM", "IPS", "SNIPS", "DR"):
            e = ope[f"{c}/{est}"]
            assert e["low"] <= e["estimate"] <= e["high"], (c, est)
            assert e["relative_error"] == pytest.approx(abs(e["estimate"] - m["bts_ctr"][c]) / m["bts_ctr"][c],
                                                        abs=0.02)
    # IPS depends only on the log and obp's simulated BTS (seeded): tight ranges
    assert ope["all/IPS"]["estimate"] == pytest.approx(0.00454, abs=0.0003)
    assert ope["men/IPS"]["estimate"] == pytest.approx(0.00453, abs=0.0003)
    assert ope["women/IPS"]["estimate"] == pytest.approx(0.00681, abs=0.0004)
    assert 1400 < ope["all/IPS"]["ess"] < 1900 and 2200 < ope["men/IPS"]["ess"] < 2700
    # DM and DR go through a fitted logistic regression: wider ranges
    assert 0.003 < ope["all/DM"]["estimate"] < 0.0055 and 0.003 < ope["all/DR"]["estimate"] < 0.0065
    rel = m["ope_mean_relative_error"]
    assert set(rel) == {"DM", "IPS", "SNIPS", "DR"} and all(0 < v < 1 for v in rel.values())
    assert 0 <= m["ope_pairs_separated"] <= 18


def test_replay_keeps_about_one_row_per_item(m):
    n_items = {"all": 80, "men": 34, "women": 46}
    for key, r in m["replay"].items():
        c = key.split("/")[0]
        assert 10_000 / n_items[c] * 0.6 < r["kept"] < 10_000 / n_items[c] * 1.4, key
        assert 0 <= r["ctr"] <= 0.05, key
    assert 0 <= m["replay_overlaps_uniform"] <= 9
