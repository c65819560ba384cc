"""Benchmark every normlab.nn norm against torch's equivalent and a memory copy.

    python benchmarks/norms.py            # full shapes, many interleaved reps (several minutes)
    python benchmarks/norms.py --quick    # small shapes, few reps (a few seconds; a smoke run)
    python benchmarks/norms.py --out benchmarks/RESULTS.md

Ratios are of minimum times over interleaved repetitions in one process (see
:mod:`normlab.bench`): ``fwd/torch < 1`` means normlab is faster than torch;
``/copy`` is the time relative to ``y.copy_(x)`` of the same tensor (the
memory-bandwidth floor). Forward runs under ``torch.no_grad()``;
forward+backward is ``y = m(x); y.backward(g)`` with ``x.requires_grad``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import normlab
from normlab.bench import CacheFlusher, compare, machine_info, retain_freed_memory, set_threads


class TimmLayerNorm2d(nn.LayerNorm):
    """The timm/ConvNeXt reference: permute to channels-last, F.layer_norm, permute back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


@dataclass
class Case:
    name: str  # the normlab module
    shape: tuple[int, ...]
    quick_shape: tuple[int, ...]
    make: Callable[[int], tuple[nn.Module, nn.Module]]  # C -> (normlab module, reference module)
    mode: str = "train"  # "train" or "eval"
    channels_last: bool = False
    reference: str = "torch"  # what the reference is

    @property
    def label(self) -> str:
        return self.mode + (", channels_last" if self.channels_last else "")


