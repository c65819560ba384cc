"""depth-limit: plain nets with normalization train much deeper than without, but still hit a limit.

Source: the "Normalizations" lecture (plain nets with BN: max depth ~20-30).

Protocol: :class:`normlab.models.MLP` of ``width`` (Linear -> [norm] -> ReLU,
no skips), hidden layers in ``depths``, on the first ``n_train`` examples of
MNIST-1D's training set, every weight N(0, c / fan_in). Variants: no norm
with c = 1 (the rule's baseline), no norm with c = 2 (He), BatchNorm and
LayerNorm (normlab's, before each ReLU) with c = 1. SGD with momentum, batch
``batch``, at most ``steps`` steps; training accuracy on the whole subset
(eval mode) every ``eval_every`` steps. A run passes when it reaches
``target``; it stops there (steps-to-target is reported), on a non-finite
loss, or when its best training accuracy over the last ``plateau_window``
steps is less than ``plateau_gain`` above its best before them (a plateau
below the target: a departure from CLAIMS.md made for the CPU budget, since a
failing deep run would otherwise use the whole budget at every rate).

Learning rate: tuned on the first seed, trying ``lrs`` from the largest down
and keeping the first that passes (at a depth that trains, the largest stable
rate is the fastest); if none passes, the rate with the best final training
accuracy. A deeper net starts from the rate chosen at the previous depth
(larger rates are not tried again: depth does not make a larger rate stable),
again for the CPU budget. The other seeds run at that rate; a depth is trainable if a
majority of all seeds pass. Where the first seed failed, the other seeds run
in two groups and the second is skipped once the majority is decided. Depths
are tried in increasing order and a variant stops at its first untrainable
depth (deeper ones count as untrainable: they are not run).

Rule: holds if BN and LN both reach >= ``depth_factor`` x the deepest
trainable depth of the no-norm c = 1 net (inconclusive where that product is
beyond the grid). Reported, not judged: the He net's deepest depth (BN and LN
are compared with it) and whether BN still hits a limit within the grid.
"""

from __future__ import annotations

import math
import statistics

from ..data import mnist1d
from .base import Claim, Verdict, exact_part, num
from .recipes import mlp_fit

_SUBSETS: dict = {}


def subset(n: int):
    if n not in _SUBSETS:
        d = mnist1d()
        _SUBSETS[n] = (d.x_train[:n], d.y_train[:n])
    return _SUBSETS[n]


def variant_name(norm: str, c: float) -> str:
    return f"{norm} (c={c:g})"


def majority(n_seeds: int) -> int:
    return n_seeds // 2 + 1


def _key(norm, c, depth, lr, seed) -> tuple:
    return (norm, float(c), int(depth), float(lr), int(seed))


def plan(p: dict, seeds: list[int], rows: list[dict], norm: str, c: float) -> tuple[list[dict], list[dict]]:
    """Walk a variant's depths over ``rows``: (the cells to run next, the decided depths so far).

    Each decided depth is a dict: depth, lr, passes, seeds run, trainable.
    The same walk makes the grid (its next cells) and the verdict (its
    decided depths), so the two cannot disagree.
    """
    index = {_key(r["norm"], r["c"], r["depth"], r["lr"], r["seed"]): r for r in rows}

    def _find(norm, c, depth, lr, seed) -> dict | None:
        return index.get(_key(norm, c, depth, lr, seed))

    seeds = sorted(seeds)
    s0, others = seeds[0], seeds[1:]
    need = majority(len(seeds))
    lrs = sorted(p["lrs"], reverse=True)
    decided = []
    for depth in p["depths"]:
        base = {"norm": norm, "c": c, "depth": depth}
        if decided:  # a deeper net starts from the rate that trained the shallower one
            lrs = [lr for lr in lrs if lr <= decided[-1]["lr"]]
        tuned = None
        for lr in lrs:
            r = _find(**base, lr=lr, seed=s0)
            if r is None:
                return [{**base, "lr": lr, "seed": s0}], decided
            if r["passed"]:
                tuned = lr
                break
        if tuned is None:
            s0_rows = [_find(**base, lr=lr, seed=s0) for lr in lrs]
            tuned = max(s0_rows, key=lambda r: num(r["final_train_acc"]) if finite_acc(r) else -1.0)["lr"]
        first = _find(**base, lr=tuned, seed=s0)
        groups = [others] if first["passed"] else [others[:2], others[2:]]
        results = [first]
        for group in groups:
            if not group:
                continue
            passes = sum(bool(r["passed"]) for r in results)
            fails = len(results) - passes
            if passes >= need or fails > len(seeds) - need:
                break
            got = [_find(**base, lr=tuned, seed=s) for s in group]
            missing = [s for s, r in zip(group, got, strict=True) if r is None]
            if missing:
                return [{**base, "lr": tuned, "seed": s} for s in missing], decided
            results += got
        passes = sum(bool(r["passed"]) for r in results)
        steps = [num(r["steps_to_target"]) for r in results if r["passed"]]
        decided.append(
            {
                "depth": depth,
                "lr": tuned,
                "passes": passes,
                "runs": len(results),
                "trainable": passes >= need,
                "steps_to_target": statistics.median(steps) if steps else math.nan,
                "final_train_acc": [num(r["final_train_acc"]) for r in results],
            }
        )
        if passes < need:
            break
    return [], decided


