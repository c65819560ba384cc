"""depth-limit: plain nets with normalization train much deeper than without, but still hit a limit.

Source: the "Normalizations" lecture (plain nets with BN: max depth ~20-30).

Statement (CLAIMS.md): plain (non-residual) nets with normalization train much
deeper than without; without skips BN still hits a depth limit.

Protocol: :class:`normlab.models.MLP` of width 128 (Linear -> [norm] -> ReLU,
no skips), depth (hidden layers) in {2, 4, 8, 16, 32, 64}, on a fixed
1000-example subset of MNIST-1D's training set (the first 1000; test: the
first 500 test examples), every weight N(0, c / fan_in). Variants: no norm
with c = 1 (the "c != 2" net of the rule), no norm with c = 2 (He, the
reference of the protocol sketch), BatchNorm and LayerNorm (normlab's, before
each ReLU) with c = 1, the same init as the no-norm net they are compared to.
SGD momentum 0.9, batch 64, LR grid {0.01, 0.1}, a budget of 1000 steps
(64 epochs of the subset), training accuracy on the whole subset (eval mode)
every 100 steps; a run passes when it reaches >= 90% (it stops there).

A depth is trainable if, for some LR of the grid, a majority of the seeds
(2 of 3) pass. To fit the 5-minute budget on 2 CPU cores:
- seeds of one (depth, LR) stop as soon as the majority is decided (2 passes
  or 2 failures), and the LRs stop at the first that makes the depth trainable;
- depths are tried in increasing order and a variant's sweep stops at its
  first untrainable depth (deeper ones are recorded as not run and counted as
  untrainable: with the depth doubling, a plain net that cannot fit at depth d
  in the budget is assumed not to fit at 2d).
Quick: depths {2, 4}, 200 steps, one seed.

Rule (CLAIMS.md): the deepest trainable depth per variant is reported; holds
if BN and LN both reach >= 2x the deepest trainable depth of the no-norm net
with c != 2 (c = 1 here). Reported beside it: whether BN still hits a limit
within the grid (its deepest trainable depth < 64).
"""

from __future__ import annotations

import torch

from ..data import Dataset, mnist1d
from ..models import MLP, init_weights
from ..train import seed_everything, train
from ._workbench import num, one_thread, quick_verdict
from .base import Claim, Context, Verdict

WIDTH = 128
DEPTHS = (2, 4, 8, 16, 32, 64)
VARIANTS = (("none", 1.0), ("none", 2.0), ("bn", 1.0), ("ln", 1.0))
LRS = (0.01, 0.1)
MOMENTUM, BATCH, STEPS, CHUNK = 0.9, 64, 1000, 100
TARGET = 0.9
N_TRAIN, N_TEST = 1000, 500


def variant_name(norm: str, c: float) -> str:
    return f"{norm} (c={c:g})"


def _subset() -> Dataset:
    d = mnist1d()
    return Dataset(
        "mnist1d-1000", d.x_train[:N_TRAIN], d.y_train[:N_TRAIN], d.x_test[:N_TEST], d.y_test[:N_TEST], d.num_classes
    )


