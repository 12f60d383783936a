"""Chapter 09, exercises 1 and 2: worked solutions.

Run from the repository root (offline, CPU is enough)::

    python notebooks/solutions/09_exercises.py --smoke   # the chapter's smoke sizes, a few minutes
    python notebooks/solutions/09_exercises.py           # its cpu sizes

``tests/test_solutions_09.py`` runs ``main(smoke=True)`` and checks the
numbers it returns, so the answers below stay true when the package changes.

Exercise 1. SASRec (CE) with each basket's items in item-index order instead
of a seeded random order.

    The two orders put the same items in the same baskets; only the order of
    lines inside an invoice differs. With item-index order, position t+1 is
    often the next stock code of the same invoice, so the model spends its
    capacity on "codes near the last one", which is the catalogue's numbering,
    not behaviour. ``difference`` is Recall@50 (sorted minus random) with its
    paired 95% interval over users, ``verdict`` the book's rule
    (``ecrec.verdict``). On the smoke sizes: 0.128 sorted against 0.145
    random, -0.017 [-0.031, -0.003], a loss: the random order is not only
    safer, it is measurably better here.

Exercise 2. EASE^R's lambda swept over 30, 100, 300, 1000, 3000.

    Recall@50 on all test purchases and on new-to-user items, per lambda.
    A small lambda trusts the co-purchase counts of rare pairs, which helps
    repeat purchases (all: 0.308 at 30, 0.264 at 3000); a larger one shrinks
    the weights towards the most co-purchased pairs, which helps items new to
    the user (0.129 at 30, 0.161 at 1000). The chapter's 300 is within 0.015
    of the best lambda in both settings: EASE^R has one knob, and it is
    forgiving.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ecrec import metrics as M
from ecrec import recall as R
from ecrec import seqrec as S
from ecrec.data import load_clean_online_retail
from ecrec.features import split_dates
from ecrec.schema import INVOICE_NO, ITEM_IDX, TS, USER_ID
from ecrec.stats import paired_mean_diff
from ecrec.verdict import decide

LAMBDAS = (30.0, 100.0, 300.0, 1000.0, 3000.0)


def chapter_sizes(profile: str) -> dict:
    """The chapter's own SIZES (one source of truth), read from notebooks/09_sequences.py's size table."""
    import ast

    src = (Path(__file__).resolve().parents[1] / "09_sequences.py").read_text(encoding="utf-8")
    start = src.index("SIZES = {")
    end = src.index("\n}\n", start) + 2
    table = ast.literal_eval(src[start + len("SIZES = "): end])
    return {k: v for k, v in table[profile].items() if not k.startswith("_")}


def sorted_sequences(events: pd.DataFrame, before) -> dict:
    """Like ``S.build_sequences``, but each basket's items in item-index order."""
    past = events.loc[events[TS] < before].sort_values([USER_ID, TS, INVOICE_NO, ITEM_IDX], kind="stable")
    return {u: g[ITEM_IDX].to_numpy(np.int64) for u, g in past.groupby(USER_ID, sort=True)}


def recall50(data, scores: np.ndarray, relevant, exclude=None) -> np.ndarray:
    ids, s = R.top_k(scores, 50, exclude=exclude, return_scores=True)
    return M.ranking_metrics(ids, relevant, [50], scores=s, per_user=True)["recall"][:, 0]


def main(smoke: bool = True, seed: int = 42, verbose: bool = True) -> dict:
    """Both exercises; returns ``{"exercise_1": dict, "exercise_2": DataFrame}``."""
    size = chapter_sizes("smoke" if smoke else "cpu")
    torch.set_num_threads(2)
    clean, _ = load_clean_online_retail()
    _, test_start = split_dates(clean["InvoiceDate"])
    data = R.build_recall_data(clean, test_start, max_users=size["max_users"], seed=seed)
    pop = R.popular_scores(data.events, data.n_items, test_start - pd.Timedelta(days=30), test_start)

    per_order = {}
    for order, seqs in {"random": S.build_sequences(data.events, test_start, seed=seed),
                        "sorted": sorted_sequences(data.events, test_start)}.items():
        tokens, _, _ = S.pad_right(list(seqs.values()), size["max_len"])
        torch.manual_seed(seed)
        model = S.SeqRec(data.n_items, dim=size["dim"], max_len=size["max_len"], layers=size["layers"],
                         heads=size["heads"], dropout=size["dropout"], causal=True)
        S.train_seqrec(model, tokens, objective="ce", epochs=size["epochs"], batch_size=size["batch_size"],
                       lr=size["lr"], seed=seed, progress=verbose)
        scores, _ = S.score_next(model, [seqs.get(u, np.zeros(0, np.int64)) for u in data.users])
        scores = np.where(np.isnan(scores), pop[None, :], scores).astype(np.float64)
        per_order[order] = recall50(data, scores, data.relevant_all)
    diff = paired_mean_diff(per_order["sorted"], per_order["random"], n_boot=size["n_boot"], seed=seed)
    ex1 = {"recall50_random": float(np.nanmean(per_order["random"])),
           "recall50_sorted": float(np.nanmean(per_order["sorted"])), "difference": diff,
           "verdict": decide(diff).word}

    seen = data.history_count.copy()
    seen.data[:] = 1.0
    no_history = np.diff(seen.indptr) == 0
    rows = []
    for lam in LAMBDAS:
        scores = np.asarray(seen @ S.ease(data.train_matrix, lam))
        scores[no_history] = pop
        rows.append({"lambda": lam, "recall50_all": float(np.nanmean(recall50(data, scores, data.relevant_all))),
                     "recall50_new": float(np.nanmean(recall50(data, scores, data.relevant_new,
                                                               data.history_count)))})
    out = {"exercise_1": ex1, "exercise_2": pd.DataFrame(rows)}
    if verbose:
        print(ex1)
        print(out["exercise_2"].round(4).to_string(index=False))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    main(smoke=parser.parse_args().smoke)
