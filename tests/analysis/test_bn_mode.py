"""bn_mode: which modules follow it (the registry decides), and one convention for every analysis tool.

The reference for each mode is written here without normlab's mode logic:
the model is put in eval mode and *the norm module itself* in train mode (for
"train"), then the Hessian-vector product of the loss is taken by
``torch.autograd.functional.hvp`` on a ``functional_call`` of the model with
copies of the buffers (the training forward updates running statistics in
place: on the copies), so running statistics are as before. Everything in
float64. The batch-statistics cases are read from the registry at collection
time, so a norm registered later is tested without touching this file.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import normlab
import normlab.analysis as analysis
from normlab.analysis import (
    HessianOperator,
    SharpnessTracker,
    extreme_eigenvalues,
    hutchinson_trace,
    hvp,
    internal_covariate_shift,
    layer_covariances,
    loss_landscape,
    scale_invariance,
    set_bn_mode,
    spectral_density,
    top_eigenvalues,
)
from normlab.analysis._common import check_bn_mode
from normlab.registry import mode_dependent, statistics_kind

from ._model_state import assert_unchanged, snapshot

DT = torch.float64
mse = F.mse_loss


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and spinning threads slow a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


# ----------------------------------------------------------------------------- the small model


class Head(nn.Module):
    """``norm(x, *conditions) -> flatten -> dropout -> linear``: a norm in a model with something mode-dependent.

    Conditions (for conditional norms) are fixed data of the model, not parameters.
    The dropout must stay off in both modes: with it on, the function would be random.
    """

    def __init__(self, norm: nn.Module, in_shape: tuple[int, ...], conditions: tuple[torch.Tensor, ...] = ()):
        super().__init__()
        self.norm = norm
        self.conditions = conditions
        self.drop = nn.Dropout(0.5)
        self.linear = nn.Linear(math.prod(in_shape[1:]), 2)

    def forward(self, x):
        return self.linear(self.drop(self.norm(x, *self.conditions).flatten(1)))


def prepared(norm: nn.Module, shapes: tuple[tuple[int, ...], ...], seed: int = 0):
    """(model, (x, y)) in float64 with non-trivial running statistics and parameters (train != eval)."""
    n = shapes[0][0]
    assert all(s[0] == n for s in shapes), f"every input of the example must have the batch first: {shapes}"
    conditions = tuple(randn(*s, seed=seed + 10 + i) for i, s in enumerate(shapes[1:]))
    torch.manual_seed(seed)
    model = Head(norm, shapes[0], conditions).to(DT)
    with torch.no_grad():
        model.train()
        for k in range(3):  # running statistics of data unlike the analyzed batch
            model.norm(2 * randn(*shapes[0], seed=seed + 100 + k) + 1, *conditions)
        for i, p in enumerate(model.parameters()):
            p.add_(0.2 * randn(*p.shape, seed=seed + 200 + i))
    model.train()  # as a user would hand it over mid-training
    x, y = randn(*shapes[0], seed=seed + 1), randn(n, 2, seed=seed + 2)
    return model, (x, y)


def reference_hvp(model: Head, data, v: torch.Tensor, train: bool) -> torch.Tensor:
    """H v of the training (``train``) or inference function, by torch.autograd.functional.hvp; model restored."""
    x, y = data
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = tuple(p.detach() for n, p in model.named_parameters() if p.requires_grad)
    vs, i = [], 0
    for p in params:
        vs.append(v[i : i + p.numel()].view_as(p))
        i += p.numel()
    flags = {n: m.training for n, m in model.named_modules()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    model.eval()
    if train:
        model.norm.train()
    try:

        def loss(*ps):
            copies = {n: b.clone() for n, b in buffers.items()}
            return mse(functional_call(model, {**dict(zip(names, ps, strict=True)), **copies}, (x,)), y)

        _, hv = torch.autograd.functional.hvp(loss, params, tuple(vs))
    finally:
        for n, m in model.named_modules():
            m.training = flags[n]
    return torch.cat([t.reshape(-1) for t in hv])


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10 * float(b.abs().max()))


def check_hvp_modes(model: Head, data, expect_train_differs: bool = True) -> None:
    """set_bn_mode's flags, and hvp for both modes against the references; the model is left as found."""
    before = snapshot(model)
    others = [m for m in model.modules() if m is not model and m not in set(model.norm.modules())]
    with torch.no_grad():
        set_bn_mode(model, "train")
        assert all(m.training for m in model.norm.modules()), "the norm (and its submodules) must be in train mode"
        assert not model.training and not any(m.training for m in others), "everything else must be in eval mode"
        set_bn_mode(model, "eval")
        assert not any(m.training for m in model.modules())
        for n, m in model.named_modules():  # set_bn_mode changes flags only; put them back
            m.training = before["flags"][n]
    dim = sum(p.numel() for p in model.parameters())
    v = randn(dim, seed=7)
    ref_train, ref_eval = reference_hvp(model, data, v, True), reference_hvp(model, data, v, False)
    assert_unchanged(model, before)
    if expect_train_differs:  # the two functions differ: a tool in the wrong mode cannot pass
        assert not torch.allclose(ref_train, ref_eval, rtol=1e-3, atol=0)
    close(hvp(model, mse, data, v, bn_mode="train"), ref_train)
    close(hvp(model, mse, data, v, bn_mode="eval"), ref_eval)
    assert_unchanged(model, before)


