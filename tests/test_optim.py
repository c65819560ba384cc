"""Gradient-side normalization (normlab.optim): LARS, LAMB, LANS, gradient centralization and normalization.

A table of optimizer configurations runs generic tests (foreach equals the
single-tensor loop, a state_dict round trip resumes identically, maximize
mirrors descent, a compiled step equals the eager one), beside the
documented invariants: LARS with momentum 0 and weight decay 0 moves each
layer by ``lr * trust_coefficient`` of its norm; a group without adaptation
is torch's momentum SGD; the steps agree with an independent float64
implementation of the papers' algorithms; LAMB moves each layer by ``lr`` of
its norm and, with the ratio forced to 1, is AdamW; LANS and normalized
gradients under SGD do not depend on the loss's scale; GC's gradients sum to zero per
filter, GC is a projection, and under SGD each filter's weight sum is
constant.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import normlab
from normlab.functional.checks import InvalidArgumentError
from normlab.optim import (
    LAMB,
    LANS,
    LARS,
    CentralizedAdamW,
    CentralizedSGD,
    GradientCentralization,
    GradientNormalization,
    exclude_from_adaptation,
)
from normlab.optim.functional import centralize, centralize_, normalize_gradients_, trust_ratio

f64 = torch.float64

# name -> (optimizer, keyword arguments): every option of each on at least once
CONFIGS = {
    "lars-plain": (LARS, dict(lr=0.5, momentum=0.0)),
    "lars-momentum": (LARS, dict(lr=0.5, momentum=0.9)),
    "lars-nesterov-wd": (LARS, dict(lr=0.5, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    "lars-clip-eps": (LARS, dict(lr=2.0, momentum=0.5, trust_coefficient=0.5, trust_clip=0.2, eps=1e-3)),
    "larc": (LARS, dict(lr=0.01, momentum=0.9, larc=True, trust_coefficient=0.02, weight_decay=1e-3)),
    "lamb": (LAMB, dict(lr=0.01)),
    "lamb-no-bias-correction-phi": (LAMB, dict(lr=0.01, bias_correction=False, phi_clip=0.5, eps=1e-8)),
    "lamb-adapt-where-decayed": (LAMB, dict(lr=0.01, weight_decay=0.0, always_adapt=False)),
    "lans": (LANS, dict(lr=0.01)),
    "lans-wd-betas": (LANS, dict(lr=0.02, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-8)),
    "centralized-sgd": (CentralizedSGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)),
    "centralized-sgd-conv-only": (CentralizedSGD, dict(lr=0.1, weight_decay=1e-2, conv_only=True)),
    "centralized-adamw": (CentralizedAdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
}


def _make(name, params, **extra):
    cls, kwargs = CONFIGS[name]
    return cls(params, **kwargs, **extra)


def _model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 3)).to(dtype)


def _data(dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(10, 2, 8, generator=g, dtype=dtype), torch.randint(0, 3, (10,), generator=g)


def _train(model, opt, steps=4, dtype=torch.float32, seed=1):
    x, y = _data(dtype, seed)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _grads_of(loss):
    """The gradient function of ``loss`` over a list of tensors, for the written-out reference algorithms."""

    def grads(ws):
        ws = [w.detach().requires_grad_() for w in ws]
        return torch.autograd.grad(loss(ws), ws)

    return grads


def _check_against(want, loss, w0, make, steps):
    """``make(params)`` run ``steps`` steps on ``loss`` from ``w0`` must end at ``want`` (float64, 1e-12)."""
    params = [nn.Parameter(w.clone()) for w in w0]
    opt = make(params)
    for _ in range(steps):
        opt.zero_grad()
        loss(params).backward()
        opt.step()
    for p, w in zip(params, want, strict=True):
        torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ generic table


@pytest.mark.parametrize("name", CONFIGS)
def test_foreach_equals_single_tensor(name):
    a, b = _model(), _model()
    if CONFIGS[name][0] is LANS:
        # LANS normalizes the conv bias's gradient, which BN makes rounding noise: the two roads' last-bit
        # differences would steer it apart (see test_steps_do_not_depend_on_the_losss_scale)
        for m in (a, b):
            m[0].bias.requires_grad_(False)
    _train(a, _make(name, a.parameters(), foreach=False))
    _train(b, _make(name, b.parameters(), foreach=True))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
    assert any((pa - p0).abs().max() > 0 for pa, p0 in zip(a.parameters(), _model().parameters(), strict=True))


@pytest.mark.parametrize("name", CONFIGS)
def test_state_dict_round_trip_resumes_identically(name):
    straight = _model()
    opt = _make(name, straight.parameters())
    _train(straight, opt, steps=6)

    half = _model()
    opt1 = _make(name, half.parameters())
    _train(half, opt1, steps=3)
    saved_model, saved_opt = copy.deepcopy(half.state_dict()), copy.deepcopy(opt1.state_dict())
    resumed = _model(seed=5)  # other weights: everything must come from the state dicts
    resumed.load_state_dict(saved_model)
    opt2 = _make(name, resumed.parameters())
    opt2.load_state_dict(saved_opt)
    # _train draws the same batch every call, so the second half repeats steps 4-6 of the straight run
    _train(resumed, opt2, steps=3)
    for pa, pb in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", CONFIGS)
def test_maximize_ascends_the_negated_loss(name, foreach):
    a, b = _model(dtype=f64), _model(dtype=f64)
    x, y = _data(f64)
    oa = _make(name, a.parameters(), maximize=True, foreach=foreach)
    ob = _make(name, b.parameters(), foreach=foreach)
    for _ in range(3):
        for m, o, sign in ((a, oa, -1.0), (b, ob, 1.0)):
            o.zero_grad()
            (sign * nn.functional.cross_entropy(m(x), y)).backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", ["lars-nesterov-wd", "lamb", "lans-wd-betas", "centralized-sgd"])
def test_compiled_step_equals_eager(name, foreach):
    torch._dynamo.reset()
    a, b = _model(), _model()
    oa = _make(name, a.parameters(), foreach=foreach)
    ob = _make(name, b.parameters(), foreach=foreach)
    step = torch.compile(ob.step, backend="aot_eager", fullgraph=False)
    x, y = _data()
    for _ in range(3):
        for m, o, s in ((a, oa, oa.step), (b, ob, step)):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            s()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
    torch._dynamo.reset()


# ------------------------------------------------------------------ LARS's invariants


@pytest.mark.parametrize("foreach", [False, True])
def test_lars_relative_step_is_lr_times_trust_coefficient(foreach):
    model = _model(dtype=f64)
    lr, eta = 0.3, 0.01
    opt = LARS(model.parameters(), lr=lr, momentum=0.0, weight_decay=0.0, trust_coefficient=eta, foreach=foreach)
    before = _params(model)
    _train(model, opt, steps=1, dtype=f64)
    moved = 0
    for w0, w1 in zip(before, model.parameters(), strict=True):
        if w0.norm() == 0:  # BN's bias starts at 0: the guard gives it the plain step lr * g
            torch.testing.assert_close(w1.detach(), w0 - lr * w1.grad, rtol=1e-12, atol=1e-15)
            continue
        assert float((w1.detach() - w0).norm() / w0.norm()) == pytest.approx(lr * eta, rel=1e-12)
        moved += 1
    assert moved == 5  # conv weight and bias, BN weight, linear weight and bias


def _paper_lars(ws, grads_fn, steps, lr, momentum, wd, eta, nesterov=False):
    """You et al. 2017, Algorithm 1, written out in float64 for a list of tensors."""
    ws = [w.clone() for w in ws]
    vs = [torch.zeros_like(w) for w in ws]
    for _ in range(steps):
        gs = grads_fn(ws)
        for i, (w, g) in enumerate(zip(ws, gs, strict=True)):
            local = eta * w.norm() / (g.norm() + wd * w.norm())
            scaled = lr * local * (g + wd * w)
            vs[i] = momentum * vs[i] + scaled
            ws[i] = w - (scaled + momentum * vs[i] if nesterov else vs[i])
    return ws


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_lars_matches_the_papers_algorithm(foreach, nesterov):
    gen = torch.Generator().manual_seed(3)
    A = [torch.randn(4, 4, generator=gen, dtype=f64) for _ in range(2)]
    w0 = [torch.randn(4, 4, generator=gen, dtype=f64), torch.randn(4, generator=gen, dtype=f64)]

    def loss(ws):  # a smooth coupled loss of both tensors
        return (A[0] @ ws[0]).square().sum() + (ws[0] @ ws[1]).sin().sum() + (A[1] @ ws[1]).square().sum()

    want = _paper_lars(w0, _grads_of(loss), 5, lr=0.2, momentum=0.9, wd=1e-2, eta=0.05, nesterov=nesterov)
    _check_against(
        want,
        loss,
        w0,
        lambda params: LARS(
            params, lr=0.2, momentum=0.9, weight_decay=1e-2, trust_coefficient=0.05, nesterov=nesterov, foreach=foreach
        ),
        steps=5,
    )


@pytest.mark.parametrize("foreach", [False, True])
def test_group_without_adaptation_is_torch_momentum_sgd(foreach):
    # lr inside the momentum (LARS) or outside (torch) is the same at a constant lr
    a, b = _model(dtype=f64), _model(dtype=f64)
    oa = LARS(
        [{"params": a.parameters(), "trust_adaptation": False}],
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-3,
        nesterov=True,
        foreach=foreach,
    )
    ob = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
    _train(a, oa, dtype=f64)
    _train(b, ob, dtype=f64)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14)


def test_trust_ratio_guard_and_clip():
    t = torch.tensor
    assert trust_ratio(t(0.0), t(1.0), 0.001, 0.0, 0.0, None) == 1.0  # a zeroed layer takes the global rate
    assert trust_ratio(t(1.0), t(0.0), 0.001, 0.0, 0.0, None) == 1.0  # no gradient: no division by zero
    assert trust_ratio(t(100.0), t(1.0), 1.0, 0.0, 0.0, 50.0) == 50.0  # the authors' clamp
    assert trust_ratio(t(2.0), t(1.0), 0.5, 0.5, 0.0, None) == pytest.approx(0.5)  # 0.5 * 2 / (1 + 1)


def test_zero_weight_takes_a_plain_step():
    w = nn.Parameter(torch.zeros(3))
    opt = LARS([w], lr=0.1, momentum=0.0)
    w.grad = torch.tensor([1.0, -2.0, 0.5])
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([-0.1, 0.2, -0.05]))


def test_larc_caps_each_layer_at_the_global_rate():
    w = nn.Parameter(torch.tensor([3.0, 4.0], dtype=f64))  # ||w|| = 5, ||g|| = 1: trust = eta * 5
    for eta, want_rate in ((0.001, 0.005), (1.0, 0.1)):  # trust below lr, then above it (capped at lr = 0.1)
        p = nn.Parameter(w.detach().clone())
        opt = LARS([p], lr=0.1, momentum=0.0, trust_coefficient=eta, larc=True)
        p.grad = torch.tensor([0.0, 1.0], dtype=f64)
        opt.step()
        assert float(4.0 - p[1]) == pytest.approx(want_rate, rel=1e-12)


def test_exclude_from_adaptation_groups():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), normlab.create_norm("gn:4", 8), nn.ReLU(), nn.Conv2d(8, 2, 1))
    adapted, excluded = exclude_from_adaptation(model, lr=0.01)
    assert {id(p) for p in adapted["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in excluded["params"]} == {
        id(model[0].bias),
        id(model[1].weight),
        id(model[1].bias),
        id(model[3].bias),
    }
    assert excluded["trust_adaptation"] is False and excluded["weight_decay"] == 0.0 and excluded["lr"] == 0.01
    opt = LARS([adapted, excluded], lr=1.0, weight_decay=1e-4)
    assert opt.param_groups[0]["trust_adaptation"] is True and opt.param_groups[0]["weight_decay"] == 1e-4


def test_registry_builds_lars():
    opt = normlab.create_optimizer("lars:0.2,momentum=0.8", [nn.Parameter(torch.ones(2))])
    assert isinstance(opt, LARS) and opt.defaults["lr"] == 0.2 and opt.defaults["momentum"] == 0.8
    assert "lars" in normlab.OPTIMIZERS.names()
    lamb = normlab.create_optimizer("lamb:0.01,weight_decay=0.1", [nn.Parameter(torch.ones(2))])
    assert isinstance(lamb, LAMB) and lamb.defaults["weight_decay"] == 0.1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=0.0), "lr must be finite and > 0, got 0.0"),
        (dict(lr=-1.0), "lr must be finite and > 0"),
        (dict(lr="0.1"), "lr must be a number, got str"),
        (dict(lr=0.1, momentum=1.0), "momentum must be < 1"),
        (dict(lr=0.1, momentum=-0.1), "momentum must be finite and >= 0 and <= 1"),
        (dict(lr=0.1, weight_decay=math.nan), "weight_decay must be finite"),
        (dict(lr=0.1, trust_coefficient=0.0), "trust_coefficient must be finite and > 0"),
        (dict(lr=0.1, eps=-1e-8), "eps must be finite and >= 0"),
        (dict(lr=0.1, trust_clip=0.0), "trust_clip must be finite and > 0"),
        (dict(lr=0.1, momentum=0.0, nesterov=True), "nesterov=True needs momentum > 0"),
        (dict(lr=0.1, larc=1), "larc must be a bool"),
        (dict(lr=0.1, foreach="yes"), "foreach must be a bool or None"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        LARS([nn.Parameter(torch.ones(2))], **kwargs)


# ------------------------------------------------------------------ LAMB's invariants


@pytest.mark.parametrize("foreach", [False, True])
def test_lamb_moves_each_layer_by_lr_of_its_norm(foreach):
    model = _model(dtype=f64)
    before = _params(model)
    opt = LAMB(model.parameters(), lr=0.02, weight_decay=1e-2, foreach=foreach)
    _train(model, opt, steps=1, dtype=f64)
    moved = 0
    for w0, w1 in zip(before, model.parameters(), strict=True):
        if w0.norm() == 0:
            continue  # BN's bias: ratio 1 by the guard
        assert float((w1.detach() - w0).norm() / w0.norm()) == pytest.approx(0.02, rel=1e-12)
        moved += 1
    assert moved == 5


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("how", ["group", "no-decay"])
def test_lamb_with_ratio_one_is_adamw(how, foreach):
    a, b = _model(dtype=f64), _model(dtype=f64)
    wd = 1e-2 if how == "group" else 0.0
    if how == "group":  # trust adaptation off for the whole group
        oa = LAMB(
            [{"params": a.parameters(), "trust_adaptation": False}], lr=1e-2, weight_decay=wd, eps=1e-8, foreach=foreach
        )
    else:  # the reference codes' "adapt only where decayed", with no decay
        oa = LAMB(a.parameters(), lr=1e-2, weight_decay=wd, eps=1e-8, always_adapt=False, foreach=foreach)
    ob = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=wd, eps=1e-8)
    _train(a, oa, steps=5, dtype=f64)
    _train(b, ob, steps=5, dtype=f64)
    # not bit for bit: torch scales sqrt(v) by 1/sqrt(1 - beta2^t), LAMB scales v first, and m / (sqrt(v) + eps)
    # amplifies that 1e-16 rounding where a gradient is ~eps; seen: 4e-11 at most on weights of size ~0.1-1
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-9, atol=1e-10)


def _paper_lamb(ws, grads_fn, steps, lr, b1, b2, eps, wd, bias_correction=True, phi_clip=None):
    """You et al. 2019, Algorithm 2, written out in float64 for a list of tensors."""
    ws = [w.clone() for w in ws]
    ms = [torch.zeros_like(w) for w in ws]
    vs = [torch.zeros_like(w) for w in ws]
    for t in range(1, steps + 1):
        gs = grads_fn(ws)
        for i, (w, g) in enumerate(zip(ws, gs, strict=True)):
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            m, v = (ms[i] / (1 - b1**t), vs[i] / (1 - b2**t)) if bias_correction else (ms[i], vs[i])
            u = m / (v.sqrt() + eps) + wd * w
            phi = w.norm() if phi_clip is None else min(w.norm(), torch.tensor(phi_clip, dtype=w.dtype))
            ws[i] = w - lr * phi / u.norm() * u
    return ws


@pytest.mark.parametrize("variant", [{}, {"bias_correction": False, "phi_clip": 0.5}])
@pytest.mark.parametrize("foreach", [False, True])
def test_lamb_matches_the_papers_algorithm(foreach, variant):
    gen = torch.Generator().manual_seed(4)
    A = torch.randn(5, 5, generator=gen, dtype=f64)
    w0 = [torch.randn(5, 5, generator=gen, dtype=f64), torch.randn(5, generator=gen, dtype=f64)]

    def loss(ws):
        return (A @ ws[0] @ ws[1]).tanh().square().sum() + ws[1].square().sum()

    want = _paper_lamb(w0, _grads_of(loss), 6, lr=0.05, b1=0.9, b2=0.99, eps=1e-6, wd=0.1, **variant)
    _check_against(
        want,
        loss,
        w0,
        lambda params: LAMB(params, lr=0.05, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1, foreach=foreach, **variant),
        steps=6,
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=0.0), "lr must be finite and > 0"),
        (dict(betas=(0.9,)), "betas must be a pair"),
        (dict(betas=(1.0, 0.999)), "betas must each be < 1"),
        (dict(betas=(0.9, -0.1)), r"betas\[1\] must be finite and >= 0"),
        (dict(eps=-1.0), "eps must be finite and >= 0"),
        (dict(weight_decay=-0.1), "weight_decay must be finite and >= 0"),
        (dict(phi_clip=0.0), "phi_clip must be finite and > 0"),
        (dict(bias_correction="no"), "bias_correction must be a bool"),
    ],
)
def test_lamb_bad_hyperparameters_raise(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        LAMB([nn.Parameter(torch.ones(2))], **kwargs)


# ------------------------------------------------------------------ LANS's invariants


def _paper_lans(ws, grads_fn, steps, lr, b1, b2, eps, wd):
    """SPECS.md's LANS (Zheng et al. 2020, Algorithm 2), written out in float64 for a list of tensors."""
    ws = [w.clone() for w in ws]
    ms = [torch.zeros_like(w) for w in ws]
    vs = [torch.zeros_like(w) for w in ws]
    for t in range(1, steps + 1):
        gs = grads_fn(ws)
        for i, (w, g) in enumerate(zip(ws, gs, strict=True)):
            g = g / g.norm()
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            denom = (vs[i] / (1 - b2**t)).sqrt() + eps
            r1 = w.norm()
            c_m = ms[i] / (1 - b1**t) / denom + wd * w
            w = w - lr * b1 * r1 / c_m.norm() * c_m
            c_g = g / denom + wd * w
            ws[i] = w - lr * (1 - b1) * r1 / c_g.norm() * c_g
    return ws


