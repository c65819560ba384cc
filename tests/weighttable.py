"""The weight-normalization test table: one or more :class:`WeightNormCase` per ``normlab.WEIGHT_NORMS`` entry.

A case declares how to build the plain layer (``factory``), the keywords for
the entry's ``apply``, the input of one forward, an independent float64
``reference(original, module, kwargs) -> effective weight`` written from the
paper's formula (plain torch, never calling normlab; ``module`` is the plain
layer, read only for its layout: type and ``groups``), and capabilities the
generic tests in ``test_weight_norms.py`` read instead of names.

Techniques add their own block of cases below (``# <name>`` ... ``# </name>``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Reference = Callable[[Tensor, nn.Module, dict], Tensor]


@dataclass(frozen=True)
class WeightNormCase:
    id: str
    entry: str  # canonical WEIGHT_NORMS name
    factory: Callable[[], nn.Module]  # the plain layer
    kwargs: dict  # for apply_weight_norm(entry, module, **kwargs)
    input_shape: tuple[int, ...]
    reference: Reference
    name: str = "weight"
    #: state_dict keys the weight normalization adds (in place of ``name``)
    original_keys: tuple[str, ...] = ("parametrizations.weight.original",)
    double_backward: bool = True
    #: torch's parametrized modules refuse pickling ("only supported through state_dict()")
    pickles: bool = False
    #: heavy tests (compile) run on these
    representative: bool = False
    skips: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return self.id


def plain_forward(module: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """``module``'s own op (its hyperparameters, its bias) with ``weight`` in place of its weight."""
    bias = module.bias
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        op = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[weight.dim() - 2]
        return op(x, weight, bias, module.stride, module.padding, module.output_padding, module.groups, module.dilation)
    if isinstance(module, nn.modules.conv._ConvNd):
        assert module.padding_mode == "zeros", "plain_forward handles zero padding only"
        op = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[weight.dim() - 2]
        return op(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)
    raise TypeError(f"plain_forward: no functional form for {type(module).__name__}")


def filter_index_sets(weight: Tensor, module: nn.Module) -> list[tuple]:
    """The index (a tuple usable as ``weight[idx]``) of the filter feeding each output unit.

    Linear/Conv: weight (C_out, C_in/groups, *k), filter o is ``weight[o]``.
    ConvTranspose: weight (C_in, C_out/groups, *k), output o = g * (C_out/groups) + j
    is fed by rows g * C_in/groups ... (g + 1) * C_in/groups of column j.
    """
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        groups = module.groups
        rows = weight.shape[0] // groups
        return [(slice(g * rows, (g + 1) * rows), j) for g in range(groups) for j in range(weight.shape[1])]
    return [(o,) for o in range(weight.shape[0])]


@torch.no_grad()
def randomize_filters(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every weight entry a random value, with a per-filter offset and scale (so WS is not ~identity)."""
    gen = torch.Generator().manual_seed(seed)
    w = module.weight
    new = torch.randn(w.shape, generator=gen, dtype=torch.float64)
    for k, idx in enumerate(filter_index_sets(new, module)):
        new[idx] = new[idx] * (0.2 + 0.3 * k) + (0.5 * k - 1.0)
    w.copy_(new)
    if module.bias is not None:
        module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=gen, dtype=torch.float64))
    return module


# <weight_standardization>
def ws_reference(original: Tensor, module: nn.Module, kwargs: dict) -> Tensor:
    """W_hat_i = (W_i - mu_i) / (sigma_i + eps) per filter, sigma with divisor I - correction (Qiao et al. 2019)."""
    eps = kwargs.get("eps", 1e-5)
    correction = kwargs.get("correction", 1)  # the official PyTorch code: torch.std_mean (unbiased)
    w = original.to(torch.float64)
    out = torch.empty_like(w)
    for idx in filter_index_sets(w, module):
        f = w[idx]
        n = f.numel()
        mu = f.sum() / n
        sigma = (((f - mu) ** 2).sum() / (n - correction)).sqrt()
        out[idx] = (f - mu) / (sigma + eps)
    return out


def _ws(id, factory, shape, representative=False, **kwargs) -> WeightNormCase:
    return WeightNormCase(
        id=f"ws-{id}",
        entry="weight_standardization",
        factory=factory,
        kwargs=kwargs,
        input_shape=shape,
        reference=ws_reference,
        representative=representative,
    )


WS_CASES = (
    _ws("linear", lambda: nn.Linear(6, 4), (5, 6)),
    _ws("linear-nobias-3d-input", lambda: nn.Linear(6, 4, bias=False), (2, 3, 6)),
    _ws("conv1d", lambda: nn.Conv1d(3, 4, 3), (2, 3, 7)),
    _ws("conv2d", lambda: nn.Conv2d(3, 4, 3, padding=1), (2, 3, 5, 5), representative=True),
    _ws("conv2d-grouped", lambda: nn.Conv2d(4, 6, 3, groups=2), (2, 4, 5, 5)),
    _ws("conv2d-depthwise", lambda: nn.Conv2d(4, 4, 3, groups=4), (2, 4, 5, 5)),
    _ws("conv2d-biased-std", lambda: nn.Conv2d(3, 4, 3), (2, 3, 5, 5), correction=0),
    _ws("conv2d-eps0", lambda: nn.Conv2d(3, 4, 2), (2, 3, 4, 4), eps=0.0),
    _ws("conv3d", lambda: nn.Conv3d(2, 3, 2), (1, 2, 3, 3, 3)),
    _ws("convT1d", lambda: nn.ConvTranspose1d(3, 4, 3), (2, 3, 5)),
    _ws("convT2d-stride2", lambda: nn.ConvTranspose2d(3, 4, 3, stride=2), (2, 3, 3, 3), representative=True),
    _ws("convT2d-grouped", lambda: nn.ConvTranspose2d(4, 6, 3, groups=2), (2, 4, 3, 3), representative=True),
    _ws("convT3d-grouped", lambda: nn.ConvTranspose3d(4, 4, 2, groups=2), (1, 4, 2, 2, 2)),
)
# </weight_standardization>

CASES: tuple[WeightNormCase, ...] = (*WS_CASES,)
assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
