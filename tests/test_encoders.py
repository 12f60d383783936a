"""ecrec.encoders: the scikit-learn transformers of the CTR models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from ecrec import encoders as E


def test_id_encoder_unknown_bucket():
    enc = E.IdEncoder(min_count=2).fit(pd.Series(["b", "a", "b", "c", "a", None]))
    assert list(enc.vocabulary_) == ["a", "b"] and enc.n_indices == 3
    assert enc.transform(["a", "b", "c", "zzz", None]).tolist() == [1, 2, 0, 0, 0]
    with pytest.raises(RuntimeError, match="not fitted"):
        E.IdEncoder().transform(["a"])
    with pytest.raises(ValueError):
        E.IdEncoder(min_count=0).fit(["a"])


def test_numeric_encoder_matches_hand_computation():
    train = pd.DataFrame({"x": [0.0, np.e - 1, np.nan, np.e**2 - 1]})
    out = E.numeric_encoder().fit(train).transform(pd.DataFrame({"x": [np.nan, -5.0, np.e**3 - 1]}))
    logged = np.array([0.0, 1.0, 1.0, 2.0])  # NaN -> median of (0, 1, 2) = 1
    mu, sd = logged.mean(), logged.std()
    ind_mu, ind_sd = 0.25, np.sqrt(0.25 * 0.75)
    np.testing.assert_allclose(out[:, 0], [(1 - mu) / sd, (0 - mu) / sd, (3 - mu) / sd])
    np.testing.assert_allclose(out[:, 1], [(1 - ind_mu) / ind_sd, -ind_mu / ind_sd, -ind_mu / ind_sd])


def test_bucket_encoder_never_raises_and_one_hot():
    train = pd.DataFrame({"x": np.r_[np.arange(100.0), [np.nan] * 10]})
    enc = E.bucket_encoder(4).fit(train)
    out = enc.transform(pd.DataFrame({"x": [1e9, -3.0, np.nan, 50.0]})).toarray()
    assert (out.sum(1) == 1).all()
    assert out[0].argmax() == out.shape[1] - 1  # beyond the train range: last bucket


def test_hashed_cross_and_tfidf():
    x = pd.DataFrame({"a": ["UK", "UK", "FR"], "b": ["MUG", "BAG", "MUG"]})
    h = E.HashedCross(64).fit_transform(x)
    assert h.shape == (3, 64) and (h.sum(1) == 1).all()
    again = E.HashedCross(64).transform(pd.DataFrame({"a": ["UK"], "b": ["MUG"]}))
    assert (again.toarray() == h[0].toarray()).all()
    tf = E.ItemTfidf(min_df=1).fit(pd.Series(["RED MUG", "BLUE MUG", "RED MUG"]))
    m = tf.transform(pd.Series(["RED MUG", "GREEN THING"])).toarray()
    assert set(tf.get_feature_names_out()) == {"tfidf_red", "tfidf_mug", "tfidf_blue"}
    assert np.linalg.norm(m[0]) == pytest.approx(1.0) and (m[1] == 0).all()


@pytest.mark.parametrize(
    "enc, params",
    [(E.IdEncoder(min_count=3), {"min_count": 3}), (E.HashedCross(32), {"n_features": 32}),
     (E.ItemTfidf(min_df=1, max_features=10), {"min_df": 1, "max_features": 10})],
)
def test_encoders_get_params_set_params_and_clone_from_scikit_learn(enc, params):
    assert enc.get_params() == params
    copy = clone(enc)
    assert copy is not enc and copy.get_params() == params
    key = next(iter(params))
    assert enc.set_params(**{key: 5}) is enc and enc.get_params()[key] == 5
    assert "get_params" not in type(enc).__dict__ and "fit_transform" not in type(enc).__dict__
