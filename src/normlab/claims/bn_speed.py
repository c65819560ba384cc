"""bn-speed: BatchNorm reaches the baseline's best accuracy in far fewer steps and trains at 5x and 30x the LR.

Source: Ioffe & Szegedy 2015 (the Inception table: BN-Baseline reaches the
Inception baseline's 72.2% in 13.3x fewer steps, BN-x5 with a 5x LR faster
still, and BN-x30 still trains).

Protocol (CPU-sized): the 3-layer 1-D CNN of :class:`normlab.models.CNN`
(ReLU, global average pool) on MNIST-1D, He initialization, SGD with
momentum; the training set split into ``train`` examples for training and
the rest for validation; test accuracy every ``eval_every`` steps.

1. Baseline LR tuned on the validation split: the baseline (no norm) at every
   LR of ``lr_grid`` with the first seed, ``steps`` steps; ``lr*`` = the LR
   with the highest smoothed validation accuracy.
2. Every seed: the baseline at ``lr*`` (the tuning run is reused for the first
   seed) and at 5 ``lr*``, ``steps`` steps each.
3. Every seed: BN (BatchNorm after every conv, before the ReLU) at ``lr*``,
   5 ``lr*`` and 30 ``lr*``, stopped once it reaches that seed's target;
   BN at 30x runs at most ``bn30_steps`` (reported, not judged).

Curves are smoothed by a trailing mean over ``smooth`` evaluations; a run that
diverges (non-finite loss) counts at chance from then on. A seed's target is
its baseline's best smoothed test accuracy minus ``reach_tol``, and a run's
steps-to-target is the first evaluation where its smoothed curve reaches it.

Departures from the first version (CLAIMS.md "changes to the contract"): the
first version compared seed-mean curves on a 50-step grid with a budget at
which the baseline still rose (its best at step 1400 of 1500), so the verdict
(0.50x, exactly at the limit) was decided by the grid and by which seeds were
drawn. Now the budget leaves the baseline a plateau (its smoothed best is
reported with the budget), accuracy is measured every ``eval_every`` steps,
the LR is tuned on a validation split, and the step ratio is per seed, against
that seed's own baseline: a plateau's first crossing within ``reach_tol`` of
its best is well defined, its argmax is not. The ratio's bootstrap interval
over seeds must clear ``speedup``. If BN at 1x never reaches the target, the
seed's ratio is the budget over the baseline's steps (a lower bound).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data import mnist1d
from ..models import CNN, init_weights
from ..train import evaluate, seed_everything
from .base import Claim, Verdict, exact_part, fmt, interval_part, select
from .recipes import CHANCE, num

_DATA = {}


def _data():
    if "mnist1d" not in _DATA:
        _DATA["mnist1d"] = mnist1d(channel_dim=True)
    return _DATA["mnist1d"]


def smoothed(curve, k: int) -> list[float]:
    """Trailing mean over the last ``k`` values (fewer at the start); non-finite values count as chance."""
    vals = [num(a) if math.isfinite(num(a)) else CHANCE for a in curve]
    return [sum(vals[max(0, i - k + 1) : i + 1]) / len(vals[max(0, i - k + 1) : i + 1]) for i in range(len(vals))]


def first_reach(steps, curve, level: float):
    """First step whose value is >= ``level`` (None if never)."""
    for s, a in zip(steps, curve, strict=False):
        if a >= level - 1e-12:
            return s
    return None


def tuned_lr(p: dict, rows: list[dict], first_seed: int):
    """``lr*``: the grid LR whose first-seed baseline has the best smoothed validation accuracy (None: missing)."""
    best, best_lr = -1.0, None
    for lr in p["lr_grid"]:
        rs = select(rows, net="baseline", mult=1, lr=lr, seed=first_seed)
        if not rs:
            return None
        val = smoothed(rs[0]["val_acc"], p["smooth"])
        score = max(val) if val else -1.0
        if score > best:
            best, best_lr = score, lr
    return best_lr


def target(p: dict, base_row: dict) -> float:
    """A seed's target: its baseline's best smoothed test accuracy minus ``reach_tol``."""
    return max(smoothed(base_row["test_acc"], p["smooth"])) - p["reach_tol"]


class BnSpeed(Claim):
    id = "bn-speed"
    title = "BN trains faster and at higher LRs"
    source = "Ioffe & Szegedy 2015 (Inception table)"
    statement = (
        "BN reaches the baseline's best accuracy in far fewer steps, and still trains at 5x and 30x the learning rate"
    )
    params = {
        "channels": (32, 32, 64),
        "momentum": 0.9,
        "batch": 64,
        "train": 3500,
        "steps": 2500,
        "eval_every": 10,
        "lr_grid": (0.03, 0.1, 0.3),
        "bn_mults": (1, 5, 30),
        "bn30_steps": 500,
        "smooth": 5,
        "reach_tol": 0.005,
        "speedup": 0.5,
        "worse_margin": 0.01,
    }
    quick = {"steps": 40, "lr_grid": (0.1,), "bn30_steps": 20}
    seeds = 5
    min_seeds = 5
    data = ("mnist1d",)
    protocol = (
        "1-D CNN (channels {channels}) on mnist1d ({train} train, the rest of the training set for validation), "
        "SGD momentum "
        "{momentum:g}, batch {batch}, {steps} steps, test accuracy every {eval_every} steps (trailing mean of "
        "{smooth}); baseline LR lr* tuned on {lr_grid:g} (validation, first seed); per seed: baseline at lr*, 5 lr*; "
        "BN at {bn_mults} x lr* until it reaches the seed's target (30x: at most {bn30_steps} steps); target = the "
        "seed's best smoothed baseline accuracy - {reach_tol:g}"
    )
    rule = (
        "per seed, BN-1x steps-to-target / baseline steps-to-target <= {speedup:g} (interval over seeds); BN 5x "
        "reaches the target in every seed; baseline best - baseline-5x best >= {worse_margin:g} (interval over "
        "seeds; a diverged run counts at chance from then on); BN 30x reported"
    )

    def grid(self, p: dict, seeds: list[int], rows: list[dict]) -> list[dict]:
        first = seeds[0]
        cells = [{"net": "baseline", "mult": 1, "lr": lr, "seed": first} for lr in p["lr_grid"]]
        lr = tuned_lr(p, rows, first)
        if lr is None:
            return cells
        for s in seeds:
            cells += [{"net": "baseline", "mult": m, "lr": m * lr, "seed": s} for m in (1, 5)]
            base = select(rows, net="baseline", mult=1, lr=lr, seed=s)
            if base:
                level = round(target(p, base[0]), 6)
                for m in p["bn_mults"]:
                    cap = p["bn30_steps"] if m == 30 else p["steps"]
                    cells.append({"net": "bn", "mult": m, "lr": m * lr, "seed": s, "stop_at": level, "max_steps": cap})
        return cells

    def cell(self, p: dict, config: dict) -> dict:
        data = _data()
        n = p["train"]
        x_tr, y_tr = data.x_train[:n], data.y_train[:n]
        x_val, y_val = data.x_train[n:], data.y_train[n:]
        seed, net = config["seed"], config["net"]
        gen = seed_everything(seed)
        model = CNN(1, 10, channels=tuple(p["channels"]), spatial=1, norm="bn" if net == "bn" else None)
        init_weights(model, generator=torch.Generator().manual_seed(seed))
        opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=p["momentum"])
        total = config.get("max_steps", p["steps"])
        stop_at = config.get("stop_at")
        with_val = net == "baseline" and config["mult"] == 1
        eval_steps, test_acc, val_acc, recent = [], [], [], []
        diverged, bs = False, p["batch"]
        order, pos = torch.randperm(n, generator=gen), 0
        model.train()
        for step in range(1, total + 1):
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos : pos + bs]
            pos += bs
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not math.isfinite(float(loss.detach())):
                diverged = True
                break
            if step % p["eval_every"] == 0:
                acc = evaluate(model, data.x_test, data.y_test)[0]
                eval_steps.append(step)
                test_acc.append(acc)
                if with_val:
                    val_acc.append(evaluate(model, x_val, y_val)[0])
                recent = (recent + [acc])[-p["smooth"] :]
                if stop_at is not None and sum(recent) / len(recent) >= stop_at - 1e-12:
                    break
        return {"eval_steps": eval_steps, "test_acc": test_acc, "val_acc": val_acc, "diverged": diverged}

    def _per_seed(self, p: dict, rows: list[dict]) -> tuple[float | None, list[dict]]:
        seeds = sorted({r["seed"] for r in rows})
        lr = tuned_lr(p, rows, seeds[0]) if seeds else None
        out = []
        if lr is None:
            return None, out
        grid = list(range(p["eval_every"], p["steps"] + 1, p["eval_every"]))
        for s in seeds:
            base = select(rows, net="baseline", mult=1, lr=lr, seed=s)
            base5 = select(rows, net="baseline", mult=5, lr=5 * lr, seed=s)
            bns = {m: select(rows, net="bn", mult=m, lr=m * lr, seed=s) for m in p["bn_mults"]}
            if not (base and base5 and all(bns.values()) and base[0]["test_acc"]):
                continue
            b_curve = smoothed(base[0]["test_acc"], p["smooth"])
            level = round(target(p, base[0]), 6)
            steps_base = first_reach(base[0]["eval_steps"], b_curve, level)
            reach = {}
            best = {}
            for m, rs in bns.items():
                curve = smoothed(rs[0]["test_acc"], p["smooth"])
                reach[m] = first_reach(rs[0]["eval_steps"], curve, level)
                best[m] = max(curve) if curve else CHANCE
            c5 = smoothed(base5[0]["test_acc"], p["smooth"])
            c5 = c5 + [CHANCE] * (len(grid) - len(c5))  # a diverged run counts at chance from then on
            r1 = reach[1] if reach[1] is not None else p["steps"]  # never reached: a lower bound
            out.append(
                {
                    "seed": s,
                    "target": level,
                    "steps_base": steps_base,
                    "best_step_base": base[0]["eval_steps"][b_curve.index(max(b_curve))],
                    "reach": reach,
                    "ratio": r1 / steps_base,
                    "gap_5x": max(b_curve) - max(c5),
                    "diverged_5x": bool(base5[0]["diverged"]),
                    "best_bn30": best[30] if 30 in best else math.nan,
                    "reach_bn5": reach.get(5),
                }
            )
        return lr, out

    def verdict(self, p: dict, rows: list[dict]) -> Verdict:
        lr, seeds = self._per_seed(p, rows)
        if lr is None or not seeds:
            return Verdict("inconclusive", "the tuning or the per-seed runs are missing")
        speed = interval_part(
            "step_ratio_bn_1x", [d["ratio"] for d in seeds], "<=", p["speedup"], what="BN-1x / baseline steps"
        )
        n5 = sum(d["reach_bn5"] is not None for d in seeds)
        bn5 = exact_part(
            "bn_5x_reaches",
            True if n5 == len(seeds) else (False if n5 < len(seeds) / 2 else None),
            f"BN 5x reaches the target in {n5}/{len(seeds)} seeds",
        )
        worse = interval_part(
            "baseline_5x_gap", [d["gap_5x"] for d in seeds], ">=", p["worse_margin"], what="baseline - baseline-5x best"
        )
        numbers = {"tuned_lr": float(lr)}
        for part in (speed, worse):
            numbers[part.name] = part.estimate
            numbers[part.name + "_low"] = part.low
            numbers[part.name + "_high"] = part.high
        numbers["bn_5x_reached_frac"] = n5 / len(seeds)
        numbers["baseline_5x_diverged_frac"] = sum(d["diverged_5x"] for d in seeds) / len(seeds)
        numbers["bn_30x_best"] = sum(num(d["best_bn30"]) for d in seeds) / len(seeds)
        numbers["target_mean"] = sum(d["target"] for d in seeds) / len(seeds)
        ratios = ", ".join(f"{d['ratio']:.2f}" for d in seeds)
        note = (
            f"lr* {lr:g}; per-seed ratios {ratios}; baseline steps-to-target "
            f"{', '.join(str(d['steps_base']) for d in seeds)}, smoothed best at "
            f"{', '.join(str(d['best_step_base']) for d in seeds)} of {p['steps']}; baseline 5x diverged in "
            f"{sum(d['diverged_5x'] for d in seeds)}/{len(seeds)}; BN 30x best smoothed accuracy in {p['bn30_steps']} "
            f"steps {fmt(numbers['bn_30x_best'])} (mean target {fmt(numbers['target_mean'])}; reported)"
        )
        return Verdict.combine([speed, bn5, worse], numbers=numbers, note=note)

    def plot(self, p: dict, rows: list[dict], fig) -> None:
        ax1, ax2 = fig.subplots(1, 2, width_ratios=(2, 1))
        lr, seeds = self._per_seed(p, rows)
        if lr is None:
            lr = p["lr_grid"][0]
        styles = {("baseline", 1): ("k", "-"), ("baseline", 5): ("k", ":")}
        styles.update({("bn", m): (f"C{i}", "-") for i, m in enumerate(p["bn_mults"])})
        for (net, m), (color, ls) in styles.items():
            rs = select(rows, net=net, mult=m, lr=m * lr)
            for j, r in enumerate(rs):
                label = f"{'BN' if net == 'bn' else 'baseline'} lr {m * lr:g}" if j == 0 else None
                curve = smoothed(r["test_acc"], p["smooth"])
                ax1.plot(r["eval_steps"], curve, color=color, ls=ls, lw=0.8, alpha=0.8, label=label, marker=".", ms=2)
        for d in seeds:
            ax1.axhline(d["target"], color="gray", lw=0.5, ls="--")
        ax1.set(xlabel="step", ylabel=f"test accuracy (trailing mean of {p['smooth']} evals)")
        ax1.set_ylim(0.0, 1.0)
        ax1.legend(fontsize=7)
        ratios = [d["ratio"] for d in seeds]
        ax2.scatter(range(len(ratios)), ratios, color="C0", s=18, zorder=3, label="per seed")
        if ratios:
            ax2.axhline(sum(ratios) / len(ratios), color="C0", lw=1, label="mean")
        ax2.axhline(p["speedup"], color="k", ls="--", lw=1, label="rule limit")
        ax2.set_xticks(range(len(seeds)), [str(d["seed"]) for d in seeds])
        ax2.set(xlabel="seed", ylabel="BN-1x / baseline steps to target")
        ax2.set_ylim(0, max([1.0] + ratios) * 1.1)
        ax2.legend(fontsize=7)


CLAIM = BnSpeed()
