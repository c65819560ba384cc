"""GhostBatchNorm (Hoffer, Hubara & Soudry 2017): properties from the math, torch's BatchNorm as the yardstick.

- virtual_batch_size >= N is BatchNorm (outputs, gradients, running stats, eval);
- ghost batch k's output (and its gradient) is BatchNorm on ghost batch k alone;
- the running statistics are BatchNorm's on the whole batch, whatever the split;
- checkpoints load strictly both ways; gradcheck/gradgradcheck in float64;
- fx.symbolic_trace, torch.export and torch.compile give the eager numbers and state;
- errors teach, and a failed forward changes no state.
"""

from __future__ import annotations

import copy
import doctest
import pickle
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import normlab
import normlab.functional.batch_variants as FB
import normlab.nn.batch_variants as NB
from normlab.functional.batch_variants import ghost_batch_norm, ghost_batch_sizes, ghost_moments
from normlab.nn import GhostBatchNorm
from normtable import make_input, randomize
from normtable.batch_variants import INFOS, ghost_batch_norm_reference

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

TOL64 = {"rtol": 1e-12, "atol": 1e-12}
BN_CLASS = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
SHAPES = {2: (12, 5), 3: (9, 5, 4), 4: (10, 5, 3, 4), 5: (6, 5, 2, 3, 2)}


def _pair(shape, vbs, dtype=torch.float64, **kwargs):
    """A GhostBatchNorm with random parameters and torch's BatchNorm holding the same state."""
    gbn = GhostBatchNorm(shape[1], vbs, **kwargs)
    randomize(gbn, seed=3)
    gbn = gbn.to(dtype)
    bn = BN_CLASS[len(shape)](shape[1], **kwargs).to(dtype)
    bn.load_state_dict(gbn.state_dict(), strict=True)
    return gbn, bn


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _assert_same_state(a, b, **tol):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert_close(sa[k], sb[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


# ------------------------------------------------------- BatchNorm as yardstick


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("extra", [0, 7])  # virtual_batch_size == N and > N
@pytest.mark.parametrize("momentum", [0.1, None])
def test_equals_batchnorm_when_ghost_batch_covers_the_batch(rank, extra, momentum):
    shape = SHAPES[rank]
    gbn, bn = _pair(shape, shape[0] + extra, momentum=momentum)
    for step in range(3):
        x = make_input(shape, seed=step)
        dy = make_input(shape, seed=10 + step, shift=0.0)
        xg, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        yg, yb = gbn(xg), bn(xb)
        assert_close(yg, yb, **TOL64)
        gg = torch.autograd.grad(yg, [xg, gbn.weight, gbn.bias], dy)
        gb = torch.autograd.grad(yb, [xb, bn.weight, bn.bias], dy)
        for a, b in zip(gg, gb, strict=True):
            assert_close(a, b, **TOL64)
    _assert_same_state(gbn, bn, **TOL64)
    assert int(gbn.num_batches_tracked) == 3
    gbn.eval(), bn.eval()
    x = make_input(shape, seed=99)
    assert_close(gbn(x), bn(x), **TOL64)


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("vbs", [2, 3, 4])
def test_each_ghost_batch_is_batchnorm_on_it_alone(rank, vbs):
    shape = SHAPES[rank]
    gbn, _ = _pair(shape, vbs)
    x = make_input(shape, seed=1).requires_grad_()
    dy = make_input(shape, seed=2, shift=0.0)
    y = gbn(x)
    (gx,) = torch.autograd.grad(y, x, dy)
    start = 0
    for size in ghost_batch_sizes(shape[0], vbs):
        xk = x.detach()[start : start + size].clone().requires_grad_()
        yk = F.batch_norm(xk, None, None, gbn.weight, gbn.bias, True, 0.0, gbn.eps)
        assert_close(y[start : start + size], yk, **TOL64)
        # The gradient of ghost batch k's input sees only ghost batch k's output.
        (gk,) = torch.autograd.grad(yk, xk, dy[start : start + size])
        assert_close(gx[start : start + size], gk, **TOL64)
        start += size
    assert start == shape[0]


@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (10, 4, 3, 3), (13, 4, 2, 2)], ids=["even", "uneven", "uneven-1"])
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_running_stats_are_batchnorms_on_the_whole_batch(shape, momentum):
    """One update per step with the pooled whole-batch moments: torch's BatchNorm2d running stats exactly."""
    gbn, bn = _pair(shape, 4, momentum=momentum)
    for step in range(4):
        x = make_input(shape, seed=20 + step) * (1 + step)
        gbn(x), bn(x)
    _assert_same_state(gbn, bn, **TOL64)
    assert int(gbn.num_batches_tracked) == 4


