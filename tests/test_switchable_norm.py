"""SwitchableNorm (Luo et al. 2019): components, reference, running statistics, gradients, tracing, errors."""

from __future__ import annotations

import copy
import doctest
import math
import pickle
import threading

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.testing import assert_close

import normlab
from normlab.functional import mixture as fmix
from normlab.nn import SwitchableNorm
from normlab.nn import mixture as nmix
from normtable import ErrorInput, NormInfo, make_input, reference_state
from normtable.mixture import INFOS, randomize_switchable, switchable_reference

# float64: same math in another order (pooled vs direct moments): a few ulps of O(1) numbers.
TOL64 = {"rtol": 1e-10, "atol": 1e-10}
# float32: roundoff over reductions of ~100 values; gradients go through one more reduction.
TOL32 = {"rtol": 1e-5, "atol": 1e-5}
TOL32_GRAD = {"rtol": 2e-5, "atol": 2e-5}

IN, LN, BN = 0, 1, 2
# A huge logit makes the softmax exactly one-hot in float64 (exp(-1000) underflows to 0).
HUGE = 1000.0

TORCH_BN = {3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
TORCH_IN = {3: nn.InstanceNorm1d, 4: nn.InstanceNorm2d, 5: nn.InstanceNorm3d}
SHAPES = {3: (6, 4, 7), 4: (5, 4, 3, 4), 5: (3, 4, 2, 3, 2)}


def _x(shape, seed=0, dtype=torch.float64):
    return make_input(shape, dtype, seed=seed)


@torch.no_grad()
def _one_hot(m: SwitchableNorm, mean_k: int, var_k: int | None = None) -> SwitchableNorm:
    """Logits that select one component for the mean and one for the variance."""
    for p, k in ((m.mean_weight, mean_k), (m.var_weight, mean_k if var_k is None else var_k)):
        p.zero_()
        p[k] = HUGE
    return m


@torch.no_grad()
def _affine(m: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen, dtype=torch.float64))
    m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=gen, dtype=torch.float64))
    return m


def _grads(y, tensors, seed=7):
    dy = _x(tuple(y.shape), seed).to(y.dtype)
    return torch.autograd.grad(y, tensors, dy)


def _state(m: nn.Module) -> dict:
    return {k: v.clone() for k, v in m.state_dict().items()}


def _assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------- components


@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_one_hot_bn_matches_torch_batchnorm_including_running_stats(rank, momentum):
    c = SHAPES[rank][1]
    sn = _one_hot(_affine(SwitchableNorm(c, momentum=momentum, dtype=torch.float64)), BN)
    bn = TORCH_BN[rank](c, momentum=momentum, dtype=torch.float64)
    bn.load_state_dict({k: v for k, v in sn.state_dict().items() if k not in ("mean_weight", "var_weight")})
    for step in range(3):
        x = _x(SHAPES[rank], seed=step).requires_grad_(True)
        y_sn, y_bn = sn(x), bn(x)
        assert_close(y_sn, y_bn, **TOL64)
        for g_sn, g_bn in zip(
            _grads(y_sn, [x, sn.weight, sn.bias]), _grads(y_bn, [x, bn.weight, bn.bias]), strict=True
        ):
            assert_close(g_sn, g_bn, **TOL64)
        assert_close(sn.running_mean, bn.running_mean, **TOL64)
        assert_close(sn.running_var, bn.running_var, **TOL64)
        assert int(sn.num_batches_tracked) == int(bn.num_batches_tracked) == step + 1
    x = _x(SHAPES[rank], seed=9)
    assert_close(sn.eval()(x), bn.eval()(x), **TOL64)


