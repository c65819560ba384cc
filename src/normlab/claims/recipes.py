"""Shared recipes of the claims: one intra-op thread, seed bands, curves, deep-MLP runs and probes.

Private to ``normlab.claims``; nothing here decides a verdict (rules live in
each claim, statistics over seeds in :mod:`normlab.claims.base`).
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..analysis import ActivationProbe
from ..models import MLP, init_weights
from ..train import seed_everything
from .base import finite, fmt, mean_std, num

__all__ = ["CHANCE", "fmt", "finite", "num"]

CHANCE = 0.1  # ten balanced classes (mnist1d, digits)


def curves_band(curves: Sequence[Sequence[float]]) -> tuple[list[float], list[float], list[float]]:
    """Pointwise (mean, lo, hi) = mean -+ std over seeds of equal-length curves; nan where no seed is finite."""
    if not curves:
        return [], [], []
    n = min(len(c) for c in curves)
    mean, lo, hi = [], [], []
    for i in range(n):
        m, s = mean_std([num(c[i]) for c in curves])
        mean.append(m)
        lo.append(m - s)
        hi.append(m + s)
    return mean, lo, hi


def plot_band(ax, xs, curves, label: str, color=None, log: bool = False, **kw) -> None:
    """Seed-mean curve with a +-1 std band (``log=True``: geometric mean and band, for positive values on log axes)."""
    if log:
        logs = [[math.log(v) if num(v) > 0 else math.nan for v in (num(u) for u in c)] for c in curves]
        mean, lo, hi = (list(map(math.exp, band)) for band in curves_band(logs))
    else:
        mean, lo, hi = curves_band(curves)
    xs = list(xs)[: len(mean)]
    (line,) = ax.plot(xs, mean, label=label, color=color, **kw)
    ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)


def probe_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layer_type=nn.ReLU) -> tuple[list, list]:
    """Per-layer output norms and output-gradient norms of ``layer_type`` modules on one batch (train mode).

    One forward and backward with :class:`normlab.analysis.ActivationProbe`;
    the parameters' ``.grad`` are cleared afterwards and the flag is restored.
    """
    was = model.training
    model.train()
    try:
        with ActivationProbe(model, layers=layer_type) as probe:
            probe.step(0)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            stats = probe.as_dict()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
    # layer names of an nn.Sequential are indices: keep the forward order
    names = sorted(stats, key=lambda n: int(n) if n.isdigit() else n)
    return [stats[n]["norm"][0] for n in names], [stats[n]["grad_norm"][0] for n in names]


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread for the experiment (the machine is shared), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def nanmean(values: Sequence) -> float:
    """Mean of the finite values (nan if there are none)."""
    vals = [num(v) for v in values if finite(v)]
    return statistics.fmean(vals) if vals else math.nan


def nanmedian(values: Sequence) -> float:
    vals = [num(v) for v in values if finite(v)]
    return statistics.median(vals) if vals else math.nan


# --------------------------------------------------------------------------- deep-MLP fits (init/depth claims)


def mlp_fit(
    x: torch.Tensor,
    y: torch.Tensor,
    evals: dict[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    seed: int,
    depth: int,
    width: int,
    c: float,
    norm: str | None,
    lr: float,
    momentum: float,
    batch_size: int,
    steps: int,
    eval_every: int,
    num_classes: int = 10,
    stop_at: tuple[str, float] | None = None,
    plateau: tuple[int, float] | None = None,
    probe_examples: int = 500,
    final: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict:
    """Train one deep ReLU MLP (W ~ N(0, c / fan_in), biases 0) with SGD on ``(x, y)``; a JSON-safe record.

    A leaner :func:`mlp_run`: accuracy is measured only on the named ``evals``
    sets (eval mode) at step 0 and every ``eval_every`` steps (and at the
    end), into ``acc[name]`` aligned with ``eval_steps``; ``window_loss`` is
    the mean training loss of each window between evaluations. The run stops
    early on a non-finite loss (``diverged``; accuracies then nan), when
    ``stop_at = (name, target)`` is reached (``steps_to_target``, else
    ``None``), or, with ``plateau = (window, gain)``, when the ``stop_at``
    set's best accuracy over the last ``window`` steps is less than ``gain``
    above its best before them (``plateaued``). The ``final`` sets are
    evaluated once, at the end (``final_acc[name]``; nan if diverged). Batches: a seeded
    permutation per epoch, the last partial batch dropped. ``init_act`` /
    ``init_grad`` and ``final_act`` / ``final_grad``: per-layer ReLU-output
    norms and their gradient norms on the first ``probe_examples`` of ``x``
    (none if 0).
    """
    gen = seed_everything(seed)
    model = MLP(x.shape[1], num_classes, width=width, depth=depth, norm=norm)
    init_weights(model, "gaussian", c=c, generator=gen)
    xb, yb = x[:probe_examples], y[:probe_examples]
    init_act, init_grad = probe_norms(model, xb, yb) if probe_examples > 0 else ([], [])
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    order_gen = torch.Generator().manual_seed(seed)
    n = len(x)
    acc: dict[str, list[float]] = {k: [] for k in evals}
    eval_steps: list[int] = []
    window_loss: list[float] = []
    first_loss, diverged, plateaued, reached = math.nan, False, False, None

    def evaluate_all(step: int) -> None:
        model.eval()
        with torch.no_grad():
            for k, (ex, ey) in evals.items():
                acc[k].append(float((model(ex).argmax(1) == ey).float().mean()))
        model.train()
        eval_steps.append(step)

    evaluate_all(0)
    order, pos, losses, step = torch.randperm(n, generator=order_gen), 0, [], 0
    while step < steps:
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=order_gen), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        step += 1
        value = float(loss.detach())
        if step == 1:
            first_loss = value
        losses.append(value)
        if not math.isfinite(value):
            diverged = True
            window_loss.append(math.nan)
            eval_steps.append(step)
            for k in acc:
                acc[k].append(math.nan)
            break
        if step % eval_every == 0 or step == steps:
            window_loss.append(statistics.fmean(losses))
            losses = []
            evaluate_all(step)
            if stop_at is not None:
                hist = acc[stop_at[0]]
                if hist[-1] >= stop_at[1]:
                    reached = step
                    break
                if plateau is not None and step >= plateau[0]:
                    k = sum(1 for s in eval_steps if s <= step - plateau[0])
                    if max(hist[k:]) < max(hist[:k]) + plateau[1]:
                        plateaued = True
                        break
    final_acc = {}
    model.eval()
    with torch.no_grad():
        for k, (ex, ey) in (final or {}).items():
            final_acc[k] = math.nan if diverged else float((model(ex).argmax(1) == ey).float().mean())
    model.train()
    final_act, final_grad = probe_norms(model, xb, yb) if probe_examples > 0 and not diverged else ([], [])
    return {
        "final_acc": final_acc,
        "input_norm": float(xb.norm()),
        "init_act": init_act,
        "init_grad": init_grad,
        "final_act": final_act,
        "final_grad": final_grad,
        "first_loss": first_loss,
        "window_loss": window_loss,
        "eval_steps": eval_steps,
        "acc": acc,
        "diverged": diverged,
        "plateaued": plateaued,
        "steps_to_target": reached,
        "steps": step,
    }
