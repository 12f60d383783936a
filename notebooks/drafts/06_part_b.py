# %% [markdown]
# <!-- Part B sizes: merge into the chapter's SIZES (every key prefixed rev_); the lines below,
# uncommented, are valid Python.
# REV_SIZES = {
#     # CI, 2 CPU cores fp32: three short fine-tuning runs (single-task recommended, multi-task, LoRA) of 12
#     # steps on 192 reviews, 64 tokens; 400 test reviews are enough for fine-tuned vs frozen to clear 0.
#     # Measured (Part B alone, 2 CPU cores): 0.9 min at load ~2, 6.2 min at load ~5 (other jobs).
#     "smoke": {"rev_n_train": 192, "rev_n_valid": 128, "rev_n_test": 400, "rev_tfidf_n": 2000,
#               "rev_max_length": 64, "rev_batch_size": 16, "rev_epochs": 1, "rev_eval_every": 6,
#               "rev_lr": 1e-4, "rev_head_lr": 1e-3, "rev_lora_lr": 1e-3, "rev_single_tasks": ("recommended",),
#               "rev_n_boot": 300, "rev_items": 12, "rev_item_reviews": 12, "rev_item_ks": (1, 2, 4, 8),
#               "rev_overfit_n": 16, "rev_overfit_steps": 8},
#     # "auto" without a GPU: 512 training reviews (32 steps per run), 1,200 test reviews, TF-IDF on all
#     # 15,840 training reviews, 30 items for the sentiment curve; still the three runs.
#     # Measured (Part B alone, 2 CPU cores, load 1-2.6): 5.3 min.
#     "cpu": {"rev_n_train": 512, "rev_n_valid": 256, "rev_n_test": 1200, "rev_tfidf_n": None,
#             "rev_max_length": 64, "rev_batch_size": 16, "rev_epochs": 1, "rev_eval_every": 8,
#             "rev_lr": 1e-4, "rev_head_lr": 1e-3, "rev_lora_lr": 1e-3, "rev_single_tasks": ("recommended",),
#             "rev_n_boot": 1000, "rev_items": 30, "rev_item_reviews": 24, "rev_item_ks": (1, 2, 4, 8, 16),
#             "rev_overfit_n": 16, "rev_overfit_steps": 8},
#     # one Colab GPU: every review of the split, 256 tokens, 2 epochs, a single-task run per task.
#     "full": {"rev_n_train": None, "rev_n_valid": None, "rev_n_test": None, "rev_tfidf_n": None,
#              "rev_max_length": 256, "rev_batch_size": 32, "rev_epochs": 2, "rev_eval_every": 100,
#              "rev_lr": 5e-5, "rev_head_lr": 1e-3, "rev_lora_lr": 5e-4,
#              "rev_single_tasks": ("recommended", "rating", "department"),
#              "rev_n_boot": 1000, "rev_items": 60, "rev_item_reviews": 40, "rev_item_ks": (1, 2, 4, 8, 16, 32),
#              "rev_overfit_n": 64, "rev_overfit_steps": 24},
# }
# -->
# # Part B. Review text that a fine-tuned encoder really reads
#
# In chapter 04 the label was a purchase, and much of it was explained by
# *which* item it was: popular items get bought. Text had little left to add,
# and fine-tuning the encoder had little room to help. Product reviews are the
# opposite case. Whether a shopper recommends a dress, and how many stars she
# gives it, is written in her words: "runs small, the fabric is see-through,
# sending it back". Here the text **carries the label**, and a fine-tuned
# encoder should clearly beat a frozen one. This part measures by how much.
#
# The data: *Women's E-Commerce Clothing Reviews* (Brooks, 2018; CC0), one row
# per review, with a title, the review text, a star rating, a "recommended"
# flag and the product's department. One MiniLM encoder gets three heads:
#
# * **recommended** (0/1): the click-like label, scored with AUC and log loss;
# * **rating** (1-5 stars): scored with macro-F1 and MAE in stars;
# * **department** (6 values): the review's topic, scored with macro-F1.
#
# **In Part B you will learn to**
#
# * build one text per review by a stated rule and split the reviews in a
#   fixed, stratified, seeded way;
# * compare TF-IDF, a frozen encoder, single-task and multi-task fine-tuning
#   and LoRA on the same test reviews, with bootstrap intervals;
# * read a multi-task training run: one loss curve per task;
# * turn per-review scores into an **item-level sentiment feature** and see how
#   many reviews it needs.

# %%
import inspect
import time

import torch
from safetensors.torch import load_file, save_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

from ecrec import bert, finetune
from ecrec import reviews as rv
from ecrec.data import load_reviews
from ecrec.text import load_tokenizer

