"""Gradient-side normalization as torch optimizers (LARS, LAMB, LANS) and gradient transforms around any optimizer.

Thin classes over :mod:`normlab.optim.functional`: they validate their
hyperparameters, keep torch.optim's layout (``defaults``, param groups,
``state_dict``), and hand each group to the functional step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from ..functional.checks import InvalidArgumentError, check_bool, check_number
from . import functional as F

__all__ = [
    "LAMB",
    "LANS",
    "LARS",
    "CentralizedAdamW",
    "CentralizedSGD",
    "GradientCentralization",
    "GradientNormalization",
    "exclude_from_adaptation",
]


def _evaluate(closure: Callable[[], float] | None):
    """torch.optim's closure protocol: re-evaluate the loss with grad enabled (None without a closure)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _betas(betas: object, owner: str) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise InvalidArgumentError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
    b1 = check_number(betas[0], "betas[0]", owner, high=1.0)
    b2 = check_number(betas[1], "betas[1]", owner, high=1.0)
    if b1 == 1.0 or b2 == 1.0:
        raise InvalidArgumentError(f"{owner}: betas must each be < 1, got {tuple(betas)!r}")
    return b1, b2


def _adam_state(state: dict, params: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Adam's (exp_avg, exp_avg_sq, step) per parameter, created on first use."""
    ms, vs, steps = [], [], []
    for p in params:
        st = state[p]
        if not st:
            # the step count in float64 for float64 parameters, so the bias correction keeps their precision
            dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
            st["step"] = torch.zeros((), dtype=dtype, device=p.device)
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        ms.append(st["exp_avg"])
        vs.append(st["exp_avg_sq"])
        steps.append(st["step"])
    return ms, vs, steps


def _default_foreach(params: list[Tensor]) -> bool:
    # torch.optim's rule of thumb: foreach where every tensor is on a GPU-like device (no sparse, no CPU)
    return bool(params) and all(p.device.type not in ("cpu", "meta") and not p.is_sparse for p in params)


class _Layerwise(torch.optim.Optimizer):
    """Shared plumbing: groups saved before a new option existed get its default; dense gradients, checked first."""

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def _with_grads(self) -> list[tuple[dict, list[Tensor], list[Tensor], bool]]:
        """(group, params, grads, foreach) for every group, parameters without a gradient left out.

        Every gradient is checked before any is used, so a refused step (a
        sparse gradient) changes no parameter and no state.
        """
        out = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            foreach = group["foreach"] if group["foreach"] is not None else _default_foreach(params)
            out.append((group, params, [p.grad for p in params], foreach))
        return out


class LARS(_Layerwise):
    r"""Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg 2017, arXiv:1708.03888).

    Each tensor's step is scaled by its trust ratio
    ``trust_coefficient * ||w|| / (||g|| + weight_decay * ||w|| + eps)``
    (1 where either norm is 0; clamped to ``[0, trust_clip]`` when set, the
    authors' code uses 50), with momentum over the scaled step, the learning
    rate inside it (the paper's Algorithm 1):

    ``v <- momentum * v + lr * trust * (g + weight_decay * w)``, ``w <- w - v``.

    ``larc=True`` is LARC (NVIDIA apex): the layer's rate is
    ``min(trust, lr)`` instead of ``lr * trust``, so no layer moves faster than
    the global rate. A param group with ``trust_adaptation=False`` gets plain
    momentum SGD at ``lr`` (the paper leaves biases and BN parameters out of
    the adaptation and the weight decay: :func:`exclude_from_adaptation` builds
    such groups).

    Args:
        params: parameters or param groups.
        lr: global rate (``> 0``).
        momentum: in ``[0, 1)``; 0.9 in the paper.
        weight_decay: ``>= 0``, added to the gradient before the trust ratio.
        trust_coefficient: ``eta`` of the paper, 0.001.
        eps: ``>= 0``, added to the trust ratio's denominator.
        trust_clip: upper bound of the trust ratio, or None.
        larc: LARC's clipping (see above).
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        maximize: ascend instead of descend.
        foreach: the multi-tensor road (None: on when every parameter is on an accelerator).

    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))          # ||w|| = 5
    >>> opt = LARS([w], lr=0.1, momentum=0.0, trust_coefficient=0.01)
    >>> w.grad = torch.tensor([0.0, 2.0])                          # ||g|| = 2
    >>> opt.step()
    >>> w.detach()                                                 # step = lr * (0.01 * 5 / 2) * g = 0.005
    tensor([3.0000, 3.9950])
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 0.0,
        trust_clip: float | None = None,
        larc: bool = False,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        owner = "LARS"
        lr = check_number(lr, "lr", owner, open_low=True)
        momentum = check_number(momentum, "momentum", owner, high=1.0)
        if momentum == 1.0:
            raise InvalidArgumentError(f"{owner}: momentum must be < 1 (1 never forgets a step), got 1.0")
        weight_decay = check_number(weight_decay, "weight_decay", owner)
        trust_coefficient = check_number(trust_coefficient, "trust_coefficient", owner, open_low=True)
        eps = check_number(eps, "eps", owner)
        if trust_clip is not None:
            trust_clip = check_number(trust_clip, "trust_clip", owner, open_low=True)
        check_bool(larc, "larc", owner)
        check_bool(nesterov, "nesterov", owner)
        check_bool(maximize, "maximize", owner)
        if nesterov and momentum == 0:
            raise InvalidArgumentError(f"{owner}: nesterov=True needs momentum > 0, got momentum={momentum:g}")
        check_bool(foreach, "foreach", owner, optional=True)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            trust_clip=trust_clip,
            larc=larc,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            trust_adaptation=True,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One step over every param group (``closure`` re-evaluates the loss, as in torch.optim)."""
        loss = _evaluate(closure)
        for group, params, grads, foreach in self._with_grads():
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            F.lars(
                params,
                grads,
                bufs,
                lr=group["lr"],
                momentum=group["momentum"],
                weight_decay=group["weight_decay"],
                trust_coefficient=group["trust_coefficient"],
                eps=group["eps"],
                trust_clip=group["trust_clip"],
                larc=group["larc"],
                nesterov=group["nesterov"],
                maximize=group["maximize"],
                trust_adaptation=group["trust_adaptation"],
                foreach=foreach,
            )
            if group["momentum"] != 0:
                for p, buf in zip(params, bufs, strict=True):
                    self.state[p]["momentum_buffer"] = buf
        return loss


class LAMB(_Layerwise):
    r"""LAMB: Adam's step normalized per layer (You et al. 2019, arXiv:1904.00962, Algorithm 2).

    Per tensor: Adam's moments (bias-corrected), ``r = m / (sqrt(v) + eps)``,
    ``u = r + weight_decay * x``, and
    ``x <- x - lr * phi(||x||) / ||u|| * u``: every layer moves by ``lr``
    times its own norm (1 where a norm is 0). ``phi(z) = min(z, phi_clip)``
    (the paper's bounded phi; None: the identity).

    The reference codes differ from the paper in three ways, each an option:
    ``bias_correction=False`` (the TensorFlow code skips it),
    ``always_adapt=False`` (adapt only tensors whose group has weight decay;
    the others take AdamW's step), and ``eps`` (the paper's 1e-6 by default;
    some codes use 1e-8). A group with ``trust_adaptation=False``
    (:func:`exclude_from_adaptation`) takes AdamW's step: with the ratio 1
    LAMB *is* AdamW, step for step.

    Args:
        params: parameters or param groups.
        lr: ``> 0``.
        betas: ``(beta1, beta2)``, each in ``[0, 1)``.
        eps: ``>= 0``, added to ``sqrt(v)``.
        weight_decay: ``>= 0``, decoupled (inside ``u``, as the paper).
        bias_correction, always_adapt: see above.
        phi_clip: upper bound of ``phi(||x||)``, or None.
        maximize: ascend instead of descend.
        foreach: the multi-tensor road (None: on when every parameter is on an accelerator).

    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))           # ||w|| = 5
    >>> opt = LAMB([w], lr=0.01, weight_decay=0.0)
    >>> w.grad = torch.tensor([1.0, 0.0])
    >>> opt.step()
    >>> round(float((w.detach() - torch.tensor([3.0, 4.0])).norm()), 6)  # ||dx|| = lr * ||x||
    0.05
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        bias_correction: bool = True,
        always_adapt: bool = True,
        phi_clip: float | None = None,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        owner = "LAMB"
        lr = check_number(lr, "lr", owner, open_low=True)
        b1, b2 = _betas(betas, owner)
        eps = check_number(eps, "eps", owner)
        weight_decay = check_number(weight_decay, "weight_decay", owner)
        if phi_clip is not None:
            phi_clip = check_number(phi_clip, "phi_clip", owner, open_low=True)
        check_bool(bias_correction, "bias_correction", owner)
        check_bool(always_adapt, "always_adapt", owner)
        check_bool(maximize, "maximize", owner)
        check_bool(foreach, "foreach", owner, optional=True)
        defaults = dict(
            lr=lr,
            betas=(b1, b2),
            eps=eps,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            always_adapt=always_adapt,
            phi_clip=phi_clip,
            maximize=maximize,
            foreach=foreach,
            trust_adaptation=True,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One step over every param group (``closure`` re-evaluates the loss, as in torch.optim)."""
        loss = _evaluate(closure)
        for group, params, grads, foreach in self._with_grads():
            ms, vs, steps = _adam_state(self.state, params)
            b1, b2 = group["betas"]
            F.lamb(
                params,
                grads,
                ms,
                vs,
                steps,
                lr=group["lr"],
                beta1=b1,
                beta2=b2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                bias_correction=group["bias_correction"],
                phi_clip=group["phi_clip"],
                adapt=group["trust_adaptation"] and (group["always_adapt"] or group["weight_decay"] != 0),
                maximize=group["maximize"],
                foreach=foreach,
            )
        return loss


class LANS(_Layerwise):
    r"""LANS: LAMB with normalized gradients and Nesterov-style half-steps (Zheng et al. 2020, arXiv:2006.13484).

    Per tensor: the gradient is normalized to unit norm (a zero gradient
    stays 0), Adam's moments of it are bias-corrected, and the parameter takes
    two half-steps, each rescaled to the layer's norm ``r1 = ||x||``:
    ``x <- x - lr * beta1 * (r1 / ||c_m||) * c_m`` with
    ``c_m = m / (sqrt(v) + eps) + weight_decay * x``, then
    ``x <- x - lr * (1 - beta1) * (r1 / ||c_g||) * c_g`` with
    ``c_g = g / (sqrt(v) + eps) + weight_decay * x`` (a ratio with a zero norm
    is 1). Because the gradient is normalized, the steps do not depend on the
    loss's scale. ``eps`` is 1e-6 after the root, as in the MXNet code. A
    parameter whose gradient is 0 only up to rounding (a bias just before a
    BatchNorm) gets normalized rounding noise: leave it out.

    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    >>> opt = LANS([w], lr=0.01, weight_decay=0.0)
    >>> w.grad = torch.tensor([5.0, 0.0])
    >>> opt.step()
    >>> round(float((w.detach() - torch.tensor([3.0, 4.0])).norm()), 6)  # two half-steps along g: lr * ||x||
    0.05
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        owner = "LANS"
        lr = check_number(lr, "lr", owner, open_low=True)
        b1, b2 = _betas(betas, owner)
        eps = check_number(eps, "eps", owner)
        weight_decay = check_number(weight_decay, "weight_decay", owner)
        check_bool(maximize, "maximize", owner)
        check_bool(foreach, "foreach", owner, optional=True)
        defaults = dict(lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay, maximize=maximize, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One step over every param group (``closure`` re-evaluates the loss, as in torch.optim)."""
        loss = _evaluate(closure)
        for group, params, grads, foreach in self._with_grads():
            ms, vs, steps = _adam_state(self.state, params)
            b1, b2 = group["betas"]
            F.lans(
                params,
                grads,
                ms,
                vs,
                steps,
                lr=group["lr"],
                beta1=b1,
                beta2=b2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                maximize=group["maximize"],
                foreach=foreach,
            )
        return loss


class _GradientWrapper:
    """A gradient transform applied before a wrapped torch optimizer's step; everything else is the optimizer's."""

    def __init__(self, optimizer: torch.optim.Optimizer, foreach: bool | None) -> None:
        name = type(self).__name__
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise InvalidArgumentError(
                f"{name} wraps a torch.optim.Optimizer, got {type(optimizer).__name__}; "
                f"build the optimizer first: {name}(torch.optim.SGD(model.parameters(), lr=0.1))"
            )
        check_bool(foreach, "foreach", name, optional=True)
        self.optimizer = optimizer
        self.foreach = foreach

    def __getattr__(self, name: str):
        # everything but step() is the wrapped optimizer's (param_groups, state, zero_grad, state_dict, ...)
        try:
            return getattr(self.__dict__["optimizer"], name)
        except KeyError:  # not yet set (copy, unpickling)
            raise AttributeError(name) from None

    def _transform(self, grads: list[Tensor], foreach: bool) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """Transform every gradient of the wrapped optimizer's groups, then take its step."""
        loss = _evaluate(closure)
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if any(g.is_sparse for g in grads):
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        self._transform(grads, self.foreach if self.foreach is not None else _default_foreach(grads))
        self.optimizer.step()
        return loss


class GradientCentralization(_GradientWrapper):
    """Gradient centralization (Yong et al. 2020, arXiv:2004.01461) around any torch optimizer.

    ``step()`` replaces the gradient of every weight with ``ndim > 1``
    (``conv_only``: ``ndim > 3``) by its centralized version
    (:func:`normlab.optim.functional.centralize`: each filter minus its mean)
    and then calls the wrapped optimizer's ``step``. Biases and norm
    parameters (vectors) are untouched. Weight decay inside the wrapped
    optimizer is added after the centralization, so its term is not
    centralized (the paper's SGD centralizes after the decay: with decoupled
    decay, as in AdamW, the two orders are the same). Everything else
    (``zero_grad``, ``param_groups``, ``state_dict``, schedulers through
    :attr:`optimizer`) is the wrapped optimizer's.

    >>> import torch
    >>> lin = torch.nn.Linear(3, 2)
    >>> opt = GradientCentralization(torch.optim.SGD(lin.parameters(), lr=0.1))
    >>> before = lin.weight.detach().sum(dim=1).clone()
    >>> lin(torch.randn(4, 3)).square().sum().backward()
    >>> opt.step()
    >>> torch.allclose(lin.weight.detach().sum(dim=1), before, atol=1e-6)  # filter sums do not move under SGD
    True
    """

    def __init__(self, optimizer: torch.optim.Optimizer, conv_only: bool = False, foreach: bool | None = None):
        super().__init__(optimizer, foreach)
        check_bool(conv_only, "conv_only", "GradientCentralization")
        self.conv_only = conv_only

    def __repr__(self) -> str:
        return f"GradientCentralization(conv_only={self.conv_only}, optimizer={self.optimizer!r})"

    def _transform(self, grads: list[Tensor], foreach: bool) -> None:
        F.centralize_(grads, self.conv_only, foreach=foreach)


class GradientNormalization(_GradientWrapper):
    """Per-layer gradient normalization around any torch optimizer: each gradient ``g <- scale * g / ||g||``.

    Every parameter's gradient (a zero gradient stays 0) is rescaled to norm
    ``scale`` before the wrapped optimizer's step, so under SGD each layer
    moves by ``lr * scale`` whatever the loss's scale or the layer's gradient
    magnitude (:func:`normlab.optim.functional.normalize_gradients_`). A
    parameter whose gradient is 0 only up to rounding (a bias just before a
    BatchNorm) would get a full-size step along rounding noise: leave it out
    (``requires_grad_(False)``, or no bias there), as for :class:`LANS`.

    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> opt = GradientNormalization(torch.optim.SGD([w], lr=0.1))
    >>> w.grad = torch.tensor([30.0, 40.0])
    >>> opt.step()
    >>> w.detach()
    tensor([-0.0600, -0.0800])
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scale: float = 1.0, foreach: bool | None = None):
        super().__init__(optimizer, foreach)
        self.scale = check_number(scale, "scale", "GradientNormalization", open_low=True)

    def __repr__(self) -> str:
        return f"GradientNormalization(scale={self.scale:g}, optimizer={self.optimizer!r})"

    def _transform(self, grads: list[Tensor], foreach: bool) -> None:
        F.normalize_gradients_(grads, self.scale, foreach=foreach)


class _CentralizedStep:
    """torch's own step on centralized update directions; ``p.grad`` is left as backward wrote it.

    Each group's direction is built in fresh tensors by :meth:`_direction`,
    swapped in as ``p.grad`` for the parent's ``step`` (its foreach and fused
    roads, state and ``state_dict`` unchanged) and swapped back afterwards,
    also when the step raises. ``_overrides`` are group options the
    direction already applied (set for the parent's step, then restored).
    """

    conv_only: bool
    _overrides: dict = {}

    def _direction(self, group: dict, params: list[Tensor], grads: list[Tensor], foreach: bool) -> list[Tensor]:
        raise NotImplementedError  # pragma: no cover - interface

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = _evaluate(closure)
        todo = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            if params:
                todo.append((group, params))
        saved: list[tuple[Tensor, Tensor]] = []
        options: list[tuple[dict, dict]] = []
        try:
            for group, params in todo:
                grads = [p.grad for p in params]
                foreach = group.get("foreach")
                foreach = foreach if foreach is not None else _default_foreach(params)
                direction = self._direction(group, params, grads, foreach)
                F.centralize_(direction, self.conv_only, foreach=foreach)
                options.append((group, {k: group[k] for k in self._overrides}))
                group.update(self._overrides)
                for p, g, d in zip(params, grads, direction, strict=True):
                    saved.append((p, g))
                    p.grad = d
            super().step()  # type: ignore[misc]
        finally:
            for p, g in saved:
                p.grad = g
            for group, values in options:
                group.update(values)
        return loss


class CentralizedSGD(_CentralizedStep, torch.optim.SGD):
    """torch.optim.SGD with gradient centralization in the paper's order: ``GC(g + wd w)``, then momentum.

    Yong et al.'s SGD_GC adds the (coupled) weight decay to the gradient and
    centralizes the sum, so the decay term is centralized too, which
    ``GradientCentralization(torch.optim.SGD(..., weight_decay=wd))`` cannot
    do (the wrapped optimizer adds the decay after). With ``weight_decay=0``
    the two are the same. Every argument but ``conv_only`` (centralize
    convolution weights only, ``ndim > 3``: the paper's SGD_GCC) is
    torch.optim.SGD's, and so are the state and ``state_dict``. ``p.grad`` is
    not modified.

    >>> import torch
    >>> lin = torch.nn.Linear(3, 2)
    >>> opt = CentralizedSGD(lin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    >>> before = lin.weight.detach().sum(dim=1).clone()
    >>> lin(torch.randn(4, 3)).square().sum().backward()
    >>> opt.step()
    >>> torch.allclose(lin.weight.detach().sum(dim=1), before, atol=1e-6)  # filter sums stay, decay included
    True
    """

    _overrides = {"weight_decay": 0.0, "maximize": False}

    def __init__(self, params, lr: float = 1e-3, *args, conv_only: bool = False, **kwargs) -> None:
        check_bool(conv_only, "conv_only", "CentralizedSGD")
        super().__init__(params, lr, *args, **kwargs)
        self.conv_only = conv_only

    def _direction(self, group, params, grads, foreach):
        # torch.optim.SGD's order: negate for maximize, then add the decay; GC of the sum, then torch's momentum step
        d = F._descent(grads, group["maximize"], foreach)
        wd = group["weight_decay"]
        if wd != 0:
            return (
                list(torch._foreach_add(d, params, alpha=wd))
                if foreach
                else [g.add(p, alpha=wd) for g, p in zip(d, params, strict=True)]
            )
        return [g.clone() for g in d] if d is grads else d


class CentralizedAdamW(_CentralizedStep, torch.optim.AdamW):
    """torch.optim.AdamW with gradient centralization of the raw gradient (Yong et al.'s AdamW with GC).

    The decay is decoupled (applied to the weights, not the gradient), so
    centralizing the gradient before the moments is the paper's AdamW order
    and the same as ``GradientCentralization(torch.optim.AdamW(...))``,
    except that ``p.grad`` is not modified. Every argument but ``conv_only``
    is torch.optim.AdamW's.

    >>> import torch
    >>> lin = torch.nn.Linear(3, 2)
    >>> opt = CentralizedAdamW(lin.parameters(), lr=1e-2)
    >>> lin(torch.randn(4, 3)).square().sum().backward()
    >>> opt.step()
    >>> opt.state[lin.weight]["exp_avg"].sum(dim=1).abs().max() < 1e-6  # Adam's moments see zero-mean filters
    tensor(True)
    """

    def __init__(self, params, lr: float = 1e-3, *args, conv_only: bool = False, **kwargs) -> None:
        check_bool(conv_only, "conv_only", "CentralizedAdamW")
        super().__init__(params, lr, *args, **kwargs)
        self.conv_only = conv_only

    def _direction(self, group, params, grads, foreach):
        return list(torch._foreach_mul(grads, 1.0)) if foreach else [g.clone() for g in grads]


def exclude_from_adaptation(model: nn.Module, **group_overrides) -> list[dict]:
    """Two param groups: weights (adapted, decayed) and biases / norm parameters (``trust_adaptation=False``, no decay).

    A parameter is excluded when it is a bias, a vector, or belongs to a
    module the norm registry knows (``normlab.NORMS``, or any torch
    ``_NormBase``/``LayerNorm``/``GroupNorm``), which is what the LARS and LAMB
    papers leave out. ``group_overrides`` go into the excluded group.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    >>> groups = exclude_from_adaptation(model)
    >>> [len(g["params"]) for g in groups], groups[1]["trust_adaptation"], groups[1]["weight_decay"]
    ([1, 3], False, 0.0)
    """
    norm_types = _norm_module_types()
    adapted, excluded, seen = [], [], set()
    for module in model.modules():
        is_norm = isinstance(module, norm_types)
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            (excluded if is_norm or name == "bias" or p.dim() <= 1 else adapted).append(p)
    groups = [{"params": adapted}]
    if excluded:
        groups.append({"params": excluded, "trust_adaptation": False, "weight_decay": 0.0, **group_overrides})
    return groups


def _norm_module_types() -> tuple[type, ...]:
    from ..registry import NORMS

    torch_norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
    registered = tuple(e.cls for e in NORMS.entries() if isinstance(getattr(e, "cls", None), type))
    return torch_norms + registered
