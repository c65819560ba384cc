"""The table of cases: one or more entries per registered norm.

Each case says how to build the module (registry name + constructor kwargs),
which small inputs to feed it, the ``torch.nn`` twin with the same contract
(if there is one) and independent float64 references written from the
formulas. References never call normlab: they are plain torch arithmetic (or
``torch.nn.functional`` for a second opinion), so a test against them can fail.

A reference is ``ref(x, p, training, dtype) -> y`` where

- ``x`` is the float64 input (the values the module saw),
- ``p`` maps ``weight``/``bias``/``running_mean``/``running_var`` to float64
  tensors (or None); parameter tensors may require grad, so gradients of the
  reference are the independent gradients,
- ``training`` is the module's mode,
- ``dtype`` is the dtype the module ran in (RMSNorm's ``eps=None`` means
  ``finfo(dtype).eps``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import normlab

Reference = Callable[[Tensor, dict, bool, torch.dtype], Tensor]


# ---------------------------------------------------------------- references


def _channel_view(p: Tensor | None, rank: int, dim: int = 1) -> Tensor | None:
    if p is None:
        return None
    shape = [1] * rank
    shape[dim] = -1
    return p.reshape(shape)


def _affine_channels(y: Tensor, p: dict) -> Tensor:
    w, b = _channel_view(p.get("weight"), y.dim()), _channel_view(p.get("bias"), y.dim())
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


def _standardize(x: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    """(x - mean) / sqrt(biased var + eps), two-pass, over ``dims``."""
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def ref_batch_norm(x: Tensor, p: dict, training: bool, dtype, *, eps: float = 1e-5, track: bool = True) -> Tensor:
    """Ioffe & Szegedy: per channel over (N, *spatial); running stats in eval when tracked."""
    if training or not track:
        dims = (0,) + tuple(range(2, x.dim()))
        y = _standardize(x, dims, eps)
    else:
        mean = _channel_view(p["running_mean"], x.dim())
        var = _channel_view(p["running_var"], x.dim())
        y = (x - mean) / torch.sqrt(var + eps)
    return _affine_channels(y, p)


def ref_instance_norm(
    x: Tensor, p: dict, training: bool, dtype, *, eps: float = 1e-5, track: bool = False, batched_rank: int
) -> Tensor:
    """Ulyanov et al.: per (sample, channel) over the spatial dims; running stats in eval when tracked."""
    unbatched = x.dim() == batched_rank - 1
    if unbatched:
        x = x.unsqueeze(0)
    if training or not track:
        y = _standardize(x, tuple(range(2, x.dim())), eps)
    else:
        mean = _channel_view(p["running_mean"], x.dim())
        var = _channel_view(p["running_var"], x.dim())
        y = (x - mean) / torch.sqrt(var + eps)
    y = _affine_channels(y, p)
    return y.squeeze(0) if unbatched else y


def ref_group_norm(x: Tensor, p: dict, training: bool, dtype, *, num_groups: int, eps: float = 1e-5) -> Tensor:
    """Wu & He: per (sample, group of C/G consecutive channels) over (C/G, *spatial)."""
    n = x.shape[0]
    g = x.reshape(n, num_groups, -1)
    y = _standardize(g, (2,), eps).reshape(x.shape)
    return _affine_channels(y, p)


def ref_layer_norm(x: Tensor, p: dict, training: bool, dtype, *, ndims: int, eps: float = 1e-5) -> Tensor:
    """Ba et al.: per sample over the trailing ``ndims`` dims, per-element affine."""
    y = _standardize(x, tuple(range(x.dim() - ndims, x.dim())), eps)
    if p.get("weight") is not None:
        y = y * p["weight"]
    if p.get("bias") is not None:
        y = y + p["bias"]
    return y


def ref_channel_layer_norm_formula(x: Tensor, p: dict, training: bool, dtype, *, eps: float = 1e-5) -> Tensor:
    """Channel LayerNorm by hand: at every position, standardize the C values of dim 1."""
    return _affine_channels(_standardize(x, (1,), eps), p)


def ref_channel_layer_norm_permute(x: Tensor, p: dict, training: bool, dtype, *, eps: float = 1e-5) -> Tensor:
    """Channel LayerNorm the ConvNeXt way: permute to channels-last, F.layer_norm(C), permute back."""
    rank = x.dim()
    to_last = (0, *range(2, rank), 1)
    back = (0, rank - 1, *range(1, rank - 1))
    y = F.layer_norm(x.permute(to_last), (x.shape[1],), p.get("weight"), p.get("bias"), eps)
    return y.permute(back)


def ref_rms_norm(x: Tensor, p: dict, training: bool, dtype, *, ndims: int, eps: float | None = None) -> Tensor:
    """Zhang & Sennrich, torch's convention: x / sqrt(mean(x^2) + eps) * weight; eps=None -> finfo(dtype).eps."""
    if eps is None:
        eps = torch.finfo(dtype).eps
    dims = tuple(range(x.dim() - ndims, x.dim()))
    y = x / torch.sqrt((x * x).mean(dim=dims, keepdim=True) + eps)
    if p.get("weight") is not None:
        y = y * p["weight"]
    return y


