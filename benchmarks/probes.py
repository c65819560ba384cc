"""Overhead of ActivationProbe on a training step (forward + backward + SGD step).

    python benchmarks/probes.py                  # full run (about a minute)
    python benchmarks/probes.py --quick          # a smoke run (seconds)
    python benchmarks/probes.py --out benchmarks/RESULTS-analysis.md

Three copies of each model (same initialization) train on the same batch,
interleaved round-robin in one process (see :mod:`normlab.bench`):

- ``none``: no probe;
- ``attached``: an ``ActivationProbe`` on every leaf module whose ``steps``
  never match (the hooks run and return at once);
- ``recording``: the same probe recording every step (statistics of every
  layer's output, gradient norms, one ``tolist()`` per step at ``probe.step``).

Reported: the minimum time of a step for each, and ``attached/none`` and
``recording/none`` (ratios of minimum times). ``--out`` writes (or replaces)
the section "Probes overhead" of the given markdown file and leaves its other
sections alone.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from normlab.analysis import ActivationProbe
from normlab.bench import machine_info, replace_section, set_threads, time_interleaved

HEADING = "## Probes overhead (normlab.analysis.probes)"


@dataclass
class Case:
    name: str
    make: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    num_classes: int


def _mlp(width: int, d_in: int, depth: int = 3) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        layers: list[nn.Module] = []
        d = d_in
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, 10))
        return nn.Sequential(*layers)

    return make


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


CASES = [
    Case("tiny MLP 32-64x3 (worst case: hooks vs little work)", _mlp(64, 32), (32, 32), (16, 32), 10),
    Case("MLP 784-256x3, batch 128", _mlp(256, 784), (128, 784), (32, 784), 10),
    Case("CNN 3 convs + BN, 32x32, batch 64", _cnn, (64, 3, 32, 32), (8, 3, 16, 16), 10),
]


def _step_fn(model: nn.Module, x: torch.Tensor, t: torch.Tensor, probe: ActivationProbe | None):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    counter = [0]

    def run():
        if probe is not None:
            probe.step(counter[0])
            counter[0] += 1
            if len(probe._records) > 20000:  # bound memory over long runs (the cost of clear is not timed apart)
                probe.clear()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), t).backward()
        opt.step()

    return run


def bench_case(case: Case, quick: bool, reps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    base = case.make()
    models = [base, copy.deepcopy(base), copy.deepcopy(base)]
    shape = case.quick_shape if quick else case.input_shape
    x = torch.randn(*shape)
    t = torch.randint(0, case.num_classes, (shape[0],))
    attached = ActivationProbe(models[1], steps=lambda s: False)
    recording = ActivationProbe(models[2], steps=None)
    fns = [_step_fn(models[0], x, t, None), _step_fn(models[1], x, t, attached), _step_fn(models[2], x, t, recording)]
    none_t, att_t, rec_t = time_interleaved(fns, reps=reps, warmup=warmup)
    hooked = len(recording.layers)
    recorded = len(recording.records)
    attached.remove()
    recording.remove()
    return {
        "case": case.name,
        "shape": tuple(shape),
        "layers": hooked,
        "none_ms": none_t * 1e3,
        "attached_ms": att_t * 1e3,
        "recording_ms": rec_t * 1e3,
        "attached_ratio": att_t / none_t,
        "recording_ratio": rec_t / none_t,
        "records": recorded,
    }


def to_markdown(rows: list[dict], info: dict, reps: int, cmd: str, note: str | None = None) -> str:
    lines = [
        HEADING,
        "",
        "One SGD training step (forward, backward, `opt.step()`), fp32 CPU, probes on every leaf module.",
        "`attached`: hooks installed, step not recorded; `recording`: every step recorded.",
        f"Ratios of minimum times over {reps} interleaved repetitions (`{cmd}`).",
        "",
        "| model | input | hooked layers | none (ms) | attached (ms) | recording (ms) "
        "| attached/none | recording/none |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {'x'.join(map(str, r['shape']))} | {r['layers']} | {r['none_ms']:.3f} | "
            f"{r['attached_ms']:.3f} | {r['recording_ms']:.3f} | {r['attached_ratio']:.3f} | "
            f"{r['recording_ratio']:.3f} |"
        )
    lines += [
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".",
        "",
    ]
    if note:
        lines += [f"Note: {note}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small inputs, few reps (smoke run)")
    ap.add_argument("--out", help="write/replace the 'Probes overhead' section of this markdown file")
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 200; quick: 10)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default 10; quick: 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the machine's cores)")
    ap.add_argument("--note", default=None, help="a sentence added under the table (conditions of the run)")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    reps = args.reps or (10 if args.quick else 200)
    warmup = args.warmup or (2 if args.quick else 10)
    rows = []
    for case in CASES:
        r = bench_case(case, args.quick, reps, warmup)
        rows.append(r)
        print(
            f"{r['case']:<55} none {r['none_ms']:8.3f} ms  attached x{r['attached_ratio']:.3f}  "
            f"recording x{r['recording_ratio']:.3f}",
            flush=True,
        )
    cmd = "python benchmarks/probes.py" + (" --quick" if args.quick else "")
    cmd += "".join(f" --{k} {v}" for k, v in (("reps", args.reps), ("threads", args.threads)) if v is not None)
    md = to_markdown(rows, machine_info(), reps, cmd, args.note)
    if args.out:
        replace_section(args.out, HEADING, md, "# normlab.analysis benchmarks")
        print(f"wrote section to {args.out}")
    else:
        print()
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
