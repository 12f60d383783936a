"""Chapter 05's MiniLM two-tower, fine-tuned with in-batch negatives.

The item tower is MiniLM's last layers over cached hidden states
(:func:`encode_with_cache`); the user tower is the recency-weighted mean of the
item vectors of the user's history, **through the same item tower** (the two
towers share their weights). Training pairs are (history -> next item) from
purchases before a cut-off (:func:`sample_pairs`); the loss is the in-batch
softmax with the logQ correction (Yi et al., 2019, "Sampling-bias-corrected
neural modeling for large corpus item recommendations"; :func:`target_log_q`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ecrec.recall_data import recency_weights
from ecrec.schema import INVOICE_NO, ITEM_IDX, TS, USER_ID

__all__ = ["encode_with_cache", "ItemTower", "Pairs", "sample_pairs", "target_log_q", "in_batch_logits",
           "in_batch_eval", "train_two_tower"]


def encode_with_cache(
    texts: Sequence[str],
    *,
    n_trainable: int = 1,
    max_length: int = 32,
    batch_size: int = 256,
    model=None,
    tokenizer=None,
    progress: bool = False,
):
    """Zero-shot MiniLM embeddings AND the hidden states a partial fine-tune starts from.

    One forward pass over the catalogue (:func:`ecrec.text.encode_texts`, the
    book's one text encoder) gives (a) the mean-pooled, L2-normalised sentence
    embeddings and (b) the hidden states entering the last ``n_trainable``
    transformer layers. Fine-tuning only those layers on cached inputs makes a
    training step ~6/n_trainable times cheaper than a full fine-tune: what
    keeps it feasible on a CPU.

    Returns:
        ``(emb float32 (n, hidden), states float32 tensor (n, L, hidden),
        mask int64 tensor (n, L), encoder)``; ``L`` = the longest tokenised text.

    Raises:
        ValueError: ``n_trainable`` outside 1..num_hidden_layers.
        TypeError: a text is not a string.
    """
    from ecrec.text import encode_texts, load_encoder

    model = model or load_encoder()
    n_layers = model.config.num_hidden_layers
    if not 1 <= n_trainable <= n_layers:
        raise ValueError(f"n_trainable must be in 1..{n_layers}, got {n_trainable}")
    emb, states, mask = encode_texts(
        texts, model=model, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size,
        progress=progress, hidden_states_at=n_layers - n_trainable,
    )
    return emb, states, mask, model


class ItemTower(torch.nn.Module):
    """The item tower: MiniLM's last ``n_trainable`` layers (trainable copies) + mean pooling + L2 norm.

    Input: cached hidden states (batch, L, hidden) and their attention mask,
    from :func:`encode_with_cache` with the same ``n_trainable``. Before
    training it reproduces the zero-shot embeddings (up to float rounding).
    """

    def __init__(self, encoder, n_trainable: int = 1):
        super().__init__()
        import copy

        layers = encoder.encoder.layer
        if not 1 <= n_trainable <= len(layers):
            raise ValueError(f"n_trainable must be in 1..{len(layers)}, got {n_trainable}")
        self.layers = torch.nn.ModuleList(copy.deepcopy(layer) for layer in layers[-n_trainable:])

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, L, hidden) float states, (batch, L) 0/1 mask -> (batch, hidden) unit vectors."""
        from ecrec.text import mean_pool

        h = states
        ext = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.layers:
            h = layer(h, attention_mask=ext)
            if isinstance(h, tuple):  # older transformers return (hidden,)
                h = h[0]
        return torch.nn.functional.normalize(mean_pool(h, mask), dim=-1)

    def embed_all(self, states: torch.Tensor, mask: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Item vectors for the whole catalogue, float32 (n_items, hidden), computed in eval mode."""
        was = self.training
        self.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(states), batch_size):
                sl = slice(start, start + batch_size)
                out.append(self(states[sl], mask[sl]).numpy())
        self.train(was)
        return np.concatenate(out).astype(np.float32)


@dataclass
class Pairs:
    """Training pairs (history -> next item) from purchases BEFORE a cut-off.

    ``hist_items``/``hist_weights``: (n_pairs, max_history), -1 / 0 padded,
    most recent first; ``target``: (n_pairs,) item indexes; ``target_time``:
    (n_pairs,) datetime64 of the target purchase (for leakage checks);
    ``user``: (n_pairs,) the buyer's ``user_id`` (what an ID model trained on
    the same pairs sees, :func:`ecrec.recall.pairs_matrix`).
    """

    hist_items: np.ndarray
    hist_weights: np.ndarray
    target: np.ndarray
    target_time: np.ndarray | None = None
    user: np.ndarray | None = None

    def head(self, n: int) -> Pairs:
        """The first ``n`` pairs (``sample_pairs`` returns them in random order: a random subset)."""
        if not 1 <= n <= len(self.target):
            raise ValueError(f"n must be in 1..{len(self.target)}, got {n}")
        time_, user = (None if a is None else a[:n] for a in (self.target_time, self.user))
        return Pairs(self.hist_items[:n], self.hist_weights[:n], self.target[:n], time_, user)


def sample_pairs(
    events: pd.DataFrame,
    before,
    n_pairs: int,
    *,
    max_history: int = 10,
    half_life_days: float = 30.0,
    new_items_only: bool = True,
    since=None,
    seed: int = 0,
) -> Pairs:
    """Sample (history -> next purchased item) pairs from events strictly before ``before``.

    A pair picks a purchase (user, item, invoice) that is not in the user's
    first invoice; its history is the user's distinct items from EARLIER
    invoices (most recent first, at most ``max_history``), weighted by
    recency relative to that invoice. With ``new_items_only`` the target is an
    item the user had not bought before (the harder, more useful "new items"
    task). Nothing at or after ``before`` is read: no test leakage. With
    ``since``, only purchases at or after ``since`` are targets (their
    history may start earlier): held-out pairs from a validation window.

    Raises:
        ValueError: no eligible purchase, ``n_pairs < 1`` or ``max_history < 1``.
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    ev = events[events[TS] < before].sort_values([USER_ID, TS, INVOICE_NO, ITEM_IDX]).reset_index(drop=True)
    user = ev[USER_ID].to_numpy()
    t = ev[TS].to_numpy()
    item = ev[ITEM_IDX].to_numpy()
    # first row of the user's current invoice, and first row of the user
    new_user = np.r_[True, user[1:] != user[:-1]]
    new_inv = new_user | np.r_[True, ev[INVOICE_NO].to_numpy()[1:] != ev[INVOICE_NO].to_numpy()[:-1]]
    inv_start = np.maximum.accumulate(np.where(new_inv, np.arange(len(ev)), 0))
    user_start = np.maximum.accumulate(np.where(new_user, np.arange(len(ev)), 0))
    eligible = inv_start > user_start
    if new_items_only:
        first_buy = ev.groupby([USER_ID, ITEM_IDX])[TS].transform("min").to_numpy()
        eligible &= first_buy == t
    if since is not None:
        eligible &= t >= pd.Timestamp(since).to_datetime64()
    cand = np.flatnonzero(eligible)
    if cand.size == 0:
        raise ValueError("no eligible (history -> next item) purchase before the cut-off")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(cand, size=n_pairs, replace=cand.size < n_pairs)
    hist_items = np.full((n_pairs, max_history), -1, dtype=np.int64)
    hist_w = np.zeros((n_pairs, max_history), dtype=np.float32)
    for p, r in enumerate(chosen):
        lo, hi = user_start[r], inv_start[r]
        rows = np.arange(hi - 1, lo - 1, -1)  # most recent first
        _, first = np.unique(item[rows], return_index=True)
        keep = rows[np.sort(first)][:max_history]
        age = (t[r] - t[keep]) / np.timedelta64(1, "D")
        hist_items[p, : len(keep)] = item[keep]
        hist_w[p, : len(keep)] = recency_weights(age, half_life_days)
    return Pairs(hist_items, hist_w, item[chosen].astype(np.int64), t[chosen], user[chosen])


def target_log_q(pairs: Pairs, n_items: int) -> torch.Tensor:
    """log of each item's share of the training targets (how often it is an in-batch negative).

    Items never a target get a count of 1 (a small share, not log 0).
    """
    freq = np.bincount(pairs.target, minlength=n_items).astype(np.float64)
    return torch.from_numpy(np.log(np.maximum(freq, 1.0) / freq.sum()).astype(np.float32))


def in_batch_logits(tower, states, mask, hist, w, tgt, temperature: float, log_q=None) -> torch.Tensor:
    """(B, B) logits ``s_ij = u_i . v_j / temperature - log q_j``; a repeat of pair i's target is masked.

    ``hist``/``w``: (B, max_history) history items and recency weights (-1 / 0
    padded); ``tgt``: (B,) target items; ``log_q``: (n_items,) from
    :func:`target_log_q`, or None (no correction, what serving ranks by).
    """
    uniq = np.unique(np.r_[hist[hist >= 0], tgt])  # every text in the batch goes through the tower once
    vec = tower(states[uniq], mask[uniq])
    hv = vec[torch.from_numpy(np.searchsorted(uniq, np.where(hist >= 0, hist, uniq[0])))]
    users = torch.nn.functional.normalize((hv * torch.as_tensor(w)[..., None]).sum(1), dim=-1)  # padding: weight 0
    targets = vec[torch.from_numpy(np.searchsorted(uniq, tgt))]
    logits = users @ targets.T / temperature  # (B, B): row i = user i against every target of the batch
    if log_q is not None:
        logits = logits - log_q[tgt][None, :]  # Yi et al. 2019: popular targets are over-sampled negatives
    same = torch.from_numpy(tgt[:, None] == tgt[None, :]) & ~torch.eye(len(tgt), dtype=torch.bool)
    return logits.masked_fill(same, float("-inf"))  # an item is never its own negative


def in_batch_eval(
    tower, states, mask, pairs: Pairs, *, batch_size: int, temperature: float, log_q=None
) -> tuple[float, float]:
    """Held-out in-batch loss and top-1 accuracy over consecutive batches of ``pairs``.

    The same objective as :func:`train_two_tower` (pass its ``log_q`` to
    compare with the training loss), on pairs the model was not trained on,
    e.g. targets from the validation window (``sample_pairs(..., since=...)``).
    Accuracy = share of pairs whose own target gets the highest logit among
    the batch's targets WITHOUT the logQ shift (what serving ranks by); a
    random scorer gets about 1 / batch_size. An incomplete last batch is dropped.

    Returns:
        ``(mean loss, accuracy)``.

    Raises:
        ValueError: fewer pairs than one batch, ``batch_size < 2``, ``temperature <= 0``.
    """
    n = len(pairs.target)
    if batch_size < 2 or temperature <= 0 or n < batch_size:
        raise ValueError(f"need batch_size >= 2, temperature > 0 and >= batch_size pairs; got {batch_size}, "
                         f"{temperature}, {n} pairs")
    was = tower.training
    tower.eval()
    losses, correct, seen = [], 0, 0
    with torch.inference_mode():
        for start in range(0, n - batch_size + 1, batch_size):
            sl = slice(start, start + batch_size)
            tgt = pairs.target[sl]
            raw = in_batch_logits(tower, states, mask, pairs.hist_items[sl], pairs.hist_weights[sl], tgt,
                                   temperature, None)
            logits = raw - log_q[tgt][None, :] if log_q is not None else raw
            losses.append(float(torch.nn.functional.cross_entropy(logits, torch.arange(len(tgt)))))
            correct += int((raw.argmax(1) == torch.arange(len(tgt))).sum())
            seen += len(tgt)
    tower.train(was)
    return float(np.mean(losses)), correct / seen


def train_two_tower(
    tower,
    states,
    mask,
    pairs: Pairs,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-4,
    temperature: float = 0.1,
    logq_correction: bool = True,
    seed: int = 0,
    progress: bool = True,
    eval_pairs: Pairs | None = None,
    eval_every: int = 0,
    eval_log: list | None = None,
    one_pass: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> list[float]:
    """Fine-tune the item tower with in-batch negatives (sampled softmax).

    For a batch of pairs, the user vector is the recency-weighted mean of the
    tower's vectors of the history items (L2-normalised: the same tower on
    both sides), the target's vector is the positive and the other targets of
    the batch are the negatives: ``loss = CE(U T^T / temperature, diag)``.
    In-batch copies of the same target item are masked out of the negatives.

    In-batch negatives are drawn in proportion to popularity, so without a
    correction the model learns to push popular items DOWN. With
    ``logq_correction`` each logit gets ``- log q_j`` (q_j = item j's share of
    the training targets, :func:`target_log_q`; Yi et al., 2019), which
    removes that bias. The shifted loss is no longer ``ln B`` for a uniform
    scorer: compare it with the held-out loss at step 0 instead.

    Args:
        eval_pairs, eval_every, eval_log: if all given, :func:`in_batch_eval`
            on ``eval_pairs`` (same batch size, temperature and log q) runs
            before step 1 and every ``eval_every`` steps (and after the last);
            ``{"step", "loss", "accuracy"}`` dicts are appended to ``eval_log``.
        one_pass: batches are consecutive slices of ``pairs`` (step s reads pairs
            ``(s-1)*B .. s*B``; needs ``steps * batch_size <= len(pairs)``), so the
            model after step s has seen exactly the first ``s * B`` pairs, each
            once, and ``q_j`` counts the targets of the pairs seen so far (a
            streaming estimate, as Yi et al. 2019 do): the tower after step s IS
            the tower trained on ``pairs.head(s * B)``, so one run gives the
            models of a learning curve. Default: each step draws ``B`` pairs at
            random and ``q_j`` counts all of ``pairs``.
        on_step: called with the step number after each step (e.g. to evaluate
            snapshots of a learning curve); the tower is in train mode.

    Returns:
        The loss of every step (for a loss curve).

    Raises:
        ValueError: non-positive temperature, steps or batch size; ``one_pass``
            with fewer than ``steps * batch_size`` pairs.
    """
    from tqdm.auto import tqdm

    if temperature <= 0 or steps < 1 or batch_size < 2:
        raise ValueError(f"need temperature > 0, steps >= 1, batch_size >= 2; got {temperature}, {steps}, {batch_size}")
    if one_pass and steps * batch_size > len(pairs.target):
        raise ValueError(f"one_pass needs steps * batch_size = {steps * batch_size} pairs, got {len(pairs.target)}; "
                         "sample more pairs or take fewer steps")
    gen = np.random.default_rng(seed)
    n_items = int(max(pairs.target.max(), states.shape[0] - 1)) + 1
    log_q = target_log_q(pairs if not one_pass else pairs.head(batch_size), n_items)
    evaluate = eval_pairs is not None and eval_every > 0 and eval_log is not None

    def record(step):
        loss, acc = in_batch_eval(tower, states, mask, eval_pairs, batch_size=batch_size, temperature=temperature,
                                  log_q=log_q if logq_correction else None)
        eval_log.append({"step": step, "loss": loss, "accuracy": acc})

    opt = torch.optim.AdamW(tower.parameters(), lr=lr)
    if evaluate:
        record(0)
    tower.train()
    losses = []
    n = len(pairs.target)
    for step in tqdm(range(1, steps + 1), disable=not progress, desc="fine-tune two-tower"):
        if one_pass:
            idx = np.arange((step - 1) * batch_size, step * batch_size)
            log_q = target_log_q(pairs.head(step * batch_size), n_items)  # streaming: the pairs seen so far
        else:
            idx = gen.choice(n, size=min(batch_size, n), replace=False)
        tgt = pairs.target[idx]
        logits = in_batch_logits(tower, states, mask, pairs.hist_items[idx], pairs.hist_weights[idx], tgt,
                                  temperature, log_q if logq_correction else None)
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(tgt)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if evaluate and (step % eval_every == 0 or step == steps):
            record(step)
        if on_step is not None:
            on_step(step)
            tower.train()
    tower.eval()
    return losses
