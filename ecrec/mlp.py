"""The math of a CTR model from scratch in numpy: sigmoid, log loss, an MLP, back-propagation.

Chapter 02 derives every function here and checks it against torch autograd
and finite differences. Everything is float64 unless a caller passes another
float dtype, and every function refuses bad input with a :class:`ValueError`
that says what is wrong (shapes that do not match, labels outside {0, 1}, NaN).

Conventions (those of ``torch.nn.Linear``, so weights copy across unchanged):

* a batch ``X`` is ``(n, d)``, one example per row;
* layer ``l`` holds ``W_l`` of shape ``(d_l, d_{l-1})`` and ``b_l`` of shape
  ``(d_l,)``, and computes ``Z_l = A_{l-1} @ W_l.T + b_l``;
* hidden layers apply an activation ``a`` (ReLU by default), the last layer
  has one unit and no activation: its output is the logit ``z``, shape ``(n,)``,
  and the predicted click probability is ``sigmoid(z)``;
* ``params`` is a flat list ``[W_1, b_1, W_2, b_2, ..., W_L, b_L]`` and every
  gradient list has the same layout. With no hidden layer the model is
  logistic regression.

The loss is the mean binary cross-entropy computed from logits,
``L = mean(softplus(z) - y * z)``, which is finite for any finite ``z``; its
gradient with respect to the logit is ``(sigmoid(z) - y) / n``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

from ecrec.metrics import _as_float, _check_labels

__all__ = [
    "sigmoid",
    "softplus",
    "log_loss_from_logits",
    "log_loss_grad",
    "init_mlp",
    "mlp_forward",
    "mlp_backward",
    "loss_and_grads",
    "predict_proba",
    "numerical_gradient",
    "relative_error",
    "gradient_check",
    "Adam",
    "ACTIVATIONS",
]

ACTIVATIONS = ("relu", "sigmoid", "tanh")


# --- input checks ----------------------------------------------------------


# _as_float (numeric, NaN named) and _check_labels (1-D, only 0 and 1, n of them) are
# ecrec.metrics' own: one set of checks for the package.


def _check_logits(z) -> np.ndarray:
    arr = _as_float(z, "logits")
    if arr.ndim != 1:
        raise ValueError(f"logits must be 1-D of shape (n,), got shape {arr.shape}")
    if len(arr) == 0:
        raise ValueError("logits are empty")
    return arr


# --- sigmoid, softplus, the loss -------------------------------------------


def sigmoid(z) -> np.ndarray:
    """Logistic function ``1 / (1 + exp(-z))``, computed without overflow.

    The package's one sigmoid: :func:`scipy.special.expit` (which
    :mod:`ecrec.ctr` also uses) behind the package's input checks. A stable
    form evaluates ``1 / (1 + exp(-z))`` for ``z >= 0`` and the equal
    ``exp(z) / (1 + exp(z))`` for ``z < 0``, so ``exp`` never overflows: no
    warning and no ``inf``; the result is exactly 0 or 1 only where the true
    value rounds to it (``sigmoid(-1000) == 0.0``, ``sigmoid(1000) == 1.0``).

    Args:
        z: logits, any shape; float dtypes are kept, others become float64.

    Returns:
        Probabilities in [0, 1], same shape and float dtype as ``z``.

    Raises:
        ValueError: ``z`` contains NaN.
        TypeError: ``z`` is not numeric.
    """
    z = _as_float(z, "z")
    return expit(z).astype(z.dtype, copy=False)


def softplus(z) -> np.ndarray:
    """``log(1 + exp(z))`` without overflow: ``max(z, 0) + log1p(exp(-|z|))``.

    ``softplus(z) = -log(sigmoid(-z))``, the loss of a negative example with
    logit ``z``; ``softplus(1000) == 1000.0`` where the naive formula gives
    ``inf``.

    Args:
        z: any shape, float (kept) or numeric (becomes float64).

    Returns:
        Same shape, values >= 0.

    Raises:
        ValueError: NaN in ``z``.
    """
    z = _as_float(z, "z")
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def log_loss_from_logits(y_true, logits, reduction: str = "mean"):
    """Binary cross-entropy from logits, in nats: ``softplus(z) - y * z``.

    Equal to ``-[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))]`` but finite
    for every finite logit (``z = 1000, y = 0`` costs 1000, not ``inf``); the
    same quantity as ``torch.nn.BCEWithLogitsLoss``. Computed as
    ``softplus(-z)`` for ``y = 1`` and ``softplus(z)`` for ``y = 0`` (the same
    numbers for finite ``z``), so that infinite logits get their limits, the
    mathematically right values, instead of ``inf - inf = nan``:
    ``y = 1, z = +inf`` costs 0 and ``y = 0, z = +inf`` costs ``+inf``
    (mirror for ``-inf``). ``torch.nn.BCEWithLogitsLoss`` returns ``nan`` for
    the first case. Every loss of the package follows this rule (limits for
    infinite logits, an error for NaN); training loops stop with an error
    naming the rows when a loss becomes infinite.

    Args:
        y_true: (n,) labels in {0, 1}.
        logits: (n,) real logits ``z``; +-inf allowed.
        reduction: ``"mean"`` (a float), ``"sum"`` (a float) or ``"none"``
            (the (n,) per-example losses).

    Raises:
        ValueError: shapes differ, empty input, not 1-D, NaN (its index is
            named), labels outside {0, 1}, unknown ``reduction``.
        TypeError: non-numeric input.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    z = _check_logits(logits)
    y = _check_labels(y_true, n=len(z))
    loss = np.where(y == 1, softplus(-z), softplus(z))
    if reduction == "none":
        return loss
    return float(loss.sum() if reduction == "sum" else loss.mean())


