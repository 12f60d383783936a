"""Multi-armed bandits and their offline evaluation by replay.

Three classic policies over ``n_arms`` items with 0/1 rewards (clicks):

* **epsilon-greedy**: the arm with the best observed CTR, except with
  probability epsilon a uniformly random arm;
* **UCB1** (Auer, Cesa-Bianchi & Fischer 2002): the arm maximising
  ``mean + sqrt(2 ln t / n_arm)``, every arm once first;
* **Thompson sampling** (Thompson 1933; Chapelle & Li 2011) with a
  Beta(alpha, beta) prior per arm: draw a CTR from each arm's posterior, play
  the largest.

**Replay** (Li, Chu, Langford & Wang, WSDM 2011) evaluates a policy on a log
collected by the *uniform random* policy: walk the log in time order; where
the policy's choice equals the logged item, the logged click is its reward and
it learns from it; elsewhere the row is skipped. Because the logger chose
uniformly, the kept rows are an unbiased sample of what the policy would have
met online; the price is that only about ``1 / n_arms`` of the log is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EpsilonGreedy", "UCB1", "ThompsonSampling", "ReplayResult", "replay"]


class _Counts:
    def __init__(self, n_arms: int) -> None:
        if n_arms < 1:
            raise ValueError(f"n_arms must be >= 1, got {n_arms}")
        self.n_arms = n_arms
        self.pulls = np.zeros(n_arms, dtype=np.int64)
        self.clicks = np.zeros(n_arms, dtype=np.float64)

    def update(self, arm: int, reward: float) -> None:
        """Record ``reward`` (0/1) for ``arm``."""
        self.pulls[arm] += 1
        self.clicks[arm] += reward


class EpsilonGreedy(_Counts):
    """Best observed CTR, or a uniform random arm with probability ``epsilon``; ties broken at random."""

    def __init__(self, n_arms: int, epsilon: float = 0.1, seed: int = 0) -> None:
        super().__init__(n_arms)
        if not 0 <= epsilon <= 1:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        self.epsilon, self.rng = epsilon, np.random.default_rng(seed)

    def select(self) -> int:
        if self.rng.random() < self.epsilon:
            return int(self.rng.integers(self.n_arms))
        ctr = np.divide(self.clicks, self.pulls, out=np.zeros(self.n_arms), where=self.pulls > 0)
        best = np.flatnonzero(ctr == ctr.max())
        return int(self.rng.choice(best))


class UCB1(_Counts):
    """Upper confidence bound ``mean + sqrt(2 ln t / n)``; unplayed arms first; ties broken at random."""

    def __init__(self, n_arms: int, seed: int = 0) -> None:
        super().__init__(n_arms)
        self.rng = np.random.default_rng(seed)

    def select(self) -> int:
        unplayed = np.flatnonzero(self.pulls == 0)
        if unplayed.size:
            return int(self.rng.choice(unplayed))
        t = self.pulls.sum()
        ucb = self.clicks / self.pulls + np.sqrt(2.0 * np.log(t) / self.pulls)
        return int(self.rng.choice(np.flatnonzero(ucb == ucb.max())))


class ThompsonSampling(_Counts):
    """Beta-Bernoulli Thompson sampling with a Beta(``alpha``, ``beta``) prior on every arm's CTR."""

    def __init__(self, n_arms: int, alpha: float = 1.0, beta: float = 1.0, seed: int = 0) -> None:
        super().__init__(n_arms)
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"alpha and beta must be > 0, got {alpha}, {beta}")
        self.alpha, self.beta, self.rng = alpha, beta, np.random.default_rng(seed)

    def select(self) -> int:
        draws = self.rng.beta(self.alpha + self.clicks, self.beta + self.pulls - self.clicks)
        return int(np.argmax(draws))


@dataclass(frozen=True)
class ReplayResult:
    """What a policy earned on the rows replay kept.

    Attributes:
        rows: int64 (m,) indices of the kept log rows, in order.
        rewards: float64 (m,) their clicks.
        cumulative_ctr: float64 (m,) CTR after each kept row.
    """

    rows: np.ndarray
    rewards: np.ndarray
    cumulative_ctr: np.ndarray

    @property
    def ctr(self) -> float:
        return float(self.rewards.mean()) if len(self.rewards) else float("nan")


def replay(policy, arms: np.ndarray, rewards: np.ndarray) -> ReplayResult:
    """Li et al.'s replay of ``policy`` over a uniform-random log.

    Args:
        policy: an object with ``select() -> int`` and ``update(arm, reward)``
            (the classes above); it is updated in place.
        arms: int (n,) logged arms, in time order; rewards: (n,) their 0/1 clicks.

    Returns:
        A :class:`ReplayResult`.

    Raises:
        ValueError: lengths differ or an arm lies outside the policy's arms.
    """
    arms, rewards = np.asarray(arms), np.asarray(rewards, dtype=np.float64)
    if arms.shape != rewards.shape:
        raise ValueError(f"arms {arms.shape} and rewards {rewards.shape} must align")
    if len(arms) and (arms.min() < 0 or arms.max() >= policy.n_arms):
        raise ValueError(f"logged arms must lie in [0, {policy.n_arms})")
    kept = []
    for i, (arm, r) in enumerate(zip(arms, rewards, strict=True)):
        if policy.select() == arm:
            policy.update(int(arm), float(r))
            kept.append(i)
    rows = np.asarray(kept, dtype=np.int64)
    got = rewards[rows]
    return ReplayResult(rows, got, np.cumsum(got) / np.arange(1, len(got) + 1))
