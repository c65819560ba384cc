"""Helpers shared by several claims: one intra-op thread, numbers from JSON, seed bands, MLP runs.

Private to ``normlab.claims``; nothing here decides a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..analysis import ActivationProbe
from ..data import Dataset
from ..models import MLP, init_weights
from ..train import seed_everything, train
from ._support import num, single_thread
from .base import mean_std

CHANCE = 0.1  # ten balanced classes (mnist1d, digits)


# Shared with the other claims' helpers (one definition each).
one_thread = single_thread


def seed_mean(rows: Sequence[dict], key: str) -> tuple[float, float]:
    """Mean and std over seeds of ``row[key]`` (non-finite values are left out, as in :func:`mean_std`)."""
    return mean_std([num(r[key]) for r in rows])


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


def mlp_run(
    data: Dataset,
    *,
    seed: int,
    depth: int,
    width: int,
    c: float,
    norm: str | None,
    lr: float,
    momentum: float,
    batch_size: int,
    epochs: int,
    probe_examples: int = 500,
) -> dict:
    """Train one deep ReLU MLP with W ~ N(0, c / fan_in); per-layer norms at init and after training.

    Returns a JSON-safe dict: ``init_act``/``init_grad`` and ``final_act``/``final_grad``
    (ReLU-output norms and their gradient norms on the first ``probe_examples``
    training examples), ``input_norm``, the per-epoch mean training loss, the
    first step's loss, test/train accuracy per epoch, ``diverged``.
    """
    gen = seed_everything(seed)
    model = MLP(data.x_train.shape[1], data.num_classes, width=width, depth=depth, norm=norm)
    init_weights(model, "gaussian", c=c, generator=gen)
    xb, yb = data.x_train[:probe_examples], data.y_train[:probe_examples]
    init_act, init_grad = probe_norms(model, xb, yb)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    per_epoch = len(data.x_train) // batch_size
    hist = train(
        model, data, opt, epochs=epochs, batch_size=batch_size, seed=seed, eval_every=per_epoch, progress=False
    )
    final_act, final_grad = probe_norms(model, xb, yb)
    epoch_loss = [
        sum(hist.loss[i : i + per_epoch]) / len(hist.loss[i : i + per_epoch])
        for i in range(0, len(hist.loss), per_epoch)
    ]
    return {
        "seed": seed,
        "c": c,
        "norm": norm or "none",
        "input_norm": float(xb.norm()),
        "init_act": init_act,
        "init_grad": init_grad,
        "final_act": final_act,
        "final_grad": final_grad,
        "first_loss": hist.loss[0] if hist.loss else math.nan,
        "epoch_loss": epoch_loss,
        "eval_steps": hist.eval_steps,
        "test_acc": hist.test_acc,
        "train_acc": hist.train_acc,
        "final_test_acc": hist.final_test_acc,
        "diverged": hist.diverged,
        "steps": len(hist.loss),
        "seconds": hist.seconds,
    }


def quick_verdict(verdict, why: str):
    """A quick run too small to decide: ``inconclusive``, keeping what the full rule says on it and its numbers."""
    from .base import Verdict

    return Verdict(
        "inconclusive",
        f"quick run ({why}) is too small to decide; on it the rule reads {verdict.status}: {verdict.reason}",
        verdict.numbers,
    )
