"""Batch-statistics norms: drop-in ``BatchNorm1d/2d/3d``.

They subclass torch's classes, so the constructor, parameters, buffers,
``state_dict`` (loads strictly both ways), ``repr`` and ``isinstance`` checks
are torch's own; ``forward`` runs :func:`normlab.functional.batch_norm`.
"""

from __future__ import annotations

from torch import Tensor, nn

from .. import functional as NF
from ..functional.checks import check_channels, check_rank, check_tensor


class _BatchNormMixin:
    """forward shared by BatchNorm1d/2d/3d: choose the statistics source, call the function."""

    _ranks: tuple[int, ...] = ()

    def _check_input_dim(self, input: Tensor) -> None:
        check_tensor(input)
        check_rank(input, self._ranks, type(self).__name__)
        check_channels(input, self.num_features, type(self).__name__)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            momentum = NF.momentum_factor(self.momentum, self.num_batches_tracked)
        # Batch statistics in training, or when there are no running statistics.
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return NF.batch_norm(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch_stats,
            momentum,
            self.eps,
        )


class BatchNorm1d(_BatchNormMixin, nn.BatchNorm1d):
    r"""Batch normalization over ``(N, C)`` or ``(N, C, L)`` (Ioffe & Szegedy, 2015).

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Statistics per channel over (N, L), biased variance for normalizing, the
    unbiased one stored in ``running_var``; ``momentum`` in torch's form
    (``None`` = cumulative average). Same arguments and defaults as
    :class:`torch.nn.BatchNorm1d`.

    Shape: input ``(N, C)`` or ``(N, C, L)``, output the same.

    Example::

        >>> import torch, normlab
        >>> bn = normlab.nn.BatchNorm1d(8)
        >>> bn(torch.randn(16, 8)).shape
        torch.Size([16, 8])
    """

    _ranks = (2, 3)


class BatchNorm2d(_BatchNormMixin, nn.BatchNorm2d):
    r"""Batch normalization over ``(N, C, H, W)`` (Ioffe & Szegedy, 2015).

    Statistics per channel over (N, H, W). In training on contiguous CPU
    input it computes per-(sample, channel) moments with two vectorized
    reductions and applies the result in one fused pass (about 2-4x faster
    than torch's kernel); otherwise it runs torch's kernel. Same arguments,
    defaults, parameters and buffers as :class:`torch.nn.BatchNorm2d`.

    Shape: input ``(N, C, H, W)``, output the same (memory format kept).

    Example::

        >>> import torch, normlab
        >>> bn = normlab.nn.BatchNorm2d(3)
        >>> bn(torch.randn(4, 3, 8, 8)).shape
        torch.Size([4, 3, 8, 8])
    """

    _ranks = (4,)


class BatchNorm3d(_BatchNormMixin, nn.BatchNorm3d):
    r"""Batch normalization over ``(N, C, D, H, W)`` (Ioffe & Szegedy, 2015).

    Statistics per channel over (N, D, H, W); see :class:`BatchNorm2d`.

    Shape: input ``(N, C, D, H, W)``, output the same.

    Example::

        >>> import torch, normlab
        >>> normlab.nn.BatchNorm3d(2)(torch.randn(2, 2, 3, 4, 4)).shape
        torch.Size([2, 2, 3, 4, 4])
    """

    _ranks = (5,)
