"""Batch-statistics variants without a torch twin: the functional core.

Ghost batch normalization (Hoffer, Hubara & Soudry 2017, "Train longer,
generalize better", arXiv:1705.08741): the batch ``(N, C, *spatial)`` is split
along N into *ghost batches* of ``virtual_batch_size`` samples (the last one
smaller when ``virtual_batch_size`` does not divide N, as ``x.split(B)``), and
each is batch-normalized with its own per-channel statistics:

.. math::

    y_i = \\frac{x_i - \\mu_k}{\\sqrt{\\sigma^2_k + \\epsilon}} \\gamma + \\beta,
    \\quad i \\in \\text{ghost batch } k

with :math:`\\mu_k, \\sigma^2_k` the mean and biased variance of channel c over
(the samples of ghost batch k, *spatial).

:func:`ghost_moments` estimates every ghost batch's moments in one vectorized
pass over the view ``x.unflatten(0, (K, B))`` (no loop over ghost batches; an
uneven last ghost batch is one more estimate). :func:`ghost_batch_norm` applies
them and keeps running statistics: **one** update per call, with the moments
of the whole batch pooled exactly from the ghost batches
(:meth:`~normlab.functional.stats.Moments.pool`), i.e. the same running
statistics as ``torch.nn.BatchNorm`` on the same batch. (Folding in every ghost
batch in turn would make K updates per step, an effective momentum
``1 - (1 - m)^K`` that depends on the batch size; the pooled update keeps
``momentum`` meaning what it means for BatchNorm and makes a BatchNorm
checkpoint interchangeable.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .checks import check_min_rank, check_positive_int, check_tensor
from .stats import Moments, Reduce, apply_moments, estimate_moments, track_batch

__all__ = ["ghost_batch_norm", "ghost_batch_sizes", "ghost_moments"]


def _check_virtual_batch_size(virtual_batch_size: object, owner: str) -> int:
    return check_positive_int(virtual_batch_size, "virtual_batch_size", owner)


def ghost_batch_sizes(batch_size: int, virtual_batch_size: int) -> tuple[int, ...]:
    """The ghost batch sizes of a batch of ``batch_size`` samples: as ``x.split(virtual_batch_size)``.

    >>> ghost_batch_sizes(10, 4), ghost_batch_sizes(8, 4), ghost_batch_sizes(3, 32)
    ((4, 4, 2), (4, 4), (3,))
    """
    full, rest = divmod(batch_size, virtual_batch_size)
    return (virtual_batch_size,) * full + ((rest,) if rest else ())


def _check_enough_values(x: Tensor, virtual_batch_size: int, owner: str) -> None:
    """Every ghost batch needs more than one value per channel (else its variance is 0/0 or 0)."""
    sizes = ghost_batch_sizes(x.shape[0], virtual_batch_size)
    spatial = math.prod(x.shape[2:])
    smallest = min(sizes, default=0)
    if smallest * spatial > 1:
        return
    if not sizes:
        raise ValueError(
            f"{owner} expected a non-empty batch for batch statistics, got input size {tuple(x.shape)}; "
            f"call .eval() to use the running statistics"
        )
    raise ValueError(
        f"{owner} expected more than 1 value per channel in every ghost batch when using batch statistics, "
        f"got input size {tuple(x.shape)} split into ghost batches of {list(sizes)} samples "
        f"(virtual_batch_size={virtual_batch_size}), the smallest with {smallest * spatial} value per channel; "
        f"use a batch size that does not leave a last ghost batch of 1 sample (batch_size % virtual_batch_size "
        f"!= 1, or DataLoader(drop_last=True)), a larger virtual_batch_size, or call .eval()"
    )


def _as_count(count: Tensor | int, like: Tensor) -> Tensor:
    """A ghost batch's count as a 1-element tensor in ``like``'s dtype (int or tensor, as estimators return)."""
    return torch.as_tensor(count, dtype=like.dtype, device=like.device).reshape(1)


def ghost_moments(x: Tensor, virtual_batch_size: int, *, reduce: Reduce | None = None) -> Moments:
    """Per-ghost-batch, per-channel mean and biased variance of ``x`` ``(N, C, *spatial)``.

    Returns :class:`~normlab.functional.stats.Moments` with ``mean`` and
    ``var`` of shape ``(K, 1, C, 1, ...)``: ghost batch ``k`` on dim 0, laid
    out to broadcast against ``x.unflatten(0, (K, B))`` when the batch splits
    evenly (``K = ceil(N / B)``, ``B = min(virtual_batch_size, N)``). They are
    estimated in one vectorized pass over that view (reduced dims: the
    ghost-batch samples and the spatial dims); with an uneven last ghost batch
    it is one more estimate, and ``count`` is then a ``(K, 1, 1, ...)`` tensor
    (otherwise :func:`~normlab.functional.stats.estimate_moments`' count: the
    int ``B * prod(spatial)``, a tensor with ``reduce``). Statistics in float32 at least.

    ``reduce`` (sums over processes) pools ghost batch ``k`` of every process
    into one ghost batch (every process must have the same number of ghost
    batches): the statistics are those of the union.

    >>> import torch
    >>> x = torch.randn(10, 3, 4, 4, dtype=torch.float64)
    >>> st = ghost_moments(x, 4)          # ghost batches of 4, 4 and 2 samples
    >>> st.mean.shape, st.count.flatten().tolist()
    (torch.Size([3, 1, 3, 1, 1]), [64.0, 64.0, 32.0])
    >>> whole = st.pool(0, keepdim=False)  # exactly the whole batch's moments
    >>> bool(torch.allclose(whole.var.flatten(), x.var((0, 2, 3), unbiased=False)))
    True
    """
    check_min_rank(x, 2, "ghost_moments")
    b = min(virtual_batch_size, x.shape[0])
    if b <= 0:
        raise ValueError(f"ghost_moments expected a non-empty batch, got input size {tuple(x.shape)}")
    dims = (1, *range(3, x.dim() + 1))  # the ghost batch's samples and the spatial dims of the (K, B, ...) view
    full, rest = divmod(x.shape[0], b)
    if rest == 0:
        return estimate_moments(x.unflatten(0, (full, b)), dims, reduce=reduce)
    head = estimate_moments(x[: full * b].unflatten(0, (full, b)), dims, reduce=reduce)
    tail = estimate_moments(x[full * b :].unsqueeze(0), dims, reduce=reduce)
    mean = torch.cat([head.mean, tail.mean])
    var = torch.cat([head.var, tail.var])
    count = torch.cat([_as_count(head.count, mean).expand(full), _as_count(tail.count, mean)])
    return Moments(mean, var, count.view((full + 1,) + (1,) * (mean.dim() - 1)))


def _normalize(
    x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, channel_dim: int = 1
) -> Tensor:
    """:func:`~.stats.apply_moments` with the per-channel affine folded in, cast back to ``x``'s dtype."""
    return apply_moments(x, (mean, var), eps, weight, bias, channel_dim).to(x.dtype)


