"""ID-based CTR models on chapter 03's dataset: logistic regression and an embedding + MLP DNN.

* :data:`FEATURE_GROUPS` and :func:`group_columns`: which columns make up the
  ``ids``, ``user``, ``item``, ``user_item``, ``context``, ``sequence`` and
  ``text`` groups (for the ablation table).
* :func:`make_logistic`: a scikit-learn Pipeline (one-hot with an
  infrequent/unknown bucket, log1p + standardisation + quantile buckets,
  hashed user x category cross, TF-IDF) ending in ``LogisticRegression``.
* :func:`train_dnn` -> :class:`TrainedDnn`: embeddings for IDs and
  categorical fields (index 0 = unknown), the mean-pooled history sharing
  the item table, frozen text vectors through a linear layer, numerics, an
  MLP; Adam, early stopping on validation AUC or log loss (``DnnConfig.monitor``). ``extra_numeric=["bert_score"]``
  adds any extra numeric column (standardised, not log-transformed): that is
  how chapter 04 feeds a BERT score into this model.
* :func:`evaluate`: AUC, log loss, GAUC (per user and per invoice), overall
  and for cold-start examples.

Inputs are frames from :func:`ecrec.features.load_or_build_ctr_dataset`
passed through :func:`ecrec.features.add_item_attributes`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy.special import expit  # the one sigmoid (also behind ecrec.mlp.sigmoid)
from torch import nn

from ecrec import encoders as E
from ecrec import features as F

FEATURE_GROUPS: dict[str, dict[str, list[str]]] = {
    "ids": {"categorical": ["user_id", "item_id"], "numeric": []},
    "user": {"categorical": ["country"], "numeric": ["u_n_invoices", "u_n_lines", "u_spend", "u_days_since_last", "u_tenure_days"]},
    "item": {"categorical": ["category"], "numeric": ["i_share_all", "i_share_*", "i_price", "i_age_days"]},
    "user_item": {"categorical": [], "numeric": ["ui_n_before", "ui_days_since_last"]},
    "context": {"categorical": ["hour", "weekday", "month"], "numeric": []},
    "sequence": {"categorical": [], "numeric": ["hist_len", "seq_same_category"]},
    "text": {"categorical": [], "numeric": ["text_sim_hist"]},
}
GROUPS = tuple(FEATURE_GROUPS)


def group_columns(groups: Sequence[str], columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """(categorical, numeric) columns of ``groups`` that exist in ``columns``.

    ``i_share_*`` expands to every trailing-window popularity share present. Raw
    counts (``i_pop_*``) are left out: they grow with traffic, shares do not.

    Raises:
        ValueError: unknown group name.
    """
    unknown = [g for g in groups if g not in FEATURE_GROUPS]
    if unknown:
        raise ValueError(f"unknown feature group(s) {unknown}; choose from {list(GROUPS)}")
    cats: list[str] = []
    nums: list[str] = []
    for g in groups:
        cats += [c for c in FEATURE_GROUPS[g]["categorical"] if c in columns]
        for c in FEATURE_GROUPS[g]["numeric"]:
            if c.endswith("*"):
                nums += sorted(x for x in columns if x.startswith(c[:-1]) and not x.endswith("_all"))
            elif c in columns:
                nums.append(c)
    return cats, nums


# --- logistic regression ------------------------------------------------------


def make_logistic(
    groups: Sequence[str],
    columns: Sequence[str],
    *,
    C: float = 0.1,
    max_iter: int = 300,
    n_bins: int = 8,
    hash_features: int = 2**14,
    seed: int = 0,
):
    """A scikit-learn Pipeline: encoders for ``groups`` then ``LogisticRegression``.

    Categorical columns: ``OneHotEncoder(handle_unknown="infrequent_if_exist",
    min_frequency=2)``, so unseen and rare values share one bucket and never
    raise. Numeric columns: :func:`ecrec.encoders.numeric_encoder` plus
    :func:`ecrec.encoders.bucket_encoder`. Groups ``user`` and ``item``
    together add a hashed country x category cross
    (:class:`ecrec.encoders.HashedCross`; a user x category cross memorises
    single purchases and ruins calibration on the test window), group
    ``text`` the TF-IDF of the description (:class:`ecrec.encoders.ItemTfidf`).
    Fit it on the train split only. ``seed`` is the ``random_state`` of
    ``LogisticRegression`` (liblinear shuffles its coordinates).

    Raises:
        ValueError: unknown group, or no column of ``groups`` in ``columns``.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    cats, nums = group_columns(groups, columns)
    parts = []
    if cats:
        parts.append(("onehot", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=2), cats))
    if nums:
        parts.append(("numeric", E.numeric_encoder(), nums))
        parts.append(("buckets", E.bucket_encoder(n_bins), nums))
    if "user" in groups and "item" in groups and {"country", "category"} <= set(columns):
        parts.append(("country_x_category", E.HashedCross(hash_features), ["country", "category"]))
    if "text" in groups and "description" in columns:
        parts.append(("tfidf", E.ItemTfidf(), ["description"]))
    if not parts:
        raise ValueError(f"no column of groups {list(groups)} in the frame")
    return Pipeline(
        [
            ("features", ColumnTransformer(parts, sparse_threshold=1.0)),
            ("model", LogisticRegression(C=C, max_iter=max_iter, solver="liblinear", random_state=seed)),
        ]
    )


