"""Generic tests over the test table (:mod:`normtable`): every registered norm, every declared case.

Each test reads the cases' declared capabilities (``train_eval_differ``,
``double_backward``, ``keeps_memory_format``, ``channels_last``,
``loads_checkpoint``, ``twin``, ``errors``, ``skips``, ``tol32``,
``representative``), never norm names: forward and all gradients (every
differentiable input and every parameter) against every independent
reference, the torch twin in train and eval (running statistics too),
gradcheck and gradgradcheck, state_dict / checkpoint / pickle / deepcopy round
trips, non-contiguous and channels-last input, bfloat16, finite gradients,
dtype preservation, in-place ops on the output, error inputs and their
no-state-change guarantee; plus coverage of the registry by the table.

Tiers: the default run does gradcheck in torch's fast mode on every case and
gradgradcheck (fast mode) on the ``representative`` cases; ``pytest -m slow``
checks every Jacobian entry, first and second order, on every case.
"""

from __future__ import annotations

import copy
import importlib
import pickle
import sys

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.testing import assert_close

import normlab
from normtable import INFOS, ErrorInput, NormInfo, SampleInput, make_input, reference_state

# float64: the module and the reference do the same math in another order;
# the differences are a few ulps of O(1) numbers.
TOL64 = {"rtol": 1e-10, "atol": 1e-10}
# bfloat16 keeps 8 significant bits: rounding the output alone moves it by up
# to 2^-9 ~ 0.2% relative, with statistics accumulated in float32 (the
# standard norms' worst case is ~0.35% of |y| + 1); 1% leaves ~3x headroom and
# still catches statistics computed in bfloat16 or a lost affine.
TOL_BF16 = {"rtol": 1e-2, "atol": 1e-2}


# ------------------------------------------------------------------ parametrization


def _mode_id(training: bool) -> str:
    return "train" if training else "eval"


def _marks(info: NormInfo, test: str) -> list:
    reason = info.skip_reason(test)
    return [pytest.mark.skip(reason=reason)] if reason else []


def case_params(test: str, *, modes: bool = True, where=None) -> list:
    """``(info, sample, training)`` for every sample of every info (eval too where it differs)."""
    out = []
    for info in INFOS:
        for sample in info.samples:
            if where is not None and not where(info, sample):
                continue
            for training in info.modes() if modes else (True,):
                out.append(
                    pytest.param(
                        info,
                        sample,
                        training,
                        id=f"{info.id}-{sample.id}" + (f"-{_mode_id(training)}" if modes else ""),
                        marks=_marks(info, test),
                    )
                )
    return out


def info_params(test: str, where=None) -> list:
    return [pytest.param(info, id=info.id, marks=_marks(info, test)) for info in INFOS if where is None or where(info)]


def _entry(info: NormInfo):
    return normlab.get_entry(info.name)


# ------------------------------------------------------------------ helpers


def _differentiable(sample: SampleInput, inputs: tuple[Tensor, ...]) -> tuple[bool, ...]:
    if sample.differentiable is not None:
        return tuple(sample.differentiable)
    return tuple(t.is_floating_point() for t in inputs)


def _to(inputs: tuple[Tensor, ...], dtype: torch.dtype) -> tuple[Tensor, ...]:
    """Floating inputs cast to ``dtype``; others (label maps, masks) unchanged."""
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in inputs)


def _leaves(inputs: tuple[Tensor, ...], diff: tuple[bool, ...]) -> tuple[Tensor, ...]:
    """Fresh copies of ``inputs``, the differentiable ones requiring grad."""
    return tuple(t.detach().clone().requires_grad_(True) if d else t for t, d in zip(inputs, diff, strict=True))


def _grad_inputs(xs: tuple[Tensor, ...], diff: tuple[bool, ...]) -> list[Tensor]:
    return [x for x, d in zip(xs, diff, strict=True) if d]


def _input_names(info: NormInfo, diff: tuple[bool, ...]) -> list[str]:
    return [n for n, d in zip(_entry(info).inputs, diff, strict=True) if d]


def _grads(y: Tensor, leaves: list[Tensor], dy: Tensor) -> list[Tensor]:
    """Gradients of ``(y * dy).sum()``; a leaf the output does not depend on gets zeros."""
    got = torch.autograd.grad(y, leaves, dy, allow_unused=True)
    return [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(got, leaves, strict=True)]


