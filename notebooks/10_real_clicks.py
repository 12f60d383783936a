# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 10. Real clicks: position bias, off-policy evaluation and bandits
#
# Every "CTR" in chapters 03-08 is a purchase scored against **sampled**
# negatives: nothing in the retail log was ever shown to a customer and left
# unclicked. A real recommender logs *impressions*: what it showed, where, and
# whether the user clicked. With such a log, three questions open up that a
# purchase log cannot answer:
#
# * does the **position** of an item change its chance of a click?
# * could we know how a **new policy** would do, from the log of the old one,
#   without running an A/B test?
# * can a policy that **learns while it serves** (a bandit) be evaluated
#   offline?
#
# We answer them on the **Open Bandit Dataset** (ZOZOTOWN, a Japanese fashion
# e-commerce site; Saito, Aihara, Matsutani and Narita, NeurIPS 2021 Datasets
# and Benchmarks). Its small sample ships in the `obp` package: for each of
# three campaigns, 10,000 impressions logged by a **uniform random** policy and
# 10,000 by **Bernoulli Thompson sampling** (BTS), which ran at the same time.
# That second log is what makes this chapter unusual: an off-policy estimate of
# BTS from the random log can be checked against the CTR BTS really got.
#
# **You will learn to**
#
# * read an impression log and its propensities, and check them;
# * measure position bias where positions were assigned at random;
# * write the direct method, IPS, self-normalised IPS and doubly robust
#   estimators in a few lines each, and hold them against `obp.ope`;
# * judge an estimator by its error against a ground truth, with intervals,
#   and by its effective sample size;
# * evaluate epsilon-greedy, UCB and Thompson sampling offline with replay, and
#   see what replay costs.
#
# **You need** chapter 02 (CTR as a Bernoulli probability) and chapter 04's
# bootstrap intervals. No GPU: everything here runs in seconds.

# %% tags=["parameters", "remove-input"]
profile = "auto"  # "auto" | "smoke" | "cpu" | "full"
seed = 42
output_dir = "outputs/10_real_clicks"
sizes = None  # optional dict overriding the profile's sizes

# %% tags=["remove-input"]
# In Colab: fetch the book's code and data, then install it (skipped elsewhere).
import os
import subprocess
import sys

