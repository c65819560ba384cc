r"""Whitening norms: decorrelate groups of channels, not only standardize them.

:class:`IterNorm` (Huang et al., CVPR 2019) whitens groups of consecutive
channels with batch statistics by a few Newton-Schulz steps
(:func:`normlab.functional.whitening.iter_norm`). Rank-agnostic (one class for
``(N, C)`` .. ``(N, C, D, H, W)``), on :class:`~normlab.nn.base.RunningStatsNorm`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..functional import whitening as NW
from ..functional.checks import check_channels, check_min_rank, check_positive_int, check_tensor
from .base import RunningStatsNorm


@torch.fx.wrap
def _iter_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_wm: Tensor | None,
    num_batches_tracked: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    use_batch_stats: bool,
    momentum: float | None,
    eps: float,
    group_size: int,
    T: int,
    num_features: int,
) -> Tensor:
    # One fx leaf: validation, the data-dependent guard and the running update stay out of fx traces.
    check_tensor(input)
    check_min_rank(input, 2, "IterNorm")
    check_channels(input, num_features, "IterNorm")
    return NW.iter_norm(
        input, running_mean, running_wm, weight, bias, use_batch_stats, momentum, eps, group_size, T,
        num_batches_tracked,
    )  # fmt: skip


def _eye_(t: Tensor) -> None:
    """Identity matrices in the trailing two dims of ``t`` (the running whitening matrix's init)."""
    with torch.no_grad():
        t.zero_()
        t.diagonal(dim1=-2, dim2=-1).fill_(1)


class IterNorm(RunningStatsNorm):
    r"""Iterative Normalization: whiten groups of channels by Newton-Schulz steps (Huang et al., CVPR 2019).

    Huang, Zhou, Zhu, Liu & Shao, "Iterative Normalization: Beyond
    Standardization towards Efficient Whitening", CVPR 2019,
    arXiv:1904.03441 (official code: github.com/huangleiBuaa/IterNorm).

    The channels are split into ``G = C / d`` groups of ``d = group_size``
    consecutive channels. For each group, ``X`` in R^{d x M} are its values
    over the ``M = N * prod(spatial)`` samples of the batch (reduced dims:
    N and the spatial dims; the d channels are coupled):

    .. math::

        \Sigma = \tfrac{1}{M} X_c X_c^T + \epsilon I, \quad
        \Sigma_N = \Sigma / \mathrm{tr}(\Sigma), \quad
        P_0 = I, \quad P_k = \tfrac{3}{2} P_{k-1} - \tfrac{1}{2} P_{k-1}^3 \Sigma_N \ (k = 1..T),

    .. math::

        W = P_T / \sqrt{\mathrm{tr}(\Sigma)}, \quad y = \gamma \odot (W X_c) + \beta

    with ``X_c`` centered by the batch mean and a per-channel affine
    (``gamma = 1``, ``beta = 0`` at init). ``W -> Sigma^{-1/2}`` (ZCA) as
    ``T`` grows; with the paper's ``T = 5`` it whitens only partly: the
    output covariance has eigenvalues in (0, 1], non-decreasing in ``T``
    (about 0.95-0.98 for ``d = 16`` and 0.5-0.67 for ``d = 64`` on white
    Gaussian data). Large ``T`` is not always better: after convergence the
    iteration amplifies rounding errors unless ``Sigma``'s condition number is
    below ~2.44, so it drifts and finally diverges (float32 from ``T ~ 10``
    for ``d = 64`` and condition number 4e4; see
    :func:`~normlab.functional.whitening.newton_schulz_whitening`).
    ``T = 0`` gives ``W = I / sqrt(tr Sigma)``; ``group_size = 1`` is exactly
    BatchNorm (``Sigma_N = 1`` is the iteration's fixed point).

    Running statistics (eval mode): ``running_mean`` ``(C,)`` and the running
    whitening matrix ``running_wm`` ``(G, d, d)`` (the official code's names;
    init zeros and the identity), each an EMA in torch's form
    ``running = (1 - momentum) running + momentum batch`` of the batch mean
    and of ``W`` itself (as the official code; no Bessel factor), ``momentum
    = None`` a cumulative average. Eval computes ``y = running_wm (x -
    running_mean)`` and the affine. (The official code stores
    ``running_mean`` as ``(G, d, 1)`` and ``weight``/``bias`` as ``(1, C, 1,
    1)``: such checkpoints load, reshaped.)

    Numerics: statistics and the iteration in float32 at least (float64
    stays float64), output in the input's dtype and memory format;
    plain autograd through the iteration (no in-place on saved tensors, so
    double backward and eval backward work). In eager mode a diverged
    iteration (``tr(W Sigma W^T) > d``, or a zero-variance group with
    ``eps = 0``) raises a ``ValueError`` before the running statistics
    change (one host sync per training step; skipped under
    ``torch.compile``/``torch.export``).

    Args:
        num_features: C, the channel dim (dim 1) of the input.
        group_size: d, channels whitened together; must divide C (groups of
            unequal size are not supported: the error lists the valid sizes).
            Larger than C means one group of all C channels. Default: 64 (the
            paper's ImageNet setting).
        T: Newton steps, a non-negative int. Default: 5.
        eps: added to the covariance's diagonal. Default: 1e-5.
        momentum: weight of the new batch in the running statistics (torch's
            form), ``None`` for the cumulative average. Default: 0.1.
        affine: learn a per-channel ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        track_running_stats: keep running statistics for eval; without them
            eval uses batch statistics too. Default: True.

    Shape:
        input ``(N, C, *spatial)`` (2-D ``(N, C)`` to 5-D), output the same.

    Example::

        >>> import torch, normlab
        >>> m = normlab.nn.IterNorm(8, group_size=4, T=5)
        >>> m
        IterNorm(8, group_size=4, T=5, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)
        >>> y = m(torch.randn(64, 8, 4, 4))
        >>> m.running_wm.shape
        torch.Size([2, 4, 4])
        >>> yc = y.transpose(0, 1).reshape(2, 4, -1)                 # (G, d, M)
        >>> cov = yc @ yc.transpose(1, 2) / yc.shape[-1]
        >>> ev = torch.linalg.eigvalsh(cov.double())
        >>> bool((ev > 0.5).all() and (ev < 1 + 1e-4).all())          # partly whitened, eigenvalues <= 1
        True
    """

    group_size: int
    T: int

    def __init__(
        self,
        num_features: int,
        group_size: int = 64,
        T: int = 5,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        owner = type(self).__name__
        c = check_positive_int(num_features, "num_features", owner)
        check_positive_int(group_size, "group_size", owner)
        # Plain attributes before Module.__init__: the base registers the running
        # buffers from _running_buffers(), which needs the group layout.
        self.group_size = NW.check_group_size(c, min(group_size, c), owner)
        self.T = NW.check_iterations(T, owner)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)

    @property
    def num_groups(self) -> int:
        return self.num_features // self.group_size

    def _running_buffers(self):
        d = self.group_size
        return {
            "running_mean": ((self.num_features,), nn.init.zeros_),
            "running_wm": ((self.num_features // d, d, d), _eye_),
        }

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, group_size={self.group_size}, T={self.T}, eps={self.eps}, "
            f"momentum={self.momentum}, affine={self.affine}, track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        # The official code's layouts: running_mean (G, d, 1), weight/bias (1, C, 1, ...).
        # Reshaped only when they are exactly those (anything else fails torch's shape check).
        c, d = self.num_features, self.group_size
        key = prefix + "running_mean"
        t = state_dict.get(key)
        if isinstance(t, Tensor) and tuple(t.shape) == (c // d, d, 1):
            state_dict[key] = t.reshape(c)
        for name in ("weight", "bias"):
            t = state_dict.get(prefix + name)
            if isinstance(t, Tensor) and t.dim() >= 2 and tuple(t.shape) == (1, c) + (1,) * (t.dim() - 2):
                state_dict[prefix + name] = t.reshape(c)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)

    def forward(self, input: Tensor) -> Tensor:
        running_mean, running_wm = self.running_buffers()
        return _iter_norm(
            input, running_mean, running_wm, self.num_batches_tracked if self.updates_running() else None,
            self.weight, self.bias, self.use_batch_stats(), self.momentum, self.eps, self.group_size, self.T,
            self.num_features,
        )  # fmt: skip