def test_running_stats_are_not_k_updates_per_step():
    """The documented choice: one update (momentum m), not one per ghost batch (effective 1 - (1 - m)^K)."""
    x = make_input((16, 2, 3, 3), seed=5)
    gbn = GhostBatchNorm(2, 4, momentum=0.1).double()
    gbn(x)
    batch_mean = x.mean((0, 2, 3))
    assert_close(gbn.running_mean, 0.1 * batch_mean, **TOL64)


def test_cumulative_average_is_the_mean_of_the_batch_means():
    gbn = GhostBatchNorm(3, 2, momentum=None).double()
    xs = [make_input((6, 3, 2, 2), seed=s) + s for s in range(3)]
    for x in xs:
        gbn(x)
    assert_close(gbn.running_mean, torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0), **TOL64)
    want_var = torch.stack([x.var((0, 2, 3), unbiased=True) for x in xs]).mean(0)
    assert_close(gbn.running_var, want_var, **TOL64)


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("shape", [(8, 3, 4, 4), (10, 3, 4, 4), (11, 3, 5)])
def test_every_ghost_batch_has_mean_zero_and_variance_one(shape):
    gbn = GhostBatchNorm(shape[1], 4, eps=0.0, affine=False).double()
    y = gbn(make_input(shape, seed=4) * 3 + 1)
    dims = (0, *range(2, len(shape)))
    for yk in y.split(4):
        assert_close(yk.mean(dims), torch.zeros(shape[1], dtype=torch.float64), atol=1e-12, rtol=0)
        assert_close(yk.var(dims, unbiased=False), torch.ones(shape[1], dtype=torch.float64), **TOL64)


def test_each_ghost_batch_is_invariant_to_its_own_affine_transform():
    """BN's invariance, per ghost batch: rescale/shift one ghost batch's input, only nothing changes."""
    x = make_input((12, 3, 3, 3), seed=6)
    gbn = GhostBatchNorm(3, 4, eps=0.0).double()
    x2 = x.clone()
    x2[4:8] = x2[4:8] * torch.tensor([2.0, 0.5, 7.0], dtype=torch.float64).view(1, 3, 1, 1) - 3.0
    assert_close(gbn(x2), gbn(x), **TOL64)


def test_virtual_batch_of_one_sample_is_instance_norm():
    x = make_input((5, 3, 4, 4), seed=7)
    gbn = GhostBatchNorm(3, 1, affine=False).double()
    assert_close(gbn(x), F.instance_norm(x, eps=gbn.eps), **TOL64)


