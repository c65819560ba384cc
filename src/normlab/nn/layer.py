"""Per-sample norms: LayerNorm, channel LayerNorm, GroupNorm, InstanceNorm, RMSNorm.

Modules with a torch twin subclass it (same constructor, parameters, buffers,
``state_dict`` and ``repr``) and run :mod:`normlab.functional` in ``forward``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .. import functional as NF
from ..functional.checks import (
    InvalidArgumentError,
    check_channels,
    check_groups,
    check_min_rank,
    check_rank,
    check_tensor,
)
from .base import check_eps, check_positive_int


class LayerNorm(nn.LayerNorm):
    r"""Layer normalization over the trailing ``normalized_shape`` dims (Ba et al., 2016).

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \odot \gamma + \beta

    Per-sample statistics over the last ``len(normalized_shape)`` dims, biased
    variance, per-element affine. Same arguments as :class:`torch.nn.LayerNorm`.
    For the channel dim of images (``(N, C, H, W)``) use :class:`LayerNorm2d`.

    Shape: input ``(*, *normalized_shape)``, output the same.

    Example::

        >>> import torch, normlab
        >>> normlab.nn.LayerNorm(16)(torch.randn(4, 10, 16)).shape
        torch.Size([4, 10, 16])
    """

    def forward(self, input: Tensor) -> Tensor:
        return NF.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class ChannelLayerNorm(nn.Module):
    r"""LayerNorm over the channel dim of ``(N, C, *spatial)``, at every position.

    .. math:: y_{n,:,p} = \frac{x_{n,:,p} - \mu_{n,p}}{\sqrt{\sigma^2_{n,p} + \epsilon}} \gamma + \beta

    The ConvNeXt-style "LayerNorm2d": the same numbers as permuting to
    channels-last, ``torch.nn.LayerNorm(C)`` and permuting back, but computed
    by reductions over dim 1, so no permute copies are made and the input's
    memory format (contiguous or channels_last) is kept. Statistics are
    accumulated in float32 at least; biased variance; per-channel affine.

    Args:
        num_channels: C.
        eps: added to the variance. Default: 1e-5 (torch's LayerNorm default).
        elementwise_affine: learn a per-channel ``weight`` (init 1). Default: True.
        bias: learn a per-channel ``bias`` (init 0) when affine. Default: True.

    Shape: input ``(N, C, *spatial)`` (:class:`LayerNorm2d`: 4D, :class:`LayerNorm3d`: 5D).

    Example::

        >>> import torch, normlab
        >>> ln = normlab.nn.LayerNorm2d(32)
        >>> ln(torch.randn(2, 32, 7, 7)).shape
        torch.Size([2, 32, 7, 7])
    """

    _ranks: tuple[int, ...] | None = None

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if num_channels <= 0:
            raise ValueError(f"num_channels must be a positive integer, got {num_channels}")
        self.num_channels = num_channels
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        factory = {"device": device, "dtype": dtype}
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(num_channels, **factory))
            self.bias = nn.Parameter(torch.empty(num_channels, **factory)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        check_tensor(input)
        if self._ranks is not None:
            check_rank(input, self._ranks, type(self).__name__)
        check_min_rank(input, 2, type(self).__name__)
        check_channels(input, self.num_channels, type(self).__name__)
        return NF.channel_layer_norm(input, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class LayerNorm2d(ChannelLayerNorm):
    """:class:`ChannelLayerNorm` for ``(N, C, H, W)`` input."""

    _ranks = (4,)


class LayerNorm3d(ChannelLayerNorm):
    """:class:`ChannelLayerNorm` for ``(N, C, D, H, W)`` input."""

    _ranks = (5,)


class GroupNorm(nn.GroupNorm):
    r"""Group normalization (Wu & He, 2018), by ``num_groups`` or by ``group_size``.

    .. math:: y = \frac{x - \mathrm{E}_g[x]}{\sqrt{\mathrm{Var}_g[x] + \epsilon}} \gamma + \beta

    Per sample, channels split into groups of C/G consecutive channels;
    statistics over (C/G, *spatial); per-channel affine. ``GroupNorm(1, C)`` is
    LayerNorm over (C, *spatial); ``GroupNorm(C, C)`` is InstanceNorm.
    Same arguments as :class:`torch.nn.GroupNorm`; :meth:`from_group_size`
    builds it from the channels per group instead (spec ``"gn:group_size=16"``).

    Shape: input ``(N, C, *)``, output the same.

    Example::

        >>> import torch, normlab
        >>> normlab.nn.GroupNorm(8, 64)(torch.randn(2, 64, 5, 5)).shape
        torch.Size([2, 64, 5, 5])
        >>> normlab.nn.GroupNorm.from_group_size(64, group_size=16).num_groups
        4
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        owner = "GroupNorm"
        check_positive_int(num_groups, "num_groups", owner)
        check_positive_int(num_channels, "num_channels", owner)
        check_groups(num_channels, num_groups)
        check_eps(eps, owner)
        super().__init__(num_groups, num_channels, eps, affine, device, dtype, bias=bias)

    @classmethod
    def from_group_size(cls, num_channels: int, group_size: int, **kwargs) -> GroupNorm:
        """GroupNorm with ``group_size`` channels per group: ``GroupNorm(num_channels // group_size, num_channels)``.

        >>> import normlab
        >>> normlab.nn.GroupNorm.from_group_size(64, 16)
        GroupNorm(4, 64, eps=1e-05, affine=True)
        """
        check_positive_int(num_channels, "num_channels", "GroupNorm.from_group_size")
        check_positive_int(group_size, "group_size", "GroupNorm.from_group_size")
        if num_channels % group_size:
            raise InvalidArgumentError(
                f"GroupNorm.from_group_size: num_channels ({num_channels}) must be divisible by group_size "
                f"({group_size}); group sizes that divide {num_channels}: "
                f"{[d for d in range(1, num_channels + 1) if num_channels % d == 0]}"
            )
        return cls(num_channels // group_size, num_channels, **kwargs)

    @property
    def group_size(self) -> int:
        return self.num_channels // self.num_groups

    def forward(self, input: Tensor) -> Tensor:
        check_tensor(input)
        check_min_rank(input, 2, "GroupNorm")
        check_channels(input, self.num_channels, "GroupNorm")
        return NF.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class _InstanceNormMixin:
    """forward shared by InstanceNorm1d/2d/3d (batched and unbatched input)."""

    _batched_rank: int = 0

    def forward(self, input: Tensor) -> Tensor:
        name = type(self).__name__
        check_tensor(input)
        check_rank(input, (self._batched_rank - 1, self._batched_rank), name)
        unbatched = input.dim() == self._batched_rank - 1
        x = input.unsqueeze(0) if unbatched else input
        if x.shape[1] != self.num_features:
            if self.affine or self.track_running_stats:
                check_channels(x, self.num_features, name)
            warnings.warn(
                f"{name}: input has {x.shape[1]} channels but num_features={self.num_features}; "
                "without affine or running stats num_features is unused",
                stacklevel=2,
            )
        momentum = 0.0 if self.momentum is None else self.momentum
        use_input_stats = self.training or not self.track_running_stats
        y = NF.instance_norm(
            x,
            self.running_mean,  # None unless track_running_stats
            self.running_var,
            self.weight,
            self.bias,
            use_input_stats,
            momentum,
            self.eps,
        )
        return y.squeeze(0) if unbatched else y


_IN_DOC = r"""Instance normalization over {shape} (Ulyanov et al., 2016).

    Statistics per (sample, channel) over the spatial dims; biased variance.
    Same arguments and defaults as :class:`torch.nn.{name}` (``affine=False``,
    ``track_running_stats=False``). Runs as ``group_norm(x, C)``, which is
    the same computation with a faster kernel, and keeps channels_last
    inputs channels_last (torch's InstanceNorm does not).

    Shape: input {shape} or unbatched without N; output the same.
"""


class InstanceNorm1d(_InstanceNormMixin, nn.InstanceNorm1d):
    __doc__ = _IN_DOC.format(shape="(N, C, L)", name="InstanceNorm1d")
    _batched_rank = 3


class InstanceNorm2d(_InstanceNormMixin, nn.InstanceNorm2d):
    __doc__ = _IN_DOC.format(shape="(N, C, H, W)", name="InstanceNorm2d")
    _batched_rank = 4


class InstanceNorm3d(_InstanceNormMixin, nn.InstanceNorm3d):
    __doc__ = _IN_DOC.format(shape="(N, C, D, H, W)", name="InstanceNorm3d")
    _batched_rank = 5


class RMSNorm(nn.RMSNorm):
    r"""Root-mean-square normalization (Zhang & Sennrich, 2019), torch's convention.

    .. math:: y = \frac{x}{\sqrt{\mathrm{mean}(x^2) + \epsilon}} \odot \gamma

    Over the trailing ``normalized_shape`` dims, no centering, ``eps`` inside
    the root (``None``: ``torch.finfo(x.dtype).eps``). Same arguments as
    :class:`torch.nn.RMSNorm`. Large contiguous CPU input runs a blocked
    one-read road with an analytic backward; other input torch's fused
    kernel (``aten._fused_rms_norm``), never the composite ``F.rms_norm``.

    Shape: input ``(*, *normalized_shape)``, output the same.

    Example::

        >>> import torch, normlab
        >>> normlab.nn.RMSNorm(16)(torch.randn(3, 16)).shape
        torch.Size([3, 16])
    """

    def forward(self, input: Tensor) -> Tensor:
        return NF.rms_norm(input, self.normalized_shape, self.weight, self.eps)
