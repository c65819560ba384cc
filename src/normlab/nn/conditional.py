"""Conditional recovery: normalize, then put back a scale and shift predicted from a condition.

The survey's NRR step made conditional: the norm itself is parameter-free and
the recovery's parameters are functions of a second input, so ``forward``
takes ``(input, condition)``. :class:`SPADE` predicts them per position from a
semantic map; AdaIN, conditional BN and FiLM (per sample) belong here too.

Every module here follows the forward pattern of :mod:`normlab.nn.base` as a
composite: the tensor work that touches shapes runs inside module-level
``@torch.fx.wrap`` functions (validation first, so a bad call changes no
state), the submodules (the inner norm, the convolutions) are called between
them, and the inner norm, the only one holding running statistics, runs last
but for the recovery, which cannot fail once the inputs are validated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.checks import InputDTypeError, InvalidArgumentError, check_positive_int, check_tensor
from ..functional.recovery import modulate
from ..functional.stats import accumulation_dtype

_ONE_HOT = "F.one_hot(labels, label_nc).permute(0, 3, 1, 2).float()"


def _check_condition(condition: object, label_nc: int, n: int, device: torch.device) -> Tensor:
    if not isinstance(condition, Tensor):
        raise TypeError(f"SPADE expected condition to be a torch.Tensor, got {type(condition).__name__}")
    if not condition.is_floating_point():
        raise InputDTypeError(
            f"SPADE expected a floating-point condition map (N, label_nc, h, w), got dtype {condition.dtype} "
            f"of shape {tuple(condition.shape)}; convert a one-hot map with .float(), and a label map of class "
            f"indices (N, h, w) with {_ONE_HOT}"
        )
    if condition.dim() != 4:
        raise ValueError(
            f"SPADE expected a 4D condition (N, label_nc, h, w) = ({n}, {label_nc}, h, w), got {condition.dim()}D "
            f"of shape {tuple(condition.shape)}; a label map of class indices (N, h, w) becomes one with {_ONE_HOT}"
        )
    if condition.shape[0] != n:
        raise ValueError(
            f"SPADE expected a condition with the input's batch size {n}, got {condition.shape[0]} (condition shape "
            f"{tuple(condition.shape)}); one map per sample: nothing is broadcast over the batch (use "
            f"condition.expand({n}, -1, -1, -1) to share one map)"
        )
    if condition.shape[1] != label_nc:
        raise ValueError(
            f"SPADE expected a condition with label_nc={label_nc} channels at dim 1, got {condition.shape[1]} "
            f"(condition shape {tuple(condition.shape)}); build the module with label_nc={condition.shape[1]} "
            f"or one-hot encode the labels with {_ONE_HOT}"
        )
    if condition.shape[2] == 0 or condition.shape[3] == 0:
        raise ValueError(f"SPADE expected a condition with non-empty spatial size, got {tuple(condition.shape)}")
    if condition.device != device:
        raise ValueError(
            f"SPADE expected the condition on the input's device {device}, got {condition.device}; "
            f"move it with condition.to(input.device)"
        )
    return condition


@torch.fx.wrap
def _spade_condition(
    input: Tensor, condition: Tensor, num_features: int, label_nc: int, dtype: torch.dtype | None = None
) -> Tensor:
    """Validate SPADE's two inputs and resize the condition to the input's spatial size.

    The resize is nearest-neighbour (``F.interpolate(..., mode="nearest")``,
    as the official code: a label map stays a label map; source index
    ``floor(i * h / H)``); a condition already at the input's size is used as
    it is. The result is cast to ``dtype`` (the convolutions' weights': a
    one-hot map is exact in any float dtype) and laid out in the input's
    memory format, so the predicted gamma and beta, and the output, keep it.
    Raises before anything is computed: a bad call changes no running state.
    """
    check_tensor(input)
    if input.dim() != 4:
        raise ValueError(
            f"SPADE expected 4D input (N, C, H, W), got {input.dim()}D input of shape {tuple(input.shape)}"
        )
    if input.shape[1] != num_features:
        raise ValueError(
            f"SPADE expected input with num_features={num_features} channels at dim 1, got {input.shape[1]} "
            f"(input shape {tuple(input.shape)})"
        )
    _check_condition(condition, label_nc, input.shape[0], input.device)
    segmap = condition
    if tuple(condition.shape[2:]) != tuple(input.shape[2:]):
        segmap = F.interpolate(condition, size=tuple(input.shape[2:]), mode="nearest")
    if dtype is not None:
        segmap = segmap.to(dtype)
    # channels_last in -> channels_last gamma/beta (conv follows its input's layout) -> channels_last out.
    # A tensor with C == 1 or H == W == 1 is contiguous in both formats: keep the plain one then.
    channels_last = input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous()
    return segmap.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@torch.fx.wrap
def _spade_recovery(normalized: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """SPADE's recovery ``normalized * (1 + gamma) + beta`` (per position), in ``normalized``'s dtype.

    Computed in float32 at least (one rounding to bfloat16/float16 at the end
    instead of one per operation; ``1 + gamma`` of a small gamma loses most
    of its digits in bfloat16). The result is a fresh tensor (never a view of
    one saved for backward), so an in-place op on it is safe.
    """
    acc = accumulation_dtype(normalized.dtype)
    out = modulate(normalized.to(acc), 1 + gamma.to(acc), beta.to(acc))
    return out.to(normalized.dtype)


class SPADE(nn.Module):
    r"""Spatially-adaptive (de)normalization: a parameter-free norm modulated per position by a semantic map.

    Park, Liu, Wang & Zhu, "Semantic Image Synthesis with Spatially-Adaptive
    Normalization", CVPR 2019 (arXiv:1903.07291); official code NVlabs/SPADE,
    ``models/networks/normalization.py``.

    .. math::

        m = \mathrm{resize}_{\mathrm{nearest}}(\mathrm{condition}) \text{ to } (H, W), \quad
        a = \mathrm{ReLU}(\mathrm{conv}_{\mathrm{shared}}(m)), \\
        y = \mathrm{norm}(x) \odot (1 + \gamma(a)) + \beta(a), \quad
        \gamma = \mathrm{conv}_\gamma(a), \ \beta = \mathrm{conv}_\beta(a)

    ``gamma`` and ``beta`` are per (sample, channel, position) tensors of the
    input's shape. The structure follows the official code exactly: a shared
    ``Conv2d(label_nc, hidden, k, padding=k // 2)`` and ``ReLU``
    (``mlp_shared``), then two ``Conv2d(hidden, num_features, k, padding=k // 2)``
    (``mlp_gamma``, ``mlp_beta``), the condition resized by
    ``F.interpolate(mode="nearest")`` to the input's spatial size, and the
    ``1 + gamma`` form (the paper writes ``gamma * norm(x) + beta``; ``1 + gamma``
    is the code's, which keeps the output at the plain norm when gamma is
    small). The parameter and buffer names are the official ones
    (``param_free_norm``, ``mlp_shared.0``, ``mlp_gamma``, ``mlp_beta``), so
    a SPADE layer of an official checkpoint loads strictly.

    **Initialization**: ``mlp_shared`` has torch's default Conv2d init (as the
    official code); ``mlp_gamma`` and ``mlp_beta`` are zero-initialized (weight
    and bias), so at initialization ``SPADE(x, m) == norm(x)`` exactly: the layer
    starts as the plain norm and learns the modulation (the gradients of
    ``mlp_gamma``/``mlp_beta`` are not zero at init). The official code uses the
    default init for all three; to get it, call
    ``spade.mlp_gamma.reset_parameters(); spade.mlp_beta.reset_parameters()``.

    **The inner norm** is built through the registry,
    ``normlab.create_norm(norm, num_features)``: by default ``"bn:affine=false"``
    (normlab's BatchNorm2d without affine, as the official (sync) BN; statistics
    per channel over (N, H, W), running statistics in eval); ``"in:affine=false"``
    (the official "spadeinstance" variant), ``"gn:32,affine=false"``,
    ``"bn:affine=false,momentum=0.01"`` etc. work too, as does a class or a
    ``functools.partial``. It is the submodule ``param_free_norm`` (also
    reachable as ``spade.norm``), so its running statistics live in SPADE's
    ``state_dict`` and ``train()``/``eval()`` reach it. Norms that do not normalize
    ``(N, C, H, W)`` over C-channel statistics are rejected (``"ln"``
    normalizes the trailing dim: use ``"gn:1"`` for LayerNorm over (C, H, W) or
    ``"ln2d:elementwise_affine=false"`` per pixel), as are norms that take a condition themselves.

    **Statistics kind**: the registry declares SPADE ``"batch"`` (its default
    inner BN uses batch statistics in training and running ones in eval).
    What actually depends on the mode is the inner norm, and it is itself a
    registered module: :func:`normlab.registry.mode_dependent` called on each
    module of a model (as the analysis tools do) finds the inner BatchNorm
    and handles it through the submodule; with ``"in:affine=false"`` inside, the
    registry's ``"batch"`` on SPADE itself is conservative (its train and eval
    outputs agree unless the inner norm tracks running statistics).

    Args:
        num_features: C, the channels of the input (the normalized activations).
        label_nc: channels of the condition (e.g. the number of classes of a
            one-hot semantic map).
        hidden: channels of the shared embedding. Default: 128 (the official
            code's hard-coded ``nhidden``).
        kernel_size: odd kernel size k of the three convolutions (padding k // 2
            keeps the spatial size; an even k would not). Default: 3.
        norm: the parameter-free norm, a registry spec (or class / partial).
            Default: ``"bn:affine=false"``. In a spec string given to
            ``create_norm("spade:...")`` the inner spec can hold one option
            only (its commas split the outer spec): pass ``norm=`` as a keyword.

    Shape:
        - input: ``(N, C, H, W)``, C = num_features; float64, float32,
          bfloat16 or float16 (contiguous or channels_last).
        - condition: ``(N, label_nc, h, w)``, floating point, any spatial size
          (resized to (H, W) by nearest neighbour; a map of class indices
          ``labels`` (N, h, w) is ``F.one_hot(labels, label_nc).permute(0, 3, 1, 2).float()``);
          cast to the convolutions' dtype.
        - output: ``(N, C, H, W)``, the input's dtype and memory format.

    Example::

        >>> import torch, normlab
        >>> import torch.nn.functional as F
        >>> spade = normlab.nn.SPADE(64, label_nc=10, hidden=32)
        >>> x = torch.randn(4, 64, 16, 16)
        >>> labels = torch.randint(0, 10, (4, 32, 32))
        >>> segmap = F.one_hot(labels, 10).permute(0, 3, 1, 2).float()
        >>> y = spade(x, segmap)
        >>> y.shape
        torch.Size([4, 64, 16, 16])
        >>> torch.equal(y, spade.norm(x))  # zero-initialized gamma and beta: the plain norm
        True
    """

    num_features: int
    label_nc: int
    hidden: int
    kernel_size: int

    def __init__(
        self,
        num_features: int,
        label_nc: int,
        hidden: int = 128,
        kernel_size: int = 3,
        norm="bn:affine=false",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.num_features = check_positive_int(num_features, "num_features", owner)
        self.label_nc = check_positive_int(label_nc, "label_nc", owner)
        self.hidden = check_positive_int(hidden, "hidden", owner)
        k = check_positive_int(kernel_size, "kernel_size", owner)
        if k % 2 == 0:
            raise InvalidArgumentError(
                f"SPADE: kernel_size must be odd (padding kernel_size // 2 keeps the spatial size only for odd "
                f"kernels; an even one would change H and W by 1), got {k}; use {k - 1} or {k + 1}"
            )
        self.kernel_size = k
        self.norm_spec = norm
        self.param_free_norm = _build_inner_norm(norm, self.num_features)
        factory = {"device": device, "dtype": dtype}
        if device is not None or dtype is not None:
            self.param_free_norm.to(**{key: v for key, v in factory.items() if v is not None})
        pad = k // 2
        # Constructed in the official order (shared, gamma, beta) with torch's default init, so the
        # shared conv gets the same values as the official module under the same seed.
        self.mlp_shared = nn.Sequential(nn.Conv2d(self.label_nc, self.hidden, k, padding=pad, **factory), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(self.hidden, self.num_features, k, padding=pad, **factory)
        self.mlp_beta = nn.Conv2d(self.hidden, self.num_features, k, padding=pad, **factory)
        self._zero_modulation()

    @property
    def norm(self) -> nn.Module:
        """The parameter-free inner norm (the submodule ``param_free_norm``)."""
        return self.param_free_norm

    def _zero_modulation(self) -> None:
        for conv in (self.mlp_gamma, self.mlp_beta):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def reset_parameters(self) -> None:
        """Re-initialize: the inner norm's parameters and running statistics, the shared conv (torch's
        default init), and zero gamma/beta convs (so the layer is the plain norm again)."""
        reset = getattr(self.param_free_norm, "reset_parameters", None)
        if callable(reset):
            reset()
        self.mlp_shared[0].reset_parameters()
        self._zero_modulation()

    def reset_running_stats(self) -> None:
        """Reset the inner norm's running statistics (if it has any)."""
        reset = getattr(self.param_free_norm, "reset_running_stats", None)
        if callable(reset):
            reset()

    def _conv_dtype(self) -> torch.dtype:
        # The dtype of the raw parameter (a parametrized weight's `original`): reading `.weight` would
        # run a parametrization (e.g. a spectral norm's power iteration) one extra time per forward.
        return next(self.mlp_shared.parameters()).dtype

    def forward(self, input: Tensor, condition: Tensor) -> Tensor:
        segmap = _spade_condition(input, condition, self.num_features, self.label_nc, self._conv_dtype())
        actv = self.mlp_shared(segmap)
        gamma = self.mlp_gamma(actv)
        beta = self.mlp_beta(actv)
        # The inner norm last: it updates its running statistics, and nothing after it can fail.
        normalized = self.param_free_norm(input)
        return _spade_recovery(normalized, gamma, beta)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, label_nc={self.label_nc}, hidden={self.hidden}, "
            f"kernel_size={self.kernel_size}, norm={self.norm_spec!r}"
        )


