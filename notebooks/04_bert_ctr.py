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
#   fine-tuning never ends below where it started *on validation* (test is
#   another matter, and the chapter shows by how much);
# * write the training loop by hand, then use `ecrec.finetune.train_ctr_model`
#   (the same loop plus batching, clipping, warm-up, checkpoints) and compare it
#   with Hugging Face's `Trainer`;
# * compare a **cross-encoder** and a **bi-encoder** (two towers, shared
#   weights), LoRA and FGM;
# * see why the negatives decide what a model can learn: with negatives drawn
#   uniformly from recently sold items, popularity alone wins; with
#   **popularity-matched** negatives, a model must personalise;
# * measure whether text added to the ID model helps, with bootstrap intervals
#   over users, and **from what amount of training data**: learning curves of
#   text alone, the ID DNN and the ID DNN + text, trained on the same examples;
# * rank **new products on purpose**: a simulated catalogue refresh (strict item
#   cold start, as in DropoutNet) that hides a fifth of the catalogue from
#   everything the models learn from, and compares IDs, TF-IDF content, MiniLM
#   and hybrids on those items with AUC and GAUC.
#
# **You need** chapter 02 (log loss on logits) and chapter 03 (the dataset, the
# time split, sampled negatives, the ID DNN). "CTR" here is chapter 03's task:
# did the user buy this item, against sampled negatives; not clicks on
# impressions.
#
# **The lesson, computed from this run:** {glue:md}`ch04_lesson`

# %% tags=["parameters", "remove-input"]
profile = "auto"  # "auto" | "smoke" | "cpu" | "full"
seed = 42
output_dir = "outputs/04_bert_ctr"
sizes = None  # optional dict overriding the profile's sizes
model_name = "minilm"  # or any Hugging Face name (bert-base-uncased...) when online
cache_dir = None  # chapter 03's dataset cache; None: <output_dir>/../cache
precision = "auto"  # "auto": bf16 autocast where the CPU has bf16 instructions, else fp32 (a GPU's own
# choice on a GPU); "fp32" or "bf16" to force one, e.g. `-p precision=fp32` to check the recorded ranges in fp32

# %% tags=["remove-input"]
# In Colab: fetch the book's code and data, then install it (skipped elsewhere).
import os
import subprocess
import sys

