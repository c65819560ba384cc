"""torch's own module test data, run against normlab's twins.

``torch.testing._internal.common_modules.module_db`` holds, per ``torch.nn``
module, the sample inputs (constructor arguments + forward inputs) and error
inputs torch tests itself with. For every registry entry with a
``torch_twin``, each sample is run through torch's module and through
normlab's class built with the same constructor arguments and holding the
same (randomized) state: outputs, running buffers after two training steps,
and gradients (input and parameters) must agree; each error input must make
normlab raise the same exception type with a message matching torch's regex.
A float64 / bfloat16 input to a float32 module must fail (or succeed) as
torch's does. float64 and float32 on CPU; a few seconds.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import normlab

pytest.importorskip("expecttest", reason="torch's module_db needs the expecttest package (test extras)")
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db  # noqa: E402


def _twin_class(name: str) -> type[nn.Module]:
    assert name.startswith("torch.nn."), name
    return getattr(nn, name.removeprefix("torch.nn."))


TWINS = {_twin_class(e.torch_twin): e for e in normlab.NORMS.entries() if e.torch_twin is not None}
MODULE_INFOS = [mi for mi in module_db if mi.module_cls in TWINS]
DTYPES = {"f64": torch.float64, "f32": torch.float32}
TOL = {
    # Different algorithms (normlab's fast roads, torch's kernels) on O(1) outputs.
    torch.float64: {"rtol": 1e-9, "atol": 1e-10},
    torch.float32: {"rtol": 2e-5, "atol": 2e-5},
}


def test_every_twin_has_torch_module_data():
    """The table below must not silently shrink: every registry twin appears in module_db."""
    covered = {mi.module_cls for mi in MODULE_INFOS}
    assert covered == set(TWINS), f"no module_db entry for {set(TWINS) - covered}"
    assert len(TWINS) >= 10


@torch.no_grad()
def _randomize(module: nn.Module, seed: int) -> None:
    """Non-trivial parameters and running statistics (module_db's modules start at weight 1, bias 0)."""
    gen = torch.Generator().manual_seed(seed)
    for name, t in module.named_parameters():
        r = torch.rand(t.shape, generator=gen, dtype=torch.float64)
        t.copy_(0.5 + r if name.endswith("weight") else r - 0.5)
    for name, t in module.named_buffers():
        if name.endswith("running_mean"):
            t.copy_(torch.rand(t.shape, generator=gen, dtype=torch.float64) - 0.5)
        elif name.endswith("running_var"):
            t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=torch.float64))


def _pair(mi, sample, dtype: torch.dtype, training: bool, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """torch's module and normlab's, same constructor arguments, same state, same mode."""
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    theirs = mi.module_cls(*args, **kwargs).to(dtype)
    _randomize(theirs, seed)
    ours = TWINS[mi.module_cls].cls(*args, **kwargs).to(dtype)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert repr(ours) == repr(theirs)
    return theirs.train(training), ours.train(training)


def _leaves(sample) -> tuple[tuple, dict]:
    def fresh(a):
        return a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a

    return tuple(fresh(a) for a in sample.forward_input.args), {
        k: fresh(v) for k, v in sample.forward_input.kwargs.items()
    }


def _grads(module: nn.Module, out: torch.Tensor, args: tuple, dy: torch.Tensor) -> list[torch.Tensor | None]:
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad] + list(module.parameters())
    grads = torch.autograd.grad(out, leaves, dy, allow_unused=True)
    return [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, leaves, strict=True)]


def _case_id(mi, dtype_name, training):
    return f"{mi.name}-{dtype_name}-{'train' if training else 'eval'}"


CASES = [
    pytest.param(mi, dtype, training, id=_case_id(mi, name, training))
    for mi in MODULE_INFOS
    for name, dtype in DTYPES.items()
    for training in (True, False)
]


