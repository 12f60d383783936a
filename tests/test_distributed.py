"""ecrec.distributed: chapter 04's fine-tuning under DDP equals the single process.

The end-to-end test starts 2 CPU processes with ``torchrun`` (gloo, a free
port on localhost) and compares them with 1 process running the same
command with the global batch. Dropout is **off** (the ``tiny_st`` BERT has
no dropout and the head's is 0): with dropout the ranks draw other masks than
one process would (``seed + rank``), so only the expectation would match.

This file is also the script ``torchrun`` runs (see ``__main__`` at the end):
it records which rank calls ``save_checkpoint``, then runs
``python -m ecrec.distributed``'s ``main``.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ecrec import bert, distributed, finetune, pairs
from ecrec.distributed import DistContext, per_rank_batch, shard_batch

ROOT = Path(__file__).resolve().parents[1]
ITEMS = pd.Series({
    "A": "WHITE HANGING HEART T-LIGHT HOLDER", "B": "RED WOOLLY HOTTIE WHITE HEART",
    "C": "JUMBO BAG RED RETROSPOT", "D": "PACK OF 72 RETROSPOT CAKE CASES",
    "E": "REGENCY CAKESTAND 3 TIER", "F": "SET OF 3 CAKE TINS PANTRY DESIGN",
})


@pytest.fixture(scope="module")
def tokenizer():
    from ecrec.text import load_tokenizer

    return load_tokenizer()


def _examples(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame([{"hist_items": list(rng.choice(ITEMS.index, size=int(rng.integers(0, 3)), replace=False)),
                          "item_id": str(rng.choice(ITEMS.index)), "label": int(i % 2)} for i in range(n)])


# --- the pieces, in one process ---------------------------------------------------------------


def test_per_rank_batch_and_its_errors():
    assert per_rank_batch(32, 1) == 32 and per_rank_batch(32, 2) == 16 and per_rank_batch(32, 8) == 4
    with pytest.raises(ValueError, match="not a positive multiple of the world size 3.*--global-batch 33"):
        per_rank_batch(32, 3)
    with pytest.raises(ValueError, match="multiple"):
        per_rank_batch(2, 4)
    with pytest.raises(ValueError, match="world_size"):
        per_rank_batch(8, 0)


def test_shards_partition_each_batch_like_distributed_sampler():
    batch = np.array([7, 3, 9, 1, 4])
    shards = [shard_batch(batch, r, 2) for r in range(2)]
    assert [s.tolist() for s in shards] == [[7, 9, 4], [3, 1]]
    # torch's DistributedSampler (no shuffle, no padding) gives rank r the indices r, r + W, ...
    sampler = torch.utils.data.DistributedSampler(range(4), num_replicas=2, rank=1, shuffle=False)
    assert shard_batch(np.arange(4), 1, 2).tolist() == list(sampler) == [1, 3]
    assert shard_batch(np.array([5]), 1, 2).tolist() == []  # fewer examples than ranks: rank 1 gets none
    with pytest.raises(ValueError, match="rank"):
        shard_batch(batch, 2, 2)


def test_single_process_context_is_the_identity():
    ctx = DistContext.current()
    assert (ctx.rank, ctx.world_size, ctx.is_main) == (0, 1, True)
    batch = np.array([2, 0, 1])
    model = torch.nn.Linear(2, 1)
    assert ctx.shard(batch) is batch and ctx.denominator([batch]) is None and ctx.wrap(model, "cpu") is model
    assert ctx.window_totals(0.25, 3, 40, 3) == (0.25, 40)
    assert DistContext(1, 4).denominator([np.arange(4), np.arange(3)]) == 7 / 4


@pytest.mark.parametrize("sizes,world", [((4, 3), 2), ((4, 1), 2), ((6, 5), 3), ((2,), 4)])
def test_averaging_rank_gradients_gives_the_mean_over_the_global_window(tiny_st, tokenizer, sizes, world):
    """What DDP computes, done by hand: each rank's backward_window on its shard with the
    global denominator, then the mean over ranks, equals one process on the whole window,
    with unequal shards ((4, 3) over 2: shards 2+2 and 2+1) and empty ones ((4, 1): rank 1
    forwards example 0 with weight 0; (2,) over 4: ranks 2 and 3 get nothing)."""
    n = sum(sizes)
    ex = _examples(n, seed=1)
    data = pairs.encode_histories(tokenizer, ex, ITEMS, n_history=2, max_length=16)
    model = bert.load_ctr_model(tiny_st, architecture="bi", dropout=0.0).eval()
    plan = finetune.amp_plan("cpu", "fp32")
    cuts = np.cumsum((0, *sizes))
    window = [np.arange(cuts[i], cuts[i + 1]) for i in range(len(sizes))]

    def grads() -> dict[str, torch.Tensor]:
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    finetune.backward_window(model, data, window, device="cpu", plan=plan)
    full = grads()
    summed: dict[str, torch.Tensor] = {}
    losses = []
    for rank in range(world):
        ctx = DistContext(rank, world)
        model.zero_grad()
        shards = [ctx.shard(b) for b in window]
        loss, _, _ = finetune.backward_window(model, data, shards, device="cpu", plan=plan,
                                              denominator=ctx.denominator(window))
        losses.append((loss, sum(len(s) for s in shards)))
        for k, g in grads().items():
            summed[k] = summed.get(k, 0) + g
    for k in full:  # DDP's all-reduce: the mean over ranks
        assert torch.allclose(summed[k] / world, full[k], atol=1e-6, rtol=1e-4), k
    # the logged loss: the example-weighted mean of the ranks' losses (what window_totals all-reduces)
    ref = finetune.backward_window(model, data, window, device="cpu", plan=plan)[0]
    assert sum(loss * m for loss, m in losses) / n == pytest.approx(ref, rel=1e-5)


def test_set_dropout_turns_every_dropout_off(tiny_st, tokenizer):
    model = bert.load_ctr_model(tiny_st, architecture="bi", dropout=0.5)
    for m in model.modules():  # the tiny encoder has none of its own: give it some, as MiniLM's 0.1
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.3
    n_dropout = sum(isinstance(m, torch.nn.Dropout) for m in model.modules())
    data = pairs.encode_histories(tokenizer, _examples(8), ITEMS, n_history=2, max_length=16)
    batch = data.batch(np.arange(8))
    model.train()
    torch.manual_seed(0)
    a = model(**batch)
    assert not torch.equal(a, model(**batch))  # dropout on: two forwards differ
    assert distributed.set_dropout(model, 0.0) == n_dropout > 1
    assert torch.equal(model(**batch), model(**batch))  # train mode, yet deterministic
    with pytest.raises(ValueError, match="dropout"):
        distributed.set_dropout(model, 1.0)


def test_torchrun_command():
    one = distributed.torchrun_command(["--global-batch", "8"])
    assert one[1:] == ["-m", "ecrec.distributed", "--global-batch", "8"]
    two = distributed.torchrun_command(["--global-batch", "8"], nproc=2)
    assert two[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    with pytest.raises(ValueError, match="nproc"):
        distributed.torchrun_command([], nproc=0)


# --- 2 processes with torchrun vs 1 process -------------------------------------------------------


@pytest.fixture(scope="module")
def job(tiny_st, tmp_path_factory):
    """The same small job run by 1 process (global batch 4) and by torchrun on 2 (2 per rank)."""
    tmp = tmp_path_factory.mktemp("ddp")
    # 21 examples, global batch 4: 5 full batches and one of 1 example, which rank 1 lacks
    # (it forwards a weight-0 example); grad_accum 2 -> 3 windows per epoch, 2 epochs.
    _examples(21).to_parquet(tmp / "train.parquet")
    pd.DataFrame({"item_id": ITEMS.index, "description": ITEMS.to_numpy()}).to_parquet(tmp / "items.parquet")
    args = ["--model", tiny_st, "--tokenizer", "minilm", "--architecture", "cross",
            "--train-file", str(tmp / "train.parquet"), "--valid-file", str(tmp / "train.parquet"),
            "--items-file", str(tmp / "items.parquet"), "--global-batch", "4", "--grad-accum", "2",
            "--epochs", "2", "--lr", "1e-2", "--head-lr", "1e-1", "--warmup-ratio", "0", "--dropout", "0",
            "--select-by", "log_loss", "--patience", "5", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    script = str(Path(__file__).resolve())
    runs = {}
    for nproc in (1, 2):
        out = tmp / f"np{nproc}"
        launcher = [sys.executable] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "--log-dir", str(tmp / "logs"), "--redirects", "3"]
        proc = subprocess.run([*launcher, script, *args, "--output", str(out)], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[nproc] = out
    return runs, tmp / "logs"


def test_two_processes_end_with_the_parameters_of_one(job, tiny_st):
    import json

    runs, _ = job
    one, two = (json.loads((runs[n] / "result.json").read_text()) for n in (1, 2))
    assert (one["world_size"], one["per_rank_batch"]) == (1, 4)
    assert (two["world_size"], two["per_rank_batch"]) == (2, 2)
    assert one["optimizer_steps"] == two["optimizer_steps"] == 6
    # each example was forwarded by exactly one rank: the ranks' tokens add up to one process's
    assert two["train_samples"] == one["train_samples"] == 42 and two["train_tokens"] == one["train_tokens"]
    for a, b in zip(one["steps"], two["steps"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert one["history"][0] == two["history"][0]  # step 0: sharded + gathered validation, same logits
    for a, b in zip(one["history"], two["history"], strict=True):
        assert a["valid_log_loss"] == pytest.approx(b["valid_log_loss"], abs=1e-5)
    assert one["best_step"] == two["best_step"] == 6  # the checkpoints hold the weights after the last step
    diff = distributed.max_param_diff(runs[1] / "checkpoint", runs[2] / "checkpoint")
    assert diff < 1e-4, diff  # measured 6.8e-6 (lr 1e-2; fp32 sums in another order)
    start = bert.load_ctr_model(tiny_st, architecture="cross", dropout=0.0, seed=42).state_dict()
    end = bert.load_checkpoint(runs[2] / "checkpoint").state_dict()
    moved = max(float((start[k] - end[k]).abs().max()) for k in start)
    assert moved > 1e-2  # training moved the weights 1000x more than the two runs differ


def test_only_rank_0_logs_and_writes_the_checkpoint(job):
    runs, logs = job
    saves = sorted(p.name for p in runs[2].glob("saves_rank*.txt"))
    assert saves == ["saves_rank0.txt"]  # rank 1 never called save_checkpoint
    assert len((runs[2] / "saves_rank0.txt").read_text().splitlines()) >= 2  # step 0 and later bests
    assert sorted(p.name for p in (runs[2] / "checkpoint").iterdir()) == sorted([bert.WEIGHTS_FILE, bert.META_FILE])
    assert sorted(p.name for p in runs[2].iterdir() if p.suffix == ".json") == ["result.json"]
    out = {int(Path(p).parent.name): Path(p).read_text() for p in glob.glob(f"{logs}/**/stdout.log", recursive=True)}
    assert set(out) == {0, 1}
    assert "[ecrec.distributed] step   6" in out[0] and "world_size=2" in out[0]
    assert "[ecrec.distributed]" not in out[1]


# --- imports: no cycle at module level --------------------------------------------------------------


def _module_level_ecrec_imports(path: Path) -> set[str]:
    """The ecrec modules that ``path`` imports in its top-level statements (what ``import`` runs)."""
    import ast

    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ecrec":
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ecrec.")}
    return found


def test_no_module_level_import_cycle_in_ecrec():
    modules = {p.stem: p for p in (ROOT / "ecrec").glob("*.py")}
    graph = {m: _module_level_ecrec_imports(p) & set(modules) for m, p in modules.items()}
    assert "finetune" in graph["hf_trainer"]  # the check sees module-level imports

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for m in sorted(graph) if (c := cycle_from(m))]
    assert cycles == [], f"module-level import cycles: {cycles}"


@pytest.mark.parametrize("module", ["ecrec.distributed", "ecrec.finetune", "ecrec.hf_trainer"])
def test_each_module_imports_alone_in_a_fresh_interpreter(module):
    code = (f"import sys, {module}\n"
            "print(sorted(m for m in sys.modules if m in ('ecrec.distributed', 'ecrec.finetune')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = proc.stdout.strip()
    if module == "ecrec.distributed":
        assert loaded == "['ecrec.distributed']"  # the DDP context does not pull in the training loop


def test_predict_logits_uses_the_scorer_it_is_given():
    calls = []

    def scorer(model, data, **kwargs):
        calls.append((model, data, kwargs))
        return np.arange(3, dtype=np.float32)

    out = DistContext().predict_logits("m", "d", predict=scorer, batch_size=8)
    assert out.tolist() == [0, 1, 2] and calls == [("m", "d", {"batch_size": 8})]


# --- a job that times out or is interrupted leaves no process behind ------------------------------

# A worker: records its pid, then blocks (as a rank stuck in a collective would).
BLOCKER = """
import os, sys, time, pathlib
pathlib.Path(sys.argv[1], f"worker_{os.getpid()}").write_text(str(os.getpid()))
time.sleep(600)
"""
# A launcher like torchrun: starts 2 workers, each in a session of its own, and waits for them.
LAUNCHER = """
import subprocess, sys
workers = [subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]], start_new_session=True) for _ in range(2)]
for w in workers:
    w.wait()
