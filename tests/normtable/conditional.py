"""The conditional-recovery family: SPADE (forward(input, condition)).

The reference is written from the paper (Park et al. 2019, eq. 1: the
activation normalized by batch statistics, then modulated per position by
``gamma`` and ``beta`` predicted from the semantic map) and the official
code's structure (NVlabs/SPADE ``models/networks/normalization.py``: nearest
resize, conv -> ReLU -> two convs, ``1 + gamma``), in plain float64 torch:
the statistics by direct reductions (the running ones in eval), the nearest
resize by indexing with ``floor(i * h / H)``, ``F.conv2d`` and ``relu``.

The sample shapes avoid the one corner where torch's nearest resize and the
exact ``floor(i * h / H)`` disagree: torch computes the scale ``h / H`` in
float32, which rounds for some sizes (e.g. h=26 -> H=22); ratios 1/2, 2, 1
and 5/12, 7/12 agree exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ErrorInput, NormInfo, SampleInput, make_input, randomize

LABEL_NC = 3
HIDDEN = 8


def nearest_resize(m: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize by indexing: output (i, j) reads input (floor(i * h / H), floor(j * w / W))."""
    (h, w), (big_h, big_w) = m.shape[2:], size
    rows = torch.arange(big_h) * h // big_h
    cols = torch.arange(big_w) * w // big_w
    return m.index_select(2, rows).index_select(3, cols)


def spade_reference(
    x: Tensor, condition: Tensor, state: dict, training: bool, norm: str = "bn", eps: float = 1e-5, k: int = 3
) -> Tensor:
    """SPADE in float64 from the paper: norm(x) * (1 + gamma(m)) + beta(m), m the condition at x's size."""
    if norm == "bn":
        dims = (0, 2, 3)  # per channel over (N, H, W)
    elif norm == "in":
        dims = (2, 3)  # per (sample, channel) over (H, W)
    else:
        raise KeyError(norm)
    if norm == "bn" and not training and "param_free_norm.running_mean" in state:
        mean = state["param_free_norm.running_mean"].reshape(1, -1, 1, 1)
        var = state["param_free_norm.running_var"].reshape(1, -1, 1, 1)
    else:
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).square().mean(dims, keepdim=True)  # biased, by its definition
    xhat = (x - mean) / torch.sqrt(var + eps)
    m = nearest_resize(condition, tuple(x.shape[2:]))
    pad = k // 2
    a = torch.relu(F.conv2d(m, state["mlp_shared.0.weight"], state["mlp_shared.0.bias"], padding=pad))
    gamma = F.conv2d(a, state["mlp_gamma.weight"], state["mlp_gamma.bias"], padding=pad)
    beta = F.conv2d(a, state["mlp_beta.weight"], state["mlp_beta.bias"], padding=pad)
    return xhat * (1 + gamma) + beta


def _ref(norm: str = "bn", eps: float = 1e-5, k: int = 3):
    def ref(inputs, state, training, dtype):
        x, condition = inputs
        return spade_reference(x, condition, state, training, norm=norm, eps=eps, k=k)

    return ref