@pytest.mark.parametrize("info", INFOS, ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_table_references_forward_and_gradients(info, training):
    """Every table case against its independent float64 reference (the generic tests do more)."""
    for sample in info.samples:
        module = info.build(torch.float64).train(training)
        (x,) = sample.inputs(torch.float64)
        x = x.requires_grad_()
        state = {n: p.detach().clone().requires_grad_() for n, p in module.named_parameters()}
        state.update({n: b.detach().clone() for n, b in module.named_buffers()})
        y = module(x)
        yr = info.references[0]((x,), state, training, torch.float64)
        assert_close(y, yr, **TOL64)
        dy = make_input(tuple(x.shape), seed=3, shift=0.0)
        params = [p for _, p in module.named_parameters()]
        got = torch.autograd.grad(y, [x, *params], dy)
        want = torch.autograd.grad(yr, [x, *[state[n] for n, _ in module.named_parameters()]], dy)
        for g, w in zip(got, want, strict=True):
            assert_close(g, w, **TOL64)


@pytest.mark.parametrize("info", INFOS, ids=str)
def test_table_references_float32(info):
    for training in info.modes():
        for sample in info.samples:
            module = info.build(torch.float64)
            state = {n: t.detach().clone() for n, t in list(module.named_parameters()) + list(module.named_buffers())}
            (x,) = sample.inputs(torch.float32)
            y = module.float().train(training)(x)
            assert y.dtype == torch.float32
            want = info.references[0]((x.double(),), state, training, torch.float32)
            assert_close(y.double(), want, rtol=info.tol32.rtol, atol=info.tol32.atol)


@pytest.mark.parametrize(
    ("info", "err"),
    [(i, e) for i in INFOS for e in i.errors],
    ids=[f"{i.id}-{e.desc}" for i in INFOS for e in i.errors],
)
def test_table_error_inputs_raise_as_declared(info, err):
    """The table's ErrorInputs are right: each raises its exception with its message, changing no state."""

    def build():
        module = normlab.create_norm(info.name, info.features, **{**info.kwargs, **(err.ctor or {})})
        return module.train(err.training)

    if err.shapes is None and err.make is None:
        with pytest.raises(err.error, match=err.match):
            build()
        return
    module = build()
    before = _state(module)
    inputs = err.make(torch.float32, 0) if err.make is not None else tuple(torch.randn(s) for s in err.shapes)
    with pytest.raises(err.error, match=err.match):
        module(*inputs)
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("shape", [(8, 8, 5, 5), (10, 8, 4, 4), (14, 8)], ids=["even", "uneven", "2d"])
@pytest.mark.parametrize("training", [True, False])
def test_registry_oracle_equals_the_module(shape, training):
    entry = normlab.get_entry("gbn")
    module = normlab.create_norm("gbn:4", shape[1]).double().train(training)
    randomize(module, seed=1)
    x = make_input(shape, seed=8)
    want = entry.oracle(copy.deepcopy(module), x)
    assert_close(module(x), want, **TOL64)


def test_statistics_come_from_one_vectorized_pass(monkeypatch):
    """One estimate for all ghost batches (two with an uneven last one), whatever K: no loop over ghost batches."""
    calls = []
    real = FB.estimate_moments

    def counting(x, dims, *, reduce=None):
        calls.append(tuple(x.shape))
        return real(x, dims, reduce=reduce)

    monkeypatch.setattr(FB, "estimate_moments", counting)
    gbn = GhostBatchNorm(3, 4)
    gbn(torch.randn(64, 3, 2, 2))
    assert calls == [(16, 4, 3, 2, 2)]
    calls.clear()
    gbn(torch.randn(66, 3, 2, 2))
    assert calls == [(16, 4, 3, 2, 2), (1, 2, 3, 2, 2)]


def test_ghost_moments_pool_to_the_whole_batch():
    x = make_input((10, 3, 4, 4), seed=9)
    st = ghost_moments(x, 4)
    assert st.mean.shape == (3, 1, 3, 1, 1)
    assert st.count.flatten().tolist() == [64.0, 64.0, 32.0]
    for k, xk in enumerate(x.split(4)):
        assert_close(st.mean[k, 0, :, 0, 0], xk.mean((0, 2, 3)), **TOL64)
        assert_close(st.var[k, 0, :, 0, 0], xk.var((0, 2, 3), unbiased=False), **TOL64)
    whole = st.pool(0, keepdim=False)
    assert_close(whole.mean.flatten(), x.mean((0, 2, 3)), **TOL64)
    assert_close(whole.var.flatten(), x.var((0, 2, 3), unbiased=False), **TOL64)
    assert ghost_moments(x[:8], 4).count == 64


# ------------------------------------------------------------ dtypes, layouts


@pytest.mark.parametrize("shape", [(8, 4, 3, 5), (10, 4, 3, 5), (6, 4, 2, 3, 3), (5, 4, 2, 3, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_keeps_channels_last(shape, training):
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    gbn = GhostBatchNorm(shape[1], 2 if len(shape) == 5 else 4).double().train(training)
    randomize(gbn, seed=2)
    ref = copy.deepcopy(gbn)
    x = make_input(shape, seed=1)
    xc = x.to(memory_format=fmt).requires_grad_()
    xr = x.clone().requires_grad_()
    y, yr = gbn(xc), ref(xr)
    assert y.is_contiguous(memory_format=fmt)
    assert_close(y, yr, **TOL64)
    dy = make_input(shape, seed=2, shift=0.0)
    (g,) = torch.autograd.grad(y, xc, dy)
    (gr,) = torch.autograd.grad(yr, xr, dy)
    assert_close(g, gr, **TOL64)
    _assert_same_state(gbn, ref, **TOL64)


def test_non_contiguous_input():
    x = make_input((10, 6, 4, 8), seed=3)
    gbn = GhostBatchNorm(3, 4).double()
    xs = x[:, ::2, :, ::2]
    assert_close(gbn(xs), copy.deepcopy(gbn)(xs.contiguous()), **TOL64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("module_dtype", ["same", "float32"])
def test_low_precision_outputs_input_dtype_with_float32_statistics(dtype, module_dtype):
    shape = (10, 4, 3, 3)
    gbn = GhostBatchNorm(4, 4)
    randomize(gbn, seed=4)
    gbn = gbn.to(dtype if module_dtype == "same" else torch.float32)
    x64 = make_input(shape, seed=5).to(dtype).double()  # the values the module sees
    state = {n: t.detach().double() for n, t in list(gbn.named_parameters()) + list(gbn.named_buffers())}
    want = ghost_batch_norm_reference(4)((x64,), state, True, dtype)
    y = gbn(x64.to(dtype))
    assert y.dtype == dtype
    # bfloat16: the output is rounded to 8 bits (relative 2^-8) after float32 statistics.
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    assert_close(y.double(), want, **tol)
    assert gbn.running_mean.dtype == (dtype if module_dtype == "same" else torch.float32)


def test_output_survives_an_in_place_op():
    x = make_input((10, 3, 4, 4), seed=6)
    gbn = GhostBatchNorm(3, 4).double()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = gbn(xa)
    torch.relu_(ya)
    ya.sum().backward()
    torch.relu(copy.deepcopy(gbn)(xb)).sum().backward()
    assert_close(xa.grad, xb.grad, **TOL64)


# ------------------------------------------------------- gradcheck, double backward


GRAD_CASES = [
    ((8, 3, 2, 3), 4, {}, True),
    ((7, 3, 2, 2), 3, {}, True),  # uneven: 3, 3, 1 (one sample still has 4 values per channel)
    ((10, 3), 4, {}, True),
    ((6, 2, 3), 4, {"affine": False}, True),
    ((4, 2, 2, 2, 2), 2, {}, True),
    ((7, 3, 2, 2), 3, {}, False),  # eval: running statistics
    ((7, 3, 2, 2), 3, {"track_running_stats": False}, False),  # eval without running stats: ghost batches
]


@pytest.mark.parametrize(("shape", "vbs", "kwargs", "training"), GRAD_CASES)
def test_gradcheck_and_gradgradcheck_float64(shape, vbs, kwargs, training):
    gbn = GhostBatchNorm(shape[1], vbs, **kwargs).double().train(training)
    randomize(gbn, seed=5)
    x = make_input(shape, seed=1).requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in gbn.parameters()]
    buffers = {n: b for n, b in gbn.named_buffers()}

    def f(x, *ps):
        # Fresh buffers each call: gradcheck evaluates many times and training updates them.
        state = {n: b.clone() for n, b in buffers.items()}
        state.update(dict(zip([n for n, _ in gbn.named_parameters()], ps, strict=True)))
        return torch.func.functional_call(gbn, state, (x,))

    assert torch.autograd.gradcheck(f, (x, *params))
    assert torch.autograd.gradgradcheck(f, (x, *params))


# ------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize("kwargs", [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}])
def test_batchnorm_checkpoint_loads_strictly_both_ways(kwargs):
    bn = nn.BatchNorm2d(4, **kwargs).double()
    if bn.affine:
        randomize(bn, seed=6)
    for s in range(2):
        bn(make_input((8, 4, 3, 3), seed=s))
    gbn = GhostBatchNorm(4, 4, **kwargs).double()
    gbn.load_state_dict(bn.state_dict(), strict=True)
    _assert_same_state(gbn, bn, rtol=0, atol=0)
    x = make_input((8, 4, 3, 3), seed=3)
    if bn.track_running_stats:
        gbn.eval(), bn.eval()
        assert_close(gbn(x), bn(x), **TOL64)
    # ... and back: train the ghost norm, load its state into a fresh torch BatchNorm2d.
    gbn.train()
    gbn(make_input((10, 4, 3, 3), seed=4))
    back = nn.BatchNorm2d(4, **kwargs).double()
    back.load_state_dict(gbn.state_dict(), strict=True)
    _assert_same_state(back, gbn, rtol=0, atol=0)


def test_checkpoint_from_before_num_batches_tracked_loads():
    bn = nn.BatchNorm2d(3)
    sd = bn.state_dict()
    del sd["num_batches_tracked"]
    sd._metadata[""]["version"] = 1
    gbn = GhostBatchNorm(3)
    gbn.load_state_dict(sd, strict=True)
    assert int(gbn.num_batches_tracked) == 0


def test_pickle_and_deepcopy_round_trip():
    gbn = GhostBatchNorm(3, 4).double()
    gbn(make_input((10, 3, 2, 2), seed=1))
    for other in (pickle.loads(pickle.dumps(gbn)), copy.deepcopy(gbn)):
        assert other.virtual_batch_size == 4
        _assert_same_state(other, gbn, rtol=0, atol=0)


def test_is_not_a_torch_batchnorm_so_torch_tools_leave_it_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), GhostBatchNorm(4, 8))
    assert not isinstance(model[1], nn.modules.batchnorm._BatchNorm)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert type(converted[1]) is GhostBatchNorm
    assert normlab.registry.statistics_kind(model[1]) == "batch"
    assert normlab.registry.mode_dependent(model[1])


# ------------------------------------------------------- fx, export, compile


def _steps(module, xs):
    return [module(x) for x in xs]


TRACE_INPUTS = [(8, 3, 4, 4), (10, 3, 4, 4)]


@pytest.mark.parametrize("training", [True, False])
def test_fx_symbolic_trace(training):
    gbn = GhostBatchNorm(3, 4).train(training)
    randomize(gbn, seed=7)
    eager = copy.deepcopy(gbn)
    traced = torch.fx.symbolic_trace(copy.deepcopy(gbn))
    calls = [n for n in traced.graph.nodes if n.op == "call_function"]
    assert [n.target for n in calls] == [NB._ghost_batch_norm]  # one node: validation stays inside it
    xs = [torch.randn(s) for s in TRACE_INPUTS]  # the traced graph serves any batch size
    for a, b in zip(_steps(traced, xs), _steps(eager, xs), strict=True):
        assert_close(a, b, rtol=0, atol=0)
    _assert_same_state(traced, eager, rtol=0, atol=0)
    with pytest.raises(ValueError, match="expected input with 3 channels"):
        traced(torch.randn(8, 2, 4, 4))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", TRACE_INPUTS, ids=["even", "uneven"])
def test_torch_export(training, shape):
    gbn = GhostBatchNorm(3, 4).train(training)
    randomize(gbn, seed=7)
    eager = copy.deepcopy(gbn)
    exported = torch.export.export(copy.deepcopy(gbn), (torch.randn(shape),)).module()
    xs = [torch.randn(shape) for _ in range(2)]
    for a, b in zip(_steps(exported, xs), _steps(eager, xs), strict=True):
        assert_close(a, b, rtol=1e-6, atol=1e-6)
    got = dict(exported.named_buffers())
    for name, want in eager.named_buffers():
        assert_close(got[name], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kwargs", [{}, {"momentum": None}], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("shape", TRACE_INPUTS, ids=["even", "uneven"])
def test_torch_compile_fullgraph(training, kwargs, shape):
    torch._dynamo.reset()
    gbn = GhostBatchNorm(3, 4, **kwargs).train(training)
    randomize(gbn, seed=7)
    eager = copy.deepcopy(gbn)
    compiled_module = copy.deepcopy(gbn)
    compiled = torch.compile(compiled_module, backend="aot_eager", fullgraph=True)
    for step in range(2):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(step))
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = compiled(xa), eager(xb)
        assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        ya.square().sum().backward()
        yb.square().sum().backward()
        assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    _assert_same_state(compiled_module, eager, rtol=1e-6, atol=1e-6)
    torch._dynamo.reset()


# --------------------------------------------------------- errors, no state change


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0, ValueError, r"GhostBatchNorm: virtual_batch_size must be a positive int, got 0"),
        (-3, ValueError, r"virtual_batch_size must be a positive int, got -3"),
        (4.0, TypeError, r"virtual_batch_size must be an int, got the float 4.0; pass 4"),
        (2.5, TypeError, r"virtual_batch_size must be a positive int, got float 2.5"),
        (True, TypeError, r"virtual_batch_size must be a positive int, got bool True"),
        (None, TypeError, r"virtual_batch_size must be a positive int, got NoneType None"),
        ("8", TypeError, r"virtual_batch_size must be a positive int, got str '8'"),
    ],
)
def test_bad_virtual_batch_size(value, error, match):
    with pytest.raises(error, match=match):
        GhostBatchNorm(4, value)
    with pytest.raises(error, match=match.replace("GhostBatchNorm", "ghost_batch_norm")):
        ghost_batch_norm(torch.randn(4, 4), None, None, training=True, virtual_batch_size=value)