def test_running_stats_are_the_batch_bn_stats_whatever_the_mixture():
    """The running statistics track the BN component's batch moments, not the mixture."""
    c = 4
    sn = SwitchableNorm(c, dtype=torch.float64)
    randomize_switchable(sn, 3)
    bn = nn.BatchNorm2d(c, dtype=torch.float64)
    with torch.no_grad():
        bn.running_mean.copy_(sn.running_mean)
        bn.running_var.copy_(sn.running_var)
    for step in range(3):
        x = _x((5, c, 3, 4), seed=step)
        sn(x), bn(x)
    assert_close(sn.running_mean, bn.running_mean, **TOL64)
    assert_close(sn.running_var, bn.running_var, **TOL64)
    # and by the definition: running_var stores the unbiased variance of (N, *spatial)
    sn2 = SwitchableNorm(c, momentum=1.0, dtype=torch.float64)
    x = _x((5, c, 3, 4), seed=4)
    sn2(x)
    assert_close(sn2.running_mean, x.mean((0, 2, 3)), **TOL64)
    assert_close(sn2.running_var, x.var((0, 2, 3), correction=1), **TOL64)


@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("training", [True, False])
def test_one_hot_in_matches_torch_instance_norm(rank, training):
    c = SHAPES[rank][1]
    sn = _one_hot(_affine(SwitchableNorm(c, dtype=torch.float64)), IN)
    ref = TORCH_IN[rank](c, affine=True, dtype=torch.float64)
    ref.load_state_dict({"weight": sn.weight, "bias": sn.bias})
    sn.train(training), ref.train(training)
    x = _x(SHAPES[rank], seed=1).requires_grad_(True)
    y_sn, y_ref = sn(x), ref(x)
    assert_close(y_sn, y_ref, **TOL64)
    for a, b in zip(_grads(y_sn, [x, sn.weight, sn.bias]), _grads(y_ref, [x, ref.weight, ref.bias]), strict=True):
        assert_close(a, b, **TOL64)


@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("using_bn", [True, False])
def test_one_hot_ln_matches_torch_group_norm_1(rank, training, using_bn):
    c = SHAPES[rank][1]
    sn = _one_hot(_affine(SwitchableNorm(c, using_bn=using_bn, dtype=torch.float64)), LN)
    ref = nn.GroupNorm(1, c, dtype=torch.float64)
    ref.load_state_dict({"weight": sn.weight, "bias": sn.bias})
    sn.train(training)
    x = _x(SHAPES[rank], seed=2).requires_grad_(True)
    y_sn, y_ref = sn(x), ref(x)
    assert_close(y_sn, y_ref, **TOL64)
    for a, b in zip(_grads(y_sn, [x, sn.weight, sn.bias]), _grads(y_ref, [x, ref.weight, ref.bias]), strict=True):
        assert_close(a, b, **TOL64)


def test_uniform_init_is_the_equal_mixture():
    m = SwitchableNorm(4, dtype=torch.float64)
    assert torch.equal(m.mean_weight, torch.ones(3, dtype=torch.float64))
    assert torch.equal(m.var_weight, torch.ones(3, dtype=torch.float64))
    x = _x((3, 4, 2, 5))
    xf = x.reshape(3, 4, -1)
    means = [xf.mean(2, keepdim=True), xf.mean((1, 2), keepdim=True), xf.mean((0, 2), keepdim=True)]
    vars_ = [xf.var(d, keepdim=True, correction=0) for d in ((2,), (1, 2), (0, 2))]
    mu, var = sum(means) / 3, sum(vars_) / 3
    assert_close(m(x), ((xf - mu) / torch.sqrt(var + 1e-5)).reshape(x.shape), **TOL64)


# ------------------------------------------------- the independent reference


def _cases():
    for info in INFOS:
        for sample in info.samples:
            for training in info.modes():
                yield pytest.param(
                    info, sample, training, id=f"{info.id}-{sample.id}-{'train' if training else 'eval'}"
                )


def _check_reference(info: NormInfo, sample, training: bool, dtype, tol, grad_tol):
    module = info.build(torch.float64, seed=5).to(dtype).train(training)
    state = reference_state(module, requires_grad=True)
    inputs64 = sample.inputs(torch.float64, seed=3)
    x = inputs64[0].to(dtype).requires_grad_(True)
    y = module(x)
    assert y.dtype == dtype
    x64 = inputs64[0].clone().requires_grad_(True)
    want = info.references[0]((x64,), state, training, dtype)
    assert_close(y.to(torch.float64), want, **tol)
    params = [p for _, p in module.named_parameters()]
    names = [n for n, _ in module.named_parameters()]
    got = _grads(y, [x, *params])
    ref = _grads(want, [x64, *[state[n] for n in names]])
    for name, a, b in zip(["input", *names], got, ref, strict=True):
        assert_close(a.to(torch.float64), b, **grad_tol, msg=lambda m, n=name: f"grad of {n}: {m}")


