"""ecrec.verdict: the cases the book once got wrong, and the rule's edges."""

from __future__ import annotations

import numpy as np
import pytest

from ecrec import stats
from ecrec.verdict import NOISE, compare, decide, direction, fmt_interval, thesis_row


def test_identical_lists_are_identical_not_a_gain():
    # 5.8 once said "hybrid beats als (+0.000, 95% interval +0.000 to +0.000)": a 1e-19 summation-order difference
    v = decide({"diff": 1e-19, "low": 0.0, "high": 2e-19, "level": 0.95})
    assert v.word == "identical"
    assert "+0.000" not in v.text
    assert compare("hybrid", "als", {"diff": 1e-19, "low": 0.0, "high": 2e-19}) == (
        "hybrid and als are identical (the same scores)")


def test_identical_scores_through_the_bootstrap_give_exactly_zero():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = rng.normal(size=400)
    users = rng.integers(0, 40, 400)
    r = stats.bootstrap_auc(y, {"a": s, "b": s.copy()}, users, pairs=[("a", "b")], n_boot=50)["a - b"]
    assert r["diff"] == 0.0 and r["low"] == 0.0 and r["high"] == 0.0
    assert decide(r).word == "identical"


def test_kept_start_is_its_probe_whatever_the_interval():
    # 4.10 once printed "+0.000 [+0.000, +0.000] (within noise)" for a model that kept its step-0 weights
    v = decide({"diff": 0.0, "low": 0.0, "high": 0.0}, kept_start=True)
    assert v.word == "= its probe (fine-tuning did not move it)"
    assert v.text == v.word
    # even an interval that clears 0 (another model's noise) does not make it an architecture's gain
    assert decide({"diff": 0.05, "low": 0.01, "high": 0.09}, kept_start=True).word.startswith("= its probe")
    assert "not compared" in compare("cross_ft", "bi_ft", {"diff": 0.0, "low": 0, "high": 0}, kept_start=True)


def test_a_gain_needs_every_seed_to_agree():
    # 4.10 once called +0.004 [+0.001, +0.007] "a gain" while 3 DNN seeds gave +0.0001 to +0.0038: all positive -> a gain
    r = {"diff": 0.004, "low": 0.001, "high": 0.007, "level": 0.95}
    v = decide(r, seed_diffs=[0.0001, 0.0038, 0.002])
    assert v.word == "a gain"
    assert v.seed_range == (0.0001, 0.0038)
    assert "over 3 seeds +0.0001 to +0.0038" in v.text
    assert "(95% interval)" in v.text
    # one seed of the other sign: within noise, with the seed range beside it
    v = decide(r, seed_diffs=[-0.0005, 0.0038, 0.002])
    assert v.word == "within noise"
    assert "-0.0005 to +0.0038" in v.text
    # a seed difference that is numerical noise does not count as agreeing
    assert decide(r, seed_diffs=[1e-12, 0.003]).word == "within noise"


@pytest.mark.parametrize(("low", "high", "word"), [
    (0.001, 0.007, "a gain"),
    (-0.007, -0.001, "a loss"),
    (-0.001, 0.007, "within noise"),
    (0.0, 0.007, "within noise"),  # an interval touching 0 does not clear it
    (1e-12, 0.007, "within noise"),  # nor one that clears it by numerical noise only
])
def test_interval_must_clear_zero(low, high, word):
    assert decide({"diff": (low + high) / 2, "low": low, "high": high}).word == word


def test_lower_is_better_flips_the_sign():
    # log loss: a - b < 0 means a has the lower loss, a gain
    assert decide({"diff": -0.02, "low": -0.03, "high": -0.01}, better="lower").word == "a gain"
    assert decide({"diff": 0.02, "low": 0.01, "high": 0.03}, better="lower").word == "a loss"
    assert decide({"diff": -0.02, "low": -0.03, "high": -0.01}, better="lower", seed_diffs=[-0.01, -0.02]).word == "a gain"
    assert decide({"diff": -0.02, "low": -0.03, "high": -0.01}, better="lower", seed_diffs=[0.01, -0.02]).word == (
        "within noise")


def test_text_matches_the_numbers():
    v = decide({"diff": -0.016, "low": -0.024, "high": -0.007, "level": 0.9})
    assert v.text == "-0.016 [-0.024, -0.007] (90% interval), a loss"
    assert compare("bi_ft", "frozen_probe", {"diff": -0.016, "low": -0.024, "high": -0.007}) == (
        "bi_ft loses to frozen_probe: -0.016 [-0.024, -0.007]")
    assert fmt_interval({"auc": 0.745, "low": 0.721, "high": 0.766}, signed=False) == "0.745 [0.721, 0.766]"
    assert fmt_interval({"diff": 0.0, "low": -NOISE / 2, "high": NOISE / 2}) == "0 (identical)"
    # an end that clears 0 but rounds to it gets the digits that show it (never "-0.000" beside "a loss")
    assert fmt_interval({"diff": -0.006, "low": -0.011, "high": -0.0003}) == "-0.0060 [-0.0110, -0.0003]"
    assert decide({"diff": -0.006, "low": -0.011, "high": -0.0003}).text.startswith("-0.0060 [-0.0110, -0.0003]")
    assert fmt_interval({"diff": 0.003, "low": 0.0, "high": 0.006}) == "+0.003 [+0.000, +0.006]"  # 0 itself: as is


def test_refusals():
    with pytest.raises(ValueError, match="better must be"):
        decide({"diff": 0.1, "low": 0, "high": 0.2}, better="up")
    with pytest.raises(ValueError, match="needs a 'diff'"):
        decide({"auc": 0.7, "low": 0.6, "high": 0.8})


def test_thesis_row_is_json_ready_and_carries_the_verdict():
    row = thesis_row(chapter="04", question="text added to the ID DNN", metric="AUC", lm="id_dnn_ft_text",
                     baseline="id_dnn", r={"diff": 0.004, "low": 0.001, "high": 0.007, "level": 0.95},
                     train_size=12288, seed_diffs=[0.001, 0.003])
    assert row["verdict"] == "a gain"
    assert row["diff"] == 0.004 and row["low"] == 0.001 and row["high"] == 0.007 and row["level"] == 0.95
    assert row["seed_range"] == [0.001, 0.003]
    no_interval = thesis_row(chapter="05", question="q", metric="Recall@50", lm="a", baseline="b",
                             r={"diff": 0.01}, train_size="all")
    assert no_interval["verdict"] == "within noise" and no_interval["low"] is None


def test_direction_reads_a_difference_without_a_better_side():
    assert direction({"diff": 1.55, "low": 1.45, "high": 1.64, "level": 0.95}) == "+1.550 [+1.450, +1.640] (95% interval), higher"
    assert direction({"diff": -0.164, "low": -0.173, "high": -0.156, "level": 0.9}).endswith("(90% interval), lower")
    assert direction({"diff": 0.01, "low": -0.02, "high": 0.04, "level": 0.95}).endswith("within noise")
    assert direction({"diff": 0.0, "low": 0.0, "high": 0.0}) == "identical"
