"""bn-small-batch: BN degrades at small batch sizes; GN does not depend on the batch size.

Source: Wu & He 2018 (Group Normalization, Figure 1); the "Normalizations" lecture.

Statement (CLAIMS.md): BN degrades at small batch sizes; GN/LN do not depend
on batch size.

Protocol: the 3-stage 1-D CNN of :class:`normlab.models.CNN` (channels
32-32-64, He init) with normlab BatchNorm1d or GroupNorm (8 groups: 4 or 8
channels per group) before each ReLU, on a fixed 1000-example subset of
MNIST-1D's training set (the first 1000; test: all 1000 test examples).
Batch sizes {2, 4, 8, 32, 128}, the same 15 epochs for each (so 7500 steps at
batch 2 and 105 at batch 128, the last partial batch of an epoch dropped), SGD
momentum 0.9 with the linear scaling rule lr = 0.05 x batch / 32 (Goyal et al.
2017, as in Wu & He). Error = 1 - test accuracy at the end, in eval mode (BN
uses its running statistics). Quick: 1 epoch of the first 300 examples, one seed.

Seeds run side by side: the S seeds' networks are built as S separate
``normlab.models.CNN`` (each initialized from its own seed) and then packed
into one network with grouped convolutions (``StackedCNN``: seed s owns
channel block s of every layer; BatchNorm over S*C channels and GroupNorm with
S*G groups normalize each block by itself; the loss is the sum of the seeds'
mean losses), which computes exactly the S independent networks (a test checks
it) at the per-step cost of about one at small batch, where the cost is
per-operation overhead. 15 epochs is what fits 5 minutes on 2 shared cores;
it leaves the batch-128 runs with only 105 steps (train errors are reported
beside the rule to show how far each setting got). Each seed draws its own batches: the training rows
hold, for seed s, the examples in a seed-specific fixed permutation, and
:func:`normlab.train.train` shuffles the rows, so every seed sees every
example once per epoch in its own batches.

Rule (CLAIMS.md), on seed means: BN error at batch 2 >= BN error at batch 128
+ 5 points; GN spread (max - min error over the batch sizes) <= 3 points.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import nn as nlnn
from ..data import Dataset, mnist1d
from ..models import CNN, init_weights
from ..train import evaluate, seed_everything, train
from ._workbench import num, one_thread, plot_band, quick_verdict
from .base import Claim, Context, Verdict, mean_std

BATCH_SIZES = (2, 4, 8, 32, 128)
NORMS = ("bn", "gn:8")
CHANNELS = (32, 32, 64)
EPOCHS, BASE_LR, BASE_BATCH, MOMENTUM = 15, 0.05, 32, 0.9
N_TRAIN, N_QUICK = 1000, 300
BN_GAP, GN_SPREAD = 0.05, 0.03


def _stack_conv(convs: list[nn.Conv1d]) -> nn.Conv1d:
    c0, s = convs[0], len(convs)
    out = nn.Conv1d(
        s * c0.in_channels,
        s * c0.out_channels,
        c0.kernel_size,
        stride=c0.stride,
        padding=c0.padding,
        groups=s,
        bias=c0.bias is not None,
    )
    with torch.no_grad():
        out.weight.copy_(torch.cat([c.weight for c in convs], 0))
        if c0.bias is not None:
            out.bias.copy_(torch.cat([c.bias for c in convs], 0))
    return out


def _stack_norm(norms: list[nn.Module]) -> nn.Module:
    n0, s = norms[0], len(norms)
    if isinstance(n0, nn.GroupNorm):
        out = nlnn.GroupNorm(s * n0.num_groups, s * n0.num_channels, eps=n0.eps, affine=n0.affine)
    elif isinstance(n0, nn.modules.batchnorm._BatchNorm):
        out = nlnn.BatchNorm1d(s * n0.num_features, eps=n0.eps, momentum=n0.momentum, affine=n0.affine)
    else:
        raise TypeError(f"cannot stack {type(n0).__name__}")
    with torch.no_grad():
        if n0.affine:
            out.weight.copy_(torch.cat([n.weight for n in norms]))
            out.bias.copy_(torch.cat([n.bias for n in norms]))
    return out


class StackedCNN(nn.Module):
    """S plain 1-D ``normlab.models.CNN`` (one input channel) computed as one network with grouped convolutions.

    Input ``(N, S, L)``: seed s reads channel s. Output ``(N, S, classes)``.
    """

    def __init__(self, nets: list[CNN]) -> None:
        super().__init__()
        self.num_nets = len(nets)
        layers = []
        for mods in zip(*(n.features for n in nets), strict=True):
            m0 = mods[0]
            if isinstance(m0, nn.Conv1d):
                if m0.groups != 1:
                    raise TypeError("only plain (groups=1) convolutions can be stacked")
                layers.append(_stack_conv(list(mods)))
            elif isinstance(m0, (nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
                layers.append(_stack_norm(list(mods)))
            elif isinstance(m0, (nn.ReLU, nn.Identity)):
                layers.append(type(m0)())
            else:
                raise TypeError(f"cannot stack {type(m0).__name__} (plain CNNs only)")
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        heads = [n.head for n in nets]
        self.num_classes = heads[0].out_features
        self.head = nn.Conv1d(len(nets) * heads[0].in_features, len(nets) * self.num_classes, 1, groups=len(nets))
        with torch.no_grad():
            self.head.weight.copy_(torch.cat([h.weight for h in heads], 0).unsqueeze(-1))
            self.head.bias.copy_(torch.cat([h.bias for h in heads], 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(self.pool(self.features(x)))
        return h.view(x.shape[0], self.num_nets, self.num_classes)


def stacked_cross_entropy(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Sum over the S networks of each one's cross-entropy (``mean``: each network's batch mean)."""
    total = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="sum")
    return total / out.shape[0] if reduction == "mean" else total