@pytest.mark.parametrize(("info", "sample", "training"), list(_cases()))
def test_matches_independent_reference_float64(info, sample, training):
    _check_reference(info, sample, training, torch.float64, TOL64, TOL64)


@pytest.mark.parametrize(("info", "sample", "training"), list(_cases()))
def test_matches_independent_reference_float32(info, sample, training):
    _check_reference(info, sample, training, torch.float32, TOL32, TOL32_GRAD)


def test_reference_is_not_trivially_satisfied():
    """The reference discriminates: another mixture, eps or statistics source gives another output."""
    info = INFOS[0]
    m = info.build(torch.float64, seed=5)
    state = reference_state(m)
    x = info.samples[0].inputs(torch.float64, seed=3)[0]
    y = m(x)
    other = dict(state, mean_weight=state["mean_weight"].flip(0))
    assert (switchable_reference(x, other, True, 1e-5, True) - y).abs().max() > 1e-3
    assert (switchable_reference(x, state, False, 1e-5, True) - y).abs().max() > 1e-3
    assert (switchable_reference(x, state, True, 1e-5, False) - y).abs().max() > 1e-3


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kwargs", [{}, {"using_bn": False}, {"affine": False, "track_running_stats": False}])
def test_registry_oracle_equals_module(training, kwargs):
    entry = normlab.get_entry("switchablenorm")
    m = entry.build_example(**kwargs).double()
    randomize_switchable(m, 1)
    m.train(training)
    x = _x(entry.example_shapes[0], seed=4)
    assert_close(m(x), entry.oracle(m, x), **TOL64)


# --------------------------------------------------------- statistics source


def test_eval_uses_running_stats_for_the_bn_component_only():
    c = 4
    m = SwitchableNorm(c, dtype=torch.float64)
    randomize_switchable(m, 2)
    x = _x((6, c, 3, 3), seed=1)
    m.eval()
    before = _state(m)
    y = m(x)
    _assert_state_equal(before, _state(m))  # eval updates nothing
    # IN and LN stay per sample and BN comes from the buffers: each sample's output is its own.
    assert_close(m(x[:2]), y[:2], **TOL64)
    assert_close(m(x[3:4]), y[3:4], **TOL64)
    # in training the BN component couples the samples
    m.train()
    assert (m(x[:2]) - m(x)[:2]).abs().max() > 1e-3
    m.eval()
    # the running statistics matter only through the BN component
    with torch.no_grad():
        m.running_mean.add_(1.0)
        m.running_var.mul_(3.0)
    assert (m(x) - y).abs().max() > 1e-3
    _one_hot(m, IN, LN)
    y_in_ln = m(x)
    with torch.no_grad():
        m.running_mean.normal_()
        m.running_var.uniform_(0.1, 9.0)
    assert_close(m(x), y_in_ln, rtol=0, atol=0)


def test_eval_without_tracking_uses_batch_stats():
    m = SwitchableNorm(4, track_running_stats=False, dtype=torch.float64)
    randomize_switchable(m, 2)
    assert m.running_mean is None and m.num_batches_tracked is None
    x = _x((6, 4, 3, 3), seed=1)
    assert_close(m.eval()(x), m.train()(x), rtol=0, atol=0)


def test_using_bn_false_is_per_sample():
    m = SwitchableNorm(4, using_bn=False, dtype=torch.float64)
    randomize_switchable(m, 2)
    assert m.mean_weight.shape == m.var_weight.shape == (2,)
    assert m.running_mean is None and m.running_var is None and m.num_batches_tracked is None
    assert not m.track_running_stats
    assert set(m.state_dict()) == {"weight", "bias", "mean_weight", "var_weight"}
    x = _x((5, 4, 3, 2), seed=1)
    y = m(x)
    assert_close(m.eval()(x), y, rtol=0, atol=0)
    assert_close(m(x[:1]), y[:1], **TOL64)
    # one sample with one position is fine: nothing is a batch statistic
    assert m.train()(torch.randn(1, 4, 1, dtype=torch.float64)).shape == (1, 4, 1)


