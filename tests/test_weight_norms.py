"""Weight normalizations: generic tests over the weight-norm table (``weighttable.py``), then per-technique ones.

Generic: the effective weight vs an independent float64 reference for every
supported layer type (ConvTranspose's output axis at dim 1, grouped convs);
the layer's output vs the plain functional op with the reference weight;
float32/bfloat16; gradcheck and gradgradcheck (float64) w.r.t. the original
weight and the input; state_dict round trip; deepcopy; pickling (refused by
torch for parametrized modules); torch.compile; torch.fx; torch.export.
"""

from __future__ import annotations

import copy
import doctest
import pickle
import shutil

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.testing import assert_close

import normlab
from normlab.functional.checks import InvalidArgumentError
from normlab.nn import WeightStandardization, remove_weight_standardization, weight_standardization
from normlab.nn import weight as weight_module
from weighttable import CASES, filter_index_sets, plain_forward, randomize_filters, ws_reference

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def _x(shape, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5 + 0.3).to(dtype)


def _plain(case, seed=0, dtype=torch.float64):
    return randomize_filters(case.factory().to(torch.float64), seed).to(dtype)


def _build(case, seed=0, dtype=torch.float64):
    """(plain layer, the same layer weight-normalized by the registry); both hold the same original values."""
    plain = _plain(case, seed, dtype)
    module = normlab.apply_weight_norm(case.entry, copy.deepcopy(plain), **case.kwargs)
    return plain, module


def _original(module, case):
    return getattr(module.parametrizations, case.name).original


def _reference_weight(case, plain):
    return case.reference(getattr(plain, case.name).detach().to(torch.float64), plain, case.kwargs)


# ------------------------------------------------------------------ coverage


def test_every_registered_weight_norm_has_a_case():
    covered = {c.entry for c in CASES}
    missing = [n for n in normlab.WEIGHT_NORMS.names() if n not in covered]
    assert not missing, f"weight norms without a case in tests/weighttable.py: {missing}"
    unknown = covered - set(normlab.WEIGHT_NORMS.names())
    assert not unknown, f"cases name unregistered weight norms: {unknown}"


def test_every_applicable_module_type_has_a_case():
    for entry in normlab.WEIGHT_NORMS.entries():
        tested = {type(c.factory()) for c in CASES if c.entry == entry.name}
        assert set(entry.applies_to) <= tested, f"{entry.name}: no case for {set(entry.applies_to) - tested}"


# ------------------------------------------------------------------ generic tests over the table


