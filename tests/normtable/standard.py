"""The standard norms (torch twins and channel LayerNorm): BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm, LRN.

References are independent float64 implementations written from each
paper's formula with plain torch arithmetic (and, for the channel LayerNorm
that torch lacks, the ConvNeXt permute recipe as a second opinion); none
calls normlab. ``ref(inputs, state, training, dtype)`` reads parameters and
running statistics from ``state`` by their ``named_parameters`` /
``named_buffers`` names.

Shapes are chosen to reach every road of :mod:`normlab.functional.norms`:
BatchNorm rows (values per (n, c)) of >= 16 take normlab's fast
batch-statistics road, shorter rows and 2-D input torch's kernel;
InstanceNorm runs as ``group_norm(x, C)`` (channels-last input with
gradients: its analytic backward, reached by the generic channels-last
test); unbatched InstanceNorm input; LayerNorm over one or two trailing dims.
"""

from __future__ import annotations

import re
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import TOL32, ErrorInput, NormInfo, SampleInput, Tol, make_input

# ---------------------------------------------------------------- references


def _channel_view(p: Tensor | None, rank: int) -> Tensor | None:
    return None if p is None else p.reshape([1, -1] + [1] * (rank - 2))


def _affine_channels(y: Tensor, state: dict) -> Tensor:
    w, b = _channel_view(state.get("weight"), y.dim()), _channel_view(state.get("bias"), y.dim())
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