def finite_acc(r: dict) -> bool:
    return math.isfinite(num(r["final_train_acc"]))


def deepest(decided: list[dict]) -> int:
    """Deepest trainable depth (0 if none): depths are walked in order and stop at the first untrainable."""
    return max([d["depth"] for d in decided if d["trainable"]], default=0)


class DepthLimit(Claim):
    id = "depth-limit"
    title = "Plain nets: norms train deeper, BN still has a depth limit"
    source = "'Normalizations' lecture"
    statement = (
        "plain (non-residual) nets with normalization train much deeper than without; without skips BN still hits "
        "a depth limit"
    )
    params = {
        "width": 128,
        "depths": (2, 4, 8, 16, 32, 64),  # a variant walks deeper only while it trains: 64 runs only after 32 trains
        "variants": (("none", 1.0), ("none", 2.0), ("bn", 1.0), ("ln", 1.0)),
        "lrs": (0.003, 0.01, 0.03, 0.1),
        "momentum": 0.9,
        "batch": 64,
        "steps": 3000,
        "eval_every": 100,
        "n_train": 1000,
        "target": 0.9,
        "plateau_window": 500,
        "plateau_gain": 0.01,
        "depth_factor": 2,
    }
    quick = {"depths": (2, 4), "steps": 100, "lrs": (0.1,)}
    seeds = 5
    min_seeds = 5
    data = ("mnist1d",)
    protocol = (
        "plain MLP width {width} on the first {n_train} mnist1d training examples, hidden layers in {depths}; "
        "no norm c=1, no norm c=2 (He), BN c=1, LN c=1; SGD momentum {momentum:g}, batch {batch}, at most {steps} "
        "steps, train accuracy every {eval_every} steps, a run stops at {target:g} train acc, on divergence, or "
        "after {plateau_window} steps gaining < {plateau_gain:g}; lr from {lrs:g} on the first seed (largest "
        "that passes; a deeper net from the previous depth's rate down), then every seed at it; depths in "
        "order, a variant stops at its first untrainable depth"
    )
    rule = (
        "a depth is trainable if a majority of seeds reach train acc >= {target:g}; holds if BN and LN both reach "
        ">= {depth_factor} x the deepest trainable depth of no norm c=1; the He net and BN's limit are reported"
    )

    def grid(self, p: dict, seeds: list[int], rows: list[dict]) -> list[dict]:
        cells = []
        for norm, c in p["variants"]:
            cells += plan(p, seeds, rows, norm, c)[0]
        return cells

    def cell(self, p: dict, config: dict) -> dict:
        x, y = subset(p["n_train"])
        r = mlp_fit(
            x,
            y,
            {"train": (x, y)},
            seed=config["seed"],
            depth=config["depth"],
            width=p["width"],
            c=config["c"],
            norm=None if config["norm"] == "none" else config["norm"],
            lr=config["lr"],
            momentum=p["momentum"],
            batch_size=p["batch"],
            steps=p["steps"],
            eval_every=p["eval_every"],
            stop_at=("train", p["target"]),
            plateau=(p["plateau_window"], p["plateau_gain"]),
            probe_examples=0,
        )
        curve = r["acc"]["train"]
        finite = [a for a in curve if math.isfinite(a)]
        return {
            "passed": r["steps_to_target"] is not None,
            "steps_to_target": r["steps_to_target"] if r["steps_to_target"] is not None else math.nan,
            "final_train_acc": curve[-1],
            "best_train_acc": max(finite) if finite else math.nan,
            "diverged": r["diverged"],
            "plateaued": r["plateaued"],
            "steps": r["steps"],
            "train_acc": curve,
            "eval_steps": r["eval_steps"],
        }

    def _walk(self, p: dict, rows: list[dict]) -> dict[str, list[dict]]:
        seeds = sorted({r["seed"] for r in rows})
        return {variant_name(n, c): plan(p, seeds, rows, n, c)[1] for n, c in p["variants"]}

    def verdict(self, p: dict, rows: list[dict]) -> Verdict:
        if not rows:
            return Verdict("inconclusive", "no runs")
        walk = self._walk(p, rows)
        best = {v: deepest(d) for v, d in walk.items()}
        base = best[variant_name("none", 1.0)]
        he = best[variant_name("none", 2.0)]
        need = p["depth_factor"] * base
        top = max(p["depths"])
        parts = []
        for norm in ("bn", "ln"):
            d = best[variant_name(norm, 1.0)]
            if d >= need:
                ok: bool | None = True
            elif need > top and d == top:
                ok = None  # the grid cannot show the factor
            else:
                ok = False
            parts.append(
                exact_part(
                    f"{norm} depth",
                    ok,
                    f"{norm.upper()} deepest trainable depth {d} (need >= {p['depth_factor']} x {base} = {need})",
                )
            )
        numbers = {f"deepest[{v}]": float(d) for v, d in best.items()}
        for v, dec in walk.items():
            for d in dec:
                numbers[f"steps_to_target[{v}, depth {d['depth']}]"] = d["steps_to_target"]
        bn, ln = best[variant_name("bn", 1.0)], best[variant_name("ln", 1.0)]
        numbers["bn_over_none_c1"] = bn / base if base else math.inf
        numbers["ln_over_none_c1"] = ln / base if base else math.inf
        numbers["bn_minus_he_depth"] = float(bn - he)
        numbers["ln_minus_he_depth"] = float(ln - he)
        numbers["bn_hits_limit"] = float(bn < top)
        last = {
            v: (
                f"{v} stops at depth {dec[-1]['depth']} ({dec[-1]['passes']}/{dec[-1]['runs']} pass at lr "
                f"{dec[-1]['lr']:g})"
                if dec and not dec[-1]["trainable"]
                else f"{v} trains at every depth"
            )
            for v, dec in walk.items()
        }
        note = (
            f"no norm c=2 (He) reaches {he} (BN {bn - he:+d}, LN {ln - he:+d} vs He); BN "
            + ("still hits a limit within the grid" if bn < top else "trains at every depth tried")
            + "; "
            + "; ".join(last.values())
        )
        return Verdict.combine(parts, [], numbers, note=note)

    def plot(self, p: dict, rows: list[dict], fig) -> None:
        from matplotlib.ticker import NullFormatter

        ax1, ax2 = fig.subplots(1, 2)
        walk = self._walk(p, rows)
        depths = list(p["depths"])
        for i, (v, dec) in enumerate(walk.items()):
            xs = [d["depth"] for d in dec]
            finals = [[a if math.isfinite(a) else 0.0 for a in d["final_train_acc"]] for d in dec]
            means = [statistics.fmean(f) for f in finals]
            lo = [m - min(f) for m, f in zip(means, finals, strict=True)]
            hi = [max(f) - m for m, f in zip(means, finals, strict=True)]
            ax1.errorbar(xs, means, yerr=[lo, hi], marker="o", capsize=3, color=f"C{i}", label=v)
            bad = [(d["depth"], m) for d, m in zip(dec, means, strict=True) if not d["trainable"]]
            if bad:
                ax1.scatter(*zip(*bad, strict=True), marker="x", s=70, color=f"C{i}")
            steps = [(d["depth"], d["steps_to_target"]) for d in dec if math.isfinite(d["steps_to_target"])]
            if steps:
                ax2.plot(*zip(*steps, strict=True), marker="o", color=f"C{i}", label=v)
        ax1.axhline(p["target"], color="k", ls="--", lw=0.8, label=f"target {p['target']:g}")
        ax1.set(
            xscale="log",
            xlabel="depth (hidden layers)",
            ylabel="final train accuracy (range over seeds)",
            title="x: untrainable (deeper depths not run)",
        )
        ax2.set(
            xscale="log",
            xlabel="depth (hidden layers)",
            ylabel=f"median steps to train acc {p['target']:g}",
            title="at the tuned lr (passing seeds)",
        )
        for ax in (ax1, ax2):
            ax.set_xticks(depths, [str(d) for d in depths])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.legend(fontsize=7)


CLAIM = DepthLimit()