def _cotangent(y: Tensor, seed: int) -> Tensor:
    return make_input(tuple(y.shape), seed=seed, shift=0.0).to(y.dtype)


def _assert_state_close(got: dict, want: dict, tol: dict, what: str = "") -> None:
    assert got.keys() == want.keys(), f"{what}state_dict keys differ: {sorted(got)} vs {sorted(want)}"
    for key, w in want.items():
        g = got[key]
        if w.is_floating_point():
            assert_close(g, w, **tol, msg=lambda m, k=key: f"{what}{k}: {m}")
        else:
            assert torch.equal(g, w), f"{what}{key}: {g} != {w}"


# ------------------------------------------------------------------ coverage of the registry


def test_every_registered_norm_has_a_norminfo():
    covered = {info.name for info in INFOS}
    missing = [n for n in normlab.NORMS.names() if n not in covered]
    assert not missing, (
        f"registry entries without a NormInfo in tests/normtable/<family>.py: {missing}; add at least one "
        "case (samples, independent references, capabilities, errors) for each"
    )


def test_every_norminfo_names_a_registered_norm_and_builds_its_class():
    for info in INFOS:
        assert info.name in normlab.NORMS, f"{info.id}: {info.name!r} is not registered"
        entry = _entry(info)
        assert entry.name == info.name, f"{info.id}: use the canonical name {entry.name!r}, not {info.name!r}"
        assert type(info.build()) is entry.cls, f"{info.id}: builds {type(info.build())}, registry says {entry.cls}"


def test_one_representative_per_registry_entry():
    """Heavy tests run on the representative cases by default: exactly one per entry."""
    for name in normlab.NORMS.names():
        reps = [i.id for i in INFOS if i.name == name and i.representative]
        if any(i.name == name for i in INFOS):
            assert len(reps) == 1, f"{name}: mark exactly one NormInfo representative=True, got {reps}"


def test_every_registry_entry_declares_error_inputs():
    for name in normlab.NORMS.names():
        infos = [i for i in INFOS if i.name == name]
        if infos:
            assert any(i.errors for i in infos), f"{name}: no NormInfo declares error inputs"


def test_samples_feed_every_declared_input():
    for info in INFOS:
        names = _entry(info).inputs
        for sample in info.samples:
            inputs = sample.inputs(torch.float64, 0)
            assert len(inputs) == len(names), f"{info.id}/{sample.id}: {len(inputs)} inputs for forward{names}"
            assert len(_differentiable(sample, inputs)) == len(names), f"{info.id}/{sample.id}: differentiable"


