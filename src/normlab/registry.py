"""The registry: one flat table of every normalization normlab provides.

``create_norm(spec, num_features, **kwargs)`` builds a module from a name, a
short spec string, a class or a ``functools.partial``; ``get_norm(name)``
returns the class; ``list_norms()`` lists the canonical names.

The registry is the single source of truth for what each norm *is*: its
class, statistics kind (``"batch"``: batch statistics in training and
running statistics in eval; ``"sample"``: per-sample statistics; ``"none"``),
accepted input ranks, inputs (``("input",)`` or ``("input", "condition")``),
the oracle it is tested against, example constructor arguments and input
shapes, the torch class whose checkpoint it loads, and the paper. ``normlab
check``/``info``, the models' norm factory, analysis (which modules use batch
statistics: :func:`mode_dependent`), the generic tests, the compile tests and
the benchmarks all read it; nothing else dispatches on a norm's name.

Two more registries share the spec parser: :data:`WEIGHT_NORMS` (weight
normalizations, applied to a module: :func:`apply_weight_norm`) and
:data:`OPTIMIZERS` (gradient-side normalization). Spec grammar (documented
in the README)::

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

import copy
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import nn as nlnn
from .functional import (
    BatchPartition,
    Whitening,
    apply_whitening,
    channel_affine,
    estimate_covariance,
    generic,
    modulate,
)
from .functional.checks import InvalidArgumentError
from .functional.mixture import switchable_norm_generic
from .functional.whitening import newton_schulz_whitening
from .optim import LAMB, LANS, LARS

StatisticsKind = Literal["batch", "sample", "none"]
_KINDS = ("batch", "sample", "none")


@dataclass(frozen=True)
class NormEntry:
    """One registered norm: how to build it, what it computes, how it is checked, where it comes from."""

    name: str
    cls: type[nn.Module]
    summary: str
    formula: str
    reduces: str
    paper: str
    #: "batch" (batch statistics in training, running ones in eval), "sample" or "none"
    statistics: StatisticsKind
    #: input ranks the module accepts (``ranks[0]`` is the example's)
    ranks: tuple[int, ...]
    #: ``oracle(module, *inputs) -> output``: the generic partition -> operation -> recovery
    #: composition (float64) for the module's current mode; None when the module *is* the composition
    oracle: Callable[..., Tensor] | None
    #: example constructor keywords beyond ``num_features`` and the input shapes (one per input)
    example: dict
    example_shapes: tuple[tuple[int, ...], ...]
    aliases: tuple[str, ...] = ()
    #: names of forward's tensor arguments
    inputs: tuple[str, ...] = ("input",)
    # How create_norm's num_features enters the constructor: the keyword it
    # becomes, or None when the norm has no per-channel state (LRN).
    features_arg: str | None = "num_features"
    primary: str | None = None  # the option a bare spec value sets ("gn:32")
    defaults: dict = field(default_factory=dict)  # registry defaults beyond the class's
    torch_twin: str | None = None  # "torch.nn.X" with the same contract (subclassed), if any
    loads_from: str | None = None  # the torch class whose state_dict loads strictly (default: the twin)
    family: str = "per-sample"
    #: builds the module from merged keywords instead of ``cls(**kwargs)`` (e.g. GroupNorm's group_size)
    builder: Callable[..., nn.Module] | None = None
    #: ``torch_equivalent(module, *inputs) -> output``: torch's fastest way to compute the same function
    #: with stock ops (for norms without a twin; the benchmarks' reference), e.g. LayerNorm2d's permute road
    torch_equivalent: Callable[..., Tensor] | None = None
    #: the spec to use for input of another rank, e.g. batchnorm2d after a Linear (rank 2) is
    #: "batchnorm1d"; layernorm after a convolution is LN over (C, *spatial) = "groupnorm:1"
    rank_variants: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.statistics not in _KINDS:
            raise ValueError(f"NormEntry {self.name!r}: statistics must be one of {_KINDS}, got {self.statistics!r}")
        if len(self.example_shapes) != len(self.inputs):
            raise ValueError(f"NormEntry {self.name!r}: one example shape per input {self.inputs}")

    @property
    def input_rank(self) -> int:
        return self.ranks[0]

    @property
    def checkpoint_class(self) -> str | None:
        return self.loads_from or self.torch_twin

    def example_features(self) -> int | tuple[int, ...] | None:
        """``num_features`` of the example: the channel dim, or the trailing dim for trailing-dim norms."""
        if self.features_arg is None:
            return None
        shape = self.example_shapes[0]
        return shape[-1] if self.features_arg == "normalized_shape" else shape[1]

    def build(self, num_features: int | tuple[int, ...] | None, **kwargs) -> nn.Module:
        args = {**self.defaults, **kwargs}
        if self.features_arg is not None:
            if num_features is None:
                raise TypeError(f"norm {self.name!r} needs num_features")
            args[self.features_arg] = num_features
        return (self.builder or self.cls)(**args)

    def build_example(self, **overrides) -> nn.Module:
        """The module of :attr:`example` at the example input's size."""
        return self.build(self.example_features(), **{**self.example, **overrides})

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


