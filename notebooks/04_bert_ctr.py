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
# # 4. Fine-tuning BERT for CTR prediction
#
# Chapter 03's DNN learns one embedding per item **ID**. An item that never sold
# in the training window has no embedding worth the name: the model falls back
# to the "unknown" bucket and to popularity counts. Yet a new product arrives
# with a description, "JUMBO BAG PINK POLKADOT", that says a lot to anyone who
# has seen "JUMBO BAG RED RETROSPOT" sell. A pretrained language model reads
# that text.
#
# This chapter turns a CTR example into a **text pair** and fine-tunes a BERT
# (MiniLM, 22M parameters, offline) to predict the purchase:
#
# * `text_a`: the user's recent purchases, descriptions newest first;
# * `text_b`: the candidate item's description;
# * label: 1 bought, 0 a sampled negative (chapter 03's examples).
#
# Five strategies on the same examples, one table: (1) the **frozen** encoder
# with a logistic-regression head, (2) **full fine-tuning**, (3) **LoRA**,
# (4) **FGM** adversarial training, (5) **transfer**: the fine-tuned score as
# one more feature of chapter 03's DNN. The lesson to look for is the AUC on
# **cold-start items**, set against the ID-based DNN on the very same examples.
# The chapter ends with the training loop most tutorials show, what is wrong
# with it, and how much faster ours is.

# %% tags=["parameters"]
profile = "auto"  # "auto" | "smoke" | "cpu" | "full"
seed = 42
output_dir = "outputs/04_bert_ctr"
sizes = None  # optional dict overriding the profile's sizes
model_name = "minilm"  # or any Hugging Face name (bert-base-uncased...) when online
cache_dir = None  # chapter 03's dataset cache; None: <output_dir>/../cache

# %%
# In Colab: fetch the book's code and data, then install it (skipped elsewhere).
import os
import subprocess
import sys

