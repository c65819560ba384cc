r"""Weight-side normalization: parametrizations of a layer's weight (``torch.nn.utils.parametrize``).

A weight normalization re-parametrizes ``module.weight`` as a function of an
unconstrained tensor ``module.parametrizations.weight.original``: the
optimizer updates the original, every access of ``module.weight`` (so every
forward) recomputes the normalized weight, and the layer itself is untouched
(``F.conv2d(x, module.weight, ...)`` as before). The register function of each
technique validates the module and returns it, as
:func:`torch.nn.utils.parametrizations.weight_norm` does; the registry entry
(:data:`normlab.WEIGHT_NORMS`) lets ``normlab.apply_weight_norm("ws", conv)``
apply it by name.

Weight standardization (:func:`weight_standardization`) is here; weight norm,
centered/scaled weight norm and spectral norm join this file later.

Where a layer's output axis is. Every output unit is a dot product of one
*filter* (its fan-in) with a patch of the input; the statistics of a weight
normalization are taken over that filter:

- ``nn.Linear``: weight ``(out_features, in_features)``: filter ``W[o]``;
- ``nn.Conv1d/2d/3d``: weight ``(C_out, C_in / groups, *kernel)``: filter
  ``W[o]`` (grouping is already in the layout);
- ``nn.ConvTranspose1d/2d/3d``: weight ``(C_in, C_out / groups, *kernel)``:
  output channel ``o = g * (C_out / groups) + j`` of group ``g`` is fed by the
  block of rows ``W[g * C_in/groups : (g + 1) * C_in/groups, j]``; with
  ``groups=1`` the filter is the column ``W[:, j]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..functional.checks import InvalidArgumentError, check_eps, check_tensor

__all__ = ["WeightStandardization", "remove_weight_standardization", "standardize_weight", "weight_standardization"]

_OUTPUT_FIRST = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
#: the module types weight standardization applies to
SUPPORTED_MODULES: tuple[type[nn.Module], ...] = _OUTPUT_FIRST + _TRANSPOSED
_SUPPORTED_NAMES = ", ".join(f"nn.{c.__name__}" for c in SUPPORTED_MODULES)


def _check_ws_eps(eps: object, owner: str) -> float:
    return check_eps(eps, owner, added_to="each filter's std")


def _check_correction(correction: object, owner: str) -> int:
    if isinstance(correction, bool) or not isinstance(correction, int) or correction < 0:
        raise InvalidArgumentError(
            f"{owner}: correction must be an int >= 0 (the std's divisor is fan_in - correction: 1 = unbiased, "
            f"the official PyTorch code; 0 = biased, the paper's 1/I), got {type(correction).__name__} {correction!r}"
        )
    return correction


def _check_layout(dim: object, groups: object, owner: str) -> tuple[int, int]:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
        raise InvalidArgumentError(f"{owner}: dim (the output axis) must be an int >= 0, got {dim!r}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise InvalidArgumentError(f"{owner}: groups must be a positive int, got {groups!r}")
    if groups > 1 and dim == 0:
        raise InvalidArgumentError(
            f"{owner}: groups={groups} splits axis 0 into blocks of fan-in (ConvTranspose's layout, dim=1); "
            f"with the output axis at dim 0 the grouping is already in the weight's layout: pass groups=1"
        )
    return dim, groups


def _reduced_dims(weight: Tensor, dim: int, groups: int) -> tuple[Tensor, tuple[int, ...]]:
    """``weight`` viewed so that each filter is one slice, and the dims that slice spans (no copy)."""
    if groups == 1:
        return weight, tuple(d for d in range(weight.dim()) if d != dim)
    # (C_in, C_out/groups, *k) -> (groups, C_in/groups, C_out/groups, *k): a view; the filter of
    # output (g, j) spans the block's rows (dim 1) and the kernel dims, not g nor j.
    view = weight.unflatten(0, (groups, weight.shape[0] // groups))
    return view, tuple(d for d in range(1, view.dim()) if d != dim + 1)


def _check_weight(weight: Tensor, dim: int, groups: int, correction: int, what: str) -> int:
    """Validate ``weight``'s layout; the fan-in of one filter."""
    check_tensor(weight, what)
    if weight.dim() < 2:
        raise ValueError(
            f"{what}: weight standardization needs a weight with an output axis and a fan-in (at least 2 dims), "
            f"got shape {tuple(weight.shape)}; biases and other 1-D tensors have nothing to standardize"
        )
    if dim >= weight.dim():
        raise ValueError(f"{what}: output axis dim={dim} is out of range for a weight of shape {tuple(weight.shape)}")
    if weight.shape[0] % groups:
        raise ValueError(
            f"{what}: axis 0 of the weight ({weight.shape[0]}, C_in) must split into groups={groups} blocks, "
            f"got shape {tuple(weight.shape)}"
        )
    fan_in = weight.numel() // max(weight.shape[dim] * groups, 1) if weight.numel() else 0
    if fan_in <= 1:
        raise ValueError(
            f"{what}: each output has a fan-in of {fan_in} weight (shape {tuple(weight.shape)}, output axis {dim}, "
            f"groups {groups}): its mean is the weight itself, so standardization would make it 0 (and the std of "
            f"one value is undefined); leave this layer unstandardized (e.g. a 1x1 depthwise conv, Linear(1, n))"
        )
    if fan_in <= correction:
        raise ValueError(
            f"{what}: correction={correction} needs a fan-in above it (the std divides by fan_in - correction), "
            f"got fan-in {fan_in} for weight shape {tuple(weight.shape)}; use correction=0"
        )
    return fan_in