# ----------------------------------------------------------------------------- every batch-statistics entry

BATCH_ENTRIES = [e for e in normlab.NORMS.entries() if e.statistics == "batch"]
OTHER_ENTRIES = [e for e in normlab.NORMS.entries() if e.statistics != "batch"]


def test_the_registry_has_batch_statistics_norms():
    assert {"batchnorm1d", "batchnorm2d", "batchnorm3d"} <= {e.name for e in BATCH_ENTRIES}


@pytest.mark.parametrize("entry", BATCH_ENTRIES, ids=lambda e: e.name)
def test_batch_statistics_entry_follows_bn_mode(entry):
    norm = entry.build_example()
    assert statistics_kind(norm) == "batch" and mode_dependent(norm)
    model, data = prepared(norm, entry.example_shapes)
    check_hvp_modes(model, data, expect_train_differs=getattr(norm, "track_running_stats", True) is not False)


@pytest.mark.parametrize("entry", OTHER_ENTRIES, ids=lambda e: e.name)
def test_per_sample_entry_runs_in_eval_for_both_modes(entry):
    """Per-sample norms without running statistics compute one function: eval in both modes."""
    norm = entry.build_example()
    model, data = prepared(norm, entry.example_shapes)
    if mode_dependent(norm):  # an example that tracks running statistics: it follows bn_mode
        assert entry.statistics == "sample" and norm.track_running_stats
        check_hvp_modes(model, data)
        return
    with torch.no_grad():
        set_bn_mode(model, "train")
    assert not any(m.training for m in model.modules())
    v = randn(sum(p.numel() for p in model.parameters()), seed=7)
    ref = reference_hvp(model, data, v, False)
    close(hvp(model, mse, data, v, bn_mode="train"), ref)
    close(hvp(model, mse, data, v, bn_mode="eval"), ref)


# ----------------------------------------------------------------------------- instance norm with running stats


@pytest.mark.parametrize("cls", [nn.InstanceNorm2d, normlab.nn.InstanceNorm2d], ids=["torch", "normlab"])
def test_instance_norm_with_running_stats_follows_bn_mode(cls):
    """Per-sample statistics in training, running ones in eval: bn_mode="train" must be the training function."""
    norm = cls(4, affine=True, track_running_stats=True)
    assert statistics_kind(norm) == "sample" and mode_dependent(norm)
    assert not mode_dependent(cls(4, affine=True))
    model, data = prepared(norm, ((6, 4, 5, 5),))
    check_hvp_modes(model, data)


# ----------------------------------------------------------------------------- the protocol for user modules


