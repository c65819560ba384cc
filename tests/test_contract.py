"""The module contract every norm keeps, over the whole registry and at the sizes of each fast path.

- in-place ops on the output (``torch.relu_(y)``) are allowed and give the
  gradients of the out-of-place op (no custom Function returns a view);
- ``torch.fx.symbolic_trace`` gives a GraphModule that computes what the
  module computes and updates the running statistics as the module does;
  ``torch.export.export`` works, and its ``.module()`` equals eager (eval and train);
- the standard norms: validated constructors, torch's empty-batch and eps
  rules, a failed forward changes no state, eps=0 on a constant channel is
  finite where torch's is, accurate channels-last GroupNorm, running
  statistics through the one EMA, conv-BN fusion, and their doctests.
"""

from __future__ import annotations

import copy
import doctest
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import normlab
from normlab import nn as nln
from normlab.functional import Moments, generic, norms
from normlab.functional.checks import InvalidArgumentError, MixedDTypeError

ENTRIES = normlab.NORMS.entries()
ENTRY_IDS = [e.name for e in ENTRIES]
TOL64 = {"rtol": 1e-10, "atol": 1e-10}


def _randn(*shape, seed=0, dtype=torch.float64, scale=1.0, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift).to(dtype)


@torch.no_grad()
def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(100 + seed)
    for name, p in module.named_parameters():
        r = torch.rand(p.shape, generator=gen, dtype=torch.float64)
        p.copy_(0.5 + r if name.endswith("weight") else r - 0.5)
    return module


def _example(entry, seed: int = 0):
    """The entry's example module (float64, random parameters) and float64 inputs, one per forward input."""
    module = _randomize(entry.build_example(), seed).double()
    inputs = tuple(_randn(*s, seed=seed + 10 * i, shift=0.3) for i, s in enumerate(entry.example_shapes))
    return module, inputs


def _state(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_state_equal(got: dict, want: dict, what: str = "", tol: dict | None = None) -> None:
    assert got.keys() == want.keys(), f"{what}: state keys {sorted(got)} vs {sorted(want)}"
    for k in want:
        if tol is None or not want[k].is_floating_point():
            assert torch.equal(got[k], want[k]), f"{what}: {k} differs: {got[k]} vs {want[k]}"
        else:
            assert_close(got[k], want[k], **tol, msg=lambda m, k=k: f"{what}: {k}: {m}")


# ------------------------------------------------------------------ in-place ops on the output


def _inplace_vs_out_of_place(module: nn.Module, inputs: tuple, op: str = "relu") -> None:
    """Gradients through ``op_(y)`` equal those through ``op(y)`` (the same module state, fresh copies)."""
    results = []
    for inplace in (True, False):
        m = copy.deepcopy(module)
        leaves = tuple(x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True) for x in inputs)
        y = m(*leaves)
        if op == "relu":
            z = torch.relu_(y) if inplace else torch.relu(y)
        else:
            z = y.mul_(1.5) if inplace else y * 1.5
        w = _randn(*z.shape, seed=7, dtype=z.dtype)
        grads = torch.autograd.grad((z * w).sum(), [*leaves, *m.parameters()], allow_unused=True)
        results.append((z.detach(), grads))
    (z_in, g_in), (z_out, g_out) = results
    assert_close(z_in, z_out, **TOL64)
    for i, (a, b) in enumerate(zip(g_in, g_out, strict=True)):
        assert (a is None) == (b is None), f"gradient {i}: None on one side only"
        if a is not None:
            assert_close(a, b, **TOL64, msg=lambda m, i=i: f"gradient {i}: {m}")


@pytest.mark.parametrize("entry", ENTRIES, ids=ENTRY_IDS)
@pytest.mark.parametrize("op", ["relu", "mul"])
def test_inplace_op_on_output_every_entry(entry, op):
    module, inputs = _example(entry)
    for training in (True, False):
        _inplace_vs_out_of_place(module.train(training), inputs, op)


