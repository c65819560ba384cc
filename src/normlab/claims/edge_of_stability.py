"""edge-of-stability: under full-batch GD, sharpness rises to ~2/eta and hovers there, with and without BN.

Source: Cohen, Kaur, Li, Kolter & Talwalkar 2021, "Gradient Descent on Neural
Networks Typically Occurs at the Edge of Stability".

Protocol: Cohen et al.'s fc-tanh, 40-200-200-10 (two hidden tanh layers of
200), PyTorch's default initialization as in their code, on the first 1000
MNIST-1D training examples with the square loss on one-hot targets in their
form, ``0.5 * sum over classes, mean over examples`` (a different constant
only rescales the step size). The seed sets the initialization only (the data
and GD are deterministic). A second net puts BatchNorm before each tanh and
is analyzed in training mode (``bn_mode="train"``: with full-batch GD the
batch statistics are those of the whole set, so the training loss is a fixed
function). Full-batch gradient descent (plain SGD on the whole set, no
momentum) at eta in {0.1, 0.2, 0.25}. Runs have equal length in "time"
``eta * steps = 120`` (1200, 600 and 480 steps; CLAIMS.md's ~4000 steps do not
fit 18 runs into 5 minutes on 2 cores, and at eta = 0.1 the plain net's
sharpness reaches 2/eta after ~700 steps). lambda_max (the top Hessian
eigenvalue of the full-batch training loss, by
:class:`normlab.analysis.SharpnessTracker`, warm-started Lanczos, tol 1e-3) is
measured 24 times per run, before the update of the step. A run whose loss becomes non-finite is stopped and marked
diverged.

Rule (CLAIMS.md): the late-training median of lambda_max * eta / 2 lies in
[0.9, 1.2] for every step size (and both nets, as the statement says "with and
without BN"). "Late" is the second half of the run (time >= 60); the per-seed
medians are averaged over seeds; a net/step-size pair with a diverged seed
fails; for such pairs the numbers and the reason give the initial
lambda_max * eta / 2 (above 1 means GD starts beyond its stability limit).
With fewer than 3 seeds (quick mode) the verdict is ``inconclusive``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..analysis import SharpnessTracker
from ..data import mnist1d
from ..models import MLP
from ..train import seed_everything
from ._support import fmt, nanmean, nanmedian, nanstd, num, seeds_caveat, single_thread
from .base import Claim, Context, Verdict

LRS = (0.1, 0.2, 0.25)
TIME = 120.0  # eta * steps
QUICK_TIME = 20.0
MEASUREMENTS = 24
N_EXAMPLES = 1000
BAND = (0.9, 1.2)
YLIM = (0.05, 20.0)  # the figure's y range (diverging runs are clipped)
NETS = ("fc-tanh", "fc-tanh-bn")


def square_loss(out, target):
    """Cohen et al.'s square loss: 0.5 * ||f(x) - y||^2 summed over classes, averaged over examples."""
    return 0.5 * ((out - target) ** 2).sum(dim=1).mean()


