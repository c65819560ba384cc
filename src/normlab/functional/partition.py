"""Partitions (the survey's NAP): which elements share statistics.

A partition views an input ``(N, C, *spatial)`` as ``(R, D, M)``: ``R``
independent groups, ``D`` coupled features per group (1 for standardization,
more for whitening) and ``M`` samples the statistics are taken over.
``ungroup`` is the exact inverse of ``group``.

Each partition is also described by its **reduction axes**: :meth:`Partition.view`
reshapes the input to ``(N, ..., *)`` without copying (contiguous and
channels_last inputs alike) and :attr:`Partition.reduce_dims` names the axes of
that view the statistics are taken over (``feature_dim``: the coupled axis of a
whitening partition). :meth:`Partition.moments` and :meth:`Partition.covariance`
estimate on the view, so statistics broadcast against it and are applied in
place of a permuted copy; batched matmuls (whitening) contract over the same
axes. ``group``/``ungroup`` give the explicit ``(R, D, M)`` layout (some need
a permute copy): the *generic* road the fast paths are tested against.

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
from .stats import Covariance, Moments, Reduce, apply_moments, estimate_covariance, estimate_moments


def _split(x: Tensor) -> tuple[int, int, int]:
    check_min_rank(x, 2, "partition")
    n, c = x.shape[0], x.shape[1]
    return n, c, math.prod(x.shape[2:])


@dataclass(frozen=True)
class Partition:
    """Base class: subclasses define ``view_shape``, ``reduce_dims``, ``group`` and ``ungroup``."""

    #: the coupled-feature axis of :meth:`view` (whitening), None for standardization
    feature_dim = None

    def view_shape(self, x: Tensor) -> tuple[int, ...]:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def reduce_dims(self) -> tuple[int, ...]:  # pragma: no cover - interface
        raise NotImplementedError

    def view(self, x: Tensor) -> Tensor:
        """``x`` reshaped so the statistics are over :attr:`reduce_dims` (a view when strides allow)."""
        return x.reshape(self.view_shape(x))

    def moments(self, x: Tensor, *, reduce: Reduce | None = None) -> Moments:
        """Per-group moments, shaped to broadcast against :meth:`view` of ``x``."""
        return estimate_moments(self.view(x), self.reduce_dims, reduce=reduce)

    def covariance(self, x: Tensor, *, reduce: Reduce | None = None) -> Covariance:
        """Per-group covariance of the coupled features (partitions with a ``feature_dim``)."""
        if self.feature_dim is None:
            raise ValueError(f"{type(self).__name__} has no coupled features: use moments()")
        return estimate_covariance(self.view(x), self.feature_dim, self.reduce_dims, reduce=reduce)

    def standardize(self, x: Tensor, eps: float, *, reduce: Reduce | None = None) -> tuple[Tensor, Moments]:
        """``(x - mean) / sqrt(var + eps)`` per group, in ``x``'s shape (accumulation dtype)."""
        stats = self.moments(x, reduce=reduce)
        return apply_moments(self.view(x), stats, eps).reshape(x.shape), stats

    def group(self, x: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def ungroup(self, g: Tensor, shape: tuple[int, ...]) -> Tensor:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class BatchPartition(Partition):
    """BN: statistics per channel over (N, *spatial); ``coupled`` channels form D."""

    coupled: int = 1

    @property
    def feature_dim(self):
        return 2 if self.coupled > 1 else None

    def view_shape(self, x):
        n, c, s = _split(x)
        if self.coupled <= 0 or c % self.coupled:
            raise ValueError(f"num_channels ({c}) must be divisible by the coupled group size ({self.coupled})")
        if self.coupled == 1:
            return (n, c, s)
        return (n, c // self.coupled, self.coupled, s)

    @property
    def reduce_dims(self):
        return (0, 2) if self.coupled == 1 else (0, 3)

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

    def view_shape(self, x):
        return _split(x)

    reduce_dims = (1, 2)

    def group(self, x):
        n, c, s = _split(x)
        return x.reshape(n, 1, c * s)

    def ungroup(self, g, shape):
        return g.reshape(shape)


@dataclass(frozen=True)
class InstancePartition(Partition):
    """IN: statistics per (sample, channel) over the spatial dims."""

    def view_shape(self, x):
        return _split(x)

    reduce_dims = (2,)

    def group(self, x):
        n, c, s = _split(x)
        return x.reshape(n * c, 1, s)

    def ungroup(self, g, shape):
        return g.reshape(shape)


@dataclass(frozen=True)
class GroupPartition(Partition):
    """GN: statistics per (sample, group of C/G consecutive channels)."""

    num_groups: int

    def view_shape(self, x):
        n, c, s = _split(x)
        check_groups(c, self.num_groups)
        return (n, self.num_groups, c // self.num_groups, s)

    reduce_dims = (2, 3)

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

    def view_shape(self, x):
        n, c, s = _split(x)
        check_groups(c, self.num_groups)
        return (n, self.num_groups, c // self.num_groups, s)

    reduce_dims = (0, 2, 3)

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

    def view_shape(self, x):
        return _split(x)

    reduce_dims = (1,)

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

    feature_dim = 1

    def view_shape(self, x):
        n, c, s = _split(x)
        check_groups(c, self.num_groups)
        return (n, self.num_groups, c // self.num_groups, s)

    reduce_dims = (2, 3)

    def group(self, x):
        n, c, s = _split(x)
        check_groups(c, self.num_groups)
        return x.reshape(n, self.num_groups, (c // self.num_groups) * s)

    def ungroup(self, g, shape):
        return g.reshape(shape)