def _per_sample(t: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """Ghost-batch statistics ``(K, 1, C, 1, ...)`` repeated per sample: ``(N, C, 1, ...)`` (small tensors)."""
    full = len(sizes) - 1
    head = t[:full].expand(full, sizes[0], *t.shape[2:]).flatten(0, 1)
    return torch.cat([head, t[full:].squeeze(0).expand(sizes[-1], *t.shape[2:])])


def ghost_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor | None = 0.1,
    eps: float = 1e-5,
    virtual_batch_size: int = 32,
    num_batches_tracked: Tensor | None = None,
    *,
    reduce: Reduce | None = None,
) -> Tensor:
    """Ghost batch normalization of ``input`` ``(N, C, *spatial)``; ``torch.nn.functional.batch_norm``'s signature.

    ``training=True``: every ghost batch (``input.split(virtual_batch_size)``;
    the last may be smaller) is normalized with its own per-channel mean and
    biased variance (:func:`ghost_moments`); if ``running_mean``/``running_var``
    are given they get **one** EMA update (torch's form, unbiased variance)
    with the whole batch's moments pooled exactly from the ghost batches, the
    same update as BatchNorm's. ``momentum`` is a float, a 0-dim tensor factor,
    or None (cumulative average; needs ``num_batches_tracked``, which is
    incremented when given). ``training=False``: normalize with
    ``running_mean``/``running_var`` (required).

    ``reduce``: sums over processes (synchronized statistics; see
    :func:`ghost_moments`). The running statistics are updated last, so a
    call that raises changes no state. Output in ``input``'s dtype and memory
    format; statistics in float32 at least.

    >>> import torch
    >>> x = torch.randn(8, 3, 4, 4)
    >>> rm, rv = torch.zeros(3), torch.ones(3)
    >>> y = ghost_batch_norm(x, rm, rv, training=True, virtual_batch_size=4)
    >>> bool(torch.allclose(y[:4], torch.nn.functional.batch_norm(x[:4], None, None, training=True), atol=1e-5))
    True
    """
    check_tensor(input)
    check_min_rank(input, 2, "ghost_batch_norm")
    virtual_batch_size = _check_virtual_batch_size(virtual_batch_size, "ghost_batch_norm")
    c = input.shape[1]
    for t, name in ((running_mean, "running_mean"), (running_var, "running_var"), (weight, "weight"), (bias, "bias")):
        if t is not None and tuple(t.shape) != (c,):
            raise ValueError(
                f"ghost_batch_norm expected {name} of shape ({c},) for input with {c} channels, got {tuple(t.shape)}"
            )
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError(
                "ghost_batch_norm with training=False needs running_mean and running_var; "
                "pass training=True to normalize with the ghost batches' own statistics"
            )
        shape = (1, c) + (1,) * (input.dim() - 2)
        return _normalize(input, running_mean.view(shape), running_var.view(shape), weight, bias, eps)
    update = running_mean is not None or running_var is not None
    if update and momentum is None and num_batches_tracked is None:
        raise ValueError("ghost_batch_norm: momentum=None (cumulative average) needs num_batches_tracked")
    if reduce is None:
        # With reduce, a ghost batch pools every process's k-th chunk: the local count says nothing.
        _check_enough_values(input, virtual_batch_size, "ghost_batch_norm")
    stats = ghost_moments(input, virtual_batch_size, reduce=reduce)
    sizes = ghost_batch_sizes(input.shape[0], min(virtual_batch_size, input.shape[0]))
    if len(sizes) == 1 or sizes[-1] == sizes[0]:
        # The common case: normalize on the (K, B, C, *spatial) view, no per-sample copies of the statistics.
        view = input.unflatten(0, (len(sizes), sizes[0]))
        y = _normalize(view, stats.mean, stats.var, weight, bias, eps, channel_dim=2).flatten(0, 1)
    else:
        y = _normalize(input, _per_sample(stats.mean, sizes), _per_sample(stats.var, sizes), weight, bias, eps)
    if update:
        # Last: the output exists, so a failure above has changed nothing.
        track_batch((running_mean, running_var), num_batches_tracked, stats.pool(0, keepdim=False), momentum)
    return y
