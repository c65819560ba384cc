"""Hessian tools and the sharpness tracker against exact references.

References: the dense Hessian by ``torch.autograd.functional.hessian`` of a
functional version of the model (``torch.func.functional_call``), and closed
forms (linear least squares with loss ``0.5 * mean((out - y)^2)``, i.e. an MSE
with a 1/2 factor, has ``H = A^T A / N`` with ``A = [X, 1]``). For the
per-family tests the reference Hessian is taken through torch's own norm
modules (a twin model loaded with the same state dict), so double backward
through normlab's layers is checked against torch's, not against itself.
Everything in float64; tiny models (a few dozen parameters) keep it fast.
"""

from __future__ import annotations

import functools
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import normlab
from normlab.analysis import (
    ExtremeEigenvalues,
    HessianOperator,
    SharpnessTracker,
    SpectralDensity,
    TopEigenvalues,
    TraceEstimate,
    extreme_eigenvalues,
    hutchinson_trace,
    hvp,
    plot_density,
    plot_eigenvalues,
    plot_sharpness,
    spectral_density,
    top_eigenvalues,
)
from normlab.analysis._common import preserved_state, set_bn_mode

DT = torch.float64
mse = F.mse_loss


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and spin-waiting threads make them slow on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def half_mse(out, y):
    """0.5 * mean over samples of the squared residual: H = A^T A / N for a linear model."""
    return 0.5 * ((out - y) ** 2).sum(-1).mean()


# ----------------------------------------------------------------------------- references


def dense_hessian(model, loss_fn, batches, bn_mode):
    """The full Hessian of sum_i w_i loss_i by torch.autograd.functional.hessian, model left untouched."""
    total = sum(x.shape[0] for x, _ in batches)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p.detach() for n, p in model.named_parameters() if p.requires_grad]
    with preserved_state(model):
        set_bn_mode(model, bn_mode)
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}

        def f(flat):
            tensors, i = {}, 0
            for n, p in zip(names, params, strict=True):
                tensors[n] = flat[i : i + p.numel()].view_as(p)
                i += p.numel()
            out = 0.0
            for x, y in batches:
                bufs = {n: b.clone() for n, b in buffers.items()}  # train mode updates them in place
                out = out + x.shape[0] / total * loss_fn(functional_call(model, {**tensors, **bufs}, (x,)), y)
            return out

        return torch.autograd.functional.hessian(f, torch.cat([p.reshape(-1) for p in params]))


def randn(*shape, gen):
    return torch.randn(*shape, generator=gen, dtype=DT)


def mlp(bn: bool, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(3, 5)] + ([normlab.nn.BatchNorm1d(5)] if bn else []) + [nn.Tanh(), nn.Linear(5, 2)]
    model = nn.Sequential(*layers).to(DT)
    if bn:  # non-trivial running statistics and affine: eval differs from train
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(16, 3, dtype=DT) * 2 + 1)
            model[1].weight.uniform_(0.5, 1.5)
            model[1].bias.uniform_(-0.5, 0.5)
    model.train()
    return model


CASES = ["mlp", "bn-train", "bn-eval"]


@functools.cache
def case(name: str):
    """(model, loss_fn, (x, y), bn_mode, dense H, eigenvalues ascending) for a tiny model."""
    model = mlp(bn=name.startswith("bn"))
    bn_mode = "train" if name.endswith("train") else "eval"
    gen = torch.Generator().manual_seed(1)
    data = (randn(20, 3, gen=gen), randn(20, 2, gen=gen))
    H = dense_hessian(model, mse, [data], bn_mode)
    return model, mse, data, bn_mode, H, torch.linalg.eigvalsh(H)


def snapshot(model):
    return (
        {n: m.training for n, m in model.named_modules()},
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
    )


def assert_same_state(model, snap, what=""):
    flags, state, grads = snap
    assert {n: m.training for n, m in model.named_modules()} == flags, f"{what}: training flags changed"
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert now[k].dtype == v.dtype and torch.equal(now[k], v), f"{what}: {k} changed"
    for n, p in model.named_parameters():
        g = grads[n]
        assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g)), f"{what}: {n}.grad changed"


