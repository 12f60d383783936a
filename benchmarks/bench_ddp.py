"""Appendix A: fine-tuning throughput of 2 DDP processes against 1 process, in one run.

The same job (``python -m ecrec.distributed``: chapter 03's examples as text
pairs, chapter 04's MiniLM cross-encoder, :func:`ecrec.finetune.train_ctr_model`,
same global batch, same steps, dropout off) is run as

* ``1 proc x 1 thread``: one process, one torch thread;
* ``1 proc x T threads``: one process using every core the 2 processes use
  (``--threads``: the fair baseline on a CPU);
* ``2 procs x 1 thread``: ``torchrun --standalone --nproc_per_node 2``, gloo,
  half the global batch per process.

Prints training samples/s (the loop alone: no start-up, no validation; the
job's ``train_seconds``, rank 0's), the ratios side by side, start-up + total
wall time, and the largest parameter difference between each run's checkpoint
and the first one's (DDP with B/2 per rank should end where one process with B
ends, to fp32 rounding). ``--repeats R`` interleaves R rounds and keeps each
configuration's fastest. Nothing is downloaded.

    python benchmarks/bench_ddp.py                      # ~3 min on a shared 2-core CPU
    python benchmarks/bench_ddp.py --n-train 512 --global-batch 32 --repeats 2

On a 2-core CPU, 2 processes x 1 thread can only match 1 process x 2 threads
at best: same cores, plus the all-reduce of 22.7M gradients (91 MB in fp32)
per step through gloo, and each process pads its own half-batch. The ratio
that DDP is for is measured on several GPUs (one process per GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from ecrec.distributed import CHECKPOINT_DIR, max_param_diff, run_job

ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the configurations, print the table; returns ``{"rows", "meta"}``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--architecture", default="cross", choices=("cross", "bi"))
    ap.add_argument("--n-train", type=int, default=192)
    ap.add_argument("--n-valid", type=int, default=64)
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None, help="default: one epoch")
    ap.add_argument("--threads", type=int, default=2, help="threads of the '1 proc x T threads' run")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cache-dir", default=str(ROOT / "_output" / "smoke" / "cache"))
    ap.add_argument("--output", default=None, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--timeout", type=float, default=1800,
                    help="seconds per job; a job past it is killed with all its workers (run_job)")
    args = ap.parse_args(argv)

    job = ["--model", args.model, "--architecture", args.architecture, "--n-train", str(args.n_train),
           "--n-valid", str(args.n_valid), "--global-batch", str(args.global_batch),
           "--grad-accum", str(args.grad_accum), "--dropout", "0", "--cache-dir", args.cache_dir,
           "--seed", str(args.seed), "--eval-every", "1000000", "--patience", "1000000",
           "--select-by", "log_loss"]  # validation at steps 0 and last: the kept weights are the last ones
    # (the positive rate is 1/5, so learning the head's bias alone lowers the log loss from step 0's 0.69)
    if args.max_steps:
        job += ["--max-steps", str(args.max_steps)]
    configs = [("1 proc x 1 thread", 1, 1), (f"1 proc x {args.threads} threads", 1, args.threads),
               ("2 procs x 1 thread", 2, 1)]
    root = Path(args.output or tempfile.mkdtemp(prefix="bench_ddp_"))
    print(f"{os.cpu_count()} CPUs seen; job: {' '.join(job)}", flush=True)
    best: dict[str, dict[str, Any]] = {}
    for r in range(args.repeats):
        for name, nproc, threads in (configs if r % 2 == 0 else configs[::-1]):
            out = root / f"{nproc}x{threads}_r{r}"
            res, _ = run_job(job, out, nproc=nproc, threads=threads, timeout=args.timeout)
            row = {"config": name, "processes": nproc, "threads/process": threads,
                   "steps": res["optimizer_steps"], "best_step": res["best_step"], "samples": res["train_samples"],
                   "train_s": res["train_seconds"], "samples/s": res["samples_per_s"],
                   "wall_s": res["wall_seconds"], "checkpoint": str(out / CHECKPOINT_DIR)}
            print(f"  round {r + 1}/{args.repeats} {name}: {row['samples/s']:.2f} samples/s", flush=True)
            if name not in best or row["samples/s"] > best[name]["samples/s"]:
                best[name] = row
    rows = [best[name] for name, _, _ in configs]
    ref_ckpt = rows[0]["checkpoint"]
    for row in rows:
        row["vs 1x1"] = row["samples/s"] / rows[0]["samples/s"]
        row[f"vs 1x{args.threads}"] = row["samples/s"] / rows[1]["samples/s"]
        row["max |param diff| vs 1x1"] = max_param_diff(ref_ckpt, row["checkpoint"])
    table = pd.DataFrame(rows).drop(columns="checkpoint").set_index("config")
    with pd.option_context("display.width", 160, "display.float_format", "{:.3g}".format):
        print(table.to_string())
    return {"rows": rows, "meta": {"cpus": os.cpu_count(), "job": job, "repeats": args.repeats}}


if __name__ == "__main__":
    sys.exit(0 if run() else 1)
