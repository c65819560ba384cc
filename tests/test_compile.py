"""torch.compile over the test table: fullgraph capture, the same numbers as eager.

The "aot_eager" backend traces forward and backward through dynamo and AOT
autograd (what fullgraph capture needs) without generating code, so it is
fast; it runs on every representative case (first sample) by default and on
every sample of every case under ``-m slow``. The inductor backend (code
generation, minutes for the table) runs end to end on one batch-statistics
case by default (running-statistics mutation is the riskiest thing to
compile) and on every representative case under ``-m slow``.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from torch.testing import assert_close

import normlab
from normtable import INFOS, NormInfo, SampleInput

# torch's own import-time deprecation noise from the compile stack.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _tol(info: NormInfo) -> dict:
    # Compiled code fuses and reorders reductions: float32 roundoff, as the case declares it
    # (gradients go through one more reduction).
    return {"rtol": info.tol32_grad.rtol, "atol": info.tol32_grad.atol}


def _params(test: str, default) -> list:
    """``(info, sample)``: ``default(info, index)`` picks the default tier, the rest is marked slow."""
    out = []
    for info in INFOS:
        for i, sample in enumerate(info.samples):
            marks = [] if default(info, i) else [pytest.mark.slow]
            reason = info.skip_reason(test)
            if reason:
                marks.append(pytest.mark.skip(reason=reason))
            out.append(pytest.param(info, sample, id=f"{info.id}-{sample.id}", marks=marks))
    return out


def _differentiable(sample: SampleInput, inputs) -> tuple[bool, ...]:
    return (
        tuple(sample.differentiable)
        if sample.differentiable is not None
        else tuple(t.is_floating_point() for t in inputs)
    )


def _steps(module, fn, sample: SampleInput, seeds, training=True):
    """Forward (by ``fn``, eager or compiled) and backward for a few batches.

    Returns, per step, the output and the gradients of every differentiable
    input and parameter, then ``module``'s final state.
    """
    module.train(training)
    outs = []
    for seed in seeds:
        inputs = sample.inputs(torch.float32, seed)
        diff = _differentiable(sample, inputs)
        xs = tuple(t.detach().clone().requires_grad_(d) if d else t for t, d in zip(inputs, diff, strict=True))
        y = fn(*xs)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 100))
        leaves = [x for x, d in zip(xs, diff, strict=True) if d] + list(module.parameters())
        grads = torch.autograd.grad(y, leaves, dy, allow_unused=True)
        outs.append(
            (y.detach(), *(torch.zeros_like(v) if g is None else g for g, v in zip(grads, leaves, strict=True)))
        )
    return outs, {k: v.clone() for k, v in module.state_dict().items()}


def _check_compiled(info: NormInfo, sample: SampleInput, **compile_kwargs) -> None:
    eager = info.build(torch.float32)
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, fullgraph=True, **compile_kwargs)
    tol = _tol(info)
    want, want_state = _steps(eager, eager, sample, (1, 2, 3))
    got, got_state = _steps(compiled_module, compiled, sample, (1, 2, 3))
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        for i, (a, b) in enumerate(zip(g, w, strict=True)):
            assert_close(a, b, **tol, msg=lambda m, s=step, i=i: f"train step {s}, tensor {i}: {m}")
    assert got_state.keys() == want_state.keys()
    for key, w in want_state.items():
        if w.is_floating_point():
            assert_close(got_state[key], w, **tol, msg=lambda m, k=key: f"{k}: {m}")
        else:
            assert torch.equal(got_state[key], w), f"{key}: {got_state[key]} != {w}"
    # and inference
    inputs = sample.inputs(torch.float32, 9)
    compiled_module.eval()
    eager.eval()
    with torch.no_grad():
        assert_close(compiled(*inputs), eager(*inputs), **tol)


@pytest.mark.parametrize(
    ("info", "sample"),
    _params("test_fullgraph_aot_eager_matches_eager", lambda info, i: info.representative and i == 0),
)
def test_fullgraph_aot_eager_matches_eager(info, sample):
    _check_compiled(info, sample, backend="aot_eager")


def _has_c_compiler() -> bool:
    return any(shutil.which(cc) for cc in ("gcc", "cc", "clang"))


def _first_batch_representative() -> str | None:
    for info in INFOS:
        if info.representative and normlab.get_entry(info.name).statistics == "batch":
            return info.id
    return None


_INDUCTOR_DEFAULT = _first_batch_representative()


@pytest.mark.skipif(not _has_c_compiler(), reason="inductor's CPU backend needs a C compiler")
@pytest.mark.parametrize(
    ("info", "sample"),
    [
        p
        for p in _params("test_inductor_matches_eager", lambda info, i: info.id == _INDUCTOR_DEFAULT and i == 0)
        if p.values[0].representative and p.values[1] is p.values[0].samples[0]
    ],
)
def test_inductor_matches_eager(info, sample):
    _check_compiled(info, sample)
