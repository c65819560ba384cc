"""bn-smoothness: BatchNorm makes the loss landscape smoother along the training trajectory.

Source: Santurkar, Tsipras, Ilyas & Madry 2018, "How Does Batch Normalization
Help Optimization?" (Sec. 3.1, Fig. 4): at points along training, moving
along the gradient, the loss varies in a narrower band, the gradient changes
less (more predictive), and the effective beta-smoothness is lower with BN.

Protocol: the 1-D CNN of :class:`normlab.models.CNN` (channels 32-32-64) on
MNIST-1D, standard (no norm) vs BN (after every conv, before the ReLU),
trained the same way: He init, SGD lr 0.05 momentum 0.9, batch 64, 1500
steps. At steps 0, 100, ..., 1500, on a fixed batch of 256 training examples,
:func:`normlab.analysis.loss_landscape` with step sizes eta = 0.05, 0.10, ...,
0.40 along ``-g`` (``bn_mode="train"``, the training loss) gives

- the loss band width ``max_eta L(x - eta g) - min_eta L(x - eta g)``,
- the gradient-predictiveness band ``||g(x) - g(x - eta g)||`` (reported),
- ``beta_eff = max_eta ||g(x) - g(x - eta g)|| / ||eta g||``.

A seed's value is the median over the checkpoints. A non-finite loss along
the step (an explosion) counts as an infinite band.

Rule (CLAIMS.md): medians over training, averaged over seeds: the BN net's
loss band and its beta_eff are both below the standard net's by >= 2x
(ratio standard / BN >= 2). With fewer than 3 seeds: ``inconclusive``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..analysis import loss_landscape
from ..data import mnist1d
from ..models import CNN, init_weights
from ..train import seed_everything, train
from ._support import fmt, num, seeds_caveat, single_thread
from .base import Claim, Context, Verdict

CHANNELS = (32, 32, 64)
LR = 0.05
MOMENTUM = 0.9
BATCH = 64
PROBE_BATCH = 256
STEP_SIZES = [0.05 * i for i in range(1, 9)]
FACTOR = 2.0
NETS = ("standard", "bn")
KEYS = ("loss_band", "grad_band", "beta_eff")


def _measure(model, batch, step: int) -> dict:
    res = loss_landscape(model, F.cross_entropy, batch, step_sizes=STEP_SIZES, bn_mode="train")
    losses = [float(v) for v in res.losses]
    changes = [float(v) for v in res.grad_changes]
    finite = all(math.isfinite(v) for v in losses + changes)
    return {
        "step": step,
        "loss": res.loss,
        "losses": losses,
        "grad_changes": changes,
        "loss_band": (max(losses) - min(losses)) if finite else math.inf,
        "grad_band": (max(changes) - min(changes)) if finite else math.inf,
        "grad_change_max": max(changes) if finite else math.inf,
        "beta_eff": res.beta_eff if finite else math.inf,
    }


def _median(values) -> float:
    vals = sorted(num(v) for v in values if not math.isnan(num(v)))  # inf counts (an explosion), nan does not
    if not vals:
        return math.nan
    n = len(vals)
    return vals[n // 2] if n % 2 else 0.5 * (vals[n // 2 - 1] + vals[n // 2])


class BnSmoothness(Claim):
    id = "bn-smoothness"
    title = "BN smooths the loss landscape"
    source = "Santurkar et al. 2018"
    statement = (
        "BN makes the landscape smoother: narrower loss variation along the gradient, more predictive gradients, "
        "lower effective beta-smoothness"
    )
    protocol = (
        "1-D CNN 32-32-64 on mnist1d, standard vs BN, SGD lr 0.05 m 0.9, 1500 steps; every 100 steps on 256 fixed "
        "examples: L(x - eta g) and ||g - g(x - eta g)|| for eta = 0.05..0.4"
    )
    rule = "medians over training (seed mean): loss band and beta_eff of standard / BN >= 2"

    def run(self, ctx: Context) -> dict:
        steps = ctx.pick(100, 1500)
        every = ctx.pick(25, 100)
        with single_thread():
            data = mnist1d(channel_dim=True)
            batch = (data.x_train[:PROBE_BATCH], data.y_train[:PROBE_BATCH])
            rows = []
            for seed in ctx.seeds:
                for net in NETS:
                    seed_everything(seed)
                    model = CNN(1, 10, channels=CHANNELS, spatial=1, norm="bn" if net == "bn" else None)
                    init_weights(model, generator=torch.Generator().manual_seed(seed))
                    points = [_measure(model, batch, 0)]

                    def probe(step, m, info, points=points):
                        if step % every == 0:
                            points.append(_measure(m, batch, step))

                    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
                    hist = train(
                        model,
                        data,
                        opt,
                        steps=steps,
                        batch_size=BATCH,
                        seed=seed,
                        eval_every=steps,
                        callbacks=(probe,),
                        progress=False,
                    )
                    row = {"seed": seed, "net": net, "points": points, "final_acc": hist.final_test_acc}
                    for key in KEYS:
                        row[key] = _median([p[key] for p in points])
                    rows.append(row)
                    ctx.log(
                        f"  seed {seed} {net}: median loss band {row['loss_band']:.3g}, beta_eff "
                        f"{row['beta_eff']:.3g}, acc {row['final_acc']:.3f}"
                    )
        return {"rows": rows, "step_sizes": STEP_SIZES, "steps": steps, "n_seeds": len(ctx.seeds)}

    def verdict(self, evidence: dict) -> Verdict:
        rows = evidence["rows"]
        numbers = {}
        for net in NETS:
            for key in KEYS:
                vals = [num(r[key]) for r in rows if r["net"] == net]
                numbers[f"{key}_{net}"] = sum(vals) / len(vals) if vals else math.nan  # inf stays inf
        ratios = {}
        for key in KEYS:
            s, b = numbers[f"{key}_standard"], numbers[f"{key}_bn"]
            ratios[key] = s / b if b > 0 else (math.inf if s > 0 else math.nan)
            numbers[f"ratio_{key}"] = ratios[key]
        if any(math.isnan(ratios[k]) for k in ("loss_band", "beta_eff")):
            return Verdict("inconclusive", "a band or beta_eff is not a number", numbers)
        ok_band = ratios["loss_band"] >= FACTOR
        ok_beta = ratios["beta_eff"] >= FACTOR
        reason = (
            f"standard / BN: loss band {fmt(ratios['loss_band'])}x ({fmt(numbers['loss_band_standard'])} vs "
            f"{fmt(numbers['loss_band_bn'])}), beta_eff {fmt(ratios['beta_eff'])}x ({fmt(numbers['beta_eff_standard'])}"
            f" vs {fmt(numbers['beta_eff_bn'])}), gradient band {fmt(ratios['grad_band'])}x (not judged)"
        )
        failed = [t for t, ok in (("loss band ratio < 2", ok_band), ("beta_eff ratio < 2", ok_beta)) if not ok]
        caveat = seeds_caveat(int(evidence["n_seeds"]))
        if caveat:
            would = "holds" if not failed else "fails (" + ", ".join(failed) + ")"
            return Verdict("inconclusive", f"{caveat}; would be {would}: {reason}", numbers)
        if not failed:
            return Verdict("holds", reason, numbers)
        return Verdict("fails", f"{', '.join(failed)}: {reason}", numbers)

    def plot(self, evidence: dict, fig) -> None:
        rows = evidence["rows"]
        axes = fig.subplots(1, 3)
        titles = {
            "loss_band": "loss band max-min L(x - eta g)",
            "grad_change_max": "gradient change max ||g - g(x - eta g)||",
            "beta_eff": "effective beta-smoothness",
        }
        for ax, key in zip(axes, ("loss_band", "grad_change_max", "beta_eff"), strict=False):
            for i, net in enumerate(NETS):
                rs = [r for r in rows if r["net"] == net]
                steps = [p["step"] for p in rs[0]["points"]] if rs else []
                curves = [[num(p[key]) for p in r["points"]] for r in rs]
                cols = [[c[j] for c in curves if j < len(c) and not math.isnan(c[j])] for j in range(len(steps))]
                mean = [sum(v) / len(v) if v else math.nan for v in cols]
                ax.plot(steps, mean, color=f"C{i}", marker=".", label=net)
                ax.fill_between(
                    steps,
                    [min(v, default=math.nan) for v in cols],
                    [max(v, default=math.nan) for v in cols],
                    color=f"C{i}",
                    alpha=0.2,
                )
            ax.set_yscale("log")
            ax.set_xlabel("training step")
            ax.set_title(titles.get(key, key), fontsize=9)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("seed mean, band: min..max over seeds")


CLAIM = BnSmoothness()
