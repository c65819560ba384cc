"""Mixtures of normalizers: norms that learn which statistics to normalize with.

:class:`SwitchableNorm` (Luo et al. 2019) mixes the IN, LN and BN statistics
with learned softmax weights. The math lives in
:mod:`normlab.functional.mixture`; the module holds the parameters, the
running BN statistics and the decision which statistics source to use.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..functional.checks import InvalidArgumentError
from ..functional.mixture import check_switchable_input, num_components, switchable_norm
from ..functional.stats import track_batch
from .base import RunningStatsNorm


@torch.fx.wrap
def _switchable_norm(
    input: Tensor,
    mean_weight: Tensor,
    var_weight: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    num_features: int,
    using_bn: bool,
    use_batch_stats: bool,
    update: bool,
    momentum: float | None,
    eps: float,
) -> Tensor:
    """SwitchableNorm's forward (one fx leaf): validate, normalize, then fold the batch into the running stats."""
    check_switchable_input(input, num_features)
    running = not use_batch_stats and running_mean is not None  # eval with running statistics
    y, batch = switchable_norm(
        input,
        mean_weight,
        var_weight,
        weight,
        bias,
        running_mean=running_mean if running else None,
        running_var=running_var if running else None,
        using_bn=using_bn,
        eps=eps,
    )
    if update and batch is not None:  # last: only once the output exists
        track_batch((running_mean, running_var), num_batches_tracked, batch, momentum)
    return y


