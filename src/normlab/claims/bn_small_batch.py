"""bn-small-batch: BN degrades when its statistics come from few examples; GN does not depend on the batch.

Source: Wu & He 2018 (Group Normalization, Figure 1: ResNet-50 on ImageNet,
8 GPUs, BN's statistics over each GPU's b images, b from 32 down to 2, the
SGD batch 8b with the LR scaled linearly); the "Normalizations" lecture.

Protocol: the 3-stage 1-D CNN of :class:`normlab.models.CNN` (``channels``,
He init, the norm before each ReLU) on the first ``train`` examples of
MNIST-1D's training set (test: the 1000 test examples). BN is
:class:`normlab.nn.GhostBatchNorm` with ``virtual_batch_size = b``: each
SGD batch of ``batch`` examples is normalized in ghost batches of b, so b is
BN's statistics batch, separated from the SGD batch (b = ``batch`` is plain
BN, the reference ``b_ref``). Eval mode uses the running statistics (one
update per step from the whole batch's pooled moments, as BatchNorm's).
GroupNorm (``gn_groups`` groups) is the batch-independent comparison. SGD
momentum ``momentum``, LR ``lr`` with a cosine decay to 0 over ``epochs``
epochs (the last partial batch of an epoch dropped); error = 1 - accuracy
in eval mode at the end.

Departure from CLAIMS.md (the 8b protocol, SGD batch = 8 ghost batches of b
with the LR scaled linearly): it does not fit the budget. Near-zero training
error at b = 32 takes several hundred steps at SGD batch 256, and the same
epochs at b = 2 are 16x as many steps at per-step (overhead) cost: about 4x
this claim's share of the full run. So the SGD batch, the LR and the number
of steps are the same for every b and only the statistics batch varies (the
variant of the issue's review). It isolates the mechanism Wu & He name (BN's
batch statistics over few examples); the price is that GN's output, and so
its whole run, does not depend on b: one GN run per seed serves every b, its
spread across b is exactly 0 (a check, with GN's per-example independence
measured on a batch), and GN's error is reported beside BN's. The b grid is
``stat_batches``, CLAIMS.md's 2, 4, 8, 16, 32.

Budget: ``epochs`` epochs with the LR's cosine decay (Wu & He decay the LR
in steps) bring b = ``b_ref`` to near-zero training error (reported, not
judged): in a two-seed probe 0.2% at 24 epochs, against 1.9% at the
previous 12, where the b = 2 gap was 6.8 points over 10 seeds; at 24 epochs
the probe's gap was ~1.5 points, so the longer budget, which the issue asks
for, shrinks BN's small-batch penalty here.

Seeds: 10 in full mode (the gap's per-seed spread is ~2 points). GN,
reported and not judged, runs on the first ``gn_seeds`` of them.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from ..data import mnist1d
from ..models import CNN, init_weights
from ..train import evaluate, seed_everything
from .base import Check, Claim, Verdict, fmt, interval_part, paired, select, sweep
from .recipes import nanmean, num

_DATA: dict = {}


def _data():
    if "mnist1d" not in _DATA:
        _DATA["mnist1d"] = mnist1d(channel_dim=True)
    return _DATA["mnist1d"]


def norm_spec(p: dict, config: dict) -> str:
    """The registry spec of a cell's norm: ghost BN over ``stat_batch`` examples, or GroupNorm."""
    if config["norm"] == "bn":
        return f"gbn:{int(config['stat_batch'])}"
    return f"gn:{int(p['gn_groups'])}"


