"""Benchmark every registered norm against its reference and a memory copy, read from the registry.

    python benchmarks/norms.py            # small and large shapes, many interleaved reps (several minutes)
    python benchmarks/norms.py --quick    # small shapes, few reps (seconds; a smoke run)
    python benchmarks/norms.py --out benchmarks/RESULTS.md

One row group per registry entry (``normlab.NORMS``, so a new entry appears
by itself), with the entry's example configuration (``entry.example``): at
the example's size (``entry.example_shapes``) and at a large size (features
64 at dim 1, or 768 at the last dim of trailing-dim and 2-D input, then the
batch and spatial dims doubled in turn to at least 4M elements, every input
scaled alike); at the large size also eval mode for batch-statistics entries
and channels-last input for 4-D/5-D entries. The reference is the torch twin
(``entry.torch_twin``: the same state, torch's forward) where there is one,
else torch's fastest equivalent with stock ops (``entry.torch_equivalent``,
"torch ops": e.g. timm's permute road for LayerNorm2d), otherwise the
registry's generic composition (``entry.oracle``: how much the fast roads gain
over the framework's plain composition).

Ratios are of minimum times over interleaved repetitions in one process (see
:mod:`normlab.bench`): ``fwd / ref < 1`` means normlab is faster than the
reference; ``/ copy`` is the time relative to ``y.copy_(x)`` of the input
(the memory-bandwidth floor). Forward runs under ``torch.no_grad()``;
forward+backward is ``y = m(x); y.backward(g)`` with ``x.requires_grad``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

import normlab
from normlab.bench import CacheFlusher, compare, machine_info, retain_freed_memory, set_threads
from normlab.registry import NormEntry

# Large size: at least this many elements in the first input (16 MiB of float32: past the caches).
LARGE_NUMEL = 1 << 22
CHANNELS, TRAILING_FEATURES = 64, 768


@dataclass
class Case:
    entry: NormEntry
    size: str  # "small" (the example's shapes) or "large"
    shapes: tuple[tuple[int, ...], ...]  # one per forward input
    mode: str = "train"  # "train" or "eval"
    channels_last: bool = False

    @property
    def name(self) -> str:
        """The class and its example keywords, e.g. ``GroupNorm(num_groups=4)``."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.entry.example.items())
        return f"{self.entry.cls.__name__}({args})" if args else self.entry.cls.__name__

    @property
    def reference(self) -> str:
        if self.entry.torch_twin is not None:
            return "torch"
        if self.entry.torch_equivalent is not None:
            return "torch ops"
        return "generic" if self.entry.oracle is not None else "-"

    @property
    def label(self) -> str:
        return self.mode + (", channels_last" if self.channels_last else "")


def _features_dim(entry: NormEntry, shape: tuple[int, ...]) -> int:
    return len(shape) - 1 if entry.features_arg == "normalized_shape" or len(shape) == 2 else 1


def large_shapes(entry: NormEntry) -> tuple[tuple[int, ...], ...]:
    """The example's shapes grown: features fixed, the other dims of the first input doubled in turn."""
    first = list(entry.example_shapes[0])
    fdim = _features_dim(entry, tuple(first))
    first[fdim] = TRAILING_FEATURES if fdim == len(first) - 1 else CHANNELS
    factors = [1] * len(first)
    grow = [d for d in range(len(first)) if d != fdim]
    i = 0
    while math.prod(first) < LARGE_NUMEL:
        d = grow[i % len(grow)]
        first[d] *= 2
        factors[d] *= 2
        i += 1
    out = [tuple(first)]
    for shape in entry.example_shapes[1:]:
        # Other inputs (a condition): the batch and the spatial dims scaled as the first input's.
        out.append(tuple(s * (factors[d] if d != 1 and d < len(factors) else 1) for d, s in enumerate(shape)))
    return tuple(out)


def cases(quick: bool = False) -> list[Case]:
    out = []
    for entry in normlab.NORMS.entries():
        sizes = [("small", entry.example_shapes)]
        if not quick:
            sizes.append(("large", large_shapes(entry)))
        for size, shapes in sizes:
            variants = [Case(entry, size, shapes)]
            if size == "large" or quick:  # the quick run smoke-tests every variant at the small size
                if entry.statistics == "batch":
                    variants.append(Case(entry, size, shapes, mode="eval"))
                if len(shapes[0]) in (4, 5):
                    variants.append(Case(entry, size, shapes, channels_last=True))
            out += variants
    return out


class _Bound(nn.Module):
    """``m(x, *extra)`` as a module of one tensor (conditional norms: the condition is held fixed)."""

    def __init__(self, inner: nn.Module, extra: tuple[torch.Tensor, ...]) -> None:
        super().__init__()
        self.inner = inner
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x, *self.extra)


