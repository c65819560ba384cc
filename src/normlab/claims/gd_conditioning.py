"""gd-conditioning: gradient descent on least squares needs ~kappa(H) steps; whitening fixes it.

Source: Arpit lecture; Huang et al., "Normalization Techniques in Training DNNs" (survey), section 3.

Statement (CLAIMS.md): GD on least squares needs ~kappa(H) iterations;
whitening the inputs makes H ~ cI and GD converges in a few steps with
eta = 1/lambda_max; eta > 2/lambda_max diverges.

Protocol: per seed, :func:`normlab.data.synthetic_regression` (d = 20, 2500
samples of which 2000 train, noise 0, inputs N(0, Sigma) with kappa(Sigma) in
{10, 100, 1000}, eigenvalues geometric, random basis). Three input
preprocessings of the training inputs: raw; standardized (per-feature mean 0,
std 1); ZCA-whitened (``(X - mu) Sigma_hat^(-1/2)`` with the sample
covariance). Targets are centered for the last two, so a linear model without
bias fits exactly in all three. Loss ``||X w - y||^2 / (2N)``, Hessian
``H = X^T X / N`` from :func:`normlab.analysis.least_squares_hessian_condition`.
Full-batch GD from w = 0 with eta = 1/lambda_max(H); "iterations to 1e-6" is
the first t with ``||w_t - w_hat|| / ||w_hat|| <= 1e-6`` (w_hat the exact
least-squares solution; cap 10^6 iterations). Divergence: the same runs with
eta = 2.1/lambda_max, diverged if the relative error reaches 1e6 (or is
non-finite) within 1000 steps; eta = 1.9/lambda_max is shown as the
converging control (not part of the rule).

Rule (CLAIMS.md): the log-log slope of raw iterations against kappa (the
nominal 10, 100, 1000; seed mean of the per-seed slopes) is in [0.8, 1.2];
whitened inputs need <= 5 iterations at every kappa and seed; every run with
eta = 2.1/lambda_max diverges.
"""

from __future__ import annotations

import math

import torch

from ..analysis import least_squares_hessian_condition
from ..data import synthetic_regression
from ._workbench import num, one_thread, plot_band
from .base import Claim, Context, Verdict, loglog_slope, mean_std

KAPPAS = (10.0, 100.0, 1000.0)
PREPS = ("raw", "standardized", "whitened")
DIM, N = 20, 2500
TOL = 1e-6
MAX_ITER = 10**6
DIVERGE_STEPS, DIVERGE_AT = 1000, 1e6
SLOPE_RANGE = (0.8, 1.2)
WHITENED_MAX = 5