# --- the DNN ------------------------------------------------------------------


def bce_with_logits(logits, labels):
    """Mean binary cross-entropy from logits (torch), with the limits for infinite logits.

    ``softplus(-z)`` for label 1 and ``softplus(z)`` for label 0: the same
    numbers as ``torch.nn.BCEWithLogitsLoss`` for finite logits, and the
    package's rule for infinite ones (:func:`ecrec.mlp.log_loss_from_logits`):
    ``y = 1, z = +inf`` costs 0 (torch's own loss gives ``nan``),
    ``y = 0, z = +inf`` costs ``+inf``.

    Args:
        logits: (n,) float tensor.
        labels: (n,) tensor of 0/1 labels.

    Returns:
        A 0-d tensor (differentiable).

    Raises:
        ValueError: shapes differ, or NaN in ``logits`` (the first rows are named).
    """
    import torch

    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in shape")
    nan = torch.isnan(logits.detach())
    if bool(nan.any()):
        rows = torch.nonzero(nan).flatten()[:5].tolist()
        raise ValueError(f"logits contain NaN at rows {rows} ({int(nan.sum())} in all)")
    sp = torch.nn.functional.softplus
    return torch.where(labels > 0.5, sp(-logits), sp(logits)).mean()


def _check_finite_loss(loss, logits, where: str) -> None:
    """Stop training with an error naming the rows whose logits made the loss infinite."""
    import torch

    if bool(torch.isfinite(loss.detach())):
        return
    bad = ~torch.isfinite(logits.detach())
    rows = torch.nonzero(bad).flatten()[:5].tolist()
    raise FloatingPointError(
        f"{where}: the loss is {float(loss):g}; non-finite logits at batch rows {rows} "
        f"({int(bad.sum())} in all). Training diverged: lower the learning rate or check the inputs."
    )



@dataclass
class DnnConfig:
    """Hyper-parameters of :func:`train_dnn` (sizes in units, rates per step).

    Raises:
        ValueError: unknown ``monitor``, ``emb_dim``/``batch_size``/``max_epochs``/
            ``patience`` below 1, or ``dropout``/``id_dropout`` outside [0, 1).
    """

    emb_dim: int = 16
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    lr: float = 2e-3
    weight_decay: float = 1e-6
    batch_size: int = 1024
    max_epochs: int = 8
    patience: int = 2
    id_dropout: float = 0.05  # chance to replace a user/item id by "unknown" in training
    history_len: int = 10
    seed: int = 0
    monitor: str = "auc"  # early stopping on validation "auc" (higher is better) or "log_loss" (lower)

    def __post_init__(self) -> None:
        if self.monitor not in ("auc", "log_loss"):
            raise ValueError(f"monitor must be 'auc' or 'log_loss', got {self.monitor!r}")
        if self.emb_dim < 1 or self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError(f"emb_dim, batch_size, max_epochs and patience must be >= 1: {self}")
        if not 0 <= self.dropout < 1 or not 0 <= self.id_dropout < 1:
            raise ValueError(f"dropout and id_dropout must be in [0, 1): {self}")


