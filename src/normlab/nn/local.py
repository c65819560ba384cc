"""Local (windowed) norms: LocalResponseNorm."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..functional import norms as N
from ..functional.checks import InvalidArgumentError, check_positive_int


def _check_finite(value: object, name: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgumentError(f"{owner}: {name} must be a finite number, got {type(value).__name__} {value!r}")
    return float(value)


@torch.fx.wrap
def _local_response_norm(input: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    """LocalResponseNorm's forward: :func:`normlab.functional.local_response_norm` (validates its input)."""
    return N.local_response_norm(input, size, alpha, beta, k)


class LocalResponseNorm(nn.LocalResponseNorm):
    r"""Local response normalization across channels (Krizhevsky et al., 2012), torch's form.

    .. math:: b_c = a_c \left(k + \frac{\alpha}{n} \sum_{c'} a_{c'}^2\right)^{-\beta}

    The sum runs over the ``n = size`` channels ``c - n//2 .. c + (n-1)//2``
    (zero-padded at the ends). torch divides by ``n`` and defaults ``k=1``;
    the paper uses ``k=2, n=5, alpha=1e-4, beta=0.75`` without dividing
    (pass ``alpha * n`` to match it). Same arguments as
    :class:`torch.nn.LocalResponseNorm`, validated where the formula breaks:
    ``size`` a positive int; ``alpha >= 0`` and ``k > 0`` (then the base
    ``k + alpha/n * sum`` is >= k > 0; a negative one has no real power, and
    with ``k = 0`` an all-zero window, common after a ReLU, gives 0/0); all finite.

    Shape: input ``(N, C, *)`` with at least 3 dims, output the same.

    Example::

        >>> import torch, normlab
        >>> normlab.nn.LocalResponseNorm(5)(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        owner = "LocalResponseNorm"
        check_positive_int(size, "size", owner)
        if _check_finite(alpha, "alpha", owner) < 0:
            raise InvalidArgumentError(
                f"{owner}: alpha must be >= 0 (the window's sum of squares is scaled by alpha / size and added to "
                f"k, then raised to -beta: a negative base has no real power), got {alpha!r}; the default is 1e-4"
            )
        _check_finite(beta, "beta", owner)
        if _check_finite(k, "k", owner) <= 0:
            raise InvalidArgumentError(
                f"{owner}: k must be > 0 (with k <= 0 an all-zero window, e.g. after a ReLU, divides 0 by 0), "
                f"got {k!r}; torch's default is 1.0, the paper's 2.0"
            )
        super().__init__(size, alpha, beta, k)

    def forward(self, input: Tensor) -> Tensor:
        return _local_response_norm(input, self.size, self.alpha, self.beta, self.k)
