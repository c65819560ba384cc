"""norm-fixes-init: with BN or LN after every layer, any init scale c trains and activations stay level.

Source: Kolter & Chen, Deep Learning Systems lecture; the "Normalizations" lecture.

Statement (CLAIMS.md): with LayerNorm or BatchNorm after each layer, all
three c train and activation norms are constant across layers.

Protocol: the init-scale net (:class:`normlab.models.MLP`, 20 hidden layers of
width 100 on MNIST-1D, W ~ N(0, c / fan_in), c in {1, 2, 3}) with normlab's
BatchNorm1d or LayerNorm after every hidden Linear, before the ReLU
(``placement="before"``; affine weight 1, bias 0); the same optimizer (SGD lr
0.01 momentum 0.9, batch 100, 10 epochs; quick: 1 epoch, one seed). The
reference is the no-norm net at c = 2 trained alongside with the same seeds.
Activation norms: the norm of each ReLU output z_l on the first 500 training
examples at init (training mode: batch statistics), per seed.

Rule (CLAIMS.md):
- per-layer activation-norm ratio max_l ||z_l|| / min_l ||z_l|| <= 2 at init
  for every c, norm and seed;
- "all runs reach the c=2 no-norm accuracy - 5%": read as every (norm, c)
  configuration's seed-mean final test accuracy >= the no-norm c = 2 seed-mean
  final test accuracy - 5 points (the per-seed minimum is reported too).
"""

from __future__ import annotations

import math

from ..data import mnist1d
from ._workbench import CHANCE, mlp_run, num, one_thread, plot_band, quick_verdict
from .base import Claim, Context, Verdict, mean_std

DEPTH, WIDTH = 20, 100
CS = (1.0, 2.0, 3.0)
NORMS = ("bn", "ln")
LR, MOMENTUM, BATCH, EPOCHS = 0.01, 0.9, 100, 10
RATIO_MAX = 2.0
MARGIN = 0.05


def norm_ratio(act: list) -> float:
    vals = [num(a) for a in act]
    if not vals or not all(math.isfinite(v) and v > 0 for v in vals):
        return math.inf
    return max(vals) / min(vals)


