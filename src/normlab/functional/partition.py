"""Partitions (the survey's NAP): which elements share statistics.

A partition views an input ``(N, C, *spatial)`` as ``(R, D, M)``: ``R``
independent groups, ``D`` coupled features per group (1 for standardization,
more for whitening) and ``M`` samples the statistics are taken over.
``ungroup`` is the exact inverse of ``group``.

These views are the *generic* road (some need a permute copy); the fast paths
in :mod:`normlab.functional.norms` reach the same numbers without copies and are
tested against this module.

======================  ========  =========  ======================
partition               R         D          M
======================  ========  =========  ======================
``BatchPartition(d)``   C/d       d          N*S
``LayerPartition``      N         1          C*S
``InstancePartition``   N*C       1          S
``GroupPartition(G)``   N*G       1          (C/G)*S
``BatchGroupPartition`` G         1          N*(C/G)*S
``PositionalPartition`` N*S       1          C
``SampleGroupCoupled``  N         G          (C/G)*S
======================  ========  =========  ======================

(S = product of the spatial sizes.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from .checks import check_groups, check_min_rank


def _split(x: Tensor) -> tuple[int, int, int]:
    check_min_rank(x, 2, "partition")
    n, c = x.shape[0], x.shape[1]
    return n, c, math.prod(x.shape[2:])


@dataclass(frozen=True)
class Partition:
    """Base class: subclasses define ``group`` and ``ungroup``."""

    def group(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def ungroup(self, g: Tensor, shape: tuple[int, ...]) -> Tensor:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class BatchPartition(Partition):
    """BN: statistics per channel over (N, *spatial); ``coupled`` channels form D."""

    coupled: int = 1

    def group(self, x):
        n, c, s = _split(x)
        if self.coupled <= 0 or c % self.coupled:
            raise ValueError(f"num_channels ({c}) must be divisible by the coupled group size ({self.coupled})")
        r, d = c // self.coupled, self.coupled
        return x.reshape(n, r, d, s).permute(1, 2, 0, 3).reshape(r, d, n * s)

    def ungroup(self, g, shape):
        n, c = shape[0], shape[1]
        s = math.prod(shape[2:])
        r, d = c // self.coupled, self.coupled
        return g.reshape(r, d, n, s).permute(2, 0, 1, 3).reshape(shape)


@dataclass(frozen=True)
class LayerPartition(Partition):
    """LN: statistics per sample over (C, *spatial)."""

    def group(self, x):
        n, c, s = _split(x)
        return x.reshape(n, 1, c * s)

    def ungroup(self, g, shape):
        return g.reshape(shape)


@dataclass(frozen=True)
class InstancePartition(Partition):
    """IN: statistics per (sample, channel) over the spatial dims."""

    def group(self, x):
        n, c, s = _split(x)
        return x.reshape(n * c, 1, s)

    def ungroup(self, g, shape):
        return g.reshape(shape)


@dataclass(frozen=True)
class GroupPartition(Partition):
    """GN: statistics per (sample, group of C/G consecutive channels)."""

    num_groups: int

    def group(self, x):
        n, c, s = _split(x)
        check_groups(c, self.num_groups)
        return x.reshape(n * self.num_groups, 1, (c // self.num_groups) * s)

    def ungroup(self, g, shape):
        return g.reshape(shape)


@dataclass(frozen=True)
class BatchGroupPartition(Partition):
    """BGN: statistics per group of C/G channels over the whole batch."""

    num_groups: int

    def group(self, x):
        n, c, s = _split(x)
        check_groups(c, self.num_groups)
        g = self.num_groups
        return x.reshape(n, g, (c // g) * s).transpose(0, 1).reshape(g, 1, n * (c // g) * s)

    def ungroup(self, y, shape):
        n, g = shape[0], self.num_groups
        return y.reshape(g, n, -1).transpose(0, 1).reshape(shape)


@dataclass(frozen=True)
class PositionalPartition(Partition):
    """PONO / channel LayerNorm: statistics per (sample, position) over channels."""

    def group(self, x):
        n, c, s = _split(x)
        return x.reshape(n, c, s).transpose(1, 2).reshape(n * s, 1, c)

    def ungroup(self, g, shape):
        n, c = shape[0], shape[1]
        s = math.prod(shape[2:])
        return g.reshape(n, s, c).transpose(1, 2).reshape(shape)


@dataclass(frozen=True)
class SampleGroupCoupled(Partition):
    """Group whitening: per sample, G coupled groups of (C/G)*S values each."""

    num_groups: int

    def group(self, x):
        n, c, s = _split(x)
        check_groups(c, self.num_groups)
        return x.reshape(n, self.num_groups, (c // self.num_groups) * s)

    def ungroup(self, g, shape):
        return g.reshape(shape)
