"""Atomic writes and the ``metrics.json`` every notebook leaves behind.

Nothing is lost: every file is written to a temporary sibling, flushed, and
moved into place with :func:`os.replace`, so a crash leaves either the old file
or the new one, never half of one.
"""

from __future__ import annotations

import json
import math
import os
import platform
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

KEY_LIBRARIES = (
    "numpy", "pandas", "scikit-learn", "torch", "transformers", "peft",
    "faiss-cpu", "implicit",
)


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's file-creation mask.

    Read from ``/proc/self/status`` where Linux offers it; elsewhere by setting
    the mask and putting it back at once (under a lock).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then move ``tmp_path`` onto ``path`` atomically.

    ``write`` receives a temporary path in the same folder (so the final rename
    never crosses file systems). On any error the temporary file is removed and
    ``path`` is left as it was.

    The file gets the permissions an ordinary ``open(path, "w")`` would give it:
    those of the file it replaces, or ``0o666`` less the umask for a new file
    (the temporary file's private ``0o600`` is not kept).

    Symbolic links are followed, as ``open(path, "w")`` follows them: when
    ``path`` (or a folder above it) is a link, the file it points to is the
    one replaced atomically (the temporary file lies beside it) and the link
    is kept. A dangling link gets its target created.

    Returns:
        The path written, as given (the link's path when ``path`` is a link).

    Raises:
        OSError: the folder cannot be created or written, the rename fails, or
            the links form a loop.
        Exception: whatever ``write`` raises (re-raised after clean-up).
    """
    given = Path(path)
    # follow links: replacing the link itself would leave its target stale
    path = Path(os.path.realpath(given, strict=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return given


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`).

    Raises:
        OSError: the file cannot be written.
        UnicodeEncodeError: ``text`` holds lone surrogates.
    """
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays become plain numbers and lists; NaN is refused."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"metrics must be finite numbers, got {value}")
    return value


def library_versions(names: tuple[str, ...] = KEY_LIBRARIES) -> dict[str, str]:
    """Installed versions of ``names`` ("not installed" where absent)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_metrics(
    output_dir: str | Path,
    metrics: Mapping[str, Any],
    *,
    profile: str,
    seed: int,
    started: float,
    device: str | None = None,
) -> Path:
    """Write a notebook's headline numbers to ``output_dir/metrics.json`` atomically.

    Adds the run's context: profile, seed, wall time in seconds since
    ``started`` (a :func:`time.time` value), device and library versions.

    Raises:
        ValueError: a metric is NaN or infinite.
        TypeError: a metric is not JSON-serialisable.
        OSError: ``metrics.json`` cannot be written.
    """
    if device is None:
        from ecrec.profiles import device_name

        device = device_name()
    record = {
        "metrics": _jsonable(dict(metrics)),
        "profile": profile,
        "seed": seed,
        "wall_time_s": round(time.time() - started, 2),
        "device": device,
        "versions": library_versions(),
    }
    return atomic_write_text(Path(output_dir) / "metrics.json", json.dumps(record, indent=2, sort_keys=True))


def read_metrics(output_dir: str | Path) -> dict[str, Any]:
    """Read back what :func:`write_metrics` wrote.

    Raises:
        FileNotFoundError: there is no ``metrics.json`` in ``output_dir``.
        json.JSONDecodeError: the file is not valid JSON.
    """
    return json.loads((Path(output_dir) / "metrics.json").read_text(encoding="utf-8"))