def _run(data: Dataset, norm: str, c: float, depth: int, lr: float, seed: int, steps: int) -> dict:
    """Train in chunks of CHUNK steps until train accuracy >= TARGET, divergence, or the budget."""
    gen = seed_everything(seed)
    model = MLP(
        data.x_train.shape[1], data.num_classes, width=WIDTH, depth=depth, norm=None if norm == "none" else norm
    )
    init_weights(model, "gaussian", c=c, generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
    curve, done, diverged, seconds = [], 0, False, 0.0
    while done < steps:
        # each chunk draws its batches from its own seeded generator: deterministic, no repeated order
        hist = train(
            model,
            data,
            opt,
            steps=min(CHUNK, steps - done),
            batch_size=BATCH,
            seed=seed * 10007 + done,
            eval_every=CHUNK,
            progress=False,
        )
        done += len(hist.loss)
        seconds += hist.seconds
        curve.append(hist.train_acc[-1])
        if hist.diverged:
            diverged = True
            break
        if hist.train_acc[-1] >= TARGET:
            break
    passed = (not diverged) and num(curve[-1]) >= TARGET
    return {"seed": seed, "passed": passed, "steps": done, "diverged": diverged, "train_acc": curve, "seconds": seconds}


def deepest(rows: list[dict], variant: str) -> int:
    """Deepest depth marked trainable for the variant (0 if none)."""
    return max([int(r["depth"]) for r in rows if r["variant"] == variant and r["trainable"]], default=0)


class DepthLimit(Claim):
    id = "depth-limit"
    title = "Plain nets: norms train deeper, BN still has a depth limit"
    source = "'Normalizations' lecture"
    statement = (
        "plain (non-residual) nets with normalization train much deeper than without; without skips BN still hits "
        "a depth limit"
    )
    protocol = (
        f"plain MLP width {WIDTH} on a 1000-example mnist1d subset, depth in {DEPTHS}; no norm c=1, no norm c=2, "
        f"BN c=1, LN c=1; SGD momentum {MOMENTUM}, batch {BATCH}, LR grid {LRS}, {STEPS} steps; early-stopped "
        "seeds/LRs/depths (see module)"
    )
    rule = (
        f"depth trainable if a majority of seeds (2 of 3) reach train acc >= {TARGET:.0%} for some LR; holds if BN "
        "and LN reach >= 2x the deepest trainable depth of no-norm with c != 2 (c=1)"
    )

    def run(self, ctx: Context) -> dict:
        data = _subset()
        depths = ctx.pick(DEPTHS[:2], DEPTHS)
        steps = ctx.pick(200, STEPS)
        need = len(ctx.seeds) // 2 + 1
        rows = []
        with one_thread():
            for norm, c in VARIANTS:
                name = variant_name(norm, c)
                stopped = False
                for depth in depths:
                    if stopped:
                        rows.append({"variant": name, "depth": depth, "trainable": False, "run": False, "lrs": []})
                        continue
                    trainable, lr_rows = False, []
                    for lr in LRS:
                        seeds = []
                        for seed in ctx.seeds:
                            seeds.append(_run(data, norm, c, depth, lr, seed, steps))
                            n_pass = sum(s["passed"] for s in seeds)
                            if n_pass >= need or len(seeds) - n_pass > len(ctx.seeds) - need:
                                break
                        ok = sum(s["passed"] for s in seeds) >= need
                        lr_rows.append({"lr": lr, "seeds": seeds, "trainable": ok})
                        ctx.log(
                            f"  {name} depth {depth} lr {lr}: {sum(s['passed'] for s in seeds)}/{len(seeds)} "
                            f"seeds pass ({sum(s['seconds'] for s in seeds):.1f}s)"
                        )
                        if ok:
                            trainable = True
                            break
                    rows.append({"variant": name, "depth": depth, "trainable": trainable, "run": True, "lrs": lr_rows})
                    stopped = not trainable
        return {
            "rows": rows,
            "variants": [variant_name(n, c) for n, c in VARIANTS],
            "depths": list(depths),
            "steps": steps,
            "target": TARGET,
            "n_seeds": len(ctx.seeds),
            "quick": ctx.quick,
        }

    def verdict(self, evidence: dict) -> Verdict:
        rows = evidence["rows"]
        if not rows:
            return Verdict("inconclusive", "no runs")
        best = {v: deepest(rows, v) for v in evidence["variants"]}
        base = best[variant_name("none", 1.0)]
        bn, ln = best[variant_name("bn", 1.0)], best[variant_name("ln", 1.0)]
        numbers = {f"deepest[{v}]": float(d) for v, d in best.items()}
        numbers["bn_over_none_c1"] = bn / base if base else float("inf")
        numbers["ln_over_none_c1"] = ln / base if base else float("inf")
        numbers["bn_hits_limit"] = float(bn < max(evidence["depths"]))
        ok = bn >= 2 * base and ln >= 2 * base
        reason = (
            f"deepest trainable depth: BN {bn}, LN {ln}, no norm c=1 {base}, no norm c=2 "
            f"{best[variant_name('none', 2.0)]} (need BN, LN >= {2 * base}); BN "
            + ("still hits a limit within the grid" if bn < max(evidence["depths"]) else "trains at every depth tried")
        )
        v = Verdict("holds" if ok else "fails", reason, numbers)
        if evidence.get("quick"):
            return quick_verdict(
                v, f"depths {evidence['depths']}, {evidence['steps']} steps, {evidence['n_seeds']} seed"
            )
        return v

    def plot(self, evidence: dict, fig) -> None:
        from matplotlib.ticker import NullFormatter

        rows = evidence["rows"]
        ax1, ax2 = fig.subplots(1, 2)
        depths = evidence["depths"]
        target = num(evidence["target"])
        for i, v in enumerate(evidence["variants"]):
            xs, means, los, his, marks = [], [], [], [], []
            for d in depths:
                row = next((r for r in rows if r["variant"] == v and int(r["depth"]) == d), None)
                if row is None or not row["run"]:
                    continue
                # the best LR (the first trainable one, else the one with the highest mean final train accuracy)
                lrs = row["lrs"]
                pick = next((lr for lr in lrs if lr["trainable"]), None) or max(
                    lrs, key=lambda lr: sum(num(s["train_acc"][-1]) for s in lr["seeds"]) / len(lr["seeds"])
                )
                finals = [num(s["train_acc"][-1]) if not s["diverged"] else 0.0 for s in pick["seeds"]]
                m = sum(finals) / len(finals)
                xs.append(d)
                means.append(m)
                los.append(m - min(finals))
                his.append(max(finals) - m)
                marks.append(row["trainable"])
            ax1.errorbar(xs, means, yerr=[los, his], marker="o", capsize=3, color=f"C{i}", label=v)
            ax1.scatter(
                [x for x, t in zip(xs, marks, strict=True) if not t],
                [m for m, t in zip(means, marks, strict=True) if not t],
                marker="x",
                s=60,
                color=f"C{i}",
            )
        ax1.axhline(target, color="k", ls="--", lw=0.8, label=f"target {target:.0%}")
        ax1.set(
            xscale="log",
            xlabel="depth (hidden layers)",
            ylabel="final train accuracy (best LR; range over seeds)",
            title="x: untrainable (sweep stops there)",
        )
        ax1.set_xticks(depths, [str(d) for d in depths])
        ax1.xaxis.set_minor_formatter(NullFormatter())
        ax1.legend(fontsize=7)
        best = [deepest(rows, v) for v in evidence["variants"]]
        ax2.bar(range(len(best)), best, color=[f"C{i}" for i in range(len(best))])
        ax2.set_xticks(range(len(best)), evidence["variants"], fontsize=8)
        ax2.set(ylabel="deepest trainable depth", title=f"majority of {evidence['n_seeds']} seeds >= {target:.0%}")


CLAIM = DepthLimit()