def rel(a, b):
    return abs(float(a) - float(b)) / abs(float(b))


# ----------------------------------------------------------------------------- HVP


@pytest.mark.parametrize("name", CASES)
def test_hvp_matches_dense_hessian(name):
    model, loss_fn, data, bn_mode, H, _ = case(name)
    gen = torch.Generator().manual_seed(2)
    v = randn(H.shape[0], gen=gen)
    flat = hvp(model, loss_fn, data, v, bn_mode=bn_mode)
    torch.testing.assert_close(flat, H @ v, rtol=1e-10, atol=1e-12)
    # list form: per-parameter tensors in, per-parameter tensors out
    params = list(model.parameters())
    vs = list(torch.split(v, [p.numel() for p in params]))
    vs = [t.view_as(p) for t, p in zip(vs, params, strict=True)]
    out = hvp(model, loss_fn, data, vs, bn_mode=bn_mode)
    assert isinstance(out, list) and [o.shape for o in out] == [p.shape for p in params]
    torch.testing.assert_close(torch.cat([o.reshape(-1) for o in out]), H @ v, rtol=1e-10, atol=1e-12)


def test_operator_counts_and_subset_params():
    model, loss_fn, data, bn_mode, H, _ = case("bn-train")
    op = HessianOperator(model, loss_fn, data, bn_mode=bn_mode)
    assert op.dim == H.shape[0] and op.num_hvp == 0
    e = torch.zeros(op.dim, dtype=DT)
    e[3] = 1.0
    torch.testing.assert_close(op.matvec(e), H[:, 3])
    torch.testing.assert_close(op(e), H[:, 3])
    assert op.num_hvp == 2
    # a subset of the parameters: the corresponding diagonal block of H
    last = model[-1]
    sub = [last.weight, last.bias]
    start = H.shape[0] - last.weight.numel() - last.bias.numel()
    v = torch.arange(1.0, 13.0, dtype=DT)
    torch.testing.assert_close(
        hvp(model, loss_fn, data, v, bn_mode=bn_mode, params=sub), H[start:, start:] @ v, rtol=1e-10, atol=1e-12
    )


def test_last_loss_is_the_loss():
    model, loss_fn, data, bn_mode, _, _ = case("bn-eval")
    op = HessianOperator(model, loss_fn, data, bn_mode=bn_mode)
    op.matvec(torch.ones(op.dim, dtype=DT))
    with torch.no_grad(), preserved_state(model):
        set_bn_mode(model, "eval")
        expected = float(loss_fn(model(data[0]), data[1]))
    assert op.last_loss == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------- eigenvalues


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("name", CASES)
def test_top_eigenvalues(name, method):
    model, loss_fn, data, bn_mode, H, ev = case(name)
    tol = 1e-8 if method == "lanczos" else 1e-9
    res = top_eigenvalues(model, loss_fn, data, bn_mode=bn_mode, k=3, method=method, tol=tol, max_iter=3000)
    assert isinstance(res, TopEigenvalues) and res.method == method and res.converged
    expected = ev[-3:].flip(0)
    assert rel(res.eigenvalues[0], expected[0]) < 1e-4
    torch.testing.assert_close(res.eigenvalues, expected, rtol=1e-4, atol=1e-4 * float(ev.abs().max()))
    assert torch.all(res.eigenvalues[:-1] >= res.eigenvalues[1:])  # descending
    assert res.eigenvectors.shape == (3, H.shape[0])
    torch.testing.assert_close(res.eigenvectors.norm(dim=1), torch.ones(3, dtype=DT))
    u, lam = res.eigenvectors[0], float(res.eigenvalues[0])
    assert float((H @ u - lam * u).norm()) < 1e-3 * abs(lam)  # an eigenvector, not just a value
    assert res.num_hvp == len(res.history) and res.num_hvp > 0


