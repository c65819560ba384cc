"""A small benchmark harness: a norm's time as a ratio to torch's and to a memory copy.

Normalization is memory-bound, so normlab states every layer's speed as two
ratios measured in one process at one shape: to torch's fastest equivalent
(``< 1`` is faster than torch) and to ``y.copy_(x)`` of the same tensor (the
bandwidth floor: a forward reads ``x`` and writes ``y`` once).

Method (so that ratios survive a noisy machine):

- every callable runs in the same process on the same input;
- repetitions are *interleaved* round-robin (candidate, reference, copy,
  candidate, reference, copy, ...) so that slow drifts (frequency scaling,
  noisy neighbours, page-cache state) hit all three alike;
- warm-up rounds first (allocator, lazy init, first-touch page faults);
- each callable's time is the *minimum* over the repetitions: noise only
  ever adds time, so the minimum is the most reproducible estimate of the
  cost of the work itself;
- the caches are flushed (by reading a buffer larger than the last-level
  cache) before every timed call, so each call starts from the same state:
  input in memory, caches clean. Back to back, a call's time depends on
  what ran before it (an earlier output still in cache, dirty); at the
  sizes benchmarked (tens of MiB against a 32 MiB L3) that moved ratios by
  up to 50%;
- the garbage collector is off while timing.

Forward is timed under ``torch.no_grad()`` (inference); forward+backward runs
``y = m(x); y.backward(g)`` with ``x.requires_grad`` and with gradients reset
to ``None`` before each call (as ``optimizer.zero_grad()`` does), so no call
pays for accumulating into an earlier gradient. The copy baseline for
forward+backward is still one copy of ``x``. Use :func:`retain_freed_memory`
first (the benchmark script does) so that allocations do not page-fault.

Example::

    >>> import torch, normlab
    >>> from normlab.bench import compare
    >>> x = torch.randn(8, 16, 8, 8)
    >>> r = compare(normlab.nn.GroupNorm(4, 16), torch.nn.GroupNorm(4, 16), x, reps=3, warmup=1)
    >>> r.fwd_ratio_to_copy > 0
    True
"""

from __future__ import annotations

import datetime
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "CacheFlusher",
    "Comparison",
    "compare",
    "copy_fn",
    "forward_fn",
    "forward_backward_fn",
    "machine_info",
    "set_threads",
    "median_ratio",
    "retain_freed_memory",
    "time_interleaved",
    "time_rounds",
    "replace_section",
]


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: the machine's cores) and return the count in use."""
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process (no trimming; heap, not mmap, up to 32 MiB).

    By default glibc hands large freed blocks back to the kernel, and the next
    allocation of that size page-faults the memory in again (in a VM with
    free-page reporting, at the host as well). That cost depends on what ran
    before and is noise for a kernel-vs-kernel comparison; a long-running
    training process, or one using jemalloc/tcmalloc, mostly does not pay it.
    Returns False where this is not glibc (nothing changed).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_trim_threshold, 1 << 30) == 1
        return bool(libc.mallopt(m_mmap_threshold, 1 << 25) == 1 and ok)
    except (OSError, AttributeError):
        return False


def machine_info() -> dict[str, str]:
    """What a benchmark result depends on: CPU model, cores, torch version, threads, date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {
        "cpu": cpu,
        "cores": str(cores),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _cache_bytes() -> int:
    """The largest CPU cache (bytes) that sysfs reports, or 32 MiB."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            try:
                with open(os.path.join(base, entry, "size")) as f:
                    text = f.read().strip().upper()
            except OSError:
                continue
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            digits = text[:-1] if text[-1:] in "KMG" else text
            if digits.isdigit():
                best = max(best, int(digits) * scale)
    except OSError:
        pass
    return best or (32 << 20)