class NormFixesInit(Claim):
    id = "norm-fixes-init"
    title = "BN/LN after every layer: any init scale trains"
    source = "Kolter & Chen lecture; 'Normalizations' lecture"
    statement = (
        "with LayerNorm or BatchNorm after each layer, all three c train and activation norms are constant across "
        "layers"
    )
    protocol = (
        f"init-scale's MLP ({DEPTH} x {WIDTH}, mnist1d, W ~ N(0, c/fan_in), c in {{1, 2, 3}}) with BN or LN before "
        f"each ReLU; SGD lr {LR} momentum {MOMENTUM}, batch {BATCH}, {EPOCHS} epochs; reference: no norm, c=2"
    )
    rule = (
        f"ReLU-output norm ratio max/min over layers <= {RATIO_MAX:g} at init for every c, norm, seed; every "
        f"(norm, c) seed-mean test acc >= no-norm c=2 seed-mean - {MARGIN * 100:g} points"
    )

    def run(self, ctx: Context) -> dict:
        data = mnist1d()
        epochs = ctx.pick(1, EPOCHS)
        runs = []
        configs = [(None, 2.0)] + [(n, c) for n in NORMS for c in CS]
        with one_thread():
            for norm, c in configs:
                for seed in ctx.seeds:
                    r = mlp_run(
                        data,
                        seed=seed,
                        depth=DEPTH,
                        width=WIDTH,
                        c=c,
                        norm=norm,
                        lr=LR,
                        momentum=MOMENTUM,
                        batch_size=BATCH,
                        epochs=epochs,
                    )
                    r["init_ratio"] = norm_ratio(r["init_act"])
                    ctx.log(
                        f"  {r['norm']} c={c:g} seed={seed}: final test acc {r['final_test_acc']:.3f}, "
                        f"init ratio {r['init_ratio']:.2f} ({r['seconds']:.1f}s)"
                    )
                    runs.append(r)
        return {
            "runs": runs,
            "cs": list(CS),
            "norms": list(NORMS),
            "epochs": epochs,
            "chance": CHANCE,
            "quick": ctx.quick,
        }

    def verdict(self, evidence: dict) -> Verdict:
        runs = evidence["runs"]
        base = [r for r in runs if r["norm"] == "none" and num(r["c"]) == 2.0]
        if not base:
            return Verdict("inconclusive", "the no-norm c=2 reference was not run")
        ref, ref_sd = mean_std([num(r["final_test_acc"]) for r in base])
        numbers = {"reference_acc[none, c=2]": ref, "reference_acc_std": ref_sd}
        worst_ratio, worst_gap, bad = 0.0, math.inf, []
        min_seed_acc = math.inf
        for n in evidence["norms"]:
            for c in evidence["cs"]:
                rs = [r for r in runs if r["norm"] == n and num(r["c"]) == num(c)]
                if not rs:
                    return Verdict("inconclusive", f"no runs for {n} at c={num(c):g}")
                ratio = max(num(r["init_ratio"]) for r in rs)
                acc, sd = mean_std([num(r["final_test_acc"]) for r in rs])
                if not all(math.isfinite(num(r["final_test_acc"])) for r in rs):
                    acc = math.nan  # a diverged seed counts against the configuration
                numbers[f"init_ratio[{n}, c={num(c):g}]"] = ratio
                numbers[f"test_acc[{n}, c={num(c):g}]"] = acc
                numbers[f"test_acc_std[{n}, c={num(c):g}]"] = sd
                worst_ratio = max(worst_ratio, ratio)
                min_seed_acc = min([min_seed_acc] + [num(r["final_test_acc"]) for r in rs])
                gap = acc - (ref - MARGIN)
                worst_gap = min(worst_gap, gap) if math.isfinite(gap) else -math.inf
                if not (ratio <= RATIO_MAX):
                    bad.append(f"{n} c={num(c):g} ratio {ratio:.2f}")
                if not (acc >= ref - MARGIN):
                    bad.append(f"{n} c={num(c):g} acc {acc:.3f}")
        numbers["max_init_ratio"] = worst_ratio
        numbers["min_config_acc_minus_threshold"] = worst_gap
        numbers["min_seed_acc"] = min_seed_acc
        reason = (
            f"init norm ratio <= {worst_ratio:.2f} (limit {RATIO_MAX:g}); every (norm, c) mean test acc "
            f"{'>=' if worst_gap >= 0 else 'not all >='} no-norm c=2 {ref:.3f} - {MARGIN:.2f}"
            + (f" (short: {', '.join(bad)})" if bad else f" (worst margin {worst_gap:+.3f})")
        )
        v = Verdict("fails" if bad else "holds", reason, numbers)
        if evidence.get("quick"):
            return quick_verdict(v, f"{evidence['epochs']} epoch, {len({r['seed'] for r in runs})} seed")
        return v

    def plot(self, evidence: dict, fig) -> None:
        runs = evidence["runs"]
        ax1, ax2, ax3 = fig.subplots(1, 3)
        styles = {"bn": "-", "ln": "--", "none": ":"}
        configs = [("none", 2.0)] + [(n, num(c)) for n in evidence["norms"] for c in evidence["cs"]]
        for n, c in configs:
            rs = [r for r in runs if r["norm"] == n and num(r["c"]) == c]
            if not rs:
                continue
            color = {1.0: "C0", 2.0: "C1", 3.0: "C2"}[c] if n != "none" else "k"
            layers = range(1, len(rs[0]["init_act"]) + 1)
            plot_band(
                ax1,
                layers,
                [[num(a) / num(r["input_norm"]) for a in r["init_act"]] for r in rs],
                f"{n} c={c:g}",
                color=color,
                ls=styles[n],
                log=True,
            )
            plot_band(
                ax2,
                layers,
                [[num(g) for g in r["init_grad"]] for r in rs],
                f"{n} c={c:g}",
                color=color,
                ls=styles[n],
                log=True,
            )
            epochs = range(1, len(rs[0]["test_acc"]) + 1)
            plot_band(
                ax3, epochs, [[num(a) for a in r["test_acc"]] for r in rs], f"{n} c={c:g}", color=color, ls=styles[n]
            )
        ax1.set(yscale="log", xlabel="layer l", ylabel="||z_l|| / ||x|| at init", title="ReLU outputs at init")
        ax1.legend(fontsize=6)
        ax2.set(yscale="log", xlabel="layer l", ylabel="||dloss/dz_l|| at init", title="gradients at init")
        base = [num(r["final_test_acc"]) for r in runs if r["norm"] == "none"]
        if base:
            ax3.axhline(mean_std(base)[0] - MARGIN, color="k", lw=0.8, ls="-.", label="no-norm c=2 - 5 pts")
        ax3.axhline(num(evidence["chance"]), color="gray", lw=0.8, ls=":")
        ax3.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy (seed bands)")
        ax3.legend(fontsize=6)


CLAIM = NormFixesInit()
