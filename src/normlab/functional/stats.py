"""Statistics as types: estimated apart from being applied, updated by one EMA.

Three small types carry what a norm measures:

- :class:`Moments` ``(mean, var, count)``: per-group mean and *biased*
  variance, and how many values each statistic summarizes. Exact pooling over
  a dim (:meth:`Moments.pool`, the parallel-variance formula: no raw
  ``E[x^2] - E[x]^2``) and weighted mixing (:meth:`Moments.mix`, switchable
  norms).
- :class:`Covariance` ``(mean, cov, count)``: per-group mean vector and biased
  covariance matrix (whitening).
- :class:`Whitening` ``(mean, matrix)``: a whitening transform ``W (x - mean)``.

Estimators (:func:`estimate_moments`, :func:`estimate_covariance`,
:func:`window_moments`, :func:`masked_moments`) produce them; apply functions
(:func:`apply_moments`, :func:`apply_whitening`) consume them in the input's
own layout. Every estimator takes ``reduce=``: a callable that sums a tensor
of sufficient statistics across processes (``None``: this process only), so
synchronized statistics plug in without touching any norm.

Running statistics follow torch's momentum convention everywhere:
``running = (1 - momentum) * running + momentum * batch``; ``momentum=None``
is a cumulative (equal-weight) average (:func:`momentum_factor`). One update,
:func:`update_running`, serves every type: each type says what its running
buffers store (:meth:`Moments.running_values`: the unbiased variance;
:meth:`Covariance.running_values`: the unbiased covariance;
:meth:`Whitening.running_values`: the matrix as it is, no Bessel factor).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

Reduce = Callable[[Tensor], Tensor]
"""A reduction hook: returns the elementwise sum of its argument over all processes."""


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are accumulated in float32 at least (float64 stays float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _bessel(count: Tensor | int | float) -> Tensor | float:
    """``count / (count - 1)``, with 1 for ``count <= 1`` (no unbiased estimate exists)."""
    if isinstance(count, Tensor):
        return count / (count - 1).clamp(min=1)
    return count / max(count - 1, 1)


def _count_weights(count: Tensor | int | float, like: Tensor, dim: int) -> Tensor | None:
    """Pooling weights ``count_i / sum(count)`` along ``dim``, or None when counts are equal."""
    if not isinstance(count, Tensor) or count.dim() == 0:
        return None
    c = count.to(like.dtype).expand_as(like) if count.dim() == like.dim() else count.to(like.dtype)
    return c / c.sum(dim, keepdim=True)


class Moments(NamedTuple):
    """Per-group ``mean`` and biased ``var`` of ``count`` values each.

    ``count`` is an int (the same for every statistic) or a tensor
    broadcastable to ``mean`` (masked or windowed estimates).

    >>> import torch
    >>> from normlab.functional import Moments, estimate_moments
    >>> x = torch.randn(4, 3, 5, dtype=torch.float64)
    >>> per_sample = estimate_moments(x, (2,))           # (4, 3, 1), 5 values each
    >>> pooled = per_sample.pool(0)                       # exact pooling over the batch
    >>> whole = estimate_moments(x, (0, 2))
    >>> bool(torch.allclose(pooled.var, whole.var)), pooled.count
    (True, 20)
    """

    mean: Tensor
    var: Tensor
    count: Tensor | int

    def pool(self, dim: int, keepdim: bool = True, *, reduce: Reduce | None = None) -> Moments:
        """Pool the groups along ``dim`` exactly (parallel variance, weighted by count).

        ``var = sum_i w_i (var_i + (mean_i - mean)^2)``, ``w_i = count_i / sum(count)``:
        every term is non-negative, so no cancellation. ``reduce`` (sums across
        processes) pools every process's groups along ``dim`` too: two small
        collectives, ``[sum count_i mean_i, sum count_i]`` for the global mean, then
        ``sum count_i (var_i + (mean_i - mean)^2)`` around it; ``count`` is then a tensor.
        """
        if reduce is not None:
            return self._pool_across(dim, keepdim, reduce)
        w = _count_weights(self.count, self.mean, dim)
        if w is None:
            mean = self.mean.mean(dim, keepdim=True)
            var = self.var.mean(dim, keepdim=True) + (self.mean - mean).square().mean(dim, keepdim=True)
            count = self.count * self.mean.shape[dim]
        else:
            mean = (w * self.mean).sum(dim, keepdim=True)
            var = (w * (self.var + (self.mean - mean).square())).sum(dim, keepdim=True)
            count = self.count.expand_as(self.mean).sum(dim, keepdim=True)
        if not keepdim:
            mean, var = mean.squeeze(dim), var.squeeze(dim)
            if isinstance(count, Tensor) and count.dim() > 0:
                count = count.squeeze(dim)
        return Moments(mean, var, count)

    def _pool_across(self, dim: int, keepdim: bool, reduce: Reduce) -> Moments:
        c = self.count if isinstance(self.count, Tensor) else torch.tensor(float(self.count), dtype=self.mean.dtype)
        c = c.to(self.mean.dtype).expand_as(self.mean)
        sums = (c * self.mean).sum(dim, keepdim=True)
        total = c.sum(dim, keepdim=True)
        packed = reduce(torch.cat([sums.reshape(-1), total.reshape(-1)]))
        sums, total = packed[: sums.numel()].view_as(sums), packed[sums.numel() :].view_as(total)
        mean = sums / total.clamp(min=1)
        scatter = (c * (self.var + (self.mean - mean).square())).sum(dim, keepdim=True)
        var = reduce(scatter.reshape(-1)).view_as(scatter) / total.clamp(min=1)
        if not keepdim:
            mean, var, total = mean.squeeze(dim), var.squeeze(dim), total.squeeze(dim)
        return Moments(mean, var, total)

    def mix(self, mean_weights: Tensor, dim: int, var_weights: Tensor | None = None) -> Moments:
        """Weighted mixture over ``dim`` (the statistics of several norms stacked there).

        ``mean = sum_k a_k mean_k`` and ``var = sum_k b_k var_k`` with ``a`` =
        ``mean_weights`` and ``b`` = ``var_weights`` (default ``a``), each a 1-D
        tensor of length ``mean.shape[dim]`` (Switchable Norm mixes means and
        variances with separate softmax weights). The result is a mixture of
        estimates, not a pooled estimate: its ``count`` is the smallest one.
        """
        b = mean_weights if var_weights is None else var_weights
        k = self.mean.shape[dim]
        for w, name in ((mean_weights, "mean_weights"), (b, "var_weights")):
            if w.dim() != 1 or w.shape[0] != k:
                raise ValueError(f"Moments.mix expected {name} of shape ({k},), got {tuple(w.shape)}")
        view = [1] * self.mean.dim()
        view[dim] = k
        mean = (self.mean * mean_weights.to(self.mean.dtype).view(view)).sum(dim)
        var = (self.var * b.to(self.var.dtype).view(view)).sum(dim)
        count = self.count.min() if isinstance(self.count, Tensor) else self.count
        return Moments(mean, var, count)

    def unbiased_var(self) -> Tensor:
        """``var * count / (count - 1)`` (what ``running_var`` stores)."""
        return self.var * _bessel(self.count)

    def running_values(self) -> tuple[Tensor, Tensor]:
        """What running buffers store: ``(mean, unbiased var)``."""
        return self.mean, self.unbiased_var()

    def detach(self) -> Moments:
        c = self.count.detach() if isinstance(self.count, Tensor) else self.count
        return Moments(self.mean.detach(), self.var.detach(), c)


class Covariance(NamedTuple):
    """Per-group ``mean`` ``(*G, D)`` and biased covariance ``cov`` ``(*G, D, D)`` of ``count`` samples."""

    mean: Tensor
    cov: Tensor
    count: Tensor | int

    def pool(self, dim: int) -> Covariance:
        """Pool equal-count groups along group dim ``dim`` exactly: ``mean(cov_i + d_i d_i^T)``."""
        if dim < 0:
            dim += self.mean.dim() - 1
        mean = self.mean.mean(dim, keepdim=True)
        d = self.mean - mean
        cov = (self.cov + d.unsqueeze(-1) * d.unsqueeze(-2)).mean(dim)
        return Covariance(mean.squeeze(dim), cov, self.count * self.mean.shape[dim])

    def unbiased_cov(self) -> Tensor:
        return self.cov * _bessel(self.count)

    def running_values(self) -> tuple[Tensor, Tensor]:
        """What running buffers store: ``(mean, unbiased covariance)``."""
        return self.mean, self.unbiased_cov()

    def detach(self) -> Covariance:
        c = self.count.detach() if isinstance(self.count, Tensor) else self.count
        return Covariance(self.mean.detach(), self.cov.detach(), c)


class Whitening(NamedTuple):
    """A whitening transform: ``y = matrix @ (x - mean)`` per group; ``matrix`` ``(*G, D, D)``."""

    mean: Tensor
    matrix: Tensor

    def running_values(self) -> tuple[Tensor, Tensor]:
        """What running buffers store: ``(mean, matrix)`` as they are (an EMA of W; no Bessel factor)."""
        return self.mean, self.matrix

    def detach(self) -> Whitening:
        return Whitening(self.mean.detach(), self.matrix.detach())


Statistics = Moments | Covariance | Whitening


# ----------------------------------------------------------------- estimators


def _norm_dims(dims: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    out = tuple(sorted(d % ndim for d in dims))
    if len(set(out)) != len(out):
        raise ValueError(f"reduction dims must be distinct, got {dims}")
    return out


def estimate_moments(x: Tensor, dims: int | Sequence[int], *, reduce: Reduce | None = None) -> Moments:
    """Mean and biased variance of ``x`` over ``dims`` (kept as size-1 dims), in one stable pass.

    The statistics broadcast against ``x`` (apply them in ``x``'s own layout,
    no copies); they are in the accumulation dtype (float32 at least).

    ``reduce``: sums across processes. Then two collectives run, each on a
    small packed tensor: ``[sum, count]`` gives the global mean, and the
    squared deviations *from that global mean* give the variance, so the
    result equals the estimate over all processes' values without raw-moment
    cancellation (a process with no values contributes zeros).
    """
    dims = _norm_dims(dims, x.dim())
    xa = x.to(accumulation_dtype(x.dtype))
    local = math.prod([x.shape[d] for d in dims])
    if reduce is None:
        return _two_pass_moments(xa, dims, local)
    s = xa.sum(dims, keepdim=True)
    packed = reduce(torch.cat([s.reshape(-1), s.new_tensor([float(local)])]))
    count = packed[-1]
    mean = (packed[:-1] / count.clamp(min=1)).view_as(s)
    ss = reduce(_sum_sq(xa - mean, dims).reshape(-1)).view_as(s)
    return Moments(mean, ss / count.clamp(min=1), count)


# Rows at least this long take the per-row road of _two_pass_moments (shorter
# rows make the pooled statistics nearly as large as the input).
_MIN_ROW = 16


def _sum_sq(v: Tensor, dims: tuple[int, ...]) -> Tensor:
    """sum(v^2) over ``dims`` (kept) by one read, no squared temporary (differentiable, 0 at v = 0)."""
    return torch.linalg.vector_norm(v, dim=dims, keepdim=True).square()


def _two_pass_moments(xa: Tensor, dims: tuple[int, ...], count: int) -> Moments:
    """Stable two-pass moments: the mean, then the centred sum of squares.

    ``torch.var_mean`` over several dims runs at ~10x a memory copy on CPU;
    this is ~1.5-4x. When the reduced dims end with x's trailing dims and x is
    contiguous, those form rows: each row's two-pass moments (``mean`` and a
    ``vector_norm`` of the centred row, both vectorized over contiguous
    memory), then the other reduced dims are pooled exactly (:meth:`Moments.pool`,
    the parallel-variance formula: no cancellation either).
    """
    nd = xa.dim()
    k = nd
    while k - 1 in dims:
        k -= 1
    if k < nd and xa.is_contiguous() and math.prod(xa.shape[k:]) >= _MIN_ROW:
        lead = tuple(xa.shape[:k])
        rows = xa.reshape(lead + (-1,))
        length = rows.shape[-1]
        mean = rows.mean(-1, keepdim=True)
        var = _sum_sq(rows - mean, (-1,)) / length
        trail = (1,) * (nd - k)
        m = Moments(mean.reshape(lead + trail), var.reshape(lead + trail), length)
        for d in dims:
            if d < k:
                m = m.pool(d)
        return m
    mean = xa.mean(dims, keepdim=True)
    return Moments(mean, _sum_sq(xa - mean, dims) / count, count)


def estimate_covariance(
    x: Tensor, feature_dim: int, sample_dims: int | Sequence[int], *, reduce: Reduce | None = None
) -> Covariance:
    """Mean and biased covariance of the ``feature_dim`` features of ``x`` over ``sample_dims``.

    The remaining dims are independent groups: for ``x`` of shape
    ``(N, G, d, S)`` with ``feature_dim=2`` and ``sample_dims=(0, 3)`` the
    result is ``mean (G, d)`` and ``cov (G, d, d)``, computed by one batched
    contraction (no per-group loop). Two-pass: centered first, so the
    covariance has no cancellation. ``reduce`` as in :func:`estimate_moments`.
    """
    nd = x.dim()
    fd = feature_dim % nd
    sd = _norm_dims(sample_dims, nd)
    if fd in sd:
        raise ValueError(f"feature_dim {feature_dim} cannot also be a sample dim {tuple(sample_dims)}")
    groups = [d for d in range(nd) if d != fd and d not in sd]
    xa = x.to(accumulation_dtype(x.dtype))
    m = estimate_moments(xa, sd, reduce=reduce)  # mean in x's layout, count (global with reduce)
    xc = xa - m.mean
    letters = "abcdefghijklmnopqrstuvw"[:nd]
    a = letters
    b = "".join("z" if d == fd else letters[d] for d in range(nd))
    out = "".join(letters[d] for d in groups) + letters[fd] + "z"
    scatter = torch.einsum(f"{a},{b}->{out}", xc, xc)
    if reduce is not None:
        scatter = reduce(scatter.reshape(-1)).view_as(scatter)
    count = m.count
    cov = scatter / (count.clamp(min=1) if isinstance(count, Tensor) else max(count, 1))
    mean = m.mean.squeeze(sd).movedim(fd - sum(1 for d in sd if d < fd), -1) if sd else m.mean
    return Covariance(mean, cov, count)


def window_moments(
    x: Tensor, window: Sequence[int], *, channel_window: int = 1, reduce: Reduce | None = None
) -> Moments:
    """Moments over a sliding window at every position of ``x`` ``(N, C, *spatial)``.

    ``window``: the spatial window size per spatial dim (odd sizes are centred;
    even sizes extend one more element before the centre, as torch's pooling).
    ``channel_window``: how many neighbouring channels share the window (1:
    each channel alone). Zero padding is *not* counted: each position's
    statistics are over the values that exist (``count`` is a tensor), so
    borders are not biased towards zero. Box sums by cumulative sums (cost
    independent of the window size). The variance is
    ``E_w[(x - c)^2] - (E_w[x] - c)^2`` with ``c`` the sample's overall mean:
    exact for any ``c``, and with ``c`` near the data the cancellation is only
    that of a window whose mean is far from the sample's (clamped at 0).

    ``reduce`` is accepted for a uniform signature; windows are per sample, so
    there is nothing to synchronize and it must be None.
    """
    if reduce is not None:
        raise ValueError("window_moments: windowed statistics are per sample; reduce must be None")
    spatial = x.dim() - 2
    window = tuple(int(w) for w in window)
    if len(window) != spatial or any(w < 1 for w in window) or channel_window < 1:
        raise ValueError(
            f"window_moments expected {spatial} positive spatial window sizes and channel_window >= 1, "
            f"got window={window}, channel_window={channel_window}"
        )
    xa = x.to(accumulation_dtype(x.dtype))
    # The channel dim is one more window dim of a single-channel volume.
    vol = xa.unsqueeze(1)  # (N, 1, C, *spatial)
    k = (channel_window, *window)
    pad = []
    for w in reversed(k):
        pad += [(w - 1) // 2, w // 2]
    c = vol.mean(tuple(range(2, vol.dim())), keepdim=True)
    dev = vol - c
    count = _box_sum(F.pad(torch.ones_like(vol[:1]), pad), k)
    mean_dev = _box_sum(F.pad(dev, pad), k) / count
    var = (_box_sum(F.pad(dev.square(), pad), k) / count - mean_dev.square()).clamp_min(0)
    mean = mean_dev + c
    return Moments(mean.squeeze(1), var.squeeze(1), count.squeeze(1))


def _box_sum(v: Tensor, k: tuple[int, ...]) -> Tensor:
    """Sum over a box of size ``k`` (valid positions) of ``v`` ``(N, 1, *dims)``, by cumulative sums."""
    out = v
    for i, w in enumerate(k):
        d = 2 + i
        c = out.cumsum(d)
        zero = torch.zeros_like(c.narrow(d, 0, 1))
        c = torch.cat([zero, c], d)
        length = c.shape[d] - w
        out = c.narrow(d, w, length) - c.narrow(d, 0, length)
    return out


def masked_moments(x: Tensor, mask: Tensor, dims: int | Sequence[int], *, reduce: Reduce | None = None) -> Moments:
    """Moments of the values of ``x`` where ``mask`` is set (weights in [0, 1] allowed), over ``dims``.

    ``mask`` broadcasts against ``x`` (e.g. ``(N, 1, H, W)`` for a spatial
    region shared by all channels). ``count`` is the (weighted) number of
    values per statistic, a tensor; a group with an empty mask gets mean 0 and
    var 0. Two-pass (centered), ``reduce`` as in :func:`estimate_moments`.
    """
    dims = _norm_dims(dims, x.dim())
    xa = x.to(accumulation_dtype(x.dtype))
    w = mask.to(xa.dtype).expand_as(xa)
    s = (xa * w).sum(dims, keepdim=True)
    c = w.sum(dims, keepdim=True)
    if reduce is not None:
        packed = reduce(torch.cat([s.reshape(-1), c.reshape(-1)]))
        s, c = packed[: s.numel()].view_as(s), packed[s.numel() :].view_as(c)
    mean = s / c.clamp(min=torch.finfo(xa.dtype).tiny)
    ss = (w * (xa - mean).square()).sum(dims, keepdim=True)
    if reduce is not None:
        ss = reduce(ss.reshape(-1)).view_as(ss)
    return Moments(mean, ss / c.clamp(min=torch.finfo(xa.dtype).tiny), c)


# ------------------------------------------------------------------- apply


def apply_moments(
    x: Tensor,
    stats: Moments | tuple[Tensor, Tensor],
    eps: float,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    channel_dim: int = 1,
) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` with statistics that broadcast against ``x`` (any layout).

    With a per-channel ``weight``/``bias`` (``(C,)``, along ``channel_dim``) the
    affine is folded in: ``(x - mean) * (rsqrt(var + eps) * weight) + bias`` in
    one fused multiply-add over ``x`` (the scale is folded on the small
    statistics tensor). Centering comes first: folding the mean into the shift
    (``x * s + (bias - mean * s)``) would lose ``|mean| / std`` ulps to
    cancellation. Computed in the accumulation dtype; the caller casts back;
    elementwise ops follow ``x``'s strides, so its memory format is kept.
    """
    mean, var = stats[0], stats[1]
    xa = x.to(accumulation_dtype(x.dtype))
    scale = torch.rsqrt(var.to(xa.dtype) + eps)
    view = [1] * x.dim()
    view[channel_dim] = -1
    if weight is not None:
        scale = scale * weight.to(xa.dtype).view(view)
    xc = xa - mean.to(xa.dtype)
    return xc * scale if bias is None else torch.addcmul(bias.to(xa.dtype).view(view), xc, scale)


def apply_whitening(x: Tensor, whitening: Whitening, feature_dim: int, sample_dims: int | Sequence[int]) -> Tensor:
    """``W (x - mean)`` along ``feature_dim`` of ``x``, batched over its groups, in ``x``'s own layout.

    The layout is that of :func:`estimate_covariance`: ``feature_dim`` holds
    the D coupled features, ``sample_dims`` the samples, every other dim is a
    group; ``whitening.mean`` is ``(*G, D)`` and ``whitening.matrix``
    ``(*G, D, D)`` with ``*G`` the group dims in order. One batched
    contraction (no per-group loop); output in the accumulation dtype.

    >>> import torch
    >>> from normlab.functional import estimate_covariance, apply_whitening, Whitening
    >>> x = torch.randn(16, 2, 3, 10, dtype=torch.float64)      # (N, G, d, S)
    >>> c = estimate_covariance(x, 2, (0, 3))                   # mean (2, 3), cov (2, 3, 3)
    >>> w = torch.linalg.inv(torch.linalg.cholesky(c.cov))      # any whitening matrix
    >>> y = apply_whitening(x, Whitening(c.mean, w), 2, (0, 3))
    >>> bool(torch.allclose(estimate_covariance(y, 2, (0, 3)).cov, torch.eye(3, dtype=torch.float64)))
    True
    """
    nd = x.dim()
    fd = feature_dim % nd
    sd = _norm_dims(sample_dims, nd)
    groups = [d for d in range(nd) if d != fd and d not in sd]
    xa = x.to(accumulation_dtype(x.dtype))
    # the (*G, D) mean in x's layout: its dims are x's dims `groups + [fd]`, put in x's order
    order = [*groups, fd]
    mean = whitening.mean.to(xa.dtype).permute(sorted(range(len(order)), key=lambda i: order[i]))
    mean = mean.reshape([x.shape[d] if (d in groups or d == fd) else 1 for d in range(nd)])
    xc = xa - mean  # centering first: W x - W mean would cancel digits when the mean is large
    w = whitening.matrix.to(xa.dtype)
    s = x.shape[-1]
    if fd == nd - 2 and sd and sd[-1] == nd - 1 and all(d in sd or d in groups for d in range(nd - 2)):
        # The (..., D, S) layout of a coupled partition's view (BatchPartition(d): (N, G, d, S)):
        # W broadcasts over the leading sample dims. S >= D: one batched matmul W @ xc (it
        # materializes W per batch: at most the input's size); S < D (e.g. 2-D input, S = 1):
        # einsum, whose transposes are input-sized copies instead of D times the input.
        if s >= w.shape[-1]:
            wb = w.reshape([x.shape[d] if d in groups else 1 for d in range(nd - 2)] + list(w.shape[-2:]))
            return torch.matmul(wb, xc)
    letters = "abcdefghijklmnopqrstuvw"[:nd]
    src = "".join("z" if d == fd else letters[d] for d in range(nd))
    wsub = "".join(letters[d] for d in groups) + letters[fd] + "z"
    return torch.einsum(f"{wsub},{src}->{letters}", w, xc)


# ------------------------------------------------------- running statistics


def momentum_factor(momentum: float | None, num_batches_tracked: Tensor | None) -> float | Tensor:
    """The weight of the new batch in a running-statistics update.

    ``momentum=None`` gives ``1 / num_batches_tracked`` (a cumulative average;
    pass the count *including* the batch being added), kept as a tensor so
    ``torch.compile`` does not specialize on or sync it.
    """
    if momentum is not None:
        return momentum
    if num_batches_tracked is None:
        raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
    # float64 so that float64 running statistics get a correctly rounded 1/k
    # (update_running casts it to the running statistics' dtype).
    return 1.0 / num_batches_tracked.clamp(min=1).to(torch.float64)


def update_running(running: Sequence[Tensor | None], stats: Statistics, momentum: float | Tensor) -> None:
    """The one running-statistics EMA: ``running = (1 - m) running + m new`` in place.

    ``running`` are the buffers in the order of ``stats.running_values()``
    (``None`` skips one); each type decides what is stored (Bessel's
    correction for :class:`Moments` and :class:`Covariance`, none for a
    :class:`Whitening` matrix). Values are reshaped to the buffer's shape
    (same number of elements, else a ``ValueError``). Never part of the
    autograd graph.
    """
    with torch.no_grad():
        _ema(running, stats, momentum)


def _ema(running: Sequence[Tensor | None], stats: Statistics, momentum: float | Tensor) -> None:
    # Lean on purpose: it runs on every training step of every batch norm, where
    # small-input forwards take tens of microseconds (no detach copies, no no-op casts).
    values = stats.running_values()
    if len(running) != len(values):
        raise ValueError(f"update_running: {type(stats).__name__} has {len(values)} running values, got {len(running)}")
    for buf, new in zip(running, values, strict=True):
        if buf is None:
            continue
        if new.shape != buf.shape:
            if new.numel() != buf.numel():
                raise ValueError(
                    f"update_running: a {type(stats).__name__} statistic with {new.numel()} values "
                    f"cannot update a running buffer of shape {tuple(buf.shape)}"
                )
            new = new.reshape(buf.shape)
        if new.dtype != buf.dtype:
            new = new.to(buf.dtype)
        if isinstance(momentum, Tensor):
            buf.lerp_(new, momentum.to(buf.dtype))
        else:
            buf.mul_(1.0 - momentum).add_(new, alpha=momentum)


def track_batch(
    running: Sequence[Tensor | None], num_batches_tracked: Tensor | None, stats: Statistics, momentum: float | None
) -> None:
    """Count one more training batch and fold ``stats`` into ``running`` (the modules' update, functional form).

    ``momentum`` in torch's form, ``None`` for the cumulative average (needs
    ``num_batches_tracked``). Call it *after* the output has been computed so
    a forward that raises changes no state.
    """
    with torch.no_grad():
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        _ema(running, stats, momentum_factor(momentum, num_batches_tracked))


def update_running_stats(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    mean: Tensor,
    var: Tensor,
    count: int,
    momentum: float | Tensor,
) -> None:
    """:func:`update_running` for ``Moments(mean, var, count)`` (``var`` biased)."""
    update_running((running_mean, running_var), Moments(mean, var, count), momentum)


# ------------------------------------------ fast raw-moment road (checked)


def moments(x: Tensor, dim, correction: int = 0, keepdim: bool = False) -> tuple[Tensor, Tensor]:
    """(mean, variance) over ``dim`` in one stable pass (``torch.var_mean``, Welford).

    Low-precision inputs are upcast to float32 so that the sums do not lose
    digits; the results are in the accumulation dtype.
    """
    xa = x.to(accumulation_dtype(x.dtype))
    var, mean = torch.var_mean(xa, dim=dim, correction=correction, keepdim=keepdim)
    return mean, var


# A raw second moment E[x^2] - E[x]^2 loses about log10(1 + mean^2/var) digits.
# Below this ratio float32 keeps >= 5 correct digits, which is what a float32
# two-pass estimate gives too; above it the caller falls back to ``moments``.
RAW_MOMENT_MAX_RATIO = 64.0


def row_moments(x3: Tensor) -> tuple[Tensor, Tensor] | None:
    """Per-row (mean, biased variance) of a contiguous ``(A, B, L)`` tensor over L.

    Two native vectorized reductions (sum and L2 norm; each reads ``x3``),
    together about 5x faster on CPU than ``torch.var_mean``. (Running them
    block by block so the second finds its block in cache was measured
    slower: the per-block op overhead outweighs the saved memory read.) The raw-moment formula is
    used only because its cancellation is checked: returns ``None`` (caller
    takes the stable path) if any row has mean^2 > RAW_MOMENT_MAX_RATIO * var.
    That check costs one host sync, so this is for eager mode only.
    """
    length = x3.shape[-1]
    s1 = x3.sum(-1)
    s2 = torch.linalg.vector_norm(x3, dim=-1).square_()
    mean = s1.div_(length)
    var = s2.div_(length).sub_(mean.square())
    # var < 0 only from rounding; a row with var ~ 0 fails the check below too.
    if bool((mean.square() > RAW_MOMENT_MAX_RATIO * var).any()):
        return None
    return mean, var


def combine_row_moments(mean: Tensor, var: Tensor, dim: int = 0) -> tuple[Tensor, Tensor]:
    """Pool equal-sized groups' (mean, biased var) over ``dim`` (parallel variance).

    var_total = mean(var_i) + mean((mean_i - mean_total)^2): no cancellation.
    (Same as :meth:`Moments.pool` for equal counts; kept for the fast BN road.)
    """
    total_mean = mean.mean(dim)
    total_var = var.mean(dim) + (mean - total_mean.unsqueeze(dim)).square().mean(dim)
    return total_mean, total_var
