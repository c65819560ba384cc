"""IterNorm (Huang et al. CVPR 2019): against an independent float64 reference iteration, and from the math.

The reference (tests/normtable/whitening.py) loops over channel groups in plain
torch; ZCA whitening is computed here by ``torch.linalg.eigh``. Properties
checked: the output covariance's eigenvalues lie in (0, 1] and never decrease
with T; W converges to ZCA (Sigma^-1/2) on well-conditioned data; group_size=1
is exactly BatchNorm; running statistics as specified (EMA of the mean and of
W, cumulative average for momentum=None); gradcheck/gradgradcheck; fx, export,
compile; a failed forward changes no state; every validation error.
"""

from __future__ import annotations

import copy
import doctest
import pickle
import threading

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import normlab
from normlab.functional import BatchPartition, Whitening, apply_whitening
from normlab.functional import whitening as NW
from normlab.nn import IterNorm
from normtable import reference_state
from normtable.whitening import INFOS, iternorm_reference, randomize_iternorm

TOL64 = {"rtol": 1e-10, "atol": 1e-10}


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _correlated(n, c, *spatial, seed=0, mix=0.7):
    """Input whose channels are correlated within groups (a random mixing) and not centred."""
    x = _randn(n, c, *spatial, seed=seed)
    a = torch.eye(c, dtype=torch.float64) + mix * _randn(c, c, seed=seed + 1)
    x = torch.einsum("dc,nc...->nd...", a, x)
    return x + torch.linspace(-2, 3, c, dtype=torch.float64).view([1, c] + [1] * len(spatial))


def _group_cov(y, d):
    """Per-group biased covariance of y (N, C, *spatial) over (N, *spatial), by an explicit transpose."""
    c = y.shape[1]
    yf = y.transpose(0, 1).reshape(c // d, d, -1)
    yc = yf - yf.mean(-1, keepdim=True)
    return yc @ yc.transpose(1, 2) / yf.shape[-1]


def _ns_reference(sigma, T):
    """The paper's iteration on one matrix (Sigma already includes eps I)."""
    tr = torch.trace(sigma)
    p = torch.eye(sigma.shape[0], dtype=sigma.dtype)
    for _ in range(T):
        p = 1.5 * p - 0.5 * torch.linalg.matrix_power(p, 3) @ (sigma / tr)
    return p / tr.sqrt()


def _zca(sigma):
    lam, u = torch.linalg.eigh(sigma)
    return u @ torch.diag(lam.rsqrt()) @ u.T


# ---------------------------------------------------------- against the reference (every table case)

CASES = [(info, s) for info in INFOS for s in info.samples]
CASE_IDS = [f"{info.id}-{s.id}" for info, s in CASES]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("info", "sample"), CASES, ids=CASE_IDS)
def test_forward_and_gradients_match_the_reference(info, sample, dtype, training):
    module = info.build(torch.float64).to(dtype).train(training)
    x64 = sample.inputs(torch.float64, seed=1)[0]
    x = x64.to(dtype).requires_grad_(True)
    dy = _randn(*x.shape, seed=2)
    state = reference_state(module, requires_grad=True)  # before the forward (training updates buffers)
    y = module(x)
    assert y.dtype == dtype
    names = [n for n, _ in module.named_parameters()]
    got = torch.autograd.grad(y, [x, *module.parameters()], dy.to(dtype))
    xr = x64.to(dtype).to(torch.float64).requires_grad_(True)
    yr = info.references[0]((xr,), state, training, dtype)
    want = torch.autograd.grad(yr, [xr, *(state[n] for n in names)], dy)
    tol = TOL64 if dtype == torch.float64 else {"rtol": info.tol32.rtol, "atol": info.tol32.atol}
    gtol = TOL64 if dtype == torch.float64 else {"rtol": info.tol32_grad.rtol, "atol": info.tol32_grad.atol}
    assert_close(y.double(), yr.detach(), **tol)
    for name, g, w in zip(["input", *names], got, want, strict=True):
        assert_close(g.double(), w, **gtol, msg=lambda m, n=name: f"grad of {n}: {m}")