@pytest.mark.parametrize("foreach", [False, True])
def test_lans_matches_the_papers_algorithm(foreach):
    gen = torch.Generator().manual_seed(5)
    A = torch.randn(4, 6, generator=gen, dtype=f64)
    w0 = [torch.randn(6, 3, generator=gen, dtype=f64), torch.randn(3, generator=gen, dtype=f64)]

    def loss(ws):
        return (A @ ws[0] + ws[1]).sin().square().sum() + 0.1 * ws[0].square().sum()

    want = _paper_lans(w0, _grads_of(loss), 6, lr=0.05, b1=0.9, b2=0.99, eps=1e-6, wd=0.05)
    _check_against(
        want,
        loss,
        w0,
        lambda params: LANS(params, lr=0.05, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.05, foreach=foreach),
        steps=6,
    )


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("make", ["lans", "gradnorm-sgd"])
def test_steps_do_not_depend_on_the_losss_scale(make, foreach):
    def build(model):
        if make == "lans":
            return LANS(model.parameters(), lr=0.01, weight_decay=0.01, foreach=foreach)
        return GradientNormalization(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), foreach=foreach)

    runs = []
    for scale in (1.0, 1000.0):
        model = _model(dtype=f64)
        # the conv bias feeds BN, so its gradient is 0 up to rounding, and normalizing rounding noise gives a
        # direction that changes with the scale: freeze it, as one would (or build the conv without a bias)
        model[0].bias.requires_grad_(False)
        opt = build(model)
        x, y = _data(f64)
        for _ in range(4):
            opt.zero_grad()
            (scale * nn.functional.cross_entropy(model(x), y)).backward()
            opt.step()
        runs.append(_params(model))
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_lans_zero_gradient_stays_finite():
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = LANS([w], lr=0.1)
    w.grad = torch.zeros(2)
    opt.step()
    assert torch.isfinite(w).all()


