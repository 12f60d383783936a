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
    assert r["gauc"] == pytest.approx((3 * 1.0 + 2 * 0.0 + 3 * 0.5) / 8)
    with pytest.raises(ValueError, match="predictions"):
        ctr.evaluate(df, p[:-1])


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
