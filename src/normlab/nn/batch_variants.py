"""Batch-statistics variants without a torch twin: Ghost BN (more to come: mean-only, L1/L-inf BN, renorm, BGN).

Each is a rank-agnostic class on :class:`~normlab.nn.base.RunningStatsNorm`
whose ``forward`` calls one ``@torch.fx.wrap``-ped function of this module
(see the base module's docs): validation first, then the functional core
(:mod:`normlab.functional.batch_variants`), running statistics updated last.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..functional.batch_variants import ghost_batch_norm
from ..functional.checks import check_channels, check_positive_int, check_rank, check_tensor
from .base import RunningStatsNorm

__all__ = ["GhostBatchNorm"]

_RANKS = (2, 3, 4, 5)


@torch.fx.wrap
def _ghost_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    num_features: int,
    virtual_batch_size: int,
    use_batch_stats: bool,
    update: bool,
    momentum: float | None,
    eps: float,
) -> Tensor:
    check_tensor(input)
    check_rank(input, _RANKS, "GhostBatchNorm")
    check_channels(input, num_features, "GhostBatchNorm")
    # Running buffers go in only where they are used: to normalize (eval) or to be updated (training).
    running = update or not use_batch_stats
    return ghost_batch_norm(
        input,
        running_mean if running else None,
        running_var if running else None,
        weight,
        bias,
        use_batch_stats,
        momentum,
        eps,
        virtual_batch_size,
        num_batches_tracked if update else None,
    )


class GhostBatchNorm(RunningStatsNorm):
    r"""Ghost batch normalization: BatchNorm over ghost batches of ``virtual_batch_size`` samples.

    Hoffer, Hubara & Soudry 2017, "Train longer, generalize better: closing
    the generalization gap in large batch training of neural networks",
    arXiv:1705.08741. In training the batch is split along N into ghost
    batches, ``input.split(virtual_batch_size)``, and each is normalized with
    its own statistics, so a large batch sees the noise of small ones:

    .. math::

        y_i = \frac{x_i - \mu_k}{\sqrt{\sigma^2_k + \epsilon}} \gamma + \beta,
        \qquad i \in \text{ghost batch } k,

    :math:`\mu_k, \sigma^2_k`: per-channel mean and biased variance over (the
    ghost batch's samples, \*spatial). When ``virtual_batch_size`` does not
    divide N the **last ghost batch is smaller** (N = 10, virtual batch 4:
    ghost batches of 4, 4, 2 samples); a ghost batch with a single value per
    channel (one sample of 2-D input) raises a ``ValueError``. With
    ``virtual_batch_size >= N`` it is exactly ``torch.nn.BatchNorm``. All ghost
    batches' statistics come from one vectorized pass over the view
    ``(K, B, C, *spatial)`` (an uneven last ghost batch adds one estimate), in
    float32 at least; the output has the input's dtype and memory format.

    **Running statistics**: one update per training step, with the moments of
    the *whole* batch pooled exactly from the ghost batches (parallel
    variance), in torch's form ``running = (1 - momentum) running + momentum
    batch`` with the unbiased variance: the same running statistics as
    ``torch.nn.BatchNorm`` on the same batch, whatever ``virtual_batch_size``.
    (The alternative, one update per ghost batch, is K updates per step, an
    effective momentum ``1 - (1 - m)^K`` that changes with the batch size.)
    Eval mode normalizes with them, as BatchNorm does; without running
    statistics (``track_running_stats=False``) eval uses ghost batches too.

    Parameters and buffers are BatchNorm's (``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``num_batches_tracked``): a
    ``torch.nn.BatchNorm2d(C)`` checkpoint loads strictly, and back.

    Args:
        num_features: C, the channel dim (dim 1) of the input.
        virtual_batch_size: samples per ghost batch. Default: 32.
        eps: added to the variance. Default: 1e-5.
        momentum: weight of the new batch in the running statistics (torch's
            form); ``None``: cumulative average. Default: 0.1.
        affine: learn a per-channel ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        track_running_stats: keep running statistics for eval. Default: True.

    Shape:
        - Input: ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        - Output: the same shape (and memory format) as the input.

    Example::

        >>> import torch, normlab
        >>> gbn = normlab.nn.GhostBatchNorm(3, virtual_batch_size=4)
        >>> x = torch.randn(8, 3, 5, 5)
        >>> y = gbn(x)                                  # ghost batches x[:4] and x[4:]
        >>> bn = torch.nn.BatchNorm2d(3)
        >>> bool(torch.allclose(y[4:], bn(x[4:]), atol=1e-5))
        True
        >>> gbn
        GhostBatchNorm(3, virtual_batch_size=4, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
    """

    virtual_batch_size: int

    def __init__(
        self,
        num_features: int,
        virtual_batch_size: int = 32,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        vbs = check_positive_int(virtual_batch_size, "virtual_batch_size", type(self).__name__)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.virtual_batch_size = vbs

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, virtual_batch_size={self.virtual_batch_size}, eps={self.eps}, "
            f"momentum={self.momentum}, affine={self.affine}, track_running_stats={self.track_running_stats}"
        )

    def forward(self, input: Tensor) -> Tensor:
        return _ghost_batch_norm(
            input,
            self.running_mean,
            self.running_var,
            self.num_batches_tracked,
            self.weight,
            self.bias,
            self.num_features,
            self.virtual_batch_size,
            self.use_batch_stats(),
            self.updates_running(),
            self.momentum,
            self.eps,
        )
