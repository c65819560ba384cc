"""Recoveries (the survey's NRR): what is put back after normalizing."""

from __future__ import annotations

from torch import Tensor


def _check_param(p: Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(p.shape) != shape:
        raise ValueError(f"expected {name} of shape {shape}, got {tuple(p.shape)}")


def channel_affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, dim: int = 1) -> Tensor:
    """Per-channel ``gamma * y + beta`` for ``y`` of shape ``(N, C, *spatial)``."""
    c = y.shape[dim]
    view = [1] * y.dim()
    view[dim] = c
    if weight is not None:
        _check_param(weight, (c,), "weight")
        y = y * weight.to(y.dtype).view(view)
    if bias is not None:
        _check_param(bias, (c,), "bias")
        y = y + bias.to(y.dtype).view(view)
    return y


def element_affine(y: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """Per-element ``gamma * y + beta`` over the trailing dims (LayerNorm, RMSNorm)."""
    for p, name in ((weight, "weight"), (bias, "bias")):
        if p is not None:
            _check_param(p, tuple(y.shape[y.dim() - p.dim() :]), name)
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y