def test_cumulative_momentum_is_the_average_of_batch_stats():
    m = SwitchableNorm(3, momentum=None, dtype=torch.float64)
    xs = [_x((4, 3, 2, 3), seed=s) for s in range(4)]
    for x in xs:
        m(x)
    assert int(m.num_batches_tracked) == 4
    assert_close(m.running_mean, torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0), **TOL64)
    assert_close(m.running_var, torch.stack([x.var((0, 2, 3)) for x in xs]).mean(0), **TOL64)


def test_last_gamma_zero_initializes_weight():
    m = SwitchableNorm(4, last_gamma=True, dtype=torch.float64)
    assert torch.equal(m.weight, torch.zeros(4, dtype=torch.float64))
    with torch.no_grad():
        m.bias.copy_(torch.arange(4.0))
    y = m(_x((3, 4, 2, 2)))
    assert_close(y, torch.arange(4.0, dtype=torch.float64).view(1, 4, 1, 1).expand_as(y), rtol=0, atol=0)
    with torch.no_grad():
        m.weight.fill_(2.0)
        m.mean_weight.fill_(5.0)
    m.reset_parameters()
    assert torch.equal(m.weight, torch.zeros(4, dtype=torch.float64))
    assert torch.equal(m.mean_weight, torch.ones(3, dtype=torch.float64))
    assert "last_gamma=True" in repr(m)


# --------------------------------------------------------------- gradients


def test_gradients_reach_both_weight_vectors():
    m = SwitchableNorm(4, dtype=torch.float64)
    randomize_switchable(m, 4)
    x = _x((4, 4, 3, 3), seed=2)
    for training in (True, False):
        m.train(training)
        g_mean, g_var = _grads(m(x), [m.mean_weight, m.var_weight])
        for g in (g_mean, g_var):
            assert (g.abs() > 1e-6).all()
            # softmax is invariant to adding a constant to every logit: the gradients sum to 0
            assert abs(float(g.sum())) < 1e-10 * float(g.abs().sum())


def _functional(m: nn.Module):
    names = [n for n, _ in m.named_parameters()]
    buffers = dict(m.named_buffers())

    def f(x, *params):
        return functional_call(m, ({**dict(zip(names, params, strict=True)), **buffers},), (x,))

    return f, [p.detach().clone().requires_grad_(True) for _, p in m.named_parameters()]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kwargs", [{}, {"using_bn": False}])
def test_gradcheck_and_gradgradcheck(training, kwargs):
    m = SwitchableNorm(3, **kwargs, dtype=torch.float64)
    randomize_switchable(m, 6)
    m.train(training)
    f, params = _functional(m)
    x = _x((2, 3, 2, 3), seed=5).requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x, *params))
    assert torch.autograd.gradgradcheck(f, (x, *params))


def test_output_survives_an_in_place_op():
    m = SwitchableNorm(4)
    x = torch.randn(3, 4, 3, 3, requires_grad=True)
    y = m(x)
    torch.relu_(y)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


# ------------------------------------------------------ dtypes and layouts


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 4, 3, 4, 5)])
def test_keeps_channels_last(shape):
    m = SwitchableNorm(4, dtype=torch.float64)
    randomize_switchable(m, 1)
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    x = _x(shape, seed=1)
    xc = x.to(memory_format=fmt)
    y = m(xc)
    assert y.is_contiguous(memory_format=fmt)
    assert_close(y, copy.deepcopy(m)(x), **TOL64)


def test_bfloat16_input_has_float32_statistics():
    m = SwitchableNorm(4)
    randomize_switchable(m, 1)
    x = _x((4, 4, 6, 6), seed=2, dtype=torch.float32) + 8.0
    y = m(x.bfloat16())
    assert y.dtype == torch.bfloat16
    want = switchable_reference(x.bfloat16().double(), reference_state(m), True, 1e-5, True)
    # bfloat16 keeps 8 bits: one rounding of the O(1) output (2^-8 relative)
    assert_close(y.double(), want, rtol=1e-2, atol=2e-2)


