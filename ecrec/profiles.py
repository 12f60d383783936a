"""Run profiles: one code path, only the sizes change.

* ``smoke``: CPU, CI; a few minutes per notebook on 2 cores.
* ``cpu``: a CPU-sized run of the tutorial, for a learner without a GPU. A
  chapter that defines no ``cpu`` sizes is fast enough on a CPU already, so an
  explicit ``cpu`` falls back to its ``smoke`` sizes, and says so.
* ``full``: the tutorial as intended, sized for one Colab-class GPU.
* ``auto`` (default): ``full`` when a CUDA GPU is present, otherwise ``cpu``
  sizes when the notebook defines them, else ``smoke``.

A chapter's size table may carry, per profile, the optional key ``"_minutes"``:
the expected wall time in minutes (a number, or a ``(low, high)`` pair), which
:func:`pick_sizes` prints. Keys that start with ``_`` are notes about a
profile, not sizes: they are never returned as sizes.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np

PROFILES = ("auto", "smoke", "cpu", "full")
ESTIMATE_KEY = "_minutes"


def has_cuda() -> bool:
    """True when torch sees a CUDA GPU."""
    import torch

    return torch.cuda.is_available()


def explain_profile(profile: str, available: tuple[str, ...] = ("smoke", "full")) -> tuple[str, str]:
    """Resolve ``profile`` like :func:`resolve_profile` and say why, in words.

    Returns:
        ``(resolved, reason)``, e.g. ``("cpu", "no CUDA GPU; this chapter has cpu sizes")``.
        ``reason`` is ``""`` when the profile was taken as asked.

    Raises:
        ValueError: unknown profile name, or the resolved size set is not in
            ``available`` (a chapter without ``smoke`` or ``full`` sizes).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of {PROFILES}")
    reason = ""
    if profile == "auto":
        if has_cuda():
            resolved, reason = "full", "a CUDA GPU is present"
        elif "cpu" in available:
            resolved, reason = "cpu", "no CUDA GPU; this chapter has cpu sizes"
        else:
            resolved, reason = "smoke", "no CUDA GPU; this chapter has no cpu sizes, its smoke sizes are its CPU run"
    elif profile == "cpu" and "cpu" not in available:
        resolved, reason = "smoke", "this chapter has no cpu sizes, its smoke sizes are its CPU run"
    else:
        resolved = profile
    if resolved not in available:
        raise ValueError(f"profile {profile!r} resolves to {resolved!r}, which this notebook does not define; "
                         f"it defines {sorted(available)}")
    return resolved, reason


def resolve_profile(profile: str, available: tuple[str, ...] = ("smoke", "full")) -> str:
    """Map a requested profile to the size set a notebook will use.

    ``auto`` becomes ``full`` with a CUDA GPU, else ``cpu`` when the notebook
    defines it, else ``smoke``. An explicit ``cpu`` on a notebook without
    ``cpu`` sizes falls back to ``smoke`` (:func:`pick_sizes` prints so).

    Args:
        profile: "auto", "smoke", "cpu" or "full".
        available: the size sets the notebook defines; may include "cpu", the
            CPU-sized run.

    Raises:
        ValueError: unknown profile name, or it resolves to a size set that
            ``available`` lacks.
    """
    return explain_profile(profile, available)[0]


def _format_minutes(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"about {value[0]:g}-{value[1]:g} min"
    return f"about {float(value):g} min"


def pick_sizes(
    profile: str,
    sizes: Mapping[str, Mapping[str, Any]],
    overrides: Mapping[str, Any] | None = None,
    *,
    verbose: bool = True,
) -> tuple[str, dict[str, Any]]:
    """Resolve ``profile`` and return ``(resolved_name, sizes[resolved_name] | overrides)``.

    ``sizes`` maps "smoke", "full" and optionally "cpu" to dicts of sizes with
    the same keys; ``overrides`` (the notebook's ``sizes`` parameter) replaces
    some of them. A profile's dict may also hold ``"_minutes"`` (expected wall
    time: a number or a ``(low, high)`` pair); keys starting with ``_`` are not
    sizes and are left out of the returned dict.

    With ``verbose`` (the default) it prints what will run, e.g.
    ``profile: auto -> cpu (no CUDA GPU; this chapter has cpu sizes)`` and the
    estimate when the profile has one.

    Raises:
        ValueError: unknown profile, a profile that resolves to a size set the
            notebook lacks, size sets with different keys, a ``_minutes`` that
            is neither a number nor a pair, or an override for a size the
            notebook does not have.
    """
    if not sizes:
        raise ValueError("sizes is empty: define at least 'smoke' and 'full'")
    keys = {name: {k for k in v if not str(k).startswith("_")} for name, v in sizes.items()}
    first = next(iter(keys.values()))
    if any(k != first for k in keys.values()):
        raise ValueError(f"every profile must define the same sizes, got {keys}")
    unknown = sorted(set(overrides or {}) - first)
    if unknown:
        raise ValueError(f"unknown size(s) {unknown}; this notebook has {sorted(first)}")
    resolved, reason = explain_profile(profile, tuple(sizes))
    chosen = sizes[resolved]
    estimate = chosen.get(ESTIMATE_KEY)
    if estimate is not None:
        ok_pair = isinstance(estimate, (list, tuple)) and len(estimate) == 2 and all(
            isinstance(x, (int, float)) for x in estimate)
        if not (ok_pair or isinstance(estimate, (int, float))):
            raise ValueError(f"{resolved}[{ESTIMATE_KEY!r}] must be minutes (a number or a (low, high) pair), "
                             f"got {estimate!r}")
    if verbose:
        line = f"profile: {profile}" + (f" -> {resolved} ({reason})" if resolved != profile or reason else "")
        print(line)
        if overrides:
            print(f"sizes overridden: {dict(overrides)}")
        if estimate is not None:
            note = " for the unmodified sizes" if overrides else ""
            print(f"expected wall time: {_format_minutes(estimate)}{note}")
    picked = {k: v for k, v in chosen.items() if not str(k).startswith("_")}
    return resolved, {**picked, **dict(overrides or {})}


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU and CUDA),
    and ask torch for deterministic kernels (warning, not failing, where it has none).

    It does not touch ``PYTHONHASHSEED``: ``hash()`` of a string (and so the
    order of a set of strings) is fixed when an interpreter starts and cannot
    be changed from inside it. ``python -m ecrec.book`` starts each chapter's
    kernel with ``PYTHONHASHSEED=0``; set it yourself before starting Python
    elsewhere if your code depends on that order.

    Raises:
        TypeError: ``seed`` is not an int (a bool is refused too).
        ValueError: ``seed`` is negative or at least 2**32 (numpy's range).
    """
    import torch

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(int(seed))
    np.random.seed(int(seed))
    torch.manual_seed(int(seed))
    torch.use_deterministic_algorithms(True, warn_only=True)


def device_name() -> str:
    """"cuda", "mps" or "cpu": the best device torch can use here."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