@dataclass(frozen=True)
class WeightNormEntry:
    """One registered weight normalization: a function ``apply(module, **kwargs) -> module``."""

    name: str
    apply: Callable[..., nn.Module]
    summary: str
    formula: str
    paper: str
    #: the parametrization module (``torch.nn.utils.parametrize``) it registers
    parametrization: type[nn.Module] | None = None
    aliases: tuple[str, ...] = ()
    primary: str | None = None
    defaults: dict = field(default_factory=dict)
    #: module types it applies to
    applies_to: tuple[type[nn.Module], ...] = ()


@dataclass(frozen=True)
class OptimizerEntry:
    """One registered optimizer (gradient-side normalization)."""

    name: str
    cls: type
    summary: str
    paper: str
    aliases: tuple[str, ...] = ()
    primary: str | None = None
    defaults: dict = field(default_factory=dict)


E = TypeVar("E")


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


class Registry(Generic[E]):
    """A flat name -> entry table with aliases and the spec grammar; one per kind of thing."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._table: dict[str, E] = {}
        self._aliases: dict[str, str] = {}

    def register(self, entry: E) -> E:
        """Add an entry (its name and aliases must be new)."""
        for key in (entry.name, *entry.aliases):
            if key in self._table or key in self._aliases:
                raise ValueError(f"{self.kind} name {key!r} is already registered")
        self._table[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name
        return entry

    def resolve(self, name: str) -> E:
        key = name.strip().lower()
        key = self._aliases.get(key, key)
        if key not in self._table:
            known = ", ".join(sorted([*self._table, *self._aliases]))
            raise ValueError(f"unknown {self.kind} {name!r}; known names and aliases: {known}")
        return self._table[key]

    def names(self) -> list[str]:
        return list(self._table)

    def entries(self) -> list[E]:
        return list(self._table.values())

    def __contains__(self, name: str) -> bool:
        key = name.strip().lower()
        return key in self._table or key in self._aliases

    def parse(self, spec: str) -> tuple[E, dict]:
        """Split a spec string into its entry and keywords (see the module docs for the grammar)."""
        if not isinstance(spec, str) or not spec.strip():
            raise TypeError(f"a {self.kind} spec must be a non-empty string, got {spec!r}")
        name, _, rest = spec.partition(":")
        entry = self.resolve(name)
        kwargs: dict = {}
        if rest.strip():
            primary = getattr(entry, "primary", None)
            for i, arg in enumerate(rest.split(",")):
                key, eq, value = arg.partition("=")
                if eq:
                    kwargs[key.strip()] = _parse_value(value)
                elif i == 0 and primary is not None:
                    kwargs[primary] = _parse_value(arg)
                else:
                    raise ValueError(
                        f"cannot parse {arg!r} in {self.kind} spec {spec!r}: only the first argument may be "
                        f"positional ({entry.name}'s is {primary or 'none'}); write key=value"
                    )
        return entry, kwargs


NORMS: Registry[NormEntry] = Registry("norm")
WEIGHT_NORMS: Registry[WeightNormEntry] = Registry("weight normalization")
OPTIMIZERS: Registry[OptimizerEntry] = Registry("optimizer")


def register_norm(entry: NormEntry) -> NormEntry:
    """Add an entry to the norm table (names and aliases must be new)."""
    return NORMS.register(entry)


def register_weight_norm(entry: WeightNormEntry) -> WeightNormEntry:
    return WEIGHT_NORMS.register(entry)


def register_optimizer(entry: OptimizerEntry) -> OptimizerEntry:
    return OPTIMIZERS.register(entry)


# ------------------------------------------------------------------ oracles
# Each: the generic composition (normlab.functional.generic) for the module's
# current mode and state. Batch norms in eval with running statistics use them.


def _running_or(m: nn.Module, batch: Callable[[], Tensor], x: Tensor) -> Tensor:
    if getattr(m, "running_mean", None) is not None and not m.training:
        return generic.batch_norm_eval(x, m.running_mean, m.running_var, m.weight, m.bias, m.eps)
    return batch()


def _oracle_bn(m, x):
    return _running_or(m, lambda: generic.batch_norm(x, m.weight, m.bias, m.eps)[0], x)


def _oracle_in(m, x):
    unbatched = x.dim() == m._batched_rank - 1
    xb = x.unsqueeze(0) if unbatched else x
    y = _running_or(m, lambda: generic.instance_norm(xb, m.weight, m.bias, m.eps)[0], xb)
    return y.squeeze(0) if unbatched else y


def _oracle_gn(m, x):
    return generic.group_norm(x, m.num_groups, m.weight, m.bias, m.eps)


def _oracle_ln(m, x):
    return generic.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)


def _oracle_cln(m, x):
    return generic.channel_layer_norm(x, m.weight, m.bias, m.eps)


def _permute_layer_norm(m, x):
    """timm's LayerNorm2d: permute to channels-last, F.layer_norm over C, permute back."""
    y = F.layer_norm(x.movedim(1, -1), (x.shape[1],), m.weight, m.bias, m.eps)
    return y.movedim(-1, 1)


