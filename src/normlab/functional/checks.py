"""Input validation shared by every normlab function and module.

Errors name what was expected, what came, and (where there is one) the fix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


class InputDTypeError(TypeError, ValueError):
    """A tensor of the wrong dtype: catchable as ``TypeError`` or ``ValueError``."""


class InvalidArgumentError(ValueError, TypeError):
    """A constructor or function argument of the wrong type or value: catchable as ``ValueError`` or ``TypeError``."""


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
    """``num_groups`` must divide ``num_channels`` (an :class:`InvalidArgumentError`, a ValueError)."""
    if num_groups <= 0:
        raise InvalidArgumentError(f"num_groups must be a positive integer, got {num_groups}")
    if num_channels % num_groups != 0:
        raise InvalidArgumentError(
            f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups}); "
            f"divisors of {num_channels}: {[d for d in range(1, num_channels + 1) if num_channels % d == 0]}"
        )


_BATCH_ADVICE = "use a larger batch, call .eval(), or use a per-sample norm (GroupNorm, LayerNorm)"


def check_enough_values(count: int, x: Tensor, what: str, advice: str = _BATCH_ADVICE) -> None:
    """Batch statistics need at least two values per statistic in training.

    Exactly one value is an error (its variance is 0/0 after Bessel's
    correction, and the output would be all zeros); zero values (an empty
    batch) are not: the output is empty, as torch's. ``advice`` is the fix
    (the default suits batch statistics).
    """
    if count == 1:
        raise ValueError(
            f"Expected more than 1 value per {what} when training, got input size {tuple(x.shape)}; {advice}"
        )


class MixedDTypeError(InputDTypeError, RuntimeError):
    """Input and parameters of different dtypes where torch rejects them (torch raises ``RuntimeError``).

    Catchable as ``RuntimeError`` (torch's type for this error), ``TypeError`` or ``ValueError``.
    """


def check_param_dtypes(x: Tensor, params: dict[str, Tensor | None], what: str) -> None:
    """The parameters/buffers in ``params`` must have ``x``'s dtype, or be float32 with half-precision ``x``.

    torch's CPU kernels accept exactly these combinations (bfloat16/float16
    input with float32 parameters is its mixed-precision road) and raise
    ``RuntimeError: mixed dtype (CPU)`` otherwise; this names the tensors and the fix.

    >>> import torch
    >>> check_param_dtypes(torch.ones(2, dtype=torch.bfloat16), {"weight": torch.ones(2)}, "Norm")  # mixed road
    >>> check_param_dtypes(torch.ones(2, dtype=torch.float64), {"weight": torch.ones(2)}, "Norm")
    Traceback (most recent call last):
    ...
    normlab.functional.checks.MixedDTypeError: Norm: input of dtype torch.float64 does not match weight of dtype ...
    """
    for name, p in params.items():
        if p is None or p.dtype == x.dtype:
            continue
        if p.dtype == torch.float32 and x.dtype in (torch.bfloat16, torch.float16):
            continue
        raise MixedDTypeError(
            f"{what}: input of dtype {x.dtype} does not match {name} of dtype {p.dtype}; convert the input "
            f"(input.to({p.dtype})) or the module (module.to({x.dtype})); a float32 module also accepts "
            f"bfloat16/float16 input"
        )


# ------------------------------------------------------------ arguments


def check_int(value: object, name: str, owner: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or an :class:`InvalidArgumentError` naming what came (and the fix)."""
    kind = "a positive int" if minimum == 1 else "a non-negative int" if minimum == 0 else f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            raise InvalidArgumentError(f"{owner}: {name} must be an int, got the float {value!r}; pass {int(value)}")
        raise InvalidArgumentError(f"{owner}: {name} must be {kind}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise InvalidArgumentError(f"{owner}: {name} must be {kind}, got {value}")
    return value


def check_positive_int(value: object, name: str, owner: str) -> int:
    """``value`` as a positive int (:func:`check_int` with minimum 1)."""
    return check_int(value, name, owner, 1)


def check_eps(eps: object, owner: str, allow_zero: bool = True, added_to: str = "the variance") -> float:
    """``eps`` as a finite float >= 0 (> 0 unless ``allow_zero``); ``added_to`` says where it goes, for the message."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise InvalidArgumentError(f"{owner}: eps must be a number, got {type(eps).__name__} {eps!r}")
    e = float(eps)
    if not math.isfinite(e) or e < 0 or (e == 0 and not allow_zero):
        want = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise InvalidArgumentError(
            f"{owner}: eps must be {want} (it is added to {added_to}), got {eps!r}; the default is 1e-5"
        )
    return e


def check_momentum(momentum: object, owner: str) -> float | None:
    """``momentum`` as None (cumulative average) or a float in [0, 1] (torch's form)."""
    if momentum is None:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise InvalidArgumentError(
            f"{owner}: momentum must be a float in [0, 1] or None, got {type(momentum).__name__}"
        )
    m = float(momentum)
    if not (0.0 <= m <= 1.0):  # also False for NaN
        raise InvalidArgumentError(
            f"{owner}: momentum must be in [0, 1] (torch's form: running = (1 - m) * running + m * batch) "
            f"or None (cumulative average), got {momentum!r}; a Keras-style momentum k is 1 - k here"
        )
    return m


def check_number(
    value: object, name: str, owner: str, *, low: float = 0.0, high: float | None = None, open_low: bool = False
) -> float:
    """``value`` as a finite float in ``[low, high]`` (``low`` excluded with ``open_low``), else an error.

    >>> check_number(0.5, "lr", "LARS", open_low=True)
    0.5
    >>> check_number(0, "lr", "LARS", open_low=True)
    Traceback (most recent call last):
    ...
    normlab.functional.checks.InvalidArgumentError: LARS: lr must be finite and > 0, got 0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{owner}: {name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low or (open_low and v == low) or (high is not None and v > high):
        lo = f"> {low:g}" if open_low else f">= {low:g}"
        span = lo if high is None else f"{lo} and <= {high:g}"
        raise InvalidArgumentError(f"{owner}: {name} must be finite and {span}, got {value!r}")
    return v


def check_bool(value: object, name: str, owner: str, optional: bool = False) -> bool | None:
    """``value`` as a bool (or None with ``optional``), else an :class:`InvalidArgumentError` naming what came."""
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        kind = "a bool or None" if optional else "a bool"
        raise InvalidArgumentError(f"{owner}: {name} must be {kind}, got {type(value).__name__} {value!r}")
    return value