def _standardize(x: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    """(x - mean) / sqrt(biased var + eps) over ``dims``, two-pass."""
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def _with_running(x: Tensor, state: dict, eps: float) -> Tensor:
    mean = _channel_view(state["running_mean"], x.dim())
    var = _channel_view(state["running_var"], x.dim())
    return (x - mean) / torch.sqrt(var + eps)


def ref_batch_norm(inputs, state, training, dtype, *, eps: float = 1e-5, track: bool = True) -> Tensor:
    """Ioffe & Szegedy: per channel over (N, *spatial); the running statistics in eval when tracked."""
    (x,) = inputs
    if training or not track:
        y = _standardize(x, (0, *range(2, x.dim())), eps)
    else:
        y = _with_running(x, state, eps)
    return _affine_channels(y, state)


def ref_instance_norm(inputs, state, training, dtype, *, eps=1e-5, track=False, batched_rank: int) -> Tensor:
    """Ulyanov et al.: per (sample, channel) over the spatial dims; the running statistics in eval when tracked."""
    (x,) = inputs
    unbatched = x.dim() == batched_rank - 1
    if unbatched:
        x = x.unsqueeze(0)
    y = _standardize(x, tuple(range(2, x.dim())), eps) if training or not track else _with_running(x, state, eps)
    y = _affine_channels(y, state)
    return y.squeeze(0) if unbatched else y


def ref_group_norm(inputs, state, training, dtype, *, num_groups: int, eps: float = 1e-5) -> Tensor:
    """Wu & He: per (sample, group of C/G consecutive channels) over (C/G, *spatial)."""
    (x,) = inputs
    g = x.reshape(x.shape[0], num_groups, -1)
    return _affine_channels(_standardize(g, (2,), eps).reshape(x.shape), state)


def ref_layer_norm(inputs, state, training, dtype, *, ndims: int, eps: float = 1e-5) -> Tensor:
    """Ba et al.: per sample over the trailing ``ndims`` dims, per-element affine."""
    (x,) = inputs
    y = _standardize(x, tuple(range(x.dim() - ndims, x.dim())), eps)
    if state.get("weight") is not None:
        y = y * state["weight"]
    if state.get("bias") is not None:
        y = y + state["bias"]
    return y


def ref_channel_layer_norm_formula(inputs, state, training, dtype, *, eps: float = 1e-5) -> Tensor:
    """Channel LayerNorm by hand: at every position, standardize the C values of dim 1."""
    (x,) = inputs
    return _affine_channels(_standardize(x, (1,), eps), state)


def ref_channel_layer_norm_permute(inputs, state, training, dtype, *, eps: float = 1e-5) -> Tensor:
    """Channel LayerNorm the ConvNeXt way: permute to channels-last, F.layer_norm(C), permute back."""
    (x,) = inputs
    rank = x.dim()
    to_last, back = (0, *range(2, rank), 1), (0, rank - 1, *range(1, rank - 1))
    y = F.layer_norm(x.permute(to_last), (x.shape[1],), state.get("weight"), state.get("bias"), eps)
    return y.permute(back)


def ref_rms_norm(inputs, state, training, dtype, *, ndims: int, eps: float | None = None) -> Tensor:
    """Zhang & Sennrich, torch's convention: x / sqrt(mean(x^2) + eps) * weight; eps=None -> finfo(dtype).eps."""
    (x,) = inputs
    eps = torch.finfo(dtype).eps if eps is None else eps
    dims = tuple(range(x.dim() - ndims, x.dim()))
    y = x / torch.sqrt((x * x).mean(dim=dims, keepdim=True) + eps)
    return y * state["weight"] if state.get("weight") is not None else y


def ref_local_response_norm(inputs, state, training, dtype, *, size: int, alpha=1e-4, beta=0.75, k=1.0) -> Tensor:
    """The closed formula channel by channel, zero padded at the ends:

    b_c = a_c / (k + alpha/n * sum_{j = c - n//2}^{c + (n-1)//2} a_j^2) ** beta
    """
    (x,) = inputs
    c_total = x.shape[1]
    out = []
    for c in range(c_total):
        s = torch.zeros_like(x[:, 0])
        for j in range(c - size // 2, c + (size - 1) // 2 + 1):
            if 0 <= j < c_total:  # zero padding: channels outside [0, C) add nothing
                s = s + x[:, j] ** 2
        out.append(x[:, c] / (k + alpha / size * s) ** beta)
    return torch.stack(out, dim=1)


# ---------------------------------------------------------------- error inputs


def _integer_input(shape: tuple[int, ...]):
    def make(dtype, seed):
        return (make_input(shape, seed=seed).round().to(torch.int64),)

    return make


_INT = r"expected a floating-point input \(float64, float32, bfloat16 or float16\), got dtype torch.int64"


def _errors_common(good: tuple[int, ...], *, eps: bool = True) -> tuple[ErrorInput, ...]:
    """Errors every norm shares: integer input, and eps negative / NaN / inf at construction."""
    out = [ErrorInput("integer-input", TypeError, _INT, make=_integer_input(good))]
    if eps:
        out += [
            ErrorInput("eps-negative", ValueError, r"eps must be", ctor={"eps": -1.0}, shapes=(good,)),
            ErrorInput("eps-nan", ValueError, r"eps must be", ctor={"eps": float("nan")}, shapes=(good,)),
            ErrorInput("eps-inf", ValueError, r"eps must be", ctor={"eps": float("inf")}, shapes=(good,)),
        ]
    return tuple(out)


def _errors_momentum(good: tuple[int, ...]) -> tuple[ErrorInput, ...]:
    return (
        ErrorInput("momentum-above-1", ValueError, r"momentum must be", ctor={"momentum": 1.5}, shapes=(good,)),
        ErrorInput("momentum-negative", ValueError, r"momentum must be", ctor={"momentum": -0.1}, shapes=(good,)),
        ErrorInput("momentum-nan", ValueError, r"momentum must be", ctor={"momentum": float("nan")}, shapes=(good,)),
    )


def _bn_errors(dim: int) -> tuple[ErrorInput, ...]:
    good = {1: (4, 3), 2: (2, 3, 4, 4), 3: (2, 3, 2, 2, 2)}[dim]
    bad_rank = {1: (2, 3, 4, 5), 2: (2, 3, 4), 3: (2, 3, 4, 4)}[dim]
    one_value = {1: (1, 3), 2: (1, 3, 1, 1), 3: (1, 3, 1, 1, 1)}[dim]
    wrong_c = (good[0], 4, *good[2:])
    return (
        ErrorInput("wrong-rank", ValueError, rf"expected .*D input.*got {len(bad_rank)}D", shapes=(bad_rank,)),
        ErrorInput("1d-input", ValueError, r"expected .*input.*got 1D", shapes=((3,),)),
        ErrorInput("wrong-channels", ValueError, r"expected input with 3 channels at dim 1, got 4", shapes=(wrong_c,)),
        ErrorInput("one-value-per-channel", ValueError, r"Expected more than 1 value per channel", shapes=(one_value,)),
        *_errors_common(good),
        *_errors_momentum(good),
    )


def _in_errors(dim: int, c: int, tracked: bool) -> tuple[ErrorInput, ...]:
    good = (2, c, *(3,) * dim)
    one_value = (2, c, *(1,) * dim)
    out = [
        ErrorInput("wrong-rank", ValueError, rf"expected .*D input.*got {dim + 3}D", shapes=((*good, 2),)),
        ErrorInput("too-low-rank", ValueError, rf"expected .*input.*got {dim}D", shapes=(good[2:],)),
        ErrorInput("one-spatial-value", ValueError, r"more than 1 value per spatial element", shapes=(one_value,)),
        *_errors_common(good),
    ]
    if tracked:  # channels and momentum matter only with running statistics (or affine, for channels)
        out.append(
            ErrorInput(
                "wrong-channels", ValueError, rf"expected input with {c} channels", shapes=((2, c + 1, *(3,) * dim),)
            )
        )
        out += _errors_momentum(good)
    return tuple(out)


_GN_ERRORS = (
    ErrorInput(
        "indivisible-groups",
        ValueError,
        r"num_channels \(4\) must be divisible by num_groups \(3\)",
        ctor={"num_groups": 3},
    ),
    ErrorInput("zero-groups", ValueError, r"num_groups must be a positive int", ctor={"num_groups": 0}),
    ErrorInput("float-groups", ValueError, r"num_groups must be an int, got the float 2.0", ctor={"num_groups": 2.0}),
    ErrorInput("wrong-channels", ValueError, r"expected input with 4 channels at dim 1, got 6", shapes=((2, 6, 3),)),
    ErrorInput("1d-input", ValueError, r"at least 2 dims.*got 1D", shapes=((4,),)),
    *_errors_common((2, 4, 3)),
)

_GN_GROUP_SIZE_ERRORS = (
    ErrorInput(
        "indivisible-group-size",
        ValueError,
        r"num_channels \(6\) must be divisible by group_size \(4\)",
        ctor={"group_size": 4},
    ),
    ErrorInput("both-groups-and-size", ValueError, r"give one of num_groups and group_size", ctor={"num_groups": 2}),
)


def _trailing_errors(what: str, ns: tuple[int, ...], eps: bool = True) -> tuple[ErrorInput, ...]:
    wrong = (2, *ns[:-1], ns[-1] + 1)
    return (
        ErrorInput(
            "wrong-trailing-dims",
            ValueError,
            rf"{what} expected input with trailing dims {re.escape(str(list(ns)))}",
            shapes=(wrong,),
        ),
        ErrorInput("too-few-dims", ValueError, rf"{what} expected input with trailing dims", shapes=(ns[1:] or (1,),)),
        *_errors_common((2, *ns), eps=eps),
    )


def _cln_errors(rank: int, c: int) -> tuple[ErrorInput, ...]:
    good = (2, c, *(3,) * (rank - 2))
    return (
        ErrorInput("wrong-rank", ValueError, rf"expected {rank}D input, got {rank - 1}D", shapes=(good[:-1],)),
        ErrorInput(
            "wrong-channels",
            ValueError,
            rf"expected input with {c} channels at dim 1, got {c + 1}",
            shapes=((2, c + 1, *good[2:]),),
        ),
        *_errors_common(good),
    )


_LRN_ERRORS = (
    ErrorInput("2d-input", ValueError, r"at least 3 dims.*got 2D", shapes=((2, 5),)),
    ErrorInput("size-zero", ValueError, r"size must be a positive int", ctor={"size": 0}),
    ErrorInput("size-float", ValueError, r"size must be an int", ctor={"size": 2.0}),
    *_errors_common((2, 5, 3), eps=False),
)


# ---------------------------------------------------------------- builders


def _samples(*shapes: tuple[int, ...]) -> tuple[SampleInput, ...]:
    return tuple(SampleInput((s,)) for s in shapes)


def _bn(dim: int, id_: str, shapes, errors=(), representative=False, **kwargs) -> NormInfo:
    twin = partial(getattr(nn, f"BatchNorm{dim}d"), 3, **kwargs)
    return NormInfo(
        id=id_,
        name=f"batchnorm{dim}d",
        features=3,
        kwargs=kwargs,
        samples=_samples(*shapes),
        references=(
            partial(ref_batch_norm, eps=kwargs.get("eps", 1e-5), track=kwargs.get("track_running_stats", True)),
        ),
        twin=twin,
        # Batch statistics in training, running statistics (or, untracked, batch ones again) in eval.
        train_eval_differ=True,
        loads_checkpoint=twin,
        errors=errors,
        representative=representative,
    )


def _in(dim: int, id_: str, shapes, c: int = 3, errors=(), representative=False, **kwargs) -> NormInfo:
    track = kwargs.get("track_running_stats", False)
    twin = partial(getattr(nn, f"InstanceNorm{dim}d"), c, **kwargs)
    return NormInfo(
        id=id_,
        name=f"instancenorm{dim}d",
        features=c,
        kwargs=kwargs,
        samples=_samples(*shapes),
        references=(partial(ref_instance_norm, eps=kwargs.get("eps", 1e-5), track=track, batched_rank=dim + 2),),
        twin=twin,
        train_eval_differ=track,  # per-sample statistics; eval differs only with running statistics
        loads_checkpoint=twin,
        errors=errors,
        representative=representative,
    )


def _gn(id_, c, shapes, num_groups=None, group_size=None, errors=(), representative=False, **kwargs) -> NormInfo:
    g = num_groups if num_groups is not None else c // group_size
    ctor = {"num_groups": num_groups} if num_groups is not None else {"group_size": group_size}
    twin = partial(nn.GroupNorm, g, c, **kwargs)
    return NormInfo(
        id=id_,
        name="groupnorm",
        features=c,
        kwargs={**ctor, **kwargs},
        samples=_samples(*shapes),
        references=(partial(ref_group_norm, num_groups=g, eps=kwargs.get("eps", 1e-5)),),
        twin=twin,
        loads_checkpoint=twin,
        errors=errors,
        representative=representative,
    )


def _ln(id_, normalized_shape, shapes, errors=(), representative=False, **kwargs) -> NormInfo:
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    twin = partial(nn.LayerNorm, normalized_shape, **kwargs)
    return NormInfo(
        id=id_,
        name="layernorm",
        features=normalized_shape,
        kwargs=kwargs,
        samples=_samples(*shapes),
        references=(partial(ref_layer_norm, ndims=len(ns), eps=kwargs.get("eps", 1e-5)),),
        twin=twin,
        # torch's layer_norm kernel writes a contiguous output; the trailing dims are a
        # trailing-dim norm's own layout, so channels_last input is accepted, not kept.
        keeps_memory_format=False,
        loads_checkpoint=twin,
        errors=errors,
        representative=representative,
    )


def _cln(name: str, id_: str, c: int, shapes, errors=(), representative=False, **kwargs) -> NormInfo:
    eps = kwargs.get("eps", 1e-5)
    return NormInfo(
        id=id_,
        name=name,
        features=c,
        kwargs=kwargs,
        samples=_samples(*shapes),
        # No torch twin: the ConvNeXt permute recipe in float64, and the formula by hand.
        references=(partial(ref_channel_layer_norm_permute, eps=eps), partial(ref_channel_layer_norm_formula, eps=eps)),
        errors=errors,
        representative=representative,
    )


def _rms(id_, normalized_shape, shapes, errors=(), representative=False, tol32=TOL32, **kwargs) -> NormInfo:
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    twin = partial(nn.RMSNorm, normalized_shape, **kwargs)
    return NormInfo(
        id=id_,
        name="rmsnorm",
        features=normalized_shape,
        kwargs=kwargs,
        samples=_samples(*shapes),
        references=(partial(ref_rms_norm, ndims=len(ns), eps=kwargs.get("eps")),),
        twin=twin,
        loads_checkpoint=twin,
        errors=errors,
        representative=representative,
        tol32=tol32,
    )


def _lrn(id_, shapes, size: int, errors=(), representative=False, **kwargs) -> NormInfo:
    twin = partial(nn.LocalResponseNorm, size, **kwargs)
    return NormInfo(
        id=id_,
        name="localresponsenorm",
        features=None,
        kwargs={"size": size, **kwargs},
        samples=_samples(*shapes),
        references=(partial(ref_local_response_norm, size=size, **kwargs),),
        twin=twin,
        loads_checkpoint=twin,
        errors=errors,
        representative=representative,
    )


# ---------------------------------------------------------------- the table
# BN2d (2, 3, 4, 4) has rows of 16 values per (n, c): normlab's fast
# batch-statistics road; (3, 3, 2, 3) is below it (torch's kernel). BN1d
# (2, 3, 16) likewise; (6, 3) is 2-D input. Representatives (gradgradcheck and
# compile in the default tier) cover, per entry, the richest configuration.

INFOS: tuple[NormInfo, ...] = (
    # --- batch norm
    _bn(1, "bn1d", ((6, 3), (2, 3, 16)), errors=_bn_errors(1), representative=True),
    _bn(1, "bn1d-noaffine-notrack", ((6, 3), (2, 3, 5)), affine=False, track_running_stats=False),
    _bn(1, "bn1d-cumulative", ((6, 3), (2, 3, 16)), momentum=None),
    _bn(2, "bn2d", ((2, 3, 4, 4), (3, 3, 2, 3)), errors=_bn_errors(2), representative=True),
    _bn(2, "bn2d-noaffine", ((2, 3, 4, 4),), affine=False),
    _bn(2, "bn2d-notrack", ((2, 3, 4, 4), (3, 3, 2, 3)), track_running_stats=False),
    _bn(2, "bn2d-cumulative", ((2, 3, 4, 4), (3, 3, 2, 3)), momentum=None),
    _bn(2, "bn2d-m0.3-eps1e-3", ((2, 3, 4, 4),), momentum=0.3, eps=1e-3),
    _bn(3, "bn3d", ((2, 3, 2, 2, 4), (2, 3, 1, 2, 3)), errors=_bn_errors(3), representative=True),
    _bn(3, "bn3d-cumulative-noaffine", ((2, 3, 2, 2, 4),), momentum=None, affine=False),
    # --- layer norm (trailing dims); (2, 3, 4, 5) also runs the channels-last test
    _ln("ln", 5, ((2, 3, 5), (4, 5), (2, 3, 4, 5)), errors=_trailing_errors("layer_norm", (5,)), representative=True),
    _ln("ln-2dims", (3, 5), ((2, 3, 5),), errors=_trailing_errors("layer_norm", (3, 5))),
    _ln("ln-noaffine", 5, ((2, 3, 5),), elementwise_affine=False),
    _ln("ln-nobias-eps1e-3", 5, ((2, 3, 5),), bias=False, eps=1e-3),
    # --- channel layer norm
    _cln("layernorm2d", "ln2d", 4, ((2, 4, 3, 3),), errors=_cln_errors(4, 4), representative=True),
    _cln("layernorm2d", "ln2d-noaffine", 4, ((2, 4, 3, 3),), elementwise_affine=False),
    _cln("layernorm2d", "ln2d-nobias-eps1e-3", 4, ((2, 4, 3, 3),), bias=False, eps=1e-3),
    _cln("layernorm3d", "ln3d", 3, ((2, 3, 2, 2, 3),), errors=_cln_errors(5, 3), representative=True),
    # --- group norm (2-D to 4-D input)
    _gn("gn", 4, ((2, 4, 3, 3), (3, 4, 5), (3, 4)), num_groups=2, errors=_GN_ERRORS, representative=True),
    _gn("gn-groupsize", 6, ((2, 6, 3, 3),), group_size=3, errors=_GN_GROUP_SIZE_ERRORS),
    _gn("gn-groupsize1-noaffine", 4, ((2, 4, 3, 3),), group_size=1, affine=False),
    _gn("gn-1group-eps1e-3", 4, ((2, 4, 3, 3), (2, 4, 2, 2, 3)), num_groups=1, eps=1e-3),
    # --- instance norm (batched and unbatched)
    _in(1, "in1d", ((2, 3, 5), (3, 5)), errors=_in_errors(1, 3, False)),
    _in(
        1,
        "in1d-affine-track",
        ((2, 3, 5), (3, 5)),
        affine=True,
        track_running_stats=True,
        representative=True,
        errors=_in_errors(1, 3, True),
    ),
    _in(2, "in2d", ((2, 3, 3, 3),), errors=_in_errors(2, 3, False)),
    _in(2, "in2d-affine", ((2, 3, 3, 3),), affine=True),
    _in(2, "in2d-track", ((2, 3, 3, 3),), track_running_stats=True),
    _in(
        2,
        "in2d-affine-track",
        ((2, 3, 3, 3), (3, 3, 3)),
        affine=True,
        track_running_stats=True,
        errors=_in_errors(2, 3, True),
        representative=True,
    ),
    _in(2, "in2d-affine-track-cumulative", ((2, 3, 3, 3),), affine=True, track_running_stats=True, momentum=None),
    _in(3, "in3d", ((2, 2, 2, 2, 3),), c=2, errors=_in_errors(3, 2, False)),
    _in(
        3,
        "in3d-affine-track",
        ((2, 2, 2, 2, 3),),
        c=2,
        affine=True,
        track_running_stats=True,
        errors=_in_errors(3, 2, True),
        representative=True,
    ),
    # --- RMS norm
    _rms(
        "rms-epsNone",
        5,
        ((2, 3, 5), (4, 5), (2, 3, 4, 5)),
        errors=_trailing_errors("rms_norm", (5,)),
        representative=True,
    ),
    _rms("rms-eps1e-6", 5, ((2, 3, 5),), eps=1e-6),
    _rms("rms-2dims-eps1e-2", (3, 5), ((2, 3, 5),), eps=1e-2, errors=_trailing_errors("rms_norm", (3, 5))),
    _rms("rms-noaffine", 5, ((2, 3, 5),), elementwise_affine=False),
    # --- local response norm (alpha large so that the normalization is far from the identity)
    _lrn("lrn3", ((2, 5, 3, 3),), size=3, alpha=0.6, beta=0.75, k=1.0, errors=_LRN_ERRORS, representative=True),
    _lrn("lrn2-even", ((2, 5, 4), (2, 5, 3, 3)), size=2, alpha=0.4, beta=0.5, k=2.0),
    _lrn("lrn5-wide", ((2, 4, 3, 3),), size=5, alpha=1.0, beta=0.9, k=0.5),
    _lrn("lrn-defaults", ((2, 6, 2, 3, 2),), size=5),
)

__all__ = ["INFOS", "Tol"]
