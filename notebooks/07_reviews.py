# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 7. Language models for review text: what a fine-tuned encoder reads
#
# In chapter 04 the label was a purchase, and much of it was explained by
# *which* item it was: popular items get bought. Text had little left to add,
# and fine-tuning the encoder had little room to help. Product reviews are the
# opposite case. Whether a shopper recommends a dress, and how many stars she
# gives it, is written in her words: "runs small, the fabric is see-through,
# sending it back". Here the text **carries the label**. Two questions follow:
# does fine-tuning the encoder beat reading its frozen vectors, and does a
# language model beat a plain **bag of words** (TF-IDF + logistic regression)
# given the same labelled reviews? The answer depends on how many labelled
# reviews there are, so this chapter draws **learning curves at equal data**.
#
# The data: *Women's E-Commerce Clothing Reviews* (Brooks, 2018; CC0), one row
# per review, with a title, the review text, a star rating, a "recommended"
# flag and the product's department. One MiniLM encoder gets three heads:
#
# * **recommended** (0/1): the click-like label, scored with AUC and log loss;
# * **rating** (1-5 stars): scored with macro-F1 and MAE in stars;
# * **department** (6 values): the review's topic, scored with macro-F1.
#
# **You will learn to**
#
# * build one text per review by a stated rule and split the reviews in a
#   fixed, stratified, seeded way;
# * compare TF-IDF, a frozen encoder, single-task and multi-task fine-tuning
#   and LoRA on the same test reviews, with bootstrap intervals;
# * draw **learning curves at equal data** (every model trained on the same
#   reviews at each size) and read off where, if anywhere, they cross;
# * read a multi-task training run: one loss curve per task;
# * turn per-review scores into an **item-level sentiment feature** and see how
#   many reviews it needs.
#
# **You need** chapter 04 (fine-tuning MiniLM: the checkpoint's own pooling,
# probes, heads warm-started from them, early stopping scored at step 0) and
# chapter 02 (log loss, AUC). This chapter reads nothing of chapter 03's
# dataset or its cache: the reviews are a data set of their own, and chapter
# 06's multi-task networks are not needed either (the idea of shared
# representations is the same, the model here is one encoder with three heads).
#
# **The lesson, computed from this run:** {glue:md}`ch07_lesson`

# %% tags=["parameters", "remove-input"]
profile = "auto"  # "auto" | "smoke" | "cpu" | "full"
seed = 42
output_dir = "outputs/07_reviews"
sizes = None  # optional dict overriding the profile's sizes

# %% tags=["remove-input"]
# In Colab: fetch the book's code and data, then install it (skipped elsewhere).
import os
import subprocess
import sys

