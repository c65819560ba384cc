"""large-batch-lars: layer-wise adaptive rates keep accuracy at large batch where SGD loses it.

Sources: You, Gitman & Ginsburg 2017, "Large Batch Training of Convolutional
Networks" (LARS; arXiv:1708.03888): AlexNet-BN and ResNet-50 keep their
small-batch accuracy at batch 8K-32K with LARS, same epochs, where SGD with
the linear scaling rule and warm-up loses it; You et al. 2020, "Large Batch
Optimization for Deep Learning: Training BERT in 76 minutes" (LAMB; ICLR,
arXiv:1904.00962): the same for LAMB.

Protocol (CPU-sized): the 3-stage 1-D CNN of :class:`normlab.models.CNN`
(``channels``, BatchNorm before each ReLU, He init) on MNIST-1D; the first
``train`` training examples for training, the rest for validation; every
arm trains ``epochs`` epochs (the last partial batch of an epoch dropped, so
batch 1024 takes ``train // 1024`` steps an epoch, 32x fewer than batch 32).
Arms: SGD (momentum ``momentum``, weight decay ``sgd_wd``) at batch ``small``
and ``large``; LARS (trust coefficient 0.001, momentum ``momentum``, weight
decay ``sgd_wd``) and LAMB (betas (0.9, 0.999), weight decay ``lamb_wd``) at
batch ``large``. Every arm uses the papers' schedule: linear warm-up over the
first ``warmup`` of the steps, then polynomial decay of power 2 to zero; and
the same param groups, built by :func:`normlab.optim.exclude_from_adaptation`
(biases and BN parameters: no weight decay, no trust ratio), so the arms
differ only in the update rule and the batch.

Learning rates: each arm's LR is tuned on its own grid (``*_lrs``, factors
of 2 spanning its stable range) by validation accuracy at the end of
training, with the first seed; every seed then runs each arm at its tuned LR
(the first seed's tuning run is reused). A tuned LR at a grid edge is
reported.

Rule (fixed before the run; accuracies in points on the 1000 test
examples, at the end of training): per seed, gap(X) = acc(SGD, ``small``) -
acc(X, ``large``). Holds if the 95% bootstrap intervals of the mean gaps of
LARS and of LAMB lie at or below ``within`` and the interval of SGD's gap
lies above 0; fails if any of the three lies wholly on the wrong side.

Departures: a 5 M-parameter AlexNet or ResNet-50 on ImageNet at batch 8K+
is out of reach of a CPU, so the large batch is 1024 of 3500 training
examples (29% of the data a step, 3 steps an epoch: a harder regime than
ImageNet's 0.6%, in steps an epoch); one net (the CNN, BN as in the papers'
nets), not an MLP as well; LR grids replace the papers' hand-tuned LRs.
"""

from __future__ import annotations

import math
import statistics

import torch
import torch.nn.functional as F

from ..data import mnist1d
from ..models import CNN, init_weights
from ..optim import LAMB, LARS, exclude_from_adaptation
from ..train import evaluate, seed_everything
from .base import Claim, Verdict, fmt, interval_part, paired, select
from .recipes import CHANCE, plot_band

# (arm, optimizer, batch key in params, LR grid key in params)
ARMS = (
    ("sgd-small", "sgd", "small", "sgd_small_lrs"),
    ("sgd-large", "sgd", "large", "sgd_large_lrs"),
    ("lars-large", "lars", "large", "lars_lrs"),
    ("lamb-large", "lamb", "large", "lamb_lrs"),
)
_DATA: dict = {}


def _data():
    if "mnist1d" not in _DATA:
        _DATA["mnist1d"] = mnist1d(channel_dim=True)
    return _DATA["mnist1d"]


def warmup_poly(total: int, warmup: int):
    """LR multiplier at step ``t`` (0-based): linear warm-up over ``warmup`` steps, then (1 - progress)^2."""

    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        return (1.0 - (t - warmup) / max(1, total - warmup)) ** 2

    return factor


def make_optimizer(name: str, model: torch.nn.Module, lr: float, p: dict) -> torch.optim.Optimizer:
    groups = exclude_from_adaptation(model)
    if name == "sgd":
        for g in groups:
            g.pop("trust_adaptation", None)
        return torch.optim.SGD(groups, lr=lr, momentum=p["momentum"], weight_decay=p["sgd_wd"])
    if name == "lars":
        return LARS(groups, lr=lr, momentum=p["momentum"], weight_decay=p["sgd_wd"])
    if name == "lamb":
        return LAMB(groups, lr=lr, weight_decay=p["lamb_wd"])
    raise ValueError(f"unknown optimizer {name!r}")