def ref_local_response_norm(
    x: Tensor, p: dict, training: bool, dtype, *, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> Tensor:
    """The closed formula, channel by channel, zero padded at the ends:

    b_c = a_c / (k + alpha/n * sum_{j = c - n//2}^{c + (n-1)//2} a_j^2) ** beta
    """
    c_total = x.shape[1]
    out = []
    for c in range(c_total):
        lo, hi = c - size // 2, c + (size - 1) // 2
        s = torch.zeros_like(x[:, 0])
        for j in range(lo, hi + 1):
            if 0 <= j < c_total:  # zero padding: channels outside [0, C) add nothing
                s = s + x[:, j] ** 2
        out.append(x[:, c] / (k + alpha / size * s) ** beta)
    return torch.stack(out, dim=1)


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    id: str
    name: str  # registry name (canonical)
    features: int | tuple[int, ...] | None
    kwargs: dict
    shapes: tuple[tuple[int, ...], ...]
    references: tuple[Reference, ...]
    twin: Callable[[], nn.Module] | None = None

    def build(self, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
        """The normlab module, through the registry, with random parameters and running stats."""
        module = normlab.create_norm(self.name, self.features, **self.kwargs)
        randomize(module, seed)
        return module.to(dtype)

    def build_twin(self, module: nn.Module) -> nn.Module | None:
        """The torch twin holding ``module``'s exact state (loaded strictly), in the same dtype and mode."""
        if self.twin is None:
            return None
        twin = self.twin().to(_module_dtype(module))
        twin.load_state_dict(module.state_dict(), strict=True)
        return twin.train(module.training)

    @property
    def mode_dependent(self) -> bool:
        """Whether eval computes something else than train: only norms holding running statistics."""
        return getattr(self.build(), "running_mean", None) is not None

    def __str__(self) -> str:  # pytest ids
        return self.id


def _module_dtype(module: nn.Module) -> torch.dtype:
    for t in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
        return t.dtype
    return torch.float64


@torch.no_grad()
def randomize(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial parameters and running statistics, so references see them."""
    gen = torch.Generator().manual_seed(1000 + seed)
    for name, t in module.named_parameters():
        if name.endswith("weight"):
            t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=torch.float64))
        else:
            t.copy_(0.5 * torch.randn(t.shape, generator=gen, dtype=torch.float64))
    for name, t in module.named_buffers():
        if name.endswith("running_mean"):
            t.copy_(0.3 * torch.randn(t.shape, generator=gen, dtype=torch.float64))
        elif name.endswith("running_var"):
            t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=torch.float64))


def make_input(shape: tuple[int, ...], dtype: torch.dtype = torch.float64, seed: int = 0, shift: float = 0.5) -> Tensor:
    """Gaussian input with a per-channel offset and scale (statistics are not ~(0, 1) already)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if len(shape) >= 2:
        c = shape[1]
        view = [1] * len(shape)
        view[1] = c
        x = x * torch.linspace(0.5, 2.0, c, dtype=torch.float64).view(view) + shift * torch.arange(
            c, dtype=torch.float64
        ).view(view)
    return x.to(dtype)


def reference_params(module: nn.Module, requires_grad: bool = False) -> dict:
    """The module's weight/bias/running stats as float64 copies (leaves if ``requires_grad``)."""
    p: dict = {}
    for key in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(module, key, None)
        if isinstance(t, Tensor):
            t = t.detach().to(torch.float64).clone()
            if requires_grad and isinstance(getattr(module, key), nn.Parameter):
                t.requires_grad_(True)
        p[key] = t
    return p


def _bn_case(dim: int, id_: str, shapes, **kwargs) -> Case:
    eps = kwargs.get("eps", 1e-5)
    track = kwargs.get("track_running_stats", True)
    return Case(
        id=id_,
        name=f"batchnorm{dim}d",
        features=3,
        kwargs=kwargs,
        shapes=shapes,
        references=(partial(ref_batch_norm, eps=eps, track=track),),
        twin=partial(getattr(nn, f"BatchNorm{dim}d"), 3, **kwargs),
    )


def _in_case(dim: int, id_: str, shapes, c: int = 3, **kwargs) -> Case:
    eps = kwargs.get("eps", 1e-5)
    track = kwargs.get("track_running_stats", False)
    return Case(
        id=id_,
        name=f"instancenorm{dim}d",
        features=c,
        kwargs=kwargs,
        shapes=shapes,
        references=(partial(ref_instance_norm, eps=eps, track=track, batched_rank=dim + 2),),
        twin=partial(getattr(nn, f"InstanceNorm{dim}d"), c, **kwargs),
    )


def _gn_case(id_: str, c: int, shapes, num_groups: int | None = None, group_size: int | None = None, **kwargs) -> Case:
    g = num_groups if num_groups is not None else c // group_size
    ctor = {"num_groups": num_groups} if num_groups is not None else {"group_size": group_size}
    return Case(
        id=id_,
        name="groupnorm",
        features=c,
        kwargs={**ctor, **kwargs},
        shapes=shapes,
        references=(partial(ref_group_norm, num_groups=g, eps=kwargs.get("eps", 1e-5)),),
        twin=partial(nn.GroupNorm, g, c, **kwargs),
    )


def _ln_case(id_: str, normalized_shape, shapes, **kwargs) -> Case:
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return Case(
        id=id_,
        name="layernorm",
        features=normalized_shape,
        kwargs=kwargs,
        shapes=shapes,
        references=(partial(ref_layer_norm, ndims=len(ns), eps=kwargs.get("eps", 1e-5)),),
        twin=partial(nn.LayerNorm, normalized_shape, **kwargs),
    )


def _cln_case(name: str, id_: str, c: int, shapes, **kwargs) -> Case:
    eps = kwargs.get("eps", 1e-5)
    return Case(
        id=id_,
        name=name,
        features=c,
        kwargs=kwargs,
        shapes=shapes,
        # No torch twin: the ConvNeXt permute recipe in float64, and the formula by hand.
        references=(partial(ref_channel_layer_norm_permute, eps=eps), partial(ref_channel_layer_norm_formula, eps=eps)),
    )


def _rms_case(id_: str, normalized_shape, shapes, **kwargs) -> Case:
    ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return Case(
        id=id_,
        name="rmsnorm",
        features=normalized_shape,
        kwargs=kwargs,
        shapes=shapes,
        references=(partial(ref_rms_norm, ndims=len(ns), eps=kwargs.get("eps")),),
        twin=partial(nn.RMSNorm, normalized_shape, **kwargs),
    )


def _lrn_case(id_: str, shapes, size: int, **kwargs) -> Case:
    return Case(
        id=id_,
        name="localresponsenorm",
        features=None,
        kwargs={"size": size, **kwargs},
        shapes=shapes,
        references=(partial(ref_local_response_norm, size=size, **kwargs),),
        twin=partial(nn.LocalResponseNorm, size, **kwargs),
    )


# Shapes: BN2d (2, 3, 4, 4) has 16 spatial values per (n, c) row, which is the
# size at which normlab's fast batch-statistics road kicks in; (3, 3, 2, 3) is
# below it (torch's kernel). BN1d (2, 3, 16) likewise; (6, 3) is 2D input.
CASES: tuple[Case, ...] = (
    # --- batch norm
    _bn_case(1, "bn1d", ((6, 3), (2, 3, 16))),
    _bn_case(1, "bn1d-noaffine-notrack", ((6, 3), (2, 3, 5)), affine=False, track_running_stats=False),
    _bn_case(1, "bn1d-cumulative", ((6, 3), (2, 3, 16)), momentum=None),
    _bn_case(2, "bn2d", ((2, 3, 4, 4), (3, 3, 2, 3))),
    _bn_case(2, "bn2d-noaffine", ((2, 3, 4, 4),), affine=False),
    _bn_case(2, "bn2d-notrack", ((2, 3, 4, 4), (3, 3, 2, 3)), track_running_stats=False),
    _bn_case(2, "bn2d-cumulative", ((2, 3, 4, 4), (3, 3, 2, 3)), momentum=None),
    _bn_case(2, "bn2d-m0.3-eps1e-3", ((2, 3, 4, 4),), momentum=0.3, eps=1e-3),
    _bn_case(3, "bn3d", ((2, 3, 2, 2, 4), (2, 3, 1, 2, 3))),
    _bn_case(3, "bn3d-cumulative-noaffine", ((2, 3, 2, 2, 4),), momentum=None, affine=False),
    # --- layer norm (trailing dims)
    _ln_case("ln", 5, ((2, 3, 5), (4, 5))),
    _ln_case("ln-2dims", (3, 5), ((2, 3, 5),)),
    _ln_case("ln-noaffine", 5, ((2, 3, 5),), elementwise_affine=False),
    _ln_case("ln-nobias-eps1e-3", 5, ((2, 3, 5),), bias=False, eps=1e-3),
    # --- channel layer norm
    _cln_case("layernorm2d", "ln2d", 4, ((2, 4, 3, 3),)),
    _cln_case("layernorm2d", "ln2d-noaffine", 4, ((2, 4, 3, 3),), elementwise_affine=False),
    _cln_case("layernorm2d", "ln2d-nobias-eps1e-3", 4, ((2, 4, 3, 3),), bias=False, eps=1e-3),
    _cln_case("layernorm3d", "ln3d", 3, ((2, 3, 2, 2, 3),)),
    # --- group norm
    _gn_case("gn", 4, ((2, 4, 3, 3), (3, 4, 5), (3, 4)), num_groups=2),
    _gn_case("gn-groupsize", 6, ((2, 6, 3, 3),), group_size=3),
    _gn_case("gn-groupsize1-noaffine", 4, ((2, 4, 3, 3),), group_size=1, affine=False),
    _gn_case("gn-1group-eps1e-3", 4, ((2, 4, 3, 3),), num_groups=1, eps=1e-3),
    # --- instance norm
    _in_case(1, "in1d", ((2, 3, 5), (3, 5))),
    _in_case(1, "in1d-affine-track", ((2, 3, 5), (3, 5)), affine=True, track_running_stats=True),
    _in_case(2, "in2d", ((2, 3, 3, 3),)),
    _in_case(2, "in2d-affine", ((2, 3, 3, 3),), affine=True),
    _in_case(2, "in2d-track", ((2, 3, 3, 3),), track_running_stats=True),
    _in_case(2, "in2d-affine-track", ((2, 3, 3, 3), (3, 3, 3)), affine=True, track_running_stats=True),
    _in_case(2, "in2d-affine-track-cumulative", ((2, 3, 3, 3),), affine=True, track_running_stats=True, momentum=None),
    _in_case(3, "in3d", ((2, 2, 2, 2, 3),), c=2),
    _in_case(3, "in3d-affine-track", ((2, 2, 2, 2, 3),), c=2, affine=True, track_running_stats=True),
    # --- RMS norm
    _rms_case("rms-epsNone", 5, ((2, 3, 5), (4, 5))),
    _rms_case("rms-eps1e-6", 5, ((2, 3, 5),), eps=1e-6),
    _rms_case("rms-2dims-eps1e-2", (3, 5), ((2, 3, 5),), eps=1e-2),
    _rms_case("rms-noaffine", 5, ((2, 3, 5),), elementwise_affine=False),
    # --- local response norm (alpha large so the normalization is far from identity)
    _lrn_case("lrn3", ((2, 5, 3, 3),), size=3, alpha=0.6, beta=0.75, k=1.0),
    _lrn_case("lrn2-even", ((2, 5, 4), (2, 5, 3, 3)), size=2, alpha=0.4, beta=0.5, k=2.0),
    _lrn_case("lrn5-wide", ((2, 4, 3, 3),), size=5, alpha=1.0, beta=0.9, k=0.5),
    _lrn_case("lrn-defaults", ((2, 6, 2, 3, 2),), size=5),
)

CASE_IDS = [c.id for c in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS), "case ids must be unique"

# (case, shape) pairs: most generic tests run once per input shape.
CASE_SHAPES = [(c, s) for c in CASES for s in c.shapes]
CASE_SHAPE_IDS = [f"{c.id}-{'x'.join(map(str, s))}" for c, s in CASE_SHAPES]

# (case, shape, training): eval mode only where it differs from train (the other
# norms' forward does not look at ``self.training``).
CASE_SHAPE_MODES = [(c, s, t) for c, s in CASE_SHAPES for t in ((True, False) if c.mode_dependent else (True,))]
CASE_SHAPE_MODE_IDS = [f"{'train' if t else 'eval'}-{c.id}-{'x'.join(map(str, s))}" for c, s, t in CASE_SHAPE_MODES]