if "google.colab" in sys.modules and not os.path.isdir("ecrec-book"):
    subprocess.run(["git", "clone", "--depth", "1", "https://github.com/ecrec-book/ecrec", "ecrec-book"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements.txt"], cwd="ecrec-book", check=True)
    sys.path.insert(0, os.path.abspath("ecrec-book"))

# %% tags=["remove-input"]
import inspect
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from ecrec import bandits, obd, ope
from ecrec.io import write_metrics
from ecrec.plots import save
from ecrec.profiles import pick_sizes, seed_everything
from ecrec.verdict import decide, fmt_interval

STARTED = time.time()
SIZES = {
    # No model is large here: the sizes set how many bootstrap resamples, simulated BTS rankings
    # and bandit seeds the intervals rest on.
    "smoke": {"n_boot": 200, "n_sim": 10_000, "bandit_seeds": 4, "folds": 2, "_minutes": 1},
    "cpu": {"n_boot": 1000, "n_sim": 100_000, "bandit_seeds": 20, "folds": 2, "_minutes": 3},
    "full": {"n_boot": 2000, "n_sim": 100_000, "bandit_seeds": 50, "folds": 2, "_minutes": 4},
}
run_profile, size = pick_sizes(profile, SIZES, sizes)
seed_everything(seed)
print(f"sizes={size}")

# %% [markdown]
# ## 10.1 An impression log
#
# One row is one impression: the item shown (`item_id`), its slot on the page
# (`position`, 0 = top of three), whether the user clicked, and `pscore`, the
# probability with which the logging policy chose that item for that slot.
# `ecrec.obd` reads the CSV files from the installed `obp` package, checks
# their sha256, columns and values, and turns positions 0-based (obp's own
# loader fails on pandas 2, so we do not use it).

# %%
logs = {(p, c): obd.load_open_bandit(p, c) for p in obd.POLICIES for c in obd.CAMPAIGNS}
logs["random", "men"].frame[["ts", "item_id", "position", "click", "pscore", "user_feature_0"]].head()

# %%
overview = pd.DataFrame({
    f"{p} / {c}": {"items": log.n_items, "impressions": len(log.frame), "clicks": int(log.frame.click.sum()),
                   "CTR": log.frame.click.mean(), "pscore min": log.frame.pscore.min(),
                   "pscore max": log.frame.pscore.max()}
    for (p, c), log in logs.items()}).T
overview

# %% tags=["remove-input"]
clicks_total = int(overview["clicks"].sum())
display(Markdown(
    f"Clicks are rare: {clicks_total} in {int(overview['impressions'].sum()):,} impressions "
    f"({overview['CTR'].min():.2%} to {overview['CTR'].max():.2%} per log). The random policy's propensity is "
    "exactly 1/items at every slot; BTS's ranges from near 0 to near 1, because it shows the items it believes in "
    "almost always. Every interval in this chapter will be wide for that reason: a few dozen clicks per log is "
    "all the sample has."))

# %% [markdown]
# ## 10.2 Position bias
#
# Under the random policy an item's slot is drawn at random, independently of
# the item and the user: any difference in CTR between slots is the slot's own
# effect. We pool the three campaigns' random logs and give each slot's CTR a
# 95% interval from resampling impressions.

# %%
rand = pd.concat([logs["random", c].frame.assign(campaign=c) for c in obd.CAMPAIGNS], ignore_index=True)
rng = np.random.default_rng(seed)
by_pos = {}
for k in range(3):
    y = rand.loc[rand.position == k, "click"].to_numpy()
    boot = y[rng.integers(0, len(y), (size["n_boot"], len(y)))].mean(1)
    by_pos[k] = {"impressions": len(y), "clicks": int(y.sum()), "CTR": y.mean(),
                 "low": np.quantile(boot, 0.025), "high": np.quantile(boot, 0.975)}
position_ctr = pd.DataFrame(by_pos).T
position_ctr.index.name = "position (0 = top)"
position_ctr

# %%
top = rand.click.to_numpy()[rand.position.to_numpy() == 0]
rest = rand.click.to_numpy()[rand.position.to_numpy() == 2]
b_top = top[rng.integers(0, len(top), (size["n_boot"], len(top)))].mean(1)
b_rest = rest[rng.integers(0, len(rest), (size["n_boot"], len(rest)))].mean(1)
top_vs_bottom = {"diff": top.mean() - rest.mean(), "low": float(np.quantile(b_top - b_rest, 0.025)),
                 "high": float(np.quantile(b_top - b_rest, 0.975)), "level": 0.95}
fig, ax = plt.subplots(figsize=(5, 3))
ax.errorbar(position_ctr.index, position_ctr.CTR, yerr=[position_ctr.CTR - position_ctr.low,
            position_ctr.high - position_ctr.CTR], fmt="o", capsize=4)
ax.set_xticks([0, 1, 2], ["top", "middle", "bottom"])
ax.set_ylabel("CTR (95% interval)")
ax.set_title("CTR by slot, uniform random policy, 3 campaigns pooled")
save(fig, output_dir, "position_ctr")
plt.show()

# %% tags=["remove-input"]
display(Markdown(
    f"Top slot minus bottom slot: {fmt_interval(top_vs_bottom, 4)} in CTR. "
    + ("The interval clears 0: the slot alone changes the click rate, so a click model trained on logged clicks "
       "learns position as if it were relevance unless position is modelled (a position feature set to a fixed "
       "value at serving time, or inverse-propensity weights)."
       if top_vs_bottom["low"] > 0 or top_vs_bottom["high"] < 0 else
       "The interval covers 0: with these few clicks the sample cannot show a position effect, though the full "
       "Open Bandit Dataset (26 million impressions) and most click logs do.")
    + " Chapter 03's purchase \"CTR\" never had this problem, and never had its information either: a purchase "
    "log records no position, so it cannot separate what was shown well from what was liked."))

# %% [markdown]
# ## 10.3 Off-policy evaluation: four estimators in a few lines
#
# The question: what CTR would **BTS** have got, had it run instead of the
# random policy? We know its answer (it did run, on the same days), so we can
# check every estimator. BTS is context-free: its probability of showing item
# $a$ at slot $k$, $\pi_e(a \mid k)$, comes from the Beta priors ZOZOTOWN used,
# by simulating many rankings (`obd.bts_action_dist`, through obp's
# `BernoulliTS`).
#
# With $w_i = \pi_e(a_i \mid x_i, k_i) / \pi_b(a_i \mid x_i, k_i)$, the
# estimators are
#
# $$\hat V_{IPS} = \frac1n \sum_i w_i r_i, \qquad
#   \hat V_{SNIPS} = \frac{\sum_i w_i r_i}{\sum_i w_i}, \qquad
#   \hat V_{DM} = \frac1n \sum_i \sum_a \pi_e(a \mid x_i, k_i)\, \hat q(x_i, a, k_i),$$
#
# $$\hat V_{DR} = \hat V_{DM} + \frac1n \sum_i w_i \big(r_i - \hat q(x_i, a_i, k_i)\big).$$
#
# Here they are, as `ecrec.ope` writes them (the tests hold each one equal to
# `obp.ope` on the same inputs):

# %%
for fn in (ope.importance_weights, ope.ips, ope.snips, ope._dm_rows, ope.doubly_robust):
    print(inspect.getsource(fn))

# %% [markdown]
# The direct method needs a reward model $\hat q(x, a, k)$: a logistic
# regression of click on the item, the slot and the user's features,
# **cross-fitted** (each row predicted by a model that did not see it), in
# `ope.fit_reward_model`.

# %%
policy_dist = {c: obd.bts_action_dist(c, n_sim=size["n_sim"], seed=seed) for c in obd.CAMPAIGNS}
fig, ax = plt.subplots(figsize=(7, 3))
for c in obd.CAMPAIGNS:
    ax.plot(np.sort(policy_dist[c][:, 0])[::-1], label=f"{c} ({obd.N_ITEMS[c]} items)")
ax.set_xlabel("items, most likely first")
ax.set_ylabel("P(shown at the top slot)")
ax.set_yscale("log")
ax.set_title("The evaluation policy (BTS) concentrates on a few items")
ax.legend()
save(fig, output_dir, "bts_action_dist")
plt.show()

# %%
estimates, boots, truth = {}, {}, {}
for c in tqdm(obd.CAMPAIGNS, desc="campaigns"):
    f = logs["random", c].frame
    r, a, k, p = (f[col].to_numpy() for col in ("click", "item_id", "position", "pscore"))
    pi = np.broadcast_to(policy_dist[c], (len(f), *policy_dist[c].shape))  # context-free: one row repeated
    q = ope.fit_reward_model(f, logs["random", c].n_items, folds=size["folds"], seed=seed)
    estimates[c] = {name: fn(r, a, k, p, pi, q) for name, fn in ope.ESTIMATORS.items()}
    boots[c] = ope.bootstrap_values(r, a, k, p, pi, q, n_boot=size["n_boot"], seed=seed)
    on_policy = logs["bts", c].frame.click.to_numpy()
    truth[c] = {"value": on_policy.mean(),
                "boot": on_policy[np.random.default_rng(seed + 1).integers(0, len(on_policy),
                                                                          (size["n_boot"], len(on_policy)))].mean(1)}

# %% [markdown]
# ## 10.4 The A/B test you did not have to run, checked against the one that ran
#
# For each campaign: every estimate from the random log, the CTR BTS actually
# got (its own log), and the **relative error** $|\hat V - V| / V$. Its 95%
# interval resamples both logs independently, so it carries the noise of the
# estimate *and* of the ground truth, which has only a few dozen clicks too.
# The DM interval keeps the reward model fixed, so it is too narrow: it shows
# the log's noise given the model, not the model's own error.

# %%
rows = []
for c in obd.CAMPAIGNS:
    for name, est in estimates[c].items():
        rel = np.abs(boots[c][name] - truth[c]["boot"]) / truth[c]["boot"]
        lo, hi = np.quantile(boots[c][name], [0.025, 0.975])
        rows.append({"campaign": c, "estimator": name, "estimate": est.value, "low": lo, "high": hi,
                     "BTS's real CTR": truth[c]["value"],
                     "relative error": abs(est.value - truth[c]["value"]) / truth[c]["value"],
                     "rel. error low": np.quantile(rel, 0.025), "rel. error high": np.quantile(rel, 0.975),
                     "ESS": est.ess, "max weight": est.max_weight})
ope_table = pd.DataFrame(rows).set_index(["campaign", "estimator"])
ope_table.round(4)

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True)
for ax, c in zip(axes, obd.CAMPAIGNS, strict=True):
    t = ope_table.loc[c]
    ax.errorbar(t["estimate"], range(len(t)), xerr=[t["estimate"] - t["low"], t["high"] - t["estimate"]],
                fmt="o", capsize=3)
    lo_t, hi_t = np.quantile(truth[c]["boot"], [0.025, 0.975])
    ax.axvspan(lo_t, hi_t, color="C2", alpha=0.2, label="BTS's real CTR (95%)")
    ax.axvline(truth[c]["value"], color="C2")
    ax.axvline(logs["random", c].frame.click.mean(), color="grey", ls="--", label="random policy's CTR")
    ax.set_yticks(range(len(t)), t.index)
    ax.set_title(c)
    ax.set_xlabel("CTR")
axes[0].legend(loc="lower right", fontsize=8)
fig.suptitle("Off-policy estimates of BTS from the random log vs the CTR BTS got")
save(fig, output_dir, "ope_vs_truth")
plt.show()

# %% tags=["remove-input"]
ips_ess = {c: estimates[c]["IPS"].ess for c in obd.CAMPAIGNS}
covered = [(c, n) for c in obd.CAMPAIGNS for n in ope.ESTIMATORS
           if ope_table.loc[(c, n), "low"] <= truth[c]["value"] <= ope_table.loc[(c, n), "high"]]
best = ope_table["relative error"].groupby("estimator").mean().sort_values()
# paired comparisons of relative error: the same resamples of both logs for every estimator
rel_boot = {(c, n): np.abs(boots[c][n] - truth[c]["boot"]) / truth[c]["boot"] for c in obd.CAMPAIGNS
            for n in ope.ESTIMATORS}
pair_verdicts = {}
for c in obd.CAMPAIGNS:
    for i, a in enumerate(ope.ESTIMATORS):
        for b in list(ope.ESTIMATORS)[i + 1:]:
            d = rel_boot[c, a] - rel_boot[c, b]
            r = {"diff": ope_table.loc[(c, a), "relative error"] - ope_table.loc[(c, b), "relative error"],
                 "low": np.quantile(d, 0.025), "high": np.quantile(d, 0.975), "level": 0.95}
            pair_verdicts[c, a, b] = decide(r, better="lower").word
separated = [k for k, w in pair_verdicts.items() if w in ("a gain", "a loss")]
display(Markdown(
    f"The importance weights leave IPS an effective sample of {min(ips_ess.values()):,.0f} to "
    f"{max(ips_ess.values()):,.0f} of 10,000 impressions: BTS puts most of its mass on a few items that the "
    "random policy showed rarely. "
    f"{len(covered)} of {len(ope_table)} estimates have an interval that contains BTS's real CTR. Mean relative "
    "error over the campaigns: " + ", ".join(f"{n} {v:.0%}" for n, v in best.items()) + ". "
    f"Compared pairwise within a campaign on the same resamples, {len(separated)} of {len(pair_verdicts)} "
    "pairs of estimators differ in relative error by more than the interval"
    + (f" ({', '.join(f'{c}: {a} vs {b}' for c, a, b in separated)})" if separated else "")
    + ": the rest are within noise. What one day of logs does show is the size of the error to expect, and that "
    "the weights (the effective sample size), not the formula, set the variance."))

# %% [markdown]
# ## 10.5 Bandits, replayed
#
# A bandit learns while it serves: each impression it chooses an item, sees
# the click, updates. Replay (Li, Chu, Langford and Wang, WSDM 2011) runs it
# over the **random** log in time order and keeps only the rows where its
# choice equals the logged item. Because the logger chose uniformly, the kept
# rows are what the bandit would have met online; the cost is that only about
# one row in (number of items) is kept.

# %%
print(inspect.getsource(bandits.replay))

# %%
POLICIES = {"epsilon-greedy (0.1)": lambda n, s: bandits.EpsilonGreedy(n, epsilon=0.1, seed=s),
            "UCB1": lambda n, s: bandits.UCB1(n, seed=s),
            "Thompson sampling": lambda n, s: bandits.ThompsonSampling(n, seed=s),
            "uniform random": lambda n, s: bandits.EpsilonGreedy(n, epsilon=1.0, seed=s)}
JOBS = [(c, name, s) for c in obd.CAMPAIGNS for name in POLICIES for s in range(size["bandit_seeds"])]
# Each replay is a Python loop over the log, independent of the others and fixed by its seed: worker
# processes, one per core, run them side by side with the results of running them one after the other.
done = Parallel(n_jobs=-1, return_as="generator")(
    delayed(bandits.replay)(POLICIES[name](logs["random", c].n_items, seed + s),
                            logs["random", c].frame.item_id.to_numpy(), logs["random", c].frame.click.to_numpy())
    for c, name, s in JOBS)
replays = {}  # (campaign, policy) -> one ReplayResult per seed
for (c, name, _), result in zip(JOBS, tqdm(done, total=len(JOBS), desc="replays"), strict=True):
    replays.setdefault((c, name), []).append(result)

# %%
replay_table = pd.DataFrame({
    (c, name): {"kept rows (mean)": np.mean([len(r.rows) for r in runs]),
                "CTR (mean over seeds)": np.nanmean([r.ctr for r in runs]),
                "CTR seed low": np.nanquantile([r.ctr for r in runs], 0.05),
                "CTR seed high": np.nanquantile([r.ctr for r in runs], 0.95)}
    for (c, name), runs in replays.items()}).T
replay_table.round(4)

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True)
for ax, c in zip(axes, obd.CAMPAIGNS, strict=True):
    for name in POLICIES:
        runs = replays[c, name]
        m = min(len(r.cumulative_ctr) for r in runs)
        curves = np.stack([r.cumulative_ctr[:m] for r in runs])
        x = np.arange(1, m + 1)
        ax.plot(x, curves.mean(0), label=name)
        ax.fill_between(x, np.quantile(curves, 0.05, axis=0), np.quantile(curves, 0.95, axis=0), alpha=0.15)
    ax.set_title(f"{c} ({obd.N_ITEMS[c]} items)")
    ax.set_xlabel("kept impressions")