def stacked_data(data: Dataset, seeds: list[int]) -> Dataset:
    """Rows for S networks: training row i holds, for seed s, example perm_s(i); test rows repeat the example."""
    s = len(seeds)
    perms = [torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(1000 + sd)) for sd in seeds]
    x_tr = torch.stack([data.x_train[p, 0] for p in perms], 1)
    y_tr = torch.stack([data.y_train[p] for p in perms], 1)
    x_te = data.x_test[:, 0:1].expand(-1, s, -1).contiguous()
    y_te = data.y_test.unsqueeze(1).expand(-1, s).contiguous()
    return Dataset(f"{data.name}-x{s}", x_tr, y_tr, x_te, y_te, data.num_classes)


@torch.no_grad()
def per_net_accuracy(model: StackedCNN, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    was = model.training
    model.eval()
    try:
        pred = torch.cat([model(x[i : i + 500]).argmax(-1) for i in range(0, len(x), 500)])
    finally:
        model.train(was)
    return (pred == y).to(torch.float64).mean(0).tolist()


def build_stacked(norm: str, seeds: list[int]) -> StackedCNN:
    nets = []
    for sd in seeds:
        gen = seed_everything(sd)
        nets.append(init_weights(CNN(1, 10, channels=CHANNELS, spatial=1, norm=norm), generator=gen))
    return StackedCNN(nets)


def _run(data: Dataset, norm: str, batch: int, seeds: list[int], epochs: int) -> dict:
    model = build_stacked(norm, seeds)
    lr = BASE_LR * batch / BASE_BATCH
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
    total = epochs * (len(data.x_train) // batch)
    hist = train(
        model,
        data,
        opt,
        epochs=epochs,
        batch_size=batch,
        seed=seeds[0],
        loss_fn=stacked_cross_entropy,
        eval_every=total,
        progress=False,
    )
    test = per_net_accuracy(model, data.x_test, data.y_test)
    train_acc = per_net_accuracy(model, data.x_train, data.y_train)
    _, final_loss = evaluate(model, data.x_test, data.y_test, stacked_cross_entropy)
    return {
        "norm": norm,
        "batch": batch,
        "lr": lr,
        "steps": len(hist.loss),
        "diverged": hist.diverged,
        "seeds": list(seeds),
        "test_error": [1.0 - a if not hist.diverged else math.nan for a in test],
        "train_error": [1.0 - a if not hist.diverged else math.nan for a in train_acc],
        "test_loss_sum_over_seeds": final_loss,
        "seconds": hist.seconds,
    }


def _errors(runs: list[dict], norm: str, batch: int, key: str = "test_error") -> list[float]:
    return [num(e) for r in runs if r["norm"] == norm and int(r["batch"]) == batch for e in r[key]]


class BnSmallBatch(Claim):
    id = "bn-small-batch"
    title = "BN degrades at small batch; GN does not"
    source = "Wu & He 2018 (Group Normalization); 'Normalizations' lecture"
    statement = "BN degrades at small batch sizes; GN/LN do not depend on batch size"
    protocol = (
        f"1-D CNN {'-'.join(map(str, CHANNELS))} on a {N_TRAIN}-example mnist1d subset, BN vs GN(8 groups), batch "
        f"in {BATCH_SIZES}, {EPOCHS} epochs each, SGD momentum {MOMENTUM}, lr = {BASE_LR} x batch/{BASE_BATCH}; "
        "test error in eval mode; seeds stacked as one grouped network"
    )
    rule = (
        f"BN error at batch 2 >= BN error at 128 + {BN_GAP * 100:g} points; GN spread across batch sizes <= "
        f"{GN_SPREAD * 100:g} points (seed means)"
    )

    def run(self, ctx: Context) -> dict:
        base = mnist1d(channel_dim=True)
        n = ctx.pick(N_QUICK, N_TRAIN)
        data = stacked_data(
            Dataset(f"mnist1d-{n}", base.x_train[:n], base.y_train[:n], base.x_test, base.y_test, 10), ctx.seeds
        )
        epochs = ctx.pick(1, EPOCHS)
        runs = []
        with one_thread():
            for norm in NORMS:
                for batch in BATCH_SIZES:
                    r = _run(data, norm, batch, ctx.seeds, epochs)
                    ctx.log(
                        f"  {norm} batch {batch}: test error {[round(e, 3) for e in r['test_error']]} "
                        f"({r['steps']} steps, {r['seconds']:.1f}s)"
                    )
                    runs.append(r)
        return {
            "runs": runs,
            "batch_sizes": list(BATCH_SIZES),
            "norms": list(NORMS),
            "epochs": epochs,
            "n_train": n,
            "n_seeds": len(ctx.seeds),
            "quick": ctx.quick,
        }

    def verdict(self, evidence: dict) -> Verdict:
        runs = evidence["runs"]
        batches = [int(b) for b in evidence["batch_sizes"]]
        if 2 not in batches or 128 not in batches:
            return Verdict("inconclusive", "needs batch sizes 2 and 128")
        bn, gn = evidence["norms"]
        numbers = {}
        means = {}
        for n in (bn, gn):
            for b in batches:
                errs = _errors(runs, n, b)
                m, sd = mean_std(errs)
                if not errs or not all(math.isfinite(e) for e in errs):
                    m = math.nan  # a diverged run counts against its setting
                means[n, b] = m
                numbers[f"test_error[{n}, batch={b}]"] = m
                numbers[f"test_error_std[{n}, batch={b}]"] = sd
                numbers[f"train_error[{n}, batch={b}]"] = mean_std(_errors(runs, n, b, "train_error"))[0]
        gap = means[bn, 2] - means[bn, 128]
        gn_vals = [means[gn, b] for b in batches]
        spread = max(gn_vals) - min(gn_vals) if all(math.isfinite(v) for v in gn_vals) else math.nan
        numbers["bn_gap_2_vs_128"] = gap
        numbers["gn_spread"] = spread
        ok_bn, ok_gn = gap >= BN_GAP, spread <= GN_SPREAD
        reason = (
            f"BN error {means[bn, 2]:.3f} at batch 2 vs {means[bn, 128]:.3f} at 128 (gap {gap * 100:+.1f} pts, need "
            f">= {BN_GAP * 100:g}); GN spread {spread * 100:.1f} pts (need <= {GN_SPREAD * 100:g}; GN error "
            f"{min(gn_vals):.3f}..{max(gn_vals):.3f})"
        )
        v = Verdict("holds" if ok_bn and ok_gn else "fails", reason, numbers)
        if evidence.get("quick"):
            return quick_verdict(
                v, f"{evidence['epochs']} epoch of {evidence.get('n_train')}, {evidence['n_seeds']} seed"
            )
        return v

    def plot(self, evidence: dict, fig) -> None:
        from matplotlib.ticker import NullFormatter

        runs = evidence["runs"]
        batches = [int(b) for b in evidence["batch_sizes"]]
        ax1, ax2 = fig.subplots(1, 2)
        for i, n in enumerate(evidence["norms"]):
            per_seed = list(zip(*[_errors(runs, n, b) for b in batches], strict=True))
            plot_band(ax1, batches, [list(s) for s in per_seed], n, color=f"C{i}", marker="o")
            per_seed_tr = list(zip(*[_errors(runs, n, b, "train_error") for b in batches], strict=True))
            plot_band(ax2, batches, [list(s) for s in per_seed_tr], n, color=f"C{i}", marker="o")
        for ax, what in ((ax1, "test error (eval mode)"), (ax2, "train error (eval mode)")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set(xlabel="batch size", ylabel=what, title=f"{what}, same {evidence['epochs']} epochs")
            ax.legend(fontsize=8)


CLAIM = BnSmallBatch()