def _chunked_batch_norm(m, x):
    """Ghost BN with stock ops: torch's batch_norm on each ghost batch, concatenated (eval: one call)."""
    if not m.use_batch_stats():
        return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
    chunks = x.split(m.virtual_batch_size)
    return torch.cat([F.batch_norm(c, None, None, m.weight, m.bias, True, 0.0, m.eps) for c in chunks])


def _oracle_rms(m, x):
    return generic.rms_norm(x, m.normalized_shape, m.weight, m.eps)


def _oracle_lrn(m, x):
    return generic.local_response_norm(x, m.size, m.alpha, m.beta, m.k)


def _build_group_norm(num_channels, num_groups=None, group_size=None, **kwargs) -> nn.Module:
    """GroupNorm from ``num_groups`` or ``group_size`` (the spec "gn:group_size=16")."""
    if group_size is not None:
        if num_groups is not None:
            raise InvalidArgumentError(
                f"give one of num_groups and group_size, got num_groups={num_groups}, group_size={group_size}"
            )
        return nlnn.GroupNorm.from_group_size(num_channels, group_size, **kwargs)
    return nlnn.GroupNorm(num_groups, num_channels, **kwargs)


_BN = "y = (x - mean) / sqrt(var + eps) * weight + bias"


def _bn(dim: int, ranks: tuple[int, ...], shape: tuple[int, ...], aliases: tuple[str, ...]) -> NormEntry:
    return NormEntry(
        name=f"batchnorm{dim}d",
        cls=getattr(nlnn, f"BatchNorm{dim}d"),
        summary=f"Batch normalization for {' or '.join(f'{r}D' for r in ranks)} input; running statistics in eval",
        formula=_BN + "; running stats: (1 - momentum) * running + momentum * batch (unbiased var)",
        reduces="per channel over (N, *spatial)" if dim > 1 else "per channel over (N) or (N, L)",
        paper="Ioffe & Szegedy 2015, Batch Normalization, arXiv:1502.03167",
        statistics="batch",
        ranks=ranks,
        oracle=_oracle_bn,
        example={},
        example_shapes=(shape,),
        aliases=aliases,
        torch_twin=f"torch.nn.BatchNorm{dim}d",
        family="batch",
        rank_variants={2: "batchnorm1d", 3: "batchnorm1d", 4: "batchnorm2d", 5: "batchnorm3d"},
    )


