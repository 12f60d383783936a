"""Run profiles: one code path, only the sizes change.

* ``smoke``: CPU, CI; a few minutes per notebook on 2 cores.
* ``full``: the tutorial as intended, sized for one Colab-class GPU.
* ``auto`` (default): ``full`` when a CUDA GPU is present, otherwise ``cpu``
  sizes when the notebook defines them, else ``smoke``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any

import numpy as np

PROFILES = ("auto", "smoke", "full")


def has_cuda() -> bool:
    """True when torch sees a CUDA GPU."""
    import torch

    return torch.cuda.is_available()


def resolve_profile(profile: str, available: tuple[str, ...] = ("smoke", "full")) -> str:
    """Map a requested profile to the size set a notebook will use.

    Args:
        profile: "auto", "smoke" or "full".
        available: the size sets the notebook defines; may include "cpu", the
            CPU-sized run that "auto" picks when there is no GPU.

    Raises:
        ValueError: unknown profile name.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of {PROFILES}")
    if profile != "auto":
        return profile
    if has_cuda():
        return "full"
    return "cpu" if "cpu" in available else "smoke"


def pick_sizes(
    profile: str,
    sizes: Mapping[str, Mapping[str, Any]],
    overrides: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Resolve ``profile`` and return ``(resolved_name, sizes[resolved_name] | overrides)``.

    ``sizes`` maps "smoke", "full" and optionally "cpu" to dicts of sizes with
    the same keys; ``overrides`` (the notebook's ``sizes`` parameter) replaces
    some of them.

    Raises:
        ValueError: unknown profile, size sets with different keys, or an
            override for a size the notebook does not have.
    """
    keys = {name: set(v) for name, v in sizes.items()}
    first = next(iter(keys.values()))
    if any(k != first for k in keys.values()):
        raise ValueError(f"every profile must define the same sizes, got {keys}")
    unknown = sorted(set(overrides or {}) - first)
    if unknown:
        raise ValueError(f"unknown size(s) {unknown}; this notebook has {sorted(first)}")
    resolved = resolve_profile(profile, tuple(sizes))
    return resolved, {**sizes[resolved], **dict(overrides or {})}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, and ask torch for deterministic CPU kernels."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    torch.use_deterministic_algorithms(True, warn_only=True)


def device_name() -> str:
    """"cuda", "mps" or "cpu": the best device torch can use here."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
