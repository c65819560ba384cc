"""The test table, shaped like torch's ModuleInfo: one or more :class:`NormInfo` per registered norm.

Each family has a module in this package (``standard.py``, ``batch_variants.py``,
``whitening.py``, ...) defining ``INFOS: tuple[NormInfo, ...]``; :data:`INFOS`
collects every module found here, so a new family adds a file and nothing else.

A :class:`NormInfo` declares, per case:

- how to build the module (registry name, ``features``, constructor ``kwargs``);
- :class:`SampleInput` s: the shapes of *every* forward input (``(input,)`` or
  ``(input, condition)``), optionally a custom ``make`` (a label map, a mask);
- ``references``: independent float64 implementations written from the
  paper's formula (never calling normlab), ``ref(inputs, state, training,
  dtype) -> output`` where ``inputs`` is the tuple of float64 inputs and
  ``state`` maps *every* parameter and buffer name of ``named_parameters()``
  and ``named_buffers()`` to a float64 tensor (parameters require grad, so
  the reference's gradients are the independent gradients; buffers are the
  values *before* the forward, i.e. what eval mode uses);
- ``twin``: the torch module with the same contract, if any;
- capabilities, read by the generic tests instead of names:
  ``train_eval_differ``, ``double_backward``, ``keeps_memory_format``,
  ``loads_checkpoint`` (a torch module whose ``state_dict`` loads strictly,
  both ways), ``channels_last`` (accepts 4-D/5-D channels-last input);
- ``errors``: :class:`ErrorInput` s (bad constructor arguments or bad input),
  each with the exception type and a regex its message must match;
- ``skips``: test name (a ``test_*`` function of ``tests/test_norms.py`` or
  ``tests/test_compile.py``) -> reason; ``tol32``: float32 tolerances with their reason;
- ``representative``: heavy generic tests (gradgradcheck, compile) run on
  these in the default tier and on every case with ``pytest -m slow``;
  exactly one per registry entry, chosen to reach its richest code path.

``tests/test_norms.py`` checks the table against the registry: every entry
has a case, every case builds its entry's class, twins and checkpoint classes
match ``torch_twin`` / ``loads_from``, every entry declares error inputs.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

import normlab

Reference = Callable[[tuple[Tensor, ...], dict, bool, torch.dtype], Tensor]
MakeInputs = Callable[[torch.dtype, int], tuple[Tensor, ...]]


@dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float
    reason: str = ""


# float32: unit roundoff is 6e-8, reductions over up to ~100 values and the
# cancellation in x - mean (and, on normlab's fast BN road, in the raw moments
# E[x^2] - E[x]^2, checked to lose at most ~2 digits) leave errors of a few
# 1e-6 relative on O(1) outputs; gradients go through one more reduction.
TOL32 = Tol(1e-5, 1e-5, "float32 roundoff over reductions of ~100 values")
TOL32_GRAD = Tol(2e-5, 2e-5, "one more reduction than the forward")


@dataclass(frozen=True)
class SampleInput:
    """One forward call: the shape of each input, or a ``make(dtype, seed)`` returning the inputs."""

    shapes: tuple[tuple[int, ...], ...]
    desc: str = ""
    make: MakeInputs | None = None
    #: which inputs are differentiable (default: all floating inputs)
    differentiable: tuple[bool, ...] | None = None

    def inputs(self, dtype: torch.dtype = torch.float64, seed: int = 1) -> tuple[Tensor, ...]:
        if self.make is not None:
            return tuple(self.make(dtype, seed))
        return tuple(make_input(s, dtype, seed=seed + 10 * i) for i, s in enumerate(self.shapes))

    @property
    def id(self) -> str:
        return self.desc or "-".join("x".join(map(str, s)) for s in self.shapes)


@dataclass(frozen=True)
class ErrorInput:
    """Bad usage and the error it must raise: bad constructor keywords (``ctor``) or bad forward input."""

    desc: str
    error: type[BaseException]
    match: str
    ctor: dict | None = None  # constructor keywords replacing/adding to the case's
    shapes: tuple[tuple[int, ...], ...] | None = None  # forward input shapes
    make: MakeInputs | None = None  # or forward inputs made by hand
    training: bool = True


@dataclass(frozen=True)
class NormInfo:
    id: str
    name: str  # canonical registry name
    features: int | tuple[int, ...] | None
    kwargs: dict
    samples: tuple[SampleInput, ...]
    references: tuple[Reference, ...]
    twin: Callable[[], nn.Module] | None = None
    train_eval_differ: bool = False
    double_backward: bool = True
    keeps_memory_format: bool = True
    channels_last: bool = True
    loads_checkpoint: Callable[[], nn.Module] | None = None
    errors: tuple[ErrorInput, ...] = ()
    skips: dict = field(default_factory=dict)
    tol32: Tol = TOL32
    tol32_grad: Tol = TOL32_GRAD
    representative: bool = False
    #: replaces :func:`randomize` (e.g. a whitening matrix buffer must stay SPD)
    randomize: Callable[[nn.Module, int], None] | None = None

    def build(self, dtype: torch.dtype = torch.float64, seed: int = 0, **overrides) -> nn.Module:
        """The normlab module, through the registry, with random parameters and buffers.

        ``overrides`` replace or add constructor keywords (an :class:`ErrorInput`'s ``ctor``).
        """
        module = normlab.create_norm(self.name, self.features, **{**self.kwargs, **overrides})
        (self.randomize or randomize)(module, seed)
        return module.to(dtype)

    def build_twin(self, module: nn.Module) -> nn.Module | None:
        """The torch twin holding ``module``'s exact state (loaded strictly), same dtype and mode."""
        if self.twin is None:
            return None
        twin = self.twin().to(module_dtype(module))
        twin.load_state_dict(module.state_dict(), strict=True)
        return twin.train(module.training)

    def modes(self) -> tuple[bool, ...]:
        """Training modes to test: eval only where it computes something else."""
        return (True, False) if self.train_eval_differ else (True,)

    def skip_reason(self, test: str) -> str | None:
        return self.skips.get(test)

    def __str__(self) -> str:  # pytest ids
        return self.id


def module_dtype(module: nn.Module) -> torch.dtype:
    for t in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
        return t.dtype
    return torch.float64


@torch.no_grad()
def randomize(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial parameters and running statistics, so references see them."""
    gen = torch.Generator().manual_seed(1000 + seed)
    for name, t in module.named_parameters():
        if name.endswith("weight"):
            t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=torch.float64))
        else:
            t.copy_(0.5 * torch.randn(t.shape, generator=gen, dtype=torch.float64))
    for name, t in module.named_buffers():
        if name.endswith("running_mean"):
            t.copy_(0.3 * torch.randn(t.shape, generator=gen, dtype=torch.float64))
        elif name.endswith("running_var"):
            t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=torch.float64))


def make_input(shape: tuple[int, ...], dtype: torch.dtype = torch.float64, seed: int = 0, shift: float = 0.5) -> Tensor:
    """Gaussian input with a per-channel offset and scale (statistics are not ~(0, 1) already)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if len(shape) >= 2:
        c = shape[1]
        view = [1] * len(shape)
        view[1] = c
        x = x * torch.linspace(0.5, 2.0, c, dtype=torch.float64).view(view) + shift * torch.arange(
            c, dtype=torch.float64
        ).view(view)
    return x.to(dtype)


def reference_state(module: nn.Module, requires_grad: bool = False) -> dict:
    """Every parameter and buffer of ``module`` as a float64 copy (parameters as leaves if ``requires_grad``)."""
    state: dict = {}
    for name, p in module.named_parameters():
        t = p.detach().to(torch.float64).clone()
        state[name] = t.requires_grad_(True) if requires_grad else t
    for name, b in module.named_buffers():
        state[name] = b.detach().clone().to(torch.float64) if b.is_floating_point() else b.detach().clone()
    return state


def _collect() -> tuple[NormInfo, ...]:
    infos: list[NormInfo] = []
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        infos.extend(importlib.import_module(f"{__name__}.{mod.name}").INFOS)
    return tuple(infos)


INFOS: tuple[NormInfo, ...] = _collect()
INFO_IDS = [i.id for i in INFOS]
assert len(set(INFO_IDS)) == len(INFO_IDS), "NormInfo ids must be unique"