@torch.fx.wrap
def standardize_weight(weight: Tensor, dim: int = 0, groups: int = 1, eps: float = 1e-5, correction: int = 1) -> Tensor:
    r"""Standardize every filter of ``weight``: :math:`\hat W_i = (W_i - \mu_i) / (\sigma_i + \epsilon)`.

    The functional form of :class:`WeightStandardization` (see it for the math
    and the layout arguments). ``dim`` is the output axis; ``groups > 1``
    splits axis 0 into blocks (ConvTranspose with groups, ``dim=1``). The std
    divides by ``fan_in - correction``. Statistics in float32 at least, the
    result in ``weight``'s dtype.

    >>> import torch
    >>> w = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    >>> standardize_weight(w, eps=0.0)
    tensor([[-1.0000,  0.0000,  1.0000],
            [-0.5774, -0.5774,  1.1547]])
    """
    _check_weight(weight, dim, groups, correction, "standardize_weight")
    # float32 at least: the filter's mean and std are reductions over up to
    # C_in * k^d values; bfloat16 (8 mantissa bits) would lose them.
    w = weight if weight.dtype in (torch.float32, torch.float64) else weight.float()
    view, dims = _reduced_dims(w, dim, groups)
    # var_mean is a two-pass/Welford reduction, not E[w^2] - E[w]^2.
    var, mean = torch.var_mean(view, dim=dims, correction=correction, keepdim=True)
    # sqrt with a zero gradient where var == 0 (a constant filter, e.g. zero-initialized): the plain
    # sqrt's backward there is inf * 0 = NaN. With eps > 0 this is the exact derivative: along any
    # direction d, WS(c + t d) = t (d - mean d) / (|t| std(d) + eps) = t (d - mean d) / eps + O(t^2),
    # so std's contribution to the first derivative vanishes. (Inner where: no inf in the graph.)
    positive = var > 0
    std = torch.where(positive, torch.where(positive, var, 1.0).sqrt(), 0.0)
    out = (view - mean) / (std + eps)  # eps on the std, as the official code (not inside the root)
    if groups > 1:
        out = out.flatten(0, 1)
    return out.to(weight.dtype)


