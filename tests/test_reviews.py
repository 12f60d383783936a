"""ecrec.reviews: text join, split, labels, the multi-head loss, metrics against scikit-learn,
the item sentiment curve, error messages, and a tiny-model training run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score, log_loss, mean_absolute_error, roc_auc_score

from ecrec import reviews as R
from ecrec.bert import add_lora, fresh_parameter_names
from ecrec.finetune import optimizer_groups

# ---------------------------------------------------------------- text, split, labels


def test_join_review_text_rule():
    title = pd.Series(["Love it!", "Great  dress", None, "  ", "Ok", None])
    body = pd.Series(["Fits well.", "runs\nsmall", "Only text", "Body only", "", None])
    got = R.join_review_text(title, body).tolist()
    assert got[:5] == ["Love it! Fits well.", "Great dress. runs small", "Only text", "Body only", "Ok"]
    assert pd.isna(got[5])


def test_join_review_text_needs_one_index():
    with pytest.raises(ValueError, match="one index"):
        R.join_review_text(pd.Series(["a"], index=[1]), pd.Series(["b"], index=[2]))


def _frame(n=200, seed=0):
    rng = np.random.default_rng(seed)
    rating = rng.integers(1, 6, n)
    return pd.DataFrame({
        "Title": np.where(rng.random(n) < 0.2, None, "t"),
        "Review Text": [f"review {i}" for i in range(n)],
        "Rating": rating,
        "Recommended IND": (rating >= 4).astype(int),
        "Department Name": rng.choice(R.DEPARTMENTS, n),
    })


def test_prepare_reviews_drops_no_text_and_no_label():
    df = _frame(10)
    df.loc[0, ["Title", "Review Text"]] = None
    df.loc[1, "Department Name"] = None
    kept, report = R.prepare_reviews(df)
    assert report == {"rows": 10, "no_text": 1, "no_label": 1, "kept": 8}
    assert list(kept.index) == list(range(2, 10))
    assert kept[R.TEXT].map(lambda t: isinstance(t, str)).all()


def test_stratified_split_deterministic_disjoint_stratified():
    df = _frame(1000)
    a = R.stratified_split(df, valid=0.1, test=0.2, seed=3)
    b = R.stratified_split(df, valid=0.1, test=0.2, seed=3)
    assert a.equals(b)  # same seed, same split
    assert not a.equals(R.stratified_split(df, valid=0.1, test=0.2, seed=4))
    assert a.notna().all() and set(a) == {"train", "valid", "test"}  # every row in exactly one part
    assert a.value_counts().to_dict() == {"train": 700, "test": 200, "valid": 100}
    # each (rating, department) stratum keeps its share: within one row of its expected count per part
    key = df["Rating"].astype(str) + "|" + df["Department Name"]
    for stratum, rows in df.groupby(key).groups.items():
        share = a[rows].value_counts()
        for part, frac in (("test", 0.2), ("valid", 0.1)):
            assert abs(share.get(part, 0) - frac * len(rows)) <= 1.5, (stratum, part)


def test_stratified_sample():
    df = _frame(600)
    s = R.stratified_sample(df, 60, ["Department Name"], seed=1)
    assert len(s) == 60 and s.index.is_monotonic_increasing and s.index.is_unique
    assert s.equals(R.stratified_sample(df, 60, ["Department Name"], seed=1))
    counts = s["Department Name"].value_counts()
    expected = df["Department Name"].value_counts() / 10
    assert (counts.reindex(expected.index) - expected).abs().max() <= 1
    assert R.stratified_sample(df, None, ["Rating"]) is df


def test_encode_labels_codes_in_class_order():
    df = _frame(20)
    y = R.encode_labels(df)
    assert (y["rating"] == df["Rating"].to_numpy() - 1).all()
    assert (y["recommended"] == df["Recommended IND"].to_numpy()).all()
    assert [R.DEPARTMENTS[i] for i in y["department"]] == df["Department Name"].tolist()


def test_encode_labels_errors_name_the_column_and_the_fix():
    df = _frame(20)
    with pytest.raises(KeyError, match="'Rating'.*rename the column"):
        R.encode_labels(df.drop(columns="Rating"))
    with pytest.raises(ValueError, match="'Recommended IND' is constant.*drop the task 'recommended'"):
        R.encode_labels(df.assign(**{"Recommended IND": 1}))
    with pytest.raises(ValueError, match=r"'Rating' holds \['6'\].*classes=.*6 head outputs"):
        R.encode_labels(df.assign(Rating=np.r_[6, df["Rating"].to_numpy()[1:]]))
    with pytest.raises(ValueError, match="'Department Name' has 1 missing.*prepare_reviews"):
        R.encode_labels(df.assign(**{"Department Name": [None, *df["Department Name"][1:]]}))


def test_review_task_checks():
    with pytest.raises(ValueError, match="binary task has classes"):
        R.ReviewTask("x", "c", "binary", (1, 2))
    assert R.REVIEW_TASKS[1].n_outputs == 5 and R.REVIEW_TASKS[0].n_outputs == 1


class _Tok:
    """A whitespace tokenizer with the fast tokenizer's call signature (ids = word lengths + 10)."""

    def __call__(self, texts, truncation, max_length, padding):
        return {"input_ids": [[101, *[10 + len(w) for w in t.split()][: max_length - 2], 102] for t in texts]}


