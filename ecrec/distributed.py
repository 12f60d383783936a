"""Appendix A: chapter 04's fine-tuning on several processes, with PyTorch DDP.

``torchrun`` starts one process per device (``--nproc_per_node``) on each
node (``--nnodes``) and gives each its ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE`` and a rendezvous address. Each process runs the **same code**
as a single process: :func:`ecrec.finetune.train_ctr_model` asks
:meth:`DistContext.current` where it stands, and in a single process every
method below is the identity. Under ``torch.distributed``:

* **data**: every rank draws the same length-grouped global batches (same
  seed) of ``per-rank batch * world_size`` examples and keeps
  ``batch[rank::world_size]`` (:meth:`DistContext.shard`, the rule of
  ``torch.utils.data.DistributedSampler``), so the ranks together see exactly
  the batches a single process would see with the global batch;
* **gradients**: the model is wrapped in ``DistributedDataParallel``
  (:meth:`DistContext.wrap`), which averages the ranks' gradients with an
  all-reduce, bucket by bucket, overlapped with the backward pass (Li et al.,
  2020, "PyTorch Distributed: Experiences on Accelerating Data Parallel
  Training", VLDB). Each rank divides its loss sum by ``global window /
  world_size`` (:meth:`DistContext.denominator`), so the average over ranks
  weighs every example of the global window equally, even when the shards
  have unequal sizes (a short last batch);
* **validation** is sharded by batches and gathered
  (:meth:`DistContext.predict_logits`): every rank gets the logits a single
  process computes and takes the same early-stopping decision;
* **side effects** happen once: rank 0 prints, shows progress and writes the
  checkpoint (atomically, :func:`ecrec.bert.save_checkpoint`);
* **seeding**: the same seed on every rank for the data order and the
  initial weights (DDP also broadcasts rank 0's weights at wrapping), and
  ``seed + rank`` for dropout, so that ranks draw different masks.

Run it (``python -m ecrec.distributed --help`` lists the options)::

    python -m ecrec.distributed --global-batch 32 --output runs/np1                     # 1 process
    torchrun --standalone --nproc_per_node=2 -m ecrec.distributed --global-batch 32 --output runs/np2

The module's command line is a small, real fine-tuning job: chapter 03's
examples (or parquet files), chapter 04's MiniLM cross- or bi-encoder,
:func:`ecrec.finetune.train_ctr_model`; rank 0 writes ``result.json`` and
``checkpoint/`` under ``--output``.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "DistContext",
    "init_distributed",
    "close_distributed",
    "per_rank_batch",
    "set_dropout",
    "shard_batch",
    "load_job_data",
    "main",
    "torchrun_command",
    "run_job",
    "kill_job_tree",
    "max_param_diff",
]

RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoint"


# --- where this process stands -------------------------------------------------------------


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """Examples per rank and micro-batch for a global batch of ``global_batch``.

    Raises:
        ValueError: ``world_size`` < 1, or ``global_batch`` is not a positive
            multiple of ``world_size`` (pick a global batch that the number of
            processes divides, e.g. 32 for 2, 4 or 8 processes).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if global_batch < world_size or global_batch % world_size:
        raise ValueError(
            f"the global batch {global_batch} is not a positive multiple of the world size {world_size}: "
            f"each of the {world_size} processes must get the same number of examples per batch; "
            f"use e.g. --global-batch {max(world_size, -(-global_batch // world_size) * world_size)}"
        )
    return global_batch // world_size


