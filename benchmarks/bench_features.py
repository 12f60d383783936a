"""How long the full point-in-time CTR dataset takes to build, and how it grows with rows.

Builds the dataset (positives, negatives, all point-in-time features) on half
the customers, all of them, and twice the data (every customer repeated
under a shifted ID, so twice the rows with the same shape), and prints the
seconds and the ratio to the full build side by side.

    python benchmarks/bench_features.py [--repeat 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from ecrec import features as F
from ecrec.data import load_clean_online_retail


def doubled(clean: pd.DataFrame) -> pd.DataFrame:
    """The log twice: the copy's customers get IDs shifted by 100,000 and invoices a 'X' prefix."""
    shift = 100_000
    copy = clean.assign(CustomerID=clean["CustomerID"] + shift, InvoiceNo="X" + clean["InvoiceNo"].astype(str))
    return pd.concat([clean, copy], ignore_index=True)


def half(clean: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    users = clean["CustomerID"].unique()
    keep = np.random.default_rng(seed).choice(users, size=len(users) // 2, replace=False)
    return clean[clean["CustomerID"].isin(keep)].reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1, help="builds per size; the best time is kept")
    args = parser.parse_args()
    clean, _ = load_clean_online_retail()
    config = F.CtrDatasetConfig()
    rows = []
    for name, data in (("half", half(clean)), ("full", clean), ("twice", doubled(clean))):
        best, n = np.inf, 0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = F.build_ctr_dataset(data, config)
            best = min(best, time.perf_counter() - t0)
            n = len(out)
        rows.append({"data": name, "clean_rows": len(data), "examples": n, "seconds": best})
    table = pd.DataFrame(rows).set_index("data")
    table["x_rows_vs_full"] = table["examples"] / table.loc["full", "examples"]
    table["x_time_vs_full"] = table["seconds"] / table.loc["full", "seconds"]
    table["us_per_example"] = 1e6 * table["seconds"] / table["examples"]
    print(f"build_ctr_dataset, neg_ratio={config.neg_ratio}, history_len={config.history_len}")
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
