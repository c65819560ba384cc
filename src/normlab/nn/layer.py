"""Per-sample norms: LayerNorm, channel LayerNorm, GroupNorm, InstanceNorm, RMSNorm.

Modules with a torch twin subclass it (same constructor, parameters, buffers,
``state_dict`` and ``repr``); every constructor validates its arguments
first (an :class:`~normlab.functional.checks.InvalidArgumentError` naming what
came and the fix). Each ``forward`` calls one ``torch.fx.wrap``-ed function
that receives every tensor, validates the input, computes by
:mod:`normlab.functional.norms` and (InstanceNorm with running statistics)
updates the running buffers last, so ``torch.fx.symbolic_trace``,
``torch.export`` and ``torch.compile`` see the whole computation and a failed
forward changes no state.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..functional import norms as N
from ..functional.checks import (
    InvalidArgumentError,
    check_channels,
    check_enough_values,
    check_eps,
    check_groups,
    check_min_rank,
    check_momentum,
    check_param_dtypes,
    check_positive_int,
    check_rank,
    check_tensor,
)
from ..functional.stats import update_running


def check_normalized_shape(normalized_shape: object, owner: str) -> tuple[int, ...]:
    """``normalized_shape`` (an int or a sequence of ints, as torch takes it) as a tuple of positive ints."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    try:
        dims = tuple(shape)
    except TypeError:
        raise InvalidArgumentError(
            f"{owner}: normalized_shape must be an int or a sequence of ints (the trailing dims to normalize "
            f"over), got {type(normalized_shape).__name__} {normalized_shape!r}"
        ) from None
    if not dims:
        raise InvalidArgumentError(f"{owner}: normalized_shape must name at least one dim, got {normalized_shape!r}")
    for d in dims:
        check_positive_int(d, "normalized_shape", owner)
    return dims


@torch.fx.wrap
def _layer_norm(input: Tensor, weight: Tensor | None, bias: Tensor | None, normalized_shape, eps: float, owner: str):
    """LayerNorm's forward: validate, then :func:`normlab.functional.layer_norm`."""
    check_tensor(input)
    check_param_dtypes(input, {"weight": weight, "bias": bias}, owner)
    return N.layer_norm(input, normalized_shape, weight, bias, eps)


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

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        check_normalized_shape(normalized_shape, "LayerNorm")
        check_eps(eps, "LayerNorm")
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        return _layer_norm(input, self.weight, self.bias, self.normalized_shape, self.eps, "LayerNorm")


@torch.fx.wrap
def _channel_layer_norm(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    num_channels: int,
    eps: float,
    ranks: tuple[int, ...] | None,
    owner: str,
) -> Tensor:
    """ChannelLayerNorm's forward: validate, then :func:`normlab.functional.channel_layer_norm`."""
    check_tensor(input)
    if ranks is not None:
        check_rank(input, ranks, owner)
    check_min_rank(input, 2, owner)
    check_channels(input, num_channels, owner)
    return N.channel_layer_norm(input, weight, bias, eps)


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
        owner = type(self).__name__
        self.num_channels = check_positive_int(num_channels, "num_channels", owner)
        self.eps = check_eps(eps, owner)
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
        return _channel_layer_norm(
            input, self.weight, self.bias, self.num_channels, self.eps, self._ranks, type(self).__name__
        )

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class LayerNorm2d(ChannelLayerNorm):
    """:class:`ChannelLayerNorm` for ``(N, C, H, W)`` input (ConvNeXt's LayerNorm2d).

    >>> import torch, normlab
    >>> normlab.nn.LayerNorm2d(8)(torch.randn(2, 8, 5, 5)).shape
    torch.Size([2, 8, 5, 5])
    """

    _ranks = (4,)


class LayerNorm3d(ChannelLayerNorm):
    """:class:`ChannelLayerNorm` for ``(N, C, D, H, W)`` input.

    >>> import torch, normlab
    >>> normlab.nn.LayerNorm3d(4)(torch.randn(2, 4, 3, 3, 3)).shape
    torch.Size([2, 4, 3, 3, 3])
    """

    _ranks = (5,)


@torch.fx.wrap
def _group_norm(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, num_groups: int, num_channels: int, eps: float
) -> Tensor:
    """GroupNorm's forward: validate, then :func:`normlab.functional.group_norm`'s roads."""
    check_tensor(input)
    check_min_rank(input, 2, "GroupNorm")
    check_channels(input, num_channels, "GroupNorm")
    check_param_dtypes(input, {"weight": weight, "bias": bias}, "GroupNorm")
    return N._group_norm(input, num_groups, weight, bias, eps)


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
        GroupNorm(4, 64, eps=1e-05, affine=True, bias=True)
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
        return _group_norm(input, self.weight, self.bias, self.num_groups, self.num_channels, self.eps)


