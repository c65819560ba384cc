"""hessian-outliers: BatchNorm removes the large outlier eigenvalues of the Hessian.

Source: Huang et al.'s survey (the VGG Hessian spectrum), after Ghorbani,
Krishnan & Xiao 2019 ("An Investigation into Neural Net Optimization via
Hessian Eigenvalue Density"): without BN the spectrum has a few large
outliers far from the bulk; with BN they disappear.

Protocol: a small 1-D CNN (:class:`normlab.models.CNN`) on MNIST-1D with and
without BatchNorm (after every conv, before the ReLU), He initialization,
trained the same way (SGD with momentum). At initialization and after
training, on a fixed batch of ``hessian_batch`` training examples, the
Hessian of the training loss (cross-entropy; ``bn_mode="train"``) gives the
top-``k`` eigenvalues (Lanczos, tolerance ``tol``);
``tr(H^2) = sum_{i<=k} lambda_i^2 + tr((P H P)^2)`` with ``P`` the projector
off the top-k eigenvectors, the second term by Hutchinson's estimator with
``probes`` Rademacher probes on the deflated operator (low variance once the
outliers are removed); and the SLQ spectral density (``slq_probes`` x
``slq_steps`` Lanczos steps) for the figure. One cell per (net, seed).

The outlier measure is the **top-k mass** ``sum_{i<=k} lambda_i^2 / tr(H^2)``
(k = the number of classes, the usual count of outliers): the share of the
Hessian's squared Frobenius norm held by its k largest eigenvalues. CLAIMS.md
offers ``lambda_max / lambda_median`` as an alternative; it is not used
because the median eigenvalue of an over-parameterized net's Hessian is ~0
(most directions are flat), so that ratio is noise. ``lambda_max /
lambda_rms`` (``lambda_rms = sqrt(tr(H^2) / dim)``) is reported.

Rule: per seed, the paired ratio plain / BN of the top-k mass (the two nets
share the seed's batch order), at initialization and after training; each
seed mean must exceed ``threshold`` (1: lower with BN) with its whole
bootstrap interval.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..analysis import HessianOperator
from ..data import mnist1d
from ..models import CNN, init_weights
from ..train import seed_everything, train
from .base import Claim, Verdict, fmt, interval_part, num, paired, select, sweep
from .recipes import nanmean

NETS = ("plain", "bn")
PHASES = ("init", "trained")
_DATA: dict = {}


def _data():
    if "d" not in _DATA:
        _DATA["d"] = mnist1d(channel_dim=True)
    return _DATA["d"]


def topk_mass(top: list[float], tr_h2: float) -> float:
    """sum lambda_i^2 / tr(H^2) over the given top eigenvalues (nan if tr(H^2) <= 0)."""
    return sum(v * v for v in top) / tr_h2 if tr_h2 > 0 else math.nan


def analyze(model, batch, seed: int, p: dict) -> dict:
    """Top-k eigenvalues, tr(H^2) (top-k + deflated Hutchinson), the top-k mass and an SLQ density."""
    op = HessianOperator(model, F.cross_entropy, batch, bn_mode="train")
    top = op.top_eigenvalues(p["k"], tol=p["tol"], seed=seed)
    vecs = top.eigenvectors.to(op.dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    sq = []
    for _ in range(p["probes"]):
        z = (torch.randint(0, 2, (op.dim,), generator=gen) * 2 - 1).to(op.dtype)
        z = z - vecs.T @ (vecs @ z)
        hz = op.matvec(z)
        hz = hz - vecs.T @ (vecs @ hz)
        sq.append(float(hz @ hz))
    rest = sum(sq) / len(sq)
    eig = [float(v) for v in top.eigenvalues]
    tr2 = float(sum(v * v for v in eig)) + rest
    rms = math.sqrt(tr2 / op.dim)
    dens = op.spectral_density(num_probes=p["slq_probes"], num_steps=p["slq_steps"], seed=seed, grid=400)
    stride = max(1, len(dens.grid) // 200)
    return {
        "top": eig,
        "converged": bool(top.converged),
        "tr_h2": tr2,
        "rest_h2": rest,
        "dim": op.dim,
        "topk_mass": topk_mass(eig, tr2),
        "lmax_over_rms": eig[0] / rms if rms > 0 else math.nan,
        "lambda_rms": rms,
        "grid": [float(v) for v in dens.grid[::stride]],
        "density": [float(v) for v in dens.density[::stride]],
    }


class HessianOutliers(Claim):
    id = "hessian-outliers"
    title = "BN removes Hessian outliers"
    source = "Huang et al. survey (VGG Hessian spectrum); Ghorbani et al. 2019"
    statement = "BN removes the large outlier eigenvalues of the Hessian"
    params = {
        "channels": (16, 32, 32),
        "lr": 0.05,
        "momentum": 0.9,
        "batch": 64,
        "steps": 800,
        "hessian_batch": 256,
        "k": 10,
        "tol": 1e-3,
        "probes": 30,
        "slq_probes": 2,
        "slq_steps": 40,
        "threshold": 1.0,
    }
    quick = {"steps": 40, "hessian_batch": 64, "k": 3, "probes": 4, "slq_probes": 1, "slq_steps": 15}
    seeds = 5
    min_seeds = 5
    data = ("mnist1d",)
    protocol = (
        "1-D CNN {channels} on mnist1d with/without BN, He init, SGD lr {lr:g} momentum {momentum:g} batch {batch}, "
        "{steps} steps; at init and after training on {hessian_batch} fixed examples: top-{k} eigenvalues "
        "(Lanczos, tol {tol:g}), tr(H^2) = top-{k} + deflated Hutchinson ({probes} probes), SLQ density "
        "({slq_probes} x {slq_steps})"
    )
    rule = (
        "per-seed ratio plain / BN of the top-{k} mass sum lambda_i^2 / tr(H^2), at init and after training: seed "
        "mean > {threshold:g} with its whole 95% bootstrap interval, both"
    )

    def grid(self, p: dict, seeds: list[int], rows: list[dict]) -> list[dict]:
        return [] if rows else sweep(seeds, net=NETS)

    def cell(self, p: dict, config: dict) -> dict:
        seed, net = config["seed"], config["net"]
        data = _data()
        batch = (data.x_train[: p["hessian_batch"]], data.y_train[: p["hessian_batch"]])
        seed_everything(seed)
        model = CNN(1, 10, channels=tuple(p["channels"]), spatial=1, norm="bn" if net == "bn" else None)
        init_weights(model, generator=torch.Generator().manual_seed(seed))
        row = {"init": analyze(model, batch, seed, p)}
        opt = torch.optim.SGD(model.parameters(), lr=p["lr"], momentum=p["momentum"])
        hist = train(
            model, data, opt, steps=p["steps"], batch_size=p["batch"], seed=seed, eval_every=p["steps"], progress=False
        )
        row["test_acc"] = hist.final_test_acc
        row["trained"] = analyze(model, batch, seed, p)
        return row

    def verdict(self, p: dict, rows: list[dict]) -> Verdict:
        plain, bn = select(rows, net="plain"), select(rows, net="bn")
        if not plain or not bn:
            return Verdict("inconclusive", "no paired runs")
        parts, numbers, notes = [], {}, []
        for phase in PHASES:
            vals = paired(plain, bn, lambda r, ph=phase: num(r[ph]["topk_mass"]), op=lambda a, b: a / b)
            part = interval_part(
                f"ratio_{phase}", vals, ">", p["threshold"], what=f"{phase}: plain / BN top-{p['k']} mass"
            )
            parts.append(part)
            numbers[f"ratio_{phase}"] = part.estimate
            numbers[f"ratio_{phase}_low"] = part.low
            numbers[f"ratio_{phase}_high"] = part.high
            for net, rs in (("plain", plain), ("bn", bn)):
                numbers[f"mass_{net}_{phase}"] = nanmean([num(r[phase]["topk_mass"]) for r in rs])
                numbers[f"lmax_rms_{net}_{phase}"] = nanmean([num(r[phase]["lmax_over_rms"]) for r in rs])
            notes.append(
                f"{phase}: mass plain {fmt(numbers[f'mass_plain_{phase}'])} vs BN {fmt(numbers[f'mass_bn_{phase}'])}, "
                f"lambda_max/lambda_rms {fmt(numbers[f'lmax_rms_plain_{phase}'])} vs "
                f"{fmt(numbers[f'lmax_rms_bn_{phase}'])}"
            )
        return Verdict.combine(parts, numbers=numbers, note="seed means: " + "; ".join(notes))

    def plot(self, p: dict, rows: list[dict], fig) -> None:
        axes = fig.subplots(1, 3)
        first = min((r["seed"] for r in rows), default=None)
        for ax, phase in zip(axes[:2], PHASES, strict=False):
            for i, net in enumerate(NETS):
                for r in select(rows, net=net):
                    a = r[phase]
                    rms = num(a["lambda_rms"])
                    xs = [num(g) / rms for g in a["grid"]]
                    ys = [max(num(d) * rms, 1e-8) for d in a["density"]]
                    mine = r["seed"] == first
                    ax.plot(
                        xs,
                        ys,
                        color=f"C{i}",
                        lw=1,
                        alpha=0.9 if mine else 0.35,
                        label=f"{net} (seed {r['seed']})" if mine else None,
                    )
                    tops = [num(v) / rms for v in a["top"]]
                    ax.plot(tops, [2e-8 * (1 + i)] * len(tops), "|", color=f"C{i}", ms=8)
            ax.set_yscale("log")
            ax.set_ylim(1e-8, None)
            ax.set_xlabel(r"eigenvalue / $\lambda_{rms}$")
            ax.set_ylabel("SLQ density")
            ax.set_title(f"Hessian spectrum at {phase} (ticks: top-{p['k']})", fontsize=9)
            ax.legend(fontsize=7)
        ax = axes[2]
        for j, phase in enumerate(PHASES):
            for i, net in enumerate(NETS):
                vals = [num(r[phase]["topk_mass"]) for r in select(rows, net=net)]
                x = j * 3 + i
                ax.bar(x, nanmean(vals), color=f"C{i}", alpha=0.6, label=net if j == 0 else None)
                ax.scatter([x] * len(vals), vals, color="k", s=10, zorder=3)
        ax.set_xticks([0.5, 3.5], list(PHASES))
        ax.set_ylabel(rf"top-{p['k']} mass $\sum \lambda_i^2 / \mathrm{{tr}}(H^2)$")
        ax.legend(fontsize=7)


CLAIM = HessianOutliers()
