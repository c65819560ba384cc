"""Recoveries (the survey's NRR): what is put back after normalizing."""

from __future__ import annotations

import torch
from torch import Tensor


def _check_param(p: Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(p.shape) != shape:
        raise ValueError(f"expected {name} of shape {shape}, got {tuple(p.shape)}")


def channel_affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, dim: int = 1) -> Tensor:
    """Per-channel ``gamma * y + beta`` for ``y`` of shape ``(N, C, *spatial)`` (one fused pass with both)."""
    c = y.shape[dim]
    view = [1] * y.dim()
    view[dim] = c
    for p, name in ((weight, "weight"), (bias, "bias")):
        if p is not None:
            _check_param(p, (c,), name)
    if weight is not None and bias is not None:
        return torch.addcmul(bias.to(y.dtype).view(view), y, weight.to(y.dtype).view(view))
    if weight is not None:
        return y * weight.to(y.dtype).view(view)
    if bias is not None:
        return y + bias.to(y.dtype).view(view)
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


def _modulation_view(p: Tensor, y: Tensor, name: str) -> Tensor:
    """``p`` shaped to broadcast against ``y`` ``(N, C, *spatial)``, or a ValueError naming the shapes accepted."""
    n, c, spatial = y.shape[0], y.shape[1], tuple(y.shape[2:])
    shape = tuple(p.shape)
    if shape == (c,):  # per channel
        return p.view([1, c] + [1] * len(spatial))
    if shape == (n, c):  # per sample and channel (AdaIN, conditional BN, FiLM)
        return p.view([n, c] + [1] * len(spatial))
    if (
        len(shape) == y.dim()
        and shape[:2] == (n, c)
        and all(s in (1, t) for s, t in zip(shape[2:], spatial, strict=True))
    ):
        return p  # per position (SPADE) or per sample (N, C, 1, ...)
    raise ValueError(
        f"modulate expected {name} of shape (C,) = ({c},), (N, C) = ({n}, {c}) or (N, C, *spatial) = "
        f"{(n, c, *spatial)} (spatial sizes may be 1), got {shape}; resize a spatial map to the input's size first "
        f"(e.g. F.interpolate(..., size={spatial}, mode='nearest'))"
    )


def modulate(y: Tensor, scale: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
    """Conditional recovery ``y * scale + shift`` for ``y`` ``(N, C, *spatial)``.

    ``scale`` and ``shift`` may each be per channel ``(C,)``, per sample
    ``(N, C)`` or per position ``(N, C, *spatial)`` (spatial sizes may be 1);
    anything else raises a ``ValueError`` (nothing broadcasts silently). The
    ``1 + gamma`` form of SPADE is ``modulate(y, 1 + gamma, beta)``. Output in
    ``y``'s dtype.

    >>> import torch
    >>> y = torch.zeros(2, 3, 4, 4)
    >>> modulate(y, torch.ones(2, 3), torch.ones(2, 3, 4, 4)).shape
    torch.Size([2, 3, 4, 4])
    """
    if y.dim() < 2:
        raise ValueError(f"modulate expected y of shape (N, C, *spatial), got {tuple(y.shape)}")
    if scale is not None and shift is not None:
        return torch.addcmul(
            _modulation_view(shift, y, "shift").to(y.dtype), y, _modulation_view(scale, y, "scale").to(y.dtype)
        )
    if scale is not None:
        y = y * _modulation_view(scale, y, "scale").to(y.dtype)
    if shift is not None:
        y = y + _modulation_view(shift, y, "shift").to(y.dtype)
    return y