@torch.fx.wrap
def _instance_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    track_running_stats: bool,
    momentum: float | None,
    eps: float,
    num_features: int,
    batched_rank: int,
    owner: str,
) -> Tensor:
    """The forward of InstanceNorm1d/2d/3d (batched and unbatched input); validates first, updates last.

    torch's semantics: per-sample statistics in training and whenever there
    are no running statistics; the running buffers (``track_running_stats``)
    in eval. A channel count that differs from ``num_features`` is an error
    with affine parameters or running statistics, else a warning (as torch's).
    """
    check_tensor(input)
    check_rank(input, (batched_rank - 1, batched_rank), owner)
    unbatched = input.dim() == batched_rank - 1
    x = input.unsqueeze(0) if unbatched else input
    if x.shape[1] != num_features:
        if weight is not None or bias is not None or running_mean is not None:
            check_channels(x, num_features, owner)
        warnings.warn(
            f"{owner}: input has {x.shape[1]} channels but num_features={num_features}; "
            "without affine or running stats num_features is unused",
            stacklevel=3,
        )
    # float64 input with float32 running buffers is fine (torch's InstanceNorm accepts it); affine must match.
    check_param_dtypes(x, {"weight": weight, "bias": bias}, owner)
    use_input_stats = training or not track_running_stats
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError(f"{owner}: eval with track_running_stats=True needs running_mean and running_var")
        N.check_batch_norm_eps(eps, False, owner)
        y = N.instance_norm_eval(x, running_mean, running_var, weight, bias, eps)
        return y.squeeze(0) if unbatched else y
    n, c = x.shape[0], x.shape[1]
    check_enough_values(x.numel() // (n * c) if n * c else 0, x, "spatial element", N._IN_ADVICE)
    running = (running_mean, running_var)
    # torch's InstanceNorm treats momentum=None as 0 (the running statistics stay as they
    # are: there is nothing to fold in) and never counts batches (num_batches_tracked stays 0).
    update = training and track_running_stats and momentum is not None and any(t is not None for t in running)
    y, stats = N.instance_norm_with_stats(x, weight, bias, eps, update)
    if update and stats is not None:
        update_running(running, stats, momentum)  # last, once the output exists
    return y.squeeze(0) if unbatched else y


class _InstanceNormMixin:
    """Constructor validation and the forward shared by InstanceNorm1d/2d/3d."""

    _batched_rank: int = 0

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        owner = type(self).__name__
        check_positive_int(num_features, "num_features", owner)
        check_eps(eps, owner)
        check_momentum(momentum, owner)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)

    def _check_input_dim(self, input: Tensor) -> None:
        check_tensor(input)
        check_rank(input, (self._batched_rank - 1, self._batched_rank), type(self).__name__)

    def forward(self, input: Tensor) -> Tensor:
        return _instance_norm(
            input,
            self.running_mean,
            self.running_var,
            self.num_batches_tracked,
            self.weight,
            self.bias,
            self.training,
            self.track_running_stats,
            self.momentum,
            self.eps,
            self.num_features,
            self._batched_rank,
            type(self).__name__,
        )


_IN_DOC = r"""Instance normalization over SHAPE (Ulyanov, Vedaldi & Lempitsky, 2016).

    .. math:: y_{n,c} = \frac{x_{n,c} - \mathrm{E}[x_{n,c}]}{\sqrt{\mathrm{Var}[x_{n,c}] + \epsilon}} \gamma_c + \beta_c

    Statistics per (sample, channel) over the spatial dims, biased variance.
    With ``track_running_stats`` the running buffers hold the EMA (torch's
    momentum form) of the batch mean of the per-sample means and unbiased
    variances, used in eval. Same arguments and defaults as
    :class:`torch.nn.NAME` (``eps=1e-5``, ``momentum=0.1``, ``affine=False``,
    ``track_running_stats=False``; ``momentum=None`` leaves the running
    statistics as they are, as torch's); bad arguments raise at construction.
    Runs as ``group_norm(x, C)`` (the same computation with a faster kernel)
    and keeps channels_last input channels_last (torch's InstanceNorm does
    not); with ``eps=0`` a constant channel gives 0 (torch's convention), not NaN.
    Needs more than one spatial value per channel when it uses input statistics.

    Shape: input SHAPE, or unbatched without N; output the same.

    Example::

        >>> import torch, normlab
        >>> normlab.nn.NAME(3, affine=True)(torch.randn(EXAMPLE)).shape
        torch.Size([EXAMPLE])
"""


def _in_doc(name: str, shape: str, example: str) -> str:
    return _IN_DOC.replace("NAME", name).replace("SHAPE", shape).replace("EXAMPLE", example)


class InstanceNorm1d(_InstanceNormMixin, nn.InstanceNorm1d):
    __doc__ = _in_doc("InstanceNorm1d", "(N, C, L)", "2, 3, 10")
    _batched_rank = 3


class InstanceNorm2d(_InstanceNormMixin, nn.InstanceNorm2d):
    __doc__ = _in_doc("InstanceNorm2d", "(N, C, H, W)", "2, 3, 8, 8")
    _batched_rank = 4


class InstanceNorm3d(_InstanceNormMixin, nn.InstanceNorm3d):
    __doc__ = _in_doc("InstanceNorm3d", "(N, C, D, H, W)", "2, 3, 4, 4, 4")
    _batched_rank = 5


@torch.fx.wrap
def _rms_norm(input: Tensor, weight: Tensor | None, normalized_shape, eps: float | None) -> Tensor:
    """RMSNorm's forward: :func:`normlab.functional.rms_norm` (validates its input)."""
    return N.rms_norm(input, normalized_shape, weight, eps)


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

    def __init__(
        self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True, device=None, dtype=None
    ) -> None:
        check_normalized_shape(normalized_shape, "RMSNorm")
        if eps is not None:
            check_eps(eps, "RMSNorm")
        super().__init__(normalized_shape, eps, elementwise_affine, device, dtype)

    def forward(self, input: Tensor) -> Tensor:
        return _rms_norm(input, self.weight, self.normalized_shape, self.eps)
