"""Chapter 04's text CTR models: a pretrained encoder, its own pooling, a one-logit head.

Two architectures share the same parts (:class:`CrossEncoderCtr`,
:class:`BiEncoderCtr`):

* an **encoder**: the pretrained transformer (``AutoModel``; MiniLM by default);
* the **checkpoint's own pooling** (:func:`checkpoint_pooling`):
  sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained with
  mean pooling over the attention mask followed by L2 normalisation; their
  BERT pooler (dense + tanh on ``[CLS]``) was never trained (its bias is
  exactly zero) and is not loaded. A sentence-transformers checkpoint with
  CLS pooling reads the ``[CLS]`` token's last hidden state, never the pooler
  (sentence-transformers' ``Pooling`` module does the same). Plain BERT
  checkpoints that did train the pooler (``bert-base-uncased``: next-sentence
  prediction) use it (mode ``"pooler"``);
* **dropout + a linear head** -> one logit ``z``; ``p = sigmoid(z)``, trained
  with binary cross-entropy on logits (:func:`ctr_loss`), i.e. the log loss.

The head is the only parameter created fresh (LoRA adapters aside). It can be
warm-started from a linear probe fitted on the frozen features
(:func:`init_head_from_probe`, "LP-FT": Kumar et al., 2022, "Fine-Tuning can
Distort Pretrained Features and Underperform Out-of-Distribution"), so that
fine-tuning starts where the probe ends instead of from a random head.

* cross-encoder: reads ``[CLS] history [SEP] candidate [SEP]`` and pools it;
* bi-encoder (two towers with **shared weights**): the item tower pools the
  candidate's description into ``v``; the user tower is the mean of the item
  vectors of the user's recent purchases, ``u``; the head reads
  ``[u, v, u * v]``. Item vectors depend on the item only, so they can be
  cached and fed to chapter 03's DNN or chapter 05's recall.

LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models")
wraps the encoder through peft (:func:`add_lora`); the head stays a plain,
trainable module and is saved with the adapters (:func:`save_checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecrec.text import DEFAULT_MODEL, mean_pool, model_path

__all__ = [
    "Pooling",
    "POOLING_MODES",
    "checkpoint_pooling",
    "pool_output",
    "load_encoder",
    "CrossEncoderCtr",
    "BiEncoderCtr",
    "load_ctr_model",
    "fresh_parameter_names",
    "init_head_from_probe",
    "add_lora",
    "merge_lora",
    "count_params",
    "ctr_loss",
    "pair_features",
    "bi_features",
    "bi_logits",
    "save_checkpoint",
    "load_checkpoint",
    "CHECKPOINT_FORMAT",
    "WEIGHTS_FILE",
    "META_FILE",
]

CHECKPOINT_FORMAT = "ecrec-text-ctr/3"
# Format 2 named BERT's pooler "cls"; format 3 calls it "pooler" and keeps "cls" for the [CLS] token's
# vector (sentence-transformers' CLS pooling). Format-2 folders still load, their "cls" read as "pooler".
_OLDER_FORMATS = {"ecrec-text-ctr/2": {"cls": "pooler"}}
WEIGHTS_FILE = "model.safetensors"
META_FILE = "ecrec_checkpoint.json"
ARCHITECTURES = ("cross", "bi")


# --- pooling -------------------------------------------------------------------


POOLING_MODES = ("mean", "cls", "pooler")


class Pooling:
    """How a checkpoint turns token vectors into one vector: ``mode`` and ``normalize``.

    ``mode``: ``"mean"`` (mean over real tokens), ``"cls"`` (the ``[CLS]``
    token's last hidden state, sentence-transformers' CLS pooling) or
    ``"pooler"`` (BERT's pretrained pooler, dense + tanh on ``[CLS]``: a plain
    BERT checkpoint). ``normalize``: L2-normalise the result.

    Raises:
        ValueError: an unknown ``mode``.
    """

    def __init__(self, mode: str = "mean", normalize: bool = True):
        if mode not in POOLING_MODES:
            raise ValueError(f"pooling mode must be one of {POOLING_MODES}, got {mode!r}")
        self.mode, self.normalize = mode, bool(normalize)

    def __eq__(self, other) -> bool:
        return isinstance(other, Pooling) and self.as_dict() == other.as_dict()

    __hash__ = None

    def __repr__(self) -> str:
        return f"Pooling(mode={self.mode!r}, normalize={self.normalize})"

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "normalize": self.normalize}


def checkpoint_pooling(model_name: str = DEFAULT_MODEL) -> Pooling:
    """The pooling a checkpoint was trained with.

    A sentence-transformers folder says so in ``1_Pooling/config.json``
    (mean, CLS...) and ``modules.json`` (a ``Normalize`` module); its CLS
    pooling is the ``[CLS]`` token's hidden state (``"cls"``), as
    sentence-transformers computes it. Anything else is a plain BERT-style
    checkpoint whose ``[CLS]`` + pooler were trained (``bert-base-uncased``),
    so ``"pooler"``, not normalised.

    Raises:
        ValueError: a sentence-transformers pooling this module does not
            implement (max or mean-sqrt-len pooling).
    """
    path = Path(model_path(model_name))
    pooling_cfg = path / "1_Pooling" / "config.json"
    if not pooling_cfg.is_file():
        return Pooling("pooler", normalize=False)
    cfg = json.loads(pooling_cfg.read_text(encoding="utf-8"))
    modules = path / "modules.json"
    normalize = modules.is_file() and "Normalize" in modules.read_text(encoding="utf-8")
    if cfg.get("pooling_mode_mean_tokens"):
        return Pooling("mean", normalize)
    if cfg.get("pooling_mode_cls_token"):
        return Pooling("cls", normalize)
    raise ValueError(f"{pooling_cfg}: unsupported pooling {cfg}; ecrec implements mean and cls pooling")


def load_encoder(model_name: str = DEFAULT_MODEL, pooling: Pooling | None = None):
    """The pretrained transformer (``AutoModel``), with its pooler only when it is used.

    Returns:
        ``(encoder, pooling)``; the encoder is on CPU in train mode.
    """
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    pooling = pooling or checkpoint_pooling(model_name)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights were not used" (a checkpoint's head) is expected
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar per model in the book
    try:
        # the pooler's weights are loaded only where they are read (a pooler nobody reads gets no gradient)
        kwargs = {} if pooling.mode == "pooler" else {"add_pooling_layer": False}
        try:
            encoder = AutoModel.from_pretrained(model_path(model_name), **kwargs)
        except TypeError:  # an architecture without a pooler argument
            encoder = AutoModel.from_pretrained(model_path(model_name))
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return encoder.train(), pooling


def pool_output(out, attention_mask, pooling: Pooling) -> torch.Tensor:
    """One fp32 vector per sequence from an encoder's output, by the checkpoint's convention.

    Args:
        out: the encoder's output (``last_hidden_state`` (batch, seq, hidden);
            ``pooler_output`` (batch, hidden) for mode ``"pooler"``).
        attention_mask: int (batch, seq), 1 = real token.
        pooling: :class:`Pooling`.

    Returns:
        fp32 (batch, hidden); L2-normalised when ``pooling.normalize``.

    Raises:
        ValueError: mode ``"pooler"`` with an encoder that has no pooler.
    """
    hidden = out.last_hidden_state
    if pooling.mode == "pooler":
        vec = getattr(out, "pooler_output", None)
        if vec is None:
            raise ValueError("pooling 'pooler' needs an encoder with its pooler; load it with load_encoder()")
    elif pooling.mode == "cls":
        vec = hidden[:, 0]  # sentence-transformers' CLS pooling: the token's vector, not the pooler
    else:
        vec = mean_pool(hidden, attention_mask)
    vec = vec.float()
    return torch.nn.functional.normalize(vec, dim=-1) if pooling.normalize else vec


class _TextCtrBase(torch.nn.Module):
    """Encoder + pooling + dropout + linear head; subclasses say what the head reads."""

    architecture = "base"

    def __init__(self, encoder, pooling: Pooling, head_in: int, dropout: float = 0.1):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.encoder, self.pooling = encoder, pooling
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(head_in, 1)
        # A small random head, as BERT initialises its own heads (std 0.02); bias 0.
        torch.nn.init.normal_(self.head.weight, std=0.02)
        torch.nn.init.zeros_(self.head.bias)

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.hidden_size)

    def pool(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None):
        """(batch, hidden) pooled vectors of token sequences (batch, seq)."""
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.encoder(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)
        return pool_output(out, attention_mask, self.pooling)

    def features(self, **batch):
        """(batch, head_in) fp32: what the head reads (no dropout)."""
        raise NotImplementedError

    def forward(self, **batch):
        """(batch,) fp32 logits."""
        return self.head(self.dropout(self.features(**batch))).squeeze(-1)


class CrossEncoderCtr(_TextCtrBase):
    """Cross-encoder: pooled ``[CLS] history [SEP] candidate [SEP]`` -> dropout -> linear -> logit.

    Inputs: ``input_ids``, ``attention_mask``, ``token_type_ids`` int64 (batch, seq)
    (:meth:`ecrec.pairs.EncodedPairs.batch`).
    """

    architecture = "cross"

    def __init__(self, encoder, pooling: Pooling, dropout: float = 0.1):
        super().__init__(encoder, pooling, int(encoder.config.hidden_size), dropout)

    def features(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None):
        return self.pool(input_ids, attention_mask, token_type_ids, inputs_embeds)


class BiEncoderCtr(_TextCtrBase):
    """Two towers with shared weights: ``v`` = pooled candidate text, ``u`` = mean of the
    history items' vectors (zeros without history); the head reads ``[u, v, u * v]``.

    Inputs (:meth:`ecrec.pairs.EncodedHistories.batch`): ``input_ids``,
    ``attention_mask`` (m, seq) for the batch's m distinct items; ``cand``
    int64 (batch,) and ``hist`` int64 (batch, h) rows of those items, -1 = none.
    """

    architecture = "bi"

    def __init__(self, encoder, pooling: Pooling, dropout: float = 0.1):
        super().__init__(encoder, pooling, 3 * int(encoder.config.hidden_size), dropout)

    def item_vectors(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        """(m, hidden) fp32 item vectors (the item tower)."""
        return self.pool(input_ids, attention_mask, None, inputs_embeds)

    def features(self, input_ids=None, attention_mask=None, cand=None, hist=None, inputs_embeds=None):
        items = self.item_vectors(input_ids, attention_mask, inputs_embeds)
        v = items[cand]
        valid = (hist >= 0).unsqueeze(-1).to(items.dtype)
        u = (items[hist.clamp(min=0)] * valid).sum(1) / valid.sum(1).clamp(min=1.0)
        return pair_features_torch(u, v)


def pair_features_torch(u, v):
    """``[u, v, u * v]`` (batch, 3d) for tensors; :func:`pair_features` for arrays."""

    return torch.cat([u, v, u * v], dim=-1)


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Features of (user, item) vector pairs for a linear head: ``[u, v, u * v]``.

    Args:
        u, v: float arrays (n, d), e.g. L2-normalised sentence embeddings.

    Returns:
        float32 (n, 3d). ``u * v`` summed is the cosine similarity, so a
        logistic regression on these features can weight it per dimension.

    Raises:
        ValueError: shapes differ or are not 2-D.
    """
    u, v = np.asarray(u), np.asarray(v)
    if u.ndim != 2 or u.shape != v.shape:
        raise ValueError(f"u and v must be 2-D of the same shape, got {u.shape} and {v.shape}")
    return np.hstack([u, v, u * v]).astype(np.float32)


