"""Landscape smoothness along the gradient and internal covariate shift (Santurkar et al. 2018).

Santurkar, Tsipras, Ilyas & Madry, "How Does Batch Normalization Help
Optimization?" (NeurIPS 2018) argue that BatchNorm helps by making the loss
landscape smoother, not by reducing internal covariate shift. Their
instruments, at a point ``x`` (the current parameters) with gradient
``g = grad L(x)``, for step sizes ``eta`` in a range (default 0.05 to 0.4):

- **loss landscape**: ``L(x - eta g)``; its band ``[min, max]`` over ``eta``
  (a narrow band = the loss changes predictably along the step);
- **gradient predictiveness**: ``||g - grad L(x - eta g)||_2``; its band
  (small = the gradient stays a good guide as we move);
- **effective beta-smoothness**: ``max_eta ||g - grad L(x - eta g)|| / ||eta g||``,
  the largest change of the gradient per unit distance moved along ``g``
  (a lower bound on the Lipschitz constant of the gradient along the path).

And their **internal covariate shift** measure (Sec. 2.2): for each layer
``i``, ``G = grad_{W_i} L`` at the current parameters and ``G'`` the same
gradient after every *earlier* layer's parameters take an SGD step
``p -= lr * grad_p L`` on the same batch (layer ``i`` and later unchanged);
reported as ``||G - G'||_2`` and ``cos(G, G')``.

Data and state: ``data`` is one batch or an iterable of batches (the loss is
the size-weighted mean, see :mod:`normlab.analysis._common`); ``bn_mode`` is
required: ``"train"`` evaluates the training loss (batch statistics),
``"eval"`` the inference function (see :func:`normlab.analysis.set_bn_mode`).
Every tool restores the parameters, buffers (running statistics) and training
flags, and never touches ``.grad`` (gradients come from ``torch.autograd.grad``).
Distances and norms are computed in float64 from the parameters' dtype.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from normlab.analysis import loss_landscape, internal_covariate_shift, plot_landscape
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> model = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
    >>> batch = (torch.randn(64, 10), torch.randint(0, 3, (64,)))
    >>> res = loss_landscape(model, nn.functional.cross_entropy, batch, bn_mode="train")
    >>> res.losses.shape, res.loss_band[0] <= res.loss_band[1], res.beta_eff > 0
    (torch.Size([8]), True, True)
    >>> ics = internal_covariate_shift(model, nn.functional.cross_entropy, batch, lr=0.1, bn_mode="train")
    >>> ics.layers, float(ics.l2[0])   # the first layer has no earlier layers: no shift
    (['0', '3'], 0.0)
    >>> fig = plot_landscape([res, res])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ._common import BNMode, LossFn, as_batches, batch_weights, check_bn_mode, params_of, preserved_state, set_bn_mode
from ._layers import is_linear_or_conv, select_layers

__all__ = [
    "ICSResult",
    "LandscapeResult",
    "internal_covariate_shift",
    "loss_landscape",
    "plot_ics",
    "plot_landscape",
]


@dataclass
class LandscapeResult:
    """The loss and gradient along ``x - eta g`` for each step size ``eta``."""

    step_sizes: Tensor  # (K,) float64
    loss: float  # L(x)
    grad_norm: float  # ||g||
    losses: Tensor  # (K,) L(x - eta g)
    grad_changes: Tensor  # (K,) ||g - grad L(x - eta g)||
    info: dict = field(default_factory=dict)

    @property
    def loss_band(self) -> tuple[float, float]:
        return float(self.losses.min()), float(self.losses.max())

    @property
    def grad_band(self) -> tuple[float, float]:
        return float(self.grad_changes.min()), float(self.grad_changes.max())

    @property
    def beta_per_step(self) -> Tensor:
        """``||g - grad L(x - eta g)|| / ||eta g||`` for each eta."""
        return self.grad_changes / (self.step_sizes * self.grad_norm)

    @property
    def beta_eff(self) -> float:
        """Effective beta-smoothness: ``max_eta ||g - grad L(x - eta g)|| / ||eta g||`` (nan if ``g = 0``)."""
        if self.grad_norm == 0:
            return math.nan
        return float(self.beta_per_step.max())


@dataclass
class ICSResult:
    """Santurkar et al.'s internal covariate shift of each layer."""

    layers: list[str]
    l2: Tensor  # (L,) ||G - G'||
    cosine: Tensor  # (L,) cos(G, G'); nan where a gradient is zero
    grad_norms: Tensor  # (L,) ||G||
    lr: float
    info: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            n: {"l2": float(a), "cosine": float(c), "grad_norm": float(g)}
            for n, a, c, g in zip(self.layers, self.l2, self.cosine, self.grad_norms, strict=False)
        }