def test_lanczos_beats_power_on_hvps():
    model, loss_fn, data, bn_mode, _, ev = case("mlp")
    lz = top_eigenvalues(model, loss_fn, data, bn_mode=bn_mode, method="lanczos", tol=1e-6)
    pw = top_eigenvalues(model, loss_fn, data, bn_mode=bn_mode, method="power", tol=1e-6, max_iter=3000)
    assert rel(lz.eigenvalues[0], ev[-1]) < 1e-6
    assert lz.num_hvp < pw.num_hvp


def test_power_finds_largest_when_dominant_is_negative():
    # H = diag(-5, 1, 2, 3): the dominant eigenvalue by magnitude is -5, the largest is 3.
    model = nn.Linear(4, 1, bias=False).to(DT)
    d = torch.tensor([-5.0, 1.0, 2.0, 3.0], dtype=DT)

    def quad(out, y):  # loss = 0.5 w^T diag(d) w, independent of the data
        w = model.weight.reshape(-1)
        return 0.5 * (w * d * w).sum() + 0 * out.sum()

    data = (torch.zeros(2, 4, dtype=DT), torch.zeros(2, 1, dtype=DT))
    res = top_eigenvalues(model, quad, data, bn_mode="eval", k=2, method="power", tol=1e-12, max_iter=2000)
    torch.testing.assert_close(res.eigenvalues, torch.tensor([3.0, 2.0], dtype=DT), rtol=1e-6, atol=1e-6)
    ext = extreme_eigenvalues(model, quad, data, bn_mode="eval", method="power", tol=1e-12, max_iter=2000)
    assert ext.largest == pytest.approx(3.0, rel=1e-6) and ext.smallest == pytest.approx(-5.0, rel=1e-6)
    lz = top_eigenvalues(model, quad, data, bn_mode="eval", k=4)  # Lanczos: the whole spectrum, exact
    torch.testing.assert_close(lz.eigenvalues, d.sort(descending=True).values, rtol=1e-10, atol=1e-10)


def test_lanczos_restarts_on_breakdown():
    # H = diag(2, 2, 2, 1) has two distinct eigenvalues: a Krylov space from any start is 2-dimensional, so
    # the top 3 (2, 2, 2) need restarts after breakdown.
    model = nn.Linear(4, 1, bias=False).to(DT)
    d = torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=DT)

    def quad(out, y):
        w = model.weight.reshape(-1)
        return 0.5 * (w * d * w).sum() + 0 * out.sum()

    data = (torch.zeros(2, 4, dtype=DT), torch.zeros(2, 1, dtype=DT))
    res = top_eigenvalues(model, quad, data, bn_mode="eval", k=3)
    assert res.converged
    torch.testing.assert_close(res.eigenvalues, torch.full((3,), 2.0, dtype=DT))
    gram = res.eigenvectors @ res.eigenvectors.T
    torch.testing.assert_close(gram, torch.eye(3, dtype=DT), atol=1e-8, rtol=0)


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("name", CASES)
def test_extreme_eigenvalues(name, method):
    model, loss_fn, data, bn_mode, H, ev = case(name)
    tol = 1e-8 if method == "lanczos" else 1e-10
    res = extreme_eigenvalues(model, loss_fn, data, bn_mode=bn_mode, method=method, tol=tol, max_iter=3000)
    assert isinstance(res, ExtremeEigenvalues) and res.converged
    scale = float(ev.abs().max())
    assert ev[0] < 0  # these points have negative curvature: the test sees both ends
    assert abs(res.largest - float(ev[-1])) <= 1e-3 * scale
    assert abs(res.smallest - float(ev[0])) <= 1e-3 * scale
    assert res.negative_ratio == pytest.approx(-res.smallest / res.largest)
    for lam, u in ((res.largest, res.largest_vector), (res.smallest, res.smallest_vector)):
        assert float((H @ u - lam * u).norm()) < 1e-2 * scale


# ----------------------------------------------------------------------------- trace


def hutchinson_std_error(H, n):
    """Exact standard error of the mean of n Rademacher samples z^T H z: Var = 2 sum_{i != j} H_ij^2."""
    var = 2 * (float((H**2).sum()) - float((H.diagonal() ** 2).sum()))
    return math.sqrt(var / n)