axes[0].set_ylabel("cumulative CTR (5-95% over seeds)")
axes[0].legend(fontsize=8)
fig.suptitle("Replay on the uniform-random log")
save(fig, output_dir, "replay_curves")
plt.show()

# %% tags=["remove-input"]
kept = replay_table["kept rows (mean)"]
overlap = {(c, n): not (replay_table.loc[(c, n), "CTR seed low"] > replay_table.loc[(c, "uniform random"), "CTR seed high"]
                        or replay_table.loc[(c, n), "CTR seed high"] < replay_table.loc[(c, "uniform random"), "CTR seed low"])
           for c in obd.CAMPAIGNS for n in POLICIES if n != "uniform random"}
display(Markdown(
    f"Replay kept {kept.min():.0f} to {kept.max():.0f} of 10,000 impressions per run, about 1 in "
    f"{10_000 / kept.mean():.0f}: a learning curve a few hundred steps long, with one click every "
    f"{1 / rand.click.mean():.0f} impressions or so. In {sum(overlap.values())} of {len(overlap)} (campaign, "
    f"bandit) pairs the bandit's 5-95% seed band over {size['bandit_seeds']} seeds overlaps the uniform random "
    "policy's: replay is unbiased, but a sample this small "
    + ("cannot separate the policies. " if all(overlap.values()) else "separates few of them. ")
    + "This is the measured reason teams log propensities over millions of impressions, and why the full Open "
    "Bandit Dataset has 26 million."))