def shard_batch(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """``batch[rank::world_size]``: this rank's examples of a global batch.

    The shards of all ranks partition ``batch``; their sizes differ by at most
    one (a short last batch); a rank may get none when the batch holds fewer
    examples than there are ranks.

    Raises:
        ValueError: ``rank`` not in ``[0, world_size)``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return np.asarray(batch)[rank::world_size]


class _Rows:
    """A view of an ``EncodedPairs``/``EncodedHistories`` restricted to ``rows`` (for sharded inference)."""

    def __init__(self, data, rows: np.ndarray):
        self.data, self.rows = data, np.asarray(rows, dtype=np.int64)
        self.lengths = np.asarray(data.lengths)[self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx, pad_id: int = 0) -> dict:
        return self.data.batch(self.rows[np.asarray(idx)], pad_id)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a ``torch.distributed`` job; rank 0 of 1 without one.

    ``rank`` in ``[0, world_size)`` over all nodes, ``local_rank`` on this node
    (the GPU index). Every method is the identity (or a no-op) when
    ``world_size == 1``, so a single process runs exactly the code it ran
    before DDP existed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> DistContext:
        """The context of the initialised process group, else ``DistContext()`` (rank 0 of 1)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        rank = dist.get_rank()
        return cls(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))

    @property
    def is_main(self) -> bool:
        """True on rank 0: the one process that prints and writes files."""
        return self.rank == 0

    def print(self, *args: Any) -> None:
        """``print`` on rank 0 only (flushed, so that ``torchrun`` logs keep the order)."""
        if self.is_main:
            print(*args, flush=True)

    def _comm_device(self) -> torch.device:
        import torch.distributed as dist

        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the block on rank 0 first, then on the other ranks (e.g. build a cache once)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def shard(self, batch: np.ndarray) -> np.ndarray:
        """This rank's examples of a global batch (:func:`shard_batch`); ``batch`` itself on 1 process."""
        return batch if self.world_size == 1 else shard_batch(batch, self.rank, self.world_size)

    def denominator(self, window: Sequence[np.ndarray]) -> float | None:
        """What each rank divides its loss sum by: ``examples in the global window / world_size``.

        DDP averages the ranks' gradients, ``(1/W) sum_r grad(sum_{i in r} l_i) * W / n``
        ``= (1/n) grad(sum_i l_i)``: the mean over the window's ``n`` examples,
        whatever the shard sizes. None on 1 process (:func:`ecrec.finetune.backward_window`'s default).
        """
        if self.world_size == 1:
            return None
        return sum(len(b) for b in window) / self.world_size

    def wrap(self, model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
        """``DistributedDataParallel(model)``, or ``model`` itself on 1 process.

        DDP broadcasts rank 0's parameters at construction and registers a hook
        per parameter that all-reduces gradients in buckets (25 MB) as soon as a
        bucket's gradients are ready, overlapping communication with the rest
        of the backward pass. Buffers (BERT's constant position ids) are not
        re-broadcast at every forward (``broadcast_buffers=False``): nothing in
        these models changes a buffer.
        """
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = torch.device(device)
        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        # torch >= 2.13 renames broadcast_buffers (and warns about the old name)
        new_name = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        no_buffer_sync = {"forward_sync_buffers" if new_name else "broadcast_buffers": False}
        return DistributedDataParallel(model, device_ids=ids, **no_buffer_sync)

    def all_reduce_sum(self, values: Sequence[float]) -> np.ndarray:
        """float64 (len(values),): the element-wise sum over ranks (the values on 1 process)."""
        if self.world_size == 1:
            return np.asarray(values, dtype=np.float64)
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.cpu().numpy()

    def window_totals(self, loss: float, n_local: int, tokens: int, n_global: int) -> tuple[float, int]:
        """This window's mean loss over all ranks' examples and the tokens of all ranks.

        Args:
            loss: this rank's mean loss over its ``n_local`` examples.
            tokens: this rank's real tokens.
            n_global: examples in the global window.

        Returns:
            ``(loss, tokens)`` unchanged on 1 process.
        """
        if self.world_size == 1:
            return loss, tokens
        total_loss, total_tokens = self.all_reduce_sum([loss * n_local, tokens])
        return float(total_loss / n_global), int(round(total_tokens))

    def predict_logits(self, model, data, *, predict: Callable[..., np.ndarray] | None = None,
                       **kwargs: Any) -> np.ndarray:
        """``predict(model, data, **kwargs)`` over ``data``, the batches shared out over the ranks.

        ``predict`` is the single-process scorer, :func:`ecrec.finetune.predict_logits`
        (the caller passes it, so that this module does not import the training
        loop that imports it). The examples are sorted by length and cut into
        ``batch_size`` batches (as on 1 process); rank ``r`` scores batches
        ``r, r + W, ...`` with the unwrapped model; the logits are all-gathered,
        so every rank returns the same float32 (n,) array, the one a single
        process computes.
        """
        from ecrec.pairs import sorted_batches

        if predict is None:  # callers that predate the argument; ecrec.finetune is loaded by then
            from ecrec.finetune import predict_logits as predict
        if self.world_size == 1:
            return predict(model, data, **kwargs)
        import torch.distributed as dist

        batches = sorted_batches(data.lengths, kwargs.get("batch_size", 128))[self.rank :: self.world_size]
        rows = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
        mine = predict(model, _Rows(data, rows), **kwargs) if len(rows) else np.zeros(0, np.float32)
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, (rows, mine))
        out = np.full(len(data), np.nan, dtype=np.float32)
        for r, z in gathered:
            out[r] = z
        return out


