"""ecrec.ope and ecrec.obd: the estimators against obp.ope on the same inputs, hand values, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from ecrec import obd, ope

obp_ope = pytest.importorskip("obp.ope")


def _random_inputs(n=500, n_actions=5, len_list=3, seed=0):
    rng = np.random.default_rng(seed)
    action = rng.integers(0, n_actions, n)
    position = rng.integers(0, len_list, n)
    pscore = rng.uniform(0.05, 0.5, n)
    reward = rng.integers(0, 2, n).astype(float)
    pi = rng.dirichlet(np.ones(n_actions), size=(n, len_list)).transpose(0, 2, 1)  # (n, actions, positions)
    q = rng.uniform(0, 1, (n, n_actions, len_list))
    return reward, action, position, pscore, pi, q


def test_estimators_equal_obp():
    r, a, k, p, pi, q = _random_inputs()
    kw = {"reward": r, "action": a, "position": k, "pscore": p, "action_dist": pi}
    assert ope.ips(r, a, k, p, pi).value == pytest.approx(
        obp_ope.InverseProbabilityWeighting().estimate_policy_value(**kw), rel=1e-12)
    assert ope.snips(r, a, k, p, pi).value == pytest.approx(
        obp_ope.SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(**kw), rel=1e-12)
    assert ope.direct_method(k, pi, q).value == pytest.approx(obp_ope.DirectMethod().estimate_policy_value(
        position=k, action_dist=pi, estimated_rewards_by_reg_model=q), rel=1e-12)
    assert ope.doubly_robust(r, a, k, p, pi, q).value == pytest.approx(obp_ope.DoublyRobust().estimate_policy_value(
        estimated_rewards_by_reg_model=q, **kw), rel=1e-12)


def test_hand_computed_values_and_ess():
    # two rows, one action space of 2, one position
    r, a, k = np.array([1.0, 0.0]), np.array([0, 1]), np.array([0, 0])
    p = np.array([0.5, 0.25])
    pi = np.array([[[0.8], [0.2]], [[0.6], [0.4]]])  # pi_e(a0)=0.8 on row 0; pi_e(a1)=0.4 on row 1
    q = np.array([[[0.5], [0.1]], [[0.3], [0.2]]])
    w = np.array([0.8 / 0.5, 0.4 / 0.25])  # 1.6, 1.6
    assert ope.ips(r, a, k, p, pi).value == pytest.approx((1.6 * 1 + 1.6 * 0) / 2)
    assert ope.snips(r, a, k, p, pi).value == pytest.approx(1.6 / 3.2)
    dm_rows = np.array([0.8 * 0.5 + 0.2 * 0.1, 0.6 * 0.3 + 0.4 * 0.2])  # 0.42, 0.26
    assert ope.direct_method(k, pi, q).value == pytest.approx(dm_rows.mean())
    dr = dm_rows + w * (r - np.array([0.5, 0.2]))
    assert ope.doubly_robust(r, a, k, p, pi, q).value == pytest.approx(dr.mean())
    assert ope.ips(r, a, k, p, pi).ess == pytest.approx(2.0)  # equal weights: worth every row
    assert ope.effective_sample_size(np.array([1.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert ope.ips(r, a, k, p, pi, clip=1.0).value == pytest.approx(0.5)  # both weights capped at 1


@pytest.mark.parametrize("bad", [0.0, -0.1, np.nan, 1.5])
def test_bad_propensities_are_refused_not_inf(bad):
    r, a, k, p, pi, q = _random_inputs(n=10)
    p = p.copy()
    p[3] = bad
    with pytest.raises(ValueError, match="propensities are missing, 0, negative or above 1"):
        ope.ips(r, a, k, p, pi)
    with pytest.raises(ValueError, match="first at row 3"):
        ope.doubly_robust(r, a, k, p, pi, q)


def test_shape_and_index_refusals():
    r, a, k, p, pi, q = _random_inputs(n=10)
    with pytest.raises(ValueError, match="0-based"):
        ope.ips(r, a, k + 3, p, pi)
    with pytest.raises(ValueError, match="must align"):
        ope.ips(r, a[:5], k, p, pi)
    with pytest.raises(ValueError, match="q_hat"):
        ope.direct_method(k, pi, q[:, :2])
    with pytest.raises(ValueError, match="clip must be > 0"):
        ope.ips(r, a, k, p, pi, clip=0)


def test_bootstrap_resamples_are_paired_and_centred():
    r, a, k, p, pi, q = _random_inputs(n=400)
    boots = ope.bootstrap_values(r, a, k, p, pi, q, n_boot=300, seed=1)
    assert set(boots) == set(ope.ESTIMATORS)
    for name, fn in ope.ESTIMATORS.items():
        point = fn(r, a, k, p, pi, q).value
        lo, hi = np.quantile(boots[name], [0.025, 0.975])
        assert lo < point < hi
    again = ope.bootstrap_values(r, a, k, p, pi, q, n_boot=300, seed=1)
    assert all(np.array_equal(boots[n], again[n]) for n in boots)


def test_reward_model_is_cross_fitted_probabilities():
    log = obd.load_open_bandit("random", "men")
    q = ope.fit_reward_model(log.frame, log.n_items, seed=0)
    assert q.shape == (obd.ROWS, 34, 3)
    assert ((q > 0) & (q < 1)).all()
    # the mean predicted CTR of the logged actions is near the observed CTR (0.0046)
    rows = np.arange(len(q))
    logged = q[rows, log.frame.item_id.to_numpy(), log.frame.position.to_numpy()]
    assert logged.mean() == pytest.approx(log.frame.click.mean(), abs=0.002)


def test_obd_loads_checked_frames():
    for policy in obd.POLICIES:
        for campaign in obd.CAMPAIGNS:
            log = obd.load_open_bandit(policy, campaign)
            f = log.frame
            assert len(f) == 10_000 and log.n_items == obd.N_ITEMS[campaign]
            assert set(f.position.unique()) == {0, 1, 2}
            assert f.ts.is_monotonic_increasing
            assert len(log.items) == log.n_items
    rnd = obd.load_open_bandit("random", "all").frame
    assert np.allclose(rnd.pscore, 1 / 80)  # uniform over 80 items, at every position
    assert int(rnd.click.sum()) == 38
    assert int(obd.load_open_bandit("bts", "all").frame.click.sum()) == 42


def test_obd_refuses_altered_or_missing_files(tmp_path):
    src = obd.obd_path("random", "men")
    folder = tmp_path / "random" / "men"
    folder.mkdir(parents=True)
    (folder / "item_context.csv").write_bytes(obd.obd_path("random", "men", "items").read_bytes())
    with pytest.raises(obd.ObdFileError, match="file not found"):
        obd.load_open_bandit("random", "men", root=tmp_path)
    (folder / "men.csv").write_bytes(src.read_bytes()[:-100])
    with pytest.raises(obd.ObdFileError, match="sha256 .* differs"):
        obd.load_open_bandit("random", "men", root=tmp_path)
    with pytest.raises(ValueError, match="campaign must be one of"):
        obd.load_open_bandit("random", "kids")


def test_bts_action_dist_is_a_distribution_per_position():
    pi = obd.bts_action_dist("men", n_sim=2000, seed=0)
    assert pi.shape == (34, 3)
    np.testing.assert_allclose(pi.sum(0), 1.0)
    np.testing.assert_array_equal(pi, obd.bts_action_dist("men", n_sim=2000, seed=0))