PART_B_STARTED = time.time()
rev_tasks = rv.REVIEW_TASKS
pd.DataFrame([{"task": t.name, "label column": t.column, "kind": t.kind, "head outputs": t.n_outputs,
               "classes": ", ".join(map(str, t.classes))} for t in rev_tasks]).set_index("task")

# %% [markdown]
# Rating is modelled as **5 classes** (a softmax over 1-5 stars), not as a
# regression: macro-F1 needs a predicted class, and the softmax still gives a
# continuous score, the expected rating $\hat r = \sum_{k=1}^{5} k\,p_k$, used in
# section 6.B9. (An ordinal head is exercise B3.)
#
# ## 6.B1 One text per review, one split
#
# A review has a title and a text, and either may be missing. The rule
# (`rv.join_review_text`): collapse whitespace; both present, join them as
# `title + ". " + text`, or with a space when the title already ends in `.`,
# `!` or `?` ("Love it!" stays one sentence); one present, keep it; neither,
# drop the review. Reviews without a department are dropped too (a label is
# missing).

# %%
raw_reviews = load_reviews()
reviews_df, prep_report = rv.prepare_reviews(raw_reviews, rev_tasks)
display(pd.Series(prep_report, name="reviews"))
rev_examples = pd.concat([reviews_df.loc[reviews_df["Title"].notna()].head(2),
                          reviews_df.loc[reviews_df["Title"].isna()].head(1)])
rev_examples[["Title", "Review Text", "text"]].assign(text=lambda d: d.text.str.slice(0, 90) + "...")

# %% [markdown]
# The split is fixed by the seed and **stratified** on rating x department
# (30 strata, the smallest of a few dozen reviews), so every part has the same
# mix of stars and topics: 70% train, 10% validation (early stopping and the
# choice of regularisation), 20% test. Every model below is scored on the same
# test reviews.

# %%
rev_split = rv.stratified_split(reviews_df, ("Rating", "Department Name"), valid=0.1, test=0.2, seed=seed)
pd.DataFrame({
    part: {"reviews": int((rev_split == part).sum()),
           "recommended rate": reviews_df.loc[rev_split == part, "Recommended IND"].mean(),
           "mean rating": reviews_df.loc[rev_split == part, "Rating"].mean(),
           "Trend share": (reviews_df.loc[rev_split == part, "Department Name"] == "Trend").mean()}
    for part in ("train", "valid", "test")}).round(4)

# %% [markdown]
# On a CPU the encoder cannot read all of them in a few minutes, so the
# profile draws a stratified sample of each part (by department, so that the
# rare Trend department is in every sample): `rev_n_train` training,
# `rev_n_valid` validation and `rev_n_test` test reviews; on a GPU (`full`),
# all of them. Every model trains on the same `rev_n_train` reviews; TF-IDF is
# also fitted on `rev_tfidf_n` of them, because that is what a linear model on
# words can afford.

# %%
rev_frames = {part: rv.stratified_sample(reviews_df[rev_split == part], size[f"rev_n_{part}"],
                                         ["Department Name"], seed=seed)
              for part in ("train", "valid", "test")}
rev_tokenizer = load_tokenizer()
rev_enc = {part: rv.encode_reviews(rev_tokenizer, frame, rev_tasks, max_length=size["rev_max_length"])
           for part, frame in rev_frames.items()}
rev_labels = {part: enc.labels for part, enc in rev_enc.items()}
pd.DataFrame({part: {"reviews": len(enc), "mean tokens": enc.lengths.mean(),
                     f"cut at {size['rev_max_length']} tokens": (enc.lengths >= size["rev_max_length"]).mean()}
              for part, enc in rev_enc.items()}).round(3)

# %% [markdown]
# ## 6.B2 Baselines: the item, the words, a frozen encoder
#
# Four baselines, from no text at all to a pretrained encoder that is not trained:
#
# * **item prior** (recommended only): the item's recommendation rate among
#   all training reviews, shrunk towards the overall rate with 10 pseudo-reviews.
#   It is chapter 04's "popular items get bought", here "well-liked items get
#   recommended";
# * **TF-IDF + logistic regression**: word and word-pair counts, one logistic
#   regression per task (multinomial for rating and department), its $C$
#   chosen on the validation log loss; on the `rev_n_train` reviews and on
#   `rev_tfidf_n` of them;
# * **frozen MiniLM + logistic regression**: the same, on the encoder's pooled
#   vectors. These logistic regressions are also the **probes** that start the
#   fine-tuned heads (section 6.B5).

# %%
rev_outputs = {}  # model -> task -> logits on the test reviews
rev_train_all = reviews_df[rev_split == "train"]
rev_item_counts = rev_train_all.groupby("Clothing ID")["Recommended IND"].agg(["sum", "count"])
rev_overall = rev_train_all["Recommended IND"].mean()
rev_item_rate = (rev_item_counts["sum"] + 10 * rev_overall) / (rev_item_counts["count"] + 10)
rev_p_item = rev_frames["test"]["Clothing ID"].map(rev_item_rate).fillna(rev_overall).to_numpy()
rev_outputs["item prior (no text)"] = {"recommended": np.log(rev_p_item / (1 - rev_p_item)).astype(np.float32)}