def test_large_offset_float32_has_no_cancellation():
    """Pooled LN/BN variances stay accurate where the paper's E[var + mean^2] - mean^2 loses every digit."""
    gen = torch.Generator().manual_seed(0)
    x64 = 3e3 + torch.randn(4, 8, 16, 16, generator=gen, dtype=torch.float64)
    m = SwitchableNorm(8)
    randomize_switchable(m, 0)
    want = switchable_reference(x64, reference_state(m), True, 1e-5, True)
    got = m(x64.float()).double()
    err = (got - want).abs().max().item()
    # float32 input itself is rounded to ~2.4e-4 at 3e3: the output cannot be better than that.
    assert err < 2e-3
    # The raw formula in float32 (what this test guards against) is far off: the test can fail.
    xf = x64.float().reshape(4, 8, -1)
    mean_in, var_in = xf.mean(2), xf.var(2, correction=0)
    mean_ln = mean_in.mean(1)
    raw_var_ln = (var_in + mean_in.square()).mean(1) - mean_ln.square()
    true_var_ln = x64.reshape(4, -1).var(1, correction=0)
    assert (raw_var_ln.double() - true_var_ln).abs().max() > 0.05
    pooled_ln = fmix.instance_moments(x64.float()).pool(1).var.reshape(-1).double()
    assert (pooled_ln - true_var_ln).abs().max() < 1e-3


def test_invariant_to_scalar_shift_and_scale_of_the_input():
    """With eps=0 every component's (x - mu)/sigma is unchanged by x -> a x + b (a > 0)."""
    m = SwitchableNorm(4, eps=0.0, dtype=torch.float64)
    randomize_switchable(m, 3)
    x = _x((3, 4, 3, 3), seed=1)
    y = m(x)
    assert_close(m(2.5 * x - 7.0), y, rtol=1e-9, atol=1e-9)


# ------------------------------------------------- tracing, export, compile


def test_fx_symbolic_trace_is_one_node_and_matches():
    m = SwitchableNorm(4)
    randomize_switchable(m, 1)
    gm = torch.fx.symbolic_trace(m)
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert len(calls) == 1 and calls[0].target is nmix._switchable_norm
    ref = copy.deepcopy(m)
    x = torch.randn(3, 4, 2, 5)
    assert_close(gm(x), ref(x), rtol=0, atol=0)
    assert_close(gm.running_mean, ref.running_mean, rtol=0, atol=0)
    assert int(gm.num_batches_tracked) == 1


def test_torch_export_updates_buffers_like_eager():
    m = SwitchableNorm(4)
    randomize_switchable(m, 1)
    ref = copy.deepcopy(m)
    x = torch.randn(3, 4, 2, 5)
    exported = torch.export.export(copy.deepcopy(m), (x,)).module()
    assert_close(exported(x), ref(x), **TOL32)
    assert_close(exported.running_mean, ref.running_mean, **TOL32)
    assert_close(exported.running_var, ref.running_var, **TOL32)
    assert int(exported.num_batches_tracked) == 1


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("kwargs", [{}, {"momentum": None}, {"using_bn": False}])
def test_torch_compile_fullgraph_matches_eager(kwargs):
    torch._dynamo.reset()
    try:
        eager = SwitchableNorm(4, **kwargs)
        randomize_switchable(eager, 2)
        module = copy.deepcopy(eager)
        compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
        for seed in range(3):
            x = torch.randn(3, 4, 3, 3, generator=torch.Generator().manual_seed(seed))
            xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            ya, yb = compiled(xa), eager(xb)
            assert_close(ya, yb, **TOL32)
            for a, b in zip(_grads(ya, [xa, *module.parameters()]), _grads(yb, [xb, *eager.parameters()]), strict=True):
                assert_close(a, b, **TOL32_GRAD)
        for key, value in eager.state_dict().items():
            assert_close(module.state_dict()[key], value, **TOL32)
        module.eval(), eager.eval()
        with torch.no_grad():
            assert_close(compiled(x), eager(x), **TOL32)
    finally:
        torch._dynamo.reset()


