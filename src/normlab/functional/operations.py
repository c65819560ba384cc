"""Operations (the survey's NOP): what is removed from each group.

Each works on a grouped tensor ``(R, D, M)`` (see :mod:`.partition`) and
reduces over the last dim, i.e. per (group, feature). All statistics are
computed in the accumulation dtype (float32 at least).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .stats import accumulation_dtype


class Normalized(NamedTuple):
    """Result of an operation: the output and the statistics it used.

    ``mean`` and ``var`` (biased) have shape ``(R, D, 1)``; ``scale`` is the
    divisor that was applied. Fields that an operation does not use are None.
    """

    output: Tensor
    mean: Tensor | None
    var: Tensor | None
    scale: Tensor | None


def _acc(g: Tensor) -> Tensor:
    return g.to(accumulation_dtype(g.dtype))


def center(g: Tensor) -> Normalized:
    """Mean-only normalization: ``x - mean(x)``."""
    g = _acc(g)
    mean = g.mean(-1, keepdim=True)
    return Normalized(g - mean, mean, None, None)


def linf_constant(n: int) -> float:
    """C(n) = 0.5 (1 + sqrt(pi ln 4)) / sqrt(2 ln n) of L-inf BN (Hoffer et al. 2018).

    It scales the range max|x - mu| of n Gaussian samples; measured on Gaussian
    data the resulting L-inf scale is ~1.4 sigma, so L-inf BN outputs have std
    ~0.7, not 1 (SPECS.md; the paper's constant, kept as published).
    """
    if n < 2:
        raise ValueError(f"L-inf scale needs at least 2 values per group, got {n}")
    return 0.5 * (1.0 + math.sqrt(math.pi * math.log(4.0))) / math.sqrt(2.0 * math.log(n))


def standardize(g: Tensor, eps: float, norm: str = "l2") -> Normalized:
    """``(x - mean) / scale`` with the scale from the chosen norm of the deviations.

    - ``"l2"``: ``sqrt(var + eps)`` with the biased variance (BN, LN, GN, IN).
    - ``"l1"``: ``sqrt(pi/2) * mean|x - mean| + eps`` (~sigma for Gaussian data).
    - ``"linf"``: ``C(M) * max|x - mean| + eps`` (Hoffer et al. 2018, top-1).
    """
    g = _acc(g)
    if norm == "l2":
        var, mean = torch.var_mean(g, dim=-1, correction=0, keepdim=True)
        scale = torch.sqrt(var + eps)
        return Normalized((g - mean) / scale, mean, var, scale)
    mean = g.mean(-1, keepdim=True)
    dev = g - mean
    if norm == "l1":
        scale = math.sqrt(math.pi / 2.0) * dev.abs().mean(-1, keepdim=True) + eps
    elif norm == "linf":
        scale = linf_constant(g.shape[-1]) * dev.abs().amax(-1, keepdim=True) + eps
    else:
        raise ValueError(f"norm must be 'l2', 'l1' or 'linf', got {norm!r}")
    return Normalized(dev / scale, mean, None, scale)


def rms_scale(g: Tensor, eps: float) -> Normalized:
    """RMS scaling without centering: ``x / sqrt(mean(x^2) + eps)``."""
    g = _acc(g)
    scale = torch.sqrt(g.square().mean(-1, keepdim=True) + eps)
    return Normalized(g / scale, None, None, scale)


def apply_stats(g: Tensor, mean: Tensor, var: Tensor, eps: float) -> Tensor:
    """Standardize with given (e.g. running) statistics: ``(x - mean) / sqrt(var + eps)``."""
    g = _acc(g)
    return (g - mean.to(g.dtype)) / torch.sqrt(var.to(g.dtype) + eps)
