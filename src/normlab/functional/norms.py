"""The standard norms, fast paths: what ``normlab.nn`` modules call.

Every function here computes exactly what the function of the same name in
:mod:`.generic` computes (tested in float64); it reaches the numbers by a
faster road where one exists:

- ``batch_norm`` (training, contiguous CPU input): per-(sample, channel)
  moments from two native vectorized reductions, pooled by the parallel
  variance formula, then one fused pass (``torch.batch_norm`` in inference
  form with the batch statistics). The backward is torch's own batch-norm
  backward kernel, which is differentiable again (double backward).
- ``instance_norm``: ``group_norm(x, C)`` is the same statistics with a much
  faster native kernel than ``instance_norm``, and it keeps channels_last.
- ``rms_norm``: torch's fused RMS kernel (``aten._fused_rms_norm``) instead of
  the composite ``F.rms_norm`` that torch runs on CPU.
- ``channel_layer_norm``: reductions over dim 1 in place of permute copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_enough_values, check_groups, check_min_rank, check_tensor
from .stats import accumulation_dtype, combine_row_moments, moments, row_moments, update_running_stats

# The fast batch-statistics path pays two small reductions per (n, c) row; for
# rows shorter than this torch's own kernel is as fast.
_MIN_ROW = 16


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _fast_channel_moments(x: Tensor) -> tuple[Tensor, Tensor] | None:
    """Per-channel (mean, biased var) over (N, *spatial) by the fast road, or None."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or _compiling():
        return None
    n, c = x.shape[0], x.shape[1]
    row = x.numel() // max(n * c, 1)
    if x.dim() < 3 or row < _MIN_ROW or not x.is_contiguous():
        return None
    with torch.no_grad():
        rows = row_moments(x.view(n, c, row))
        if rows is None:
            return None
        return combine_row_moments(*rows, dim=0)


