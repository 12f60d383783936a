"""ecrec.bandits: policies on hand-made cases, replay's bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from ecrec import bandits


class _Fixed:
    """A policy that always plays one arm (replay's bookkeeping, by hand)."""

    def __init__(self, arm, n_arms=3):
        self.arm, self.n_arms, self.seen = arm, n_arms, []

    def select(self):
        return self.arm

    def update(self, arm, reward):
        self.seen.append((arm, reward))


def test_replay_keeps_only_matching_rows():
    arms = np.array([0, 1, 1, 2, 1, 0])
    rewards = np.array([1, 0, 1, 1, 1, 0])
    p = _Fixed(1)
    res = bandits.replay(p, arms, rewards)
    np.testing.assert_array_equal(res.rows, [1, 2, 4])
    np.testing.assert_allclose(res.cumulative_ctr, [0, 0.5, 2 / 3])
    assert res.ctr == pytest.approx(2 / 3)
    assert p.seen == [(1, 0.0), (1, 1.0), (1, 1.0)]


def test_replay_of_uniform_policy_keeps_about_one_row_in_n_arms():
    rng = np.random.default_rng(0)
    arms = rng.integers(0, 10, 20_000)
    res = bandits.replay(bandits.EpsilonGreedy(10, epsilon=1.0, seed=1), arms, np.zeros(20_000))
    assert len(res.rows) == pytest.approx(2000, rel=0.1)


def test_ucb_plays_every_arm_once_then_the_bound():
    p = bandits.UCB1(3, seed=0)
    first = []
    for _ in range(3):
        a = p.select()
        first.append(a)
        p.update(a, 1.0 if a == 2 else 0.0)
    assert sorted(first) == [0, 1, 2]
    # means 0, 0, 1 with one pull each: bounds sqrt(2 ln 3) + mean, arm 2 is largest
    assert p.select() == 2


def test_epsilon_zero_is_greedy_and_thompson_follows_the_evidence():
    g = bandits.EpsilonGreedy(3, epsilon=0.0, seed=0)
    g.update(1, 1.0)
    g.update(0, 0.0)
    assert all(g.select() == 1 for _ in range(20))
    ts = bandits.ThompsonSampling(2, seed=0)
    for _ in range(200):
        ts.update(0, 1.0)
        ts.update(1, 0.0)
    assert sum(ts.select() == 0 for _ in range(100)) == 100


def test_refusals():
    with pytest.raises(ValueError, match="epsilon"):
        bandits.EpsilonGreedy(3, epsilon=1.5)
    with pytest.raises(ValueError, match="n_arms"):
        bandits.UCB1(0)
    with pytest.raises(ValueError, match="alpha and beta"):
        bandits.ThompsonSampling(2, alpha=0)
    with pytest.raises(ValueError, match="must lie in"):
        bandits.replay(bandits.UCB1(2), np.array([0, 5]), np.array([0, 1]))