def tfidf_lr(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """TF-IDF (words and word pairs) + one logistic regression per task; test logits."""
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=30000, sublinear_tf=True)
    x_train = vectorizer.fit_transform(frame["text"])
    heads = rv.fit_linear_heads(x_train, rv.encode_labels(frame, rev_tasks),
                                vectorizer.transform(rev_frames["valid"]["text"]), rev_labels["valid"],
                                rev_tasks, cs=(1.0, 10.0), tol=1e-3)
    return rv.linear_outputs(heads, vectorizer.transform(rev_frames["test"]["text"]))


rev_t0 = time.perf_counter()
rev_outputs["TF-IDF + LR"] = tfidf_lr(rev_frames["train"])
rev_outputs["TF-IDF + LR (more reviews)"] = tfidf_lr(
    rv.stratified_sample(rev_train_all, size["rev_tfidf_n"], ["Department Name"], seed=seed))
rev_tfidf_seconds = time.perf_counter() - rev_t0

rev_base = rv.load_review_model(rev_tasks, seed=seed).to(device)
rev_features = {part: rv.review_features(rev_base, enc, device=device) for part, enc in rev_enc.items()}
rev_probes = rv.fit_linear_heads(rev_features["train"], rev_labels["train"], rev_features["valid"],
                                 rev_labels["valid"], rev_tasks)
rev_outputs["frozen MiniLM + LR"] = rv.linear_outputs(rev_probes, rev_features["test"])
print(f"TF-IDF: {rev_tfidf_seconds:.1f} s; probes' C:", {k: m.C for k, m in rev_probes.items()})
pd.DataFrame({m: rv.review_metrics(rev_labels["test"], o, [t for t in rev_tasks if t.name in o])
              for m, o in rev_outputs.items()}).round(3)

# %% [markdown]
# ## 6.B3 One encoder, three heads
#
# The encoder reads the review once; its token vectors $H_1, \dots, H_n$ are
# mean-pooled over the real tokens ($m_i = 1$) and L2-normalised, as
# all-MiniLM-L6-v2 was trained (chapter 04: its BERT pooler was never trained),
# and every task $t$ reads the same vector through its own linear head:
#
# $$h = \frac{\bar h}{\lVert \bar h \rVert},\quad \bar h = \frac{\sum_i m_i H_i}{\sum_i m_i},\qquad
#   z_t = W_t\,\mathrm{dropout}(h) + b_t .$$
#
# This is **hard parameter sharing** (Caruana, 1997): all the encoder's weights
# serve all tasks. The loss is the weighted sum of the task losses, each a
# mean over the batch:
#
# $$L = \sum_t w_t L_t,\quad
#   L_{\text{rec}} = -\frac{1}{B}\sum_{j}\big[y_j \log \sigma(z_j) + (1-y_j)\log(1-\sigma(z_j))\big],\quad
#   L_{\text{rating}} = -\frac{1}{B}\sum_j \log \operatorname{softmax}(z_j)_{y_j},$$
#
# and $L_{\text{dept}}$ like $L_{\text{rating}}$; here $w_t = 1$ for every task.

# %%
print(inspect.getsource(rv.multitask_loss))

# %% [markdown]
# What the model is made of, checked rather than assumed: the checkpoint's
# pooling, which parameters are new (only the heads), how they start, and
# which learning rate each gets (`ecrec.finetune.optimizer_groups`: the heads
# `rev_head_lr`, the encoder `rev_lr`; no weight decay on biases and LayerNorm).

# %%
rev_groups = finetune.optimizer_groups(rev_base, size["rev_lr"], size["rev_head_lr"], 0.01)
display(pd.DataFrame([{"lr": g["lr"], "weight decay": g["weight_decay"], "tensors": len(g["names"]),
                       "e.g.": g["names"][0]} for g in rev_groups]))
print("pooling:", rev_base.pooling, "| encoder has a pooler:", getattr(rev_base.encoder, "pooler", None) is not None)
print("fresh parameters:", bert.fresh_parameter_names(rev_base))
print("fresh head weight std:", round(float(rev_base.head["rating"].weight.detach().std()), 4), "(BERT's init: 0.02)")

# %% [markdown]
# ## 6.B4 The training loop
#
# `rv.train_multitask` is short enough to read whole: a length-grouped batch,
# forward, the multi-task loss, backward, gradient clipping, AdamW and the
# learning-rate schedule; per step it logs the loss of every task and the
# gradient norm; validation is scored **before the first step** and every
# `rev_eval_every` steps, and the best weights, step 0 included, are kept, so
# no run ends below its start.

