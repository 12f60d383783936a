"""Chapter 04, exercises 1 and 2: worked solutions.

Run from the repository root (offline, CPU is enough)::

    python notebooks/solutions/04_exercises.py --smoke      # about a minute on 2 CPU cores
    python notebooks/solutions/04_exercises.py              # chapter 04's cpu sizes (500 users)
    python notebooks/solutions/04_exercises.py --smoke --output _output/solutions   # + the figure

``tests/test_solutions.py`` runs ``main(smoke=True)`` and checks the numbers it
returns, so the answers below stay true when the package changes.

Exercise 1. Fine-tune the bi-encoder with a **random** head (no
``init_head_from_probe``) next to the probe-warm-started head, on the same
examples and with the same settings, and watch the logit spread per step.

    The random head (weights ~ N(0, 0.02^2), bias 0) reads features of norm
    below 1.5 ([u, v, u * v], v of unit norm), so every logit is close to 0:
    p ~ 0.5 for every example, far from the base rate (~0.2), with a batch
    spread of a few hundredths. Its
    validation AUC at step 0 is that of a random projection of the features,
    near 0.5: no ranking has been learnt. A few steps at a head learning rate of
    1e-3 move each weight by at most ~1e-3 a step, far from the probe's
    weights (an order of magnitude larger). What the steps do learn first is
    the base rate: the logits shift down together (the weights move along the
    features' common direction), the validation log loss falls from ln 2 =
    0.693 towards the base rate's entropy (~0.50), and the spread stays a few
    hundredths, so the AUC does not improve.

    The warm-started head *is* the probe at step 0: its step-0 validation AUC
    equals the probe's AUC on the same rows (same logits: the encoder has not
    moved), its logits sit around the base rate's log-odds with a spread of
    about 0.5, and fine-tuning moves from there. On the smoke sizes (128 pairs,
    8 steps, 128 validation rows) it does not beat the probe, and early
    stopping keeps step 0: a known starting point is what makes that a safe
    outcome rather than a silent collapse.

Exercise 2. On chapter 03's uniform-negatives dataset, use the item's sales in
the last 7 days (``i_pop_7d``) instead of the last 30 (``i_pop_30d``) as the
score. Under uniform negatives a positive tends to be a popular item, so both
windows rank far above 0.5 (AUC ~0.79 on the smoke data). The 30-day count
ranks slightly better: it counts more sales, and the 7-day count is 0 (a tie
the score cannot break) for about one test row in six. The gap is small; the
paired bootstrap over users says whether it is more than noise (on the smoke
data, 250 users, its 95% interval still includes 0).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]

# smoke: the sizes tests/test_solutions.py runs (about a minute on 2 CPU cores);
# otherwise chapter 04's cpu sizes (500 users, 768 training pairs).
SIZES = {
    "smoke": {"max_users": 250, "n_train": 128, "n_valid": 128, "n_probe": 2000, "n_history": 3,
              "item_tokens": 24, "batch_size": 16, "epochs": 1, "eval_every": 4, "lr": 1e-4,
              "head_lr": 1e-3, "n_boot": 300},
    "cpu": {"max_users": 500, "n_train": 768, "n_valid": 512, "n_probe": 20000, "n_history": 3,
            "item_tokens": 24, "batch_size": 16, "epochs": 1, "eval_every": 16, "lr": 1e-4,
            "head_lr": 1e-3, "n_boot": 500},
}


def base_rate_log_loss(p: float) -> float:
    """Log loss of predicting the base rate ``p`` for every example (the labels' entropy, nats)."""
    return float(-(p * np.log(p) + (1 - p) * np.log(1 - p)))


def exercise_1(data: pd.DataFrame, catalog: pd.DataFrame, size: dict, *, seed: int, device: str,
               model_name: str = "minilm") -> dict:
    """Random head vs probe-warm-started head, same examples, same settings.

    Returns:
        ``{"base_rate", "base_rate_log_loss", "probe_valid_auc", "runs": {name: {...}}}`` with,
        per run (``"random_head"``, ``"warm_head"``): ``start_valid_auc``, ``end_valid_auc``
        (the last evaluation), ``best_valid_auc``, ``best_step``, ``start_valid_log_loss``,
        ``end_valid_log_loss``, ``step0_logit_mean`` / ``step0_logit_std`` (validation logits of the
        untrained head), ``first_step_logit_std`` / ``last_step_logit_std`` (training batches),
        ``last_step_loss``, and ``steps`` / ``history`` (the per-step and per-evaluation logs).
    """
    from sklearn.linear_model import LogisticRegression

    from ecrec import bert, finetune, pairs
    from ecrec.metrics import roc_auc
    from ecrec.text import load_tokenizer

    rng = np.random.default_rng(seed)

    def sample(frame: pd.DataFrame, n: int) -> pd.DataFrame:
        return frame.iloc[np.sort(rng.choice(len(frame), size=min(n, len(frame)), replace=False))]

    # chapter 04, section 4.3: fine-tune on n_train rows of the train window, validate on
    # n_valid rows of the validation window; the probe learns on other train rows.
    train_pool = data[data.split == "train"]
    ft_train = sample(train_pool, size["n_train"])
    ft_valid = sample(data[data.split == "valid"], size["n_valid"])
    probe_rows = sample(train_pool.drop(ft_train.index), size["n_probe"])
    frames = {"train": ft_train, "valid": ft_valid, "probe": probe_rows}
    # the chapter tokenizes the whole catalogue; here only the items these rows name (candidates
    # and the n_history most recent purchases), so that the item tower runs on fewer texts
    needed = {i for f in frames.values() for i in f.item_id}
    needed |= {i for f in frames.values() for h in f.hist_items for i in list(h)[: size["n_history"]]}
    descriptions = catalog.set_index("item_id")["description"]
    descriptions = descriptions[descriptions.index.isin(needed)]
    tokenizer = load_tokenizer(model_name)
    pad = tokenizer.pad_token_id
    enc = {name: pairs.encode_histories(tokenizer, frame, descriptions, size["n_history"], size["item_tokens"])
           for name, frame in frames.items()}
    valid = enc["valid"]

    # section 4.5: the frozen probe on [u, v, u * v] of the frozen MiniLM's item vectors
    warm = bert.load_ctr_model(model_name, architecture="bi", seed=seed)
    frozen = finetune.item_vectors(warm, enc["train"].item_tokens, pad_id=pad)
    probe = LogisticRegression(C=1.0, max_iter=1000).fit(
        bert.bi_features(frozen, enc["probe"].hist, enc["probe"].cand), enc["probe"].labels)
    probe_valid_auc = roc_auc(valid.labels, probe.decision_function(bert.bi_features(frozen, valid.hist, valid.cand)))

    # section 4.6: the warm start, and the exercise's random head (same seed, same settings)
    bert.init_head_from_probe(warm, probe.coef_, probe.intercept_)
    models = {"random_head": bert.load_ctr_model(model_name, architecture="bi", seed=seed), "warm_head": warm}
    config = finetune.TrainConfig(epochs=size["epochs"], batch_size=size["batch_size"], lr=size["lr"],
                                  head_lr=size["head_lr"], eval_every=size["eval_every"], patience=3, seed=seed,
                                  progress=False)
    runs = {}
    for name, model in models.items():
        # step-0 validation logits from the cached frozen vectors: the encoder has not moved yet
        logits0 = bert.bi_logits(model, frozen, valid.hist, valid.cand)
        res = finetune.train_ctr_model(model, enc["train"], valid, config, pad_id=pad, device=device)
        runs[name] = {
            "start_valid_auc": res.start_valid_auc,
            "end_valid_auc": res.history[-1]["valid_auc"],
            "best_valid_auc": res.best_valid_auc,
            "best_step": res.best_step,
            "start_valid_log_loss": res.history[0]["valid_log_loss"],
            "end_valid_log_loss": res.history[-1]["valid_log_loss"],
            "step0_logit_mean": float(logits0.mean()),
            "step0_logit_std": float(logits0.std()),
            "first_step_logit_std": res.steps[0]["logit_std"],
            "last_step_logit_std": res.steps[-1]["logit_std"],
            "last_step_loss": res.steps[-1]["loss"],
            "optimizer_steps": res.optimizer_steps,
            "steps": res.steps,
            "history": res.history,
        }
    base_rate = float(enc["train"].labels.mean())
    return {"base_rate": base_rate, "base_rate_log_loss": base_rate_log_loss(base_rate),
            "probe_valid_auc": probe_valid_auc, "n_train": len(enc["train"]), "n_valid": len(valid),
            "runs": runs}


def exercise_2(data: pd.DataFrame, size: dict, *, seed: int) -> dict:
    """Test AUC of the 7-day and 30-day popularity counts as scores, with a paired user bootstrap.

    Returns:
        ``{"test_rows", "auc": {"i_pop_7d", "i_pop_30d"}, "ties_share": {...}, "bootstrap": {...}}``;
        ``ties_share`` is the share of test rows whose count is 0 (a tie the score cannot break).
    """
    from ecrec.metrics import roc_auc
    from ecrec.stats import bootstrap_auc

    test = data[data.split == "test"]
    y = test.label.to_numpy()
    scores = {c: test[c].fillna(0).to_numpy(float) for c in ("i_pop_7d", "i_pop_30d")}
    boot = bootstrap_auc(y, scores, test.user_id.to_numpy(), pairs=[("i_pop_30d", "i_pop_7d")],
                         n_boot=size["n_boot"], seed=seed)
    return {"test_rows": len(test),
            "auc": {k: roc_auc(y, s) for k, s in scores.items()},
            "ties_share": {k: float((s == 0).mean()) for k, s in scores.items()},
            "bootstrap": boot}


def plot_steps(result: dict, path: Path) -> None:
    """The figure exercise 1 asks for: logit spread per step, and validation AUC per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, run in result["runs"].items():
        steps, hist = pd.DataFrame(run["steps"]), pd.DataFrame(run["history"])
        axes[0].plot(steps.step, steps.logit_std, marker="o", label=name)
        axes[1].plot(hist.step, hist.valid_auc, marker="o", label=name)
    axes[0].set(xlabel="optimizer step", ylabel="logit std in the batch", yscale="log",
                title="Logit spread per step")
    axes[1].axhline(0.5, color="grey", lw=1, ls="--")
    axes[1].set(xlabel="optimizer step (0 = before training)", ylabel="validation AUC",
                title="Validation AUC per evaluation")
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(smoke: bool, *, seed: int = 42, cache_dir: str | Path | None = None,
         output_dir: str | Path | None = None, verbose: bool = True) -> dict:
    """Both exercises; returns ``{"exercise_1": ..., "exercise_2": ..., "seconds": ...}``.

    Args:
        smoke: the small sizes (CPU, about a minute); otherwise chapter 04's cpu sizes.
        seed: seeds sampling, the heads and training.
        cache_dir: chapter 03's dataset cache (``<repo>/_output/cache`` when None).
        output_dir: where to save ``04_exercise_1.png`` (no figure when None).
        verbose: print the tables.
    """
    from ecrec import finetune
    from ecrec.data import load_clean_online_retail
    from ecrec.features import CtrDatasetConfig, item_catalog, load_or_build_ctr_dataset
    from ecrec.profiles import seed_everything

    started = time.time()
    size = SIZES["smoke" if smoke else "cpu"]
    seed_everything(seed)
    device = "cpu" if smoke else str(finetune.pick_device(verbose=verbose))
    clean, _ = load_clean_online_retail()
    catalog = item_catalog(clean)
    data = load_or_build_ctr_dataset(clean, CtrDatasetConfig(seed=seed, max_users=size["max_users"]),
                                     cache_dir or ROOT / "_output" / "cache")
    ex1 = exercise_1(data, catalog, size, seed=seed, device=device)
    ex2 = exercise_2(data, size, seed=seed)
    if output_dir is not None:
        plot_steps(ex1, Path(output_dir) / "04_exercise_1.png")
    if verbose:
        keys = ["start_valid_auc", "end_valid_auc", "best_valid_auc", "best_step", "step0_logit_mean",
                "step0_logit_std", "first_step_logit_std", "last_step_logit_std", "last_step_loss",
                "end_valid_log_loss"]
        print(f"Exercise 1: {ex1['n_train']} training pairs, {ex1['n_valid']} validation pairs, base rate "
              f"{ex1['base_rate']:.3f} (log loss of predicting it: {ex1['base_rate_log_loss']:.4f}); "
              f"probe's validation AUC {ex1['probe_valid_auc']:.4f}")
        print(pd.DataFrame({n: {k: r[k] for k in keys} for n, r in ex1["runs"].items()}).round(4).to_string())
        for name, run in ex1["runs"].items():
            print(f"{name}, logit std per step:", " ".join(f"{s['logit_std']:.3f}" for s in run["steps"]))
        print(f"\nExercise 2: popularity counts as scores, {ex2['test_rows']:,} test rows (uniform negatives)")
        print(pd.DataFrame({"test AUC": ex2["auc"], "share of rows with count 0": ex2["ties_share"]}).round(4))
        d = ex2["bootstrap"]["i_pop_30d - i_pop_7d"]
        print(f"30d - 7d: {d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] (95% interval over users)")
    return {"exercise_1": ex1, "exercise_2": ex2, "seconds": time.time() - started}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes, CPU (about a minute)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default=None, help="folder for the figure")
    args = parser.parse_args()
    out = main(args.smoke, seed=args.seed, output_dir=args.output)
    print(f"\n{out['seconds']:.0f} s")
