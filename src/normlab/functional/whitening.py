r"""Whitening operations (the survey's NOP beyond standardization): whitening matrices and IterNorm.

A whitening matrix ``W`` of a covariance ``Sigma`` (``(*G, D, D)``, batched
over groups) makes ``W Sigma W^T = I``; applied to centered data ``y = W x_c``
gives decorrelated features of unit variance. This module computes such
matrices and the one norm built on them so far:

- :func:`newton_schulz_whitening`: IterNorm's ``W = P_T / sqrt(tr Sigma)`` by
  ``T`` Newton-Schulz steps towards ``Sigma^{-1/2}`` (no eigendecomposition,
  no inverse, only batched matmuls, hence stable gradients).
- :func:`group_whitening_stats`: the batch statistics of IterNorm for all
  channel groups at once (``Whitening(mean, W)``).
- :func:`whiten_groups`: ``W (x - mean)`` per group of consecutive channels of
  ``(N, C, *spatial)`` input, by one batched matmul on a no-copy view.
- :func:`iter_norm`: the whole norm (batch or running statistics, running
  update, per-channel affine), the functional form of :class:`normlab.nn.IterNorm`.

Shapes: ``C`` channels in ``G = C / d`` groups of ``d = group_size``
consecutive channels; statistics over ``M = N * prod(spatial)`` samples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .checks import InvalidArgumentError, check_int, check_min_rank, check_positive_int, check_tensor
from .norms import _channels_last_format
from .partition import BatchPartition
from .recovery import channel_affine
from .stats import (
    Covariance,
    Reduce,
    Whitening,
    accumulation_dtype,
    apply_whitening,
    estimate_covariance,
    track_batch,
)


def check_iterations(T: object, owner: str) -> int:
    """``T`` as a non-negative int (the number of Newton steps), or an error naming what came."""
    return check_int(T, "T", owner, minimum=0)


def check_group_size(num_channels: int, group_size: object, owner: str) -> int:
    """``group_size`` as a positive int dividing ``num_channels``, or an error listing the valid sizes."""
    check_positive_int(group_size, "group_size", owner)
    if num_channels % group_size:
        valid = [d for d in range(1, num_channels + 1) if num_channels % d == 0]
        raise InvalidArgumentError(
            f"{owner}: num_features ({num_channels}) must be divisible by group_size ({group_size}) "
            f"(groups of unequal size are not supported); valid group sizes for {num_channels} channels: {valid}"
        )
    return group_size


def newton_schulz_whitening(cov: Tensor, T: int = 5, eps: float = 0.0) -> Tensor:
    r"""IterNorm's whitening matrix of ``Sigma = cov + eps I`` by ``T`` Newton-Schulz steps, batched.

    Huang, Zhou, Zhu, Liu & Shao, "Iterative Normalization: Beyond
    Standardization towards Efficient Whitening", CVPR 2019, arXiv:1904.03441:

    .. math::

        \Sigma_N = \Sigma / \mathrm{tr}(\Sigma), \quad P_0 = I, \quad
        P_k = \tfrac{3}{2} P_{k-1} - \tfrac{1}{2} P_{k-1}^3 \Sigma_N \ (k = 1..T), \quad
        W = P_T / \sqrt{\mathrm{tr}(\Sigma)}

    ``P_T -> Sigma_N^{-1/2}`` (so ``W -> Sigma^{-1/2}``, ZCA whitening) as
    ``T`` grows. Dividing by the trace puts every eigenvalue ``mu`` of
    ``Sigma_N`` in (0, 1], where the iteration converges. For finite ``T`` it
    whitens only partly: every ``P_k`` is a polynomial in ``Sigma_N`` (so
    symmetric and commuting with it) and the eigenvalues of ``W Sigma W^T =
    P_T^2 Sigma_N`` follow ``s_0 = mu``, ``s_k = s_{k-1} (3/2 - s_{k-1}/2)^2``:
    they stay in (0, 1] and never decrease with ``T``, and small ones grow
    only ~2.25x per step, so ``T=5`` leaves eigenvalues of about 0.95-0.98
    for ``d=16`` and 0.5-0.67 for ``d=64`` on white Gaussian data.
    ``T=0`` gives ``W = I / sqrt(tr Sigma)`` (one scale, no decorrelation).

    Divergence: that analysis is exact arithmetic. Linearized at its fixed
    point, a step multiplies an error in the eigen-directions ``(i, j)`` of
    ``Sigma`` by ``1 - (sqrt(r) + r) / 2`` with ``r = lambda_j / lambda_i``,
    so the iteration is stable only for condition numbers below ~2.44. Above
    that, once directions have converged their rounding errors grow
    geometrically: for large ``T`` the result drifts away from
    ``Sigma^{-1/2}`` and finally overflows (measured, float64, condition
    number 8: converged at ``T = 8``, error 3e-7 at ``T = 20``, above 1 at
    ``T = 40``; ``d = 64``, condition number 4e4: garbage from ``T ~ 10`` in
    float32 and ``T ~ 14`` in float64). The paper's ``T = 5`` stops before
    that on realistic data; for fuller whitening take a moderate ``T`` (about
    as many steps as convergence needs), a larger ``eps`` or float64.

    Args:
        cov: ``(*G, D, D)`` symmetric positive semi-definite covariances.
        T: Newton steps, a non-negative int. Default: 5 (the paper's).
        eps: added to the diagonal before the iteration. Default: 0.

    Returns:
        ``W`` ``(*G, D, D)``, symmetric, in ``cov``'s accumulation dtype
        (float32 at least; the iteration runs there).

    Example::

        >>> import torch
        >>> x = torch.randn(2, 4, 500, dtype=torch.float64)          # 2 groups, d=4, M=500
        >>> xc = x - x.mean(-1, keepdim=True)
        >>> cov = xc @ xc.transpose(-1, -2) / 500
        >>> w = newton_schulz_whitening(cov, T=20)
        >>> w.shape
        torch.Size([2, 4, 4])
        >>> bool(torch.allclose(w @ cov @ w.transpose(-1, -2), torch.eye(4, dtype=torch.float64), atol=1e-6))
        True
    """
    T = check_iterations(T, "newton_schulz_whitening")
    if cov.dim() < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(
            f"newton_schulz_whitening expected square covariances of shape (*G, D, D), got {tuple(cov.shape)}"
        )
    sigma = cov.to(accumulation_dtype(cov.dtype))
    d = sigma.shape[-1]
    eye = torch.eye(d, dtype=sigma.dtype, device=sigma.device)
    if eps:
        sigma = sigma + eps * eye
    trace = sigma.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]  # (*G, 1, 1)
    sigma_n = sigma / trace
    if T == 0:
        return eye * torch.rsqrt(trace)
    # P_1 = 1.5 I - 0.5 Sigma_N exactly (P_0 = I): three matmuls saved.
    p = 1.5 * eye - 0.5 * sigma_n
    for _ in range(T - 1):
        # P_k = 1.5 P - 0.5 P^3 Sigma_N. Plain differentiable ops (no in-place on
        # tensors autograd saved), so double backward is exact.
        p = 1.5 * p - 0.5 * torch.matmul(torch.matmul(torch.matmul(p, p), p), sigma_n)
    return p * torch.rsqrt(trace)


def group_whitening_stats(
    x: Tensor, group_size: int, T: int = 5, eps: float = 1e-5, *, reduce: Reduce | None = None
) -> tuple[Whitening, Covariance]:
    """IterNorm's batch statistics of ``x`` ``(N, C, *spatial)``: ``(Whitening(mean, W), Covariance)``.

    Per group of ``group_size`` consecutive channels, over ``M = N *
    prod(spatial)`` samples: the mean ``(G, d)`` and biased covariance
    ``(G, d, d)`` by :func:`~normlab.functional.estimate_covariance` on
    ``BatchPartition(group_size).view(x)`` (``(N, G, d, S)``, all groups in
    one contraction), and ``W = newton_schulz_whitening(cov, T, eps)``
    ``(G, d, d)``. The covariance (its ``count`` is ``M``, summed over
    processes with ``reduce``) comes back too. No validation here:
    :func:`iter_norm` validates.

    Example::

        >>> import torch
        >>> wh, cov = group_whitening_stats(torch.randn(16, 6, 3, 3), group_size=3)
        >>> wh.mean.shape, wh.matrix.shape, cov.count
        (torch.Size([2, 3]), torch.Size([2, 3, 3]), 144)
    """
    view = BatchPartition(group_size).view(x) if group_size > 1 else _single_view(x)
    cov = estimate_covariance(view, 2, (0, 3), reduce=reduce)
    return Whitening(cov.mean, newton_schulz_whitening(cov.cov, T, eps)), cov


def _single_view(x: Tensor) -> Tensor:
    # BatchPartition(1) views as (N, C, S) (standardization); whitening wants the
    # coupled axis, here of size 1: (N, C, 1, S), still a view.
    return x.reshape(x.shape[0], x.shape[1], 1, math.prod(x.shape[2:]))


def whiten_groups(x: Tensor, whitening: Whitening) -> Tensor:
    """``W (x - mean)`` per group of consecutive channels of ``x`` ``(N, C, *spatial)``.

    ``whitening.mean`` is ``(G, d)`` or ``(C,)`` and ``whitening.matrix``
    ``(G, d, d)`` with ``C = G * d``: :func:`~normlab.functional.apply_whitening`
    on the no-copy view ``(N, G, d, S)`` (one batched matmul for all groups).
    Returns ``(N, C, *spatial)`` in the accumulation dtype.
    """
    g, d = whitening.matrix.shape[-3], whitening.matrix.shape[-1]
    view = x.reshape(x.shape[0], g, d, math.prod(x.shape[2:]))
    mean = whitening.mean.reshape(g, d)
    return apply_whitening(view, Whitening(mean, whitening.matrix), 2, (0, 3)).reshape(x.shape)


def _check_converged(w: Tensor, sigma_cov: Tensor, eps: float) -> None:
    """Eager-mode guard: ``tr(W Sigma W^T) <= d`` holds in exact arithmetic (eigenvalues in (0, 1]).

    A NaN/inf (a group with zero variance and ``eps=0``) or a trace far above
    ``d`` means the Newton iteration diverged; raising here, before the running
    update, keeps a diverged batch out of the running statistics. One host
    sync on a ``(G,)`` tensor; skipped under ``torch.compile``/``torch.export``
    (no data-dependent control flow there).
    """
    d = w.shape[-1]
    sigma = sigma_cov + eps * torch.eye(d, dtype=sigma_cov.dtype, device=sigma_cov.device)
    trace = (torch.matmul(w, sigma) * w).sum((-2, -1))  # tr(W Sigma W^T), W symmetric
    # 1e-3: far above the rounding of a converged float32 trace (~d * 1e-6),
    # far below what divergence gives (growth by orders of magnitude).
    bad = ~(trace <= d * (1 + 1e-3))
    if bool(bad.any()):
        groups = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"IterNorm: the Newton iteration diverged for group(s) {groups[:8]} "
            f"(tr(W Sigma W^T) = {trace[bad][:8].tolist()}, at most {d} in exact arithmetic); "
            f"a channel group with zero variance needs eps > 0, and an ill-conditioned covariance "
            f"diverges for large T: use a smaller T (the paper's 5), a larger eps, or float64"
        )


def iter_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_wm: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    group_size: int = 64,
    T: int = 5,
    num_batches_tracked: Tensor | None = None,
    *,
    reduce: Reduce | None = None,
) -> Tensor:
    r"""Iterative Normalization (IterNorm), the functional form of :class:`normlab.nn.IterNorm`.

    ``training=True``: batch statistics (:func:`group_whitening_stats`),
    ``y = W (x - mean)`` per group, and when running buffers are given they
    are updated last (``running = (1 - m) running + m batch``, ``m`` =
    ``momentum``, ``None`` = cumulative average, which needs
    ``num_batches_tracked``; ``num_batches_tracked`` is incremented when
    given). ``training=False``: ``y = running_wm (x - running_mean)``.
    Then the per-channel affine. As :func:`torch.nn.functional.batch_norm`.

    Args:
        input: ``(N, C, *spatial)``, float64/float32/bfloat16/float16.
        running_mean: ``(C,)`` or None. running_wm: ``(G, d, d)`` or None (both or neither).
        weight, bias: ``(C,)`` or None.
        group_size: ``d``, a divisor of C. T: Newton steps (>= 0). eps: added to Sigma's diagonal.
        reduce: sums sufficient statistics across processes (synchronized statistics).

    Returns:
        ``(N, C, *spatial)`` in ``input``'s dtype and memory format.

    Example::

        >>> import torch
        >>> x = torch.randn(32, 8, 4, 4)
        >>> rm, rw = torch.zeros(8), torch.eye(4).repeat(2, 1, 1)
        >>> y = iter_norm(x, rm, rw, training=True, group_size=4, T=5)
        >>> y.shape, bool(rm.abs().sum() > 0)
        (torch.Size([32, 8, 4, 4]), True)
    """
    # -- validate everything first: a call that raises changes no state
    check_tensor(input)
    check_min_rank(input, 2, "IterNorm")
    c = input.shape[1]
    group_size = check_group_size(c, group_size, "IterNorm")
    T = check_iterations(T, "IterNorm")
    g = c // group_size
    if (running_mean is None) != (running_wm is None):
        raise ValueError("IterNorm expected both running_mean and running_wm, or neither")
    if running_mean is not None:
        for buf, shape, name in (
            (running_mean, (c,), "running_mean"),
            (running_wm, (g, group_size, group_size), "running_wm"),
        ):
            if tuple(buf.shape) != shape:
                raise ValueError(
                    f"IterNorm expected {name} of shape {shape} for {c} channels in groups of {group_size}, "
                    f"got {tuple(buf.shape)}"
                )
    for p, name in ((weight, "weight"), (bias, "bias")):
        if p is not None and tuple(p.shape) != (c,):
            raise ValueError(f"IterNorm expected {name} of shape ({c},), got {tuple(p.shape)}")
    if not training and running_mean is None:
        raise ValueError(
            "IterNorm with training=False uses running statistics: pass running_mean and running_wm, "
            "or use training=True for batch statistics"
        )
    update = training and running_mean is not None
    if update and momentum is None and num_batches_tracked is None:
        raise ValueError("IterNorm: momentum=None (cumulative average) needs num_batches_tracked")
    samples = input.numel() // max(c, 1)
    if training and reduce is None and samples < 2:
        raise ValueError(
            f"IterNorm expected more than 1 sample per channel for batch statistics (M = N * prod(spatial) = "
            f"{samples}), got input of shape {tuple(input.shape)}; use a larger batch, or call .eval() "
            f"(running statistics)"
        )

    # -- compute
    if training:
        stats, cov = group_whitening_stats(input, group_size, T, eps, reduce=reduce)
        if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            _check_converged(stats.matrix.detach(), cov.cov.detach(), eps)
    else:
        stats = Whitening(running_mean, running_wm)
    y = channel_affine(whiten_groups(input, stats), weight, bias)
    y = y.to(input.dtype, memory_format=_channels_last_format(input) or torch.contiguous_format)

    # -- running statistics last, once the output exists
    if update:
        track_batch((running_mean, running_wm), num_batches_tracked, stats, momentum)
    return y