class OfficialSPADE(nn.Module):
    """The official SPADE module's structure and names in torch.nn (NVlabs/SPADE), for checkpoints and outputs.

    ``param_free_norm`` is ``torch.nn.BatchNorm2d(affine=False)`` (the official
    "spadebatch"; "spadesyncbatch" has the same buffers) or
    ``InstanceNorm2d(affine=False)`` ("spadeinstance"); ``nhidden`` is the
    official hard-coded 128 unless given.
    """

    def __init__(self, norm_nc: int, label_nc: int, nhidden: int = 128, ks: int = 3, norm: str = "batch") -> None:
        super().__init__()
        if norm == "batch":
            self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)
        else:
            self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        pw = ks // 2
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, nhidden, kernel_size=ks, padding=pw), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(nhidden, norm_nc, kernel_size=ks, padding=pw)
        self.mlp_beta = nn.Conv2d(nhidden, norm_nc, kernel_size=ks, padding=pw)

    def forward(self, x: Tensor, segmap: Tensor) -> Tensor:
        normalized = self.param_free_norm(x)
        segmap = F.interpolate(segmap, size=x.size()[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


@torch.no_grad()
def randomize_spade(module: nn.Module, seed: int = 0) -> None:
    """Running statistics as the default; conv weights ~ N(0, 1/fan_in), biases ~ 0.2 N(0, 1).

    The default randomization (weights in [0.5, 1.5]) would make gamma of
    order fan_in^2 ~ 10^4 here: scale-aware weights keep gamma and beta O(1),
    so the outputs and gradients the references are checked on are O(1) too.
    """
    randomize(module, seed)
    gen = torch.Generator().manual_seed(3000 + seed)
    for name, p in module.named_parameters():
        if name.startswith(("mlp_shared", "mlp_gamma", "mlp_beta")):
            if name.endswith("weight"):
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(fan_in))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64))