def log_loss_grad(y_true, logits, reduction: str = "mean") -> np.ndarray:
    """Gradient of :func:`log_loss_from_logits` with respect to the logits.

    ``dL/dz_i = (sigmoid(z_i) - y_i) / n`` for ``"mean"`` (without the
    ``1/n`` for ``"sum"`` and ``"none"``). Always in [-1, 1]: a confidently
    wrong prediction gets the largest push, never ``inf`` or ``nan`` (also
    for infinite logits: ``sigmoid(+inf) = 1``).

    Args:
        y_true: (n,) labels in {0, 1}.
        logits: (n,) logits.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        (n,) array, dtype of ``logits`` (float64 for integer input).

    Raises:
        ValueError: as :func:`log_loss_from_logits`.
        TypeError: non-numeric input.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    z = _check_logits(logits)
    y = _check_labels(y_true, n=len(z)).astype(z.dtype)
    g = sigmoid(z) - y
    return g / len(z) if reduction == "mean" else g


# --- the MLP ---------------------------------------------------------------


def _activate(name: str, z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(z, 0)
    if name == "sigmoid":
        return sigmoid(z)
    return np.tanh(z)


def _activation_grad(name: str, z: np.ndarray, a: np.ndarray) -> np.ndarray:
    """da/dz given the pre-activation ``z`` and the activation ``a``."""
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "sigmoid":
        return a * (1 - a)
    return 1 - a * a


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _check_params(params: Sequence[np.ndarray]) -> None:
    if len(params) == 0 or len(params) % 2:
        raise ValueError(f"params must be [W_1, b_1, ..., W_L, b_L], got {len(params)} arrays")
    prev = None
    for i in range(0, len(params), 2):
        W, b = params[i], params[i + 1]
        layer = i // 2 + 1
        if W.ndim != 2 or b.shape != (W.shape[0],):
            raise ValueError(f"layer {layer}: W must be (d_out, d_in) and b (d_out,), got {W.shape} and {b.shape}")
        if prev is not None and W.shape[1] != prev:
            raise ValueError(f"layer {layer}: W has {W.shape[1]} inputs but layer {layer - 1} has {prev} outputs")
        prev = W.shape[0]
    if prev != 1:
        raise ValueError(f"the last layer must have 1 output (the logit), got {prev}")


def init_mlp(
    layer_sizes: Sequence[int],
    seed: int = 0,
    dtype=np.float64,
    activation: str = "relu",
) -> list[np.ndarray]:
    """Random weights for an MLP with ``layer_sizes = [d_in, h_1, ..., h_k, 1]``.

    Weights are drawn from ``N(0, gain / fan_in)``: for hidden layers
    ``gain = 2`` with ReLU (He et al., 2015) and ``1`` otherwise (LeCun), for
    the output layer ``1``; so the variance of the pre-activations stays
    roughly constant from layer to layer at initialisation. Biases start at 0. ``[d_in, 1]`` is logistic regression.

    Args:
        layer_sizes: widths, first the number of features, last 1.
        seed: seed of a private ``numpy.random.default_rng``; same seed, same weights.
        dtype: float dtype of every array.
        activation: the hidden activation the weights are scaled for.

    Returns:
        ``[W_1, b_1, ..., W_L, b_L]``, ``W_l`` of shape ``(layer_sizes[l], layer_sizes[l-1])``.

    Raises:
        ValueError: fewer than 2 sizes, a size < 1, or a last size other than 1.
    """
    _check_activation(activation)
    sizes = [int(s) for s in layer_sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"layer_sizes must be [d_in, ..., 1] with every size >= 1, got {list(layer_sizes)}")
    if sizes[-1] != 1:
        raise ValueError(f"the last layer must have 1 output (the logit), got layer_sizes={sizes}")
    rng = np.random.default_rng(seed)
    gain = 2.0 if activation == "relu" else 1.0
    params: list[np.ndarray] = []
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        is_hidden = i < len(sizes) - 2  # followed by the activation
        scale = np.sqrt((gain if is_hidden else 1.0) / d_in)
        params.append((rng.standard_normal((d_out, d_in)) * scale).astype(dtype))
        params.append(np.zeros(d_out, dtype=dtype))
    return params


@dataclass
class ForwardCache:
    """What :func:`mlp_forward` keeps for the backward pass.

    ``inputs[l]`` is ``A_l`` (``inputs[0]`` is ``X``), ``pre[l]`` is ``Z_{l+1}``,
    the pre-activation of layer ``l+1``; shapes ``(n, d_l)``.
    """

    activation: str
    inputs: list[np.ndarray] = field(default_factory=list)
    pre: list[np.ndarray] = field(default_factory=list)

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """``[("X", (n, d)), ("Z1", ...), ("A1", ...), ..., ("z", (n,))]``: every tensor's shape."""
        out = [("X", self.inputs[0].shape)]
        for i, z in enumerate(self.pre, start=1):
            if i < len(self.pre):
                out += [(f"Z{i}", z.shape), (f"A{i}", self.inputs[i].shape)]
            else:
                out.append(("z (logit)", z[:, 0].shape))
        return out


