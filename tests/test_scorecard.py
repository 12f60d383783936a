"""ecrec.scorecard: the thesis rows of one run's metrics.json files, gathered into one page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecrec import scorecard
from ecrec.verdict import thesis_row


def _write(run_dir: Path, stem: str, profile: str, thesis=None, *, top_level: bool = False) -> None:
    """A chapter's metrics.json as ecrec.io.write_metrics writes it (thesis inside "metrics")."""
    record = {"metrics": {"auc": 0.7}, "profile": profile, "seed": 42}
    if thesis is not None:
        if top_level:
            record["thesis"] = thesis
        else:
            record["metrics"]["thesis"] = thesis
    (run_dir / stem).mkdir(parents=True)
    (run_dir / stem / "metrics.json").write_text(json.dumps(record))


GAIN = thesis_row(chapter="04", question="text added to the ID DNN", metric="AUC", lm="ID DNN + text",
                  baseline="ID DNN", r={"diff": 0.0123, "low": 0.0051, "high": 0.0190, "level": 0.95},
                  train_size=12288, seed_diffs=[0.011, 0.013, 0.012])
SEED_TIE = thesis_row(chapter="04", question="text added to the ID DNN", metric="AUC", lm="ID DNN + text",
                      baseline="ID DNN", r={"diff": 0.004, "low": 0.001, "high": 0.007, "level": 0.95},
                      train_size=1536, seed_diffs=[0.0001, 0.0038, -0.0002], slice="popularity negatives")
LOSS = thesis_row(chapter="07", question="fine-tuned MiniLM vs TF-IDF + LR", metric="log loss",
                  lm="multi-task MiniLM", baseline="TF-IDF + LR", r={"diff": 0.031, "low": 0.012, "high": 0.05},
                  train_size="4,000 reviews", better="lower")
IDENTICAL = thesis_row(chapter="05", question="hybrid vs ALS", metric="Recall@50", lm="hybrid", baseline="ALS",
                       r={"diff": 1e-19, "low": 0.0, "high": 0.0}, train_size=20000, slice="all")
PROBE = thesis_row(chapter="04", question="cross-encoder vs ID DNN", metric="AUC", lm="cross-encoder",
                   baseline="ID DNN", r={"diff": -0.2, "low": -0.25, "high": -0.15}, train_size=1536,
                   kept_start=True)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "smoke"
    _write(run, "01_data", "smoke")  # no thesis rows
    _write(run, "04_bert_ctr", "cpu", [GAIN, SEED_TIE, PROBE])
    _write(run, "05_recall", "smoke", [IDENTICAL], top_level=True)
    _write(run, "07_reviews", "cpu", [LOSS])
    (run / "executed").mkdir()  # not a chapter folder
    return run


def test_rows_are_read_in_chapter_order_with_the_profile_that_ran(run_dir):
    rows, profiles = scorecard.read_rows(run_dir)
    assert profiles == {"01_data": "smoke", "04_bert_ctr": "cpu", "05_recall": "smoke", "07_reviews": "cpu"}
    assert [(s.stem, s.profile, s.row["lm"], s.outcome) for s in rows] == [
        ("04_bert_ctr", "cpu", "ID DNN + text", "wins"),
        ("04_bert_ctr", "cpu", "ID DNN + text", "ties"),  # the interval clears 0, one seed does not agree
        ("04_bert_ctr", "cpu", "cross-encoder", "not compared"),
        ("05_recall", "smoke", "hybrid", "ties"),  # identical
        ("07_reviews", "cpu", "multi-task MiniLM", "loses"),  # log loss: higher is worse
    ]


def test_the_page_holds_exactly_these_rows(run_dir):
    rows, profiles = scorecard.read_rows(run_dir)
    page = scorecard.render(rows, profiles, requested="auto")
    lines = page.splitlines()
    header = ("| chapter | question | slice | metric | LM vs baseline | difference (LM − baseline) | verdict "
              "| training size | profile |")
    assert lines[0] == "# Scorecard: where the language model wins, ties and loses"
    assert "Of 5 comparisons: wins 1, ties 2, loses 1, not compared 1." in lines

    def section(title: str) -> list[str]:
        start = lines.index(title) + 2
        end = lines.index("", start)
        return lines[start:end]

    assert section("## Where the language model wins (1)") == [header, "|" + "---|" * 9,
        "| 04 | text added to the ID DNN | all | AUC (higher is better) | ID DNN + text vs ID DNN "
        "| +0.012 [+0.005, +0.019] (95%); seeds +0.0110 to +0.0130 | a gain | 12,288 | cpu |"]
    assert section("## Where it ties (within noise, or identical) (2)")[2:] == [
        "| 04 | text added to the ID DNN | popularity negatives | AUC (higher is better) | ID DNN + text vs ID DNN "
        "| +0.004 [+0.001, +0.007] (95%); seeds -0.0002 to +0.0038 | within noise | 1,536 | cpu |",
        "| 05 | hybrid vs ALS | all | Recall@50 (higher is better) | hybrid vs ALS | 0 (identical) | identical "
        "| 20,000 | smoke |"]
    assert section("## Where it loses (1)")[2:] == [
        "| 07 | fine-tuned MiniLM vs TF-IDF + LR | all | log loss (lower is better) "
        "| multi-task MiniLM vs TF-IDF + LR | +0.031 [+0.012, +0.050] | a loss | 4,000 reviews | cpu |"]
    assert section("## Not compared: fine-tuning did not move the model (it is its probe) (1)")[2:] == [
        "| 04 | cross-encoder vs ID DNN | all | AUC (higher is better) | cross-encoder vs ID DNN "
        "| -0.200 [-0.250, -0.150] | = its probe (fine-tuning did not move it) | 1,536 | cpu |"]
    assert lines[lines.index("## The profiles that ran"):] == [
        "## The profiles that ran", "", "Each chapter's numbers come from the profile it ran (requested: `auto`):",
        "", "| chapter | profile |", "|---|---|",
        "| 01_data | `smoke` |", "| 04_bert_ctr | `cpu` |", "| 05_recall | `smoke` |", "| 07_reviews | `cpu` |"]
    assert ("**The `full` profile — the tutorial as intended, on a GPU — has not yet been run anywhere, and its "
            "numbers are not in this book.**") in page