def _check_loss_fn(loss_fn) -> None:
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (outputs, targets) -> scalar, got {type(loss_fn).__name__}")


def _loss_and_grads(model, loss_fn, batches, weights, params: list[Tensor]) -> tuple[float, list[Tensor]]:
    """Size-weighted loss over the batches and its gradient w.r.t. ``params`` (zeros where unused)."""
    total = 0.0
    grads = [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        for (inputs, targets), w in zip(batches, weights, strict=False):
            loss = loss_fn(model(inputs), targets)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ValueError("loss_fn must return a scalar tensor (use a mean- or sum-reduced loss)")
            gs = torch.autograd.grad(loss, params, allow_unused=True)
            total += w * float(loss.detach())
            for acc, g in zip(grads, gs, strict=False):
                if g is not None:
                    acc.add_(g, alpha=w)
    return total, grads


def _flat64(ts: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1).to(torch.float64) for t in ts])


def _check_step_sizes(step_sizes) -> Tensor:
    try:
        etas = torch.as_tensor(step_sizes, dtype=torch.float64).reshape(-1)
    except Exception as e:  # noqa: BLE001 - reraised with the expected input
        raise TypeError(f"step_sizes must be a sequence or tensor of floats, got {type(step_sizes).__name__}") from e
    if etas.numel() == 0:
        raise ValueError("step_sizes is empty: pass at least one step size")
    if not bool(torch.isfinite(etas).all()) or bool((etas <= 0).any()):
        raise ValueError(f"step_sizes must be finite and > 0, got {etas.tolist()}")
    return etas


def loss_landscape(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    step_sizes=None,
    *,
    bn_mode: BNMode,
    params: list[Tensor] | None = None,
) -> LandscapeResult:
    """Loss, gradient predictiveness and effective beta-smoothness along the gradient direction.

    Args:
        model, loss_fn, data: the loss ``L`` (size-weighted over batches).
        step_sizes: the ``eta`` values (default ``torch.linspace(0.05, 0.4, 8)``,
            Santurkar et al.'s range); all > 0.
        bn_mode: required; ``"train"`` (the training loss, batch statistics) or
            ``"eval"`` (the inference function); see :func:`normlab.analysis.set_bn_mode`.
        params: the parameters that move (default: all trainable); ``g`` is
            the gradient with respect to them.

    Returns:
        :class:`LandscapeResult` (``loss_band``, ``grad_band``, ``beta_eff``
        are properties). The model is restored exactly.
    """
    check_bn_mode(bn_mode)
    _check_loss_fn(loss_fn)
    etas = _check_step_sizes(torch.linspace(0.05, 0.4, 8) if step_sizes is None else step_sizes)
    batches = as_batches(data)
    weights = batch_weights(batches)
    ps = params_of(model, params)
    losses, changes = [], []
    with preserved_state(model):
        set_bn_mode(model, bn_mode)
        loss0, g = _loss_and_grads(model, loss_fn, batches, weights, ps)
        g64 = _flat64(g)
        start = [p.detach().clone() for p in ps]
        try:
            for eta in etas.tolist():
                with torch.no_grad():
                    for p, p0, gp in zip(ps, start, g, strict=False):
                        p.copy_(p0 - eta * gp)
                loss, g_eta = _loss_and_grads(model, loss_fn, batches, weights, ps)
                losses.append(loss)
                changes.append(float(torch.linalg.vector_norm(g64 - _flat64(g_eta))))
        finally:  # also restores params= tensors that are not the model's own
            with torch.no_grad():
                for p, p0 in zip(ps, start, strict=False):
                    p.copy_(p0)
    return LandscapeResult(
        step_sizes=etas,
        loss=loss0,
        grad_norm=float(torch.linalg.vector_norm(g64)),
        losses=torch.tensor(losses, dtype=torch.float64),
        grad_changes=torch.tensor(changes, dtype=torch.float64),
        info={"bn_mode": bn_mode, "num_params": int(g64.numel())},
    )


