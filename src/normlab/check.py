"""Self-check: every registered norm against its reference on random data.

References: the torch.nn twin where torch has the layer (loaded with the
same state_dict), otherwise an independent formula written with torch ops
(LayerNorm2d/3d: permute -> layer_norm -> permute); and for every norm the
generic partition -> operation -> recovery composition (the oracle its fast
path must equal). Used by ``normlab check`` and ``normlab tour``.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional import generic
from .registry import NormEntry, get_entry, list_norms

_EXAMPLE_SHAPES = {2: (16, 8), 3: (8, 8, 20), 4: (8, 8, 12, 12), 5: (4, 8, 4, 6, 6)}
NUM_FEATURES = 8
# Options that make the example exercise the whole layer at NUM_FEATURES channels.
_CHECK_KWARGS = {
    "groupnorm": {"num_groups": 4},
    "instancenorm1d": {"affine": True},
    "instancenorm2d": {"affine": True},
    "instancenorm3d": {"affine": True},
}


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
    if entry.torch_twin is None:
        return None
    mod_name, _, cls_name = entry.torch_twin.rpartition(".")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    twin = copy.deepcopy(module)
    twin.__class__ = cls  # same attributes and state; torch's forward
    return twin


def _affine_channels_last_ln(m: nn.Module, x: Tensor) -> Tensor:
    perm = [0, *range(2, x.dim()), 1]
    inv = [0, x.dim() - 1, *range(1, x.dim() - 1)]
    y = F.layer_norm(x.permute(perm), (x.shape[1],), m.weight, m.bias, m.eps)
    return y.permute(inv)


def _generic(entry: NormEntry, m: nn.Module, x: Tensor) -> Tensor:
    """The generic composition for the module's current mode (batch statistics)."""
    name = entry.name
    if name.startswith("batchnorm"):
        return generic.batch_norm(x, m.weight, m.bias, m.eps)[0]
    if name.startswith("instancenorm"):
        return generic.instance_norm(x, m.weight, m.bias, m.eps)[0]
    if name == "groupnorm":
        return generic.group_norm(x, m.num_groups, m.weight, m.bias, m.eps)
    if name == "layernorm":
        return generic.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)
    if name in ("layernorm2d", "layernorm3d"):
        return generic.channel_layer_norm(x, m.weight, m.bias, m.eps)
    if name == "rmsnorm":
        return generic.rms_norm(x, m.normalized_shape, m.weight, m.eps)
    if name == "localresponsenorm":
        # LRN has no statistics to partition; its reference is torch's own formula.
        return F.local_response_norm(x, m.size, m.alpha, m.beta, m.k)
    raise KeyError(f"no generic composition registered for {name!r}")


def _reference(entry: NormEntry, m: nn.Module, x: Tensor) -> tuple[str, Tensor]:
    twin = _torch_twin(entry, m)
    if twin is not None:
        return entry.torch_twin, twin(x)
    if entry.name in ("layernorm2d", "layernorm3d"):
        return "permute -> F.layer_norm -> permute", _affine_channels_last_ln(m, x)
    return "generic composition", _generic(entry, m, x)


def _example(entry: NormEntry, dtype: torch.dtype, seed: int) -> tuple[nn.Module, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = _EXAMPLE_SHAPES[entry.input_rank]
    features = shape[-1] if entry.features_arg == "normalized_shape" else NUM_FEATURES
    module = entry.build(features, **_CHECK_KWARGS.get(entry.name, {})).to(dtype)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype))
    x = (torch.randn(shape, generator=gen, dtype=dtype) * 2 + 0.5).requires_grad_()
    return module, x


def check_norm(name: str, seed: int = 0) -> CheckRow:
    entry = get_entry(name)
    errs = {}
    for dtype in (torch.float64, torch.float32):
        module, x = _example(entry, dtype, seed)
        ref_name, ref = _reference(entry, copy.deepcopy(module), x)
        out = module(x)
        errs[dtype] = (out - ref).abs().max().item()
        if dtype == torch.float64:
            gen_err = (out - _generic(entry, module, x)).abs().max().item()
            errs[dtype] = max(errs[dtype], gen_err)
            g = torch.randn_like(out)
            gx = torch.autograd.grad(out, x, g)[0]
            gx_ref = torch.autograd.grad(ref, x, g)[0]
            grad_err = (gx - gx_ref).abs().max().item()
    return CheckRow(name, ref_name, errs[torch.float64], grad_err, errs[torch.float32])


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