def _torch_class(path: str) -> type:
    """``"torch.nn.BatchNorm2d"`` -> the class."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_twin_and_checkpoint_match_the_registry():
    for info in INFOS:
        entry = _entry(info)
        # Without a registry twin a case may still name a torch module it equals in its configuration
        # (GhostBatchNorm with the ghost batch >= the batch is BatchNorm).
        if entry.torch_twin is not None:
            assert info.twin is not None, f"{info.id}: the registry declares torch_twin={entry.torch_twin}"
            assert type(info.twin()) is _torch_class(entry.torch_twin), f"{info.id}: twin {type(info.twin())}"
        # A case may load a checkpoint the registry does not name (SPADE: the official module's layout).
        if entry.checkpoint_class is not None:
            assert info.loads_checkpoint is not None, f"{info.id}: the registry loads {entry.checkpoint_class}"
            if entry.torch_twin is not None:
                assert type(info.loads_checkpoint()) is _torch_class(entry.checkpoint_class), info.id
            # else: a norm without a twin may load the checkpoint class of its rank (GhostBatchNorm on
            # 2-D input loads BatchNorm1d's); that it loads strictly both ways is tested per case.


def test_skips_name_tests_of_this_module():
    tests = {name for name in vars(sys.modules[__name__]) if name.startswith("test_")}
    import test_compile

    tests |= {name for name in vars(test_compile) if name.startswith("test_")}
    for info in INFOS:
        unknown = set(info.skips) - tests
        assert not unknown, f"{info.id}: skips name no test: {sorted(unknown)} (known: test_norms/test_compile tests)"
        assert all(isinstance(r, str) and r for r in info.skips.values()), f"{info.id}: every skip needs a reason"


@pytest.mark.parametrize("info", info_params("test_declared_train_eval_difference"))
def test_declared_train_eval_difference(info):
    """A case whose eval output differs from its training output must declare ``train_eval_differ``."""
    module = info.build(torch.float64)
    inputs = info.samples[0].inputs(torch.float64, 3)
    with torch.no_grad():
        y_train = copy.deepcopy(module).train()(*inputs)
        y_eval = copy.deepcopy(module).eval()(*inputs)
    if not torch.allclose(y_train, y_eval, rtol=1e-9, atol=1e-9):
        assert info.train_eval_differ, f"{info.id}: eval computes another function: declare train_eval_differ=True"


# ------------------------------------------------------------------ references


def _check_against_references(info, sample, training, dtype, tol, grad_tol):
    module = info.build(dtype).train(training)
    inputs = sample.inputs(dtype, 1)
    diff = _differentiable(sample, inputs)
    names = [n for n, _ in module.named_parameters()]
    labels = [f"input {n}" for n in _input_names(info, diff)] + [f"parameter {n}" for n in names]
    # Parameters and buffers as the forward sees them (training updates running buffers during it).
    state = reference_state(module, requires_grad=True)
    xs = _leaves(inputs, diff)
    y = module(*xs)
    assert y.dtype == inputs[0].dtype, f"output dtype {y.dtype} for {inputs[0].dtype} input"
    dy = make_input(tuple(y.shape), seed=2, shift=0.0)
    got = _grads(y, _grad_inputs(xs, diff) + [p for _, p in module.named_parameters()], dy.to(y.dtype))
    for ref in info.references:
        xr = _leaves(_to(inputs, torch.float64), diff)  # the same (rounded) values, in float64
        st = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in state.items()}
        yr = ref(xr, st, training, dtype)
        want = _grads(yr, _grad_inputs(xr, diff) + [st[n] for n in names], dy)
        name = getattr(ref, "func", ref).__name__
        assert_close(y.to(torch.float64), yr.detach(), **tol, msg=lambda m, r=name: f"output vs {r}: {m}")
        for label, g, w in zip(labels, got, want, strict=True):
            assert_close(
                g.to(torch.float64), w, **grad_tol, msg=lambda m, la=label, r=name: f"grad of {la} vs {r}: {m}"
            )


@pytest.mark.parametrize(("info", "sample", "training"), case_params("test_forward_and_gradients_float64"))
def test_forward_and_gradients_float64(info, sample, training):
    _check_against_references(info, sample, training, torch.float64, TOL64, TOL64)


@pytest.mark.parametrize(("info", "sample", "training"), case_params("test_forward_and_gradients_float32"))
def test_forward_and_gradients_float32(info, sample, training):
    # The reference runs in float64 on the same float32-rounded inputs, parameters and buffers.
    tol, grad_tol = info.tol32, info.tol32_grad
    _check_against_references(
        info,
        sample,
        training,
        torch.float32,
        {"rtol": tol.rtol, "atol": tol.atol},
        {"rtol": grad_tol.rtol, "atol": grad_tol.atol},
    )


# ------------------------------------------------------------------ torch twin


def _tols(info: NormInfo, dtype: torch.dtype) -> tuple[dict, dict]:
    if dtype == torch.float64:
        return TOL64, TOL64
    return {"rtol": info.tol32.rtol, "atol": info.tol32.atol}, {
        "rtol": info.tol32_grad.rtol,
        "atol": info.tol32_grad.atol,
    }


@pytest.mark.parametrize(
    ("info", "sample", "training"),
    case_params("test_train_steps_then_eval_match_torch_twin", modes=False, where=lambda i, s: i.twin is not None),
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_train_steps_then_eval_match_torch_twin(info, sample, training, dtype):
    """Three training steps (outputs, every gradient, every buffer after each), then eval: equal to torch's."""
    tol, grad_tol = _tols(info, dtype)
    module = info.build(dtype).train()
    twin = info.build_twin(module)
    for step in range(3):
        inputs = sample.inputs(dtype, 10 + step)
        # A different scale and offset each step, so that running statistics move.
        inputs = ((inputs[0] * (1 + step) + 0.3 * step).to(dtype), *inputs[1:])
        diff = _differentiable(sample, inputs)
        xa, xb = _leaves(inputs, diff), _leaves(inputs, diff)
        y, yt = module(*xa), twin(*xb)
        assert_close(y, yt, **tol, msg=lambda m, s=step: f"train step {s} output: {m}")
        dy = _cotangent(y, 20 + step)
        g = _grads(y, _grad_inputs(xa, diff) + list(module.parameters()), dy)
        gt = _grads(yt, _grad_inputs(xb, diff) + list(twin.parameters()), dy)
        for i, (a, b) in enumerate(zip(g, gt, strict=True)):
            assert_close(a, b, **grad_tol, msg=lambda m, s=step, i=i: f"train step {s} gradient {i}: {m}")
        _assert_state_close(module.state_dict(), twin.state_dict(), tol, f"after step {step}: ")
    module.eval()
    twin.eval()
    inputs = sample.inputs(dtype, 30)
    with torch.no_grad():
        assert_close(module(*inputs), twin(*inputs), **tol, msg=lambda m: f"eval output: {m}")


