"""init-scale: a deep ReLU MLP trains only near the He scale c = 2 of W ~ N(0, c/n).

Source: Kolter & Chen, Deep Learning Systems lecture ("Initialization").

Protocol: :class:`normlab.models.MLP` with ``depth`` hidden layers of
``width`` (Linear -> ReLU, no norm), every weight N(0, c / fan_in), biases 0,
on MNIST-1D; SGD, ``epochs`` epochs; test accuracy every epoch; per-layer
norms of the ReLU outputs z_l and of dloss/dz_l on the first
``probe_examples`` training examples, at init and after training. The depth
is the lecture's (the previous protocol used 20 layers, where c = 1 leaves
chance after ~6 epochs): a ``side_depth``-layer c = 1 net is trained beside
it and reported in the note, not judged.

Theory: E||z_(l+1)||^2 = (c/2) ||z_l||^2, so log(||z_l|| / ||x||) grows by
log(c/2)/2 per layer; the slope is the least-squares slope over l = 1..depth
at init. For c = 2 the target is 0 and a relative tolerance is empty, so the
tolerance there is ``slope_rel_tol`` of the smallest non-zero |target| of the
grid. "Improving" (for c = 3) means the last epoch's mean training loss is
<= ``improve`` x min(first-step loss, ln 10): better than both the start and
a uniform guess.
"""

from __future__ import annotations

import math

from ..data import mnist1d
from .base import (
    Claim,
    Verdict,
    band_part,
    exact_part,
    fmt,
    interval_part,
    loglog_slope,
    mean_std,
    num,
    per_seed,
    select,
    sweep,
)
from .recipes import mlp_fit, nanmean, plot_band


def target_slope(c: float) -> float:
    return math.log(c / 2) / 2


def slope_tolerance(c: float, cs, rel_tol: float) -> float:
    """``rel_tol`` x |target|, floored at ``rel_tol`` x the smallest non-zero |target| of the grid ``cs``."""
    floor = min((abs(target_slope(x)) for x in cs if abs(target_slope(x)) > 0), default=1.0)
    return rel_tol * max(abs(target_slope(c)), floor)


def layer_slope(act: list, input_norm: float) -> float:
    """Least-squares slope of log(||z_l|| / ||x||) against l = 1..L (nan if any norm is not positive/finite)."""
    vals = [num(a) / num(input_norm) for a in act]
    if not vals or not all(math.isfinite(v) and v > 0 for v in vals):
        return math.nan
    # loglog_slope fits log(y) vs log(x): pass x = e^l so that log(x) = l
    return loglog_slope([math.exp(l) for l in range(1, len(vals) + 1)], vals)


def improving(row: dict, factor: float) -> bool:
    """The last epoch's mean training loss is finite and <= ``factor`` x min(first loss, ln 10)."""
    if row.get("diverged") or not row.get("epoch_loss"):
        return False
    last, first = num(row["epoch_loss"][-1]), num(row["first_loss"])
    ref = min(first, math.log(10)) if math.isfinite(first) else math.log(10)
    return math.isfinite(last) and last <= factor * ref