class _BatchStats(nn.Module):
    """An undeclared helper: the batch's mean and biased variance in training, the running ones in eval."""

    def __init__(self, c: int, momentum: float = 0.1):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x):
        if not self.training:
            return self.running_mean, self.running_var
        mean, var = x.mean(0), x.var(0, unbiased=False)
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * x.shape[0] / (x.shape[0] - 1), self.momentum)
        return mean, var


class UserBatchNorm(nn.Module):
    """A user's batch norm over (N, C) that declares the protocol; its statistics live in an undeclared child."""

    normlab_statistics = "batch"

    def __init__(self, c: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.stats = _BatchStats(c)
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        mean, var = self.stats(x)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class Undeclared(UserBatchNorm):
    normlab_statistics = None  # no declaration: analysis cannot know (documented: it runs in eval)


def test_user_module_declaring_batch_statistics_follows_bn_mode():
    norm = UserBatchNorm(6)
    assert statistics_kind(norm) == "batch" and mode_dependent(norm)
    model, data = prepared(norm, ((12, 6),))
    check_hvp_modes(model, data)  # also: its undeclared child follows it into train mode


def test_user_module_protocol_other_kinds():
    assert not mode_dependent(Undeclared(3)) and statistics_kind(Undeclared(3)) is None
    model = nn.Sequential(nn.Linear(3, 3), Undeclared(3))
    set_bn_mode(model, "train")
    assert not any(m.training for m in model.modules())

    sample = UserBatchNorm(3)
    sample.normlab_statistics = "sample"  # an instance attribute works too
    assert not mode_dependent(sample)
    sample.track_running_stats = True  # per-sample statistics in training, running ones in eval
    assert mode_dependent(sample)
    model = nn.Sequential(nn.Linear(3, 3), sample)
    set_bn_mode(model, "train")
    assert [m.training for m in model] == [False, True]


def test_invalid_declaration_raises_and_changes_nothing():
    norm = UserBatchNorm(3)
    norm.normlab_statistics = "batches"
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 3), norm).to(DT)
    model.train()
    model[1].eval()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"UserBatchNorm\.normlab_statistics must be one of"):
        set_bn_mode(model, "train")
    assert_unchanged(model, before)
    x = randn(8, 3, seed=0)
    with pytest.raises(ValueError, match="normlab_statistics"):
        hvp(model, mse, (x, x), torch.ones(sum(p.numel() for p in model.parameters()), dtype=DT), bn_mode="train")
    assert_unchanged(model, before)


# ----------------------------------------------------------------------------- one convention for every tool


class SpyNorm(nn.Module):
    """A declared batch-statistics norm (mean-only) that records its training flag at every forward."""

    normlab_statistics = "batch"

    def __init__(self, c: int):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(c))
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        if not self.training:
            return x - self.running_mean
        mean = x.mean(0)
        with torch.no_grad():
            self.running_mean.lerp_(mean, 0.1)
        return x - mean


class Spy(nn.Module):
    """An undeclared module (like dropout): must run in eval mode in both modes."""

    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def spy_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), SpyNorm(4), Spy(), nn.Tanh(), nn.Linear(4, 2)).to(DT)


def _v(m):
    return torch.ones(sum(p.numel() for p in m.parameters()), dtype=DT)