class _BatchNormFromStats(torch.autograd.Function):
    """y = BN(x) given x's own batch statistics (computed outside, without grad).

    Forward is one fused pass; backward is torch's batch-norm backward in
    training form, which accounts for the statistics' dependence on x and is
    itself differentiable (so Hessian-vector products work).
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
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad_out, x, weight, None, None, mean, invstd, True, ctx.eps, mask
        )
        return gx, gw, gb, None, None, None


def _param_view(p: Tensor | None, x: Tensor) -> Tensor | None:
    return None if p is None else p.view([1, -1] + [1] * (x.dim() - 2))


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

    ``momentum`` may also be a 0-dim tensor (the cumulative-average factor
    ``1/num_batches_tracked`` that ``momentum=None`` modules pass).
    """
    check_tensor(input)
    check_min_rank(input, 2, "batch_norm")
    c = input.shape[1]
    for t, name in ((running_mean, "running_mean"), (running_var, "running_var"), (weight, "weight"), (bias, "bias")):
        if t is not None and t.shape != (c,):
            raise ValueError(f"batch_norm expected {name} of shape ({c},) for input with {c} channels, got {tuple(t.shape)}")
    if not training:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm with training=False needs running_mean and running_var")
        return torch.batch_norm(input, weight, bias, running_mean, running_var, False, 0.0, eps, False)
    count = input.numel() // c
    check_enough_values(count, input, "channel")
    stats = _fast_channel_moments(input)
    if stats is None and not _compiling():
        # torch's kernel updates the running statistics itself.
        return torch.batch_norm(input, weight, bias, running_mean, running_var, True, float(momentum), eps, False)
    if stats is None:
        # Under torch.compile: plain differentiable ops that the compiler fuses.
        dims = [0] + list(range(2, input.dim()))
        mean, var = moments(input, dims)
        if running_mean is not None:
            update_running_stats(running_mean, running_var, mean.detach(), var.detach(), count, momentum)
        shape = [1, c] + [1] * (input.dim() - 2)
        xa = input.to(mean.dtype)
        y = (xa - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
        if weight is not None:
            y = y * _param_view(weight, input)
        if bias is not None:
            y = y + _param_view(bias, input)
        return y.to(input.dtype)
    mean, var = stats
    if running_mean is not None or running_var is not None:
        update_running_stats(running_mean, running_var, mean, var, count, momentum)
    return _BatchNormFromStats.apply(input, weight, bias, mean, var, eps)


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Group normalization (``torch.nn.functional.group_norm``) with validated input."""
    check_tensor(input)
    check_min_rank(input, 2, "group_norm")
    check_groups(input.shape[1], num_groups)
    return F.group_norm(input, num_groups, weight, bias, eps)


@torch.no_grad()
def _instance_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    n, c = x.shape[0], x.shape[1]
    x3 = x.reshape(n, c, -1)
    fast = row_moments(x3) if x.dtype in (torch.float32, torch.float64) and not _compiling() else None
    return fast if fast is not None else moments(x3, -1)


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
    """Instance normalization (``torch.nn.functional.instance_norm`` semantics) for batched input."""
    check_tensor(input)
    check_min_rank(input, 3, "instance_norm")
    n, c = input.shape[0], input.shape[1]
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError("instance_norm with use_input_stats=False needs running_mean and running_var")
        return torch.batch_norm(input, weight, bias, running_mean, running_var, False, 0.0, eps, False)
    spatial = input.numel() // max(n * c, 1)
    check_enough_values(spatial, input, "spatial element (instance norm reduces over H, W, ...)")
    if running_mean is not None or running_var is not None:
        mean, var = _instance_moments(input)
        update_running_stats(running_mean, running_var, mean.mean(0), var.mean(0), spatial, momentum)
    # Exact identity: IN is GN with one channel per group.
    return F.group_norm(input, c, weight, bias, eps)


def layer_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Layer normalization (``torch.nn.functional.layer_norm``) with validated input."""
    check_tensor(input)
    _check_trailing(input, normalized_shape, "layer_norm")
    return F.layer_norm(input, normalized_shape, weight, bias, eps)


def _check_trailing(x: Tensor, normalized_shape, what: str) -> None:
    ns = tuple(normalized_shape)
    if x.dim() < len(ns) or tuple(x.shape[x.dim() - len(ns):]) != ns:
        raise ValueError(
            f"{what} expected input with trailing dims {list(ns)} (shape [*, {', '.join(map(str, ns))}]), "
            f"got input of shape {list(x.shape)}"
        )


def channel_layer_norm(input: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """LayerNorm over dim 1 of ``(N, C, *spatial)`` at every position, per-channel affine.

    Same numbers as ``permute -> layer_norm -> permute`` without the copies;
    keeps the input's memory format. Stable two-pass statistics.
    """
    check_tensor(input)
    check_min_rank(input, 2, "channel_layer_norm")
    c = input.shape[1]
    for p, name in ((weight, "weight"), (bias, "bias")):
        if p is not None and p.shape != (c,):
            raise ValueError(f"channel_layer_norm expected {name} of shape ({c},), got {tuple(p.shape)}")
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


def rms_norm(input: Tensor, normalized_shape, weight: Tensor | None = None, eps: float | None = None) -> Tensor:
    """RMS normalization over the trailing dims (``torch.nn.functional.rms_norm`` semantics).

    Uses torch's fused kernel (one pass for the statistic, one for the
    output); ``eps=None`` means ``torch.finfo(input.dtype).eps``.
    """
    check_tensor(input)
    _check_trailing(input, normalized_shape, "rms_norm")
    if weight is not None and tuple(weight.shape) != tuple(normalized_shape):
        raise ValueError(f"rms_norm expected weight of shape {tuple(normalized_shape)}, got {tuple(weight.shape)}")
    if _compiling():
        return F.rms_norm(input, list(normalized_shape), weight, eps)
    return torch.ops.aten._fused_rms_norm(input, list(normalized_shape), weight, eps)[0]


def local_response_norm(input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> Tensor:
    """Local response normalization across channels (``torch.nn.functional.local_response_norm``)."""
    check_tensor(input)
    check_min_rank(input, 3, "local_response_norm")
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

