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
# Chapter 03's DNN learns one embedding per item **ID**. A product that sold
# little has a weak embedding; a new one has none. Yet it arrives with a
# description, "JUMBO BAG PINK POLKADOT", that means something to anyone who
# has seen "JUMBO BAG RED RETROSPOT" sell. A pretrained language model reads
# that text. This chapter asks, with numbers and intervals: **when does text
# help a CTR model, and by how much?**
#
# **You will learn to**
#
# * build a text CTR model the way its checkpoint was trained (mean pooling for
#   sentence-transformers MiniLM, not an untrained `[CLS]` pooler), and check
#   every new parameter's initialisation, learning rate and saving;
# * warm-start the head from a linear probe and early-stop honestly, so that
#   fine-tuning never ends below where it started;
# * write the training loop by hand, then use `ecrec.finetune.train_ctr_model`
#   (the same loop plus batching, clipping, warm-up, checkpoints) and compare it
#   with Hugging Face's `Trainer`;
# * compare a **cross-encoder** and a **bi-encoder** (two towers, shared
#   weights), LoRA and FGM;
# * see why the negatives decide what a model can learn: with negatives drawn
#   uniformly from recently sold items, popularity alone wins; with
#   **popularity-matched** negatives, a model must personalise;
# * measure whether text added to the ID model helps, with bootstrap intervals
#   over users.
#
# **You need** chapter 02 (log loss on logits) and chapter 03 (the dataset, the
# time split, sampled negatives, the ID DNN). "CTR" here is chapter 03's task:
# did the user buy this item, against sampled negatives; not clicks on
# impressions.

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
import inspect
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display
from scipy import sparse
from sklearn.linear_model import LogisticRegression

from ecrec import bert, ctr, finetune, pairs, recall
from ecrec.data import load_clean_online_retail
from ecrec.features import (
    DATASET_SIZES,
    add_item_attributes,
    dataset_config,
    item_catalog,
    load_or_build_ctr_dataset,
)
from ecrec.io import write_metrics
from ecrec.metrics import roc_auc
from ecrec.plots import save
from ecrec.profiles import pick_sizes, seed_everything
from ecrec.stats import bootstrap_auc, interval_table
from ecrec.text import load_tokenizer

STARTED = time.time()
SIZES = {
    # CI: 2 CPU cores, fp32 (measured: 1.8 min idle, 6 min with other jobs). Every strategy runs, on few examples.
    "smoke": {**DATASET_SIZES["smoke"], "n_train": 256, "n_valid": 256, "n_probe": 8000, "n_history": 3,
              "item_tokens": 24, "pair_tokens": 48, "batch_size": 16, "epochs": 1, "eval_every": 8,
              "lr": 1e-4, "head_lr": 1e-3, "lora_lr": 1e-3, "fgm_epsilon": 0.5, "cross_users": 12,
              "dnn_epochs": 4, "dnn_seeds": 1, "n_boot": 300, "loop_steps": 2, "_minutes": (2, 6)},
    # what "auto" picks without a GPU: 1,000 users to narrow the intervals, 3 DNN seeds
    # (measured: 7.1-8.3 min on 2 idle CPU cores; the DNNs on ~290k train rows take most of it).
    "cpu": {**DATASET_SIZES["smoke"], "max_users": 1000, "n_train": 1536, "n_valid": 1024, "n_probe": 20000, "n_history": 3,
            "item_tokens": 24, "pair_tokens": 48, "batch_size": 16, "epochs": 1, "eval_every": 16,
            "lr": 1e-4, "head_lr": 1e-3, "lora_lr": 1e-3, "fgm_epsilon": 0.5, "cross_users": 30,
            "dnn_epochs": 4, "dnn_seeds": 3, "n_boot": 1000, "loop_steps": 3, "_minutes": (7, 9)},
    # one Colab-class GPU (not yet measured: see benchmarks/NOTES.md).
    "full": {**DATASET_SIZES["full"], "n_train": 40000, "n_valid": 4000, "n_probe": 40000, "n_history": 5,
             "item_tokens": 32, "pair_tokens": 96, "batch_size": 64, "epochs": 2, "eval_every": 100,
             "lr": 5e-5, "head_lr": 1e-3, "lora_lr": 5e-4, "fgm_epsilon": 0.5, "cross_users": 400,
             "dnn_epochs": 8, "dnn_seeds": 3, "n_boot": 1000, "loop_steps": 20, "_minutes": (30, 45)},
}
run_profile, size = pick_sizes(profile, SIZES, sizes)
seed_everything(seed)
output_dir = Path(output_dir)
device = finetune.pick_device()
PRECISION = finetune.amp_plan(device).name
print(f"training on {device} in {PRECISION}")
size

# %% [markdown]
# ## 4.1 Two regimes of negatives
#
# Chapter 03 pairs each purchase with `neg_ratio` sampled negatives, items sold
# in the 30 days before the purchase. *How* they are drawn decides what the
# task rewards:
#
# * **uniform** over those items (chapter 03's default): a positive is an item
#   somebody chose to buy, so it tends to be popular; a negative is any item
#   that sold at least once. "Is this item popular?" then answers most of the
#   question, and text has little left to add;
# * **popularity-matched**: negatives drawn in proportion to their recent sales,
#   so positives and negatives are equally popular on average. What is left is
#   *this user's* taste, which IDs, history and text can speak to.
#
# Same users, same time split, same features; only the sampler differs.