def test_encode_reviews_refuses_nan_text():
    df = _frame(5).assign(text=["a b", None, "c", "d", "e"])
    with pytest.raises(ValueError, match="text column 'text' has 1 missing.*join_review_text"):
        R.encode_reviews(_Tok(), df)
    with pytest.raises(KeyError, match="prepare_reviews"):
        R.encode_reviews(_Tok(), _frame(5))
    enc = R.encode_reviews(_Tok(), df.assign(text=["a bb", "c", "d", "e", "f g h"]), max_length=8)
    assert enc.input_ids[0] == [101, 11, 12, 102] and enc.lengths.tolist() == [4, 3, 3, 3, 5]
    b = enc.batch([0, 1])
    assert b["input_ids"].tolist() == [[101, 11, 12, 102], [101, 11, 102, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


# ---------------------------------------------------------------- loss


def test_multitask_loss_by_hand():
    tasks = (R.ReviewTask("b", "B", "binary", (0, 1), weight=1.0),
             R.ReviewTask("m", "M", "multiclass", (1, 2, 3), weight=0.5))
    logits = {"b": torch.tensor([[0.0], [2.0]]), "m": torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])}
    labels = {"b": torch.tensor([1, 0]), "m": torch.tensor([2, 0])}
    total, parts = R.multitask_loss(logits, labels, tasks)
    bce = (np.log(2) + np.log1p(np.exp(2.0))) / 2  # -log sigmoid(0), -log(1 - sigmoid(2))
    ce = (np.log(3) + (np.log(np.e + 2) - 1)) / 2  # -log(1/3), -log(e / (e + 2))
    assert parts["b"] == pytest.approx(bce, rel=1e-6) and parts["m"] == pytest.approx(ce, rel=1e-6)
    assert float(total) == pytest.approx(bce + 0.5 * ce, rel=1e-6)


def test_multitask_loss_wrong_outputs():
    task = R.ReviewTask("rating", "Rating", "multiclass", (1, 2, 3, 4, 5))
    with pytest.raises(ValueError, match="column 'Rating'.*expected \\(batch, 5\\)"):
        R.multitask_loss({"rating": torch.zeros(2, 4)}, {"rating": torch.tensor([0, 1])}, [task])


# ---------------------------------------------------------------- metrics against scikit-learn


def _outputs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = {"recommended": rng.integers(0, 2, n), "rating": rng.integers(0, 5, n), "department": rng.integers(0, 6, n)}
    out = {"recommended": (y["recommended"] + rng.normal(0, 1, n)).astype(np.float32),
           "rating": (np.eye(5)[y["rating"]] * 1.5 + rng.normal(0, 1, (n, 5))).astype(np.float32),
           "department": (np.eye(6)[y["department"]] + rng.normal(0, 1, (n, 6))).astype(np.float32)}
    return y, out


