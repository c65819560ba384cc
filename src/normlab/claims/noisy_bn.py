"""noisy-bn: time-varying noise injected after every BatchNorm (large "internal covariate shift") barely hurts.

Source: Santurkar, Tsipras, Ilyas & Madry 2018, "How Does Batch Normalization
Help Optimization?" (Sec. 2.1, Fig. 2): a "noisy" BN net, with noise of
non-zero mean and non-unit variance, changing at every step, added after each
BN layer, trains about as well as the BN net and better than the standard net,
though its layer inputs are far less stable.

Protocol: the 1-D CNN of :class:`normlab.models.CNN` (channels 32-32-64) on
MNIST-1D in three variants: standard (no norm), BN (BatchNorm after every
conv, before the ReLU), noisy BN (the same with :class:`InjectedNoise` right
after every BN). Same training for all: He init, SGD lr 0.05 momentum 0.9,
batch 64, 1500 steps; final test accuracy (inference: BN running statistics,
no noise).

The noise (Santurkar et al. give its form only in words: "i.i.d. noise
sampled from a non-zero mean and non-unit variance distribution", changing
every step): at every forward pass in training, for each channel ``j`` a new
distribution is drawn, scale ``c_j ~ U(0.5, 1.5)``, mean ``mu_j ~ U(-1, 1)``,
spread ``s_j ~ U(0, 1)``, and every activation becomes
``y = c_j x + mu_j + s_j eps`` with ``eps ~ N(0, 1)`` i.i.d. per sample and
position. So each activation's distribution over the batch has a mean and a
variance that jump every step. Its expectation is the identity, which is what
inference uses.

ICS (Santurkar et al.'s gradient definition, :func:`normlab.analysis.internal_covariate_shift`):
``||G - G'||`` per layer, ``G`` a layer's gradient and ``G'`` the same after
the earlier layers take an SGD step (lr 0.05), on a fixed batch of 256
training examples, at steps 0, 250, ..., 1500. For the noisy net the noise
is on during the measurement and re-drawn at each forward pass, so ``G'``
sees the next step's noise, as training does. The per-checkpoint value is the
mean over layers after the first (the first has no earlier layer: 0 for the
deterministic nets); a seed's value is the median over checkpoints.

Rule (CLAIMS.md): noisy-BN final accuracy >= BN - 3 points and > standard
(seed means); its measured ICS (seed-mean of the median ``||G - G'||``) >=
the standard net's. With fewer than 3 seeds the verdict is ``inconclusive``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..analysis import internal_covariate_shift
from ..data import mnist1d
from ..models import CNN, init_weights
from ..train import seed_everything, train
from ._support import fmt, nanmean, nanmedian, nanstd, num, seeds_caveat, single_thread
from .base import Claim, Context, Verdict

CHANNELS = (32, 32, 64)
LR = 0.05
MOMENTUM = 0.9
BATCH = 64
ACC_MARGIN = 0.03
ICS_BATCH = 256
NETS = ("standard", "bn", "noisy_bn")


class InjectedNoise(nn.Module):
    """``y = c x + mu + s eps`` with ``(c, mu, s)`` per channel re-drawn at every training forward pass.

    ``c ~ U(0.5, 1.5)``, ``mu ~ U(-1, 1)``, ``s ~ U(0, 1)``, ``eps ~ N(0, 1)`` per element. Active when
    training or when ``force`` is set (analysis tools put the model in eval mode); identity otherwise (the
    noise's expectation). Draws come from its own generator, so runs are reproducible.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)
        self.force = False

    def forward(self, x):
        if not (self.training or self.force):
            return x
        shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
        g = self.generator
        c = 0.5 + torch.rand(shape, generator=g, dtype=x.dtype)
        mu = 2 * torch.rand(shape, generator=g, dtype=x.dtype) - 1
        s = torch.rand(shape, generator=g, dtype=x.dtype)
        return c * x + mu + s * torch.randn(x.shape, generator=g, dtype=x.dtype)


def build(net: str, seed: int) -> nn.Module:
    seed_everything(seed)
    model = CNN(1, 10, channels=CHANNELS, spatial=1, norm=None if net == "standard" else "bn")
    init_weights(model, generator=torch.Generator().manual_seed(seed))
    if net == "noisy_bn":
        feats = model.features
        for i, m in enumerate(list(feats)):
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                feats[i] = nn.Sequential(m, InjectedNoise(seed * 1000 + i))
    return model


def _ics(model, batch) -> dict:
    noise = [m for m in model.modules() if isinstance(m, InjectedNoise)]
    for m in noise:
        m.force = True
    try:
        res = internal_covariate_shift(model, F.cross_entropy, batch, lr=LR, bn_mode="train")
    finally:
        for m in noise:
            m.force = False
    l2 = [float(v) for v in res.l2]
    cos = [float(v) for v in res.cosine]
    return {"layers": res.layers, "l2": l2, "cosine": cos, "l2_mean": nanmean(l2[1:]), "cos_mean": nanmean(cos[1:])}


class NoisyBn(Claim):
    id = "noisy-bn"
    title = "Noise after BN barely hurts"
    source = "Santurkar et al. 2018"
    statement = (
        "injecting time-varying non-zero-mean, non-unit-variance noise after every BN (large internal covariate "
        "shift) barely hurts training"
    )
    protocol = (
        "1-D CNN 32-32-64 on mnist1d: standard / BN / noisy BN (y = c x + mu + s eps after each BN, c~U(.5,1.5), "
        "mu~U(-1,1), s~U(0,1) per channel re-drawn every step); SGD lr 0.05 m 0.9, 1500 steps; ICS ||G - G'|| "
        "every 250 steps"
    )
    rule = "noisy-BN final acc >= BN - 3 points and > standard; noisy-BN ICS (median ||G - G'||) >= standard's"

    def run(self, ctx: Context) -> dict:
        steps = ctx.pick(100, 1500)
        every = ctx.pick(50, 250)
        with single_thread():
            data = mnist1d(channel_dim=True)
            batch = (data.x_train[:ICS_BATCH], data.y_train[:ICS_BATCH])
            rows = []
            for seed in ctx.seeds:
                for net in NETS:
                    model = build(net, seed)
                    ics = []

                    def probe(step, m, info, ics=ics):
                        if step % every == 0:
                            ics.append({"step": step, **_ics(m, batch)})

                    ics.append({"step": 0, **_ics(model, batch)})
                    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
                    hist = train(
                        model,
                        data,
                        opt,
                        steps=steps,
                        batch_size=BATCH,
                        seed=seed,
                        eval_every=every,
                        callbacks=(probe,),
                        progress=False,
                    )
                    row = {
                        "seed": seed,
                        "net": net,
                        "final_acc": hist.final_test_acc,
                        "eval_steps": hist.eval_steps,
                        "test_acc": hist.test_acc,
                        "diverged": hist.diverged,
                        "ics": ics,
                        "ics_median": nanmedian([c["l2_mean"] for c in ics]),
                        "cos_median": nanmedian([c["cos_mean"] for c in ics]),
                    }
                    rows.append(row)
                    ctx.log(f"  seed {seed} {net}: acc {row['final_acc']:.3f}, ICS median {row['ics_median']:.3g}")
        return {"rows": rows, "steps": steps, "n_seeds": len(ctx.seeds), "margin": ACC_MARGIN}

    def verdict(self, evidence: dict) -> Verdict:
        rows = evidence["rows"]
        acc = {n: nanmean([num(r["final_acc"]) for r in rows if r["net"] == n]) for n in NETS}
        ics = {n: nanmean([num(r["ics_median"]) for r in rows if r["net"] == n]) for n in NETS}
        cos = {n: nanmean([num(r["cos_median"]) for r in rows if r["net"] == n]) for n in NETS}
        numbers = {f"acc_{n}": acc[n] for n in NETS}
        numbers.update({f"ics_{n}": ics[n] for n in NETS})
        numbers.update({f"ics_cos_{n}": cos[n] for n in NETS})
        margin = num(evidence.get("margin", ACC_MARGIN))
        close = acc["noisy_bn"] >= acc["bn"] - margin
        beats = acc["noisy_bn"] > acc["standard"]
        shift = ics["noisy_bn"] >= ics["standard"]
        reason = (
            f"test acc noisy BN {fmt(acc['noisy_bn'])} vs BN {fmt(acc['bn'])} vs standard {fmt(acc['standard'])}; "
            f"ICS ||G - G'|| noisy BN {fmt(ics['noisy_bn'])} vs standard {fmt(ics['standard'])} (BN {fmt(ics['bn'])})"
        )
        failed = [
            t
            for t, ok in (
                (f"noisy BN more than {margin * 100:g} points below BN", close),
                ("noisy BN not above standard", beats),
                ("noisy BN ICS below standard", shift),
            )
            if not ok
        ]
        caveat = seeds_caveat(int(evidence["n_seeds"]))
        if caveat:
            would = "holds" if not failed else "fails (" + "; ".join(failed) + ")"
            return Verdict("inconclusive", f"{caveat}; would be {would}: {reason}", numbers)
        if not failed:
            return Verdict("holds", reason, numbers)
        return Verdict("fails", f"{'; '.join(failed)}: {reason}", numbers)

    def plot(self, evidence: dict, fig) -> None:
        rows = evidence["rows"]
        ax1, ax2, ax3 = fig.subplots(1, 3)
        labels = {"standard": "standard", "bn": "BN", "noisy_bn": "noisy BN"}
        for i, net in enumerate(NETS):
            rs = [r for r in rows if r["net"] == net]
            for j, r in enumerate(rs):
                ax1.plot(
                    r["eval_steps"],
                    [num(a) for a in r["test_acc"]],
                    color=f"C{i}",
                    alpha=0.7,
                    label=labels[net] if j == 0 else None,
                )
                ax2.plot(
                    [c["step"] for c in r["ics"]],
                    [num(c["l2_mean"]) for c in r["ics"]],
                    color=f"C{i}",
                    alpha=0.7,
                    marker=".",
                    label=labels[net] if j == 0 else None,
                )
            accs = [num(r["final_acc"]) for r in rs]
            ax3.bar(i, nanmean(accs), yerr=nanstd(accs), color=f"C{i}", alpha=0.6)
            ax3.scatter([i] * len(accs), accs, color="k", s=8)
        ax1.set_xlabel("step")
        ax1.set_ylabel("test accuracy")
        ax1.legend(fontsize=7)
        ax2.set_yscale("log")
        ax2.set_xlabel("step")
        ax2.set_ylabel("ICS ||G - G'|| (mean over layers 2..L)")
        ax2.legend(fontsize=7)
        ax3.set_xticks(range(len(NETS)), [labels[n] for n in NETS])
        ax3.set_ylabel("final test accuracy")
        lo = min((num(r["final_acc"]) for r in rows), default=0.0)
        ax3.set_ylim(max(0.0, lo - 0.1), 1.0)


CLAIM = NoisyBn()