# %%
clean, _ = load_clean_online_retail()
catalog = item_catalog(clean)
REGIMES = {"uniform": "uniform", "popularity_matched": "popularity"}
data = {
    regime: load_or_build_ctr_dataset(
        clean, dataset_config(size, seed=seed, negatives=sampler),
        cache_dir or output_dir.parent / "cache")
    for regime, sampler in REGIMES.items()
}
pd.DataFrame({r: {"rows": len(d), "users": d.user_id.nunique(), "positive rate": d.label.mean(),
                  **{f"{s} rows": int((d.split == s).sum()) for s in ("train", "valid", "test")}}
              for r, d in data.items()})

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3), sharey=True)
bins = np.linspace(0, np.log1p(max(d.i_pop_30d.max() for d in data.values())), 30)
for ax, (regime, d) in zip(axes, data.items(), strict=True):
    train = d[d.split == "train"]
    for label, name in [(1, "bought"), (0, "sampled negative")]:
        ax.hist(np.log1p(train.i_pop_30d[train.label == label]), bins=bins, density=True, alpha=0.6, label=name)
    ax.set_title(regime)
    ax.set_xlabel("log(1 + sales of the item in the 30 days before)")
axes[0].set_ylabel("density")
axes[0].legend()
fig.suptitle("Uniform negatives are less popular than purchases; matched ones are not")
save(fig, output_dir, "popularity_by_regime")
plt.show()

# %% [markdown]
# ## 4.2 The model, done right
#
# A text CTR model is an encoder, a pooling that turns token vectors into one
# vector, and a head that turns that vector into one logit. The pooling must be
# the one the checkpoint was trained with. all-MiniLM-L6-v2 is a
# sentence-transformers checkpoint: its configuration says mean pooling, then
# L2 normalisation. `BertForSequenceClassification` would instead read the
# `[CLS]` token through BERT's pooler (dense + tanh), which this checkpoint
# never trained. Look at it:

# %%
from transformers import AutoModel  # noqa: E402

from ecrec.text import model_path  # noqa: E402

with_pooler = AutoModel.from_pretrained(model_path(model_name)).requires_grad_(False)
pooler_check = {}
if getattr(with_pooler, "pooler", None) is not None:
    pooler_check = {
        "pooler bias, max |b|": float(with_pooler.pooler.dense.bias.abs().max()),
        "pooler weight std": float(with_pooler.pooler.dense.weight.std()),
        "a layer's weight std (attention.output.dense)":
            float(with_pooler.encoder.layer[0].attention.output.dense.weight.std()),
    }
del with_pooler
print("pooling this checkpoint was trained with:", bert.checkpoint_pooling(model_name))
pd.Series(pooler_check, dtype=float)

# %% [markdown]
# A bias of exactly zero and a weight with the spread of BERT's random
# initialisation (std 0.02 truncated) mean the pooler was never trained. On such a
# checkpoint `ecrec.bert` loads the encoder **without** the pooler and mean-pools.
# The only new parameters are the head's: they get their own learning rate
# (`head_lr`), stay trainable under LoRA, and are saved with the adapters.
#
# Two architectures share these parts:
#
# * **cross-encoder**: `[CLS] history [SEP] candidate [SEP]` read together, pooled,
#   one logit. Attention crosses between the two texts, but every (user, item)
#   pair costs a full forward pass;
# * **bi-encoder**, two towers with shared weights: the item tower pools the
#   candidate's description into $v$; the user vector $u$ is the mean of the
#   item vectors of the last `n_history` purchases; the head reads
#   $[u, v, u \odot v]$. Item vectors depend on the item only: computed once,
#   cached, and reusable: by chapter 03's DNN (section 4.8) or by a recall
#   index like chapter 05's.

# %%
tokenizer = load_tokenizer(model_name)
PAD = tokenizer.pad_token_id
probe_model = bert.load_ctr_model(model_name, architecture="bi", seed=seed)
groups = finetune.optimizer_groups(probe_model, size["lr"], size["head_lr"], 0.01)
print("parameters created fresh:", bert.fresh_parameter_names(probe_model))
pd.DataFrame([{"lr": g["lr"], "weight decay": g["weight_decay"], "tensors": len(g["names"]),
               "e.g.": g["names"][0]} for g in groups])

# %% [markdown]
# ## 4.3 Examples for the text models
#
# From each regime's train window we draw `n_train` examples to fine-tune on,
# and `n_valid` from the validation window for early stopping. The DNNs train on
# the rest of the train window, so a score the text model computed on its own
# training rows never reaches them. Every model is tested on the **whole test
# window** (the cross-encoder, which is costly to score, on the rows of a random
# subset of test users).

# %%
rng = np.random.default_rng(seed)
descriptions = catalog.set_index("item_id")["description"]


