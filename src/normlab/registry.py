"""The registry: one flat table of every normalization normlab provides.

``create_norm(spec, num_features, **kwargs)`` builds a module from a name or
a short spec string; ``get_norm(name)`` returns the class; ``list_norms()``
lists the canonical names. Spec grammar (documented in the README)::

    spec  := name [ ":" args ]
    args  := arg ( "," arg )*
    arg   := value            # the entry's primary option, e.g. num_groups for "gn"
           | key "=" value    # any constructor keyword
    value := int | float | true | false | none | text

Examples: ``"bn"``, ``"gn:32"``, ``"gn:group_size=16"``, ``"ln2d:eps=1e-6"``,
``"bn:momentum=0.01,eps=1e-3"``. Keyword arguments given to ``create_norm``
override those in the spec.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from torch import nn

from . import nn as nlnn


@dataclass(frozen=True)
class NormEntry:
    """One registered norm: how to build it, what it computes, where it comes from."""

    name: str
    cls: type[nn.Module]
    summary: str
    formula: str
    reduces: str
    paper: str
    aliases: tuple[str, ...] = ()
    # How create_norm's num_features enters the constructor: the keyword it
    # becomes, or None when the norm has no per-channel state (LRN).
    features_arg: str | None = "num_features"
    primary: str | None = None  # the option a bare spec value sets ("gn:32")
    defaults: dict = field(default_factory=dict)  # registry defaults beyond the class's
    input_rank: int = 4  # rank of the example input used by `normlab check`
    torch_twin: str | None = None  # "torch.nn.X" with the same contract, if any
    family: str = "per-sample"

    def build(self, num_features: int | None, **kwargs) -> nn.Module:
        args = {**self.defaults, **kwargs}
        if self.features_arg is not None:
            if num_features is None:
                raise TypeError(f"norm {self.name!r} needs num_features")
            args[self.features_arg] = num_features
        return self.cls(**args)

    def signature_defaults(self) -> dict:
        """The constructor's defaults with the registry's own on top."""
        sig = inspect.signature(self.cls.__init__)
        out = {
            k: p.default
            for k, p in sig.parameters.items()
            if k not in ("self", "device", "dtype") and p.default is not inspect.Parameter.empty
        }
        out.update(self.defaults)
        return out


_BN = "y = (x - mean) / sqrt(var + eps) * weight + bias"
_TABLE: dict[str, NormEntry] = {}
_ALIASES: dict[str, str] = {}


def register_norm(entry: NormEntry) -> NormEntry:
    """Add an entry to the table (names and aliases must be new)."""
    for key in (entry.name, *entry.aliases):
        if key in _TABLE or key in _ALIASES:
            raise ValueError(f"norm name {key!r} is already registered")
    _TABLE[entry.name] = entry
    for alias in entry.aliases:
        _ALIASES[alias] = entry.name
    return entry


def _bn(dim: int, rank: int, aliases: tuple[str, ...]) -> NormEntry:
    return NormEntry(
        name=f"batchnorm{dim}d",
        cls=getattr(nlnn, f"BatchNorm{dim}d"),
        summary=f"Batch normalization for {rank}D input; running statistics for inference",
        formula=_BN + "; running stats: (1 - momentum) * running + momentum * batch (unbiased var)",
        reduces="per channel over (N, *spatial)" if dim > 1 else "per channel over (N) or (N, L)",
        paper="Ioffe & Szegedy 2015, Batch Normalization, arXiv:1502.03167",
        aliases=aliases,
        input_rank=rank,
        torch_twin=f"torch.nn.BatchNorm{dim}d",
        family="batch",
    )


def _in(dim: int, rank: int, aliases: tuple[str, ...]) -> NormEntry:
    return NormEntry(
        name=f"instancenorm{dim}d",
        cls=getattr(nlnn, f"InstanceNorm{dim}d"),
        summary=f"Instance normalization for {rank}D input (runs as group_norm(x, C))",
        formula=_BN + " (affine=False by default)",
        reduces="per (sample, channel) over the spatial dims",
        paper="Ulyanov, Vedaldi & Lempitsky 2016, Instance Normalization, arXiv:1607.08022",
        aliases=aliases,
        input_rank=rank,
        torch_twin=f"torch.nn.InstanceNorm{dim}d",
    )


for _entry in (
    _bn(1, 2, ("bn1d",)),
    _bn(2, 4, ("bn", "bn2d", "batchnorm")),
    _bn(3, 5, ("bn3d",)),
    NormEntry(
        name="layernorm",
        cls=nlnn.LayerNorm,
        summary="Layer normalization over the trailing dim(s), per-element affine",
        formula="y = (x - mean) / sqrt(var + eps) * weight + bias",
        reduces="per sample over the trailing normalized_shape dims",
        paper="Ba, Kiros & Hinton 2016, Layer Normalization, arXiv:1607.06450",
        aliases=("ln",),
        features_arg="normalized_shape",
        input_rank=3,
        torch_twin="torch.nn.LayerNorm",
    ),
    NormEntry(
        name="layernorm2d",
        cls=nlnn.LayerNorm2d,
        summary="LayerNorm over the channel dim of (N, C, H, W) at every pixel, no permute copies",
        formula="y[n,:,h,w] = (x - mean_c) / sqrt(var_c + eps) * weight + bias",
        reduces="per (sample, position) over C",
        paper="Ba et al. 2016; channel form as in ConvNeXt (Liu et al. 2022, arXiv:2201.03545)",
        aliases=("ln2d", "channel_layernorm"),
        features_arg="num_channels",
        input_rank=4,
    ),
    NormEntry(
        name="layernorm3d",
        cls=nlnn.LayerNorm3d,
        summary="LayerNorm over the channel dim of (N, C, D, H, W) at every voxel",
        formula="y[n,:,d,h,w] = (x - mean_c) / sqrt(var_c + eps) * weight + bias",
        reduces="per (sample, position) over C",
        paper="Ba et al. 2016, arXiv:1607.06450",
        aliases=("ln3d",),
        features_arg="num_channels",
        input_rank=5,
    ),
    NormEntry(
        name="groupnorm",
        cls=nlnn.GroupNorm,
        summary="Group normalization: per sample, groups of C/G channels (by num_groups or group_size)",
        formula=_BN + " (per-channel affine)",
        reduces="per (sample, group) over (C/G, *spatial)",
        paper="Wu & He 2018, Group Normalization, arXiv:1803.08494",
        aliases=("gn",),
        features_arg="num_channels",
        primary="num_groups",
        defaults={"num_groups": 32},
        input_rank=4,
        torch_twin="torch.nn.GroupNorm",
    ),
    _in(1, 3, ("in1d",)),
    _in(2, 4, ("in", "in2d", "instancenorm")),
    _in(3, 5, ("in3d",)),
    NormEntry(
        name="rmsnorm",
        cls=nlnn.RMSNorm,
        summary="RMS normalization (no centering) over the trailing dim(s), torch's eps convention",
        formula="y = x / sqrt(mean(x^2) + eps) * weight",
        reduces="per sample over the trailing normalized_shape dims",
        paper="Zhang & Sennrich 2019, Root Mean Square Layer Normalization, arXiv:1910.07467",
        aliases=("rms",),
        features_arg="normalized_shape",
        input_rank=3,
        torch_twin="torch.nn.RMSNorm",
    ),
    NormEntry(
        name="localresponsenorm",
        cls=nlnn.LocalResponseNorm,
        summary="Local response normalization across neighbouring channels (no parameters)",
        formula="b_c = a_c / (k + alpha / n * sum_{c' in window(c)} a_c'^2) ** beta",
        reduces="per (sample, position) over a window of `size` channels",
        paper="Krizhevsky, Sutskever & Hinton 2012, ImageNet Classification with Deep CNNs (NeurIPS)",
        aliases=("lrn",),
        features_arg=None,
        primary="size",
        defaults={"size": 5},
        input_rank=4,
        torch_twin="torch.nn.LocalResponseNorm",
        family="local",
    ),
):
    register_norm(_entry)


def _parse_value(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip()


def _resolve(name: str) -> NormEntry:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _TABLE:
        known = ", ".join(sorted([*_TABLE, *_ALIASES]))
        raise ValueError(f"unknown norm {name!r}; known names and aliases: {known}")
    return _TABLE[key]


def parse_spec(spec: str) -> tuple[NormEntry, dict]:
    """Split a spec string into its registry entry and constructor keywords."""
    if not isinstance(spec, str) or not spec.strip():
        raise TypeError(f"a norm spec must be a non-empty string, got {spec!r}")
    name, _, rest = spec.partition(":")
    entry = _resolve(name)
    kwargs: dict = {}
    if rest.strip():
        for i, arg in enumerate(rest.split(",")):
            key, eq, value = arg.partition("=")
            if eq:
                kwargs[key.strip()] = _parse_value(value)
            elif i == 0 and entry.primary is not None:
                kwargs[entry.primary] = _parse_value(arg)
            else:
                raise ValueError(
                    f"cannot parse {arg!r} in norm spec {spec!r}: only the first argument may be positional "
                    f"({entry.name}'s is {entry.primary or 'none'}); write key=value"
                )
    return entry, kwargs


def create_norm(spec: str, num_features: int | None = None, **kwargs) -> nn.Module:
    """Build a norm module from a registered name or spec string.

    >>> import normlab
    >>> normlab.create_norm("gn:8", 64)
    GroupNorm(8, 64, eps=1e-05, affine=True)
    """
    entry, spec_kwargs = parse_spec(spec)
    # num_groups and group_size exclude each other: the one given last (kwargs over spec) wins.
    for given, other in (("group_size", "num_groups"), ("num_groups", "group_size")):
        if given in kwargs:
            spec_kwargs.pop(other, None)
    merged = {**spec_kwargs, **kwargs}
    if "group_size" in merged and "num_groups" not in merged:
        merged["num_groups"] = None
    try:
        return entry.build(num_features, **merged)
    except TypeError as err:
        raise TypeError(f"create_norm({spec!r}, {num_features}): {err}") from err


def get_norm(name: str) -> type[nn.Module]:
    """The module class registered under ``name`` (or an alias)."""
    return _resolve(name).cls


def get_entry(name: str) -> NormEntry:
    """The full registry entry for ``name`` (or an alias)."""
    return _resolve(name)


def list_norms() -> list[str]:
    """Canonical names of every registered norm, in registration order."""
    return list(_TABLE)


def aliases_of(name: str) -> tuple[str, ...]:
    return _resolve(name).aliases