@pytest.mark.parametrize("weighted", [False, True])
def test_review_metrics_match_sklearn(weighted):
    y, out = _outputs()
    w = np.random.default_rng(1).integers(0, 3, len(y["rating"])).astype(float) if weighted else None
    got = R.review_metrics(y, out, weights=w)
    p = 1 / (1 + np.exp(-out["recommended"].astype(np.float64)))
    assert got["recommended/auc"] == pytest.approx(roc_auc_score(y["recommended"], out["recommended"], sample_weight=w))
    assert got["recommended/log_loss"] == pytest.approx(log_loss(y["recommended"], p, sample_weight=w), rel=1e-6)
    r_pred = out["rating"].argmax(1)
    assert got["rating/macro_f1"] == pytest.approx(
        f1_score(y["rating"], r_pred, average="macro", labels=range(5), zero_division=0, sample_weight=w))
    assert got["rating/mae"] == pytest.approx(mean_absolute_error(y["rating"], r_pred, sample_weight=w))
    d_pred = out["department"].argmax(1)
    assert got["department/macro_f1"] == pytest.approx(
        f1_score(y["department"], d_pred, average="macro", labels=range(6), zero_division=0, sample_weight=w))
    assert "department/mae" not in got  # departments are not numbers


def test_macro_f1_absent_class_scores_zero_as_sklearn():
    y = {"rating": np.array([0, 0, 1, 1])}
    out = {"rating": np.eye(5)[[0, 1, 1, 1]].astype(np.float32)}
    got = R.review_metrics(y, out, tasks=[R.REVIEW_TASKS[1]])
    assert got["rating/macro_f1"] == pytest.approx(
        f1_score([0, 0, 1, 1], [0, 1, 1, 1], average="macro", labels=range(5), zero_division=0))


def test_bootstrap_review_metrics_paired_and_deterministic():
    y, good = _outputs(400, 0)
    _, noise = _outputs(400, 5)
    bad = {k: v * 0.0 + noise[k] for k, v in good.items()}
    a = R.bootstrap_review_metrics(y, {"good": good, "bad": bad}, pairs=[("good", "bad")], n_boot=200, seed=0)
    b = R.bootstrap_review_metrics(y, {"good": good, "bad": bad}, pairs=[("good", "bad")], n_boot=200, seed=0)
    pd.testing.assert_frame_equal(a, b)
    point = R.review_metrics(y, good)
    for metric, value in point.items():
        row = a.loc[("good", metric)]
        assert row["value"] == pytest.approx(value) and row["low"] <= value <= row["high"]
    d = a.loc[("good - bad", "recommended/auc")]
    assert d["value"] == pytest.approx(point["recommended/auc"] - R.review_metrics(y, bad)["recommended/auc"])
    assert d["excludes_0"] and d["low"] > 0  # "bad" is pure noise: the paired interval clears 0
    with pytest.raises(KeyError, match="names a model"):
        R.bootstrap_review_metrics(y, {"good": good}, pairs=[("good", "nope")], n_boot=5)


def test_expected_rating():
    z = np.log(np.array([[0.1, 0.2, 0.3, 0.2, 0.2]]))
    assert R.expected_rating(z)[0] == pytest.approx(0.1 + 0.4 + 0.9 + 0.8 + 1.0)


# ---------------------------------------------------------------- item sentiment


