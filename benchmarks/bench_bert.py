"""Chapter 04's three training loops side by side, in one run, on the same examples and model.

Same MiniLM cross-encoder (:func:`ecrec.bert.load_ctr_model`, same seed, so
the same initial weights), same real CTR text pairs from chapter 03's
dataset, same batch size, number of optimizer steps (one epoch), loss, AdamW,
warm-up then decay, and clipping; only the loop differs:

* **naive** (:func:`ecrec.naive_loop.train_naive`): the tutorial loop, each
  example tokenized when fetched and padded to ``--max-length`` (128), random
  batches, fp32, one learning rate for every parameter;
* **ecrec** (:func:`ecrec.finetune.train_ctr_model`): tokenized once,
  length-grouped batches padded to their longest, the fresh head at
  ``--head-lr``; its validation before the first step and at the end is not timed;
* **trainer** (:func:`ecrec.hf_trainer.train_with_hf_trainer`): Hugging Face
  ``Trainer`` configured like ecrec (group_by_length, ``DataCollatorWithPadding``,
  same optimizer groups and schedule, same precision), with ``Trainer``'s
  default AdamW implementation (``adamw_torch_fused``: ``fused=True``);
* **trainer_foreach**: the same with torch's default AdamW implementation,
  the one ecrec's loop uses: the difference to ecrec is then the loop alone.

Prints, per loop and precision, training samples/s (the training loop alone:
no set-up, no validation), the ratio to ecrec at the same precision, and the
validation AUC after the last step (from logits; a few steps teach MiniLM
little, so the AUC row shows that no loop is broken, not which one learns
best). On CPU everything runs in fp32; on a CUDA GPU also in bf16 (fp16 with a
loss scaler on cards without bf16), with MFU from ``benchmarks/flops.py``
(model FLOPs of the real tokens, ``6 N T``, over the card's dense bf16 peak;
the naive loop's padding counts as waste).

    python benchmarks/bench_bert.py --threads 1          # ~3 min on a shared 2-core CPU
    python benchmarks/bench_bert.py --loops ecrec --precisions fp32 bf16 --threads 1 2 --vector-cache
        # chapter 04's CPU settings: bf16 autocast (a CPU with AVX512-BF16/AMX) and both cores, vs fp32 on one
    python benchmarks/bench_bert.py --n-train 4096 --batch-size 64 --n-valid 2000   # on a GPU

``--repeats R`` runs the loops R times, interleaved, and keeps each loop's
fastest run (a shared machine's load changes during a run). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ecrec import bert, pairs
from ecrec.data import load_clean_online_retail
from ecrec.features import CtrDatasetConfig, item_catalog, load_or_build_ctr_dataset
from ecrec.finetune import TrainConfig, amp_plan, evaluate_logits, pick_device, train_ctr_model
from ecrec.hf_trainer import train_with_hf_trainer
from ecrec.naive_loop import predict_naive, train_naive
from ecrec.profiles import seed_everything
from ecrec.text import load_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops  # noqa: E402  (benchmarks/flops.py)

ROOT = Path(__file__).resolve().parent.parent
LOOPS = ("naive", "ecrec", "trainer", "trainer_foreach")


def load_text_pairs(
    n_train: int,
    n_valid: int,
    *,
    seed: int = 42,
    max_users: int | None = 250,
    negatives: str = "uniform",
    n_history: int = 5,
    cache_dir: str | Path = ROOT / "_output" / "smoke" / "cache",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``n_train`` random train-window and ``n_valid`` valid-window rows of chapter 03's dataset, as text pairs.

    Same cache and config as chapter 03 (built deterministically if absent).

    Returns:
        Two frames ``text_a``, ``text_b``, ``label`` (:func:`ecrec.pairs.build_text_pairs`).
    """
    clean, _ = load_clean_online_retail()
    data = load_or_build_ctr_dataset(clean, CtrDatasetConfig(seed=seed, max_users=max_users, negatives=negatives),
                                     cache_dir)
    desc = item_catalog(clean).set_index("item_id")["description"]
    rng = np.random.default_rng(seed)

    def sample(frame: pd.DataFrame, n: int) -> pd.DataFrame:
        return frame.iloc[np.sort(rng.choice(len(frame), size=min(n, len(frame)), replace=False))]

    train = sample(data[data.split == "train"], n_train)
    valid = sample(data[data.split == "valid"], n_valid)
    return pairs.build_text_pairs(train, desc, n_history), pairs.build_text_pairs(valid, desc, n_history)