def set_dropout(model: torch.nn.Module, p: float) -> int:
    """Set the probability of every ``torch.nn.Dropout`` in ``model`` (encoder and head) to ``p``.

    With ``p = 0`` a training run on W processes follows the single process
    weight by weight: otherwise each rank draws its own masks (``seed +
    rank``), which matches one process in expectation only.

    Returns:
        The number of dropout modules changed.

    Raises:
        ValueError: ``p`` not in ``[0, 1)``.
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    modules = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    for m in modules:
        m.p = float(p)
    return len(modules)


def init_distributed(backend: str | None = None) -> DistContext:
    """Join the ``torch.distributed`` job that ``torchrun`` started, if any.

    Reads ``torchrun``'s environment (``RANK``, ``LOCAL_RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). With ``WORLD_SIZE``
    unset or 1 nothing is initialised and rank 0 of 1 is returned: the same
    script runs as a plain single process.

    Args:
        backend: ``"nccl"`` on CUDA GPUs, ``"gloo"`` on CPUs (None: chosen so).
            On a GPU the process is bound to GPU ``LOCAL_RANK``.

    Returns:
        :class:`DistContext` of this process.

    Raises:
        ValueError: a torchrun variable is missing or malformed, or
            ``LOCAL_RANK`` names a GPU this node does not have (more processes
            per node than GPUs).
    """
    import torch.distributed as dist

    world = os.environ.get("WORLD_SIZE")
    if world is None or int(world) == 1:
        return DistContext.current()
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {missing} are not set: start the script with torchrun")
    if not dist.is_initialized():
        local_rank = int(os.environ["LOCAL_RANK"])
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            if local_rank >= torch.cuda.device_count():
                raise ValueError(f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPU(s): "
                                 "use --nproc_per_node <= the number of GPUs")
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistContext.current()


def close_distributed() -> None:
    """Leave the process group (no-op without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --- the job -------------------------------------------------------------------------------------


def load_job_data(args: argparse.Namespace, tokenizer, ctx: DistContext):
    """The job's train and valid examples, encoded for ``args.architecture``.

    From ``args.train_file`` / ``args.valid_file`` (parquet: ``hist_items``,
    ``item_id``, ``label``) and ``args.items_file`` (parquet: ``item_id``,
    ``description``), else ``args.n_train`` / ``args.n_valid`` rows drawn
    (seed ``args.seed``) from the train and valid windows of chapter 03's
    dataset, which rank 0 builds or reads first (its cache is shared).

    Returns:
        ``(train, valid)``: :class:`ecrec.pairs.EncodedPairs` (cross) or
        :class:`ecrec.pairs.EncodedHistories` (bi); identical on every rank.

    Raises:
        ValueError: ``--train-file`` without ``--valid-file`` and ``--items-file``,
            or examples that :func:`ecrec.pairs.build_text_pairs` /
            :func:`ecrec.pairs.encode_histories` refuse (missing columns,
            labels outside {0, 1}, items without a description).
    """
    import pandas as pd

    from ecrec import pairs

    if args.train_file:
        if not (args.valid_file and args.items_file):
            raise ValueError("--train-file needs --valid-file and --items-file too")
        train = pd.read_parquet(args.train_file)
        valid = pd.read_parquet(args.valid_file)
        items = pd.read_parquet(args.items_file)
        desc = pd.Series(items["description"].to_numpy(), index=items["item_id"].to_numpy())
    else:
        from ecrec.data import load_clean_online_retail
        from ecrec.features import (
            DATASET_SIZES,
            dataset_config,
            item_catalog,
            load_or_build_ctr_dataset,
        )

        with ctx.main_first():
            clean, _ = load_clean_online_retail()
            size = {**DATASET_SIZES["smoke"], "max_users": args.max_users or None}
            data = load_or_build_ctr_dataset(clean, dataset_config(size, seed=args.seed, negatives=args.negatives),
                                             args.cache_dir)
        desc = item_catalog(clean).set_index("item_id")["description"]
        rng = np.random.default_rng(args.seed)

        def sample(frame, n: int):
            return frame.iloc[np.sort(rng.choice(len(frame), size=min(n, len(frame)), replace=False))]

        train = sample(data[data.split == "train"], args.n_train)
        valid = sample(data[data.split == "valid"], args.n_valid)

    def encode(frame):
        if args.architecture == "bi":
            return pairs.encode_histories(tokenizer, frame, desc, n_history=args.n_history,
                                          max_length=args.item_tokens)
        p = pairs.build_text_pairs(frame, desc, args.n_history)
        return pairs.encode_pairs(tokenizer, p.text_a, p.text_b, p.label, args.max_length)

    return encode(train), encode(valid)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m ecrec.distributed",
        description="Fine-tune chapter 04's text CTR model on 1 process or, under torchrun, on several (DDP).")
    ap.add_argument("--output", required=True, help="rank 0 writes result.json and checkpoint/ here")
    ap.add_argument("--model", default="minilm", help="'minilm' (offline) or a Hugging Face name or folder")
    ap.add_argument("--tokenizer", default=None, help="default: --model's")
    ap.add_argument("--architecture", default="cross", choices=("cross", "bi"))
    ap.add_argument("--global-batch", type=int, default=32, help="examples per micro-batch over all processes")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--select-by", default="auc", choices=("auc", "log_loss"),
                    help="the validation metric of early stopping (TrainConfig.monitor)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--head-lr", type=float, default=1e-3)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=None,
                    help="every dropout of the model, encoder and head (default: the head 0.1, the encoder its "
                         "config's); 0 makes the runs comparable weight by weight")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--n-valid", type=int, default=256)
    ap.add_argument("--n-history", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=48, help="tokens per pair (cross)")
    ap.add_argument("--item-tokens", type=int, default=24, help="tokens per item text (bi)")
    ap.add_argument("--max-users", type=int, default=250, help="chapter 03's dataset: users kept (0: all)")
    ap.add_argument("--negatives", default="uniform", choices=("uniform", "popularity"))
    ap.add_argument("--cache-dir", default="_output/cache", help="chapter 03's dataset cache")
    ap.add_argument("--train-file", default=None, help="parquet examples instead of chapter 03's dataset")
    ap.add_argument("--valid-file", default=None)
    ap.add_argument("--items-file", default=None, help="parquet item_id, description")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    ap.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK with GPUs, else cpu")
    ap.add_argument("--backend", default=None, choices=("gloo", "nccl"))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--progress", action="store_true", help="a progress bar on rank 0")
    return ap


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command line: fine-tune on this process's share and, on rank 0, write the result.

    Returns:
        The result (``result.json``'s content) on every rank.

    Raises:
        ValueError: a global batch the world size does not divide, or a bad option.
    """
    from ecrec import bert
    from ecrec.finetune import TrainConfig, pick_device, train_ctr_model
    from ecrec.io import atomic_write_text
    from ecrec.profiles import seed_everything
    from ecrec.text import load_tokenizer

    args = _parser().parse_args(argv)
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = init_distributed(args.backend)
    try:
        batch = per_rank_batch(args.global_batch, ctx.world_size)
        device = pick_device(args.device or (f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu"))
        seed_everything(args.seed)
        ctx.print(f"[ecrec.distributed] world_size={ctx.world_size} backend="
                  f"{torch.distributed.get_backend() if ctx.world_size > 1 else 'none'} device={device.type} "
                  f"threads/process={torch.get_num_threads()} batch {batch}/process x {ctx.world_size} "
                  f"= {args.global_batch} global, grad_accum {args.grad_accum}")
        tokenizer = load_tokenizer(args.tokenizer or args.model)
        train, valid = load_job_data(args, tokenizer, ctx)
        ctx.print(f"[ecrec.distributed] {len(train)} train / {len(valid)} valid examples ({args.architecture}), "
                  f"mean {train.lengths.mean():.1f} tokens")
        model = bert.load_ctr_model(args.model, architecture=args.architecture, seed=args.seed)
        if args.dropout is not None:
            set_dropout(model, args.dropout)
        config = TrainConfig(epochs=args.epochs, batch_size=batch, grad_accum=args.grad_accum, lr=args.lr,
                             head_lr=args.head_lr, warmup_ratio=args.warmup_ratio, precision=args.precision,
                             eval_every=args.eval_every, patience=args.patience, max_steps=args.max_steps,
                             monitor=args.select_by, seed=args.seed, progress=args.progress)
        out = Path(args.output)
        res = train_ctr_model(model, train, valid, config, pad_id=tokenizer.pad_token_id, device=device,
                              checkpoint_dir=out / CHECKPOINT_DIR,
                              checkpoint_meta={"world_size": ctx.world_size, "global_batch": args.global_batch})
        for s in res.steps:
            ctx.print(f"[ecrec.distributed] step {s['step']:3d}  loss {s['loss']:.4f}  "
                      f"grad_norm {s['grad_norm']:.4f}  lr {s['lr']:.2e}")
        for h in res.history:
            ctx.print(f"[ecrec.distributed] eval step {h['step']:3d}  valid AUC {h['valid_auc']:.4f}  "
                      f"log loss {h['valid_log_loss']:.4f}")
        result = {
            "world_size": ctx.world_size, "per_rank_batch": batch, "global_batch": args.global_batch,
            "grad_accum": args.grad_accum, "threads_per_process": torch.get_num_threads(),
            "device": str(device), "architecture": args.architecture, "n_train": len(train),
            "n_valid": len(valid), "optimizer_steps": res.optimizer_steps, "train_samples": res.train_samples,
            "train_tokens": res.train_tokens, "train_seconds": res.train_seconds,
            "samples_per_s": res.samples_per_s, "best_step": res.best_step, "best_valid_auc": res.best_valid_auc,
            "start_valid_auc": res.start_valid_auc, "history": res.history, "steps": res.steps,
            "wall_seconds": time.perf_counter() - started,
        }
        if ctx.is_main:
            atomic_write_text(out / RESULT_FILE, json.dumps(result, indent=1))
        ctx.print(f"[ecrec.distributed] {res.samples_per_s:.1f} samples/s over {ctx.world_size} process(es); "
                  f"best step {res.best_step} (valid AUC {res.best_valid_auc:.4f}); wrote {out}")
        return result
    finally:
        close_distributed()


# --- running it from Python (the chapter, the benchmark) ---------------------------------------------


def torchrun_command(job_args: Sequence[str], nproc: int = 1) -> list[str]:
    """The command that runs ``python -m ecrec.distributed job_args`` on ``nproc`` local processes.

    ``nproc`` 1: plain ``python -m ecrec.distributed``; more: ``torchrun
    --standalone --nproc_per_node nproc`` (``python -m torch.distributed.run``,
    the same program as the ``torchrun`` script), with a free rendezvous port.

    Raises:
        ValueError: ``nproc`` < 1.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if nproc == 1:
        return [sys.executable, "-m", "ecrec.distributed", *job_args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "ecrec.distributed", *job_args]


def _children_by_parent() -> dict[int, list[int]]:
    """``{ppid: [pid, ...]}`` of every process on this machine (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text(encoding="utf-8", errors="replace")
        except OSError:  # the process ended while we read
            continue
        # the command name (2nd field) may hold spaces and ')': the fields after it start after the last ')'
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    return children


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first), from ``/proc``; [] where there is none."""
    children, found, todo = _children_by_parent(), [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kill_job_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a job started by :func:`run_job` and every process it started; then reap it.

    ``torchrun`` starts each worker in **its own session** (its own process
    group), so killing the launcher's group is not enough, and once the
    launcher is dead its workers are re-parented and can no longer be found
    by their parent. So: freeze the launcher (SIGSTOP: it cannot start or
    restart a worker while we look), list its descendants, then SIGKILL the
    process group of each (the workers' own children go with their group)
    and each process itself, never this process's own group. Idempotent.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGSTOP)
    tree = [proc.pid, *_descendants(proc.pid)] if proc.poll() is None else [proc.pid]
    own_group = os.getpgrp()
    for pid in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(pid)
            if group != own_group:
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def run_job(job_args: Sequence[str], output: str | Path, *, nproc: int = 1, threads: int = 1,
            timeout: float | None = 600) -> tuple[dict[str, Any], str]:
    """Run the job (:func:`torchrun_command`) in a subprocess; its result and its log.

    The launcher runs in a session of its own. When the job times out, fails,
    or this process is interrupted (``KeyboardInterrupt``, any exception), the
    launcher **and every worker it started** are killed
    (:func:`kill_job_tree`) before this function returns or raises: no
    worker is left behind, blocked in a collective, holding a core.

    Args:
        job_args: options of ``python -m ecrec.distributed`` except ``--output`` and ``--threads``.
        output: the job's ``--output`` folder.
        nproc: processes (1: no torchrun).
        threads: torch threads per process (also ``OMP_NUM_THREADS``).
        timeout: seconds before the job is killed (None: no limit).

    Returns:
        ``(result.json's content, stdout + stderr)``.

    Raises:
        RuntimeError: the job failed, or ran longer than ``timeout`` seconds
            (the message says which, with the end of its log).
    """
    import ecrec

    root = str(Path(ecrec.__file__).resolve().parents[1])  # ecrec importable in the child, installed or not
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": path}
    cmd = torchrun_command([*job_args, "--output", str(output), "--threads", str(threads)], nproc)
    # stderr into stdout: one pipe, read to its end by communicate (no deadlock on a full pipe)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_job_tree(proc)
        log, _ = proc.communicate()  # every writer is dead: the pipe ends
        raise RuntimeError(f"{' '.join(cmd)} timed out after {timeout:g} s; the launcher and its workers were "
                           f"killed. Raise timeout= or shrink the job. Its log ends:\n{(log or '')[-3000:]}") from None
    except BaseException:  # KeyboardInterrupt, or anything else: never leave the workers running
        kill_job_tree(proc)
        raise
    finally:
        if proc.poll() is None:  # pragma: no cover - communicate returned: the launcher has exited
            kill_job_tree(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log[-3000:]}")
    return json.loads((Path(output) / RESULT_FILE).read_text(encoding="utf-8")), log


def max_param_diff(checkpoint_a: str | Path, checkpoint_b: str | Path) -> float:
    """Largest absolute difference between the tensors of two checkpoints (same names).

    Raises:
        ValueError: the checkpoints hold different tensor names or shapes.
    """
    from safetensors.torch import load_file

    from ecrec.bert import WEIGHTS_FILE

    a = load_file(str(Path(checkpoint_a) / WEIGHTS_FILE))
    b = load_file(str(Path(checkpoint_b) / WEIGHTS_FILE))
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise ValueError(f"{checkpoint_a} and {checkpoint_b} hold different tensors")
    return max(float((a[k].float() - b[k].float()).abs().max()) if a[k].numel() else 0.0 for k in a)


if __name__ == "__main__":
    main()