BAD_INPUTS = [
    ((8,), r"GhostBatchNorm expected 2D or 3D or 4D or 5D input, got 1D input of shape \(8,\)"),
    ((2, 4, 1, 1, 1, 2), r"expected 2D or 3D or 4D or 5D input, got 6D"),
    ((8, 3, 4, 4), r"GhostBatchNorm expected input with 4 channels at dim 1, got 3 \(input shape \(8, 3, 4, 4\)\)"),
    ((9, 4), r"ghost batches of \[4, 4, 1\] samples .*virtual_batch_size=4.*1 value per channel"),
    ((9, 4, 1, 1), r"ghost batches of \[4, 4, 1\] samples"),
    ((0, 4, 3, 3), r"expected a non-empty batch.*call \.eval\(\)"),
]


@pytest.mark.parametrize(("shape", "match"), BAD_INPUTS)
def test_bad_input_raises_and_changes_no_state(shape, match):
    gbn = GhostBatchNorm(4, 4, momentum=None)
    gbn(torch.randn(8, 4, 3, 3))  # some state to keep
    before = _state(gbn)
    with pytest.raises(ValueError, match=match):
        gbn(torch.randn(shape))
    for k, v in gbn.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_integer_input_raises_type_error():
    with pytest.raises(TypeError, match=r"expected a floating-point input .*got dtype torch.int64"):
        GhostBatchNorm(4)(torch.ones(8, 4, dtype=torch.long))