def mlp_forward(params: Sequence[np.ndarray], X, activation: str = "relu") -> tuple[np.ndarray, ForwardCache]:
    """Logits ``z = W_L a(... a(W_1 x + b_1) ...) + b_L`` of a batch.

    Args:
        params: ``[W_1, b_1, ..., W_L, b_L]`` (see :func:`init_mlp`).
        X: (n, d_in) features; cast to the dtype of ``W_1``.
        activation: hidden activation, one of :data:`ACTIVATIONS`.

    Returns:
        ``(z, cache)``: logits of shape (n,), and the :class:`ForwardCache`
        :func:`mlp_backward` needs.

    Raises:
        ValueError: ``X`` is not 2-D, its width is not ``d_in``, it contains
            NaN, or ``params`` are malformed.
    """
    _check_activation(activation)
    _check_params(params)
    X = _as_float(X, "X", params[0].dtype)
    if X.ndim != 2 or X.shape[1] != params[0].shape[1]:
        raise ValueError(f"X must be (n, {params[0].shape[1]}) to match W_1 {params[0].shape}, got shape {X.shape}")
    cache = ForwardCache(activation, inputs=[X])
    A = X
    n_layers = len(params) // 2
    for layer in range(n_layers):
        W, b = params[2 * layer], params[2 * layer + 1]
        Z = A @ W.T + b
        cache.pre.append(Z)
        if layer < n_layers - 1:
            A = _activate(activation, Z)
            cache.inputs.append(A)
    return cache.pre[-1][:, 0], cache