def _run(x, t, net: str, lr: float, seed: int, time_budget: float, measurements: int = MEASUREMENTS) -> dict:
    seed_everything(seed)
    model = MLP(x.shape[1], 10, width=200, depth=2, norm="bn" if net.endswith("bn") else None, activation="tanh")
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    steps = int(round(time_budget / lr))
    every = max(1, steps // measurements)
    tracker = SharpnessTracker(model, square_loss, (x, t), every=every, bn_mode="train", tol=1e-3, seed=seed)
    losses, diverged = [], False
    for step in range(steps + 1):
        try:
            tracker.step(step)
        except Exception:  # non-finite parameters or curvature make the eigen-solver fail: the run has diverged
            with torch.no_grad():
                finite_loss = math.isfinite(float(square_loss(model(x), t)))
            if finite_loss and all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                raise
            diverged = True
            break
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss = square_loss(model(x), t)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        losses.append(value)
        if not math.isfinite(value):
            diverged = True
            break
    loss_every = max(1, steps // 100)
    return {
        "seed": seed,
        "lr": lr,
        "steps": steps,
        "measure_steps": tracker.steps,
        "lambda_max": tracker.values,
        "loss_steps": list(range(0, len(losses), loss_every)),
        "loss": losses[::loss_every],
        "diverged": diverged,
    }


def _late_median(run: dict) -> float:
    """Median of lambda_max * eta / 2 over the measurements in the second half of the run (nan if diverged)."""
    if run["diverged"]:
        return math.nan
    lr, half = num(run["lr"]), run["steps"] / 2
    vals = [num(v) * lr / 2 for s, v in zip(run["measure_steps"], run["lambda_max"], strict=False) if s >= half]
    return nanmedian(vals)


class EdgeOfStability(Claim):
    id = "edge-of-stability"
    title = "Sharpness hovers at 2/eta under GD"
    source = "Cohen et al. 2021"
    statement = "under full-batch GD, sharpness rises to ~2/eta and hovers there, with and without BN"
    protocol = (
        "fc-tanh 40-200-200-10 (and with BN before each tanh, train mode), square loss on one-hot targets, "
        "1000 mnist1d examples, full-batch GD at eta in {0.1, 0.2, 0.25} for eta*steps = 120; lambda_max 24x per run"
    )
    rule = (
        "late-training (second half) median of lambda_max * eta / 2, averaged over seeds, in [0.9, 1.2] "
        "for every step size and both nets; a diverged seed fails its pair"
    )

    def run(self, ctx: Context) -> dict:
        lrs = ctx.pick((0.25,), LRS)
        budget = ctx.pick(QUICK_TIME, TIME)
        with single_thread():
            data = mnist1d()
            x = data.x_train[:N_EXAMPLES]
            t = F.one_hot(data.y_train[:N_EXAMPLES], 10).to(x.dtype)
            runs = []
            for net in NETS:
                for lr in lrs:
                    for seed in ctx.seeds:
                        r = _run(x, t, net, lr, seed, budget, ctx.pick(10, MEASUREMENTS))
                        r["net"] = net
                        runs.append(r)
                        ctx.log(
                            f"  {net} lr={lr:g} seed {seed}: late lambda*eta/2 = {fmt(_late_median(r))}"
                            + (" (diverged)" if r["diverged"] else "")
                        )
        return {"runs": runs, "lrs": list(lrs), "nets": list(NETS), "time": budget, "n_seeds": len(ctx.seeds)}

    def verdict(self, evidence: dict) -> Verdict:
        runs = evidence["runs"]
        if not runs:
            return Verdict("inconclusive", "no runs")
        numbers, bad, parts = {}, [], []
        for net in evidence["nets"]:
            for lr in evidence["lrs"]:
                rs = [r for r in runs if r["net"] == net and num(r["lr"]) == num(lr)]
                meds = [_late_median(r) for r in rs]
                n_div = sum(bool(r["diverged"]) for r in rs)
                m = nanmean(meds) if n_div == 0 else math.nan
                key = f"{net}_lr{num(lr):g}"
                numbers[key] = m
                numbers[key + "_diverged"] = float(n_div)
                ok = n_div == 0 and BAND[0] <= m <= BAND[1]
                init = nanmean([num(r["lambda_max"][0]) * num(lr) / 2 for r in rs if r["lambda_max"]])
                numbers[key + "_initial"] = init
                label = f"{net} eta={num(lr):g}: " + (
                    f"{fmt(m)}" if n_div == 0 else f"diverged in {n_div}/{len(rs)} (initial {fmt(init)})"
                )
                parts.append(label)
                if not ok:
                    bad.append(label)
        reason = f"late median lambda_max*eta/2: {'; '.join(parts)} (band {BAND[0]}..{BAND[1]})"
        caveat = seeds_caveat(int(evidence["n_seeds"]))
        status = "holds" if not bad else "fails"
        if caveat:
            return Verdict("inconclusive", f"{caveat}; would be {status}: {reason}", numbers)
        if not bad:
            return Verdict("holds", reason, numbers)
        return Verdict("fails", f"outside the band: {'; '.join(bad)}. All: {reason}", numbers)

    def plot(self, evidence: dict, fig) -> None:
        runs = evidence["runs"]
        nets = evidence["nets"]
        axes = fig.subplots(1, len(nets) + 1)
        for ax, net in zip(axes, nets, strict=False):
            for i, lr in enumerate(evidence["lrs"]):
                rs = [r for r in runs if r["net"] == net and num(r["lr"]) == num(lr)]
                for j, r in enumerate(rs):
                    ts = [s * num(lr) for s in r["measure_steps"]]
                    vals = [min(max(num(v) * num(lr) / 2, YLIM[0]), YLIM[1]) for v in r["lambda_max"]]
                    ax.plot(ts, vals, color=f"C{i}", lw=1, alpha=0.8, label=f"eta={num(lr):g}" if j == 0 else None)
                    if r["diverged"]:
                        ax.plot(ts[-1:] or [0.0], [YLIM[1]], "x", color=f"C{i}", ms=8)
            ax.axhline(1.0, color="k", ls="--", lw=1)
            ax.axhspan(BAND[0], BAND[1], color="gray", alpha=0.15)
            ax.set_yscale("log")
            ax.set_ylim(*YLIM)
            ax.set_xlabel("time = step x eta")
            ax.set_ylabel("lambda_max * eta / 2")
            ax.set_title(f"{net} (x: diverged, clipped at {YLIM[1]:g})", fontsize=9)
            ax.legend(fontsize=7)
        ax = axes[-1]
        for k, net in enumerate(nets):
            for i, lr in enumerate(evidence["lrs"]):
                rs = [r for r in runs if r["net"] == net and num(r["lr"]) == num(lr)]
                meds = [_late_median(r) for r in rs]
                x = k * (len(evidence["lrs"]) + 1) + i
                m, s = nanmean(meds), nanstd(meds)
                ax.bar(x, m if math.isfinite(m) else 0, yerr=s if math.isfinite(s) else 0, color=f"C{i}", alpha=0.6)
                ax.scatter([x] * len(meds), [v if math.isfinite(v) else 0 for v in meds], color="k", s=8)
        ax.axhspan(BAND[0], BAND[1], color="gray", alpha=0.15)
        ticks = [k * (len(evidence["lrs"]) + 1) + i for k in range(len(nets)) for i in range(len(evidence["lrs"]))]
        names = [f"{'BN' if n.endswith('bn') else 'plain'} {num(lr):g}" for n in nets for lr in evidence["lrs"]]
        ax.set_xticks(ticks, names, rotation=30, fontsize=7)
        ax.set_ylabel("late median (0 = diverged)")


CLAIM = EdgeOfStability()
