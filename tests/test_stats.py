"""ecrec.stats: user-level bootstrap of AUC, against scikit-learn and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ecrec import stats


def test_weighted_auc_matches_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.3).astype(int)
    s = np.round(rng.normal(size=500) + y, 1)  # rounding makes many ties
    w = rng.integers(0, 4, size=(5, 500))
    ours = stats.weighted_auc_many(y, s, w)
    oracle = [roc_auc_score(y, s, sample_weight=w[b]) for b in range(5)]
    assert ours == pytest.approx(oracle, abs=1e-12)


def test_one_class_runs_merge_exactly():
    """Consecutive score groups holding one class only become one group; a tie across classes stays alone."""
    # groups (ascending):   0:neg 1:neg 2:pos 3:both 4:pos 5:pos 6:neg
    group = np.array([0, 1, 2, 3, 3, 4, 5, 6])
    pos = np.array([0, 0, 1, 1, 0, 1, 1, 0], bool)
    assert stats._merge_one_class_runs(group, pos).tolist() == [0, 0, 1, 2, 2, 3, 3, 4]
    rng = np.random.default_rng(3)  # and the AUC is that of every group apart, to the last bit
    y = (rng.random(2000) < 0.2).astype(int)
    s = np.round(rng.normal(size=2000) + 2 * y, 2)
    w = rng.integers(0, 3, size=(7, 2000))
    oracle = [roc_auc_score(y, s, sample_weight=w[b]) for b in range(7)]
    assert stats.weighted_auc_many(y, s, w) == pytest.approx(oracle, abs=1e-12)


def test_scores_in_threads_give_each_scores_own_aucs(monkeypatch):
    """bootstrap_auc computes its scores in threads: the same floats, to the last bit, as one after the other."""
    rng = np.random.default_rng(5)
    y = (rng.random(3000) < 0.25).astype(int)
    scores = {f"m{i}": np.round(rng.normal(size=3000) + i * 0.3 * y, 2) for i in range(5)}
    w = rng.integers(0, 3, size=(40, 3000)).astype(float)
    one_by_one = {k: stats.weighted_auc_many(y, s, w) for k, s in scores.items()}
    for cores in (1, 4):
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        got = stats._auc_of_each(y, scores, w)
        assert list(got) == list(scores)
        for k in scores:
            np.testing.assert_array_equal(got[k], one_by_one[k])


def test_weighted_auc_hand_values():
    y = np.array([0, 0, 1, 1])
    assert stats.weighted_auc_many(y, np.array([1.0, 2.0, 3.0, 4.0]), np.ones(4))[0] == 1.0
    assert stats.weighted_auc_many(y, np.array([0.5, 0.5, 0.5, 0.5]), np.ones(4))[0] == 0.5  # ties count 1/2
    # one positive above one negative, the other tied with it: (1 + 1/2 + 1 + 0) / 4... by hand:
    # pos 3.0 beats negs 1.0 and 3.0? tie -> 1 + 0.5; pos 0.5 beats none -> 0 => 1.5 / 4
    assert stats.weighted_auc_many(y, np.array([1.0, 3.0, 3.0, 0.5]), np.ones(4))[0] == pytest.approx(0.375)
    assert np.isnan(stats.weighted_auc_many(y, np.arange(4.0), np.array([1, 1, 0, 0]))[0])  # no positive weight
    with pytest.raises(ValueError, match="finite"):
        stats.weighted_auc_many(y, np.array([0, 1, np.nan, 2]), np.ones(4))
    with pytest.raises(ValueError, match="only 0 and 1"):
        stats.weighted_auc_many(np.array([0, 2, 1, 1]), np.arange(4.0), np.ones(4))


def test_resample_weights_are_per_user():
    counts, idx = stats.user_resample_weights(["a", "b", "a", "c"], n_boot=50, seed=1)
    assert counts.shape == (50, 3) and (counts.sum(1) == 3).all()
    assert idx.tolist() == [0, 1, 0, 2]  # both rows of user "a" share a weight
    with pytest.raises(ValueError):
        stats.user_resample_weights(["a"], n_boot=0, seed=1)


def test_bootstrap_detects_a_real_gap_and_not_a_null_one():
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(200), 20)
    y = (rng.random(len(users)) < 0.3).astype(int)
    base = rng.normal(size=len(y)) + 0.8 * y
    better = base + 0.8 * y  # clearly better ranking
    same = base + rng.normal(scale=1e-6, size=len(y))  # the same ranking
    out = stats.bootstrap_auc(y, {"base": base, "better": better, "same": same}, users,
                              pairs=[("better", "base"), ("same", "base")], n_boot=300, seed=0)
    assert out["better - base"]["excludes_0"] and out["better - base"]["low"] > 0
    assert not out["same - base"]["excludes_0"]
    assert out["base"]["low"] < out["base"]["auc"] < out["base"]["high"]
    assert out["base"]["auc"] == pytest.approx(roc_auc_score(y, base))
    with pytest.raises(KeyError):
        stats.bootstrap_auc(y, {"base": base}, users, pairs=[("x", "base")], n_boot=5)
    table = stats.interval_table(out)
    assert table.loc["better - base", "with 95% interval"].startswith("+")


def test_paired_mean_diff_hand_computed_and_seeded():
    a = np.array([0.5, np.nan, 1.0, 0.0])
    b = np.array([0.25, 0.3, 0.5, 0.0])
    out = stats.paired_mean_diff(a, b, n_boot=200, seed=3)
    assert out["diff"] == pytest.approx((0.25 + 0.5 + 0.0) / 3)  # the NaN user is dropped from both
    assert out["low"] <= out["diff"] <= out["high"]
    # resamples are means of 3 of the differences {0.25, 0.5, 0}: within [0, 0.5]
    assert 0.0 <= out["low"] and out["high"] <= 0.5
    assert stats.paired_mean_diff(a, b, n_boot=200, seed=3) == out
    same = stats.paired_mean_diff(b, b, n_boot=50, seed=0)
    assert same["diff"] == same["low"] == same["high"] == 0.0 and not same["excludes_0"]
    with pytest.raises(ValueError, match="aligned"):
        stats.paired_mean_diff(a, b[:2])
    with pytest.raises(ValueError, match="NaN for a user"):
        stats.paired_mean_diff(b, a)


def test_bootstrap_log_loss_against_sklearn_and_by_hand():
    from sklearn.metrics import log_loss

    from ecrec.stats import user_resample_weights

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=60)
    users = rng.integers(0, 12, size=60)
    a = np.clip(0.5 + 0.3 * (y - 0.5) + 0.1 * rng.normal(size=60), 0.01, 0.99)
    b = np.full(60, 0.5)
    out = stats.bootstrap_log_loss(y, {"a": a, "b": b}, users, pairs=[("a", "b")], n_boot=50, seed=3)
    assert out["a"]["log_loss"] == pytest.approx(log_loss(y, a))
    assert out["b"]["log_loss"] == pytest.approx(math.log(2))
    assert out["a - b"]["diff"] == pytest.approx(log_loss(y, a) - math.log(2))
    # the interval comes from resamples of users: recompute them
    counts, idx = user_resample_weights(users, 50, 3)
    w = counts[:, idx]
    per_row = -(y * np.log(a) + (1 - y) * np.log(1 - a))
    boots = (w @ per_row) / w.sum(1)
    assert out["a"]["low"] == pytest.approx(np.quantile(boots, 0.025))
    assert out["a"]["high"] == pytest.approx(np.quantile(boots, 0.975))
    assert out["a - b"]["excludes_0"] and out["a - b"]["high"] < 0
    with pytest.raises(KeyError):
        stats.bootstrap_log_loss(y, {"a": a}, users, pairs=[("a", "c")], n_boot=5)
    with pytest.raises(ValueError, match="0 and 1"):
        stats.bootstrap_log_loss(y * 2, {"a": a}, users, n_boot=5)


@pytest.mark.parametrize("level", [0.9, 0.95])
def test_every_interval_carries_its_level_and_the_table_says_it(level):
    rng = np.random.default_rng(5)
    users = np.repeat(np.arange(40), 5)
    y = np.tile([0, 1, 0, 0, 1], 40)
    a = rng.normal(size=200) + y
    b = rng.normal(size=200)
    label = {0.9: "with 90% interval", 0.95: "with 95% interval"}[level]
    auc = stats.bootstrap_auc(y, {"a": a, "b": b}, users, pairs=[("a", "b")], n_boot=100, level=level)
    ll = stats.bootstrap_log_loss(y, {"a": 1 / (1 + np.exp(-a))}, users, n_boot=100, level=level)
    diff = stats.paired_mean_diff(a[:40], b[:40], n_boot=100, level=level)
    for entry in [*auc.values(), *ll.values(), diff]:
        assert entry["level"] == level
    for result in (auc, ll, {"a - b": diff}):
        table = stats.interval_table(result)
        assert label in table.columns and not any("95%" in c for c in table.columns if level == 0.9)
    # the interval is the (1 - level) / 2 and (1 + level) / 2 quantiles of the resampled means
    d = a[:40] - b[:40]
    idx = np.random.default_rng(0).integers(0, 40, (100, 40))
    assert diff["low"] == pytest.approx(np.quantile(d[idx].mean(1), (1 - level) / 2))
    assert diff["high"] == pytest.approx(np.quantile(d[idx].mean(1), (1 + level) / 2))
    assert stats.interval_table(ll).loc["a", label].startswith(f"{ll['a']['log_loss']:.3f} [")


def test_interval_table_refuses_unlabelled_or_mixed_levels():
    assert stats.level_label(0.95) == "95%" and stats.level_label(0.9) == "90%" and stats.level_label(0.999) == "99.9%"
    with pytest.raises(ValueError, match="carry no 'level'"):
        stats.interval_table({"x": {"diff": 0.1, "low": 0.0, "high": 0.2}})
    mixed = {"x": {"diff": 0.1, "low": 0.0, "high": 0.2, "level": 0.9},
             "y": {"diff": 0.1, "low": 0.0, "high": 0.2, "level": 0.95}}
    with pytest.raises(ValueError, match="mix interval levels"):
        stats.interval_table(mixed)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        stats.paired_mean_diff([0.1], [0.0], level=95)


def test_misaligned_users_are_named_with_both_lengths():
    y = np.array([0, 1, 0, 1])
    s = np.array([0.1, 0.9, 0.2, 0.8])
    with pytest.raises(ValueError, match=r"users .*shape \(4,\).*3 entries for 4 rows"):
        stats.bootstrap_auc(y, {"a": s}, users=[1, 2, 3], n_boot=5)
    with pytest.raises(ValueError, match=r"users .*5 entries for 4 rows"):
        stats.bootstrap_log_loss(y, {"a": s}, users=[1, 2, 3, 4, 5], n_boot=5)