@pytest.mark.parametrize("foreach", [False, True])
def test_normalized_gradients_have_the_scale_as_norm(foreach):
    grads = [g * 37.0 for g in _grads(f64)] + [torch.zeros(3, dtype=f64)]
    normalize_gradients_(grads, scale=0.5, foreach=foreach)
    for g in grads[:-1]:
        assert float(g.norm()) == pytest.approx(0.5, rel=1e-12)
    assert torch.equal(grads[-1], torch.zeros(3, dtype=f64))


# ------------------------------------------------------------------ gradient centralization


def _grads(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return [
        torch.randn(6, 3, 3, 3, generator=gen).to(dtype),  # conv2d weight
        torch.randn(5, 7, generator=gen).to(dtype),  # linear weight
        torch.randn(5, generator=gen).to(dtype),  # bias
        torch.randn(7, 4, generator=gen).to(dtype).t(),  # non-contiguous (a transposed view)
    ]


@pytest.mark.parametrize("foreach", [False, True])
def test_centralized_filters_sum_to_zero_and_vectors_stay(foreach):
    grads = _grads(f64)
    before = [g.clone() for g in grads]
    centralize_(grads, foreach=foreach)
    for g, g0 in zip(grads, before, strict=True):
        if g.dim() > 1:
            assert g.reshape(g.shape[0], -1).sum(dim=1).abs().max() < 1e-12
            torch.testing.assert_close(g, g0 - g0.reshape(g0.shape[0], -1).mean(1).reshape(-1, *[1] * (g0.dim() - 1)))
        else:
            assert torch.equal(g, g0)


def test_centralize_is_a_projection_and_foreach_agrees():
    for g in _grads(f64):
        once = centralize(g)
        torch.testing.assert_close(centralize(once), once, rtol=0, atol=1e-15)
    a, b = _grads(), _grads()
    centralize_(a, foreach=False)
    centralize_(b, foreach=True)
    for ga, gb in zip(a, b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-7)


def test_conv_only_leaves_linear_weights():
    grads = _grads()
    lin = grads[1].clone()
    centralize_(grads, conv_only=True)
    assert torch.equal(grads[1], lin)
    assert grads[0].reshape(6, -1).sum(1).abs().max() < 1e-5


def test_centralize_half_precision_keeps_dtype():
    g = torch.randn(4, 64).to(torch.bfloat16) + 3.0
    out = centralize(g)
    assert out.dtype == torch.bfloat16
    assert out.float().reshape(4, -1).mean(1).abs().max() < 0.05  # float32 accumulation, bf16 rounding only


@pytest.mark.parametrize("foreach", [False, True])
def test_gc_under_sgd_keeps_each_filter_sum(foreach):
    model = _model(dtype=f64)
    convs = [model[0].weight, model[4].weight]
    sums = [w.detach().reshape(w.shape[0], -1).sum(1).clone() for w in convs]
    opt = GradientCentralization(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), foreach=foreach)
    _train(model, opt, steps=5, dtype=f64)
    for w, s in zip(convs, sums, strict=True):
        torch.testing.assert_close(w.detach().reshape(w.shape[0], -1).sum(1), s, rtol=0, atol=1e-12)
    assert (model[0].weight.detach().reshape(4, -1).sum(1) - sums[0]).abs().max() < 1e-12