# %%
print(inspect.getsource(rv.train_multitask))

# %% [markdown]
# ## 6.B5 Before trusting a result: the bug-hunt checks
#
# A fine-tuned model that does no better than a frozen one is, more often than
# not, a bug: a wrong pooling, an untrained head at a tiny learning rate, a
# learning rate that never reaches the head. Three checks, before any
# comparison (the pooling and the learning-rate groups are above):
#
# 1. **Can it overfit?** A few reviews, a random head and a high learning rate
#    for a few steps: the training loss must collapse.
# 2. **Does it start where the probe ends?** Heads warm-started from the
#    probes (LP-FT, Kumar et al., 2022) must give the probes' validation loss
#    at step 0.

# %%
overfit_frame = rev_frames["train"].head(size["rev_overfit_n"])
overfit_data = rv.encode_reviews(rev_tokenizer, overfit_frame, rev_tasks, max_length=32)
overfit_model = rv.load_review_model(rev_tasks, seed=seed)
overfit = rv.train_multitask(
    overfit_model, overfit_data, overfit_data,
    rv.MultiTaskConfig(epochs=10**6, max_steps=size["rev_overfit_steps"], batch_size=16, lr=5e-4, head_lr=5e-2,
                       warmup_ratio=0.0, eval_every=size["rev_overfit_steps"], patience=10,
                       seed=seed, progress=False),
    device=device)
del overfit_model
overfit_table = pd.DataFrame(overfit.history).set_index("step").drop(columns="train_loss")
overfit_table.round(3)

# %%
probe_valid = rv.multitask_loss(
    {k: torch.as_tensor(v).reshape(len(rev_enc["valid"]), -1)
     for k, v in rv.linear_outputs(rev_probes, rev_features["valid"]).items()},
    {k: torch.as_tensor(v) for k, v in rev_labels["valid"].items()}, rev_tasks)[0].item()
display(Markdown(
    f"Overfitting {len(overfit_data)} reviews: the loss on them falls from "
    f"{overfit_table.valid_loss.iloc[0]:.2f} to {overfit_table.valid_loss.iloc[-1]:.2f} in "
    f"{size['rev_overfit_steps']} steps, so gradients reach every head and the encoder can fit. "
    f"The probes' validation loss (the sum over the three tasks) is {probe_valid:.4f}; "
    f"the fine-tuning runs below must start there."))

# %% [markdown]
# ## 6.B6 Fine-tuning: single-task, multi-task, LoRA
#
# Every run starts from the same pretrained encoder, with heads copied from the
# probes, and trains on the same reviews with the same schedule:
#
# * **single-task**: one head, the encoder trained for that task alone
#   (`rev_single_tasks` says which; on a GPU, each task);
# * **multi-task**: three heads, one encoder, the summed loss;
# * **LoRA**: the multi-task model with the encoder frozen and rank-8 adapters
#   on its attention's query and value projections (`ecrec.bert.add_lora`),
#   adapters at `rev_lora_lr`.

# %%
def rev_finetune(tasks, *, lora: bool = False):
    """Fine-tune a fresh model for ``tasks`` from the probes; return (model, result, test logits)."""
    model = rv.load_review_model(tasks, seed=seed)
    rv.init_heads_from_probes(model, {t.name: rev_probes[t.name] for t in tasks})
    if lora:
        bert.add_lora(model, r=8, alpha=16)
    names = [t.name for t in tasks]
    train, valid, test = (rev_enc[p] if len(tasks) == len(rev_tasks) else
                          rv.EncodedReviews(rev_enc[p].input_ids, {k: rev_labels[p][k] for k in names},
                                            tuple(tasks), rev_enc[p].max_length)
                          for p in ("train", "valid", "test"))
    config = rv.MultiTaskConfig(epochs=size["rev_epochs"], batch_size=size["rev_batch_size"],
                                lr=size["rev_lora_lr"] if lora else size["rev_lr"], head_lr=size["rev_head_lr"],
                                eval_every=size["rev_eval_every"], patience=3, seed=seed)
    result = rv.train_multitask(model, train, valid, config, device=device)
    return model, result, rv.predict_outputs(model, test, device=device)


rev_runs = {}
for rev_task_name in size["rev_single_tasks"]:
    _, rev_runs[f"single-task ({rev_task_name})"], rev_single_out = rev_finetune(
        [t for t in rev_tasks if t.name == rev_task_name])
    rev_outputs.setdefault("single-task", {})[rev_task_name] = rev_single_out[rev_task_name]
