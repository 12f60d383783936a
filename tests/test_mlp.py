"""ecrec.mlp: hand-computed values, torch autograd and scikit-learn as oracles, extreme inputs, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss as sk_log_loss

from ecrec import mlp
from ecrec.mlp import (
    Adam,
    gradient_check,
    init_mlp,
    log_loss_from_logits,
    log_loss_grad,
    loss_and_grads,
    mlp_backward,
    mlp_forward,
    numerical_gradient,
    predict_proba,
    relative_error,
    sigmoid,
    softplus,
)

LN3 = math.log(3.0)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 5))
    y = (rng.random(16) < 0.4).astype(float)
    return X, y


def torch_twin(params, activation="relu"):
    """The same MLP as torch.nn.Sequential in float64, weights copied."""
    act = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}[activation]
    layers = []
    for i in range(0, len(params), 2):
        W, b = params[i], params[i + 1]
        lin = torch.nn.Linear(W.shape[1], W.shape[0], dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(params) - 2:
            layers.append(act())
    return torch.nn.Sequential(*layers)


# --- sigmoid and softplus ----------------------------------------------------


def test_sigmoid_hand_values():
    # sigmoid(ln 3) = 1 / (1 + 1/3) = 3/4; sigmoid(-z) = 1 - sigmoid(z)
    np.testing.assert_allclose(sigmoid([0.0, LN3, -LN3]), [0.5, 0.75, 0.25], rtol=1e-15)


def test_sigmoid_extreme_logits_are_exact_and_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning would fail the test
        with np.errstate(over="raise"):
            p = sigmoid(np.array([-1000.0, 1000.0, -40.0, 40.0]))
    assert p[0] == 0.0 and p[1] == 1.0
    assert p[2] == pytest.approx(math.exp(-40), rel=1e-14)  # e^-40 / (1 + e^-40)
    assert p[3] == 1.0  # 1 - 4e-18 rounds to 1 in float64


def test_sigmoid_matches_torch_and_keeps_dtype():
    z = np.linspace(-50, 50, 101)
    np.testing.assert_allclose(sigmoid(z), torch.sigmoid(torch.from_numpy(z)).numpy(), rtol=1e-14, atol=0)
    assert sigmoid(np.float32([1.0])).dtype == np.float32
    assert sigmoid([1, 2]).dtype == np.float64


def test_softplus_values():
    np.testing.assert_allclose(softplus([0.0, LN3, 1000.0, -1000.0]), [math.log(2), math.log(4), 1000.0, 0.0], rtol=1e-15)
    z = np.linspace(-30, 30, 61)
    np.testing.assert_allclose(softplus(z), torch.nn.functional.softplus(torch.from_numpy(z), threshold=100).numpy(), rtol=1e-14)


# --- the loss and its gradient -------------------------------------------------


def test_log_loss_hand_values():
    # y=1, z=ln3: -ln(3/4); y=0, z=ln3: -ln(1/4) = ln 4
    per = log_loss_from_logits([1, 0], [LN3, LN3], reduction="none")
    np.testing.assert_allclose(per, [-math.log(0.75), math.log(4.0)], rtol=1e-15)
    assert log_loss_from_logits([1, 0], [LN3, LN3]) == pytest.approx((math.log(4) - math.log(0.75)) / 2, rel=1e-15)
    assert log_loss_from_logits([1, 0], [LN3, LN3], reduction="sum") == pytest.approx(math.log(4) - math.log(0.75), rel=1e-15)
    assert log_loss_from_logits([1], [0.0]) == pytest.approx(math.log(2), rel=1e-15)


def test_log_loss_extreme_logits_finite_and_exact():
    y = np.array([1, 0, 0, 1])
    z = np.array([1000.0, -1000.0, 1000.0, -1000.0])
    np.testing.assert_array_equal(log_loss_from_logits(y, z, reduction="none"), [0.0, 0.0, 1000.0, 1000.0])
    np.testing.assert_array_equal(log_loss_grad(y, z, reduction="none"), [0.0, 0.0, 1.0, -1.0])
    torch_loss = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(z), torch.from_numpy(y.astype(float)), reduction="none")
    np.testing.assert_array_equal(log_loss_from_logits(y, z, reduction="none"), torch_loss.numpy())


def test_log_loss_where_the_probability_is_exactly_one():
    # sigmoid(40) rounds to exactly 1.0, so the probability form gives -log(1 - 1) = inf;
    # the logit form keeps the true value 40 + log1p(e^-40) = 40.
    assert sigmoid(40.0) == 1.0
    with np.errstate(divide="ignore"):
        assert np.isinf(-np.log1p(-sigmoid(np.array([40.0]))))[0]
    assert log_loss_from_logits([0], [40.0]) == 40.0
    assert log_loss_from_logits([1], [-40.0]) == 40.0
    assert log_loss_from_logits([1], [40.0]) == pytest.approx(math.exp(-40), rel=1e-12)


def test_log_loss_matches_torch_and_sklearn(batch):
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, 200)
    y = (rng.random(200) < 0.3).astype(float)
    ours = log_loss_from_logits(y, z)
    theirs = torch.nn.BCEWithLogitsLoss()(torch.from_numpy(z), torch.from_numpy(y)).item()
    assert ours == pytest.approx(theirs, rel=1e-13)
    assert ours == pytest.approx(sk_log_loss(y, sigmoid(z)), rel=1e-12)


def test_log_loss_grad_is_p_minus_y_over_n_and_matches_autograd():
    z = np.array([LN3, LN3, 0.0, -2.0])
    y = np.array([1, 0, 1, 0])
    # hand: (sigmoid - y) / n = (0.75 - 1, 0.75 - 0, 0.5 - 1, sigmoid(-2) - 0) / 4
    expected = np.array([-0.25, 0.75, -0.5, 1 / (1 + math.e**2)]) / 4
    np.testing.assert_allclose(log_loss_grad(y, z), expected, rtol=1e-15)
    np.testing.assert_allclose(log_loss_grad(y, z, reduction="sum"), expected * 4, rtol=1e-15)
    zt = torch.tensor(z, requires_grad=True)
    torch.nn.functional.binary_cross_entropy_with_logits(zt, torch.tensor(y, dtype=torch.float64)).backward()
    np.testing.assert_allclose(log_loss_grad(y, z), zt.grad.numpy(), rtol=1e-14)
    numeric = numerical_gradient(lambda ps: log_loss_from_logits(y, ps[0]), [z.copy()])[0]
    assert relative_error(log_loss_grad(y, z), numeric) < 1e-8


# --- bad input ----------------------------------------------------------------


@pytest.mark.parametrize("fn", [log_loss_from_logits, log_loss_grad])
def test_loss_errors(fn):
    with pytest.raises(ValueError, match="3 labels but there are 2"):
        fn([0, 1, 1], [0.0, 1.0])
    with pytest.raises(ValueError, match=r"only 0 and 1; found 2.0 at index 1"):
        fn([0, 2], [0.0, 1.0])
    with pytest.raises(ValueError, match="only 0 and 1; found -1.0"):
        fn([-1, 1], [0.0, 1.0])
    with pytest.raises(ValueError, match="only 0 and 1; found 0.5"):
        fn([0.5, 1], [0.0, 1.0])
    with pytest.raises(ValueError, match=r"logits contains NaN at index \(1,\)"):
        fn([0, 1], [0.0, np.nan])
    with pytest.raises(ValueError, match="y_true contains NaN"):
        fn([0, np.nan], [0.0, 1.0])
    with pytest.raises(ValueError, match="1-D"):
        fn([[0, 1]], [[0.0, 1.0]])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match="reduction"):
        fn([0], [0.0], reduction="avg")
    with pytest.raises(TypeError, match="numeric"):
        fn([0], ["a"])


def test_sigmoid_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        sigmoid([0.0, np.nan])


def test_mlp_errors(batch):
    X, y = batch
    params = init_mlp([5, 4, 1])
    with pytest.raises(ValueError, match=r"X must be \(n, 5\)"):
        mlp_forward(params, X[:, :4])
    with pytest.raises(ValueError, match=r"X must be \(n, 5\)"):
        mlp_forward(params, X[0])
    Xn = X.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN at index \(3, 2\)"):
        mlp_forward(params, Xn)
    with pytest.raises(ValueError, match="16 labels but there are 15"):
        loss_and_grads(params, X[:15], y)
    with pytest.raises(ValueError, match="only 0 and 1"):
        loss_and_grads(params, X, y * 2)
    with pytest.raises(ValueError, match="activation"):
        mlp_forward(params, X, activation="gelu")
    with pytest.raises(ValueError, match="layer 2: W has 4 inputs but layer 1 has 3"):
        mlp_forward([params[0][:3], params[1][:3], params[2], params[3]], X)
    with pytest.raises(ValueError, match="last layer must have 1 output"):
        mlp_forward(params[:2], X)
    with pytest.raises(ValueError, match="last layer must have 1 output"):
        init_mlp([5, 2])
    with pytest.raises(ValueError, match="l2"):
        loss_and_grads(params, X, y, l2=-1)
    _, cache = mlp_forward(params, X)
    with pytest.raises(ValueError, match=r"dz must have shape \(16,\)"):
        mlp_backward(params, cache, np.zeros(15))


# --- the MLP ------------------------------------------------------------------


def test_forward_backward_hand_computed():
    # x = (1, 2); Z1 = W1 x + b1 = (1 - 2 + 0, 2 + 0 - 1) = (-1, 1); A1 = relu = (0, 1)
    # z = W2 A1 + b2 = 0 + 1 + 0.5 = 1.5
    W1, b1 = np.array([[1.0, -1.0], [2.0, 0.0]]), np.array([0.0, -1.0])
    W2, b2 = np.array([[1.0, 1.0]]), np.array([0.5])
    params = [W1, b1, W2, b2]
    X, y = np.array([[1.0, 2.0]]), np.array([1.0])
    z, cache = mlp_forward(params, X)
    assert z.shape == (1,) and z[0] == 1.5
    loss, grads = loss_and_grads(params, X, y)
    assert loss == pytest.approx(math.log1p(math.exp(-1.5)), rel=1e-15)
    d = 1 / (1 + math.exp(-1.5)) - 1  # dL/dz = p - y
    # dW2 = d * A1, db2 = d; delta1 = d * W2 * relu'(Z1) = (0, d); dW1 = delta1^T x
    np.testing.assert_allclose(grads[2], [[0.0, d]], rtol=1e-15)
    np.testing.assert_allclose(grads[3], [d], rtol=1e-15)
    np.testing.assert_allclose(grads[0], [[0.0, 0.0], [d, 2 * d]], rtol=1e-15)
    np.testing.assert_allclose(grads[1], [0.0, d], rtol=1e-15)
    assert cache.shapes() == [("X", (1, 2)), ("Z1", (1, 2)), ("A1", (1, 2)), ("z (logit)", (1,))]


def test_logistic_regression_is_the_no_hidden_layer_case():
    X = np.array([[1.0, 2.0], [0.0, -1.0]])
    params = [np.array([[0.5, -0.25]]), np.array([0.1])]
    np.testing.assert_allclose(mlp_forward(params, X)[0], [0.1, 0.35], rtol=1e-15)
    np.testing.assert_allclose(predict_proba(params, X), 1 / (1 + np.exp(-np.array([0.1, 0.35]))), rtol=1e-15)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_loss_and_grads_match_torch_autograd(batch, activation, l2):
    X, y = batch
    params = init_mlp([5, 7, 3, 1], seed=3, activation=activation)
    loss, grads = loss_and_grads(params, X, y, activation, l2=l2)
    net = torch_twin(params, activation)
    logits = net(torch.from_numpy(X)).squeeze(1)
    t_loss = torch.nn.BCEWithLogitsLoss()(logits, torch.from_numpy(y))
    t_loss = t_loss + 0.5 * l2 * sum((m.weight ** 2).sum() for m in net if isinstance(m, torch.nn.Linear))
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-13)
    t_grads = [g for m in net if isinstance(m, torch.nn.Linear) for g in (m.weight.grad, m.bias.grad)]
    for ours, theirs in zip(grads, t_grads, strict=True):
        assert ours.shape == tuple(theirs.shape)
        assert relative_error(ours, theirs.numpy()) < 1e-12


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_gradient_check_passes(batch, activation):
    X, y = batch
    params = init_mlp([5, 4, 3, 1], seed=1, activation=activation)
    rng = np.random.default_rng(5)
    for b in params[1::2]:
        b += rng.normal(0, 0.3, b.shape)  # zero biases put ReLU inputs exactly on the kink
    assert gradient_check(params, X, y, activation, l2=0.05) < 1e-7


def test_gradient_check_catches_a_wrong_backward(batch, monkeypatch):
    X, y = batch
    params = init_mlp([5, 4, 1], seed=1, activation="tanh")
    monkeypatch.setattr(mlp, "_activation_grad", lambda name, z, a: 1 - a)  # the wrong derivative
    assert gradient_check(params, X, y, "tanh") > 1e-2


def test_numerical_gradient_hand_value():
    p = np.array([1.0, -2.0, 0.5])
    g = numerical_gradient(lambda ps: float(np.sum(ps[0] ** 3)), [p])[0]
    np.testing.assert_allclose(g, 3 * p**2, rtol=1e-8)
    np.testing.assert_array_equal(p, [1.0, -2.0, 0.5])  # restored
    with pytest.raises(ValueError, match="eps"):
        numerical_gradient(lambda ps: 0.0, [p], eps=0)


def test_relative_error_values():
    assert relative_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert relative_error([1.0], [-1.0]) == 1.0
    assert relative_error([3.0, 0.0], [0.0, 4.0]) == pytest.approx(5 / 7, rel=1e-15)
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error([1.0], [1.0, 2.0])


def test_init_is_deterministic_and_scaled():
    a, b, c = init_mlp([50, 400, 1], seed=7), init_mlp([50, 400, 1], seed=7), init_mlp([50, 400, 1], seed=8)
    for x, y_ in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y_)
    assert not np.array_equal(a[0], c[0])
    assert [p.shape for p in a] == [(400, 50), (400,), (1, 400), (1,)]
    assert a[0].std() == pytest.approx(math.sqrt(2 / 50), rel=0.02)  # He for the ReLU layer
    assert a[2].std() == pytest.approx(math.sqrt(1 / 400), rel=0.1)
    assert a[0].dtype == np.float64
    assert init_mlp([3, 1], dtype=np.float32)[0].dtype == np.float32


# --- optimisation -------------------------------------------------------------


def test_adam_matches_torch_adam(batch):
    X, y = batch
    params = init_mlp([5, 6, 1], seed=2)
    net = torch_twin(params)
    opt_t = torch.optim.Adam(net.parameters(), lr=0.01, betas=(0.8, 0.99), eps=1e-8)
    opt = Adam(params, lr=0.01, betas=(0.8, 0.99), eps=1e-8)
    for _ in range(25):
        _, grads = loss_and_grads(params, X, y)
        opt.step(grads)
        opt_t.zero_grad()
        torch.nn.BCEWithLogitsLoss()(net(torch.from_numpy(X)).squeeze(1), torch.from_numpy(y)).backward()
        opt_t.step()
    t_params = [p.detach().numpy() for p in net.parameters()]
    for ours, theirs in zip(params, t_params, strict=True):
        assert relative_error(ours, theirs) < 1e-10
    assert opt.t == 25


def test_adam_first_step_hand_value():
    # step 1: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps) ~ lr * sign(g)
    p = np.array([1.0, 1.0])
    Adam([p], lr=0.1, eps=0.0).step([np.array([3.0, -0.5])])
    np.testing.assert_allclose(p, [0.9, 1.1], rtol=1e-15)
    with pytest.raises(ValueError, match="shape"):
        Adam([p]).step([np.zeros(3)])
    with pytest.raises(ValueError, match="NaN"):
        Adam([p]).step([np.array([np.nan, 0.0])])
    with pytest.raises(ValueError, match="lr"):
        Adam([p], lr=0)


def test_gradient_descent_logistic_regression_matches_sklearn():
    # L2-penalised mean log loss + l2/2 |w|^2 has the minimiser of sklearn's C * sum(loss) + |w|^2 / 2
    # with l2 = 1 / (C n): the from-scratch model must land on sklearn's coefficients.
    rng = np.random.default_rng(4)
    n, C = 300, 0.5
    X = rng.standard_normal((n, 3))
    y = (rng.random(n) < sigmoid(X @ np.array([1.5, -1.0, 0.0]) - 0.5)).astype(float)
    params = init_mlp([3, 1], seed=0)
    for _ in range(2000):
        _, grads = loss_and_grads(params, X, y, l2=1 / (C * n))
        for p, g in zip(params, grads, strict=True):
            p -= 1.0 * g
    sk = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(params[0][0], sk.coef_[0], atol=1e-6)
    np.testing.assert_allclose(params[1], sk.intercept_, atol=1e-6)


# --- non-finite logits (issue 10, item 3) ----------------------------------


def test_infinite_logits_get_the_limits_of_the_loss():
    y = np.array([1, 0, 0, 1])
    z = np.array([np.inf, np.inf, -np.inf, -np.inf])
    # hand-computed limits: y=1, z->+inf costs 0; y=0, z->+inf costs +inf; mirrored for -inf
    np.testing.assert_array_equal(log_loss_from_logits(y, z, "none"), [0.0, np.inf, 0.0, np.inf])
    assert log_loss_from_logits([1], [np.inf]) == 0.0
    assert log_loss_from_logits([0], [np.inf]) == np.inf
    assert log_loss_from_logits([0], [-np.inf]) == 0.0
    np.testing.assert_array_equal(log_loss_grad(y, z, "none"), [0.0, 1.0, 0.0, -1.0])
    # the limit is what torch gives just before overflow (torch itself returns nan for y=1, z=+inf)
    big = np.array([1e4, 1e4, -1e4, -1e4])
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(big), torch.tensor(y, dtype=torch.float64), reduction="none").numpy()
    np.testing.assert_allclose(log_loss_from_logits(y, big, "none"), ref, rtol=1e-12, atol=0)
    assert log_loss_from_logits(y[[0, 2]], z[[0, 2]]) == 0.0


def test_finite_logits_unchanged_and_match_torch():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 30, 200)
    y = rng.integers(0, 2, 200)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(z), torch.tensor(y, dtype=torch.float64), reduction="none").numpy()
    # both forms are exact up to the rounding of z itself (about 1e-14 here)
    np.testing.assert_allclose(log_loss_from_logits(y, z, "none"), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_loss_from_logits(y, z, "none"), softplus(z) - y * z, rtol=1e-12, atol=1e-12)


def test_nan_logits_are_named():
    with pytest.raises(ValueError, match=r"NaN at index \(1,\)"):
        log_loss_from_logits([1, 0], [0.0, np.nan])


def test_one_sigmoid_and_one_set_of_label_checks():
    from scipy.special import expit

    from ecrec import metrics

    z = np.random.default_rng(0).normal(scale=50, size=1000)
    assert np.array_equal(sigmoid(z), expit(z))  # the same function ecrec.ctr uses
    assert mlp._check_labels is metrics._check_labels and mlp._as_float is metrics._as_float