def test_a_last_ghost_batch_of_one_sample_is_fine_in_eval_and_with_spatial_dims():
    gbn = GhostBatchNorm(4, 4)
    gbn.eval()(torch.randn(9, 4))  # running statistics: no batch statistics needed
    gbn.train()(torch.randn(9, 4, 2, 2))  # one sample has 4 values per channel
    assert int(gbn.num_batches_tracked) == 1


def test_functional_errors():
    x = torch.randn(8, 4, 2, 2)
    with pytest.raises(ValueError, match=r"expected weight of shape \(4,\) for input with 4 channels, got \(3,\)"):
        ghost_batch_norm(x, None, None, torch.ones(3), None, training=True, virtual_batch_size=4)
    with pytest.raises(ValueError, match="training=False needs running_mean and running_var"):
        ghost_batch_norm(x, None, None, training=False)
    rm, rv = torch.zeros(4), torch.ones(4)
    with pytest.raises(ValueError, match=r"momentum=None \(cumulative average\) needs num_batches_tracked"):
        ghost_batch_norm(x, rm, rv, training=True, momentum=None, virtual_batch_size=4)
    assert torch.equal(rm, torch.zeros(4)) and torch.equal(rv, torch.ones(4))


# --------------------------------------------------------------- reduce= hook


def test_reduce_identity_is_a_single_process():
    x = make_input((10, 3, 2, 2), seed=1)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    rm2, rv2 = rm.clone(), rv.clone()
    y = ghost_batch_norm(x, rm, rv, training=True, virtual_batch_size=4)
    y2 = ghost_batch_norm(x, rm2, rv2, training=True, virtual_batch_size=4, reduce=lambda t: t)
    assert_close(y2, y, **TOL64)
    assert_close(rm2, rm, **TOL64) and assert_close(rv2, rv, **TOL64)