def mlp_backward(params: Sequence[np.ndarray], cache: ForwardCache, dz) -> list[np.ndarray]:
    """Back-propagate ``dL/dz`` (one value per example) to every weight and bias.

    With ``delta_L = dL/dz`` as an (n, 1) column, for ``l = L, ..., 1``::

        dW_l = delta_l.T @ A_{l-1}          (d_l, d_{l-1})
        db_l = delta_l.sum(axis=0)          (d_l,)
        delta_{l-1} = (delta_l @ W_l) * a'(Z_{l-1})

    Args:
        params: the weights used in the forward pass.
        cache: the forward pass's :class:`ForwardCache`.
        dz: (n,) gradient of the loss with respect to the logits, e.g.
            :func:`log_loss_grad`.

    Returns:
        Gradients ``[dW_1, db_1, ..., dW_L, db_L]``, same shapes as ``params``.

    Raises:
        ValueError: ``dz`` is not (n,) for the cached batch, or contains NaN.
    """
    n = cache.inputs[0].shape[0]
    dz = _as_float(dz, "dz", params[0].dtype)
    if dz.shape != (n,):
        raise ValueError(f"dz must have shape ({n},) like the batch, got {dz.shape}")
    n_layers = len(params) // 2
    grads: list[np.ndarray] = [np.empty(0)] * len(params)
    delta = dz[:, None]
    for layer in reversed(range(n_layers)):
        A_prev = cache.inputs[layer]
        grads[2 * layer] = delta.T @ A_prev
        grads[2 * layer + 1] = delta.sum(axis=0)
        if layer > 0:
            Z_prev = cache.pre[layer - 1]
            delta = (delta @ params[2 * layer]) * _activation_grad(cache.activation, Z_prev, A_prev)
    return grads


def loss_and_grads(
    params: Sequence[np.ndarray],
    X,
    y_true,
    activation: str = "relu",
    l2: float = 0.0,
) -> tuple[float, list[np.ndarray]]:
    """Mean log loss of the MLP on ``(X, y)`` and its gradient for every parameter.

    ``L = mean(softplus(z) - y z) + l2/2 * sum of squared weights`` (biases
    are not penalised).

    Args:
        params: ``[W_1, b_1, ..., W_L, b_L]``.
        X: (n, d_in) features.
        y_true: (n,) labels in {0, 1}.
        activation: hidden activation.
        l2: weight decay strength >= 0.

    Returns:
        ``(loss, grads)`` with ``grads`` laid out like ``params``.

    Raises:
        ValueError: bad shapes, NaN, labels outside {0, 1}, ``l2 < 0``.
    """
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    z, cache = mlp_forward(params, X, activation)
    y = _check_labels(y_true, n=len(z))
    loss = log_loss_from_logits(y, z)
    grads = mlp_backward(params, cache, log_loss_grad(y, z))
    if l2:
        for i in range(0, len(params), 2):
            loss += 0.5 * l2 * float(np.sum(params[i] ** 2))
            grads[i] = grads[i] + l2 * params[i]
    return loss, grads


def predict_proba(params: Sequence[np.ndarray], X, activation: str = "relu") -> np.ndarray:
    """Click probabilities ``sigmoid(z)``, shape (n,). Raises as :func:`mlp_forward`."""
    return sigmoid(mlp_forward(params, X, activation)[0])


