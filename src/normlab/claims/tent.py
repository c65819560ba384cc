"""tent: test-batch statistics in BN lower the error on corrupted data; test-time entropy minimization lowers it more.

Sources: Kolter & Chen's lecture (re-estimating BN statistics on the test
batch is a cheap fix for distribution shift); Wang, Shelhamer, Liu, Olshausen
& Darrell 2021, "Tent: Fully Test-Time Adaptation by Entropy Minimization".

Protocol: one cell per (data set, seed): a BN CNN trained on clean data only
(He init, SGD with momentum), then every corruption at ``severity`` (Tent's
headline setting) on a test stream in a seeded random order, in test batches.
Three predictors: **source** (eval mode, BN running statistics); **norm** (BN
normalizes each test batch with its own statistics, nothing else changes);
**tent** (as norm, plus online entropy minimization: each batch is predicted
by the forward pass, then one Adam step on the mean prediction entropy updates
BN's affine parameters only, carried to the next batch; reset per corruption).

- MNIST-1D: the 1-D CNN of :class:`normlab.models.CNN`, corruptions of
  :func:`normlab.data.corrupt_signals`. The test stream is ``stream`` freshly
  generated MNIST-1D signals (the mnist1d package's generator with the
  default arguments and seed ``stream_seed``, disjoint from the training
  draw), so Tent takes ``stream / test_batch`` updates per corruption
  (quick mode, ``stream = 0``: the test split, no generation);
- digits (8x8): a 2-D CNN, the CIFAR-10-C corruptions of
  :func:`normlab.data.corrupt_images` on the held-out test split, which cannot
  be lengthened: test batches of ``digits_test_batch`` give the updates.

Departures from the first version (CLAIMS.md "changes to the contract"):
the first version had 16 and 8 Tent updates per corruption (the whole test
split in batches of 64); now at least 50 (CLAIMS.md), by a longer generated
stream on MNIST-1D and smaller test batches on digits. Part (a) is judged on
the corruptions that are not a per-signal affine map of the input
(``affine``): BN's test-batch statistics undo those almost by construction;
their gain is reported, not judged. Per-corruption gains are in the numbers.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import torch
from torch import nn

from ..data import corrupt_images, corrupt_signals, digits, mnist1d
from ..models import CNN, init_weights
from ..train import evaluate, seed_everything, train
from .base import Claim, Verdict, fmt, group, interval_part, per_seed, select, sweep
from .recipes import nanmean, num

METHODS = ("source", "norm", "tent")
_CACHE: dict = {}


def mnist1d_stream(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` fresh MNIST-1D signals ``(n, 1, 40)`` and labels from the package's generator (default arguments).

    The global NumPy and Python RNGs, which the generator reseeds, are restored. Cached per process.
    """
    key = ("stream", n, seed)
    if key not in _CACHE:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples, args.train_split, args.seed = n, 0.0, seed
        state, py_state = np.random.get_state(), random.getstate()
        try:
            d = make_dataset(args)
        finally:
            np.random.set_state(state)
            random.setstate(py_state)
        x = torch.from_numpy(np.asarray(d["x_test"], dtype=np.float32))[:, None, :]
        _CACHE[key] = (x, torch.from_numpy(np.asarray(d["y_test"], dtype=np.int64)))
    return _CACHE[key]


def _dataset(name: str):
    if name not in _CACHE:
        _CACHE[name] = mnist1d(channel_dim=True) if name == "mnist1d" else digits(image=True)
    return _CACHE[name]