def run_loop(loop: str, precision: str, *, train_pairs, valid_pairs, enc_train, enc_valid, tokenizer,
             args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One training run of ``loop`` (one of :data:`LOOPS`): samples/s, validation AUC, tokens.

    Raises:
        ValueError: unknown ``loop``.
    """
    model = bert.load_ctr_model(args.model, seed=args.seed)
    steps = math.ceil(len(enc_train) / args.batch_size)
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=args.lr, head_lr=args.head_lr,
                         precision=precision, eval_every=steps, patience=10, seed=args.seed,
                         eval_batch_size=128, progress=False)
    if loop == "naive":
        model.to(device)
        out = train_naive(model, tokenizer, train_pairs.text_a, train_pairs.text_b, train_pairs.label,
                          steps=steps, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length,
                          seed=args.seed, progress=False)
        z = predict_naive(model, tokenizer, valid_pairs.text_a, valid_pairs.text_b, batch_size=128,
                          max_length=args.max_length)
        tokens = int(round(out["samples"] * enc_train.lengths.mean()))  # real tokens; the rest is padding
        row = {"steps": out["steps"], "samples": out["samples"], "train_seconds": out["seconds"],
               "samples_per_s": out["samples_per_s"], "valid_auc": evaluate_logits(valid_pairs.label, z)["auc"],
               "tokens": tokens, "padded_tokens": out["samples"] * args.max_length}
    elif loop == "ecrec":
        res = train_ctr_model(model, enc_train, enc_valid, config, pad_id=tokenizer.pad_token_id, device=device)
        row = {"steps": res.optimizer_steps, "samples": res.train_samples, "train_seconds": res.train_seconds,
               "samples_per_s": res.samples_per_s, "valid_auc": res.history[-1]["valid_auc"],
               "valid_auc_step0": res.start_valid_auc, "tokens": res.train_tokens}
    elif loop in ("trainer", "trainer_foreach"):
        out = train_with_hf_trainer(model, enc_train, enc_valid, config, tokenizer=tokenizer, device=device,
                                    fused_adamw=loop == "trainer")
        row = {k: out[k] for k in ("steps", "samples", "train_seconds", "samples_per_s", "valid_auc", "tokens")}
    else:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"loop": loop, "precision": "fp32" if loop == "naive" else precision, **row}


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run every loop at every precision, print the table; returns ``{"rows", "meta"}``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--n-train", type=int, default=192, help="training pairs: one epoch of n/batch steps")
    ap.add_argument("--n-valid", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--n-history", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--max-users", type=int, default=250)
    ap.add_argument("--negatives", default="uniform", choices=("uniform", "popularity"))
    ap.add_argument("--precisions", nargs="*", default=None,
                    help="default: fp32 on CPU; fp32 and bf16 (fp16 without bf16) on a CUDA GPU")
    ap.add_argument("--loops", nargs="*", default=list(LOOPS), choices=LOOPS)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs; each loop's fastest is kept")
    ap.add_argument("--threads", type=int, nargs="*", default=None,
                    help="torch CPU threads (default: torch's choice); several values: each loop at each, side by side")
    ap.add_argument("--vector-cache", action="store_true",
                    help="also time the catalogue's MiniLM vectors: encoded vs read from ecrec.text's cache")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default=None)
    ap.add_argument("--cache-dir", default=str(ROOT / "_output" / "smoke" / "cache"), help="chapter 03's dataset cache")
    args = ap.parse_args(argv)

    thread_counts = args.threads or [torch.get_num_threads()]
    seed_everything(args.seed)
    device = pick_device(args.device)
    precisions = args.precisions or (["fp32", amp_plan(device).name] if device.type == "cuda" else ["fp32"])
    tokenizer = load_tokenizer(args.model)
    train_pairs, valid_pairs = load_text_pairs(args.n_train, args.n_valid, seed=args.seed, max_users=args.max_users,
                                               negatives=args.negatives, n_history=args.n_history,
                                               cache_dir=args.cache_dir)
    enc_train = pairs.encode_pairs(tokenizer, train_pairs.text_a, train_pairs.text_b, train_pairs.label,
                                   args.max_length)
    enc_valid = pairs.encode_pairs(tokenizer, valid_pairs.text_a, valid_pairs.text_b, valid_pairs.label,
                                   args.max_length)
    steps = math.ceil(len(enc_train) / args.batch_size)
    print(f"device={device}, {len(enc_train)} train pairs ({steps} steps x {args.batch_size}), "
          f"{len(enc_valid)} valid pairs, mean {enc_train.lengths.mean():.1f} tokens/pair "
          f"(max_length {args.max_length}), torch threads={thread_counts}")

    runs = [(loop, prec, t) for t in thread_counts for prec in precisions for loop in args.loops
            if not (loop == "naive" and prec != "fp32")]
    best: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in range(args.repeats):
        for loop, prec, t in (runs if r % 2 == 0 else runs[::-1]):
            torch.set_num_threads(t)
            row = run_loop(loop, prec, train_pairs=train_pairs, valid_pairs=valid_pairs, enc_train=enc_train,
                           enc_valid=enc_valid, tokenizer=tokenizer, args=args, device=device)
            row["threads"] = t
            print(f"  run {r + 1}/{args.repeats} {loop:16s} {prec} {t} thread(s): {row['samples_per_s']:.2f} samples/s")
            key = (loop, prec, t)
            if key not in best or row["samples_per_s"] > best[key]["samples_per_s"]:
                best[key] = row
    rows = [best[k] for k in runs]

    meta: dict[str, Any] = {"device": str(device), "n_train": len(enc_train), "n_valid": len(enc_valid),
                            "batch_size": args.batch_size, "steps": steps, "max_length": args.max_length,
                            "mean_tokens": float(enc_train.lengths.mean()), "threads": thread_counts,
                            "repeats": args.repeats}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = flops.peak_bf16_flops(name)
        n_params = flops.non_embedding_params(bert.load_ctr_model(args.model, seed=args.seed))
        meta.update(gpu=name, peak_bf16_flops=peak, non_embedding_params=n_params)
        for row in rows:
            row["mfu"] = flops.mfu(flops.transformer_flops(n_params, row["tokens"]), row["train_seconds"], peak)
    base = best.get(("ecrec", "fp32", thread_counts[0]))  # ecrec, fp32, the first thread count: the reference
    for row in rows:
        ref = best.get(("ecrec", row["precision"], row["threads"])) or best.get(("ecrec", "fp32", row["threads"]))
        row["ratio_vs_ecrec"] = row["samples_per_s"] / ref["samples_per_s"] if ref else float("nan")
        row["ratio_vs_base"] = row["samples_per_s"] / base["samples_per_s"] if base else float("nan")

    show_mfu = any(r.get("mfu") is not None for r in rows)
    print(f"\n{'loop':16s}{'precision':>10s}{'threads':>8s}{'steps':>7s}{'samples/s':>12s}{'vs ecrec':>10s}"
          f"{'vs base':>9s}{'valid AUC':>11s}" + (f"{'MFU':>8s}" if show_mfu else ""))
    for row in rows:
        mfu = row.get("mfu")
        print(f"{row['loop']:16s}{row['precision']:>10s}{row['threads']:8d}{row['steps']:7d}{row['samples_per_s']:12.2f}"
              f"{row['ratio_vs_ecrec']:9.2f}x{row['ratio_vs_base']:8.2f}x{row['valid_auc']:11.3f}"
              + (f"{mfu:8.2%}" if show_mfu and mfu is not None else ("       -" if show_mfu else "")))
    step0 = next((r["valid_auc_step0"] for r in rows if "valid_auc_step0" in r), float("nan"))
    print(f"(valid AUC before training, same initial weights for every loop: {step0:.3f}; "
          f"'vs base': against ecrec in fp32 on {thread_counts[0]} thread(s))")
    if args.vector_cache:
        meta["vector_cache"] = time_vector_cache()
    return {"rows": rows, "meta": meta}


def time_vector_cache(max_length: int = 24) -> dict[str, float]:
    """Seconds to get the catalogue's MiniLM vectors: encoded (a cold cache) vs read back (a warm one)."""
    import tempfile
    import time

    from ecrec.text import cached_text_vectors

    clean, _ = load_clean_online_retail()
    texts = [str(t).lower() for t in item_catalog(clean)["description"]]
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        cold = cached_text_vectors(texts, cache_dir=folder, max_length=max_length)
        t1 = time.perf_counter()
        warm = cached_text_vectors(texts, cache_dir=folder, max_length=max_length)
        t2 = time.perf_counter()
    assert np.array_equal(cold, warm)
    out = {"items": len(texts), "encode_s": t1 - t0, "cache_hit_s": t2 - t1, "speedup": (t1 - t0) / max(t2 - t1, 1e-9)}
    print(f"catalogue vectors ({len(texts):,} items, {max_length} tokens): encoded {out['encode_s']:.2f} s, "
          f"from the cache {out['cache_hit_s']:.3f} s ({out['speedup']:.0f}x)")
    return out


if __name__ == "__main__":
    run()
