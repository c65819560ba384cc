"""Self-check: every registered norm against its references on random data.

For each registry entry, its example configuration (``entry.example`` at the
size of ``entry.example_shapes``, every forward input, conditional norms
too) is run with random parameters and running statistics and compared with

- the torch twin (``entry.torch_twin``: the same state, torch's forward) where
  torch has the layer, otherwise the generic partition -> operation ->
  recovery composition (``entry.oracle``);
- in float64, the oracle as well (the composition its fast path must equal).

Outputs and the gradients of every input are compared in float64, outputs in
float32 (errors are ``max |out - ref|`` in units of ``max(1, max |ref|)``);
entries whose eval mode computes another function (running statistics) are
checked in both modes. Nothing here knows a norm by name:
everything comes from the registry. Used by ``normlab check`` and ``normlab tour``.

Example::

    >>> from normlab.check import check_norm
    >>> row = check_norm("groupnorm")
    >>> row.reference, row.ok
    ('torch.nn.GroupNorm', True)
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .registry import NormEntry, get_entry, list_norms, mode_dependent


@dataclass
class CheckRow:
    name: str
    reference: str
    max_err_fp64: float
    max_grad_err_fp64: float
    max_err_fp32: float
    tol_fp64: float = 1e-9
    tol_fp32: float = 1e-4

    @property
    def ok(self) -> bool:
        return (
            self.max_err_fp64 <= self.tol_fp64
            and self.max_grad_err_fp64 <= self.tol_fp64
            and self.max_err_fp32 <= self.tol_fp32
        )


def _torch_twin(entry: NormEntry, module: nn.Module) -> nn.Module | None:
    """A copy of ``module`` running torch's forward (the twin is a base class: same attributes and state)."""
    if entry.torch_twin is None:
        return None
    mod_name, _, cls_name = entry.torch_twin.rpartition(".")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    twin = copy.deepcopy(module)
    twin.__class__ = cls
    return twin


def _reference(entry: NormEntry, module: nn.Module):
    """``(name, fn(*inputs))``: the torch twin, else torch's equivalent with stock ops, else the oracle,
    else None (nothing independent to check). The oracle is checked in any case (see :func:`check_norm`)."""
    twin = _torch_twin(entry, module)
    if twin is not None:
        return entry.torch_twin, twin
    if entry.torch_equivalent is not None:
        ref_module = copy.deepcopy(module)
        doc = (entry.torch_equivalent.__doc__ or "").strip().splitlines()[0].split(":")[0]
        return f"torch ops: {doc}"[:36], lambda *inputs: entry.torch_equivalent(ref_module, *inputs)
    if entry.oracle is not None:
        oracle_module = copy.deepcopy(module)
        return "generic composition", lambda *inputs: entry.oracle(oracle_module, *inputs)
    return None


@torch.no_grad()
def _randomize(module: nn.Module, gen: torch.Generator) -> None:
    """Random parameters (N(0, 1)); random running means and positive running variances."""
    for p in module.parameters():
        p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    for name, b in module.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.3 * torch.randn(b.shape, generator=gen, dtype=torch.float64))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=gen, dtype=torch.float64))


def _example(entry: NormEntry, dtype: torch.dtype, seed: int) -> tuple[nn.Module, tuple[Tensor, ...]]:
    gen = torch.Generator().manual_seed(seed)
    module = entry.build_example()
    _randomize(module, gen)
    module = module.to(dtype)
    inputs = tuple(
        (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5).to(dtype).requires_grad_()
        for shape in entry.example_shapes
    )
    return module, inputs


def _max_err(a: Tensor, b: Tensor) -> float:
    """``max |a - b|`` in units of ``max(1, max |b|)``: roundoff grows with the outputs' magnitude
    (a conditional norm's predicted scale makes outputs of hundreds), O(1) outputs read as absolute errors."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp(min=1.0)).item()


def check_norm(name: str, seed: int = 0) -> CheckRow:
    """Max errors of one norm's example against its reference (and oracle), as a :class:`CheckRow`."""
    entry = get_entry(name)
    errs = {torch.float64: 0.0, torch.float32: 0.0}
    grad_err = 0.0
    ref_name = "-"
    for dtype in (torch.float64, torch.float32):
        module, inputs = _example(entry, dtype, seed)
        for training in (True, False) if mode_dependent(module) else (True,):
            module.train(training)
            reference = _reference(entry, module)  # a copy with the state before this forward
            oracle_module = copy.deepcopy(module)
            out = module(*inputs)
            if reference is None:
                ref_name = "(none: the module is the composition)"
                continue
            ref_name, ref_fn = reference
            ref = ref_fn(*inputs)
            errs[dtype] = max(errs[dtype], _max_err(out, ref))
            if dtype != torch.float64:
                continue
            if entry.oracle is not None:
                errs[dtype] = max(errs[dtype], _max_err(out, entry.oracle(oracle_module, *inputs)))
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=out.dtype)
            got = torch.autograd.grad(out, inputs, g, allow_unused=True)
            want = torch.autograd.grad(ref, inputs, g, allow_unused=True)
            for x, a, b in zip(inputs, got, want, strict=True):  # None: the output does not depend on x
                grad_err = max(grad_err, _max_err(x * 0 if a is None else a, x * 0 if b is None else b))
    return CheckRow(entry.name, ref_name, errs[torch.float64], grad_err, errs[torch.float32])


def check_all(seed: int = 0) -> list[CheckRow]:
    return [check_norm(name, seed) for name in list_norms()]


def format_table(rows: list[CheckRow]) -> str:
    header = f"{'norm':<20} {'reference':<36} {'fp64 max err':>12} {'fp64 grad':>10} {'fp32 max err':>12}  ok"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.name:<20} {r.reference:<36} {r.max_err_fp64:>12.2e} {r.max_grad_err_fp64:>10.2e} "
            f"{r.max_err_fp32:>12.2e}  {'yes' if r.ok else 'NO'}"
        )
    return "\n".join(lines)
