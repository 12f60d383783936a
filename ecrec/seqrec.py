"""Sequential recommendation: purchase sequences, SASRec and BERT4Rec, EASE^R, and the sampled-metric protocol.

* **Sequences** (:func:`build_sequences`): each customer's purchases in time
  order. An invoice is a basket whose internal order carries no information,
  so the items of one invoice are put in a seeded random order (never the
  item index order, which would leak the catalogue's order into the model).
* **SASRec** (Kang & McAuley, ICDM 2018): a causal Transformer over the item
  sequence; position t predicts item t+1. **BERT4Rec** (Sun et al., CIKM 2019):
  the same encoder, bidirectional, trained to fill masked items; at test time a
  ``[MASK]`` is appended and its prediction is the next item.
  :class:`SeqRec` is both (``causal=True``/``False``). Output scores are the
  dot product with the item table (tied input/output embeddings). The table is
  an ID embedding, a projection of fixed text vectors (MiniLM descriptions:
  an item never bought still has a vector), or their sum.
* **Training objectives** (:func:`train_seqrec`): full softmax cross-entropy
  over the catalogue, or sampled binary cross-entropy with one uniform
  negative per position (SASRec's original loss). Klenitskiy & Vasilev (RecSys
  2023) found the full cross-entropy decisive; Petrov & Macdonald (RecSys
  2022) found BERT4Rec needs far longer training than its paper's.
* **As a recall generator** (:class:`SeqGenerator`, chapter 08): the user
  vector is the hidden state the next-item scores are read from
  (:func:`user_states`), the item vectors the model's table
  (:func:`item_vectors`), searched exactly by inner product with FAISS.
* **EASE^R** (Steck, WWW 2019): a closed-form item-item model
  (:func:`ease`).
* **Sampled metrics** (:func:`sampled_metrics`): the common "1 positive + 100
  sampled negatives" protocol, which Krichene & Rendle (KDD 2020) showed can
  reorder models against full ranking.

Token convention: 0 = padding, item ``i`` (``item_idx``) = ``i + 1``,
``n_items + 1`` = ``[MASK]``. Sequences are right-padded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from ecrec.schema import INVOICE_NO, ITEM_IDX, TS, USER_ID

__all__ = ["build_sequences", "pad_right", "SeqRec", "mask_for_cloze", "train_seqrec", "TrainLog", "user_states",
           "item_vectors", "score_next", "SeqGenerator", "ease", "sampled_metrics"]

PAD = 0


def build_sequences(events: pd.DataFrame, before, *, seed: int = 0) -> dict:
    """Each user's purchased ``item_idx`` in time order, from events before ``before``.

    Args:
        events: ``user_id``, ``item_idx``, ``ts``, ``invoice_no`` (:attr:`ecrec.recall_data.RecallData.events`).
        before: only events with ``ts < before`` are used (the test window stays unseen).
        seed: the seeded order of the items inside each invoice.

    Returns:
        ``{user_id: int64 array of item_idx}``, oldest first; users with no
        event before ``before`` are absent.

    Raises:
        KeyError: a column is missing.
    """
    past = events.loc[events[TS] < before, [USER_ID, ITEM_IDX, TS, INVOICE_NO]]
    rng = np.random.default_rng(seed)
    past = past.assign(_shuffle=rng.random(len(past)))  # a basket's order is arbitrary: make it random, seeded
    past = past.sort_values([USER_ID, TS, INVOICE_NO, "_shuffle"], kind="stable")
    users = past[USER_ID].to_numpy()
    items = past[ITEM_IDX].to_numpy(np.int64)
    cuts = np.flatnonzero(users[1:] != users[:-1]) + 1
    return {u: s for u, s in zip(users[np.r_[0, cuts]] if len(users) else [], np.split(items, cuts), strict=True)}


def pad_right(seqs, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token matrix of the last ``max_len`` items of each sequence, right-padded with 0.

    Args:
        seqs: n int arrays of ``item_idx`` (may be empty).
        max_len: the model's longest sequence (>= 1).

    Returns:
        ``(tokens int64 (n, max_len), lengths int64 (n,), truncated bool (n,))``:
        tokens are ``item_idx + 1``; a longer sequence keeps its most recent
        ``max_len`` items and is flagged ``truncated``.

    Raises:
        ValueError: ``max_len`` < 1 or a negative item index.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    lengths = np.zeros(len(seqs), dtype=np.int64)
    truncated = np.zeros(len(seqs), dtype=bool)
    for i, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)
        if (s < 0).any():
            raise ValueError(f"sequence {i} holds a negative item index; item_idx starts at 0")
        truncated[i] = len(s) > max_len
        s = s[-max_len:]
        out[i, : len(s)] = s + 1
        lengths[i] = len(s)
    return out, lengths, truncated


class SeqRec(nn.Module):
    """SASRec (``causal=True``) or BERT4Rec (``causal=False``): a Transformer encoder over item tokens.

    Args:
        n_items: catalogue size (tokens 1..n_items; n_items + 1 is ``[MASK]``).
        dim: hidden size; max_len: positions; layers, heads, dropout: the encoder's.
        causal: SASRec's mask (position t sees positions <= t) or none (BERT4Rec).
        text_vectors: optional float (n_items, t) fixed item vectors (e.g. MiniLM
            descriptions), projected to ``dim`` by a learned linear map and added
            to the item table: the route by which an item never bought gets a vector.
        id_embeddings: learn an ID embedding per item (False with ``text_vectors``:
            the table is the text projection alone).

    Shapes: ``forward(tokens (B, L) int64) -> hidden (B, L, dim)``;
    ``item_table() -> (n_items + 2, dim)``, row 0 (padding) all zeros.
    """

    def __init__(self, n_items: int, *, dim: int = 64, max_len: int = 50, layers: int = 2, heads: int = 2,
                 dropout: float = 0.2, causal: bool = True, text_vectors: np.ndarray | None = None,
                 id_embeddings: bool = True) -> None:
        super().__init__()
        if not id_embeddings and text_vectors is None:
            raise ValueError("an item table needs ID embeddings, text vectors or both")
        if text_vectors is not None and len(text_vectors) != n_items:
            raise ValueError(f"text_vectors has {len(text_vectors)} rows, the catalogue {n_items} items")
        self.n_items, self.max_len, self.causal = n_items, max_len, causal
        self.item_emb = nn.Embedding(n_items + 2, dim, padding_idx=PAD) if id_embeddings else None
        if self.item_emb is not None:
            nn.init.normal_(self.item_emb.weight, std=dim ** -0.5)  # unit-scale dot products at the start
            with torch.no_grad():
                self.item_emb.weight[PAD].zero_()
        if text_vectors is not None:
            self.register_buffer("text", torch.as_tensor(np.asarray(text_vectors), dtype=torch.float32))
            self.text_proj = nn.Linear(self.text.shape[1], dim, bias=False)
            self.mask_emb = nn.Parameter(torch.zeros(dim))  # the [MASK] token's text part
        else:
            self.text, self.text_proj, self.mask_emb = None, None, None
        self.pos_emb = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def item_table(self) -> torch.Tensor:
        """(n_items + 2, dim): padding (zeros), the items, ``[MASK]``."""
        parts = []
        if self.item_emb is not None:
            parts.append(self.item_emb.weight)
        if self.text_proj is not None:
            t = self.text_proj(self.text)
            zero = torch.zeros(1, t.shape[1], device=t.device)
            parts.append(torch.cat([zero, t, self.mask_emb[None]], 0))
        table = parts[0] if len(parts) == 1 else parts[0] + parts[1]
        return table * (torch.arange(len(table), device=table.device) != PAD)[:, None]  # padding stays 0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, L = tokens.shape  # (B, L) item tokens, right-padded
        if L > self.max_len:
            raise ValueError(f"sequences of {L} tokens exceed max_len {self.max_len}: truncate them (pad_right)")
        x = self.item_table()[tokens] + self.pos_emb(torch.arange(L, device=tokens.device))[None]  # (B, L, dim)
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=tokens.device), 1) if self.causal else None
        h = self.encoder(self.drop(x), mask=causal, src_key_padding_mask=tokens == PAD)  # (B, L, dim)
        return self.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every item (not padding, not ``[MASK]``): (..., dim) -> (..., n_items)."""
        return hidden @ self.item_table()[1 : self.n_items + 1].T


