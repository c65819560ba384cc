"""init-scale: a deep ReLU MLP trains only near the He scale c = 2 of W ~ N(0, c/n).

Source: Kolter & Chen, Deep Learning Systems lecture ("Initialization").

Statement (CLAIMS.md): deep ReLU MLP with W ~ N(0, c/n): c=2 trains, c=1
vanishes (no progress), c=3 explodes (NaN/inf).

Protocol: :class:`normlab.models.MLP` with 20 hidden layers of width 100
(Linear -> ReLU; 21 weight matrices with the head), no norm, every weight
N(0, c / fan_in) and biases 0 (:func:`normlab.models.init_weights`), c in {1, 2, 3};
MNIST-1D (4000 train / 1000 test); SGD lr 0.01 momentum 0.9, batch 100,
10 epochs (400 steps; quick: 1 epoch, one seed). Per-layer norms of the ReLU
outputs z_l and of dloss/dz_l on the first 500 training examples, at init and
after training (:class:`normlab.analysis.ActivationProbe`).

Theory: E||z_(l+1)||^2 = (c/2) ||z_l||^2, so log(||z_l|| / ||x||) grows by
log(c/2)/2 per layer. The slope is the least-squares slope of
log(||z_l|| / ||x||) over l = 1..20 at init.

Rule (CLAIMS.md), every part on seed means unless said:
- the slope is within 30% of log(c/2)/2 for each c. For c = 2 the target is 0
  and a relative tolerance is empty, so the tolerance is
  0.3 * max(|log(c/2)/2|, log(3/2)/2): 30% of the smallest non-zero target
  of the grid (0.061 nats per layer) where the target is 0;
- c = 2 reaches final test accuracy >= 2x chance (0.2);
- c = 1 stays <= chance + 5 points (0.15);
- c = 3: every seed's loss is non-finite or not improving. "Improving" means
  the last epoch's mean training loss is <= 0.9 x min(first-step loss, ln 10):
  better than both the start and a uniform guess by 10%.
"""

from __future__ import annotations

import math

from ..data import mnist1d
from ._workbench import CHANCE, mlp_run, num, one_thread, plot_band, quick_verdict
from .base import Claim, Context, Verdict, loglog_slope, mean_std

DEPTH, WIDTH = 20, 100
CS = (1.0, 2.0, 3.0)
LR, MOMENTUM, BATCH, EPOCHS = 0.01, 0.9, 100, 10
SLOPE_REL_TOL = 0.3
SLOPE_FLOOR = math.log(1.5) / 2  # smallest non-zero |target| in the grid (c = 3)
IMPROVE = 0.9


def target_slope(c: float) -> float:
    return math.log(c / 2) / 2


def slope_tolerance(c: float) -> float:
    return SLOPE_REL_TOL * max(abs(target_slope(c)), SLOPE_FLOOR)


def layer_slope(act: list, input_norm: float) -> float:
    """Least-squares slope of log(||z_l|| / ||x||) against l = 1..L (nan if any norm is not positive/finite)."""
    vals = [num(a) / num(input_norm) for a in act]
    if not all(math.isfinite(v) and v > 0 for v in vals):
        return math.nan
    # loglog_slope fits log(y) vs log(x): pass x = e^l so that log(x) = l
    return loglog_slope([math.exp(l) for l in range(1, len(vals) + 1)], vals)


def improving(run: dict) -> bool:
    """The last epoch's mean training loss is finite and <= 0.9 x min(first loss, ln 10)."""
    if run.get("diverged") or not run["epoch_loss"]:
        return False
    last, first = num(run["epoch_loss"][-1]), num(run["first_loss"])
    ref = min(first, math.log(10)) if math.isfinite(first) else math.log(10)
    return math.isfinite(last) and last <= IMPROVE * ref