def bi_features(vectors: np.ndarray, hist: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """What a :class:`BiEncoderCtr` head reads, from a table of item vectors: ``[u, v, u * v]``.

    Args:
        vectors: (m, d) item vectors (frozen, or :func:`ecrec.finetune.item_vectors`).
        hist: int64 (n, h) rows of each example's history items, -1 = none.
        cand: int64 (n,) rows of the candidates.

    Returns:
        float32 (n, 3d); ``u`` is the mean of the history's vectors (zeros without history).

    Raises:
        ValueError: shapes do not fit or a row is out of range.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    hist, cand = np.asarray(hist), np.asarray(cand)
    if hist.ndim != 2 or cand.shape != (len(hist),):
        raise ValueError(f"hist must be (n, h) and cand (n,), got {hist.shape} and {cand.shape}")
    if len(cand) and (cand.min() < 0 or cand.max() >= len(vectors) or hist.max() >= len(vectors)):
        raise ValueError(f"item rows out of range for a table of {len(vectors)} vectors")
    valid = (hist >= 0)[..., None].astype(np.float32)
    u = (vectors[np.maximum(hist, 0)] * valid).sum(1) / np.maximum(valid.sum(1), 1.0)
    return pair_features(u, vectors[cand])


def bi_logits(model, vectors: np.ndarray, hist: np.ndarray, cand: np.ndarray, *, chunk: int = 16384) -> np.ndarray:
    """A bi-encoder's logits from cached item vectors: the head on :func:`bi_features`.

    Equal to ``model(**batch)`` in eval mode when ``vectors`` are the model's own
    item vectors; scores any number of rows without running the encoder.

    Returns:
        float32 (n,) logits.
    """
    w = model.head.weight.detach().float().cpu().numpy().reshape(-1)
    b = float(model.head.bias.detach().float().cpu())
    out = np.empty(len(cand), dtype=np.float32)
    for s in range(0, len(cand), chunk):
        out[s : s + chunk] = bi_features(vectors, hist[s : s + chunk], cand[s : s + chunk]) @ w + b
    return out


def load_ctr_model(
    model_name: str = DEFAULT_MODEL,
    *,
    architecture: str = "cross",
    dropout: float = 0.1,
    seed: int = 42,
    pooling: Pooling | None = None,
):
    """A pretrained encoder with its own pooling and a fresh one-logit head.

    Whatever head the checkpoint carries (a 2-label classifier, an MLM head)
    is not loaded: the encoder comes from ``AutoModel`` and the head is ours.

    Args:
        model_name: ``"minilm"`` (offline) or a Hugging Face name or folder.
        architecture: ``"cross"`` (:class:`CrossEncoderCtr`) or ``"bi"``
            (:class:`BiEncoderCtr`).
        dropout: before the head.
        seed: seeds the head's initialisation.
        pooling: None: the checkpoint's own (:func:`checkpoint_pooling`).

    Returns:
        The model on CPU in train mode; ``model(**batch)`` gives logits (batch,).

    Raises:
        ValueError: unknown ``architecture`` or bad ``dropout``.
    """

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    encoder, pooling = load_encoder(model_name, pooling)
    torch.manual_seed(seed)
    cls = CrossEncoderCtr if architecture == "cross" else BiEncoderCtr
    model = cls(encoder, pooling, dropout)
    model.model_name = model_name
    return model.train()


def fresh_parameter_names(model) -> list[str]:
    """Names of the parameters that did not come from the pretrained checkpoint.

    The head, and LoRA's adapters when present: everything a training run
    must not treat as pretrained (learning rate, freezing, what to save).
    """
    return [n for n, _ in model.named_parameters() if not n.startswith("encoder.") or "lora_" in n]


class BiProbe:
    """A linear probe on ``[u, v, u * v]`` that keeps the checkpoint's own similarity.

    A plain logistic regression on the 3d features of :func:`pair_features` has to
    rediscover, from the examples, that the sum of the ``u * v`` block (the
    cosine the sentence-transformers checkpoint was trained for) ranks items;
    with an L2 penalty on 1,152 weights and a weak signal it does not, and ends
    below the zero-shot cosine (chapter 04, popularity-matched negatives, cpu
    sizes: test AUC 0.513 against 0.550 at 12,288 examples). This probe adds the
    similarity ``s * sum(u * v)`` as one more input, scaled by
    ``similarity_scale`` so that the penalty on its weight is negligible, and
    folds it back into the ``u * v`` block: the result is still a linear head on
    ``[u, v, u * v]`` (:func:`init_head_from_probe`), whose step-0 logits are
    ``decision_function``. The penalty on the other weights is ``C`` or, with
    ``C=None``, picked from ``Cs`` by ``cv``-fold cross-validated AUC on the
    probe's own examples (scikit-learn ``LogisticRegressionCV``; unshuffled
    stratified folds, so deterministic). A very small ``C`` leaves the
    similarity alone, i.e. the zero-shot ranking; cross-validation falls back to
    ``C=1`` when a class has fewer than ``cv`` examples. The folds are fitted in
    ``n_jobs`` joblib worker processes (default -1: every core). Any value gives the
    same penalty and coefficients up to the order of floating-point sums (the
    workers' BLAS runs on fewer threads: 5e-15 apart on 20,000 rows); chapter 04's
    probe on 20,000 rows took 25 s in one process on 2 cores, 15 s in three.

    Attributes (fitted): ``coef_`` float64 (1, 3d), ``intercept_`` float64 (1,),
    ``C_`` (the penalty used), ``similarity_weight_`` (the folded weight of
    ``sum(u * v)``), ``classes_``.
    """

    def __init__(self, C: float | None = None, similarity_scale: float = 100.0, *,
                 Cs: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0), cv: int = 3, max_iter: int = 1000,
                 n_jobs: int | None = -1):
        if (C is not None and C <= 0) or similarity_scale <= 0 or min(Cs) <= 0 or cv < 2:
            raise ValueError(f"C, Cs and similarity_scale must be > 0 and cv >= 2, got C={C}, Cs={Cs}, "
                             f"similarity_scale={similarity_scale}, cv={cv}")
        self.C, self.similarity_scale, self.Cs, self.cv, self.max_iter = C, similarity_scale, tuple(Cs), cv, max_iter
        self.n_jobs = n_jobs

    def fit(self, features: np.ndarray, labels: np.ndarray) -> BiProbe:
        """Fit on ``features`` (n, 3d) from :func:`pair_features` and 0/1 ``labels`` (n,).

        Raises:
            ValueError: ``features`` is not (n, 3d), or ``labels`` has another length or one class only.
        """
        from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

        x, y = np.asarray(features, dtype=np.float64), np.asarray(labels)
        if x.ndim != 2 or x.shape[1] % 3 or len(y) != len(x):
            raise ValueError(f"features must be (n, 3d) from pair_features and labels (n,), got {x.shape}, {y.shape}")
        classes, counts = np.unique(y, return_counts=True)
        if len(classes) != 2:
            raise ValueError("labels hold one class only: a probe needs positives and negatives")
        d = x.shape[1] // 3
        xs = np.column_stack([self.similarity_scale * x[:, 2 * d :].sum(1), x])
        if self.C is None and counts.min() >= self.cv:
            lr = LogisticRegressionCV(Cs=list(self.Cs), cv=self.cv, scoring="roc_auc", l1_ratios=(0.0,),
                                      max_iter=self.max_iter, use_legacy_attributes=False,
                                      n_jobs=self.n_jobs).fit(xs, y)
            self.C_ = float(np.ravel(lr.C_)[0])
        else:
            self.C_ = 1.0 if self.C is None else float(self.C)
            lr = LogisticRegression(C=self.C_, max_iter=self.max_iter).fit(xs, y)
        coef = np.asarray(lr.coef_, dtype=np.float64).reshape(-1)
        self.similarity_weight_ = float(self.similarity_scale * coef[0])
        coef = coef[1:].copy()
        coef[2 * d :] += self.similarity_weight_  # sum(u * v) * w == (u * v) @ (w * ones)
        self.coef_, self.intercept_ = coef[None, :], np.asarray(lr.intercept_, dtype=np.float64).reshape(1)
        self.classes_ = lr.classes_
        return self

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        """The logit (n,) float64 of each row of ``features`` (n, 3d): what the warm-started head computes."""
        return np.asarray(features, dtype=np.float64) @ self.coef_[0] + self.intercept_[0]


def init_head_from_probe(model, coef: np.ndarray, intercept: float | np.ndarray) -> None:
    """Copy a linear probe (e.g. scikit-learn ``LogisticRegression``) into the head.

    The probe must have been fitted on ``model.features(...)`` of the frozen
    model (in eval mode): then the model's logits at step 0 are the probe's
    decision function, and fine-tuning starts from it.

    Args:
        coef: (head_in,) or (1, head_in) float weights.
        intercept: scalar or (1,) bias.

    Raises:
        ValueError: ``coef`` does not have the head's input size.
    """

    w = np.asarray(coef, dtype=np.float32).reshape(-1)
    if w.shape[0] != model.head.in_features:
        raise ValueError(f"probe has {w.shape[0]} coefficients, the head reads {model.head.in_features} features")
    with torch.no_grad():
        model.head.weight.copy_(torch.as_tensor(w)[None, :])
        model.head.bias.fill_(float(np.asarray(intercept).reshape(-1)[0]))


def add_lora(
    model,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.1,
    target_modules: tuple[str, ...] | list[str] = ("query", "value"),
):
    """Freeze the encoder and give it LoRA adapters (peft); the head stays trainable.

    Every ``target_modules`` linear layer ``W`` of the encoder gets a trainable
    low-rank update: ``W x + (alpha / r) B A x`` with ``A`` (r, d_in) random and
    ``B`` (d_out, r) zero at the start, so the model starts unchanged.

    Returns:
        ``model``, its ``encoder`` replaced by a ``peft.PeftModel``.

    Raises:
        ValueError: ``r`` < 1, or the model already has adapters.
    """
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise ValueError(f"LoRA rank r must be >= 1, got {r}")
    if hasattr(model.encoder, "peft_config"):
        raise ValueError("the model already has LoRA adapters")
    import warnings

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules))
    with warnings.catch_warnings():  # peft calls a transformers property deprecated in transformers 5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model.encoder = get_peft_model(model.encoder, config)
    for p in model.head.parameters():
        p.requires_grad_(True)
    return model


def merge_lora(model):
    """Fold the adapters into the encoder's weights (``W + (alpha/r) B A``); a plain model again.

    Raises:
        ValueError: the model has no adapters.
    """
    if not hasattr(model.encoder, "peft_config"):
        raise ValueError("the model has no LoRA adapters to merge")
    model.encoder = model.encoder.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameter counts of a torch module."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def ctr_loss(logits, labels, *, reduction: str = "mean"):
    """Binary cross-entropy with logits, computed in fp32: the log loss.

    Args:
        logits: float tensor (batch,) or (batch, 1), any float dtype (bf16
            under autocast); cast to fp32 before the loss.
        labels: (batch,) 0/1 tensor.
        reduction: ``"mean"`` or ``"sum"`` (the trainer sums and divides by the
            examples of the whole accumulation window).

    Returns:
        fp32 scalar tensor, ``-mean(y log sigmoid(z) + (1-y) log(1 - sigmoid(z)))``
        (or the sum).

    Raises:
        ValueError: shapes do not match.
        FloatingPointError: the loss is NaN or infinite.
    """
    z = logits.float()
    if z.ndim == 2 and z.shape[1] == 1:
        z = z.squeeze(1)
    if z.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z, labels.float(), reduction=reduction)
    if not bool(loss.isfinite()):
        raise FloatingPointError(f"loss is {loss.item()}; lower the learning rate or use fp32/bf16")
    return loss


# --- checkpoints ---------------------------------------------------------------------------


def _is_lora(model) -> bool:
    return hasattr(getattr(model, "encoder", None), "peft_config")


def save_checkpoint(model, directory: str | Path, *, model_name: str | None = None, **meta: Any) -> Path:
    """Save ``model`` as safetensors + a JSON description, each written atomically.

    A plain model saves its whole ``state_dict``; a LoRA model saves exactly
    its trainable parameters (adapters and head, a few hundred kilobytes)
    plus the LoRA settings. The description records the architecture,
    pooling and base model, so :func:`load_checkpoint` can rebuild it.

    Args:
        model: a :class:`CrossEncoderCtr` or :class:`BiEncoderCtr`
            (possibly with :func:`add_lora` adapters).
        directory: created if needed.
        model_name: the base model (default: the one it was loaded from).
        meta: extra JSON-able fields kept in the description.

    Returns:
        ``directory`` as a Path.

    Raises:
        TypeError: ``model`` is not one of ecrec's text CTR models (e.g. a
            bare ``PeftModel`` or a transformers model).
        ValueError: nothing to save (an empty state), a LoRA model whose
            trainable parameters are not all adapters or head, or a peft
            encoder whose adapters were merged by ``merge_and_unload()``
            without assigning the result back (the message says what to do).
    """
    from safetensors.torch import save_file

    from ecrec.io import atomic_write, atomic_write_text

    if not isinstance(model, _TextCtrBase):
        raise TypeError(
            f"save_checkpoint saves ecrec's CrossEncoderCtr/BiEncoderCtr, got {type(model).__name__}; "
            "after merging LoRA use merge_lora(model), which keeps the model's class"
        )
    directory = Path(directory)
    lora = None
    if _is_lora(model) and not any("lora_" in n for n, _ in model.named_parameters()):
        # peft's merge_and_unload() folds the adapters into the weights and removes them, but returns the
        # plain encoder: unassigned, model.encoder is still a PeftModel whose adapters are gone, and a
        # LoRA checkpoint of it would hold the head alone and fail to load.
        raise ValueError(
            "the model's encoder is a peft model without LoRA adapters: they were merged by "
            "model.encoder.merge_and_unload() but the result was not assigned back, so there is nothing to "
            "save as a LoRA checkpoint. Use bert.merge_lora(model) (or model.encoder = "
            "model.encoder.merge_and_unload()) and save again: the checkpoint then holds the merged weights")
    if _is_lora(model):
        cfg = model.encoder.peft_config["default"]
        state = {n: p for n, p in model.named_parameters() if p.requires_grad}
        stray = sorted(set(state) - set(fresh_parameter_names(model)))
        if stray:
            raise ValueError(f"LoRA model with trainable pretrained weights {stray[:3]}: freeze them or merge_lora")
        lora = {"r": cfg.r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                "target_modules": sorted(cfg.target_modules)}
    else:
        state = model.state_dict()
    if not state:
        raise ValueError("the model has no tensors to save")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    description = {
        "format": CHECKPOINT_FORMAT, "model_name": model_name or getattr(model, "model_name", DEFAULT_MODEL),
        "architecture": model.architecture, "pooling": model.pooling.as_dict(),
        "dropout": model.dropout.p, "lora": lora, "n_tensors": len(tensors), **meta,
    }
    atomic_write_text(directory / META_FILE, json.dumps(description, indent=2, sort_keys=True))
    return directory


def load_checkpoint(directory: str | Path, device: str = "cpu"):
    """Rebuild the model saved by :func:`save_checkpoint`, in eval mode on ``device``.

    Raises:
        FileNotFoundError: the folder lacks the weights or the description.
        ValueError: not an ecrec checkpoint (or an older format), or weights
            that do not fit the rebuilt model (names listed).
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in (WEIGHTS_FILE, META_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} is missing: not a checkpoint folder")
    meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    fmt = meta.get("format")
    if fmt != CHECKPOINT_FORMAT and fmt not in _OLDER_FORMATS:
        raise ValueError(f"{directory}: format {fmt!r}, expected {CHECKPOINT_FORMAT!r}; re-run the training")
    state = load_file(str(directory / WEIGHTS_FILE))
    saved = dict(meta["pooling"])
    saved["mode"] = _OLDER_FORMATS.get(fmt, {}).get(saved["mode"], saved["mode"])
    pooling = Pooling(**saved)
    model = load_ctr_model(meta["model_name"], architecture=meta["architecture"], dropout=meta["dropout"],
                           pooling=pooling)
    if meta["lora"] is not None:
        lora = meta["lora"]
        add_lora(model, r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"],
                 target_modules=lora["target_modules"])
        expected = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(state) != expected:
            raise ValueError(
                f"{directory}: adapter weights do not fit: missing {sorted(expected - set(state))[:3]}, "
                f"unexpected {sorted(set(state) - expected)[:3]}"
            )
        model.load_state_dict(state, strict=False)
    else:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{directory}: weights do not fit {meta['model_name']}: {exc}") from exc
    return model.to(device).eval()
