"""Conditioning: per-layer covariances against hand computations, the least-squares closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from normlab.analysis import (
    ConditioningResult,
    Spectrum,
    layer_covariances,
    least_squares_hessian_condition,
    plot_spectra,
)

from ._model_state import assert_unchanged, snapshot

f64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _mse(out, t):
    return ((out - t) ** 2).mean()


def test_single_linear_matches_hand_covariances():
    g = _gen()
    N, d_in, d_out = 40, 3, 2
    X = torch.randn(N, d_in, generator=g, dtype=f64) + torch.tensor([1.0, -2.0, 0.5], dtype=f64)
    T = torch.randn(N, d_out, generator=g, dtype=f64)
    lin = nn.Linear(d_in, d_out).double()
    res = layer_covariances(lin, _mse, (X, T), bn_mode="train")
    assert isinstance(res, ConditioningResult) and list(res.layers) == ["(model)"]
    lc = res.layers["(model)"]

    # Input: uncentered second moment X^T X / N.
    S = X.T @ X / N
    torch.testing.assert_close(lc.input.matrix, S, rtol=1e-12, atol=1e-12)
    ev = np.linalg.eigvalsh(S.numpy())[::-1]
    np.testing.assert_allclose(lc.input.eigenvalues.numpy(), ev, rtol=1e-10)
    assert lc.input.condition == pytest.approx(ev[0] / ev[-1], rel=1e-10)
    assert lc.input.rank == 3 and lc.input.num_rows == N and not lc.input.singular

    # Output gradients: dL/dy = 2 (y - t) / (N d_out), times N (per-example gradient).
    with torch.no_grad():
        G = 2 * (lin(X) - T) / d_out
    torch.testing.assert_close(lc.grad.matrix, G.T @ G / N, rtol=1e-12, atol=1e-12)
    evg = np.linalg.eigvalsh((G.T @ G / N).numpy())[::-1]
    assert lc.grad.condition == pytest.approx(evg[0] / evg[-1], rel=1e-10)

    # Centered: the biased covariance.
    resc = layer_covariances(lin, _mse, (X, T), center=True, bn_mode="train")
    np.testing.assert_allclose(resc.layers["(model)"].input.matrix.numpy(), np.cov(X.numpy().T, bias=True), rtol=1e-12)
    np.testing.assert_allclose(
        resc.layers["(model)"].grad.matrix.numpy(), np.cov(G.numpy().T, bias=True), rtol=1e-10, atol=1e-14
    )
    # The mean is an outlying direction of the uncentered moment: centering improves conditioning here.
    assert resc.layers["(model)"].input.condition < lc.input.condition


def test_batches_pool_like_concatenated_data():
    g = _gen(1)
    X = torch.randn(40, 4, generator=g, dtype=f64) + 1
    T = torch.randn(40, 2, generator=g, dtype=f64)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    whole = layer_covariances(model, _mse, (X, T), center=True, bn_mode="train")
    parts = layer_covariances(
        model, _mse, [(X[:7], T[:7]), (X[7:30], T[7:30]), (X[30:], T[30:])], center=True, bn_mode="train"
    )
    assert whole.num_examples == parts.num_examples == 40
    for name in ("0", "2"):
        for side in ("input", "grad"):
            a, b = getattr(whole.layers[name], side), getattr(parts.layers[name], side)
            torch.testing.assert_close(a.matrix, b.matrix, rtol=1e-11, atol=1e-13)


def test_singular_input_rank_and_condition_on_range():
    g = _gen(2)
    X = torch.randn(30, 3, generator=g, dtype=f64)
    X = torch.cat([X, X[:, :1]], 1)  # a duplicated feature: rank 3 of 4
    res = layer_covariances(nn.Linear(4, 1).double(), None, (X, torch.zeros(30)), bn_mode="train")
    s = res.layers["(model)"].input
    ev = np.linalg.eigvalsh((X.T @ X / 30).numpy())[::-1]
    assert s.rank == 3 and s.singular and s.dim == 4
    assert s.condition == pytest.approx(ev[0] / ev[2], rel=1e-9)
    assert res.layers["(model)"].grad is None
    # A huge rtol leaves only the top eigenvalue.
    s1 = (
        layer_covariances(nn.Linear(4, 1).double(), None, (X, torch.zeros(30)), rtol=0.999, bn_mode="train")
        .layers["(model)"]
        .input
    )
    assert s1.rank == 1 and s1.condition == 1.0


def test_conv_inputs_are_unfolded_patches_and_grads_per_channel():
    g = _gen(3)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1).double()
    model = nn.Sequential(conv, nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(3 * 3 * 3, 2)).double()
    X = torch.randn(5, 2, 6, 6, generator=g, dtype=f64)
    T = torch.randn(5, 2, generator=g, dtype=f64)
    res = layer_covariances(model, _mse, (X, T), bn_mode="train")
    s = res.layers["0"].input
    P = F.unfold(X, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 2 * 9)
    torch.testing.assert_close(s.matrix, P.T @ P / P.shape[0], rtol=1e-12, atol=1e-12)
    assert s.num_rows == 5 * 9

    # Output gradient of the conv, by hand (ReLU not in place), times the batch size, rows per position.
    y = F.conv2d(X, conv.weight, conv.bias, stride=2, padding=1).requires_grad_(True)
    loss = _mse(model[3](torch.relu(y).flatten(1)), T)
    (gy,) = torch.autograd.grad(loss, y)
    R = (gy * 5).permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(res.layers["0"].grad.matrix, R.T @ R / R.shape[0], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "conv, shape",
    [
        (nn.Conv1d(2, 3, 3, padding="same", padding_mode="reflect", bias=False), (2, 2, 7)),
        (nn.Conv2d(2, 4, (2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2), bias=False), (2, 2, 6, 7)),
        (nn.Conv3d(2, 3, 2, stride=1, padding=1, padding_mode="circular", bias=False), (1, 2, 3, 4, 3)),
    ],
)
def test_patch_rows_reproduce_the_convolution(conv, shape):
    from normlab.analysis.conditioning import _conv_patches

    conv = conv.double()
    X = torch.randn(*shape, generator=_gen(4), dtype=f64)
    y = conv(X).detach()
    rows = _conv_patches(conv, X) @ conv.weight.detach().flatten(1).T
    torch.testing.assert_close(rows, y.movedim(1, -1).reshape(-1, y.shape[1]), rtol=1e-12, atol=1e-12)


def test_state_unchanged_and_bn_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.ReLU(), nn.Linear(6, 3))
    model.train()
    model[4].weight.grad = torch.ones_like(model[4].weight)
    data = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(3)]
    before = snapshot(model)
    r1 = layer_covariances(model, F.cross_entropy, data, bn_mode="train")
    assert_unchanged(model, before)
    r2 = layer_covariances(model, F.cross_entropy, data, bn_mode="eval")
    assert_unchanged(model, before)
    # Only the layer after BN sees the difference between batch and running statistics; dropout is off in both.
    torch.testing.assert_close(r1.layers["0"].input.matrix, r2.layers["0"].input.matrix)
    assert not torch.allclose(r1.layers["4"].input.matrix, r2.layers["4"].input.matrix)
    r3 = layer_covariances(model, F.cross_entropy, data, bn_mode="train")
    torch.testing.assert_close(r1.layers["4"].input.matrix, r3.layers["4"].input.matrix, rtol=0, atol=0)


def test_layers_selection():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    data = (torch.randn(8, 3), torch.randn(8, 2))
    assert list(layer_covariances(model, _mse, data, layers=["2"], bn_mode="train").layers) == ["2"]
    assert list(layer_covariances(model, _mse, data, layers=[model[0]], bn_mode="train").layers) == ["0"]
    res = layer_covariances(model, _mse, data, layers=nn.LayerNorm, bn_mode="train")
    assert res.layers["1"].input.dim == 4 and res.layers["1"].grad.dim == 4


def test_least_squares_closed_form():
    g = _gen(5)
    N, d = 50, 4
    U, _ = torch.linalg.qr(torch.randn(N, d, generator=g, dtype=f64))
    V, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))
    s = torch.tensor([10.0, 3.0, 2.0, 0.5], dtype=f64)
    X = U @ torch.diag(s) @ V.T
    ls = least_squares_hessian_condition(X)
    assert isinstance(ls, Spectrum)
    torch.testing.assert_close(ls.matrix, X.T @ X / N, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(ls.eigenvalues, s**2 / N, rtol=1e-11, atol=0)
    assert ls.condition == pytest.approx((10 / 0.5) ** 2, rel=1e-10)
    # It is the Hessian of ||X w - y||^2 / (2N).
    y = torch.randn(N, generator=g, dtype=f64)
    H = torch.autograd.functional.hessian(lambda w: ((X @ w - y) ** 2).sum() / (2 * N), torch.zeros(d, dtype=f64))
    torch.testing.assert_close(ls.matrix, H)
    # Numpy input, a rank-deficient X.
    Xs = np.c_[X.numpy(), X.numpy()[:, 0]]
    lss = least_squares_hessian_condition(Xs)
    assert lss.rank == 4 and lss.singular and math.isfinite(lss.condition)
    assert least_squares_hessian_condition(torch.zeros(3, 2)).rank == 0
    assert math.isnan(least_squares_hessian_condition(torch.zeros(3, 2)).condition)


def test_bad_inputs():
    model = nn.Linear(3, 2)
    data = (torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(TypeError, match="data"):
        layer_covariances(model, _mse, 3.0, bn_mode="train")
    with pytest.raises(ValueError, match="empty"):
        layer_covariances(model, _mse, [], bn_mode="train")
    with pytest.raises(TypeError, match="loss_fn"):
        layer_covariances(model, "mse", data, bn_mode="train")
    with pytest.raises(ValueError, match="bn_mode"):
        layer_covariances(model, _mse, data, bn_mode="training")
    with pytest.raises(ValueError, match="no submodule named"):
        layer_covariances(nn.Sequential(model), _mse, data, layers=["5"], bn_mode="train")
    with pytest.raises(TypeError, match="layers"):
        layer_covariances(nn.Sequential(model), _mse, data, layers="0", bn_mode="train")
    with pytest.raises(ValueError, match="none of the"):
        layer_covariances(nn.Sequential(nn.ReLU()), _mse, data, bn_mode="train")
    with pytest.raises(ValueError, match="never called"):
        layer_covariances(_SkipsSecond(), None, data, bn_mode="train")
    with pytest.raises(ValueError, match="scalar"):
        layer_covariances(model, lambda o, t: (o - t) ** 2, data, bn_mode="train")
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        least_squares_hessian_condition(torch.randn(5))
    with pytest.raises(TypeError):
        least_squares_hessian_condition("X")
    with pytest.raises(TypeError, match="ConditioningResult"):
        plot_spectra({"a": 1})


class _SkipsSecond(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(2, 2)

    def forward(self, x):
        return self.a(x)


def test_plot_spectra():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    res = layer_covariances(model, _mse, (torch.randn(32, 4), torch.randn(32, 2)), bn_mode="train")
    fig = plot_spectra(res)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    fig2 = plot_spectra(layer_covariances(model, None, (torch.randn(32, 4), torch.randn(32, 2)), bn_mode="train"))
    assert len(fig2.axes) == 1