def _in(dim: int, shape: tuple[int, ...], aliases: tuple[str, ...]) -> NormEntry:
    return NormEntry(
        name=f"instancenorm{dim}d",
        cls=getattr(nlnn, f"InstanceNorm{dim}d"),
        summary=f"Instance normalization for {dim + 2}D input (runs as group_norm(x, C))",
        formula=_BN + " (affine=False by default)",
        reduces="per (sample, channel) over the spatial dims",
        paper="Ulyanov, Vedaldi & Lempitsky 2016, Instance Normalization, arXiv:1607.08022",
        statistics="sample",
        ranks=(dim + 2, dim + 1),
        oracle=_oracle_in,
        example={"affine": True},
        example_shapes=(shape,),
        aliases=aliases,
        torch_twin=f"torch.nn.InstanceNorm{dim}d",
        rank_variants={3: "instancenorm1d", 4: "instancenorm2d", 5: "instancenorm3d"},
    )


for _entry in (
    _bn(1, (2, 3), (16, 8), ("bn1d",)),
    _bn(2, (4,), (8, 8, 12, 12), ("bn", "bn2d", "batchnorm")),
    _bn(3, (5,), (4, 8, 4, 6, 6), ("bn3d",)),
    NormEntry(
        name="layernorm",
        cls=nlnn.LayerNorm,
        summary="Layer normalization over the trailing dim(s), per-element affine",
        formula="y = (x - mean) / sqrt(var + eps) * weight + bias",
        reduces="per sample over the trailing normalized_shape dims",
        paper="Ba, Kiros & Hinton 2016, Layer Normalization, arXiv:1607.06450",
        statistics="sample",
        ranks=(3, 1, 2, 4, 5),
        oracle=_oracle_ln,
        example={},
        example_shapes=((8, 8, 20),),
        aliases=("ln",),
        features_arg="normalized_shape",
        torch_twin="torch.nn.LayerNorm",
        # after a convolution, LN over (C, *spatial) as in Wu & He 2018
        rank_variants={3: "groupnorm:1", 4: "groupnorm:1", 5: "groupnorm:1"},
    ),
    NormEntry(
        name="layernorm2d",
        cls=nlnn.LayerNorm2d,
        summary="LayerNorm over the channel dim of (N, C, H, W) at every pixel, no permute copies",
        formula="y[n,:,h,w] = (x - mean_c) / sqrt(var_c + eps) * weight + bias",
        reduces="per (sample, position) over C",
        paper="Ba et al. 2016; channel form as in ConvNeXt (Liu et al. 2022, arXiv:2201.03545)",
        statistics="sample",
        ranks=(4,),
        oracle=_oracle_cln,
        torch_equivalent=_permute_layer_norm,
        example={},
        example_shapes=((8, 8, 12, 12),),
        aliases=("ln2d", "channel_layernorm"),
        features_arg="num_channels",
    ),
    NormEntry(
        name="layernorm3d",
        cls=nlnn.LayerNorm3d,
        summary="LayerNorm over the channel dim of (N, C, D, H, W) at every voxel",
        formula="y[n,:,d,h,w] = (x - mean_c) / sqrt(var_c + eps) * weight + bias",
        reduces="per (sample, position) over C",
        paper="Ba et al. 2016, arXiv:1607.06450",
        statistics="sample",
        ranks=(5,),
        oracle=_oracle_cln,
        torch_equivalent=_permute_layer_norm,
        example={},
        example_shapes=((4, 8, 4, 6, 6),),
        aliases=("ln3d",),
        features_arg="num_channels",
    ),
    NormEntry(
        name="groupnorm",
        cls=nlnn.GroupNorm,
        summary="Group normalization: per sample, groups of C/G channels (by num_groups or group_size)",
        formula=_BN + " (per-channel affine)",
        reduces="per (sample, group) over (C/G, *spatial)",
        paper="Wu & He 2018, Group Normalization, arXiv:1803.08494",
        statistics="sample",
        ranks=(4, 2, 3, 5),
        oracle=_oracle_gn,
        example={"num_groups": 4},
        example_shapes=((8, 8, 12, 12),),
        aliases=("gn",),
        features_arg="num_channels",
        primary="num_groups",
        defaults={"num_groups": 32},
        torch_twin="torch.nn.GroupNorm",
        builder=_build_group_norm,
    ),
    _in(1, (8, 8, 20), ("in1d",)),
    _in(2, (8, 8, 12, 12), ("in", "in2d", "instancenorm")),
    _in(3, (4, 8, 4, 6, 6), ("in3d",)),
    NormEntry(
        name="rmsnorm",
        cls=nlnn.RMSNorm,
        summary="RMS normalization (no centering) over the trailing dim(s), torch's eps convention",
        formula="y = x / sqrt(mean(x^2) + eps) * weight",
        reduces="per sample over the trailing normalized_shape dims",
        paper="Zhang & Sennrich 2019, Root Mean Square Layer Normalization, arXiv:1910.07467",
        statistics="sample",
        ranks=(3, 1, 2, 4, 5),
        oracle=_oracle_rms,
        example={},
        example_shapes=((8, 8, 20),),
        aliases=("rms",),
        features_arg="normalized_shape",
        torch_twin="torch.nn.RMSNorm",
    ),
    NormEntry(
        name="localresponsenorm",
        cls=nlnn.LocalResponseNorm,
        summary="Local response normalization across neighbouring channels (no parameters)",
        formula="b_c = a_c / (k + alpha / n * sum_{c' in window(c)} a_c'^2) ** beta",
        reduces="per (sample, position) over a window of `size` channels",
        paper="Krizhevsky, Sutskever & Hinton 2012, ImageNet Classification with Deep CNNs (NeurIPS)",
        statistics="none",
        ranks=(4, 3, 5),
        oracle=_oracle_lrn,
        example={"size": 5},
        example_shapes=((8, 8, 12, 12),),
        aliases=("lrn",),
        features_arg=None,
        primary="size",
        defaults={"size": 5},
        torch_twin="torch.nn.LocalResponseNorm",
        family="local",
    ),
):
    register_norm(_entry)