if "google.colab" in sys.modules and not os.path.isdir("ecrec-book"):
    subprocess.run(["git", "clone", "--depth", "1", "https://github.com/ecrec-book/ecrec", "ecrec-book"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements.txt"], cwd="ecrec-book", check=True)
    sys.path.insert(0, os.path.abspath("ecrec-book"))

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display
from sklearn.linear_model import LogisticRegression

from ecrec import bert, ctr
from ecrec.data import load_clean_online_retail
from ecrec.features import (
    CtrDatasetConfig,
    add_item_attributes,
    item_catalog,
    load_or_build_ctr_dataset,
)
from ecrec.io import write_metrics
from ecrec.metrics import log_loss, roc_auc
from ecrec.plots import save
from ecrec.profiles import pick_sizes, seed_everything
from ecrec.text import encode_texts, load_tokenizer

STARTED = time.time()
SIZES = {
    # every strategy in about 4 minutes on 2 CPU cores: short inputs (3 newest items, 48 tokens)
    "smoke": {"max_users": 250, "n_train": 768, "n_valid": 256, "n_eval": 512, "n_eval_cold": 256,
              "n_dnn": 2000, "max_length": 48, "n_history": 3, "epochs": 1, "batch_size": 32,
              "lr": 1e-4, "head_lr": 1e-3, "lora_lr": 1e-3, "fgm_epsilons": [0.3, 1.0], "naive_steps": 4},
    # what "auto" picks without a GPU: about 10-12 minutes on 2 cores (estimate)
    "cpu": {"max_users": 250, "n_train": 3000, "n_valid": 1000, "n_eval": 2000, "n_eval_cold": 1000,
            "n_dnn": 10000, "max_length": 64, "n_history": 5, "epochs": 1, "batch_size": 32,
            "lr": 1e-4, "head_lr": 1e-3, "lora_lr": 1e-3, "fgm_epsilons": [0.3, 1.0], "naive_steps": 8},
    # one Colab T4, about 20 minutes (estimate, not yet run)
    "full": {"max_users": None, "n_train": 40000, "n_valid": 4000, "n_eval": 10000, "n_eval_cold": 4000,
             "n_dnn": 50000, "max_length": 96, "n_history": 8, "epochs": 2, "batch_size": 64,
             "lr": 5e-5, "head_lr": 1e-3, "lora_lr": 5e-4, "fgm_epsilons": [0.1, 0.3, 1.0], "naive_steps": 30},
}
run_profile, size = pick_sizes(profile, SIZES, sizes)
seed_everything(seed)
output_dir = Path(output_dir)
device = bert.pick_device()
print(f"profile={run_profile}, device={device}, precision={bert.amp_plan(device).name}")
size

# %% [markdown]
# ## 1. The examples, from chapter 03
#
# Same dataset, same cache: `load_or_build_ctr_dataset` reads chapter 03's parquet
# (same `CtrDatasetConfig`: seed, `max_users`, default sampler) and rebuilds it
# deterministically when it is not there. We draw
# four disjoint samples:
#
# * **BERT train** (from the train window) and **valid** (validation window, for early stopping);
# * **DNN train**: more train-window rows, kept apart from BERT's, on which the
#   ID-based DNN (and the transfer strategy) learn; a score BERT computed on rows
#   it was trained on would be over-confident, so the two never overlap;
# * **eval** (test window): a random sample, plus extra examples whose item is
#   **cold** (no purchase in the train window), so that the cold-start AUC rests
#   on enough examples. Overall metrics use the random part only.

# %%
clean, _ = load_clean_online_retail()
config = CtrDatasetConfig(seed=seed, max_users=size["max_users"])
data = load_or_build_ctr_dataset(clean, config, cache_dir or output_dir.parent / "cache")
catalog = item_catalog(clean)
descriptions = catalog.set_index("item_id")["description"]
rng = np.random.default_rng(seed)


def sample(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` rows of ``frame`` drawn without replacement (all of them if fewer)."""
    return frame.iloc[np.sort(rng.choice(len(frame), size=min(n, len(frame)), replace=False))]


train_pool = data[data.split == "train"]
bert_train = sample(train_pool, size["n_train"])
dnn_train = sample(train_pool.drop(bert_train.index), size["n_dnn"])
valid = sample(data[data.split == "valid"], size["n_valid"])
test = data[data.split == "test"]
eval_random = sample(test, size["n_eval"])
eval_cold = sample(test[test.cold_item & ~test.index.isin(eval_random.index)], size["n_eval_cold"])
evalset = pd.concat([eval_random.assign(random_part=True), eval_cold.assign(random_part=False)])
counts = pd.DataFrame(
    {name: {"rows": len(f), "positive rate": f.label.mean(), "cold items": f.cold_item.mean()}
     for name, f in [("bert_train", bert_train), ("valid", valid), ("dnn_train", dnn_train),
                     ("eval", evalset), ("eval, random part", eval_random)]}
).T
counts

# %% [markdown]
# ## 2. Examples as text pairs
#
# The user side lists the descriptions of the `n_history` most recent purchases,
# newest first: the most recent interest comes first and survives truncation.

# %%
pairs = {name: bert.build_text_pairs(f, descriptions, size["n_history"])
         for name, f in [("train", bert_train), ("valid", valid), ("dnn", dnn_train), ("eval", evalset)]}
with pd.option_context("display.max_colwidth", 120):
    display(pairs["train"].head(4))

# %% [markdown]
# **Tokenize once**, up front, without padding. Truncation `longest_first`
# removes tokens from the longer text (the history) until the pair fits in
# `max_length`, so the candidate is kept whole. Then look at the lengths: padding
# every pair to 128 tokens, as many tutorials do, would make the model read
# mostly `[PAD]`.

# %%
tokenizer = load_tokenizer(model_name)
enc = {k: bert.encode_pairs(tokenizer, p.text_a, p.text_b, p.label, size["max_length"]) for k, p in pairs.items()}
lengths = enc["train"].lengths
assert all(e.lengths.max() <= size["max_length"] for e in enc.values())  # every pair fits
batches = bert.length_grouped_batches(lengths, size["batch_size"], seed=seed)
padded_grouped = sum(lengths[b].max() * len(b) for b in batches)
real_tokens = int(lengths.sum())
pad_share = {"pad to 128": 1 - real_tokens / (128 * len(lengths)),
             "dynamic, length-grouped": 1 - real_tokens / padded_grouped}
fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(lengths, bins=30)
ax.axvline(128, color="C3", ls="--", label="fixed padding (128)")
ax.set_xlabel("tokens per pair ([CLS] a [SEP] b [SEP])")
ax.set_ylabel("pairs")
ax.legend()
ax.set_title("Pair lengths: " + ", ".join(f"{k}: {v:.0%} padding" for k, v in pad_share.items()))
save(fig, output_dir, "pair_lengths")
plt.show()

# %% [markdown]
# ## 3. The loss must be the log loss
#
# One logit $z$ per pair and $p = \sigma(z)$; the loss is binary cross-entropy
# with logits, which *is* chapter 02's log loss. Two classes with a softmax would
# be the same model ($\mathrm{softmax}(z_0, z_1)_1 = \sigma(z_1 - z_0)$) with one
# redundant weight vector. The trap: with `num_labels=1` and default settings,
# transformers decides the task is **regression** and its built-in loss is the
# mean squared error. `ecrec.bert` computes the loss itself in fp32
# (`bert.ctr_loss`) *and* sets `problem_type` so the built-in one agrees.

# %%
demo = tokenizer(list(pairs["train"].text_a[:8]), list(pairs["train"].text_b[:8]),
                 padding=True, truncation=True, max_length=64, return_tensors="pt")
y_demo = torch.tensor(pairs["train"].label[:8].to_numpy())
default_model = bert.load_ctr_model(model_name, seed=seed).eval()
default_model.config.problem_type = None  # what AutoModel...(num_labels=1) gives you
with torch.no_grad():
    z = default_model(**demo).logits
    loss_default = default_model(**demo, labels=y_demo[:, None]).loss.item()
    default_model.config.problem_type = "multi_label_classification"
    loss_fixed = default_model(**demo, labels=y_demo[:, None]).loss.item()
loss_checks = {
    "default (regression)": loss_default,
    "MSE by hand": torch.nn.functional.mse_loss(z[:, 0], y_demo).item(),
    "problem_type set": loss_fixed,
    "bert.ctr_loss": bert.ctr_loss(z, y_demo).item(),
    "log loss (ecrec.metrics)": log_loss(y_demo.numpy(), torch.sigmoid(z[:, 0]).numpy()),
}
del default_model
pd.Series(loss_checks, name="loss on 8 pairs")

# %% [markdown]
# ## 4. One evaluation for every strategy
#
# Test AUC and log loss on the random part of the eval sample; the same on the
# cold-item examples; trainable parameters; training wall time and samples/s.

# %%
results: dict[str, dict] = {}


def record(name: str, p: np.ndarray, trainable: int, seconds: float, samples: int) -> pd.Series:
    """Score ``p`` (probabilities for ``evalset``'s rows) and keep the row of the results table."""
    rnd = evalset.random_part.to_numpy()
    cold = evalset.cold_item.to_numpy()
    y = evalset.label.to_numpy()
    results[name] = {
        "auc": roc_auc(y[rnd], p[rnd]), "log_loss": log_loss(y[rnd], p[rnd]),
        "auc_cold_item": roc_auc(y[cold], p[cold]), "log_loss_cold_item": log_loss(y[cold], p[cold]),
        "trainable_params": int(trainable), "train_seconds": seconds,
        "samples_per_s": samples / max(seconds, 1e-9),
    }
    return pd.Series(results[name], name=name)


# %% [markdown]
# ### 4.1 The ID-based DNN of chapter 03 (the baseline)
#
# Trained on the DNN rows with IDs, user, item, user-item, context and sequence
# features. For a cold item it has only the unknown-ID bucket and popularity.

# %%
dnn_frames = {k: add_item_attributes(f, catalog) for k, f in
              [("train", dnn_train), ("valid", valid), ("eval", evalset)]}
cats, nums = ctr.group_columns(["ids", "user", "item", "user_item", "context", "sequence"],
                               dnn_frames["train"].columns)
dnn_config = ctr.DnnConfig(seed=seed, batch_size=256)
t0 = time.perf_counter()
id_dnn = ctr.train_dnn(dnn_frames["train"], dnn_frames["valid"], categorical=cats, numeric=nums,
                       config=dnn_config)
record("id_dnn", id_dnn.predict_proba(dnn_frames["eval"]), sum(p.numel() for p in id_dnn.net.parameters()),
       time.perf_counter() - t0, len(dnn_train) * len(id_dnn.history["train_loss"]))

# %% [markdown]
# How much of the task is "is this a popular product?" One column, no model: the
# item's purchases (any user) in the 30 days before the example, used as the score.

# %%
popularity = {}
for part, mask in [("", evalset.random_part.to_numpy()), ("_cold_item", evalset.cold_item.to_numpy())]:
    popularity[f"auc{part}"] = roc_auc(evalset.label.to_numpy()[mask], evalset.i_pop_30d.fillna(0).to_numpy()[mask])
display(Markdown(
    f"The 30-day purchase count alone scores a test AUC of **{popularity['auc']:.3f}** "
    f"({popularity['auc_cold_item']:.3f} on cold items), against **{results['id_dnn']['auc']:.3f}** "
    f"({results['id_dnn']['auc_cold_item']:.3f}) for the whole ID-based DNN: even though the negatives "
    "are drawn from items sold in the last 30 days, "
    + ("popularity is most of the signal." if popularity["auc"] > results["id_dnn"]["auc"] - 0.05
       else "the DNN adds a good deal beyond popularity.")
))

# %% [markdown]
# ### 4.2 Strategy 1: frozen encoder + logistic regression
#
# The cheapest use of a language model: embed both texts once with the
# pretrained MiniLM (mean pooling, as in chapter 03's text features), and fit a
# logistic regression on $[u, v, u \odot v]$. Nothing inside BERT changes.

# %%
t0 = time.perf_counter()
texts = pd.unique(pd.concat([p[c] for p in pairs.values() for c in ("text_a", "text_b")]))
vectors = dict(zip(texts, encode_texts(list(texts), model_name, max_length=size["max_length"], progress=True),
                   strict=True))


def frozen_features(p: pd.DataFrame) -> np.ndarray:
    return bert.pair_features(np.stack([vectors[t] for t in p.text_a]), np.stack([vectors[t] for t in p.text_b]))


head = LogisticRegression(C=1.0, max_iter=2000).fit(frozen_features(pairs["train"]), pairs["train"].label)
frozen_seconds = time.perf_counter() - t0
record("frozen_lr", head.predict_proba(frozen_features(pairs["eval"]))[:, 1],
       head.coef_.size + head.intercept_.size, frozen_seconds, len(bert_train))

# %% [markdown]
# ### 4.3 Strategy 2: full fine-tuning
#
# Every weight of MiniLM and the new head learns. The loop (`bert.train_ctr_model`)
# is written out to be read; in short, per optimizer step:
#
# 1. a batch of pairs of similar lengths, padded to its longest (`DataCollatorWithPadding`);
# 2. forward under autocast (bf16 on this CPU or a recent GPU; fp16 with a
#    `GradScaler` on a T4), the loss in fp32, asserted finite;
# 3. backward, gradients accumulated over `grad_accum` batches, clipped to norm 1;
# 4. AdamW step, learning rate warmed up linearly then decayed to 0;
# 5. at each evaluation: `model.eval()`, `torch.inference_mode()`, validation AUC;
#    the best weights are kept and written to a safetensors checkpoint atomically.
#
# With the Hugging Face `Trainer` the same is a few lines, with the loop hidden:
#
# ```python
# args = TrainingArguments("out", per_device_train_batch_size=16, learning_rate=1e-4,
#                          warmup_ratio=0.1, max_grad_norm=1.0, bf16=True, group_by_length=True,
#                          eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
#                          metric_for_best_model="auc")
# Trainer(model, args, train_dataset=..., eval_dataset=..., data_collator=DataCollatorWithPadding(tok),
#         compute_metrics=...).train()
# ```

# %%
def train_config(**kw) -> bert.TrainConfig:
    base = dict(epochs=size["epochs"], batch_size=size["batch_size"], lr=size["lr"], head_lr=size["head_lr"],
                seed=seed, eval_every=None, patience=2)
    return bert.TrainConfig(**{**base, **kw})


def finetune(name: str, model, cfg: bert.TrainConfig, checkpoint: bool = False):
    """Train, score the eval sample, record the row; returns (model, TrainResult, eval probabilities)."""
    ckpt = output_dir / "checkpoints" / name if checkpoint else None
    res = bert.train_ctr_model(model, enc["train"], enc["valid"], cfg, tokenizer=tokenizer, device=device,
                               checkpoint_dir=ckpt,
                               checkpoint_meta={"model_name": model_name, "max_length": size["max_length"]})
    p = bert.predict_proba(model, enc["eval"], tokenizer=tokenizer, precision=cfg.precision)
    record(name, p, res.trainable_params, res.train_seconds, res.train_samples)
    return model, res, p


full_model, full_res, full_p = finetune("full_ft", bert.load_ctr_model(model_name, seed=seed), train_config(),
                                        checkpoint=True)
pd.DataFrame(full_res.history)

# %% [markdown]
# ### 4.4 Strategy 3: LoRA
#
# LoRA (Hu et al., 2021) freezes the pretrained weights and learns a low-rank
# update $W + \frac{\alpha}{r} BA$ of the attention's query and value projections;
# the new classifier head is trained in full and saved with the adapters
# (`modules_to_save`). Far fewer trainable parameters, a checkpoint of a few
# hundred kilobytes, and a larger learning rate.

# %%
lora_model = bert.add_lora(bert.load_ctr_model(model_name, seed=seed), r=8, alpha=16)
lora_trainable, lora_total = bert.count_params(lora_model)
print(f"LoRA: {lora_trainable:,} trainable of {lora_total:,} ({lora_trainable / lora_total:.2%})")
lora_model, lora_res, lora_p = finetune("lora", lora_model, train_config(lr=size["lora_lr"]), checkpoint=True)

# %% [markdown]
# ### 4.5 Strategy 4: FGM adversarial training
#
# FGM (Miyato, Dai and Goodfellow, 2017) moves each example's word embeddings a
# distance $\varepsilon$ in the direction that raises the loss fastest,
# $r = \varepsilon\, g / \lVert g \rVert_2$, and trains on that perturbed input too:
# each step costs two forward and backward passes. The ablation over $\varepsilon$
# shows how sensitive it is; with few examples the difference is mostly noise.

# %%
fgm_rows = {}
for eps in size["fgm_epsilons"]:
    name = f"fgm_eps{eps:g}"
    _, res, _ = finetune(name, bert.load_ctr_model(model_name, seed=seed), train_config(fgm_epsilon=eps))
    fgm_rows[eps] = {"valid_auc": res.best_valid_auc, **results[name]}
fgm_table = pd.DataFrame(fgm_rows).T.rename_axis("epsilon")
best_eps = max(fgm_rows, key=lambda e: fgm_rows[e]["valid_auc"])  # chosen on validation, not test
results["fgm"] = results[f"fgm_eps{best_eps:g}"]
print(f"FGM epsilon chosen on validation AUC: {best_eps}")
fgm_table[["valid_auc", "auc", "auc_cold_item", "log_loss", "samples_per_s"]]

# %% [markdown]
# ### 4.6 Strategy 5: transfer, the BERT score as a DNN feature
#
# The fine-tuned model scores every DNN row (never trained on them) and the
# ID-based DNN gets that score as one more numeric input: IDs and counts where
# the item is known, text where it is not.

# %%
t0 = time.perf_counter()
for k in ("train", "valid", "eval"):
    z = bert.predict_logits(full_model, enc["dnn" if k == "train" else k], tokenizer=tokenizer, progress=True)
    dnn_frames[k] = dnn_frames[k].assign(bert_score=z.astype(np.float64))
transfer = ctr.train_dnn(dnn_frames["train"], dnn_frames["valid"], categorical=cats, numeric=nums,
                         extra_numeric=["bert_score"], config=dnn_config)
record("transfer_dnn", transfer.predict_proba(dnn_frames["eval"]),
       sum(p.numel() for p in transfer.net.parameters()),
       full_res.train_seconds + time.perf_counter() - t0, len(dnn_train) * len(transfer.history["train_loss"]))

# %% [markdown]
# ## 5. Results
#
# Read the cold-item column against the ID-based DNN: on items nobody bought
# before the validation window, the DNN has no ID embedding, only its point-in-time
# popularity counts (which other users' purchases keep up to date); the text
# models read the description. Read the table with the run's sizes in mind too:
# popularity is most of the signal (above), the counts answer it directly, and a
# text model must learn it from examples, one description at a time.

# %%
order = ["id_dnn", "frozen_lr", "full_ft", "lora", "fgm", "transfer_dnn"]
table = pd.DataFrame(results).T.loc[order]
table

# %%
text_models = ["frozen_lr", "full_ft", "lora", "fgm"]
best_text = table.loc[text_models, "auc_cold_item"].idxmax()
gap = table.loc[best_text, "auc_cold_item"] - table.loc["id_dnn", "auc_cold_item"]
lift = table.loc["transfer_dnn", "auc_cold_item"] - table.loc["id_dnn", "auc_cold_item"]
finetuned = ["full_ft", "lora", "fgm"]
best_ft = table.loc[finetuned, "auc"].idxmax()
ft_vs_frozen = table.loc[best_ft, "auc"] - table.loc["frozen_lr", "auc"]
display(Markdown(
    f"With {len(bert_train):,} training pairs and {full_res.optimizer_steps} optimizer steps, the best "
    f"fine-tuned model ({best_ft}) reaches a test AUC of {table.loc[best_ft, 'auc']:.3f}, "
    f"{ft_vs_frozen:+.3f} against the frozen encoder with a logistic regression "
    f"({table.loc['frozen_lr', 'auc']:.3f}), which needs no training step. "
    + ("At these sizes fine-tuning has not learned the task: " if table.loc[best_ft, "auc"] < 0.6 else "")
    + f"every text model stays far below the ID-based DNN ({table.loc['id_dnn', 'auc']:.3f}). "
    f"On the {int(evalset.cold_item.sum())} cold-item examples the best text-only model, {best_text}, is "
    f"{gap:+.3f} AUC from the ID-based DNN ({table.loc['id_dnn', 'auc_cold_item']:.3f}): "
    + ("text wins there. " if gap > 0 else "the popularity counts still win, even on items the DNN never saw. ")
    + f"Adding the BERT score to the DNN (transfer) changes its AUC by "
    f"{table.loc['transfer_dnn', 'auc'] - table.loc['id_dnn', 'auc']:+.3f} overall and {lift:+.3f} on cold items."
))

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
x = np.arange(len(order))
ax.bar(x - 0.2, table["auc"], 0.4, label="test AUC (random sample)")
ax.bar(x + 0.2, table["auc_cold_item"], 0.4, label="test AUC, cold items")
ax.axhline(0.5, color="grey", lw=1, ls="--")
ax.set_xticks(x, order, rotation=20)
ax.set_ylim(0.4, 1.0)
ax.set_ylabel("AUC")
ax.legend(loc="upper left", fontsize="small")
ax.set_title("Overall vs cold-start AUC on the same examples")
save(fig, output_dir, "auc_by_strategy")
plt.show()

# %% [markdown]
# ## 6. Checkpoints come back identical
#
# Both checkpoints were written during training (best validation AUC) as
# safetensors, atomically. Reloading them, the LoRA one included (base model +
# adapters + saved head), must give the same logits.

# %%
ckpt_diff = {}
for name, model in [("full_ft", full_model), ("lora", lora_model)]:
    again = bert.load_checkpoint(output_dir / "checkpoints" / name, device=str(device))
    a = bert.predict_logits(model, enc["valid"], tokenizer=tokenizer, precision="fp32")
    b = bert.predict_logits(again, enc["valid"], tokenizer=tokenizer, precision="fp32")
    size_mb = (output_dir / "checkpoints" / name / bert.WEIGHTS_FILE).stat().st_size / 1e6
    ckpt_diff[name] = {"max_abs_logit_diff": float(np.abs(a - b).max()), "file_MB": size_mb}
    del again
pd.DataFrame(ckpt_diff).T

# %% [markdown]
# ## 7. The common tutorial loop, made right
#
# Many fine-tuning tutorials tokenize each example inside the `Dataset`, padded
# to 128 tokens, train in fp32, and evaluate with `torch.argmax(logits, dim=2)`,
# a line copied from token classification. On a sequence classifier the logits
# are 2-D, (batch, labels): that line raises. "Fixed" to `dim=1` on a one-logit
# model it predicts class 0 for everyone: an accuracy equal to the share of
# negatives and an AUC of exactly 0.5, which looks like a model that learned
# nothing rather than a bug.

# %%
logits = torch.as_tensor(bert.predict_logits(full_model, enc["eval"], tokenizer=tokenizer))[:, None]
try:
    bert.naive_argmax_predictions(logits)
except IndexError as exc:
    print("argmax(dim=2):", type(exc).__name__, "-", exc)
y_eval = evalset.label.to_numpy()
wrong = torch.argmax(logits, dim=1).numpy()
right = torch.sigmoid(logits[:, 0]).numpy()
readout = pd.DataFrame({
    "argmax(dim=1)": {"accuracy": (wrong == y_eval).mean(), "AUC": roc_auc(y_eval, wrong)},
    "sigmoid(logit)": {"accuracy": ((right > 0.5) == y_eval).mean(), "AUC": roc_auc(y_eval, right)},
})
readout

# %% [markdown]
# Now the speed: the same model, examples and optimizer for a few steps, the
# tutorial's loop (per-example tokenization, padding to 128, fp32) against ours
# (tokenized once, length-grouped dynamic padding, bf16 autocast where
# supported). `benchmarks/bench_bert.py` measures it at length, AUC included.

# %%
steps = size["naive_steps"]
n_steps_pairs = steps * size["batch_size"]
naive = bert.train_naive(bert.load_ctr_model(model_name, seed=seed).to(device), tokenizer,
                         pairs["train"].text_a[:n_steps_pairs], pairs["train"].text_b[:n_steps_pairs],
                         pairs["train"].label[:n_steps_pairs], steps=steps, batch_size=size["batch_size"],
                         lr=size["lr"], seed=seed)
ours = bert.train_ctr_model(bert.load_ctr_model(model_name, seed=seed), enc["train"].subset(range(n_steps_pairs)),
                            enc["valid"], train_config(max_steps=steps), tokenizer=tokenizer, device=device)
speed = pd.Series({"tutorial loop": naive["samples_per_s"], "ecrec loop": ours.samples_per_s},
                  name="training samples/s")
speedup = speed["ecrec loop"] / speed["tutorial loop"]
print(f"ecrec's loop trains {speedup:.1f}x faster here ({ours.precision}, dynamic padding)")
speed

# %%
write_metrics(
    output_dir,
    {
        "strategies": results,
        **{f"{s}_{k}": v for s, r in results.items() for k, v in r.items()},
        "popularity_30d_auc": popularity["auc"],
        "popularity_30d_auc_cold_item": popularity["auc_cold_item"],
        "best_finetuned": best_ft,
        "best_finetuned_auc_minus_frozen": ft_vs_frozen,
        "full_ft_optimizer_steps": full_res.optimizer_steps,
        "lora_trainable_params": lora_trainable,
        "lora_total_params": lora_total,
        "fgm_best_epsilon": best_eps,
        "fgm_epsilons": size["fgm_epsilons"],
        "checkpoint_max_abs_logit_diff_full": ckpt_diff["full_ft"]["max_abs_logit_diff"],
        "checkpoint_max_abs_logit_diff_lora": ckpt_diff["lora"]["max_abs_logit_diff"],
        "lora_checkpoint_mb": ckpt_diff["lora"]["file_MB"],
        "loss_default_problem_type": loss_checks["default (regression)"],
        "loss_mse_by_hand": loss_checks["MSE by hand"],
        "loss_problem_type_set": loss_checks["problem_type set"],
        "loss_ctr_loss": loss_checks["bert.ctr_loss"],
        "loss_log_loss": loss_checks["log loss (ecrec.metrics)"],
        "pad_share_fixed128": pad_share["pad to 128"],
        "pad_share_dynamic": pad_share["dynamic, length-grouped"],
        "max_pair_tokens": int(max(e.lengths.max() for e in enc.values())),
        "max_length": size["max_length"],
        "naive_argmax_dim1_auc": readout.loc["AUC", "argmax(dim=1)"],
        "naive_samples_per_s": naive["samples_per_s"],
        "ecrec_samples_per_s": ours.samples_per_s,
        "loop_speedup": speedup,
        "precision": bert.amp_plan(device).name,
        "n_bert_train": len(bert_train), "n_valid": len(valid), "n_dnn_train": len(dnn_train),
        "n_eval_random": int(evalset.random_part.sum()), "n_eval_cold_item": int(evalset.cold_item.sum()),
    },
    profile=run_profile, seed=seed, started=STARTED, device=str(device),
)
print(f"done in {time.time() - STARTED:.0f} s")

# %% [markdown]
# ## What to try next
#
# * Pass `model_name="bert-base-uncased"` (online) with the `full` profile on a GPU:
#   does a 110M-parameter model read product text better than the 22M MiniLM?
# * Put more into `text_a`: the country, the hour, how long ago each item was bought
#   ("2 days ago: JUMBO BAG RED RETROSPOT"). Text is a flexible feature encoder.
# * LoRA with a larger rank `r`, or on all linear layers
#   (`target_modules=["query", "key", "value", "dense"]`): where does it catch up
#   with full fine-tuning?
# * Fine-tune on the DNN rows too with out-of-fold scores (k-fold cross-fitting),
#   so the transfer DNN can use every training example.
# * Train with `precision="fp32"` and compare the wall time and the AUC with bf16.