if "google.colab" in sys.modules and not os.path.isdir("ecrec-book"):
    subprocess.run(["git", "clone", "--depth", "1", "https://github.com/ecrec-book/ecrec", "ecrec-book"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", "requirements.txt"], cwd="ecrec-book", check=True)
    sys.path.insert(0, os.path.abspath("ecrec-book"))

# %% tags=["remove-input"]
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
from tqdm.auto import tqdm

from ecrec import bert, ctr, finetune, pairs, recall, text
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
from ecrec.stats import bootstrap_auc
from ecrec.text import load_tokenizer
from ecrec.verdict import decide, fmt_interval, thesis_row

STARTED = time.time()
SIZES = {
    # CI: 2 CPU cores. Every strategy runs, on few examples; the learning curve at 32-256 pairs.
    "smoke": {**DATASET_SIZES["smoke"], "curve": [32, 64, 128, 256], "n_small": 256, "n_valid": 256,
              "n_probe": 8000, "n_refresh_probe": 8000, "n_history": 3, "item_tokens": 24, "pair_tokens": 48,
              "batch_size": 16, "epochs": 1,
              "evals_per_run": 2, "lr": 1e-4, "head_lr": 1e-3, "lora_lr": 1e-3, "fgm_epsilon": 0.5,
              "cross_users": 12, "dnn_epochs": 4, "dnn_seeds": 1, "curve_dnn_seeds": 1, "n_boot": 300,
              "loop_steps": 2, "_minutes": (2, 6)},
    # what "auto" picks without a GPU: 1,000 users; the bi-encoder's curve at 192-12,288 pairs (x4 steps; the
    # largest 8x the 1,536 of earlier versions), the other strategies at 768; 2 DNN seeds everywhere.
    # Measured: 693 s on 2 idle cores of an AMD EPYC in bf16 (176% CPU), more on CPUs without bf16
    # (benchmarks/NOTES.md); the refresh section's probe reads 8,000 rows to stay within 12 minutes.
    "cpu": {**DATASET_SIZES["smoke"], "max_users": 1000, "curve": [192, 768, 3072, 12288], "n_small": 768,
            "n_valid": 1024, "n_probe": 20000, "n_refresh_probe": 8000, "n_history": 3, "item_tokens": 24,
            "pair_tokens": 48,
            "batch_size": 16, "epochs": 1, "evals_per_run": 4, "lr": 1e-4, "head_lr": 1e-3, "lora_lr": 1e-3,
            "fgm_epsilon": 0.5, "cross_users": 30, "dnn_epochs": 4, "dnn_seeds": 2, "curve_dnn_seeds": 2,
            "n_boot": 1000, "loop_steps": 3, "_minutes": (11, 15)},
    # one Colab-class GPU (not yet measured: see benchmarks/NOTES.md).
    "full": {**DATASET_SIZES["full"], "curve": [625, 2500, 10000, 40000], "n_small": 10000,
             "n_valid": 4000, "n_probe": 40000, "n_refresh_probe": 40000, "n_history": 5, "item_tokens": 32,
             "pair_tokens": 96,
             "batch_size": 64, "epochs": 2, "evals_per_run": 10, "lr": 5e-5, "head_lr": 1e-3, "lora_lr": 5e-4,
             "fgm_epsilon": 0.5, "cross_users": 400, "dnn_epochs": 8, "dnn_seeds": 3, "curve_dnn_seeds": 3,
             "n_boot": 1000, "loop_steps": 20, "_minutes": (30, 45)},
}
run_profile, size = pick_sizes(profile, SIZES, sizes)
seed_everything(seed)
output_dir = Path(output_dir)
device = finetune.pick_device(verbose=False)
if precision not in ("auto", "fp32", "bf16", "fp16"):
    raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16' ('fp16' on a CUDA GPU), got {precision!r}; "
                     "e.g. -p precision=fp32 to train in fp32 on a CPU that has bf16")
# "auto": bf16 autocast where this CPU has bf16 instructions (AVX512-BF16 or AMX), else fp32; the GPU's own choice on
# a GPU. A forced precision the device cannot run (bf16 on a CPU without it, fp16 off CUDA) raises here, not mid-run.
PRECISION = finetune.fastest_precision(device) if precision == "auto" else finetune.amp_plan(device, precision).name
CACHE = Path(cache_dir or output_dir.parent / "cache")  # chapter 03's datasets and the MiniLM vector cache
N_MAIN = max(size["curve"])  # the popularity-matched bi-encoder's fine-tune is the curve's largest point
print(f"training on {device} in {PRECISION} (precision={precision!r}); torch uses {torch.get_num_threads()} threads")
size

# %% tags=["remove-input"]
display(Markdown(
    f"**Sizes in this run (profile `{run_profile}`).** The bi-encoder is fine-tuned on "
    f"{', '.join(f'{n:,}' for n in size['curve'])} examples (the learning curve; "
    f"{N_MAIN // size['batch_size']:,} optimizer steps at the largest), LoRA, FGM, the cross-encoder and the "
    f"simulated refresh's bi-encoder (section 4.10) on "
    f"{size['n_small']:,}, with {size['n_valid']:,} validation rows to early-stop on, in {PRECISION}. "
    + ("With so few examples and test users, most differences between text models, and any gain of text "
       "over the IDs, are smaller than the intervals: read the `smoke` numbers as a check that everything "
       "runs, not as findings. " if run_profile == "smoke" else "")
    + f"`full` fine-tunes on up to {max(SIZES['full']['curve']):,} examples on a GPU and has not been run yet."))

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
    w = with_pooler.pooler.dense.weight
    pooler_check = {
        "pooler bias, max |b|": float(with_pooler.pooler.dense.bias.abs().max()),
        "pooler weight std": float(w.std()),
        "its largest singular value": float(torch.linalg.matrix_norm(w, ord=2)),
        # a random i.i.d. matrix of that std has its largest singular value near std * (sqrt(rows) + sqrt(cols))
        "the same for random noise of that std": float(w.std() * (w.shape[0] ** 0.5 + w.shape[1] ** 0.5)),
    }
del with_pooler
print("pooling this checkpoint was trained with:", bert.checkpoint_pooling(model_name))
pd.Series(pooler_check, dtype=float)

# %% [markdown]
# A bias of exactly zero (a trained bias is never exactly zero) and a weight
# whose largest singular value is the one random noise of the same spread would
# have (a trained layer's spectrum has a few large directions) mean the pooler
# was never trained. On such a checkpoint `ecrec.bert` loads the encoder
# **without** the pooler and mean-pools: the whole idea fits in a few lines,
# checked here against the model's own pooling.

# %%
tokenizer = load_tokenizer(model_name)
PAD = tokenizer.pad_token_id
probe_model = bert.load_ctr_model(model_name, architecture="bi", seed=seed).eval()


def mean_pool(token_vectors, attention_mask):  # (batch, tokens, hidden), (batch, tokens) -> (batch, hidden)
    mask = attention_mask.unsqueeze(-1).float()  # 1 on real tokens, 0 on padding
    return (token_vectors * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


batch = tokenizer(["jumbo bag pink polkadot", "jumbo bag red retrospot", "regency cakestand 3 tier"],
                  padding=True, return_tensors="pt")
with torch.inference_mode():
    tokens = probe_model.encoder(**batch).last_hidden_state
    ours = torch.nn.functional.normalize(mean_pool(tokens, batch["attention_mask"]), dim=-1)  # then unit length
    theirs = probe_model.item_vectors(batch["input_ids"], batch["attention_mask"])
print("max |difference| from the model's own pooling:", float((ours - theirs).abs().max()))
print("cosine(pink polkadot bag, red retrospot bag):", round(float(ours[0] @ ours[1]), 3),
      "| cosine(pink polkadot bag, cakestand):", round(float(ours[0] @ ours[2]), 3))

# %% [markdown]
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
#   $[u, v, u \odot v]$ (the sum of $u \odot v$ is the cosine). Item vectors
#   depend on the item only: computed once, cached, and reusable: by chapter
#   03's DNN (section 4.8) or by a recall index like chapter 05's. The
#   bi-encoder's forward pass:

# %%
print(inspect.getsource(bert.BiEncoderCtr.features))
groups = finetune.optimizer_groups(probe_model, size["lr"], size["head_lr"], 0.01)
print("parameters created fresh:", bert.fresh_parameter_names(probe_model))
pd.DataFrame([{"lr": g["lr"], "weight decay": g["weight_decay"], "tensors": len(g["names"]),
               "e.g.": g["names"][0]} for g in groups])

# %% [markdown]
# ## 4.3 Examples for the text models
#
# From each regime's train window we draw examples to fine-tune on (under
# popularity-matched negatives as many as the learning curve's largest size,
# under uniform ones `n_small`), and `n_valid` from the validation window for
# early stopping. The DNNs of the main comparison train on
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
    ft_train = sample_rows(train_pool, N_MAIN if regime == "popularity_matched" else size["n_small"])
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
# LayerNorm, linear warm-up and decay, gradient clipping, mixed precision (bf16
# autocast on a GPU, and on a CPU with bf16 instructions), a validation score
# **before the first step** and every few steps, early stopping that keeps the
# best weights (step 0 included), atomic checkpoints, and these per-step logs.
# One optimizer step of it (`finetune.backward_window` does the forward and
# backward passes of the step's micro-batches, each loss divided by the step's
# number of examples, so that every example weighs the same):

# %%
print(inspect.getsource(finetune._optimizer_step))

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
#   $[u, v, u \odot v]$ from the frozen MiniLM, plus the checkpoint's own
#   similarity $\sum_j u_j v_j$ as one nearly unpenalised input, folded back
#   into the $u \odot v$ weights (`bert.BiProbe`; the penalty on the other
#   weights picked by 3-fold cross-validated AUC on the probe's own examples,
#   so that with little data it stays near the zero-shot ranking); its coefficients will be the
#   fine-tuned model's starting head. Why the similarity is added: a plain
#   logistic regression on 1,152 penalised weights has to rediscover from a few
#   thousand examples that this sum ranks items (the checkpoint was trained for
#   it), and under popularity-matched negatives it can end *below* the zero-shot
#   cosine; a fine-tune warm-started from it would then start below what the
#   checkpoint already knows (measured right after the baselines);
# * **ID DNN + frozen item vectors**: the DNN with each item's frozen MiniLM
#   vector as an input (`ctr.train_dnn(text=...)`), through a learned
#   projection to the width of an ID embedding, concatenated with the rest:

# %%
print(inspect.getsource(ctr.CtrInputs.forward))

# %% [markdown]
# The frozen item vectors come from `ecrec.text.cached_text_vectors`: one cache,
# on disk next to chapter 03's datasets, keyed by the model's files and each
# text, so that a changed description or checkpoint is encoded again and the
# rest is read back (chapters 05 and 08 can use the same cache).

# %%
item_ids = pd.Index(descriptions.index)
item_tokens = enc["uniform"]["ft_train"].item_tokens  # every catalogue item, tokenized once
frozen_vectors = text.cached_text_vectors([str(t).lower() for t in descriptions], model_name, cache_dir=CACHE,
                                          max_length=size["item_tokens"], progress=True)
check = finetune.item_vectors(probe_model, item_tokens[:64], pad_id=PAD)  # the bi-encoder's own item tower
print(f"{len(frozen_vectors):,} item vectors of {frozen_vectors.shape[1]} dims, "
      f"{frozen_vectors.nbytes / 1e6:.1f} MB in float32; max |cache - item tower| on 64 items: "
      f"{np.abs(check - frozen_vectors[:64]).max():.1e}")
POP_COUNTS = ["i_pop_7d", "i_pop_30d", "i_pop_all"]
dnn_cats, dnn_nums = ctr.group_columns(["ids", "user", "item", "user_item", "context", "sequence"],
                                       split["uniform"]["test"].columns)


def train_id_dnn(regime: str, text=None, dnn_seed: int = seed, extra_numeric=(), train=None, valid=None):
    """Chapter 03's DNN on ``train`` (default: the regime's dnn_train rows), early-stopped on ``valid``."""
    s = split[regime]
    if train is None:
        train, valid, config = s["dnn_train"], s["valid"], ctr.DnnConfig(seed=dnn_seed, max_epochs=size["dnn_epochs"])
    else:  # a learning-curve point: batches of n/16 rows, up to 30 epochs, so small sizes still take steps
        config = ctr.DnnConfig(seed=dnn_seed, batch_size=int(np.clip(len(train) // 16, 16, 1024)), max_epochs=30,
                               patience=3)
    return ctr.train_dnn(train, valid, categorical=dnn_cats, numeric=dnn_nums, text=text,
                         extra_numeric=list(extra_numeric), config=config)


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


def frozen_probe(regime: str) -> bert.BiProbe:
    e = enc[regime]["dnn_train"]
    rows = np.sort(np.random.default_rng(seed).choice(len(e), min(size["n_probe"], len(e)), replace=False))
    x = bert.bi_features(frozen_vectors, e.hist[rows], e.cand[rows])
    return bert.BiProbe().fit(x, e.labels[rows])


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
# The probe's design, checked: the same rows read out by a plain logistic
# regression on $[u, v, u \odot v]$, by `BiProbe` (the similarity kept), and
# the zero-shot similarity alone (test AUC).

# %%
def plain_probe_auc(regime: str) -> float:
    e, e_test = enc[regime]["dnn_train"], enc[regime]["test"]
    rows = np.sort(np.random.default_rng(seed).choice(len(e), min(size["n_probe"], len(e)), replace=False))
    plain = LogisticRegression(C=1.0, max_iter=1000).fit(bert.bi_features(frozen_vectors, e.hist[rows], e.cand[rows]),
                                                         e.labels[rows])
    return roc_auc(e_test.labels, plain.decision_function(bert.bi_features(frozen_vectors, e_test.hist, e_test.cand)))


probe_check = pd.DataFrame({r: {"plain LR on [u, v, u*v]": plain_probe_auc(r),
                                "BiProbe (similarity kept)": roc_auc(enc[r]["test"].labels, scores[r]["frozen_probe"]),
                                "zero-shot similarity": roc_auc(enc[r]["test"].labels, scores[r]["zero_shot_text"]),
                                "BiProbe's C (cross-validated)": probes[r].C_}
                            for r in REGIMES}).round(4)
probe_check

# %% [markdown]
# ## 4.6 Fine-tuning the bi-encoder: a learning curve at equal data
#
# A head initialised at random starts with weights of norm about
# $0.02\sqrt{3 \cdot 384} \approx 0.7$; the probe's weights are far larger
# (printed below). With a learning rate of $10^{-3}$ and a few dozen steps the
# random head cannot get there, and the logits stay near the base rate. So we
# first fit the probe on the frozen features **of the examples we will
# fine-tune on**, copy its coefficients into the head ("LP-FT": Kumar et al.,
# 2022), and fine-tune from there. The warm start is two copies:

# %%
print(inspect.getsource(bert.init_head_from_probe).split('"""')[-1])  # the body, without the docstring

# %% [markdown]
# Validation is scored at step 0: if fine-tuning does not improve on the probe
# on validation, the probe's weights are what we keep, and the chapter then
# calls the model "= its probe (fine-tuning did not move it)".

# %%
def train_config(n_examples: int, **overrides) -> finetune.TrainConfig:
    """The chapter's fine-tuning settings for ``n_examples``: about ``evals_per_run`` validation scores."""
    steps = -(-n_examples // size["batch_size"]) * size["epochs"]
    base = dict(epochs=size["epochs"], batch_size=size["batch_size"], lr=size["lr"], head_lr=size["head_lr"],
                eval_every=max(1, steps // size["evals_per_run"]), patience=3, seed=seed, precision=PRECISION,
                progress=True)
    return finetune.TrainConfig(**{**base, **overrides})


def fit_probe(e: pairs.EncodedHistories) -> bert.BiProbe:
    """The frozen probe on the examples ``e``: [u, v, u*v] of the frozen item vectors, the similarity kept."""
    return bert.BiProbe().fit(bert.bi_features(frozen_vectors, e.hist, e.cand), e.labels)


def fine_tune(probe, train: pairs.EncodedHistories, regime: str, lora: bool = False, checkpoint=None, **overrides):
    """A bi-encoder warm-started from ``probe``, fine-tuned on ``train``; returns (model, TrainResult)."""
    model = bert.load_ctr_model(model_name, architecture="bi", seed=seed)
    bert.init_head_from_probe(model, probe.coef_, probe.intercept_)  # LP-FT: the head starts as the probe
    if lora:
        model = bert.add_lora(model, r=8, alpha=16)
    result = finetune.train_ctr_model(model, train, enc[regime]["ft_valid"], train_config(len(train), **overrides),
                                      pad_id=PAD, device=device, checkpoint_meta={"regime": regime},
                                      checkpoint_dir=None if checkpoint is None else output_dir / "checkpoints" / checkpoint)
    return model, result


runs, models, own_probes = {}, {}, {}
own_probes["uniform"] = fit_probe(enc["uniform"]["ft_train"])
models["uniform", "bi_ft"], runs["uniform", "bi_ft"] = fine_tune(own_probes["uniform"], enc["uniform"]["ft_train"],
                                                                 "uniform")
random_head = bert.load_ctr_model(model_name, architecture="bi").head.weight.detach()
print("weight norm of a random head:", round(float(random_head.norm()), 2),
      "| of the probes on n_probe rows:", {r: round(float(np.linalg.norm(p.coef_)), 2) for r, p in probes.items()},
      "| of uniform bi_ft's own probe:", round(float(np.linalg.norm(own_probes["uniform"].coef_)), 2))

# %% [markdown]
# **The learning curve.** Does text pay off once there is enough data, and
# from what size? Under popularity-matched negatives, at each size $n$ on a
# log scale, every model below learns from **the same $n$ examples** (nested:
# the $2n$ examples include the $n$) and early-stops on the same validation
# rows: the frozen probe, the bi-encoder fine-tuned from that probe, the ID
# DNN, and the ID DNN with frozen or fine-tuned item vectors (the vectors of
# the bi-encoder fine-tuned at that size). The ID DNNs of section 4.5, trained
# on the whole rest of the train window, are drawn as a reference line: they
# saw far more data. The largest point is the chapter's main fine-tune, reused
# in the sections below (no model is trained twice).

# %%
REGIME = "popularity_matched"
e_ft, ft_rows, test = enc[REGIME]["ft_train"], split[REGIME]["ft_train"], split[REGIME]["test"]
curve_order = np.random.default_rng(seed).permutation(len(e_ft))  # nested random subsets: first n of one order
test_features = bert.bi_features(frozen_vectors, enc[REGIME]["test"].hist, enc[REGIME]["test"].cand)
curve: dict[int, dict] = {}
for n in tqdm([n for n in size["curve"] if n <= len(e_ft)], desc="learning curve"):
    idx = np.sort(curve_order[:n])
    e_n = pairs.EncodedHistories(e_ft.item_tokens, e_ft.cand[idx], e_ft.hist[idx], e_ft.labels[idx])
    rows_n = ft_rows.iloc[idx]
    probe_n = fit_probe(e_n)
    model_n, run_n = fine_tune(probe_n, e_n, REGIME, checkpoint="bi_ft_popularity_matched" if n == N_MAIN else None)
    vec_n = finetune.item_vectors(model_n, item_tokens, pad_id=PAD, precision=PRECISION)  # as validation scored it
    point = {"n": n, "idx": idx, "run": run_n, "probe": probe_n, "vectors": vec_n, "scores": [],
             "text": {"frozen_probe": probe_n.decision_function(test_features),
                      "bi_ft": bert.bi_logits(model_n, vec_n, enc[REGIME]["test"].hist, enc[REGIME]["test"].cand)}}
    for k in range(size["curve_dnn_seeds"]):  # the DNN side, on the same rows and validation rows
        kw = dict(train=rows_n, valid=split[REGIME]["ft_valid"], dnn_seed=seed + 100 * k)
        point["scores"].append({
            "id_dnn": train_id_dnn(REGIME, **kw).predict_proba(test),
            "id_dnn_frozen_text": train_id_dnn(REGIME, text=(item_ids, frozen_vectors), **kw).predict_proba(test),
            "id_dnn_ft_text": train_id_dnn(REGIME, text=(item_ids, vec_n), **kw).predict_proba(test)})
    curve[n] = point
    if n == N_MAIN:  # the main fine-tune of the sections below
        models[REGIME, "bi_ft"], runs[REGIME, "bi_ft"], own_probes[REGIME] = model_n, run_n, probe_n
    else:
        del model_n
pd.DataFrame({n: {"valid AUC at step 0": p["run"].start_valid_auc, "best valid AUC": p["run"].best_valid_auc,
                  "best step": p["run"].best_step, "steps": p["run"].optimizer_steps,
                  "samples/s": p["run"].samples_per_s} for n, p in curve.items()}).T

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
# `TrainConfig.fgm_epsilon` > 0. Both on the popularity-matched regime, on
# the curve's `n_small` examples, from the same warm start as the curve's
# bi-encoder at that size (`bi_ft@n_small`).

# %%
assert size["n_small"] in curve, f"n_small ({size['n_small']}) must be one of the curve's sizes {list(curve)}"
small = curve[size["n_small"]]
e_small = pairs.EncodedHistories(e_ft.item_tokens, e_ft.cand[small["idx"]], e_ft.hist[small["idx"]],
                                 e_ft.labels[small["idx"]])
models[REGIME, "bi_lora"], runs[REGIME, "bi_lora"] = fine_tune(small["probe"], e_small, REGIME, lora=True,
                                                               lr=size["lora_lr"])
models[REGIME, "bi_fgm"], runs[REGIME, "bi_fgm"] = fine_tune(small["probe"], e_small, REGIME,
                                                             fgm_epsilon=size["fgm_epsilon"])
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
cross_enc = {"ft_train": pair_data(ft_rows.iloc[small["idx"]]), "ft_valid": pair_data(s["ft_valid"]),
             "probe": pair_data(sample_rows(s["dnn_train"], size["n_small"])), "test": pair_data(s["test"][cross_rows])}
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
runs[REGIME, "cross_ft"] = finetune.train_ctr_model(cross, cross_enc["ft_train"], cross_enc["ft_valid"],
                                                    train_config(len(cross_enc["ft_train"])), pad_id=PAD,
                                                    device=device)
cross_scores = {"cross_probe": cross_probe.decision_function(pooled(cross.eval(), cross_enc["test"])),
                "cross_ft": finetune.predict_logits(cross, cross_enc["test"], pad_id=PAD, progress=True)}
print(f"{cross_rows.sum():,} test rows of {len(cross_users)} users")

# %% [markdown]
# ## 4.8 Fine-tuned item vectors and scores, back into the ID DNN
#
# The fine-tuned bi-encoder scores every test row from cached item vectors
# (`bert.bi_logits`: no encoder pass per row), computed once per item in the
# run's precision, as its validation scored it during training (the same
# logits as the model's own forward pass: `finetune.predict_logits` does the
# same on the validation rows, each distinct item encoded once). Its item tower's vectors replace
# the frozen ones as the DNN's text input (**hybrid, fine-tuned vectors**), and
# its score is one more DNN input (**transfer**: the DNN's training rows were
# never seen by the text model). Here the DNNs learn from the whole rest of the
# train window, far more rows than the text model saw.

# %%
ft_vectors = {REGIME: curve[N_MAIN]["vectors"]}  # computed with the curve: not again
for regime in REGIMES:
    e, test = enc[regime], split[regime]["test"]
    scores[regime]["bi_probe"] = own_probes[regime].decision_function(  # bi_ft's own starting point
        bert.bi_features(frozen_vectors, e["test"].hist, e["test"].cand))
    for name in [m for (r, m) in models if r == regime]:
        model = models[regime, name]
        vec = ft_vectors[regime] if (regime, name) == (REGIME, "bi_ft") else finetune.item_vectors(
            model, item_tokens, pad_id=PAD, precision=PRECISION)
        scores[regime][name] = bert.bi_logits(model, vec, e["test"].hist, e["test"].cand)
        if name == "bi_ft":
            ft_vectors[regime] = vec
            scores[regime]["id_dnn_ft_text"] = train_id_dnn(regime, text=(item_ids, vec)).predict_proba(test)
            s = split[regime]
            for part in ("dnn_train", "valid", "test"):
                s[part] = s[part].assign(bert_score=bert.bi_logits(model, vec, e[part].hist, e[part].cand))
            scores[regime]["id_dnn_transfer"] = train_id_dnn(regime, extra_numeric=["bert_score"]).predict_proba(
                s["test"])
scores[REGIME]["bi_ft@n_small"] = curve[size["n_small"]]["text"]["bi_ft"]  # LoRA's and FGM's equal-data reference
drift = {r: float(np.median(np.sum(ft_vectors[r] * frozen_vectors, 1))) for r in REGIMES}
print("median cosine between an item's fine-tuned and frozen vector:", drift)

# %% [markdown]
# Is the hybrid's difference more than one lucky DNN initialisation? Retrain
# the ID DNN and the hybrid with fine-tuned vectors under several seeds (same
# data) and keep every seed's difference, on all test rows and on cold items:
# a verdict below says "a gain" only when every seed agrees.

# %%
seed_diffs, cold_seed_diffs = [], []
test = split[REGIME]["test"]
y_test, cold = test.label.to_numpy(), test.cold_item.to_numpy()
for k in tqdm(range(size["dnn_seeds"]), desc="DNN seeds"):
    s_k = seed + 100 * k
    if k == 0:  # the seed of the table: already trained
        base, hybrid = scores[REGIME]["id_dnn"], scores[REGIME]["id_dnn_ft_text"]
    else:
        base = train_id_dnn(REGIME, dnn_seed=s_k).predict_proba(test)
        hybrid = train_id_dnn(REGIME, text=(item_ids, ft_vectors[REGIME]), dnn_seed=s_k).predict_proba(test)
    seed_diffs.append(roc_auc(y_test, hybrid) - roc_auc(y_test, base))
    cold_seed_diffs.append(roc_auc(y_test[cold], hybrid[cold]) - roc_auc(y_test[cold], base[cold]))
pd.DataFrame({"all test rows": seed_diffs, "cold items": cold_seed_diffs},
             index=pd.Index([seed + 100 * k for k in range(size["dnn_seeds"])], name="DNN seed")).round(4)

# %% [markdown]
# ## 4.9 Results, with intervals over users
#
# Every score on the same test rows; 95% intervals from resampling test **users**
# (all of a user's rows together), paired across models. Slices: **cold items**
# (no sale in the training window) and **new-to-user** items (the user never
# bought the item before). `bi_probe` is the probe fitted on the bi-encoder's
# own fine-tuning examples (its starting point); `frozen_probe` the one fitted
# on `n_probe` rows of the DNN's training rows (more data, a reference).

# %% tags=["remove-input"]
FINE_TUNED = {"bi_ft", "bi_lora", "bi_fgm", "cross_ft"}


def kept(regime: str, name: str) -> bool:
    """A fine-tuned model that early stopping left at its step-0 weights (= its probe); the DNNs that read the
    fine-tuned bi-encoder's vectors or scores read its probe's then (the frozen vectors, the probe's score)."""
    name = "bi_ft" if name in ("id_dnn_ft_text", "id_dnn_transfer") else name
    return name in FINE_TUNED and (regime, name) in runs and runs[regime, name].best_step == 0


ORDER = ["popularity_30d", "lr_popularity_counts", "item_cf", "id_dnn", "zero_shot_text", "frozen_probe", "bi_probe",
         "bi_ft", "bi_ft@n_small", "bi_lora", "bi_fgm", "id_dnn_frozen_text", "id_dnn_ft_text", "id_dnn_transfer"]
PAIRS = [("id_dnn_ft_text", "id_dnn"), ("id_dnn_frozen_text", "id_dnn"), ("id_dnn_ft_text", "id_dnn_frozen_text"),
         ("id_dnn_transfer", "id_dnn"), ("bi_ft", "bi_probe"), ("bi_ft", "frozen_probe"), ("id_dnn", "bi_ft"),
         ("bi_lora", "bi_ft@n_small"), ("bi_fgm", "bi_ft@n_small")]
SEEDS = {(REGIME, "all", "id_dnn_ft_text - id_dnn"): seed_diffs,
         (REGIME, "cold_item", "id_dnn_ft_text - id_dnn"): cold_seed_diffs}
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


def digits(r: dict) -> int:
    """Decimals that show an interval end clearing 0 as non-zero: 4 when an end lies within 0.0005 of 0, else 3."""
    return 4 if min(abs(r["low"]), abs(r["high"])) < 5e-4 else 3


def verdict_of(regime: str, slice_name: str, key: str):
    """ecrec.verdict's decision on the paired difference ``key`` ("a - b")."""
    a = key.split(" - ")[0]
    return decide(boot[regime, slice_name][key], seed_diffs=SEEDS.get((regime, slice_name, key)),
                  digits=digits(boot[regime, slice_name][key]),
                  kept_start=kept(regime, a))


# %%
auc_table = pd.DataFrame({(r, sl): {k: f"{v['auc']:.3f}" + (" (= its probe)" if kept(r, k) else "")
                                    for k, v in b.items() if "auc" in v} for (r, sl), b in boot.items()})
auc_table.reindex([k for k in ORDER if k in auc_table.index]).fillna("")

# %% [markdown]
# "(= its probe)" marks a fine-tuned model that early stopping left at its
# step-0 weights: its scores are its probe's, and it is not compared as an
# architecture. The paired differences, each with its verdict
# (`ecrec.verdict.decide`: "a gain" or "a loss" only when the interval clears 0
# and every DNN seed agrees):

# %%
diff_table = pd.DataFrame([{"regime": r, "slice": sl, "difference": k,
                            "verdict": verdict_of(r, sl, k).text} for (r, sl), b in boot.items()
                           for k in b if " - " in k]).set_index(["regime", "slice", "difference"])
diff_table

# %% tags=["remove-input"]
forest = [(f"{r}, {sl}: {k}", boot[r, sl][k], verdict_of(r, sl, k).word)
          for (r, sl) in [("uniform", "all"), (REGIME, "all"), (REGIME, "cold_item")]
          for k in boot[r, sl] if " - " in k]
colours = {"a gain": "C2", "a loss": "C3", "within noise": "C7", "identical": "C7",
           "= its probe (fine-tuning did not move it)": "C4"}
fig, ax = plt.subplots(figsize=(8, 0.32 * len(forest) + 1))
for i, (_label, r, word) in enumerate(forest):
    ax.errorbar(r["diff"], i, xerr=[[r["diff"] - r["low"]], [r["high"] - r["diff"]]], fmt="o", color=colours[word])
ax.axvline(0, color="grey", lw=1, ls="--")
ax.set_yticks(range(len(forest)), [f[0] for f in forest], fontsize="small")
ax.invert_yaxis()
ax.set_xlabel("paired difference in test AUC (95% interval over users)")
ax.legend(handles=[plt.Line2D([], [], marker="o", ls="", color=c, label=w) for w, c in colours.items()
                   if w != "identical"], fontsize="small", loc="lower right")
ax.set_title("Paired differences: a colour says the verdict")
save(fig, output_dir, "paired_differences")
plt.show()

# %% [markdown]
# Read the forest plot by colour: an interval that crosses the dashed line is
# noise at this size, whatever its point estimate.

# %% tags=["remove-input"]
GROUPS = {"IDs (popularity, item-CF, DNN)": "C0", "text alone": "C1", "IDs + text": "C2"}


def group_of(name: str) -> str:
    return "IDs + text" if name.startswith("id_dnn_") else "IDs (popularity, item-CF, DNN)" if (
        name in ("popularity_30d", "lr_popularity_counts", "item_cf", "id_dnn")) else "text alone"


fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
for ax, regime in zip(axes, REGIMES, strict=True):
    b = boot[regime, "all"]
    names = [k for k in ORDER if k in b]
    auc = np.array([b[k]["auc"] for k in names])
    err = np.array([[b[k]["auc"] - b[k]["low"], b[k]["high"] - b[k]["auc"]] for k in names]).T
    ax.barh(names, auc, xerr=err, color=[GROUPS[group_of(k)] for k in names])
    ax.axvline(0.5, color="grey", lw=1, ls="--")
    ax.text(0.505, len(names) - 0.6, "chance (AUC 0.5)", color="grey", fontsize="small")
    ax.set_xlim(0.4, 1.0)
    ax.set_title(regime)
    ax.set_xlabel("test AUC (95% interval over users)")
axes[0].invert_yaxis()
axes[1].legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c, label=g) for g, c in GROUPS.items()],
               fontsize="small", loc="lower right")
fig.suptitle("Text alone vs IDs vs IDs + text, under two samplers")
save(fig, output_dir, "auc_by_regime")
plt.show()

# %% [markdown]
# Under uniform negatives the blue bars (popularity and IDs) dominate; under
# popularity-matched negatives popularity falls to chance and only the ID
# models and the hybrids stay well above the dashed line.
#
# ### 4.9.1 The learning curve, with intervals
#
# The same test rows, the models of section 4.6 at each training size; the ID
# DNN trained on all the train window's rows is the grey reference line.

# %% tags=["remove-input"]
CURVE_PAIRS = [("bi_ft", "frozen_probe"), ("bi_ft", "id_dnn"), ("frozen_probe", "id_dnn"),
               ("id_dnn_ft_text", "id_dnn"), ("id_dnn_frozen_text", "id_dnn")]
y_test, users_test = split[REGIME]["test"].label.to_numpy(), split[REGIME]["test"].user_id.to_numpy()
curve_boot, curve_seeds = {}, {}
for n, p in curve.items():
    curve_boot[n] = bootstrap_auc(y_test, {**p["text"], **p["scores"][0]}, users_test, pairs=CURVE_PAIRS,
                                  n_boot=size["n_boot"], seed=seed)
    auc_k = [{k: roc_auc(y_test, v) for k, v in {**p["text"], **sc}.items()} for sc in p["scores"]]
    curve_seeds[n] = {f"{a} - {b}": [a_k[a] - a_k[b] for a_k in auc_k] for a, b in CURVE_PAIRS}


def curve_verdict(n: int, a: str, b: str):
    key = f"{a} - {b}"
    dnn_side = any(x.startswith("id_dnn") for x in (a, b))
    return decide(curve_boot[n][key], seed_diffs=curve_seeds[n][key] if dnn_side else None, digits=digits(curve_boot[n][key]),
                  kept_start=(a == "bi_ft" and b == "frozen_probe" and curve[n]["run"].best_step == 0))


def crossover_sentence(a: str, b: str, a_name: str, b_name: str) -> str:
    """The crossover (or its absence) of ``a - b`` over the curve, from ecrec.verdict's per-size verdicts."""
    ns = sorted(curve)
    v = {n: curve_verdict(n, a, b) for n in ns}
    gain_from = next((n for n in ns if all(v[m].is_gain for m in ns if m >= n)), None)
    loss_from = next((n for n in ns if all(v[m].is_loss for m in ns if m >= n)), None)
    span = f"{ns[0]:,} to {ns[-1]:,} examples"
    if gain_from == ns[0]:
        head = f"{a_name} beats {b_name} at every size measured ({span}): no crossover"
    elif gain_from is not None:
        crossed = any(v[m].is_loss for m in ns if m < gain_from)  # a crossover needs the other side ahead first
        head = (f"{a_name} overtakes {b_name} from {gain_from:,} examples on (a crossover)" if crossed else
                f"{a_name} beats {b_name} from {gain_from:,} examples on and never loses below: no crossover")
    elif loss_from == ns[0]:
        head = f"{b_name} beats {a_name} at every size measured ({span}): no crossover"
    elif loss_from is not None:
        crossed = any(v[m].is_gain for m in ns if m < loss_from)
        head = (f"{b_name} overtakes {a_name} from {loss_from:,} examples on (a crossover)" if crossed else
                f"{b_name} beats {a_name} from {loss_from:,} examples on and never loses below: no crossover")
    else:
        head = f"{a_name} vs {b_name}: no crossover that holds up to the largest size ({span})"
    return head + ". Per size: " + "; ".join(f"n = {n:,}: {v[n].text}" for n in ns)


# %% tags=["remove-input"]
LINES = {"frozen_probe": ("frozen probe (text)", "C1", "--"), "bi_ft": ("fine-tuned bi-encoder (text)", "C1", "-"),
         "id_dnn": ("ID DNN", "C0", "-"), "id_dnn_frozen_text": ("ID DNN + frozen text", "C2", "--"),
         "id_dnn_ft_text": ("ID DNN + fine-tuned text", "C2", "-")}
ns = np.array(sorted(curve))
fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for k, (label, colour, ls) in LINES.items():
    r = [curve_boot[n][k] for n in ns]
    ax.errorbar(ns, [x["auc"] for x in r], yerr=[[x["auc"] - x["low"] for x in r], [x["high"] - x["auc"] for x in r]],
                color=colour, ls=ls, marker="o", capsize=3, label=label)
ref = boot[REGIME, "all"]["id_dnn"]
ax.axhline(ref["auc"], color="grey", lw=1, ls=":",
           label=f"ID DNN on all {len(split[REGIME]['dnn_train']):,} train rows (more data: reference)")
ax.axhline(0.5, color="black", lw=0.6, ls="--", label="chance (AUC 0.5)")
ax.set_xscale("log", base=2)
ax.set_xticks(ns, [f"{n:,}" for n in ns])
ax.set_xlabel("training examples (same rows for every model)")
ax.set_ylabel("test AUC (95% interval over users)")
ax.legend(fontsize="x-small")
ax.set_title("Learning curves, popularity-matched negatives")
for j, (a, b) in enumerate([("id_dnn_ft_text", "id_dnn"), ("bi_ft", "frozen_probe"), ("bi_ft", "id_dnn")]):
    r = [curve_boot[n][f"{a} - {b}"] for n in ns]
    ax2.errorbar(ns * (1 + 0.06 * (j - 1)), [x["diff"] for x in r],
                 yerr=[[x["diff"] - x["low"] for x in r], [x["high"] - x["diff"] for x in r]],
                 marker="o", capsize=3, ls="-", label=f"{a} - {b}")
ax2.axhline(0, color="grey", lw=1, ls="--")
ax2.set_xscale("log", base=2)
ax2.set_xticks(ns, [f"{n:,}" for n in ns])
ax2.set_xlabel("training examples")
ax2.set_ylabel("paired difference in test AUC")
ax2.legend(fontsize="x-small")
ax2.set_title("Paired differences (above 0: the first model is better)")
save(fig, output_dir, "learning_curves")
plt.show()

# %% tags=["remove-input"]
curve_text = {
    "text_vs_ids": crossover_sentence("bi_ft", "id_dnn", "text alone (fine-tuned)", "the ID DNN"),
    "hybrid_vs_ids": crossover_sentence("id_dnn_ft_text", "id_dnn", "the ID DNN + fine-tuned text", "the ID DNN"),
    "ft_vs_probe": crossover_sentence("bi_ft", "frozen_probe", "the fine-tuned bi-encoder", "its frozen probe"),
}
display(Markdown("**At equal data**, under popularity-matched negatives:\n\n" + "\n".join(
    f"* {t[0].upper() + t[1:]}." for t in curve_text.values())))

# %% [markdown]
# ## 4.10 New products on purpose: a simulated catalogue refresh for ranking
#
# The cold items of section 4.9 are the log's own: products with no sale in
# the training window, few in this log, and not chosen by anyone. To measure
# how each model ranks products it has never seen, on enough of them, we
# **simulate** a catalogue refresh, as the item cold-start
# splits of DropoutNet do (Volkovs, Yu and Poutanen, 2017; `ecrec.cold_start`,
# the protocol chapter 05 uses for recall in section 5.5.2):
#
# 1. hold out a seeded 20% of the items sold both before and in the test window;
# 2. remove every line of them before the test window from the log, and build
#    chapter 03's dataset again from the stripped log (its own cache file: the
#    data's hash is part of `features.dataset_key`), so that no training row,
#    history, popularity count or sampled negative before the test window
#    shows a held-out item;
# 3. train every model below on that dataset only (popularity-matched
#    negatives, as in section 4.9), and score it on the **test rows of the
#    held-out items** (their purchases and their sampled negatives,
#    `cold_start.cold_test_mask`): new products ranked against each other, for
#    the users who meet them.
#
# It is a simulation, and it differs from a real refresh: the held-out items
# are established products (they sold before, they tend to be more popular
# than truly new ones, and their descriptions look like the rest of the
# catalogue's), whereas a real refresh brings products the shop never sold.
# The models compared:
#
# * **ID DNN**: a held-out item's id is unknown to it, so it reads the shared
#   unknown-item embedding (index 0, trained by id dropout); its other inputs
#   (sales since the launch, the user's history...) still speak;
# * **content without a language model**: TF-IDF of the descriptions, with
#   the category and the log price, in the probe's shape $[u, v, u \odot v]$
#   ($u$ the mean of the last `n_history` purchases' TF-IDF vectors) with the
#   TF-IDF similarity $\sum_j u_j v_j$ kept as `BiProbe` keeps MiniLM's, and a
#   logistic regression on `n_refresh_probe` rows of the stripped training
#   window (8,000 in the `cpu` profile, fewer than section 4.4's probes read:
#   the section's time budget);
# * **frozen MiniLM probe**, on those rows;
# * **fine-tuned MiniLM bi-encoder**, fine-tuned from its own probe on
#   `n_small` pairs of the stripped training window (that probe, `bi_probe`,
#   is shown beside it: its starting point). The chapter's main fine-tune
#   cannot be used here: its training pairs saw the held-out items;
# * **hybrids**: the ID DNN with frozen or fine-tuned MiniLM item vectors
#   (section 4.8), which know a held-out item by its text.

# %%
from sklearn.feature_extraction.text import TfidfVectorizer

from ecrec import cold_start
from ecrec.features import dataset_key, purchase_events, split_dates

REFRESH_STARTED = time.perf_counter()
refresh_config = dataset_config(size, seed=seed, negatives=REGIMES[REGIME])
events_all = purchase_events(clean)
_, test_start = split_dates(events_all["ts"], refresh_config.valid_days, refresh_config.test_days)
refresh = cold_start.hold_out_items(events_all, test_start, share=0.2, seed=seed)
stripped = cold_start.strip_clean_log(clean, refresh)
assert dataset_key(stripped, refresh_config) != dataset_key(clean, refresh_config)  # its own cache file
d_ref = add_item_attributes(load_or_build_ctr_dataset(stripped, refresh_config, CACHE), catalog)
assert not refresh.is_held_out(d_ref.loc[d_ref.split != "test", "item_id"]).any()  # nothing learnt shows one
print(f"{len(refresh.held_out):,} of {len(refresh.candidates):,} candidate items held out; the stripped log has "
      f"{len(stripped):,} of {len(clean):,} lines")

# %% [markdown]
# The examples every model of this section learns from, drawn as in section
# 4.3 but from the stripped dataset, and the rows it is tested on:

# %%
ref_rng = np.random.default_rng(seed)


def draw(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` rows of ``frame`` drawn without replacement (all if fewer), in order; the section's own generator."""
    return frame.iloc[np.sort(ref_rng.choice(len(frame), size=min(n, len(frame)), replace=False))]


pool = d_ref[d_ref.split == "train"]
ft_ref = draw(pool, size["n_small"])
split["refresh"] = {"ft_train": ft_ref, "ft_valid": draw(d_ref[d_ref.split == "valid"], size["n_valid"]),
                    "dnn_train": pool.drop(ft_ref.index), "valid": d_ref[d_ref.split == "valid"],
                    "test": d_ref[cold_start.cold_test_mask(d_ref, refresh)]}
split["refresh"]["probe"] = draw(split["refresh"]["dnn_train"], size["n_refresh_probe"])
enc["refresh"] = {part: pairs.encode_histories(tokenizer, split["refresh"][part], descriptions, size["n_history"],
                                               size["item_tokens"]) for part in ("ft_train", "ft_valid", "probe", "test")}
t_ref = split["refresh"]["test"]
pd.Series({"items held out": len(refresh.held_out), "of candidate items": len(refresh.candidates),
           "natural cold items (first sold in the test window)": len(refresh.natural_cold),
           "training rows (stripped)": int((d_ref.split == "train").sum()),
           "test rows of held-out items": len(t_ref), "of which bought": int(t_ref.label.sum()),
           "their users": t_ref.user_id.nunique()})

# %% [markdown]
# The content baseline reads the same user and item "towers" as the probe,
# with TF-IDF vectors (sparse: one column per word of the catalogue) instead
# of MiniLM's:

# %%
tfidf = TfidfVectorizer(sublinear_tf=True).fit_transform([str(t).lower() for t in descriptions])  # (items, words)
item_table = catalog.set_index("item_id").reindex(item_ids)
cat_codes = pd.Categorical(item_table["category"]).codes
cat_onehot = sparse.csr_array((np.ones(len(item_ids)), (np.arange(len(item_ids)), cat_codes)))
log_price = np.log1p(item_table["price"].fillna(0).clip(lower=0).to_numpy())


def content_features(e: pairs.EncodedHistories) -> sparse.csr_array:
    """[u, v, u*v] on TF-IDF vectors (u: mean of the history's), their similarity sum(u*v) kept as BiProbe keeps
    MiniLM's (scaled by 100, so that the penalty on its weight is negligible), the candidate's category (one-hot)
    and log price."""
    rows, slots = np.nonzero(e.hist >= 0)
    per_user = np.maximum((e.hist >= 0).sum(1), 1)
    mean_of_history = sparse.csr_array((1.0 / per_user[rows], (rows, e.hist[rows, slots])),
                                       shape=(len(e), len(item_ids)))
    u, v = sparse.csr_array(mean_of_history @ tfidf), sparse.csr_array(tfidf[e.cand])
    uv = sparse.csr_array(u.multiply(v))
    similarity = sparse.csr_array(100.0 * np.asarray(uv.sum(1)).reshape(-1, 1))
    return sparse.hstack([u, v, uv, similarity, cat_onehot[e.cand], sparse.csr_array(log_price[e.cand, None])],
                         format="csr")


e_ref = enc["refresh"]
e64 = pairs.EncodedHistories(item_tokens, e_ref["probe"].cand[:64], e_ref["probe"].hist[:64], e_ref["probe"].labels[:64])
dense = bert.bi_features(tfidf.toarray(), e64.hist, e64.cand)  # the probe's own feature map, on dense TF-IDF
print(f"{tfidf.shape[1]:,} words; max |sparse - dense [u, v, u*v]| on 64 rows: "
      f"{np.abs(content_features(e64)[:, : dense.shape[1]].toarray() - dense).max():.1e}")

# %% [markdown]
# Every model, trained on the stripped dataset only. The ID DNNs are trained
# under each of the chapter's DNN seeds, so that a verdict on a DNN can say
# whether every seed agrees.

# %%
content_lr = LogisticRegression(C=1.0, max_iter=1000).fit(content_features(e_ref["probe"]), e_ref["probe"].labels)
probe_ref = fit_probe(e_ref["probe"])
own_probe_ref = fit_probe(e_ref["ft_train"])  # the fine-tune's starting point, on its own n_small pairs
model_ref, runs["refresh", "bi_ft"] = fine_tune(own_probe_ref, e_ref["ft_train"], "refresh")
vec_ref = finetune.item_vectors(model_ref, item_tokens, pad_id=PAD, precision=PRECISION)
ref_scores = {  # models without a DNN: one set of scores
    "popularity_30d": t_ref.i_pop_30d.fillna(0).to_numpy(float),
    "tfidf_content": content_lr.decision_function(content_features(e_ref["test"])),
    "frozen_probe": probe_ref.decision_function(bert.bi_features(frozen_vectors, e_ref["test"].hist,
                                                                 e_ref["test"].cand)),
    "bi_probe": own_probe_ref.decision_function(bert.bi_features(frozen_vectors, e_ref["test"].hist,
                                                                  e_ref["test"].cand)),
    "bi_ft": bert.bi_logits(model_ref, vec_ref, e_ref["test"].hist, e_ref["test"].cand),
}
ref_dnn, ref_ids = [], None
for k in tqdm(range(size["dnn_seeds"]), desc="refresh: DNN seeds"):  # the DNN models under each DNN seed
    dnn_k = {"id_dnn": train_id_dnn("refresh", dnn_seed=seed + 100 * k),
             "id_dnn_frozen_text": train_id_dnn("refresh", text=(item_ids, frozen_vectors), dnn_seed=seed + 100 * k),
             "id_dnn_ft_text": train_id_dnn("refresh", text=(item_ids, vec_ref), dnn_seed=seed + 100 * k)}
    ref_dnn.append({name: m.predict_proba(t_ref) for name, m in dnn_k.items()})
    if k == 0:  # the ID DNN of the table: what does it make of a held-out item's id?
        ref_ids = dnn_k["id_dnn"].preprocessor
del model_ref, dnn_k
item_index = ref_ids.transform(t_ref)["cat"][:, ref_ids.categorical.index("item_id")]  # 0: the unknown item
print(f"the ID DNN reads {(item_index == 0).mean():.0%} of the held-out items' test rows as the unknown item; "
      f"fine-tuned on {len(e_ref['ft_train']):,} pairs of the stripped log: best step "
      f"{runs['refresh', 'bi_ft'].best_step} of {runs['refresh', 'bi_ft'].optimizer_steps} (validation AUC "
      f"{runs['refresh', 'bi_ft'].start_valid_auc:.3f} at step 0, {runs['refresh', 'bi_ft'].best_valid_auc:.3f} kept)")

# %% [markdown]
# **AUC and GAUC on the held-out items.** AUC pools every test row of a
# held-out item; GAUC (`ecrec.metrics.gauc`) averages each user's own AUC, over
# the users who have both a bought and a sampled held-out item, every user
# weighted the same (`weight="uniform"`), so that its interval is a bootstrap
# over those users (`ecrec.stats.paired_mean_diff`). Each model that uses
# MiniLM is compared with the **best model without a language model** on the
# same metric (chosen on these very rows, which favours the baseline):

# %%
from ecrec.metrics import gauc
from ecrec.stats import paired_mean_diff

REF_BASELINES = ["popularity_30d", "tfidf_content", "id_dnn"]
REF_LM = ["frozen_probe", "bi_ft", "id_dnn_frozen_text", "id_dnn_ft_text"]
y_ref, u_ref = t_ref.label.to_numpy(), t_ref.user_id.to_numpy()
rows_of = pd.Series(np.arange(len(t_ref))).groupby(u_ref).indices  # user -> positions of their rows
both = [u for u, r in rows_of.items() if 0 < y_ref[r].sum() < len(r)]  # users with a bought and a sampled item
assert both, f"no test user has both a bought and a sampled held-out item in {len(t_ref)} rows: GAUC needs more users"


def user_aucs(s: np.ndarray) -> np.ndarray:
    """AUC of each user of ``both`` on their held-out rows: GAUC's terms."""
    return np.array([roc_auc(y_ref[rows_of[u]], s[rows_of[u]]) for u in both])


def on_dnn(name: str) -> bool:
    return name.startswith("id_dnn")


ref_all = [{**ref_scores, **dnn_k} for dnn_k in ref_dnn]  # every model, per DNN seed
ref_user = [{k: user_aucs(v) for k, v in sc.items()} for sc in ref_all]
ref_gauc = {k: float(v.mean()) for k, v in ref_user[0].items()}
assert all(np.isclose(ref_gauc[k], gauc(u_ref, y_ref, v, weight="uniform")[0]) for k, v in ref_all[0].items())
ref_auc_k = [{k: roc_auc(y_ref, v) for k, v in sc.items()} for sc in ref_all]
best = {"AUC": max(REF_BASELINES, key=ref_auc_k[0].get), "GAUC": max(REF_BASELINES, key=ref_gauc.get)}
ref_boot = bootstrap_auc(y_ref, ref_all[0], u_ref, pairs=[(a, best["AUC"]) for a in REF_LM] + [("bi_ft", "bi_probe")],
                         n_boot=size["n_boot"], seed=seed)
ref_diff = {("AUC", a): ref_boot[f"{a} - {best['AUC']}"] for a in REF_LM}
ref_diff.update({("GAUC", a): paired_mean_diff(ref_user[0][a], ref_user[0][best["GAUC"]], n_boot=size["n_boot"],
                                               seed=seed) for a in REF_LM})
per_seed = {"AUC": ref_auc_k, "GAUC": [{k: float(v.mean()) for k, v in ua.items()} for ua in ref_user]}
ref_seeds = {(metric, a): [m_k[a] - m_k[best[metric]] for m_k in per_seed[metric]]  # where a DNN seed matters
             for metric, a in ref_diff if on_dnn(a) or on_dnn(best[metric])}
ref_kept = runs["refresh", "bi_ft"].best_step == 0  # the fine-tune kept its probe's weights (and so its vectors)


def ref_kept_start(a: str) -> bool:
    """``a`` is the fine-tune, or reads its vectors, and the fine-tune kept its step-0 weights."""
    return bool(ref_kept) and a in ("bi_ft", "id_dnn_ft_text")


def ref_verdict(metric: str, a: str):
    """ecrec.verdict's decision on ``a`` minus the best baseline, on held-out items."""
    return decide(ref_diff[metric, a], seed_diffs=ref_seeds.get((metric, a)), kept_start=ref_kept_start(a),
                  digits=digits(ref_diff[metric, a]))


refresh_seconds = time.perf_counter() - REFRESH_STARTED
pd.DataFrame({k: {"AUC": fmt_interval(ref_boot[k], signed=False), "GAUC": f"{ref_gauc[k]:.3f}",
                  "uses a language model": k not in REF_BASELINES}
              for k in REF_BASELINES + ["bi_probe"] + REF_LM}).T

# %% tags=["remove-input"]
REF_NAMES = {"popularity_30d": "popularity (30 days)", "tfidf_content": "TF-IDF + price + category (LR)",
             "id_dnn": "ID DNN", "frozen_probe": "frozen MiniLM probe", "bi_ft": "fine-tuned MiniLM bi-encoder",
             "bi_probe": "its own probe",
             "id_dnn_frozen_text": "ID DNN + frozen MiniLM vectors",
             "id_dnn_ft_text": "ID DNN + fine-tuned MiniLM vectors"}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), sharey=True)
for ax, metric in zip(axes, ("AUC", "GAUC"), strict=True):
    for i, a in enumerate(REF_LM):
        r, word = ref_diff[metric, a], ref_verdict(metric, a).word
        ax.errorbar(r["diff"], i, xerr=[[r["diff"] - r["low"]], [r["high"] - r["diff"]]], fmt="o",
                    color=colours[word], capsize=3)
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_xlabel(f"{metric} minus {REF_NAMES[best[metric]]}'s\n(95% interval over users)")
    ax.set_title(f"{metric} on held-out items")
axes[0].set_yticks(range(len(REF_LM)), [REF_NAMES[a] for a in REF_LM])
axes[0].invert_yaxis()
axes[1].legend(handles=[plt.Line2D([], [], marker="o", ls="", color=c, label=w) for w, c in colours.items()
                        if w != "identical"], fontsize="x-small", loc="lower right")
fig.suptitle("Simulated catalogue refresh: each MiniLM model against the best model without one")
save(fig, output_dir, "simulated_refresh")
plt.show()

# %% tags=["remove-input"]
refresh_text = (
    f"On a simulated catalogue refresh ({len(refresh.held_out):,} of {len(refresh.candidates):,} items held out, "
    f"seed {seed}; {len(t_ref):,} test rows of {t_ref.user_id.nunique()} users, {len(both)} of them with a bought "
    f"and a sampled held-out item for GAUC), the best model without a language model is "
    f"{REF_NAMES[best['AUC']]} in AUC ({fmt_interval(ref_boot[best['AUC']], signed=False)}) and "
    f"{REF_NAMES[best['GAUC']]} in GAUC ({ref_gauc[best['GAUC']]:.3f}). Against it: "
    + "; ".join(f"{REF_NAMES[a]}: AUC {ref_verdict('AUC', a).text}, GAUC {ref_verdict('GAUC', a).text}"
                for a in REF_LM)
    + f". The fine-tuned bi-encoder against its own probe (the same {len(e_ref['ft_train']):,} pairs): AUC "
    f"{decide(ref_boot['bi_ft - bi_probe'], kept_start=ref_kept).text}"
    + f". The log's own new products are {len(refresh.natural_cold):,} items first sold in the test window; the "
    f"held-out items are established products, so read this as a simulation of a refresh, not a forecast.")
display(Markdown(refresh_text))

# %% [markdown]
# ## 4.11 What the numbers say

# %% tags=["remove-input"]
u, p = boot["uniform", "all"], boot[REGIME, "all"]
pc = boot[REGIME, "cold_item"]
fi = fmt_interval


def auc_of(b: dict, name: str, regime: str) -> str:
    return "= its probe (fine-tuning did not move it)" if kept(regime, name) else fi(b[name], signed=False)


cross_kept = runs[REGIME, "cross_ft"].best_step == 0 or curve[size["n_small"]]["run"].best_step == 0
cross_y = split[REGIME]["test"].label.to_numpy()[cross_rows]
cross_u = split[REGIME]["test"].user_id.to_numpy()[cross_rows]
cross_boot = bootstrap_auc(cross_y, {**cross_scores, "bi_ft": scores[REGIME]["bi_ft"][cross_rows],
                                     "bi_ft@n_small": scores[REGIME]["bi_ft@n_small"][cross_rows]},
                           cross_u, pairs=[("cross_ft", "cross_probe"), ("bi_ft@n_small", "cross_ft")],
                           n_boot=size["n_boot"], seed=seed)
if cross_kept:
    kept_names = [name for name, run in [("the cross-encoder", runs[REGIME, "cross_ft"]),
                                         ("the bi-encoder", curve[size["n_small"]]["run"])] if run.best_step == 0]
    cross_text = (" and ".join(kept_names) + " = its probe (fine-tuning did not move it), so the two "
                  "architectures are not compared in this run")
else:
    cross_text = (f"cross-encoder {fi(cross_boot['cross_ft'], signed=False)}, bi-encoder on the same "
                  f"{size['n_small']:,} examples {fi(cross_boot['bi_ft@n_small'], signed=False)}: bi - cross "
                  f"{decide(cross_boot['bi_ft@n_small - cross_ft'], digits=digits(cross_boot['bi_ft@n_small - cross_ft'])).text}")
display(Markdown(
    f"**Uniform negatives.** Popularity alone scores {fi(u['popularity_30d'], signed=False)}, the ID DNN "
    f"{fi(u['id_dnn'], signed=False)}; the fine-tuned bi-encoder {auc_of(u, 'bi_ft', 'uniform')}. The DNN against "
    f"text alone: {verdict_of('uniform', 'all', 'id_dnn - bi_ft').text}. Fine-tuning against its own probe: "
    f"{verdict_of('uniform', 'all', 'bi_ft - bi_probe').text}. Adding fine-tuned item vectors to the DNN: "
    f"{verdict_of('uniform', 'all', 'id_dnn_ft_text - id_dnn').text}.\n\n"
    f"**Popularity-matched negatives.** Popularity falls to {fi(p['popularity_30d'], signed=False)} and co-purchase "
    f"item-CF scores {fi(p['item_cf'], signed=False)}; the ID DNN {fi(p['id_dnn'], signed=False)}, text alone "
    f"{auc_of(p, 'bi_ft', REGIME)} (fine-tuned on {N_MAIN:,} examples) and {fi(p['bi_probe'], signed=False)} (its "
    f"probe). Fine-tuning against its own probe on test: {verdict_of(REGIME, 'all', 'bi_ft - bi_probe').text} "
    f"(on validation it went from {runs[REGIME, 'bi_ft'].start_valid_auc:.3f} to "
    f"{runs[REGIME, 'bi_ft'].best_valid_auc:.3f}, chosen among {len(runs[REGIME, 'bi_ft'].history)} evaluations on "
    f"{len(split[REGIME]['ft_valid']):,} rows: choosing a step is itself noisy). Text added to the IDs trained on "
    f"all {len(split[REGIME]['dnn_train']):,} rows: frozen vectors "
    f"{verdict_of(REGIME, 'all', 'id_dnn_frozen_text - id_dnn').text}; fine-tuned vectors "
    f"{verdict_of(REGIME, 'all', 'id_dnn_ft_text - id_dnn').text}; fine-tuned against frozen vectors "
    f"{verdict_of(REGIME, 'all', 'id_dnn_ft_text - id_dnn_frozen_text').text}. On cold items: ID DNN "
    f"{fi(pc['id_dnn'], signed=False)}, hybrid with fine-tuned text {fi(pc['id_dnn_ft_text'], signed=False)}: "
    f"{verdict_of(REGIME, 'cold_item', 'id_dnn_ft_text - id_dnn').text}.\n\n"
    f"**LoRA and FGM** against full fine-tuning on the same {size['n_small']:,} examples: LoRA "
    f"{verdict_of(REGIME, 'all', 'bi_lora - bi_ft@n_small').text}; FGM "
    f"{verdict_of(REGIME, 'all', 'bi_fgm - bi_ft@n_small').text}.\n\n"
    f"**Cross- vs bi-encoder** on {int(cross_rows.sum()):,} rows of {len(cross_users)} users: {cross_text}.\n\n"
    f"**New products (section 4.10).** {refresh_text}\n\n"
    f"Sizes: {N_MAIN:,} fine-tuning examples, {runs[REGIME, 'bi_ft'].optimizer_steps:,} optimizer steps in "
    f"{PRECISION} on {device.type}; {split[REGIME]['test'].user_id.nunique()} test users, "
    f"{len(seed_diffs)} DNN seed(s). Intervals that include 0 are differences this run cannot tell from noise "
    f"(profile `{run_profile}`; `full` fine-tunes on up to {max(SIZES['full']['curve']):,} examples)."
))

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
# (length grouping, dynamic padding, AdamW, warm-up, clipping), all three in
# fp32 so that only the loop differs.
# `benchmarks/bench_bert.py` measures it at length.

# %%
from ecrec import hf_trainer  # noqa: E402

n_loop = size["loop_steps"] * size["batch_size"]
loop_pairs = pairs.build_text_pairs(ft_rows.iloc[small["idx"]].iloc[:n_loop], descriptions, size["n_history"])
loop_enc = cross_enc["ft_train"].subset(range(min(n_loop, len(cross_enc["ft_train"]))))
LOOP_CONFIG = train_config(n_loop, max_steps=size["loop_steps"], eval_every=None, precision="fp32")  # as the tutorial
speed = {}
naive = naive_loop.train_naive(bert.load_ctr_model(model_name, seed=seed).to(device), tokenizer,
                               loop_pairs.text_a, loop_pairs.text_b, loop_pairs.label, steps=size["loop_steps"],
                               batch_size=size["batch_size"], lr=size["lr"], seed=seed)
speed["tutorial loop (pad 128, fp32)"] = naive["samples_per_s"]
ours = finetune.train_ctr_model(bert.load_ctr_model(model_name, seed=seed), loop_enc, cross_enc["ft_valid"],
                                LOOP_CONFIG, pad_id=PAD, device=device)
speed["ecrec train_ctr_model"] = ours.samples_per_s
hf = hf_trainer.train_with_hf_trainer(bert.load_ctr_model(model_name, seed=seed), loop_enc, cross_enc["ft_valid"],
                                      LOOP_CONFIG, tokenizer=tokenizer, output_dir=output_dir / "hf_trainer", device=device)
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

# %% tags=["remove-input"]
def r4(x: float) -> float:
    return round(float(x), 4)


def r4_interval(r: dict) -> dict:
    return {k: r4(v) for k, v in r.items() if k in ("auc", "diff", "low", "high")}


thesis = []
for n in sorted(curve):
    for (a, b), question in [(("bi_ft", "id_dnn"), "text alone (fine-tuned MiniLM) vs the ID DNN, same examples"),
                             (("frozen_probe", "id_dnn"), "text alone (frozen MiniLM probe) vs the ID DNN, same examples"),
                             (("id_dnn_ft_text", "id_dnn"), "fine-tuned item text added to the ID DNN, same examples"),
                             (("id_dnn_frozen_text", "id_dnn"), "frozen item text added to the ID DNN, same examples")]:
        thesis.append(thesis_row(chapter="04", question=question, metric="AUC", lm=a, baseline=b,
                                 r=curve_boot[n][f"{a} - {b}"], train_size=n, seed_diffs=curve_seeds[n][f"{a} - {b}"],
                                 slice="all (popularity-matched negatives)"))
for sl, name in [("all", "all (popularity-matched negatives)"), ("cold_item", "cold items (popularity-matched)")]:
    thesis.append(thesis_row(chapter="04", question="fine-tuned item text added to the ID DNN trained on all rows",
                             metric="AUC", lm="id_dnn_ft_text", baseline="id_dnn",
                             r=boot[REGIME, sl]["id_dnn_ft_text - id_dnn"],
                             train_size=f"DNN {len(split[REGIME]['dnn_train']):,} rows; text {N_MAIN:,} examples",
                             seed_diffs=SEEDS[REGIME, sl, "id_dnn_ft_text - id_dnn"],
                             kept_start=kept(REGIME, "id_dnn_ft_text"), slice=name))
REF_SIZES = {"frozen_probe": f"{len(e_ref['probe']):,} rows (probe)", "bi_ft": f"{len(e_ref['ft_train']):,} pairs",
             "id_dnn_frozen_text": f"DNN {len(split['refresh']['dnn_train']):,} rows",
             "id_dnn_ft_text": f"DNN {len(split['refresh']['dnn_train']):,} rows; text {len(e_ref['ft_train']):,} pairs"}
for metric, a in ref_diff:
    thesis.append(thesis_row(chapter="04", question=f"{REF_NAMES[a]} vs the best model without a language model "
                             "(new products)", metric=metric, lm=a,
                             baseline=best[metric], r=ref_diff[metric, a], train_size=REF_SIZES[a],
                             seed_diffs=ref_seeds.get((metric, a)), kept_start=ref_kept_start(a),
                             slice="simulated refresh"))
lesson = (f"Under popularity-matched negatives, at equal data {curve_text['text_vs_ids'].split('. Per size')[0]}, and "
          f"{curve_text['hybrid_vs_ids'].split('. Per size')[0]}; with the ID DNN trained on all "
          f"{len(split[REGIME]['dnn_train']):,} rows, fine-tuned item text changes its test AUC by "
          f"{verdict_of(REGIME, 'all', 'id_dnn_ft_text - id_dnn').text} (on cold items by "
          f"{verdict_of(REGIME, 'cold_item', 'id_dnn_ft_text - id_dnn').text}). On a simulated catalogue refresh "
          f"({len(refresh.held_out):,} items held out), against {REF_NAMES[best['AUC']]} on the held-out items' test "
          f"AUC: the frozen MiniLM probe {ref_verdict('AUC', 'frozen_probe').text}, the ID DNN + fine-tuned MiniLM "
          f"vectors {ref_verdict('AUC', 'id_dnn_ft_text').text}.")
metrics = {
    "auc": {f"{r}/{sl}/{k}": r4(v["auc"]) for (r, sl), b in boot.items() for k, v in b.items() if "auc" in v},
    "diff": {f"{r}/{sl}/{k}": {"diff": r4(v["diff"]), "low": r4(v["low"]), "high": r4(v["high"]),
                               "verdict": verdict_of(r, sl, k).word}
             for (r, sl), b in boot.items() for k, v in b.items() if "diff" in v},
    "cross": {k: r4_interval(v) for k, v in cross_boot.items()},
    "cross_compared": not cross_kept,
    "finetune": {f"{r}/{m}": {"start_valid_auc": r4(res.start_valid_auc), "best_valid_auc": r4(res.best_valid_auc),
                              "best_step": res.best_step, "steps": res.optimizer_steps, "precision": res.precision}
                 for (r, m), res in runs.items()},
    "curve": {str(n): {"auc": {k: r4(v["auc"]) for k, v in curve_boot[n].items() if "auc" in v},
                       "diff": {k: {**r4_interval(v), "verdict": curve_verdict(n, *k.split(" - ")).word}
                                for k, v in curve_boot[n].items() if "diff" in v},
                       "seed_diffs": {k: [r4(d) for d in v] for k, v in curve_seeds[n].items()},
                       "best_step": curve[n]["run"].best_step, "steps": curve[n]["run"].optimizer_steps,
                       "start_valid_auc": r4(curve[n]["run"].start_valid_auc),
                       "best_valid_auc": r4(curve[n]["run"].best_valid_auc)} for n in sorted(curve)},
    "curve_sentences": curve_text,
    "lesson": lesson,
    "thesis": thesis,
    "hybrid_seed_diffs": [r4(d) for d in seed_diffs],
    "hybrid_cold_seed_diffs": [r4(d) for d in cold_seed_diffs],
    "pooler_bias_max_abs": pooler_check.get("pooler bias, max |b|", float("nan")) if pooler_check else 0.0,
    "lora_trainable_params": lora_trainable,
    "naive_argmax_dim1_auc": float(readout.loc["AUC", "argmax(dim=1)"]),
    "speed_samples_per_s": speed,
    "train_samples_per_s": {f"{r}/{m}": r4(res.samples_per_s) for (r, m), res in runs.items()},
    "item_vector_median_cos_ft_vs_frozen": drift,
    "precision": PRECISION,
    "torch_threads": torch.get_num_threads(),
    "probe_check": {r: {k: r4(v) for k, v in col.items()} for r, col in probe_check.to_dict().items()},
    "n_ft_train": N_MAIN,
    "n_small": size["n_small"],
    "n_test_users": int(split[REGIME]["test"].user_id.nunique()),
    "n_cross_rows": int(cross_rows.sum()),
    "precision_asked": precision,
    "refresh": {**refresh.summary(), "test_rows": len(t_ref), "test_positives": int(t_ref.label.sum()),
                "test_users": int(t_ref.user_id.nunique()), "gauc_users": len(both),
                "train_rows": int((d_ref.split == "train").sum()), "n_ft_pairs": len(e_ref["ft_train"]),
                "n_probe_rows": len(e_ref["probe"]), "dnn_seeds": len(ref_dnn), "kept_start": bool(ref_kept),
                "unknown_item_share": r4((item_index == 0).mean()),
                "auc": {k: r4_interval(ref_boot[k]) for k in REF_BASELINES + ["bi_probe"] + REF_LM},
                "ft_vs_own_probe": {**r4_interval(ref_boot["bi_ft - bi_probe"]),
                                    "verdict": decide(ref_boot["bi_ft - bi_probe"], kept_start=ref_kept).word},
                "gauc": {k: r4(v) for k, v in ref_gauc.items()}, "best_baseline": best,
                "diff": {f"{m}/{a} - {best[m]}": {**r4_interval(r), "verdict": ref_verdict(m, a).word}
                         for (m, a), r in ref_diff.items()},
                "seed_diffs": {f"{m}/{a} - {best[m]}": [r4(d) for d in v] for (m, a), v in ref_seeds.items()},
                "sentence": refresh_text, "seconds": round(refresh_seconds, 1)},
}
write_metrics(output_dir, metrics, profile=run_profile, seed=seed, started=STARTED, device=str(device))
print(f"{len(metrics['auc'])} AUCs, {len(metrics['diff'])} differences and {len(thesis)} thesis rows written")

# %% [markdown]
# ## Summary
#
# * Load a checkpoint the way it was trained: MiniLM is mean-pooled and
#   normalised; its `[CLS]` pooler is random. Check every new parameter's
#   initialisation, learning rate and saving.
# * A random head on a few dozen steps collapses to the base rate; warm-starting
#   it from the frozen probe and scoring validation at step 0 makes fine-tuning
#   a move from a known starting point, never below it on validation (test can
#   still end below: validation picks the step).
# * Under uniform negatives, popularity is most of the signal and IDs win;
#   under popularity-matched negatives the task is personal.
# * Compare a language model with a baseline **at equal data**, over a range of
#   sizes, with intervals and more than one seed: one size and one seed can say
#   anything.
# * A bi-encoder's item vectors are computed once and reused: by the DNN here,
#   and a recall index could serve them too (chapter 05 fine-tunes its own
#   two-tower for recall).
# * New products are measured **on purpose**: hold out a seeded share of the
#   catalogue, strip it from everything the models learn from, and score the
#   held-out items' test rows (a simulation of a refresh, DropoutNet's
#   protocol); compare every text model with the best model that reads no
#   language model, TF-IDF included.
#
# The lesson of this run:

# %% tags=["remove-input"]
# shown here, and glued (myst-nb's format) into the chapter's opening: {glue:md}`ch04_lesson`
display({"text/markdown": lesson, "text/plain": lesson}, raw=True,
        metadata={"scrapbook": {"name": "ch04_lesson", "mime_prefix": ""}})

# %% [markdown]
# ## Exercises
#
# 1. *(runnable)* Fine-tune the bi-encoder with a **random** head
#    (`bert.load_ctr_model(..., architecture="bi")` without `init_head_from_probe`)
#    and the same `train_config(len(train))`. Plot the logit spread per step
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