def _owns_trainable(m: nn.Module) -> bool:
    return any(p.requires_grad for p in m.parameters())


def internal_covariate_shift(
    model: nn.Module,
    loss_fn: LossFn,
    data,
    lr: float,
    layers=None,
    *,
    bn_mode: BNMode,
) -> ICSResult:
    """Santurkar et al.'s ICS: how much a layer's gradient changes when the earlier layers take their step.

    For each chosen layer ``i``: ``G`` is the gradient of the loss with respect
    to the layer's trainable parameters (weight and bias, flattened together)
    at the current point; ``G'`` is the same gradient after every trainable
    parameter registered *before* the layer's first parameter (in
    ``model.named_parameters()`` order, which is the forward order for
    ``nn.Sequential`` and models that register layers in the order they use
    them) is moved by ``-lr * grad``, the gradient at the current point on the
    same data. Parameters of layer ``i`` and later stay at the current point.

    Args:
        lr: the SGD step size (> 0).
        layers: ``None`` (every ``nn.Linear``/``nn.Conv*`` with trainable
            parameters), a type, or a list of names/modules.
        bn_mode: required; ``"train"`` (the training loss, batch statistics: the
            paper's setting) or ``"eval"``; see :func:`normlab.analysis.set_bn_mode`.

    Returns:
        :class:`ICSResult` with ``l2 = ||G - G'||`` and ``cosine = cos(G, G')`` per layer.
    """
    check_bn_mode(bn_mode)
    _check_loss_fn(loss_fn)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    batches = as_batches(data)
    weights = batch_weights(batches)
    chosen = select_layers(
        model, layers, lambda m: is_linear_or_conv(m) and _owns_trainable(m), "nn.Linear/Conv layers"
    )
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    all_params = params_of(model, [p for _, p in named])
    position = {id(p): i for i, (_, p) in enumerate(named)}
    plans = []
    for name, module in chosen:
        own = [p for p in module.parameters() if p.requires_grad]
        if not own:
            raise ValueError(f"layer {name} has no trainable parameters: ICS is defined on a layer's gradient")
        first = min(position[id(p)] for p in own)
        own_ids = {id(p) for p in own}
        earlier = [i for i in range(first) if id(named[i][1]) not in own_ids]
        plans.append((name, [position[id(p)] for p in own], earlier))

    l2, cos, norms = [], [], []
    with preserved_state(model):
        set_bn_mode(model, bn_mode)
        _, grads = _loss_and_grads(model, loss_fn, batches, weights, all_params)
        start = [p.detach().clone() for p in all_params]
        for _name, own_idx, earlier in plans:
            G = _flat64([grads[i] for i in own_idx])
            with torch.no_grad():
                for i in earlier:
                    all_params[i].copy_(start[i] - lr * grads[i])
            _, g_own = _loss_and_grads(model, loss_fn, batches, weights, [all_params[i] for i in own_idx])
            with torch.no_grad():
                for i in earlier:
                    all_params[i].copy_(start[i])
            G2 = _flat64(g_own)
            nG, nG2 = torch.linalg.vector_norm(G), torch.linalg.vector_norm(G2)
            l2.append(float(torch.linalg.vector_norm(G - G2)))
            norms.append(float(nG))
            cos.append(float(G @ G2 / (nG * nG2)) if nG > 0 and nG2 > 0 else math.nan)
    f64 = torch.float64
    return ICSResult(
        layers=[n for n, _ in chosen],
        l2=torch.tensor(l2, dtype=f64),
        cosine=torch.tensor(cos, dtype=f64),
        grad_norms=torch.tensor(norms, dtype=f64),
        lr=float(lr),
        info={"bn_mode": bn_mode, "earlier_params": {n: [named[i][0] for i in e] for n, _, e in plans}},
    )


