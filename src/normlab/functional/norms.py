"""The standard norms, fast paths: what ``normlab.nn`` modules call.

Every function here computes exactly what the function of the same name in
:mod:`.generic` computes (tested in float64); it reaches the numbers by a
faster road where one exists:

- ``batch_norm`` (training, contiguous CPU input): per-(sample, channel)
  moments from two native vectorized reductions, pooled by the parallel
  variance formula, then one fused pass (``torch.batch_norm`` in inference
  form with the batch statistics). The backward is torch's own batch-norm
  backward kernel, which is differentiable again (double backward). Other
  input: torch's kernel. Either way the batch statistics come back as a
  :class:`.stats.Moments` (:func:`batch_norm_with_stats`) for the one
  running-statistics EMA (:func:`.stats.update_running` / ``track_batch``).
- ``instance_norm``: ``group_norm(x, C)`` is the same statistics with a much
  faster native kernel than ``instance_norm``, and it keeps channels_last.
  Channels-last input with gradients: the same forward and an analytic
  backward in the channels-last layout (torch's is ~3x slower there).
- ``group_norm`` / ``instance_norm`` on channels-last input: torch's
  channels-last kernel takes raw moments; its statistics are checked and,
  if ill-conditioned, the kernel reruns on the input shifted by the group
  means it found (:func:`_group_norm_channels_last`), so the result is
  accurate for any mean/std. ``eps=0``: a constant group gives 0, as
  torch's InstanceNorm (:func:`_group_norm_zero_eps`), not NaN.
- ``rms_norm`` (large contiguous float CPU input): one L2-norm reduction and
  the two scalings, block by block in cache, with an analytic backward;
  otherwise torch's fused kernel (``aten._fused_rms_norm``).
- ``channel_layer_norm``: channels-last input is ``layer_norm``'s own layout
  (torch's kernel on the permuted view); contiguous input reduces over C by
  batched GEMVs, with an analytic backward; no permute copies either way.

Roads with a host sync (the raw-moment checks) are eager-only: under
``torch.compile`` and ``torch.export`` (:func:`_compiling`) plain
differentiable ops run instead. No custom autograd Function returns a view,
so the outputs take in-place ops (``torch.relu_``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import InvalidArgumentError, check_enough_values, check_groups, check_min_rank, check_tensor
from .stats import (
    Moments,
    accumulation_dtype,
    apply_moments,
    combine_row_moments,
    estimate_moments,
    moments,
    row_moments,
    track_batch,
    update_running,
)

# The fast batch-statistics path pays two small reductions per (n, c) row; for
# rows shorter than this torch's own kernel is as fast.
_MIN_ROW = 16
# ...and ~70 us of fixed cost (a dozen small ops and one host sync): below this
# many elements torch's kernel is faster (measured on 2-core EPYC, 1 thread:
# (32,16,8,8) 3.1x slower, (32,32,16,16) 0.67x, (32,64,16,16) 0.32x torch's time).
_BN_MIN_NUMEL = 1 << 18


def _compiling() -> bool:
    """True under torch.compile and torch.export: no host syncs, no data-dependent roads."""
    return torch.compiler.is_compiling()


def check_batch_norm_eps(eps: float, batch_stats: bool, what: str = "batch_norm") -> None:
    """torch's rule for batch norm's ``eps``: > 0 with batch statistics, >= 0 with running statistics.

    With batch statistics a constant channel has variance 0 and ``eps`` is all
    that keeps ``1 / sqrt(var + eps)`` finite; running statistics are the
    user's own (a folded model may carry ``eps=0``).
    """
    if batch_stats and not eps > 0:  # also catches NaN
        raise InvalidArgumentError(
            f"{what}: batch_norm eps must be positive during training, but got {eps}; batch statistics of a "
            f"constant channel have variance 0, so pass eps > 0 (the default is 1e-5)"
        )
    if not eps >= 0:
        raise InvalidArgumentError(
            f"{what}: batch_norm eps must be non-negative, but got {eps}; pass eps >= 0 (the default is 1e-5)"
        )


def fast_road_applies(x: Tensor) -> bool:
    """Whether batch statistics of ``x`` may take the fast raw-moment road (eager, contiguous float CPU, long rows)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or _compiling():
        return False
    row = x.numel() // max(x.shape[0] * x.shape[1], 1)
    return x.dim() >= 3 and row >= _MIN_ROW and x.numel() >= _BN_MIN_NUMEL and x.is_contiguous()


def _fast_channel_moments(x: Tensor) -> tuple[Tensor, Tensor] | None:
    """Per-channel (mean, biased var) over (N, *spatial) by the fast road, or None."""
    if not fast_road_applies(x):
        return None
    n, c = x.shape[0], x.shape[1]
    row = x.numel() // max(n * c, 1)
    with torch.no_grad():
        rows = row_moments(x.view(n, c, row))
        if rows is None:
            return None
        return combine_row_moments(*rows, dim=0)