"""


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a killed orphan may wait unreaped for a busy init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _worker_pids(folder: Path) -> list[int]:
    return [int(p.read_text()) for p in folder.glob("worker_*") if p.read_text()]


def _wait_for_workers(folder: Path, n: int, seconds: float = 60) -> list[int]:
    deadline = time.monotonic() + seconds
    while len(pids := _worker_pids(folder)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


@pytest.fixture
def blocking_job(tmp_path, monkeypatch):
    """run_job's command replaced by ``launcher(tmp)``; returns the folder where workers write their pids."""
    (tmp_path / "blocker.py").write_text(BLOCKER)
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    pids = tmp_path / "pids"
    pids.mkdir()

    def use(launcher: list[str]) -> Path:
        monkeypatch.setattr(distributed, "torchrun_command", lambda args, nproc=1: launcher)
        return pids

    return tmp_path, use


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_timeout_kills_workers_in_their_own_sessions(blocking_job):
    tmp, use = blocking_job
    pids = use([sys.executable, str(tmp / "launcher.py"), str(tmp / "blocker.py"), str(tmp / "pids")])
    with pytest.raises(RuntimeError, match=r"timed out after 4 s; the launcher and its workers were killed"):
        distributed.run_job([], tmp / "out", timeout=4)
    workers = _worker_pids(pids)
    assert len(workers) == 2  # both had started: the test would prove nothing otherwise
    time.sleep(0.2)
    assert [p for p in workers if _alive(p)] == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_keyboard_interrupt_kills_the_job_and_propagates(blocking_job, monkeypatch):
    tmp, use = blocking_job
    pids = use([sys.executable, str(tmp / "launcher.py"), str(tmp / "blocker.py"), str(tmp / "pids")])
    started: list[subprocess.Popen] = []

    def interrupted(self, input=None, timeout=None):  # Ctrl-C once both workers run
        started.append(self)
        assert len(_wait_for_workers(pids, 2)) == 2
        raise KeyboardInterrupt

    monkeypatch.setattr(subprocess.Popen, "communicate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distributed.run_job([], tmp / "out", timeout=None)
    time.sleep(0.2)
    assert started and started[0].returncode is not None  # the launcher was killed and reaped
    assert [p for p in _worker_pids(pids) if _alive(p)] == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_torchrun_timeout_leaves_no_worker(blocking_job):
    """The bug as found: torchrun (2 workers, each in its own session) blocked; before the fix
    the workers survived, re-parented to init, and run_job raised TimeoutExpired."""
    tmp, use = blocking_job
    pids = use([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(tmp / "blocker.py"), str(tmp / "pids")])
    with pytest.raises(RuntimeError, match="timed out"):
        distributed.run_job([], tmp / "out", nproc=2, timeout=15)
    workers = _worker_pids(pids)
    assert len(workers) == 2, "torchrun had not started its workers within the timeout"
    time.sleep(0.2)
    assert [p for p in workers if _alive(p)] == []


def test_a_failed_job_raises_runtime_error_with_its_log(blocking_job):
    tmp, use = blocking_job
    use([sys.executable, "-c", "import sys; print('boom on stdout'); sys.exit(3)"])
    with pytest.raises(RuntimeError, match=r"failed \(3\):\nboom on stdout"):
        distributed.run_job([], tmp / "out", timeout=30)


# --- torchrun runs this file on each rank -------------------------------------------------------------

if __name__ == "__main__":
    rank = int(os.environ.get("RANK", "0"))
    output = Path(sys.argv[sys.argv.index("--output") + 1])
    save = finetune.save_checkpoint

    def recording_save(model, directory, **meta):
        """Append this rank's call to output/saves_rank<R>.txt, then save."""
        output.mkdir(parents=True, exist_ok=True)
        with open(output / f"saves_rank{rank}.txt", "a", encoding="utf-8") as handle:
            handle.write(f"{directory}\n")
        return save(model, directory, **meta)

    finetune.save_checkpoint = recording_save
    distributed.main(sys.argv[1:])
