"""Chapter 10, exercises 1 and 2: worked solutions.

Run from the repository root (offline, seconds on a CPU)::

    python notebooks/solutions/10_exercises.py --smoke
    python notebooks/solutions/10_exercises.py

``tests/test_solutions_10.py`` runs ``main(smoke=True)`` and checks the
numbers it returns, so the answers below stay true when the package changes.

Exercise 1. Clip IPS's importance weights at c = 1, 2, 5, 10, 20 (and none).

    Clipping trades variance for bias: a weight above c counts as c, so the
    estimate is pulled towards what the logging policy's rows say and the
    effective sample size rises. On the random logs the largest weights are
    10-20 (BTS shows a few items up to 20 times as often as uniform does). At
    c = 1 every weight above 1 is cut: the estimate falls below BTS's real CTR
    in every campaign, because the clicks of the items BTS favours are counted
    at most once; its effective sample size is the largest. At c = 20 no
    weight is cut and the estimate is the unclipped one. Which c has the
    lowest error differs by campaign (none in "all", c = 2 in "women"), and
    with a few dozen clicks per log the error of any one c is itself noisy
    (section 10.4's intervals): choosing c on this sample would be choosing
    noise. The rule that survives: clip only where the effective sample size
    is small, and report it beside the estimate.

Exercise 2. Position bias per campaign instead of pooled.

    With 38-46 clicks per random log (10 to 16 in a top or bottom slot), each campaign's top
    minus bottom interval covers 0, as the pooled one does: the sample is too
    small to show a slot effect in any single campaign. The point estimates
    do not even agree in sign across campaigns, which is what noise looks like.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from ecrec import obd, ope

CLIPS = (1.0, 2.0, 5.0, 10.0, 20.0, None)
SIZES = {"smoke": {"n_sim": 10_000, "n_boot": 200}, "cpu": {"n_sim": 100_000, "n_boot": 1000}}


def clipping(n_sim: int, seed: int) -> pd.DataFrame:
    """Exercise 1: IPS with clipped weights, per campaign: estimate, relative error, ESS."""
    rows = []
    for c in obd.CAMPAIGNS:
        f = obd.load_open_bandit("random", c).frame
        truth = obd.load_open_bandit("bts", c).frame.click.mean()
        dist = obd.bts_action_dist(c, n_sim=n_sim, seed=seed)
        pi = np.broadcast_to(dist, (len(f), *dist.shape))
        r, a, k, p = (f[col].to_numpy() for col in ("click", "item_id", "position", "pscore"))
        for clip in CLIPS:
            est = ope.ips(r, a, k, p, pi, clip=clip)
            rows.append({"campaign": c, "clip": "none" if clip is None else f"{clip:g}", "estimate": est.value,
                         "bts_ctr": truth, "relative_error": abs(est.value - truth) / truth, "ess": est.ess})
    return pd.DataFrame(rows)


def position_by_campaign(n_boot: int, seed: int) -> pd.DataFrame:
    """Exercise 2: top-slot minus bottom-slot CTR per campaign's random log, with a 95% bootstrap interval."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in obd.CAMPAIGNS:
        f = obd.load_open_bandit("random", c).frame
        top = f.click.to_numpy()[f.position.to_numpy() == 0]
        bottom = f.click.to_numpy()[f.position.to_numpy() == 2]
        d = (top[rng.integers(0, len(top), (n_boot, len(top)))].mean(1)
             - bottom[rng.integers(0, len(bottom), (n_boot, len(bottom)))].mean(1))
        rows.append({"campaign": c, "top_clicks": int(top.sum()), "bottom_clicks": int(bottom.sum()),
                     "diff": top.mean() - bottom.mean(), "low": float(np.quantile(d, 0.025)),
                     "high": float(np.quantile(d, 0.975))})
    return pd.DataFrame(rows)


def main(smoke: bool = True, seed: int = 42, verbose: bool = True) -> dict:
    """Both exercises; returns ``{"exercise_1": DataFrame, "exercise_2": DataFrame}``."""
    size = SIZES["smoke" if smoke else "cpu"]
    out = {"exercise_1": clipping(size["n_sim"], seed), "exercise_2": position_by_campaign(size["n_boot"], seed)}
    if verbose:
        print(out["exercise_1"].round(4).to_string(index=False))
        print(out["exercise_2"].round(4).to_string(index=False))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    main(smoke=parser.parse_args().smoke)