@pytest.mark.parametrize("case", CASES, ids=str)
def test_weight_matches_reference(case):
    plain, module = _build(case)
    want = _reference_weight(case, plain)
    # the test can fail: the normalization moves the weight
    assert (want - plain.weight).abs().max() > 0.1
    got = getattr(module, case.name)
    assert got.dtype == torch.float64 and got.shape == plain.weight.shape
    assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_output_is_the_plain_op_with_the_reference_weight(case):
    plain, module = _build(case)
    x = _x(case.input_shape)
    want = plain_forward(plain, x, _reference_weight(case, plain))
    assert_close(module(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_low_precision(case, dtype):
    plain, module = _build(case, dtype=dtype)
    original = _original(module, case)
    assert original.dtype == dtype
    want = case.reference(original.detach().to(torch.float64), plain, case.kwargs)
    got = getattr(module, case.name)
    assert got.dtype == dtype
    if dtype == torch.float32:
        # statistics over <= 32 values and one division: a few float32 roundings
        assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    else:
        # statistics in float32, one rounding to bfloat16 at the end: within 1 bfloat16 ulp of the exact value
        ulp = torch.finfo(torch.bfloat16).eps * want.abs().clamp_min(2**-126).log2().floor().exp2()
        assert ((got.double() - want).abs() <= ulp).all()
    y = module(_x(case.input_shape, dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()


def _as_function(module, case):
    key = f"parametrizations.{case.name}.original"

    def f(original, x):
        return torch.func.functional_call(module, {key: original}, (x,))

    return f


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradcheck(case):
    _, module = _build(case)
    w = _original(module, case).detach().clone().requires_grad_(True)
    x = _x(case.input_shape).requires_grad_(True)
    assert torch.autograd.gradcheck(_as_function(module, case), (w, x))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradgradcheck(case):
    if not case.double_backward:
        pytest.skip("no double backward")
    _, module = _build(case)
    w = _original(module, case).detach().clone().requires_grad_(True)
    x = _x(case.input_shape).requires_grad_(True)
    assert torch.autograd.gradgradcheck(_as_function(module, case), (w, x))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_training_step_updates_the_original(case):
    _, module = _build(case)
    before = _original(module, case).detach().clone()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    module(_x(case.input_shape)).square().mean().backward()
    grads = {n: p.grad for n, p in module.named_parameters()}
    assert set(grads) >= set(case.original_keys)
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    opt.step()
    assert not torch.equal(_original(module, case), before)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_state_dict_round_trip(case):
    _, module = _build(case, seed=0)
    keys = set(module.state_dict())
    assert set(case.original_keys) <= keys and case.name not in keys
    _, other = _build(case, seed=5)  # other values, same structure
    x = _x(case.input_shape)
    assert not torch.allclose(other(x), module(x))
    other.load_state_dict(module.state_dict(), strict=True)
    assert_close(other(x), module(x), rtol=0, atol=0)
    assert_close(getattr(other, case.name), getattr(module, case.name), rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_deepcopy_is_independent(case):
    _, module = _build(case)
    twin = copy.deepcopy(module)
    x = _x(case.input_shape)
    assert_close(twin(x), module(x), rtol=0, atol=0)
    with torch.no_grad():  # not a per-filter affine change (WS is invariant to those)
        _original(twin, case).add_(_x(_original(twin, case).shape, seed=7))
    assert not torch.allclose(twin(x), module(x))
    assert type(twin.parametrizations[case.name][0]) is type(module.parametrizations[case.name][0])


@pytest.mark.parametrize("case", CASES, ids=str)
def test_pickle(case):
    _, module = _build(case)
    if case.pickles:
        x = _x(case.input_shape)
        assert_close(pickle.loads(pickle.dumps(module))(x), module(x), rtol=0, atol=0)
    else:
        # torch refuses to pickle parametrized modules; state_dict is the road (test_state_dict_round_trip)
        with pytest.raises(RuntimeError, match="only supported through state_dict"):
            pickle.dumps(module)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_fx_symbolic_trace(case):
    plain, module = _build(case)
    x = _x(case.input_shape)
    try:
        torch.fx.symbolic_trace(plain)
        roots = (module, nn.Sequential(module, nn.ReLU()))
    except torch.fx.proxy.TraceError:
        # torch's ConvTranspose forward branches on its input (_output_padding): not traceable as the
        # root, with or without a weight norm; as a submodule it is a leaf and traces
        with pytest.raises(torch.fx.proxy.TraceError):
            torch.fx.symbolic_trace(module)
        roots = (nn.Sequential(module, nn.ReLU()),)
    for root in roots:
        traced = torch.fx.symbolic_trace(root)
        assert_close(traced(x), root(x), rtol=0, atol=0)


@pytest.mark.parametrize("case", [c for c in CASES if c.representative], ids=str)
def test_export(case):
    _, module = _build(case, dtype=torch.float32)
    x = _x(case.input_shape, torch.float32)
    exported = torch.export.export(module, (x,))
    assert_close(exported.module()(x), module(x), rtol=1e-6, atol=1e-6)


def _compiled_matches_eager(case, backend):
    torch._dynamo.reset()
    try:
        _, eager = _build(case, dtype=torch.float32)
        compiled_module = copy.deepcopy(eager)
        compiled = torch.compile(compiled_module, backend=backend, fullgraph=True)
        for seed in (1, 2):
            results = []
            for m, fn in ((eager, eager), (compiled_module, compiled)):
                x = _x(case.input_shape, torch.float32, seed).requires_grad_(True)
                y = fn(x)
                grads = torch.autograd.grad(y, [x, *m.parameters()], torch.ones_like(y))
                results.append((y.detach(), *grads))
            for a, b in zip(*results, strict=True):
                assert_close(a, b, rtol=1e-5, atol=1e-5)
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("case", [c for c in CASES if c.representative], ids=str)
def test_compile_fullgraph_aot_eager(case):
    _compiled_matches_eager(case, "aot_eager")


@pytest.mark.skipif(
    not any(shutil.which(cc) for cc in ("gcc", "cc", "clang")), reason="inductor's CPU backend needs a C compiler"
)
def test_compile_inductor():
    _compiled_matches_eager(next(c for c in CASES if c.representative), "inductor")


# ------------------------------------------------------------------ weight standardization: properties


def _ws_conv(eps=1e-5, correction=1, seed=0, shape=(5, 3, 3, 3)):
    conv = nn.Conv2d(shape[1], shape[0], shape[2:]).double()
    randomize_filters(conv, seed)
    return weight_standardization(conv, eps=eps, correction=correction)


@pytest.mark.parametrize("correction", [0, 1])
@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.3])
def test_ws_filters_have_mean_zero_and_the_exact_std(eps, correction):
    conv = _ws_conv(eps, correction)
    w = conv.parametrizations.weight.original.detach().flatten(1)
    w_hat = conv.weight.detach().flatten(1)
    s = w.std(dim=1, correction=correction)
    assert_close(w_hat.mean(dim=1), torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-14)
    # std_c(W_hat) = s / (s + eps) exactly (1 for eps = 0)
    assert_close(w_hat.std(dim=1, correction=correction), s / (s + eps), rtol=1e-13, atol=0)


@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.3])
def test_ws_invariance_to_positive_per_filter_affine(eps):
    conv = _ws_conv(eps)
    w = conv.parametrizations.weight.original.detach().clone()
    before = conv.weight.detach().clone()
    a = torch.tensor([0.5, 2.0, 3.0, 0.1, 7.0], dtype=torch.float64).view(-1, 1, 1, 1)
    b = torch.tensor([1.0, -2.0, 0.0, 5.0, 0.3], dtype=torch.float64).view(-1, 1, 1, 1)
    with torch.no_grad():
        conv.parametrizations.weight.original.copy_(a * w + b)
    after = conv.weight.detach()
    if eps == 0.0:
        assert_close(after, before, rtol=1e-13, atol=1e-13)
    else:
        # (aW + b - mean) / (a s + eps) = (W - mean) / (s + eps / a): exact, and not the unscaled result
        f = w.flatten(1)
        mu, s = f.mean(dim=1, keepdim=True), f.std(dim=1, keepdim=True)
        want = ((f - mu) / (s + eps / a.flatten(1))).view_as(w)
        assert_close(after, want, rtol=1e-13, atol=1e-13)
        assert (after - before).abs().max() > 1e-8
    # a negative scale flips the sign
    with torch.no_grad():
        conv.parametrizations.weight.original.copy_(-w)
    assert_close(conv.weight, -before, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_ws_gradient_is_orthogonal_to_filter_shift_and_scale(eps):
    # L(WS(W)) is invariant to W_i -> W_i + b (any eps), and to W_i -> a W_i when eps = 0, so the
    # gradient w.r.t. the original sums to 0 per filter and, for eps = 0, is orthogonal to W_i - mean.
    conv = _ws_conv(eps)
    x = _x((2, 3, 6, 6))
    conv(x).sin().sum().backward()
    g = conv.parametrizations.weight.original.grad.flatten(1)
    w = conv.parametrizations.weight.original.detach().flatten(1)
    scale = g.abs().sum(dim=1)
    assert (scale > 1e-3).all()
    assert_close(g.sum(dim=1) / scale, torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-13)
    along = (g * (w - w.mean(dim=1, keepdim=True))).sum(dim=1) / scale
    if eps == 0.0:
        assert_close(along, torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-13)
    else:
        assert along.abs().max() > 1e-6


def test_ws_constant_filter_gives_zero_and_the_exact_finite_gradient():
    eps = 1e-3
    conv = weight_standardization(nn.Conv2d(3, 2, 2).double(), eps=eps)
    with torch.no_grad():
        conv.parametrizations.weight.original[0].fill_(0.0)  # zero-initialized filter
        conv.parametrizations.weight.original[1].fill_(0.7)  # any constant
    assert torch.equal(conv.weight, torch.zeros_like(conv.weight))
    gen = torch.Generator().manual_seed(3)
    upstream = torch.randn(conv.weight.shape, generator=gen, dtype=torch.float64)
    (conv.weight * upstream).sum().backward()
    got = conv.parametrizations.weight.original.grad
    assert torch.isfinite(got).all()
    # d/dt WS(c + t d) at t = 0 is (d - mean d) / eps: the gradient is (G - mean G) / eps per filter
    g = upstream.flatten(1)
    assert_close(got.flatten(1), (g - g.mean(dim=1, keepdim=True)) / eps, rtol=1e-12, atol=1e-12)
    # ... which the one-sided difference quotient confirms, in the original's own terms
    w0 = conv.parametrizations.weight.original.detach().clone()
    d = torch.randn(w0.shape, generator=gen, dtype=torch.float64)
    t = 1e-9
    quotient = (ws_reference(w0 + t * d, nn.Conv2d(3, 2, 2), {"eps": eps}) * upstream).sum() / t
    assert_close((got * d).sum(), quotient, rtol=1e-5, atol=1e-8)


def test_ws_with_eps_zero_on_a_constant_filter_is_nan():
    # documented: 0 / 0 (eps=0 is for exact property tests)
    conv = weight_standardization(nn.Linear(4, 2).double(), eps=0.0)
    with torch.no_grad():
        conv.parametrizations.weight.original[0].fill_(1.0)
    assert torch.isnan(conv.weight[0]).all() and torch.isfinite(conv.weight[1]).all()


def test_convtranspose_filters_are_the_fan_in_of_each_output():
    # The layout claim behind the reference, checked from the op itself: output channel o of a grouped
    # ConvTranspose2d depends on exactly the weight entries filter_index_sets gives for o.
    m = nn.ConvTranspose2d(4, 6, 2, groups=2).double()
    x = _x((1, 4, 2, 2))
    w = m.weight.detach().clone().requires_grad_(True)
    y = plain_forward(m, x, w)
    for o, idx in enumerate(filter_index_sets(w, m)):
        (g,) = torch.autograd.grad(y[:, o].sum(), w, retain_graph=True)
        mask = torch.zeros_like(w, dtype=torch.bool)
        mask[idx] = True
        assert (g[~mask] == 0).all() and (g[mask] != 0).all()


def test_ws_keeps_a_channels_last_weight():
    conv = nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    weight_standardization(conv)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 6, 6).to(memory_format=torch.channels_last)
    assert conv(x).is_contiguous(memory_format=torch.channels_last)


def test_ws_parametrization_traces_as_one_node():
    # standardize_weight is torch.fx.wrap'ed: its validation stays out of the graph
    traced = torch.fx.symbolic_trace(WeightStandardization(eps=1e-3))
    targets = [n.target for n in traced.graph.nodes if n.op == "call_function"]
    assert targets == [weight_module.standardize_weight]
    w = _x((4, 3, 2, 2))
    assert_close(traced(w), ws_reference(w, nn.Conv2d(3, 4, 2), {"eps": 1e-3}), rtol=1e-12, atol=1e-12)


def test_ws_cached_computes_once():
    conv = _ws_conv()
    with parametrize.cached():
        assert conv.weight is conv.weight
    assert conv.weight is not conv.weight


def test_ws_assignment_stores_the_original():
    conv = _ws_conv()
    new = _x((5, 3, 3, 3), seed=9)
    conv.weight = new  # right_inverse is the identity
    assert torch.equal(conv.parametrizations.weight.original, new)
    assert_close(conv.weight, ws_reference(new, nn.Conv2d(3, 5, 3), {}), rtol=1e-12, atol=1e-12)


def test_ws_stacks_on_weight_norm():
    lin = nn.utils.parametrizations.weight_norm(nn.Linear(5, 3).double())
    effective = lin.weight.detach().clone()
    weight_standardization(lin)
    assert [type(p).__name__ for p in lin.parametrizations.weight] == ["_WeightNorm", "WeightStandardization"]
    assert_close(lin.weight, ws_reference(effective, lin, {}), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="stacked parametrizations"):
        remove_weight_standardization(lin)


@pytest.mark.parametrize("leave", [True, False])
def test_ws_remove(leave):
    conv = _ws_conv()
    standardized = conv.weight.detach().clone()
    original = conv.parametrizations.weight.original.detach().clone()
    assert remove_weight_standardization(conv, leave_parametrized=leave) is conv
    assert not parametrize.is_parametrized(conv)
    assert isinstance(conv.weight, nn.Parameter)
    assert torch.equal(conv.weight, standardized if leave else original)
    assert set(conv.state_dict()) == {"weight", "bias"}
    with pytest.raises(ValueError, match="no weight standardization"):
        remove_weight_standardization(conv)


def test_ws_loads_a_plain_checkpoint_as_documented():
    plain = randomize_filters(nn.Conv2d(3, 4, 3).double())
    state = plain.state_dict()
    conv = weight_standardization(nn.Conv2d(3, 4, 3).double())
    with pytest.raises(RuntimeError, match="parametrizations.weight.original"):
        conv.load_state_dict(state, strict=True)
    renamed = {("parametrizations.weight.original" if k == "weight" else k): v for k, v in state.items()}
    conv.load_state_dict(renamed, strict=True)
    assert torch.equal(conv.parametrizations.weight.original, plain.weight)
    # or: load into the plain layer first, then standardize
    first = nn.Conv2d(3, 4, 3).double()
    first.load_state_dict(state, strict=True)
    assert torch.equal(weight_standardization(first).weight, conv.weight)


def test_ws_accepts_subclasses():
    # e.g. MultiheadAttention's out_proj
    lin = nn.modules.linear.NonDynamicallyQuantizableLinear(4, 3)
    assert weight_standardization(lin) is lin and parametrize.is_parametrized(lin, "weight")


def test_ws_registry_entry_and_specs():
    entry = normlab.WEIGHT_NORMS.resolve("ws")
    assert entry.name == "weight_standardization" and entry.apply is weight_standardization
    assert entry.parametrization is WeightStandardization
    assert entry.applies_to == weight_module.SUPPORTED_MODULES
    assert "arXiv:1903.10520" in entry.paper
    for spec, want in (
        ("ws", (1e-5, 1)),
        ("weight_standardization", (1e-5, 1)),
        ("ws:1e-6", (1e-6, 1)),
        ("ws:eps=1e-6", (1e-6, 1)),
        ("WS:eps=0.001,correction=0", (1e-3, 0)),
    ):
        conv = normlab.apply_weight_norm(spec, nn.Conv2d(3, 4, 3))
        p = conv.parametrizations.weight[0]
        assert (p.eps, p.correction, p.dim) == (*want, 0), spec
    assert normlab.apply_weight_norm("ws", nn.ConvTranspose1d(3, 4, 2)).parametrizations.weight[0].dim == 1
    # keyword arguments win over the spec
    conv = normlab.apply_weight_norm("ws:eps=1e-6", nn.Conv2d(3, 4, 3), eps=0.1)
    assert conv.parametrizations.weight[0].eps == 0.1


def test_ws_docstring_examples_run():
    result = doctest.testmod(weight_module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted >= 10 and result.failed == 0


# ------------------------------------------------------------------ weight standardization: errors

WS_ERRORS = [
    # (description, module factory, kwargs, error type, message regex)
    ("not-a-module", lambda: torch.randn(3, 3), {}, TypeError, "expected an nn.Module"),
    ("batchnorm", lambda: nn.BatchNorm2d(3), {}, TypeError, r"applies to nn\.Linear, nn\.Conv1d.*got BatchNorm2d"),
    ("bilinear", lambda: nn.Bilinear(3, 3, 2), {}, TypeError, "got Bilinear"),
    ("missing-name", lambda: nn.Conv2d(3, 4, 3), {"name": "kernel"}, TypeError, r"must be a Parameter, got missing"),
    ("name-not-str", lambda: nn.Conv2d(3, 4, 3), {"name": 0}, TypeError, "name must be a str"),
    ("bias-none", lambda: nn.Conv2d(3, 4, 3, bias=False), {"name": "bias"}, TypeError, "got a NoneType"),
    ("bias-1d", lambda: nn.Conv2d(3, 4, 3), {"name": "bias"}, ValueError, r"at least 2 dims.*\(4,\)"),
    ("fan-in-1-linear", lambda: nn.Linear(1, 4), {}, ValueError, "fan-in of 1"),
    ("fan-in-1-depthwise", lambda: nn.Conv2d(4, 4, 1, groups=4), {}, ValueError, "fan-in of 1"),
    ("fan-in-1-convT", lambda: nn.ConvTranspose2d(2, 4, 1, groups=2), {}, ValueError, "fan-in of 1"),
    ("eps-negative", lambda: nn.Conv2d(3, 4, 3), {"eps": -1e-5}, InvalidArgumentError, r"finite number >= 0.*-1e-05"),
    ("eps-nan", lambda: nn.Conv2d(3, 4, 3), {"eps": float("nan")}, InvalidArgumentError, "finite number"),
    ("eps-inf", lambda: nn.Conv2d(3, 4, 3), {"eps": float("inf")}, InvalidArgumentError, "finite number"),
    ("eps-str", lambda: nn.Conv2d(3, 4, 3), {"eps": "1e-5"}, InvalidArgumentError, "eps must be a number, got str"),
    ("eps-bool", lambda: nn.Conv2d(3, 4, 3), {"eps": True}, InvalidArgumentError, "eps must be a number, got bool"),
    ("correction-neg", lambda: nn.Conv2d(3, 4, 3), {"correction": -1}, InvalidArgumentError, "correction must be"),
    ("correction-float", lambda: nn.Conv2d(3, 4, 3), {"correction": 1.0}, InvalidArgumentError, "got float"),
    ("correction-too-big", lambda: nn.Linear(2, 3), {"correction": 2}, ValueError, "correction=2 needs a fan-in"),
    ("lazy", lambda: nn.LazyConv2d(4, 3), {}, ValueError, "not materialized yet"),
    ("unknown-kwarg", lambda: nn.Conv2d(3, 4, 3), {"dim": 1}, TypeError, "unexpected keyword"),
]


@pytest.mark.parametrize("desc,factory,kwargs,error,match", WS_ERRORS, ids=[e[0] for e in WS_ERRORS])
def test_ws_errors_and_a_failed_call_changes_nothing(desc, factory, kwargs, error, match):
    module = factory()
    is_module = isinstance(module, nn.Module)
    comparable = is_module and not isinstance(module, nn.modules.lazy.LazyModuleMixin)
    state = copy.deepcopy(module.state_dict()) if comparable else None
    with pytest.raises(error, match=match):
        weight_standardization(module, **kwargs)
    if is_module:
        assert not parametrize.is_parametrized(module)
    if comparable:
        after = module.state_dict()
        assert set(after) == set(state) and all(torch.equal(after[k], state[k]) for k in state)


def test_ws_twice_is_an_error_and_keeps_the_first():
    conv = weight_standardization(nn.Conv2d(3, 4, 3), eps=1e-3)
    with pytest.raises(ValueError, match="already weight-standardized"):
        weight_standardization(conv, eps=1e-6)
    assert len(conv.parametrizations.weight) == 1 and conv.parametrizations.weight[0].eps == 1e-3


def test_ws_spec_errors():
    with pytest.raises(InvalidArgumentError, match="eps must be"):
        normlab.apply_weight_norm("ws:eps=-1", nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="unknown weight normalization"):
        normlab.apply_weight_norm("wss", nn.Conv2d(3, 4, 3))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"eps": -1.0}, "eps must be"),
        ({"correction": 0.5}, "correction must be"),
        ({"dim": -1}, "dim"),
        ({"groups": 0}, "groups must be"),
        ({"groups": 2}, "already in the weight's layout"),
    ],
)
def test_ws_parametrization_arguments(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        WeightStandardization(**kwargs)


@pytest.mark.parametrize(
    "weight,kwargs,error,match",
    [
        (torch.randn(4), {}, ValueError, "at least 2 dims"),
        (torch.randn(4, 3), {"dim": 2}, ValueError, "out of range"),
        (torch.randn(5, 3, 2), {"dim": 1, "groups": 2}, ValueError, "split into groups=2"),
        (torch.randint(0, 3, (4, 3)), {}, TypeError, "floating-point"),
    ],
)
def test_ws_parametrization_rejects_bad_weights(weight, kwargs, error, match):
    with pytest.raises(error, match=match):
        WeightStandardization(**kwargs)(weight)