def mask_for_cloze(tokens: torch.Tensor, mask_token: int, prob: float, generator: torch.Generator):
    """BERT4Rec's cloze task: hide a share of the real items; only they are scored.

    Args:
        tokens: int64 (B, L), right-padded.
        mask_token: the ``[MASK]`` token (``n_items + 1``).
        prob: the share of real positions to hide; each sequence hides at least one.

    Returns:
        ``(inputs (B, L), labels (B, L))``: inputs with ``[MASK]`` at the hidden
        positions; labels = the hidden item's index (token - 1) there, -100
        (ignored by cross-entropy) everywhere else, padding included.
    """
    real = tokens != PAD
    hide = (torch.rand(tokens.shape, generator=generator) < prob) & real
    last = real.sum(1) - 1  # sequences that hid nothing hide their last item
    none = ~hide.any(1) & (last >= 0)
    hide[none.nonzero().squeeze(1), last[none]] = True
    inputs = torch.where(hide, torch.full_like(tokens, mask_token), tokens)
    labels = torch.where(hide, tokens - 1, torch.full_like(tokens, -100))
    return inputs, labels


@dataclass
class TrainLog:
    """Mean training loss per epoch and wall seconds."""

    losses: list = field(default_factory=list)
    seconds: float = 0.0


def _batch_loss(model: SeqRec, tokens: torch.Tensor, objective: str, mask_prob: float, gen: torch.Generator,
                device: str = "cpu"):
    if objective == "cloze":  # BERT4Rec
        inputs, labels = (t.to(device) for t in mask_for_cloze(tokens, model.n_items + 1, mask_prob, gen))
        h = model(inputs)
        keep = labels != -100
        return nn.functional.cross_entropy(model.logits(h[keep]), labels[keep])
    tokens = tokens.to(device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]  # SASRec: position t predicts token t+1
    keep = (targets != PAD) & (inputs != PAD)
    h = model(inputs)[keep]  # (positions, dim)
    y = targets[keep] - 1  # item indexes
    if objective == "ce":
        return nn.functional.cross_entropy(model.logits(h), y)
    # "bce": one uniform negative per position, as in SASRec's paper
    table = model.item_table()
    neg = torch.randint(0, model.n_items, y.shape, generator=gen).to(device)
    pos_logit = (h * table[y + 1]).sum(-1)
    neg_logit = (h * table[neg + 1]).sum(-1)
    return nn.functional.binary_cross_entropy_with_logits(
        torch.cat([pos_logit, neg_logit]), torch.cat([torch.ones_like(pos_logit), torch.zeros_like(neg_logit)]))