def test_item_sentiment_curve_by_hand():
    # item A: 4 reviews of 4 stars, the model says 3.5 everywhere -> star mean exact, model off by 0.5
    # item B: 2 reviews (1 and 5 stars), a perfect model -> both off by 4 at k = 1, whichever is seen
    items = np.array(["A"] * 4 + ["B"] * 2)
    stars = np.array([4, 4, 4, 4, 1, 5], dtype=float)
    scores = np.array([3.5] * 4 + [1.0, 5.0])
    curve = R.item_sentiment_curve(items, stars, scores, ks=[1, 3], prior=3.0, n_perm=5, seed=0)
    assert curve.loc[1, "items"] == 2 and curve.loc[3, "items"] == 1  # B has no review left at k = 3
    assert curve.loc[1, "mae_star_mean"] == pytest.approx((0 + 4) / 2)
    assert curve.loc[1, "mae_score_mean"] == pytest.approx((0.5 + 4) / 2)
    assert curve.loc[1, "mae_prior"] == pytest.approx((1 + 2) / 2)  # B's target is 1 or 5: 2 away from 3
    assert curve.loc[3, "mae_score_mean"] == pytest.approx(0.5) and curve.loc[3, "mae_star_mean"] == 0
    assert np.isnan(curve.loc[1, "corr_score_mean"])  # 2 items: no correlation


def test_item_sentiment_curve_unscored_reviews_count_in_the_target():
    # A: only its 5-star review is scored (4.5), so it is always the one seen; the target is the mean of
    # the 3 unscored reviews (1, 2, 3 -> 2). B: 4 stars everywhere, scored 4. C: 3 stars, scored 3.5.
    items = np.array(["A"] * 4 + ["B"] * 3 + ["C"] * 3)
    stars = np.array([5, 1, 2, 3, 4, 4, 4, 3, 3, 3], dtype=float)
    scores = np.array([4.5, np.nan, np.nan, np.nan, 4.0, 4.0, 4.0, 3.5, 3.5, 3.5])
    curve = R.item_sentiment_curve(items, stars, scores, ks=[1, 2], prior=3.0, n_perm=7, seed=1)
    assert curve.loc[1, "items"] == 3 and curve.loc[2, "items"] == 2  # A has one scored review only
    assert curve.loc[1, "mae_score_mean"] == pytest.approx((2.5 + 0 + 0.5) / 3)
    assert curve.loc[1, "mae_star_mean"] == pytest.approx((3 + 0 + 0) / 3)
    assert curve.loc[1, "mae_prior"] == pytest.approx((1 + 1 + 0) / 3)
    assert curve.loc[2, "mae_score_mean"] == pytest.approx((0 + 0.5) / 2) and curve.loc[2, "mae_star_mean"] == 0
    # k = 1 across the 3 items: scores (4.5, 4, 3.5) and stars (5, 4, 3) against targets (2, 4, 3)
    assert curve.loc[1, "corr_score_mean"] == pytest.approx(np.corrcoef([4.5, 4, 3.5], [2, 4, 3])[0, 1])
    assert curve.loc[1, "corr_star_mean"] == pytest.approx(np.corrcoef([5, 4, 3], [2, 4, 3])[0, 1])


def test_item_sentiment_curve_checks():
    with pytest.raises(ValueError, match="differ in length"):
        R.item_sentiment_curve(np.zeros(3), np.zeros(2), np.zeros(3), [1], prior=4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        R.item_sentiment_curve(np.zeros(3), np.zeros(3), np.zeros(3), [0], prior=4)


# ---------------------------------------------------------------- the model on a tiny BERT


def _tiny_model(tiny_st, tasks=R.REVIEW_TASKS, seed=0):
    return R.load_review_model(tasks, tiny_st, dropout=0.0, seed=seed)


def _tiny_data(n=64, seed=0):
    """Reviews whose labels follow their words: token 2000 + r for a review of r stars."""
    rng = np.random.default_rng(seed)
    rating = rng.integers(0, 5, n)
    dept = rng.integers(0, 6, n)
    ids = [[101, 2000 + int(r), 3000 + int(d), *rng.integers(4000, 5000, int(rng.integers(2, 8))).tolist(), 102]
           for r, d in zip(rating, dept, strict=True)]
    labels = {"recommended": (rating >= 3).astype(np.int64), "rating": rating.astype(np.int64),
              "department": dept.astype(np.int64)}
    return R.EncodedReviews(ids, labels, R.REVIEW_TASKS, 16)


def test_model_heads_fresh_and_lr_groups(tiny_st):
    model = _tiny_model(tiny_st)
    assert model.pooling.mode == "mean" and model.pooling.normalize  # the checkpoint's own pooling
    fresh = fresh_parameter_names(model)
    assert sorted(fresh) == sorted(f"head.{t.name}.{p}" for t in R.REVIEW_TASKS for p in ("weight", "bias"))
    assert float(model.head["rating"].bias.detach().abs().max()) == 0.0
    assert 0.01 < float(model.head["rating"].weight.detach().std()) < 0.03  # BERT's N(0, 0.02)
    groups = optimizer_groups(model, 1e-4, 1e-3, 0.01)
    head_lr = {n for g in groups if g["lr"] == 1e-3 for n in g["names"]}
    assert head_lr == set(fresh)
    out = model(**_tiny_data(4).batch([0, 1, 2]))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"recommended": (3, 1), "rating": (3, 5), "department": (3, 6)}


