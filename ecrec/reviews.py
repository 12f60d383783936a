"""Chapter 07: review text that a fine-tuned encoder really reads (what the chapter imports).

One name space for the chapter and its solutions, re-exported from the
modules of one concept each:

* :mod:`ecrec.review_data`: the tasks, one text per review, the stratified
  split and samples (nested, for learning curves), labels, tokenized reviews;
* :mod:`ecrec.review_model`: the multi-head MiniLM model, its loss, its
  training loop (:func:`train_review_model`), prediction, the probes' warm start;
* :mod:`ecrec.review_metrics`: linear models on fixed features (TF-IDF, a
  frozen encoder), the metrics with bootstrap intervals, the item sentiment curve;
* :mod:`ecrec.review_curves`: learning curves at equal data (fine-tuned
  MiniLM vs TF-IDF + LR vs frozen MiniLM + LR at growing training sizes).
"""

from __future__ import annotations

from ecrec.review_curves import (
    CurvePoint,
    crossover_sentence,
    curve_table,
    curve_thesis_rows,
    curve_verdicts,
    max_length_for,
    tfidf_outputs,
)
from ecrec.review_data import (
    DEPARTMENTS,
    REVIEW_TASKS,
    TEXT,
    EncodedReviews,
    ReviewTask,
    encode_labels,
    encode_reviews,
    join_review_text,
    nested_samples,
    prepare_reviews,
    stratified_sample,
    stratified_split,
)
from ecrec.review_metrics import (
    bootstrap_review_metrics,
    expected_rating,
    fit_linear_heads,
    item_sentiment_curve,
    linear_outputs,
    review_metrics,
)
from ecrec.review_model import (
    START_CHECK_ROWS,
    MultiTaskReviewModel,
    ReviewTrainConfig,
    ReviewTrainResult,
    check_heads,
    init_heads_from_probes,
    load_review_model,
    multitask_loss,
    predict_outputs,
    review_features,
    train_review_model,
    trainable_state,
)

__all__ = [
    "TEXT", "ReviewTask", "REVIEW_TASKS", "DEPARTMENTS", "join_review_text", "prepare_reviews",
    "stratified_split", "stratified_sample", "nested_samples", "encode_labels", "EncodedReviews",
    "encode_reviews", "MultiTaskReviewModel", "load_review_model", "check_heads", "multitask_loss",
    "ReviewTrainConfig", "ReviewTrainResult", "train_review_model", "predict_outputs", "review_features",
    "fit_linear_heads", "linear_outputs", "init_heads_from_probes", "trainable_state", "START_CHECK_ROWS", "expected_rating",
    "review_metrics", "bootstrap_review_metrics", "item_sentiment_curve", "CurvePoint", "curve_table",
    "curve_verdicts", "crossover_sentence", "curve_thesis_rows", "max_length_for", "tfidf_outputs",
]
