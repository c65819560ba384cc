"""Landscape and ICS: exact values on a quadratic and on a 2-layer linear net."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from normlab.analysis import (
    ICSResult,
    LandscapeResult,
    internal_covariate_shift,
    loss_landscape,
    plot_ics,
    plot_landscape,
)

from ._model_state import assert_unchanged, snapshot

f64 = torch.float64


class Quadratic(nn.Module):
    """L(w) = 1/2 w^T A w (the input is ignored): gradient A w, Hessian A."""

    def __init__(self, A: torch.Tensor, w: torch.Tensor):
        super().__init__()
        self.register_buffer("A", A)
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return 0.5 * self.w @ self.A @ self.w + 0 * x.sum()


def _identity_loss(out, target):
    return out


def _quadratic():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=f64))
    A = Q @ torch.diag(torch.tensor([5.0, 2.0, 1.0, 0.1], dtype=f64)) @ Q.T
    w = torch.randn(4, generator=g, dtype=f64)
    return Quadratic(A, w), A, w


def test_quadratic_exact():
    model, A, w = _quadratic()
    data = (torch.zeros(2, 1, dtype=f64), torch.zeros(2))
    etas = torch.tensor([0.05, 0.1, 0.2, 0.4], dtype=f64)
    before = snapshot(model)
    res = loss_landscape(model, _identity_loss, data, etas, bn_mode="train")
    assert_unchanged(model, before)
    assert isinstance(res, LandscapeResult)
    g = A @ w
    assert res.loss == pytest.approx(float(0.5 * w @ A @ w), rel=1e-14)
    assert res.grad_norm == pytest.approx(float(g.norm()), rel=1e-14)
    want_losses = torch.stack([0.5 * (w - e * g) @ A @ (w - e * g) for e in etas])
    torch.testing.assert_close(res.losses, want_losses, rtol=1e-13, atol=0)
    # g(x - eta g) = A (w - eta A w): the change is eta A g exactly.
    torch.testing.assert_close(res.grad_changes, etas * (A @ g).norm(), rtol=1e-12, atol=0)
    # the band is exactly the extremes of the losses it reports; against the independent formula it agrees to
    # the tolerance above (not bit for bit: AVX-512 kernels round the matmuls' last bit differently from AVX2)
    assert res.loss_band == (float(res.losses.min()), float(res.losses.max()))
    assert res.loss_band == pytest.approx((float(want_losses.min()), float(want_losses.max())), rel=1e-13, abs=0)
    assert res.grad_band == pytest.approx((float(etas[0] * (A @ g).norm()), float(etas[-1] * (A @ g).norm())))
    beta = float((A @ g).norm() / g.norm())
    assert res.beta_eff == pytest.approx(beta, rel=1e-12)
    assert res.beta_eff <= 5.0 + 1e-12  # lambda_max
    torch.testing.assert_close(res.beta_per_step, torch.full((4,), beta, dtype=f64), rtol=1e-12, atol=0)


def test_default_step_sizes_and_params_subset():
    model, A, w = _quadratic()
    res = loss_landscape(model, _identity_loss, (torch.zeros(1, 1), torch.zeros(1)), bn_mode="train")
    torch.testing.assert_close(res.step_sizes, torch.linspace(0.05, 0.4, 8, dtype=f64))
    assert torch.equal(model.w.detach(), w)


def test_batches_weighted_like_concatenated_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    X, Y = torch.randn(30, 3, dtype=f64), torch.randn(30, 1, dtype=f64)
    whole = loss_landscape(model, F.mse_loss, (X, Y), bn_mode="train")
    parts = loss_landscape(model, F.mse_loss, [(X[:5], Y[:5]), (X[5:], Y[5:])], bn_mode="train")
    assert parts.loss == pytest.approx(whole.loss, rel=1e-12)
    torch.testing.assert_close(parts.losses, whole.losses, rtol=1e-12, atol=0)
    torch.testing.assert_close(parts.grad_changes, whole.grad_changes, rtol=1e-10, atol=1e-14)


def test_bn_model_state_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
    model[0].weight.grad = torch.ones_like(model[0].weight)
    batch = (torch.randn(32, 5), torch.randint(0, 3, (32,)))
    before = snapshot(model)
    a = loss_landscape(model, F.cross_entropy, batch, bn_mode="train")
    ics = internal_covariate_shift(model, F.cross_entropy, batch, lr=0.5, bn_mode="train")
    assert_unchanged(model, before)
    b = loss_landscape(model, F.cross_entropy, batch, bn_mode="train")  # deterministic: dropout off, BN stats restored
    assert torch.equal(a.losses, b.losses)
    assert ics.layers == ["0", "4"]
    assert ics.info["earlier_params"]["4"] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    model.eval()
    before = snapshot(model)
    loss_landscape(model, F.cross_entropy, batch, bn_mode="eval")
    assert_unchanged(model, before)


def test_ics_two_layer_linear_by_hand():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(10, 3, generator=g, dtype=f64)
    T = torch.randn(10, 2, generator=g, dtype=f64)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)).double()
    W1, W2 = model[0].weight.detach().clone(), model[1].weight.detach().clone()
    lr = 0.3

    def grads(W1, W2):
        # L = mean((X W1^T W2^T - T)^2); dL/dY = 2 (Y - T) / (N * 2)
        H = X @ W1.T
        Y = H @ W2.T
        dY = 2 * (Y - T) / Y.numel()
        return (dY @ W2).T @ X, dY.T @ H  # dL/dW1, dL/dW2

    G1, G2 = grads(W1, W2)
    _, G2p = grads(W1 - lr * G1, W2)
    res = internal_covariate_shift(model, F.mse_loss, (X, T), lr=lr, bn_mode="train")
    assert isinstance(res, ICSResult) and res.layers == ["0", "1"]
    assert float(res.l2[0]) == 0.0 and float(res.cosine[0]) == pytest.approx(1.0, abs=1e-15)
    assert float(res.l2[1]) == pytest.approx(float((G2 - G2p).norm()), rel=1e-10)
    cos = float((G2 * G2p).sum() / (G2.norm() * G2p.norm()))
    assert float(res.cosine[1]) == pytest.approx(cos, rel=1e-12)
    torch.testing.assert_close(res.grad_norms, torch.stack([G1.norm(), G2.norm()]), rtol=1e-12, atol=0)
    assert torch.equal(model[0].weight, W1) and torch.equal(model[1].weight, W2)
    d = res.as_dict()
    assert d["1"]["l2"] == float(res.l2[1])


def test_ics_layer_choice_and_order():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    data = (torch.randn(8, 3, dtype=f64), torch.randn(8, 2, dtype=f64))
    res = internal_covariate_shift(model, F.mse_loss, data, lr=0.1, layers=["4"], bn_mode="train")
    assert res.layers == ["4"]
    assert res.info["earlier_params"]["4"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    full = internal_covariate_shift(model, F.mse_loss, data, lr=0.1, bn_mode="train")
    assert float(full.l2[2]) == pytest.approx(float(res.l2[0]), rel=1e-12)
    assert float(full.l2[1]) > 0


def test_bad_inputs():
    model, _, _ = _quadratic()
    data = (torch.zeros(2, 1), torch.zeros(2))
    with pytest.raises(ValueError, match="step_sizes"):
        loss_landscape(model, _identity_loss, data, [0.1, -0.2], bn_mode="train")
    with pytest.raises(ValueError, match="step_sizes"):
        loss_landscape(model, _identity_loss, data, [], bn_mode="train")
    with pytest.raises(TypeError, match="loss_fn"):
        loss_landscape(model, None, data, bn_mode="train")
    with pytest.raises(TypeError, match="data"):
        loss_landscape(model, _identity_loss, 5, bn_mode="train")
    with pytest.raises(ValueError, match="bn_mode"):
        loss_landscape(model, _identity_loss, data, bn_mode="batch")
    with pytest.raises(ValueError, match="scalar"):
        loss_landscape(nn.Linear(1, 2), lambda o, t: o, data, bn_mode="train")
    lin = nn.Sequential(nn.Linear(1, 2), nn.Linear(2, 1))
    with pytest.raises(ValueError, match="lr"):
        internal_covariate_shift(lin, F.mse_loss, (torch.zeros(2, 1), torch.zeros(2, 1)), lr=0, bn_mode="train")
    with pytest.raises(ValueError, match="lr"):
        internal_covariate_shift(lin, F.mse_loss, (torch.zeros(2, 1), torch.zeros(2, 1)), lr=math.nan, bn_mode="train")
    with pytest.raises(ValueError, match="no trainable"):
        relu_net = nn.Sequential(nn.Linear(1, 2), nn.ReLU())
        internal_covariate_shift(
            relu_net, F.mse_loss, (torch.zeros(2, 1), torch.zeros(2, 2)), 0.1, ["1"], bn_mode="train"
        )
    with pytest.raises(TypeError):
        plot_landscape("result")
    with pytest.raises(TypeError):
        plot_ics([])


def test_plots():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    batch = (torch.randn(16, 4), torch.randint(0, 2, (16,)))
    r = loss_landscape(model, F.cross_entropy, batch, [0.1, 0.2], bn_mode="train")
    assert isinstance(plot_landscape(r), Figure)
    assert isinstance(plot_landscape([r, r, r], steps=[0, 10, 20]), Figure)
    with pytest.raises(ValueError, match="steps"):
        plot_landscape([r, r], steps=[0])
    ics = internal_covariate_shift(model, F.cross_entropy, batch, lr=0.1, bn_mode="train")
    assert isinstance(plot_ics(ics), Figure)
    assert isinstance(plot_ics([ics, ics]), Figure)