class CacheFlusher:
    """Evicts the CPU caches by reading a buffer three times the largest cache (at least 64 MiB).

    Reading, not writing: the caches end up holding clean lines of the
    buffer, so the timed call neither finds its input in cache nor pays for
    writing back someone else's dirty lines. Without it, a call's time
    depends on what ran just before it (an output still in cache, dirty).
    """

    def __init__(self, nbytes: int | None = None) -> None:
        nbytes = nbytes or max(3 * _cache_bytes(), 64 << 20)
        self.buffer = torch.ones(nbytes // 4, dtype=torch.float32)

    def __call__(self) -> None:
        self.buffer.sum()


def time_rounds(
    fns: Sequence[Callable[[], object]],
    reps: int = 50,
    warmup: int = 3,
    before_each: Callable[[], object] | None = None,
) -> list[list[float]]:
    """Wall time (seconds) of every call: ``reps`` rounds of ``fns[0](), fns[1](), ...``.

    Runs ``warmup`` untimed rounds first; returns one row per round, one
    column per callable, each call timed on its own. ``before_each`` (e.g. a
    :class:`CacheFlusher`) runs untimed before every timed call.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    for _ in range(max(warmup, 0)):
        for fn in fns:
            fn()
    rounds = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(reps):
            row = []
            for fn in fns:
                if before_each is not None:
                    before_each()
                t0 = time.perf_counter()
                fn()
                row.append(time.perf_counter() - t0)
            rounds.append(row)
    finally:
        if gc_was_enabled:
            gc.enable()
    return rounds


def time_interleaved(
    fns: Sequence[Callable[[], object]],
    reps: int = 50,
    warmup: int = 3,
    before_each: Callable[[], object] | None = None,
) -> list[float]:
    """Minimum wall time (seconds) of each callable, repetitions interleaved round-robin (see :func:`time_rounds`)."""
    rounds = time_rounds(fns, reps, warmup, before_each)
    return [min(col) for col in zip(*rounds, strict=True)]


def median_ratio(rounds: list[list[float]], i: int, j: int) -> float:
    """Median over rounds of ``time[i] / time[j]`` within the same round.

    A check on the ratio of minima: calls next to each other in time see the
    same machine, so this is robust to slow drifts in memory bandwidth.
    """
    return statistics.median(r[i] / r[j] for r in rounds)


def copy_fn(x: Tensor) -> Callable[[], object]:
    """The bandwidth baseline: ``y.copy_(x)``, with ``y`` allocated per call like a module's output.

    A fresh ``y`` (``torch.empty_like``) lands in the memory the modules'
    outputs were just freed from, so the baseline writes where they write.
    A single preallocated ``y`` was measured 0.9 or 1.45 ms for the same
    24 MiB copy depending only on where it happened to be placed.
    """
    src = x.detach()
    return lambda: torch.empty_like(src).copy_(src)


def forward_fn(m: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], object]:
    """``m(x)`` under ``torch.no_grad()``."""
    xd = x.detach()

    def run():
        with torch.no_grad():
            return m(xd)

    return run


def _params(m) -> list[Tensor]:
    return list(m.parameters()) if isinstance(m, torch.nn.Module) else []


def forward_backward_fn(m: Callable[[Tensor], Tensor], x: Tensor, grad: Tensor | None = None) -> Callable[[], object]:
    """``y = m(x); y.backward(grad)`` with ``x.requires_grad``; gradients reset to None before each call.

    ``grad`` defaults to a fixed random tensor laid out like ``m(x)`` (so a
    channels_last output gets a channels_last gradient).
    """
    xr = x.detach().clone().requires_grad_(True)
    if grad is None:
        with torch.no_grad():
            like = m(x.detach())
        grad = torch.empty_like(like).normal_(generator=torch.Generator(device=like.device).manual_seed(1))
    params = _params(m)

    def run():
        xr.grad = None
        for p in params:
            p.grad = None
        m(xr).backward(grad)

    return run


@dataclass
class Comparison:
    """Times (seconds, minimum over interleaved reps) and the ratios derived from them.

    ``paired`` holds the cross-check: for each ratio, the median over rounds
    of the ratio of the two calls made next to each other in that round.
    """

    fwd: float
    fwd_ref: float
    fwd_copy: float
    fwdbwd: float | None = None
    fwdbwd_ref: float | None = None
    fwdbwd_copy: float | None = None
    reps: int = 0
    paired: dict[str, float] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def _ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a / b

    @property
    def fwd_ratio_to_ref(self) -> float:
        return self.fwd / self.fwd_ref

    @property
    def fwd_ratio_to_copy(self) -> float:
        return self.fwd / self.fwd_copy

    @property
    def ref_fwd_ratio_to_copy(self) -> float:
        return self.fwd_ref / self.fwd_copy

    @property
    def fwdbwd_ratio_to_ref(self) -> float | None:
        return self._ratio(self.fwdbwd, self.fwdbwd_ref)

    @property
    def fwdbwd_ratio_to_copy(self) -> float | None:
        return self._ratio(self.fwdbwd, self.fwdbwd_copy)

    @property
    def ref_fwdbwd_ratio_to_copy(self) -> float | None:
        return self._ratio(self.fwdbwd_ref, self.fwdbwd_copy)

    def ratios(self) -> dict[str, float | None]:
        """The ratios of minimum times, keyed as in ``paired``."""
        return {
            "fwd/ref": self.fwd_ratio_to_ref,
            "fwd/copy": self.fwd_ratio_to_copy,
            "ref fwd/copy": self.ref_fwd_ratio_to_copy,
            "fwdbwd/ref": self.fwdbwd_ratio_to_ref,
            "fwdbwd/copy": self.fwdbwd_ratio_to_copy,
            "ref fwdbwd/copy": self.ref_fwdbwd_ratio_to_copy,
        }


def _paired(rounds: list[list[float]], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}/ref": median_ratio(rounds, 0, 1),
        f"{prefix}/copy": median_ratio(rounds, 0, 2),
        f"ref {prefix}/copy": median_ratio(rounds, 1, 2),
    }


def compare(
    candidate: Callable[[Tensor], Tensor],
    reference: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    reps: int = 50,
    warmup: int = 3,
    backward: bool = True,
    grad: Tensor | None = None,
    fwdbwd_reps: int | None = None,
    flush: bool | CacheFlusher = True,
) -> Comparison:
    """Time ``candidate(x)`` against ``reference(x)`` and ``copy_(x)``, interleaved, in this process.

    ``candidate`` and ``reference`` are modules or functions of one tensor.
    With ``backward=True`` forward+backward is timed too (a second
    interleaved series; ``fwdbwd_reps`` defaults to ``reps``). ``flush``
    evicts the caches before every timed call (a :class:`CacheFlusher`, or
    True for a new one); False times back-to-back calls.
    """
    before = (flush if isinstance(flush, CacheFlusher) else CacheFlusher()) if flush else None
    rounds = time_rounds(
        [forward_fn(candidate, x), forward_fn(reference, x), copy_fn(x)], reps=reps, warmup=warmup, before_each=before
    )
    fwd, fwd_ref, fwd_copy = (min(col) for col in zip(*rounds, strict=True))
    result = Comparison(
        fwd, fwd_ref, fwd_copy, reps=reps, paired=_paired(rounds, "fwd"), info={"threads": str(torch.get_num_threads())}
    )
    if backward:
        rounds = time_rounds(
            [forward_backward_fn(candidate, x, grad), forward_backward_fn(reference, x, grad), copy_fn(x)],
            reps=fwdbwd_reps or reps,
            warmup=warmup,
            before_each=before,
        )
        result.fwdbwd, result.fwdbwd_ref, result.fwdbwd_copy = (min(col) for col in zip(*rounds, strict=True))
        result.paired.update(_paired(rounds, "fwdbwd"))
    return result


def replace_section(path: str, heading: str, section: str, title: str = "# Benchmarks") -> None:
    """Replace the section starting at ``heading`` in the markdown file ``path`` (up to the next
    ``## ``), or append it; a missing file starts with ``title``. Lets several benchmark scripts
    share one results file, each owning its own section."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = title + "\n\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        tail = "" if end < 0 else text[end + 1 :]
        text = text[:start] + section + ("\n" + tail if tail else "")
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")
