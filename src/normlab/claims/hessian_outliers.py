"""hessian-outliers: BatchNorm removes the large outlier eigenvalues of the Hessian.

Source: Huang et al.'s survey (the VGG Hessian spectrum), after Ghorbani,
Krishnan & Xiao 2019 ("An Investigation into Neural Net Optimization via
Hessian Eigenvalue Density"): without BN the spectrum has a few large
outliers far from the bulk; with BN they disappear.

Protocol: a small 1-D CNN (:class:`normlab.models.CNN`, channels 16-32-32)
on MNIST-1D with and without BatchNorm (after every conv, before the ReLU),
He initialization; trained with SGD (lr 0.05, momentum 0.9, batch 64, 800
steps, the same for both). At initialization and after training, on a fixed
batch of 256 training examples, the Hessian of the training loss
(cross-entropy; ``bn_mode="train"``, batch statistics) gives:

- the top-10 eigenvalues (Lanczos, tol 1e-3);
- ``tr(H^2) = sum_{i<=10} lambda_i^2 + tr((P H P)^2)`` with ``P`` the projector
  off the top-10 eigenvectors; the second term by Hutchinson's estimator
  ``E ||P H P z||^2`` with 30 Rademacher probes (deflating the outliers first
  keeps the estimator's variance low); ``lambda_rms = sqrt(tr(H^2) / dim)``;
- the SLQ spectral density (2 probes x 40 Lanczos steps) for the figure.

The outlier measure is the **top-k mass** ``sum_{i<=10} lambda_i^2 / tr(H^2)``
(k = 10 = the number of classes, the usual count of outliers): the share of
the Hessian's squared Frobenius norm held by its 10 largest eigenvalues; near
1 when a few outliers dominate, small for a spread-out spectrum. CLAIMS.md
offers ``lambda_max / lambda_median`` as an alternative; it is not used because
the median eigenvalue of an over-parameterized net's Hessian is ~0 (most
directions are flat), so the ratio is dominated by noise and its sign can
flip. ``lambda_max / lambda_rms`` is reported as a second number.

Rule (CLAIMS.md: "ratio (or top-k mass) lower with BN"): with the seed-mean
top-10 mass, holds if it is lower with BN both at initialization and after
training; fails if it is not lower at either; inconclusive if the two
checkpoints disagree, or with fewer than 3 seeds (quick mode).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..analysis import HessianOperator
from ..data import mnist1d
from ..models import CNN, init_weights
from ..train import seed_everything, train
from ._support import fmt, nanmean, nanstd, num, seeds_caveat, single_thread
from .base import Claim, Context, Verdict

CHANNELS = (16, 32, 32)
K = 10
HESSIAN_BATCH = 256
NETS = ("plain", "bn")
PHASES = ("init", "trained")


def _analyze(model, batch, seed: int, k: int, probes: int, slq_probes: int, slq_steps: int) -> dict:
    op = HessianOperator(model, F.cross_entropy, batch, bn_mode="train")
    top = op.top_eigenvalues(k, tol=1e-3, seed=seed)
    # tr(H^2) = sum_{i<=k} lambda_i^2 + tr((P H P)^2), P the projector off the top-k eigenvectors V. The rest is
    # estimated by Hutchinson on the deflated operator, whose spectrum has no outliers: a low-variance estimate
    # (plain Hutchinson on H itself has a relative std ~ sqrt(2 / probes) when a few outliers dominate).
    vecs = top.eigenvectors.to(op.dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    sq = []
    for _ in range(probes):
        z = (torch.randint(0, 2, (op.dim,), generator=gen) * 2 - 1).to(op.dtype)
        z = z - vecs.T @ (vecs @ z)
        hz = op.matvec(z)
        hz = hz - vecs.T @ (vecs @ hz)
        sq.append(float(hz @ hz))
    rest = sum(sq) / len(sq)
    tr2 = float((top.eigenvalues.double() ** 2).sum()) + rest
    eig = [float(v) for v in top.eigenvalues]
    rms = math.sqrt(tr2 / op.dim)
    dens = op.spectral_density(num_probes=slq_probes, num_steps=slq_steps, seed=seed, grid=400)
    step = max(1, len(dens.grid) // 200)
    return {
        "top": eig,
        "converged": bool(top.converged),
        "tr_h2": tr2,
        "rest_h2": rest,
        "rest_h2_stderr": (math.sqrt(sum((s - rest) ** 2 for s in sq) / (len(sq) - 1)) / math.sqrt(len(sq)))
        if len(sq) > 1
        else math.nan,
        "dim": op.dim,
        "topk_mass": sum(v * v for v in eig) / tr2 if tr2 > 0 else math.nan,
        "lmax_over_rms": eig[0] / rms if rms > 0 else math.nan,
        "lambda_rms": rms,
        "grid": [float(v) for v in dens.grid[::step]],
        "density": [float(v) for v in dens.density[::step]],
        "num_hvp": op.num_hvp,
    }


class HessianOutliers(Claim):
    id = "hessian-outliers"
    title = "BN removes Hessian outliers"
    source = "Huang et al. survey (VGG Hessian spectrum); Ghorbani et al. 2019"
    statement = "BN removes the large outlier eigenvalues of the Hessian"
    protocol = (
        "1-D CNN 16-32-32 on mnist1d with/without BN, SGD lr 0.05 momentum 0.9, 800 steps; at init and after "
        "training on 256 examples: top-10 eigenvalues (Lanczos), tr(H^2) (top-10 + deflated Hutchinson, "
        "30 probes), SLQ density"
    )
    rule = (
        "top-10 mass sum lambda_i^2 / tr(H^2) (seed mean) lower with BN at init and after training: holds; "
        "not lower at either: fails; mixed: inconclusive"
    )

    def run(self, ctx: Context) -> dict:
        steps = ctx.pick(40, 800)
        probes = ctx.pick(4, 30)
        slq_probes, slq_steps = ctx.pick((1, 15), (2, 40))
        k = ctx.pick(3, K)
        with single_thread():
            data = mnist1d(channel_dim=True)
            nb = ctx.pick(64, HESSIAN_BATCH)
            batch = (data.x_train[:nb], data.y_train[:nb])
            rows = []
            for seed in ctx.seeds:
                for net in NETS:
                    seed_everything(seed)
                    model = CNN(1, 10, channels=CHANNELS, spatial=1, norm="bn" if net == "bn" else None)
                    init_weights(model, generator=torch.Generator().manual_seed(seed))
                    row = {"seed": seed, "net": net}
                    row["init"] = _analyze(model, batch, seed, k, probes, slq_probes, slq_steps)
                    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
                    hist = train(
                        model, data, opt, steps=steps, batch_size=64, seed=seed, eval_every=steps, progress=False
                    )
                    row["test_acc"] = hist.final_test_acc
                    row["trained"] = _analyze(model, batch, seed, k, probes, slq_probes, slq_steps)
                    rows.append(row)
                    ctx.log(
                        f"  seed {seed} {net}: top-{k} mass init {row['init']['topk_mass']:.3f}, trained "
                        f"{row['trained']['topk_mass']:.3f}, acc {row['test_acc']:.3f}"
                    )
        return {"rows": rows, "k": k, "steps": steps, "n_seeds": len(ctx.seeds)}

    def verdict(self, evidence: dict) -> Verdict:
        rows = evidence["rows"]
        numbers, lower = {}, {}
        for phase in PHASES:
            for net in NETS:
                vals = [num(r[phase]["topk_mass"]) for r in rows if r["net"] == net]
                numbers[f"mass_{net}_{phase}"] = nanmean(vals)
                numbers[f"lmax_rms_{net}_{phase}"] = nanmean(
                    [num(r[phase]["lmax_over_rms"]) for r in rows if r["net"] == net]
                )
            p, b = numbers[f"mass_plain_{phase}"], numbers[f"mass_bn_{phase}"]
            if not (math.isfinite(p) and math.isfinite(b)):
                return Verdict("inconclusive", f"no finite top-k mass at {phase}", numbers)
            lower[phase] = b < p
        k = evidence.get("k", K)

        def describe(phase: str) -> str:
            mass = f"top-{k} mass BN {fmt(numbers[f'mass_bn_{phase}'])} vs plain {fmt(numbers[f'mass_plain_{phase}'])}"
            ratio = f"{fmt(numbers[f'lmax_rms_bn_{phase}'])} vs {fmt(numbers[f'lmax_rms_plain_{phase}'])}"
            return f"{phase}: {mass} (lambda_max/lambda_rms {ratio})"

        reason = "; ".join(describe(phase) for phase in PHASES)
        if all(lower.values()):
            status = "holds"
        elif not any(lower.values()):
            status = "fails"
        else:
            status = "inconclusive"
        caveat = seeds_caveat(int(evidence["n_seeds"]))
        if caveat:
            return Verdict("inconclusive", f"{caveat}; would be {status}: {reason}", numbers)
        if status == "inconclusive":
            return Verdict(status, f"BN lowers the outlier mass at one checkpoint only: {reason}", numbers)
        return Verdict(status, reason, numbers)

    def plot(self, evidence: dict, fig) -> None:
        rows = evidence["rows"]
        axes = fig.subplots(1, 3)
        first = rows[0]["seed"] if rows else None
        for ax, phase in zip(axes[:2], PHASES, strict=False):
            for i, net in enumerate(NETS):
                for r in rows:
                    if r["net"] != net:
                        continue
                    a = r[phase]
                    rms = num(a["lambda_rms"])
                    xs = [num(g) / rms for g in a["grid"]]
                    ys = [max(num(d) * rms, 1e-8) for d in a["density"]]
                    ax.plot(
                        xs,
                        ys,
                        color=f"C{i}",
                        lw=1,
                        alpha=0.9 if r["seed"] == first else 0.35,
                        label=f"{net} (seed {r['seed']})" if r["seed"] == first else None,
                    )
                    tops = [num(v) / rms for v in a["top"]]
                    ax.plot(tops, [2e-8 * (1 + i)] * len(tops), "|", color=f"C{i}", ms=8)
            ax.set_yscale("log")
            ax.set_ylim(1e-8, None)
            ax.set_xlabel("eigenvalue / lambda_rms")
            ax.set_ylabel("SLQ density")
            ax.set_title(f"Hessian spectrum at {phase} (ticks: top-{evidence.get('k', K)})", fontsize=9)
            ax.legend(fontsize=7)
        ax = axes[2]
        for j, phase in enumerate(PHASES):
            for i, net in enumerate(NETS):
                vals = [num(r[phase]["topk_mass"]) for r in rows if r["net"] == net]
                x = j * 3 + i
                ax.bar(x, nanmean(vals), yerr=nanstd(vals), color=f"C{i}", alpha=0.6, label=net if j == 0 else None)
                ax.scatter([x] * len(vals), vals, color="k", s=8)
        ax.set_xticks([0.5, 3.5], list(PHASES))
        ax.set_ylabel(f"top-{evidence.get('k', K)} mass  sum lambda_i^2 / tr(H^2)")
        ax.legend(fontsize=7)


CLAIM = HessianOutliers()
