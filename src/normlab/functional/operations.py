"""Operations (the survey's NOP): what is removed from each group, as *estimate* then *apply*.

Each operation is the composition of an estimator from :mod:`.stats` (which
returns a typed statistic: :class:`~.stats.Moments` or :class:`Scale`) and an
apply function that consumes it. The estimators take any reduction dims, so
they work in the input's own layout (or a partition's no-copy view); the
functions here keep the ``(R, D, M)`` convenience form of the generic road
(reduce over the last dim) and return :class:`Normalized` ``(output, stats)``.
All statistics are computed in the accumulation dtype (float32 at least).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .stats import Moments, Reduce, Statistics, accumulation_dtype, apply_moments, estimate_moments


class Scale(NamedTuple):
    """A divisor statistic: ``y = (x - mean) / scale`` (``mean`` None: no centering).

    L1 and L-inf standardization and RMS scaling estimate one. Its running
    values are ``(mean, scale)`` as they are (no Bessel factor).
    """

    mean: Tensor | None
    scale: Tensor
    count: Tensor | int

    def running_values(self) -> tuple[Tensor | None, Tensor]:
        return self.mean, self.scale

    def detach(self) -> Scale:
        return Scale(None if self.mean is None else self.mean.detach(), self.scale.detach(), self.count)


class Normalized(NamedTuple):
    """Result of an operation: the output and the typed statistics it used.

    ``mean``/``var``/``scale`` read the statistics (shape ``(R, D, 1)`` on the
    generic road); a field the statistic does not have is None.
    """

    output: Tensor
    stats: Statistics | Scale

    @property
    def mean(self) -> Tensor | None:
        return self.stats.mean

    @property
    def var(self) -> Tensor | None:
        return self.stats.var if isinstance(self.stats, Moments) else None

    @property
    def scale(self) -> Tensor | None:
        if isinstance(self.stats, Scale):
            return self.stats.scale
        return None


def linf_constant(n: int) -> float:
    """C(n) = 0.5 (1 + sqrt(pi ln 4)) / sqrt(2 ln n) of L-inf BN (Hoffer et al. 2018).

    It scales the range max|x - mu| of n Gaussian samples; measured on Gaussian
    data the resulting L-inf scale is ~1.4 sigma, so L-inf BN outputs have std
    ~0.7, not 1 (SPECS.md; the paper's constant, kept as published).
    """
    if n < 2:
        raise ValueError(f"L-inf scale needs at least 2 values per group, got {n}")
    return 0.5 * (1.0 + math.sqrt(math.pi * math.log(4.0))) / math.sqrt(2.0 * math.log(n))


def estimate_scale(
    x: Tensor, dims: int | Sequence[int], eps: float, norm: str = "l1", *, reduce: Reduce | None = None
) -> Scale:
    """The divisor of L1 / L-inf standardization or RMS scaling over ``dims`` (kept as size-1 dims).

    - ``"l1"``: ``sqrt(pi/2) * mean|x - mean| + eps`` (~sigma for Gaussian data).
    - ``"linf"``: ``C(M) * max|x - mean| + eps`` (Hoffer et al. 2018, top-1).
    - ``"rms"``: ``sqrt(mean(x^2) + eps)``, no centering.

    ``reduce`` sums across processes (``"linf"``'s max cannot be summed: it
    raises a ValueError with a reduce hook).
    """
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    xa = x.to(accumulation_dtype(x.dtype))
    count = math.prod([x.shape[d] for d in dims])
    if norm == "rms":
        ms = xa.square().sum(dims, keepdim=True)
        if reduce is not None:
            packed = reduce(torch.cat([ms.reshape(-1), ms.new_tensor([float(count)])]))
            ms, count = packed[:-1].view_as(ms), packed[-1]
        return Scale(None, torch.sqrt(ms / count + eps), count)
    m = estimate_moments(xa, dims, reduce=reduce)
    dev = (xa - m.mean).abs()
    if norm == "l1":
        s = dev.sum(dims, keepdim=True)
        if reduce is not None:
            s = reduce(s.reshape(-1)).view_as(s)
        return Scale(m.mean, math.sqrt(math.pi / 2.0) * s / m.count + eps, m.count)
    if norm == "linf":
        if reduce is not None:
            raise ValueError("estimate_scale: the L-inf scale is a max, which a sum-reduction hook cannot pool")
        return Scale(m.mean, linf_constant(count) * dev.amax(dims, keepdim=True) + eps, count)
    raise ValueError(f"norm must be 'l1', 'linf' or 'rms', got {norm!r}")


def apply_scale(x: Tensor, stats: Scale) -> Tensor:
    """``(x - mean) / scale`` (or ``x / scale`` without a mean) in the accumulation dtype."""
    xa = x.to(accumulation_dtype(x.dtype))
    if stats.mean is not None:
        xa = xa - stats.mean.to(xa.dtype)
    return xa / stats.scale.to(xa.dtype)


def center(g: Tensor) -> Normalized:
    """Mean-only normalization: ``x - mean(x)`` over the last dim."""
    m = estimate_moments(g, -1)
    return Normalized(g.to(m.mean.dtype) - m.mean, m)


def standardize(g: Tensor, eps: float, norm: str = "l2") -> Normalized:
    """``(x - mean) / scale`` over the last dim, with the scale from the chosen norm of the deviations.

    - ``"l2"``: ``sqrt(var + eps)`` with the biased variance (BN, LN, GN, IN):
      :func:`~.stats.estimate_moments` then :func:`~.stats.apply_moments`.
    - ``"l1"``, ``"linf"``: :func:`estimate_scale` then :func:`apply_scale`.
    """
    if norm == "l2":
        m = estimate_moments(g, -1)
        return Normalized(apply_moments(g, m, eps), m)
    if norm not in ("l1", "linf"):
        raise ValueError(f"norm must be 'l2', 'l1' or 'linf', got {norm!r}")
    s = estimate_scale(g, -1, eps, norm)
    return Normalized(apply_scale(g, s), s)


def rms_scale(g: Tensor, eps: float) -> Normalized:
    """RMS scaling without centering: ``x / sqrt(mean(x^2) + eps)`` over the last dim."""
    s = estimate_scale(g, -1, eps, "rms")
    return Normalized(apply_scale(g, s), s)


def apply_stats(g: Tensor, mean: Tensor, var: Tensor, eps: float) -> Tensor:
    """Standardize with given (e.g. running) statistics: ``(x - mean) / sqrt(var + eps)``."""
    return apply_moments(g, (mean, var), eps)
