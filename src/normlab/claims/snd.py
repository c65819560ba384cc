"""snd: the stochastic normalization disturbance falls with batch size and rises with whitening group size.

Source: Huang et al., "Iterative Normalization" (CVPR 2019) and "An Investigation
into the Stochasticity of Batch Whitening" (CVPR 2020).

Protocol: :func:`normlab.analysis.snd_sweep` (SND = mean Euclidean distance of
one example's normalized output, over ``num_batches`` random batches, to its
mean output; ``num_probes`` probe examples held out of the companion pool) on
two ``dim``-dimensional feature sets, one cell per (data set, seed):

- ``gaussian``: ``gaussian_samples`` samples of N(0, Sigma), eigenvalues
  geometric from 1 to 1/``condition`` in a random basis, so that whitening
  has correlations to remove;
- ``mnist1d``: the MNIST-1D training signals through a fixed random ReLU
  layer of ``dim`` units (W ~ N(0, 2/40), seeded).

Group size d = 1 is normlab's ``BatchNorm1d(affine=False)`` (the "BN" of the
rule); d > 1 is batch ZCA group whitening (``(Sigma_g + eps I)^(-1/2)`` by
``eigh`` in float64, as in Huang et al.'s DBN). normlab has no whitening
family yet, so the claim carries its own reference ``GroupZCA``.

Departure from the first version (CLAIMS.md "changes to the contract"): the
group-size ordering is judged only where the batch exceeds the larger group
(m > d'). For m <= d the centered batch covariance has rank m - 1 < d, the
whitened output of a batch member has norm sqrt(m - 1) whatever the data, so
its SND measures the rank deficit, not the stochasticity of whitening: those
cells (where the first version failed) are reported, not judged. The ordering
is judged per seed as the smallest log-ratio SND(d') / SND(d) over every
adjacent pair d < d' and every batch m > d', with a bootstrap interval over
seeds that must clear 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import nn as nlnn
from ..analysis import snd_sweep
from ..data import gaussian_covariance, log_spectrum, mnist1d
from .base import Claim, Verdict, band_part, fmt, group, interval_part, num, per_seed, sweep
from .recipes import plot_band


class GroupZCA(nn.Module):
    """Batch ZCA whitening of ``(m, C)`` features in groups of ``group_size`` (training-mode statistics only).

    Per group g: ``y_g = (Sigma_g + eps I)^(-1/2) (x_g - mu_g)`` with the biased
    batch covariance ``Sigma_g``; the inverse square root by ``eigh`` in float64.
    ``group_size = 1`` is BatchNorm's standardization without affine.
    """

    def __init__(self, num_features: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        if num_features % group_size:
            raise ValueError(f"group_size {group_size} must divide num_features {num_features}")
        self.num_features, self.group_size, self.eps = num_features, group_size, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, c = x.shape
        d = self.group_size
        xg = x.to(torch.float64).reshape(m, c // d, d).transpose(0, 1)  # (G, m, d)
        xc = xg - xg.mean(1, keepdim=True)
        cov = xc.transpose(1, 2) @ xc / m + self.eps * torch.eye(d, dtype=torch.float64)
        evals, evecs = torch.linalg.eigh(cov)
        inv_sqrt = (evecs * evals.rsqrt().unsqueeze(1)) @ evecs.transpose(1, 2)
        return (xc @ inv_sqrt).transpose(0, 1).reshape(m, c).to(x.dtype)


def features(name: str, seed: int, p: dict) -> torch.Tensor:
    """The ``(N, dim)`` float64 feature set ``name`` for ``seed``."""
    dim = p["dim"]
    gen = torch.Generator().manual_seed(seed)
    if name == "gaussian":
        cov = gaussian_covariance(dim, log_spectrum(dim, float(p["condition"])), seed=seed)
        chol = torch.linalg.cholesky(cov)
        return torch.randn(p["gaussian_samples"], dim, generator=gen, dtype=torch.float64) @ chol.T
    x = mnist1d().x_train.to(torch.float64)
    w = torch.randn(dim, x.shape[1], generator=gen, dtype=torch.float64) * math.sqrt(2.0 / x.shape[1])
    return torch.relu(x @ w.T)


def judged_pairs(batches, groups) -> list[tuple[int, int, int]]:
    """``(batch index, group index, next group index)`` for every adjacent d < d' with m > d' (full rank)."""
    return [(bi, gi, gi + 1) for bi, m in enumerate(batches) for gi in range(len(groups) - 1) if m > groups[gi + 1]]


def min_log_ratio(snd, batches, groups, full_rank: bool = True) -> float:
    """Smallest ``log SND(d') / SND(d)`` over adjacent group sizes (only m > d' if ``full_rank``, else the rest)."""
    judged = set(judged_pairs(batches, groups))
    every = [(bi, gi, gi + 1) for bi in range(len(batches)) for gi in range(len(groups) - 1)]
    pairs = [q for q in every if (q in judged) == full_rank]
    vals = []
    for bi, a, b in pairs:
        lo, hi = num(snd[a][bi]), num(snd[b][bi])
        vals.append(math.log(hi / lo) if lo > 0 and hi > 0 else math.nan)
    return min(vals) if vals and all(math.isfinite(v) for v in vals) else math.nan


class Snd(Claim):
    id = "snd"
    title = "SND falls with batch size, rises with whitening group size"
    source = "Huang et al. (IterNorm, CVPR 2019; stochasticity of batch whitening, CVPR 2020)"
    statement = "stochastic normalization disturbance falls with batch size and rises with whitening group size"
    params = {
        "datasets": ("gaussian", "mnist1d"),
        "dim": 64,
        "condition": 100.0,
        "gaussian_samples": 4096,
        "batch_sizes": (16, 32, 64, 128, 256),
        "group_sizes": (1, 4, 16, 64),
        "num_batches": 64,
        "num_probes": 8,
        "slope_low": -0.6,
        "slope_high": -0.4,
    }
    quick = {"num_batches": 16, "num_probes": 2}
    seeds = 5
    min_seeds = 5
    data = ("synthetic", "mnist1d")
    protocol = (
        "normlab.analysis.snd_sweep on {dim}-d Gaussian features (condition number {condition:g}, "
        "{gaussian_samples} samples) and mnist1d random-ReLU features; batch m in {batch_sizes}; BN (d = 1) and "
        "batch ZCA group whitening, group d in {group_sizes}; {num_batches} batches x {num_probes} probes per point"
    )
    rule = (
        "on each data set: the per-seed log-log slope of BN's SND against m lies in [{slope_low:g}, {slope_high:g}] "
        "(band over seeds); SND rises with d wherever m > d': the per-seed smallest log SND(d')/SND(d) over adjacent "
        "d < d' and m > d' is > 0 (interval over seeds); m <= d' (singular batch covariance) reported, not judged"
    )

    def grid(self, p: dict, seeds: list[int], rows: list[dict]) -> list[dict]:
        return [] if rows else sweep(seeds, data=p["datasets"])

    def cell(self, p: dict, config: dict) -> dict:
        seed, groups = config["seed"], list(p["group_sizes"])

        def factory(d):
            return nlnn.BatchNorm1d(p["dim"], affine=False).double() if d == 1 else GroupZCA(p["dim"], d)

        res = snd_sweep(
            factory,
            features(config["data"], seed, p),
            list(p["batch_sizes"]),
            groups,
            num_batches=p["num_batches"],
            num_samples=p["num_probes"],
            generator=seed,
        )
        snd = res.snd.tolist()
        return {"snd": snd, "stderr": res.stderr.tolist(), "bn_slope": res.slope(0)}

    def verdict(self, p: dict, rows: list[dict]) -> Verdict:
        if not rows:
            return Verdict("inconclusive", "no sweeps were run")
        batches, groups = list(p["batch_sizes"]), list(p["group_sizes"])
        parts, numbers, notes = [], {}, []
        for (name,), rs in group(rows, "data").items():
            slope = band_part(
                f"bn_slope[{name}]",
                per_seed(rs, "bn_slope"),
                p["slope_low"],
                p["slope_high"],
                what=f"{name}: BN log-log slope",
            )
            order = interval_part(
                f"group_order[{name}]",
                per_seed(rs, lambda r: min_log_ratio(r["snd"], batches, groups)),
                ">",
                0.0,
                what=f"{name}: smallest log SND(d')/SND(d) where m > d'",
            )
            parts += [slope, order]
            for key, part in (("bn_slope", slope), ("min_log_ratio", order)):
                numbers[f"{key}[{name}]"] = part.estimate
                numbers[f"{key}_low[{name}]"] = part.low
                numbers[f"{key}_high[{name}]"] = part.high
            singular = per_seed(rs, lambda r: min_log_ratio(r["snd"], batches, groups, full_rank=False))
            worst = min(singular) if singular and all(math.isfinite(v) for v in singular) else math.nan
            numbers[f"min_log_ratio_singular[{name}]"] = worst
            notes.append(f"{name} m <= d' (not judged): smallest log-ratio {fmt(worst)}")
        return Verdict.combine(parts, numbers=numbers, note="; ".join(notes))

    def plot(self, p: dict, rows: list[dict], fig) -> None:
        from matplotlib.ticker import NullFormatter

        batches, groups = list(p["batch_sizes"]), list(p["group_sizes"])
        by = group(rows, "data")
        axes = fig.subplots(1, len(by), squeeze=False)[0]
        for ax, ((name,), rs) in zip(axes, by.items(), strict=True):
            for gi, g in enumerate(groups):
                label = "BN (d=1)" if g == 1 else f"ZCA group d={g}"
                plot_band(ax, batches, [[num(v) for v in r["snd"][gi]] for r in rs], label, log=True, marker="o", ms=3)
                sing = [bi for bi, m in enumerate(batches) if m <= g]
                if sing:
                    mean = [math.exp(sum(math.log(num(r["snd"][gi][bi])) for r in rs) / len(rs)) for bi in sing]
                    ax.scatter([batches[bi] for bi in sing], mean, s=40, facecolors="none", edgecolors="k", lw=0.8)
            m0 = math.exp(sum(math.log(num(r["snd"][0][0])) for r in rs) / len(rs))
            ax.plot(batches, [m0 * (b / batches[0]) ** -0.5 for b in batches], "k--", lw=0.8, label=r"$m^{-1/2}$")
            slopes = per_seed(rs, "bn_slope")
            ax.set(xscale="log", yscale="log", xlabel="batch size $m$", ylabel="SND")
            ax.set_title(f"{name}: BN slope {sum(slopes) / len(slopes):.3f} (circled: $m \\leq d$)", fontsize=9)
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.legend(fontsize=7)


CLAIM = Snd()