class WeightStandardization(nn.Module):
    r"""Weight standardization as a parametrization (Qiao et al., 2019).

    Siyuan Qiao, Huiyu Wang, Chenxi Liu, Wei Shen & Alan Yuille, "Micro-Batch
    Training with Batch-Channel Normalization and Weight Standardization",
    arXiv:1903.10520 (official code: joe-siyuan-qiao/WeightStandardization).

    Every filter :math:`W_i` (the weights feeding output unit ``i``) is
    standardized:

    .. math::
        \hat W_i = \frac{W_i - \mu_i}{\sigma_i + \epsilon}, \quad
        \mu_i = \frac{1}{I} \sum_j W_{ij}, \quad
        \sigma_i = \sqrt{\frac{1}{I - c} \sum_j (W_{ij} - \mu_i)^2}

    with :math:`I` the fan-in and :math:`c` = ``correction``. No affine: a
    norm layer (BN, GN) after the layer normalizes its output again.

    Estimator (a decision): the official PyTorch code (``torch.std_mean``,
    which the published PyTorch results used) takes the **unbiased** std,
    ``correction=1``, the default here; the paper's formula and the official
    TensorFlow code take the biased one (:math:`1/I`): ``correction=0``.
    Both add ``eps`` to the std, not inside the root. Then exactly
    :math:`\mathrm{mean}(\hat W_i) = 0` and
    :math:`\mathrm{std}_c(\hat W_i) = \sigma_i / (\sigma_i + \epsilon)`
    (1 for ``eps=0``).

    Reduced dims: all but the output axis ``dim`` (and, with ``groups > 1``,
    within the block of axis 0 that feeds the output: ConvTranspose's layout
    ``(C_in, C_out/groups, *k)`` with ``dim=1``). :func:`weight_standardization`
    picks ``dim``/``groups`` from the module type; see the module docs.

    A constant filter (all weights equal, e.g. zero-initialized) has
    :math:`\sigma = 0`: it maps to 0 with the finite, exact gradient
    :math:`(G - \mathrm{mean}\,G)/\epsilon`; with ``eps=0`` it is 0/0 (NaN).
    Statistics are computed in float32 at least; the weight keeps its dtype.
    ``right_inverse`` is the identity: assigning ``module.weight = W`` stores
    ``W`` as the original (the module then uses its standardization).

    Args:
        eps: added to each filter's std. Default: 1e-5 (the official code).
        correction: the std divides by ``fan_in - correction``. Default: 1.
        dim: the output axis of the weight. Default: 0.
        groups: blocks of axis 0 standardized apart (ConvTranspose). Default: 1.

    Shape: weight ``(*)`` with at least 2 dims and a fan-in above 1; the
    output has the same shape and dtype.

    Example::

        >>> import torch
        >>> from torch.nn.utils import parametrize
        >>> conv = torch.nn.Conv2d(3, 8, 3)
        >>> _ = parametrize.register_parametrization(conv, "weight", WeightStandardization())
        >>> mean = conv.weight.mean(dim=(1, 2, 3))
        >>> bool(mean.abs().max() < 1e-6)
        True
    """

    def __init__(self, eps: float = 1e-5, correction: int = 1, dim: int = 0, groups: int = 1) -> None:
        super().__init__()
        owner = type(self).__name__
        self.eps = _check_ws_eps(eps, owner)
        self.correction = _check_correction(correction, owner)
        self.dim, self.groups = _check_layout(dim, groups, owner)

    def forward(self, weight: Tensor) -> Tensor:
        return standardize_weight(weight, self.dim, self.groups, self.eps, self.correction)

    def right_inverse(self, weight: Tensor) -> Tensor:
        # Standardization is not invertible (it forgets each filter's mean and scale): the
        # given tensor becomes the original as is (as torch's spectral_norm does).
        return weight

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups != 1 else ""
        return f"eps={self.eps}, correction={self.correction}, dim={self.dim}{groups}"