rev_multi, rev_runs["multi-task"], rev_outputs["multi-task"] = rev_finetune(rev_tasks)
rev_lora, rev_runs["LoRA multi-task"], rev_outputs["LoRA multi-task"] = rev_finetune(rev_tasks, lora=True)
pd.DataFrame({run: {"steps": len(r.steps), "best step": r.best_step, "valid loss at step 0": r.start_valid_loss,
                    "best valid loss": r.best_valid_loss, "trainable params": r.trainable_params,
                    "train seconds": r.train_seconds} for run, r in rev_runs.items()}).T.round(4)

# %%
rev_kept_start = [run for run, r in rev_runs.items() if r.best_step == 0]
display(Markdown(
    "Every run starts at the probes' validation loss (a single-task run at its task's share of it). "
    + (f"{', '.join(rev_kept_start)} did not improve on it within {size['rev_epochs']} epoch(s): early stopping "
       "kept the step-0 weights, so on the test reviews it scores as the frozen encoder + probe does."
       if rev_kept_start else "Every run improved on it.")))

# %% [markdown]
# One curve per task: the multi-task training loss of each head per step (a
# moving mean over 4 steps) and its validation loss at each evaluation.

# %%
rev_steps = pd.DataFrame(rev_runs["multi-task"].steps)
rev_history = pd.DataFrame(rev_runs["multi-task"].history)
fig, axes = plt.subplots(1, 4, figsize=(14, 3))
for ax, rev_task in zip(axes, rev_tasks, strict=False):
    ax.plot(rev_steps.step, rev_steps[f"loss_{rev_task.name}"].rolling(4, min_periods=1).mean(),
            label="train (mean of 4 steps)")
    ax.plot(rev_history.step, rev_history[f"valid_{rev_task.name}"], marker="o", label="validation")
    ax.set_title(rev_task.name)
    ax.set_xlabel("step")
axes[0].set_ylabel("loss (nats)")
axes[0].legend(fontsize="small")
axes[3].plot(rev_steps.step, rev_steps.grad_norm)
axes[3].set_title("gradient norm (before clipping)")
axes[3].set_xlabel("step")
fig.tight_layout()
save(fig, output_dir, "partb_loss_curves")
plt.show()

# %% [markdown]
# **What LoRA trains, and what it must save.** Only the adapters and the heads
# have gradients; saving exactly those tensors and loading them into a fresh
# LoRA model built on the same checkpoint restores the model.

# %%
lora_state = rv.trainable_state(rev_lora)
lora_kinds = pd.Series(["head" if n.startswith("head.") else "lora_A" if "lora_A" in n else "lora_B" if "lora_B" in n
                   else "other" for n in lora_state])
lora_trainable, lora_total = bert.count_params(rev_lora)
lora_file = output_dir / "partb_lora_trainable.safetensors"
save_file({k: v.contiguous() for k, v in lora_state.items()}, str(lora_file))
restored = bert.add_lora(rv.load_review_model(rev_tasks, seed=seed + 1), r=8, alpha=16)
missing, unexpected = restored.load_state_dict(load_file(str(lora_file)), strict=False)
lora_check = rev_enc["test"].subset(range(min(32, len(rev_enc["test"]))))
lora_diff = max(float(np.abs(a - b).max()) for a, b in zip(
    rv.predict_outputs(rev_lora, lora_check, device=device).values(),
    rv.predict_outputs(restored.to(device), lora_check, device=device).values(), strict=True))
del restored
display(lora_kinds.value_counts().rename("trainable tensors").to_frame())
display(Markdown(
    f"LoRA trains {lora_trainable:,} of {lora_total:,} parameters ({lora_trainable / lora_total:.2%}); the saved "
    f"file holds {len(lora_state)} tensors, {lora_file.stat().st_size / 1e6:.2f} MB; loading it into a fresh "
    f"model leaves {len(unexpected)} unexpected and {sum('lora_' in k or k.startswith('head.') for k in missing)} "
    f"missing trainable tensors, and the logits differ by at most {lora_diff:.1e}."))

# %% [markdown]
# ## 6.B7 Results, with intervals over reviews
#
# Each metric on the test reviews, with a 95% percentile interval from
# `rev_n_boot` bootstrap resamples of the reviews (the same resamples for every
# model, so differences are paired). AUC and log loss (nats) for recommended,
# macro-F1 and MAE (stars, of the most likely class) for rating, macro-F1 for
# department.

# %%
rev_pairs = [("multi-task", "frozen MiniLM + LR"), ("single-task", "frozen MiniLM + LR"),
             ("multi-task", "single-task"), ("LoRA multi-task", "multi-task"),
             ("multi-task", "TF-IDF + LR (more reviews)"), ("frozen MiniLM + LR", "item prior (no text)")]
rev_frames_boot = []
for rev_task in rev_tasks:  # per task: the same resamples (same seed, same reviews) for every task
    have = {m: {rev_task.name: o[rev_task.name]} for m, o in rev_outputs.items() if rev_task.name in o}
    rev_frames_boot.append(rv.bootstrap_review_metrics(
        {rev_task.name: rev_labels["test"][rev_task.name]}, have, [rev_task],
        pairs=[(a, b) for a, b in rev_pairs if a in have and b in have], n_boot=size["rev_n_boot"], seed=seed))