def sample_rows(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` rows of ``frame`` drawn without replacement (all of them if fewer), in order."""
    return frame.iloc[np.sort(rng.choice(len(frame), size=min(n, len(frame)), replace=False))]


split = {}
for regime, d in data.items():
    d = add_item_attributes(d, catalog)
    train_pool = d[d.split == "train"]
    ft_train = sample_rows(train_pool, size["n_train"])
    split[regime] = {
        "ft_train": ft_train, "ft_valid": sample_rows(d[d.split == "valid"], size["n_valid"]),
        "dnn_train": train_pool.drop(ft_train.index), "valid": d[d.split == "valid"], "test": d[d.split == "test"],
    }
enc = {regime: {part: pairs.encode_histories(tokenizer, f, descriptions, size["n_history"], size["item_tokens"])
                for part, f in s.items()} for regime, s in split.items()}
pd.DataFrame({(r, p): {"rows": len(f), "positive rate": f.label.mean(), "cold items": f.cold_item.mean()}
              for r, s in split.items() for p, f in s.items()}).T

# %% [markdown]
# ## 4.4 The training loop, written out
#
# Before any helper, the loop itself: batches, forward, log loss on logits,
# backward, a step. Three steps of it on the bi-encoder, printing what to watch
# when a model does not learn: the loss, the gradient norm and the spread of the
# logits (a spread near 0 means every example gets the same score).

# %%
def plain_loop(model, data: pairs.EncodedHistories, steps: int, batch_size: int, lr: float) -> list[dict]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    order = np.random.default_rng(seed).permutation(len(data))
    log = []
    model.train()
    for step in range(steps):
        idx = order[step * batch_size : (step + 1) * batch_size]
        batch = data.batch(idx, PAD)  # distinct items' token ids, padded to the longest
        labels = torch.as_tensor(data.labels[idx])
        logits = model(**batch)  # (batch,)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)  # the log loss
        optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        log.append({"step": step + 1, "loss": loss.item(), "grad_norm": float(grad_norm),
                    "logit_std": logits.detach().std().item()})
    return log


t0 = time.perf_counter()
plain_log = plain_loop(bert.load_ctr_model(model_name, architecture="bi", seed=seed),
                       enc["popularity_matched"]["ft_train"], size["loop_steps"], size["batch_size"], size["lr"])
plain_seconds = time.perf_counter() - t0
pd.DataFrame(plain_log)

# %% [markdown]
# `finetune.train_ctr_model` is **this loop plus**: batches of similar lengths
# (little padding), gradient accumulation that weights every example equally,
# AdamW with the head's own learning rate and no weight decay on biases and
# LayerNorm, linear warm-up and decay, gradient clipping, mixed precision on a
# GPU, a validation score **before the first step** and every `eval_every`
# steps, early stopping that keeps the best weights (step 0 included), atomic
# checkpoints, and these per-step logs. Its inner step:

# %%
print(inspect.getsource(finetune.backward_window))
print(f"# ecrec/finetune.py, line {inspect.getsourcelines(finetune.train_ctr_model)[1]}: train_ctr_model")

# %% [markdown]
# ## 4.5 Baselines, per regime
#
# * **popularity**: the item's sales in the 30 days before the example, as the score;
# * **logistic regression on popularity counts** (7 days, 30 days, all time);
# * **ID DNN**: chapter 03's embedding DNN on IDs, user, item, user-item, context
#   and sequence features;
# * **item-CF**: the largest co-purchase cosine (Sarwar et al., 2001) between the
#   candidate and any history item, from the train window's purchases (an item
#   counts as fully similar to itself, so repeat purchases score 1);
# * **zero-shot text**: cosine between the candidate's MiniLM vector and the mean
#   of the history's (no training at all);
# * **frozen probe**: a logistic regression on the bi-encoder's features
#   $[u, v, u \odot v]$ from the frozen MiniLM; its coefficients will be the
#   fine-tuned model's starting head;
# * **ID DNN + frozen item vectors**: the DNN with each item's frozen MiniLM
#   vector as an input (`ctr.train_dnn(text=...)`).

# %%
item_ids = pd.Index(descriptions.index)
item_tokens = enc["uniform"]["ft_train"].item_tokens  # every catalogue item, tokenized once
frozen_vectors = finetune.item_vectors(probe_model, item_tokens, pad_id=PAD, progress=True)
print(f"{len(frozen_vectors):,} item vectors of {frozen_vectors.shape[1]} dims, "
      f"{frozen_vectors.nbytes / 1e6:.1f} MB in float32")
POP_COUNTS = ["i_pop_7d", "i_pop_30d", "i_pop_all"]
dnn_cats, dnn_nums = ctr.group_columns(["ids", "user", "item", "user_item", "context", "sequence"],
                                       split["uniform"]["test"].columns)


def train_id_dnn(regime: str, text=None, dnn_seed: int = seed, extra_numeric=()):
    s = split[regime]
    return ctr.train_dnn(s["dnn_train"], s["valid"], categorical=dnn_cats, numeric=dnn_nums, text=text,
                         extra_numeric=list(extra_numeric),
                         config=ctr.DnnConfig(seed=dnn_seed, max_epochs=size["dnn_epochs"]))


def item_cf_scores(regime: str, e: pairs.EncodedHistories) -> np.ndarray:
    """max over history items of the co-purchase cosine with the candidate (train-window purchases)."""
    bought = data[regime][(data[regime].split == "train") & (data[regime].label == 1)]
    users = bought.user_id.astype("category").cat.codes.to_numpy()
    items = item_ids.get_indexer(bought.item_id)
    matrix = sparse.csr_array((np.ones(len(bought)), (users, items)), shape=(users.max() + 1, len(item_ids)))
    sim = recall.item_cosine(matrix).toarray().astype(np.float32)  # (items, items), diagonal 0
    np.fill_diagonal(sim, 1.0)  # a repeat purchase is the most similar item there is
    per_hist = np.where(e.hist >= 0, sim[e.cand[:, None], np.maximum(e.hist, 0)], 0.0)  # (rows, n_history)
    return per_hist.max(1)


def frozen_probe(regime: str) -> LogisticRegression:
    e = enc[regime]["dnn_train"]
    rows = np.sort(np.random.default_rng(seed).choice(len(e), min(size["n_probe"], len(e)), replace=False))
    x = bert.bi_features(frozen_vectors, e.hist[rows], e.cand[rows])
    return LogisticRegression(C=1.0, max_iter=1000).fit(x, e.labels[rows])


scores: dict[str, dict[str, np.ndarray]] = {}
probes, id_dnns = {}, {}
for regime in REGIMES:
    test, e_test = split[regime]["test"], enc[regime]["test"]
    pop_lr = LogisticRegression(max_iter=1000).fit(np.log1p(split[regime]["dnn_train"][POP_COUNTS].fillna(0)),
                                                   split[regime]["dnn_train"].label)
    probes[regime] = frozen_probe(regime)
    id_dnns[regime] = train_id_dnn(regime)
    dim = frozen_vectors.shape[1]
    zero_shot = bert.bi_features(frozen_vectors, e_test.hist, e_test.cand)[:, 2 * dim :].sum(1)  # u . v
    scores[regime] = {
        "popularity_30d": test.i_pop_30d.fillna(0).to_numpy(float),
        "lr_popularity_counts": pop_lr.decision_function(np.log1p(test[POP_COUNTS].fillna(0))),
        "id_dnn": id_dnns[regime].predict_proba(test),
        "item_cf": item_cf_scores(regime, e_test),
        "zero_shot_text": zero_shot,
        "frozen_probe": probes[regime].decision_function(bert.bi_features(frozen_vectors, e_test.hist, e_test.cand)),
        "id_dnn_frozen_text": train_id_dnn(regime, text=(item_ids, frozen_vectors)).predict_proba(test),
    }
pd.DataFrame({r: {k: roc_auc(split[r]["test"].label.to_numpy(), v) for k, v in s.items()}
              for r, s in scores.items()}).round(4)

# %% [markdown]
# ## 4.6 Fine-tuning the bi-encoder, warm-started from the probe
#
# A head initialised at random starts with weights of norm about
# $0.02\sqrt{3 \cdot 384} \approx 0.7$; the probe's weights are far larger
# (printed below). With a learning rate of $10^{-3}$ and a few dozen steps the
# random head cannot get there, and the logits stay near the base rate. So we
# first fit the probe on the frozen features, copy its coefficients into the
# head ("LP-FT": Kumar et al., 2022), and fine-tune from there. Validation is
# scored at step 0: if fine-tuning does not improve on the probe, the probe's
# weights are what we keep.

# %%
def train_config(**overrides) -> finetune.TrainConfig:
    base = dict(epochs=size["epochs"], batch_size=size["batch_size"], lr=size["lr"], head_lr=size["head_lr"],
                eval_every=size["eval_every"], patience=3, seed=seed, progress=True)
    return finetune.TrainConfig(**{**base, **overrides})


def warm_bi_encoder(regime: str, lora: bool = False):
    model = bert.load_ctr_model(model_name, architecture="bi", seed=seed)
    bert.init_head_from_probe(model, probes[regime].coef_, probes[regime].intercept_)
    return bert.add_lora(model, r=8, alpha=16) if lora else model


runs, models = {}, {}
for regime in REGIMES:
    model = warm_bi_encoder(regime)
    runs[regime, "bi_ft"] = finetune.train_ctr_model(
        model, enc[regime]["ft_train"], enc[regime]["ft_valid"], train_config(), pad_id=PAD, device=device,
        checkpoint_dir=output_dir / "checkpoints" / f"bi_ft_{regime}", checkpoint_meta={"regime": regime})
    models[regime, "bi_ft"] = model
random_head = bert.load_ctr_model(model_name, architecture="bi").head.weight.detach()
print("weight norm of a random head:", round(float(random_head.norm()), 2),
      "| of the probes:", {r: round(float(np.linalg.norm(p.coef_)), 2) for r, p in probes.items()})
pd.DataFrame({f"{r} {m}": {"valid AUC at step 0": res.start_valid_auc, "best valid AUC": res.best_valid_auc,
                           "best step": res.best_step, "steps": res.optimizer_steps,
                           "samples/s": res.samples_per_s} for (r, m), res in runs.items()}).T

# %% [markdown]
# **LoRA** (Hu et al., 2021) freezes the pretrained weights and learns a
# low-rank update of the attention's query and value projections
# (`ecrec.bert.add_lora(model, r=8, alpha=16)`, with peft's `LoraConfig`).
# Each adapted linear layer with weight $W \in \mathbb{R}^{d \times k}$
# ($k$ inputs, $d$ outputs) becomes
#
# $$h = W x + \frac{\alpha}{r} B A\, \operatorname{dropout}(x),\qquad
# A \in \mathbb{R}^{r \times k},\quad B \in \mathbb{R}^{d \times r},\quad
# W' = W + \frac{\alpha}{r} B A,$$
#
# with $A$ random and $B = 0$ at the start, so the model starts exactly where
# the warm start left it; only $A$, $B$ (and the head) are trained, $r (d + k)$
# parameters per adapted matrix instead of $d k$. Here $r = 8$, $\alpha = 16$
# and the adapters' input dropout is 0.1 (`add_lora`'s defaults);
# `ecrec.bert.merge_lora` folds $\frac{\alpha}{r} B A$ into $W$ afterwards.
#
# **FGM** (Miyato, Dai and Goodfellow, 2017) trains on a second, adversarial
# input at every step. Let $e$ be the output of the word-embedding layer (the
# token vectors, before position embeddings and LayerNorm), shape (batch,
# tokens, hidden), and $g = \nabla_e L(e)$ the gradient of the batch's loss
# with respect to it. For each sequence $b$ of the batch,
#
# $$r_{adv,b} = \varepsilon\, \frac{g_b}{\lVert g_b \rVert_2},$$
#
# the norm taken over all of that sequence's tokens and hidden dimensions
# (`ecrec.finetune.FGM.perturbation`, with $\varepsilon$ = `fgm_epsilon`).
# The loss at $e + r_{adv}$ is back-propagated with $r_{adv}$ held constant,
# and the optimizer steps on the sum of both gradients,
# $\nabla_\theta L(e) + \nabla_\theta L(e + r_{adv})$: the model learns to
# keep its prediction when the input moves a little in the direction that
# hurts most. `ecrec.finetune.train_ctr_model` does this when
# `TrainConfig.fgm_epsilon` > 0. Both on the popularity-matched regime, from
# the same warm start.

# %%
REGIME = "popularity_matched"
for name, model, cfg in [
    ("bi_lora", warm_bi_encoder(REGIME, lora=True), train_config(lr=size["lora_lr"])),
    ("bi_fgm", warm_bi_encoder(REGIME), train_config(fgm_epsilon=size["fgm_epsilon"])),
]:
    ckpt = output_dir / "checkpoints" / name if name == "bi_lora" else None
    runs[REGIME, name] = finetune.train_ctr_model(model, enc[REGIME]["ft_train"], enc[REGIME]["ft_valid"], cfg,
                                                  pad_id=PAD, device=device, checkpoint_dir=ckpt)
    models[REGIME, name] = model
lora_trainable, lora_total = bert.count_params(models[REGIME, "bi_lora"])
print(f"LoRA trains {lora_trainable:,} of {lora_total:,} parameters ({lora_trainable / lora_total:.2%})")

# %% [markdown]
# The curves: validation AUC at every evaluation, step 0 being the probe.

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
for (regime, name), res in runs.items():
    h = pd.DataFrame(res.history)
    ax.plot(h.step, h.valid_auc, marker="o", label=f"{name}, {regime}")
ax.set_xlabel("optimizer step (0 = warm start from the probe)")
ax.set_ylabel("validation AUC")
ax.legend(fontsize="small")
ax.set_title("Fine-tuning from the probe: validation AUC per evaluation")
save(fig, output_dir, "finetune_curves")
plt.show()
step_log = pd.DataFrame(runs[REGIME, "bi_ft"].steps)
step_log.describe().loc[["mean", "min", "max"], ["loss", "grad_norm", "logit_std"]]

# %% [markdown]
# ## 4.7 The cross-encoder
#
# The same recipe on the pair `[CLS] history [SEP] candidate [SEP]`: a probe on
# the frozen pooled pair, copied into the head, then fine-tuning. It is scored on
# all test rows of a random subset of `cross_users` test users, against the
# bi-encoder on the very same rows.

# %%
def pair_data(frame: pd.DataFrame) -> pairs.EncodedPairs:
    p = pairs.build_text_pairs(frame, descriptions, size["n_history"])
    return pairs.encode_pairs(tokenizer, p.text_a, p.text_b, p.label, size["pair_tokens"])


s = split[REGIME]
test_users = np.sort(s["test"].user_id.unique())
cross_users = np.random.default_rng(seed).choice(test_users, min(size["cross_users"], len(test_users)), replace=False)
cross_rows = s["test"].user_id.isin(cross_users).to_numpy()
cross_enc = {"ft_train": pair_data(s["ft_train"]), "ft_valid": pair_data(s["ft_valid"]),
             "probe": pair_data(sample_rows(s["dnn_train"], size["n_train"])), "test": pair_data(s["test"][cross_rows])}
cross = bert.load_ctr_model(model_name, architecture="cross", seed=seed).eval()


def pooled(model, data) -> np.ndarray:
    """The frozen model's pooled pair vectors (what the head reads), in eval mode."""
    out = []
    with torch.inference_mode():
        for idx in pairs.sorted_batches(data.lengths, 128):
            batch = {k: v.to(model.head.weight.device) for k, v in data.batch(idx, PAD).items()}
            out.append((idx, model.features(**batch).cpu().numpy()))
    x = np.empty((len(data), model.head.in_features), np.float32)
    for idx, v in out:
        x[idx] = v
    return x


cross_probe = LogisticRegression(C=1.0, max_iter=1000).fit(pooled(cross, cross_enc["probe"]), cross_enc["probe"].labels)
bert.init_head_from_probe(cross, cross_probe.coef_, cross_probe.intercept_)
runs[REGIME, "cross_ft"] = finetune.train_ctr_model(cross, cross_enc["ft_train"], cross_enc["ft_valid"], train_config(),
                                                    pad_id=PAD, device=device)
cross_scores = {"cross_probe": cross_probe.decision_function(pooled(cross.eval(), cross_enc["test"])),
                "cross_ft": finetune.predict_logits(cross, cross_enc["test"], pad_id=PAD, progress=True)}
print(f"{cross_rows.sum():,} test rows of {len(cross_users)} users")

# %% [markdown]
# ## 4.8 Fine-tuned item vectors and scores, back into the ID DNN
#
# The fine-tuned bi-encoder scores every test row from cached item vectors
# (`bert.bi_logits`: no encoder pass per row). Its item tower's vectors replace
# the frozen ones as the DNN's text input (**hybrid, fine-tuned vectors**), and
# its score is one more DNN input (**transfer**: the DNN's training rows were
# never seen by the text model).

# %%
ft_vectors = {}
for regime in REGIMES:
    e, test = enc[regime], split[regime]["test"]
    for name in [m for (r, m) in models if r == regime]:
        model = models[regime, name]
        vec = finetune.item_vectors(model, item_tokens, pad_id=PAD)
        scores[regime][name] = bert.bi_logits(model, vec, e["test"].hist, e["test"].cand)
        if name == "bi_ft":
            ft_vectors[regime] = vec
            scores[regime]["id_dnn_ft_text"] = train_id_dnn(regime, text=(item_ids, vec)).predict_proba(test)
            s = split[regime]
            for part in ("dnn_train", "valid", "test"):
                s[part] = s[part].assign(bert_score=bert.bi_logits(model, vec, e[part].hist, e[part].cand))
            scores[regime]["id_dnn_transfer"] = train_id_dnn(regime, extra_numeric=["bert_score"]).predict_proba(
                s["test"])
drift = {r: float(np.median(np.sum(ft_vectors[r] * frozen_vectors, 1))) for r in REGIMES}
print("median cosine between an item's fine-tuned and frozen vector:", drift)

# %% [markdown]
# ## 4.9 Results, with intervals over users
#
# Every score on the same test rows; 95% intervals from resampling test **users**
# (all of a user's rows together), paired across models. Slices: **cold items**
# (no sale in the training window) and **new-to-user** items (the user never
# bought the item before).

# %%
ORDER = ["popularity_30d", "lr_popularity_counts", "item_cf", "id_dnn", "zero_shot_text", "frozen_probe", "bi_ft", "bi_lora",
         "bi_fgm", "id_dnn_frozen_text", "id_dnn_ft_text", "id_dnn_transfer"]
PAIRS = [("id_dnn_ft_text", "id_dnn"), ("id_dnn_frozen_text", "id_dnn"), ("id_dnn_ft_text", "id_dnn_frozen_text"),
         ("id_dnn_transfer", "id_dnn"), ("bi_ft", "frozen_probe"), ("id_dnn", "bi_ft")]
boot = {}
for regime in REGIMES:
    test = split[regime]["test"]
    slices = {"all": np.ones(len(test), bool), "cold_item": test.cold_item.to_numpy(),
              "new_to_user": (test.ui_n_before == 0).to_numpy()}
    for slice_name, m in slices.items():
        have = {k: v[m] for k, v in scores[regime].items()}
        boot[regime, slice_name] = bootstrap_auc(test.label.to_numpy()[m], have, test.user_id.to_numpy()[m],
                                                 pairs=[p for p in PAIRS if p[0] in have and p[1] in have],
                                                 n_boot=size["n_boot"], seed=seed)
auc_table = pd.DataFrame({(r, sl): {k: v["auc"] for k, v in b.items() if "auc" in v} for (r, sl), b in boot.items()})
auc_table.reindex([k for k in ORDER if k in auc_table.index]).round(3)

# %%
diff_table = pd.concat({f"{r}, {sl}": interval_table({k: v for k, v in b.items() if " - " in k})
                        for (r, sl), b in boot.items()})
diff_table[["with 95% interval", "excludes_0"]]

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for ax, regime in zip(axes, REGIMES, strict=True):
    b = boot[regime, "all"]
    names = [k for k in ORDER if k in b]
    auc = np.array([b[k]["auc"] for k in names])
    err = np.array([[b[k]["auc"] - b[k]["low"], b[k]["high"] - b[k]["auc"]] for k in names]).T
    ax.barh(names, auc, xerr=err, color=["C0" if "dnn" in k else "C1" if k.startswith("bi") else "C7" for k in names])
    ax.axvline(0.5, color="grey", lw=1, ls="--")
    ax.set_xlim(0.4, 1.0)
    ax.set_title(regime)
    ax.set_xlabel("test AUC (95% interval over users)")
axes[0].invert_yaxis()
fig.suptitle("Text alone vs IDs vs IDs + text, under two samplers")
save(fig, output_dir, "auc_by_regime")
plt.show()

# %% [markdown]
# Is the hybrid's gain more than one lucky DNN initialisation? Retrain the ID DNN
# and the hybrid with fine-tuned vectors under several seeds (same data) and look
# at every seed's difference.

# %%
seed_diffs = []
for k in range(size["dnn_seeds"]):
    s_k, test = seed + 100 * k, split[REGIME]["test"]
    base = train_id_dnn(REGIME, dnn_seed=s_k).predict_proba(test)
    hybrid = train_id_dnn(REGIME, text=(item_ids, ft_vectors[REGIME]), dnn_seed=s_k).predict_proba(test)
    seed_diffs.append(roc_auc(test.label.to_numpy(), hybrid) - roc_auc(test.label.to_numpy(), base))
pd.Series(seed_diffs, name=f"AUC(ID DNN + fine-tuned text) - AUC(ID DNN), {REGIME}, per DNN seed")

# %%
cross_y, cross_u = split[REGIME]["test"].label.to_numpy()[cross_rows], split[REGIME]["test"].user_id.to_numpy()[cross_rows]
cross_boot = bootstrap_auc(cross_y, {**cross_scores, "bi_ft": scores[REGIME]["bi_ft"][cross_rows],
                                     "frozen_probe": scores[REGIME]["frozen_probe"][cross_rows],
                                     "id_dnn": scores[REGIME]["id_dnn"][cross_rows]},
                           cross_u, pairs=[("cross_ft", "cross_probe"), ("bi_ft", "cross_ft")],
                           n_boot=size["n_boot"], seed=seed)
interval_table(cross_boot)[["with 95% interval"]]

# %% [markdown]
# ## 4.10 What the numbers say

# %%
def fmt(b: dict, key: str) -> str:
    r = b[key]
    v = r.get("auc", r.get("diff"))
    sign = "+" if "diff" in r else ""
    return f"{v:{sign}.3f} [{r['low']:{sign}.3f}, {r['high']:{sign}.3f}]"


def verdict(b: dict, key: str) -> str:
    r = b[key]
    return "a gain" if r["low"] > 0 else "a loss" if r["high"] < 0 else "within noise"


u, p = boot["uniform", "all"], boot[REGIME, "all"]
pc = boot[REGIME, "cold_item"]
display(Markdown(
    f"**Uniform negatives.** Popularity alone scores {fmt(u, 'popularity_30d')}, the ID DNN {fmt(u, 'id_dnn')}; "
    f"the best text-only model, the fine-tuned bi-encoder, {fmt(u, 'bi_ft')}. The DNN leads text alone by "
    f"{fmt(u, 'id_dnn - bi_ft')}. Against the probe it started from, fine-tuning moved text alone by "
    f"{fmt(u, 'bi_ft - frozen_probe')} on test ({verdict(u, 'bi_ft - frozen_probe')}), while validation went "
    f"from {runs['uniform', 'bi_ft'].start_valid_auc:.3f} to {runs['uniform', 'bi_ft'].best_valid_auc:.3f}: "
    f"with {len(split['uniform']['ft_valid'])} validation rows, choosing a step is itself noisy. Adding fine-tuned item vectors to the DNN changes its AUC by "
    f"{fmt(u, 'id_dnn_ft_text - id_dnn')} ({verdict(u, 'id_dnn_ft_text - id_dnn')}).\n\n"
    f"**Popularity-matched negatives.** Popularity falls to {fmt(p, 'popularity_30d')} and co-purchase "
    f"item-CF scores {fmt(p, 'item_cf')}; the ID DNN scores "
    f"{fmt(p, 'id_dnn')}, text alone {fmt(p, 'bi_ft')} (fine-tuned) and {fmt(p, 'frozen_probe')} (frozen probe): "
    f"fine-tuning moves text alone by {fmt(p, 'bi_ft - frozen_probe')} ({verdict(p, 'bi_ft - frozen_probe')}). "
    f"Text added to the IDs: frozen vectors {fmt(p, 'id_dnn_frozen_text - id_dnn')} "
    f"({verdict(p, 'id_dnn_frozen_text - id_dnn')}), fine-tuned vectors {fmt(p, 'id_dnn_ft_text - id_dnn')} "
    f"({verdict(p, 'id_dnn_ft_text - id_dnn')}); fine-tuned against frozen vectors "
    f"{fmt(p, 'id_dnn_ft_text - id_dnn_frozen_text')} ({verdict(p, 'id_dnn_ft_text - id_dnn_frozen_text')}). "
    f"Over {len(seed_diffs)} DNN seed(s) the fine-tuned hybrid's gain ranges from {min(seed_diffs):+.4f} to "
    f"{max(seed_diffs):+.4f}. On cold items: ID DNN {fmt(pc, 'id_dnn')}, hybrid with fine-tuned text "
    f"{fmt(pc, 'id_dnn_ft_text')}, a difference of {fmt(pc, 'id_dnn_ft_text - id_dnn')}.\n\n"
    f"**Cross- vs bi-encoder** on {int(cross_rows.sum()):,} rows of {len(cross_users)} users: cross-encoder "
    f"{fmt(cross_boot, 'cross_ft')} (its probe {fmt(cross_boot, 'cross_probe')}), bi-encoder "
    f"{fmt(cross_boot, 'bi_ft')}.\n\n"
    f"Sizes: {len(split[REGIME]['ft_train']):,} fine-tuning examples, {runs[REGIME, 'bi_ft'].optimizer_steps} "
    f"optimizer steps in {PRECISION} on {device.type}; {split[REGIME]['test'].user_id.nunique()} test users. "
    "Intervals that include 0 are differences this run cannot tell from noise at this size "
    f"(profile `{run_profile}`; `full` uses every user and {SIZES['full']['n_train']:,} fine-tuning examples)."
))

# %% [markdown]
# ## 4.11 Checkpoints come back identical
#
# The best weights were written during training as safetensors, atomically.
# The LoRA checkpoint holds only the adapters and the head; reloading either
# must reproduce the logits.

# %%
ckpt = {}
for name, key in [("bi_ft_popularity_matched", (REGIME, "bi_ft")), ("bi_lora", (REGIME, "bi_lora"))]:
    folder = output_dir / "checkpoints" / name
    again = bert.load_checkpoint(folder)
    data_v = enc[REGIME]["ft_valid"]
    a = finetune.predict_logits(models[key], data_v, pad_id=PAD, precision="fp32")
    b = finetune.predict_logits(again, data_v, pad_id=PAD, precision="fp32")
    ckpt[name] = {"max |logit difference|": float(np.abs(a - b).max()),
                  "file MB": (folder / bert.WEIGHTS_FILE).stat().st_size / 1e6}
pd.DataFrame(ckpt).T

# %% [markdown]
# ## 4.12 The tutorial loop, and what a library gives you
#
# Many tutorials tokenize each example inside the `Dataset`, pad to 128 tokens,
# train in fp32 and evaluate with `torch.argmax(logits, dim=2)`, a line from
# token classification. A sequence classifier's logits are 2-D
# (batch, labels): the line raises. "Fixed" to `dim=1` on a one-logit model it
# predicts class 0 for everyone: an AUC of exactly 0.5, which looks like a model
# that learned nothing rather than a bug.

# %%
from ecrec import naive_loop  # noqa: E402

eval_logits = torch.as_tensor(cross_scores["cross_ft"])[:, None]
try:
    naive_loop.naive_argmax_predictions(eval_logits)
except IndexError as exc:
    print("argmax(dim=2):", type(exc).__name__, "-", exc)
wrong = torch.argmax(eval_logits, dim=1).numpy()
readout = pd.DataFrame({
    "argmax(dim=1)": {"accuracy": (wrong == cross_y).mean(), "AUC": roc_auc(cross_y, wrong)},
    "logit": {"accuracy": ((cross_scores["cross_ft"] > 0) == cross_y).mean(),
              "AUC": roc_auc(cross_y, cross_scores["cross_ft"])},
})
readout

# %% [markdown]
# The same cross-encoder, the same pairs and optimizer, for a few steps each:
# the tutorial loop (padding to 128), the plain loop of 4.4 style on pairs,
# `train_ctr_model`, and Hugging Face's `Trainer` configured like it
# (length grouping, dynamic padding, same precision, AdamW, warm-up, clipping).
# `benchmarks/bench_bert.py` measures it at length.

# %%
from ecrec import hf_trainer  # noqa: E402

n_loop = size["loop_steps"] * size["batch_size"]
loop_pairs = pairs.build_text_pairs(s["ft_train"].iloc[:n_loop], descriptions, size["n_history"])
loop_enc = cross_enc["ft_train"].subset(range(min(n_loop, len(cross_enc["ft_train"]))))
speed = {}
naive = naive_loop.train_naive(bert.load_ctr_model(model_name, seed=seed).to(device), tokenizer,
                               loop_pairs.text_a, loop_pairs.text_b, loop_pairs.label, steps=size["loop_steps"],
                               batch_size=size["batch_size"], lr=size["lr"], seed=seed)
speed["tutorial loop (pad 128, fp32)"] = naive["samples_per_s"]
ours = finetune.train_ctr_model(bert.load_ctr_model(model_name, seed=seed), loop_enc, cross_enc["ft_valid"],
                                train_config(max_steps=size["loop_steps"], eval_every=None), pad_id=PAD, device=device)
speed["ecrec train_ctr_model"] = ours.samples_per_s
hf = hf_trainer.train_with_hf_trainer(bert.load_ctr_model(model_name, seed=seed), loop_enc, cross_enc["ft_valid"],
                                      train_config(max_steps=size["loop_steps"], eval_every=None),
                                      tokenizer=tokenizer, output_dir=output_dir / "hf_trainer", device=device)
speed["Hugging Face Trainer"] = hf["samples_per_s"]
speed_table = pd.DataFrame({"training samples/s": speed})
speed_table["vs ecrec"] = speed_table["training samples/s"] / speed["ecrec train_ctr_model"]
speed_table["valid AUC after the steps"] = [np.nan, ours.history[-1]["valid_auc"], hf["valid_auc"]]
speed_table

# %% [markdown]
# What each gives a learner: the plain loop shows every step and hides nothing;
# `train_ctr_model` adds what a correct and fast loop needs while staying short
# enough to read; `Trainer` gives the same with logging, distributed training and
# many options behind one configuration object, at the price of a loop you do
# not see.

# %%
def r4(x: float) -> float:
    return round(float(x), 4)


metrics = {
    "auc": {f"{r}/{sl}/{k}": r4(v["auc"]) for (r, sl), b in boot.items() for k, v in b.items() if "auc" in v},
    "diff": {f"{r}/{sl}/{k}": {"diff": r4(v["diff"]), "low": r4(v["low"]), "high": r4(v["high"])}
             for (r, sl), b in boot.items() for k, v in b.items() if "diff" in v},
    "cross": {k: {kk: r4(vv) for kk, vv in v.items() if kk != "excludes_0"} for k, v in cross_boot.items()},
    "finetune": {f"{r}/{m}": {"start_valid_auc": r4(res.start_valid_auc), "best_valid_auc": r4(res.best_valid_auc),
                              "best_step": res.best_step, "steps": res.optimizer_steps}
                 for (r, m), res in runs.items()},
    "hybrid_seed_diffs": [r4(d) for d in seed_diffs],
    "pooler_bias_max_abs": pooler_check.get("pooler bias, max |b|", float("nan")) if pooler_check else 0.0,
    "checkpoint_max_abs_logit_diff": max(v["max |logit difference|"] for v in ckpt.values()),
    "lora_checkpoint_mb": ckpt["bi_lora"]["file MB"],
    "lora_trainable_params": lora_trainable,
    "naive_argmax_dim1_auc": float(readout.loc["AUC", "argmax(dim=1)"]),
    "speed_samples_per_s": speed,
    "item_vector_median_cos_ft_vs_frozen": drift,
    "precision": PRECISION,
    "n_ft_train": len(split[REGIME]["ft_train"]),
    "n_test_users": int(split[REGIME]["test"].user_id.nunique()),
    "n_cross_rows": int(cross_rows.sum()),
}
write_metrics(output_dir, metrics, profile=run_profile, seed=seed, started=STARTED, device=str(device))
print(f"{len(metrics['auc'])} AUCs and {len(metrics['diff'])} differences written")

# %% [markdown]
# ## Summary
#
# * Load a checkpoint the way it was trained: MiniLM is mean-pooled and
#   normalised; its `[CLS]` pooler is random. Check every new parameter's
#   initialisation, learning rate and saving.
# * A random head on a few dozen steps collapses to the base rate; warm-starting
#   it from the frozen probe and scoring validation at step 0 makes fine-tuning
#   a move from a known starting point.
# * Under uniform negatives, popularity is most of the signal and IDs win;
#   under popularity-matched negatives the task is personal, and the numbers
#   above say whether text added to the IDs helps, and by how much.
# * A bi-encoder's item vectors are computed once and reused: by the DNN here,
#   and a recall index could serve them too (chapter 05 fine-tunes its own
#   two-tower for recall).
#
# ## Exercises
#
# 1. *(runnable)* Fine-tune the bi-encoder with a **random** head
#    (`bert.load_ctr_model(..., architecture="bi")` without `init_head_from_probe`)
#    and the same `train_config()`. Plot the logit spread per step
#    (`result.steps`). What happens, and why? A worked solution is in
#    `notebooks/solutions/04_exercises.py`.
# 2. *(runnable)* Re-run the popularity baselines on `data["uniform"]` using
#    `i_pop_7d` instead of `i_pop_30d`. Which window carries more signal?
#    (solution in the same file)
# 3. Pass `model_name="bert-base-uncased"` (online) with the `full` profile on a
#    GPU: `checkpoint_pooling` now says `cls`. Does a 110M-parameter model read
#    product text better than the 22M MiniLM?
# 4. Put more into the item text: the price band, the category. Do the
#    fine-tuned item vectors help the DNN more?
# 5. LoRA on all linear layers (`target_modules=["query", "key", "value", "dense"]`)
#    with a larger `r`: where does it catch up with full fine-tuning?
