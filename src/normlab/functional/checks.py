"""Input validation shared by every normlab function and module.

Errors name what was expected, what came, and (where there is one) the fix.
"""

from __future__ import annotations

import torch
from torch import Tensor

_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


class InputDTypeError(TypeError, ValueError):
    """A tensor of the wrong dtype: catchable as ``TypeError`` or ``ValueError``."""


def check_tensor(x: object, name: str = "input") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise InputDTypeError(
            f"expected a floating-point {name} (float64, float32, bfloat16 or float16), "
            f"got dtype {x.dtype}; convert it with .float()"
        )
    return x


def check_rank(x: Tensor, allowed: tuple[int, ...], what: str) -> None:
    if x.dim() not in allowed:
        want = " or ".join(f"{d}D" for d in allowed)
        raise ValueError(f"{what} expected {want} input, got {x.dim()}D input of shape {tuple(x.shape)}")


def check_min_rank(x: Tensor, min_dim: int, what: str) -> None:
    if x.dim() < min_dim:
        raise ValueError(
            f"{what} expected input with at least {min_dim} dims (N, C, ...), "
            f"got {x.dim()}D input of shape {tuple(x.shape)}"
        )


def check_channels(x: Tensor, num_channels: int, what: str, dim: int = 1) -> None:
    if x.shape[dim] != num_channels:
        raise ValueError(
            f"{what} expected input with {num_channels} channels at dim {dim}, "
            f"got {x.shape[dim]} (input shape {tuple(x.shape)})"
        )


def check_groups(num_channels: int, num_groups: int) -> None:
    if num_groups <= 0:
        raise ValueError(f"num_groups must be a positive integer, got {num_groups}")
    if num_channels % num_groups != 0:
        raise ValueError(
            f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups}); "
            f"divisors of {num_channels}: {[d for d in range(1, num_channels + 1) if num_channels % d == 0]}"
        )


def check_enough_values(count: int, x: Tensor, what: str) -> None:
    """Batch statistics need at least two values per statistic in training."""
    if count <= 1:
        raise ValueError(
            f"Expected more than 1 value per {what} when training, got input size {tuple(x.shape)}; "
            f"use a larger batch, call .eval(), or use a per-sample norm (GroupNorm, LayerNorm)"
        )


class InvalidArgumentError(ValueError, TypeError):
    """A constructor or function argument of the wrong type or value: catchable as ``ValueError`` or ``TypeError``."""