rev_boot = pd.concat(rev_frames_boot)
rev_cells = rev_boot.apply(lambda r: f"{r.value:.3f} [{r.low:.3f}, {r.high:.3f}]", axis=1)
rev_is_diff = np.array([" - " in m for m in rev_cells.index.get_level_values(0)])
rev_table = rev_cells[~rev_is_diff].unstack("metric")
display(rev_table.loc[[m for m in rev_outputs if m in rev_table.index]].fillna(""))
rev_cells[rev_is_diff].unstack("metric").fillna("")

# %%
def rev_row(model: str, metric: str) -> pd.Series:
    return rev_boot.loc[(model, metric)]


rev_gap = rev_row("multi-task - frozen MiniLM + LR", "recommended/auc")
rev_gap_f1 = rev_row("multi-task - frozen MiniLM + LR", "rating/macro_f1")
rev_mt = rev_row("multi-task", "recommended/auc")
display(Markdown(
    f"Fine-tuning moves the recommended AUC from {rev_row('frozen MiniLM + LR', 'recommended/auc').value:.3f} "
    f"(frozen encoder + probe) to {rev_mt.value:.3f} [{rev_mt.low:.3f}, {rev_mt.high:.3f}]: a paired change of "
    f"{rev_gap.value:+.3f} [{rev_gap.low:+.3f}, {rev_gap.high:+.3f}], and the rating's macro-F1 changes by "
    f"{rev_gap_f1.value:+.3f} [{rev_gap_f1.low:+.3f}, {rev_gap_f1.high:+.3f}], after {len(rev_runs['multi-task'].steps)} steps on "
    f"{len(rev_enc['train'])} reviews ({run_profile} profile). The item alone, without a word of its reviews, "
    f"reaches an AUC of {rev_row('item prior (no text)', 'recommended/auc').value:.3f}, the words read by a "
    f"frozen encoder {rev_row('frozen MiniLM + LR', 'recommended/auc').value:.3f}: here the label lives in the "
    "text, and an encoder trained to read it for the task has more to find there. In chapter 04 the item's "
    "popularity carried most of the label, and reading the description better could add little."))

# %% [markdown]
# ## 6.B8 Where the rating head goes wrong
#
# The confusion matrix of the multi-task model's rating head on the test
# reviews, each row normalised to the reviews with that true rating; then a few
# of its largest real errors (two stars or more off, most confident first),
# shortened.

# %%
rev_rating_logits = rev_outputs["multi-task"]["rating"]
rev_rating_true = rev_labels["test"]["rating"] + 1
rev_rating_pred = rev_rating_logits.argmax(1) + 1
fig, ax = plt.subplots(figsize=(4.5, 4))
ConfusionMatrixDisplay(confusion_matrix(rev_rating_true, rev_rating_pred, labels=[1, 2, 3, 4, 5], normalize="true"),
                       display_labels=[1, 2, 3, 4, 5]).plot(ax=ax, values_format=".2f", colorbar=False)
ax.set_xlabel("predicted stars")
ax.set_ylabel("true stars")
ax.set_title("Rating head (multi-task), rows sum to 1")
save(fig, output_dir, "partb_rating_confusion")
plt.show()

# %%
rev_p_rating = np.exp(rev_rating_logits - rev_rating_logits.max(1, keepdims=True))
rev_p_rating /= rev_p_rating.sum(1, keepdims=True)
rev_errors = rev_frames["test"].assign(
    true=rev_rating_true, predicted=rev_rating_pred, confidence=rev_p_rating.max(1),
    p_recommended=1 / (1 + np.exp(-rev_outputs["multi-task"]["recommended"])))
rev_off = (rev_errors.true - rev_errors.predicted).abs()
rev_far = rev_errors[rev_off >= 2].sort_values("confidence", ascending=False)
with pd.option_context("display.max_colwidth", 200):
    display(rev_far.head(5).assign(review=lambda d: d.text.str.slice(0, 180) + "...")[
        ["true", "predicted", "confidence", "Recommended IND", "p_recommended", "review"]].round(3))
display(Markdown(
    f"Of {len(rev_errors)} test reviews the rating head gets {(rev_off == 0).mean():.1%} exactly right and "
    f"{(rev_off <= 1).mean():.1%} within one star; {len(rev_far)} are two stars or more off. Read the ones "
    "above: a review whose words and stars disagree (praise with few stars, a complaint with many) is an "
    "error no model of the text can avoid; between neighbouring star counts the text often says little "
    "that tells them apart."))