@pytest.mark.parametrize("info", INFOS, ids=[i.id for i in INFOS])
def test_registry_oracle_matches_the_module(info):
    module = info.build(torch.float64)
    entry = normlab.get_entry(info.name)
    for sample in info.samples:
        x = sample.inputs(torch.float64, seed=3)[0]
        for training in info.modes():
            module.train(training)
            want = entry.oracle(module, x)  # before the forward: it reads the running stats eval uses
            assert_close(module(x), want, **TOL64)


@pytest.mark.parametrize("info", INFOS, ids=[i.id for i in INFOS])
def test_error_inputs(info):
    for err in info.errors:
        kwargs = {**info.kwargs, **(err.ctor or {})}
        with pytest.raises(err.error, match=err.match):
            module = normlab.create_norm(info.name, info.features, **kwargs).train(err.training)
            before = copy.deepcopy(module.state_dict())
            inputs = err.make(torch.float32, 0) if err.make else tuple(torch.randn(s) for s in err.shapes)
            try:
                module(*inputs)
            finally:
                for k, v in module.state_dict().items():  # a failed forward changes no state
                    assert torch.equal(v, before[k]), k


# ------------------------------------------------------------ the Newton iteration, from the math


def test_newton_schulz_matches_the_paper_iteration_per_matrix():
    x = _correlated(50, 12, seed=4).T.reshape(3, 4, 50)  # 3 groups of 4 coupled features
    xc = x - x.mean(-1, keepdim=True)
    cov = xc @ xc.transpose(1, 2) / 50
    for T in (0, 1, 2, 5, 9):
        w = NW.newton_schulz_whitening(cov, T, eps=1e-3)
        assert w.shape == (3, 4, 4) and w.dtype == torch.float64
        for g in range(3):
            assert_close(w[g], _ns_reference(cov[g] + 1e-3 * torch.eye(4, dtype=torch.float64), T), **TOL64)
        assert_close(w, w.transpose(1, 2), **TOL64)  # a polynomial in Sigma: symmetric
    # T=0: one scale, 1/sqrt(tr Sigma)
    w0 = NW.newton_schulz_whitening(cov, 0)
    tr = cov.diagonal(dim1=1, dim2=2).sum(-1)
    assert_close(w0, torch.eye(4, dtype=torch.float64) * tr.rsqrt()[:, None, None], **TOL64)


def test_output_covariance_eigenvalues_in_0_1_and_non_decreasing_in_T():
    x = _correlated(64, 16, 3, 3, seed=5)
    previous = None
    for T in range(0, 12):
        m = IterNorm(16, group_size=8, T=T, eps=1e-5, affine=False).double()
        ev = torch.linalg.eigvalsh(_group_cov(m(x), 8))  # (G, d)
        assert (ev > 0).all() and (ev <= 1 + 1e-12).all(), (T, ev)
        if previous is not None:
            # sorted eigenvalues of each group never decrease (up to rounding: once converged they sit at
            # 1 - eps/lambda and change by ~1e-15, and by ~1e-11 at T=12 where rounding starts to grow)
            assert (ev >= previous - 1e-12).all(), T
        previous = ev
    # and it moved: T=0 (one scale) is far from white, T=11 close
    assert previous.min() > 0.99


def _with_spectrum(n, spectra, seed):
    """(n, G*d) samples whose group g has covariance U_g diag(spectra[g]) U_g^T (U_g a random rotation)."""
    blocks = []
    for g, lam in enumerate(spectra):
        lam = torch.tensor(lam, dtype=torch.float64)
        u, _ = torch.linalg.qr(_randn(len(lam), len(lam), seed=seed + g))
        blocks.append((_randn(n, len(lam), seed=seed + 10 + g) * lam.sqrt()) @ u.T)
    return torch.cat(blocks, 1)


