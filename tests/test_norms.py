"""Generic tests over the whole table of cases (tests/cases.py).

Every registered norm: forward and all gradients vs independent references,
train/eval vs the torch twin, gradcheck/gradgradcheck, state_dict and pickle
round trips, non-contiguous and channels-last inputs, bfloat16, finite
parameter gradients, dtype preservation.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.testing import assert_close

import normlab
from cases import (
    CASE_SHAPE_IDS,
    CASE_SHAPE_MODE_IDS,
    CASE_SHAPE_MODES,
    CASE_SHAPES,
    CASES,
    make_input,
    ref_local_response_norm,
    reference_params,
)

# float64: the module and the reference do the same math in a different order;
# the differences are a few ulps of O(1) numbers.
TOL64 = {"rtol": 1e-10, "atol": 1e-10}
# float32: unit roundoff is 6e-8, reductions over up to ~100 values and the
# cancellation in x - mean (and, on normlab's fast BN road, in the raw moments
# E[x^2] - E[x]^2, checked to lose at most ~2 digits) leave errors of a few
# 1e-6 relative on O(1) outputs; gradients go through one more reduction.
TOL32 = {"rtol": 1e-5, "atol": 1e-5}
TOL32_GRAD = {"rtol": 2e-5, "atol": 2e-5}

ALL_CASE_SHAPES = pytest.mark.parametrize(("case", "shape"), CASE_SHAPES, ids=CASE_SHAPE_IDS)
TWIN_CASE_SHAPES = [(c, s) for c, s in CASE_SHAPES if c.twin is not None]
TWIN_CASE_SHAPE_IDS = [i for (c, _), i in zip(CASE_SHAPES, CASE_SHAPE_IDS, strict=True) if c.twin is not None]
TWIN_CASES = pytest.mark.parametrize(("case", "shape"), TWIN_CASE_SHAPES, ids=TWIN_CASE_SHAPE_IDS)
ALL_CASE_SHAPE_MODES = pytest.mark.parametrize(("case", "shape", "training"), CASE_SHAPE_MODES, ids=CASE_SHAPE_MODE_IDS)


def _grads(y: torch.Tensor, inputs: list[torch.Tensor], dy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(y, inputs, dy)


def _params(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return list(module.named_parameters())


def test_table_covers_every_registered_norm():
    registered = set(normlab.list_norms())
    covered = {c.name for c in CASES}
    assert covered == registered, (
        f"tests/cases.py must have a case for every registered norm; missing {sorted(registered - covered)}, "
        f"unknown {sorted(covered - registered)}"
    )


def test_table_builds_the_registered_class():
    for case in CASES:
        assert type(case.build()) is normlab.get_norm(case.name), case.id


# ------------------------------------------------------------------ references


def _check_against_references(case, shape, training, dtype, tol, grad_tol):
    module = case.build(torch.float64).to(dtype).train(training)
    p_names = [n for n, _ in _params(module)]
    x64 = make_input(shape, seed=1)
    x = x64.to(dtype).requires_grad_(True)
    dy64 = make_input(shape, seed=2, shift=0.0)
    # Snapshot of parameters and running stats as the module will use them
    # (training updates the running stats during the forward).
    p_ref = reference_params(module, requires_grad=True)
    y = module(x)
    assert y.dtype == dtype
    got = _grads(y, [x] + [p for _, p in _params(module)], dy64.to(dtype))
    for ref in case.references:
        xr = x64.to(dtype).to(torch.float64).requires_grad_(True)
        p = {k: (None if v is None else v.detach().clone().requires_grad_(v.requires_grad)) for k, v in p_ref.items()}
        yr = ref(xr, p, training, dtype)
        leaves = [xr] + [p[n] for n in p_names]
        want = _grads(yr, leaves, dy64)
        assert_close(y.to(torch.float64), yr.detach(), **tol, msg=lambda m, r=ref: f"output vs {r}: {m}")
        for name, g, w in zip(["input"] + p_names, got, want, strict=True):
            assert_close(g.to(torch.float64), w, **grad_tol, msg=lambda m, n=name, r=ref: f"grad of {n} vs {r}: {m}")


@ALL_CASE_SHAPE_MODES
def test_forward_and_gradients_float64(case, shape, training):
    _check_against_references(case, shape, training, torch.float64, TOL64, TOL64)


@ALL_CASE_SHAPE_MODES
def test_forward_and_gradients_float32(case, shape, training):
    # The reference runs in float64 on the same (float32-rounded) input and parameters.
    _check_against_references(case, shape, training, torch.float32, TOL32, TOL32_GRAD)


def test_channel_layer_norm_formula_by_hand():
    """LayerNorm2d on one tiny input, checked number by number from the formula."""
    x = torch.tensor([[[[1.0, 2.0]], [[3.0, -2.0]], [[5.0, 0.0]]]], dtype=torch.float64)  # (1, 3, 1, 2)
    m = normlab.nn.LayerNorm2d(3, eps=0.0).double()
    with torch.no_grad():
        m.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        m.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    y = m(x)
    # position (0, 0): values 1, 3, 5 -> mean 3, biased var 8/3
    s0 = (8.0 / 3.0) ** 0.5
    # position (0, 1): values 2, -2, 0 -> mean 0, biased var 8/3
    want = torch.tensor(
        [
            [
                [[(1 - 3) / s0 * 1 + 0, 2 / s0 * 1 + 0]],
                [[0 * 2 + 1, -2 / s0 * 2 + 1]],
                [[(5 - 3) / s0 * 3 - 1, 0 * 3 - 1]],
            ]
        ],
        dtype=torch.float64,
    )
    assert_close(y, want, **TOL64)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7])
def test_local_response_norm_closed_formula_edges(size):
    """First and last channels (zero padded window) written out by hand, and torch agrees."""
    alpha, beta, k = 0.9, 0.75, 1.5
    a = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.5], dtype=torch.float64)  # C = 5
    x = a.view(1, 5, 1, 1)
    y = normlab.nn.LocalResponseNorm(size, alpha, beta, k)(x).flatten()
    c_last = 4

    def by_hand(c):
        lo, hi = max(0, c - size // 2), min(c_last, c + (size - 1) // 2)
        s = sum(float(a[j]) ** 2 for j in range(lo, hi + 1))
        return float(a[c]) / (k + alpha / size * s) ** beta

    for c in (0, 1, c_last - 1, c_last):
        assert y[c].item() == pytest.approx(by_hand(c), rel=1e-12, abs=1e-12), f"channel {c}"
    assert_close(
        y, ref_local_response_norm(x, {}, True, torch.float64, size=size, alpha=alpha, beta=beta, k=k).flatten()
    )
    assert_close(y, nn.LocalResponseNorm(size, alpha, beta, k)(x).flatten(), **TOL64)


# ------------------------------------------------------------------ twin


@TWIN_CASES
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_train_steps_then_eval_match_torch_twin(case, shape, dtype):
    tol = TOL64 if dtype == torch.float64 else TOL32
    grad_tol = TOL64 if dtype == torch.float64 else TOL32_GRAD
    module = case.build(dtype).train()
    twin = case.build_twin(module)
    for step in range(3):
        # Different scale and offset each step, so running statistics move.
        x = (make_input(shape, seed=10 + step, shift=0.3 * (step + 1)) * (1 + step)).to(dtype)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        y, yt = module(xa), twin(xb)
        assert_close(y, yt, **tol, msg=lambda m, s=step: f"train step {s} output: {m}")
        dy = make_input(shape, seed=20 + step, shift=0.0).to(dtype)
        g = _grads(y, [xa] + list(module.parameters()), dy)
        gt = _grads(yt, [xb] + list(twin.parameters()), dy)
        for a, b in zip(g, gt, strict=True):
            assert_close(a, b, **grad_tol, msg=lambda m, s=step: f"train step {s} gradient: {m}")
        state, twin_state = module.state_dict(), twin.state_dict()
        assert state.keys() == twin_state.keys()
        for key in state:
            if key.endswith("num_batches_tracked"):
                # torch counts batches in BatchNorm only (InstanceNorm keeps the buffer at 0).
                want = step + 1 if case.name.startswith("batchnorm") else 0
                assert state[key].item() == twin_state[key].item() == want, key
            else:
                assert_close(
                    state[key], twin_state[key], **tol, msg=lambda m, k=key, s=step: f"{k} after step {s}: {m}"
                )
    module.eval()
    twin.eval()
    x = make_input(shape, seed=30).to(dtype)
    with torch.no_grad():
        assert_close(module(x), twin(x), **tol, msg=lambda m: f"eval output: {m}")


# ------------------------------------------------------------------ gradcheck


@ALL_CASE_SHAPE_MODES
def test_gradcheck_and_gradgradcheck(case, shape, training):
    module = case.build(torch.float64).train(training)
    names = [n for n, _ in _params(module)]

    def fn(x, *params):
        return functional_call(module, dict(zip(names, params, strict=True)), (x,))

    x = make_input(shape, seed=3).requires_grad_(True)
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in _params(module))
    assert torch.autograd.gradcheck(fn, (x, *params))
    assert torch.autograd.gradgradcheck(fn, (x, *params))


# ------------------------------------------------------------------ round trips


def _outputs_both_modes(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = copy.deepcopy(module)
    with torch.no_grad():
        y_train = m.train()(x)
        y_eval = m.eval()(x)
    return y_train, y_eval


@pytest.mark.parametrize("case", CASES, ids=str)
def test_state_dict_round_trip(case):
    shape = case.shapes[0]
    x = make_input(shape, seed=4)
    module = case.build(torch.float64, seed=0)
    if case.twin is None:
        other = case.build(torch.float64, seed=7)
        other.load_state_dict(module.state_dict(), strict=True)
        for a, b in zip(_outputs_both_modes(module, x), _outputs_both_modes(other, x), strict=True):
            assert torch.equal(a, b)
        return
    # normlab -> torch (a freshly initialized twin, strictly)
    twin = case.twin().double()
    assert set(twin.state_dict()) == set(module.state_dict())
    twin.load_state_dict(module.state_dict(), strict=True)
    for a, b in zip(_outputs_both_modes(module, x), _outputs_both_modes(twin, x), strict=True):
        assert_close(a, b, **TOL64)
    # torch -> normlab (a normlab module with different random state, strictly)
    with torch.no_grad():
        for t in twin.state_dict().values():
            if t.is_floating_point():
                t.add_(0.25)
    back = case.build(torch.float64, seed=9)
    back.load_state_dict(twin.state_dict(), strict=True)
    for key, t in twin.state_dict().items():
        assert torch.equal(back.state_dict()[key], t), key
    for a, b in zip(_outputs_both_modes(back, x), _outputs_both_modes(twin, x), strict=True):
        assert_close(a, b, **TOL64)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_pickle_round_trip(case):
    module = case.build(torch.float64)
    module.train()
    module(make_input(case.shapes[0], seed=5))  # move the running stats away from their init
    clone = pickle.loads(pickle.dumps(module))
    assert type(clone) is type(module)
    assert repr(clone) == repr(module)
    for key, t in module.state_dict().items():
        assert torch.equal(clone.state_dict()[key], t), key
    x = make_input(case.shapes[0], seed=6)
    for a, b in zip(_outputs_both_modes(module, x), _outputs_both_modes(clone, x), strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ layouts


def _noncontiguous_views(x: torch.Tensor) -> dict[str, torch.Tensor]:
    views = {}
    # Same values, permuted strides (a transposed view of a transposed copy).
    t = x.transpose(0, -1).contiguous().transpose(0, -1)
    views["transposed"] = t
    # Every other element of a larger buffer along the last dim.
    big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
    big[..., ::2] = x
    views["sliced"] = big[..., ::2]
    for name, v in views.items():
        assert torch.equal(v, x), name
        assert not v.is_contiguous(), name
    return views


def _run_train_eval(module: nn.Module, x: torch.Tensor, dy: torch.Tensor):
    out = []
    for training in (True, False):
        module.train(training)
        xi = x.detach().requires_grad_(True)
        y = module(xi)
        (gx,) = torch.autograd.grad(y, xi, dy)
        out.append((y.detach(), gx))
    return out, module.state_dict()


@ALL_CASE_SHAPES
def test_noncontiguous_input_same_values(case, shape):
    x = make_input(shape, seed=7)
    dy = make_input(shape, seed=8, shift=0.0)
    base = case.build(torch.float64)
    want, want_state = _run_train_eval(copy.deepcopy(base), x, dy)
    for name, v in _noncontiguous_views(x).items():
        got, got_state = _run_train_eval(copy.deepcopy(base), v, dy)
        for (y, gx), (yw, gxw) in zip(got, want, strict=True):
            assert_close(y, yw, **TOL64, msg=lambda m, n=name: f"{n} output: {m}")
            assert_close(gx, gxw, **TOL64, msg=lambda m, n=name: f"{n} input grad: {m}")
        for key in want_state:
            assert_close(got_state[key], want_state[key], **TOL64, msg=lambda m, k=key: f"{k}: {m}")


CL_CASE_SHAPES = [(c, s) for c, s in CASE_SHAPES if len(s) in (4, 5) and c.name not in ("layernorm", "rmsnorm")]
CL_IDS = [f"{c.id}-{'x'.join(map(str, s))}" for c, s in CL_CASE_SHAPES]


@pytest.mark.parametrize(("case", "shape"), CL_CASE_SHAPES, ids=CL_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_channels_last_input_same_values_and_format_kept(case, shape, dtype):
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    x = make_input(shape, seed=9).to(dtype)
    dy = make_input(shape, seed=10, shift=0.0).to(dtype)
    x_cl = x.to(memory_format=fmt)
    assert not x_cl.is_contiguous()
    base = case.build(dtype)
    want, want_state = _run_train_eval(copy.deepcopy(base), x, dy)
    # Keep the channels-last layout through the gradient too (as a conv would give it).
    got, got_state = _run_train_eval(copy.deepcopy(base), x_cl, dy.to(memory_format=fmt))
    tol = TOL64 if dtype == torch.float64 else TOL32
    for mode, (y, gx), (yw, gxw) in zip(("train", "eval"), got, want, strict=True):
        assert y.is_contiguous(memory_format=fmt), f"{mode}: output lost the {fmt} layout (strides {y.stride()})"
        assert_close(y, yw, **tol, msg=lambda m, md=mode: f"{md} output: {m}")
        assert_close(
            gx, gxw, **(TOL64 if dtype == torch.float64 else TOL32_GRAD), msg=lambda m, md=mode: f"{md} grad: {m}"
        )
    for key in want_state:
        assert_close(got_state[key], want_state[key], **tol)


# ------------------------------------------------------------------ dtypes


@ALL_CASE_SHAPE_MODES
@pytest.mark.parametrize("module_dtype", [torch.float32, torch.bfloat16], ids=["f32-module", "bf16-module"])
def test_bfloat16_input(case, shape, module_dtype, training):
    module = case.build(torch.float32).to(module_dtype).train(training)
    x = make_input(shape, seed=11).to(torch.bfloat16)
    ref_module = copy.deepcopy(module).float()  # same (possibly bf16-rounded) parameters, in float32
    with torch.no_grad():
        y = module(x)
        want = ref_module(x.float())
    assert y.dtype == torch.bfloat16
    # bfloat16 keeps 8 significant bits: rounding the output alone moves it by
    # up to 2^-9 ~ 0.2% relative; statistics are accumulated in float32. The
    # worst case over the table is ~0.35% of (|y| + 1); 1% leaves ~3x headroom
    # and still catches statistics computed in bf16 or a lost affine.
    assert_close(y.float(), want, rtol=1e-2, atol=1e-2)


@ALL_CASE_SHAPE_MODES
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_dtype_preserved_and_every_parameter_gets_a_finite_gradient(case, shape, dtype, training):
    module = case.build(dtype).train(training)
    x = make_input(shape, seed=12).to(dtype).requires_grad_(True)
    y = module(x)
    assert y.dtype == dtype
    assert y.shape == x.shape
    (y * make_input(shape, seed=13, shift=0.0).to(dtype)).sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.dtype == p.dtype, name
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
    for name, b in module.named_buffers():
        if b.is_floating_point():
            assert b.dtype == dtype, name
