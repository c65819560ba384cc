"""edge-of-stability: under full-batch GD, sharpness rises to ~2/eta and hovers there, with and without BN.

Source: Cohen, Kaur, Li, Kolter & Talwalkar 2021, "Gradient Descent on Neural
Networks Typically Occurs at the Edge of Stability" (code:
github.com/locuslab/edge-of-stability).

Protocol: Cohen et al.'s fc-tanh (hidden tanh layers of ``width``, PyTorch's
default initialization as in their code) on the first ``n_examples`` MNIST-1D
training examples with their square loss on one-hot targets (``0.5 * sum over
classes, mean over examples``). The BN net is their fc-tanh-bn: BatchNorm
*after* each tanh (Linear, tanh, BN), as in their ``fully_connected_net_bn``;
its Hessian is taken in training mode (full batch, so the loss is a fixed
function). The seed sets the initialization only (data and GD are
deterministic).

Step sizes: each cell measures its own net's initial sharpness lambda_0 at
init and runs GD at ``eta = factor * 2 / lambda_0`` (the BN net starts ~14x
sharper than the plain one, so a shared grid would start it beyond its
stability limit; the old module did that). Every run has the same length in
units of the initial stability time: ``steps = budget / factor`` (so
``eta * lambda_0 / 2 * steps = budget``): the smallest factor (the slowest
run) gets the most steps, ~4300 as CLAIMS.md's ~4000, the largest ~1700.
The previous budget of 420 (1200 steps at the smallest factor) left the BN
net short of 2/eta at every factor; at 1500 a one-seed probe had the BN net
at 1.00 x 2/eta at factor 0.9 and at 0.43 at factor 0.35 after 4286 steps.
lambda_max (top Hessian eigenvalue of the full-batch loss, warm-started
Lanczos at tolerance ``tol``) is measured ``measurements`` times per run
(every ``steps / measurements`` steps: ~430 at the smallest factor, ~170 at
the largest, CLAIMS.md's 100-500), before the step's update. A run whose
loss (or parameters) becomes non-finite is stopped and marked diverged.

Rule: per (net, factor), the per-seed median of lambda_max * eta / 2 over the
second half of the run; its mean over seeds must lie in the band with its
whole bootstrap interval (a band part per pair; a diverged seed makes its pair
fail).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..analysis import SharpnessTracker
from ..data import mnist1d
from ..models import MLP
from ..train import seed_everything
from .base import Claim, Verdict, band_part, fmt, group, num, per_seed, sweep
from .recipes import nanmean, nanmedian

NETS = ("fc-tanh", "fc-tanh-bn")
_DATA: dict = {}


def square_loss(out, target):
    """Cohen et al.'s square loss: 0.5 * ||f(x) - y||^2 summed over classes, averaged over examples."""
    return 0.5 * ((out - target) ** 2).sum(dim=1).mean()


def _data(n: int):
    if n not in _DATA:
        d = mnist1d()
        x = d.x_train[:n]
        _DATA[n] = (x, F.one_hot(d.y_train[:n], 10).to(x.dtype))
    return _DATA[n]


def build_net(net: str, width: int, depth: int) -> torch.nn.Module:
    """fc-tanh, or fc-tanh-bn with BatchNorm after each tanh (Cohen et al.'s placement)."""
    bn = net == "fc-tanh-bn"
    return MLP(40, 10, width=width, depth=depth, norm="bn" if bn else None, placement="after", activation="tanh")


def late_median(row: dict) -> float:
    """Median of lambda_max * eta / 2 over the measurements in the second half of the run (nan if diverged)."""
    if row["diverged"]:
        return math.nan
    eta, half = num(row["eta"]), row["steps"] / 2
    return nanmedian(
        [num(v) * eta / 2 for s, v in zip(row["measure_steps"], row["lambda_max"], strict=True) if s >= half]
    )