class _Oracle(nn.Module):
    """A registry function ``fn(module, *inputs)`` (the oracle or torch's equivalent) as a module."""

    def __init__(self, fn, module: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.module = module

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.fn(self.module, *inputs)


def _reference(entry: NormEntry, module: nn.Module) -> nn.Module:
    """The torch twin holding ``module``'s state (the twin is its base class), else torch's equivalent
    with stock ops (``entry.torch_equivalent``), else the oracle, else a copy."""
    ref = copy.deepcopy(module)
    if entry.torch_twin is not None:
        mod_name, _, cls_name = entry.torch_twin.rpartition(".")
        ref.__class__ = getattr(importlib.import_module(mod_name), cls_name)
        return ref
    fn = entry.torch_equivalent or entry.oracle
    return _Oracle(fn, ref) if fn is not None else ref


@torch.no_grad()
def _randomize(module: nn.Module) -> None:
    for p in module.parameters():
        p.uniform_(0.5, 1.5)
    for name, b in module.named_buffers():
        if name.endswith("running_mean"):
            b.normal_(0.0, 0.1)
        elif name.endswith("running_var"):
            b.uniform_(0.5, 1.5)


def build(case: Case) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """normlab's module and its reference, each of one tensor, and the first input."""
    torch.manual_seed(0)
    entry = case.entry
    shape = case.shapes[0]
    features = None
    if entry.features_arg is not None:
        features = shape[_features_dim(entry, shape)]
    ours = entry.build(features, **entry.example)
    _randomize(ours)
    theirs = _reference(entry, ours)
    train = case.mode == "train"
    ours.train(train)
    theirs.train(train)
    inputs = [torch.randn(s) for s in case.shapes]
    if case.channels_last:
        inputs = [
            x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
            if x.dim() in (4, 5)
            else x
            for x in inputs
        ]
    if len(inputs) > 1:
        extra = tuple(inputs[1:])
        ours, theirs = _Bound(ours, extra), _Bound(theirs, extra)
    return ours, theirs, inputs[0]


def run_case(case: Case, reps: int, warmup: int, flush: CacheFlusher | bool = True):
    ours, theirs, x = build(case)
    return case.shapes[0], compare(ours, theirs, x, reps=reps, warmup=warmup, flush=flush)


HEADER = (
    "| module | shape | mode | ref | fwd / ref | fwd / copy | ref fwd / copy "
    "| fwd+bwd / ref | fwd+bwd / copy | ref fwd+bwd / copy | copy ms |"
)
SEP = "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|"


def row(case: Case, shape, r) -> str:
    has_ref = case.reference != "-"

    def ref_cell(v):
        return f"{v:.2f}" if has_ref else "-"

    cells = [
        case.name,
        "x".join(map(str, shape)),
        case.label,
        case.reference,
        ref_cell(r.fwd_ratio_to_ref),
        f"{r.fwd_ratio_to_copy:.2f}",
        ref_cell(r.ref_fwd_ratio_to_copy),
        ref_cell(r.fwdbwd_ratio_to_ref),
        f"{r.fwdbwd_ratio_to_copy:.2f}",
        ref_cell(r.ref_fwdbwd_ratio_to_copy),
        f"{1e3 * r.fwd_copy:.3f}",
    ]
    return "| " + " | ".join(cells) + " |"


# (description, which rows, which ratio, limit): ratio <= limit is met. Rows: the large size only
# (the targets are stated for tensors past the caches; small ones time the Python overhead).
def _large(c: Case) -> bool:
    return c.size == "large"


def _named(name: str):
    return lambda c: _large(c) and c.entry.name == name


TARGETS = [
    (
        "every module with a torch twin: forward <= 1.05x torch",
        lambda c: _large(c) and c.reference == "torch",
        "fwd/ref",
        1.05,
    ),
    (
        "every module with a torch twin: fwd+bwd <= 1.05x torch",
        lambda c: _large(c) and c.reference == "torch",
        "fwdbwd/ref",
        1.05,
    ),
    ("InstanceNorm2d forward >= 2x faster than torch", _named("instancenorm2d"), "fwd/ref", 0.5),
    ("RMSNorm forward >= 2x faster than torch", _named("rmsnorm"), "fwd/ref", 0.5),
    (
        "BatchNorm2d training forward <= 2x copy",
        lambda c: _named("batchnorm2d")(c) and c.mode == "train" and not c.channels_last,
        "fwd/copy",
        2.0,
    ),
    ("LayerNorm forward <= 1.3x copy", _named("layernorm"), "fwd/copy", 1.3),
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
    ap.add_argument(
        "--only", default=None, help="run only entries whose registry name, alias or class name contains this string"
    )
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
        f"{'quick (small shapes only)' if args.quick else 'full (small and large shapes)'} mode; float32; "
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
    for case in cases(args.quick):
        names = (case.entry.name, *case.entry.aliases, case.entry.cls.__name__)
        if args.only and not any(args.only.lower() in n.lower() for n in names):
            continue
        shape, r = run_case(case, reps, warmup, flush)
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
    # The targets are stated for the large shapes; the quick run has none.
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
Each row: normlab's module (a registry entry with its example configuration),
its reference ("torch": the torch.nn twin holding the same state; "torch ops":
torch's fastest equivalent with stock ops, e.g. permute -> F.layer_norm ->
permute for LayerNorm2d as timm does; "generic": the registry's generic
partition -> operation -> recovery composition, for entries torch lacks) and
`y.copy_(x)` of the same tensor, timed in one process with interleaved repetitions; each time is the minimum over the
repetitions (caches flushed before each call). Forward runs under `torch.no_grad()`; fwd+bwd is
`y = m(x); y.backward(g)` with `x.requires_grad` (gradients reset to None).
`x / ref < 1`: normlab is faster; `x / copy`: time in units of one copy of the
input (the memory-bandwidth floor of a forward pass). Rows per entry: the
example's shapes (small), then a large size (>= 4M elements), in eval mode
too for batch-statistics entries and channels_last for 4-D/5-D input.
"""


if __name__ == "__main__":
    sys.exit(main())