class InitScale(Claim):
    id = "init-scale"
    title = "Deep ReLU MLP: c=2 trains, c=1 vanishes, c=3 explodes"
    source = "Kolter & Chen, Deep Learning Systems lecture (initialization)"
    statement = "deep ReLU MLP with W ~ N(0, c/n): c=2 trains, c=1 vanishes (no progress), c=3 explodes (NaN/inf)"
    params = {
        "depth": 50,
        "width": 100,
        "cs": (1.0, 2.0, 3.0),
        "lr": 0.01,
        "momentum": 0.9,
        "batch": 100,
        "epochs": 10,
        "probe_examples": 500,
        "side_depth": 20,
        "chance": 0.1,
        "slope_rel_tol": 0.3,
        "train_factor": 2.0,
        "vanish_margin": 0.05,
        "improve": 0.9,
    }
    quick = {"epochs": 1}
    seeds = 5
    min_seeds = 5
    data = ("mnist1d",)
    protocol = (
        "MLP {depth} hidden layers x {width} on mnist1d, no norm, W ~ N(0, c/fan_in), c in {cs:g}; SGD lr {lr:g} "
        "momentum {momentum:g}, batch {batch}, {epochs} epochs; per-layer ReLU-output and gradient norms at init "
        "and after training (first {probe_examples} training examples); side finding: {side_depth} layers, c=1"
    )
    rule = (
        "seed-mean init slope of log ||z_l||/||x|| per layer within {slope_rel_tol:g} x |log(c/2)/2| of "
        "log(c/2)/2 for each c (where the target is 0: {slope_rel_tol:g} x the smallest non-zero |target|), whole "
        "interval inside; c=2 final test acc >= {train_factor:g} x chance ({chance:g}); c=1 final test acc <= "
        "chance + {vanish_margin:g}; c=3: every seed non-finite or not improving (last epoch's loss > {improve:g} "
        "x min(first loss, ln 10))"
    )

    def grid(self, p: dict, seeds: list[int], rows: list[dict]) -> list[dict]:
        if rows:
            return []
        return sweep(seeds, depth=[p["depth"]], c=p["cs"]) + sweep(seeds, depth=[p["side_depth"]], c=[1.0])

    def cell(self, p: dict, config: dict) -> dict:
        data = mnist1d()
        per_epoch = len(data.x_train) // p["batch"]
        r = mlp_fit(
            data.x_train,
            data.y_train,
            {"test": (data.x_test, data.y_test)},
            seed=config["seed"],
            depth=config["depth"],
            width=p["width"],
            c=config["c"],
            norm=None,
            lr=p["lr"],
            momentum=p["momentum"],
            batch_size=p["batch"],
            steps=p["epochs"] * per_epoch,
            eval_every=per_epoch,
            num_classes=data.num_classes,
            probe_examples=p["probe_examples"],
        )
        test = r["acc"]["test"]
        row = {
            "init_slope": layer_slope(r["init_act"], r["input_norm"]),
            "final_test_acc": test[-1],
            "test_acc": test,
            "eval_steps": r["eval_steps"],
            "epoch_loss": r["window_loss"],
            "first_loss": r["first_loss"],
            "diverged": r["diverged"],
            "steps": r["steps"],
            "input_norm": r["input_norm"],
            "init_act": r["init_act"],
            "init_grad": r["init_grad"],
            "final_act": r["final_act"],
        }
        row["improving"] = improving(row, p["improve"])
        return row

    def verdict(self, p: dict, rows: list[dict]) -> Verdict:
        main = select(rows, depth=p["depth"])
        by_c = {c: select(main, c=c) for c in p["cs"]}
        missing = [c for c, rs in by_c.items() if not rs]
        if missing:
            return Verdict("inconclusive", f"no runs for c in {missing}")
        parts, numbers = [], {}
        for c, rs in by_c.items():
            t, tol = target_slope(c), slope_tolerance(c, p["cs"], p["slope_rel_tol"])
            part = band_part(
                f"slope c={c:g}",
                per_seed(rs, "init_slope"),
                t - tol,
                t + tol,
                what=f"init slope c={c:g} (target {t:.3f})",
            )
            parts.append(part)
            numbers.update(
                {f"slope_c{c:g}": part.estimate, f"slope_c{c:g}_low": part.low, f"slope_c{c:g}_high": part.high}
            )
            numbers[f"target_slope_c{c:g}"] = t
        chance = p["chance"]
        train = interval_part(
            "c=2 trains",
            per_seed(by_c[2.0], "final_test_acc"),
            ">=",
            p["train_factor"] * chance,
            what="c=2 test acc",
            nonfinite="fails",
        )
        vanish = interval_part(
            "c=1 vanishes",
            per_seed(by_c[1.0], "final_test_acc"),
            "<=",
            chance + p["vanish_margin"],
            what="c=1 test acc",
        )
        c3 = by_c[3.0]
        exploded = [bool(r["diverged"]) or not bool(r["improving"]) for r in c3]
        n_div = sum(bool(r["diverged"]) for r in c3)
        explode = exact_part(
            "c=3 explodes",
            all(exploded),
            f"c=3 non-finite or not improving in {sum(exploded)}/{len(c3)} seeds ({n_div} non-finite)",
        )
        parts += [train, vanish, explode]
        for name, part in (("acc_c2", train), ("acc_c1", vanish)):
            numbers.update({name: part.estimate, f"{name}_low": part.low, f"{name}_high": part.high})
        numbers["c3_exploded_fraction"] = sum(exploded) / len(c3)
        numbers["c3_nonfinite_fraction"] = n_div / len(c3)
        side = select(rows, depth=p["side_depth"], c=1.0)
        note = ""
        if side:
            accs = per_seed(side, "final_test_acc")
            numbers["side_acc_c1"] = nanmean(accs)
            left = [self._leaves_chance(p, r) for r in side]
            note = (
                f"side finding ({p['side_depth']} layers, c=1, not judged): final test acc {fmt(nanmean(accs))} "
                f"(seeds {', '.join(fmt(a) for a in accs)}); leaves chance + {p['vanish_margin']:g} after epoch "
                + ", ".join("never" if e is None else str(e) for e in left)
            )
        return Verdict.combine(parts, [], numbers, note=note)

    @staticmethod
    def _leaves_chance(p: dict, row: dict) -> int | None:
        """First epoch whose test accuracy exceeds chance + vanish_margin (None if none)."""
        for epoch, a in enumerate(row["test_acc"][1:], start=1):
            if math.isfinite(num(a)) and num(a) > p["chance"] + p["vanish_margin"]:
                return epoch
        return None

    def plot(self, p: dict, rows: list[dict], fig) -> None:
        ax1, ax2, ax3 = fig.subplots(1, 3)
        main = select(rows, depth=p["depth"])
        for i, c in enumerate(p["cs"]):
            rs = select(main, c=c)
            if not rs:
                continue
            color = f"C{i}"
            layers = list(range(1, len(rs[0]["init_act"]) + 1))
            rel = [[num(a) / num(r["input_norm"]) for a in r["init_act"]] for r in rs]
            plot_band(ax1, layers, rel, f"c={c:g} init", color=color, log=True)
            fin = [[num(a) / num(r["input_norm"]) for a in r["final_act"]] for r in rs if r["final_act"]]
            fin = [f for f in fin if all(math.isfinite(v) and v > 0 for v in f)]
            if fin:
                plot_band(ax1, layers, fin, f"c={c:g} trained", color=color, ls="--", log=True)
            m0 = math.exp(mean_std([math.log(row[0]) for row in rel])[0])
            ax1.plot(layers, [m0 * math.exp(target_slope(c) * (l - 1)) for l in layers], ":", color="k", lw=0.8)
            plot_band(
                ax2, layers, [[num(g) for g in r["init_grad"]] for r in rs], f"c={c:g} init", color=color, log=True
            )
            epochs = list(range(len(rs[0]["test_acc"])))
            curves = [[num(a) for a in r["test_acc"]] for r in rs]
            plot_band(ax3, epochs, curves, f"c={c:g}", color=color, marker="o", ms=3)
        side = select(rows, depth=p["side_depth"], c=1.0)
        if side:
            epochs = list(range(len(side[0]["test_acc"])))
            curves = [[num(a) for a in r["test_acc"]] for r in side]
            plot_band(ax3, epochs, curves, f"c=1, {p['side_depth']} layers", color="C0", ls="--", marker="x", ms=3)
        ax1.set(yscale="log", xlabel="layer $l$", ylabel=r"$\|z_l\| / \|x\|$", title="ReLU outputs (dotted: theory)")
        ax1.legend(fontsize=6)
        ax2.set(yscale="log", xlabel="layer $l$", ylabel=r"$\|\partial L / \partial z_l\|$", title="gradients at init")
        ax2.legend(fontsize=6)
        chance = p["chance"]
        ax3.axhline(chance + p["vanish_margin"], color="gray", ls=":", lw=1, label="chance + margin")
        ax3.axhline(p["train_factor"] * chance, color="gray", ls="--", lw=1, label=f"{p['train_factor']:g}x chance")
        ax3.set(xlabel="epoch", ylabel="test accuracy", title=f"{p['depth']} layers (c=3: non-finite)")
        ax3.legend(fontsize=6)


CLAIM = InitScale()
