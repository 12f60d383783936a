"""Tutorial fine-tuning loop vs ecrec's, side by side in one run, on the same examples and model.

Both loops fine-tune the same MiniLM (same initial weights, same loss, AdamW,
warm-up schedule, clipping, batch size, number of optimizer steps) on the same
real CTR text pairs from Online Retail; only the data pipeline and precision
differ:

* tutorial: each example tokenized when fetched, padded to 128 tokens, random
  batches, fp32, inference in ``torch.no_grad`` at 128 tokens;
* ecrec (``ecrec.bert``): tokenized once, length-grouped batches padded per
  batch (``DataCollatorWithPadding``), bf16 autocast where supported (fp16 +
  GradScaler on older GPUs), inference under ``torch.inference_mode`` in
  length-sorted batches.

Both truncate at ``--max-length`` (128), so they read the same tokens.
Prints training samples/s, inference samples/s and test AUC after the same
number of optimizer steps, and the ratios. On a CUDA GPU it also prints MFU:
model FLOPs of the real (non-padding) tokens, ``6 N T`` for training and
``2 N T`` for inference (``N`` = non-embedding parameters), over the card's
dense bf16 peak.

    python benchmarks/bench_bert.py            # ~5 min on 2 CPU cores
    python benchmarks/bench_bert.py --steps 30 --n-eval 2000   # on a GPU
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from ecrec import bert
from ecrec.data import load_clean_online_retail
from ecrec.features import CtrDatasetConfig, item_catalog, load_or_build_ctr_dataset
from ecrec.metrics import roc_auc
from ecrec.profiles import seed_everything
from ecrec.text import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def _examples(n_train: int, n_eval: int, seed: int, max_users: int):
    clean, _ = load_clean_online_retail()
    data = load_or_build_ctr_dataset(clean, CtrDatasetConfig(seed=seed, max_users=max_users), ROOT / "_output" / "smoke" / "cache")
    desc = item_catalog(clean).set_index("item_id")["description"]
    rng = np.random.default_rng(seed)
    train = data[data.split == "train"]
    test = data[data.split == "test"]
    train = train.iloc[np.sort(rng.choice(len(train), n_train, replace=False))]
    test = test.iloc[np.sort(rng.choice(len(test), n_eval, replace=False))]
    return bert.build_text_pairs(train, desc), bert.build_text_pairs(test, desc)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps for both loops")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-eval", type=int, default=512)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-users", type=int, default=250)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)

    seed_everything(args.seed)
    device = bert.pick_device(args.device)
    tokenizer = load_tokenizer(args.model)
    n_train = args.steps * args.batch_size
    train, test = _examples(n_train, args.n_eval, args.seed, args.max_users)
    enc_train = bert.encode_pairs(tokenizer, train.text_a, train.text_b, train.label, args.max_length)
    enc_test = bert.encode_pairs(tokenizer, test.text_a, test.text_b, test.label, args.max_length)
    y = test.label.to_numpy()
    print(f"device={device}, {n_train} train pairs ({args.steps} steps x {args.batch_size}), {len(test)} eval pairs, "
          f"mean {enc_train.lengths.mean():.1f} tokens/pair (max_length {args.max_length}), "
          f"torch threads={torch.get_num_threads()}")

    out: dict[str, dict[str, float]] = {}
    # --- tutorial loop -------------------------------------------------------------
    model = bert.load_ctr_model(args.model, seed=args.seed).to(device)
    n_params = bert.non_embedding_params(model)
    naive = bert.train_naive(model, tokenizer, train.text_a, train.text_b, train.label, steps=args.steps,
                             batch_size=args.batch_size, lr=args.lr, max_length=args.max_length, seed=args.seed)
    _sync(device)
    t0 = time.perf_counter()
    p = bert.predict_naive(model, tokenizer, test.text_a, test.text_b, batch_size=args.batch_size,
                           max_length=args.max_length)
    _sync(device)
    infer_s = time.perf_counter() - t0
    out["tutorial"] = {"train_samples_per_s": naive["samples_per_s"], "infer_samples_per_s": len(test) / infer_s,
                       "test_auc": roc_auc(y, p), "steps": naive["steps"], "precision": "fp32",
                       "train_s": naive["seconds"], "infer_s": infer_s}
    del model

    # --- ecrec loop -------------------------------------------------------------------
    model = bert.load_ctr_model(args.model, seed=args.seed)
    cfg = bert.TrainConfig(epochs=1, batch_size=args.batch_size, lr=args.lr, max_steps=args.steps,
                           eval_every=args.steps, seed=args.seed, eval_batch_size=128)
    res = bert.train_ctr_model(model, enc_train, enc_test, cfg, tokenizer=tokenizer, device=device)
    _sync(device)
    t0 = time.perf_counter()
    p = bert.predict_proba(model, enc_test, tokenizer=tokenizer, batch_size=128)
    _sync(device)
    infer_s = time.perf_counter() - t0
    out["ecrec"] = {"train_samples_per_s": res.samples_per_s, "infer_samples_per_s": len(test) / infer_s,
                    "test_auc": roc_auc(y, p), "steps": res.optimizer_steps, "precision": res.precision,
                    "train_s": res.train_seconds, "infer_s": infer_s}

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = bert.peak_bf16_flops(name)
        tokens_train = int(enc_train.lengths.sum())
        tokens_test = int(enc_test.lengths.sum())
        for row in out.values():
            if peak:
                row["train_mfu"] = bert.transformer_flops(n_params, tokens_train) / row["train_s"] / peak
                row["infer_mfu"] = bert.transformer_flops(n_params, tokens_test, training=False) / row["infer_s"] / peak
        print(f"GPU: {name}, dense bf16 peak {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s "
              "(MFU counts real tokens only)")

    keys = ["precision", "steps", "train_samples_per_s", "infer_samples_per_s", "test_auc"]
    keys += [k for k in ("train_mfu", "infer_mfu") if k in out["ecrec"]]
    print(f"\n{'':24s}{'tutorial':>14s}{'ecrec':>14s}{'ratio':>10s}")
    for k in keys:
        a, b = out["tutorial"][k], out["ecrec"][k]
        if isinstance(a, str):
            print(f"{k:24s}{a:>14s}{b:>14s}")
            continue
        ratio = f"{b / a:9.2f}x" if k != "test_auc" and a else f"{b - a:+10.3f}"
        print(f"{k:24s}{a:14.3f}{b:14.3f}{ratio}")
    speedup = out["ecrec"]["train_samples_per_s"] / out["tutorial"]["train_samples_per_s"]
    print(f"\ntraining throughput ratio (ecrec / tutorial): {speedup:.2f}x; "
          f"inference: {out['ecrec']['infer_samples_per_s'] / out['tutorial']['infer_samples_per_s']:.2f}x; "
          f"AUC difference after {args.steps} steps: {out['ecrec']['test_auc'] - out['tutorial']['test_auc']:+.3f}")
    return out


if __name__ == "__main__":
    main()