# --- batch-statistics variants


def _oracle_ghost_bn(m, x):
    """Per ghost batch (``x.split(B)``, the last may be smaller): BN partition -> standardize; channel affine."""

    def batch() -> Tensor:
        ys = [BatchPartition().standardize(chunk, m.eps)[0] for chunk in x.split(m.virtual_batch_size)]
        return channel_affine(torch.cat(ys), m.weight, m.bias).to(x.dtype)

    return _running_or(m, batch, x)


register_norm(
    NormEntry(
        name="ghostbatchnorm",
        cls=nlnn.GhostBatchNorm,
        summary="Ghost batch normalization: BN on ghost batches of virtual_batch_size samples; running stats in eval",
        formula=_BN + " with (mean, var) of each ghost batch x.split(virtual_batch_size) (the last may be smaller); "
        "running stats: one update per step with the whole batch's pooled moments (as BatchNorm's)",
        reduces="per (ghost batch, channel) over (the ghost batch's samples, *spatial)",
        paper="Hoffer, Hubara & Soudry 2017, Train longer, generalize better, arXiv:1705.08741",
        statistics="batch",
        ranks=(4, 2, 3, 5),
        oracle=_oracle_ghost_bn,
        torch_equivalent=_chunked_batch_norm,
        example={"virtual_batch_size": 4},
        example_shapes=((8, 8, 12, 12),),
        aliases=("ghostbn", "gbn"),
        primary="virtual_batch_size",
        loads_from="torch.nn.BatchNorm2d",
        family="batch",
    )
)


# --- whitening
def _oracle_iternorm(m, x):
    """IterNorm by the generic road in float64: group to (R, D, M), covariance, Newton, apply, ungroup, affine."""
    x64 = x.to(torch.float64)
    part = BatchPartition(m.group_size)
    xg = part.group(x64)  # (G, d, N*S): a permuted copy
    if m.training or m.running_mean is None:
        cov = estimate_covariance(xg, 1, (2,))
        whitening = Whitening(cov.mean, newton_schulz_whitening(cov.cov, m.T, m.eps))
    else:
        whitening = Whitening(
            m.running_mean.to(torch.float64).view(m.num_groups, m.group_size), m.running_wm.to(torch.float64)
        )
    y = part.ungroup(apply_whitening(xg, whitening, 1, (2,)), tuple(x.shape))
    w, b = (None if p is None else p.to(torch.float64) for p in (m.weight, m.bias))
    return channel_affine(y, w, b)


