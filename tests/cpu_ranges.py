"""The `cpu` profile's recorded ranges: what the main job (`python -m ecrec.book all` without a GPU) computes.

CI runs the `smoke` profile only (the ``test_nb_*`` modules hold its ranges). A maintainer who ran the
main job checks its numbers against the ranges recorded here with::

    ECREC_CPU_RUN_DIR=_output/auto python -m pytest tests/test_cpu_ranges.py

and, after a deliberate change of a chapter's cpu sizes or code, records them again (then reviews the
diff of ``tests/cpu_ranges.json`` like any other change of an expected value)::

    python tests/cpu_ranges.py record _output/auto

What is recorded, per chapter: every row of its ``thesis`` list (the language model minus the baseline,
``diff``) and the headline metrics named in :data:`HEADLINES`. Tolerances are wide enough for another
CPU and for fp32 instead of bf16 (chapter 04 fine-tunes in bf16 autocast where the CPU has it):
``TOL_TRAINED`` for anything a fine-tune or a neural network trained on the run produced,
``TOL_FIXED`` for zero-shot, frozen and count-based numbers, which move only with float kernels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RANGES = Path(__file__).with_name("cpu_ranges.json")
TOL_TRAINED = 0.03
TOL_FIXED = 0.01
# chapter stem -> dotted paths into its metrics.json "metrics" (a headline number each)
HEADLINES: dict[str, list[str]] = {
    "04_bert_ctr": ["auc.popularity_matched/all/id_dnn", "auc.uniform/all/id_dnn",
                    "auc.popularity_matched/all/zero_shot_text", "probe_check.popularity_matched.zero-shot similarity",
                    "probe_check.popularity_matched.BiProbe (similarity kept)"],
    "05_recall": ["all.popular.recall@50", "all.als.recall@50", "all.text_zero_shot.recall@50",
                  "all.text_fine_tuned.recall@50", "cold_items_recall@50.text_fine_tuned",
                  "cold_items_recall@50.text_zero_shot"],
    "06_multitask": ["ssb.esmm_joint_auc_space", "return_auc_lr"],
    "07_reviews": ["models.multi-task/recommended/auc.value", "models.multi-task/rating/macro_f1.value",
                   "models.TF-IDF + LR (reference)/recommended/auc.value",
                   "models.frozen MiniLM + LR/recommended/auc.value"],
    "08_system": ["dnn_test_auc", "recall_ceiling.100", "final_top10.recall@100 + ranking.ndcg@10"],
    "09_sequences": ["full.all/EASE^R/Recall@50", "full.all/ALS/Recall@50", "full.all/SASRec (CE)/Recall@50"],
}
_FIXED_WORDS = ("zero-shot", "frozen", "popular", "tfidf", "tf-idf", "count")
_TRAINED_WORDS = ("fine-tun", "dnn", "two_tower", "two-tower", "sasrec", "bert4rec", "als", "lora", "multi-task")


def thesis_key(row: dict) -> str:
    """The key of a thesis row: question | slice | metric | training size."""
    return " | ".join(str(row.get(f)) for f in ("question", "slice", "metric", "train_size"))


def lookup(metrics: dict, path: str):
    """``metrics["a"]["b"]...`` for the dotted ``path`` "a.b..." (keys may contain '@', not '.')."""
    value = metrics
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"{path!r}: no key {part!r} (have {sorted(value)[:12] if isinstance(value, dict) else value})")
        value = value[part]
    return value


def tolerance(text: str) -> float:
    """``TOL_TRAINED`` if ``text`` names a trained model, else ``TOL_FIXED``."""
    low = text.lower()
    if any(w in low for w in _TRAINED_WORDS):
        return TOL_TRAINED
    return TOL_FIXED if any(w in low for w in _FIXED_WORDS) else TOL_TRAINED


def record(run_dir: Path, only: list[str] | None = None) -> dict:
    """Recorded values from a cpu run folder (``<output>/auto`` or ``<output>/cpu``); ``only``: these chapters."""
    out: dict[str, dict] = {}
    for path in sorted(run_dir.glob("[0-9][0-9]_*/metrics.json")) + sorted(run_dir.glob("[A-Z][0-9]_*/metrics.json")):
        stem, data = path.parent.name, json.loads(path.read_text())
        if data.get("profile") != "cpu" or (only and not any(stem.startswith(o) for o in only)):
            continue  # chapters without cpu sizes ran smoke's: their ranges live in test_nb_*
        metrics, rows = data["metrics"], {}
        for row in metrics.get("thesis", []):
            if row.get("diff") is not None:
                rows[f"thesis: {thesis_key(row)}"] = {
                    "value": round(float(row["diff"]), 4),
                    "tol": tolerance(f"{row.get('lm')} {row.get('baseline')}")}
        for key in HEADLINES.get(stem, []):
            rows[key] = {"value": round(float(lookup(metrics, key)), 4), "tol": tolerance(key)}
        if rows:  # a chapter with nothing recorded here is checked by its smoke test only
            out[stem] = {"precision": metrics.get("precision"), "wall_time_s": data.get("wall_time_s"),
                         "values": rows}
    return out


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "record":
        sys.exit("usage: python tests/cpu_ranges.py record <run folder, e.g. _output/auto> [chapter prefixes]")
    folder = Path(sys.argv[2])
    if not folder.is_dir():
        sys.exit(f"{folder} is not a folder: pass the run's profile folder, e.g. _output/auto")
    recorded = record(folder, sys.argv[3:] or None)
    if not recorded:
        sys.exit(f"no chapter in {folder} ran the cpu profile: run `python -m ecrec.book all` without a GPU first")
    if sys.argv[3:] and RANGES.is_file():  # only the chapters named: keep the others' recorded values
        recorded = {**json.loads(RANGES.read_text()), **recorded}
    RANGES.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    print(f"recorded {sum(len(c['values']) for c in recorded.values())} values of {sorted(recorded)} in {RANGES}")