def _batch_sigma(x, d, eps):
    xg = x.transpose(0, 1).reshape(x.shape[1] // d, d, -1)
    xc = xg - xg.mean(-1, keepdim=True)
    return xc @ xc.transpose(1, 2) / xg.shape[-1] + eps * torch.eye(d, dtype=torch.float64)


def test_converges_to_zca_whitening_on_well_conditioned_data():
    # Condition numbers below ~2.4: there the iteration is also stable after convergence (see below).
    x = _with_spectrum(4000, [(1.0, 1.3, 1.6, 2.0), (0.5, 0.6, 0.8, 1.0)], seed=6)
    sigma = _batch_sigma(x, 4, 1e-5)
    assert torch.linalg.cond(sigma).max() < 2.4
    zca = torch.stack([_zca(s) for s in sigma])
    errors = []
    for T in (1, 2, 3, 5, 8, 12, 20, 40):
        m = IterNorm(8, group_size=4, T=T, affine=False, momentum=1.0).double()
        m(x)
        errors.append((m.running_wm - zca).abs().max().item())  # momentum 1: running_wm is the batch W
    assert all(b <= max(a, 1e-13) for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-13, errors
    # the output is then white: covariance = I (eps = 0)
    y = IterNorm(8, group_size=4, T=40, eps=0.0, affine=False).double()(x)
    assert_close(_group_cov(y, 4), torch.eye(4, dtype=torch.float64).expand(2, 4, 4), rtol=0, atol=1e-12)


def test_large_T_drifts_from_zca_on_moderately_conditioned_data():
    # Documented in newton_schulz_whitening: after convergence, rounding errors in eigen-directions (i, j)
    # grow by |1 - (sqrt(r) + r) / 2| per step (r = lambda_i / lambda_j), i.e. for condition numbers > ~2.44.
    x = _with_spectrum(4000, [(1.0, 2.0, 4.0, 8.0)], seed=7)  # kappa 8: factor 1 - (2.83 + 8)/2 = -4.4
    sigma = _batch_sigma(x, 4, 0.0)
    zca = _zca(sigma[0])
    err = {T: (NW.newton_schulz_whitening(sigma, T)[0] - zca).abs().max().item() for T in (8, 18, 20, 40)}
    assert err[8] < 1e-12, err  # converged
    assert 10 < err[20] / err[18] < 40, err  # the predicted growth: 4.4^2 = 19.6 per two steps
    assert err[40] > 1, err  # then far from ZCA


@pytest.mark.parametrize("T", [0, 1, 5, 30])
def test_group_size_one_is_batch_norm(T):
    # d=1: Sigma_N = 1 is the iteration's fixed point (P_k = 1), so W = 1/sqrt(var + eps) for every T.
    x = _correlated(6, 5, 4, 3, seed=7)
    m = IterNorm(5, group_size=1, T=T, eps=1e-3).double()
    randomize_iternorm(m, 1)
    m.running_mean.zero_()
    m.running_wm.fill_(1.0)
    weight, bias = m.weight.detach().clone(), m.bias.detach().clone()
    rm, rv = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    want = F.batch_norm(x, rm, rv, weight, bias, training=True, momentum=0.1, eps=1e-3)
    assert_close(m(x), want, **TOL64)
    assert_close(m.running_mean, rm, **TOL64)  # the same EMA of the batch mean
    var = x.var((0, 2, 3), correction=0)
    assert_close(m.running_wm.flatten(), 0.9 + 0.1 / torch.sqrt(var + 1e-3), **TOL64)  # EMA of W, not of var


def test_fewer_samples_than_features_is_fine():
    # M = 6 < d = 8: Sigma is singular without eps. The iteration inverts nothing: the null directions
    # of the batch map to 0 and the others are whitened; the output stays finite and matches the reference.
    x = _randn(3, 8, 2, seed=11)
    m = IterNorm(8, group_size=8, T=6, eps=0.0, affine=False).double()
    y = m(x)
    assert torch.isfinite(y).all() and torch.isfinite(m.running_wm).all()
    assert_close(y, iternorm_reference(x, {}, True, 8, 6, 0.0), **TOL64)
    ev = torch.linalg.eigvalsh(_group_cov(y, 8))
    assert (ev > -1e-12).all() and (ev <= 1 + 1e-12).all()
    assert (ev < 1e-10).sum() >= 8 - 5  # rank <= M - 1 = 5


def test_whiten_groups_equals_the_generic_apply_whitening_on_both_roads():
    for shape, d in (((3, 8, 5, 4), 4), ((10, 8), 4), ((4, 6, 2), 3), ((2, 8, 3), 8)):  # S >= d and S < d
        x = _randn(*shape, seed=8)
        g = shape[1] // d
        wh = Whitening(_randn(g, d, seed=9), _randn(g, d, d, seed=10))
        view = BatchPartition(d).view(x)
        want = apply_whitening(view, wh, 2, (0, 3)).reshape(x.shape)
        assert_close(NW.whiten_groups(x, wh), want, **TOL64)
        # and the (R, D, M) road of the oracle
        part = BatchPartition(d)
        want2 = part.ungroup(apply_whitening(part.group(x), wh, 1, (2,)), x.shape)
        assert_close(NW.whiten_groups(x, wh), want2, **TOL64)


# ---------------------------------------------------------------- running statistics


def test_running_statistics_are_an_ema_of_the_mean_and_of_w():
    m = IterNorm(6, group_size=3, T=4, momentum=0.25).double()
    assert torch.equal(m.running_mean, torch.zeros(6, dtype=torch.float64))
    assert torch.equal(m.running_wm, torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    rm, rw = m.running_mean.clone(), m.running_wm.clone()
    for step in range(3):
        x = _correlated(8, 6, 3, seed=20 + step)
        m(x)
        xg = x.transpose(0, 1).reshape(2, 3, -1)
        mu = xg.mean(-1)
        xc = xg - mu[..., None]
        sigma = xc @ xc.transpose(1, 2) / xg.shape[-1] + 1e-5 * torch.eye(3, dtype=torch.float64)
        w = torch.stack([_ns_reference(s, 4) for s in sigma])
        rm = 0.75 * rm + 0.25 * mu.flatten()
        rw = 0.75 * rw + 0.25 * w  # no Bessel factor on W
        assert_close(m.running_mean, rm, **TOL64)
        assert_close(m.running_wm, rw, **TOL64)
        assert m.num_batches_tracked.item() == step + 1
    # eval: y = running_wm (x - running_mean), then the affine (here identity)
    x = _correlated(4, 6, 3, seed=30)
    m.eval()
    xg = x.transpose(0, 1).reshape(2, 3, -1)
    want = (rw @ (xg - rm.view(2, 3, 1))).reshape(6, 4, 3).transpose(0, 1)
    assert_close(m(x), want, **TOL64)
    assert m.num_batches_tracked.item() == 3  # eval changes nothing


def test_momentum_none_is_the_cumulative_average():
    m = IterNorm(4, group_size=2, T=3, momentum=None).double()
    means, ws = [], []
    for step in range(4):
        x = _correlated(6, 4, 5, seed=40 + step)
        one = IterNorm(4, group_size=2, T=3, momentum=1.0).double()  # momentum 1: the batch's own values
        one(x)
        means.append(one.running_mean)
        ws.append(one.running_wm)
        m(x)
        assert_close(m.running_mean, torch.stack(means).mean(0), **TOL64)
        assert_close(m.running_wm, torch.stack(ws).mean(0), **TOL64)
    assert m.num_batches_tracked.item() == 4


def test_reset_running_stats_and_untracked():
    m = IterNorm(4, group_size=2).double()
    m(_correlated(5, 4, 3, seed=1))
    m.reset_running_stats()
    assert torch.equal(m.running_wm, torch.eye(2, dtype=torch.float64).expand(2, 2, 2))
    assert m.num_batches_tracked.item() == 0 and not m.running_mean.any()
    u = IterNorm(4, group_size=2, track_running_stats=False).double()
    assert u.running_mean is None and u.running_wm is None and u.num_batches_tracked is None
    x = _correlated(5, 4, 3, seed=2)
    assert_close(u.eval()(x), u.train()(x), **TOL64)  # eval uses batch statistics too


# ------------------------------------------------------------------ autograd


def _small(training, **kw):
    m = IterNorm(4, group_size=2, T=3, **kw).double()
    randomize_iternorm(m, 2)
    return m.train(training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_and_gradgradcheck(training):
    m = _small(training)
    x = _correlated(4, 4, 3, seed=50).requires_grad_(True)
    w, b = m.weight, m.bias

    def f(x, w, b):
        # A fresh copy per call: training forwards update running stats, which must not leak between calls.
        mm = copy.deepcopy(m)
        with torch.no_grad():
            mm.weight.copy_(w)
            mm.bias.copy_(b)
        return torch.func.functional_call(mm, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_gradcheck_2d_input_several_groups_and_T0():
    for kw in ({"T": 0}, {"T": 6, "eps": 0.0}):
        m = IterNorm(6, group_size=3, affine=False, track_running_stats=False, **kw).double()
        x = _correlated(7, 6, seed=51).requires_grad_(True)
        assert torch.autograd.gradcheck(m, (x,))
        assert torch.autograd.gradgradcheck(m, (x,))


def test_output_survives_in_place_ops_and_double_backward():
    for affine in (True, False):
        for training in (True, False):
            m = IterNorm(4, group_size=2, affine=affine).train(training)
            x = torch.randn(6, 4, 3, 3, requires_grad=True)
            y = m(x)
            torch.relu_(y)
            (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
            g.sum().backward()
            assert x.grad is not None and torch.isfinite(x.grad).all()


# ------------------------------------------------------ dtypes and layouts


def test_dtypes_and_memory_format():
    m = IterNorm(8, group_size=4)
    x = torch.randn(6, 8, 4, 5) * 3 + 1
    y = m(x)
    assert y.dtype == torch.float32
    xb = x.bfloat16()
    yb = copy.deepcopy(m)(xb)
    assert yb.dtype == torch.bfloat16
    # bfloat16 input, float32 statistics: the output is the float32 result of the rounded input, rounded
    want = copy.deepcopy(m)(xb.float()).bfloat16()
    assert_close(yb.float(), want.float(), rtol=1e-2, atol=1e-2)
    m64 = IterNorm(8, group_size=4).double()
    assert m64(x.double()).dtype == torch.float64 and m64.running_wm.dtype == torch.float64
    # channels_last in, channels_last out, same numbers
    mc = copy.deepcopy(m)
    yc = mc(x.to(memory_format=torch.channels_last))
    assert yc.is_contiguous(memory_format=torch.channels_last)
    assert_close(yc, copy.deepcopy(m)(x), rtol=1e-6, atol=1e-6)
    x5 = torch.randn(3, 8, 2, 3, 4).to(memory_format=torch.channels_last_3d)
    assert IterNorm(8, group_size=4)(x5).is_contiguous(memory_format=torch.channels_last_3d)
    # a non-contiguous (sliced) input
    xs = torch.randn(6, 16, 4, 5)[:, ::2]
    assert_close(copy.deepcopy(m)(xs), copy.deepcopy(m)(xs.contiguous()))


# ------------------------------------------------------------ tracing


def test_fx_symbolic_trace():
    m = _small(True)
    gm = torch.fx.symbolic_trace(m)
    ref = copy.deepcopy(m)
    x = _correlated(5, 4, 3, seed=60)
    assert_close(gm(x), ref(x), **TOL64)
    assert_close(gm.running_wm, ref.running_wm, **TOL64)  # the traced call updates the same buffers
    assert gm.num_batches_tracked.item() == 1
    ops = [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"]
    assert ops == ["_iter_norm"]  # one leaf: validation stays out of the graph


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_torch_export(training):
    m = _small(training)
    x = _correlated(5, 4, 3, seed=61)
    ref = copy.deepcopy(m)
    ep = torch.export.export(copy.deepcopy(m), (x,))
    x2 = _correlated(5, 4, 3, seed=62)
    assert_close(ep.module()(x2), ref(x2), **TOL64)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    try:
        eager = IterNorm(8, group_size=4, T=5)
        randomize_iternorm(eager, 3)
        compiled_module = copy.deepcopy(eager)
        compiled = torch.compile(compiled_module, backend="aot_eager", fullgraph=True)
        for seed in (1, 2):
            x = torch.randn(6, 8, 3, 4, generator=torch.Generator().manual_seed(seed)) * 1.5 + 0.3
            xs = [x.clone().requires_grad_(True) for _ in range(2)]
            ye, yc = eager(xs[0]), compiled(xs[1])
            assert_close(yc, ye, rtol=1e-5, atol=1e-5)
            dy = torch.randn_like(x)
            ge = torch.autograd.grad(ye, [xs[0], *eager.parameters()], dy)
            gc = torch.autograd.grad(yc, [xs[1], *compiled_module.parameters()], dy)
            for a, b in zip(gc, ge, strict=True):
                assert_close(a, b, rtol=1e-5, atol=1e-5)
        for k, v in eager.state_dict().items():
            assert_close(compiled_module.state_dict()[k], v, rtol=1e-5, atol=1e-5)
        compiled_module.eval()
        eager.eval()
        with torch.no_grad():
            assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
    finally:
        torch._dynamo.reset()


# --------------------------------------------------- failures change no state


def _assert_unchanged(m, before):
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_diverged_iteration_raises_and_changes_no_state():
    # An ill-conditioned group (condition number ~1e8) with many Newton steps in float32 diverges.
    d = 16
    u, _ = torch.linalg.qr(_randn(d, d, seed=70))
    scales = torch.logspace(0, -4, d, dtype=torch.float64)
    x = (_randn(256, d, seed=71) * scales) @ u.T
    m = IterNorm(d, group_size=d, T=40, eps=0.0)
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ValueError, match=r"Newton iteration diverged .*smaller T"):
        m(x.float())
    _assert_unchanged(m, before)
    # the same data with the paper's T=5 is fine
    IterNorm(d, group_size=d, T=5, eps=0.0)(x.float())


def test_zero_variance_group_needs_eps():
    x = torch.randn(8, 4, 3)
    x[:, 2:] = 1.0  # the second group of 2 channels is constant
    m = IterNorm(4, group_size=2, eps=0.0)
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ValueError, match=r"group\(s\) \[1\].*zero variance needs eps > 0"):
        m(x)
    _assert_unchanged(m, before)
    y = IterNorm(4, group_size=2)(x)  # eps=1e-5: the constant group maps to 0
    assert torch.isfinite(y).all() and y[:, 2:].abs().max() < 1e-6


def test_functional_validation():
    x = torch.randn(4, 6, 3)
    rm, rw = torch.zeros(6), torch.eye(3).repeat(2, 1, 1)
    with pytest.raises(ValueError, match="both running_mean and running_wm, or neither"):
        NW.iter_norm(x, rm, None, training=True, group_size=3)
    with pytest.raises(ValueError, match=r"running_wm of shape \(2, 3, 3\) .*got \(3, 3, 3\)"):
        NW.iter_norm(x, rm, torch.eye(3).repeat(3, 1, 1), training=True, group_size=3)
    with pytest.raises(ValueError, match=r"weight of shape \(6,\), got \(3,\)"):
        NW.iter_norm(x, rm, rw, torch.ones(3), training=True, group_size=3)
    with pytest.raises(ValueError, match="training=False uses running statistics"):
        NW.iter_norm(x, None, None, training=False, group_size=3)
    with pytest.raises(ValueError, match="momentum=None .* needs num_batches_tracked"):
        NW.iter_norm(x, rm, rw, training=True, momentum=None, group_size=3)
    with pytest.raises(ValueError, match=r"divisible by group_size \(4\).*\[1, 2, 3, 6\]"):
        NW.iter_norm(x, None, None, training=True, group_size=4)
    with pytest.raises(ValueError, match=r"square covariances .*got \(2, 3, 4\)"):
        NW.newton_schulz_whitening(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="T must be a non-negative int"):
        NW.newton_schulz_whitening(torch.eye(3), T=-2)
    assert torch.equal(rm, torch.zeros(6)) and torch.equal(rw, torch.eye(3).repeat(2, 1, 1))


def test_constructor():
    m = IterNorm(32)  # group_size 64 > C: one group of all channels
    assert m.group_size == 32 and m.num_groups == 1 and m.running_wm.shape == (1, 32, 32)
    assert m.T == 5 and m.eps == 1e-5 and m.momentum == 0.1
    m = IterNorm(128)
    assert m.group_size == 64 and m.running_wm.shape == (2, 64, 64) and m.running_mean.shape == (128,)
    assert repr(IterNorm(8, group_size=2, T=0, affine=False, momentum=None)) == (
        "IterNorm(8, group_size=2, T=0, eps=1e-05, momentum=None, affine=False, track_running_stats=True)"
    )
    with pytest.raises(ValueError, match=r"group_size \(64\).*valid group sizes for 80 channels"):
        IterNorm(80, group_size=64)
    m = IterNorm(4, device="meta", dtype=torch.float64)
    assert m.running_wm.device.type == "meta" and m.weight.dtype == torch.float64
    assert normlab.registry.statistics_kind(m) == "batch" and normlab.registry.mode_dependent(m)


# ---------------------------------------------------------------- registry, state


def test_registry_entry():
    entry = normlab.get_entry("itn")
    assert entry.name == "iternorm" and entry.cls is IterNorm and entry.family == "whitening"
    assert entry.statistics == "batch" and entry.ranks == (4, 2, 3, 5) and "1904.03441" in entry.paper
    m = normlab.create_norm("itn:16,T=3", 64)
    assert type(m) is IterNorm and m.group_size == 16 and m.T == 3
    m = entry.build_example()
    assert m.group_size == 4 and m.T == 5
    assert m(torch.randn(*entry.example_shapes[0])).shape == entry.example_shapes[0]


def test_state_dict_pickle_and_official_checkpoint_layout():
    m = _small(True)
    m(_correlated(5, 4, 3, seed=80))
    m2 = IterNorm(4, group_size=2, T=3).double()
    m2.load_state_dict(m.state_dict(), strict=True)
    x = _correlated(5, 4, 3, seed=81)
    assert_close(m2.eval()(x), m.eval()(x), **TOL64)
    m3 = pickle.loads(pickle.dumps(m))
    assert_close(m3(x), m(x), **TOL64)
    # The official code's layout: running_mean (G, d, 1), weight/bias (1, C, 1, 1), no num_batches_tracked.
    official = {
        "weight": m.weight.detach().reshape(1, 4, 1, 1),
        "bias": m.bias.detach().reshape(1, 4, 1, 1),
        "running_mean": m.running_mean.reshape(2, 2, 1),
        "running_wm": m.running_wm.clone(),
    }
    m4 = IterNorm(4, group_size=2, T=3).double()
    m4.load_state_dict(official, strict=True)
    assert_close(m4.eval()(x), m.eval()(x), **TOL64)
    assert m4.num_batches_tracked.item() == 0
    with pytest.raises(RuntimeError, match="size mismatch for running_wm"):
        IterNorm(4, group_size=4).load_state_dict(m.state_dict())


# ---------------------------------------------------------- synchronized statistics


def test_reduce_hook_equals_the_whole_batch():
    x = _correlated(9, 6, 4, seed=90)
    parts = torch.split(x, [2, 3, 4])
    world = len(parts)
    barrier = threading.Barrier(world)
    slots: list = [None] * world

    def reduce_for(rank):
        def reduce(t):
            slots[rank] = t.clone()
            barrier.wait()
            total = sum(slots)
            barrier.wait()
            return total

        return reduce

    out: list = [None] * world
    buffers = [(torch.zeros(6, dtype=torch.float64), torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)) for _ in parts]

    def run(r):
        out[r] = NW.iter_norm(parts[r], *buffers[r], training=True, group_size=3, T=5, reduce=reduce_for(r))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    rm, rw = torch.zeros(6, dtype=torch.float64), torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    want = NW.iter_norm(x, rm, rw, training=True, group_size=3, T=5)
    assert_close(torch.cat(out), want, **TOL64)
    for brm, brw in buffers:  # every process gets the same running statistics
        assert_close(brm, rm, **TOL64)
        assert_close(brw, rw, **TOL64)


def test_docstring_examples():
    import normlab.nn.whitening as nnw

    for mod in (NW, nnw):
        result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS, verbose=False)
        assert result.failed == 0 and result.attempted > 0, mod.__name__


def test_reference_is_independent_of_normlab():
    # The table's reference on a hand-sized case: d=2, one group, M=2 -> Sigma known in closed form.
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)  # (N=2, C=2): channel 1 constant
    y = iternorm_reference(x, {}, True, 2, 0, 0.0)
    # mean (0, 0); Sigma = diag(1, 0); tr = 1; T=0: W = I -> y = x - mean
    assert_close(y, x, **TOL64)