@pytest.mark.parametrize(("mi", "dtype", "training"), CASES)
def test_samples_match_torch(mi, dtype, training):
    """Outputs, gradients and (two training steps of) running buffers equal torch's for every sample."""
    tol = TOL[dtype]
    samples = mi.module_inputs_func(mi, device="cpu", dtype=dtype, requires_grad=True, training=training)
    assert samples
    for i, sample in enumerate(samples):
        what = f"sample {i} ({sample.desc or 'default'}, ctor {sample.constructor_input.args} "
        what += f"{sample.constructor_input.kwargs})"
        theirs, ours = _pair(mi, sample, dtype, training, seed=i)
        for step in range(2 if training else 1):
            args_t, kwargs_t = _leaves(sample)
            args_o, kwargs_o = _leaves(sample)
            want = theirs(*args_t, **kwargs_t)
            got = ours(*args_o, **kwargs_o)
            assert got.dtype == want.dtype and got.shape == want.shape, what
            assert_close(got, want, **tol, msg=lambda m, w=what, s=step: f"{w} step {s} output: {m}")
            for (key, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
                assert_close(a, b, **tol, msg=lambda m, w=what, k=key, s=step: f"{w} step {s} {k}: {m}")
            if want.requires_grad:
                dy = torch.randn(want.shape, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
                g_t = _grads(theirs, want, args_t, dy.to(dtype))
                g_o = _grads(ours, got, args_o, dy.to(dtype))
                for j, (a, b) in enumerate(zip(g_o, g_t, strict=True)):
                    assert_close(a, b, **tol, msg=lambda m, w=what, j=j, s=step: f"{w} step {s} gradient {j}: {m}")


ERROR_CASES = [
    pytest.param(mi, id=mi.name) for mi in MODULE_INFOS if getattr(mi, "module_error_inputs_func", None) is not None
]


def test_error_inputs_exist():
    """BatchNorm (eps <= 0 in training) and GroupNorm (indivisible groups) have torch error inputs."""
    names = {p.values[0].module_cls.__name__ for p in ERROR_CASES}
    assert {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm"} <= names


@pytest.mark.parametrize("mi", ERROR_CASES)
def test_error_inputs_raise_like_torch(mi):
    """torch's error inputs: normlab raises an instance of torch's exception type with a matching message.

    A forward error may come earlier, at construction (normlab validates
    arguments there), but not later; a forward that raises leaves the state
    (running statistics, ``num_batches_tracked``) untouched, which torch's
    BatchNorm does not (it counts the batch first).
    """
    errors = mi.module_error_inputs_func(mi, device="cpu", dtype=torch.float32, requires_grad=False, training=True)
    assert errors
    for err in errors:
        sample = err.module_error_input
        args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        what = f"{mi.name}{args}{kwargs}"
        # torch itself raises (else this error input tests nothing)
        with pytest.raises(err.error_type, match=err.error_regex):
            theirs = mi.module_cls(*args, **kwargs)
            if err.error_on == ModuleErrorEnum.FORWARD_ERROR:
                theirs(*sample.forward_input.args, **sample.forward_input.kwargs)
        cls = TWINS[mi.module_cls].cls
        try:
            ours = cls(*args, **kwargs)
        except err.error_type as e:
            assert re.search(err.error_regex, str(e)), f"{what}: {e}"
            continue
        assert err.error_on == ModuleErrorEnum.FORWARD_ERROR, f"{what}: torch raises at construction, normlab did not"
        before = copy.deepcopy(ours.state_dict())
        with pytest.raises(err.error_type, match=err.error_regex):
            ours(*sample.forward_input.args, **sample.forward_input.kwargs)
        for key, value in ours.state_dict().items():
            assert torch.equal(value, before[key]), f"{what}: a failed forward changed {key}"


MIXED = [
    pytest.param(mi, training, input_dtype, id=f"{mi.name}-{'train' if training else 'eval'}-{str(input_dtype)[6:]}")
    for mi in MODULE_INFOS
    for training in (True, False)
    for input_dtype in (torch.float64, torch.bfloat16)
]


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # torch's RMSNorm, float64 input
@pytest.mark.parametrize(("mi", "training", "input_dtype"), MIXED)
def test_mixed_dtype_input_like_torch(mi, training, input_dtype):
    """A float64 or bfloat16 input to a float32 module: normlab raises where torch raises (same type), else agrees.

    torch raises ``RuntimeError: mixed dtype (CPU)`` for float64 input with
    float32 parameters (normlab: :class:`~normlab.functional.checks.MixedDTypeError`,
    a RuntimeError naming the tensor and the fix) and accepts bfloat16 input
    with float32 parameters (its mixed-precision road). One exception:
    torch's LocalResponseNorm has no bfloat16 kernel for 3-D windows
    (``NotImplementedError``); normlab computes it in float32.
    """
    samples = mi.module_inputs_func(mi, device="cpu", dtype=torch.float32, requires_grad=False, training=training)
    for i, sample in enumerate(samples):
        theirs, ours = _pair(mi, sample, torch.float32, training, seed=i)
        args = [a.to(input_dtype) if isinstance(a, torch.Tensor) else a for a in sample.forward_input.args]
        what = f"sample {i} ({sample.desc or 'default'})"
        try:
            want = theirs(*args)
        except NotImplementedError:
            assert mi.module_cls is nn.LocalResponseNorm and input_dtype == torch.bfloat16, what
            continue
        except Exception as e:  # noqa: BLE001 - the type torch raises is what normlab must raise
            before = copy.deepcopy(ours.state_dict())
            with pytest.raises(type(e)):
                ours(*args)
            after = ours.state_dict()
            assert all(torch.equal(v, before[k]) for k, v in after.items()), f"{what}: a failed forward changed state"
            continue
        got = ours(*args)
        assert got.dtype == want.dtype, what
        tol = {"rtol": 1e-5, "atol": 1e-5} if input_dtype == torch.float64 else {"rtol": 2e-2, "atol": 2e-2}
        assert_close(got.double(), want.double(), **tol, msg=lambda m, w=what: f"{w}: {m}")
