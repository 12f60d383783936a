"""Chapter 06's training cell (8 tabular multi-task nets) at the cpu profile's sizes, timed and profiled.

Reproduces the cell that starts ``BUY, RET = ("buy",), ("return_given_buy",)``: chapter 03's
dataset for 1,000 users, return labels, the same eight specs, 3 epochs. Prints CPU and wall seconds
per model and in all, and (``--profile``) the top of a cProfile of one model's training, so the
cost can be attributed (forward/backward, gradient norm, evaluation, Python per step).

    python benchmarks/bench_multitask.py [--users 1000] [--epochs 3] [--profile] [--only shared_bottom]
        [--threads none 1]   # torch's default threads against one, side by side, per model
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import pstats
import time

import numpy as np

from ecrec import ctr
from ecrec import features as F
from ecrec import multitask as MT
from ecrec.data import load_clean_online_retail, load_online_retail


def frames(users: int, cache_dir: str, seed: int = 42):
    clean, _ = load_clean_online_retail()
    raw = load_online_retail()
    events = F.purchase_events(clean)
    _, test_start = F.split_dates(events["ts"], valid_days=30, test_days=30)
    size = {**F.DATASET_SIZES["smoke"], "max_users": users}
    config = F.dataset_config(size, seed=seed)
    data = F.load_or_build_ctr_dataset(clean, config, cache_dir)
    until = np.where(data["split"] == "test", events["ts"].max(), test_start).astype("datetime64[us]")
    labels = MT.return_labels(data, events, MT.cancellation_lines(raw), observed_until=until)
    frame = F.add_item_attributes(data.join(labels), F.item_catalog(clean))
    frame["purchase_observed"] = (frame["label"] == 1) & frame["return_observed"]
    frame["bought_and_returned"] = frame["label"] * frame["returned"]
    train, valid, test = (frame[frame["split"] == s].reset_index(drop=True) for s in F.SPLITS)
    return train, valid, config


def specs(base, cats):
    BUY, RET = ("buy",), ("return_given_buy",)
    BOTH = BUY + RET
    uw = dataclasses.replace(base, weighting="uncertainty")
    out = {
        "single_buy": (lambda c, n, i: MT.SharedBottom(c, n, i, BUY, base), ["label"], [None], base),
        "single_return": (lambda c, n, i: MT.SharedBottom(c, n, i, RET, base), ["returned"], ["purchase_observed"], base),
        "shared_bottom": (lambda c, n, i: MT.SharedBottom(c, n, i, BOTH, base), ["label", "returned"],
                          [None, "purchase_observed"], base),
        "shared_bottom_uw": (lambda c, n, i: MT.SharedBottom(c, n, i, BOTH, base), ["label", "returned"],
                             [None, "purchase_observed"], uw),
        "mmoe": (lambda c, n, i: MT.MMoE(c, n, i, BOTH, base), ["label", "returned"], [None, "purchase_observed"], base),
        "mmoe_uw": (lambda c, n, i: MT.MMoE(c, n, i, BOTH, base), ["label", "returned"], [None, "purchase_observed"], uw),
        "esmm": (lambda c, n, i: MT.ESMM(c, n, i, base), ["label", "bought_and_returned"], [None, "return_observed"], base),
    }
    out["single_return_no_ids"] = out["single_return"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--cache", default="/tmp/ecrec_bench_cache")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--threads", nargs="*", default=["1"],
                    help="torch_threads settings to train each model with, side by side ('none': torch's own)")
    args = ap.parse_args()
    train, valid, config = frames(args.users, args.cache)
    groups = [g for g in ctr.GROUPS if g != "text"]
    cats, nums = ctr.group_columns(groups, train.columns)
    base = MT.MultitaskConfig(max_epochs=args.epochs, history_len=config.history_len, seed=42)
    no_ids = [c for c in cats if c not in ("user_id", "item_id")]
    print(f"train {len(train):,} rows, valid {len(valid):,}; {len(cats)} categorical, {len(nums)} numeric")
    settings = [None if t.lower() == "none" else int(t) for t in args.threads]
    total = {t: [0.0, 0.0] for t in settings}
    for name, (make, labels, masks, cfg0) in specs(base, cats).items():
        if args.only and name not in args.only:
            continue
        valid_loss = {}
        for threads in settings:  # side by side: the same model under each thread setting
            cfg = dataclasses.replace(cfg0, torch_threads=threads)
            prof = cProfile.Profile() if args.profile else None
            c0, w0 = time.process_time(), time.perf_counter()
            if prof:
                prof.enable()
            m = MT.train_multitask(make, train, valid, categorical=no_ids if name.endswith("_no_ids") else cats,
                                   numeric=nums, label_columns=labels, mask_columns=masks, config=cfg)
            if prof:
                prof.disable()
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            total[threads][0] += cpu
            total[threads][1] += wall
            valid_loss[threads] = np.array(m.history["valid_loss"][m.best_epoch - 1])
            print(f"{name:22s} threads {threads!s:4s} cpu {cpu:7.1f} s  wall {wall:7.1f} s  "
                  f"best epoch {m.best_epoch}  valid {np.round(valid_loss[threads], 5)}", flush=True)
            if prof:
                pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        if len(settings) > 1:
            diffs = [float(np.abs(v - valid_loss[settings[0]]).max()) for v in valid_loss.values()]
            print(f"{'':22s} largest valid-loss difference between settings: {max(diffs):.2e}")
    for threads, (cpu, wall) in total.items():
        print(f"all, threads {threads}: cpu {cpu:.1f} s, wall {wall:.1f} s")
    if len(settings) > 1:
        ref = total[settings[0]]
        for threads, (cpu, wall) in total.items():
            print(f"threads {threads} / threads {settings[0]}: cpu {cpu / ref[0]:.2f}x, wall {wall / ref[1]:.2f}x")


if __name__ == "__main__":
    main()
