"""noisy-bn: time-varying noise injected after every BatchNorm (large "internal covariate shift") barely hurts.

Source: Santurkar, Tsipras, Ilyas & Madry 2018, "How Does Batch Normalization
Help Optimization?" (Sec. 2.1, Fig. 2): a "noisy" BN net, with noise of
non-zero mean and non-unit variance, changing at every step, added after each
BN layer, trains about as well as the BN net and better than the standard net,
though its layer inputs are far less stable.

Protocol: the 1-D CNN of :class:`normlab.models.CNN` on MNIST-1D in three
variants, one cell per (net, seed): standard (no norm), BN (BatchNorm after
every conv, before the ReLU), noisy BN (the same with :class:`InjectedNoise`
right after every BN). Same training for all; final test accuracy
(inference: BN running statistics, no noise).

The noise (Santurkar et al. give its form only in words): at every training
forward pass, for each channel ``j`` a new distribution is drawn, scale
``c_j ~ U(c_low, c_high)``, mean ``mu_j ~ U(-mu_max, mu_max)``, spread
``s_j ~ U(0, s_max)``, and every activation becomes ``y = c_j x + mu_j + s_j
eps`` with ``eps ~ N(0, 1)`` per element. Its expectation is the identity,
which is what inference uses.

ICS (Santurkar et al.'s gradient definition,
:func:`normlab.analysis.internal_covariate_shift`): ``||G - G'||`` per layer,
``G`` a layer's gradient and ``G'`` the same after the earlier layers take an
SGD step, on a fixed batch, every ``ics_every`` steps. Departure from the first
version (CLAIMS.md "changes to the contract"): the noise is drawn once per
measurement and the same draw is used for ``G`` and ``G'`` (the first version
re-drew it, so most of the noisy net's ICS was the re-draw itself and remained
at a vanishing step). The check ``frozen noise`` measures the noisy net's ICS
at a vanishing step ``tiny_lr``: it must be a negligible fraction of its ICS
at ``lr``. The measurement restores the noise generator, so it does not change
the training run. A checkpoint's value is the mean over layers after the first;
a seed's value is the median over checkpoints.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..analysis import internal_covariate_shift
from ..data import mnist1d
from ..models import CNN, init_weights
from ..train import seed_everything, train
from .base import Check, Claim, Verdict, fmt, interval_part, paired, seed_mean, select, sweep
from .recipes import nanmean, nanmedian, num

NETS = ("standard", "bn", "noisy_bn")
LABELS = {"standard": "standard", "bn": "BN", "noisy_bn": "noisy BN"}
_DATA = {}


def _data():
    if "mnist1d" not in _DATA:
        _DATA["mnist1d"] = mnist1d(channel_dim=True)
    return _DATA["mnist1d"]


class InjectedNoise(nn.Module):
    """``y = c x + mu + s eps`` with ``(c, mu, s)`` per channel re-drawn at every training forward pass.

    ``c ~ U(c_low, c_high)``, ``mu ~ U(-mu_max, mu_max)``, ``s ~ U(0, s_max)``, ``eps ~ N(0, 1)`` per element.
    Active when training or when ``force`` is set (analysis tools put the model in eval mode); identity
    otherwise (the noise's expectation). Inside :meth:`frozen` the first draw is kept and reused by every
    forward pass (the same noise for ``G`` and ``G'``), and the generator is restored on exit. Draws come
    from its own generator, so runs are reproducible.
    """

    def __init__(self, seed: int = 0, c=(0.5, 1.5), mu_max: float = 1.0, s_max: float = 1.0) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)
        self.c, self.mu_max, self.s_max = tuple(c), mu_max, s_max
        self.force = False
        self._freeze = False
        self._kept = None

    def _draw(self, x):
        shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
        g = self.generator
        c = self.c[0] + (self.c[1] - self.c[0]) * torch.rand(shape, generator=g, dtype=x.dtype)
        mu = self.mu_max * (2 * torch.rand(shape, generator=g, dtype=x.dtype) - 1)
        s = self.s_max * torch.rand(shape, generator=g, dtype=x.dtype)
        return c, mu, s * torch.randn(x.shape, generator=g, dtype=x.dtype)

    def forward(self, x):
        if not (self.training or self.force):
            return x
        if self._freeze:
            if self._kept is None or self._kept[2].shape != x.shape:
                self._kept = self._draw(x)
            c, mu, e = self._kept
        else:
            c, mu, e = self._draw(x)
        return c * x + mu + e

    @contextlib.contextmanager
    def frozen(self):
        """One noise draw for every forward pass inside; the generator's state is restored afterwards."""
        state = self.generator.get_state()
        self._freeze, self._kept = True, None
        try:
            yield self
        finally:
            self._freeze, self._kept = False, None
            self.generator.set_state(state)


def build(net: str, seed: int, p: dict) -> nn.Module:
    seed_everything(seed)
    model = CNN(1, 10, channels=tuple(p["channels"]), spatial=1, norm=None if net == "standard" else "bn")
    init_weights(model, generator=torch.Generator().manual_seed(seed))
    if net == "noisy_bn":
        feats = model.features
        for i, m in enumerate(list(feats)):
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                noise = InjectedNoise(seed * 1000 + i, (p["c_low"], p["c_high"]), p["mu_max"], p["s_max"])
                feats[i] = nn.Sequential(m, noise)
    return model


def measure_ics(model, batch, lr: float) -> dict:
    """ICS of ``model`` on ``batch`` at step size ``lr``, the noise (if any) on and frozen for G and G'."""
    noise = [m for m in model.modules() if isinstance(m, InjectedNoise)]
    with contextlib.ExitStack() as stack:
        for m in noise:
            m.force = True
            stack.enter_context(m.frozen())
        try:
            res = internal_covariate_shift(model, F.cross_entropy, batch, lr=lr, bn_mode="train")
        finally:
            for m in noise:
                m.force = False
    l2 = [float(v) for v in res.l2]
    cos = [float(v) for v in res.cosine]
    return {"l2": l2, "cosine": cos, "l2_mean": nanmean(l2[1:]), "cos_mean": nanmean(cos[1:])}


class NoisyBn(Claim):
    id = "noisy-bn"
    title = "Noise after BN barely hurts"
    source = "Santurkar et al. 2018"
    statement = (
        "injecting time-varying non-zero-mean, non-unit-variance noise after every BN (large internal covariate "
        "shift) barely hurts training"
    )
    params = {
        "channels": (32, 32, 64),
        "lr": 0.05,
        "momentum": 0.9,
        "batch": 64,
        "steps": 1500,
        "ics_every": 250,
        "ics_batch": 256,
        "tiny_lr": 1e-9,
        "frozen_tol": 1e-3,
        "c_low": 0.5,
        "c_high": 1.5,
        "mu_max": 1.0,
        "s_max": 1.0,
        "acc_margin": 0.03,
    }
    quick = {"steps": 20, "ics_every": 20, "ics_batch": 64}
    seeds = 5
    min_seeds = 5
    data = ("mnist1d",)
    protocol = (
        "1-D CNN (channels {channels}) on mnist1d: standard / BN / noisy BN (y = c x + mu + s eps after each BN, "
        "c ~ U({c_low:g}, {c_high:g}), mu ~ U(-{mu_max:g}, {mu_max:g}), s ~ U(0, {s_max:g}) per channel, re-drawn "
        "every step); SGD lr {lr:g} momentum {momentum:g}, batch {batch}, {steps} steps; ICS ||G - G'|| every "
        "{ics_every} steps on {ics_batch} examples, the same noise draw for G and G'"
    )
    rule = (
        "per seed: noisy-BN final acc - BN's >= -{acc_margin:g}, noisy-BN final acc - standard's > 0, noisy-BN "
        "ICS / standard's >= 1 (intervals over seeds); check: the noisy net's ICS at lr {tiny_lr:g} <= "
        "{frozen_tol:g} x its ICS at lr {lr:g} (the noise is frozen during a measurement)"
    )

    def grid(self, p: dict, seeds: list[int], rows: list[dict]) -> list[dict]:
        return [] if rows else sweep(seeds, net=NETS)

    def cell(self, p: dict, config: dict) -> dict:
        data = _data()
        net, seed = config["net"], config["seed"]
        batch = (data.x_train[: p["ics_batch"]], data.y_train[: p["ics_batch"]])
        model = build(net, seed, p)
        ics = [{"step": 0, **measure_ics(model, batch, p["lr"])}]
        tiny = measure_ics(model, batch, p["tiny_lr"])["l2_mean"] if net == "noisy_bn" else 0.0

        def probe(step, m, info):
            if step % p["ics_every"] == 0:
                ics.append({"step": step, **measure_ics(m, batch, p["lr"])})

        opt = torch.optim.SGD(model.parameters(), lr=p["lr"], momentum=p["momentum"])
        hist = train(
            model,
            data,
            opt,
            steps=p["steps"],
            batch_size=p["batch"],
            seed=seed,
            eval_every=p["ics_every"],
            callbacks=(probe,),
            progress=False,
        )
        return {
            "final_acc": hist.final_test_acc,
            "eval_steps": hist.eval_steps,
            "test_acc": hist.test_acc,
            "diverged": hist.diverged,
            "ics": ics,
            "ics_median": nanmedian([c["l2_mean"] for c in ics]),
            "cos_median": nanmedian([c["cos_mean"] for c in ics]),
            "ics_tiny_ratio": tiny / ics[0]["l2_mean"] if ics[0]["l2_mean"] > 0 else 0.0,
        }

    def verdict(self, p: dict, rows: list[dict]) -> Verdict:
        by = {n: select(rows, net=n) for n in NETS}
        if not all(by.values()):
            return Verdict("inconclusive", "a net has no rows")
        margin = p["acc_margin"]
        close = interval_part(
            "noisy_minus_bn",
            paired(by["noisy_bn"], by["bn"], "final_acc"),
            ">=",
            -margin,
            what="noisy-BN - BN final acc",
        )
        beats = interval_part(
            "noisy_minus_standard",
            paired(by["noisy_bn"], by["standard"], "final_acc"),
            ">",
            0.0,
            what="noisy-BN - standard final acc",
        )
        shift = interval_part(
            "ics_ratio",
            paired(by["noisy_bn"], by["standard"], "ics_median", op=lambda a, b: a / b),
            ">=",
            1.0,
            what="noisy-BN ICS / standard's",
        )
        tiny = max(num(r["ics_tiny_ratio"]) for r in by["noisy_bn"])
        checks = [
            Check(
                "frozen noise",
                tiny <= p["frozen_tol"],
                f"noisy-BN ICS at lr {p['tiny_lr']:g} = {fmt(tiny, 2)} x its ICS at lr {p['lr']:g} "
                f"(limit {p['frozen_tol']:g})",
            )
        ]
        numbers = {f"acc_{n}": seed_mean(by[n], "final_acc") for n in NETS}
        numbers.update({f"ics_{n}": seed_mean(by[n], "ics_median") for n in NETS})
        numbers.update({f"ics_cos_{n}": seed_mean(by[n], "cos_median") for n in NETS})
        for part in (close, beats, shift):
            numbers[part.name] = part.estimate
            numbers[part.name + "_low"] = part.low
            numbers[part.name + "_high"] = part.high
        numbers["ics_tiny_ratio_max"] = tiny
        note = (
            f"seed means: acc noisy BN {fmt(numbers['acc_noisy_bn'])}, BN {fmt(numbers['acc_bn'])}, standard "
            f"{fmt(numbers['acc_standard'])}; ICS noisy BN {fmt(numbers['ics_noisy_bn'])}, standard "
            f"{fmt(numbers['ics_standard'])}, BN {fmt(numbers['ics_bn'])}"
        )
        return Verdict.combine([close, beats, shift], checks, numbers, note=note)

    def plot(self, p: dict, rows: list[dict], fig) -> None:
        ax1, ax2, ax3 = fig.subplots(1, 3)
        for i, net in enumerate(NETS):
            rs = select(rows, net=net)
            for j, r in enumerate(rs):
                label = LABELS[net] if j == 0 else None
                ax1.plot(
                    r["eval_steps"], [num(a) for a in r["test_acc"]], color=f"C{i}", alpha=0.7, marker=".", label=label
                )
                ax2.plot(
                    [c["step"] for c in r["ics"]],
                    [max(num(c["l2_mean"]), 1e-12) for c in r["ics"]],
                    color=f"C{i}",
                    alpha=0.7,
                    marker=".",
                    label=label,
                )
            accs = [num(r["final_acc"]) for r in rs]
            ax3.bar(i, nanmean(accs), color=f"C{i}", alpha=0.6)
            ax3.scatter([i] * len(accs), accs, color="k", s=8, zorder=3)
        ax1.set(xlabel="step", ylabel="test accuracy")
        ax1.legend(fontsize=7)
        ax2.set(yscale="log", xlabel="step", ylabel=r"ICS $\|G - G'\|$ (mean over layers 2..L)")
        ax2.legend(fontsize=7)
        ax3.set_xticks(range(len(NETS)), [LABELS[n] for n in NETS])
        ax3.set_ylabel("final test accuracy (per seed)")
        lo = min((num(r["final_acc"]) for r in rows), default=0.0)
        ax3.set_ylim(max(0.0, lo - 0.05), 1.0)


CLAIM = NoisyBn()