# Every public analysis tool that evaluates a model, called with keyword arguments (bn_mode among them).
TOOLS = {
    "hvp": lambda m, d, **kw: hvp(m, mse, d, _v(m), **kw),
    "HessianOperator": lambda m, d, **kw: HessianOperator(m, mse, d, **kw).matvec(_v(m)),
    "top_eigenvalues": lambda m, d, **kw: top_eigenvalues(m, mse, d, k=1, max_iter=3, **kw),
    "extreme_eigenvalues": lambda m, d, **kw: extreme_eigenvalues(m, mse, d, method="power", max_iter=3, **kw),
    "hutchinson_trace": lambda m, d, **kw: hutchinson_trace(m, mse, d, min_samples=2, max_samples=2, **kw),
    "spectral_density": lambda m, d, **kw: spectral_density(m, mse, d, num_probes=1, num_steps=3, **kw),
    "SharpnessTracker": lambda m, d, **kw: SharpnessTracker(m, mse, d, max_iter=3, **kw).step(0),
    "layer_covariances": lambda m, d, **kw: layer_covariances(m, mse, d, **kw),
    "loss_landscape": lambda m, d, **kw: loss_landscape(m, mse, d, [0.1], **kw),
    "internal_covariate_shift": lambda m, d, **kw: internal_covariate_shift(m, mse, d, lr=0.1, **kw),
    "scale_invariance": lambda m, d, **kw: scale_invariance(m, "0.weight", d, cs=(2.0,), loss_fn=mse, **kw),
    "set_bn_mode": lambda m, d, **kw: set_bn_mode(m, **kw),
}


def _public_with_bn_mode() -> dict[str, inspect.Parameter]:
    out = {}
    for name in analysis.__all__:
        obj = getattr(analysis, name)
        if callable(obj) and not dataclasses.is_dataclass(obj):  # result records store bn_mode, not take it
            params = inspect.signature(obj).parameters
            if "bn_mode" in params:
                out[name] = params["bn_mode"]
    return out


def test_bn_mode_is_required_everywhere():
    """No default anywhere; keyword-only except set_bn_mode's own argument. A new tool must be listed in TOOLS."""
    found = _public_with_bn_mode()
    assert set(found) == set(TOOLS), "a public analysis tool takes bn_mode: add it to TOOLS"
    for name, p in found.items():
        assert p.default is inspect.Parameter.empty, f"{name}: bn_mode must have no default"
        expected = inspect.Parameter.POSITIONAL_OR_KEYWORD if name == "set_bn_mode" else inspect.Parameter.KEYWORD_ONLY
        assert p.kind is expected, f"{name}: bn_mode must be keyword-only"


@pytest.mark.parametrize("name", list(TOOLS))
@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_every_tool_runs_the_function_bn_mode_names(name, bn_mode):
    model = spy_model()
    model.train()
    before = snapshot(model)
    data = (randn(8, 3, seed=1), randn(8, 2, seed=2))
    TOOLS[name](model, data, bn_mode=bn_mode)
    if name == "set_bn_mode":
        assert model[1].training == (bn_mode == "train") and not model[2].training and not model.training
        return
    assert model[1].seen and model[2].seen, "the tool never ran the model"
    assert set(model[1].seen) == {bn_mode == "train"}, "the declared batch norm must follow bn_mode"
    assert set(model[2].seen) == {False}, "every other module must run in eval mode"
    assert_unchanged(model, before)


def _message(fn) -> str:
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


@pytest.mark.parametrize("bad", ["batch", "Train", "", None, True, 0, ("train",)])
def test_one_error_message_for_a_bad_bn_mode(bad):
    expected = _message(lambda: check_bn_mode(bad))
    assert "bn_mode must be 'train'" in expected and "or 'eval'" in expected and repr(bad) in expected
    data = (randn(8, 3, seed=1), randn(8, 2, seed=2))
    for name, tool in TOOLS.items():
        model = spy_model()
        before = snapshot(model)
        assert _message(lambda tool=tool, model=model: tool(model, data, bn_mode=bad)) == expected, name
        assert not model[1].seen, f"{name}: validate bn_mode before running the model"
        assert_unchanged(model, before)
    with pytest.raises(TypeError):  # catchable as TypeError too (a wrong type is a TypeError)
        check_bn_mode(bad)


@pytest.mark.parametrize("name", list(TOOLS))
def test_missing_bn_mode_is_a_type_error(name):
    model = spy_model()
    with pytest.raises(TypeError, match="bn_mode"):
        TOOLS[name](model, (randn(8, 3, seed=1), randn(8, 2, seed=2)))
    assert not model[1].seen


def test_set_bn_mode_rejects_a_non_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        set_bn_mode(lambda x: x, "train")