@pytest.mark.parametrize("wrapper", [GradientCentralization, GradientNormalization])
def test_gradient_wrappers_delegate_and_check(wrapper):
    model = _model()
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt = wrapper(inner)
    assert opt.param_groups is inner.param_groups and opt.state_dict().keys() == inner.state_dict().keys()
    _train(model, opt, steps=1)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(InvalidArgumentError, match=f"{wrapper.__name__} wraps a torch.optim.Optimizer, got generator"):
        wrapper(model.parameters())
    # a learning-rate scheduler drives the wrapped optimizer
    sched = torch.optim.lr_scheduler.StepLR(opt.optimizer, step_size=1, gamma=0.5)
    sched.step()
    assert inner.param_groups[0]["lr"] == pytest.approx(5e-4)


@pytest.mark.parametrize("wrap", [False, True])
def test_step_with_closure_returns_the_loss(wrap):
    model = _model()
    x, y = _data()
    opt = LARS(model.parameters(), lr=0.5)
    opt = GradientCentralization(opt) if wrap else opt

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    before = _params(model)
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("cls", [LARS, LAMB, LANS])
def test_sparse_gradient_is_refused_before_any_change(cls):
    # a dense group first, then a sparse one: the refusal comes before the dense group moves
    lin, emb = nn.Linear(3, 2), nn.Embedding(5, 3, sparse=True)
    before = [p.detach().clone() for p in (*lin.parameters(), emb.weight)]
    opt = cls([{"params": lin.parameters()}, {"params": emb.parameters()}], lr=0.1)
    lin(emb(torch.tensor([1, 2]))).sum().backward()
    with pytest.raises(RuntimeError, match=f"{cls.__name__} does not support sparse gradients"):
        opt.step()
    after = [p.detach() for p in (*lin.parameters(), emb.weight)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True)) and not opt.state