def test_check_heads_names_column_and_fix(tiny_st):
    model = R.load_review_model([R.ReviewTask("rating", "Rating", "multiclass", (1, 2, 3, 4))], tiny_st)
    with pytest.raises(ValueError, match=r"head 'rating' has 4 outputs but label column 'Rating' needs 5.*heads="):
        R.check_heads(model, [R.REVIEW_TASKS[1]])
    with pytest.raises(ValueError, match="no head for task 'department'"):
        R.check_heads(model, [R.REVIEW_TASKS[2]])
    data = _tiny_data(8)  # all three tasks: the loop checks the heads before any step
    with pytest.raises(ValueError, match="no head for task 'recommended'"):
        R.train_review_model(model, data.subset(range(4)), data.subset(range(4, 8)),
                          R.ReviewTrainConfig(progress=False), device="cpu")


def test_probe_init_makes_step0_logits_the_probes(tiny_st):
    model = _tiny_model(tiny_st)
    data = _tiny_data(48)
    x = R.review_features(model, data, device="cpu")
    probes = R.fit_linear_heads(x, data.labels, x, data.labels, R.REVIEW_TASKS, cs=(1.0,))
    R.init_heads_from_probes(model, probes)
    got = R.predict_outputs(model, data, device="cpu")
    want = R.linear_outputs(probes, x)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-4)


def test_start_logits_from_the_probes_replace_the_step0_pass(tiny_st):
    """Given step-0 logits (the probes' on frozen features), the run is the one that scores step 0 itself."""
    data = _tiny_data(96)
    train, valid = data.subset(range(64)), data.subset(range(64, 96))
    config = R.ReviewTrainConfig(epochs=2, batch_size=16, lr=3e-3, head_lr=0.1, warmup_ratio=0.0, eval_every=4,
                                 patience=100, progress=False, seed=3)
    runs = []
    for given in (False, True):
        model = _tiny_model(tiny_st)
        x_train, x_valid = (R.review_features(model, d, device="cpu") for d in (train, valid))
        probes = R.fit_linear_heads(x_train, train.labels, x_valid, valid.labels, R.REVIEW_TASKS, cs=(1.0,))
        R.init_heads_from_probes(model, probes)
        start = R.linear_outputs(probes, x_valid) if given else None
        runs.append(R.train_review_model(model, train, valid, config, device="cpu", start_valid_logits=start))
    plain, from_probes = runs
    assert from_probes.start_valid_loss == pytest.approx(plain.start_valid_loss, abs=1e-5)
    assert [s["loss"] for s in from_probes.steps] == [s["loss"] for s in plain.steps]  # same steps after it
    assert [h["valid_loss"] for h in from_probes.history[1:]] == [h["valid_loss"] for h in plain.history[1:]]

    model = _tiny_model(tiny_st)  # heads not initialised from the probes: the given logits are not its own
    x_valid = R.review_features(model, valid, device="cpu")
    probes = R.fit_linear_heads(x_valid, valid.labels, x_valid, valid.labels, R.REVIEW_TASKS, cs=(1.0,))
    with pytest.raises(ValueError, match=r"start_valid_logits\['\w+'\] are not this model's.*init_heads_from_probes"):
        R.train_review_model(model, train, valid, config, device="cpu",
                             start_valid_logits=R.linear_outputs(probes, x_valid))
    short = {k: v[:5] for k, v in R.linear_outputs(probes, x_valid).items()}
    with pytest.raises(ValueError, match=r"shape \(5,\); expected \(32,\) \(one row per validation review\)"):
        R.train_review_model(model, train, valid, config, device="cpu", start_valid_logits=short)
    with pytest.raises(ValueError, match=r"has tasks \['recommended'\]; the validation data has"):
        R.train_review_model(model, train, valid, config, device="cpu",
                             start_valid_logits={"recommended": short["recommended"]})