def test_a_run_without_rows_says_so_plainly(tmp_path):
    run = tmp_path / "cpu"
    _write(run, "01_data", "cpu")
    _write(run, "02_ctr_math", "cpu", [])
    page = scorecard.build_scorecard(run, tmp_path / "book_src", requested="cpu")
    text = page.read_text()
    assert page.name == "scorecard.md"
    assert "**No chapter of this run has written scorecard rows yet**" in text
    assert "## Where" not in text and "| 02_ctr_math | `cpu` |" in text
    assert "has not yet been run anywhere" in text
    empty = scorecard.render([], {})
    assert "No chapter of this run wrote a `metrics.json`." in empty


def test_a_chapter_that_ran_full_is_named_instead(tmp_path, monkeypatch):
    run = tmp_path / "full"
    _write(run, "04_bert_ctr", "full", [GAIN])
    _write(run, "05_recall", "cpu", [])
    text = scorecard.render(*scorecard.read_rows(run))
    assert "has not yet been run anywhere" not in text
    assert "In this run, 04_bert_ctr ran `full`; the other chapters ran the profiles listed below." in text
    monkeypatch.setattr(scorecard, "FULL_PROFILE_RUN", "2026-12-24, NVIDIA H100, benchmarks/NOTES.md")
    text = scorecard.render(*scorecard.read_rows(run))
    assert "The `full` profile was run: 2026-12-24, NVIDIA H100, benchmarks/NOTES.md." in text


def test_an_appendix_is_read_after_the_chapters(tmp_path):
    run = tmp_path / "smoke"
    for stem in ("A1_ddp", "10_real_clicks", "02_ctr_math"):
        _write(run, stem, "smoke")
    rows, profiles = scorecard.read_rows(run)
    assert rows == [] and list(profiles) == ["02_ctr_math", "10_real_clicks", "A1_ddp"]


def test_pipes_in_names_do_not_break_the_table(tmp_path):
    row = {**LOSS, "question": "a | b", "lm": "x|y"}
    run = tmp_path / "smoke"
    _write(run, "07_reviews", "smoke", [row])
    line = next(ln for ln in scorecard.render(*scorecard.read_rows(run)).splitlines() if ln.startswith("| 07"))
    assert "| a \\| b |" in line and "x\\|y vs TF-IDF + LR" in line
    assert len(line.replace("\\|", "").split("|")) == 11  # 9 cells


@pytest.mark.parametrize("thesis,message", [
    ({"not": "a list"}, "'thesis' must be a list"),
    ([{"chapter": "04"}], r"thesis row 0 lacks \['question', 'metric'"),
    ([{**GAIN, "verdict": "beats"}], r"thesis row 0: unknown verdict 'beats'"),
])
def test_malformed_rows_are_refused_with_the_file_named(tmp_path, thesis, message):
    run = tmp_path / "smoke"
    _write(run, "04_bert_ctr", "smoke", thesis)
    with pytest.raises(ValueError, match=message) as info:
        scorecard.read_rows(run)
    assert str(run / "04_bert_ctr" / "metrics.json") in str(info.value)


def test_bad_json_is_refused(tmp_path):
    (tmp_path / "04_bert_ctr").mkdir()
    (tmp_path / "04_bert_ctr" / "metrics.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON.*rerun that chapter"):
        scorecard.read_rows(tmp_path)


def test_outcome_of_every_verdict_word():
    from ecrec.verdict import WORDS

    assert [scorecard.outcome(w) for w in WORDS] == ["ties", "not compared", "wins", "loses", "ties"]
    with pytest.raises(ValueError, match="unknown verdict"):
        scorecard.outcome("beats")
