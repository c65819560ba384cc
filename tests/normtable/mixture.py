"""The mixtures family: SwitchableNorm (IN/LN/BN statistics mixed by learned softmax weights).

The reference is written from the paper's formula (Luo et al. 2019, eq. 3-5)
in plain float64 torch: each component's moments by its own direct reduction
over the input (not pooled from the IN moments, as normlab computes them).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import ErrorInput, NormInfo, SampleInput, randomize


def _var(x: Tensor, dims: tuple[int, ...], mean: Tensor) -> Tensor:
    """Biased variance by its definition: the mean squared deviation."""
    return (x - mean).square().mean(dims, keepdim=True)


def switchable_reference(x: Tensor, state: dict, training: bool, eps: float, using_bn: bool) -> Tensor:
    """Switchable Norm in float64 from the paper: mu = sum_k w_k mu_k, var = sum_k w'_k var_k, k in (IN, LN, BN)."""
    n, c = x.shape[0], x.shape[1]
    xf = x.reshape(n, c, -1)  # (N, C, S)
    mean_in = xf.mean(2, keepdim=True)  # (N, C, 1)
    var_in = _var(xf, (2,), mean_in)
    mean_ln = xf.mean((1, 2), keepdim=True)  # (N, 1, 1)
    var_ln = _var(xf, (1, 2), mean_ln)
    means, variances = [mean_in, mean_ln], [var_in, var_ln]
    if using_bn:
        if training or "running_mean" not in state:
            mean_bn = xf.mean((0, 2), keepdim=True)  # (1, C, 1)
            var_bn = _var(xf, (0, 2), mean_bn)
        else:  # eval with running statistics: BN's inference statistics (the unbiased running variance)
            mean_bn = state["running_mean"].reshape(1, c, 1)
            var_bn = state["running_var"].reshape(1, c, 1)
        means.append(mean_bn)
        variances.append(var_bn)
    w_mean = torch.softmax(state["mean_weight"], 0)
    w_var = torch.softmax(state["var_weight"], 0)
    mean = sum(w_mean[k] * m for k, m in enumerate(means))
    var = sum(w_var[k] * v for k, v in enumerate(variances))
    y = (xf - mean) / torch.sqrt(var + eps)
    if "weight" in state:
        y = y * state["weight"].reshape(1, c, 1) + state["bias"].reshape(1, c, 1)
    return y.reshape(x.shape)


def _ref(eps: float = 1e-5, using_bn: bool = True):
    def ref(inputs, state, training, dtype):
        return switchable_reference(inputs[0], state, training, eps, using_bn)

    return ref


@torch.no_grad()
def randomize_switchable(module: nn.Module, seed: int = 0) -> None:
    """The default randomization, then logits of varied size: mixtures far from uniform and from one-hot."""
    randomize(module, seed)
    gen = torch.Generator().manual_seed(2000 + seed)
    for p in (module.mean_weight, module.var_weight):
        p.copy_(1.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))


def _int_input(dtype, seed):
    return (torch.ones(2, 8, 3, 3, dtype=torch.long),)


_ERRORS = (
    ErrorInput("2d-input", ValueError, r"at least one spatial dim.*got 2D input of shape \(4, 8\)", shapes=((4, 8),)),
    ErrorInput("wrong-channels", ValueError, r"expected input with 8 channels at dim 1, got 6", shapes=((2, 6, 3, 3),)),
    ErrorInput("one-value-per-channel", ValueError, r"more than 1 value per channel", shapes=((1, 8, 1, 1),)),
    ErrorInput("int-input", TypeError, r"floating-point input", make=_int_input),
    ErrorInput("negative-eps", ValueError, r"eps must be a finite number >= 0", ctor={"eps": -1.0}),
    ErrorInput("keras-momentum-out-of-range", ValueError, r"momentum must be in \[0, 1\]", ctor={"momentum": 1.5}),
    ErrorInput(
        "last-gamma-no-affine",
        ValueError,
        r"last_gamma=True .* affine=False",
        ctor={"affine": False, "last_gamma": True},
    ),
)

INFOS: tuple[NormInfo, ...] = (
    NormInfo(
        id="switchablenorm",
        name="switchablenorm",
        features=8,
        kwargs={},
        samples=(
            SampleInput(((4, 8, 5, 6),)),
            SampleInput(((3, 8, 7),), desc="3d"),
            SampleInput(((2, 8, 3, 4, 2),), desc="5d"),
        ),
        references=(_ref(),),
        train_eval_differ=True,
        errors=_ERRORS,
        representative=True,
        randomize=randomize_switchable,
    ),
    NormInfo(
        id="switchablenorm-in-ln",
        name="switchablenorm",
        features=6,
        kwargs={"using_bn": False},
        samples=(SampleInput(((3, 6, 4, 5),)), SampleInput(((2, 6, 9),), desc="3d")),
        references=(_ref(using_bn=False),),
        train_eval_differ=False,  # per-sample statistics only
        randomize=randomize_switchable,
    ),
    NormInfo(
        id="switchablenorm-untracked-noaffine",
        name="switchablenorm",
        features=4,
        kwargs={"affine": False, "track_running_stats": False, "eps": 1e-3},
        samples=(SampleInput(((5, 4, 3, 3),)),),
        references=(_ref(eps=1e-3),),
        train_eval_differ=False,  # no running statistics: eval uses the batch's BN statistics too
        randomize=randomize_switchable,
    ),
)