# ------------------------------------------------------------------ gradcheck


def _functional(module: nn.Module, inputs: tuple[Tensor, ...], diff: tuple[bool, ...]):
    """``fn(*differentiable inputs, *parameters) -> output`` and its float64 arguments."""
    names = [n for n, _ in module.named_parameters()]

    def fn(*args):
        it = iter(args)
        xs = tuple(next(it) if d else t for t, d in zip(inputs, diff, strict=True))
        params = dict(zip(names, it, strict=True))
        return functional_call(module, params, xs)

    args = tuple(t.detach().clone().requires_grad_(True) for t, d in zip(inputs, diff, strict=True) if d)
    args += tuple(p.detach().clone().requires_grad_(True) for _, p in module.named_parameters())
    return fn, args


# Default tier: torch's fast mode (a random projection v^T J u of the Jacobian
# against its finite-difference estimate: one numerical derivative per input
# instead of one per element; a wrong entry is caught with probability ~1),
# so cases with thousands of parameters (convolutions, mixtures) stay cheap.
# The slow tier checks every Jacobian entry.


def _gradcheck(info, sample, training, *, second_order: bool, fast_mode: bool) -> None:
    if second_order and not info.double_backward:
        pytest.skip(f"{info.id} declares double_backward=False")
    module = info.build(torch.float64).train(training)
    inputs = sample.inputs(torch.float64, 3)
    fn, args = _functional(module, inputs, _differentiable(sample, inputs))
    check = torch.autograd.gradgradcheck if second_order else torch.autograd.gradcheck
    assert check(fn, args, fast_mode=fast_mode)


@pytest.mark.parametrize(("info", "sample", "training"), case_params("test_gradcheck"))
def test_gradcheck(info, sample, training):
    _gradcheck(info, sample, training, second_order=False, fast_mode=True)


@pytest.mark.slow
@pytest.mark.parametrize(("info", "sample", "training"), case_params("test_gradcheck_full_jacobian"))
def test_gradcheck_full_jacobian(info, sample, training):
    _gradcheck(info, sample, training, second_order=False, fast_mode=False)


@pytest.mark.parametrize(
    ("info", "sample", "training"), case_params("test_gradgradcheck", where=lambda info, sample: info.representative)
)
def test_gradgradcheck(info, sample, training):
    _gradcheck(info, sample, training, second_order=True, fast_mode=True)


@pytest.mark.slow
@pytest.mark.parametrize(("info", "sample", "training"), case_params("test_gradgradcheck_full_jacobian"))
def test_gradgradcheck_full_jacobian(info, sample, training):
    _gradcheck(info, sample, training, second_order=True, fast_mode=False)


# ------------------------------------------------------------------ round trips