# %% tags=["remove-input"]
metrics = {
    "clicks": {f"{p}/{c}": int(log.frame.click.sum()) for (p, c), log in logs.items()},
    "position_ctr": {str(k): {kk: round(float(v), 5) for kk, v in row.items()} for k, row in by_pos.items()},
    "top_minus_bottom": {k: round(float(v), 5) for k, v in top_vs_bottom.items()},
    "ope": {f"{c}/{n}": {"estimate": round(float(row["estimate"]), 5), "low": round(float(row["low"]), 5),
                         "high": round(float(row["high"]), 5), "relative_error": round(float(row["relative error"]), 4),
                         "ess": round(float(row["ESS"]), 1)}
            for (c, n), row in ope_table.iterrows()},
    "bts_ctr": {c: round(float(t["value"]), 5) for c, t in truth.items()},
    "ope_pairs_separated": len(separated),
    "ope_mean_relative_error": {n: round(float(v), 4) for n, v in best.items()},
    "replay": {f"{c}/{n}": {"kept": round(float(row["kept rows (mean)"]), 1),
                            "ctr": round(float(row["CTR (mean over seeds)"]), 5)}
               for (c, n), row in replay_table.iterrows()},
    "replay_overlaps_uniform": int(sum(overlap.values())),
}
write_metrics(output_dir, metrics, profile=run_profile, seed=seed, started=STARTED)