def _has_ws(module: nn.Module, name: str) -> bool:
    return parametrize.is_parametrized(module, name) and any(
        isinstance(p, WeightStandardization) for p in module.parametrizations[name]
    )


def _layout(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, _TRANSPOSED):
        return 1, module.groups
    return 0, 1


def weight_standardization(
    module: nn.Module, name: str = "weight", eps: float = 1e-5, correction: int = 1
) -> nn.Module:
    r"""Apply weight standardization to ``module``'s ``name`` tensor; returns ``module``.

    Qiao et al. 2019, arXiv:1903.10520: :math:`\hat W_i = (W_i - \mu_i) / (\sigma_i + \epsilon)`
    per output unit ``i``, over its fan-in (all weight dims but the output
    axis; see :class:`WeightStandardization` for the math and the estimator).
    Use it on layers followed by a norm layer (BN, GN), as the paper does.

    Registers a :class:`WeightStandardization` parametrization
    (:func:`torch.nn.utils.parametrize.register_parametrization`): the
    trainable tensor becomes ``module.parametrizations.weight.original`` (its
    state_dict key ``parametrizations.weight.original``) and ``module.weight``
    is recomputed from it at each access (wrap many forwards of a frozen
    model in ``parametrize.cached()`` to compute it once). Undo with
    :func:`remove_weight_standardization`.

    Saving: through ``state_dict`` (torch refuses to pickle a parametrized
    module, so ``torch.save(module)`` raises; ``copy.deepcopy`` works). A
    plain layer's checkpoint (key ``weight``) loads before applying WS, or
    after renaming ``weight`` to ``parametrizations.weight.original``.
    ``torch.compile`` (fullgraph), ``torch.export`` and ``torch.fx`` work (fx
    records the parametrized layer, or its ``parametrizations.weight``, as a
    leaf call; torch's ConvTranspose is not fx-traceable as the root itself).

    Output axis: dim 0 for ``nn.Linear`` and ``nn.Conv1d/2d/3d`` (any
    ``groups``: the weight already holds one filter per output channel); dim
    1 for ``nn.ConvTranspose1d/2d/3d``, whose weight is ``(C_in, C_out/groups,
    *k)``; with ``groups > 1`` the filter of output channel ``(g, j)`` is the
    rows of group ``g`` at column ``j``, standardized per (group, column).

    Args:
        module: an ``nn.Linear``, ``nn.Conv1d/2d/3d`` or ``nn.ConvTranspose1d/2d/3d``
            (or a subclass), materialized (not lazy).
        name: the parameter to standardize. Default: ``"weight"``.
        eps: added to each filter's std, finite and >= 0. Default: 1e-5.
        correction: the std divides by ``fan_in - correction``: 1 (unbiased,
            the official PyTorch code) or 0 (biased, the paper's formula).
            Default: 1.

    Raises:
        TypeError: ``module`` is not a supported layer, or ``name`` is not a
            Parameter of it.
        ValueError: a fan-in of 1 (each output has one weight: standardization
            would make it 0), ``name`` already standardized, a lazy module, a
            1-D tensor (``"bias"``); ``InvalidArgumentError`` (both a ValueError
            and a TypeError) for a bad ``eps``/``correction``. A call that
            raises leaves ``module`` unchanged.

    Example::

        >>> import torch, normlab
        >>> conv = weight_standardization(torch.nn.Conv2d(3, 8, 3))
        >>> conv.parametrizations.weight
        ParametrizationList(
          (0): WeightStandardization(eps=1e-05, correction=1, dim=0)
        )
        >>> y = conv(torch.randn(2, 3, 8, 8))
        >>> sorted(conv.state_dict())
        ['bias', 'parametrizations.weight.original']
        >>> up = normlab.apply_weight_norm("ws:eps=1e-6", torch.nn.ConvTranspose2d(4, 6, 3, groups=2))
        >>> up.parametrizations.weight[0]
        WeightStandardization(eps=1e-06, correction=1, dim=1, groups=2)
    """
    owner = "weight_standardization"
    if not isinstance(module, nn.Module):
        raise TypeError(f"{owner} expected an nn.Module ({_SUPPORTED_NAMES}), got {type(module).__name__}")
    if not isinstance(module, SUPPORTED_MODULES):
        raise TypeError(
            f"{owner} applies to {_SUPPORTED_NAMES} (or subclasses), got {type(module).__name__}; "
            f"for another layer register WeightStandardization(dim=<output axis>) yourself with "
            f"torch.nn.utils.parametrize.register_parametrization"
        )
    if not isinstance(name, str):
        raise TypeError(f"{owner}: name must be a str (a parameter name), got {type(name).__name__}")
    eps = _check_ws_eps(eps, owner)
    correction = _check_correction(correction, owner)
    params = [n for n, _ in module.named_parameters(recurse=False)]
    if parametrize.is_parametrized(module):
        params += list(module.parametrizations.keys())
    if _has_ws(module, name):
        raise ValueError(
            f"{owner}: {type(module).__name__}.{name} is already weight-standardized; "
            f"remove_weight_standardization(module, {name!r}) first to change eps or correction"
        )
    if not parametrize.is_parametrized(module, name):
        tensor = getattr(module, name, None)
        if not isinstance(tensor, nn.Parameter):
            what = "missing" if not hasattr(module, name) else f"a {type(tensor).__name__}"
            raise TypeError(
                f"{owner}: {type(module).__name__}.{name} must be a Parameter, got {what}; "
                f"the module's parameters: {params}"
            )
        if isinstance(tensor, nn.parameter.UninitializedParameter):
            raise ValueError(
                f"{owner}: {type(module).__name__}.{name} is not materialized yet (a lazy module); "
                f"run one forward first, then apply weight standardization"
            )
    # else: stacked on an existing parametrization of `name` (torch allows it): standardize its output.
    dim, groups = _layout(module)
    _check_weight(getattr(module, name), dim, groups, correction, f"{owner}({type(module).__name__}.{name})")
    parametrize.register_parametrization(
        module, name, WeightStandardization(eps=eps, correction=correction, dim=dim, groups=groups)
    )
    return module