def _outputs_both_modes(module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    m = copy.deepcopy(module)
    with torch.no_grad():
        return m.train()(*inputs), m.eval()(*inputs)


@pytest.mark.parametrize("info", info_params("test_state_dict_round_trip"))
def test_state_dict_round_trip(info):
    inputs = info.samples[0].inputs(torch.float64, 4)
    module = info.build(torch.float64, seed=0)
    other = info.build(torch.float64, seed=7)
    other.load_state_dict(module.state_dict(), strict=True)
    _assert_state_close(other.state_dict(), module.state_dict(), {"rtol": 0, "atol": 0})
    for a, b in zip(_outputs_both_modes(module, inputs), _outputs_both_modes(other, inputs), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "info", info_params("test_checkpoint_loads_both_ways", lambda i: i.loads_checkpoint is not None)
)
def test_checkpoint_loads_both_ways(info):
    """normlab -> torch and torch -> normlab, strictly; same outputs where the torch module is the twin."""
    module = info.build(torch.float64, seed=0)
    theirs = info.loads_checkpoint().double()
    assert set(theirs.state_dict()) == set(module.state_dict())
    theirs.load_state_dict(module.state_dict(), strict=True)
    _assert_state_close(theirs.state_dict(), module.state_dict(), {"rtol": 0, "atol": 0}, "normlab -> torch: ")
    with torch.no_grad():
        for t in theirs.state_dict().values():
            if t.is_floating_point():
                t.add_(0.25)
            else:
                t.add_(3)
    back = info.build(torch.float64, seed=9)
    back.load_state_dict(theirs.state_dict(), strict=True)
    _assert_state_close(back.state_dict(), theirs.state_dict(), {"rtol": 0, "atol": 0}, "torch -> normlab: ")
    if info.twin is not None and type(info.twin()) is type(theirs):
        inputs = info.samples[0].inputs(torch.float64, 4)
        for a, b in zip(_outputs_both_modes(back, inputs), _outputs_both_modes(theirs, inputs), strict=True):
            assert_close(a, b, **TOL64)


@pytest.mark.parametrize("info", info_params("test_pickle_and_deepcopy_round_trip"))
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_pickle_and_deepcopy_round_trip(info, how):
    module = info.build(torch.float64).train()
    with torch.no_grad():
        module(*info.samples[0].inputs(torch.float64, 5))  # move the running statistics away from their init
    clone = pickle.loads(pickle.dumps(module)) if how == "pickle" else copy.deepcopy(module)
    assert type(clone) is type(module)
    assert repr(clone) == repr(module)
    assert clone.training == module.training
    _assert_state_close(clone.state_dict(), module.state_dict(), {"rtol": 0, "atol": 0})
    inputs = info.samples[0].inputs(torch.float64, 6)
    for a, b in zip(_outputs_both_modes(module, inputs), _outputs_both_modes(clone, inputs), strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ layouts


def _noncontiguous(x: Tensor, how: str) -> Tensor:
    if not x.is_floating_point() or x.dim() == 0:
        return x
    if how == "transposed":  # same values, permuted strides (a transposed view of a transposed copy)
        return x.transpose(0, -1).contiguous().transpose(0, -1)
    big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)  # every other element of a larger buffer
    big[..., ::2] = x
    return big[..., ::2]


def _run_modes(module: nn.Module, info: NormInfo, inputs, diff, cotangent_seed: int):
    """Output and input gradients in each mode of ``info``, then the final state."""
    out = []
    for training in info.modes():
        module.train(training)
        xs = _leaves(inputs, diff)
        y = module(*xs)
        dy = _cotangent(y, cotangent_seed).contiguous(memory_format=_format_of(y))
        out.append((y.detach(), _grads(y, _grad_inputs(xs, diff), dy)))
    return out, module.state_dict()


def _format_of(t: Tensor) -> torch.memory_format:
    for fmt, rank in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if t.dim() == rank and t.is_contiguous(memory_format=fmt) and not t.is_contiguous():
            return fmt
    return torch.contiguous_format


@pytest.mark.parametrize(
    ("info", "sample", "training"), case_params("test_noncontiguous_input_same_values", modes=False)
)
@pytest.mark.parametrize("how", ["transposed", "sliced"])
def test_noncontiguous_input_same_values(info, sample, training, how):
    inputs = sample.inputs(torch.float64, 7)
    diff = _differentiable(sample, inputs)
    views = tuple(_noncontiguous(x, how) for x in inputs)
    for x, v in zip(inputs, views, strict=True):
        assert torch.equal(x, v)
    if all(v.is_contiguous() for v in views):
        pytest.skip(f"no {how} view of {sample.id} is non-contiguous")
    base = info.build(torch.float64)
    want, want_state = _run_modes(copy.deepcopy(base), info, inputs, diff, 8)
    got, got_state = _run_modes(copy.deepcopy(base), info, views, diff, 8)
    for (y, gx), (yw, gxw) in zip(got, want, strict=True):
        assert_close(y, yw, **TOL64, msg=lambda m: f"{how} output: {m}")
        for a, b in zip(gx, gxw, strict=True):
            assert_close(a, b, **TOL64, msg=lambda m: f"{how} input gradient: {m}")
    _assert_state_close(got_state, want_state, TOL64)


def _channels_last_sample(info: NormInfo, sample: SampleInput) -> bool:
    return info.channels_last and len(sample.shapes[0]) in (4, 5)


def _to_channels_last(x: Tensor) -> Tensor:
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


@pytest.mark.parametrize(
    ("info", "sample", "training"),
    case_params("test_channels_last_input", modes=False, where=_channels_last_sample),
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_channels_last_input(info, sample, training, dtype):
    """Same values (outputs, input gradients, buffers); the layout kept where the case declares it."""
    inputs = sample.inputs(dtype, 9)
    diff = _differentiable(sample, inputs)
    cl = tuple(_to_channels_last(x) for x in inputs)
    assert not cl[0].is_contiguous()
    tol, grad_tol = _tols(info, dtype)
    base = info.build(dtype)
    want, want_state = _run_modes(copy.deepcopy(base), info, inputs, diff, 10)
    # The gradient keeps the channels-last layout too (as a convolution's would).
    got, got_state = _run_modes(copy.deepcopy(base), info, cl, diff, 10)
    for training, (y, gx), (yw, gxw) in zip(info.modes(), got, want, strict=True):
        mode = _mode_id(training)
        if info.keeps_memory_format:
            fmt = _format_of(cl[0])
            assert y.is_contiguous(memory_format=fmt), f"{mode}: output lost the {fmt} layout (strides {y.stride()})"
        assert_close(y, yw, **tol, msg=lambda m, md=mode: f"{md} output: {m}")
        for a, b in zip(gx, gxw, strict=True):
            assert_close(a, b, **grad_tol, msg=lambda m, md=mode: f"{md} input gradient: {m}")
    _assert_state_close(got_state, want_state, tol)


# ------------------------------------------------------------------ dtypes


@pytest.mark.parametrize(("info", "sample", "training"), case_params("test_bfloat16_input"))
@pytest.mark.parametrize("module_dtype", [torch.float32, torch.bfloat16], ids=["f32-module", "bf16-module"])
def test_bfloat16_input(info, sample, training, module_dtype):
    """bfloat16 input: the output is bfloat16 and close to the float32 computation on the same values."""
    module = info.build(torch.float32).to(module_dtype).train(training)
    inputs = _to(sample.inputs(torch.float32, 11), torch.bfloat16)
    ref_module = copy.deepcopy(module).float()  # the same (possibly bf16-rounded) parameters, in float32
    with torch.no_grad():
        y = module(*inputs)
        want = ref_module(*_to(inputs, torch.float32))
    assert y.dtype == torch.bfloat16
    assert_close(y.float(), want, **TOL_BF16)


@pytest.mark.parametrize(
    ("info", "sample", "training"), case_params("test_dtype_kept_and_every_parameter_gets_a_finite_gradient")
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_dtype_kept_and_every_parameter_gets_a_finite_gradient(info, sample, training, dtype):
    module = info.build(dtype).train(training)
    inputs = sample.inputs(dtype, 12)
    diff = _differentiable(sample, inputs)
    xs = _leaves(inputs, diff)
    y = module(*xs)
    assert y.dtype == dtype
    assert y.shape == xs[0].shape
    (y * _cotangent(y, 13)).sum().backward()
    for name, x in zip(_entry(info).inputs, xs, strict=True):
        if x.requires_grad:
            assert x.grad is not None and x.grad.dtype == dtype, name
            assert torch.isfinite(x.grad).all(), f"input {name} has a non-finite gradient"
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.dtype == p.dtype, name
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"
    for name, b in module.named_buffers():
        if b.is_floating_point():
            assert b.dtype == dtype, name
            assert torch.isfinite(b).all(), f"buffer {name} is not finite after a training step"


@pytest.mark.parametrize(("info", "sample", "training"), case_params("test_output_survives_an_inplace_op"))
def test_output_survives_an_inplace_op(info, sample, training):
    """``torch.relu_(norm(x))`` then backward: the same gradients as the out-of-place ``relu``."""
    base = info.build(torch.float64).train(training)
    inputs = sample.inputs(torch.float64, 14)
    diff = _differentiable(sample, inputs)
    results = []
    for inplace in (False, True):
        module = copy.deepcopy(base)
        xs = _leaves(inputs, diff)
        y = module(*xs)
        z = torch.relu_(y) if inplace else torch.relu(y)
        results.append(_grads(z, _grad_inputs(xs, diff) + list(module.parameters()), _cotangent(z, 15)))
    for a, b in zip(*results, strict=True):
        assert_close(b, a, **TOL64)


# ------------------------------------------------------------------ errors


def _error_inputs(info: NormInfo, err: ErrorInput) -> tuple[Tensor, ...]:
    if err.make is not None:
        return tuple(err.make(torch.float64, 0))
    if err.shapes is not None:
        return tuple(make_input(s, seed=20 + i) for i, s in enumerate(err.shapes))
    return info.samples[0].inputs(torch.float64, 0)


ERROR_PARAMS = [
    pytest.param(info, err, id=f"{info.id}-{err.desc}", marks=_marks(info, "test_error_inputs_raise"))
    for info in INFOS
    for err in info.errors
]


@pytest.mark.parametrize(("info", "err"), ERROR_PARAMS)
def test_error_inputs_raise(info, err):
    """Construction or forward raises the declared exception, its message matching the declared regex."""
    with pytest.raises(err.error, match=err.match):
        module = info.build(torch.float64, **(err.ctor or {})).train(err.training)
        module(*_error_inputs(info, err))


def _builds(info: NormInfo, err: ErrorInput) -> bool:
    try:
        module = info.build(torch.float64, **(err.ctor or {}))
    except Exception:  # noqa: BLE001 - an error at construction: there is no state to keep
        return False
    return bool(module.state_dict())


STATEFUL_ERROR_PARAMS = [
    pytest.param(info, err, id=f"{info.id}-{err.desc}", marks=_marks(info, "test_failed_forward_changes_no_state"))
    for info in INFOS
    for err in info.errors
    if _builds(info, err)
]


@pytest.mark.parametrize(("info", "err"), STATEFUL_ERROR_PARAMS)
def test_failed_forward_changes_no_state(info, err):
    """A forward that raises leaves every parameter and buffer (running statistics, counters) as it was."""
    module = info.build(torch.float64, **(err.ctor or {})).train(err.training)
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    with pytest.raises(err.error):
        module(*_error_inputs(info, err))
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} changed by a forward that raised"
    assert module.training == err.training


# ------------------------------------------------------------------ the references' own check
# Not generic: two numbers-by-hand checks of the independent references (and the modules) where
# a formula is easy to get subtly wrong (channel LayerNorm's axis, LRN's zero-padded window).


def test_channel_layer_norm_formula_by_hand():
    """LayerNorm2d on one tiny input, checked number by number from the formula."""
    from normtable.standard import ref_channel_layer_norm_formula, ref_channel_layer_norm_permute

    x = torch.tensor([[[[1.0, 2.0]], [[3.0, -2.0]], [[5.0, 0.0]]]], dtype=torch.float64)  # (1, 3, 1, 2)
    m = normlab.nn.LayerNorm2d(3, eps=0.0).double()
    with torch.no_grad():
        m.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        m.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    s0 = (8.0 / 3.0) ** 0.5  # position (0, 0): values 1, 3, 5 -> mean 3, biased var 8/3; (0, 1): 2, -2, 0 -> 0, 8/3
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
    assert_close(m(x), want, **TOL64)
    state = reference_state(m)
    for ref in (ref_channel_layer_norm_formula, ref_channel_layer_norm_permute):
        assert_close(ref((x,), state, True, torch.float64, eps=0.0), want, **TOL64)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7])
def test_local_response_norm_closed_formula_edges(size):
    """First and last channels (zero-padded window) written out by hand; the reference and torch agree."""
    from normtable.standard import ref_local_response_norm

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
    ref = ref_local_response_norm((x,), {}, True, torch.float64, size=size, alpha=alpha, beta=beta, k=k)
    assert_close(y, ref.flatten(), **TOL64)
    assert_close(y, nn.LocalResponseNorm(size, alpha, beta, k)(x).flatten(), **TOL64)