# %% [markdown]
# ## Summary

# %% tags=["remove-input"]
display(Markdown(
    f"* **Lesson:** on a real impression log, off-policy estimates of a new policy land within "
    f"{best.min():.0%}-{best.max():.0%} mean relative error of the CTR it really got, with intervals as wide as "
    f"the estimates, because {clicks_total} clicks in 60,000 impressions is little evidence; the effective "
    "sample size, not the estimator's name, says how much to trust one.\n"
    "* Propensities make a log reusable: with them, IPS, SNIPS and DR estimate any policy the logger could have "
    "played; without them (chapter 03's purchase log) only the direct method's model is left.\n"
    f"* Position: top minus bottom slot {fmt_interval(top_vs_bottom, 4)} in CTR under random placement.\n"
    "* Replay evaluates a learning policy without bias on a uniform log, at the price of keeping about one "
    "impression per item in the catalogue."))

# %% [markdown]
# **What accuracy misses is measured elsewhere in the book.** A click rate
# says nothing about what the lists look like. Chapter 05 (section 5.4.5)
# measures every candidate generator's lists beyond accuracy: catalogue
# coverage, novelty (the mean self-information of the recommended items),
# intra-list diversity in MiniLM's description space, the share of slots
# taken by the most popular 10% of items, and exposure by price band.
# Chapter 08 (section 8.7) measures the system's final top 10 the same way
# and re-ranks it with maximal marginal relevance (Carbonell and Goldstein,
# 1998), drawing the trade-off curve of NDCG@10 against intra-list diversity
# with bootstrap intervals. The definitions are in `ecrec.metrics`
# (`novelty_at_k`, `intra_list_diversity_at_k`, `popularity_bias_at_k`,
# `exposure_by_group_at_k`) and the re-ranker in `ecrec.rerank.mmr_rerank`.

# %% [markdown]
# ## Exercises
#
# 1. *(runnable)* Clip the importance weights (`ope.ips(..., clip=c)` for
#    c in 1, 2, 5, 10, 20) and plot IPS's relative error and effective sample
#    size against c for each campaign. Where does clipping help? A worked
#    solution is in `notebooks/solutions/10_exercises.py`.
# 2. *(runnable)* Position bias per campaign instead of pooled: does the top
#    slot's lead hold in each? (solution in the same file)
# 3. Fit the reward model without cross-fitting (train and predict on the same
#    rows). What happens to DM and DR, and why?
# 4. Replay a bandit that knows the positions: one Thompson sampler per slot.
#    How many rows does replay keep now?
# 5. Estimate the value of a *deterministic* policy, "always show the item
#    with the most clicks in the first half of the log", on the second half.
#    Which estimators still work, and what happens to the effective sample size?