def one_hot_map(n: int, size: tuple[int, int], label_nc: int = LABEL_NC, seed: int = 0) -> Tensor:
    """A random semantic map as the official code feeds it: one-hot float (N, label_nc, h, w)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, label_nc, (n, *size), generator=gen)
    return F.one_hot(labels, label_nc).permute(0, 3, 1, 2).to(torch.float64)


def soft_map(n: int, size: tuple[int, int], label_nc: int = LABEL_NC, seed: int = 0) -> Tensor:
    """A soft map (per-pixel class probabilities): differentiable, values in (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(2.0 * torch.randn(n, label_nc, *size, generator=gen, dtype=torch.float64), dim=1)


def _sample(x_shape, cond_size, kind: str = "one-hot", desc: str = "") -> SampleInput:
    n = x_shape[0]
    build = one_hot_map if kind == "one-hot" else soft_map

    def make(dtype, seed):
        return make_input(x_shape, dtype, seed=seed), build(n, cond_size, seed=seed + 10).to(dtype)

    shapes = (x_shape, (n, LABEL_NC, *cond_size))
    return SampleInput(
        shapes,
        desc=desc or f"{'x'.join(map(str, x_shape))}-{kind}{cond_size[0]}x{cond_size[1]}",
        make=make,
        differentiable=(True, kind != "one-hot"),
    )


def _int_labels(dtype, seed):
    return make_input((4, 8, 6, 6), dtype, seed=seed), torch.randint(0, LABEL_NC, (4, 6, 6))


def _int_one_hot(dtype, seed):
    labels = torch.randint(0, LABEL_NC, (4, 6, 6))
    return make_input((4, 8, 6, 6), dtype, seed=seed), F.one_hot(labels, LABEL_NC).permute(0, 3, 1, 2)


def _condition_list(dtype, seed):
    return make_input((4, 8, 6, 6), dtype, seed=seed), [[0.0]]


_ONE_HOT_HINT = r"F\.one_hot\(labels, label_nc\)\.permute\(0, 3, 1, 2\)\.float\(\)"

_ERRORS = (
    ErrorInput(
        "condition-wrong-channels",
        ValueError,
        r"label_nc=3 channels at dim 1, got 4 .*label_nc=4",
        shapes=((4, 8, 6, 6), (4, 4, 3, 3)),
    ),
    ErrorInput(
        "condition-wrong-batch",
        ValueError,
        r"input's batch size 4, got 2 .*nothing is broadcast",
        shapes=((4, 8, 6, 6), (2, 3, 3, 3)),
    ),
    ErrorInput(
        "condition-batch-one-not-broadcast", ValueError, r"batch size 4, got 1", shapes=((4, 8, 6, 6), (1, 3, 3, 3))
    ),
    ErrorInput(
        "condition-3d", ValueError, r"4D condition \(N, label_nc, h, w\).*got 3D", shapes=((4, 8, 6, 6), (4, 3, 3))
    ),
    ErrorInput("condition-int-labels", TypeError, r"floating-point condition.*" + _ONE_HOT_HINT, make=_int_labels),
    ErrorInput("condition-int-one-hot", ValueError, r"got dtype torch\.int64.*" + _ONE_HOT_HINT, make=_int_one_hot),
    ErrorInput("condition-not-a-tensor", TypeError, r"condition to be a torch\.Tensor, got list", make=_condition_list),
    ErrorInput("input-3d", ValueError, r"4D input \(N, C, H, W\), got 3D", shapes=((4, 8, 6), (4, 3, 3, 3))),
    ErrorInput(
        "input-wrong-channels",
        ValueError,
        r"num_features=8 channels at dim 1, got 6",
        shapes=((4, 6, 6, 6), (4, 3, 3, 3)),
    ),
    ErrorInput("hidden-zero", ValueError, r"hidden must be a positive int, got 0", ctor={"hidden": 0}),
    ErrorInput("label-nc-float", TypeError, r"label_nc must be an int, got the float 3\.0", ctor={"label_nc": 3.0}),
    ErrorInput("kernel-size-even", ValueError, r"kernel_size must be odd.*got 2; use 1 or 3", ctor={"kernel_size": 2}),
    ErrorInput(
        "inner-norm-layernorm", ValueError, r"must normalize \(N, C, H, W\).*'gn:1,affine=false'", ctor={"norm": "ln"}
    ),
    ErrorInput("inner-norm-conditional", ValueError, r"must take the input alone", ctor={"norm": "spade:3"}),
    ErrorInput(
        "inner-norm-unknown", ValueError, r"cannot build the inner norm.*unknown norm 'nope'", ctor={"norm": "nope"}
    ),
)

INFOS: tuple[NormInfo, ...] = (
    NormInfo(
        id="spade",
        name="spade",
        features=8,
        kwargs={"label_nc": LABEL_NC, "hidden": HIDDEN},
        samples=(
            _sample((4, 8, 6, 6), (3, 3)),  # the condition at half resolution (upsampled x2)
            _sample((3, 8, 5, 6), (5, 6), kind="soft"),  # same size: used as it is; differentiable
            _sample((2, 8, 3, 4), (6, 8), kind="soft"),  # larger: downsampled
            _sample((2, 8, 12, 12), (5, 7)),  # non-integer ratios 5/12, 7/12
        ),
        references=(_ref(),),
        twin=lambda: OfficialSPADE(8, LABEL_NC, nhidden=HIDDEN),
        train_eval_differ=True,
        loads_checkpoint=lambda: OfficialSPADE(8, LABEL_NC, nhidden=HIDDEN),
        errors=_ERRORS,
        representative=True,
        randomize=randomize_spade,
    ),
    NormInfo(
        id="spade-instance-k5",
        name="spade",
        features=6,
        kwargs={"label_nc": LABEL_NC, "hidden": 4, "kernel_size": 5, "norm": "in:affine=false"},
        samples=(_sample((3, 6, 6, 6), (3, 3)), _sample((2, 6, 5, 4), (5, 4), kind="soft")),
        references=(_ref(norm="in", k=5),),
        twin=lambda: OfficialSPADE(6, LABEL_NC, nhidden=4, ks=5, norm="instance"),
        train_eval_differ=False,  # per-sample statistics, no running ones: eval computes the same
        loads_checkpoint=lambda: OfficialSPADE(6, LABEL_NC, nhidden=4, ks=5, norm="instance"),
        randomize=randomize_spade,
    ),
    NormInfo(
        id="spade-bn-eps-momentum",
        name="spade",
        features=4,
        kwargs={"label_nc": LABEL_NC, "hidden": 4, "norm": "bn:affine=false,eps=1e-3,momentum=0.3"},
        samples=(_sample((5, 4, 4, 4), (2, 2)),),
        references=(_ref(eps=1e-3),),
        train_eval_differ=True,
        randomize=randomize_spade,
    ),
)
