"""Local (windowed) norms: LocalResponseNorm."""

from __future__ import annotations

from torch import Tensor, nn

from .. import functional as NF


class LocalResponseNorm(nn.LocalResponseNorm):
    r"""Local response normalization across channels (Krizhevsky et al., 2012), torch's form.

    .. math:: b_c = a_c \left(k + \frac{\alpha}{n} \sum_{c'} a_{c'}^2\right)^{-\beta}

    The sum runs over the ``n = size`` channels ``c - n//2 .. c + (n-1)//2``
    (zero-padded at the ends). torch divides by ``n`` and defaults ``k=1``;
    the paper uses ``k=2, n=5, alpha=1e-4, beta=0.75`` without dividing
    (pass ``alpha * n`` to match it). Same arguments as
    :class:`torch.nn.LocalResponseNorm`.

    Shape: input ``(N, C, *)`` with at least 3 dims, output the same.

    Example::

        >>> import torch, normlab
        >>> normlab.nn.LocalResponseNorm(5)(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
    """

    def forward(self, input: Tensor) -> Tensor:
        return NF.local_response_norm(input, self.size, self.alpha, self.beta, self.k)