class InitScale(Claim):
    id = "init-scale"
    title = "Deep ReLU MLP: c=2 trains, c=1 vanishes, c=3 explodes"
    source = "Kolter & Chen, Deep Learning Systems lecture (initialization)"
    statement = "deep ReLU MLP with W ~ N(0, c/n): c=2 trains, c=1 vanishes (no progress), c=3 explodes (NaN/inf)"
    protocol = (
        f"MLP {DEPTH} hidden layers x {WIDTH} on mnist1d, no norm, W ~ N(0, c/fan_in), c in {{1, 2, 3}}; SGD lr {LR} "
        f"momentum {MOMENTUM}, batch {BATCH}, {EPOCHS} epochs; per-layer ReLU-output and gradient norms at init "
        "and after training"
    )
    rule = (
        "init slope of log ||z_l||/||x|| within 30% of log(c/2)/2 (floor 30% of log(1.5)/2 where the target is 0); "
        "c=2 final test acc >= 2x chance; c=1 <= chance + 5 points; c=3 every seed non-finite or not improving"
    )

    def run(self, ctx: Context) -> dict:
        data = mnist1d()
        epochs = ctx.pick(1, EPOCHS)
        runs = []
        with one_thread():
            for c in CS:
                for seed in ctx.seeds:
                    r = mlp_run(
                        data,
                        seed=seed,
                        depth=DEPTH,
                        width=WIDTH,
                        c=c,
                        norm=None,
                        lr=LR,
                        momentum=MOMENTUM,
                        batch_size=BATCH,
                        epochs=epochs,
                    )
                    r["init_slope"] = layer_slope(r["init_act"], r["input_norm"])
                    ctx.log(
                        f"  c={c:g} seed={seed}: final test acc {r['final_test_acc']:.3f}, "
                        f"diverged={r['diverged']}, init slope {r['init_slope']:.3f} ({r['seconds']:.1f}s)"
                    )
                    runs.append(r)
        return {"runs": runs, "cs": list(CS), "epochs": epochs, "chance": CHANCE, "quick": ctx.quick}

    def verdict(self, evidence: dict) -> Verdict:
        runs = evidence["runs"]
        chance = num(evidence["chance"])
        by_c = {num(c): [r for r in runs if num(r["c"]) == num(c)] for c in evidence["cs"]}
        if any(not rs for rs in by_c.values()) or set(by_c) != set(CS):
            return Verdict("inconclusive", f"needs runs for every c in {CS}")
        numbers, ok = {}, {}
        for c, rs in by_c.items():
            slope, sd = mean_std([num(r["init_slope"]) for r in rs])
            numbers[f"init_slope[c={c:g}]"] = slope
            numbers[f"init_slope_std[c={c:g}]"] = sd
            numbers[f"target_slope[c={c:g}]"] = target_slope(c)
            ok[f"slope c={c:g}"] = abs(slope - target_slope(c)) <= slope_tolerance(c)
            acc, acc_sd = mean_std([num(r["final_test_acc"]) for r in rs])
            numbers[f"test_acc[c={c:g}]"] = (
                acc if any(math.isfinite(num(r["final_test_acc"])) for r in rs) else math.nan
            )
            numbers[f"test_acc_std[c={c:g}]"] = acc_sd
        acc2, acc1 = numbers["test_acc[c=2]"], numbers["test_acc[c=1]"]
        ok["c=2 trains"] = acc2 >= 2 * chance
        ok["c=1 vanishes"] = acc1 <= chance + 0.05
        c3 = by_c[3.0]
        exploded = [bool(r["diverged"]) or not improving(r) for r in c3]
        numbers["c3_nonfinite_or_flat_fraction"] = sum(exploded) / len(exploded)
        numbers["c3_diverged_fraction"] = sum(bool(r["diverged"]) for r in c3) / len(c3)
        ok["c=3 explodes"] = all(exploded)
        failed = [k for k, v in ok.items() if not v]
        reason = (
            f"init slopes {numbers['init_slope[c=1]']:.3f}/{numbers['init_slope[c=2]']:.3f}/"
            f"{numbers['init_slope[c=3]']:.3f} vs {target_slope(1):.3f}/0/{target_slope(3):.3f}; test acc c=2 "
            f"{acc2:.3f} (>= {2 * chance:.2f}), c=1 {acc1:.3f} (<= {chance + 0.05:.2f}); c=3 non-finite or flat in "
            f"{sum(exploded)}/{len(exploded)} seeds"
        )
        v = Verdict(
            "holds" if not failed else "fails", reason + (f"; fails: {', '.join(failed)}" if failed else ""), numbers
        )
        if evidence.get("quick"):
            return quick_verdict(v, f"{evidence['epochs']} epoch, {len({r['seed'] for r in runs})} seed")
        return v

    def plot(self, evidence: dict, fig) -> None:
        runs = evidence["runs"]
        ax1, ax2, ax3 = fig.subplots(1, 3)
        for i, c in enumerate(evidence["cs"]):
            rs = [r for r in runs if num(r["c"]) == num(c)]
            color = f"C{i}"
            layers = range(1, len(rs[0]["init_act"]) + 1)
            rel = [[num(a) / num(r["input_norm"]) for a in r["init_act"]] for r in rs]
            plot_band(ax1, layers, rel, f"c={c:g} init", color=color, log=True)
            fin = [[num(a) / num(r["input_norm"]) for a in r["final_act"]] for r in rs]
            if any(all(math.isfinite(v) for v in f) for f in fin):
                plot_band(ax1, layers, fin, f"c={c:g} trained", color=color, ls="--", log=True)
            m0 = mean_std([row[0] for row in rel])[0]
            ax1.plot(layers, [m0 * math.exp(target_slope(num(c)) * (l - 1)) for l in layers], ":", color="k", lw=0.8)
            plot_band(
                ax2, layers, [[num(g) for g in r["init_grad"]] for r in rs], f"c={c:g} init", color=color, log=True
            )
            epochs = range(1, len(rs[0]["test_acc"]) + 1)
            plot_band(
                ax3, epochs, [[num(a) for a in r["test_acc"]] for r in rs], f"c={c:g}", color=color, marker="o", ms=3
            )
        ax1.set(yscale="log", xlabel="layer l", ylabel="||z_l|| / ||x||", title="ReLU outputs (dotted: theory)")
        ax1.legend(fontsize=6)
        ax2.set(yscale="log", xlabel="layer l", ylabel="||dloss/dz_l||", title="gradients at init")
        ax2.legend(fontsize=6)
        chance = num(evidence["chance"])
        ax3.axhline(chance, color="gray", ls=":", lw=1, label="chance")
        ax3.axhline(2 * chance, color="gray", ls="--", lw=1, label="2x chance")
        ax3.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy (c=3: NaN)")
        ax3.legend(fontsize=6)


CLAIM = InitScale()
