"""Figures that several chapters draw, and one way to save them.

Chapter-specific figures are drawn in their notebooks; what two or more
chapters share lives here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np


def save(fig, output_dir: str | Path, name: str, dpi: int = 110) -> Path:
    """Save ``fig`` as ``output_dir/name.png`` atomically and return the path.

    The file honours the umask like any other (see :func:`ecrec.io.atomic_write`).

    Raises:
        ValueError: ``name`` is empty or holds a path separator.
        OSError: the file cannot be written.
    """
    from ecrec.io import atomic_write

    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"name must be a plain file name without extension, got {name!r}")
    path = Path(output_dir) / f"{name}.png"
    return atomic_write(path, lambda p: fig.savefig(p, dpi=dpi, bbox_inches="tight", format="png"))


def reliability(
    y_true: np.ndarray,
    probs: Mapping[str, np.ndarray],
    n_bins: int = 10,
    ax=None,
    strategy: str = "quantile",
):
    """Reliability (calibration) diagram: mean predicted probability against observed rate.

    Args:
        y_true: (n,) 0/1 labels.
        probs: model name -> (n,) predicted probabilities in [0, 1].
        n_bins: number of bins; ``strategy="quantile"`` puts equally many
            examples in each (scikit-learn's ``calibration_curve``).

    Returns:
        The matplotlib Axes.

    Raises:
        ValueError: (from scikit-learn) labels that are not binary, probabilities
            outside [0, 1], or lengths that differ from ``y_true``'s.
    """
    from sklearn.calibration import calibration_curve

    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    for name, p in probs.items():
        observed, predicted = calibration_curve(y_true, p, n_bins=n_bins, strategy=strategy)
        ax.plot(predicted, observed, marker="o", label=name)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed positive rate")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left", fontsize="small")
    return ax


def loss_curves(history: Mapping[str, Sequence[float]], ax=None, xlabel: str = "epoch", ylabel: str = "log loss"):
    """One line per named series (e.g. {"train": [...], "valid": [...]}); returns the Axes.

    Raises nothing of its own; matplotlib raises for values it cannot plot.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    for name, values in history.items():
        ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    return ax
