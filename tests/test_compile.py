"""torch.compile smoke tests: fullgraph capture, same numbers as eager.

The "aot_eager" backend traces forward and backward through dynamo and AOT
autograd (what fullgraph capture needs) without generating code, so it is
fast; one test runs the default inductor backend end to end.
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from torch.testing import assert_close

from normlab import nn as nln

# torch's own import-time deprecation noise from the compile stack.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

# Compiled code fuses and reorders reductions; float32 outputs of O(1).
TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _x(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 1.5 + 0.3


def _randomize(m, seed=0):
    # Seeded: the float32 eager-vs-compiled comparison must not depend on the run's global RNG state.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return m


MODULES = {
    "bn2d": (lambda: nln.BatchNorm2d(3), (4, 3, 4, 5)),
    "bn2d-short-rows": (lambda: nln.BatchNorm2d(3), (4, 3, 2, 2)),
    "bn2d-cumulative": (lambda: nln.BatchNorm2d(3, momentum=None), (4, 3, 4, 5)),
    "ln2d": (lambda: nln.LayerNorm2d(3), (2, 3, 4, 5)),
    "gn": (lambda: nln.GroupNorm(2, 4), (2, 4, 3, 3)),
    "in2d-affine-track": (lambda: nln.InstanceNorm2d(3, affine=True, track_running_stats=True), (2, 3, 4, 4)),
    "rms": (lambda: nln.RMSNorm(5), (2, 3, 5)),
}


def _steps(module, fn, shapes_seeds, training=True):
    """Forward (by ``fn``, eager or compiled) + backward for a few batches.

    Returns outputs, input and parameter gradients per step, and ``module``'s final state.
    """
    module.train(training)
    outs = []
    for shape, seed in shapes_seeds:
        x = _x(shape, seed).requires_grad_(True)
        y = fn(x)
        dy = _x(shape, seed + 100)
        grads = torch.autograd.grad(y, [x, *module.parameters()], dy)
        outs.append((y.detach(), *grads))
    return outs, {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", list(MODULES))
def test_fullgraph_aot_eager_matches_eager(name):
    factory, shape = MODULES[name]
    eager = _randomize(factory())
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, backend="aot_eager", fullgraph=True)
    batches = [(shape, 1), (shape, 2), (shape, 3)]
    want, want_state = _steps(eager, eager, batches)
    got, got_state = _steps(compiled_module, compiled, batches)
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        for i, (a, b) in enumerate(zip(g, w, strict=True)):
            assert_close(a, b, **TOL, msg=lambda m, s=step, i=i: f"train step {s}, tensor {i}: {m}")
    for key in want_state:
        assert_close(got_state[key], want_state[key], **TOL, msg=lambda m, k=key: f"{k}: {m}")
    # and inference
    x = _x(shape, 9)
    compiled_module.eval()
    with torch.no_grad():
        assert_close(compiled(x), eager.eval()(x), **TOL)


def _has_c_compiler() -> bool:
    return any(shutil.which(cc) for cc in ("gcc", "cc", "clang"))


@pytest.mark.skipif(not _has_c_compiler(), reason="inductor's CPU backend needs a C compiler")
def test_inductor_batch_norm_training_matches_eager():
    eager = _randomize(nln.BatchNorm2d(3))
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, fullgraph=True)
    shape = (4, 3, 4, 5)
    batches = [(shape, 1), (shape, 2)]
    want, want_state = _steps(eager, eager, batches)
    got, got_state = _steps(compiled_module, compiled, batches)
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g, w, strict=True):
            assert_close(a, b, **TOL)
    for key in want_state:
        assert_close(got_state[key], want_state[key], **TOL)
    assert got_state["num_batches_tracked"].item() == 2
