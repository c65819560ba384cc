"""where-to-normalize: normalizing before or after the activation both train.

Source: the "Normalizations" lecture (Ioffe & Szegedy put BN before the
nonlinearity; many later nets put it after; both work).

Protocol: the 3-stage 1-D CNN of :class:`normlab.models.CNN` (``channels``,
kernel 3, stride 2 from the second stage, global average pool, linear head;
He init) on MNIST-1D, with normlab BatchNorm1d or LayerNorm (over (C, L),
i.e. GroupNorm(1, C), as :func:`normlab.models.build_norm` builds it after a
convolution) either before the ReLU (conv -> norm -> ReLU) or after it
(conv -> ReLU -> norm). SGD with momentum, batch ``batch``, ``steps`` steps
with the LR decayed from ``lr`` to 0 by a cosine (so the final accuracy is
read at the end of a decay, not from a noisy point of a constant-LR run);
accuracy every ``eval_every`` steps; the verdict reads the final test
accuracy (eval mode).

Departures from the first version: seed count, per-seed paired gaps with a
bootstrap interval (the first version compared two seed means with no
interval), and a shorter budget with the cosine decay (the first version ran
a constant LR for longer; the full run's time budget).

Rule: per norm, the per-seed gap (before - after) has its mean's interval
inside +-``gap``; a norm whose two placements both stay below ``trains``
times chance says nothing about training: that part is inconclusive.
"""

from __future__ import annotations

import math

import torch

from ..data import mnist1d
from ..models import CNN, init_weights
from ..train import seed_everything, train
from .base import Claim, Verdict, band_part, exact_part, fmt, paired, select, sweep
from .recipes import CHANCE, nanmean, num, plot_band

_DATA: dict = {}


def _data():
    if "mnist1d" not in _DATA:
        _DATA["mnist1d"] = mnist1d(channel_dim=True)
    return _DATA["mnist1d"]


def cosine(base: float, step: int, total: int) -> float:
    """``base * (1 + cos(pi step / total)) / 2`` (``step`` steps done of ``total``)."""
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


class WhereToNormalize(Claim):
    id = "where-to-normalize"
    title = "Norm before or after the ReLU: both train"
    source = "'Normalizations' lecture"
    statement = "normalizing before or after the activation both train"
    params = {
        "channels": (32, 32, 64),
        "norms": ("bn", "ln"),
        "placements": ("before", "after"),
        "lr": 0.05,
        "momentum": 0.9,
        "batch": 64,
        "steps": 800,
        "eval_every": 200,
        "gap": 0.03,
        "trains": 2.0,
    }
    quick = {"steps": 20, "eval_every": 20}
    seeds = 5
    min_seeds = 5
    data = ("mnist1d",)
    protocol = (
        "1-D CNN (channels {channels}) on mnist1d, norm in {norms}, placed {placements} each ReLU; SGD momentum "
        "{momentum:g}, batch {batch}, {steps} steps, lr {lr:g} with cosine decay to 0; final test accuracy (eval mode)"
    )
    rule = (
        "per norm, mean per-seed accuracy gap (before - after) inside +-{gap:g} (interval over seeds); "
        "inconclusive for a norm whose placements both stay below {trains:g}x chance"
    )

    def grid(self, p: dict, seeds: list[int], rows: list[dict]) -> list[dict]:
        return [] if rows else sweep(seeds, norm=p["norms"], placement=p["placements"])

    def cell(self, p: dict, config: dict) -> dict:
        data = _data()
        seed = config["seed"]
        gen = seed_everything(seed)
        model = CNN(
            1,
            data.num_classes,
            channels=tuple(p["channels"]),
            spatial=1,
            norm=config["norm"],
            placement=config["placement"],
        )
        init_weights(model, generator=gen)
        opt = torch.optim.SGD(model.parameters(), lr=p["lr"], momentum=p["momentum"])

        def schedule(step, model, info):  # after step `step`: the LR of the next one
            for g in opt.param_groups:
                g["lr"] = cosine(p["lr"], step, p["steps"])

        hist = train(
            model,
            data,
            opt,
            steps=p["steps"],
            batch_size=p["batch"],
            seed=seed,
            eval_every=p["eval_every"],
            callbacks=(schedule,),
            progress=False,
        )
        return {
            "eval_steps": hist.eval_steps,
            "test_acc": hist.test_acc,
            "train_acc": hist.train_acc,
            "final_test_acc": hist.final_test_acc if not hist.diverged else math.nan,
            "diverged": hist.diverged,
        }

    def verdict(self, p: dict, rows: list[dict]) -> Verdict:
        before, after = p["placements"]
        parts, numbers, pieces = [], {}, []
        for n in p["norms"]:
            b, a = select(rows, norm=n, placement=before), select(rows, norm=n, placement=after)
            if not (a and b):
                return Verdict("inconclusive", f"no runs for {n} {before} or {after} the activation")
            gap = band_part(
                f"{n} gap",
                paired(b, a, "final_test_acc"),
                -p["gap"],
                p["gap"],
                what=f"{n}: accuracy {before} - {after}",
            )
            acc_b, acc_a = nanmean([r["final_test_acc"] for r in b]), nanmean([r["final_test_acc"] for r in a])
            trains = max(acc_b, acc_a) > p["trains"] * CHANCE
            parts.append(gap)
            if not trains:
                parts.append(
                    exact_part(
                        f"{n} trains",
                        None,
                        f"{n}: neither placement reaches {p['trains']:g}x chance ({fmt(acc_b)}, {fmt(acc_a)})",
                    )
                )
            numbers.update(
                {
                    f"gap[{n}]": gap.estimate,
                    f"gap_low[{n}]": gap.low,
                    f"gap_high[{n}]": gap.high,
                    f"test_acc[{n}, {before}]": acc_b,
                    f"test_acc[{n}, {after}]": acc_a,
                }
            )
            pieces.append(f"{n} {before} {fmt(acc_b)}, {after} {fmt(acc_a)}")
        return Verdict.combine(parts, [], numbers, note="seed-mean test accuracy: " + "; ".join(pieces))

    def plot(self, p: dict, rows: list[dict], fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        for i, n in enumerate(p["norms"]):
            for pl, ls, mk in zip(p["placements"], ("-", "--"), ("o", "s"), strict=True):
                rs = select(rows, norm=n, placement=pl)
                if not rs:
                    continue
                steps = rs[0]["eval_steps"]
                for ax, key in ((ax1, "test_acc"), (ax2, "train_acc")):
                    plot_band(
                        ax,
                        steps,
                        [[num(a) for a in r[key]] for r in rs],
                        f"{n} {pl} ReLU",
                        color=f"C{i}",
                        ls=ls,
                        marker=mk if len(steps) <= 10 else None,
                    )
        ax1.set(xlabel="step", ylabel="test accuracy", title="test accuracy (mean +- std over seeds)")
        ax2.set(xlabel="step", ylabel="train accuracy", title="train accuracy")
        ax1.legend(fontsize=7)
        for ax in (ax1, ax2):
            ax.axhline(CHANCE, color="gray", lw=0.8, ls=":")


CLAIM = WhereToNormalize()
