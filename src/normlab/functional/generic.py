"""The generic compositions: partition -> operation -> recovery.

Each standard norm written as the framework composes it. These are the
*oracles*: every fast path in :mod:`.norms` is tested equal to the function of
the same name here (float64). They are also usable directly, e.g. to build a
norm that has no fast path yet. Outputs are cast back to the input dtype.
"""

from __future__ import annotations

import math

from torch import Tensor

from .operations import Normalized, apply_stats, rms_scale, standardize
from .partition import (
    BatchPartition,
    GroupPartition,
    InstancePartition,
    LayerPartition,
    Partition,
    PositionalPartition,
)
from .recovery import channel_affine, element_affine


def normalize(x: Tensor, partition: Partition, operation, *args, **kwargs) -> tuple[Tensor, Normalized]:
    """Group ``x`` by ``partition``, apply ``operation(grouped, *args)`` and ungroup.

    Returns the normalized tensor in ``x``'s layout (accumulation dtype) and
    the operation's statistics in grouped shape ``(R, D, 1)``.
    """
    result = operation(partition.group(x), *args, **kwargs)
    return partition.ungroup(result.output, tuple(x.shape)), result


def batch_norm(x: Tensor, weight=None, bias=None, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """BN with batch statistics; returns (y, mean (C,), biased var (C,))."""
    y, st = normalize(x, BatchPartition(), standardize, eps)
    y = channel_affine(y, weight, bias).to(x.dtype)
    return y, st.mean.reshape(-1), st.var.reshape(-1)


def batch_norm_eval(x: Tensor, mean: Tensor, var: Tensor, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """BN with given per-channel statistics (inference)."""
    part = BatchPartition()
    g = apply_stats(part.group(x), mean.reshape(-1, 1, 1), var.reshape(-1, 1, 1), eps)
    return channel_affine(part.ungroup(g, tuple(x.shape)), weight, bias).to(x.dtype)


def group_norm(x: Tensor, num_groups: int, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    y, _ = normalize(x, GroupPartition(num_groups), standardize, eps)
    return channel_affine(y, weight, bias).to(x.dtype)


def instance_norm(x: Tensor, weight=None, bias=None, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """IN with per-sample statistics; returns (y, mean (N, C), biased var (N, C))."""
    y, st = normalize(x, InstancePartition(), standardize, eps)
    y = channel_affine(y, weight, bias).to(x.dtype)
    n, c = x.shape[0], x.shape[1]
    return y, st.mean.reshape(n, c), st.var.reshape(n, c)


def layer_norm(x: Tensor, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """LN over the trailing ``normalized_shape`` dims, per-element affine."""
    flat = x.reshape(-1, math.prod(normalized_shape))
    y, _ = normalize(flat, LayerPartition(), standardize, eps)
    return element_affine(y.reshape(x.shape), weight, bias).to(x.dtype)


def channel_layer_norm(x: Tensor, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """LN over the channel dim of ``(N, C, *spatial)`` at every position."""
    y, _ = normalize(x, PositionalPartition(), standardize, eps)
    return channel_affine(y, weight, bias).to(x.dtype)


def rms_norm(x: Tensor, normalized_shape, weight=None, eps: float | None = None) -> Tensor:
    """RMSNorm over the trailing dims; ``eps=None`` is ``finfo(x.dtype).eps`` as in torch."""
    import torch

    if eps is None:
        eps = torch.finfo(x.dtype).eps
    flat = x.reshape(-1, math.prod(normalized_shape))
    y, _ = normalize(flat, LayerPartition(), rms_scale, eps)
    return element_affine(y.reshape(x.shape), weight, None).to(x.dtype)


def local_response_norm(x: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> Tensor:
    """LRN as a windowed estimator: ``x / (k + alpha * S / size) ** beta``.

    ``S`` is the sum of ``x^2`` over a window of ``size`` channels
    (``c - size//2 .. c + (size-1)//2``, zero padded: torch's convention, which
    divides by ``size`` even at the ends), a box sum over the channel dim.
    """
    import torch.nn.functional as F

    from .stats import _box_sum, accumulation_dtype

    xa = x.to(accumulation_dtype(x.dtype))
    sq = xa.square().reshape(x.shape[0], 1, x.shape[1], -1)  # channels as a window dim
    padded = F.pad(sq, (0, 0, size // 2, (size - 1) // 2))
    s = _box_sum(padded, (size, 1)).reshape(x.shape)
    return (xa / (k + alpha * s / size) ** beta).to(x.dtype)
