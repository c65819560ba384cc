"""The benchmark harness runs and returns sane numbers (no timing assertions: timing never decides a test)."""

from __future__ import annotations

import math

import torch

import normlab
from normlab.bench import CacheFlusher, compare, machine_info, median_ratio, time_interleaved, time_rounds


def _finite_positive(v) -> bool:
    return v is not None and math.isfinite(v) and v > 0


def test_compare_returns_finite_positive_ratios():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5)
    r = compare(normlab.nn.GroupNorm(4, 8), torch.nn.GroupNorm(4, 8), x, reps=2, warmup=1, flush=False)
    for name, value in r.ratios().items():
        assert _finite_positive(value), name
    assert set(r.paired) == set(r.ratios())
    for name, value in r.paired.items():
        assert _finite_positive(value), name


def test_compare_forward_only_channels_last_and_flush():
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    bn, ref = normlab.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)
    r = compare(bn, ref, x, reps=1, warmup=0, backward=False, flush=CacheFlusher(1 << 20))
    assert _finite_positive(r.fwd_ratio_to_ref) and _finite_positive(r.fwd_ratio_to_copy)
    assert r.fwdbwd is None and r.fwdbwd_ratio_to_ref is None


def test_time_rounds_interleaves_in_order():
    calls = []
    fns = [lambda i=i: calls.append(i) for i in range(3)]
    rounds = time_rounds(fns, reps=2, warmup=1)
    assert calls == [0, 1, 2] * 3
    assert len(rounds) == 2 and all(len(r) == 3 for r in rounds)
    assert len(time_interleaved(fns, reps=1, warmup=0)) == 3
    assert median_ratio([[2.0, 1.0], [6.0, 2.0], [4.0, 1.0]], 0, 1) == 3.0


def test_machine_info_has_the_fields_results_need():
    info = machine_info()
    for key in ("cpu", "cores", "torch", "threads", "date"):
        assert info[key], key


def test_replace_section_keeps_the_other_sections(tmp_path):
    from normlab.bench import replace_section

    path = str(tmp_path / "R.md")
    replace_section(path, "## A", "## A\n\none\n", "# T")
    replace_section(path, "## B", "## B\n\ntwo\n", "# T")
    replace_section(path, "## A", "## A\n\nthree\n", "# T")
    text = open(path).read()
    assert text.startswith("# T") and "three" in text and "two" in text and "one" not in text
    assert text.index("## A") < text.index("## B")


def test_optimizer_benchmark_smoke(tmp_path):
    # benchmarks/optim.py --quick end to end: every row written, every ratio finite (no timing assertion)
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "optim.py"
    spec = importlib.util.spec_from_file_location("bench_optim", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "r.md"
    assert mod.main(["--quick", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "params)" in line]
    assert len(rows) == 2 * 2 * 7  # models x foreach x optimizers
    assert all(_finite_positive(float(r.rstrip(" |").rsplit("|", 1)[1])) for r in rows)