class _ThreadAllReduce:
    """An all-reduce (sum) between ``world`` threads: what a ``reduce=`` hook does across processes."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots: list = [None] * world

    def hook(self, rank: int):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            total = sum(self.slots[1:], self.slots[0].clone())
            self.barrier.wait()  # everyone has read before the next collective overwrites
            return total

        return reduce


@pytest.mark.parametrize("local", [8, 10], ids=["even", "uneven"])
def test_reduce_pools_ghost_batch_k_of_every_process(local):
    """Synchronized: ghost batch k is the union of every process's k-th chunk; running stats of the global batch."""
    world = 2
    shards = [make_input((local, 3, 2, 2), seed=r) * (r + 1) for r in range(world)]
    ar = _ThreadAllReduce(world)
    outs: list = [None] * world
    running = [(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)) for _ in range(world)]

    def work(rank):
        rm, rv = running[rank]
        outs[rank] = ghost_batch_norm(shards[rank], rm, rv, training=True, virtual_batch_size=4, reduce=ar.hook(rank))

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    start = 0
    for size in ghost_batch_sizes(local, 4):
        union = torch.cat([s[start : start + size] for s in shards])
        want = F.batch_norm(union, None, None, training=True).split(size)
        for rank in range(world):
            assert_close(outs[rank][start : start + size], want[rank], **TOL64)
        start += size
    bn = nn.BatchNorm2d(3, affine=False).double()
    bn(torch.cat(shards))
    for rm, rv in running:
        assert_close(rm, bn.running_mean, **TOL64)
        assert_close(rv, bn.running_var, **TOL64)