def remove_weight_standardization(
    module: nn.Module, name: str = "weight", leave_parametrized: bool = True
) -> nn.Module:
    r"""Remove the weight standardization of ``module.name``; returns ``module``.

    ``leave_parametrized=True`` (default) keeps the standardized weight as the
    new plain Parameter (the module computes the same function, as after
    torch's ``remove_weight_norm``); ``False`` restores the original,
    unstandardized tensor. Other parametrizations stacked on the same tensor
    cannot be removed one by one (a torch limitation): then this raises; use
    ``torch.nn.utils.parametrize.remove_parametrizations(module, name,
    leave_parametrized=...)`` to remove them all.

    Example::

        >>> import torch
        >>> lin = weight_standardization(torch.nn.Linear(4, 3))
        >>> w = lin.weight.detach().clone()
        >>> lin = remove_weight_standardization(lin)
        >>> isinstance(lin.weight, torch.nn.Parameter), torch.equal(lin.weight, w)
        (True, True)
    """
    if not isinstance(module, nn.Module) or not _has_ws(module, name):
        raise ValueError(
            f"remove_weight_standardization: {type(module).__name__}.{name} has no weight standardization to remove"
        )
    plist = module.parametrizations[name]
    if len(plist) > 1:
        raise ValueError(
            f"remove_weight_standardization: {type(module).__name__}.{name} has {len(plist)} stacked "
            f"parametrizations ({', '.join(type(p).__name__ for p in plist)}); torch removes them only all at once: "
            f"torch.nn.utils.parametrize.remove_parametrizations(module, {name!r}, leave_parametrized=...)"
        )
    parametrize.remove_parametrizations(module, name, leave_parametrized=bool(leave_parametrized))
    return module