def _bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _test_stats_model(model: nn.Module) -> nn.Module:
    """A copy whose BN layers normalize with the batch's statistics and leave the running statistics alone."""
    m = copy.deepcopy(model)
    m.eval()
    for bn in _bn_layers(m):
        bn.train()
        bn.track_running_stats = False
    return m


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of the softmax predictions."""
    logp = logits.log_softmax(dim=1)
    return -(logp.exp() * logp).sum(dim=1).mean()


def predict_error(model, x, y, order, method: str, batch: int, lr: float, betas) -> tuple[float, int]:
    """(error, updates) of ``method`` (source / norm / tent) on ``(x, y)`` visited in ``order``; ``model`` unchanged."""
    if method == "source":
        acc, _ = evaluate(model, x, y)
        return 1.0 - acc, 0
    m = _test_stats_model(model)
    opt = None
    if method == "tent":
        for q in m.parameters():
            q.requires_grad_(False)
        params = []
        for bn in _bn_layers(m):
            for q in (bn.weight, bn.bias):
                if q is not None:
                    q.requires_grad_(True)
                    params.append(q)
        opt = torch.optim.Adam(params, lr=lr, betas=tuple(betas))
    correct, updates = 0, 0
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        xb, yb = x[idx], y[idx]
        if opt is None:
            with torch.no_grad():
                out = m(xb)
        else:
            out = m(xb)
            opt.zero_grad(set_to_none=True)
            entropy(out).backward()
            opt.step()
            updates += 1
        correct += int((out.detach().argmax(1) == yb).sum())
    return 1.0 - correct / len(y), updates


class Tent(Claim):
    id = "tent"
    title = "Test-batch BN statistics and Tent under corruption"
    source = "Kolter & Chen lecture; Wang et al. 2021 (TENT)"
    statement = (
        "(a) using test-batch statistics in BN at test time lowers error on shifted/corrupted data; (b) adapting "
        "BN's affine parameters by test-time entropy minimization lowers it further (TENT)"
    )
    params = {
        "datasets": ("mnist1d", "digits"),
        "mnist1d_channels": (32, 32, 64),
        "mnist1d_steps": 1500,
        "mnist1d_corruptions": ("noise", "shift", "scale", "contrast"),
        "digits_channels": (16, 32, 32),
        "digits_steps": 600,
        "digits_corruptions": ("gaussian_noise", "contrast", "brightness", "pixelate", "defocus_blur"),
        "affine": ("shift", "scale", "contrast"),
        "lr": 0.05,
        "momentum": 0.9,
        "batch": 64,
        "severity": 5,
        "stream": 3200,
        "stream_seed": 12345,
        "test_batch": 64,
        "digits_test_batch": 8,
        "tent_lr": 1e-3,
        "tent_betas": (0.9, 0.999),
        "margin_b": 0.01,
    }
    quick = {
        "datasets": ("mnist1d",),
        "mnist1d_steps": 60,
        "mnist1d_corruptions": ("noise",),
        "stream": 0,
    }
    seeds = 5
    min_seeds = 5
    data = ("mnist1d", "digits")
    protocol = (
        "BN CNNs trained on clean mnist1d (channels {mnist1d_channels}; {mnist1d_steps} steps) and digits "
        "(channels {digits_channels}; {digits_steps} steps), SGD lr {lr:g} momentum {momentum:g} batch {batch}; "
        "corruptions at severity {severity}: mnist1d {mnist1d_corruptions} on a stream of {stream} fresh "
        "signals (0: the test split) in test batches of {test_batch}; digits {digits_corruptions} on the test "
        "split in batches of {digits_test_batch}; "
        "source (running stats) vs norm (batch stats) vs tent (Adam {tent_lr:g} on BN affine, online)"
    )
    rule = (
        "(a) per seed, mean over the non-affine corruptions of error(source) - error(norm) > 0; (b) per seed, mean "
        "over every corruption of error(norm) - error(tent) >= {margin_b:g} (intervals over seeds); affine "
        "corruptions ({affine}) reported for (a), not judged"
    )

    def grid(self, p: dict, seeds: list[int], rows: list[dict]) -> list[dict]:
        return [] if rows else sweep(seeds, dataset=p["datasets"])

    def cell(self, p: dict, config: dict) -> list[dict]:
        name, seed = config["dataset"], config["seed"]
        data = _dataset(name)
        seed_everything(seed)
        spatial = 1 if name == "mnist1d" else 2
        model = CNN(1, 10, channels=tuple(p[f"{name}_channels"]), spatial=spatial, norm="bn")
        init_weights(model, generator=torch.Generator().manual_seed(seed))
        opt = torch.optim.SGD(model.parameters(), lr=p["lr"], momentum=p["momentum"])
        steps = p[f"{name}_steps"]
        train(model, data, opt, steps=steps, batch_size=p["batch"], seed=seed, eval_every=steps, progress=False)
        model.eval()
        if name == "mnist1d" and p["stream"]:
            x_test, y_test = mnist1d_stream(p["stream"], p["stream_seed"])
            batch = p["test_batch"]
        else:
            x_test, y_test = data.x_test, data.y_test
            batch = p["digits_test_batch"]
        order = torch.randperm(len(y_test), generator=torch.Generator().manual_seed(seed))
        rows = []
        for k, corruption in enumerate(("clean",) + tuple(p[f"{name}_corruptions"])):
            gen = torch.Generator().manual_seed(1000 * seed + k)
            if corruption == "clean":
                x = x_test
            elif name == "digits":
                x = corrupt_images(x_test, corruption, p["severity"], generator=gen)
            else:
                x = corrupt_signals(x_test, corruption, p["severity"], generator=gen)
            row = {"corruption": corruption, "affine": corruption in p["affine"]}
            for method in METHODS:
                err, updates = predict_error(model, x, y_test, order, method, batch, p["tent_lr"], p["tent_betas"])
                row[method] = err
                if method == "tent":
                    row["updates"] = updates
            rows.append(row)
        return rows

    def verdict(self, p: dict, rows: list[dict]) -> Verdict:
        corrupted = [r for r in rows if r["corruption"] != "clean"]
        if not corrupted:
            return Verdict("inconclusive", "no corrupted test sets were evaluated")
        by_seed = group(corrupted, "seed")

        def seed_rows(pick):
            return [{"seed": s, "v": pick(rs)} for (s,), rs in by_seed.items()]

        def gain(rs, a, b):
            return nanmean([num(r[a]) - num(r[b]) for r in rs]) if rs else float("nan")

        gain_a = seed_rows(lambda rs: gain([r for r in rs if not r["affine"]], "source", "norm"))
        gain_b = seed_rows(lambda rs: gain(rs, "norm", "tent"))
        part_a = interval_part(
            "gain_a", per_seed(gain_a, "v"), ">", 0.0, what="(a) error source - norm, non-affine corruptions"
        )
        part_b = interval_part(
            "gain_b", per_seed(gain_b, "v"), ">=", p["margin_b"], what="(b) error norm - tent, all corruptions"
        )
        numbers = {}
        for part in (part_a, part_b):
            numbers[part.name] = part.estimate
            numbers[part.name + "_low"] = part.low
            numbers[part.name + "_high"] = part.high
        affine = [r for r in corrupted if r["affine"]]
        affine_gain = nanmean([num(r["source"]) - num(r["norm"]) for r in affine]) if affine else float("nan")
        numbers["gain_a_affine"] = affine_gain
        for m in METHODS:
            numbers[f"error_{m}"] = nanmean([num(r[m]) for r in corrupted])
        per_corruption = []
        for (ds, c), rs in group(corrupted, "dataset", "corruption").items():
            ga, gb = gain(rs, "source", "norm"), gain(rs, "norm", "tent")
            numbers[f"gain_a[{ds}/{c}]"] = ga
            numbers[f"gain_b[{ds}/{c}]"] = gb
            per_corruption.append(f"{ds}/{c} {100 * ga:+.1f}/{100 * gb:+.1f}")
        numbers["min_updates"] = float(min(int(r["updates"]) for r in corrupted))
        note = (
            f"mean error source {fmt(numbers['error_source'])}, norm {fmt(numbers['error_norm'])}, tent "
            f"{fmt(numbers['error_tent'])}; (a) on affine corruptions {100 * affine_gain:+.1f} points (not judged); "
            f"per corruption gain (a)/(b) in points: {', '.join(per_corruption)}; tent updates per corruption "
            f">= {int(numbers['min_updates'])}"
        )
        return Verdict.combine([part_a, part_b], numbers=numbers, note=note)

    def plot(self, p: dict, rows: list[dict], fig) -> None:
        ax1, ax2 = fig.subplots(1, 2, width_ratios=(3, 1))
        keys = list(group(rows, "dataset", "corruption"))
        width = 0.27
        for j, method in enumerate(METHODS):
            means = [nanmean([num(r[method]) for r in select(rows, dataset=ds, corruption=c)]) for ds, c in keys]
            ax1.bar([i + (j - 1) * width for i in range(len(keys))], means, width, label=method, color=f"C{j}")
        labels = [f"{'1d' if ds == 'mnist1d' else 'img'}:{c}" for ds, c in keys]
        ax1.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        ax1.set_ylabel(f"test error, severity {p['severity']} (seed mean)")
        ax1.legend(fontsize=8)
        corrupted = [r for r in rows if r["corruption"] != "clean"]
        for i, key in enumerate(("a", "b")):
            vals = []
            for (_s,), rs in group(corrupted, "seed").items():
                if key == "a":
                    rs = [r for r in rs if not r["affine"]]
                    vals.append(100 * nanmean([num(r["source"]) - num(r["norm"]) for r in rs]))
                else:
                    vals.append(100 * nanmean([num(r["norm"]) - num(r["tent"]) for r in rs]))
            ax2.bar(i, nanmean(vals), color=f"C{i + 3}", alpha=0.6)
            ax2.scatter([i] * len(vals), vals, color="k", s=8, zorder=3)
        ax2.axhline(100 * p["margin_b"], color="k", ls="--", lw=0.8)
        ax2.axhline(0, color="gray", lw=0.8)
        ax2.set_xticks([0, 1], ["(a)", "(b)"])
        ax2.set_ylabel("gain per seed (points)")


CLAIM = Tent()