# %% [markdown]
# ## 6.B9 An item-level sentiment feature
#
# A ranking model can use, per item, *how its reviews sound*: average the
# fine-tuned model's expected rating $\hat r$ over the item's reviews. Does it
# track the item's average rating, and how many reviews does it need?
#
# Draw `rev_items` items at random among those with at least
# $\max k + 10$ test reviews (all held out from training), and score up to
# `rev_item_reviews` of each item's reviews with the multi-task model. Put each
# item's scored reviews in random order (20 orders); after $k$ of them, compare
# three estimates of the item's average rating on **all its other** test
# reviews: the mean of $\hat r$ over the $k$ seen, the mean of their stars, and
# the mean rating of all training reviews. Two views: the absolute error in
# stars, and the correlation across items (which item is liked more, what a
# ranking model needs; a constant has none).

# %%
rev_test_all = reviews_df[rev_split == "test"]
rev_counts = rev_test_all["Clothing ID"].value_counts()
rev_eligible = np.sort(rev_counts[rev_counts >= max(size["rev_item_ks"]) + 10].index.to_numpy())
rev_item_ids = np.random.default_rng(seed).choice(rev_eligible, min(size["rev_items"], len(rev_eligible)),
                                               replace=False)
item_frame = rev_test_all[rev_test_all["Clothing ID"].isin(rev_item_ids)]
item_scored = pd.concat([g.sample(n=min(len(g), size["rev_item_reviews"]), random_state=seed)
                         for _, g in item_frame.groupby("Clothing ID")])
item_enc = rv.encode_reviews(rev_tokenizer, item_scored, rev_tasks, max_length=size["rev_max_length"])
item_scores = pd.Series(np.nan, index=item_frame.index)
item_scores[item_scored.index] = rv.expected_rating(rv.predict_outputs(rev_multi, item_enc, device=device)["rating"])
rev_prior = float(rev_train_all["Rating"].mean())
item_curve = rv.item_sentiment_curve(item_frame["Clothing ID"].to_numpy(), item_frame["Rating"].to_numpy(),
                                     item_scores.to_numpy(), size["rev_item_ks"], prior=rev_prior, n_perm=20,
                                     seed=seed)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for column, label in [("score_mean", "mean of the model's expected rating"), ("star_mean", "mean of the stars seen"),
                      ("prior", "mean rating of all training reviews")]:
    axes[0].plot(item_curve.index, item_curve[f"mae_{column}"], marker="o", label=label)
    if f"corr_{column}" in item_curve:
        axes[1].plot(item_curve.index, item_curve[f"corr_{column}"], marker="o", label=label)
for ax in axes:
    ax.set_xscale("log", base=2)
    ax.set_xlabel("reviews seen per item, k")
axes[0].set_ylabel("MAE vs the item's other reviews (stars)")
axes[1].set_ylabel("correlation across items")
axes[0].legend(fontsize="small")
fig.tight_layout()
save(fig, output_dir, "partb_item_sentiment")
plt.show()
item_curve.round(3)

# %%
def rev_better(k, what: str = "mae") -> str:
    m, st = item_curve.loc[k, f"{what}_score_mean"], item_curve.loc[k, f"{what}_star_mean"]
    better = m < st if what == "mae" else m > st
    return "the model's score" if better else "the mean of the stars" if m != st else "neither"


k1, kmax = item_curve.index[0], item_curve.index[-1]
display(Markdown(
    f"On {item_curve.loc[k1, 'items']} items ({len(item_frame)} test reviews, {len(item_scored)} scored): after "
    f"{k1} review(s) the mean of the model's score is {item_curve.loc[k1, 'mae_score_mean']:.2f} stars off the "
    f"item's average on its other reviews, the stars {item_curve.loc[k1, 'mae_star_mean']:.2f}, the training mean "
    f"{item_curve.loc[k1, 'mae_prior']:.2f}; after {kmax}, {item_curve.loc[kmax, 'mae_score_mean']:.2f}, "
    f"{item_curve.loc[kmax, 'mae_star_mean']:.2f} and {item_curve.loc[kmax, 'mae_prior']:.2f}. Across items, "
    f"the order of the items is tracked better by {rev_better(k1, 'corr')} after {k1} review(s) (correlation "
    f"{item_curve.loc[k1, 'corr_score_mean']:.2f} for the score, {item_curve.loc[k1, 'corr_star_mean']:.2f} for "
    f"the stars) and by {rev_better(kmax, 'corr')} after {kmax} ({item_curve.loc[kmax, 'corr_score_mean']:.2f} "
    f"and {item_curve.loc[kmax, 'corr_star_mean']:.2f}); with {item_curve.loc[k1, 'items']} items, a "
    "correlation is itself a rough number.\n\n"
    "One star rating is a noisy measurement of how an item is liked; the expected rating is pulled towards the "
    "middle (less noise, some bias), the mean of the stars is unbiased but noisy. Most items here are liked about "
    "equally, so a constant is hard to beat in absolute error; the correlation says whether an estimate tells "
    "the items apart. Where there are no stars at all (a question, a return comment), the text's score is the "
    "only one."))

