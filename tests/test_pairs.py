"""ecrec.pairs: examples as text, tokenized once (real MiniLM tokenizer, hand-made items)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ecrec import pairs
from ecrec.text import load_tokenizer

DESCRIPTIONS = {
    "A": "WHITE HANGING HEART T-LIGHT HOLDER",
    "B": "RED WOOLLY HOTTIE WHITE HEART",
    "C": "JUMBO BAG RED RETROSPOT",
    "D": "PACK OF 72 RETROSPOT CAKE CASES",
    "E": "REGENCY CAKESTAND 3 TIER",
}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_history_text_newest_first_and_limited():
    text = pairs.history_text(["C", "A", "B"], DESCRIPTIONS, n_items=2)
    assert text == "jumbo bag red retrospot ; white hanging heart t-light holder"
    assert pairs.history_text([], DESCRIPTIONS) == pairs.NO_HISTORY
    with pytest.raises(KeyError, match="Z"):
        pairs.history_text(["Z"], DESCRIPTIONS)
    with pytest.raises(ValueError, match="n_items"):
        pairs.history_text(["A"], DESCRIPTIONS, n_items=0)


def test_build_text_pairs_values_and_errors():
    ex = pd.DataFrame({"hist_items": [["A", "B"], []], "item_id": ["C", "D"], "label": [1, 0]}, index=[10, 11])
    out = pairs.build_text_pairs(ex, pd.Series(DESCRIPTIONS), n_history=5)
    assert list(out.index) == [10, 11]
    assert out.loc[10, "text_a"] == "white hanging heart t-light holder ; red woolly hottie white heart"
    assert out.loc[11, "text_a"] == pairs.NO_HISTORY
    assert out.loc[11, "text_b"] == "pack of 72 retrospot cake cases"
    assert out.label.dtype == np.float32 and out.label.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="hist_items"):
        pairs.build_text_pairs(ex.drop(columns="hist_items"), DESCRIPTIONS)
    with pytest.raises(ValueError, match="no description"):
        pairs.build_text_pairs(ex.assign(item_id=["C", "nope"]), DESCRIPTIONS)
    with pytest.raises(ValueError, match="only 0 and 1"):
        pairs.build_text_pairs(ex.assign(label=[1, 2]), DESCRIPTIONS)


def test_every_encoded_pair_fits_and_keeps_the_candidate(tokenizer):
    long_history = " ; ".join(DESCRIPTIONS.values()) * 5
    a = [long_history, "short", pairs.NO_HISTORY]
    b = [DESCRIPTIONS["E"].lower(), DESCRIPTIONS["C"].lower(), long_history]
    enc = pairs.encode_pairs(tokenizer, a, b, [1, 0, 1], max_length=24)
    assert enc.lengths.tolist()[1] < 24 and enc.lengths[0] == 24 and enc.lengths[2] == 24
    cand_ids = tokenizer(b[0], add_special_tokens=False)["input_ids"]
    ids, types = enc.input_ids[0], enc.token_type_ids[0]
    assert [t for t, s in zip(ids, types, strict=True) if s == 1][:-1] == cand_ids  # candidate kept whole
    batch = enc.batch([1, 0], pad_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, 24)  # padded to the batch's longest, not to max_length
    assert batch["attention_mask"][0].sum() == enc.lengths[1]
    assert (batch["input_ids"][0, enc.lengths[1]:] == tokenizer.pad_token_id).all()


def test_encode_pairs_rejects_bad_input(tokenizer):
    with pytest.raises(ValueError, match="differ in length"):
        pairs.encode_pairs(tokenizer, ["a"], ["b", "c"], [1])
    with pytest.raises(ValueError, match="max_length"):
        pairs.encode_pairs(tokenizer, ["a"], ["b"], [1], max_length=4)
    with pytest.raises(ValueError, match="only 0 and 1"):
        pairs.encode_pairs(tokenizer, ["a"], ["b"], [0.5])
    with pytest.raises(TypeError, match=r"text_b\[0\]"):
        pairs.encode_pairs(tokenizer, ["a"], [None], [1])
    with pytest.raises(ValueError, match="no examples"):
        pairs.encode_pairs(tokenizer, [], [], [])


def test_encode_histories_rows_and_batch(tokenizer):
    ex = pd.DataFrame({"hist_items": [["C", "A", "B"], []], "item_id": ["E", "C"], "label": [1, 0]})
    enc = pairs.encode_histories(tokenizer, ex, pd.Series(DESCRIPTIONS), n_history=2, max_length=16)
    assert enc.cand.tolist() == [4, 2]
    assert enc.hist.tolist() == [[2, 0], [-1, -1]]  # newest first, capped at 2, -1 = none
    assert len(enc.item_tokens) == len(DESCRIPTIONS)
    batch = enc.batch([0, 1])
    # distinct items of the batch: A, C, E (rows 0, 2, 4) -> local 0, 1, 2
    assert batch["input_ids"].shape[0] == 3
    assert batch["cand"].tolist() == [2, 1] and batch["hist"].tolist() == [[1, 0], [-1, -1]]
    assert batch["input_ids"].dtype == torch.long
    with pytest.raises(KeyError, match="Z"):
        pairs.encode_histories(tokenizer, ex.assign(hist_items=[["Z"], []]), pd.Series(DESCRIPTIONS))
    with pytest.raises(ValueError, match="n_history"):
        pairs.encode_histories(tokenizer, ex, pd.Series(DESCRIPTIONS), n_history=0)


def test_length_grouped_batches_cover_once_and_pad_less():
    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 120, size=1000)
    batches = pairs.length_grouped_batches(lengths, 32, seed=3, mega_batch_mult=8)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(len(b) <= 32 for b in batches)
    again = pairs.length_grouped_batches(lengths, 32, seed=3, mega_batch_mult=8)
    assert all((x == y).all() for x, y in zip(batches, again, strict=True))
    padded = sum(lengths[b].max() * len(b) for b in batches)
    shuffled = lengths[rng.permutation(1000)]
    padded_random = sum(shuffled[i : i + 32].max() * len(shuffled[i : i + 32]) for i in range(0, 1000, 32))
    assert padded < 0.7 * padded_random
    sb = pairs.sorted_batches(lengths, 100)
    assert (np.diff(lengths[np.concatenate(sb)]) >= 0).all()
    with pytest.raises(ValueError):
        pairs.length_grouped_batches(lengths, 0)