@pytest.mark.parametrize("name", CASES)
def test_hutchinson_trace(name):
    model, loss_fn, data, bn_mode, H, _ = case(name)
    # These tiny indefinite Hessians have a small trace next to the estimator's spread: cap the samples.
    est = hutchinson_trace(model, loss_fn, data, bn_mode=bn_mode, tol=1e-3, max_samples=200, seed=3)
    assert isinstance(est, TraceEstimate) and est.num_samples == est.num_hvp == 200 and not est.converged
    assert abs(est.trace - float(H.trace())) <= 3 * est.std_error
    ratio = est.std_error / hutchinson_std_error(H, est.num_samples)
    assert 0.7 < ratio < 1.4  # the stated standard error is the true one, estimated
    assert est.samples.shape == (200,)


def test_hutchinson_stopping_rule_and_seeds():
    model, data, H = least_squares()
    est = hutchinson_trace(model, half_mse, data, bn_mode="eval", tol=0.02, min_samples=5, seed=0)
    assert est.converged and 5 <= est.num_samples < 1000 and est.num_hvp == est.num_samples
    assert est.std_error <= 0.02 * abs(est.trace)
    assert abs(est.trace - float(H.trace())) <= 3 * est.std_error
    again = hutchinson_trace(model, half_mse, data, bn_mode="eval", tol=0.02, min_samples=5, seed=0)
    assert again.trace == est.trace and torch.equal(again.samples, est.samples)
    gen = torch.Generator().manual_seed(123)
    other = hutchinson_trace(model, half_mse, data, bn_mode="eval", tol=0.02, min_samples=5, generator=gen)
    assert not torch.equal(other.samples[:5], est.samples[:5])


# ----------------------------------------------------------------------------- spectral density


