"""Functional core of the gradient-side family: gradient centralization and normalization, LARS, LAMB, LANS.

Each update exists twice, as torch.optim's do: a single-tensor loop and a
``foreach`` implementation over the whole list (fewer kernel launches); a
test checks they agree. Neither calls ``.item()``: the trust ratio of a
layer stays a tensor, so a step can run under ``torch.compile`` without a
graph break per parameter.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..functional.operations import center
from ..functional.stats import accumulation_dtype

__all__ = ["centralize", "centralize_", "lamb", "lans", "lars", "normalize_gradients_", "trust_ratio"]


def _centralizable(g: Tensor, conv_only: bool) -> bool:
    return g.dim() > (3 if conv_only else 1)


def centralize(g: Tensor, conv_only: bool = False) -> Tensor:
    """Gradient centralization of one gradient: each filter (row of dim 0) minus its mean over the other dims.

    Yong et al. 2020: for a weight of ``ndim > 1`` (``conv_only``: ``ndim > 3``,
    convolutions only) the gradient of output unit ``i`` becomes
    ``g[i] - mean(g[i])``, the projection onto the hyperplane of zero-sum
    filters; vectors (biases, norm parameters) are returned unchanged. The mean
    is the framework's centering (:func:`normlab.functional.operations.center`)
    over the filter's fan-in, so it accumulates in float32 for half precision.

    >>> import torch
    >>> g = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    >>> centralize(g)
    tensor([[-1., 0., 1.],
            [-2., -2., 4.]])
    >>> centralize(torch.tensor([1.0, 2.0]))  # a bias: untouched
    tensor([1., 2.])
    """
    if not _centralizable(g, conv_only):
        return g
    return center(g.reshape(g.shape[0], -1)).output.to(g.dtype).reshape(g.shape)


@torch.no_grad()
def centralize_(grads: list[Tensor], conv_only: bool = False, foreach: bool | None = None) -> None:
    """:func:`centralize` every gradient of ``grads`` in place (the ``foreach`` road: one mean per filter)."""
    todo = [g for g in grads if g is not None and _centralizable(g, conv_only)]
    if not todo:
        return
    if not foreach:
        for g in todo:
            g.copy_(centralize(g, conv_only))
        return
    rows = [g.view(g.shape[0], -1) if g.is_contiguous() else g.reshape(g.shape[0], -1) for g in todo]
    # the framework's centering computes variances too: the fast road takes the mean alone, in the same dtype
    means = [r.mean(dim=1, keepdim=True, dtype=accumulation_dtype(r.dtype)) for r in rows]
    for g, r, m in zip(todo, rows, means, strict=True):
        # reshape() copies a non-contiguous gradient: write the centred rows back into the original
        if r.data_ptr() == g.data_ptr():
            r.sub_(m.to(r.dtype))
        else:
            g.copy_((r - m.to(r.dtype)).reshape(g.shape))


def trust_ratio(
    w_norm: Tensor,
    g_norm: Tensor,
    trust_coefficient: float,
    weight_decay: float,
    eps: float,
    trust_clip: float | None,
) -> Tensor:
    """LARS's local rate ``eta ||w|| / (||g|| + wd ||w|| + eps)``, 1 where either norm is 0, clamped to ``trust_clip``.

    You, Gitman & Ginsburg 2017, eq. (6); the guard (a freshly zeroed layer or
    a zero gradient gets the global rate, not 0 or inf) and the clamp to
    ``[0, trust_clip]`` are those of the authors' code.

    >>> import torch
    >>> trust_ratio(torch.tensor(2.0), torch.tensor(4.0), 0.001, 0.0, 0.0, None)
    tensor(0.0005)
    >>> trust_ratio(torch.tensor(0.0), torch.tensor(4.0), 0.001, 0.0, 0.0, None)  # zero weight: the guard
    tensor(1.)
    """
    ratio = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
    ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
    if trust_clip is not None:
        ratio = ratio.clamp(0.0, trust_clip)
    return ratio


def _descent(grads: list[Tensor], maximize: bool, foreach: bool | None) -> list[Tensor]:
    """The gradients to descend along: negated copies with ``maximize`` (one foreach op), else the same tensors."""
    if not maximize:
        return grads
    return list(torch._foreach_neg(grads)) if foreach else [torch.neg(g) for g in grads]


def _per_tensor(fn, *columns: list[Tensor]) -> list[Tensor]:
    """``fn`` over per-tensor scalars (0-dim tensors, one per parameter): one vectorized call where they stack.

    The trust ratios and bias corrections of a foreach step are a handful of
    scalar ops per parameter; stacked, they are a handful of ops in all.
    """
    first = columns[0]
    if all(t.dtype == first[0].dtype and t.device == first[0].device for col in columns for t in col):
        return list(fn(*(torch.stack(col) for col in columns)).unbind(0))
    return [fn(*row) for row in zip(*columns, strict=True)]


def _local_rate(ratio: Tensor, lr: float, larc: bool) -> Tensor:
    # LARC (NVIDIA apex) clips the layer's rate at the global one: min(trust ratio, lr) instead of lr * trust
    return torch.clamp(ratio, max=lr) if larc else ratio * lr


@torch.no_grad()
def lars(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    trust_coefficient: float,
    eps: float,
    trust_clip: float | None,
    larc: bool,
    nesterov: bool,
    maximize: bool,
    trust_adaptation: bool,
    foreach: bool | None = None,
) -> None:
    """One LARS step over a parameter group, in place (``momentum_buffers`` entries are filled on the first step).

    Per tensor: ``d = g + wd w``; ``rate = lr * trust_ratio`` (``larc``:
    ``min(trust_ratio, lr)``; ``trust_adaptation=False``: ``lr``, for the
    biases and norm parameters the paper leaves out); ``v <- momentum v + rate
    d``; ``w <- w - v`` (Nesterov: ``w <- w - (rate d + momentum v)``). The
    learning rate is inside the momentum, as in the paper's Algorithm 1.
    """
    if not params:
        return
    grads = _descent(grads, maximize, foreach)
    impl = _multi_tensor_lars if foreach else _single_tensor_lars
    impl(
        params,
        grads,
        momentum_buffers,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        trust_coefficient=trust_coefficient,
        eps=eps,
        trust_clip=trust_clip,
        larc=larc,
        nesterov=nesterov,
        trust_adaptation=trust_adaptation,
    )


def _single_tensor_lars(
    params,
    grads,
    bufs,
    *,
    lr,
    momentum,
    weight_decay,
    trust_coefficient,
    eps,
    trust_clip,
    larc,
    nesterov,
    trust_adaptation,
) -> None:
    for i, (w, g) in enumerate(zip(params, grads, strict=True)):
        d = g.add(w, alpha=weight_decay) if weight_decay != 0 else g
        if trust_adaptation:
            ratio = trust_ratio(w.norm(), g.norm(), trust_coefficient, weight_decay, eps, trust_clip)
            step = d * _local_rate(ratio, lr, larc).to(d.dtype)
        else:
            step = d * lr
        if momentum != 0:
            if bufs[i] is None:
                bufs[i] = step.clone()
            else:
                bufs[i].mul_(momentum).add_(step)
            step = step.add(bufs[i], alpha=momentum) if nesterov else bufs[i]
        w.sub_(step)


def _multi_tensor_lars(
    params,
    grads,
    bufs,
    *,
    lr,
    momentum,
    weight_decay,
    trust_coefficient,
    eps,
    trust_clip,
    larc,
    nesterov,
    trust_adaptation,
) -> None:
    d = torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay != 0 else list(grads)
    if trust_adaptation:
        w_norms = torch._foreach_norm(params)
        g_norms = torch._foreach_norm(grads)
        rates = _per_tensor(
            lambda wn, gn: _local_rate(trust_ratio(wn, gn, trust_coefficient, weight_decay, eps, trust_clip), lr, larc),
            w_norms,
            g_norms,
        )
        steps = torch._foreach_mul(d, rates)
    else:
        steps = torch._foreach_mul(d, lr)
    if momentum != 0:
        old = [i for i, b in enumerate(bufs) if b is not None]  # the first step's buffers are the step itself
        for i, b in enumerate(bufs):
            if b is None:
                bufs[i] = steps[i].clone()
        if old:
            olds = [bufs[i] for i in old]
            torch._foreach_mul_(olds, momentum)
            torch._foreach_add_(olds, [steps[i] for i in old])
        steps = torch._foreach_add(steps, bufs, alpha=momentum) if nesterov else list(bufs)
    torch._foreach_sub_(params, steps)


def _one_minus_pow(beta: float, t: Tensor) -> Tensor:
    # 1 - beta**t as -expm1(t log beta): no cancellation when beta**t is near 1 (1 - 0.999 loses 4 digits in float32)
    if beta == 0:
        return torch.ones_like(t)
    return -torch.expm1(t * math.log(beta))


def _lamb_ratio(w_norm: Tensor, u_norm: Tensor, phi_clip: float | None) -> Tensor:
    # phi(||x||) / ||u||, 1 where either norm is 0 (a zeroed layer, or no update)
    phi = w_norm.clamp(max=phi_clip) if phi_clip is not None else w_norm
    ratio = phi / u_norm
    return torch.where((w_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio))


@torch.no_grad()
def lamb(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    bias_correction: bool,
    phi_clip: float | None,
    adapt: bool,
    maximize: bool,
    foreach: bool | None = None,
) -> None:
    """One LAMB step over a parameter group, in place (You et al. 2019, arXiv:1904.00962, Algorithm 2).

    Per tensor: Adam's moments ``m``, ``v`` (bias-corrected unless
    ``bias_correction=False``), ``r = m / (sqrt(v) + eps)``, ``u = r + wd x``,
    ``x <- x - lr * phi(||x||) / ||u|| * u`` with ``phi(z) = min(z, phi_clip)``
    (identity when None) and the ratio 1 where a norm is 0; ``adapt=False``
    uses ratio 1 (AdamW's step). ``state_steps`` are float tensors, counted
    here, so the bias correction needs no ``.item()``.
    """
    if not params:
        return
    grads = _descent(grads, maximize, foreach)
    impl = _multi_tensor_lamb if foreach else _single_tensor_lamb
    impl(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        state_steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        bias_correction=bias_correction,
        phi_clip=phi_clip,
        adapt=adapt,
    )


def _single_tensor_lamb(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    steps,
    *,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    bias_correction,
    phi_clip,
    adapt,
) -> None:
    for x, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
        t.add_(1)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if bias_correction:
            r = (m / _one_minus_pow(beta1, t)) / ((v / _one_minus_pow(beta2, t)).sqrt() + eps)
        else:
            r = m / (v.sqrt() + eps)
        u = r.add(x, alpha=weight_decay) if weight_decay != 0 else r
        if adapt:
            u = u * (lr * _lamb_ratio(x.norm(), u.norm(), phi_clip)).to(u.dtype)
        else:
            u = u * lr
        x.sub_(u)


def _multi_tensor_lamb(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    steps,
    *,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    bias_correction,
    phi_clip,
    adapt,
) -> None:
    torch._foreach_add_(steps, 1)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    if bias_correction:
        c1 = _per_tensor(lambda t: _one_minus_pow(beta1, t), steps)
        c2 = _per_tensor(lambda t: _one_minus_pow(beta2, t), steps)
        num = torch._foreach_div(exp_avgs, c1)
        den = torch._foreach_sqrt(torch._foreach_div(exp_avg_sqs, c2))
    else:
        num, den = exp_avgs, torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(den, eps)
    u = torch._foreach_div(num, den)
    if weight_decay != 0:
        torch._foreach_add_(u, params, alpha=weight_decay)
    if adapt:
        w_norms, u_norms = torch._foreach_norm(params), torch._foreach_norm(u)
        rates = _per_tensor(lambda wn, un: lr * _lamb_ratio(wn, un, phi_clip), w_norms, u_norms)
        torch._foreach_mul_(u, rates)
    else:
        torch._foreach_mul_(u, lr)
    torch._foreach_sub_(params, u)


def _ratio_or_one(num: Tensor, den: Tensor) -> Tensor:
    # num / den, 1 where either is 0 (LANS's "NaN or 0 ratios -> 1")
    return torch.where((num > 0) & (den > 0), num / den, torch.ones_like(num))


@torch.no_grad()
def normalize_gradients_(grads: list[Tensor], scale: float = 1.0, foreach: bool | None = None) -> None:
    """Per-layer gradient normalization in place: each gradient ``g <- scale * g / ||g||`` (a zero gradient stays 0).

    >>> import torch
    >>> g = [torch.tensor([3.0, 4.0]), torch.zeros(2)]
    >>> normalize_gradients_(g)
    >>> g
    [tensor([0.6000, 0.8000]), tensor([0., 0.])]
    """
    grads = [g for g in grads if g is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads) if foreach else [g.norm() for g in grads]
    factors = [
        (scale / torch.where(n > 0, n, torch.ones_like(n))).to(g.dtype) for n, g in zip(norms, grads, strict=True)
    ]
    if foreach:
        torch._foreach_mul_(grads, factors)
    else:
        for g, f in zip(grads, factors, strict=True):
            g.mul_(f)


@torch.no_grad()
def lans(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
    foreach: bool | None = None,
) -> None:
    """One LANS step over a parameter group, in place (Zheng et al. 2020, arXiv:2006.13484, Algorithm 2).

    Per tensor: ``g <- g / ||g||`` (a zero gradient stays 0); Adam's moments of
    the normalized gradient, bias-corrected; ``r1 = ||x||``; then two
    normalized half-steps, Nesterov-style: ``c_m = m / (sqrt(v) + eps) + wd x``,
    ``x <- x - lr beta1 (r1 / ||c_m||) c_m``, and ``c_g = g / (sqrt(v) + eps) +
    wd x`` (the updated ``x``), ``x <- x - lr (1 - beta1) (r1 / ||c_g||) c_g``;
    a ratio with a zero norm is 1. The step does not depend on the loss's scale.
    """
    if not params:
        return
    grads = _descent(grads, maximize, foreach)
    impl = _multi_tensor_lans if foreach else _single_tensor_lans
    impl(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        state_steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
    )


def _single_tensor_lans(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps, weight_decay) -> None:
    for x, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
        n = g.norm()
        g = g / torch.where(n > 0, n, torch.ones_like(n))
        t.add_(1)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v / _one_minus_pow(beta2, t)).sqrt().add_(eps)
        r1 = x.norm()
        c_m = (m / _one_minus_pow(beta1, t)) / denom
        if weight_decay != 0:
            c_m.add_(x, alpha=weight_decay)
        x.sub_(c_m * (lr * beta1 * _ratio_or_one(r1, c_m.norm())))
        c_g = g / denom
        if weight_decay != 0:
            c_g.add_(x, alpha=weight_decay)  # the updated x
        x.sub_(c_g * (lr * (1 - beta1) * _ratio_or_one(r1, c_g.norm())))


def _multi_tensor_lans(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps, weight_decay) -> None:
    # each tensor's second half-step reads only its own updated x: all first half-steps, then all second ones
    # g / ||g|| as a division, as the single-tensor road does (a multiply by 1 / ||g|| rounds differently)
    norms = _per_tensor(lambda n: torch.where(n > 0, n, torch.ones_like(n)), torch._foreach_norm(grads))
    grads = torch._foreach_div(grads, norms)
    torch._foreach_add_(steps, 1)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    c1 = _per_tensor(lambda t: _one_minus_pow(beta1, t), steps)
    c2 = _per_tensor(lambda t: _one_minus_pow(beta2, t), steps)
    denom = torch._foreach_sqrt(torch._foreach_div(exp_avg_sqs, c2))
    torch._foreach_add_(denom, eps)
    r1 = torch._foreach_norm(params)
    for coef, num in ((lr * beta1, torch._foreach_div(exp_avgs, c1)), (lr * (1 - beta1), grads)):
        c = torch._foreach_div(num, denom)
        if weight_decay != 0:
            torch._foreach_add_(c, params, alpha=weight_decay)  # the second pass reads the updated x
        torch._foreach_mul_(c, _per_tensor(lambda r, n, k=coef: k * _ratio_or_one(r, n), r1, torch._foreach_norm(c)))
        torch._foreach_sub_(params, c)
