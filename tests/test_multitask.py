"""ecrec.multitask: return labels on a hand-made log, model shapes, ESMM's product, the losses, errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ecrec import multitask as MT

DAY0 = pd.Timestamp("2011-01-01 10:00")


def day(d: float) -> pd.Timestamp:
    return DAY0 + pd.Timedelta(days=d)


# --- labels -------------------------------------------------------------------


def test_cancellation_lines_keeps_c_invoices_with_a_customer():
    raw = pd.DataFrame({
        "InvoiceNo": ["1", "C2", "C3", "4", "C5"],
        "StockCode": ["A", "A", "B", "B", "C"],
        "Quantity": [5, -2, -1, -3, -4],
        "InvoiceDate": [day(0), day(3), day(1), day(2), day(4)],
        "CustomerID": pd.array([1, 1, pd.NA, pd.NA, 2], dtype="Int64"),
    })
    out = MT.cancellation_lines(raw)
    # a sale, a "C" line without customer and a stock fix (negative, no "C") are left out
    assert out["invoice_no"].tolist() == ["C2", "C5"]
    assert out["user_id"].tolist() == [1, 2] and out["item_id"].tolist() == ["A", "C"]
    assert out["quantity"].tolist() == [-2, -4]
    with pytest.raises(ValueError, match="CustomerID"):
        MT.cancellation_lines(raw.drop(columns="CustomerID"))


@pytest.fixture
def tiny_log():
    events = pd.DataFrame([  # purchases: user, item, time
        (1, "A", day(0)), (1, "A", day(10)), (1, "B", day(0)), (2, "A", day(0)), (1, "C", day(20)),
        (3, "D", day(5)), (5, "E", day(16)),
    ], columns=["user_id", "item_id", "ts"])
    cancellations = pd.DataFrame([
        (1, "A", day(12)),  # credited to user 1's latest earlier A (day 10), 2 days later: returned
        (1, "B", day(14)),  # exactly 14 days after the B purchase: the window's edge counts
        (2, "B", day(3)),  # other code: user 2 never bought B
        (4, "A", day(1)),  # other customer: user 4 bought nothing
        (1, "C", day(19)),  # before the purchase of C (day 20): matches nothing
        (3, "D", day(19) + pd.Timedelta(minutes=1)),  # 14 days and a minute: outside the window
    ], columns=["user_id", "item_id", "cancel_ts"])
    examples = pd.concat([events.assign(label=1), pd.DataFrame(
        [(2, "B", day(0), 0), (3, "A", day(5), 0)], columns=["user_id", "item_id", "ts", "label"])],
        ignore_index=True)
    return examples, events, cancellations


def test_return_labels_by_hand(tiny_log):
    examples, events, cancellations = tiny_log
    out = MT.return_labels(examples, events, cancellations, window_days=14, observed_until=day(30))
    # rows: u1 A d0, u1 A d10, u1 B d0, u2 A d0, u1 C d20, u3 D d5, u5 E d16, negatives u2 B d0, u3 A d5
    assert out["returned"].tolist() == [0, 1, 1, 0, 0, 0, 0, 0, 0]
    # censoring: observed when ts + 14 days <= day 30 (day 16 is the edge, day 20 is censored)
    assert out["return_observed"].tolist() == [True, True, True, True, False, True, True, True, True]
    assert out["returned"].dtype == np.int8 and out.index.equals(examples.index)


def test_return_labels_window_and_negatives(tiny_log):
    examples, events, cancellations = tiny_log
    # a 13-day window drops the edge case (B) but keeps the 2-day return of A
    short = MT.return_labels(examples, events, cancellations, window_days=13, observed_until=day(30))
    assert short["returned"].tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0]
    # a negative is never returned, even for a pair that was bought and returned at that moment
    neg = examples.assign(label=0)
    assert MT.return_labels(neg, events, cancellations, observed_until=day(30))["returned"].sum() == 0
    # per-row horizons: only the first row gets an early end
    until = np.array([day(5)] + [day(30)] * (len(examples) - 1), dtype="datetime64[us]")
    assert not MT.return_labels(examples, events, cancellations, observed_until=until)["return_observed"].iloc[0]


def test_return_labels_never_hold_the_future(tiny_log):
    """A return booked after observed_until is not in ``returned`` (issue 22.7), by hand."""
    examples, events, cancellations = tiny_log
    # cut at day 11: u1 A (bought d10) comes back on d12 and u1 B (d0) on d14, both after the cut
    out = MT.return_labels(examples, events, cancellations, window_days=14, observed_until=day(11))
    assert out["returned"].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert out["return_observed"].tolist() == [False] * 9  # every window ends after day 11
    # cut at day 13: A's return (d12) is visible although its window (to d24) is still open; B's (d14) is not
    out = MT.return_labels(examples, events, cancellations, window_days=14, observed_until=day(13))
    assert out["returned"].tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0]
    # per-row cuts: each row sees only its own past (row 1 cut at d11, row 2 at d14 = the edge, included)
    until = np.array([day(30), day(11), day(14)] + [day(30)] * 6, dtype="datetime64[us]")
    out = MT.return_labels(examples, events, cancellations, window_days=14, observed_until=until)
    assert out["returned"].tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert out["return_observed"].tolist() == [True, False, True, True, False, True, True, True, True]
    # a purchase returned twice counts from its first cancellation
    twice = pd.concat([cancellations, pd.DataFrame([(1, "A", day(20))], columns=cancellations.columns)])
    out = MT.return_labels(examples, events, twice, window_days=14, observed_until=day(13))
    assert out["returned"].tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0]


def test_return_labels_errors(tiny_log):
    examples, events, cancellations = tiny_log
    with pytest.raises(ValueError, match=r"examples lacks \['label'\]"):
        MT.return_labels(examples.drop(columns="label"), events, cancellations, observed_until=day(30))
    with pytest.raises(ValueError, match="window_days"):
        MT.return_labels(examples, events, cancellations, window_days=0, observed_until=day(30))
    with pytest.raises(ValueError, match="observed_until has 2 values"):
        MT.return_labels(examples, events, cancellations, observed_until=np.array([day(1), day(2)]))


# --- models -------------------------------------------------------------------

CARD, N_NUM, HIST = [5, 7, 3], 4, 6  # user, item, country; item at position 1


def _batch(n: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, c, (n,), generator=g) for c in CARD], dim=1)
    num = torch.randn(n, N_NUM, generator=g)
    hist = torch.randint(0, CARD[1] + 1, (n, HIST), generator=g)  # CARD[1] is the padding index
    return cat, num, hist


def test_shapes_and_single_task():
    cfg = MT.MultitaskConfig(emb_dim=4, hidden=(8,), tower=(4,))
    cat, num, hist = _batch()
    assert MT.SharedBottom(CARD, N_NUM, 1, ("buy", "ret"), cfg)(cat, num, hist).shape == (9, 2)
    assert MT.SharedBottom(CARD, N_NUM, 1, ("buy",), cfg)(cat, num, hist).shape == (9, 1)
    assert MT.MMoE(CARD, N_NUM, None, ("a", "b", "c"), cfg)(cat, num).shape == (9, 3)
    assert MT.ESMM(CARD, N_NUM, 1, cfg)(cat, num, hist).shape == (9, 2)
    inputs = MT.CtrInputs(CARD, N_NUM, 1, 4)
    assert inputs(cat, num, hist).shape == (9, inputs.width) and inputs.width == 3 * 4 + N_NUM + 2 * 4


def test_mmoe_gates_sum_to_one():
    cfg = MT.MultitaskConfig(emb_dim=4, n_experts=3, expert_hidden=(8,), tower=(4,))
    net = MT.MMoE(CARD, N_NUM, 1, ("buy", "ret"), cfg)
    gates = net.gates(*_batch())
    assert gates.shape == (9, 2, 3)
    torch.testing.assert_close(gates.sum(-1), torch.ones(9, 2))
    assert (gates > 0).all()
    one = MT.MMoE(CARD, N_NUM, 1, ("buy", "ret"), MT.MultitaskConfig(emb_dim=4, n_experts=1))
    torch.testing.assert_close(one.gates(*_batch()), torch.ones(9, 2, 1))


def test_esmm_joint_is_the_product_of_the_towers():
    torch.manual_seed(0)
    net = MT.ESMM(CARD, N_NUM, 1, MT.MultitaskConfig(emb_dim=4, hidden=(8,), tower=(4,)))
    net.eval()
    with torch.no_grad():
        logits = net(*_batch()).double().numpy()
    p = net.probabilities(logits)
    sig = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(p["buy"], sig[:, 0])
    np.testing.assert_allclose(p["return_given_buy"], sig[:, 1])
    np.testing.assert_allclose(p["buy_and_return"], sig[:, 0] * sig[:, 1])


def test_esmm_loss_by_hand():
    net = MT.ESMM(CARD, N_NUM, 1, MT.MultitaskConfig(emb_dim=4))
    logits = torch.tensor([[0.5, -1.0], [2.0, 3.0], [-3.0, 0.2], [1.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    mask = torch.tensor([[True, True], [True, True], [True, True], [True, False]])
    got = net.task_losses(logits, y, mask).numpy()
    s = 1 / (1 + np.exp(-logits.double().numpy()))
    buy = -np.mean([math.log(s[0, 0]), math.log(s[1, 0]), math.log(1 - s[2, 0]), math.log(s[3, 0])])
    joint = s[:, 0] * s[:, 1]
    both = -np.mean([math.log(1 - joint[0]), math.log(joint[1]), math.log(1 - joint[2])])  # row 3 masked
    np.testing.assert_allclose(got, [buy, both], rtol=1e-5)
    # a joint probability near 1 stays finite (log(1 - p) through log1mexp)
    far = net.task_losses(torch.tensor([[30.0, 30.0]]), torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=bool))
    assert torch.isfinite(far).all() and float(far[1]) > 25


def test_masked_bce_matches_torch():
    logits = torch.tensor([0.3, -2.0, 4.0, 1.0])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    mask = torch.tensor([True, False, True, True])
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits[mask], y[mask])
    torch.testing.assert_close(MT.masked_bce(logits, y, mask), want)
    assert float(MT.masked_bce(logits, y, torch.zeros(4, dtype=bool))) == 0.0


def test_uncertainty_weighting_formula():
    w = MT.UncertaintyWeighting(2)
    with torch.no_grad():
        w.log_var.copy_(torch.tensor([0.5, -1.0]))
    losses = torch.tensor([0.4, 0.1])
    hand = math.exp(-0.5) * 0.4 + 0.5 * 0.5 + math.exp(1.0) * 0.1 + 0.5 * -1.0
    assert w(losses).item() == pytest.approx(hand, rel=1e-6)
    np.testing.assert_allclose(w.weights, [math.exp(-0.5), math.exp(1.0)], rtol=1e-6)
    # the gradient in s_k vanishes at exp(-s_k) = 1 / (2 L_k)
    with torch.no_grad():
        w.log_var.copy_(torch.log(2 * losses))
    w(losses).backward()
    torch.testing.assert_close(w.log_var.grad, torch.zeros(2), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="3 losses for 2 tasks|losses for 2 tasks"):
        w(torch.ones(3))


def test_config_errors():
    with pytest.raises(ValueError, match="weighting"):
        MT.MultitaskConfig(weighting="gradnorm")
    with pytest.raises(ValueError, match="n_experts"):
        MT.MultitaskConfig(n_experts=0)
    with pytest.raises(ValueError, match="torch_threads"):
        MT.MultitaskConfig(torch_threads=0)


# --- training and its refusals --------------------------------------------------


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    user = rng.integers(0, 20, size=n)
    label = (x + 0.3 * rng.normal(size=n) > 0).astype(int)
    returned = np.where(label == 1, (user < 4).astype(int), 0)  # four customers return everything
    return pd.DataFrame({"user_id": user, "x": np.abs(x), "x_sign": (x > 0).astype(float),
                         "label": label, "returned": returned, "bought": label == 1, "all_rows": True})


def test_check_task_labels_errors():
    df = _frame(200, 0)
    with pytest.raises(ValueError, match=r"2 task head\(s\) but 1 label column"):
        MT.check_task_labels(df, ["label"], [None], 2)
    with pytest.raises(ValueError, match="'returns' is not in the frame"):
        MT.check_task_labels(df, ["label", "returns"], [None, "bought"], 2)
    with pytest.raises(ValueError, match="'label' is constant"):
        MT.check_task_labels(df.assign(label=0), ["label"], [None], 1)
    # returned is constant (0) on the non-purchases: the mask decides
    with pytest.raises(ValueError, match=r"'returned' is constant \(0\).*mask 'not_bought'"):
        MT.check_task_labels(df.assign(not_bought=~df["bought"]), ["returned"], ["not_bought"], 1)
    with pytest.raises(ValueError, match="0/1"):
        MT.check_task_labels(df.assign(label=df["label"] * 2), ["label"], [None], 1)
    MT.check_task_labels(df, ["label", "returned"], [None, "bought"], 2)  # fine


def test_train_multitask_learns_and_refuses():
    train, valid = _frame(3000, 1), _frame(1000, 2)
    cfg = MT.MultitaskConfig(emb_dim=4, hidden=(16,), tower=(8,), batch_size=256, max_epochs=6, lr=1e-2,
                             id_dropout=0.0, weighting="uncertainty")
    model = MT.train_multitask(
        lambda c, n, i: MT.SharedBottom(c, n, i, ("buy", "return_given_buy"), cfg), train, valid,
        categorical=["user_id"], numeric=["x", "x_sign"], label_columns=["label", "returned"],
        mask_columns=[None, "bought"], config=cfg)
    p = model.predict(valid)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(valid["label"], p["buy"]) > 0.95
    bought = valid["bought"].to_numpy()
    assert roc_auc_score(valid.loc[bought, "returned"], p["return_given_buy"][bought]) > 0.95
    h = model.history
    assert len(h["weights"]) == len(h["valid_loss"]) >= model.best_epoch >= 1
    assert h["weights"][-1] != [1.0, 1.0]  # the log-variances moved
    with pytest.raises(ValueError, match=r"\(valid split\).*'returned' is constant"):
        MT.train_multitask(lambda c, n, i: MT.SharedBottom(c, n, i, ("buy", "ret"), cfg), train,
                           valid.assign(returned=0), categorical=["user_id"], numeric=["x"],
                           label_columns=["label", "returned"], mask_columns=[None, "bought"], config=cfg)
    with pytest.raises(ValueError, match=r"3 task head\(s\) but 2 label"):
        MT.train_multitask(lambda c, n, i: MT.SharedBottom(c, n, i, ("a", "b", "c"), cfg), train, valid,
                           categorical=["user_id"], numeric=["x"], label_columns=["label", "returned"],
                           mask_columns=[None, "bought"], config=cfg)


class _ConstantLogits(MT._MultitaskNet):
    """Logits that do not depend on the input: buy 0, return 1 (kept by lr = 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks = ("buy", "return_given_buy")
        self.bias = torch.nn.Parameter(torch.tensor([0.0, 1.0]))

    def forward(self, cat, num, hist=None):
        return self.bias.expand(len(cat), 2)


def test_train_loss_is_the_mean_over_each_tasks_rows():
    """The logged train loss of a masked task weights batches by its rows in them (issue 22.9)."""
    # 40 rows shuffled into batches of 30 and 10; the return task holds 10 of them (rows 0-9, 3 returned).
    # Weighting each batch's mean by the batch size (30, 10) instead of the task's rows in it (k, 10 - k)
    # cannot give the task's mean: 3/10 returns in both batches would need k = 10 and an empty second batch.
    n = 40
    df = pd.DataFrame({"user_id": np.arange(n) % 5, "x": np.linspace(0, 1, n),
                       "label": (np.arange(n) % 2 == 0).astype(int), "returned": 0, "bought": False})
    df.loc[:9, "bought"] = True
    df.loc[[0, 4, 8], "returned"] = 1
    df.loc[[1, 3, 5, 7, 9], "label"] = 1  # returned rows must be purchases; here rows 0-9 all are
    cfg = MT.MultitaskConfig(emb_dim=2, hidden=(4,), tower=(2,), batch_size=30, max_epochs=1, lr=0.0,
                             dropout=0.0, id_dropout=0.0)
    threads = torch.get_num_threads()
    seen = []

    def make(c, k, i):
        seen.append(torch.get_num_threads())
        return _ConstantLogits()

    model = MT.train_multitask(make, df, df, categorical=["user_id"], numeric=["x"],
                               label_columns=["label", "returned"], mask_columns=[None, "bought"], config=cfg)
    assert seen == [1] and torch.get_num_threads() == threads  # trained on one thread, the setting restored
    buy, ret = model.history["train_loss"][0]
    sp = lambda z: math.log1p(math.exp(z))  # noqa: E731 - softplus
    n_pos = int(df["label"].sum())  # 25 purchases among the 40 rows, logit 0: log 2 each
    assert buy == pytest.approx((n_pos * sp(-0.0) + (n - n_pos) * sp(0.0)) / n, rel=1e-6)
    # by hand: 3 returns at logit 1 cost softplus(-1), 7 non-returns softplus(1), over the 10 rows
    assert ret == pytest.approx((3 * sp(-1.0) + 7 * sp(1.0)) / 10, rel=1e-6)
    from sklearn.metrics import log_loss

    rows = df["bought"].to_numpy()
    oracle = log_loss(df.loc[rows, "returned"], np.full(rows.sum(), 1 / (1 + math.exp(-1.0))), labels=[0, 1])
    assert ret == pytest.approx(oracle, rel=1e-6)


# --- evaluation -----------------------------------------------------------------