def train_seqrec(model: SeqRec, tokens: np.ndarray, *, objective: str, epochs: int, batch_size: int = 128,
                 lr: float = 1e-3, mask_prob: float = 0.2, seed: int = 0, progress: bool = True,
                 device: str = "cpu") -> TrainLog:
    """Train a :class:`SeqRec` on right-padded token rows (:func:`pad_right`) with Adam.

    Args:
        tokens: int64 (n, L) with L <= ``model.max_len`` (one extra slot is not
            needed: SASRec uses tokens[:, :-1] as input).
        objective: ``"ce"`` (SASRec, full softmax), ``"bce"`` (SASRec, one
            sampled negative) or ``"cloze"`` (BERT4Rec, masked items, full softmax).
        epochs, batch_size, lr: the loop's; mask_prob: BERT4Rec's share hidden.
        seed: shuffling, masking and negatives (drawn on the CPU: the same on any device).
        device: where to train ("cpu", "cuda"); the model is moved there.

    Returns:
        A :class:`TrainLog`; the model is trained in place and left in eval mode.

    Raises:
        ValueError: unknown objective, or a cloze objective on a causal model (and vice versa).
    """
    import time

    from tqdm.auto import tqdm

    if objective not in ("ce", "bce", "cloze"):
        raise ValueError(f"objective must be 'ce', 'bce' or 'cloze', got {objective!r}")
    if (objective == "cloze") == model.causal:
        raise ValueError("'cloze' trains a bidirectional model (BERT4Rec); 'ce'/'bce' a causal one (SASRec)")
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    data = torch.as_tensor(tokens)
    log, started = TrainLog(), time.perf_counter()
    model.train()
    for _ in tqdm(range(epochs), desc=f"{objective} epochs", disable=not progress, leave=False):
        total, n = 0.0, 0
        order = rng.permutation(len(data))
        for start in range(0, len(data), batch_size):
            batch = data[torch.as_tensor(order[start : start + batch_size])]
            loss = _batch_loss(model, batch, objective, mask_prob, gen, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + float(loss.detach()) * len(batch), n + len(batch)
        log.losses.append(total / n)
    model.eval()
    log.seconds = time.perf_counter() - started
    return log


@torch.no_grad()
def user_states(model: SeqRec, seqs, *, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The hidden state each user's next-item scores are read from: the model's user vector.

    SASRec reads the hidden state at the last real position; BERT4Rec appends
    ``[MASK]`` (keeping the last ``max_len - 1`` items) and reads it there.
    Scores are ``states @ item_vectors(model).T`` (:func:`score_next`).

    Args:
        seqs: n int arrays of ``item_idx``, oldest first. Items the model does not
            know (``item_idx`` outside ``[0, n_items)``, e.g. a product added
            after training) are dropped: the model has no vector for them.
        batch_size: users per forward pass.

    Returns:
        ``(states float32 (n, dim), has bool (n,), truncated bool (n,))``: a user
        with an empty history, or one of unknown items only, has ``has`` False
        and a row of zeros (nothing to read: the caller falls back, e.g. to
        popularity); ``truncated``: the known history was longer than the model
        reads (its last items kept).
    """
    model.eval()
    keep = model.max_len if model.causal else model.max_len - 1
    known = [np.asarray(s, dtype=np.int64) for s in seqs]
    known = [s[(s >= 0) & (s < model.n_items)] for s in known]
    tokens, lengths, truncated = pad_right(known, keep)
    if not model.causal:
        tokens = np.concatenate([tokens, np.zeros((len(tokens), 1), np.int64)], 1)
        tokens[np.arange(len(tokens)), lengths] = model.n_items + 1  # [MASK] right after the last item
        read = lengths
    else:
        read = np.maximum(lengths - 1, 0)
    dim = model.pos_emb.embedding_dim
    states = np.zeros((len(known), dim), dtype=np.float32)
    has = lengths > 0
    rows_with = np.flatnonzero(has)
    dev = next(model.parameters()).device
    for start in range(0, len(rows_with), batch_size):
        rows = rows_with[start : start + batch_size]
        h = model(torch.as_tensor(tokens[rows], device=dev))  # (b, L, dim)
        states[rows] = h[torch.arange(len(rows), device=dev), torch.as_tensor(read[rows], device=dev)].cpu().numpy()
    return states, has, truncated


@torch.no_grad()
def item_vectors(model: SeqRec) -> np.ndarray:
    """float32 (n_items, dim): row ``i`` is item ``i``'s output vector (the item table without padding and ``[MASK]``)."""
    return model.item_table()[1 : model.n_items + 1].cpu().numpy().astype(np.float32)


@torch.no_grad()
def score_next(model: SeqRec, seqs, *, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every item as each user's next purchase: the user's state (:func:`user_states`) times the item table.

    Args:
        seqs: n int arrays of ``item_idx``. Items the model does not know
            (``item_idx`` outside ``[0, n_items)``, e.g. a product added after
            training) are dropped: the model has no vector for them. An empty
            history, or one of unknown items only, gets a row of NaN (nothing to
            read: the caller falls back, e.g. to popularity).

    Returns:
        ``(scores float32 (n, n_items), truncated bool (n,))``; ``truncated``: the
        known history was longer than the model reads (its last items kept).
    """
    states, has, truncated = user_states(model, seqs, batch_size=batch_size)
    out = np.full((len(states), model.n_items), np.nan, dtype=np.float32)
    rows_with = np.flatnonzero(has)
    dev = next(model.parameters()).device
    for start in range(0, len(rows_with), batch_size):
        rows = rows_with[start : start + batch_size]
        out[rows] = model.logits(torch.as_tensor(states[rows], device=dev)).cpu().numpy()
    return out, truncated


class SeqGenerator:
    """A trained :class:`SeqRec` as a candidate generator for a recall stage (chapter 08).

    The user vector is the hidden state :func:`score_next` reads
    (:func:`user_states`), the item vectors are the model's item table
    (:func:`item_vectors`), and the top ``k`` come from an exact FAISS
    inner-product search over the table (``IndexFlatIP`` on the raw vectors,
    not normalised: the model scores by dot product, and an item's norm is part
    of its score), through :func:`ecrec.recall.faiss_search` (ties: lower item
    index). The lists are the top ``k`` of :func:`score_next`'s scores.

    Args:
        model: a trained SeqRec (moved to the CPU, eval mode).
        seqs: ``{user_id: int array of item_idx}``, oldest first
            (:func:`build_sequences` before the request time).

    Attributes:
        items: float32 (n_items, dim) item vectors; index: the FAISS index over
        them; tie_margin: extra results so that identical vectors tie by lower index.
    """

    def __init__(self, model: SeqRec, seqs) -> None:
        import faiss

        from ecrec.recall import tie_margin

        self.model = model.to("cpu").eval()
        self.seqs = seqs
        self.items = item_vectors(self.model)
        self.index = faiss.IndexFlatIP(self.items.shape[1])
        self.index.add(np.ascontiguousarray(self.items))
        self.tie_margin = tie_margin(self.items)

    def user_vectors(self, users) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors float32 (n, dim), has bool (n,))`` of customer ids; zero rows where no known history."""
        empty = np.zeros(0, np.int64)
        states, has, _ = user_states(self.model, [self.seqs.get(u, empty) for u in np.asarray(users).tolist()])
        return states, has

    def search(self, vectors: np.ndarray, k: int) -> np.ndarray:
        """int64 (n, k) top ``k`` items of user vectors (float32 (n, dim)); a zero vector gets a row of -1."""
        from ecrec.recall import faiss_search

        return faiss_search(self.index, vectors, k, tie_margin=self.tie_margin)

    def top_k(self, users, k: int) -> np.ndarray:
        """int64 (n, k) item indexes per customer id, best first; -1 rows for a user without a known history.

        Raises:
            ValueError: ``k < 1``.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        vectors, has = self.user_vectors(users)
        out = np.full((len(vectors), k), -1, dtype=np.int64)
        if has.any():
            out[has] = self.search(vectors[has], k)
        return out

    def __call__(self, data, k: int) -> np.ndarray:
        """The recall-stage generator protocol (:meth:`ecrec.system.RecallStage.with_generator`): top ``k`` of ``data.users``."""
        return self.top_k(data.users, k)


def ease(train_matrix, lam: float = 500.0) -> np.ndarray:
    """EASE^R item-item weights (Steck, WWW 2019), closed form.

    ``P = (X^T X + lam I)^-1``; ``B = I - P diag(1 / diag(P))``, i.e.
    ``B_ij = -P_ij / P_jj`` off the diagonal and 0 on it. Scores are ``X B``.

    Args:
        train_matrix: (n_users, n_items) interactions (sparse or dense; counts are binarised).
        lam: L2 strength (> 0).

    Returns:
        float64 (n_items, n_items) B with a zero diagonal.

    Raises:
        ValueError: ``lam`` <= 0.
    """
    if lam <= 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    import scipy.sparse as sp

    X = sp.csr_array(train_matrix, dtype=np.float64)
    X.data[:] = 1.0
    G = (X.T @ X).toarray()
    G[np.diag_indices_from(G)] += lam
    P = np.linalg.inv(G)
    B = -P / np.diag(P)[None, :]
    B[np.diag_indices_from(B)] = 0.0
    return B


def sampled_metrics(scores: np.ndarray, relevant, exclude=None, *, n_neg: int = 100, k: int = 10,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """The "1 positive + ``n_neg`` sampled negatives" protocol, per user.

    For each relevant (user, item) pair, ``n_neg`` items are drawn uniformly
    among the items that are neither relevant to the user nor in ``exclude``;
    the positive's rank among the ``n_neg + 1`` counts ties as one half.
    HR@k = rank < k; NDCG@k = 1 / log2(rank + 2) when rank < k; AUC = 1 -
    rank / n_neg. Each user's value is the mean over their relevant items.

    Args:
        scores: float (n_users, n_items); NaN rows are skipped (NaN out).
        relevant: sparse (n_users, n_items), non-zero = relevant.
        exclude: optional sparse (n_users, n_items) never drawn as negatives.

    Returns:
        ``{"hr": , "ndcg": , "auc": }`` float64 (n_users,), NaN for users with
        no relevant item or no scores.

    Raises:
        ValueError: shapes disagree or fewer than ``n_neg`` candidates remain.
    """
    import scipy.sparse as sp

    rel = sp.csr_array(relevant)
    if rel.shape != scores.shape:
        raise ValueError(f"relevant {rel.shape} and scores {scores.shape} must have the same shape")
    ex = sp.csr_array(exclude) if exclude is not None else None
    rng = np.random.default_rng(seed)
    n_users, n_items = scores.shape
    out = {m: np.full(n_users, np.nan) for m in ("hr", "ndcg", "auc")}
    for u in range(n_users):
        pos = rel.indices[rel.indptr[u] : rel.indptr[u + 1]]
        if len(pos) == 0 or np.isnan(scores[u]).any():
            continue
        banned = np.zeros(n_items, bool)
        banned[pos] = True
        if ex is not None:
            banned[ex.indices[ex.indptr[u] : ex.indptr[u + 1]]] = True
        pool = np.flatnonzero(~banned)
        if len(pool) < n_neg:
            raise ValueError(f"user row {u}: {len(pool)} candidate negatives, fewer than n_neg = {n_neg}")
        neg = pool[rng.random((len(pos), len(pool))).argpartition(n_neg - 1, axis=1)[:, :n_neg]]  # (p, n_neg)
        s_pos, s_neg = scores[u, pos][:, None], scores[u, neg]
        rank = (s_neg > s_pos).sum(1) + 0.5 * (s_neg == s_pos).sum(1)
        out["hr"][u] = np.mean(rank < k)
        out["ndcg"][u] = np.mean(np.where(rank < k, 1.0 / np.log2(rank + 2), 0.0))
        out["auc"][u] = np.mean(1.0 - rank / n_neg)
    return out