def test_gradient_normalization_rejects_a_bad_scale():
    with pytest.raises(InvalidArgumentError, match="scale must be finite and > 0, got 0"):
        GradientNormalization(torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1), scale=0)


# ------------------------------------------------------------------ SGD and AdamW with GC built in


def _paper_sgd_gc(ws, grads_fn, steps, lr, momentum, wd):
    """Yong et al.'s SGD_GC written out in float64: d = g + wd w, each filter minus its mean, momentum, w -= lr v."""
    ws, bufs = [w.clone() for w in ws], [None] * len(ws)
    for _ in range(steps):
        for i, (w, g) in enumerate(zip(ws, grads_fn(ws), strict=True)):
            d = g + wd * w
            if d.dim() > 1:
                d = d - d.reshape(d.shape[0], -1).mean(1).reshape(-1, *[1] * (d.dim() - 1))
            bufs[i] = d.clone() if bufs[i] is None else momentum * bufs[i] + d
            ws[i] = w - lr * bufs[i]
    return ws


@pytest.mark.parametrize("foreach", [False, True])
def test_centralized_sgd_matches_the_papers_sgd_gc(foreach):
    g = torch.Generator().manual_seed(3)
    w0 = [
        torch.randn(4, 2, 3, generator=g, dtype=f64),
        torch.randn(3, 5, generator=g, dtype=f64),
        torch.randn(4, dtype=f64),
    ]
    x = torch.randn(6, 5, generator=g, dtype=f64)

    def loss(ws):
        return (x @ ws[1].T).tanh().sum() * ws[0].square().sum() + ws[2].pow(3).sum()

    want = _paper_sgd_gc(w0, _grads_of(loss), 4, lr=0.05, momentum=0.9, wd=0.1)
    _check_against(
        want, loss, w0, lambda ps: CentralizedSGD(ps, lr=0.05, momentum=0.9, weight_decay=0.1, foreach=foreach), 4
    )