# %% [markdown]
# ## 6.B10 Bad input gets a clear error
#
# Each of these is a mistake that would otherwise train a useless model or fail
# deep inside torch; each is refused up front, naming the column and the fix.

# %%
bad_inputs = {
    "a task's label column is missing": lambda: rv.encode_labels(reviews_df.drop(columns="Rating").head(50)),
    "a constant label column": lambda: rv.encode_labels(reviews_df.head(50).assign(**{"Recommended IND": 1})),
    "a head count that does not fit the labels": lambda: rv.check_heads(
        rv.MultiTaskReviewModel(rev_base.encoder, rev_base.pooling, {"recommended": 1, "rating": 4,
                                                                     "department": 6}), rev_tasks),
    "NaN text": lambda: rv.encode_reviews(rev_tokenizer, reviews_df.head(5).assign(text=[None, *["ok"] * 4])),
}
for what, call in bad_inputs.items():
    try:
        call()
        print(f"{what}: accepted (unexpected)")
    except (KeyError, ValueError) as exc:
        print(f"{what}:\n    {type(exc).__name__}: {exc.args[0]}\n")

# %% [markdown]
# ## Summary (Part B)
#
# * Reviews carry their labels in their words: a fine-tuned encoder beats the
#   frozen one clearly, where in chapter 04 the item's popularity left text
#   little to add. The intervals above say by how much.
# * One encoder with three heads (hard sharing) trains the three tasks for the
#   cost of one; LoRA trains a fraction of a percent of the parameters.
# * Start the heads from the probes and score validation at step 0: a run can
#   then only improve on the frozen model, and a run that does not is a bug to
#   hunt (overfit a few examples, check the pooling, the learning rates).
# * Per-review scores averaged per item make a sentiment feature that needs
#   fewer reviews than the stars to say how an item is liked.
#
# ## Exercises (Part B)
#
# 1. *(runnable)* Which part of a review carries the label? Fit TF-IDF + LR on
#    the title only, the review text only and the joined text, and compare the
#    recommended AUC and the rating macro-F1 with paired intervals. (solution:
#    `notebooks/solutions/06b_exercises.py`)
# 2. *(runnable)* Build the item sentiment curve from the TF-IDF model's
#    expected rating instead of the fine-tuned model's. Does the shape change?
#    (same file)
# 3. Make the rating head **ordinal**: 4 logits for $P(r > k)$, $k = 1..4$
#    (Cao, Mirjalili and Raschka, 2020, "CORAL"), trained with 4 binary
#    cross-entropies. Does MAE improve?
# 4. Weight the tasks: $w_{\text{rating}} = 0.5$, or learn the weights from
#    each task's uncertainty (Kendall, Gal and Cipolla, 2018). Which task gains,
#    which loses?
# 5. Add the item sentiment feature to chapter 03's CTR model as an item
#    feature. Use only reviews written before the example's time.

# %%
def _r4(x) -> float:
    return round(float(x), 4)


part_b_metrics = {
    "prep": prep_report,
    "n_train": len(rev_enc["train"]), "n_valid": len(rev_enc["valid"]), "n_test": len(rev_enc["test"]),
    "split": {part: int((rev_split == part).sum()) for part in ("train", "valid", "test")},
    "models": {f"{m}/{k}": {"value": _r4(r.value), "low": _r4(r.low), "high": _r4(r.high)}
               for (m, k), r in rev_boot.iterrows() if " - " not in m},
    "diffs": {f"{m}/{k}": {"value": _r4(r.value), "low": _r4(r.low), "high": _r4(r.high)}
              for (m, k), r in rev_boot.iterrows() if " - " in m},
    "runs": {name: {"steps": len(r.steps), "best_step": r.best_step, "start_valid_loss": _r4(r.start_valid_loss),
                    "best_valid_loss": _r4(r.best_valid_loss)} for name, r in rev_runs.items()},
    "probe_valid_loss": _r4(probe_valid),
    "overfit_loss_start": _r4(overfit_table.valid_loss.iloc[0]),
    "overfit_loss_end": _r4(overfit_table.valid_loss.iloc[-1]),
    "lora_trainable_params": lora_trainable, "lora_total_params": lora_total,
    "lora_saved_tensors": len(lora_state), "lora_reload_max_abs_diff": float(lora_diff),
    "item_curve": {str(k): {c: _r4(v) for c, v in row.items()} for k, row in item_curve.iterrows()},
    "part_b_seconds": round(time.time() - PART_B_STARTED, 1),
}
part_b_metrics["models"]["multi-task/recommended/auc"]
