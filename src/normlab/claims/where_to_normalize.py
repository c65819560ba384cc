"""where-to-normalize: normalizing before or after the activation both train.

Source: the "Normalizations" lecture (Ioffe & Szegedy put BN before the
nonlinearity; many later nets put it after; both work).

Statement (CLAIMS.md): normalizing before or after the activation both train.

Protocol: the 3-stage 1-D CNN of :class:`normlab.models.CNN` (channels
32-32-64, kernel 3, stride 2 from the second stage, global average pool,
linear head; He init) on MNIST-1D, with normlab BatchNorm1d or LayerNorm
(over (C, L), i.e. GroupNorm(1, C), as :func:`normlab.models.build_norm` builds
it after a convolution) either before the ReLU (conv -> norm -> ReLU) or after
it (conv -> ReLU -> norm). SGD lr 0.03 momentum 0.9, batch 64, 1500 steps
(24 epochs), test accuracy every 100 steps (quick: 100 steps, one seed).

Rule (CLAIMS.md): for each norm the seed-mean final test accuracies of the two
placements are within 3 points of each other. Refinement: if neither
placement of a norm reaches 2x chance (0.2) the comparison says nothing about
training and the verdict is ``inconclusive``.
"""

from __future__ import annotations

import math

import torch

from ..data import mnist1d
from ..models import CNN, init_weights
from ..train import seed_everything, train
from ._workbench import CHANCE, num, one_thread, plot_band, quick_verdict
from .base import Claim, Context, Verdict, mean_std

NORMS = ("bn", "ln")
PLACEMENTS = ("before", "after")
CHANNELS = (32, 32, 64)
LR, MOMENTUM, BATCH, STEPS, EVAL_EVERY = 0.03, 0.9, 64, 1500, 100
GAP = 0.03


def _run(data, norm: str, placement: str, seed: int, steps: int) -> dict:
    gen = seed_everything(seed)
    model = CNN(1, data.num_classes, channels=CHANNELS, spatial=1, norm=norm, placement=placement)
    init_weights(model, generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    hist = train(model, data, opt, steps=steps, batch_size=BATCH, seed=seed, eval_every=EVAL_EVERY, progress=False)
    return {
        "norm": norm,
        "placement": placement,
        "seed": seed,
        "eval_steps": hist.eval_steps,
        "test_acc": hist.test_acc,
        "train_acc": hist.train_acc,
        "final_test_acc": hist.final_test_acc,
        "diverged": hist.diverged,
        "seconds": hist.seconds,
    }


class WhereToNormalize(Claim):
    id = "where-to-normalize"
    title = "Norm before or after the ReLU: both train"
    source = "'Normalizations' lecture"
    statement = "normalizing before or after the activation both train"
    protocol = (
        f"1-D CNN {'-'.join(map(str, CHANNELS))} on mnist1d with BN or LN before vs after each ReLU; SGD lr {LR} "
        f"momentum {MOMENTUM}, batch {BATCH}, {STEPS} steps"
    )
    rule = (
        f"per norm, seed-mean final test accuracies of the two placements within {GAP * 100:g} points "
        "(inconclusive if neither reaches 2x chance)"
    )

    def run(self, ctx: Context) -> dict:
        data = mnist1d(channel_dim=True)
        steps = ctx.pick(100, STEPS)
        runs = []
        with one_thread():
            for norm in NORMS:
                for placement in PLACEMENTS:
                    for seed in ctx.seeds:
                        r = _run(data, norm, placement, seed, steps)
                        ctx.log(
                            f"  {norm} {placement} seed={seed}: test acc {r['final_test_acc']:.3f} "
                            f"({r['seconds']:.1f}s)"
                        )
                        runs.append(r)
        return {"runs": runs, "norms": list(NORMS), "steps": steps, "chance": CHANCE, "quick": ctx.quick}

    def verdict(self, evidence: dict) -> Verdict:
        runs = evidence["runs"]
        chance = num(evidence["chance"])
        numbers, notes, bad, dead = {}, [], [], []
        for n in evidence["norms"]:
            accs = {}
            for p in PLACEMENTS:
                vals = [num(r["final_test_acc"]) for r in runs if r["norm"] == n and r["placement"] == p]
                if not vals:
                    return Verdict("inconclusive", f"no runs for {n} {p} the activation")
                m, sd = mean_std(vals)
                accs[p] = m if all(math.isfinite(v) for v in vals) else math.nan  # a diverged seed: nan
                numbers[f"test_acc[{n}, {p}]"] = accs[p]
                numbers[f"test_acc_std[{n}, {p}]"] = sd
            gap = abs(accs["before"] - accs["after"])
            numbers[f"gap[{n}]"] = gap
            notes.append(f"{n}: before {accs['before']:.3f}, after {accs['after']:.3f} (gap {gap * 100:.1f} pts)")
            if not any(a >= 2 * chance for a in accs.values()):
                dead.append(n)
            if not (gap <= GAP):  # a nan gap (a diverged run) fails too
                bad.append(n)
        numbers["max_gap"] = max(numbers[f"gap[{n}]"] for n in evidence["norms"])
        reason = "; ".join(notes) + f" (limit {GAP * 100:g} pts)"
        if bad:
            v = Verdict("fails", reason, numbers)
        elif dead:
            v = Verdict("inconclusive", reason + f"; neither placement of {', '.join(dead)} reaches 2x chance", numbers)
        else:
            v = Verdict("holds", reason, numbers)
        if evidence.get("quick"):
            return quick_verdict(v, f"{evidence['steps']} steps, {len({r['seed'] for r in runs})} seed")
        return v

    def plot(self, evidence: dict, fig) -> None:
        runs = evidence["runs"]
        ax1, ax2 = fig.subplots(1, 2)
        for i, n in enumerate(evidence["norms"]):
            for p, ls in zip(PLACEMENTS, ("-", "--"), strict=True):
                rs = [r for r in runs if r["norm"] == n and r["placement"] == p]
                if not rs:
                    continue
                steps = rs[0]["eval_steps"]
                plot_band(
                    ax1, steps, [[num(a) for a in r["test_acc"]] for r in rs], f"{n} {p} ReLU", color=f"C{i}", ls=ls
                )
                plot_band(
                    ax2, steps, [[num(a) for a in r["train_acc"]] for r in rs], f"{n} {p} ReLU", color=f"C{i}", ls=ls
                )
        ax1.set(xlabel="step", ylabel="test accuracy", title="test accuracy (mean +- std over seeds)")
        ax2.set(xlabel="step", ylabel="train accuracy", title="train accuracy")
        ax1.legend(fontsize=7)
        for ax in (ax1, ax2):
            ax.axhline(num(evidence["chance"]), color="gray", lw=0.8, ls=":")


CLAIM = WhereToNormalize()
