"""ecrec.ctr: feature groups, logistic pipeline, DNN trainer, evaluation by cold start."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecrec import ctr
from ecrec import features as F


@pytest.fixture(scope="module")
def frame():
    from ecrec.data import load_clean_online_retail

    clean, _ = load_clean_online_retail()
    data = F.build_ctr_dataset(clean, F.CtrDatasetConfig(max_users=80, seed=5))
    catalog = F.item_catalog(clean)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(catalog), 8)).astype(np.float32)
    return F.add_item_attributes(data, catalog, (pd.Index(catalog["item_id"]), vectors)), (pd.Index(catalog["item_id"]), vectors)


def _splits(frame):
    return [frame[frame["split"] == s].reset_index(drop=True) for s in F.SPLITS]


def test_group_columns():
    cols = ["user_id", "item_id", "i_share_all", "i_share_7d", "i_share_30d", "i_pop_7d", "country", "hour"]
    assert ctr.group_columns(["ids"], cols) == (["user_id", "item_id"], [])
    assert ctr.group_columns(["item"], cols) == ([], ["i_share_all", "i_share_30d", "i_share_7d"])
    assert ctr.group_columns(["user", "context"], cols) == (["country", "hour"], [])
    with pytest.raises(ValueError, match="unknown feature group"):
        ctr.group_columns(["colour"], cols)


def test_evaluate_matches_sklearn_and_segments():
    from sklearn.metrics import log_loss, roc_auc_score

    df = pd.DataFrame(
        {
            "label": [1, 0, 0, 1, 0, 1, 0, 0],
            "invoice_no": ["a", "a", "a", "b", "b", "c", "c", "c"],
            "user_id": [1, 1, 1, 1, 1, 2, 2, 3],
            "cold_user": [False, False, False, True, True, False, False, False],
            "cold_item": [False, True, False, False, False, True, True, False],
        }
    )
    p = np.array([0.9, 0.2, 0.4, 0.3, 0.6, 0.7, 0.1, 0.8])
    r = ctr.evaluate(df, p)
    assert r["auc"] == pytest.approx(roc_auc_score(df["label"], p))
    assert r["log_loss"] == pytest.approx(log_loss(df["label"], p))
    cold = (df["cold_user"] | df["cold_item"]).to_numpy()
    assert r["auc_cold"] == pytest.approx(roc_auc_score(df["label"][cold], p[cold]))
    assert r["n_cold"] == 5 and r["n_warm"] == 3
    assert r["auc_cold_user"] == 0.0  # hand: the one cold-user positive (0.3) is below its negative (0.6)
    # invoices a: 1.0, b: 0.0, c: 0.5; weighted by rows 3, 2, 3
    assert r["gauc_invoice"] == pytest.approx((3 * 1.0 + 2 * 0.0 + 3 * 0.5) / 8)
    assert r["gauc_skipped_invoices"] == 0
    # users 1 (rows 0-4): positives .9, .3 vs negatives .2, .4, .6 -> 4 of 6 pairs; user 2: 1.0 (7 vs .1);
    # user 3 has one label only: skipped
    assert r["gauc"] == pytest.approx((5 * 4 / 6 + 2 * 1.0) / 7) and r["gauc_skipped_users"] == 1
    with pytest.raises(ValueError, match="predictions"):
        ctr.evaluate(df, p[:-1])
    for col in ("cold_user", "cold_item", "user_id"):
        with pytest.raises(ValueError, match=rf"lacks columns \['{col}'\]"):
            ctr.evaluate(df.drop(columns=col), p)


def test_logistic_learns_and_handles_unseen(frame):
    data, _ = frame
    train, _, test = _splits(data)
    model = ctr.make_logistic(list(ctr.GROUPS), data.columns, max_iter=50).fit(train, train["label"])
    p = model.predict_proba(test)[:, 1]
    r = ctr.evaluate(test, p)
    assert 0.75 < r["auc"] < 0.99 and r["log_loss"] < 0.6
    odd = test.head(5).assign(user_id=-1, item_id="NOPE", country="Atlantis", category="???", description="zzz")
    assert np.isfinite(model.predict_proba(odd)).all()
    with pytest.raises(ValueError, match="no column"):
        ctr.make_logistic(["text"], ["user_id"])


def test_dnn_trains_is_deterministic_and_takes_extra_numeric(frame):
    data, text = frame
    train, valid, test = _splits(data)
    cats, nums = ctr.group_columns(list(ctr.GROUPS), data.columns)
    cfg = ctr.DnnConfig(max_epochs=2, batch_size=512, seed=1)
    a = ctr.train_dnn(train, valid, categorical=cats, numeric=nums, text=text, config=cfg)
    b = ctr.train_dnn(train, valid, categorical=cats, numeric=nums, text=text, config=cfg)
    pa, pb = a.predict_proba(test), b.predict_proba(test)
    np.testing.assert_array_equal(pa, pb)
    assert a.history == b.history and 1 <= a.best_epoch <= 2
    assert 0.7 < ctr.evaluate(test, pa)["auc"] < 0.99
    # unseen ids and empty histories go to the unknown bucket, never an error
    odd = test.head(4).assign(user_id=-7, item_id="NOPE", country="Atlantis")
    assert np.isfinite(a.predict_proba(odd)).all()
    # chapter 04's hook: one extra numeric column that carries the label's signal helps
    rng = np.random.default_rng(0)

    def with_score(df):
        return df.assign(bert_score=df["label"] * 2.0 - 1.0 + rng.normal(0, 1.0, len(df)))

    c = ctr.train_dnn(with_score(train), with_score(valid), categorical=["user_id", "item_id"], numeric=[],
                      extra_numeric=["bert_score"], sequence=False, config=cfg)
    d = ctr.train_dnn(train, valid, categorical=["user_id", "item_id"], numeric=[], sequence=False, config=cfg)
    t = with_score(test)
    assert ctr.evaluate(t, c.predict_proba(t))["auc"] > ctr.evaluate(test, d.predict_proba(test))["auc"] + 0.02
    assert c.preprocessor.n_numeric == 1


def test_dnn_input_checks(frame):
    data, _ = frame
    train, valid, _ = _splits(data)
    with pytest.raises(ValueError, match="both labels"):
        ctr.train_dnn(train[train["label"] == 1], valid, categorical=["user_id", "item_id"], numeric=[])
    with pytest.raises(ValueError, match="item_id"):
        ctr.CtrPreprocessor(["user_id"], [], sequence=True)
    with pytest.raises(ValueError, match="not in the frame"):
        ctr.CtrPreprocessor(["user_id", "item_id"], ["nope"]).fit(train)
    with pytest.raises(ValueError):
        ctr.DnnConfig(dropout=1.5)
    with pytest.raises(ValueError, match="monitor"):
        ctr.DnnConfig(monitor="accuracy")


def test_dnn_monitor_log_loss_keeps_the_lowest_validation_loss(frame):
    data, _ = frame
    train, valid, _ = _splits(data)
    cfg = ctr.DnnConfig(max_epochs=3, patience=3, batch_size=512, seed=2, monitor="log_loss")
    m = ctr.train_dnn(train, valid, categorical=["user_id", "item_id"], numeric=["ui_n_before"], sequence=False, config=cfg)
    losses = m.history["valid_loss"]
    assert len(losses) == 3 and m.best_epoch == int(np.argmin(losses)) + 1
    p = m.predict_proba(valid)
    from ecrec.metrics import log_loss

    assert log_loss(valid["label"].to_numpy(), p) == pytest.approx(min(losses))


def test_logistic_is_seeded(frame):
    data, _ = frame
    model = ctr.make_logistic(["ids"], data.columns, seed=7)
    assert model.named_steps["model"].random_state == 7


# --- non-finite logits (issue 10, item 3): the package's loss rule in torch ----


def test_bce_with_logits_matches_torch_and_takes_limits_for_inf():
    import torch

    z = torch.tensor([0.3, -2.0, 40.0, -40.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
    assert float(ctr.bce_with_logits(z, y)) == pytest.approx(float(ref), rel=1e-12)
    inf = torch.tensor([float("inf"), float("-inf")], dtype=torch.float64)
    assert float(ctr.bce_with_logits(inf, torch.tensor([1.0, 0.0], dtype=torch.float64))) == 0.0
    assert float(ctr.bce_with_logits(inf[:1], torch.tensor([0.0], dtype=torch.float64))) == float("inf")
    with pytest.raises(ValueError, match=r"NaN at rows \[1\]"):
        ctr.bce_with_logits(torch.tensor([0.0, float("nan")]), torch.tensor([1.0, 0.0]))


def test_infinite_training_loss_names_the_rows():
    import torch

    logits = torch.tensor([0.0, float("inf"), 1.0])
    with pytest.raises(FloatingPointError, match=r"rows \[1\]"):
        ctr._check_finite_loss(ctr.bce_with_logits(logits, torch.tensor([1.0, 0.0, 1.0])), logits, "test")


def test_ctr_net_is_a_top_level_module_with_documented_shapes():
    import torch

    cfg = ctr.DnnConfig(emb_dim=4, hidden=(8,))
    torch.manual_seed(0)
    net = ctr.CtrNet([5, 7, 3], n_numeric=2, item_field=1, text_table=np.zeros((4, 6), np.float32), config=cfg)
    assert isinstance(net, torch.nn.Module) and net.embs[1].num_embeddings == 8 and net.embs[1].padding_idx == 7
    n = 6
    cat = torch.zeros(n, 3, dtype=torch.int64)
    out = net(cat, torch.zeros(n, 2), torch.full((n, 10), 7), torch.zeros(n, dtype=torch.int64))
    assert out.shape == (n,) and out.dtype == torch.float32
    bare = ctr.CtrNet([5, 7], n_numeric=0, item_field=None, text_table=None, config=cfg)
    assert bare.text_proj is None and bare(torch.zeros(n, 2, dtype=torch.int64), torch.zeros(n, 0)).shape == (n,)
