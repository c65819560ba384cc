"""Step time of normlab.optim against torch.optim on the same model: ``opt.step()`` only, gradients fixed.

    python benchmarks/optim.py                   # full run (about a minute)
    python benchmarks/optim.py --quick           # a smoke run (seconds)
    python benchmarks/optim.py --out benchmarks/RESULTS-optim.md

Each model gets fixed random gradients once; every optimizer then steps on
its own copy of the parameters, interleaved round-robin in one process (see
:mod:`normlab.bench`), with the same foreach setting as its torch reference.
Reported: the minimum step time of each, and its ratio to the torch
optimizer it generalizes (SGD with momentum for LARS and the gradient
wrappers, AdamW for LAMB and LANS). The issue's target is at most 1.5x with
foreach. ``--out`` writes (or replaces) the section "Optimizer step" of the
given markdown file.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable

import torch
from torch import nn

from normlab.bench import machine_info, replace_section, set_threads, time_interleaved
from normlab.optim import LAMB, LANS, LARS, GradientCentralization, GradientNormalization

HEADING = "## Optimizer step (normlab.optim)"
NOTE = (
    "The 1.5x target is not met by LARS, LAMB and LANS at this size on one CPU thread. Each pass over a parameter is "
    "memory-bound, and these optimizers make more of them than their torch reference: the norms of the weight and of "
    "the gradient or update (two extra reads), the rescaled update as a temporary, and for LANS a second half-step. "
    "Per-parameter scalar work is already vectorized (the trust ratios and bias corrections of a foreach step are one "
    "stacked op each). What is left: fusing the passes (torch.compile of the step, or in-place foreach updates).\n"
)


def resnet_like(width: int = 116) -> nn.Module:
    """A small ResNet-like CNN (conv stem, 4 residual blocks of two 3x3 convs + BN, linear head): ~1M parameters."""

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
            )

        def forward(self, x):
            return torch.relu(x + self.body(x))

    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        *[Block(width) for _ in range(4)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    )


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )


def optimizers(foreach: bool) -> dict[str, tuple[Callable, str]]:
    """name -> (factory over params, the torch reference's name)."""
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=foreach)
    return {
        "torch SGD": (lambda ps: torch.optim.SGD(ps, **sgd), "torch SGD"),
        "torch AdamW": (lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, foreach=foreach), "torch AdamW"),
        "LARS": (lambda ps: LARS(ps, lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=foreach), "torch SGD"),
        "GC(SGD)": (lambda ps: GradientCentralization(torch.optim.SGD(ps, **sgd), foreach=foreach), "torch SGD"),
        "GradNorm(SGD)": (lambda ps: GradientNormalization(torch.optim.SGD(ps, **sgd), foreach=foreach), "torch SGD"),
        "LAMB": (lambda ps: LAMB(ps, lr=1e-3, weight_decay=0.01, foreach=foreach), "torch AdamW"),
        "LANS": (lambda ps: LANS(ps, lr=1e-3, weight_decay=0.01, foreach=foreach), "torch AdamW"),
    }


def bench(model: nn.Module, foreach: bool, reps: int, warmup: int) -> dict[str, float]:
    torch.manual_seed(0)
    grads = [torch.randn_like(p) * 1e-3 for p in model.parameters()]
    fns, names = [], []
    for name, (make, _) in optimizers(foreach).items():
        params = [nn.Parameter(p.detach().clone()) for p in model.parameters()]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt = make(params)
        fns.append(opt.step)
        names.append(name)
    return dict(zip(names, time_interleaved(fns, reps=reps, warmup=warmup), strict=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: few repetitions")
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="markdown file whose 'Optimizer step' section is written")
    args = ap.parse_args(argv)
    threads = set_threads(args.threads)
    reps, warmup = (5, 1) if args.quick else (args.reps, 10)
    models = {"ResNet-like CNN, width 116": resnet_like(), "MLP 784-512x3-10": mlp()}
    rows = []
    for label, model in models.items():
        n = sum(p.numel() for p in model.parameters())
        for foreach in (True, False):
            times = bench(copy.deepcopy(model), foreach, reps, warmup)
            refs = {name: ref for name, (_, ref) in optimizers(foreach).items()}
            for name, t in times.items():
                ratio = t / times[refs[name]]
                rows.append(
                    f"| {label} ({n / 1e6:.2f}M params) | {foreach} | {name} | {t * 1e3:.3f} | "
                    f"{refs[name]} | {ratio:.2f} |"
                )
                print(rows[-1], flush=True)
    info = machine_info()
    section = (
        f"{HEADING}\n\n"
        "`opt.step()` alone (gradients fixed), fp32 CPU, minimum over "
        f"{reps} interleaved repetitions (`python benchmarks/optim.py --threads {threads}`). Ratio: to the torch "
        "optimizer each one generalizes, at the same foreach setting; target <= 1.5 with foreach.\n\n"
        "| model | foreach | optimizer | step (ms) | reference | ratio |\n|---|---|---|---:|---|---:|\n"
        + "\n".join(rows)
        + "\n\nMachine: "
        + ", ".join(f"{k} {v}" for k, v in info.items())
        + ".\n\n"
        + NOTE
    )
    if args.out:
        replace_section(args.out, HEADING, section, title="# normlab.optim benchmarks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