if "google.colab" in sys.modules and not os.path.isdir("ecrec-book"):
    subprocess.run(["git", "clone", "--depth", "1", "https://github.com/ecrec-book/ecrec", "ecrec-book"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements.txt"], cwd="ecrec-book", check=True)
    sys.path.insert(0, os.path.abspath("ecrec-book"))

# %%
import inspect
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display
from safetensors.torch import save_file
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

from ecrec import bert, finetune, review_model, verdict
from ecrec import reviews as rv
from ecrec.data import load_reviews
from ecrec.io import write_metrics
from ecrec.plots import save
from ecrec.profiles import pick_sizes, seed_everything
from ecrec.text import load_tokenizer

STARTED = time.time()

# %% tags=["remove-input"]
SIZES = {
    # A learning curve at equal data, rev_curve_sizes training reviews (nested samples), the multi-task MiniLM
    # fine-tuned at each (a second seed at rev_seed_sizes), single-task and LoRA at rev_compare_n; the truncation
    # length keeps rev_length_coverage of the training reviews whole. smoke: 24-192 reviews, 400 test; cpu:
    # 250-4,000 reviews (x2.5 apart; 566 fine-tuning steps in all where 500-4,000 took 758), 600 test, TF-IDF
    # reference on all 15,840 training reviews; full (one Colab GPU): 1,000 to every review, 256 tokens at most, a
    # single-task run per task.
    # _minutes: measured on 2 CPU cores (AMD EPYC, bf16): smoke 1.4 min; cpu 502 s with 1,000 test reviews and
    # 3 evaluations per run, 483 s with 800 and 2, 491 s with 700 (main job), 458 s alone and 490 s in a main job
    # with 600 and step 0 scored from the probes, hence one evaluation per run at its end (every cpu run's best
    # step was its last or step 0; 472 s alone in an hour when fine-tuning steps ran 6% slower) (the 8-minute
    # budget; it was chapter 06's second part, whose fine-tunes took 467 s at 500-4,000 reviews); full an
    # estimate
    "smoke": {"rev_curve_sizes": (24, 48, 96, 192), "rev_seed_sizes": (24,), "rev_compare_n": 96,
              "rev_n_valid": 128, "rev_n_test": 400, "rev_tfidf_n": 2000, "rev_length_coverage": 0.5,
              "rev_batch_size": 16, "rev_epochs": 4, "rev_min_steps": 3, "rev_evals": 2,
              "rev_lr": 1e-4, "rev_head_lr": 1e-3, "rev_lora_lr": 1e-3, "rev_single_tasks": ("recommended",),
              "rev_n_boot": 300, "rev_items": 12, "rev_item_reviews": 12, "rev_item_ks": (1, 2, 4, 8),
              "rev_overfit_n": 16, "rev_overfit_steps": 8, "_minutes": (1.5, 3)},
    "cpu": {"rev_curve_sizes": (250, 630, 1600, 4000), "rev_seed_sizes": (250,),
            "rev_compare_n": 630, "rev_n_valid": 200, "rev_n_test": 600, "rev_tfidf_n": None,
            "rev_length_coverage": 0.99, "rev_batch_size": 16, "rev_epochs": 4, "rev_min_steps": 32, "rev_evals": 1,
            "rev_lr": 1e-4, "rev_head_lr": 1e-3, "rev_lora_lr": 1e-3, "rev_single_tasks": ("recommended",),
            "rev_n_boot": 1000, "rev_items": 30, "rev_item_reviews": 24, "rev_item_ks": (1, 2, 4, 8, 16),
            "rev_overfit_n": 16, "rev_overfit_steps": 8, "_minutes": (4, 8)},
    "full": {"rev_curve_sizes": (1000, 2000, 4000, 8000, 15840), "rev_seed_sizes": (1000, 2000, 4000),
             "rev_compare_n": 15840, "rev_n_valid": None, "rev_n_test": None, "rev_tfidf_n": None,
             "rev_length_coverage": 1.0, "rev_batch_size": 32, "rev_epochs": 4, "rev_min_steps": 200, "rev_evals": 8,
             "rev_lr": 5e-5, "rev_head_lr": 1e-3, "rev_lora_lr": 5e-4,
             "rev_single_tasks": ("recommended", "rating", "department"),
             "rev_n_boot": 1000, "rev_items": 60, "rev_item_reviews": 40, "rev_item_ks": (1, 2, 4, 8, 16, 32),
             "rev_overfit_n": 64, "rev_overfit_steps": 24, "_minutes": (10, 20)},
}
run_profile, size = pick_sizes(profile, SIZES, sizes)
seed_everything(seed)
output_dir = Path(output_dir)
size

# %%
device = finetune.pick_device(verbose=False)  # the line below says which device and precision run
PRECISION = finetune.fastest_precision(device)  # bf16 autocast on a CPU with AVX512-BF16 or AMX, else fp32
print(f"device {device.type}, precision {PRECISION}, torch threads {torch.get_num_threads()} "
      f"(CPU capability {torch.backends.cpu.get_cpu_capability()})")
rev_tasks = rv.REVIEW_TASKS
pd.DataFrame([{"task": t.name, "label column": t.column, "kind": t.kind, "head outputs": t.n_outputs,
               "classes": ", ".join(map(str, t.classes))} for t in rev_tasks]).set_index("task")

# %% [markdown]
# Rating is modelled as **5 classes** (a softmax over 1-5 stars), not as a
# regression: macro-F1 needs a predicted class, and the softmax still gives a
# continuous score, the expected rating $\hat r = \sum_{k=1}^{5} k\,p_k$, used in
# section 7.10. (An ordinal head, one threshold per star, would use their order too: exercise 4.)
#
# ## 7.1 One text per review, one split
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
# **How long is a review, in tokens?** The encoder reads at most a fixed number
# of tokens; the rest is cut. A cost grows with the tokens read, so the length
# is chosen from the training reviews' own distribution: the shortest multiple
# of 8 that keeps `rev_length_coverage` of them whole (`rv.max_length_for`).

# %%
rev_tokenizer = load_tokenizer()
rev_train_all = reviews_df[rev_split == "train"]
rev_all_lengths = np.array([len(x) for x in rev_tokenizer(rev_train_all["text"].tolist(), truncation=True,
                                                          max_length=512)["input_ids"]])
rev_max_length = rv.max_length_for(rev_all_lengths, size["rev_length_coverage"])
rev_cut = {n: float((rev_all_lengths > n).mean()) for n in (64, 128, rev_max_length)}
fig, ax = plt.subplots(figsize=(6, 2.8))
ax.hist(rev_all_lengths, bins=60, color="0.6")
for n, style in ((64, ":"), (rev_max_length, "-")):
    ax.axvline(n, color="C3", linestyle=style, label=f"{n} tokens: {rev_cut[n]:.0%} of reviews cut")
ax.set_xlabel("tokens per review (title + text, [CLS] and [SEP] included)")
ax.set_ylabel("training reviews")
ax.legend(fontsize="small")
save(fig, output_dir, "token_lengths")
plt.show()
display(Markdown(
    f"The median training review has {np.median(rev_all_lengths):.0f} tokens and the longest {rev_all_lengths.max()}; "
    f"at 64 tokens {rev_cut[64]:.0%} of them ({int((rev_all_lengths > 64).sum()):,} of {len(rev_all_lengths):,}) "
    f"would be cut. This run reads **{rev_max_length} tokens**, which cuts {rev_cut[rev_max_length]:.1%} of them "
    f"({int((rev_all_lengths > rev_max_length).sum()):,} reviews)."))

# %% [markdown]
# **Training sets of growing size.** On a CPU the encoder cannot read all
# 15,840 training reviews in a few minutes, so the profile draws nested
# stratified samples (by department, so that the rare Trend department is in
# each, and one review of every class of every task even in the smallest):
# `rev_curve_sizes` training reviews, each sample inside the next
# (`rv.nested_samples`), plus `rev_n_valid` validation and `rev_n_test` test
# reviews; on a GPU (`full`), up to all of them. At each size **every model
# trains on the same reviews**. TF-IDF is also fitted on `rev_tfidf_n` training
# reviews (all of them on a CPU): a reference line of what a linear model on
# words reaches with every label there is.

# %%
rev_sizes = tuple(int(n) for n in size["rev_curve_sizes"])
rev_samples = rv.nested_samples(rev_train_all, rev_sizes, ["Department Name"], seed=seed,
                                cover=[t.column for t in rev_tasks])  # every class of every task, at any size
rev_frames = {"train": rev_samples[max(rev_sizes)]} | {
    part: rv.stratified_sample(reviews_df[rev_split == part], size[f"rev_n_{part}"], ["Department Name"], seed=seed)
    for part in ("valid", "test")}
rev_enc = {part: rv.encode_reviews(rev_tokenizer, frame, rev_tasks, max_length=rev_max_length)
           for part, frame in rev_frames.items()}
rev_labels = {part: enc.labels for part, enc in rev_enc.items()}
rev_rows = {n: np.flatnonzero(rev_frames["train"].index.isin(rev_samples[n].index)) for n in rev_sizes}
pd.DataFrame({part: {"reviews": len(enc), "mean tokens": enc.lengths.mean(),
                     f"cut at {rev_max_length} tokens": (enc.lengths >= rev_max_length).mean()}
              for part, enc in rev_enc.items()}).round(3)

# %% [markdown]
# ## 7.2 Baselines: the item, the words, a frozen encoder
#
# Three baselines, from no text at all to a pretrained encoder that is not trained:
#
# * **item prior** (recommended only): the item's recommendation rate among
#   all training reviews, shrunk towards the overall rate with 10 pseudo-reviews.
#   It is chapter 04's "popular items get bought", here "well-liked items get
#   recommended";
# * **TF-IDF + logistic regression**: word and word-pair counts, one logistic
#   regression per task (multinomial for rating and department), its $C$
#   chosen on the validation log loss (`rv.tfidf_outputs`); at every training
#   size, and once on `rev_tfidf_n` reviews, the **reference** line;
# * **frozen MiniLM + logistic regression**: the same, on the encoder's pooled
#   vectors, at every training size. These logistic regressions are also the
#   **probes** that start the fine-tuned heads (section 7.5).
#
# The table shows them at `rev_compare_n` training reviews, the size where
# section 7.7 compares every model.

# %%
REF = "TF-IDF + LR (reference)"  # on rev_tfidf_n training reviews: more than any curve point
FT, TFIDF, FROZEN = "multi-task", "TF-IDF + LR", "frozen MiniLM + LR"
rev_n_c = int(size["rev_compare_n"])
rev_outputs = {}  # model -> task -> logits on the test reviews, at rev_compare_n training reviews
rev_item_counts = rev_train_all.groupby("Clothing ID")["Recommended IND"].agg(["sum", "count"])
rev_overall = rev_train_all["Recommended IND"].mean()
rev_item_rate = (rev_item_counts["sum"] + 10 * rev_overall) / (rev_item_counts["count"] + 10)
rev_p_item = rev_frames["test"]["Clothing ID"].map(rev_item_rate).fillna(rev_overall).to_numpy()
rev_outputs["item prior (no text)"] = {"recommended": np.log(rev_p_item / (1 - rev_p_item)).astype(np.float32)}

rev_t0 = time.perf_counter()
rev_tfidf = {n: rv.tfidf_outputs(rev_samples[n], rev_frames["valid"], rev_frames["test"], rev_tasks)
             for n in rev_sizes}
rev_ref_frame = rv.stratified_sample(rev_train_all, size["rev_tfidf_n"], ["Department Name"], seed=seed)
rev_reference = rv.tfidf_outputs(rev_ref_frame, rev_frames["valid"], rev_frames["test"], rev_tasks)
rev_tfidf_seconds = time.perf_counter() - rev_t0

rev_base = rv.load_review_model(rev_tasks, seed=seed).to(device)
rev_features = {part: rv.review_features(rev_base, enc, device=device, precision=PRECISION)
                for part, enc in rev_enc.items()}
rev_probes_at = {n: rv.fit_linear_heads(rev_features["train"][rev_rows[n]],
                                        {k: v[rev_rows[n]] for k, v in rev_labels["train"].items()},
                                        rev_features["valid"], rev_labels["valid"], rev_tasks) for n in rev_sizes}
rev_frozen = {n: rv.linear_outputs(p, rev_features["test"]) for n, p in rev_probes_at.items()}
rev_probe_valid = {n: rv.linear_outputs(p, rev_features["valid"]) for n, p in rev_probes_at.items()}
rev_probes = rev_probes_at[rev_n_c]
rev_outputs |= {TFIDF: rev_tfidf[rev_n_c], REF: rev_reference, FROZEN: rev_frozen[rev_n_c]}
print(f"TF-IDF at {len(rev_sizes)} sizes and on {len(rev_ref_frame):,} reviews: {rev_tfidf_seconds:.1f} s; "
      f"probes' C at {rev_n_c}:", {k: m.C for k, m in rev_probes.items()})
pd.DataFrame({m: rv.review_metrics(rev_labels["test"], o, [t for t in rev_tasks if t.name in o])
              for m, o in rev_outputs.items()}).round(3)

# %% [markdown]
# ## 7.3 One encoder, three heads
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
# ## 7.4 The training loop
#
# `rv.train_review_model` (not to be confused with chapter 06's
# `ecrec.multitask.train_multitask`, which trains tabular networks) repeats one step: a
# length-grouped batch, forward under the chosen precision, the multi-task
# loss, backward, gradient clipping, AdamW and the learning-rate schedule
# (warm-up, then linear decay). Per step it logs the loss of every task and the
# gradient norm. Validation is scored **before the first step** and
# `rev_evals` times per run, and the best weights, step 0 included, are kept:
# no run ends below its start *on validation* (on the test reviews it can). The
# step:

# %%
print(inspect.getsource(review_model._train_step))

# %% [markdown]
# ## 7.5 Before trusting a result: the bug-hunt checks
#
# A fine-tuned model that does no better than a frozen one is, more often than
# not, a bug: a wrong pooling, an untrained head at a tiny learning rate, a
# learning rate that never reaches the head. Two checks, before any
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
overfit = rv.train_review_model(
    overfit_model, overfit_data, overfit_data,
    rv.ReviewTrainConfig(epochs=10**6, max_steps=size["rev_overfit_steps"], batch_size=16, lr=5e-4, head_lr=5e-2,
                       warmup_ratio=0.0, eval_every=size["rev_overfit_steps"], patience=10,
                       seed=seed, progress=False),
    device=device)
del overfit_model
overfit_table = pd.DataFrame(overfit.history).set_index("step").drop(columns="train_loss")
overfit_table.round(3)

# %% tags=["remove-input"]
probe_valid = rv.multitask_loss(
    {k: torch.as_tensor(v).reshape(len(rev_enc["valid"]), -1)
     for k, v in rev_probe_valid[rev_n_c].items()},
    {k: torch.as_tensor(v) for k, v in rev_labels["valid"].items()}, rev_tasks)[0].item()
display(Markdown(
    f"Overfitting {len(overfit_data)} reviews: the loss on them falls from "
    f"{overfit_table.valid_loss.iloc[0]:.2f} to {overfit_table.valid_loss.iloc[-1]:.2f} in "
    f"{size['rev_overfit_steps']} steps, so gradients reach every head and the encoder can fit. "
    f"The probes' validation loss (the sum over the three tasks) is {probe_valid:.4f}; "
    f"the fine-tuning runs below start there: each scores its step 0 from its probes' validation logits "
    f"(checked against the model on {rv.START_CHECK_ROWS} reviews) instead of a pass over validation."))

# %% [markdown]
# ## 7.6 Fine-tuning: at every size, single-task, multi-task, LoRA
#
# Every run starts from the same pretrained encoder, with heads copied from the
# probes fitted on its own training reviews, and trains with the same schedule
# (`rev_epochs` epochs at most, at least `rev_min_steps` steps: a small sample
# is read several times):
#
# * **multi-task**: three heads, one encoder, the summed loss, at **every
#   training size** of the curve (and with a second seed, a different batch
#   order and dropout on the same reviews, at `rev_seed_sizes`);
# * **single-task**: one head, the encoder trained for that task alone
#   (`rev_single_tasks` says which; on a GPU, each task), at `rev_compare_n`;
# * **LoRA**: the multi-task model with the encoder frozen and rank-8 adapters
#   on its attention's query and value projections (`ecrec.bert.add_lora`),
#   adapters at `rev_lora_lr`, at `rev_compare_n`.
#
# No model is trained twice: the multi-task model at `rev_compare_n` is the
# curve's point at that size.

# %%
def rev_finetune(tasks, n: int, *, run_seed: int = seed, lora: bool = False):
    """Fine-tune a fresh model for ``tasks`` on the first-n sample, from its probes; (model, result, test logits)."""
    model = rv.load_review_model(tasks, seed=run_seed)
    rv.init_heads_from_probes(model, {t.name: rev_probes_at[n][t.name] for t in tasks})
    if lora:
        bert.add_lora(model, r=8, alpha=16)
    names = [t.name for t in tasks]
    parts = {"train": rev_enc["train"].subset(rev_rows[n]), "valid": rev_enc["valid"], "test": rev_enc["test"]}
    train, valid, test = (rv.EncodedReviews(parts[p].input_ids, {k: parts[p].labels[k] for k in names},
                                            tuple(tasks), rev_max_length) for p in ("train", "valid", "test"))
    batch = size["rev_batch_size"]
    epochs = min(size["rev_epochs"], max(1, -(-size["rev_min_steps"] * batch // n)))
    steps = epochs * -(-n // batch)
    config = rv.ReviewTrainConfig(epochs=epochs, batch_size=batch, lr=size["rev_lora_lr"] if lora else size["rev_lr"],
                                  head_lr=size["rev_head_lr"], eval_every=max(1, -(-steps // size["rev_evals"])),
                                  patience=size["rev_evals"], precision=PRECISION, seed=run_seed)
    start = {t.name: rev_probe_valid[n][t.name] for t in tasks}  # step 0 is the probe: no pass over valid
    result = rv.train_review_model(model, train, valid, config, device=device, start_valid_logits=start)
    if result.best_step == 0:  # it kept its step-0 weights: its test logits are its probes' (section 7.2)
        return model, result, {t.name: rev_frozen[n][t.name] for t in tasks}
    return model, result, rv.predict_outputs(model, test, device=device, precision=PRECISION)


rev_runs, rev_curve_runs, rev_ft = {}, {}, {}  # rev_ft[(n, seed)]: the multi-task model's test logits
for n in rev_sizes:
    for run_seed in [seed] + ([seed + 1] if n in size["rev_seed_sizes"] else []):
        model, rev_curve_runs[(n, run_seed)], rev_ft[(n, run_seed)] = rev_finetune(rev_tasks, n, run_seed=run_seed)
        if (n, run_seed) == (max(rev_sizes), seed):
            rev_multi = model  # the largest model: read in sections 7.9 and 7.10
        del model
rev_runs["multi-task"] = rev_curve_runs[(rev_n_c, seed)]
rev_outputs["multi-task"] = rev_ft[(rev_n_c, seed)]
for rev_task_name in size["rev_single_tasks"]:
    _, rev_runs[f"single-task ({rev_task_name})"], rev_single_out = rev_finetune(
        [t for t in rev_tasks if t.name == rev_task_name], rev_n_c)
    rev_outputs.setdefault("single-task", {})[rev_task_name] = rev_single_out[rev_task_name]
rev_lora, rev_runs["LoRA multi-task"], rev_outputs["LoRA multi-task"] = rev_finetune(rev_tasks, rev_n_c, lora=True)
rev_all_runs = {f"multi-task, {n} reviews, seed {s}": r for (n, s), r in rev_curve_runs.items()} | {
    f"{k}, {rev_n_c} reviews": r for k, r in rev_runs.items() if k != "multi-task"}
pd.DataFrame({name: {"steps": len(r.steps), "best step": r.best_step, "valid loss at step 0": r.start_valid_loss,
                     "best valid loss": r.best_valid_loss, "trainable params": r.trainable_params,
                     "train seconds": r.train_seconds} for name, r in rev_all_runs.items()}).T.round(4)

# %% tags=["remove-input"]
rev_kept_start = [run for run, r in rev_runs.items() if r.best_step == 0] + [
    f"multi-task at {n} reviews (seed {s})" for (n, s), r in rev_curve_runs.items() if r.best_step == 0]
rev_ft_seconds = sum(r.train_seconds for r in [*rev_curve_runs.values(), *rev_runs.values()])
display(Markdown(
    f"{len(rev_curve_runs) + len(rev_runs) - 1} fine-tuning runs, {rev_ft_seconds:.0f} s of training steps in "
    f"{PRECISION} on {device.type}. Every run starts at its probes' validation loss (a single-task run at its "
    "task's share of it). "
    + (f"{'; '.join(rev_kept_start)}: early stopping kept the step-0 weights, so on the test reviews such a "
       "model = its probe (fine-tuning did not move it), and it is not compared as a fine-tuned model."
       if rev_kept_start else "Every run improved on it on validation.")))

# %% [markdown]
# One curve per task: the multi-task training loss of each head per step (a
# moving mean over 4 steps) and its validation loss at each evaluation, for
# the run on the most reviews.

# %% tags=["remove-input"]
rev_steps = pd.DataFrame(rev_curve_runs[(max(rev_sizes), seed)].steps)
rev_history = pd.DataFrame(rev_curve_runs[(max(rev_sizes), seed)].history)
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
save(fig, output_dir, "loss_curves")
plt.show()

# %% [markdown]
# **What LoRA trains, and what it must save.** Only the adapters and the heads
# have gradients, so a LoRA run saves exactly those tensors: loaded into a
# fresh LoRA model built on the same checkpoint, they restore it (the round
# trip is a test, `tests/test_reviews.py`, not a section).

# %%
lora_state = rv.trainable_state(rev_lora)
lora_kinds = pd.Series(["head" if n.startswith("head.") else "lora_A" if "lora_A" in n else "lora_B" if "lora_B" in n
                   else "other" for n in lora_state])
lora_trainable, lora_total = bert.count_params(rev_lora)
lora_file = output_dir / "lora_trainable.safetensors"
save_file({k: v.contiguous() for k, v in lora_state.items()}, str(lora_file))
display(lora_kinds.value_counts().rename("trainable tensors").to_frame())
display(Markdown(
    f"LoRA trains {lora_trainable:,} of {lora_total:,} parameters ({lora_trainable / lora_total:.2%}); the saved "
    f"file holds {len(lora_state)} tensors, {lora_file.stat().st_size / 1e6:.2f} MB, where the whole model "
    f"takes {4 * lora_total / 1e6:.0f} MB in float32."))

# %% [markdown]
# ## 7.7 Results, with intervals over reviews
#
# Each metric on the test reviews, at `rev_compare_n` training reviews (the
# reference: more), with a 95% percentile interval from `rev_n_boot` bootstrap
# resamples of the reviews (the same resamples for every model, so differences
# are paired). AUC and log loss (nats) for recommended, macro-F1 and MAE
# (stars, of the most likely class) for rating, macro-F1 for department.

# %%
rev_pairs = [("multi-task", FROZEN), ("single-task", FROZEN), ("multi-task", "single-task"),
             ("LoRA multi-task", "multi-task"), ("multi-task", TFIDF), ("multi-task", REF), (FROZEN, TFIDF),
             (FROZEN, "item prior (no text)")]
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

# %% tags=["remove-input"]
def rev_row(model: str, metric: str) -> pd.Series:
    return rev_boot.loc[(model, metric)]


REV_KEPT = {"multi-task": rev_runs["multi-task"].best_step == 0,
            "LoRA multi-task": rev_runs["LoRA multi-task"].best_step == 0,
            "single-task": any(r.best_step == 0 for k, r in rev_runs.items() if k.startswith("single-task"))}


def rev_says(a: str, b: str, metric: str, better: str = "higher") -> str:
    """The verdict on a - b at rev_compare_n (one seed), through ecrec.verdict."""
    r = rev_row(f"{a} - {b}", metric)
    if REV_KEPT.get(b, False) and not REV_KEPT.get(a, False):  # the rule holds on either side of the difference
        return f"{b} = its probe (fine-tuning did not move it), so {a} is not compared with it as an architecture"
    return verdict.compare(a, b, {"diff": r.value, "low": r.low, "high": r.high, "level": 0.95}, better=better,
                           kept_start=REV_KEPT.get(a, False))


display(Markdown(
    f"At {rev_n_c:,} training reviews ({run_profile} profile, one seed; section 7.8 adds sizes and seeds), "
    f"recommended AUC:\n\n"
    f"* {rev_says('multi-task', FROZEN, 'recommended/auc')};\n"
    f"* {rev_says('multi-task', TFIDF, 'recommended/auc')};\n"
    f"* {rev_says('multi-task', REF, 'recommended/auc')} (the reference read {len(rev_ref_frame):,} reviews);\n"
    f"* {rev_says('multi-task', 'single-task', 'recommended/auc')};\n"
    f"* {rev_says('LoRA multi-task', 'multi-task', 'recommended/auc')};\n"
    f"* {rev_says(FROZEN, 'item prior (no text)', 'recommended/auc')}.\n\n"
    f"Rating macro-F1: {rev_says('multi-task', FROZEN, 'rating/macro_f1')}; "
    f"{rev_says('multi-task', TFIDF, 'rating/macro_f1')}.\n\n"
    f"The item alone, without a word of its reviews, reaches an AUC of "
    f"{rev_row('item prior (no text)', 'recommended/auc').value:.3f}: here the label lives in the text. In "
    "chapter 04 the item's popularity carried most of the label."))

# %% [markdown]
# The paired differences at a glance (a forest plot): each row is one
# comparison, the dot its difference on the test reviews, the bar its 95%
# interval; a bar that crosses the dashed line at 0 is within noise.

# %% tags=["remove-input"]
rev_forest = rev_boot[[" - " in m for m in rev_boot.index.get_level_values(0)]].reset_index()
fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
for ax, (metric, label) in zip(axes, [("recommended/auc", "recommended AUC"),
                                       ("rating/macro_f1", "rating macro-F1")], strict=True):
    part = rev_forest[rev_forest.metric == metric].set_index("model").reindex(
        [f"{a} - {b}" for a, b in rev_pairs]).dropna(subset=["value"])
    y = np.arange(len(part))
    ax.errorbar(part.value, y, xerr=[part.value - part.low, part.high - part.value], fmt="o", color="C0",
                capsize=3)
    ax.axvline(0, color="0.5", linestyle="--")
    ax.set_yticks(y, part.index)
    ax.set_xlabel(f"difference in {label}")
    ax.invert_yaxis()
fig.suptitle(f"Paired differences at {rev_n_c:,} training reviews (95% intervals over test reviews)")
fig.tight_layout()
save(fig, output_dir, "forest")
plt.show()

# %% [markdown]
# ## 7.8 Learning curves at equal data
#
# One size says little about the next: a bag of words needs many examples to
# see each word, a pretrained encoder brings what it learned elsewhere, and
# fine-tuning it needs enough labels not to forget it. So: at each training
# size, **the same reviews** for the fine-tuned multi-task MiniLM, TF-IDF + LR
# and frozen MiniLM + LR, each scored on the same test reviews with paired
# bootstrap intervals (`rv.curve_table`); the TF-IDF model on `rev_tfidf_n`
# reviews is drawn as a separate, labelled reference line. Where a second seed
# ran (a different batch order and dropout, the same reviews), a verdict needs
# the sign to hold over both (`ecrec.verdict`).

# %%
rev_points = {(n, s): {FT: logits, TFIDF: rev_tfidf[n], FROZEN: rev_frozen[n], REF: rev_reference}
              for (n, s), logits in rev_ft.items()}
rev_curve = rv.curve_table(rev_labels["test"], rev_points, rev_tasks,
                           pairs=[(FT, TFIDF), (FT, FROZEN), (FT, REF), (FROZEN, TFIDF)],
                           n_boot=size["rev_n_boot"], seed=seed)
rev_curve[(rev_curve.seed == seed) & rev_curve.metric.isin(["recommended/auc", "rating/macro_f1"])
          & ~rev_curve.model.str.contains(" - ")].pivot_table(index="n", columns=["metric", "model"],
                                                                values="value").round(3)

# %% tags=["remove-input"]
REV_CURVE_METRICS = [("recommended/auc", "recommended AUC"), ("rating/macro_f1", "rating macro-F1")]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, (metric, label) in zip(axes, REV_CURVE_METRICS, strict=True):
    at = rev_curve[(rev_curve.metric == metric)]
    for color, model in (("C0", FT), ("C1", TFIDF), ("C2", FROZEN)):
        main = at[(at.model == model) & (at.seed == seed)].sort_values("n")
        ax.errorbar(main.n, main.value, yerr=[main.value - main.low, main.high - main.value], marker="o",
                    color=color, capsize=3, label=model if model != FT else "fine-tuned MiniLM (multi-task)")
        other = at[(at.model == model) & (at.seed != seed)]
        if model == FT and len(other):
            ax.scatter(other.n, other.value, facecolors="none", edgecolors=color, label="fine-tuned, seed "
                       f"{seed + 1}")
    ref = at[(at.model == REF)].iloc[0]
    ax.axhline(ref.value, color="C1", linestyle="--", label=f"reference: TF-IDF + LR on {len(rev_ref_frame):,} reviews")
    ax.axhspan(ref.low, ref.high, color="C1", alpha=0.12)
    ax.set_xscale("log")
    ax.set_xticks(rev_sizes, [f"{n:,}" for n in rev_sizes])
    ax.minorticks_off()
    ax.set_xlabel("training reviews (the same for every model at a size)")
    ax.set_ylabel(f"{label} on {len(rev_enc['test']):,} test reviews")
axes[0].legend(fontsize="small")
fig.suptitle("Learning curves at equal data (95% bootstrap intervals over test reviews)")
fig.tight_layout()
save(fig, output_dir, "learning_curves")
plt.show()

# %% tags=["remove-input"]
rev_kept_by_n = {n: rev_curve_runs[(n, seed)].best_step == 0 for n in rev_sizes}
rev_verdicts = {(metric, b): rv.curve_verdicts(rev_curve, FT, b, metric, main_seed=seed, kept_start=rev_kept_by_n)
                for metric, _ in REV_CURVE_METRICS for b in (TFIDF, FROZEN, REF)}
rev_sentences = {(metric, b): rv.crossover_sentence(rev_verdicts[(metric, b)], "fine-tuned MiniLM",
                                                    "TF-IDF + LR" if b == TFIDF else b, label)
                 for metric, label in REV_CURVE_METRICS for b in (TFIDF, FROZEN)}
rev_top = {metric: rev_verdicts[(metric, REF)].iloc[-1] for metric, _ in REV_CURVE_METRICS}
display(Markdown("\n\n".join(
    [rev_sentences[(m, b)] for m, _ in REV_CURVE_METRICS for b in (TFIDF, FROZEN)]
    + [f"Against the reference, TF-IDF + LR on {len(rev_ref_frame):,} training reviews, the fine-tuned MiniLM on "
       f"{max(rev_sizes):,}: {label} {rev_top[m].text}." for m, label in REV_CURVE_METRICS])))

# %% tags=["remove-input"]
rev_thesis = []
for metric, label in REV_CURVE_METRICS:
    rev_thesis += rv.curve_thesis_rows(
        rev_verdicts[(metric, TFIDF)], question="review text: fine-tuned MiniLM vs TF-IDF + LR at equal data",
        metric=label, lm=FT, baseline=TFIDF, table=rev_curve, metric_key=metric, kept_start=rev_kept_by_n,
        chapter="07")
    top = rev_verdicts[(metric, REF)].iloc[-1]
    rev_thesis.append(verdict.thesis_row(
        chapter="07", question="review text: fine-tuned MiniLM vs TF-IDF + LR on all the training reviews",
        metric=label, lm=FT, baseline=REF, r={"diff": top["diff"], "low": top["low"], "high": top["high"],
                                            "level": top["level"]},
        train_size=f"{max(rev_sizes)} vs {len(rev_ref_frame)}", kept_start=rev_kept_by_n[max(rev_sizes)]))
for row in rev_thesis:
    row["lm"] = "fine-tuned MiniLM (multi-task)"
REV_LESSON = (
    f"In this run ({run_profile} profile, {PRECISION}, up to {max(rev_sizes):,} reviews fine-tuned, "
    f"{rev_max_length} tokens): {rev_sentences[('recommended/auc', TFIDF)][:-1]}; and against TF-IDF + LR on "
    f"{len(rev_ref_frame):,} reviews, the fine-tuned MiniLM on {max(rev_sizes):,} gives a recommended AUC "
    f"{rev_top['recommended/auc'].text}.")
display(Markdown(f"**{REV_LESSON}**"))

# %% [markdown]
# ## 7.9 Where the rating head goes wrong
#
# The confusion matrix of the rating head of the multi-task model trained on
# the most reviews, on the test reviews, each row normalised to the reviews with that true rating; then a few
# of its largest real errors (two stars or more off, most confident first),
# shortened.

# %% tags=["remove-input"]
rev_rating_logits = rev_ft[(max(rev_sizes), seed)]["rating"]
rev_rating_true = rev_labels["test"]["rating"] + 1
rev_rating_pred = rev_rating_logits.argmax(1) + 1
fig, ax = plt.subplots(figsize=(4.5, 4))
ConfusionMatrixDisplay(confusion_matrix(rev_rating_true, rev_rating_pred, labels=[1, 2, 3, 4, 5], normalize="true"),
                       display_labels=[1, 2, 3, 4, 5]).plot(ax=ax, values_format=".2f", colorbar=False)
ax.set_xlabel("predicted stars")
ax.set_ylabel("true stars")
ax.set_title(f"Rating head (multi-task, {max(rev_sizes):,} reviews), rows sum to 1")
save(fig, output_dir, "rating_confusion")
plt.show()

# %%
rev_p_rating = np.exp(rev_rating_logits - rev_rating_logits.max(1, keepdims=True))
rev_p_rating /= rev_p_rating.sum(1, keepdims=True)
rev_errors = rev_frames["test"].assign(
    true=rev_rating_true, predicted=rev_rating_pred, confidence=rev_p_rating.max(1),
    p_recommended=1 / (1 + np.exp(-rev_ft[(max(rev_sizes), seed)]["recommended"])))
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
# ## 7.10 An item-level sentiment feature
#
# A ranking model can use, per item, *how its reviews sound*: average the
# fine-tuned model's expected rating $\hat r$ over the item's reviews. Does it
# track the item's average rating, and how many reviews does it need?
#
# Draw `rev_items` items at random among those with at least
# $\max k + 10$ test reviews (all held out from training), and score up to
# `rev_item_reviews` of each item's reviews with the multi-task model trained on
# the most reviews. Put each
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
item_enc = rv.encode_reviews(rev_tokenizer, item_scored, rev_tasks, max_length=rev_max_length)
item_scores = pd.Series(np.nan, index=item_frame.index)
item_scores[item_scored.index] = rv.expected_rating(
    rv.predict_outputs(rev_multi, item_enc, device=device, precision=PRECISION)["rating"])
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
save(fig, output_dir, "item_sentiment")
plt.show()
item_curve.round(3)

# %% tags=["remove-input"]
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
# ## 7.11 Bad input gets a clear error
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

# %% tags=["remove-input"]
def _r4(x) -> float:
    return round(float(x), 4)


metrics = {
    "prep": prep_report,
    "n_train": len(rev_enc["train"]), "n_valid": len(rev_enc["valid"]), "n_test": len(rev_enc["test"]),
    "compare_n": rev_n_c, "curve_sizes": list(rev_sizes), "reference_n": len(rev_ref_frame),
    "max_length": rev_max_length, "cut_share": {str(k): _r4(v) for k, v in rev_cut.items()},
    "precision": PRECISION, "torch_threads": torch.get_num_threads(),
    "curve": [{k: (_r4(v) if isinstance(v, float) else v) for k, v in row.items()}
              for row in rev_curve.to_dict("records")],
    "curve_runs": {f"{n}/{s}": {"steps": len(r.steps), "best_step": r.best_step,
                                "start_valid_loss": _r4(r.start_valid_loss), "best_valid_loss": _r4(r.best_valid_loss),
                                "train_seconds": round(r.train_seconds, 1)} for (n, s), r in rev_curve_runs.items()},
    "curve_verdicts": {f"{FT} - {b}/{m}": v[["n", "word"]].to_dict("records") for (m, b), v in rev_verdicts.items()},
    "lesson": REV_LESSON,
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
    "lora_saved_tensors": len(lora_state),
    "item_curve": {str(k): {c: _r4(v) for c, v in row.items()} for k, row in item_curve.iterrows()},
    "seconds": round(time.time() - STARTED, 1),
}
metrics["models"]["multi-task/recommended/auc"]

# %% tags=["remove-input"]
write_metrics(output_dir, {**metrics, "thesis": rev_thesis}, profile=run_profile, seed=seed, started=STARTED)
print(f"chapter 07 ran in {time.time() - STARTED:.0f} s (profile {run_profile})")

# %% [markdown]
# ## Summary
#
# * Reviews carry their labels in their words, and a bag of words reads many
#   of them cheaply. Whether a fine-tuned MiniLM beats TF-IDF + LR, or its own
#   frozen vectors, depends on how many labelled reviews both get: section
#   7.8 measures it at equal data, states where the curves cross (or that
#   they do not) from the run, and draws TF-IDF on all training reviews as a
#   reference line. The lesson, computed, closes that section.
# * One encoder with three heads (hard sharing) trains the three tasks for the
#   cost of one; LoRA trains a fraction of a percent of the parameters.
# * Start the heads from the probes and score validation at step 0: a run can
#   then only improve on the frozen model *on validation*; a run that keeps its
#   step-0 weights = its probe, and a fine-tuned model that loses is a bug to
#   hunt first (overfit a few examples, check the pooling, the learning rates).
# * Per-review scores averaged per item make an item-level sentiment feature;
#   section 7.10 measures how close it gets to an item's average rating as its
#   reviews accumulate, against the stars seen so far and the training mean.
#
# The lesson of this run:

# %% tags=["remove-input"]
# shown here, and glued (myst-nb's format) into the chapter's opening: {glue:md}`ch07_lesson`
display({"text/markdown": REV_LESSON, "text/plain": REV_LESSON}, raw=True,
        metadata={"scrapbook": {"name": "ch07_lesson", "mime_prefix": ""}})

# %% [markdown]
# ## Exercises
#
# 1. *(runnable)* Which part of a review carries the label? Fit TF-IDF + LR on
#    the title only, the review text only and the joined text, and compare the
#    recommended AUC and the rating macro-F1 with paired intervals. A worked
#    solution is in `notebooks/solutions/07_exercises.py`.
# 2. *(runnable)* Build the item sentiment curve from the TF-IDF model's
#    expected rating instead of the fine-tuned model's. Does the shape change?
#    (solution in the same file)
# 3. Add the item sentiment feature to chapter 03's CTR model as an item
#    feature. Use only reviews written before the example's time.
# 4. Model the rating as ordinal (one threshold per star, the order of the
#    stars used) instead of 5 classes: does the MAE in stars drop at the
#    same macro-F1?