# ------------------------------------------------------- state and errors


def test_state_dict_and_pickle_round_trip():
    m = SwitchableNorm(4)
    randomize_switchable(m, 1)
    m(torch.randn(3, 4, 2, 2))
    fresh = SwitchableNorm(4)
    fresh.load_state_dict(m.state_dict(), strict=True)
    clone = pickle.loads(pickle.dumps(m))
    x = torch.randn(2, 4, 3, 3)
    for other in (fresh, clone):
        _assert_state_equal(_state(other), _state(m))
        assert_close(other.eval()(x), m.eval()(x), rtol=0, atol=0)
    # a checkpoint without num_batches_tracked (version 1) still loads
    old = m.state_dict()
    del old["num_batches_tracked"]
    old._metadata[""]["version"] = 1
    loaded = SwitchableNorm(4)
    loaded.load_state_dict(old, strict=True)
    assert int(loaded.num_batches_tracked) == 0
    assert torch.equal(loaded.running_var, m.running_var)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(4, 6, 3, 3),  # wrong channel count
        lambda: torch.randn(4, 4),  # no spatial dim
        lambda: torch.randn(1, 4, 1, 1),  # one value per channel for the BN statistics
        lambda: torch.ones(2, 4, 3, 3, dtype=torch.long),  # not floating point
        lambda: [[1.0]],  # not a tensor
    ],
    ids=["channels", "rank", "one-value", "dtype", "not-a-tensor"],
)
def test_failed_forward_changes_no_state(make):
    m = SwitchableNorm(4)
    randomize_switchable(m, 1)
    m(torch.randn(3, 4, 2, 2))
    before = _state(m)
    with pytest.raises((ValueError, TypeError)):
        m(make())
    _assert_state_equal(before, _state(m))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_features": 0}, ValueError, r"num_features must be a positive int, got 0"),
        ({"num_features": 4.0}, TypeError, r"num_features must be an int, got the float 4.0; pass 4"),
        ({"num_features": "4"}, TypeError, r"num_features must be a positive int, got str"),
        ({"num_features": 4, "eps": -1e-5}, ValueError, r"eps must be a finite number >= 0"),
        ({"num_features": 4, "eps": math.nan}, ValueError, r"eps must be a finite number >= 0"),
        ({"num_features": 4, "momentum": 1.5}, ValueError, r"momentum must be in \[0, 1\].*Keras-style"),
        ({"num_features": 4, "momentum": "0.1"}, TypeError, r"momentum must be a float in \[0, 1\] or None"),
        ({"num_features": 4, "affine": False, "last_gamma": True}, ValueError, r"last_gamma=True.*affine=False"),
    ],
)
def test_constructor_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        SwitchableNorm(**kwargs)


def test_input_errors_name_expected_and_received():
    m = SwitchableNorm(4)
    with pytest.raises(ValueError, match=r"at least one spatial dim.*got 2D input of shape \(4, 4\).*BatchNorm1d"):
        m(torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"expected input with 4 channels at dim 1, got 6.*num_features=6"):
        m(torch.randn(2, 6, 3))
    with pytest.raises(ValueError, match=r"more than 1 value per channel .*BN component.*\(1, 4, 1, 1\)"):
        m(torch.randn(1, 4, 1, 1))
    with pytest.raises(TypeError, match=r"floating-point input.*torch.int64"):
        m(torch.ones(2, 4, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"expected input to be a torch.Tensor, got list"):
        m([[1.0]])
    # eval with running statistics needs no batch: one sample with one position works
    assert m.eval()(torch.randn(1, 4, 1, 1)).shape == (1, 4, 1, 1)


def test_functional_validation():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"mean_weight of shape \(3,\).*instance, layer, batch.*got \(2,\)"):
        fmix.switchable_norm(x, torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match=r"var_weight of shape \(2,\).*using_bn=False.*got \(3,\)"):
        fmix.switchable_norm(x, torch.ones(2), torch.ones(3), using_bn=False)
    with pytest.raises(ValueError, match=r"weight of shape \(3,\), got \(4,\)"):
        fmix.switchable_norm(x, torch.ones(3), torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match=r"running_var of shape \(3,\), got \(1, 3\)"):
        fmix.switchable_norm(x, torch.ones(3), torch.ones(3), running_mean=torch.zeros(3), running_var=torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"both running_mean and running_var"):
        fmix.switchable_norm(x, torch.ones(3), torch.ones(3), running_mean=torch.zeros(3))
    with pytest.raises(ValueError, match=r"using_bn=False"):
        fmix.switchable_norm(
            x, torch.ones(2), torch.ones(2), running_mean=torch.zeros(3), running_var=torch.ones(3), using_bn=False
        )