def test_training_reduces_loss_and_is_deterministic(tiny_st):
    data = _tiny_data(96)
    train, valid = data.subset(range(64)), data.subset(range(64, 96))
    config = R.ReviewTrainConfig(epochs=6, batch_size=16, lr=3e-3, head_lr=0.1, warmup_ratio=0.0, eval_every=4,
                               patience=100, progress=False, seed=3)
    runs = []
    for _ in range(2):
        model = _tiny_model(tiny_st)
        runs.append((R.train_review_model(model, train, train, config, device="cpu"),
                     R.predict_outputs(model, valid, device="cpu")))
    res = runs[0][0]
    assert res.history[0]["step"] == 0 and res.history[0]["train_loss"] is None
    assert len(res.steps) == 24 and {"loss_rating", "grad_norm", "lr"} <= set(res.steps[0])
    # overfitting 64 reviews (valid = train here): the loss falls well below its start (4.10 -> 1.59 recorded)
    assert res.best_valid_loss < 0.5 * res.start_valid_loss
    assert res.best_valid_loss <= min(h["valid_loss"] for h in res.history)
    # same seed, same numbers (CPU)
    assert [s["loss"] for s in res.steps] == [s["loss"] for s in runs[1][0].steps]
    for name in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][name], runs[1][1][name])


def test_early_stopping_never_ends_below_start(tiny_st):
    data = _tiny_data(64)
    model = _tiny_model(tiny_st)
    # an absurd learning rate: every step makes validation worse; step 0's weights are kept
    config = R.ReviewTrainConfig(batch_size=16, lr=5.0, head_lr=5.0, warmup_ratio=0.0, eval_every=1, patience=2,
                               progress=False)
    before = R.predict_outputs(model, data, device="cpu")
    res = R.train_review_model(model, data.subset(range(32)), data.subset(range(32, 64)), config, device="cpu")
    assert res.best_valid_loss <= res.start_valid_loss
    if res.best_step == 0:
        after = R.predict_outputs(model, data, device="cpu")
        for name in before:
            np.testing.assert_array_equal(before[name], after[name])


def test_lora_trains_adapters_and_heads_only(tiny_st):
    model = add_lora(_tiny_model(tiny_st), r=2, alpha=4)
    state = R.trainable_state(model)
    assert state and all("lora_" in n or n.startswith("head.") for n in state)
    assert {n for n in state if n.startswith("head.")} == {
        f"head.{t.name}.{p}" for t in R.REVIEW_TASKS for p in ("weight", "bias")}
    # the saved state restores the model: load it into a fresh LoRA model
    data = _tiny_data(8)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)  # adapters that change the output
    want = R.predict_outputs(model, data, device="cpu")
    other = add_lora(_tiny_model(tiny_st, seed=7), r=2, alpha=4)
    missing, unexpected = other.load_state_dict(R.trainable_state(model), strict=False)
    assert not unexpected and not any("lora_" in n or n.startswith("head.") for n in missing)
    got = R.predict_outputs(other, data, device="cpu")
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-6)


# ---------------------------------------------------------------- learning curves at equal data


