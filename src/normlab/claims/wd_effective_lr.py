"""wd-effective-lr: with BN, weight decay only sets ||w||; the angular update settles at sqrt(2 eta lambda / (1 + m)).

Sources: van Laarhoven 2017 ("L2 Regularization versus Batch and Weight
Normalization"); Hoffer, Banner, Golan & Soudry 2018 ("Norm matters"); the
momentum form of the equilibrium is Wan, Zhu, Zhang & Sun 2021 ("Spherical
Motion Dynamics").

Protocol: an MLP on MNIST-1D, 40 -> 128 -> 128 -> 10, each hidden Linear
without bias followed by BatchNorm and ReLU, so both hidden weight matrices
are scale invariant (the head is not). He init; SGD with momentum m = 0.9,
batch 64, weight decay lambda on every parameter; eta in {0.05, 0.1} and
lambda in {1e-3, 5e-3}. With momentum the norm relaxes on the time scale
``tau = (1 - m) / (2 eta lambda)`` steps (plain SGD: ``1 / (2 eta lambda)``,
the scale in CLAIMS.md's ">= 5 / (2 eta lambda) steps"), so each run lasts
``13 tau`` steps (100 to 1000 tau-steps):

- ``5 tau`` steps; the **late angular update** is the per-step angle between
  ``w_t`` and ``w_{t+1}`` (:class:`normlab.analysis.EffectiveLRTracker`),
  averaged over steps ``[4 tau, 5 tau)`` and over the two hidden weights;
- at step ``5 tau`` both hidden weights are multiplied by 10 (the control).
  The loss change is measured on a copy of the net (training-mode BN, a fixed
  batch of 512 examples): ``|L(10 w) - L(w)| / L(w)``; the same with every BN
  ``eps`` set to 0 is reported as a diagnostic (BN with ``eps > 0`` is scale
  invariant only up to ``eps / Var``);
- **shrink** = mean angle over the 50 steps before the rescale / mean angle
  over steps ``[5 tau + 20, 5 tau + 40)`` (after the momentum buffer, which
  still holds the old, 10x larger gradients, has decayed by ``0.9^20``);
- ``8 tau`` more steps; the **recovered** angular update is the mean over the
  last ``tau`` steps.

Rule (CLAIMS.md), per (eta, lambda), seed means: the late angular update is
within 25% of ``sqrt(2 eta lambda / (1 + m))``; after the rescale the loss is
unchanged (relative change <= 1e-6, the largest over seeds and configs), the
updates shrink ~100x (read as: between 100/3 and 300, i.e. within half a
decade of 100) and then recover (recovered angular update within 25% of the
theory). With fewer than 3 seeds the verdict is ``inconclusive``.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from ..analysis import EffectiveLRTracker
from ..data import mnist1d
from ..models import MLP, init_weights
from ..train import seed_everything
from ._support import fmt, nanmean, nanstd, num, seeds_caveat, single_thread
from .base import Claim, Context, Verdict

MOMENTUM = 0.9
BATCH = 64
CONFIGS = ((0.05, 1e-3), (0.1, 1e-3), (0.05, 5e-3), (0.1, 5e-3))
QUICK_CONFIGS = ((0.1, 5e-3),)
TOL_ANGLE = 0.25
TOL_LOSS = 1e-6
SHRINK_BAND = (100 / 3, 300.0)
RESCALE = 10.0
PRE, POST_START, POST_END = 50, 20, 40
CURVE_POINTS = 130

# BatchNorm refuses eps = 0 in training (as torch's does); the smallest positive float32 is as exact here.
_EPS_TINY = torch.finfo(torch.float32).tiny


def theory(eta: float, lam: float, m: float = MOMENTUM) -> float:
    """Equilibrium angular update per step of a scale-invariant weight (Wan et al. 2021)."""
    return math.sqrt(2 * eta * lam / (1 + m))


def _relative_loss_change(model, batch, names, factor: float, eps: float | None = None) -> float:
    m = copy.deepcopy(model)
    m.train()
    if eps is not None:
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.eps = eps
    params = dict(m.named_parameters())
    with torch.no_grad():
        before = float(F.cross_entropy(m(batch[0]), batch[1]))
        for n in names:
            params[n].mul_(factor)
        after = float(F.cross_entropy(m(batch[0]), batch[1]))
    return abs(after - before) / abs(before)


def _run(data, eta: float, lam: float, seed: int, tau_scale: float = 1.0) -> dict:
    gen = seed_everything(seed)
    model = MLP(data.x_train.shape[1], 10, width=128, depth=2, norm="bn", bias=False)
    init_weights(model, generator=torch.Generator().manual_seed(seed))
    names = [n for n, p in model.named_parameters() if p.dim() == 2][:-1]  # the hidden weights, not the head
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=eta, momentum=MOMENTUM, weight_decay=lam)
    tau = max(1, int(round(tau_scale * (1 - MOMENTUM) / (2 * eta * lam))))
    rescale_at, total = 5 * tau, 13 * tau
    probe = (data.x_train[:512], data.y_train[:512])
    n = len(data.x_train)
    loss_change = loss_change_eps0 = math.nan
    losses = []
    trackers = [EffectiveLRTracker([(k, params[k]) for k in names], lr=eta)]
    for step in range(total):
        if step == rescale_at:
            loss_change = _relative_loss_change(model, probe, names, RESCALE)
            loss_change_eps0 = _relative_loss_change(model, probe, names, RESCALE, eps=_EPS_TINY)
            with torch.no_grad():
                for name in names:
                    params[name].mul_(RESCALE)
            # a new tracker from the rescaled weights: the rescale itself is not an optimizer step
            trackers.append(EffectiveLRTracker([(k, params[k]) for k in names], lr=eta))
        idx = torch.randint(0, n, (BATCH,), generator=gen)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        trackers[-1].update()
        losses.append(float(loss.detach()))
    dicts = [t.as_dict() for t in trackers]
    angle = {k: [a for d in dicts for a in d[k]["angle"]] for k in names}
    norm = {k: [a for d in dicts for a in d[k]["norm"]] for k in names}
    angles = [sum(v) / len(v) for v in zip(*(angle[k] for k in names), strict=False)]

    def window(a, b):
        return sum(angles[a:b]) / max(1, len(angles[a:b]))

    late = window(4 * tau, 5 * tau)
    pre = window(rescale_at - PRE, rescale_at)
    post = window(rescale_at + POST_START, rescale_at + POST_END)
    recovered = window(total - tau, total)
    block = max(1, total // CURVE_POINTS)
    return {
        "seed": seed,
        "eta": eta,
        "lam": lam,
        "tau": tau,
        "steps": total,
        "rescale_at": rescale_at,
        "theory": theory(eta, lam),
        "late": late,
        "pre": pre,
        "post": post,
        "shrink": pre / post if post > 0 else math.inf,
        "recovered": recovered,
        "loss_change": loss_change,
        "loss_change_eps0": loss_change_eps0,
        "curve_steps": [i * block for i in range(total // block)],
        "angle_curve": [sum(angles[i * block : (i + 1) * block]) / block for i in range(total // block)],
        "norm_curve": [sum(norm[names[0]][i * block : (i + 1) * block]) / block for i in range(total // block)],
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
    }


class WdEffectiveLr(Claim):
    id = "wd-effective-lr"
    title = "Weight decay sets the angular update of BN weights"
    source = "Hoffer et al. 2018; van Laarhoven 2017"
    statement = (
        "with BN, weight decay only sets ||w||; the angular update settles at sqrt(2 eta lambda / (1 + momentum))"
    )
    protocol = (
        "BN MLP 40-128-128-10 (hidden Linear without bias) on mnist1d, SGD m 0.9, batch 64, eta in {0.05, 0.1}, "
        "lambda in {1e-3, 5e-3}, 13 tau steps (tau = (1-m)/(2 eta lambda)); hidden weights x10 at 5 tau"
    )
    rule = (
        "late angular update within 25% of sqrt(2 eta lambda/(1+m)) for every config; at the rescale the loss "
        "changes <= 1e-6 (relative), updates shrink 33-300x (~100x) and recover to within 25% of theory"
    )

    def run(self, ctx: Context) -> dict:
        configs = ctx.pick(QUICK_CONFIGS, CONFIGS)
        with single_thread():
            data = mnist1d()
            rows = []
            for eta, lam in configs:
                for seed in ctx.seeds:
                    r = _run(data, eta, lam, seed)
                    rows.append(r)
                    ctx.log(
                        f"  eta={eta:g} lambda={lam:g} seed {seed}: late/theory {r['late'] / r['theory']:.3f}, "
                        f"shrink {r['shrink']:.0f}x, recovered/theory {r['recovered'] / r['theory']:.3f}, "
                        f"loss change {r['loss_change']:.1e} (eps=tiny: {r['loss_change_eps0']:.1e})"
                    )
        return {"rows": rows, "configs": [list(c) for c in configs], "momentum": MOMENTUM, "n_seeds": len(ctx.seeds)}

    def verdict(self, evidence: dict) -> Verdict:
        rows = evidence["rows"]
        if not rows:
            return Verdict("inconclusive", "no runs")
        numbers, bad, parts = {}, [], []
        for eta, lam in evidence["configs"]:
            rs = [r for r in rows if num(r["eta"]) == num(eta) and num(r["lam"]) == num(lam)]
            th = theory(num(eta), num(lam), num(evidence.get("momentum", MOMENTUM)))
            late = nanmean([num(r["late"]) for r in rs]) / th
            rec = nanmean([num(r["recovered"]) for r in rs]) / th
            shrink = nanmean([num(r["shrink"]) for r in rs])
            key = f"eta{num(eta):g}_lam{num(lam):g}"
            numbers[f"late_over_theory_{key}"] = late
            numbers[f"shrink_{key}"] = shrink
            numbers[f"recovered_over_theory_{key}"] = rec
            parts.append(f"{key}: late {fmt(late)}x theory, shrink {fmt(shrink)}x, recovered {fmt(rec)}x")
            if not abs(late - 1) <= TOL_ANGLE:
                bad.append(f"late angle {fmt(late)}x theory at {key}")
            if not SHRINK_BAND[0] <= shrink <= SHRINK_BAND[1]:
                bad.append(f"shrink {fmt(shrink)}x at {key}")
            if not abs(rec - 1) <= TOL_ANGLE:
                bad.append(f"no recovery ({fmt(rec)}x theory) at {key}")
        changes = [num(r["loss_change"]) for r in rows]
        loss_change = max(changes) if all(math.isfinite(c) for c in changes) else math.nan
        numbers["max_loss_change"] = loss_change
        numbers["max_loss_change_eps0"] = max(num(r["loss_change_eps0"]) for r in rows)
        if not loss_change <= TOL_LOSS:
            bad.append(
                f"loss changed by {fmt(loss_change, 2)} (relative) at the rescale (BN eps = tiny: "
                f"{fmt(numbers['max_loss_change_eps0'], 2)})"
            )
        reason = "; ".join(parts) + f"; loss change at rescale {fmt(loss_change, 2)}"
        caveat = seeds_caveat(int(evidence["n_seeds"]))
        if caveat:
            would = "holds" if not bad else "fails (" + "; ".join(bad) + ")"
            return Verdict("inconclusive", f"{caveat}; would be {would}: {reason}", numbers)
        if not bad:
            return Verdict("holds", reason, numbers)
        return Verdict("fails", f"{'; '.join(bad)}. All: {reason}", numbers)

    def plot(self, evidence: dict, fig) -> None:
        rows = evidence["rows"]
        ax1, ax2, ax3 = fig.subplots(1, 3)
        for i, (eta, lam) in enumerate(evidence["configs"]):
            rs = [r for r in rows if num(r["eta"]) == num(eta) and num(r["lam"]) == num(lam)]
            if not rs:
                continue
            tau = rs[0]["tau"]
            xs = [s / tau for s in rs[0]["curve_steps"]]
            n = min(len(r["angle_curve"]) for r in rs)
            mean = [nanmean([num(r["angle_curve"][j]) for r in rs]) for j in range(n)]
            th = theory(num(eta), num(lam))
            ax1.plot(
                xs[:n], [v / th for v in mean], color=f"C{i}", lw=1, label=f"eta {num(eta):g}, lambda {num(lam):g}"
            )
            for r in rs:
                ax2.plot(
                    [st / tau for st in r["curve_steps"]],
                    [num(v) for v in r["norm_curve"]],
                    color=f"C{i}",
                    lw=0.8,
                    alpha=0.7,
                )
        ax1.axhline(1.0, color="k", ls="--", lw=1)
        ax1.axhspan(1 - TOL_ANGLE, 1 + TOL_ANGLE, color="gray", alpha=0.15)
        ax1.set_yscale("log")
        ax1.set_xlabel("step / tau")
        ax1.set_ylabel("angular update / sqrt(2 eta lambda / (1+m))")
        ax1.legend(fontsize=6)
        ax1.set_title("x10 rescale at 5 tau (seed mean)", fontsize=9)
        ax2.set_xlabel("step / tau")
        ax2.set_ylabel("||w|| (first hidden layer, each seed)")
        ax2.set_yscale("log")
        keys = ["late", "recovered"]
        for i, (eta, lam) in enumerate(evidence["configs"]):
            rs = [r for r in rows if num(r["eta"]) == num(eta) and num(r["lam"]) == num(lam)]
            th = theory(num(eta), num(lam))
            for j, k in enumerate(keys):
                vals = [num(r[k]) / th for r in rs]
                x = j * (len(evidence["configs"]) + 1) + i
                ax3.bar(x, nanmean(vals), yerr=nanstd(vals), color=f"C{i}", alpha=0.6)
                ax3.scatter([x] * len(vals), vals, color="k", s=6)
        ax3.axhspan(1 - TOL_ANGLE, 1 + TOL_ANGLE, color="gray", alpha=0.15)
        ax3.set_xticks(
            [(len(evidence["configs"]) - 1) / 2 + j * (len(evidence["configs"]) + 1) for j in range(2)],
            ["late (before rescale)", "recovered (end)"],
            fontsize=8,
        )
        ax3.set_ylabel("angular update / theory")


CLAIM = WdEffectiveLr()