class SwitchableNorm(RunningStatsNorm):
    r"""Switchable Normalization: a learned softmax mixture of the IN, LN and BN statistics.

    Luo, Ren, Peng, Zhang & Li, "Differentiable Learning-to-Normalize via
    Switchable Normalization", ICLR 2019, arXiv:1806.10779 (official code:
    github.com/switchablenorms/Switchable-Normalization).

    For input ``x`` of shape ``(N, C, *spatial)`` with ``S`` spatial positions:

    .. math::

        \mu_{in}(n, c) = \frac{1}{S}\sum_s x_{ncs}, \quad
        \sigma^2_{in}(n, c) = \frac{1}{S}\sum_s (x_{ncs} - \mu_{in})^2

        \mu_{ln}(n), \sigma^2_{ln}(n): \text{over } (C, *spatial), \quad
        \mu_{bn}(c), \sigma^2_{bn}(c): \text{over } (N, *spatial)

        \hat\mu = \sum_k w_k \mu_k, \quad \hat\sigma^2 = \sum_k w'_k \sigma^2_k, \quad
        w = \mathrm{softmax}(\text{mean\_weight}), \; w' = \mathrm{softmax}(\text{var\_weight})

        y = \gamma \frac{x - \hat\mu}{\sqrt{\hat\sigma^2 + \epsilon}} + \beta

    with ``k`` over (IN, LN, BN) in this order (the order of the weight
    vectors, as in the official code). Reduced dims: IN per (n, c) over
    ``*spatial``; LN per n over ``(C, *spatial)``; BN per c over ``(N,
    *spatial)``. Every variance is biased (normalizing). The input is read
    once for the IN moments; the LN and BN moments are pooled from them
    exactly (``var = mean(var_in) + mean((mean_in - mean)^2)``, the
    paper's ``mean(var_in + mean_in^2) - mean^2`` without its cancellation).

    Statistics source: in training the BN component is the batch's, and its
    mean and *unbiased* variance are folded into ``running_mean`` /
    ``running_var`` exactly as :class:`torch.nn.BatchNorm2d` does; in eval
    (with ``track_running_stats``) the BN component is the running statistics
    while IN and LN are still computed per sample. ``mean_weight`` and
    ``var_weight`` are learned logits, initialized equal (ones, as the official
    code: a uniform mixture).

    Differences from the official code, on purpose: the IN variance is the
    biased one (the official ``x.var`` is unbiased, NaN for one spatial
    position), running_var starts at 1 (official: 0), and the official
    ``using_moving_average=False`` path (raw sums never divided) is not copied;
    one class serves 3-D, 4-D and 5-D input (the official code has one per rank).

    Args:
        num_features: C, the channel dim (dim 1) of the input.
        eps: added to the mixed variance. Default: 1e-5 (the paper's).
        momentum: weight of the new batch in the running BN statistics, in
            torch's form ``running = (1 - momentum) * running + momentum * batch``;
            ``None``: cumulative average. Default: 0.1, the official code's
            Keras-form 0.9 converted (``1 - 0.9``); its 1-D and 3-D classes use
            0.997 (pass ``momentum=0.003`` to match them).
        affine: learn the per-channel ``weight`` (gamma) and ``bias`` (beta).
            Default: True.
        track_running_stats: keep running BN statistics for eval; without them
            eval uses the batch's BN statistics too. Default: True. Ignored
            (there is nothing to track) with ``using_bn=False``.
        using_bn: mix the BN statistics too (3 logits); ``False`` mixes only IN
            and LN (2 logits): per-sample statistics, no running buffers, and
            train and eval compute the same function. Default: True.
        last_gamma: initialize ``weight`` to zeros (the official option for the
            last norm of a residual block, so each block starts as the identity);
            needs ``affine=True``. Default: False.

    Attributes:
        mean_weight, var_weight: the logits ``(3,)`` (or ``(2,)``) of the
            mixtures of means and of variances.
        weight, bias: gamma and beta ``(C,)`` (None if not ``affine``).
        running_mean, running_var: ``(C,)``, the BN component's running mean
            and unbiased variance (None if not tracked).

    Shape:
        - Input: :math:`(N, C, *)` with at least one spatial dim (3-D, 4-D,
          5-D). 2-D input ``(N, C)`` raises a ``ValueError``: instance
          statistics need spatial positions.
        - Output: same shape, dtype and memory format as the input.

    Examples::

        >>> import torch
        >>> from normlab.nn import SwitchableNorm
        >>> m = SwitchableNorm(8)
        >>> x = torch.randn(4, 8, 6, 6)
        >>> m(x).shape
        torch.Size([4, 8, 6, 6])
        >>> torch.softmax(m.mean_weight.detach(), 0)  # uniform at init: IN, LN, BN
        tensor([0.3333, 0.3333, 0.3333])
        >>> int(m.num_batches_tracked), m.eval()(x).shape
        (1, torch.Size([4, 8, 6, 6]))
        >>> SwitchableNorm(8, using_bn=False).mean_weight.shape  # IN and LN only
        torch.Size([2])
    """

    using_bn: bool
    last_gamma: bool

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        using_bn: bool = True,
        last_gamma: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        if last_gamma and not affine:
            raise InvalidArgumentError(
                "SwitchableNorm: last_gamma=True zero-initializes the affine weight, but affine=False; "
                "pass affine=True or last_gamma=False"
            )
        # Plain attributes (no tensors), read by _running_buffers() and
        # reset_parameters() while the base constructor runs.
        self.using_bn = bool(using_bn)
        self.last_gamma = bool(last_gamma)
        tracking = bool(track_running_stats) and self.using_bn
        super().__init__(num_features, eps, momentum, affine, tracking, device, dtype)
        if not self.using_bn:  # the attributes exist (None), as for BatchNorm without tracking
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
        k = num_components(self.using_bn)
        self.mean_weight = nn.Parameter(torch.empty(k, device=device, dtype=dtype))
        self.var_weight = nn.Parameter(torch.empty(k, device=device, dtype=dtype))
        self.reset_parameters()

    def _running_buffers(self):
        # Without a BN component there are no batch statistics to track.
        return super()._running_buffers() if self.using_bn else {}

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.affine and self.last_gamma:
            nn.init.zeros_(self.weight)
        # The logits are created after the base constructor's first call to this method.
        if "mean_weight" in self._parameters:
            nn.init.ones_(self.mean_weight)
            nn.init.ones_(self.var_weight)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, using_bn={self.using_bn}, last_gamma={self.last_gamma}"

    def forward(self, input: Tensor) -> Tensor:
        running_mean, running_var = self.running_buffers() if self.using_bn else (None, None)
        return _switchable_norm(
            input,
            self.mean_weight,
            self.var_weight,
            self.weight,
            self.bias,
            running_mean,
            running_var,
            self.num_batches_tracked,
            self.num_features,
            self.using_bn,
            self.use_batch_stats(),
            self.updates_running(),
            self.momentum,
            self.eps,
        )