def _error_cases():
    for info in INFOS:
        for err in info.errors:
            yield pytest.param(info, err, id=f"{info.id}-{err.desc}")


@pytest.mark.parametrize(("info", "err"), list(_error_cases()))
def test_table_error_inputs(info: NormInfo, err: ErrorInput):
    with pytest.raises(err.error, match=err.match):
        m = normlab.create_norm(info.name, info.features, **{**info.kwargs, **(err.ctor or {})}).train(err.training)
        inputs = err.make(torch.float32, 0) if err.make else tuple(torch.randn(s) for s in (err.shapes or ()))
        if inputs:
            m(*inputs)


# ------------------------------------------------- synchronized statistics


class _FakeGroup:
    """``reduce`` hooks for ``world`` threads standing in for processes: each returns the sum over all."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world)
        self.slots: list = [None] * world

    def hook(self, rank: int):
        def reduce(t):
            self.slots[rank] = t
            self.barrier.wait()
            total = sum(self.slots[1:], self.slots[0])
            self.barrier.wait()  # everyone has read before the next collective overwrites the slots
            return total

        return reduce


def test_reduce_hook_synchronizes_the_bn_component():
    x = _x((6, 3, 4, 5), seed=3)
    logits = (torch.tensor([0.3, -0.2, 0.9], dtype=torch.float64), torch.tensor([-0.5, 0.4, 0.1], dtype=torch.float64))
    want, want_batch = fmix.switchable_norm(x, *logits)
    shards = [x[:2], x[2:]]  # unequal shards: 2 and 4 samples
    group = _FakeGroup(2)
    results: list = [None, None]

    def run(rank):
        results[rank] = fmix.switchable_norm(shards[rank], *logits, reduce=group.hook(rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None for r in results)
    assert_close(torch.cat([results[0][0], results[1][0]]), want, **TOL64)
    for _, batch in results:
        assert_close(batch.mean, want_batch.mean, **TOL64)
        assert_close(batch.var, want_batch.var, **TOL64)
        assert bool((batch.count == want_batch.count).all()) and want_batch.count == 6 * 20
        assert_close(batch.unbiased_var(), want_batch.unbiased_var(), **TOL64)
    # and one process through the hook is the same as no hook
    y1, b1 = fmix.switchable_norm(x, *logits, reduce=lambda t: t)
    assert_close(y1, want, **TOL64)
    assert_close(b1.var, want_batch.var, **TOL64)


# --------------------------------------------------------------- registry


def test_registry_entry():
    entry = normlab.get_entry("sn")
    assert entry is normlab.get_entry("switchnorm") is normlab.get_entry("switchablenorm")
    assert entry.cls is SwitchableNorm and entry.statistics == "batch" and entry.family == "mixture"
    assert entry.ranks == (4, 3, 5) and entry.example_shapes == ((8, 8, 12, 12),)
    assert "1806.10779" in entry.paper
    m = normlab.create_norm("sn:using_bn=false,eps=1e-3", 8)
    assert isinstance(m, SwitchableNorm) and not m.using_bn and m.eps == 1e-3
    assert normlab.registry.mode_dependent(normlab.create_norm("sn", 8))
    for rank in entry.ranks:
        shape = (2, 8) + (3,) * (rank - 2)
        assert entry.build_example()(torch.randn(shape)).shape == shape


def test_docstring_examples_run():
    for module in (nmix, fmix):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
        assert result.attempted > 0 and result.failed == 0, module.__name__