@pytest.mark.parametrize("foreach", [False, True])
def test_centralized_sgd_keeps_filter_sums_with_weight_decay_and_leaves_grads(foreach):
    model = _model(dtype=f64)
    weights = [model[0].weight, model[4].weight]
    sums = [w.detach().reshape(w.shape[0], -1).sum(1).clone() for w in weights]
    opt = CentralizedSGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05, foreach=foreach)
    x, y = _data(f64)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    for w, s in zip(weights, sums, strict=True):
        torch.testing.assert_close(w.detach().reshape(w.shape[0], -1).sum(1), s, rtol=0, atol=1e-12)
    # the wrapper adds the decay after centralizing: the filter sums shrink with it
    wrapped = _model(dtype=f64)
    _train(wrapped, GradientCentralization(torch.optim.SGD(wrapped.parameters(), lr=0.1, weight_decay=0.05)), 5, f64)
    assert (wrapped[4].weight.detach().sum(1) - sums[1]).abs().max() > 1e-4
    assert opt.param_groups[0]["weight_decay"] == 0.05 and opt.param_groups[0]["maximize"] is False


@pytest.mark.parametrize(
    "make, wrapped",
    [
        (lambda ps: CentralizedSGD(ps, lr=0.1, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
        (lambda ps: CentralizedAdamW(ps, lr=0.01), lambda ps: torch.optim.AdamW(ps, lr=0.01)),
    ],
)
def test_conveniences_equal_the_wrapper_where_the_orders_agree(make, wrapped):
    a, b = _model(), _model()
    _train(a, make(a.parameters()))
    _train(b, GradientCentralization(wrapped(b.parameters())))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    # and their state dicts are torch's
    opt = make(a.parameters())
    _train(a, opt, steps=1)
    twin = wrapped(b.parameters())
    twin.load_state_dict(opt.state_dict())


def test_conveniences_refuse_sparse_and_bad_options_without_change():
    lin, emb = nn.Linear(3, 2), nn.Embedding(5, 3, sparse=True)
    opt = CentralizedSGD([{"params": lin.parameters()}, {"params": emb.parameters()}], lr=0.1, weight_decay=0.1)
    before = [p.detach().clone() for p in (*lin.parameters(), emb.weight)]
    lin(emb(torch.tensor([1, 2]))).sum().backward()
    with pytest.raises(RuntimeError, match="CentralizedSGD does not support sparse gradients"):
        opt.step()
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, (*lin.parameters(), emb.weight), strict=True))
    assert opt.param_groups[0]["weight_decay"] == 0.1 and not opt.state
    for cls in (CentralizedSGD, CentralizedAdamW):
        with pytest.raises(InvalidArgumentError, match=f"{cls.__name__}: conv_only must be a bool, got str 'yes'"):
            cls(lin.parameters(), lr=0.1, conv_only="yes")
    with pytest.raises(ValueError, match="Invalid learning rate"):  # torch's own checks
        CentralizedSGD(lin.parameters(), lr=-1.0)
