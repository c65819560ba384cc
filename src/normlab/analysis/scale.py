"""Scale: scale invariance checks, effective learning rate and angular updates.

A weight followed by a normalization over what it produces (a Linear or Conv
before BatchNorm, a weight-normalized or weight-standardized weight) is
**scale invariant**: ``f(c w) = f(w)`` for every ``c > 0``. Two consequences
(van Laarhoven 2017; Hoffer et al. 2018; Arora et al. 2019):

- the gradient scales inversely, ``grad f(c w) = grad f(w) / c``, and is
  orthogonal to ``w``;
- so SGD with step ``eta`` moves the *direction* ``w/||w||`` as if the step
  were the **effective learning rate** ``eta / ||w||^2``; ``||w||`` grows
  without weight decay (and is held by it), and what matters is the
  **angular update**, the angle between ``w_t`` and ``w_{t+1}``.

:func:`scale_invariance` checks the first on any model and parameter;
:class:`EffectiveLRTracker` records ``||w||``, ``eta / ||w||^2`` and the
angular update of chosen weights during training.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from normlab.analysis import scale_invariance, EffectiveLRTracker, plot_effective_lr
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    >>> x = torch.randn(32, 8)
    >>> r = scale_invariance(model, "0.weight", x, cs=(10.0, 1000.0), bn_mode="train")
    >>> float(r.output_change.max()) < 1e-4, float((r.grad_ratio - 1).abs().max()) < 1e-3
    (True, True)
    >>> float(scale_invariance(model, "3.weight", x, cs=(10.0,), bn_mode="train").output_change[0]) > 1
    True
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> tracker = EffectiveLRTracker([("0.weight", model[0].weight)], lr=opt)
    >>> for _ in range(3):
    ...     loss = nn.functional.cross_entropy(model(x), torch.zeros(32, dtype=torch.long))
    ...     opt.zero_grad(); loss.backward(); opt.step()
    ...     _ = tracker.update()
    >>> d = tracker.as_dict()["0.weight"]
    >>> len(d["angle"]), d["effective_lr"][0] == 0.1 / d["norm"][0] ** 2
    (3, True)
    >>> fig = plot_effective_lr(tracker)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ._common import BNMode, check_bn_mode, preserved_state, set_bn_mode

__all__ = ["EffectiveLRTracker", "ScaleInvarianceResult", "ScaleRecord", "plot_effective_lr", "scale_invariance"]


@dataclass
class ScaleInvarianceResult:
    """Output and gradient under ``w -> c w`` for each ``c`` (1 and 0 for a scale-invariant weight)."""

    param: str
    cs: Tensor  # (K,) float64
    output_change: Tensor  # (K,) ||f(cw) - f(w)|| / ||f(w)||
    grad_ratio: Tensor  # (K,) c ||grad(cw)|| / ||grad(w)||
    grad_cosine: Tensor  # (K,) cos(grad(cw), grad(w))
    info: dict = field(default_factory=dict)

    def is_invariant(self, rtol: float = 1e-3) -> bool:
        """Output change below ``rtol`` and gradient ratio within ``rtol`` of 1 for every ``c``."""
        return bool((self.output_change <= rtol).all() and ((self.grad_ratio - 1).abs() <= rtol).all())


def _flat64(t: Tensor) -> Tensor:
    return t.detach().reshape(-1).to(torch.float64)


def scale_invariance(
    model: nn.Module,
    param,
    x,
    cs: Sequence[float] = (0.1, 10.0, 1000.0),
    loss_fn: Callable | None = None,
    *,
    bn_mode: BNMode,
    seed: int = 0,
) -> ScaleInvarianceResult:
    """Check that ``model``'s output and gradient behave as for a scale-invariant ``param``.

    For each ``c`` the parameter is set to ``c w`` and the function measures
    the relative output change ``||f(cw) - f(w)|| / ||f(w)||`` (0 if
    invariant), the gradient ratio ``c ||grad(cw)|| / ||grad(w)||`` (1 if
    invariant) and the cosine between the two gradients (1 if invariant).

    Args:
        model: a module or model containing ``param``; restored exactly.
        param: the parameter (a tensor of the model) or its name in
            ``model.named_parameters()``.
        x: the inputs (a tensor), or an ``(inputs, targets)`` pair.
        cs: scale factors, each finite and > 0.
        loss_fn: the scalar differentiated: ``loss_fn(output)`` for tensor
            ``x``, ``loss_fn(output, targets)`` for a pair. Default: a fixed
            random linear functional ``sum(output * r)``, ``r ~ N(0, 1)``
            drawn with ``seed`` (any scalar works: invariance of the output
            implies it for every loss).
        bn_mode: required. ``"train"`` (the training function: BatchNorm
            uses batch statistics and makes the weight before it invariant)
            or ``"eval"`` (running statistics: it does not). See
            :func:`normlab.analysis.set_bn_mode`.
        seed: the seed of the default loss's random functional.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected model to be a torch.nn.Module, got {type(model).__name__}")
    check_bn_mode(bn_mode)
    named = dict(model.named_parameters())
    if isinstance(param, str):
        if param not in named:
            raise ValueError(f"no parameter named {param!r} in the model; names: {list(named)[:10]}")
        name, p = param, named[param]
    elif isinstance(param, Tensor):
        matches = [n for n, q in named.items() if q is param]
        if not matches:
            raise ValueError("param is not a parameter of the model (pass the model that contains it, or its name)")
        name, p = matches[0], param
    else:
        raise TypeError(f"param must be a parameter of the model or its name, got {type(param).__name__}")
    if isinstance(x, (tuple, list)) and len(x) == 2 and isinstance(x[0], Tensor):
        inputs, targets, paired = x[0], x[1], True
    elif isinstance(x, Tensor):
        inputs, targets, paired = x, None, False
    else:
        raise TypeError(f"x must be a tensor of inputs or an (inputs, targets) pair, got {type(x).__name__}")
    try:
        cs_t = torch.as_tensor(cs, dtype=torch.float64).reshape(-1)
    except Exception as e:  # noqa: BLE001 - reraised with the expected input
        raise TypeError(f"cs must be a sequence of floats, got {cs!r}") from e
    if cs_t.numel() == 0 or not bool(torch.isfinite(cs_t).all()) or bool((cs_t <= 0).any()):
        raise ValueError(f"cs must be a non-empty sequence of finite factors > 0, got {cs_t.tolist()}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable or None, got {type(loss_fn).__name__}")

    r_cache: list[Tensor] = []

    def evaluate() -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            out = model(inputs)
            if not isinstance(out, Tensor):
                raise TypeError(f"the model must return a tensor, got {type(out).__name__}")
            if loss_fn is None:
                if not r_cache:
                    g = torch.Generator().manual_seed(seed)
                    r_cache.append(torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype))
                loss = (out * r_cache[0]).sum()
            else:
                loss = loss_fn(out, targets) if paired else loss_fn(out)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ValueError("loss_fn must return a scalar tensor")
            (grad,) = torch.autograd.grad(loss, [p], allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(p)
        return _flat64(out), _flat64(grad)

    changes, ratios, cosines = [], [], []
    with preserved_state(model):
        set_bn_mode(model, bn_mode)
        w0 = p.detach().clone()
        try:
            out0, g0 = evaluate()
            n_out0, n_g0 = torch.linalg.vector_norm(out0), torch.linalg.vector_norm(g0)
            for c in cs_t.tolist():
                with torch.no_grad():
                    p.copy_(w0 * c)
                out, g = evaluate()
                n_g = torch.linalg.vector_norm(g)
                changes.append(float(torch.linalg.vector_norm(out - out0) / n_out0))
                ratios.append(float(c * n_g / n_g0) if n_g0 > 0 else math.nan)
                cosines.append(float(g @ g0 / (n_g * n_g0)) if n_g0 > 0 and n_g > 0 else math.nan)
        finally:
            with torch.no_grad():
                p.copy_(w0)
    f64 = torch.float64
    return ScaleInvarianceResult(
        name,
        cs_t,
        torch.tensor(changes, dtype=f64),
        torch.tensor(ratios, dtype=f64),
        torch.tensor(cosines, dtype=f64),
        {"bn_mode": bn_mode, "grad_norm": float(n_g0)},
    )


# -- effective learning rate ---------------------------------------------------------------------


@dataclass
class ScaleRecord:
    """One tracked weight on one step ``t``: ``w_t`` before the step, ``w_{t+1}`` after it."""

    step: int
    name: str
    lr: float  # eta_t
    norm: float  # ||w_t||
    effective_lr: float  # eta_t / ||w_t||^2
    angle: float  # angle(w_t, w_{t+1}) in radians
    next_norm: float  # ||w_{t+1}||


def _angles_and_norms(prev: list[Tensor], cur: list[Tensor]) -> list[tuple[float, float, float]]:
    """``(||a||, ||b||, angle(a, b))`` per pair, float64, one host transfer for all."""
    rows = []
    for a, b in zip(prev, cur, strict=False):
        a64, b64 = _flat64(a), _flat64(b)
        na, nb = torch.linalg.vector_norm(a64), torch.linalg.vector_norm(b64)
        ua, ub = a64 / na, b64 / nb
        # angle = 2 atan2(||ua - ub||, ||ua + ub||) == arccos(clamp(cos, -1, 1)), but exact to rounding for
        # tiny angles where arccos(1 - t^2/2) loses half the digits (updates of 1e-8 rad read as 0).
        ang = 2 * torch.atan2(torch.linalg.vector_norm(ua - ub), torch.linalg.vector_norm(ua + ub))
        rows.append(torch.stack((na, nb, ang)))
    return [tuple(r) for r in torch.stack(rows).tolist()] if rows else []


class EffectiveLRTracker:
    """Record ``||w||``, the effective learning rate ``eta / ||w||^2`` and the angular update per step.

    Args:
        params: the weights to track: an iterable of parameters (named
            ``param0``, ``param1``, ...), of ``(name, parameter)`` pairs (e.g. a
            filtered ``model.named_parameters()``), or a dict.
        lr: the learning rate ``eta`` (a float > 0), or the optimizer, whose
            ``lr`` of the group holding each weight is read at every
            :meth:`update` (so schedules are followed: call ``update`` after
            ``optimizer.step()`` and before ``scheduler.step()``).

    Call :meth:`update` after every optimizer step. Each call compares the
    weights with the copy taken at the previous call (or at construction) and
    appends one :class:`ScaleRecord` per weight; the tracker keeps one copy of
    the tracked weights. The whole tensor is one vector (scale invariance of a
    weight before BatchNorm also holds per output channel; track rows as
    separate tensors for that).
    """

    def __init__(self, params, lr) -> None:
        if isinstance(params, dict):
            items = list(params.items())
        elif isinstance(params, Tensor) or not isinstance(params, Iterable):
            raise TypeError("params must be an iterable of tensors or (name, tensor) pairs, or a dict")
        else:
            items = []
            for i, it in enumerate(params):
                if isinstance(it, Tensor):
                    items.append((f"param{i}", it))
                elif isinstance(it, (tuple, list)) and len(it) == 2 and isinstance(it[1], Tensor):
                    items.append((str(it[0]), it[1]))
                else:
                    raise TypeError(f"params entry {i}: expected a tensor or (name, tensor), got {type(it).__name__}")
        if not items:
            raise ValueError("params is empty: pass the weights to track")
        names = [n for n, _ in items]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate names in params: {names}")
        if isinstance(lr, torch.optim.Optimizer):
            ids = {id(p): g for g in lr.param_groups for p in g["params"]}
            missing = [n for n, p in items if id(p) not in ids]
            if missing:
                raise ValueError(f"the optimizer does not update {missing}")
            self._groups = [ids[id(p)] for _, p in items]
        elif isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite number > 0 or a torch.optim.Optimizer, got {lr!r}")
        else:
            self._groups = None
        self.lr = lr
        self.names = names
        self.params = [p for _, p in items]
        self.step_count = 0
        self.records: list[ScaleRecord] = []
        self._prev = [p.detach().clone() for p in self.params]

    def _lrs(self) -> list[float]:
        if self._groups is None:
            return [float(self.lr)] * len(self.params)
        return [float(g["lr"]) for g in self._groups]

    def update(self) -> list[ScaleRecord]:
        """Record the step just taken (``w_t = `` the previous copy, ``w_{t+1} = `` the weights now)."""
        lrs = self._lrs()
        stats = _angles_and_norms(self._prev, self.params)
        new = []
        for name, lr, (na, nb, ang) in zip(self.names, lrs, stats, strict=False):
            eff = lr / (na * na) if na > 0 else math.inf
            new.append(ScaleRecord(self.step_count, name, lr, na, eff, ang, nb))
        self.records.extend(new)
        self._prev = [p.detach().clone() for p in self.params]
        self.step_count += 1
        return new

    def as_dict(self) -> dict[str, dict[str, list]]:
        """``{name: {"step", "lr", "norm", "effective_lr", "angle", "next_norm": lists}}``."""
        keys = ("step", "lr", "norm", "effective_lr", "angle", "next_norm")
        out: dict[str, dict[str, list]] = {n: {k: [] for k in keys} for n in self.names}
        for r in self.records:
            for k in keys:
                out[r.name][k].append(getattr(r, k))
        return out


def plot_effective_lr(tracker):
    """Three panels against the step: ``||w||``, effective LR ``eta/||w||^2`` (log) and angular update (log).

    ``tracker`` is an :class:`EffectiveLRTracker` or a list of
    :class:`ScaleRecord`. Returns a ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    records = tracker.records if isinstance(tracker, EffectiveLRTracker) else list(tracker)
    if any(not isinstance(r, ScaleRecord) for r in records):
        raise TypeError("expected an EffectiveLRTracker or a list of ScaleRecord")
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    names = list(dict.fromkeys(r.name for r in records))
    for key, ax, title in zip(
        ("norm", "effective_lr", "angle"),
        axes,
        ("||w||", "effective LR eta / ||w||^2", "angular update (rad)"),
        strict=False,
    ):
        for n in names:
            rs = [r for r in records if r.name == n]
            ax.plot([r.step for r in rs], [getattr(r, key) for r in rs], label=n)
        if key != "norm" and records and all(getattr(r, key) > 0 for r in records):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
    if names:
        axes[0].legend(fontsize="small")
    return fig
