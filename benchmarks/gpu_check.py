"""Chapter 04 on one GPU in <= 5 minutes: AUCs per strategy and bf16 throughput, in one JSON.

**Not yet run on a GPU**: no GPU was available in the session that wrote this
script; only its ``--tiny`` CPU path has been executed. Run it whenever a GPU
is available and paste the JSON's summary into ``benchmarks/NOTES.md``.

What it runs (a subset of chapter 04's ``full``-profile comparison):

1. chapter 03's dataset with **popularity-matched negatives**
   (``CtrDatasetConfig(negatives="popularity")``, ``--max-users`` users),
   where popularity alone is weak and a model must personalise; samples of
   the train, valid and test windows. Baseline: the 30-day popularity count
   as the score.
2. **cross-encoder** (``[CLS] history [SEP] candidate [SEP]``): the frozen
   encoder's pooled features + logistic regression (the **probe**), then the
   head warm-started from the probe (``init_head_from_probe``) and the whole
   model **fine-tuned** (``train_ctr_model``: validation at step 0, early
   stopping, best weights kept).
3. **bi-encoder** (shared towers, head on ``[u, v, u * v]``): probe, then fine-tuned the same way.
4. the **throughput benchmark** (``benchmarks/bench_bert.py``): naive loop,
   ecrec and Hugging Face ``Trainer`` in fp32 and bf16, samples/s and MFU.

Test AUCs are computed from logits (``evaluate_logits``) on the test window.
The JSON (``--out``, default ``_output/gpu_check.json``) is rewritten after
every stage, so a run cut short still leaves what it measured; a stage that
would start after ``--budget-s`` seconds is skipped and marked so.

    python benchmarks/gpu_check.py                  # one CUDA GPU, <= 5 min (estimate)
    python benchmarks/gpu_check.py --tiny           # any machine, tiny sizes (30 s on 2 shared CPU cores)

Without a CUDA GPU and without ``--tiny`` it refuses (exit 2): the GPU sizes
would take hours on a CPU. Nothing is downloaded (MiniLM is packaged).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression

from ecrec import bert, pairs
from ecrec.data import load_clean_online_retail
from ecrec.features import CtrDatasetConfig, item_catalog, load_or_build_ctr_dataset
from ecrec.finetune import (
    TrainConfig,
    amp_plan,
    evaluate_logits,
    pick_device,
    predict_logits,
    train_ctr_model,
)
from ecrec.io import atomic_write_text, library_versions
from ecrec.metrics import roc_auc
from ecrec.profiles import seed_everything
from ecrec.text import load_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_bert  # noqa: E402  (benchmarks/bench_bert.py)

ROOT = Path(__file__).resolve().parent.parent

SIZES: dict[str, dict[str, Any]] = {
    # one CUDA GPU (sized for an A100/H100-class card; a T4 takes longer): estimate, not yet measured
    "gpu": {"max_users": 1000, "n_train": 12000, "n_valid": 2000, "n_test": 6000, "max_length": 96,
            "item_max_length": 32, "n_history": 5, "batch_size": 64, "epochs": 1, "lr": 5e-5, "head_lr": 1e-3,
            "eval_every": 40, "patience": 3, "bench_n_train": 4096, "bench_n_valid": 2000, "bench_batch_size": 64},
    # --tiny: checks the code path anywhere (CPU included), numbers meaningless
    "tiny": {"max_users": 250, "n_train": 48, "n_valid": 48, "n_test": 64, "max_length": 48,
             "item_max_length": 16, "n_history": 3, "batch_size": 16, "epochs": 1, "lr": 1e-4, "head_lr": 1e-3,
             "eval_every": 2, "patience": 2, "bench_n_train": 32, "bench_n_valid": 48, "bench_batch_size": 16},
}


def frozen_features(model, data, *, pad_id: int, device, precision: str, batch_size: int = 256) -> np.ndarray:
    """What the head reads, ``model.features(**batch)``, for every example of the frozen model (eval mode).

    Returns:
        float32 (len(data), model.head.in_features), in the input order.
    """
    plan = amp_plan(device, precision)
    out = np.empty((len(data), model.head.in_features), dtype=np.float32)
    model.to(device).eval()
    with torch.inference_mode():
        for idx in pairs.sorted_batches(data.lengths, batch_size):
            batch = {k: v.to(device) for k, v in data.batch(idx, pad_id).items()}
            with plan.autocast(device):
                out[idx] = model.features(**batch).float().cpu().numpy()
    return out


def probe_then_finetune(model, train, valid, test, config: TrainConfig, *, pad_id: int, device) -> dict[str, Any]:
    """Fit the frozen probe, warm-start the head from it, fine-tune; AUCs from logits.

    Returns:
        ``{"probe_test_auc", "probe_valid_auc", "finetuned_test_auc", "start_valid_auc",
        "best_valid_auc", "best_step", "steps", "samples_per_s", "seconds"}``.
    """
    t0 = time.perf_counter()
    feats = {k: frozen_features(model, d, pad_id=pad_id, device=device, precision=config.precision)
             for k, d in (("train", train), ("valid", valid), ("test", test))}
    probe = LogisticRegression(C=1.0, max_iter=2000).fit(feats["train"], train.labels)
    bert.init_head_from_probe(model, probe.coef_, probe.intercept_)
    res = train_ctr_model(model, train, valid, config, pad_id=pad_id, device=device)
    z = predict_logits(model, test, pad_id=pad_id, device=device, precision=config.precision)
    return {
        "probe_test_auc": evaluate_logits(test.labels, probe.decision_function(feats["test"]))["auc"],
        "probe_valid_auc": evaluate_logits(valid.labels, probe.decision_function(feats["valid"]))["auc"],
        "finetuned_test_auc": evaluate_logits(test.labels, z)["auc"],
        "start_valid_auc": res.start_valid_auc, "best_valid_auc": res.best_valid_auc,
        "best_step": res.best_step, "steps": res.optimizer_steps, "samples_per_s": res.samples_per_s,
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every stage within the budget and write the JSON; returns what it wrote."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: checks the code on any machine")
    ap.add_argument("--out", default=str(ROOT / "_output" / "gpu_check.json"))
    ap.add_argument("--budget-s", type=float, default=300.0, help="no stage starts after this many seconds")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)

    started = time.perf_counter()
    device = pick_device(args.device)
    if device.type != "cuda" and not args.tiny:
        print(f"gpu_check: no CUDA GPU here ({device}); the GPU sizes would take hours. "
              "Run it on a GPU, or pass --tiny to check the code path.", file=sys.stderr)
        raise SystemExit(2)
    size = SIZES["tiny" if args.tiny else "gpu"]
    precision = amp_plan(device).name  # bf16 on recent GPUs, fp16 on older ones, fp32 on a CPU
    seed_everything(args.seed)
    out_path = Path(args.out)
    report: dict[str, Any] = {
        "script": "benchmarks/gpu_check.py", "tiny": args.tiny, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "precision": precision, "sizes": size, "seed": args.seed, "versions": library_versions(),
        "negatives": "popularity", "auc": {}, "stages": {}, "skipped": [],
    }

    def save() -> None:
        report["wall_seconds"] = time.perf_counter() - started
        atomic_write_text(out_path, json.dumps(report, indent=2, default=float))

    def budget_left(stage: str) -> bool:
        if time.perf_counter() - started > args.budget_s:
            report["skipped"].append(stage)
            print(f"[gpu_check] budget of {args.budget_s:.0f} s spent: skipping {stage}")
            save()
            return False
        return True

    # 1. data: popularity-matched negatives --------------------------------------------------
    t0 = time.perf_counter()
    clean, _ = load_clean_online_retail()
    config = CtrDatasetConfig(seed=args.seed, max_users=size["max_users"], negatives="popularity")
    data = load_or_build_ctr_dataset(clean, config, ROOT / "_output" / "cache")
    catalog = item_catalog(clean)
    descriptions = catalog.set_index("item_id")["description"]
    rng = np.random.default_rng(args.seed)

    def sample(frame: pd.DataFrame, n: int) -> pd.DataFrame:
        return frame.iloc[np.sort(rng.choice(len(frame), size=min(n, len(frame)), replace=False))]

    frames = {"train": sample(data[data.split == "train"], size["n_train"]),
              "valid": sample(data[data.split == "valid"], size["n_valid"]),
              "test": sample(data[data.split == "test"], size["n_test"])}
    test = frames["test"]
    report["auc"]["popularity_30d"] = roc_auc(test.label.to_numpy(), test.i_pop_30d.fillna(0).to_numpy())
    report["rows"] = {k: len(f) for k, f in frames.items()}
    report["stages"]["data"] = {"seconds": time.perf_counter() - t0}
    print(f"[gpu_check] data: {report['rows']}, popularity-only test AUC {report['auc']['popularity_30d']:.3f}")
    save()

    tokenizer = load_tokenizer()
    pad_id = tokenizer.pad_token_id
    train_config = TrainConfig(epochs=size["epochs"], batch_size=size["batch_size"], lr=size["lr"],
                               head_lr=size["head_lr"], eval_every=size["eval_every"], patience=size["patience"],
                               precision=precision, seed=args.seed, progress=False)

    # 2. cross-encoder ---------------------------------------------------------------------
    if budget_left("cross"):
        text = {k: pairs.build_text_pairs(f, descriptions, size["n_history"]) for k, f in frames.items()}
        enc = {k: pairs.encode_pairs(tokenizer, p.text_a, p.text_b, p.label, size["max_length"])
               for k, p in text.items()}
        model = bert.load_ctr_model(architecture="cross", seed=args.seed)
        cross = probe_then_finetune(model, enc["train"], enc["valid"], enc["test"], train_config,
                                    pad_id=pad_id, device=device)
        del model
        report["stages"]["cross"] = cross
        report["auc"]["cross_probe"] = cross["probe_test_auc"]
        report["auc"]["cross_finetuned"] = cross["finetuned_test_auc"]
        print(f"[gpu_check] cross-encoder: probe {cross['probe_test_auc']:.3f} -> fine-tuned "
              f"{cross['finetuned_test_auc']:.3f} ({cross['seconds']:.0f} s)")
        save()

    # 3. bi-encoder ------------------------------------------------------------------------
    if budget_left("bi"):
        hist = {k: pairs.encode_histories(tokenizer, f, descriptions, size["n_history"], size["item_max_length"])
                for k, f in frames.items()}
        model = bert.load_ctr_model(architecture="bi", seed=args.seed)
        bi = probe_then_finetune(model, hist["train"], hist["valid"], hist["test"], train_config,
                                 pad_id=pad_id, device=device)
        del model
        report["stages"]["bi"] = bi
        report["auc"]["bi_probe"] = bi["probe_test_auc"]
        report["auc"]["bi_finetuned"] = bi["finetuned_test_auc"]
        print(f"[gpu_check] bi-encoder: probe {bi['probe_test_auc']:.3f} -> fine-tuned "
              f"{bi['finetuned_test_auc']:.3f} ({bi['seconds']:.0f} s)")
        save()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # 4. throughput: naive vs ecrec vs Trainer -------------------------------------------------
    if budget_left("throughput"):
        t0 = time.perf_counter()
        bench = bench_bert.run([
            "--n-train", str(size["bench_n_train"]), "--n-valid", str(size["bench_n_valid"]),
            "--batch-size", str(size["bench_batch_size"]), "--seed", str(args.seed),
            *(["--device", args.device] if args.device else []),
        ])
        report["throughput"] = bench
        for row in bench["rows"]:
            report[f"{row['loop']}_{row['precision']}_samples_per_s"] = row["samples_per_s"]
            if row.get("mfu") is not None:
                report[f"{row['loop']}_{row['precision']}_mfu"] = row["mfu"]
        report["stages"]["throughput"] = {"seconds": time.perf_counter() - t0}
        save()

    save()
    print(f"[gpu_check] wrote {out_path} in {report['wall_seconds']:.0f} s")
    print(json.dumps({k: report[k] for k in ("device", "gpu", "precision", "auc", "skipped", "wall_seconds")}
                     | {k: v for k, v in report.items() if k.endswith(("_samples_per_s", "_mfu"))},
                     indent=2, default=float))
    return report


if __name__ == "__main__":
    main()
