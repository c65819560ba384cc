"""Small networks with a pluggable norm: MLP, 1-D/2-D CNNs (plain or residual), VGG- and ResNet-like.

Every model takes ``norm`` (a registry spec such as ``"bn"``, ``"gn:4"``,
``"ln"``, or ``None``), ``placement`` (``"before"`` or ``"after"`` the
activation) and is initialized by :func:`init_weights`. A spec is adapted to
the layer it follows by the registry (:func:`build_norm`: each entry's
``rank_variants``): ``"bn"`` becomes BatchNorm1d after a Linear or Conv1d
and BatchNorm2d after a Conv2d, ``"in"`` InstanceNorm1d/2d, and ``"ln"``
LayerNorm over the features after a Linear but, after a convolution,
LayerNorm over (C, *spatial) as in Wu & He 2018, i.e. ``GroupNorm(1, C)``;
``"ln2d"`` is the channel-only LayerNorm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..registry import create_norm, parse_spec

_LAYER = {0: "Linear", 1: "Conv1d", 2: "Conv2d", 3: "Conv3d"}


def build_norm(spec: str | None, num_features: int, spatial_dims: int) -> nn.Module:
    """The norm for ``num_features`` channels of a layer with ``spatial_dims`` (0: Linear, 1: Conv1d, 2: Conv2d).

    The layer's output has rank ``spatial_dims + 2`` with the features at dim 1
    (dim -1 after a Linear). The registry adapts the spec: the entry's
    ``rank_variants`` name the spec to use for another rank (``"bn"`` after a
    Linear is ``"batchnorm1d"``; ``"ln"`` after a convolution is LayerNorm over
    (C, *spatial), ``"groupnorm:1"``); otherwise the entry must accept the rank
    with its features where the layer puts them: a trailing-dim norm
    (``features_arg="normalized_shape"``) follows only a Linear; a channel norm
    takes the ranks of its ``rank_variants`` if it has any (its other ``ranks``
    are unbatched forms, as InstanceNorm's ``(C, *spatial)``), else its
    ``ranks``. Keywords of the spec carry over.

    >>> from normlab.models import build_norm
    >>> build_norm("bn:momentum=0.01", 16, 0)
    BatchNorm1d(16, eps=1e-05, momentum=0.01, affine=True, bias=True, track_running_stats=True)
    >>> build_norm("ln", 16, 2)
    GroupNorm(1, 16, eps=1e-05, affine=True, bias=True)
    """
    if spec is None or spec == "none":
        return nn.Identity()
    entry, kwargs = parse_spec(spec)
    rank = spatial_dims + 2
    layer = _LAYER.get(spatial_dims, f"{spatial_dims}-d layer")
    if entry.inputs != ("input",):
        raise ValueError(
            f"norm {spec!r} takes forward({', '.join(entry.inputs)}); the models' blocks feed one input, "
            "so it cannot be a model's norm here (build the block by hand)"
        )
    variant = entry.rank_variants.get(rank)
    if variant is not None:
        return create_norm(variant, num_features, **kwargs)
    if entry.features_arg == "normalized_shape":
        # A trailing-dim norm normalizes the last dim: the layer's features only after a Linear.
        if rank > 2:
            raise ValueError(
                f"norm {spec!r} normalizes the trailing dim; it cannot follow a convolution (the {layer}'s "
                f"channels are at dim 1): use a channel norm such as 'ln2d' or 'gn:1'"
            )
        fits = rank in entry.ranks
    else:
        # A channel norm with rank_variants lists there every batched (N, C, *) rank it takes;
        # its other ranks are unbatched forms (InstanceNorm's (C, *spatial)), not a layer's output.
        fits = rank in entry.ranks and (not entry.rank_variants or rank in entry.rank_variants)
    if not fits:
        where = "needs spatial dims; it cannot follow a Linear layer" if rank == 2 else f"cannot follow a {layer}"
        batched = sorted(entry.rank_variants) if entry.rank_variants else entry.ranks
        raise ValueError(
            f"norm {spec!r} {where}: {entry.name} takes {' or '.join(f'{r}D' for r in batched)} (N, C, ...) "
            f"input, and the {layer}'s output is {rank}D"
        )
    return create_norm(spec, num_features)


def _activation(name: str) -> nn.Module:
    table = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "identity": nn.Identity}
    if name not in table:
        raise ValueError(f"activation must be one of {sorted(table)}, got {name!r}")
    return table[name]()


def _block(layer: nn.Module, width: int, norm, placement: str, act: str, spatial: int) -> list[nn.Module]:
    if placement not in ("before", "after"):
        raise ValueError(f"placement must be 'before' or 'after' the activation, got {placement!r}")
    n = build_norm(norm, width, spatial)
    return [layer, n, _activation(act)] if placement == "before" else [layer, _activation(act), n]


class MLP(nn.Sequential):
    """``depth`` hidden Linear layers of ``width`` units, each followed by norm and activation, then a head."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        width: int = 128,
        depth: int = 2,
        norm: str | None = None,
        placement: str = "before",
        activation: str = "relu",
        bias: bool = True,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for _ in range(depth):
            layers += _block(nn.Linear(d, width, bias=bias), width, norm, placement, activation, 0)
            d = width
        layers.append(nn.Linear(d, num_classes))
        super().__init__(*layers)


class _Residual(nn.Module):
    """x + f(x), with a 1x1 projection when the shapes differ."""

    def __init__(self, body: nn.Module, proj: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.proj = proj if proj is not None else nn.Identity()

    def forward(self, x):
        return self.proj(x) + self.body(x)


def _conv(spatial: int):
    return nn.Conv1d if spatial == 1 else nn.Conv2d


class CNN(nn.Module):
    """A plain or residual CNN for 1-D (``spatial=1``) or 2-D (``spatial=2``) input.

    ``channels`` gives the width of each conv stage (3-wide kernels, stride 2
    from the second stage on); ``residual=True`` wraps each stage after the
    first as ``x + conv(norm(act(conv(x))))``. Global average pool and a Linear head.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (32, 32, 64),
        spatial: int = 2,
        norm: str | None = None,
        placement: str = "before",
        activation: str = "relu",
        residual: bool = False,
    ) -> None:
        super().__init__()
        if spatial not in (1, 2):
            raise ValueError(f"spatial must be 1 or 2, got {spatial}")
        conv = _conv(spatial)
        stages: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(channels):
            stride = 1 if i == 0 else 2
            if residual and i > 0:
                body = nn.Sequential(
                    *_block(conv(c_in, c, 3, stride=stride, padding=1), c, norm, placement, activation, spatial),
                    conv(c, c, 3, padding=1),
                )
                proj = conv(c_in, c, 1, stride=stride) if (c_in != c or stride != 1) else None
                stages.append(
                    nn.Sequential(_Residual(body, proj), build_norm(norm, c, spatial), _activation(activation))
                )
            else:
                stages += _block(conv(c_in, c, 3, stride=stride, padding=1), c, norm, placement, activation, spatial)
            c_in = c
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool1d(1) if spatial == 1 else nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


def vgg_small(in_channels: int, num_classes: int, norm: str | None = "bn", **kw) -> CNN:
    """A small VGG-like 2-D net: three stages of 3x3 convs."""
    return CNN(in_channels, num_classes, channels=(32, 64, 128), spatial=2, norm=norm, **kw)


def resnet_small(in_channels: int, num_classes: int, norm: str | None = "bn", spatial: int = 2, **kw) -> CNN:
    """A small ResNet-like net: residual stages with projection shortcuts."""
    return CNN(in_channels, num_classes, channels=(32, 64, 128), spatial=spatial, norm=norm, residual=True, **kw)


def init_weights(
    model: nn.Module, scheme: str = "he", c: float = 2.0, generator: torch.Generator | None = None
) -> nn.Module:
    """Initialize every Linear/Conv weight; biases to 0.

    - ``"gaussian"``: W ~ N(0, c / fan_in) (c=2 is He's ReLU scale, c=1 LeCun's).
    - ``"he"``: the same with c=2.
    - ``"swn"``: scaled weight normalization (Arpit, Campos & Bengio 2019):
      each layer is reparametrized ``w = g v / ||v||`` per output unit
      (torch's ``weight_norm`` parametrization), ``v ~ N(0, 1/fan_in)`` and
      ``g = sqrt(c * fan_in / fan_out)`` with ``c`` the gain (2 for ReLU;
      convolutions use C_in / C_out). This is the plain-network rule; the
      paper's residual rules (gain 1/N on a block's last conv) are not applied.
      The last layer (the head) is left as is. Returns the model, whose layers
      now hold ``parametrizations.weight.original0`` (g) and ``original1`` (v).
    - ``"default"``: leave torch's initialization.

    Norm layers keep weight 1 and bias 0.
    """
    if scheme == "default":
        return model
    if scheme not in ("gaussian", "he", "swn"):
        raise ValueError(f"scheme must be 'gaussian', 'he', 'swn' or 'default', got {scheme!r}")
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    scale = 2.0 if scheme == "he" else float(c)
    with torch.no_grad():
        for m in layers:
            fan_in = m.weight[0].numel()
            std = math.sqrt((1.0 if scheme == "swn" else scale) / fan_in)
            m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * std)
            if m.bias is not None:
                m.bias.zero_()
    if scheme == "swn":
        from torch.nn.utils.parametrizations import weight_norm

        for m in layers[:-1]:
            if isinstance(m, nn.Linear):
                fan_in, fan_out = m.in_features, m.out_features
            else:
                fan_in, fan_out = m.in_channels // m.groups, m.out_channels
            weight_norm(m, dim=0)
            with torch.no_grad():
                m.parametrizations.weight.original0.fill_(math.sqrt(scale * fan_in / fan_out))
    return model


__all__ = ["CNN", "MLP", "build_norm", "init_weights", "resnet_small", "vgg_small"]