def _twin(ours: nn.Module, theirs: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Same parameters and buffers in both (torch's module loads normlab's state_dict strictly)."""
    with torch.no_grad():
        for p in ours.parameters():
            p.uniform_(0.5, 1.5)
        for name, b in ours.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()), strict=True)
    return ours, theirs


def cases() -> list[Case]:
    NN = normlab.nn
    img, img_q = (32, 64, 48, 48), (2, 64, 8, 8)
    seq, seq_q = (8192, 768), (64, 96)
    img1d, img1d_q = (32, 64, 48 * 48), (2, 64, 64)
    img3d, img3d_q = (4, 64, 8, 48, 48), (2, 64, 2, 4, 4)
    lrn, lrn_q = (8, 64, 48, 48), (2, 64, 8, 8)
    out = [
        Case("BatchNorm1d", seq, seq_q, lambda c: _twin(NN.BatchNorm1d(c), nn.BatchNorm1d(c))),
        Case("BatchNorm1d", seq, seq_q, lambda c: _twin(NN.BatchNorm1d(c), nn.BatchNorm1d(c)), mode="eval"),
        Case("BatchNorm1d", img1d, img1d_q, lambda c: _twin(NN.BatchNorm1d(c), nn.BatchNorm1d(c))),
        Case("BatchNorm2d", img, img_q, lambda c: _twin(NN.BatchNorm2d(c), nn.BatchNorm2d(c))),
        Case("BatchNorm2d", img, img_q, lambda c: _twin(NN.BatchNorm2d(c), nn.BatchNorm2d(c)), channels_last=True),
        Case("BatchNorm2d", img, img_q, lambda c: _twin(NN.BatchNorm2d(c), nn.BatchNorm2d(c)), mode="eval"),
        Case(
            "BatchNorm2d",
            img,
            img_q,
            lambda c: _twin(NN.BatchNorm2d(c), nn.BatchNorm2d(c)),
            mode="eval",
            channels_last=True,
        ),
        Case("BatchNorm3d", img3d, img3d_q, lambda c: _twin(NN.BatchNorm3d(c), nn.BatchNorm3d(c))),
        Case("GroupNorm(32)", img, img_q, lambda c: _twin(NN.GroupNorm(32, c), nn.GroupNorm(32, c))),
        Case("InstanceNorm1d", img1d, img1d_q, lambda c: _twin(NN.InstanceNorm1d(c), nn.InstanceNorm1d(c))),
        Case("InstanceNorm2d", img, img_q, lambda c: _twin(NN.InstanceNorm2d(c), nn.InstanceNorm2d(c))),
        Case(
            "InstanceNorm2d",
            img,
            img_q,
            lambda c: _twin(NN.InstanceNorm2d(c), nn.InstanceNorm2d(c)),
            channels_last=True,
        ),
        Case(
            "InstanceNorm2d(affine)",
            img,
            img_q,
            lambda c: _twin(NN.InstanceNorm2d(c, affine=True), nn.InstanceNorm2d(c, affine=True)),
        ),
        Case("InstanceNorm3d", img3d, img3d_q, lambda c: _twin(NN.InstanceNorm3d(c), nn.InstanceNorm3d(c))),
        Case("LayerNorm", seq, seq_q, lambda c: _twin(NN.LayerNorm(c), nn.LayerNorm(c))),
        Case("RMSNorm", seq, seq_q, lambda c: _twin(NN.RMSNorm(c), nn.RMSNorm(c))),
        Case(
            "LocalResponseNorm(5)",
            lrn,
            lrn_q,
            lambda c: (NN.LocalResponseNorm(5), nn.LocalResponseNorm(5)),
        ),
        Case(
            "LayerNorm2d",
            img,
            img_q,
            lambda c: _twin(NN.LayerNorm2d(c), TimmLayerNorm2d(c)),
            reference="timm",
        ),
        Case(
            "LayerNorm2d",
            img,
            img_q,
            lambda c: _twin(NN.LayerNorm2d(c), TimmLayerNorm2d(c)),
            channels_last=True,
            reference="timm",
        ),
    ]
    return out


def run_case(case: Case, quick: bool, reps: int, warmup: int, flush: CacheFlusher | bool = True):
    shape = case.quick_shape if quick else case.shape
    torch.manual_seed(0)
    ours, theirs = case.make(shape[-1] if len(shape) == 2 else shape[1])
    ours.train(case.mode == "train")
    theirs.train(case.mode == "train")
    x = torch.randn(shape)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return shape, compare(ours, theirs, x, reps=reps, warmup=warmup, flush=flush)


HEADER = (
    "| module | shape | mode | ref | fwd / ref | fwd / copy | ref fwd / copy "
    "| fwd+bwd / ref | fwd+bwd / copy | ref fwd+bwd / copy | copy ms |"
)
SEP = "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|"


def row(case: Case, shape, r) -> str:
    cells = [
        case.name,
        "x".join(map(str, shape)),
        case.label,
        case.reference,
        f"{r.fwd_ratio_to_ref:.2f}",
        f"{r.fwd_ratio_to_copy:.2f}",
        f"{r.ref_fwd_ratio_to_copy:.2f}",
        f"{r.fwdbwd_ratio_to_ref:.2f}",
        f"{r.fwdbwd_ratio_to_copy:.2f}",
        f"{r.ref_fwdbwd_ratio_to_copy:.2f}",
        f"{1e3 * r.fwd_copy:.3f}",
    ]
    return "| " + " | ".join(cells) + " |"


# (description, which rows, which ratio, limit): ratio <= limit is met.
TARGETS = [
    ("every module with a torch twin: forward <= 1.05x torch", lambda c: c.reference == "torch", "fwd/ref", 1.05),
    ("every module with a torch twin: fwd+bwd <= 1.05x torch", lambda c: c.reference == "torch", "fwdbwd/ref", 1.05),
    ("InstanceNorm2d forward >= 2x faster than torch", lambda c: c.name == "InstanceNorm2d", "fwd/ref", 0.5),
    ("RMSNorm forward >= 2x faster than torch", lambda c: c.name == "RMSNorm", "fwd/ref", 0.5),
    (
        "BatchNorm2d training forward <= 2x copy",
        lambda c: c.name == "BatchNorm2d" and c.mode == "train" and not c.channels_last,
        "fwd/copy",
        2.0,
    ),
    ("LayerNorm forward <= 1.3x copy", lambda c: c.name == "LayerNorm", "fwd/copy", 1.3),
]


def check_targets(results) -> list[str]:
    """Markdown lines: each target, met or not, with the numbers (min ratio; paired median in brackets)."""
    lines = []
    for desc, which, key, limit in TARGETS:
        rows = [(c, shape, r) for c, shape, r in results if which(c)]
        if not rows:
            continue
        worst = max(rows, key=lambda t: t[2].ratios()[key])
        met = all(r.ratios()[key] <= limit for _, _, r in rows)
        detail = ", ".join(
            f"{c.name} {c.label}: {r.ratios()[key]:.2f} [{r.paired[key]:.2f}]" for c, _, r in rows if len(rows) <= 3
        )
        if len(rows) > 3:
            misses = [(c, r) for c, _, r in rows if r.ratios()[key] > limit]
            wc, wr = worst[0], worst[2]
            detail = f"worst {wc.name} {wc.label}: {wr.ratios()[key]:.2f} [{wr.paired[key]:.2f}]"
            if misses:
                detail += "; over the limit: " + ", ".join(
                    f"{c.name} {c.label} {r.ratios()[key]:.2f} [{r.paired[key]:.2f}]" for c, r in misses
                )
        lines.append(f"- {'MET' if met else 'NOT MET'}: {desc} ({key} <= {limit}): {detail}")
    return lines


def _cpu_pressure_total() -> int | None:
    """Microseconds some runnable task waited for a CPU (Linux PSI), or None."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().split("total=")[1])
    except (OSError, IndexError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes, few reps (smoke run)")
    ap.add_argument("--out", help="write the table, machine info and target checks to this file (markdown)")
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 200; quick: 5)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default 5; quick: 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the machine's cores)")
    ap.add_argument("--only", default=None, help="run only modules whose name contains this string")
    ap.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's trimming on (freed memory returned to the OS and faulted in again: noisier)",
    )
    ap.add_argument("--no-flush", action="store_true", help="do not evict the caches before each timed call")
    args = ap.parse_args(argv)

    set_threads(args.threads)
    retained = False if args.default_malloc else retain_freed_memory()
    flush = False if args.no_flush else CacheFlusher()
    cache_note = "warm caches"
    if flush:
        cache_note = f"caches flushed ({flush.buffer.numel() * 4 >> 20} MiB read) before each timed call"
    reps = args.reps or (5 if args.quick else 200)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    info = machine_info()
    meta = (
        f"Machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']}, {info['threads']} threads; "
        f"python {info['python']}; {info['date']}; {reps} interleaved reps (min), {warmup} warm-up; "
        f"{'quick' if args.quick else 'full'} mode; float32; "
        f"glibc trimming {'off (freed memory kept in the process)' if retained else 'on (default malloc)'}; "
        f"{cache_note}."
    )
    print(meta)
    print()
    print(HEADER)
    print(SEP)
    lines = [HEADER, SEP]
    results = []
    t0, p0 = time.monotonic(), _cpu_pressure_total()
    for case in cases():
        if args.only and args.only not in case.name:
            continue
        shape, r = run_case(case, args.quick, reps, warmup, flush)
        results.append((case, shape, r))
        line = row(case, shape, r)
        print(line, flush=True)
        lines.append(line)
    wall, p1 = time.monotonic() - t0, _cpu_pressure_total()
    load = f"Run took {wall:.0f} s"
    if p0 is not None and p1 is not None:
        # PSI "some": share of the time at least one runnable task waited for a CPU
        # (our own two threads included): near 0 on a quiet machine.
        load += f"; CPU pressure (PSI some) {100 * (p1 - p0) / 1e6 / wall:.0f}% during the run"
    load += f"; load average at the end {os.getloadavg()[0]:.2f}."
    print()
    print(load)
    # The targets are stated for the full shapes; tiny shapes only time the Python overhead.
    targets = [] if args.quick else check_targets(results)
    if targets:
        print()
        print("Targets (ratio of minimum times; median of paired per-round ratios in brackets):")
        print("\n".join(targets))
    if args.out:
        notes = ""
        if os.path.exists(args.out):
            with open(args.out) as f:
                old = f.read()
            if "\n## Notes" in old:
                notes = old[old.index("\n## Notes") + 1 :]
        with open(args.out, "w") as f:
            f.write("# normlab benchmark results\n\n")
            f.write(f"Written by `python benchmarks/norms.py{' --quick' if args.quick else ''} --out ...`.\n")
            f.write(_HOW + "\n")
            f.write(meta + " " + load + "\n\n")
            f.write("\n".join(lines) + "\n")
            if targets:
                f.write("\n## Targets\n\n")
                f.write("Ratio of minimum times; in brackets the median of the per-round paired ratios.\n\n")
                f.write("\n".join(targets) + "\n")
            if notes:
                f.write("\n" + notes)
    return 0


_HOW = """
Each row: normlab's module, its reference ("torch": the torch.nn twin; "timm":
permute -> F.layer_norm -> permute) and `y.copy_(x)` of the same tensor, timed in
one process with interleaved repetitions; each time is the minimum over the
repetitions (caches flushed before each call). Forward runs under `torch.no_grad()`; fwd+bwd is
`y = m(x); y.backward(g)` with `x.requires_grad` (gradients reset to None).
`x / ref < 1`: normlab is faster; `x / copy`: time in units of one copy of the
input (the memory-bandwidth floor of a forward pass).
"""


if __name__ == "__main__":
    sys.exit(main())