class _BatchNormFromStats(torch.autograd.Function):
    """y = BN(x) given x's own batch statistics (computed outside, without grad).

    Forward is one fused pass; backward is torch's batch-norm backward in
    training form, which accounts for the statistics' dependence on x and is
    itself differentiable (so Hessian-vector products work). The output is a
    new tensor (not a view), so in-place ops on it are safe.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps):
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        ctx.has_bias = bias is not None
        return torch.batch_norm(x, weight, bias, mean, var, False, 0.0, eps, False)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, invstd = ctx.saved_tensors
        mask = [
            ctx.needs_input_grad[0],
            weight is not None and ctx.needs_input_grad[1],
            ctx.has_bias and ctx.needs_input_grad[2],
        ]
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad_out, x, weight, None, None, mean, invstd, True, ctx.eps, mask
        )
        return gx, gw, gb, None, None, None


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _channels_last_format(x: Tensor) -> torch.memory_format | None:
    """``channels_last(_3d)`` if ``x`` is laid out so (and not also contiguous), else None."""
    if x.is_contiguous():
        return None
    for fmt, rank in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if x.dim() == rank and x.is_contiguous(memory_format=fmt):
            return fmt
    return None


def _param_view(p: Tensor | None, x: Tensor) -> Tensor | None:
    return None if p is None else p.view([1, -1] + [1] * (x.dim() - 2))


def _check_channel_params(c: int, what: str, **tensors: Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.shape != (c,):
            raise ValueError(
                f"{what} expected {name} of shape ({c},) for input with {c} channels, got {tuple(t.shape)}"
            )


def batch_norm_with_stats(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    stats_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Moments | None]:
    """BN of ``input`` with its own batch statistics: ``(y, Moments)`` (no running statistics touched).

    The statistics are per channel over (N, *spatial) (mean, *biased*
    variance, count = values per channel), detached, for the running-statistics
    update (:func:`.stats.track_batch`); ``None`` for an empty batch (nothing to
    fold in), and on torch's-kernel road when ``stats_dtype`` is None (the
    caller does not need them). Roads:

    - contiguous float CPU input with rows (values per (n, c)) of at least
      ``_MIN_ROW``: checked raw moments by two native reductions
      (:func:`.stats.row_moments`), pooled exactly, then one fused pass with an
      analytic backward (:class:`_BatchNormFromStats`);
    - under torch.compile/export: plain differentiable ops the compiler fuses;
    - otherwise torch's kernel. Its statistics are read back by handing it
      zero-initialized buffers with momentum 1 (the kernel writes
      ``1 * batch + 0 * buffer``: the batch mean and unbiased variance,
      exactly as it computed them), in ``stats_dtype`` (the running buffers'
      dtype, which the kernel requires).

    >>> import torch
    >>> from normlab.functional import norms
    >>> x = torch.randn(8, 3, 4, 4, dtype=torch.float64)
    >>> y, stats = norms.batch_norm_with_stats(x, None, None, 1e-5, torch.float64)
    >>> bool(torch.allclose(stats.var, x.var((0, 2, 3), correction=0))), stats.count
    (True, 128)
    """
    c = input.shape[1]
    count = input.numel() // c if c else 0
    if input.numel() == 0:
        # torch's contract: an empty batch gives an empty output (and gradients).
        return torch.batch_norm(input, weight, bias, None, None, True, 0.0, eps, False), None
    fast = _fast_channel_moments(input)
    if fast is not None:
        mean, var = fast
        return _BatchNormFromStats.apply(input, weight, bias, mean, var, eps), Moments(mean, var, count)
    if _compiling():
        # Under torch.compile / torch.export: plain differentiable ops that the compiler fuses.
        stats = estimate_moments(input, (0, *range(2, input.dim())))
        y = apply_moments(input, stats, eps, weight, bias)
        return y.to(input.dtype), stats.detach()
    if stats_dtype is None:
        return torch.batch_norm(input, weight, bias, None, None, True, 0.0, eps, False), None
    mean, unbiased = torch.zeros((2, c), dtype=stats_dtype, device=input.device).unbind(0)
    y = torch.batch_norm(input, weight, bias, mean, unbiased, True, 1.0, eps, False)
    return y, Moments(mean, unbiased * ((count - 1) / count), count)


def batch_norm_train(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    momentum: float | Tensor | None,
    eps: float,
) -> Tensor:
    """BN with batch statistics; then (last, the output exists) the batch is folded into the running buffers.

    The input is validated by the caller. ``num_batches_tracked`` (if given)
    counts the batch, an empty one too (as torch's; nothing is folded in);
    ``momentum`` in torch's form, ``None`` for the cumulative average (with
    ``num_batches_tracked``). The update is :func:`.stats.track_batch` with the
    batch's :class:`.stats.Moments`, except on torch's-kernel road with a
    float momentum: there the kernel folds the batch in itself with the same
    EMA (torch's form, unbiased variance), an exact identity that saves
    reading its statistics back (~40 us per call).
    """
    running = (running_mean, running_var)
    ref = next((t for t in running if t is not None), None)
    if (
        ref is not None
        and running_mean is not None
        and running_var is not None
        and isinstance(momentum, float)
        and input.numel()
        and not fast_road_applies(input)
        and not _compiling()
    ):
        y = torch.batch_norm(input, weight, bias, running_mean, running_var, True, momentum, eps, False)
        if num_batches_tracked is not None:
            with torch.no_grad():
                num_batches_tracked.add_(1)
        return y
    y, stats = batch_norm_with_stats(input, weight, bias, eps, None if ref is None else ref.dtype)
    if stats is None or ref is None:  # an empty batch, or nothing to fold into: only counted
        if num_batches_tracked is not None:
            with torch.no_grad():
                num_batches_tracked.add_(1)
        return y
    if momentum is None and num_batches_tracked is None:
        momentum = 0.0  # torch's fallback: no counter, no cumulative average
    track_batch(running, num_batches_tracked, stats, momentum)
    return y


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalization, same signature and semantics as ``torch.nn.functional.batch_norm``.

    In training the running statistics (if given) are updated in place by
    :func:`.stats.update_running` (the one EMA), after the output exists.
    ``momentum`` may also be a 0-dim tensor (the cumulative-average factor
    ``1/num_batches_tracked`` that ``momentum=None`` modules pass).
    """
    check_tensor(input)
    check_min_rank(input, 2, "batch_norm")
    c = input.shape[1]
    _check_channel_params(c, "batch_norm", running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    check_batch_norm_eps(eps, training)
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm with training=False needs running_mean and running_var")
        return torch.batch_norm(input, weight, bias, running_mean, running_var, False, 0.0, eps, False)
    check_enough_values(input.numel() // c if c else 0, input, "channel")
    return batch_norm_train(input, weight, bias, running_mean, running_var, None, momentum, eps)


def group_norm(
    input: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    """Group normalization (``torch.nn.functional.group_norm``) with validated input and accurate roads.

    Channels-last float CPU input runs torch's channels-last kernel with its
    raw-moment statistics checked (:func:`_group_norm_channels_last`);
    ``eps=0`` runs :func:`_group_norm_zero_eps` (a constant group gives 0, not NaN).

    >>> import torch
    >>> from normlab.functional import group_norm
    >>> x = (torch.randn(2, 8, 4, 4) + 1e4).contiguous(memory_format=torch.channels_last)
    >>> y = group_norm(x, 4)   # torch's channels-last kernel: no correct digit here
    >>> bool(y.is_contiguous(memory_format=torch.channels_last)), round(y.std().item(), 1)
    (True, 1.0)
    """
    check_tensor(input)
    check_min_rank(input, 2, "group_norm")
    check_groups(input.shape[1], num_groups)
    _check_channel_params(input.shape[1], "group_norm", weight=weight, bias=bias)
    return _group_norm(input, num_groups, weight, bias, eps)


def _group_norm(input: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    if input.numel() == 0:
        return F.group_norm(input, groups, weight, bias, eps)
    if eps == 0:
        return _group_norm_zero_eps(input, groups, weight, bias)
    if _channels_last_road(input, weight, bias):
        return _group_norm_channels_last(input, groups, weight, bias, eps)[0]
    return F.group_norm(input, groups, weight, bias, eps)


def _channels_last_road(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> bool:
    """Whether ``x`` takes the checked channels-last group-norm road (eager float CPU, parameters of x's dtype)."""
    return (
        _channels_last_format(x) is not None
        and x.dtype in (torch.float32, torch.float64)
        and x.device.type == "cpu"
        and all(p is None or p.dtype == x.dtype for p in (weight, bias))
        and not _compiling()
    )


def _group_norm_zero_eps(x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """Group norm with ``eps = 0``, torch's InstanceNorm convention: a constant group normalizes to 0.

    ``group_norm``'s kernel computes ``1 / sqrt(0 + 0) = inf`` and ``0 * inf =
    NaN`` for a constant group; torch's ``instance_norm`` (which runs the
    batch-norm kernel on the ``(1, N*G, M)`` view) takes ``1/sqrt(0)`` as 0
    there, so the group's output is the bias and its gradient 0. This road is
    that computation (per-channel affine after it unless G = C, where the
    affine goes into the kernel as torch's IN does), so ``eps=0`` gives the
    same finite numbers in every layout, and ``GroupNorm(C, C) == InstanceNorm``
    holds at ``eps=0`` too. Rare (eps=0 is unusual), so its layout copy is accepted.
    """
    n, c = x.shape[0], x.shape[1]
    fmt = _channels_last_format(x)
    per_group = groups == c
    w = weight.repeat(n) if per_group and weight is not None else None
    b = bias.repeat(n) if per_group and bias is not None else None
    y = torch.batch_norm(x.reshape(1, n * groups, -1), w, b, None, None, True, 0.0, 0.0, False).view(x.shape)
    if not per_group:
        if weight is not None:
            y = y * _param_view(weight, y).to(y.dtype)
        if bias is not None:
            y = y + _param_view(bias, y).to(y.dtype)
    return y.contiguous(memory_format=fmt) if fmt is not None else y


@torch.no_grad()
def _instance_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    n, c = x.shape[0], x.shape[1]
    x3 = x.reshape(n, c, -1)
    fast = row_moments(x3) if x.dtype in (torch.float32, torch.float64) and not _compiling() else None
    return fast if fast is not None else moments(x3, -1)


# InstanceNorm needs more than one value per (sample, channel); batch size and eval mode do not help.
_IN_ADVICE = (
    "instance norm normalizes each (sample, channel) over its spatial values, so it needs a spatial size "
    "> 1; use a larger spatial input, or normalize over channels instead (GroupNorm, LayerNorm)"
)


def instance_norm_with_stats(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, need_stats: bool
) -> tuple[Tensor, Moments | None]:
    """IN of batched ``input`` with its own statistics: ``(y, Moments | None)`` (no running statistics touched).

    The statistics (``need_stats``) are what torch's InstanceNorm folds into
    its running buffers: per channel, the mean over the batch of each
    sample's mean and of each sample's *biased* variance, ``count`` = the
    spatial size (so :meth:`.Moments.running_values` gives the mean of the
    per-sample unbiased variances, torch's number; not the pooled variance).
    ``None`` for an empty input.
    """
    n, c = input.shape[0], input.shape[1]
    stats = None
    if need_stats and input.numel() > 0:
        mean, var = _instance_moments(input)
        stats = Moments(mean.mean(0), var.mean(0), input.numel() // (n * c))
    return _instance_norm(input, weight, bias, eps), stats


def _instance_norm(input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    c = input.shape[1]
    if input.numel() == 0:
        return F.group_norm(input, c, weight, bias, eps)
    if eps == 0:
        return _group_norm_zero_eps(input, c, weight, bias)
    # Exact identity: IN is GN with one channel per group (a faster kernel than instance_norm's).
    if not _channels_last_road(input, weight, bias):
        return F.group_norm(input, c, weight, bias, eps)
    if _needs_grad(input, weight, bias):
        # torch's group_norm backward is ~3x slower on channels-last input than
        # the analytic backward below, and layout copies cost ~3 copies each.
        return _InstanceNormChannelsLast.apply(input, weight, bias, eps)
    return _group_norm_channels_last(input, c, weight, bias, eps)[0]


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Instance normalization (``torch.nn.functional.instance_norm`` semantics) for batched input.

    With ``use_input_stats`` the running statistics (if given) are updated
    in place by :func:`.stats.update_running`, after the output exists.
    """
    check_tensor(input)
    check_min_rank(input, 3, "instance_norm")
    n, c = input.shape[0], input.shape[1]
    _check_channel_params(c, "instance_norm", running_mean=running_mean, running_var=running_var)
    _check_channel_params(c, "instance_norm", weight=weight, bias=bias)
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError("instance_norm with use_input_stats=False needs running_mean and running_var")
        return instance_norm_eval(input, running_mean, running_var, weight, bias, eps)
    check_enough_values(input.numel() // (n * c) if n * c else 0, input, "spatial element", _IN_ADVICE)
    running = (running_mean, running_var)
    track = any(t is not None for t in running)
    y, stats = instance_norm_with_stats(input, weight, bias, eps, track)
    if stats is not None:
        update_running(running, stats, momentum)
    return y


def instance_norm_eval(
    input: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """IN with running statistics: the batch-norm formula with the given per-channel statistics.

    The running buffers may be wider than the input (float32 buffers of a
    bfloat16 model: torch's mixed road) or narrower (float32 buffers, float64
    input, which torch's InstanceNorm accepts): the latter are widened.
    """
    if running_mean.dtype != input.dtype and input.dtype == torch.float64:
        running_mean, running_var = running_mean.to(input.dtype), running_var.to(input.dtype)
    return torch.batch_norm(input, weight, bias, running_mean, running_var, False, 0.0, eps, False)


# torch 2.13's channels-last group-norm kernel takes raw moments (E[x^2] - E[x]^2,
# float32 sums for float32 input); measured, its output error is about
# 1.3e-6 * (1 + mean^2 / var) on O(1) outputs (4e-5 at ratio 16, 1.4e-4 at 62,
# no correct digit at 1e6), while the contiguous kernel stays near 1e-6. Above
# this ratio mean^2 / (var + eps) the statistics are recomputed on centered
# input (error ~7e-6 at the threshold, about TOL32).
_CL_RAW_MAX_RATIO = 4.0


def _group_norm_channels_last(
    x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``native_group_norm`` of channels-last ``x``, accurate for any input: ``(y, mean, rstd, shift)``.

    The channels-last kernel's statistics show when its raw moments were
    ill-conditioned (``mean^2 > _CL_RAW_MAX_RATIO * (var + eps)`` for some
    group, one host sync on an (N, G) tensor). Then ``x`` is shifted by the
    per-group mean it found, ``xs = x - shift`` (one elementwise pass in x's
    layout, exact up to one rounding), and the kernel runs again on ``xs``,
    whose mean is ~0: GN is shift invariant per group, so ``GN(xs) = GN(x)``,
    with accurate statistics. ``mean``/``rstd`` (detached) are the statistics
    of ``xs`` (``shift`` None: of ``x``); ``shift`` is ``(N, G)``. The output
    keeps x's layout.

    ``y`` is differentiable (GroupNorm's road): ``native_group_norm`` carries
    torch's own backward and double backward (its channels-last backward
    kernel, given accurate statistics, is as accurate as the contiguous one;
    on the shifted input its ``sum(dy * x) - mean * sum(dy)`` does not cancel
    either), and ``shift`` is a constant (GN's Jacobian does not depend on it).
    No custom autograd Function: no Python in the backward.
    """
    n, c = x.shape[0], x.shape[1]
    m = x.numel() // (n * c)
    y, mean, rstd = torch.native_group_norm(x, weight, bias, n, c, m, groups, eps)
    mean, rstd = mean.detach(), rstd.detach()
    # The raw moments' error is ~ eps32 * E[x^2] = eps32 * (mean^2 + var), and what the output
    # feels is that error relative to var + eps = 1 / rstd^2: so the test is |mean| * rstd
    # against sqrt(ratio) (a max-abs reduction: two small ops and one sync).
    if not bool(torch.linalg.vector_norm(mean * rstd, ord=math.inf) > _CL_RAW_MAX_RATIO**0.5):
        return y, mean, rstd, None
    shift = mean
    xs = x - _group_expand(shift, x, groups)
    y, mean, rstd = torch.native_group_norm(xs, weight, bias, n, c, m, groups, eps)
    return y, mean.detach(), rstd.detach(), shift


def _group_expand(t: Tensor, x: Tensor, groups: int) -> Tensor:
    """Per-(sample, group) ``t`` ``(N, G)`` as ``(N, C, 1, ...)``, broadcasting against ``x``."""
    n, c = x.shape[0], x.shape[1]
    return t.view(n, groups, 1).expand(n, groups, c // groups).reshape([n, c] + [1] * (x.dim() - 2))


class _InstanceNormChannelsLast(torch.autograd.Function):
    """IN of channels-last input: forward by ``native_group_norm`` (G = C), analytic backward.

    With ``xc = x - mean`` per (n, c) over the M spatial values, ``s_g = sum(dy)``
    and ``t = sum(dy * xc)``::

        dx = a * dy - k * xc - a * s_g / M,   a = rstd * w,   k = a * rstd^2 * t / M
        dw = sum_n rstd * t,                  db = sum_n s_g

    (the standard LN/IN backward with ``dy * w``). ``t`` is summed from the
    centered ``xc``, not as ``sum(dy * x) - mean * sum(dy)``, which cancels
    when |mean| >> std. Every pass runs in the channels-last layout, no
    transposing copy. Under ``create_graph`` mean and rstd are recomputed from
    ``x`` with differentiable ops (double backward).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, rstd, shift = _group_norm_channels_last(x, x.shape[1], weight, bias, eps)
        if shift is not None:
            mean = mean + shift  # the statistics of x itself
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.eps, ctx.has_bias = eps, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, rstd = ctx.saved_tensors
        n, c = x.shape[0], x.shape[1]
        dims = tuple(range(2, x.dim()))
        stat_shape = (n, c) + (1,) * len(dims)
        m = x.numel() // (n * c)
        if torch.is_grad_enabled():
            # create_graph: the statistics as differentiable functions of x (stable two-pass).
            mean = x.mean(dims, keepdim=True)
            rstd = torch.rsqrt((x - mean).square().mean(dims, keepdim=True) + ctx.eps)
        else:
            mean, rstd = mean.view(stat_shape), rstd.view(stat_shape)
        xc = x - mean
        s_g = grad_out.sum(dims, keepdim=True)
        t = (grad_out * xc).sum(dims, keepdim=True)
        a = rstd if weight is None else rstd * _param_view(weight, x)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            k = a * rstd.square() * t / m
            if torch.is_grad_enabled():
                gx = torch.addcmul(-a * s_g / m, xc, k, value=-1.0).addcmul(grad_out, a)
            else:
                gx = xc.mul_(-k).sub_(a * s_g / m).addcmul_(grad_out, a)  # xc is not needed after this
        if weight is not None and ctx.needs_input_grad[1]:
            gw = (rstd * t).sum(0).reshape(c)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = s_g.sum(0).reshape(c)
        return gx, gw, gb, None


def layer_norm(
    input: Tensor, normalized_shape, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    """Layer normalization (``torch.nn.functional.layer_norm``) with validated input."""
    check_tensor(input)
    _check_trailing(input, normalized_shape, "layer_norm")
    return _layer_norm(input, normalized_shape, weight, bias, eps)


def _layer_norm(input: Tensor, normalized_shape, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """``F.layer_norm``, except bias without weight: torch 2.13's double backward of that
    case drops d(grad_bias)/d(grad_output), so the bias is added outside the kernel."""
    if weight is None and bias is not None:
        return F.layer_norm(input, normalized_shape, None, None, eps) + bias
    return F.layer_norm(input, normalized_shape, weight, bias, eps)


def _check_trailing(x: Tensor, normalized_shape, what: str) -> None:
    ns = tuple(normalized_shape)
    if x.dim() < len(ns) or tuple(x.shape[x.dim() - len(ns) :]) != ns:
        raise ValueError(
            f"{what} expected input with trailing dims {list(ns)} (shape [*, {', '.join(map(str, ns))}]), "
            f"got input of shape {list(x.shape)}"
        )


def channel_layer_norm(
    input: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    """LayerNorm over dim 1 of ``(N, C, *spatial)`` at every position, per-channel affine.

    Same numbers as ``permute -> layer_norm -> permute`` without the copies;
    keeps the input's memory format. Channels-last input (C innermost) is
    already ``layer_norm``'s layout: torch's kernel runs on the permuted view.
    Otherwise stable two-pass statistics by reductions over dim 1.
    """
    check_tensor(input)
    check_min_rank(input, 2, "channel_layer_norm")
    c = input.shape[1]
    for p, name in ((weight, "weight"), (bias, "bias")):
        if p is not None and p.shape != (c,):
            raise ValueError(f"channel_layer_norm expected {name} of shape ({c},), got {tuple(p.shape)}")
    moved = input.movedim(1, -1)
    if (
        moved.is_contiguous()
        and (weight is None or weight.dtype == input.dtype)
        and (bias is None or bias.dtype == input.dtype)
    ):
        # Exact identity: LN over the last dim of the (N, *spatial, C) view; its
        # output, moved back, has the input's (channels-last) strides.
        return _layer_norm(moved, (c,), weight, bias, eps).movedim(-1, 1)
    if (
        input.device.type == "cpu"
        and input.is_contiguous()
        and input.numel() >= _CLN_MIN_NUMEL
        and input.dtype in (torch.float32, torch.float64)
        and all(p is None or p.dtype == input.dtype for p in (weight, bias))
        and not _compiling()
    ):
        return _ChannelLayerNormContiguous.apply(input, weight, bias, eps)
    x = input.to(accumulation_dtype(input.dtype))
    centered = x - x.mean(1, keepdim=True)
    # ||v||^2 / C is the biased variance; vector_norm reads once, no squared temporary.
    rstd = torch.rsqrt(torch.linalg.vector_norm(centered, dim=1, keepdim=True).square() / c + eps)
    y = centered * rstd
    if weight is not None and bias is not None:
        y = torch.addcmul(_param_view(bias, y).to(y.dtype), y, _param_view(weight, y).to(y.dtype))
    elif weight is not None:
        y = y * _param_view(weight, y).to(y.dtype)
    elif bias is not None:
        y = y + _param_view(bias, y).to(y.dtype)
    return y.to(input.dtype)


# Below this many elements the batched-GEMV road's fixed cost (~60 us of small
# ops) is more than it saves; the plain composite below runs instead.
_CLN_MIN_NUMEL = 1 << 16


class _ChannelLayerNormContiguous(torch.autograd.Function):
    """LN over dim 1 of a contiguous ``(N, C, *spatial)`` x, viewed as ``(N, C, P)``.

    The reductions over C are batched GEMVs (``bmm`` with a row of ones or of
    ``w``, then ``/ C``): the same sums as ``mean(1)``, at memory speed (torch's
    own reduction over a middle dim is several times slower). Stable two-pass
    statistics: ``mean``, then the mean square of ``x - mean``. With
    ``g_w = dy * w``, ``r = rstd``, ``xc = x - mean`` and per-position means over C::

        dx = r * (g_w - mean(g_w) - xhat * mean(g_w * xhat))
           = r * g_w - k * xc - r * mean(g_w),     k = r^3 * mean(g_w * xc)
        dw = sum_{n,p} dy * xc * r,                db = sum_{n,p} dy

    (``mean(g_w * xc)`` from the centered ``xc``, not ``mean(g_w * x) - mean * mean(g_w)``,
    which cancels when |mean| >> std.)

    Under ``create_graph`` the backward uses plain differentiable ops, the
    statistics recomputed from ``x`` (double backward).
    """

    @staticmethod
    def _row(v: Tensor | None, n: int, c: int, like: Tensor) -> Tensor:
        """``(n, 1, c)``: ``v`` (or ones) as the left operand of a batched GEMV.

        Not pre-divided by C: the sum is rounded once when divided, as in ``mean``
        (a rounded 1/C in every term cost up to 6x the error for C = 3).
        """
        row = torch.ones((1, 1, c), dtype=like.dtype) if v is None else v.view(1, 1, c)
        return row.expand(n, 1, c)

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        n, c = x.shape[0], x.shape[1]
        x3 = x.view(n, c, -1)
        ones = _ChannelLayerNormContiguous._row(None, n, c, x)
        mean = torch.bmm(ones, x3).div_(c)  # (n, 1, P)
        # y is allocated in x's shape and worked on through its (n, c, P) view: a
        # custom Function must not return a view it created (autograd forbids
        # in-place ops on such a view, e.g. torch.relu_(y)), so y itself is returned.
        y = torch.empty_like(x)
        y3 = torch.sub(x3, mean, out=y.view(n, c, -1))
        rstd = torch.bmm(ones, y3 * y3).div_(c).add_(eps).rsqrt_()
        y3.mul_(rstd)
        if weight is not None and bias is not None:
            torch.addcmul(bias.view(1, c, 1), y3, weight.view(1, c, 1), out=y3)
        elif weight is not None:
            y3.mul_(weight.view(1, c, 1))
        elif bias is not None:
            y3.add_(bias.view(1, c, 1))
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.eps, ctx.has_bias = eps, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, rstd = ctx.saved_tensors
        n, c = x.shape[0], x.shape[1]
        x3 = x.view(n, c, -1)
        g3 = grad_out.reshape(n, c, -1)
        wv = None if weight is None else weight.view(1, c, 1)
        gx = gw = gb = None
        if torch.is_grad_enabled():
            # create_graph: differentiable ops only, statistics recomputed from x.
            mean = x3.mean(1, keepdim=True)
            rstd = torch.rsqrt((x3 - mean).square().mean(1, keepdim=True) + ctx.eps)
            g_w = g3 if wv is None else g3 * wv
            xhat = (x3 - mean) * rstd
            if ctx.needs_input_grad[0]:
                gx = rstd * (g_w - g_w.mean(1, keepdim=True) - xhat * (g_w * xhat).mean(1, keepdim=True))
                gx = gx.view(x.shape)
            if weight is not None and ctx.needs_input_grad[1]:
                gw = (g3 * xhat).sum((0, 2))
            if ctx.has_bias and ctx.needs_input_grad[2]:
                gb = g3.sum((0, 2))
            return gx, gw, gb, None
        xc = x3 - mean
        g_xc = g3 * xc
        if weight is not None and ctx.needs_input_grad[1]:
            # sum_{n,p} dy * xc * r: a batched GEMV per sample, then the sum over n.
            gw = torch.bmm(g_xc, rstd.transpose(1, 2)).sum((0, 2))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g3.sum((0, 2))
        if ctx.needs_input_grad[0]:
            row = _ChannelLayerNormContiguous._row(weight, n, c, x)
            s1 = torch.bmm(row, g3).div_(c)  # mean over C of dy * w, (n, 1, P)
            k = torch.bmm(row, g_xc).div_(c).mul_(rstd.pow(3))  # r^3 * mean over C of dy * w * xc
            del g_xc
            gx = xc.mul_(k.neg_()).sub_(rstd * s1)  # xc is not needed after this
            gx.addcmul_(g3 if wv is None else g3 * wv, rstd)
            gx = gx.view(x.shape)
        return gx, gw, gb, None


def rms_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, eps: float | None = None) -> Tensor:
    """RMS normalization over the trailing dims (``torch.nn.functional.rms_norm`` semantics).

    ``eps=None`` means ``torch.finfo(input.dtype).eps``. Contiguous float32 /
    float64 CPU input of at least ``_RMS_MIN_NUMEL`` elements runs
    :class:`_RMSNormRows` (statistic and output block by block while the
    block is in cache, and an analytic backward); other input runs torch's
    fused kernel.
    """
    check_tensor(input)
    _check_trailing(input, normalized_shape, "rms_norm")
    if weight is not None and tuple(weight.shape) != tuple(normalized_shape):
        raise ValueError(f"rms_norm expected weight of shape {tuple(normalized_shape)}, got {tuple(weight.shape)}")
    if _compiling():
        return F.rms_norm(input, list(normalized_shape), weight, eps)
    if (
        input.device.type == "cpu"
        and input.dtype in (torch.float32, torch.float64)
        and input.is_contiguous()
        and input.numel() >= _RMS_MIN_NUMEL
        and (weight is None or weight.dtype == input.dtype)
    ):
        d = math.prod(normalized_shape)
        eps_ = torch.finfo(input.dtype).eps if eps is None else float(eps)
        w = None if weight is None else weight.reshape(d)
        return _RMSNormRows.apply(input.view(-1, d), w, eps_).view(input.shape)
    return torch.ops.aten._fused_rms_norm(input, list(normalized_shape), weight, eps)[0]


# The forward runs block by block over the rows: the statistic, then the two
# scalings, each on a block that is still in cache, so y costs about one read
# of x and one write. 4 MiB blocks: a few blocks of per-block Python overhead
# (~5 small ops), and well inside the L3 cache.
_RMS_BLOCK_BYTES = 1 << 22
# Below this many elements the ~10 small ops of the blocked path cost more
# (~50 us) than the bandwidth they save; torch's fused kernel runs instead.
_RMS_MIN_NUMEL = 1 << 17


def _rms_rstd(x2: Tensor, eps: float) -> Tensor:
    """1 / sqrt(mean(x^2) + eps) per row of ``(R, D)``, shape ``(R, 1)``, differentiable."""
    ms = torch.linalg.vector_norm(x2, dim=-1, keepdim=True).square() / x2.shape[-1]
    return torch.rsqrt(ms + eps)


class _RMSNormRows(torch.autograd.Function):
    """y = x * rsqrt(mean(x^2) + eps) * weight over the rows of a contiguous ``(R, D)`` x.

    The same formula as :func:`.generic.rms_norm` (``x / sqrt(mean(x^2) + eps) * w``).
    Backward, with ``g_w = dy * w`` and ``r`` the row's rsqrt::

        dx = r * g_w - x * r^3 * mean(g_w * x)      dw = sum_rows(dy * x * r)

    Under ``create_graph`` the backward recomputes ``r`` from ``x`` with
    differentiable ops and uses no in-place ops, so double backward is exact.
    """

    @staticmethod
    def forward(ctx, x2, weight, eps):
        n, d = x2.shape
        y = torch.empty_like(x2)
        rstd = torch.empty((n, 1), dtype=x2.dtype)
        eps_t = torch.tensor(eps, dtype=x2.dtype)
        rows = max(1, _RMS_BLOCK_BYTES // (d * x2.element_size()))
        for i in range(0, n, rows):
            xi, yi, ri = x2[i : i + rows], y[i : i + rows], rstd[i : i + rows]
            # ||x||^2 / D + eps by one read of the block (no squared temporary), then rsqrt.
            torch.linalg.vector_norm(xi, dim=-1, keepdim=True, out=ri)
            torch.addcmul(eps_t, ri, ri, value=1.0 / d, out=ri).rsqrt_()
            torch.mul(xi, ri, out=yi)
            if weight is not None:
                yi.mul_(weight)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x2, weight, rstd = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        d = x2.shape[-1]
        gx = gw = None
        if torch.is_grad_enabled():
            # create_graph: plain differentiable ops, r recomputed from x.
            r = _rms_rstd(x2, ctx.eps)
            g = grad_out if weight is None else grad_out * weight
            if need_x:
                gx = r * g - x2 * (r.pow(3) * (g * x2).sum(-1, keepdim=True) / d)
            if need_w:
                gw = (grad_out * x2 * r).sum(0)
            return gx, gw, None
        if need_w:
            # sum_rows(dy * x * r) = r^T (dy * x): one product pass, one GEMV.
            gw = torch.mv((grad_out * x2).t(), rstd.view(-1))
        if need_x:
            g = grad_out if weight is None else grad_out * weight
            c = torch.linalg.vecdot(g, x2, dim=-1).unsqueeze(-1).mul_(rstd.square()).div_(d)
            gx = torch.addcmul(g, x2, c, value=-1.0).mul_(rstd)
        return gx, gw, None


def local_response_norm(input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> Tensor:
    """Local response normalization across channels (``torch.nn.functional.local_response_norm``)."""
    check_tensor(input)
    check_min_rank(input, 3, "local_response_norm")
    if input.dim() > 4 and not (input.is_contiguous() or _channels_last_format(input) is not None):
        # torch's function views (N, C, D, H, W) as (N, 1, C, D, H*W), which
        # fails for permuted strides; a contiguous copy has the same values.
        input = input.contiguous()
    if input.dtype in (torch.bfloat16, torch.float16) and input.dim() > 3:
        # torch's CPU avg_pool3d has no bfloat16 kernel; the window sums want
        # float32 accumulation anyway. The result is cast back.
        return F.local_response_norm(input.float(), size, alpha, beta, k).to(input.dtype)
    return F.local_response_norm(input, size, alpha, beta, k)


__all__ = [
    "batch_norm",
    "channel_layer_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "local_response_norm",
    "rms_norm",
]