class EdgeOfStability(Claim):
    id = "edge-of-stability"
    title = "Sharpness hovers at 2/eta under GD"
    source = "Cohen et al. 2021"
    statement = "under full-batch GD, sharpness rises to ~2/eta and hovers there, with and without BN"
    params = {
        "n_examples": 1000,
        "width": 200,
        "depth": 2,
        "factors": (0.35, 0.7, 0.9),
        "budget": 1500.0,
        "measurements": 10,
        "tol": 1e-2,
        "band": (0.9, 1.2),
    }
    quick = {"factors": (0.9,), "budget": 30.0, "measurements": 5, "n_examples": 500}
    seeds = 5
    min_seeds = 5
    data = ("mnist1d",)
    protocol = (
        "fc-tanh 40-{width}-{width}-10 and fc-tanh-bn (BN after each tanh, as in Cohen et al.'s code), square loss "
        "on one-hot targets, {n_examples} mnist1d examples, full-batch GD at eta = factor x 2/lambda_0 (each net's "
        "own initial sharpness) for factor in {factors}, steps = {budget:g} / factor; lambda_max (Lanczos, tol "
        "{tol:g}) {measurements} times per run"
    )
    rule = (
        "per net and factor: seed mean of the late (second-half) median of lambda_max * eta / 2 in [{band}] with its "
        "whole 95% bootstrap interval; a diverged seed fails its pair"
    )

    def grid(self, p: dict, seeds: list[int], rows: list[dict]) -> list[dict]:
        return [] if rows else sweep(seeds, net=NETS, factor=list(p["factors"]))

    def cell(self, p: dict, config: dict) -> dict:
        seed, factor = config["seed"], float(config["factor"])
        x, t = _data(p["n_examples"])
        seed_everything(seed)
        model = build_net(config["net"], p["width"], p["depth"])
        steps = int(round(p["budget"] / factor))
        every = max(1, steps // p["measurements"])
        tracker = SharpnessTracker(model, square_loss, (x, t), every=every, bn_mode="train", tol=p["tol"], seed=seed)
        lambda0 = tracker.measure(0).lambda_max
        eta = factor * 2 / lambda0
        opt = torch.optim.SGD(model.parameters(), lr=eta)
        losses, diverged = [], False
        for step in range(steps + 1):
            if step:
                try:
                    tracker.step(step)
                except Exception:  # non-finite curvature makes the eigen-solver fail: the run has diverged
                    if all(bool(torch.isfinite(q).all()) for q in model.parameters()):
                        raise
                    diverged = True
                    break
            if step == steps:
                break
            opt.zero_grad(set_to_none=True)
            loss = square_loss(model(x), t)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                diverged = True
                break
        stride = max(1, steps // 100)
        row = {
            "lambda0": lambda0,
            "eta": eta,
            "steps": steps,
            "measure_steps": tracker.steps,
            "lambda_max": tracker.values,
            "loss_steps": list(range(0, len(losses), stride)),
            "loss": losses[::stride],
            "final_loss": losses[-1] if losses else math.nan,
            "diverged": diverged,
        }
        row["late"] = late_median(row)
        return row

    def verdict(self, p: dict, rows: list[dict]) -> Verdict:
        lo, hi = p["band"]
        parts, numbers = [], {}
        for (net, factor), rs in group(rows, "net", "factor").items():
            key = f"{net}_x{num(factor):g}"
            n_div = sum(bool(r["diverged"]) for r in rs)
            part = band_part(key, per_seed(rs, "late"), lo, hi, what=f"{net} eta={num(factor):g}x2/lambda_0")
            if n_div:
                part.text += f" ({n_div}/{len(rs)} seeds diverged)"
            parts.append(part)
            numbers[key] = part.estimate
            numbers[key + "_low"] = part.low
            numbers[key + "_high"] = part.high
            numbers[key + "_diverged"] = float(n_div)
            numbers[key + "_final"] = nanmean([num(r["lambda_max"][-1]) * num(r["eta"]) / 2 for r in rs])
            numbers[f"lambda0_{net}"] = sum(num(r["lambda0"]) for r in rs) / len(rs)
        if not parts:
            return Verdict("inconclusive", "no runs")
        note = (
            "initial sharpness lambda_0 (seed mean): "
            + ", ".join(f"{net} {fmt(numbers[f'lambda0_{net}'])}" for net in NETS if f"lambda0_{net}" in numbers)
            + "; lambda_max * eta / 2 at the last measurement (seed mean, not judged): "
            + ", ".join(f"{k[:-6]} {fmt(v)}" for k, v in numbers.items() if k.endswith("_final"))
        )
        return Verdict.combine(parts, numbers=numbers, note=note)

    def plot(self, p: dict, rows: list[dict], fig) -> None:
        axes = fig.subplots(1, len(NETS) + 1)
        factors = list(p["factors"])
        ylim = (0.2, 5.0)
        for ax, net in zip(axes, NETS, strict=False):
            for i, factor in enumerate(factors):
                rs = [r for r in rows if r["net"] == net and num(r["factor"]) == num(factor)]
                for j, r in enumerate(rs):
                    eta = num(r["eta"])
                    ts = [s / r["steps"] for s in r["measure_steps"]]
                    vals = [min(max(num(v) * eta / 2, ylim[0]), ylim[1]) for v in r["lambda_max"]]
                    ax.plot(
                        ts,
                        vals,
                        color=f"C{i}",
                        lw=1,
                        marker=".",
                        ms=3,
                        alpha=0.8,
                        label=f"factor {num(factor):g}" if j == 0 else None,
                    )
                    if r["diverged"]:
                        ax.plot(ts[-1:] or [0.0], [ylim[1]], "x", color=f"C{i}", ms=8)
            ax.axhline(1.0, color="k", ls="--", lw=1)
            ax.axhspan(*p["band"], color="gray", alpha=0.15)
            ax.axvline(0.5, color="gray", ls=":", lw=1)
            ax.set_yscale("log")
            ax.set_ylim(*ylim)
            ax.set_xlabel("fraction of the run")
            ax.set_ylabel(r"$\lambda_{max}\,\eta/2$")
            ax.set_title(f"{net} (late half right of dotted; x: diverged)", fontsize=8)
            ax.legend(fontsize=7)
        ax = axes[-1]
        ticks, names = [], []
        for k, net in enumerate(NETS):
            for i, factor in enumerate(factors):
                rs = [r for r in rows if r["net"] == net and num(r["factor"]) == num(factor)]
                vals = [num(r["late"]) for r in rs]
                x = k * (len(factors) + 1) + i
                fin = [v for v in vals if math.isfinite(v)]
                if fin:
                    ax.bar(x, sum(fin) / len(fin), color=f"C{i}", alpha=0.5)
                ax.scatter([x] * len(vals), [v if math.isfinite(v) else 0 for v in vals], color="k", s=10, zorder=3)
                ticks.append(x)
                names.append(f"{'BN' if net.endswith('bn') else 'plain'} x{num(factor):g}")
        ax.axhspan(*p["band"], color="gray", alpha=0.15)
        ax.set_xticks(ticks, names, rotation=30, fontsize=7)
        ax.set_ylabel(r"late median $\lambda_{max}\,\eta/2$ (0 = diverged)")


CLAIM = EdgeOfStability()