# ------------------------------------------------------------ registry, docs


def test_registry_entry():
    entry = normlab.get_entry("ghostbn")
    assert entry.name == "ghostbatchnorm" and entry.cls is GhostBatchNorm
    assert normlab.get_norm("gbn") is GhostBatchNorm
    assert entry.statistics == "batch" and entry.ranks == (4, 2, 3, 5) and entry.family == "batch"
    assert entry.checkpoint_class == "torch.nn.BatchNorm2d" and entry.torch_twin is None
    m = normlab.create_norm("gbn:8", 16, momentum=None)
    assert (m.num_features, m.virtual_batch_size, m.momentum) == (16, 8, None)
    assert normlab.create_norm("ghostbatchnorm", 4).virtual_batch_size == 32
    example = entry.build_example()
    y = example(torch.randn(entry.example_shapes[0]))
    assert y.shape == entry.example_shapes[0]
    assert len(ghost_batch_sizes(entry.example_shapes[0][0], example.virtual_batch_size)) == 2


def test_repr():
    assert repr(GhostBatchNorm(8, 16, momentum=None, affine=False)) == (
        "GhostBatchNorm(8, virtual_batch_size=16, eps=1e-05, momentum=None, affine=False, track_running_stats=True)"
    )


@pytest.mark.parametrize("module", [NB, FB], ids=lambda m: m.__name__)
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0 and result.failed == 0