register_norm(
    NormEntry(
        name="iternorm",
        cls=nlnn.IterNorm,
        summary="Iterative normalization: whiten groups of channels with batch statistics by Newton-Schulz steps",
        formula=(
            "Sigma = Xc Xc^T / M + eps I; Sigma_N = Sigma / tr(Sigma); P_0 = I; "
            "P_k = 1.5 P_{k-1} - 0.5 P_{k-1}^3 Sigma_N (k = 1..T); W = P_T / sqrt(tr(Sigma)); "
            "y = W Xc * weight + bias; running: EMA of the mean and of W"
        ),
        reduces="per group of group_size consecutive channels (coupled) over (N, *spatial)",
        paper=(
            "Huang, Zhou, Zhu, Liu & Shao 2019, Iterative Normalization: Beyond Standardization towards "
            "Efficient Whitening (CVPR), arXiv:1904.03441"
        ),
        statistics="batch",
        ranks=(4, 2, 3, 5),
        oracle=_oracle_iternorm,
        example={"group_size": 4, "T": 5},
        example_shapes=((8, 8, 12, 12),),
        aliases=("itn",),
        primary="group_size",
        family="whitening",
    )
)


# --- mixtures
def _oracle_sn(m, x):
    """Switchable Norm as the generic composition (each component's moments by its own partition), float64."""

    def f64(t):
        return None if t is None else t.detach().double()

    eval_running = not m.training and getattr(m, "running_mean", None) is not None
    return switchable_norm_generic(
        x.double(),
        f64(m.mean_weight),
        f64(m.var_weight),
        f64(m.weight),
        f64(m.bias),
        running_mean=f64(m.running_mean) if eval_running else None,
        running_var=f64(m.running_var) if eval_running else None,
        using_bn=m.using_bn,
        eps=m.eps,
    )


register_norm(
    NormEntry(
        name="switchablenorm",
        cls=nlnn.SwitchableNorm,
        summary="Switchable normalization: a learned softmax mixture of the IN, LN and BN statistics",
        formula=(
            "mu = sum_k softmax(mean_weight)_k mu_k, var = sum_k softmax(var_weight)_k var_k, k in (IN, LN, BN); "
            "y = (x - mu) / sqrt(var + eps) * weight + bias; running BN stats as BatchNorm (torch momentum form)"
        ),
        reduces="IN per (sample, channel) over *spatial; LN per sample over (C, *spatial); BN per channel over "
        "(N, *spatial); LN and BN pooled exactly from the IN moments",
        paper="Luo, Ren, Peng, Zhang & Li 2019, Differentiable Learning-to-Normalize via Switchable Normalization "
        "(ICLR), arXiv:1806.10779",
        statistics="batch",
        ranks=(4, 3, 5),
        oracle=_oracle_sn,
        example={},
        example_shapes=((8, 8, 12, 12),),
        aliases=("sn", "switchnorm"),
        family="mixture",
    )
)


# --- conditional recovery
def _oracle_spade(m, x, condition):
    """The inner norm's own oracle (its current mode) -> nearest resize -> conv, relu, convs -> modulate."""
    inner = m.param_free_norm
    entry = entry_for_module(inner)
    if entry is not None and entry.oracle is not None:
        y = entry.oracle(inner, x)
    else:  # a module that is its own composition (or a user's class): run a copy, keep the state
        y = copy.deepcopy(inner)(x)
    shared, conv_g, conv_b = m.mlp_shared[0], m.mlp_gamma, m.mlp_beta
    segmap = F.interpolate(condition, size=tuple(x.shape[2:]), mode="nearest").to(shared.weight.dtype)
    a = F.relu(F.conv2d(segmap, shared.weight, shared.bias, padding=shared.padding))
    gamma = F.conv2d(a, conv_g.weight, conv_g.bias, padding=conv_g.padding)
    beta = F.conv2d(a, conv_b.weight, conv_b.bias, padding=conv_b.padding)
    return modulate(y, 1 + gamma, beta)