class CtrPreprocessor:
    """Fitted on the train split: :class:`ecrec.encoders.IdEncoder` per categorical column,
    :func:`ecrec.encoders.numeric_encoder` for numerics, standardisation only for
    ``extra_numeric``, the history as item-table indices and a text-vector index.

    ``transform(df)`` returns a dict of numpy arrays: ``cat`` (n, k) int64,
    ``num`` (n, m) float32, and when enabled ``hist`` (n, history_len)
    int64 (0 unknown, ``n_items`` padding) and ``text`` (n,) int64 (row of
    the text table; the last row is the zero "no text" vector).

    Raises:
        ValueError: ``sequence=True`` without ``item_id`` among ``categorical``
            (constructor); columns missing from the frame (``fit``; ``transform``
            raises pandas' ``KeyError`` for them).
        RuntimeError: ``transform`` before ``fit``.
    """

    def __init__(
        self,
        categorical: Sequence[str],
        numeric: Sequence[str],
        *,
        extra_numeric: Sequence[str] = (),
        sequence: bool = True,
        text_ids: pd.Index | None = None,
        history_len: int = 10,
    ):
        self.categorical = list(categorical)
        self.numeric = list(numeric)
        self.extra_numeric = list(extra_numeric)
        self.sequence = sequence
        self.text_ids = None if text_ids is None else pd.Index(np.asarray(text_ids, dtype=object))
        self.history_len = history_len
        if sequence and "item_id" not in self.categorical:
            raise ValueError("sequence=True needs 'item_id' among the categorical columns (shared table)")

    def fit(self, df: pd.DataFrame) -> CtrPreprocessor:
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        missing = [c for c in self.categorical + self.numeric + self.extra_numeric if c not in df.columns]
        if missing:
            raise ValueError(f"CtrPreprocessor.fit: columns {missing} are not in the frame")
        self.encoders_ = {c: E.IdEncoder().fit(df[c]) for c in self.categorical}
        self.numeric_ = E.numeric_encoder().fit(df[self.numeric]) if self.numeric else None
        self.extra_ = (
            make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler()).fit(
                df[self.extra_numeric]
            )
            if self.extra_numeric
            else None
        )
        return self

    @property
    def cardinalities(self) -> list[int]:
        return [self.encoders_[c].n_indices for c in self.categorical]

    @property
    def n_numeric(self) -> int:
        n = self.numeric_.transform(pd.DataFrame({c: [np.nan] for c in self.numeric})).shape[1] if self.numeric_ else 0
        return n + len(self.extra_numeric)

    def transform(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        if not hasattr(self, "encoders_"):
            raise RuntimeError("CtrPreprocessor is not fitted")
        out: dict[str, np.ndarray] = {}
        out["cat"] = (
            np.stack([self.encoders_[c].transform(df[c]) for c in self.categorical], axis=1)
            if self.categorical
            else np.zeros((len(df), 0), np.int64)
        )
        nums = []
        if self.numeric_ is not None:
            nums.append(self.numeric_.transform(df[self.numeric]))
        if self.extra_ is not None:
            nums.append(self.extra_.transform(df[self.extra_numeric]))
        out["num"] = (np.hstack(nums) if nums else np.zeros((len(df), 0))).astype(np.float32)
        if self.sequence:
            enc = self.encoders_["item_id"]
            hm = F.hist_matrix(df["hist_items"], enc.vocabulary_, self.history_len)
            out["hist"] = np.where(hm == -1, enc.n_indices, np.where(hm == -2, 0, hm + 1)).astype(np.int64)
        if self.text_ids is not None:
            idx = self.text_ids.get_indexer(df["item_id"].astype(str).to_numpy())
            out["text"] = np.where(idx >= 0, idx, len(self.text_ids)).astype(np.int64)
        return out


class CtrInputs(nn.Module):
    """The DNN's input layer: embeddings (+ history pool, + text projection, + numerics), concatenated.

    One embedding table (``emb_dim`` wide) per categorical field, row 0 the
    unknown bucket. With ``item_field`` set, the item table gets one extra
    row, the padding index ``cardinalities[item_field]``, and the history is
    mean-pooled through it (padding excluded); the pooled vector and its
    product with the candidate's item embedding are both part of the output.
    With ``text_table`` set (frozen, a buffer), each row's text vector goes
    through a linear layer to ``emb_dim``. Shared by :class:`CtrNet` and
    chapter 06's multi-task networks (:mod:`ecrec.multitask`).

    Parameters are created in this order (embeddings, text projection), so
    that a given ``torch.manual_seed`` gives the same initial weights.

    Args:
        cardinalities: number of indices of each categorical field, unknown included (k fields).
        n_numeric: width m of the numeric input.
        item_field: position of ``item_id`` among the fields, whose table the
            history shares; ``None``: no history.
        emb_dim: embedding width.
        text_table: (t + 1, d) float text vectors, the last row the zero
            "no text" vector; ``None``: no text.

    Shapes in :meth:`forward`:
        cat (n, k) int64, num (n, m) float32, hist (n, history_len) int64 or
        ``None``, text (n,) int64 or ``None`` -> (n, :attr:`width`) float32.
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        n_numeric: int,
        item_field: int | None,
        emb_dim: int,
        text_table: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.item_field = item_field
        sizes = [c + (1 if i == item_field else 0) for i, c in enumerate(cardinalities)]
        self.embs = nn.ModuleList(
            nn.Embedding(s, emb_dim, padding_idx=(s - 1 if i == item_field else None)) for i, s in enumerate(sizes)
        )
        width = len(sizes) * emb_dim + n_numeric
        if item_field is not None:
            width += 2 * emb_dim  # pooled history and its product with the item embedding
        self.text_proj: nn.Linear | None = None
        if text_table is not None:
            self.register_buffer("text_table", torch.as_tensor(text_table, dtype=torch.float32))
            self.text_proj = nn.Linear(text_table.shape[1], emb_dim)
            width += emb_dim
        self.width = width

    def forward(
        self,
        cat: torch.Tensor,
        num: torch.Tensor,
        hist: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        parts = [emb(cat[:, i]) for i, emb in enumerate(self.embs)]  # k x (n, emb_dim)
        if self.item_field is not None and hist is not None:
            table = self.embs[self.item_field]
            mask = (hist != table.padding_idx).unsqueeze(-1).float()  # (n, history_len, 1)
            pooled = (table(hist) * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (n, emb_dim)
            parts += [pooled, pooled * parts[self.item_field]]
        if text is not None and self.text_proj is not None:
            parts.append(self.text_proj(self.text_table[text]))  # (n, emb_dim)
        parts.append(num)
        return torch.cat(parts, dim=1)


class CtrNet(nn.Module):
    """The DNN of :func:`train_dnn`: :class:`CtrInputs` -> MLP -> logit.

    The MLP is ``config.hidden`` layers of Linear -> ReLU -> Dropout, then
    Linear to one logit. Parameters are created in this order (embeddings,
    text projection, MLP), so that a given ``torch.manual_seed`` gives the
    same initial weights.

    Args:
        cardinalities, n_numeric, item_field, text_table: as :class:`CtrInputs`.
        config: :class:`DnnConfig` (``emb_dim``, ``hidden``, ``dropout``).

    Shapes in :meth:`forward`:
        cat (n, k) int64, num (n, m) float32, hist (n, history_len) int64 or
        ``None``, text (n,) int64 or ``None`` -> logits (n,) float32.
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        n_numeric: int,
        item_field: int | None,
        text_table: np.ndarray | None,
        config: DnnConfig,
    ) -> None:
        super().__init__()
        self.inputs = CtrInputs(cardinalities, n_numeric, item_field, config.emb_dim, text_table)
        width = self.inputs.width
        layers: list[nn.Module] = []
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(config.dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    @property
    def embs(self) -> nn.ModuleList:
        """The embedding tables (:attr:`CtrInputs.embs`)."""
        return self.inputs.embs

    @property
    def text_proj(self) -> nn.Linear | None:
        """The text projection, or ``None`` without text (:attr:`CtrInputs.text_proj`)."""
        return self.inputs.text_proj

    def forward(
        self,
        cat: torch.Tensor,
        num: torch.Tensor,
        hist: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.mlp(self.inputs(cat, num, hist, text)).squeeze(-1)  # (n,)


@dataclass
class TrainedDnn:
    """A trained DNN with its preprocessor; ``predict_proba(df)`` -> (n,) float64 in (0, 1)."""

    preprocessor: CtrPreprocessor
    net: CtrNet
    config: DnnConfig
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0

    def _tensors(self, arrays: dict[str, np.ndarray], sl=slice(None)):
        import torch

        return (
            torch.as_tensor(arrays["cat"][sl]),
            torch.as_tensor(arrays["num"][sl]),
            torch.as_tensor(arrays["hist"][sl]) if "hist" in arrays else None,
            torch.as_tensor(arrays["text"][sl]) if "text" in arrays else None,
        )

    def predict_logits_arrays(self, arrays: dict[str, np.ndarray], batch_size: int = 8192) -> np.ndarray:
        import torch

        self.net.eval()
        n = len(arrays["cat"])
        out = np.empty(n, dtype=np.float64)
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                out[s : s + batch_size] = self.net(*self._tensors(arrays, slice(s, s + batch_size))).double().numpy()
        return out

    def predict_proba(self, df: pd.DataFrame, batch_size: int = 8192) -> np.ndarray:
        """Click (purchase) probability of each row of ``df``; unseen ids use the unknown bucket.

        Raises:
            RuntimeError: the preprocessor is not fitted.
            ValueError: columns the model needs are missing from ``df``.
        """
        return expit(self.predict_logits_arrays(self.preprocessor.transform(df), batch_size))


def train_dnn(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    *,
    categorical: Sequence[str],
    numeric: Sequence[str],
    extra_numeric: Sequence[str] = (),
    sequence: bool = True,
    text: tuple[pd.Index, np.ndarray] | None = None,
    config: DnnConfig | None = None,
    progress: bool = False,
) -> TrainedDnn:
    """Train the embedding + MLP CTR model with early stopping on a validation metric.

    ``config.monitor`` picks the metric: ``"auc"`` (default; ranking only) or
    ``"log_loss"`` (the training objective on held-out data: also punishes
    over-confident probabilities). Training stops after ``patience`` epochs
    without improvement and keeps the best epoch's weights.

    Args:
        train, valid: dataset frames (after :func:`ecrec.features.add_item_attributes`)
            with a 0/1 ``label``; encoders are fitted on ``train`` only.
        categorical: columns embedded (``emb_dim`` each), e.g. ``["user_id", "item_id", "country"]``.
        numeric: non-negative numeric columns (log1p, impute + indicator, standardise).
        extra_numeric: further numeric columns standardised as they are, e.g.
            ``["bert_score"]`` (chapter 04's transfer strategy).
        sequence: mean-pool ``hist_items`` through the item embedding table
            (and its product with the candidate's item embedding).
        text: ``(item_ids, vectors)`` frozen item text vectors (m, d), e.g.
            MiniLM embeddings of descriptions, looked up by ``item_id`` so
            that cold items still get theirs.
        config: :class:`DnnConfig`.

    Returns:
        :class:`TrainedDnn` holding the epoch with the best validation ``monitor``;
        ``history`` has ``train_loss``, ``valid_loss`` and ``valid_auc`` per epoch.

    Raises:
        ValueError: missing columns, a split without both labels, ``sequence``
            without ``item_id`` among ``categorical``, NaN logits during
            training (:func:`bce_with_logits`), or NaN validation predictions
            (from :func:`ecrec.metrics.roc_auc`).
        FloatingPointError: the training loss became infinite (the error
            names the batch rows with non-finite logits).
    """
    import torch

    from ecrec.metrics import log_loss, roc_auc

    cfg = config or DnnConfig()
    for name, frame in (("train", train), ("valid", valid)):
        if frame["label"].nunique() != 2:
            raise ValueError(f"train_dnn: the {name} split needs both labels 0 and 1")
    categorical = list(categorical)
    pre = CtrPreprocessor(
        categorical, numeric, extra_numeric=extra_numeric, sequence=sequence,
        text_ids=None if text is None else text[0], history_len=cfg.history_len,
    ).fit(train)
    torch.manual_seed(cfg.seed)
    text_table = None
    if text is not None:
        vec = np.asarray(text[1], dtype=np.float32)
        text_table = np.vstack([vec, np.zeros((1, vec.shape[1]), np.float32)])
    item_field = categorical.index("item_id") if sequence else None
    net = CtrNet(pre.cardinalities, pre.n_numeric, item_field, text_table, cfg)
    model = TrainedDnn(pre, net, cfg, {"train_loss": [], "valid_loss": [], "valid_auc": []})
    tr, va = pre.transform(train), pre.transform(valid)
    y = torch.as_tensor(train["label"].to_numpy(np.float32))
    y_valid = valid["label"].to_numpy()
    id_cols = [i for i, c in enumerate(categorical) if c in ("user_id", "item_id")]
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, waited = -np.inf, None, 0
    from tqdm.auto import tqdm

    for epoch in tqdm(range(cfg.max_epochs), disable=not progress, desc="epochs"):
        net.train()
        perm = torch.randperm(len(y), generator=gen).numpy()
        total = 0.0
        for s in range(0, len(perm), cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            cat, num, hist, txt = model._tensors(tr, idx)
            if cfg.id_dropout > 0 and id_cols:
                drop = torch.rand(len(idx), len(id_cols), generator=gen) < cfg.id_dropout
                cat = cat.clone()
                cat[:, id_cols] = cat[:, id_cols].masked_fill(drop, 0)
            logits = net(cat, num, hist, txt)
            loss = bce_with_logits(logits, y[idx])
            _check_finite_loss(loss, logits, f"train_dnn epoch {epoch + 1}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        p_valid = expit(model.predict_logits_arrays(va))
        auc, loss = roc_auc(y_valid, p_valid), log_loss(y_valid, p_valid)
        model.history["train_loss"].append(total / len(y))
        model.history["valid_loss"].append(loss)
        model.history["valid_auc"].append(auc)
        score = auc if cfg.monitor == "auc" else -loss
        if score > best:
            best, best_state, waited, model.best_epoch = score, copy.deepcopy(net.state_dict()), 0, epoch + 1
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    return model


# --- evaluation ---------------------------------------------------------------


def evaluate(df: pd.DataFrame, p: np.ndarray) -> dict[str, float | int | None]:
    """AUC, log loss and GAUC of predictions ``p`` on ``df``, overall and by cold start.

    GAUC is reported two ways (:func:`ecrec.metrics.gauc`, groups weighted by
    their rows): ``gauc`` per *user*, the standard definition (Zhu et al.,
    2017; Zhou et al., 2018, DIN), and ``gauc_invoice`` per invoice (one
    basket and its sampled negatives, the closest thing to an impression
    list here). Groups with a single label have no AUC and are skipped; their
    numbers are returned. Segments: ``cold`` (user or item cold, see
    :mod:`ecrec.features`), ``cold_user``, ``cold_item``, ``warm`` (neither).
    A segment with a single label gets ``None`` for its AUC.

    Args:
        df: (n rows) with ``label`` (0/1), ``user_id``, ``invoice_no``,
            ``cold_user`` and ``cold_item`` (bool).
        p: (n,) predicted probabilities in [0, 1].

    Returns:
        dict with ``auc``, ``log_loss``, ``gauc``, ``gauc_invoice``,
        ``gauc_skipped_users``, ``gauc_skipped_invoices``, ``n`` and for each
        segment ``auc_<seg>``, ``log_loss_<seg>``, ``n_<seg>``.

    Raises:
        ValueError: missing columns, ``p`` and ``df`` differ in length (or
            bad values, from ecrec.metrics).
    """
    from ecrec.metrics import gauc, log_loss, roc_auc

    missing = [c for c in ("label", "user_id", "invoice_no", "cold_user", "cold_item") if c not in df.columns]
    if missing:
        raise ValueError(f"evaluate: df lacks columns {missing} (pass a frame of the CTR dataset)")
    p = np.asarray(p, dtype=np.float64)
    if len(p) != len(df):
        raise ValueError(f"evaluate: {len(p)} predictions for {len(df)} rows")
    y = df["label"].to_numpy()
    g_user, skip_user = gauc(df["user_id"].to_numpy(), y, p)
    g_inv, skip_inv = gauc(df["invoice_no"].to_numpy(), y, p)
    out: dict[str, float | int | None] = {
        "auc": roc_auc(y, p),
        "log_loss": log_loss(y, p),
        "gauc": g_user,
        "gauc_invoice": g_inv,
        "gauc_skipped_users": int(skip_user),
        "gauc_skipped_invoices": int(skip_inv),
        "n": len(df),
    }
    cold_user, cold_item = df["cold_user"].to_numpy(bool), df["cold_item"].to_numpy(bool)
    segments = {"cold": cold_user | cold_item, "cold_user": cold_user, "cold_item": cold_item, "warm": ~(cold_user | cold_item)}
    for name, mask in segments.items():
        both = mask.any() and len(np.unique(y[mask])) == 2
        out[f"auc_{name}"] = roc_auc(y[mask], p[mask]) if both else None
        out[f"log_loss_{name}"] = log_loss(y[mask], p[mask]) if mask.any() else None
        out[f"n_{name}"] = int(mask.sum())
    return out
