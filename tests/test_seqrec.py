"""ecrec.seqrec: sequences, padding and masks on tiny hand-made examples; EASE^R and the sampled protocol by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from ecrec import seqrec as S


def _events():
    ts = pd.to_datetime(["2011-01-01", "2011-01-01", "2011-01-02", "2011-01-05", "2011-01-03", "2011-02-01"])
    return pd.DataFrame({"user_id": [1, 1, 1, 1, 2, 2], "item_idx": [5, 6, 7, 8, 3, 4], "ts": ts,
                         "invoice_no": ["A", "A", "B", "C", "D", "E"]})


def test_sequences_keep_time_order_and_shuffle_only_inside_a_basket():
    seqs = S.build_sequences(_events(), pd.Timestamp("2011-01-10"), seed=0)
    assert set(seqs) == {1, 2}
    s1 = seqs[1].tolist()
    assert sorted(s1[:2]) == [5, 6] and s1[2:] == [7, 8]  # basket A (any order), then B, then C
    assert seqs[2].tolist() == [3]  # event of 2011-02-01 is after `before`
    orders = {tuple(S.build_sequences(_events(), pd.Timestamp("2011-01-10"), seed=k)[1][:2]) for k in range(20)}
    assert orders == {(5, 6), (6, 5)}  # the basket's order is random across seeds...
    again = S.build_sequences(_events(), pd.Timestamp("2011-01-10"), seed=3)[1]
    assert np.array_equal(again, S.build_sequences(_events(), pd.Timestamp("2011-01-10"), seed=3)[1])  # ...and seeded


def test_pad_right_by_hand():
    tokens, lengths, truncated = S.pad_right([np.array([7, 3, 9]), np.array([4]), np.array([], np.int64),
                                              np.array([1, 2, 3, 4, 5])], 4)
    np.testing.assert_array_equal(tokens, [[8, 4, 10, 0], [5, 0, 0, 0], [0, 0, 0, 0], [3, 4, 5, 6]])
    np.testing.assert_array_equal(lengths, [3, 1, 0, 4])
    np.testing.assert_array_equal(truncated, [False, False, False, True])  # the last 4 of 5 kept
    with pytest.raises(ValueError, match="max_len"):
        S.pad_right([np.array([1])], 0)
    with pytest.raises(ValueError, match="negative item index"):
        S.pad_right([np.array([-1])], 3)


def _model(causal, **kw):
    torch.manual_seed(0)
    return S.SeqRec(12, dim=16, max_len=6, layers=2, heads=2, dropout=0.0, causal=causal, **kw).eval()


def test_sasrec_never_attends_to_the_future():
    m = _model(True)
    a = torch.tensor([[3, 5, 7, 2, 0, 0]])
    b = a.clone()
    b[0, 3] = 9  # change the 4th item
    with torch.no_grad():
        ha, hb = m(a), m(b)
    assert torch.equal(ha[0, :3], hb[0, :3])  # positions before it: exactly unchanged
    assert not torch.allclose(ha[0, 3], hb[0, 3])


def test_bert4rec_attends_both_ways_and_padding_is_inert():
    m = _model(False)
    a = torch.tensor([[3, 5, 7, 2, 0, 0]])
    b = a.clone()
    b[0, 3] = 9
    with torch.no_grad():
        assert not torch.allclose(m(a)[0, 0], m(b)[0, 0])  # a later item changes an earlier position
        c = torch.tensor([[3, 5, 7, 2, 0]])  # one padding slot fewer
        torch.testing.assert_close(m(a)[0, :4], m(c)[0, :4])
    with pytest.raises(ValueError, match="exceed max_len"):
        m(torch.ones(1, 7, dtype=torch.long))


def test_cloze_scores_only_masked_positions():
    tokens = torch.tensor([[8, 4, 10, 0], [5, 0, 0, 0]])
    inputs, labels = S.mask_for_cloze(tokens, mask_token=13, prob=0.5, generator=torch.Generator().manual_seed(1))
    hidden = inputs == 13
    assert hidden.any(1).all()  # every sequence hides at least one item
    assert not hidden[tokens == 0].any()  # padding is never hidden
    assert torch.equal(labels[hidden], tokens[hidden] - 1)  # labels are the hidden items' indexes
    assert (labels[~hidden] == -100).all()  # everything else is ignored by the loss
    assert torch.equal(inputs[~hidden], tokens[~hidden])


def test_item_table_padding_row_is_zero_and_text_gives_unseen_items_a_vector():
    text = np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32)
    m = _model(True, text_vectors=text, id_embeddings=False)
    table = m.item_table()
    assert table.shape == (14, 16) and torch.count_nonzero(table[0]) == 0
    assert torch.count_nonzero(table[1:13]).item() == 12 * 16
    with pytest.raises(ValueError, match="text_vectors has 3 rows"):
        S.SeqRec(12, text_vectors=text[:3])
    with pytest.raises(ValueError, match="needs ID embeddings"):
        S.SeqRec(12, id_embeddings=False)


def test_sasrec_memorises_50_sequences():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 30, 6) for _ in range(50)]
    tokens, _, _ = S.pad_right(seqs, 6)
    torch.manual_seed(0)
    m = S.SeqRec(30, dim=64, max_len=6, layers=2, heads=2, dropout=0.0, causal=True)
    log = S.train_seqrec(m, tokens, objective="ce", epochs=150, batch_size=50, lr=3e-3, seed=0, progress=False)
    assert log.losses[-1] < 0.05 * log.losses[0]
    scores, _ = S.score_next(m, [s[:-1] for s in seqs])
    hit = (scores.argmax(1) == np.array([s[-1] for s in seqs])).mean()
    assert hit >= 0.95  # it has memorised the last item of (nearly) every training sequence


def test_score_next_defined_answers():
    m = _model(True)
    scores, truncated = S.score_next(m, [np.array([], np.int64), np.arange(10) % 12, np.array([3])])
    assert np.isnan(scores[0]).all()  # no history: NaN, the caller falls back
    assert np.isfinite(scores[1:]).all() and truncated.tolist() == [False, True, False]
    unknown, _ = S.score_next(m, [np.array([12, 40]), np.array([3, 99])])  # the catalogue is items 0..11
    assert np.isnan(unknown[0]).all()  # only unknown items: nothing to read, the caller falls back
    np.testing.assert_allclose(unknown[1], scores[2], rtol=1e-6)  # the unknown item is dropped: = history [3]
    b = _model(False)
    s2, t2 = S.score_next(b, [np.arange(6) % 12])  # BERT4Rec keeps max_len - 1 items plus [MASK]
    assert np.isfinite(s2).all() and t2.tolist() == [True]
    with pytest.raises(ValueError, match="objective"):
        S.train_seqrec(m, np.zeros((1, 6), np.int64), objective="mse", epochs=1)
    with pytest.raises(ValueError, match="cloze"):
        S.train_seqrec(m, np.zeros((1, 6), np.int64), objective="cloze", epochs=1)


def test_ease_by_hand():
    X = sp.csr_array(np.array([[1, 1, 0], [0, 1, 1], [1, 0, 0]], dtype=float))
    lam = 1.0
    G = np.array([[2, 1, 0], [1, 2, 1], [0, 1, 1]], dtype=float) + lam * np.eye(3)  # X^T X + lam I
    P = np.linalg.inv(G)
    expected = -P / np.diag(P)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(S.ease(X, lam), expected)
    np.testing.assert_allclose(S.ease(X * 3, lam), expected)  # counts are binarised
    with pytest.raises(ValueError, match="lam"):
        S.ease(X, 0)


def test_sampled_metrics_by_hand():
    scores = np.array([[0.9, 0.1, 0.5, 0.2, 0.3, 0.4]])
    rel = sp.csr_array(np.array([[1, 0, 0, 0, 0, 0]]))
    out = S.sampled_metrics(scores, rel, n_neg=5, k=1, seed=0)  # all 5 others drawn: positive is first
    assert out["hr"][0] == 1.0 and out["ndcg"][0] == 1.0 and out["auc"][0] == 1.0
    rel2 = sp.csr_array(np.array([[0, 0, 1, 0, 0, 0]]))  # 0.5: beaten by 0.9 only
    out2 = S.sampled_metrics(scores, rel2, n_neg=5, k=2, seed=0)
    assert out2["hr"][0] == 1.0 and out2["ndcg"][0] == pytest.approx(1 / np.log2(3)) and out2["auc"][0] == 0.8
    tie = S.sampled_metrics(np.zeros((1, 6)), rel, n_neg=5, k=10, seed=0)  # constant scores: rank 2.5 of 0..5
    assert tie["auc"][0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="fewer than n_neg"):
        S.sampled_metrics(scores, rel, n_neg=6)


def test_user_states_are_the_hidden_states_score_next_reads():
    m = _model(True)
    seqs = [np.array([7, 3, 9]), np.array([], np.int64), np.array([12, 40]), np.arange(10) % 12]
    states, has, truncated = S.user_states(m, seqs)
    assert states.shape == (4, 16) and states.dtype == np.float32
    assert has.tolist() == [True, False, False, True] and truncated.tolist() == [False, False, False, True]
    assert not states[~has].any()  # no known history: a zero row, the caller falls back
    with torch.no_grad():  # by hand: tokens 8, 4, 10 (item + 1); SASRec reads position 2, the last item's
        np.testing.assert_array_equal(states[0], m(torch.tensor([[8, 4, 10, 0, 0, 0]]))[0, 2].numpy())
        items = S.item_vectors(m)
        np.testing.assert_array_equal(items, m.item_emb.weight[1:13].numpy())  # no padding row, no [MASK]
    scores, _ = S.score_next(m, seqs)
    np.testing.assert_allclose(scores[has], states[has] @ items.T, rtol=1e-5, atol=1e-6)
    b = _model(False)
    b_states, _, _ = S.user_states(b, seqs[:1])
    with torch.no_grad():  # BERT4Rec: [MASK] (token 13) right after the last item, read there
        np.testing.assert_array_equal(b_states[0], b(torch.tensor([[8, 4, 10, 13, 0, 0]]))[0, 3].numpy())


def test_seq_generator_searches_by_dot_product_not_cosine():
    torch.manual_seed(0)
    m = S.SeqRec(3, dim=2, max_len=4, layers=1, heads=1, dropout=0.0)
    with torch.no_grad():  # items 0, 1, 2 get vectors (1, 0), (3, 0), (0, 5) by hand
        m.item_emb.weight[1:4] = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    gen = S.SeqGenerator(m, {})
    # (1, 0) scores the items 1, 3, 0: item 1 first; by cosine items 0 and 1 would tie (both 1)
    # (0, 1) scores 0, 0, 5: item 2, then the tie of items 0 and 1 by lower index
    got = gen.search(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], np.float32), 3)
    np.testing.assert_array_equal(got, [[1, 0, 2], [2, 0, 1], [-1, -1, -1]])  # a zero vector is not searched
    np.testing.assert_array_equal(gen.search(np.array([[1.0, 0.0]], np.float32), 5), [[1, 0, 2, -1, -1]])


def test_seq_generator_lists_are_the_top_k_of_score_next():
    m = _model(True)
    seqs = {10: np.array([7, 3, 9]), 20: np.array([1, 1, 4, 0, 5, 2, 8]), 30: np.array([12, 40]), 40: np.array([5])}
    gen = S.SeqGenerator(m, seqs)
    users = np.array([40, 10, 99, 20, 30])  # 99: no sequence; 30: only items the model does not know
    got = gen.top_k(users, 4)
    scores, _ = S.score_next(m, [seqs.get(u, np.zeros(0, np.int64)) for u in users.tolist()])
    from ecrec.recall import top_k

    known = ~np.isnan(scores).any(1)
    np.testing.assert_array_equal(got[known], top_k(scores[known], 4))  # the oracle: numpy over every item
    assert (got[~known] == -1).all() and known.tolist() == [True, True, False, True, False]

    class Data:  # the recall-stage protocol reads data.users only
        pass

    data = Data()
    data.users = users
    np.testing.assert_array_equal(gen(data, 4), got)
    with pytest.raises(ValueError, match="k must be"):
        gen.top_k(users, 0)
