"""Appendix A (fine-tuning under PyTorch DDP) in the smoke profile: 2 processes take the steps of 1.

Recorded on the smoke run (seed 42, 2 CPU cores; when it was a section of the system chapter, before the
appendix): 64 training pairs, global batch 16, 4 optimizer steps; the weights of 1 and 2 processes
differ by 7.3e-7 at most, their per-step losses by 6.0e-8. Throughputs are measured, never compared.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def m(chapter_metrics):
    return chapter_metrics("A1_ddp")


def test_ddp_two_processes_take_the_single_process_steps(m):
    """Section A.3: torchrun with 2 CPU processes (B/2 each) against 1 process with B, dropout off."""
    ddp = m
    assert ddp["device"] == "cpu" and ddp["global_batch"] == 16
    assert ddp["optimizer_steps"] == 4  # 64 smoke pairs / 16
    assert ddp["max_param_diff"] < 1e-5  # recorded 7.3e-7: the same steps, summed in another order
    assert ddp["max_step_loss_diff"] < 1e-5  # recorded 6.0e-8
    assert ddp["kept_step"] in (0, 1, 2, 3, 4)
    assert all(v > 0 for v in ddp["samples_per_s"].values())  # measured, never compared in a test