def test_nested_samples_are_nested_stratified_and_seeded():
    df = _frame(600)
    s = R.nested_samples(df, [30, 60, 120, 600], ["Department Name"], seed=3)
    assert [len(s[n]) for n in (30, 60, 120, 600)] == [30, 60, 120, 600]
    assert set(s[30].index) <= set(s[60].index) <= set(s[120].index) <= set(s[600].index)
    assert s[600].equals(df) and s[60].index.is_monotonic_increasing
    shares = df["Department Name"].value_counts() / len(df)
    for n in (60, 120):  # every stratum within one row (plus rounding) of its share
        counts = s[n]["Department Name"].value_counts().reindex(shares.index, fill_value=0)
        assert (counts - shares * n).abs().max() <= 1.5, n
    again = R.nested_samples(df, [60], ["Department Name"], seed=3)[60]
    assert again.equals(s[60]) and not R.nested_samples(df, [60], ["Department Name"], seed=4)[60].equals(s[60])
    with pytest.raises(ValueError, match="outside"):
        R.nested_samples(df, [0, 601], ["Rating"])


def test_nested_samples_cover_every_class():
    df = _frame(600, seed=2)
    df.loc[df.index[:3], "Department Name"] = "Rare"  # 3 rows of 600: absent from most samples of 12
    s = R.nested_samples(df, [12, 24, 48], ["Department Name"], seed=0, cover=["Rating", "Department Name"])
    for n in (12, 24, 48):
        assert set(s[n]["Rating"]) == set(df["Rating"]) and set(s[n]["Department Name"]) == set(df["Department Name"])
    assert set(s[12].index) <= set(s[24].index) <= set(s[48].index)
    with pytest.raises(ValueError, match="at least"):
        R.nested_samples(df, [5], ["Rating"], cover=["Rating", "Department Name"])


def test_max_length_for_by_hand():
    lengths = np.array([5, 10, 20, 30, 40, 50, 60, 70, 80, 200])
    assert R.max_length_for(lengths, 0.9) == 80  # 9 of 10 texts have <= 80 tokens
    assert R.max_length_for(lengths, 0.5) == 40  # 5 of 10 have <= 40 tokens
    assert R.max_length_for(lengths, 0.55) == 56  # 6 of 10 need 50, rounded up to a multiple of 8
    assert R.max_length_for(lengths, 1.0) == 200
    assert R.max_length_for(lengths, 1.0, cap=128) == 128
    assert R.max_length_for([3], 1.0) == 8  # at least one multiple
    with pytest.raises(ValueError, match="coverage"):
        R.max_length_for(lengths, 0.0)


def test_tfidf_outputs_match_a_scikit_learn_pipeline():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    words = np.array(["soft", "lovely", "fits", "returned", "cheap", "tight", "great", "itchy"])
    n = 240
    good = rng.random(n) < 0.5
    text = [" ".join(rng.choice(words[:3] if g else words[3:6], 4)) + " " + rng.choice(words[6:]) for g in good]
    df = pd.DataFrame({"text": text, "Recommended IND": good.astype(int),
                       "Rating": np.where(good, rng.integers(4, 6, n), rng.integers(1, 4, n)),
                       "Department Name": rng.choice(R.DEPARTMENTS, n)})
    train, valid, test = df.iloc[:160], df.iloc[160:200], df.iloc[200:]
    tasks = [t for t in R.REVIEW_TASKS if t.name == "recommended"]
    out = R.tfidf_outputs(train, valid, test, tasks, cs=(1.0,))
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=30000, sublinear_tf=True).fit(train.text)
    lr = LogisticRegression(C=1.0, max_iter=2000, tol=1e-3).fit(vec.transform(train.text), train["Recommended IND"])
    assert out["recommended"] == pytest.approx(lr.decision_function(vec.transform(test.text)), abs=1e-5)
    assert roc_auc_score(test["Recommended IND"], out["recommended"]) > 0.9  # the words carry the label


