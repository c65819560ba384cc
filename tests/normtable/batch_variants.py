"""Table cases of the batch-statistics variants without a torch twin (GhostBatchNorm so far).

The references are written from the papers' formulas in plain float64 torch
arithmetic and never call normlab.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import ErrorInput, NormInfo, SampleInput


def ghost_batch_norm_reference(virtual_batch_size: int, eps: float = 1e-5):
    """Hoffer et al. 2017, Algorithm 1: BN on each ghost batch ``x[kB:(k+1)B]``; running statistics in eval.

    ``state`` holds ``weight``/``bias`` when affine and ``running_mean``/``running_var``
    when tracked; without running statistics eval uses the ghost batches too.
    """

    def ref(inputs: tuple[Tensor, ...], state: dict, training: bool, dtype: torch.dtype) -> Tensor:
        (x,) = inputs
        c = x.shape[1]
        view = (1, c) + (1,) * (x.dim() - 2)
        dims = (0, *range(2, x.dim()))  # per channel: over the ghost batch's samples and the spatial dims
        if training or "running_mean" not in state:
            pieces = []
            for start in range(0, x.shape[0], virtual_batch_size):
                xb = x[start : start + virtual_batch_size]
                mu = xb.mean(dims, keepdim=True)
                var = ((xb - mu) ** 2).mean(dims, keepdim=True)  # biased, as the paper's BN
                pieces.append((xb - mu) / torch.sqrt(var + eps))
            xhat = torch.cat(pieces)
        else:
            xhat = (x - state["running_mean"].view(view)) / torch.sqrt(state["running_var"].view(view) + eps)
        if "weight" in state:
            xhat = xhat * state["weight"].view(view) + state["bias"].view(view)
        return xhat

    ref.__name__ = f"ghost_batch_norm_reference(B={virtual_batch_size})"
    return ref


def _ints(dtype: torch.dtype, seed: int) -> tuple[Tensor, ...]:
    return (torch.ones(8, 8, 4, 4, dtype=torch.long),)


_CTOR_ERRORS = (
    ErrorInput(
        "vbs-zero", ValueError, r"virtual_batch_size must be a positive int, got 0", ctor={"virtual_batch_size": 0}
    ),
    ErrorInput(
        "vbs-float",
        TypeError,
        r"virtual_batch_size must be an int, got the float 4.0; pass 4",
        ctor={"virtual_batch_size": 4.0},
    ),
    ErrorInput(
        "vbs-str",
        TypeError,
        r"virtual_batch_size must be a positive int, got str '4'",
        ctor={"virtual_batch_size": "4"},
    ),
    ErrorInput("momentum-out-of-range", ValueError, r"momentum must be in \[0, 1\]", ctor={"momentum": 1.5}),
)

_ERRORS_4D = _CTOR_ERRORS + (
    ErrorInput("rank-1", ValueError, r"GhostBatchNorm expected 2D or 3D or 4D or 5D input, got 1D", shapes=((8,),)),
    ErrorInput(
        "rank-6",
        ValueError,
        r"GhostBatchNorm expected 2D or 3D or 4D or 5D input, got 6D",
        shapes=((2, 8, 1, 1, 1, 2),),
    ),
    ErrorInput(
        "channels", ValueError, r"GhostBatchNorm expected input with 8 channels at dim 1, got 5", shapes=((8, 5, 4, 4),)
    ),
    ErrorInput(
        "ghost-batch-of-one-value",
        ValueError,
        r"more than 1 value per channel in every ghost batch.*\[4, 4, 1\].*drop_last=True.*\.eval\(\)",
        shapes=((9, 8, 1, 1),),
    ),
    ErrorInput("empty-batch", ValueError, r"expected a non-empty batch", shapes=((0, 8, 4, 4),)),
    ErrorInput("integer-input", TypeError, r"expected a floating-point input", make=_ints),
)

_ERRORS_2D = (
    ErrorInput(
        "ghost-batch-of-one-sample",
        ValueError,
        r"ghost batches of \[4, 4, 1\] samples.*batch_size % virtual_batch_size != 1",
        shapes=((9, 6),),
    ),
    ErrorInput(
        "virtual-batch-of-one",
        ValueError,
        r"ghost batches of \[1, 1, 1, 1\] samples",
        ctor={"virtual_batch_size": 1},
        shapes=((4, 6),),
    ),
    ErrorInput(
        "channels", ValueError, r"GhostBatchNorm expected input with 6 channels at dim 1, got 4", shapes=((8, 4),)
    ),
)

INFOS: tuple[NormInfo, ...] = (
    NormInfo(
        id="ghostbn-4d",
        name="ghostbatchnorm",
        features=8,
        kwargs={"virtual_batch_size": 4},
        samples=(
            SampleInput(((8, 8, 5, 5),), "even-2x4"),
            SampleInput(((10, 8, 4, 4),), "uneven-4-4-2"),
            SampleInput(((3, 8, 4, 4),), "batch-smaller-than-ghost"),
        ),
        references=(ghost_batch_norm_reference(4),),
        train_eval_differ=True,
        loads_checkpoint=lambda: torch.nn.BatchNorm2d(8),
        errors=_ERRORS_4D,
        representative=True,
    ),
    NormInfo(
        id="ghostbn-momentum-none",
        name="ghostbatchnorm",
        features=4,
        kwargs={"virtual_batch_size": 4, "momentum": None},
        samples=(SampleInput(((8, 4, 3, 3),)), SampleInput(((6, 4, 3, 3),), "uneven-4-2")),
        references=(ghost_batch_norm_reference(4),),
        train_eval_differ=True,
        loads_checkpoint=lambda: torch.nn.BatchNorm2d(4, momentum=None),
    ),
    NormInfo(
        id="ghostbn-no-affine",
        name="ghostbatchnorm",
        features=4,
        kwargs={"virtual_batch_size": 4, "affine": False, "eps": 1e-3},
        samples=(SampleInput(((6, 4, 3, 3),), "uneven-4-2"),),
        references=(ghost_batch_norm_reference(4, eps=1e-3),),
        train_eval_differ=True,
        loads_checkpoint=lambda: torch.nn.BatchNorm2d(4, eps=1e-3, affine=False),
    ),
    NormInfo(
        id="ghostbn-no-tracking",
        name="ghostbatchnorm",
        features=4,
        kwargs={"virtual_batch_size": 3, "track_running_stats": False},
        samples=(SampleInput(((6, 4, 3, 3),), "even-2x3"), SampleInput(((7, 4, 3, 3),), "uneven-3-3-1")),
        references=(ghost_batch_norm_reference(3),),
        # Without running statistics eval normalizes by ghost batches as well.
        train_eval_differ=False,
        loads_checkpoint=lambda: torch.nn.BatchNorm2d(4, track_running_stats=False),
    ),
    NormInfo(
        id="ghostbn-2d-3d",
        name="ghostbatchnorm",
        features=6,
        kwargs={"virtual_batch_size": 4},
        samples=(
            SampleInput(((12, 6),), "2d-even-3x4"),
            SampleInput(((10, 6),), "2d-uneven-4-4-2"),
            SampleInput(((9, 6, 5),), "3d-uneven-4-4-1"),
        ),
        references=(ghost_batch_norm_reference(4),),
        train_eval_differ=True,
        channels_last=False,  # 2-D/3-D input has no channels-last layout
        loads_checkpoint=lambda: torch.nn.BatchNorm1d(6),
        errors=_ERRORS_2D,
    ),
    NormInfo(
        id="ghostbn-5d",
        name="ghostbatchnorm",
        features=3,
        kwargs={"virtual_batch_size": 2},
        samples=(SampleInput(((4, 3, 2, 3, 3),), "even-2x2"), SampleInput(((5, 3, 2, 2, 3),), "uneven-2-2-1")),
        references=(ghost_batch_norm_reference(2),),
        train_eval_differ=True,
        loads_checkpoint=lambda: torch.nn.BatchNorm3d(3),
    ),
    NormInfo(
        # virtual_batch_size >= N: exactly BatchNorm, so torch's BatchNorm2d is its twin here.
        id="ghostbn-whole-batch",
        name="ghostbatchnorm",
        features=8,
        kwargs={"virtual_batch_size": 32},
        samples=(SampleInput(((8, 8, 4, 4),)), SampleInput(((32, 8, 2, 2),), "batch-equal-ghost")),
        references=(ghost_batch_norm_reference(32),),
        twin=lambda: torch.nn.BatchNorm2d(8),
        train_eval_differ=True,
        loads_checkpoint=lambda: torch.nn.BatchNorm2d(8),
    ),
)