register_norm(
    NormEntry(
        name="spade",
        cls=nlnn.SPADE,
        summary="Spatially-adaptive normalization: a parameter-free norm (BN), then a per-position scale and "
        "shift predicted by convolutions of a semantic map",
        formula="m = nearest_resize(condition, (H, W)); a = relu(conv_shared(m)); "
        "y = norm(x) * (1 + conv_gamma(a)) + conv_beta(a)",
        reduces="as the inner parameter-free norm (default BN: per channel over (N, H, W)); the recovery is per "
        "(sample, channel, position)",
        paper="Park, Liu, Wang & Zhu 2019, Semantic Image Synthesis with Spatially-Adaptive Normalization (CVPR), "
        "arXiv:1903.07291",
        statistics="batch",
        ranks=(4,),
        oracle=_oracle_spade,
        example={"label_nc": 3, "hidden": 8},
        example_shapes=((8, 8, 12, 12), (8, 3, 6, 6)),
        inputs=("input", "condition"),
        primary="label_nc",
        family="conditional",
    )
)


# --- weight normalizations (WEIGHT_NORMS)
register_weight_norm(
    WeightNormEntry(
        name="weight_standardization",
        apply=nlnn.weight_standardization,
        summary="Weight standardization: each filter of a conv/linear weight to mean 0, std 1 (a parametrization)",
        formula="W_hat[i] = (W[i] - mean(W[i])) / (std(W[i]) + eps), over the fan-in of output i "
        "(std unbiased by default: correction=1; correction=0 is the paper's 1/I)",
        paper="Qiao, Wang, Liu, Shen & Yuille 2019, Micro-Batch Training with Batch-Channel Normalization "
        "and Weight Standardization, arXiv:1903.10520",
        parametrization=nlnn.WeightStandardization,
        aliases=("ws",),
        primary="eps",
        applies_to=nlnn.weight.SUPPORTED_MODULES,
    )
)


# --- gradient-side normalization (OPTIMIZERS)
register_optimizer(
    OptimizerEntry(
        name="lars",
        cls=LARS,
        summary="LARS: each layer's step scaled by its trust ratio eta ||w|| / (||g|| + wd ||w||), momentum over it",
        paper="You, Gitman & Ginsburg 2017, Large Batch Training of Convolutional Networks, arXiv:1708.03888",
        primary="lr",
    )
)
register_optimizer(
    OptimizerEntry(
        name="lamb",
        cls=LAMB,
        summary="LAMB: Adam's step u rescaled per layer to lr * phi(||x||) / ||u||, decoupled weight decay in u",
        paper="You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer & Hsieh 2019, Large Batch "
        "Optimization for Deep Learning: Training BERT in 76 minutes, arXiv:1904.00962",
        primary="lr",
    )
)
register_optimizer(
    OptimizerEntry(
        name="lans",
        cls=LANS,
        summary="LANS: LAMB on per-layer normalized gradients, with two norm-rescaled Nesterov-style half-steps",
        paper="Zheng, Lin, Zha, Wei, Li, Li & Lin 2020, Accelerated Large Batch Optimization of BERT Pretraining "
        "in 54 minutes, arXiv:2006.13484",
        primary="lr",
    )
)


def parse_spec(spec: str) -> tuple[NormEntry, dict]:
    """Split a norm spec string into its registry entry and constructor keywords."""
    return NORMS.parse(spec)


def _entry_of_class(cls: type) -> NormEntry | None:
    for entry in NORMS.entries():
        if entry.cls is cls:
            return entry
    return None