@pytest.mark.parametrize("name", CASES)
def test_spectral_density(name):
    model, loss_fn, data, bn_mode, H, ev = case(name)
    n, probes = H.shape[0], 8
    d = spectral_density(model, loss_fn, data, bn_mode=bn_mode, num_probes=probes, num_steps=12, seed=4)
    assert isinstance(d, SpectralDensity)
    assert float(torch.trapezoid(d.density, d.grid)) == pytest.approx(1.0, abs=1e-10)
    assert d.mass == pytest.approx(1.0, abs=1e-6)  # the automatic grid covers and resolves the density
    assert bool((d.density >= 0).all())
    assert float(d.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    for p in range(probes):
        assert float(d.weights[d.probe == p].sum()) == pytest.approx(1 / probes, abs=1e-12)
    assert d.num_hvp == probes * 12
    span = float(ev[-1] - ev[0])
    assert float(d.nodes.min()) >= float(ev[0]) - 1e-8 * span and float(d.nodes.max()) <= float(ev[-1]) + 1e-8 * span
    # mean of the density = average of v^T H v / n over the probes: an estimate of trace / dim
    se = hutchinson_std_error(H, probes) / n
    assert abs(d.mean - float(H.trace()) / n) <= 4 * se


def test_spectral_density_exact_nodes_and_absolute_sigma():
    model, data, H = least_squares()
    ev = torch.linalg.eigvalsh(H)
    d = spectral_density(model, half_mse, data, bn_mode="eval", num_probes=1, num_steps=50, seed=0)
    # num_steps >= dim: the quadrature nodes are the eigenvalues themselves
    torch.testing.assert_close(d.nodes.sort().values, ev, rtol=1e-8, atol=1e-10)
    assert d.num_hvp == H.shape[0]
    grid = torch.linspace(float(ev[0]) - 1, float(ev[-1]) + 1, 4001, dtype=DT)
    d2 = spectral_density(
        model, half_mse, data, bn_mode="eval", num_probes=2, num_steps=5, sigma=0.05, sigma_relative=False, grid=grid
    )
    assert d2.sigma == 0.05 and torch.equal(d2.grid, grid)
    assert float(torch.trapezoid(d2.density, d2.grid)) == pytest.approx(1.0, abs=1e-10)
    with pytest.warns(UserWarning, match="renormalized"):
        spectral_density(model, half_mse, data, bn_mode="eval", num_steps=5, grid=torch.linspace(-3, -2, 50))


# ----------------------------------------------------------------------------- closed form


def least_squares():
    """Linear least squares: loss 0.5 * mean_n (w.x_n + b - y_n)^2 has H = A^T A / N, A = [X, 1]."""
    gen = torch.Generator().manual_seed(5)
    x = randn(40, 4, gen=gen) * torch.tensor([3.0, 1.0, 0.5, 0.2], dtype=DT) + 0.3
    y = randn(40, 1, gen=gen)
    torch.manual_seed(0)
    model = nn.Linear(4, 1).to(DT)
    a = torch.cat([x, torch.ones(40, 1, dtype=DT)], dim=1)  # parameter order: weight (1, 4), then bias
    return model, (x, y), a.T @ a / 40


def test_least_squares_closed_form():
    model, data, H = least_squares()
    ev = torch.linalg.eigvalsh(H)
    gen = torch.Generator().manual_seed(6)
    v = randn(5, gen=gen)
    torch.testing.assert_close(hvp(model, half_mse, data, v, bn_mode="eval"), H @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dense_hessian(model, half_mse, [data], "eval"), H, rtol=1e-12, atol=1e-12)
    for method in ("lanczos", "power"):
        res = top_eigenvalues(model, half_mse, data, bn_mode="train", k=2, method=method, tol=1e-12, max_iter=5000)
        torch.testing.assert_close(res.eigenvalues, ev[-2:].flip(0), rtol=1e-6, atol=0)
    full = top_eigenvalues(model, half_mse, data, bn_mode="eval", k=5)
    torch.testing.assert_close(full.eigenvalues, ev.flip(0), rtol=1e-10, atol=1e-12)
    assert full.num_hvp <= 5  # dim 5: exact after at most 5 Lanczos steps
    ext = extreme_eigenvalues(model, half_mse, data, bn_mode="eval")
    assert ext.largest == pytest.approx(float(ev[-1]), rel=1e-8) and ext.smallest == pytest.approx(
        float(ev[0]), rel=1e-6
    )


# ----------------------------------------------------------------------------- model state


TOOLS = {
    "hvp": lambda m, d, mode: hvp(
        m, mse, d, torch.ones(sum(p.numel() for p in m.parameters()), dtype=DT), bn_mode=mode
    ),
    "lanczos": lambda m, d, mode: top_eigenvalues(m, mse, d, bn_mode=mode, k=2, max_iter=8),
    "power": lambda m, d, mode: top_eigenvalues(m, mse, d, bn_mode=mode, k=2, method="power", max_iter=5),
    "extreme": lambda m, d, mode: extreme_eigenvalues(m, mse, d, bn_mode=mode, method="power", max_iter=5),
    "hutchinson": lambda m, d, mode: hutchinson_trace(m, mse, d, bn_mode=mode, min_samples=2, max_samples=3),
    "slq": lambda m, d, mode: spectral_density(m, mse, d, bn_mode=mode, num_probes=2, num_steps=4),
    "tracker": lambda m, d, mode: SharpnessTracker(m, mse, d, every=2, bn_mode=mode, max_iter=6).step(4),
}


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
@pytest.mark.parametrize("bn", [False, True], ids=["mlp", "bn"])
def test_model_state_unchanged(bn, bn_mode):
    model = mlp(bn=bn, seed=7)
    model.train()
    model[-1].eval()  # mixed flags must come back as they were
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    if bn:
        model[1].momentum = None  # cumulative average: num_batches_tracked matters too
    gen = torch.Generator().manual_seed(8)
    batches = [(randn(6, 3, gen=gen), randn(6, 2, gen=gen)), (randn(9, 3, gen=gen), randn(9, 2, gen=gen))]
    snap = snapshot(model)
    for name, tool in TOOLS.items():
        tool(model, batches, bn_mode)
        assert_same_state(model, snap, name)
        with torch.no_grad():  # also usable from inside a no_grad block (e.g. a logging hook)
            tool(model, batches[0], bn_mode)
        assert_same_state(model, snap, name + " under no_grad")


def test_model_state_unchanged_when_the_loss_raises():
    model = mlp(bn=True, seed=7)
    snap = snapshot(model)
    data = (torch.randn(8, 3, dtype=DT), torch.randn(8, 2, dtype=DT))
    with pytest.raises(ValueError, match="scalar"):
        top_eigenvalues(model, lambda out, y: (out - y) ** 2, data, bn_mode="train")
    assert_same_state(model, snap, "after an error")


# ----------------------------------------------------------------------------- iterables of batches


def test_iterable_of_unequal_batches_equals_concatenation():
    model, loss_fn, _, _, _, _ = case("bn-eval")
    gen = torch.Generator().manual_seed(9)
    sizes = [5, 8, 7]
    batches = [(randn(s, 3, gen=gen), randn(s, 2, gen=gen)) for s in sizes]
    whole = (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    v = randn(sum(p.numel() for p in model.parameters()), gen=gen)
    # eval mode: the loss of the concatenation is the size-weighted average of the batch losses
    torch.testing.assert_close(
        hvp(model, loss_fn, iter(batches), v, bn_mode="eval"),
        hvp(model, loss_fn, whole, v, bn_mode="eval"),
        rtol=1e-12,
        atol=1e-13,
    )
    a = top_eigenvalues(model, loss_fn, (b for b in batches), bn_mode="eval", tol=1e-10)
    b = top_eigenvalues(model, loss_fn, whole, bn_mode="eval", tol=1e-10)
    assert rel(a.eigenvalues[0], b.eigenvalues[0]) < 1e-10
    # train mode: batch statistics differ per batch; the operator is sum_i w_i H_i
    per_batch = sum(
        s / 20 * hvp(model, loss_fn, batch, v, bn_mode="train") for s, batch in zip(sizes, batches, strict=True)
    )
    torch.testing.assert_close(hvp(model, loss_fn, batches, v, bn_mode="train"), per_batch, rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------- every norm family


class TorchLayerNorm2d(nn.Module):
    """The torch reference for LayerNorm2d: channels-last F.layer_norm (same parameter names)."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, 1e-5).permute(0, 3, 1, 2)


# name: (normlab norm, torch twin, image input?, bn_mode)
FAMILIES = {
    "BatchNorm2d-train": (lambda: normlab.nn.BatchNorm2d(4), lambda: nn.BatchNorm2d(4), True, "train"),
    "BatchNorm2d-eval": (lambda: normlab.nn.BatchNorm2d(4), lambda: nn.BatchNorm2d(4), True, "eval"),
    "LayerNorm2d": (lambda: normlab.nn.LayerNorm2d(4), lambda: TorchLayerNorm2d(4), True, "train"),
    "GroupNorm": (lambda: normlab.nn.GroupNorm(2, 4), lambda: nn.GroupNorm(2, 4), True, "train"),
    "InstanceNorm2d": (
        lambda: normlab.nn.InstanceNorm2d(4, affine=True),
        lambda: nn.InstanceNorm2d(4, affine=True),
        True,
        "train",
    ),
    "LocalResponseNorm": (lambda: normlab.nn.LocalResponseNorm(3), lambda: nn.LocalResponseNorm(3), True, "train"),
    "LayerNorm": (lambda: normlab.nn.LayerNorm(8), lambda: nn.LayerNorm(8), False, "train"),
    "RMSNorm": (lambda: normlab.nn.RMSNorm(8), lambda: nn.RMSNorm(8), False, "train"),
}


def family_model(norm: nn.Module, image: bool) -> nn.Module:
    if image:  # (N, 2, 4, 4) -> 1x1 conv -> norm over 4 channels -> tanh -> linear
        return nn.Sequential(nn.Conv2d(2, 4, 1), norm, nn.Tanh(), nn.Flatten(), nn.Linear(64, 1))
    return nn.Sequential(nn.Linear(6, 8), norm, nn.Tanh(), nn.Linear(8, 2))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_hvp_through_every_norm_family(family):
    make_ours, make_theirs, image, bn_mode = FAMILIES[family]
    torch.manual_seed(10)
    ours = family_model(make_ours(), image).to(DT)
    with torch.no_grad():
        for p in ours[1].parameters():  # non-trivial affine
            p.uniform_(0.5, 1.5)
        for name, b in ours[1].named_buffers():
            if name == "running_mean":
                b.uniform_(-0.5, 0.5)
            elif name == "running_var":
                b.uniform_(0.5, 2.0)
    theirs = family_model(make_theirs(), image).to(DT)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(11)
    x = randn(6, 2, 4, 4, gen=gen) if image else randn(6, 6, gen=gen)  # 4x4 rows: BatchNorm2d's fast path
    y = randn(6, 1 if image else 2, gen=gen)
    H = dense_hessian(theirs, mse, [(x, y)], bn_mode)
    v = randn(H.shape[0], gen=gen)
    torch.testing.assert_close(hvp(ours, mse, (x, y), v, bn_mode=bn_mode), H @ v, rtol=1e-9, atol=1e-11)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_clearly():
    model, loss_fn, data, _, H, _ = case("mlp")
    n = H.shape[0]
    v = torch.ones(n, dtype=DT)
    with pytest.raises(TypeError, match="bn_mode"):
        hvp(model, loss_fn, data, v)  # bn_mode is required: no silent default
    with pytest.raises(TypeError, match="bn_mode"):
        top_eigenvalues(model, loss_fn, data)
    for bad in ("training", None, True):
        with pytest.raises(ValueError, match="bn_mode must be 'train'.*or 'eval'"):
            hvp(model, loss_fn, data, v, bn_mode=bad)
    with pytest.raises(ValueError, match="empty"):
        hvp(model, loss_fn, [], v, bn_mode="eval")
    with pytest.raises(ValueError, match="no samples"):
        hvp(model, loss_fn, (data[0][:0], data[1][:0]), v, bn_mode="eval")
    with pytest.raises(TypeError, match="inputs, targets"):
        hvp(model, loss_fn, 3, v, bn_mode="eval")
    with pytest.raises(ValueError, match=f"{n} elements"):
        hvp(model, loss_fn, data, torch.ones(n + 1, dtype=DT), bn_mode="eval")
    with pytest.raises(ValueError, match=f"{n} elements"):
        hvp(model, loss_fn, data, torch.ones(2, n // 2, dtype=DT), bn_mode="eval")
    params = list(model.parameters())
    with pytest.raises(ValueError, match="expected 4 tensors"):
        hvp(model, loss_fn, data, [torch.ones_like(p) for p in params[:-1]], bn_mode="eval")
    with pytest.raises(ValueError, match=r"vec\[0\] has shape"):
        hvp(
            model,
            loss_fn,
            data,
            [torch.ones(3, 5, dtype=DT)] + [torch.ones_like(p) for p in params[1:]],
            bn_mode="eval",
        )
    with pytest.raises(TypeError, match="vec must be"):
        hvp(model, loss_fn, data, v.numpy(), bn_mode="eval")
    with pytest.raises(ValueError, match="method"):
        top_eigenvalues(model, loss_fn, data, bn_mode="eval", method="eig")
    with pytest.raises(ValueError, match="k must be"):
        top_eigenvalues(model, loss_fn, data, bn_mode="eval", k=0)
    with pytest.raises(ValueError, match="elements per row"):
        top_eigenvalues(model, loss_fn, data, bn_mode="eval", init=torch.ones(n - 1, dtype=DT))
    with pytest.raises(ValueError, match="requires_grad"):
        hvp(model, loss_fn, data, torch.ones(3, dtype=DT), bn_mode="eval", params=[torch.zeros(3, dtype=DT)])
    with pytest.raises(ValueError, match="max_samples"):
        hutchinson_trace(model, loss_fn, data, bn_mode="eval", min_samples=10, max_samples=5)
    with pytest.raises(ValueError, match="grid"):
        spectral_density(model, loss_fn, data, bn_mode="eval", num_steps=3, grid=1)
    with pytest.raises(ValueError, match="every"):
        SharpnessTracker(model, loss_fn, data, every=0, bn_mode="eval")
    with pytest.raises(TypeError, match="bn_mode"):
        SharpnessTracker(model, loss_fn, data, every=1)


# ----------------------------------------------------------------------------- float32


def test_float32_computes_in_float32():
    model, loss_fn, data, bn_mode, H, ev = case("bn-train")
    m32 = mlp(bn=True).float()
    m32.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    res = top_eigenvalues(m32, loss_fn, (data[0].float(), data[1].float()), bn_mode=bn_mode, tol=1e-4)
    assert res.eigenvalues.dtype == torch.float32 and res.eigenvectors.dtype == torch.float32
    assert rel(res.eigenvalues[0], ev[-1]) < 1e-3


# ----------------------------------------------------------------------------- sharpness tracker


def train_setup(seed=12):
    model = mlp(bn=True, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    data = (randn(32, 3, gen=gen), randn(32, 2, gen=gen))
    return model, data


def test_tracker_records_every_k_steps():
    model, (x, y) = train_setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tracker = SharpnessTracker(model, mse, (x, y), every=3, bn_mode="train", tol=1e-8)
    out = []
    for step in range(8):
        out.append(tracker(step))
        opt.zero_grad()
        mse(model(x), y).backward()
        opt.step()
    assert tracker.steps == [0, 3, 6] and [r is not None for r in out] == [s % 3 == 0 for s in range(8)]
    assert all(r.converged and r.num_hvp > 0 for r in tracker.records)
    assert len(set(tracker.values)) == 3  # the parameters moved
    # a measurement equals the exact top eigenvalue at the current parameters
    rec = tracker.measure(8)
    ev = torch.linalg.eigvalsh(dense_hessian(model, mse, [(x, y)], "train"))
    assert rel(rec.lambda_max, ev[-1]) < 1e-4
    with torch.no_grad():  # the model is in train mode: batch statistics, as in the tracker's "train" bn_mode
        assert rec.loss == pytest.approx(float(mse(model(x), y)), rel=1e-10)
    assert tracker.total_hvp == sum(r.num_hvp for r in tracker.records)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_tracker_warm_start_saves_hvps(method):
    model, data = train_setup()
    snap = snapshot(model)
    tracker = SharpnessTracker(model, mse, data, bn_mode="train", method=method, tol=1e-6, max_iter=2000)
    first = tracker.measure(0)
    second = tracker.measure(1)  # same point, warm-started from the first eigenvector
    assert second.num_hvp < first.num_hvp
    assert second.lambda_max == pytest.approx(first.lambda_max, rel=1e-5)
    cold = SharpnessTracker(model, mse, data, bn_mode="train", method=method, tol=1e-6, max_iter=2000, warm_start=False)
    assert cold.measure(0).num_hvp == first.num_hvp  # same seed, same random start
    assert second.num_hvp < cold.measure(1).num_hvp  # a new random start costs about as much again
    assert_same_state(model, snap, "tracker")


# ----------------------------------------------------------------------------- plots


def test_plots_return_figures():
    from matplotlib.figure import Figure

    model, data, _ = least_squares()
    top = top_eigenvalues(model, half_mse, data, bn_mode="eval", k=3)
    ext = extreme_eigenvalues(model, half_mse, data, bn_mode="eval")
    dens = spectral_density(model, half_mse, data, bn_mode="eval", num_steps=5)
    for fig in (
        plot_density(dens),
        plot_density(dens, log=False, nodes=True, label="x"),
        plot_eigenvalues(top),
        plot_eigenvalues(ext),
        plot_eigenvalues([3.0, 2.0, -1.0], label="list"),
    ):
        assert isinstance(fig, Figure)
        fig.savefig(io.BytesIO(), format="png")
    fig = plot_eigenvalues(top)
    assert plot_eigenvalues(ext, ax=fig.axes[0]) is fig  # draws into the given axes
    tracker = SharpnessTracker(model, half_mse, data, bn_mode="eval", every=1)
    tracker.step(0)
    tracker.step(1)
    fig = plot_sharpness(tracker, lr=0.5)
    dashed = [ln for ln in fig.axes[0].lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [4.0, 4.0]
    assert not any(ln.get_linestyle() == "--" for ln in plot_sharpness(tracker.records).axes[0].lines)
    with pytest.raises(TypeError):
        plot_density(top)
