"""Mixtures of normalizers (the survey's attentive/switchable recovery of statistics).

Switchable Normalization (Luo, Ren, Peng, Zhang & Li, ICLR 2019,
"Differentiable Learning-to-Normalize via Switchable Normalization",
arXiv:1806.10779) normalizes with a learned mixture of the statistics of
instance, layer and batch normalization::

    mu    = sum_k softmax(mean_weight)_k mu_k         k in (IN, LN, BN)
    sigma2 = sum_k softmax(var_weight)_k sigma2_k
    y     = gamma (x - mu) / sqrt(sigma2 + eps) + beta

Two roads compute it, and a test proves them equal in float64:

- :func:`switchable_norm` (what the module runs): one pass over the input for
  the IN moments (per (n, c) over the spatial dims); LN and BN moments are
  *pooled* from them exactly (:meth:`Moments.pool`, the parallel-variance
  formula ``var = mean(var_i) + mean((mean_i - mean)^2)``: every term is
  non-negative, so unlike the paper's ``mean(var_in + mean_in^2) - mean^2``
  nothing cancels), then one fused pass applies the mixture.
- :func:`switchable_norm_generic` (the oracle): every component's moments
  estimated directly by its own partition (:class:`InstancePartition`,
  :class:`LayerPartition`, :class:`BatchPartition`), mixed, applied, recovered.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import check_enough_values, check_tensor
from .partition import BatchPartition, InstancePartition, LayerPartition
from .recovery import channel_affine
from .stats import Moments, Reduce, apply_moments, estimate_moments

#: the components of Switchable Norm, in the order of its weight vectors (as the official code)
SWITCHABLE_COMPONENTS = ("instance", "layer", "batch")


def num_components(using_bn: bool) -> int:
    """How many statistics a switchable norm mixes: IN, LN (and BN)."""
    return 3 if using_bn else 2


def check_switchable_input(x: object, num_features: int | None, what: str = "SwitchableNorm") -> Tensor:
    """``x`` as a float tensor ``(N, C, *spatial)`` with at least one spatial dim and ``C = num_features``.

    ``num_features=None`` accepts any channel count.
    """
    x = check_tensor(x)
    if x.dim() < 3:
        raise ValueError(
            f"{what} expected input of shape (N, C, *spatial) with at least one spatial dim (the IN statistics are "
            f"taken over the spatial positions), got {x.dim()}D input of shape {tuple(x.shape)}; for (N, C) "
            f"features use BatchNorm1d or LayerNorm"
        )
    if num_features is not None and x.shape[1] != num_features:
        raise ValueError(
            f"{what} expected input with {num_features} channels at dim 1, got {x.shape[1]} "
            f"(input shape {tuple(x.shape)}); build it with num_features={x.shape[1]} or fix the input"
        )
    return x


def _check_logits(t: Tensor, k: int, name: str, using_bn: bool) -> None:
    if t.dim() != 1 or t.shape[0] != k:
        comps = ", ".join(SWITCHABLE_COMPONENTS[:k])
        raise ValueError(
            f"switchable_norm expected {name} of shape ({k},) (one logit per component: {comps}; "
            f"using_bn={using_bn}), got {tuple(t.shape)}"
        )


def _check_running(running_mean: Tensor | None, running_var: Tensor | None, c: int) -> None:
    if (running_mean is None) != (running_var is None):
        raise ValueError("switchable_norm: give both running_mean and running_var, or neither")
    for t, name in ((running_mean, "running_mean"), (running_var, "running_var")):
        if t is not None and tuple(t.shape) != (c,):
            raise ValueError(f"switchable_norm expected {name} of shape ({c},), got {tuple(t.shape)}")


def _channel_view(t: Tensor, x: Tensor) -> Tensor:
    """A per-channel ``(C,)`` tensor shaped ``(1, C, 1, ...)`` to broadcast against ``x``."""
    return t.view([1, -1] + [1] * (x.dim() - 2))


def instance_moments(x: Tensor) -> Moments:
    """IN moments: per (n, c) over the spatial dims, biased variance, one stable pass (``torch.var_mean``).

    Shaped ``(N, C, 1, ...)`` (broadcast against ``x`` in its own layout, no copy); accumulation dtype.
    """
    return estimate_moments(x, tuple(range(2, x.dim())))


def pool_batch(m_in: Moments, *, reduce: Reduce | None = None) -> Moments:
    """BN moments ``(1, C, 1, ...)`` pooled exactly over the batch from the IN moments ``(N, C, 1, ...)``.

    ``reduce`` (sums across processes): two small collectives as in
    :func:`~normlab.functional.stats.estimate_moments`. First ``[sum_n S
    mean_in, N S]`` gives the global mean, then ``sum_n S (var_in + (mean_in -
    mean)^2)`` (deviations from that *global* mean, every term non-negative)
    gives the global biased variance (:meth:`Moments.pool` with ``reduce``); ``count`` is then a tensor.
    """
    return m_in.pool(0, reduce=reduce)


def switchable_statistics(
    x: Tensor,
    *,
    using_bn: bool = True,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    reduce: Reduce | None = None,
) -> tuple[Moments, Moments | None]:
    """The component statistics of a switchable norm, stacked, and the batch's BN moments.

    Returns ``(stacked, batch)``: ``stacked`` holds the IN, LN (and BN)
    moments broadcast to ``(N, C, 1, ...)`` and stacked on a new dim 0 (mix
    them with :meth:`Moments.mix` over dim 0); ``batch`` is the BN moments of
    this batch ``(1, C, 1, ...)`` (to fold into running statistics), or None
    when the BN component comes from ``running_mean``/``running_var`` (given:
    eval mode) or there is no BN component (``using_bn=False``).

    One pass over ``x`` (IN moments); LN pools them over C and BN over N
    exactly (no raw ``E[x^2] - E[x]^2``). ``reduce`` synchronizes the BN
    moments only: IN and LN are per sample.
    """
    m_in = instance_moments(x)
    m_ln = m_in.pool(1)
    means, vars_ = [m_in.mean, m_ln.mean], [m_in.var, m_ln.var]
    batch = None
    if using_bn:
        if running_mean is not None:
            dt = m_in.mean.dtype
            means.append(_channel_view(running_mean.to(dt), x))
            vars_.append(_channel_view(running_var.to(dt), x))
        else:
            if reduce is None:
                check_enough_values(x.shape[0] * m_in.count, x, "channel (the BN component)")
            batch = pool_batch(m_in, reduce=reduce)
            means.append(batch.mean)
            vars_.append(batch.var)
    shape = m_in.mean.shape
    # The stacked statistics are tiny (K x N x C): expanding and stacking them costs nothing.
    stacked = Moments(
        torch.stack([m.expand(shape) for m in means]), torch.stack([v.expand(shape) for v in vars_]), m_in.count
    )
    return stacked, batch


def switchable_norm(
    x: Tensor,
    mean_weight: Tensor,
    var_weight: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    using_bn: bool = True,
    eps: float = 1e-5,
    reduce: Reduce | None = None,
) -> tuple[Tensor, Moments | None]:
    """Switchable Normalization of ``x`` ``(N, C, *spatial)``; returns ``(y, batch BN moments or None)``.

    ``mean_weight``/``var_weight``: the logits ``(3,)`` (IN, LN, BN) or
    ``(2,)`` with ``using_bn=False``, softmaxed here. ``running_mean`` /
    ``running_var`` ``(C,)`` (the unbiased variance, as BatchNorm's): given,
    they are the BN component (eval); absent, the batch's BN moments are, and
    are returned for the caller to fold into its running statistics (after the
    output exists, so a call that raises changes no state).

    Statistics and the mixture are in float32 at least; the output is in
    ``x``'s dtype and memory format.

    >>> import torch
    >>> x = torch.randn(4, 3, 5, 5)
    >>> y, batch = switchable_norm(x, torch.ones(3), torch.ones(3))
    >>> y.shape, tuple(batch.mean.shape), batch.count
    (torch.Size([4, 3, 5, 5]), (1, 3, 1, 1), 100)
    """
    x = check_switchable_input(x, None, "switchable_norm")
    c = x.shape[1]
    k = num_components(using_bn)
    _check_logits(mean_weight, k, "mean_weight", using_bn)
    _check_logits(var_weight, k, "var_weight", using_bn)
    for p, name in ((weight, "weight"), (bias, "bias")):
        if p is not None and tuple(p.shape) != (c,):
            raise ValueError(f"switchable_norm expected {name} of shape ({c},), got {tuple(p.shape)}")
    _check_running(running_mean, running_var, c)
    if running_mean is not None and not using_bn:
        raise ValueError("switchable_norm: running statistics are for the BN component, but using_bn=False")

    stacked, batch = switchable_statistics(
        x, using_bn=using_bn, running_mean=running_mean, running_var=running_var, reduce=reduce
    )
    acc = stacked.mean.dtype
    mixed = stacked.mix(torch.softmax(mean_weight.to(acc), 0), 0, torch.softmax(var_weight.to(acc), 0))
    # One fused pass (the affine folded into the per-(n, c) scale, centering first).
    y = apply_moments(x, mixed, eps, weight, bias)
    return y.to(x.dtype), batch


def switchable_norm_generic(
    x: Tensor,
    mean_weight: Tensor,
    var_weight: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    using_bn: bool = True,
    eps: float = 1e-5,
) -> Tensor:
    """Switchable Norm as the plain composition (the oracle of :func:`switchable_norm`).

    Each component's moments come from its own partition (IN: per (n, c)
    over the spatial dims; LN: per n over (C, *spatial); BN: per c over (N,
    *spatial), or the running statistics when given), each estimated directly
    on the input; they are mixed (:meth:`Moments.mix`), applied
    (:func:`apply_moments`) and recovered (:func:`channel_affine`). Output in
    ``x``'s dtype.
    """
    view = InstancePartition().view(x)  # (N, C, S): IN, LN and BN partitions share this view
    parts = [InstancePartition().moments(x), LayerPartition().moments(x)]
    if using_bn:
        if running_mean is not None:
            parts.append(Moments(running_mean.view(1, -1, 1), running_var.view(1, -1, 1), 1))
        else:
            parts.append(BatchPartition().moments(x))
    acc = parts[0].mean.dtype
    shape = parts[0].mean.shape
    stacked = Moments(
        torch.stack([p.mean.to(acc).expand(shape) for p in parts]),
        torch.stack([p.var.to(acc).expand(shape) for p in parts]),
        parts[0].count,
    )
    mixed = stacked.mix(torch.softmax(mean_weight.to(acc), 0), 0, torch.softmax(var_weight.to(acc), 0))
    y = apply_moments(view, mixed, eps).reshape(x.shape)
    return channel_affine(y, weight, bias).to(x.dtype)