# --- gradient checking -----------------------------------------------------


def numerical_gradient(
    f: Callable[[list[np.ndarray]], float],
    params: Sequence[np.ndarray],
    eps: float = 1e-6,
) -> list[np.ndarray]:
    """Central finite differences ``(f(θ + eps e_i) - f(θ - eps e_i)) / (2 eps)`` for every entry.

    The error of the central difference is ``O(eps^2)`` (plus rounding of
    order ``1e-16 / eps``), so ``eps = 1e-6`` in float64 gives about 1e-9
    relative accuracy. One call of ``f`` per entry and sign: use small models.
    ``params`` are perturbed in place and restored.

    Args:
        f: maps a parameter list to a scalar loss.
        params: float arrays; float64 recommended.
        eps: step, > 0.

    Returns:
        Arrays laid out like ``params``.

    Raises:
        ValueError: ``eps <= 0``.
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    params = list(params)
    grads = []
    for p in params:
        g = np.zeros_like(p)
        flat, gflat = p.reshape(-1), g.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            up = f(params)
            flat[i] = old - eps
            down = f(params)
            flat[i] = old
            gflat[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


def relative_error(a, b) -> float:
    """``||a - b|| / max(||a|| + ||b||, 1e-300)``: 0 when equal, 1 when opposite, scale-free.

    Raises:
        ValueError: shapes differ.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300))


def gradient_check(
    params: Sequence[np.ndarray],
    X,
    y_true,
    activation: str = "relu",
    l2: float = 0.0,
    eps: float = 1e-6,
) -> float:
    """Largest :func:`relative_error` between back-propagation and finite differences, over all parameters.

    Below about 1e-7 in float64 means the analytic gradient is right; a bug in
    a backward formula typically gives 1e-2 or more. ReLU's kink spoils a
    check when a pre-activation lies within ``eps`` of 0: with the zero biases
    of :func:`init_mlp`, an example whose hidden units are all 0 feeds exactly
    0 into the next layer, so check with non-zero biases (or after training).

    Raises:
        ValueError: as :func:`loss_and_grads`.
    """
    _, analytic = loss_and_grads(params, X, y_true, activation, l2)
    params = [p.copy() for p in params]
    numeric = numerical_gradient(lambda ps: loss_and_grads(ps, X, y_true, activation, l2)[0], params, eps)
    return max(relative_error(a, n) for a, n in zip(analytic, numeric, strict=True))


# --- optimiser ---------------------------------------------------------------


class Adam:
    """Adam (Kingma and Ba, 2015), written out; same update as ``torch.optim.Adam``.

    For each parameter ``θ`` with gradient ``g`` at step ``t = 1, 2, ...``::

        m = β1 m + (1 - β1) g
        v = β2 v + (1 - β2) g²
        θ -= lr * (m / (1 - β1^t)) / (sqrt(v / (1 - β2^t)) + eps)

    Args:
        params: the arrays to update **in place**.
        lr: step size > 0.
        betas: ``(β1, β2)`` in [0, 1).
        eps: added to the denominator.

    Raises:
        ValueError: bad hyper-parameters; in :meth:`step`, gradients whose
            shapes differ from the parameters' or that contain NaN.
    """

    def __init__(self, params: Sequence[np.ndarray], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def step(self, grads: Sequence[np.ndarray]) -> None:
        """Apply one update with ``grads`` (laid out like ``params``)."""
        if len(grads) != len(self.params):
            raise ValueError(f"got {len(grads)} gradients for {len(self.params)} parameters")
        for p, g in zip(self.params, grads, strict=True):
            if g.shape != p.shape:
                raise ValueError(f"gradient shape {g.shape} does not match parameter shape {p.shape}")
            if np.isnan(g).any():
                raise ValueError("gradient contains NaN")
        self.t += 1
        b1, b2 = self.betas
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            m_hat = m / (1 - b1 ** self.t)
            v_hat = v / (1 - b2 ** self.t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