def tuned_lrs(p: dict, rows: list[dict], first_seed: int) -> dict[str, float] | None:
    """Arm -> the grid LR with the best final validation accuracy on the first seed (None: tuning incomplete)."""
    out = {}
    for arm, _, _, grid_key in ARMS:
        scores = []
        for lr in p[grid_key]:
            rs = select(rows, arm=arm, lr=lr, seed=first_seed)
            if not rs:
                return None
            scores.append((rs[0]["val_acc"], lr))
        # ties go to the smaller LR (the first in the grid)
        out[arm] = max(scores, key=lambda s: s[0])[1]
    return out


class LargeBatchLars(Claim):
    id = "large-batch-lars"
    title = "LARS and LAMB keep accuracy at large batch"
    source = "You et al. 2017 (LARS), 2020 (LAMB)"
    statement = "layer-wise adaptive rates keep accuracy at large batch where SGD loses it"
    params = {
        "channels": (32, 32, 64),
        "train": 3500,
        "epochs": 40,
        "small": 32,
        "large": 1024,
        "momentum": 0.9,
        "sgd_wd": 5e-4,
        "lamb_wd": 0.01,
        "warmup": 0.1,
        "sgd_small_lrs": (0.05, 0.1, 0.2, 0.4, 0.8),
        "sgd_large_lrs": (0.5, 1.0, 2.0, 4.0, 8.0),
        "lars_lrs": (2.5, 5.0, 10.0, 20.0, 40.0),
        "lamb_lrs": (0.025, 0.05, 0.1, 0.2, 0.4),
        "within": 3.0,
    }
    quick = {
        "channels": (8, 8, 16),
        "epochs": 2,
        "large": 256,
        "sgd_small_lrs": (0.1,),
        "sgd_large_lrs": (1.0,),
        "lars_lrs": (10.0,),
        "lamb_lrs": (0.1,),
    }
    seeds = 10
    min_seeds = 5
    data = ("mnist1d",)
    protocol = (
        "1-D CNN {channels} with BN on mnist1d ({train} train, the rest for validation), {epochs} epochs for every "
        "arm: SGD (momentum {momentum:g}, wd {sgd_wd:g}) at batch {small} and {large}, LARS (momentum {momentum:g}, "
        "wd {sgd_wd:g}) and LAMB (wd {lamb_wd:g}) at batch {large}; warm-up over {warmup:g} of the steps, then "
        "polynomial decay (power 2); biases and BN parameters excluded from decay and trust ratio; each arm's LR "
        "tuned on its grid (SGD-{small} {sgd_small_lrs}, SGD-{large} {sgd_large_lrs}, LARS {lars_lrs}, LAMB "
        "{lamb_lrs}) by final validation accuracy, first seed"
    )
    rule = (
        "per seed, gap(X) = test accuracy of SGD-{small} - X-{large}, in points; holds if the 95% intervals of the "
        "mean gaps of LARS and LAMB are <= {within:g} and SGD-{large}'s gap is > 0; fails if any lies wholly on the "
        "wrong side"
    )

    def grid(self, p: dict, seeds: list[int], rows: list[dict]) -> list[dict]:
        first = seeds[0]
        cells = [
            {"arm": arm, "opt": opt, "batch": p[bkey], "lr": lr, "seed": first}
            for arm, opt, bkey, gkey in ARMS
            for lr in p[gkey]
        ]
        lrs = tuned_lrs(p, rows, first)
        if lrs is None:
            return cells
        for s in seeds[1:]:
            cells += [
                {"arm": arm, "opt": opt, "batch": p[bkey], "lr": lrs[arm], "seed": s} for arm, opt, bkey, _ in ARMS
            ]
        return cells

    def cell(self, p: dict, config: dict) -> dict:
        data = _data()
        n, bs, seed = p["train"], config["batch"], config["seed"]
        x_tr, y_tr = data.x_train[:n], data.y_train[:n]
        x_val, y_val = data.x_train[n:], data.y_train[n:]
        gen = seed_everything(seed)
        model = CNN(1, data.num_classes, channels=tuple(p["channels"]), spatial=1, norm="bn")
        init_weights(model, generator=torch.Generator().manual_seed(seed))
        opt = make_optimizer(config["opt"], model, config["lr"], p)
        per_epoch = n // bs
        total = per_epoch * p["epochs"]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_poly(total, max(1, round(p["warmup"] * total))))
        test_acc, epoch_loss, diverged = [], [], False
        for _ in range(p["epochs"]):
            model.train()
            order, losses = torch.randperm(n, generator=gen), []
            for k in range(per_epoch):
                idx = order[k * bs : (k + 1) * bs]
                loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
            epoch_loss.append(statistics.fmean(losses))
            if not math.isfinite(epoch_loss[-1]):
                diverged = True
                break
            test_acc.append(evaluate(model, data.x_test, data.y_test)[0])
        if diverged:  # a diverged run is at chance from then on
            test_acc += [CHANCE] * (p["epochs"] - len(test_acc))
            val = CHANCE
        else:
            val = evaluate(model, x_val, y_val)[0]
        return {
            "val_acc": val,
            "test_acc": test_acc[-1],
            "test_curve": test_acc,
            "final_train_loss": epoch_loss[-1],
            "steps": total,
            "diverged": diverged,
        }

    def verdict(self, p: dict, rows: list[dict]) -> Verdict:
        seeds = sorted({r["seed"] for r in rows})
        lrs = tuned_lrs(p, rows, seeds[0]) if seeds else None
        if lrs is None:
            return Verdict("inconclusive", "the LR tuning runs are missing")
        runs = {arm: select(rows, arm=arm, lr=lrs[arm]) for arm, *_ in ARMS}
        points = lambda r: 100.0 * r["test_acc"]  # noqa: E731
        base = runs["sgd-small"]
        parts = [
            interval_part(
                f"gap_{arm.split('-')[0]}",
                paired(base, runs[arm], points),
                "<=",
                p["within"],
                what=f"SGD-{p['small']} - {arm.split('-')[0].upper()}-{p['large']} accuracy (points)",
                digits=2,
            )
            for arm in ("lars-large", "lamb-large")
        ]
        parts.append(
            interval_part(
                "gap_sgd",
                paired(base, runs["sgd-large"], points),
                ">",
                0.0,
                what=f"SGD-{p['small']} - SGD-{p['large']} accuracy (points)",
                digits=2,
            )
        )
        numbers: dict[str, float] = {}
        for part in parts:
            numbers.update({part.name: part.estimate, part.name + "_low": part.low, part.name + "_high": part.high})
        for arm, *_ in ARMS:
            numbers[f"test_acc[{arm}]"] = statistics.fmean(r["test_acc"] for r in runs[arm])
            numbers[f"tuned_lr[{arm}]"] = float(lrs[arm])
        edges = [arm for arm, _, _, gkey in ARMS if len(p[gkey]) > 1 and lrs[arm] in (p[gkey][0], p[gkey][-1])]
        note = (
            "test accuracy "
            + ", ".join(f"{arm} {fmt(numbers[f'test_acc[{arm}]'])} (lr {lrs[arm]:g})" for arm, *_ in ARMS)
            + f"; diverged runs {sum(r['diverged'] for rs in runs.values() for r in rs)}"
            + (f"; tuned LR at a grid edge: {', '.join(edges)}" if edges else "")
        )
        return Verdict.combine(parts, numbers=numbers, note=note)

    def plot(self, p: dict, rows: list[dict], fig) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        seeds = sorted({r["seed"] for r in rows})
        lrs = tuned_lrs(p, rows, seeds[0]) if seeds else None
        for i, (arm, _, _, gkey) in enumerate(ARMS):
            tune = sorted(select(rows, arm=arm, seed=seeds[0]), key=lambda r: r["lr"]) if seeds else []
            tune = [r for r in tune if r["lr"] in p[gkey]]
            if tune:
                ax2.plot([r["lr"] for r in tune], [r["val_acc"] for r in tune], "o-", color=f"C{i}", label=arm)
            if lrs is not None:
                rs = select(rows, arm=arm, lr=lrs[arm])
                plot_band(ax1, range(1, p["epochs"] + 1), [r["test_curve"] for r in rs], arm, f"C{i}")
        ax1.set(xlabel="epoch", ylabel="test accuracy (tuned LR, mean +- std over seeds)", ylim=(0, 1))
        ax1.legend(fontsize=7)
        ax2.set(xlabel="learning rate", ylabel="final validation accuracy (first seed)", xscale="log", ylim=(0, 1))
        ax2.legend(fontsize=7)


CLAIM = LargeBatchLars()