def _spy(monkeypatch, owner, name: str) -> list:
    calls: list = []
    original = getattr(owner, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return calls


CL, CL3 = torch.channels_last, torch.channels_last_3d
# (module factory, input shape, memory format, the fast road it must take: (owner, attribute))
FAST_ROADS = {
    "ln2d-gemv-road": (
        lambda: nln.LayerNorm2d(16),
        (2, 16, 64, 64),
        None,
        (norms._ChannelLayerNormContiguous, "apply"),
    ),
    "ln3d-gemv-road": (
        lambda: nln.LayerNorm3d(8),
        (2, 8, 8, 32, 32),
        None,
        (norms._ChannelLayerNormContiguous, "apply"),
    ),
    "ln2d-channels-last": (lambda: nln.LayerNorm2d(16), (2, 16, 8, 8), CL, None),
    "rms-rows-road": (lambda: nln.RMSNorm(256), (512, 256), None, (norms._RMSNormRows, "apply")),
    "rms-fused-kernel": (lambda: nln.RMSNorm(16), (4, 16), None, None),
    "bn2d-fast-rows": (lambda: nln.BatchNorm2d(8), (16, 8, 48, 48), None, (norms._BatchNormFromStats, "apply")),
    "bn2d-kernel-short-rows": (lambda: nln.BatchNorm2d(8), (4, 8, 2, 2), None, None),
    "bn2d-kernel-channels-last": (lambda: nln.BatchNorm2d(8), (4, 8, 4, 4), CL, None),
    "bn1d-2d-input": (lambda: nln.BatchNorm1d(8), (16, 8), None, None),
    "bn3d-fast-rows": (lambda: nln.BatchNorm3d(4), (8, 4, 8, 32, 32), None, (norms._BatchNormFromStats, "apply")),
    "in2d-channels-last": (
        lambda: nln.InstanceNorm2d(8, affine=True),
        (2, 8, 4, 4),
        CL,
        (norms._InstanceNormChannelsLast, "apply"),
    ),
    "in3d-channels-last": (
        lambda: nln.InstanceNorm3d(4, affine=True, track_running_stats=True),
        (2, 4, 2, 3, 3),
        CL3,
        (norms._InstanceNormChannelsLast, "apply"),
    ),
    "in2d-eps0": (lambda: nln.InstanceNorm2d(8, eps=0.0, affine=True), (2, 8, 4, 4), None, None),
    "gn-channels-last": (lambda: nln.GroupNorm(4, 8), (2, 8, 4, 4), CL, (norms, "_group_norm_channels_last")),
    "gn-channels-last-3d": (lambda: nln.GroupNorm(2, 4), (2, 4, 2, 3, 3), CL3, (norms, "_group_norm_channels_last")),
    "gn-eps0": (lambda: nln.GroupNorm(4, 8, eps=0.0), (2, 8, 4, 4), None, None),
    "gn-contiguous": (lambda: nln.GroupNorm(4, 8), (2, 8, 4, 4), None, None),
    "in1d-unbatched": (lambda: nln.InstanceNorm1d(8, affine=True), (8, 10), None, None),
}


@pytest.mark.parametrize("case", list(FAST_ROADS))
def test_inplace_op_on_output_fast_roads(case, monkeypatch):
    factory, shape, fmt, road = FAST_ROADS[case]
    module = _randomize(factory()).double()
    x = _randn(*shape, seed=3, shift=0.5)
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    calls = _spy(monkeypatch, *road) if road is not None else None
    _inplace_vs_out_of_place(module, (x,))
    if calls is not None:
        assert calls, f"{case}: expected the road {road[0].__name__} to be taken"


def test_inplace_repro_layernorm2d():
    """The reported crash: relu_ on LayerNorm2d's (GEMV-road) output, then backward."""
    x = torch.randn(8, 16, 32, 16, requires_grad=True)
    torch.relu_(nln.LayerNorm2d(16)(x)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ------------------------------------------------------------------ fx and export


@pytest.mark.parametrize("entry", ENTRIES, ids=ENTRY_IDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_symbolic_trace_equals_eager(entry, training):
    """symbolic_trace's GraphModule: the same outputs over three calls, and the same running statistics."""
    module, _ = _example(entry)
    module.train(training)
    traced = torch.fx.symbolic_trace(copy.deepcopy(module))
    eager = copy.deepcopy(module)
    for step in range(3):
        _, inputs = _example(entry, seed=step + 1)
        assert_close(traced(*inputs), eager(*inputs), **TOL64, msg=lambda m, s=step: f"call {s}: {m}")
        # A GraphModule holds the attributes its graph reads (in eval, maybe not every buffer).
        got, want = _state(traced), _state(eager)
        assert set(got) <= set(want)
        _assert_state_equal(got, {k: want[k] for k in got}, f"after call {step}", TOL64)
        if training:
            assert set(got) == set(want), "training must read (and update) every buffer"
    if training and entry.statistics == "batch" and "num_batches_tracked" in eager.state_dict():
        assert eager.num_batches_tracked.item() == 3 == traced.num_batches_tracked.item()


@pytest.mark.parametrize("entry", ENTRIES, ids=ENTRY_IDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_export_equals_eager(entry, training):
    """torch.export.export works; its .module() computes what eager does (and updates buffers as eager, in train)."""
    module, inputs = _example(entry)
    module.train(training)
    exported = torch.export.export(copy.deepcopy(module), inputs).module()
    eager = copy.deepcopy(module)
    for step in range(2):
        _, inputs = _example(entry, seed=step + 1)
        assert_close(exported(*inputs), eager(*inputs), **TOL64, msg=lambda m, s=step: f"call {s}: {m}")
        got = _state(exported)
        want = _state(eager)
        _assert_state_equal({k: got[k] for k in want}, want, f"after call {step}", TOL64)


def test_traced_model_with_norms_keeps_them_in_the_graph():
    """A model containing normlab norms traces; each norm is one call of its wrapped function."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nln.BatchNorm2d(8), nn.ReLU(), nln.GroupNorm(2, 8), nln.LayerNorm2d(8))
    gm = torch.fx.symbolic_trace(model)
    targets = [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count("_batch_norm") == 1 and "_group_norm" in targets and "_channel_layer_norm" in targets
    x = _randn(4, 3, 8, 8).float()
    assert_close(gm(x), copy.deepcopy(model)(x))


# ------------------------------------------------------------------ construction-time validation

BAD_ARGS = {
    # (factory, error regex): each must raise InvalidArgumentError (a ValueError and a TypeError)
    "bn-eps-negative": (lambda: nln.BatchNorm2d(4, eps=-1.0), r"BatchNorm2d: eps must be positive.*got -1.0"),
    "bn-eps-nan": (lambda: nln.BatchNorm1d(4, eps=math.nan), r"eps must be positive.*got nan"),
    "bn-eps-inf": (lambda: nln.BatchNorm3d(4, eps=math.inf), r"eps must be positive.*got inf"),
    "bn-eps-str": (lambda: nln.BatchNorm2d(4, eps="1e-5"), r"eps must be a number, got str"),
    "bn-momentum-high": (lambda: nln.BatchNorm2d(4, momentum=1.5), r"momentum must be in \[0, 1\].*got 1.5"),
    "bn-momentum-negative": (lambda: nln.BatchNorm2d(4, momentum=-0.1), r"momentum must be in \[0, 1\]"),
    "bn-momentum-nan": (lambda: nln.BatchNorm2d(4, momentum=math.nan), r"momentum must be in \[0, 1\]"),
    "bn-features-zero": (lambda: nln.BatchNorm2d(0), r"num_features must be a positive int, got 0"),
    "bn-features-float": (lambda: nln.BatchNorm2d(4.0), r"num_features must be an int, got the float 4.0; pass 4"),
    "in-eps-negative": (lambda: nln.InstanceNorm2d(4, eps=-1e-5), r"InstanceNorm2d: eps must be a finite number >= 0"),
    "in-eps-nan": (lambda: nln.InstanceNorm1d(4, eps=math.nan), r"eps must be a finite number >= 0"),
    "in-momentum": (lambda: nln.InstanceNorm2d(4, track_running_stats=True, momentum=2), r"momentum must be in"),
    "in-features": (lambda: nln.InstanceNorm3d(-3), r"num_features must be a positive int, got -3"),
    "ln-eps-negative": (lambda: nln.LayerNorm(8, eps=-1.0), r"LayerNorm: eps must be a finite number >= 0"),
    "ln-eps-inf": (lambda: nln.LayerNorm(8, eps=math.inf), r"eps must be a finite number >= 0.*got inf"),
    "ln-shape-zero": (lambda: nln.LayerNorm(0), r"normalized_shape must be a positive int, got 0"),
    "ln-shape-negative": (lambda: nln.LayerNorm((3, -1)), r"normalized_shape must be a positive int, got -1"),
    "ln-shape-empty": (lambda: nln.LayerNorm(()), r"normalized_shape must name at least one dim"),
    "ln-shape-float": (lambda: nln.LayerNorm(8.0), r"normalized_shape must be an int or a sequence of ints"),
    "ln2d-eps": (lambda: nln.LayerNorm2d(8, eps=-1.0), r"LayerNorm2d: eps must be a finite number >= 0"),
    "ln3d-channels": (lambda: nln.LayerNorm3d(0), r"LayerNorm3d: num_channels must be a positive int, got 0"),
    "gn-eps": (lambda: nln.GroupNorm(2, 8, eps=math.nan), r"GroupNorm: eps must be a finite number >= 0"),
    "gn-groups": (lambda: nln.GroupNorm(3, 8), r"num_channels \(8\) must be divisible by num_groups \(3\)"),
    "gn-spec": (lambda: normlab.create_norm("gn:abc", 8), r"num_groups must be a positive int, got str 'abc'"),
    "rms-eps": (lambda: nln.RMSNorm(8, eps=-1e-6), r"RMSNorm: eps must be a finite number >= 0"),
    "rms-shape": (lambda: nln.RMSNorm([4, 0]), r"normalized_shape must be a positive int, got 0"),
    "lrn-size-zero": (lambda: nln.LocalResponseNorm(0), r"size must be a positive int, got 0"),
    "lrn-size-float": (lambda: nln.LocalResponseNorm(2.0), r"size must be an int, got the float 2.0"),
    "lrn-alpha": (lambda: nln.LocalResponseNorm(3, alpha=-1e-4), r"alpha must be >= 0"),
    "lrn-k-zero": (lambda: nln.LocalResponseNorm(3, k=0.0), r"k must be > 0 .*divides 0 by 0"),
    "lrn-beta-nan": (lambda: nln.LocalResponseNorm(3, beta=math.nan), r"beta must be a finite number"),
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_constructor_arguments_raise(case):
    factory, pattern = BAD_ARGS[case]
    with pytest.raises(InvalidArgumentError, match=pattern) as info:
        factory()
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_constructor_signatures_are_torchs():
    import inspect

    pairs = [(getattr(nln, f"BatchNorm{d}d"), getattr(nn, f"BatchNorm{d}d")) for d in (1, 2, 3)]
    pairs += [(getattr(nln, f"InstanceNorm{d}d"), getattr(nn, f"InstanceNorm{d}d")) for d in (1, 2, 3)]
    pairs += [(nln.LayerNorm, nn.LayerNorm), (nln.GroupNorm, nn.GroupNorm), (nln.RMSNorm, nn.RMSNorm)]
    pairs += [(nln.LocalResponseNorm, nn.LocalResponseNorm)]
    for ours, theirs in pairs:
        a, b = inspect.signature(ours).parameters, inspect.signature(theirs).parameters
        assert [(p.name, p.default, p.kind) for p in a.values()] == [(p.name, p.default, p.kind) for p in b.values()]
        assert repr(ours(3) if ours is not nln.GroupNorm else ours(1, 3)) == repr(
            theirs(3) if theirs is not nn.GroupNorm else theirs(1, 3)
        )


def test_valid_edge_arguments_are_accepted():
    """eps=0 (inference with running statistics, LayerNorm/GroupNorm as torch), momentum 0 and 1, None."""
    for m in (
        nln.BatchNorm2d(3, eps=0.0),
        nln.BatchNorm2d(3, momentum=0.0),
        nln.BatchNorm2d(3, momentum=1),
        nln.BatchNorm2d(3, momentum=None),
        nln.InstanceNorm2d(3, eps=0),
        nln.LayerNorm(3, eps=0.0),
        nln.GroupNorm(1, 3, eps=0.0),
        nln.RMSNorm(3, eps=None),
        nln.LocalResponseNorm(3, alpha=0.0, beta=-0.5),
    ):
        assert isinstance(m, nn.Module)


# ------------------------------------------------------------------ torch's rules at forward


@pytest.mark.parametrize(
    "cls,shape", [(nln.BatchNorm1d, (0, 5)), (nln.BatchNorm2d, (0, 5, 2, 2)), (nln.BatchNorm2d, (3, 5, 0, 2))]
)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_empty_batch_like_torch(cls, shape, momentum):
    """An empty batch: empty output and gradients; running statistics unchanged; the batch counted (torch's)."""
    ours, theirs = cls(5, momentum=momentum), getattr(nn, cls.__name__)(5, momentum=momentum)
    x = torch.randn(shape, requires_grad=True)
    y = ours(x)
    y_t = theirs(x)
    assert y.shape == y_t.shape == shape
    _assert_state_equal(_state(ours), _state(theirs), "after an empty batch")
    assert ours.num_batches_tracked.item() == 1
    (g,) = torch.autograd.grad(y.sum(), x)
    assert g.shape == shape


@pytest.mark.parametrize("track", [False, True])
def test_instance_norm_empty_batch(track):
    """An empty batch gives an empty output (torch's InstanceNorm with running statistics crashes with IndexError)."""
    m = nln.InstanceNorm2d(5, affine=True, track_running_stats=track)
    before = _state(m)
    x = torch.randn(0, 5, 3, 3, requires_grad=True)
    y = m(x)
    assert y.shape == (0, 5, 3, 3)
    y.sum().backward()
    assert x.grad.shape == x.shape
    _assert_state_equal(_state(m), before, "after an empty batch")


def test_batch_norm_eps_rules_like_torch():
    """eps > 0 to train (and to use batch statistics in eval), eps >= 0 with running statistics."""
    x = torch.randn(4, 3, 5, 5)
    for track in (True, False):
        m = nln.BatchNorm2d(3, eps=0.0, track_running_stats=track)
        with pytest.raises(ValueError, match=r"batch_norm eps must be positive during training, but got 0.0"):
            m(x)
        if track:
            assert m.num_batches_tracked.item() == 0  # torch's counts the failed batch; normlab does not
    m = nln.BatchNorm2d(3, eps=0.0).eval()
    assert_close(m(x), nn.BatchNorm2d(3, eps=0.0).eval()(x))
    m.eps = -1.0  # changed after construction
    with pytest.raises(ValueError, match=r"batch_norm eps must be non-negative, but got -1.0"):
        m(x)
    with pytest.raises(ValueError, match="eps must be positive during training"):
        normlab.functional.batch_norm(x, None, None, training=True, eps=0.0)


_BN2D_GOOD = (4, 3, 5, 5)
FAILING_FORWARDS = {
    # (module factory, a good input shape (run first, so there is state), bad input, error type, regex)
    "bn-eps0-train": (lambda: nln.BatchNorm2d(3, eps=0.0).eval(), _BN2D_GOOD, None, ValueError, "eps must be"),
    "bn-one-value": (lambda: nln.BatchNorm1d(3), (4, 3), lambda: torch.randn(1, 3), ValueError, "more than 1 value"),
    "bn-cumulative-one-value": (
        lambda: nln.BatchNorm1d(3, momentum=None),
        (4, 3, 2),
        lambda: torch.randn(1, 3, 1),
        ValueError,
        "more than 1 value",
    ),
    "bn-channels": (lambda: nln.BatchNorm2d(3), _BN2D_GOOD, lambda: torch.randn(4, 4, 5, 5), ValueError, "3 channels"),
    "bn-rank": (lambda: nln.BatchNorm2d(3), _BN2D_GOOD, lambda: torch.randn(4, 3, 5), ValueError, "expected 4D"),
    "bn-float64": (
        lambda: nln.BatchNorm2d(3),
        _BN2D_GOOD,
        lambda: torch.randn(4, 3, 5, 5).double(),
        RuntimeError,
        "input of dtype torch.float64",
    ),
    "bn-int": (
        lambda: nln.BatchNorm2d(3),
        _BN2D_GOOD,
        lambda: torch.ones(4, 3, 5, 5, dtype=torch.long),
        TypeError,
        "floating",
    ),
    "in-one-value": (
        lambda: nln.InstanceNorm2d(3, track_running_stats=True),
        (4, 3, 3, 3),
        lambda: torch.randn(4, 3, 1, 1),
        ValueError,
        "spatial",
    ),
    "in-channels": (
        lambda: nln.InstanceNorm2d(3, track_running_stats=True),
        (4, 3, 3, 3),
        lambda: torch.randn(4, 5, 3, 3),
        ValueError,
        "3 channels",
    ),
    "in-float64-affine": (
        lambda: nln.InstanceNorm2d(3, affine=True, track_running_stats=True),
        (4, 3, 3, 3),
        lambda: torch.randn(4, 3, 3, 3).double(),
        RuntimeError,
        "weight of dtype torch.float32",
    ),
}


@pytest.mark.parametrize("case", list(FAILING_FORWARDS))
def test_failed_forward_changes_no_state(case):
    """Validation runs before anything is computed or counted: running statistics and num_batches_tracked stay."""
    factory, good, bad, error, pattern = FAILING_FORWARDS[case]
    module = factory()
    module(torch.randn(good))  # some state first (eval for the eps=0 case, which trains only with eps > 0)
    module.train()
    before = _state(module)
    with pytest.raises(error, match=pattern):
        module(torch.randn(good) if bad is None else bad())
    _assert_state_equal(_state(module), before, case)


def test_mixed_dtype_error_names_the_fix():
    with pytest.raises(MixedDTypeError, match=r"BatchNorm2d: input of dtype torch.float64 does not match weight") as e:
        nln.BatchNorm2d(3)(torch.randn(2, 3, 4, 4, dtype=torch.float64))
    assert isinstance(e.value, RuntimeError) and isinstance(e.value, TypeError) and isinstance(e.value, ValueError)
    assert "module.to(torch.float64)" in str(e.value)


def test_instance_norm_one_value_advice():
    """The fix for one spatial value is a larger spatial size or a norm over channels, not a larger batch or eval."""
    with pytest.raises(ValueError) as info:
        nln.InstanceNorm2d(3)(torch.randn(8, 3, 1, 1))
    msg = str(info.value)
    assert "more than 1 value per spatial element" in msg and "spatial size" in msg and "GroupNorm" in msg
    assert "larger batch" not in msg and ".eval()" not in msg


# ------------------------------------------------------------------ eps = 0 on a constant channel

CONSTANT = torch.full((2, 4, 3, 3), 2.5, dtype=torch.float64)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_eps0_constant_channel_like_torch(fmt, affine):
    """torch's InstanceNorm gives 0 (+ bias) and gradient 0 for a constant channel with eps=0; so does normlab."""
    x = CONSTANT.clone().contiguous(memory_format=fmt)
    x[0, 1] = _randn(3, 3, seed=1)  # one ordinary channel too
    ours = _randomize(nln.InstanceNorm2d(4, eps=0.0, affine=affine)).double()
    theirs = nn.InstanceNorm2d(4, eps=0.0, affine=affine).double()
    theirs.load_state_dict(ours.state_dict())
    xo, xt = (x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True) for _ in range(2))
    y, yt = ours(xo), theirs(xt)
    assert torch.isfinite(y).all() and y.is_contiguous(memory_format=fmt)
    assert_close(y, yt, **TOL64)
    dy = _randn(*x.shape, seed=2)
    assert_close(torch.autograd.grad(y, xo, dy)[0], torch.autograd.grad(yt, xt, dy)[0], **TOL64)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, CL], ids=["contiguous", "channels_last"])
def test_group_norm_eps0_constant_group_is_zero(fmt):
    """GroupNorm with eps=0 on a constant group: 0 (+ bias), finite, in every layout, so GN(C, C) == IN at eps=0.

    torch's contiguous kernel gives NaN here and its channels-last kernel a
    rounding artefact; normlab follows torch's InstanceNorm convention (1/sqrt(0) taken as 0).
    """
    x = CONSTANT.clone().contiguous(memory_format=fmt).requires_grad_(True)
    gn = _randomize(nln.GroupNorm(2, 4, eps=0.0)).double()
    y = gn(x)
    assert torch.isfinite(y).all() and y.is_contiguous(memory_format=fmt)
    assert_close(y, gn.bias.view(1, 4, 1, 1).expand_as(y), **TOL64)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(g).all()
    # GN(C, C) == IN at eps=0 (the ordinary groups too)
    z = _randn(2, 4, 3, 3, seed=5).contiguous(memory_format=fmt)
    z[1, 2] = 7.0
    gn_c = nln.GroupNorm(4, 4, eps=0.0, affine=False).double()
    assert_close(gn_c(z), nln.InstanceNorm2d(4, eps=0.0)(z), **TOL64)


def test_eps0_constant_input_other_norms_like_torch():
    """LayerNorm/RMSNorm: NaN exactly where torch gives NaN (0/0 with nothing to regularize it); BN eval finite."""
    x = CONSTANT
    for ours, theirs in (
        (nln.LayerNorm(3, eps=0.0), nn.LayerNorm(3, eps=0.0)),
        (nln.RMSNorm(3, eps=0.0), nn.RMSNorm(3, eps=0.0)),
        (nln.BatchNorm2d(4, eps=0.0).eval(), nn.BatchNorm2d(4, eps=0.0).eval()),
    ):
        ours, theirs = ours.double(), theirs.double()
        xin = x * 0 if isinstance(ours, nln.RMSNorm) else x
        y, yt = ours(xin), theirs(xin)
        assert torch.equal(torch.isfinite(y), torch.isfinite(yt)), type(ours).__name__
        assert_close(y, yt, equal_nan=True)


# ------------------------------------------------------------------ channels-last GroupNorm accuracy


@pytest.mark.parametrize("mean", [0.0, 1e2, 1e4])
@pytest.mark.parametrize("shape,groups", [((4, 32, 8, 8), 8), ((2, 8, 3, 4, 4), 4)], ids=["4d", "5d"])
def test_group_norm_channels_last_accurate_float32(mean, shape, groups):
    """mean 1e4 / std 1 in float32: torch's channels-last kernel has no correct digit; normlab matches float64.

    Reference: the generic composition in float64 on the float32-rounded input.
    (torch's contiguous kernel is off by ~1e-3 at mean 1e4, from its float32
    sums; normlab's shifted road stays at float32 roundoff.)
    """
    fmt = CL if len(shape) == 4 else CL3
    x = _randn(*shape, seed=11, shift=mean).float().contiguous(memory_format=fmt)
    w, b = (0.5 + torch.rand(shape[1], dtype=torch.float64)), _randn(shape[1], seed=12)
    xr = x.double().requires_grad_(True)
    yr = generic.group_norm(xr, groups, w, b, 1e-5)
    dy = _randn(*shape, seed=13)
    (gr,) = torch.autograd.grad(yr, xr, dy)
    xo = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    gn = nln.GroupNorm(groups, shape[1])
    with torch.no_grad():
        gn.weight.copy_(w), gn.bias.copy_(b)
    y = gn(xo)
    (g,) = torch.autograd.grad(y, xo, dy.float())
    assert y.is_contiguous(memory_format=fmt) and g.is_contiguous(memory_format=fmt)
    tol = 3e-5
    assert (y.double() - yr).abs().max().item() < tol * yr.abs().max().item()
    assert (g.double() - gr).abs().max().item() < tol * gr.abs().max().item()
    with torch.no_grad():  # the no-grad road (no autograd Function) too
        assert_close(gn(x), y.detach())
    if mean >= 1e4:  # torch's own channels-last kernel fails here: the test can fail
        bad = F.group_norm(x, groups, gn.weight, gn.bias, 1e-5)
        assert (bad.double() - yr).abs().max().item() > 1.0


def test_group_norm_channels_last_shift_road_taken(monkeypatch):
    """Ill-conditioned channels-last input re-runs the kernel on the shifted input (and only then)."""
    calls = []
    original = torch.native_group_norm

    def spy(x, *args):
        calls.append(x.is_contiguous(memory_format=CL))
        return original(x, *args)

    monkeypatch.setattr(torch, "native_group_norm", spy)
    gn = nln.GroupNorm(2, 4)
    gn(_randn(2, 4, 4, 4, seed=1).float().contiguous(memory_format=CL))
    assert calls == [True]
    calls.clear()
    gn(_randn(2, 4, 4, 4, seed=1, shift=50.0).float().contiguous(memory_format=CL))
    assert calls == [True, True]


@pytest.mark.parametrize("shift", [0.3, 100.0], ids=["plain", "shifted-road"])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_channels_last_gradcheck_gradgradcheck(shift, affine, monkeypatch):
    """float64: forward/backward equal the generic composition; gradcheck and gradgradcheck pass (both roads)."""
    monkeypatch.setattr(norms, "_CL_RAW_MAX_RATIO", 4.0 if shift < 1 else 1e-3)  # force the shifted road in float64
    x = _randn(2, 6, 3, 3, seed=21, shift=shift).contiguous(memory_format=CL).requires_grad_(True)
    params = [(0.5 + torch.rand(6, dtype=torch.float64)).requires_grad_(True), _randn(6, seed=22).requires_grad_(True)]
    params = params if affine else [None, None]

    def fn(x, *p):
        return norms.group_norm(x, 3, *p, eps=1e-3) if p else norms.group_norm(x, 3, None, None, eps=1e-3)

    leaves = (x, *params) if affine else (x,)
    y = fn(*leaves)
    assert_close(y, generic.group_norm(x.detach(), 3, *(p.detach() if p is not None else None for p in params), 1e-3))
    assert torch.autograd.gradcheck(fn, leaves)
    assert torch.autograd.gradgradcheck(fn, leaves)


# ------------------------------------------------------------------ the one running EMA


@pytest.mark.parametrize(
    "shape,fmt",
    [((4, 3, 4, 4), None), ((4, 3, 2, 2), None), ((4, 3, 4, 4), CL), ((8, 3), None)],
    ids=["fast-rows", "kernel-short-rows", "kernel-channels-last", "2d"],
)
@pytest.mark.parametrize("momentum", [0.3, None])
def test_batch_norm_running_stats_through_track_batch(shape, fmt, momentum, monkeypatch):
    """normlab's BN roads fold a Moments into the buffers by track_batch, once; the result equals torch's.

    On torch's-kernel road with a float momentum the kernel's own EMA (the same formula, an exact
    identity) updates the buffers instead, ~40 us cheaper per call; equality with torch still holds.
    """
    seen = []
    original = norms.track_batch

    def spy(running, nbt, stats, m):
        seen.append(stats)
        return original(running, nbt, stats, m)

    monkeypatch.setattr(norms, "track_batch", spy)
    monkeypatch.setattr(norms, "_BN_MIN_NUMEL", 0)  # the fast road at this small size
    cls = nln.BatchNorm1d if len(shape) == 2 else nln.BatchNorm2d
    ours, theirs = cls(3, momentum=momentum).double(), getattr(nn, cls.__name__)(3, momentum=momentum).double()
    for step in range(3):
        x = _randn(*shape, seed=step, scale=step + 1.0, shift=step)
        x = x if fmt is None else x.contiguous(memory_format=fmt)
        assert_close(ours(x), theirs(x), **TOL64)
    kernel_road = fmt is not None or shape != (4, 3, 4, 4)  # channels-last, short rows, 2-D input
    kernel_ema = kernel_road and momentum is not None
    assert len(seen) == (0 if kernel_ema else 3) and all(isinstance(s, Moments) for s in seen)
    _assert_state_equal(_state(ours), _state(theirs), "after 3 batches", TOL64)


def test_instance_norm_running_stats_through_update_running(monkeypatch):
    import normlab.nn.layer as layer_module

    seen = []
    original = layer_module.update_running
    monkeypatch.setattr(layer_module, "update_running", lambda r, s, m: (seen.append(s), original(r, s, m)))
    ours = nln.InstanceNorm2d(3, track_running_stats=True, momentum=0.2).double()
    theirs = nn.InstanceNorm2d(3, track_running_stats=True, momentum=0.2).double()
    for step in range(2):
        x = _randn(4, 3, 5, 5, seed=step, shift=step)
        assert_close(ours(x), theirs(x), **TOL64)
    assert len(seen) == 2 and all(isinstance(s, Moments) for s in seen)
    _assert_state_equal(_state(ours), _state(theirs), "after 2 batches", TOL64)


# ------------------------------------------------------------------ conv-BN fusion


def _fusable(dim: int, bn_cls):
    conv = getattr(nn, f"Conv{dim}d")(3, 4, 3)
    model = nn.Sequential()
    model.conv, model.bn, model.relu = conv, bn_cls(4), nn.ReLU()
    _randomize(model)
    with torch.no_grad():
        model.bn.running_mean.copy_(_randn(4, seed=3).float() * 0.3)
        model.bn.running_var.copy_(0.5 + torch.rand(4))
    return model


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_fuse_conv_bn_relu_eval(dim):
    """normlab.nn.batch.fuse_modules folds normlab's BN like torch's fuser; the fused model computes the same."""
    from torch.ao.quantization import fuse_modules as torch_fuse

    from normlab.nn.batch import FUSER_METHOD_MAPPING, fuse_modules

    model = _fusable(dim, getattr(nln, f"BatchNorm{dim}d")).eval()
    x = _randn(2, 3, *(7,) * dim, seed=4).float()
    want = model(x)
    with pytest.raises(AssertionError, match="did not find fuser method"):
        torch_fuse(copy.deepcopy(model), [["conv", "bn", "relu"]])
    fused = fuse_modules(model, [["conv", "bn", "relu"]])
    assert isinstance(fused.bn, nn.Identity) and isinstance(fused.relu, nn.Identity)
    assert type(fused.conv).__name__ == f"ConvReLU{dim}d"
    assert_close(fused(x), want, rtol=1e-5, atol=1e-5)
    # torch's own fuse_modules with the mapping
    config = {"additional_fuser_method_mapping": FUSER_METHOD_MAPPING}
    fused2 = torch_fuse(copy.deepcopy(model), [["conv", "bn"]], fuse_custom_config_dict=config)
    assert_close(fused2.relu(fused2.conv(x)), want, rtol=1e-5, atol=1e-5)


def test_fuse_linear_bn_and_qat():
    from normlab.nn.batch import fuse_modules, fuse_modules_qat

    model = nn.Sequential(nn.Linear(5, 4), nln.BatchNorm1d(4))
    _randomize(model)
    x = _randn(6, 5, seed=8).float()
    model.train()
    model(x)  # some running statistics
    model.eval()
    fused = fuse_modules(model, [["0", "1"]])
    assert isinstance(fused[0], nn.Linear) and isinstance(fused[1], nn.Identity)
    assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    conv_model = _fusable(2, nln.BatchNorm2d).train()
    qat = fuse_modules_qat(conv_model, [["conv", "bn", "relu"]])
    assert type(qat.conv).__name__ == "ConvBnReLU2d"
    assert type(qat.conv[1]) is nn.BatchNorm2d  # a torch BN holding the normlab BN's state
    assert_close(qat.conv[1].running_var, conv_model.bn.running_var)


# ------------------------------------------------------------------ docstrings


@pytest.mark.parametrize(
    "module",
    [
        "normlab.nn.batch",
        "normlab.nn.layer",
        "normlab.nn.local",
        "normlab.functional.norms",
        "normlab.functional.checks",
    ],
)
def test_doctests(module):
    import importlib

    mod = importlib.import_module(module)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(mod, mod.__name__) if t.examples]
    assert tests, f"{module} has no doctest examples"
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{module}: {result.failed} doctest failures"


def test_every_public_class_has_a_runnable_example():
    for cls in (
        nln.BatchNorm1d,
        nln.BatchNorm2d,
        nln.BatchNorm3d,
        nln.LayerNorm,
        nln.LayerNorm2d,
        nln.LayerNorm3d,
        nln.ChannelLayerNorm,
        nln.GroupNorm,
        nln.InstanceNorm1d,
        nln.InstanceNorm2d,
        nln.InstanceNorm3d,
        nln.RMSNorm,
        nln.LocalResponseNorm,
    ):
        assert re.search(r">>> ", cls.__doc__ or ""), f"{cls.__name__} has no doctest example"
        assert "Shape" in cls.__doc__ or cls in (nln.LayerNorm2d, nln.LayerNorm3d), cls.__name__