def _preprocess(x: torch.Tensor, y: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "raw":
        return x, y
    mu = x.mean(0)
    xc, yc = x - mu, y - y.mean()
    if kind == "standardized":
        return xc / xc.std(0, unbiased=False), yc
    cov = xc.T @ xc / len(xc)
    evals, evecs = torch.linalg.eigh(cov)
    return xc @ (evecs * evals.rsqrt()) @ evecs.T, yc


def _log_points(total: int, k: int = 80) -> list[int]:
    pts = {0, total}
    pts.update(int(round(math.exp(i * math.log(max(total, 1)) / k))) for i in range(k + 1))
    return sorted(p for p in pts if 0 <= p <= total)


def _gd(
    h: torch.Tensor,
    b: torch.Tensor,
    w_hat: torch.Tensor,
    eta: float,
    max_iter: int,
    stop_below: float | None,
    stop_above: float | None,
) -> tuple[int | None, list[float]]:
    """GD ``w <- w - eta (H w - b)`` from 0; returns (first t with error <= stop_below, error per step)."""
    w = torch.zeros_like(b)
    scale = torch.linalg.vector_norm(w_hat)
    errs = [1.0]
    for t in range(1, max_iter + 1):
        w = w - eta * (h @ w - b)
        e = float(torch.linalg.vector_norm(w - w_hat) / scale)
        errs.append(e)
        if stop_below is not None and e <= stop_below:
            return t, errs
        if not math.isfinite(e) or (stop_above is not None and e >= stop_above):
            break
    return None, errs


def _one(seed: int, kappa: float, kind: str) -> dict:
    data = synthetic_regression(n=N, dim=DIM, condition_number=kappa, noise=0.0, seed=seed)
    x, y = _preprocess(data.x_train, data.y_train, kind)
    spec = least_squares_hessian_condition(x)
    h, b = spec.matrix, x.T @ y / len(x)
    w_hat = torch.linalg.solve(h, b)
    lam = float(spec.eigenvalues[0])
    iters, errs = _gd(h, b, w_hat, 1.0 / lam, MAX_ITER, TOL, None)
    pts = _log_points(len(errs) - 1)
    _, div = _gd(h, b, w_hat, 2.1 / lam, DIVERGE_STEPS, None, DIVERGE_AT)
    _, ctrl = _gd(h, b, w_hat, 1.9 / lam, DIVERGE_STEPS, None, DIVERGE_AT)
    diverged = (not math.isfinite(div[-1])) or div[-1] >= DIVERGE_AT
    return {
        "seed": seed,
        "kappa": kappa,
        "prep": kind,
        "hessian_kappa": spec.condition,
        "lambda_max": lam,
        "iterations": iters if iters is not None else math.inf,
        "curve_t": pts,
        "curve_err": [errs[p] for p in pts],
        "diverged_2.1": diverged,
        "steps_to_diverge": len(div) - 1,
        "err_2.1": div[: DIVERGE_STEPS + 1 : 10],
        "err_1.9": ctrl[: DIVERGE_STEPS + 1 : 10],
    }


class GdConditioning(Claim):
    id = "gd-conditioning"
    title = "GD on least squares: iterations ~ kappa; whitening fixes it"
    source = "Arpit lecture; Huang et al. survey"
    statement = (
        "GD on least squares needs ~kappa(H) iterations; whitening the inputs makes H ~ cI and GD converges in a "
        "few steps with eta = 1/lambda_max; eta > 2/lambda_max diverges"
    )
    protocol = (
        "synthetic Gaussian inputs d=20, N=2000, kappa in {10, 100, 1000}; raw vs standardized vs ZCA-whitened; "
        "full-batch GD from 0 with eta = 1/lambda_max(H) to relative parameter error 1e-6; eta = 2.1/lambda_max "
        "(diverged: error >= 1e6 within 1000 steps)"
    )
    rule = (
        f"raw iterations vs kappa: log-log slope in [{SLOPE_RANGE[0]}, {SLOPE_RANGE[1]}]; whitened <= {WHITENED_MAX} "
        "iterations; every eta = 2.1/lambda_max run diverges"
    )

    def run(self, ctx: Context) -> dict:
        rows = []
        with one_thread():
            for seed in ctx.seeds:
                for kappa in KAPPAS:
                    for kind in PREPS:
                        rows.append(_one(seed, kappa, kind))
        return {"rows": rows, "kappas": list(KAPPAS), "preps": list(PREPS), "tolerance": TOL}

    def verdict(self, evidence: dict) -> Verdict:
        rows = evidence["rows"]
        kappas = [num(k) for k in evidence["kappas"]]
        seeds = sorted({r["seed"] for r in rows})
        if not rows or len(kappas) < 2:
            return Verdict("inconclusive", "needs runs at two or more condition numbers")
        slopes = []
        for s in seeds:
            its = [
                num(r["iterations"])
                for k in kappas
                for r in rows
                if r["seed"] == s and r["prep"] == "raw" and num(r["kappa"]) == k
            ]
            if len(its) == len(kappas) and all(math.isfinite(i) and i > 0 for i in its):
                slopes.append(loglog_slope(kappas, its))
            else:
                slopes.append(math.nan)
        slope, slope_sd = mean_std(slopes)
        if any(not math.isfinite(s) for s in slopes):
            slope = math.nan  # a raw run that never converged: no slope
        white = [num(r["iterations"]) for r in rows if r["prep"] == "whitened"]
        white_max = max(white) if white else math.nan
        div = [bool(r["diverged_2.1"]) for r in rows]
        numbers = {
            "raw_slope": slope,
            "raw_slope_std": slope_sd,
            "whitened_max_iterations": white_max,
            "diverged_fraction_2.1": sum(div) / len(div),
        }
        for k in kappas:
            for p in evidence["preps"]:
                m, _ = mean_std([num(r["iterations"]) for r in rows if r["prep"] == p and num(r["kappa"]) == k])
                numbers[f"iterations[{p}, kappa={k:g}]"] = m
        ok_slope = SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1]
        ok_white = white_max <= WHITENED_MAX
        ok_div = all(div)
        parts = (
            f"raw slope {slope:.2f} (range {SLOPE_RANGE[0]}..{SLOPE_RANGE[1]}), whitened <= {white_max:g} "
            f"iterations (limit {WHITENED_MAX}), {sum(div)}/{len(div)} runs at 2.1/lambda_max diverge"
        )
        if ok_slope and ok_white and ok_div:
            return Verdict("holds", parts, numbers)
        return Verdict("fails", parts, numbers)

    def plot(self, evidence: dict, fig) -> None:
        rows = evidence["rows"]
        kappas = [num(k) for k in evidence["kappas"]]
        seeds = sorted({r["seed"] for r in rows})
        ax1, ax2, ax3 = fig.subplots(1, 3)
        for p in evidence["preps"]:
            per_seed = [
                [
                    num(r["iterations"])
                    for k in kappas
                    for r in rows
                    if r["seed"] == s and r["prep"] == p and num(r["kappa"]) == k
                ]
                for s in seeds
            ]
            plot_band(ax1, kappas, per_seed, p, marker="o")
        ref = [num(r["iterations"]) for r in rows if r["prep"] == "raw" and num(r["kappa"]) == kappas[0]]
        if ref and math.isfinite(mean_std(ref)[0]):
            m0 = mean_std(ref)[0]
            ax1.plot(kappas, [m0 * k / kappas[0] for k in kappas], "k--", lw=0.8, label="slope 1")
        ax1.set(
            xscale="log",
            yscale="log",
            xlabel="kappa(Sigma)",
            ylabel="GD iterations to 1e-6",
            title="eta = 1/lambda_max",
        )
        ax1.legend(fontsize=7)
        s0 = seeds[0]
        for r in rows:
            if r["seed"] == s0 and r["prep"] in ("raw", "whitened"):
                ls = "-" if r["prep"] == "raw" else ":"
                ax2.plot(
                    [max(t, 1) for t in r["curve_t"]],
                    [max(num(e), 1e-17) for e in r["curve_err"]],
                    ls,
                    label=f"{r['prep']} kappa={num(r['kappa']):g}",
                )
        ax2.axhline(evidence["tolerance"], color="k", lw=0.8, ls="--")
        ax2.set(
            xscale="log",
            yscale="log",
            xlabel="iteration",
            ylabel="||w - w*|| / ||w*||",
            title=f"convergence (seed {s0})",
        )
        ax2.legend(fontsize=6)
        for key, ls in (("err_2.1", "-"), ("err_1.9", "--")):
            for r in rows:
                if r["seed"] == s0 and r["prep"] == "raw":
                    errs = [min(max(num(e), 1e-17), 1e12) if math.isfinite(num(e)) else 1e12 for e in r[key]]
                    ax3.plot(
                        [10 * i for i in range(len(errs))],
                        errs,
                        ls,
                        label=f"eta={key[4:]}/lmax, kappa={num(r['kappa']):g}",
                    )
        ax3.set(
            yscale="log", xlabel="iteration", ylabel="relative error", title="eta = 2.1 (-) / 1.9 (--) x 1/lambda_max"
        )
        ax3.legend(fontsize=6)


CLAIM = GdConditioning()
