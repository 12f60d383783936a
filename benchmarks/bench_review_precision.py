"""Chapter 07's fine-tuning step: fp32 vs bf16 autocast on this CPU, side by side in one run.

Trains the multi-head MiniLM review model (``ecrec.reviews``) on real reviews,
length-grouped batches of 16 at the chapter's truncation length, alternating
fp32 and bf16 blocks so that both see the same machine load; prints reviews
per second (wall) and per CPU second, and the ratio bf16 / fp32. bf16 needs a
CPU with AVX512-BF16 or AMX (``ecrec.finetune.cpu_bf16_supported``).

    python benchmarks/bench_review_precision.py [--steps 6] [--rounds 3] [--max-length 144]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    from ecrec import finetune
    from ecrec import reviews as rv
    from ecrec.data import load_reviews
    from ecrec.pairs import length_grouped_batches
    from ecrec.text import load_tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=144)
    args = ap.parse_args()
    df, _ = rv.prepare_reviews(load_reviews())
    sample = rv.stratified_sample(df, 16 * args.steps, ["Department Name"], seed=0)
    data = rv.encode_reviews(load_tokenizer(), sample, max_length=args.max_length)
    batches = list(length_grouped_batches(data.lengths, 16, seed=0))
    precisions = ["fp32"] + (["bf16"] if finetune.cpu_bf16_supported() else [])
    print(f"threads {torch.get_num_threads()}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{len(data)} reviews, mean {data.lengths.mean():.0f} tokens, precisions {precisions}")
    rate = {p: [] for p in precisions}
    for _ in range(args.rounds):
        for p in precisions:
            model = rv.load_review_model(seed=0)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
            plan = finetune.amp_plan("cpu", p)
            wall, cpu = time.perf_counter(), time.process_time()
            for idx in batches:
                batch = data.batch(idx)
                with plan.autocast(torch.device("cpu")):
                    out = model(**batch)
                loss, _ = rv.multitask_loss(out, data.batch_labels(idx), data.tasks)
                opt.zero_grad()
                loss.backward()
                opt.step()
            rate[p].append((len(data) / (time.perf_counter() - wall), len(data) / (time.process_time() - cpu)))
    for p, r in rate.items():
        r = np.array(r)
        print(f"{p}: {np.median(r[:, 0]):.1f} reviews/s wall, {np.median(r[:, 1]):.1f} reviews per CPU second")
    if "bf16" in rate:
        ratio = np.median(np.array(rate["bf16"])[:, 1]) / np.median(np.array(rate["fp32"])[:, 1])
        print(f"bf16 / fp32 (per CPU second): {ratio:.2f}x")


if __name__ == "__main__":
    main()