def _build_inner_norm(norm, num_features: int) -> nn.Module:
    """The parameter-free norm from a registry spec, class or partial, checked to fit (N, C, H, W)."""
    from ..registry import create_norm, entry_for_module  # the registry imports normlab.nn

    try:
        module = create_norm(norm, num_features)
    except (ValueError, TypeError) as err:
        raise InvalidArgumentError(f"SPADE: cannot build the inner norm from norm={norm!r}: {err}") from err
    if not isinstance(module, nn.Module):
        raise InvalidArgumentError(f"SPADE: norm={norm!r} built a {type(module).__name__}, not a torch.nn.Module")
    entry = entry_for_module(module)
    if entry is None:
        return module  # a user's class: trusted to normalize (N, C, H, W)
    if entry.inputs != ("input",):
        raise InvalidArgumentError(
            f"SPADE: the inner norm must take the input alone, got norm={norm!r} ({entry.name}, inputs "
            f"{entry.inputs}); use a parameter-free norm such as 'bn:affine=false' or 'in:affine=false'"
        )
    if entry.features_arg == "normalized_shape" or 4 not in entry.ranks:
        raise InvalidArgumentError(
            f"SPADE: the inner norm must normalize (N, C, H, W) input with C = num_features channels, got "
            f"norm={norm!r} ({entry.name}, which normalizes {entry.reduces}); use 'bn:affine=false', "
            f"'in:affine=false', 'gn:1,affine=false' (LayerNorm over (C, H, W)) or "
            f"'ln2d:elementwise_affine=false' (per pixel over C)"
        )
    return module