def cosine_lr(base: float, step: int, total: int) -> float:
    """``base * (1 + cos(pi step / total)) / 2``: the LR of step ``step`` (0-based) of ``total``."""
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def batch_dependence(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Max |f(batch)[i] - f(x_i alone)| over the batch, in train mode and float64 (0 for a per-example norm).

    Computed on a float64 copy of ``model``, so float32 rounding (which differs
    with the batch size) does not count as dependence; ``model`` is untouched.
    """
    m = copy.deepcopy(model).double().train()
    x = x.double()
    with torch.no_grad():
        together = m(x)
        alone = torch.cat([m(x[i : i + 1]) for i in range(len(x))])
    return float((together - alone).abs().max())


class BnSmallBatch(Claim):
    id = "bn-small-batch"
    title = "BN degrades with a small statistics batch; GN does not"
    source = "Wu & He 2018 (Group Normalization); 'Normalizations' lecture"
    statement = "BN degrades at small batch sizes; GN/LN do not depend on batch size"
    params = {
        "channels": (32, 32, 64),
        "train": 2000,
        "batch": 32,
        "stat_batches": (2, 4, 8, 16, 32),
        "b_small": 2,
        "b_ref": 32,
        "gn_groups": 8,
        "gn_seeds": 10,
        "lr": 0.05,
        "momentum": 0.9,
        "epochs": 24,
        "bn_gap": 0.05,
        "gn_spread": 0.03,
        "independence_tol": 1e-5,
    }
    quick = {"train": 320, "epochs": 1, "stat_batches": (2, 32)}
    seeds = 10  # the gap's per-seed spread is ~2 points: 5 seeds straddled the threshold at 12 epochs
    min_seeds = 5
    data = ("mnist1d",)
    protocol = (
        "1-D CNN (channels {channels}) on the first {train} mnist1d training examples; BN = ghost BN over "
        "statistics batches b in {stat_batches} within a fixed SGD batch of {batch} (b = {b_ref}: plain BN), vs "
        "GroupNorm ({gn_groups} groups, the first {gn_seeds} seeds); SGD momentum {momentum:g}, lr {lr:g} with "
        "cosine decay, {epochs} epochs for every b; test error in eval mode (running statistics)"
    )
    rule = (
        "BN error at b = {b_small} - BN error at b = {b_ref} >= {bn_gap:g} (paired per seed, interval over seeds); GN "
        "spread across b <= {gn_spread:g}: exactly 0 here, since the SGD batch is fixed and GN's output of an "
        "example does not depend on the rest of the batch (a check: max deviation <= {independence_tol:g})"
    )

    def grid(self, p: dict, seeds: list[int], rows: list[dict]) -> list[dict]:
        return sweep(seeds, norm=("bn",), stat_batch=p["stat_batches"]) + sweep(seeds[: p["gn_seeds"]], norm=("gn",))

    def cell(self, p: dict, config: dict) -> dict:
        data = _data()
        n, bs, seed = p["train"], p["batch"], config["seed"]
        x, y = data.x_train[:n], data.y_train[:n]
        gen = seed_everything(seed)
        model = CNN(1, 10, channels=tuple(p["channels"]), spatial=1, norm=norm_spec(p, config))
        init_weights(model, generator=torch.Generator().manual_seed(seed))
        opt = torch.optim.SGD(model.parameters(), lr=p["lr"], momentum=p["momentum"])
        per_epoch = n // bs
        total = p["epochs"] * per_epoch
        test_error, step, diverged = [], 0, False
        for _ in range(p["epochs"]):
            order = torch.randperm(n, generator=gen)
            model.train()
            for i in range(per_epoch):
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(p["lr"], step, total)
                idx = order[i * bs : (i + 1) * bs]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if not math.isfinite(float(loss.detach())):
                    diverged = True
                    break
            if diverged:
                break
            test_error.append(1.0 - evaluate(model, data.x_test, data.y_test)[0])
        row = {
            "steps": step,
            "diverged": diverged,
            "epoch_test_error": test_error,
            "test_error": math.nan if diverged else 1.0 - evaluate(model, data.x_test, data.y_test)[0],
            "train_error": math.nan if diverged else 1.0 - evaluate(model, x, y)[0],
        }
        if config["norm"] == "gn":
            row["batch_dependence"] = math.nan if diverged else batch_dependence(model, x[:bs])
        return row

    def verdict(self, p: dict, rows: list[dict]) -> Verdict:
        ref, small = p["b_ref"], p["b_small"]
        bn2, bnref = select(rows, norm="bn", stat_batch=small), select(rows, norm="bn", stat_batch=ref)
        gn = select(rows, norm="gn")
        if not (bn2 and bnref and gn):
            return Verdict("inconclusive", f"needs BN at b = {small} and b = {ref} and GN runs")
        gap = interval_part(
            "BN gap",
            paired(bn2, bnref, "test_error"),
            ">=",
            p["bn_gap"],
            what=f"BN error at b = {small} - at b = {ref}",
            nonfinite="fails",
        )
        dep = max((num(r["batch_dependence"]) for r in gn), default=math.nan)
        checks = [
            Check(
                "GN batch-independent",
                dep <= p["independence_tol"],
                f"GN output alone vs in a batch of {p['batch']}: max deviation {fmt(dep)} "
                f"(limit {p['independence_tol']:g}), so its spread across b is 0 (limit {p['gn_spread']:g})",
            )
        ]
        numbers = {"bn_gap": gap.estimate, "bn_gap_low": gap.low, "bn_gap_high": gap.high, "gn_spread": 0.0}
        pieces = []
        for b in p["stat_batches"]:
            rs = select(rows, norm="bn", stat_batch=b)
            numbers[f"test_error[bn, b={b}]"] = nanmean([r["test_error"] for r in rs])
            numbers[f"train_error[bn, b={b}]"] = nanmean([r["train_error"] for r in rs])
            pieces.append(f"b={b} {fmt(numbers[f'test_error[bn, b={b}]'])}")
        numbers["test_error[gn]"] = nanmean([r["test_error"] for r in gn])
        numbers["train_error[gn]"] = nanmean([r["train_error"] for r in gn])
        numbers["gn_batch_dependence"] = dep
        note = (
            f"seed-mean test error BN {', '.join(pieces)}, GN {fmt(numbers['test_error[gn]'])}; train error BN "
            f"b={ref} {fmt(numbers[f'train_error[bn, b={ref}]'])}"
        )
        return Verdict.combine([gap], checks, numbers, note=note)

    def plot(self, p: dict, rows: list[dict], fig) -> None:
        from matplotlib.ticker import NullFormatter

        from .recipes import plot_band

        ax1, ax2 = fig.subplots(1, 2)
        bs = list(p["stat_batches"])
        seeds = sorted({r["seed"] for r in rows})
        for key, ls, label in (("test_error", "-", "test"), ("train_error", ":", "train")):
            curves = [[num(r[key]) for b in bs for r in select(rows, norm="bn", stat_batch=b, seed=s)] for s in seeds]
            curves = [c for c in curves if len(c) == len(bs)]
            if curves:
                plot_band(ax1, bs, curves, f"BN (ghost) {label}", color="C0", ls=ls, marker="o")
            g = [num(r[key]) for r in select(rows, norm="gn")]
            if g:
                ax1.plot(bs, [nanmean(g)] * len(bs), color="C1", ls=ls, marker="s", label=f"GN {label} (any b)")
        ax1.set_xscale("log", base=2)
        ax1.set_xticks(bs, [str(b) for b in bs])
        ax1.xaxis.set_minor_formatter(NullFormatter())
        ax1.set(xlabel="statistics batch b", ylabel="error (eval mode)", title=f"SGD batch {p['batch']}")
        ax1.legend(fontsize=7)
        for i, b in enumerate(bs):
            rs = select(rows, norm="bn", stat_batch=b)
            if rs:
                plot_band(ax2, range(1, p["epochs"] + 1), [r["epoch_test_error"] for r in rs], f"BN b={b}", f"C{i}")
        g = select(rows, norm="gn")
        if g:
            plot_band(ax2, range(1, p["epochs"] + 1), [r["epoch_test_error"] for r in g], "GN", "k", ls="--")
        ax2.set(xlabel="epoch", ylabel="test error (eval mode)", title="test error during training")
        if p["epochs"] == 1:
            for line in ax2.get_lines():
                line.set_marker("o")
        ax2.legend(fontsize=7)


CLAIM = BnSmallBatch()
