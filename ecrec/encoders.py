"""Encoders for the CTR models of :mod:`ecrec.ctr`, fitted on the train split only.

scikit-learn transformers (``BaseEstimator`` gives ``get_params``/``set_params``
and ``clone``, ``TransformerMixin`` gives ``fit_transform``), usable inside a
``ColumnTransformer``:

* :class:`IdEncoder`: categorical values -> int64 indices, 0 the unknown
  bucket (for ``torch.nn.Embedding``).
* :func:`numeric_encoder`: log1p -> median imputation with missing indicators
  -> standardisation.
* :func:`bucket_encoder`: log1p -> quantile buckets, one-hot (lets a linear
  model bend).
* :class:`HashedCross`: the hashed cross of two categorical columns.
* :class:`ItemTfidf`: TF-IDF of item descriptions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin


class IdEncoder(TransformerMixin, BaseEstimator):
    """Categorical values -> int64 indices with an explicit unknown bucket 0.

    ``fit`` keeps the values seen at least ``min_count`` times, sorted, as
    indices ``1..n``; ``transform`` maps every other value (unseen, rare,
    missing) to 0 and never raises. Made for ``torch.nn.Embedding(n + 1, d)``.
    A scikit-learn transformer (``get_params``, ``fit_transform`` and
    ``clone`` from its base classes); accepts a Series, a 1-D array or a
    one-column frame.
    """

    def __init__(self, min_count: int = 1):
        self.min_count = min_count

    @staticmethod
    def _values(x) -> np.ndarray:
        if isinstance(x, pd.DataFrame):
            if x.shape[1] != 1:
                raise ValueError(f"IdEncoder encodes one column, got {x.shape[1]}")
            x = x.iloc[:, 0]
        arr = np.asarray(x, dtype=object)
        if arr.ndim != 1:
            raise ValueError(f"IdEncoder expects 1-D input, got shape {arr.shape}")
        return arr

    def fit(self, x, y=None) -> IdEncoder:
        """Learn the vocabulary from ``x`` (the train split). Raises ValueError for empty input."""
        if not isinstance(self.min_count, (int, np.integer)) or self.min_count < 1:
            raise ValueError(f"min_count must be an integer >= 1, got {self.min_count!r}")
        values = pd.Series(self._values(x)).dropna()
        if values.empty:
            raise ValueError("IdEncoder.fit: no values to learn a vocabulary from")
        counts = values.value_counts()
        kept = counts.index[counts >= self.min_count]
        self.vocabulary_ = pd.Index(sorted(kept, key=str))
        return self

    @property
    def n_indices(self) -> int:
        """Size of the embedding table: vocabulary + 1 (the unknown bucket 0)."""
        return len(self.vocabulary_) + 1

    def transform(self, x) -> np.ndarray:
        """(n,) int64 indices in ``0..len(vocabulary_)``; 0 = unknown."""
        if not hasattr(self, "vocabulary_"):
            raise RuntimeError("IdEncoder is not fitted; call fit on the train split first")
        return (self.vocabulary_.get_indexer(self._values(x)) + 1).astype(np.int64)


def _log1p_nonneg(x):
    return np.log1p(np.clip(np.asarray(x, dtype=np.float64), 0, None))


def numeric_encoder():
    """log1p (values clipped at 0) -> median imputation with missing indicators -> standardisation.

    A scikit-learn Pipeline; fit it on the train split. NaN ("no history")
    becomes the train median plus a 0/1 indicator column, so nothing is lost.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    return Pipeline(
        [
            ("log1p", FunctionTransformer(_log1p_nonneg, feature_names_out="one-to-one")),
            ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
            ("scale", StandardScaler()),
        ]
    )


def bucket_encoder(n_bins: int = 8):
    """log1p -> NaN as -1 (its own bucket) -> quantile buckets, one-hot: lets a linear model bend.

    A scikit-learn Pipeline (KBinsDiscretizer); bins of zero width are
    merged (scikit-learn warns about them). Values outside the train range
    fall in the first or last bucket.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, KBinsDiscretizer

    return Pipeline(
        [
            ("log1p", FunctionTransformer(_log1p_nonneg, feature_names_out="one-to-one")),
            ("missing", SimpleImputer(strategy="constant", fill_value=-1.0, keep_empty_features=True)),
            (
                "bins",
                KBinsDiscretizer(
                    n_bins=n_bins, encode="onehot", strategy="quantile",
                    quantile_method="averaged_inverted_cdf", subsample=200_000, random_state=0,
                ),
            ),
        ]
    )


class HashedCross(TransformerMixin, BaseEstimator):
    """Hash the cross of two categorical columns into ``n_features`` one-hot buckets (sparse).

    For vocabularies too large to enumerate (user x category has millions of
    possible pairs). Stateless: ``fit`` learns nothing, so unseen pairs simply
    hash somewhere and never raise. Input: a two-column frame.

    Returns (transform): scipy CSR (n, n_features) of 0/1 float64.
    """

    def __init__(self, n_features: int = 2**18):
        self.n_features = n_features

    def fit(self, x, y=None) -> HashedCross:
        if not isinstance(x, pd.DataFrame) or x.shape[1] != 2:
            raise ValueError("HashedCross expects a frame with exactly two columns")
        return self

    def transform(self, x):
        import scipy.sparse as sp

        self.fit(x)
        key = x.iloc[:, 0].astype(str).to_numpy(dtype=object) + "\x1f" + x.iloc[:, 1].astype(str).to_numpy(dtype=object)
        col = (pd.util.hash_array(key, categorize=True) % np.uint64(self.n_features)).astype(np.int64)
        n = len(x)
        return sp.csr_matrix((np.ones(n), (np.arange(n), col)), shape=(n, self.n_features))

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.array([f"cross_{i}" for i in range(self.n_features)], dtype=object)


class ItemTfidf(TransformerMixin, BaseEstimator):
    """TF-IDF of item descriptions, fitted once on the distinct descriptions of the train split.

    Input: a one-column frame (or Series) of descriptions, one per example;
    each distinct description is vectorised once. Words never seen in train
    are ignored (scikit-learn's ``TfidfVectorizer``), so it never raises.

    Returns (transform): scipy CSR (n, vocabulary size), rows L2-normalised.
    """

    def __init__(self, min_df: int = 2, max_features: int | None = 5000):
        self.min_df = min_df
        self.max_features = max_features

    @staticmethod
    def _text(x) -> pd.Series:
        if isinstance(x, pd.DataFrame):
            x = x.iloc[:, 0]
        return pd.Series(np.asarray(x, dtype=object)).fillna("").astype(str)

    def fit(self, x, y=None) -> ItemTfidf:
        from sklearn.feature_extraction.text import TfidfVectorizer

        unique = np.sort(self._text(x).unique())
        self.vectorizer_ = TfidfVectorizer(min_df=self.min_df, max_features=self.max_features)
        self.vectorizer_.fit(unique)
        return self

    def transform(self, x):
        if not hasattr(self, "vectorizer_"):
            raise RuntimeError("ItemTfidf is not fitted")
        codes, unique = pd.factorize(self._text(x))
        return self.vectorizer_.transform(unique)[codes]

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        return np.array([f"tfidf_{w}" for w in self.vectorizer_.get_feature_names_out()], dtype=object)
