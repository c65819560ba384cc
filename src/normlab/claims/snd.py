"""snd: the stochastic normalization disturbance falls with batch size and rises with whitening group size.

Source: Huang et al., "Iterative Normalization" (CVPR 2019) and "An Investigation
into the Stochasticity of Batch Whitening" (CVPR 2020).

Statement (CLAIMS.md): stochastic normalization disturbance (SND) falls with
batch size and rises with whitening group size.

Protocol: :func:`normlab.analysis.snd_sweep` (SND = mean Euclidean distance of
one example's normalized output, over s random batches, to its mean output;
probe examples held out of the companion pool) on two 64-dimensional feature
sets per seed:

- ``gaussian``: 4096 samples of N(0, Sigma), Sigma = Q diag(spectrum) Q^T with
  eigenvalues geometric from 1 to 1/100 in a random basis
  (:func:`normlab.data.gaussian_covariance`, :func:`normlab.data.log_spectrum`), so
  that whitening has correlations to remove;
- ``mnist1d``: the 4000 MNIST-1D training signals (40 values) through a fixed
  random ReLU layer of 64 units (W ~ N(0, 2/40), seeded): "features" of the
  width the group sizes need (64 is not a multiple of 40's divisors 16 and 64).

Batch sizes m in {16, 32, 64, 128, 256}; group sizes d in {1, 4, 16, 64}: d = 1
is normlab's ``BatchNorm1d(64, affine=False)`` (standardization: the "BN" of
the rule); d > 1 is batch ZCA group whitening (features split into 64/d
groups of d, each centered and multiplied by ``(Sigma_g + eps I)^(-1/2)``
computed by ``eigh`` in float64, eps = 1e-5, as in Huang et al.'s DBN): normlab
has no whitening family yet, so this claim carries its own 20-line reference
implementation (``GroupZCA``, training mode only, no affine). At m = 16 and
d = 64 the batch covariance is singular (rank 15): eps regularizes it, and
the example's own centered vector lies in the batch's span, so its output is
finite. s = 64 batches per probe, 8 probe examples (quick: 16 and 2, one seed).

Rule (CLAIMS.md): on both data sets, the log-log slope of BN's SND against m
(the seed mean of the per-seed slopes) is in [-0.6, -0.4], and the SND
increases with the group size: the seed-mean SND is strictly increasing in d
at every batch size. Reported beside the rule, not deciding: whether SND
increases with d wherever the batch covariance has full rank (m > d).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import nn as nlnn
from ..analysis import snd_sweep
from ..data import gaussian_covariance, log_spectrum, mnist1d
from ._workbench import num, one_thread, plot_band, quick_verdict
from .base import Claim, Context, Verdict, mean_std

BATCH_SIZES = (16, 32, 64, 128, 256)
GROUP_SIZES = (1, 4, 16, 64)
DIM = 64
SLOPE_RANGE = (-0.6, -0.4)
DATASETS = ("gaussian", "mnist1d")


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


def _norm(group_size: int) -> nn.Module:
    if group_size == 1:
        return nlnn.BatchNorm1d(DIM, affine=False).double()
    return GroupZCA(DIM, group_size)


def _features(name: str, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if name == "gaussian":
        cov = gaussian_covariance(DIM, log_spectrum(DIM, 100.0), seed=seed)
        chol = torch.linalg.cholesky(cov)
        return torch.randn(4096, DIM, generator=gen, dtype=torch.float64) @ chol.T
    x = mnist1d().x_train.to(torch.float64)
    w = torch.randn(DIM, x.shape[1], generator=gen, dtype=torch.float64) * math.sqrt(2.0 / x.shape[1])
    return torch.relu(x @ w.T)


class Snd(Claim):
    id = "snd"
    title = "SND falls with batch size, rises with whitening group size"
    source = "Huang et al. (IterNorm, CVPR 2019; stochasticity of batch whitening, CVPR 2020)"
    statement = "stochastic normalization disturbance falls with batch size and rises with whitening group size"
    protocol = (
        "normlab.analysis.snd_sweep on 64-d Gaussian (kappa 100) and mnist1d random-ReLU features; batch "
        "{16..256}; BN (d=1) and batch ZCA group whitening d in {4, 16, 64}; 64 batches x 8 probes per point"
    )
    rule = (
        f"BN: log-log slope of SND vs batch size in [{SLOPE_RANGE[0]}, {SLOPE_RANGE[1]}]; SND strictly increasing "
        "in group size at every batch size; on both data sets"
    )

    def run(self, ctx: Context) -> dict:
        num_batches, num_samples = ctx.pick((16, 2), (64, 8))
        rows = []
        with one_thread():
            for seed in ctx.seeds:
                for name in DATASETS:
                    sweep = snd_sweep(
                        _norm,
                        _features(name, seed),
                        list(BATCH_SIZES),
                        list(GROUP_SIZES),
                        num_batches=num_batches,
                        num_samples=num_samples,
                        generator=seed,
                    )
                    rows.append(
                        {
                            "seed": seed,
                            "data": name,
                            "snd": sweep.snd.tolist(),
                            "stderr": sweep.stderr.tolist(),
                            "bn_slope": sweep.slope(0),
                        }
                    )
        return {
            "rows": rows,
            "batch_sizes": list(BATCH_SIZES),
            "group_sizes": list(GROUP_SIZES),
            "num_batches": num_batches,
            "num_samples": num_samples,
            "quick": ctx.quick,
        }

    def verdict(self, evidence: dict) -> Verdict:
        rows = evidence["rows"]
        if not rows:
            return Verdict("inconclusive", "no sweeps were run")
        groups, batches = evidence["group_sizes"], evidence["batch_sizes"]
        numbers, slope_ok, mono_ok, notes = {}, True, True, []
        for name in sorted({r["data"] for r in rows}):
            rs = [r for r in rows if r["data"] == name]
            slope, sd = mean_std([num(r["bn_slope"]) for r in rs])
            numbers[f"bn_slope[{name}]"] = slope
            numbers[f"bn_slope_std[{name}]"] = sd
            ok = SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1]
            slope_ok &= ok
            means = [
                [mean_std([num(r["snd"][gi][bi]) for r in rs])[0] for bi in range(len(batches))]
                for gi in range(len(groups))
            ]
            bad = [
                batches[bi]
                for bi in range(len(batches))
                if not all(means[gi][bi] < means[gi + 1][bi] for gi in range(len(groups) - 1))
            ]
            mono_ok &= not bad
            numbers[f"batches_not_increasing_in_group[{name}]"] = float(len(bad))
            # reported beside the rule (does not decide): the same test restricted to full-rank batch
            # covariances, m > d, the regime where whitening is well defined
            full_rank = all(
                means[gi][bi] < means[gi + 1][bi]
                for bi in range(len(batches))
                for gi in range(len(groups) - 1)
                if batches[bi] > groups[gi + 1]
            )
            numbers[f"increasing_where_m_gt_d[{name}]"] = float(full_rank)
            bi = batches.index(min(batches, key=lambda b: abs(b - 64)))
            for gi, g in enumerate(groups):
                numbers[f"snd[{name}, d={g}, m={batches[bi]}]"] = means[gi][bi]
            notes.append(
                f"{name}: BN slope {slope:.3f}"
                + (f", not increasing in d at m={bad}" if bad else "")
                + (f" (increasing wherever m > d: {'yes' if full_rank else 'no'})" if bad else "")
            )
        status = "holds" if slope_ok and mono_ok else "fails"
        reason = "; ".join(notes) + (
            f" (slope range {SLOPE_RANGE[0]}..{SLOPE_RANGE[1]}; SND "
            + ("strictly increasing in group size at every batch size)" if mono_ok else "not always increasing)")
        )
        v = Verdict(status, reason, numbers)
        if evidence.get("quick"):
            return quick_verdict(
                v,
                f"{evidence['num_batches']} batches x {evidence['num_samples']} probes, "
                f"{len({r['seed'] for r in rows})} seed",
            )
        return v

    def plot(self, evidence: dict, fig) -> None:
        from matplotlib.ticker import NullFormatter

        rows = evidence["rows"]
        batches, groups = evidence["batch_sizes"], evidence["group_sizes"]
        names = [n for n in DATASETS if any(r["data"] == n for r in rows)]
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        for ax, name in zip(axes, names, strict=True):
            rs = [r for r in rows if r["data"] == name]
            for gi, g in enumerate(groups):
                label = "BN (d=1)" if g == 1 else f"ZCA group d={g}"
                plot_band(ax, batches, [[num(v) for v in r["snd"][gi]] for r in rs], label, marker="o", ms=3)
            m0, _ = mean_std([num(r["snd"][0][0]) for r in rs])
            ax.plot(batches, [m0 * (b / batches[0]) ** -0.5 for b in batches], "k--", lw=0.8, label="m^-1/2")
            slope, sd = mean_std([num(r["bn_slope"]) for r in rs])
            ax.set(
                xscale="log",
                yscale="log",
                xlabel="batch size m",
                ylabel="SND",
                title=f"{name}: BN slope {slope:.3f} +- {sd:.3f}",
            )
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.legend(fontsize=7)


CLAIM = Snd()
