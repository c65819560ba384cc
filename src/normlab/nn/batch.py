"""Batch-statistics norms: drop-in ``BatchNorm1d/2d/3d``, and conv-BN fusion for them.

They subclass torch's classes, so the constructor, parameters, buffers,
``state_dict`` (loads strictly both ways), ``repr`` and ``isinstance`` checks
are torch's own; the constructor validates its arguments first. ``forward``
calls :func:`_batch_norm`, one ``torch.fx.wrap``-ed function that validates
the input, computes the output and only then updates the running statistics
(:func:`normlab.functional.norms.batch_norm_train`),
so a forward that raises changes no state, and ``torch.fx.symbolic_trace``,
``torch.export`` and ``torch.compile`` all see the whole computation.

Fusion: torch's ``torch.ao.quantization.fuse_modules`` looks its fuser
methods up by exact type, so it does not know these subclasses;
:func:`fuse_modules` (same arguments) or
``fuse_custom_config_dict={"additional_fuser_method_mapping": FUSER_METHOD_MAPPING}``
make it fuse them.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from ..functional import norms as N
from ..functional.checks import (
    InvalidArgumentError,
    check_channels,
    check_enough_values,
    check_eps,
    check_momentum,
    check_param_dtypes,
    check_positive_int,
    check_rank,
    check_tensor,
)


def _check_constructor_eps(eps: object, owner: str) -> float:
    """Constructor check of a batch norm's ``eps``: a finite number >= 0, in torch's words.

    0 is accepted (inference with running statistics, e.g. a folded model);
    training with ``eps=0`` raises in ``forward``, as torch's.
    """
    if isinstance(eps, (int, float)) and not isinstance(eps, bool) and not (math.isfinite(eps) and eps >= 0):
        raise InvalidArgumentError(
            f"{owner}: eps must be positive (a finite number added to the variance; 0 only for inference "
            f"with running statistics), got {eps!r}; the default is 1e-5"
        )
    return check_eps(eps, owner)  # the type


@torch.fx.wrap
def _batch_norm(
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
    ranks: tuple[int, ...],
    owner: str,
) -> Tensor:
    """The forward of BatchNorm1d/2d/3d with torch's exact semantics; validates first, updates last.

    Statistics source (torch's ``_BatchNorm.forward``): batch statistics in
    training, and in eval when there are no running buffers; the running
    buffers are updated in training with ``track_running_stats``, and
    ``num_batches_tracked`` counts those batches (an empty batch too, as
    torch's; it leaves the running statistics unchanged).
    """
    check_tensor(input)
    check_rank(input, ranks, owner)
    check_channels(input, num_features, owner)
    batch_stats = training or (running_mean is None and running_var is None)
    # torch passes no running buffers in training without tracking (and then does not update them).
    uses_running = not training or track_running_stats
    rm, rv = (running_mean, running_var) if uses_running else (None, None)
    if input.numel():  # torch's kernel returns an empty batch before looking at dtypes
        check_param_dtypes(input, {"weight": weight, "bias": bias, "running_mean": rm, "running_var": rv}, owner)
    N.check_batch_norm_eps(eps, batch_stats, owner)
    if not batch_stats:
        return torch.batch_norm(input, weight, bias, rm, rv, False, 0.0, eps, False)
    check_enough_values(input.numel() // num_features, input, "channel")
    # Last (inside): the output exists before any buffer changes.
    nbt = num_batches_tracked if training and track_running_stats else None
    return N.batch_norm_train(input, weight, bias, rm, rv, nbt, momentum, eps)


class _BatchNormMixin:
    """Constructor validation and the forward shared by BatchNorm1d/2d/3d."""

    _ranks: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        owner = type(self).__name__
        check_positive_int(num_features, "num_features", owner)
        _check_constructor_eps(eps, owner)
        check_momentum(momentum, owner)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)

    def _check_input_dim(self, input: Tensor) -> None:
        check_tensor(input)
        check_rank(input, self._ranks, type(self).__name__)

    def forward(self, input: Tensor) -> Tensor:
        return _batch_norm(
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
            self._ranks,
            type(self).__name__,
        )


class BatchNorm1d(_BatchNormMixin, nn.BatchNorm1d):
    r"""Batch normalization over ``(N, C)`` or ``(N, C, L)`` (Ioffe & Szegedy, 2015).

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Statistics per channel over (N, L), biased variance for normalizing, the
    unbiased one stored in ``running_var``; ``momentum`` in torch's form
    (``None`` = cumulative average). Same arguments and defaults as
    :class:`torch.nn.BatchNorm1d` (``eps`` must be > 0 to train, as torch's;
    bad arguments raise at construction).

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
    reductions and applies the result in one fused pass (0.36x torch's time at
    32x64x48x48 in benchmarks/RESULTS.md); below 2^18 elements, on
    channels-last and on short rows it runs torch's kernel. Same arguments,
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


# ------------------------------------------------------------------ fusion

_TORCH_BN = {BatchNorm1d: nn.BatchNorm1d, BatchNorm2d: nn.BatchNorm2d, BatchNorm3d: nn.BatchNorm3d}


def to_torch_batch_norm(bn: nn.Module) -> nn.Module:
    """``bn`` as the torch class it subclasses, with the same arguments, state and mode (torch modules pass through)."""
    cls = _TORCH_BN.get(type(bn))
    if cls is None:
        return bn
    tensors = [t for t in (*bn.parameters(), *bn.buffers()) if t.is_floating_point()]
    factory = {"device": tensors[0].device, "dtype": tensors[0].dtype} if tensors else {}
    out = cls(
        bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, bias=bn.bias is not None, **factory
    )
    out.load_state_dict(bn.state_dict(), strict=True)
    return out.train(bn.training)


def _fuse_as_torch(torch_types: tuple[type, ...], is_qat: bool, *modules: nn.Module) -> nn.Module:
    from torch.ao.quantization.fuser_method_mappings import get_fuser_method

    return get_fuser_method(torch_types)(is_qat, *(to_torch_batch_norm(m) for m in modules))


def _fuser_method_mapping() -> dict[tuple[type, ...], object]:
    from torch.ao.quantization.fuser_method_mappings import get_fuser_method

    patterns = [(nn.Linear, BatchNorm1d)]
    for d, bn in ((1, BatchNorm1d), (2, BatchNorm2d), (3, BatchNorm3d)):
        conv, convt = getattr(nn, f"Conv{d}d"), getattr(nn, f"ConvTranspose{d}d")
        patterns += [(conv, bn), (conv, bn, nn.ReLU), (convt, bn), (bn, nn.ReLU)]
    mapping = {}
    for pattern in patterns:
        torch_types = tuple(_TORCH_BN.get(t, t) for t in pattern)
        try:
            get_fuser_method(torch_types)
        except AssertionError:  # torch has no fuser for this pattern (e.g. BatchNorm1d + ReLU)
            continue
        mapping[pattern] = functools.partial(_fuse_as_torch, torch_types)
    return mapping


#: Fuser methods for normlab's BatchNorm in every pattern torch fuses for its own
#: (conv/linear/transposed conv + BN (+ ReLU), BN + ReLU): pass it as
#: ``fuse_custom_config_dict={"additional_fuser_method_mapping": FUSER_METHOD_MAPPING}``
#: to torch's ``fuse_modules``. Each converts the BN to torch's class (same state) and calls torch's method.
FUSER_METHOD_MAPPING = _fuser_method_mapping()


def _with_mapping(fuse_custom_config_dict: dict | None) -> dict:
    config = dict(fuse_custom_config_dict or {})
    config["additional_fuser_method_mapping"] = {
        **FUSER_METHOD_MAPPING,
        **config.get("additional_fuser_method_mapping", {}),
    }
    return config


def fuse_modules(model: nn.Module, modules_to_fuse, inplace: bool = False, fuse_custom_config_dict=None) -> nn.Module:
    """``torch.ao.quantization.fuse_modules`` that also fuses normlab's BatchNorm1d/2d/3d.

    Same arguments and result as torch's (eval mode: the BN is folded into the
    conv/linear; e.g. ``[["conv", "bn", "relu"]]`` gives a ``ConvReLU2d`` and two
    ``Identity``), with :data:`FUSER_METHOD_MAPPING` added to the fuser methods.

    >>> import torch, normlab
    >>> from normlab.nn.batch import fuse_modules
    >>> m = torch.nn.Sequential()
    >>> m.conv, m.bn, m.relu = torch.nn.Conv2d(3, 4, 3), normlab.nn.BatchNorm2d(4), torch.nn.ReLU()
    >>> fused = fuse_modules(m.eval(), [["conv", "bn", "relu"]])
    >>> type(fused.conv).__name__, type(fused.bn).__name__
    ('ConvReLU2d', 'Identity')
    """
    from torch.ao.quantization import fuse_modules as torch_fuse

    return torch_fuse(model, modules_to_fuse, inplace, fuse_custom_config_dict=_with_mapping(fuse_custom_config_dict))


def fuse_modules_qat(
    model: nn.Module, modules_to_fuse, inplace: bool = False, fuse_custom_config_dict=None
) -> nn.Module:
    """``torch.ao.quantization.fuse_modules_qat`` that also fuses normlab's BatchNorm1d/2d/3d (training mode).

    The BN becomes part of torch's intrinsic QAT module (``ConvBn2d``, ...), as a torch BatchNorm with its state.
    """
    from torch.ao.quantization import fuse_modules_qat as torch_fuse_qat

    return torch_fuse_qat(
        model, modules_to_fuse, inplace, fuse_custom_config_dict=_with_mapping(fuse_custom_config_dict)
    )