def _as_list(results, cls, what: str) -> list:
    items = [results] if isinstance(results, cls) else list(results)
    if not items or any(not isinstance(r, cls) for r in items):
        raise TypeError(f"expected a {what} or a non-empty sequence of them")
    return items


def plot_landscape(results, steps: Sequence[float] | None = None):
    """Santurkar et al.'s panels: loss band, gradient-predictiveness band, effective beta-smoothness.

    One :class:`LandscapeResult`: loss and gradient change against the step
    size. A sequence (measured along a training run; ``steps`` gives the
    training steps, default 0, 1, ...): the bands as shaded ranges and
    ``beta_eff`` against the step. Returns a ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    items = _as_list(results, LandscapeResult, "LandscapeResult")
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    ax_loss, ax_grad, ax_beta = fig.subplots(1, 3)
    if isinstance(results, LandscapeResult):
        r = items[0]
        eta = r.step_sizes.numpy()
        ax_loss.plot(eta, r.losses.numpy(), marker=".")
        ax_loss.axhline(r.loss, color="gray", lw=0.8, ls="--", label="L(x)")
        ax_loss.legend(fontsize="small")
        ax_grad.plot(eta, r.grad_changes.numpy(), marker=".")
        ax_beta.plot(eta, r.beta_per_step.numpy(), marker=".")
        for ax in (ax_loss, ax_grad, ax_beta):
            ax.set_xlabel("step size eta")
    else:
        xs = list(range(len(items))) if steps is None else list(steps)
        if len(xs) != len(items):
            raise ValueError(f"steps has {len(xs)} entries for {len(items)} results")
        lo, hi = zip(*(r.loss_band for r in items), strict=False)
        ax_loss.fill_between(xs, lo, hi, alpha=0.4)
        glo, ghi = zip(*(r.grad_band for r in items), strict=False)
        ax_grad.fill_between(xs, glo, ghi, alpha=0.4)
        ax_beta.plot(xs, [r.beta_eff for r in items], marker=".")
        for ax in (ax_loss, ax_grad, ax_beta):
            ax.set_xlabel("training step")
    ax_loss.set_title("loss landscape L(x - eta g)")
    ax_grad.set_title("gradient predictiveness ||g - g(x - eta g)||")
    ax_beta.set_title("effective beta-smoothness")
    return fig


def plot_ics(results, steps: Sequence[float] | None = None):
    """ICS per layer: bars of ``||G - G'||`` and ``cos(G, G')`` for one result, lines against the step for several.

    Returns a ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    items = _as_list(results, ICSResult, "ICSResult")
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax_l2, ax_cos = fig.subplots(1, 2)
    if isinstance(results, ICSResult):
        r = items[0]
        pos = list(range(len(r.layers)))
        ax_l2.bar(pos, r.l2.numpy())
        ax_cos.bar(pos, r.cosine.numpy())
        for ax in (ax_l2, ax_cos):
            ax.set_xticks(pos, r.layers, rotation=45, ha="right")
            ax.set_xlabel("layer")
    else:
        xs = list(range(len(items))) if steps is None else list(steps)
        if len(xs) != len(items):
            raise ValueError(f"steps has {len(xs)} entries for {len(items)} results")
        for j, name in enumerate(items[0].layers):
            ax_l2.plot(xs, [float(r.l2[j]) for r in items], marker=".", label=name)
            ax_cos.plot(xs, [float(r.cosine[j]) for r in items], marker=".", label=name)
        ax_l2.legend(fontsize="small")
        for ax in (ax_l2, ax_cos):
            ax.set_xlabel("training step")
    ax_l2.set_title("ICS: ||G - G'||")
    ax_cos.set_title("ICS: cos(G, G')")
    return fig