def create_norm(spec, num_features: int | tuple[int, ...] | None = None, **kwargs) -> nn.Module:
    """Build a norm module from a registered name or spec string, a class or a ``functools.partial``.

    >>> import torch, normlab
    >>> normlab.create_norm("gn:8", 64)
    GroupNorm(8, 64, eps=1e-05, affine=True, bias=True)
    >>> normlab.create_norm("gn:group_size=16", 64).num_groups
    4
    >>> normlab.create_norm(torch.nn.BatchNorm2d, 3)
    BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)
    >>> import functools
    >>> normlab.create_norm(functools.partial(normlab.nn.GroupNorm, 4), 8)
    GroupNorm(4, 8, eps=1e-05, affine=True, bias=True)

    A class that the registry knows gets its ``num_features`` keyword and
    defaults (``create_norm(normlab.nn.GroupNorm, 64)`` has 32 groups); any
    other class or partial is called as ``spec(num_features, **kwargs)``.
    """
    if isinstance(spec, functools.partial) or isinstance(spec, type):
        entry = _entry_of_class(spec) if isinstance(spec, type) else None
        if entry is None:
            return spec(**kwargs) if num_features is None else spec(num_features, **kwargs)
        spec_kwargs: dict = {}
    elif isinstance(spec, str):
        entry, spec_kwargs = parse_spec(spec)
    else:
        raise TypeError(
            f"create_norm expected a norm name or spec string, a module class or a functools.partial, "
            f"got {type(spec).__name__} {spec!r}"
        )
    # num_groups and group_size exclude each other: the one given last (kwargs over spec) wins.
    for given, other in (("group_size", "num_groups"), ("num_groups", "group_size")):
        if given in kwargs:
            spec_kwargs.pop(other, None)
    merged = {**spec_kwargs, **kwargs}
    if "group_size" in merged and "num_groups" not in merged and "num_groups" in entry.defaults:
        merged["num_groups"] = None
    try:
        return entry.build(num_features, **merged)
    except InvalidArgumentError:
        raise
    except TypeError as err:
        raise TypeError(f"create_norm({spec!r}, {num_features}): {err}") from err


def get_norm(name: str) -> type[nn.Module]:
    """The module class registered under ``name`` (or an alias)."""
    return NORMS.resolve(name).cls


def get_entry(name: str) -> NormEntry:
    """The full registry entry for ``name`` (or an alias)."""
    return NORMS.resolve(name)


def list_norms() -> list[str]:
    """Canonical names of every registered norm, in registration order."""
    return NORMS.names()


def aliases_of(name: str) -> tuple[str, ...]:
    return NORMS.resolve(name).aliases


def entry_for_module(module: nn.Module) -> NormEntry | None:
    """The registry entry of ``module``'s class (the most derived registered class in its MRO), if any."""
    for cls in type(module).__mro__:
        entry = _entry_of_class(cls)
        if entry is not None:
            return entry
    return None


def statistics_kind(module: nn.Module) -> StatisticsKind | None:
    """What statistics ``module`` normalizes with: ``"batch"``, ``"sample"``, ``"none"`` or None (not a norm).

    Decided by, in order: the registry (normlab's norms and the torch twins
    they subclass); the ``normlab_statistics`` attribute (the protocol for
    user-defined modules: set it to ``"batch"`` on a module whose training
    forward uses batch statistics); torch's own norm classes.
    """
    entry = entry_for_module(module)
    if entry is not None:
        return entry.statistics
    declared = getattr(module, "normlab_statistics", None)
    if declared is not None:
        if declared not in _KINDS:
            raise ValueError(f"{type(module).__name__}.normlab_statistics must be one of {_KINDS}, got {declared!r}")
        return declared
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batch"
    if isinstance(module, (nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)):
        return "sample"
    if isinstance(module, nn.LocalResponseNorm):
        return "none"
    return None


def mode_dependent(module: nn.Module) -> bool:
    """Whether ``module`` computes a different function in train and eval mode because of its statistics.

    True for batch-statistics norms, and for per-sample norms that track
    running statistics (``InstanceNorm(track_running_stats=True)`` uses them in
    eval). Analysis tools put exactly these modules in train mode for
    ``bn_mode="train"``.
    """
    kind = statistics_kind(module)
    if kind == "batch":
        return True
    return kind == "sample" and bool(getattr(module, "track_running_stats", False))


def apply_weight_norm(spec: str, module: nn.Module, **kwargs) -> nn.Module:
    """Apply a registered weight normalization (name or spec string) to ``module``; returns ``module``."""
    entry, spec_kwargs = WEIGHT_NORMS.parse(spec)
    return entry.apply(module, **{**entry.defaults, **spec_kwargs, **kwargs})


def list_weight_norms() -> list[str]:
    return WEIGHT_NORMS.names()


def create_optimizer(spec: str, params, **kwargs):
    """Build a registered optimizer from a name or spec: ``create_optimizer("lars:lr=0.1", model.parameters())``."""
    entry, spec_kwargs = OPTIMIZERS.parse(spec)
    return entry.cls(params, **{**entry.defaults, **spec_kwargs, **kwargs})