def _curve_points():
    """Two sizes x two seeds: "ft" is the labels plus noise that shrinks with n, "bow" a fixed noisy score."""
    rng = np.random.default_rng(1)
    y = {"recommended": rng.integers(0, 2, 500)}
    bow = {"recommended": (y["recommended"] * 1.0 + rng.normal(0, 1, 500)).astype(np.float32)}
    points = {}
    for n, noise in ((100, 4.0), (1000, 0.3)):
        for s in (0, 1):
            ft = {"recommended": (y["recommended"] + rng.normal(0, noise, 500)).astype(np.float32)}
            points[(n, s)] = {"ft": ft, "bow": bow}
    return y, points


def test_curve_table_verdicts_and_crossover():
    tasks = [t for t in R.REVIEW_TASKS if t.name == "recommended"]
    y, points = _curve_points()
    table = R.curve_table(y, points, tasks, pairs=[("ft", "bow")], n_boot=200, seed=0)
    assert set(table.n) == {100, 1000} and set(table.seed) == {0, 1} and (table.level == 0.95).all()
    row = table[(table.n == 1000) & (table.seed == 0) & (table.model == "ft - bow") & (table.metric == "recommended/auc")]
    by_hand = roc_auc_score(y["recommended"], points[(1000, 0)]["ft"]["recommended"]) - roc_auc_score(
        y["recommended"], points[(1000, 0)]["bow"]["recommended"])
    assert row.value.iloc[0] == pytest.approx(by_hand, abs=1e-9)
    pd.testing.assert_frame_equal(table, R.curve_table(y, points, tasks, pairs=[("ft", "bow")], n_boot=200, seed=0))
    v = R.curve_verdicts(table, "ft", "bow", "recommended/auc", main_seed=0)
    assert v.n.tolist() == [100, 1000] and v.seeds.tolist() == [2, 2]
    assert v.word.tolist() == ["a loss", "a gain"]  # noise 4 loses to noise 1; noise 0.3 beats it
    sentence = R.crossover_sentence(v, "ft", "bow", "AUC")
    assert sentence.startswith("ft overtakes bow in AUC from 1,000 training reviews on") and "100: " in sentence
    kept = R.curve_verdicts(table, "ft", "bow", "recommended/auc", main_seed=0, kept_start={1000: True})
    assert kept.word.tolist()[1] == "= its probe (fine-tuning did not move it)"
    assert "no size from which it wins at every larger one" in R.crossover_sentence(kept, "ft", "bow", "AUC")
    rows = R.curve_thesis_rows(v, question="q", metric="AUC", lm="ft", baseline="bow", table=table,
                               metric_key="recommended/auc")
    assert [r["train_size"] for r in rows] == [100, 1000] and [r["verdict"] for r in rows] == ["a loss", "a gain"]
    assert rows[1]["diff"] == pytest.approx(round(by_hand, 4)) and rows[1]["chapter"] == "07"
    assert len(rows[1]["seed_range"]) == 2
    with pytest.raises(ValueError, match="no curve points"):
        R.curve_table(y, {}, tasks, pairs=[])


def test_crossover_sentence_every_size_and_none():
    v = pd.DataFrame({"n": [10, 20], "word": ["a gain", "a gain"], "text": ["+0.1 [...]", "+0.2 [...]"]})
    assert R.crossover_sentence(v, "a", "b", "AUC").startswith("a beats b in AUC at every training size, from 10")
    v = v.assign(word=["a loss", "a loss"])
    assert "b beats a in AUC at every training size up to 20 reviews: no crossover" in R.crossover_sentence(
        v, "a", "b", "AUC")
    v = v.assign(word=["a gain", "within noise"])  # ahead at the smallest size: never "does not overtake"
    sentence = R.crossover_sentence(v, "a", "b", "AUC")
    assert sentence.startswith("a in AUC is ahead of b at 10; level with b (within noise or unmoved) at 20 "
                               "training reviews: no size from which it wins at every larger one (up to 20)")
    assert "behind" not in sentence and "overtake" not in sentence
    v = pd.DataFrame({"n": [10, 20, 40], "word": ["a loss", "within noise", "a gain"][::-1], "text": ["x"] * 3})
    assert "ahead of b at 10; behind b at 40; level with b (within noise or unmoved) at 20" in R.crossover_sentence(
        v, "a", "b", "AUC")
