"""The claims side of the command line, and the report opened in a real headless browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import normlab
from normlab.cli import main
from normlab.runs import RUNS_DIR, RunIndex
from test_report import Elements, decode_data_uri, png_size

CLAIM = "gn-ln-in"  # the fastest claim (a float64 property check, well under a second in quick mode)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> Path:
    """``normlab reproduce gn-ln-in --quick --out OUT``, run once for the module."""
    out = tmp_path_factory.mktemp("cli") / "out"
    assert main(["reproduce", CLAIM, "--quick", "--out", str(out)]) == 0
    return out


def test_claims_lists_implemented_and_pending(capsys):
    from normlab.claims import CLAIMS, PENDING

    assert main(["claims"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_id = {line.split()[0]: line for line in lines if line.strip()}
    assert CLAIM in by_id and by_id[CLAIM].endswith("implemented")
    assert all(c in by_id for c in CLAIMS)
    for p in PENDING.values():
        assert by_id[p.id].endswith(f"pending (needs {p.needs})")


def _run_dir(out: Path) -> Path:
    (d,) = sorted((out / RUNS_DIR).iterdir())
    return d


def test_reproduce_end_to_end(reproduced: Path, capsys):
    d = _run_dir(reproduced)
    result = json.loads((d / "result.json").read_text())
    assert result["mode"] == "quick" and result["verdict"]["status"] == "inconclusive"  # quick never decides
    assert result["reading"] == "holds"
    assert result["command"] == ["normlab", "reproduce", CLAIM, "--quick", "--out", str(reproduced)]
    assert (d / "figure.png").is_file()
    page = Elements((reproduced / "report.html").read_text())
    assert page.rows() == {CLAIM} and set(page.images()) == {CLAIM}
    assert f"`{CLAIM}`" in (reproduced / "summary.md").read_text()


def test_reproduce_prints_table_and_report_path(tmp_path: Path, capsys):
    out = tmp_path / "o"
    assert main(["reproduce", CLAIM, "--seeds", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in text and f"summary: {out / 'summary.md'}" in text
    row = next(line for line in text.splitlines() if line.startswith(CLAIM + " "))
    assert row.split()[1:4] == ["HOLDS", "full", "2"]  # an identity: min_seeds 1


def test_reproduce_unknown_id_exits_2(tmp_path: Path, capsys):
    assert main(["reproduce", "no-such-claim", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown claim id no-such-claim" in err and CLAIM in err.split("known claims:")[1]
    assert not (tmp_path / "o").exists()  # nothing ran


def test_reproduce_unknown_id_exit_code_of_the_program(tmp_path: Path):
    """The installed entry point (not just main()) exits 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "normlab.cli", "reproduce", CLAIM, "bogus", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "unknown claim id bogus" in proc.stderr
    assert not (tmp_path / "o").exists()  # unknown ids fail before anything runs


def test_reproduce_pending_and_usage_errors(tmp_path: Path, capsys):
    from normlab.claims import PENDING

    if PENDING:
        pid, p = next(iter(PENDING.items()))
        assert main(["reproduce", pid, "--out", str(tmp_path)]) == 2
        assert f"claim {pid!r} is pending: it needs {p.needs}" in capsys.readouterr().err
    assert main(["reproduce", "--out", str(tmp_path)]) == 2  # neither ids nor --all
    assert "give claim ids or --all" in capsys.readouterr().err
    assert main(["reproduce", CLAIM, "--all", "--out", str(tmp_path)]) == 2  # both
    assert main(["reproduce", CLAIM, "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "seeds '0' select no seed" in capsys.readouterr().err
    for flag, value, message in (
        ("--jobs", "0", "--jobs must be >= 1"),
        ("--threads", "-3", "--threads must be >= 1"),
        ("--shard", "3/2", "shard i/n needs"),
        ("--seeds", "x", "seeds must be a count"),
    ):
        assert main(["reproduce", CLAIM, flag, value, "--out", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "a-file").write_text("x")
    assert main(["reproduce", CLAIM, "--out", str(tmp_path / "a-file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_report_command(reproduced: Path, tmp_path: Path, capsys):
    assert main(["report", str(reproduced)]) == 0
    assert f"report: {reproduced / 'report.html'} (1 claim)" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no complete claim run" in capsys.readouterr().err
    assert main(["report", str(reproduced), str(reproduced), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "report.html").is_file()


def test_runs_lists_and_compares(reproduced: Path, tmp_path: Path, capsys):
    assert main(["runs", "--out", str(reproduced)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "claim", "mode", "seeds", "state", "verdict", "seconds", "started"]
    assert any(line.split()[1:6] == [CLAIM, "quick", "0", "complete", "inconclusive"] for line in lines[1:])

    index = RunIndex(tmp_path)
    for run_id, status, numbers, lr in (
        ("a-run-1", "holds", {"slope": 1.0, "only_a": 3}, 0.1),
        ("b-run-2", "fails", {"slope": 0.25}, 0.2),
    ):
        d = tmp_path / RUNS_DIR / run_id
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"params": {"lr": lr, "steps": 10}}))
        index.add(
            {
                "run_id": run_id,
                "claim": "fake",
                "mode": "full",
                "seeds": [0, 1, 2],
                "started": 1_700_000_000.0,
                "seconds": 12.0,
                "state": "complete",
                "status": status,
                "numbers": numbers,
                "path": f"{RUNS_DIR}/{run_id}",
            }
        )
    assert main(["runs", "--out", str(tmp_path), "--compare", "a-run", "b-run"]) == 0  # unique prefixes
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows["a-run-1"] == ["b-run-2", "b", "-", "a", "b", "/", "a"]
    assert rows["status"] == ["holds", "fails"] and rows["only_a"] == ["3", "-"]
    assert rows["slope"] == ["1", "0.25", "-0.75", "0.25"]  # difference and ratio
    assert rows["param"] == ["lr", "0.1", "0.2"]  # the config that differs (steps does not)
    assert main(["runs", "--out", str(tmp_path), "--claim", "other"]) == 0
    assert "no runs of other" in capsys.readouterr().out
    assert main(["runs", "--out", str(tmp_path), "--compare", "a-run", "nope"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["runs", "--out", str(tmp_path / "missing")]) == 2
    (tmp_path / "index.sqlite").write_text("garbage" * 50)
    assert main(["runs", "--out", str(tmp_path)]) == 2
    assert "--rebuild-index" in capsys.readouterr().err
    assert main(["runs", "--out", str(tmp_path), "--rebuild-index"]) == 0
    assert "rebuilt" in capsys.readouterr().out


# --------------------------------------------------------------------------- list, info, check


def test_list_prints_every_entry(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == normlab.list_norms()
    for line, entry in zip(lines, normlab.NORMS.entries(), strict=True):
        assert entry.cls.__name__ in line and entry.summary in line


@pytest.mark.parametrize("name", normlab.list_norms())
def test_info_shows_the_registry_fields(name, capsys):
    entry = normlab.get_entry(name)
    assert main(["info", entry.aliases[0] if entry.aliases else name]) == 0
    out = capsys.readouterr().out
    fields = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in out.splitlines()[2:]}
    assert out.startswith(f"{entry.name}  (normlab.nn.{entry.cls.__name__})")
    assert fields["statistics"].startswith(entry.statistics + " (")
    assert fields["ranks"].startswith(", ".join(f"{r}D" for r in entry.ranks))
    assert fields["inputs"] == f"forward({', '.join(entry.inputs)})"
    assert fields["loads from"].startswith(entry.checkpoint_class or "-")
    assert fields["torch twin"] == (entry.torch_twin or "-")
    assert fields["paper"] == entry.paper and fields["formula"] == entry.formula
    oracle = fields["oracle"]
    if entry.oracle is None:
        assert oracle.startswith("-")
    else:
        assert "lambda" in oracle or oracle.endswith(entry.oracle.__qualname__)
    for rank, variant in entry.rank_variants.items():
        assert f"{rank}D -> {variant}" in fields["ranks"]


def test_info_unknown_name_exits_2(capsys):
    assert main(["info", "nope"]) == 2
    assert "unknown norm 'nope'" in capsys.readouterr().err


def test_check_prints_a_row_per_entry_and_passes(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[2:] if line.strip() and not line.startswith(" ")]
    rows = [r for r in rows if r[0] in normlab.list_norms()]
    assert [r[0] for r in rows] == normlab.list_norms()
    assert all(r[-1] == "yes" for r in rows), out
    assert f"{len(rows)} of {len(rows)} norms match their references" in out
    for r in rows:
        entry = normlab.get_entry(r[0])
        want = entry.torch_twin or ("torch ops:" if entry.torch_equivalent is not None else "generic composition")
        assert want.split()[0] == r[1]


def test_check_fails_when_a_reference_disagrees(monkeypatch, capsys):
    import normlab.check as check

    real = check._reference

    def off_by_a_bit(entry, module):
        name, fn = real(entry, module)
        return name, lambda *inputs: fn(*inputs) + 1e-3

    monkeypatch.setattr(check, "_reference", off_by_a_bit)
    assert main(["check", "gn", "spade"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: ['groupnorm', 'spade']" in out


# --------------------------------------------------------------------------- the browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


# Injected into a copy of the report (the report itself has no script): after the
# page's load event, record what the browser decoded for every image.
_PROBE = """<script>
window.addEventListener("load", function () {
  var seen = Array.prototype.map.call(document.images, function (img) {
    return [img.getAttribute("data-claim"), img.complete, img.naturalWidth, img.naturalHeight];
  });
  document.body.setAttribute("data-probe", JSON.stringify(seen));
});
</script>"""


def _chromium_run(browser: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp / 'chromium-profile'}",
    ]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=90)


def test_report_in_headless_browser(reproduced: Path, tmp_path: Path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed: apt-get install chromium (`.ci/run` installs it)")
    report = reproduced / "report.html"
    expected = {CLAIM}

    # The DOM as the browser built it, with what it decoded for each image.
    probe = tmp_path / "report-probe.html"
    probe.write_text(report.read_text().replace("</body>", _PROBE + "\n</body>"))
    proc = _chromium_run(browser, tmp_path, "--dump-dom", probe.as_uri())
    assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-2000:]
    dom = Elements(proc.stdout)
    assert dom.rows() == expected  # every claim's row (id="claim-<id>")
    images = dom.images()
    assert set(images) == expected  # every claim's figure (img data-claim="<id>")
    for srcs in images.values():
        width, height = png_size(decode_data_uri(srcs[0]))
        assert width > 100 and height > 100
    body = next(a for t, a in dom.tags if t == "body")
    seen = json.loads(body["data-probe"])
    assert {s[0] for s in seen} == expected
    assert all(complete and w > 0 and h > 0 for _, complete, w, h in seen), seen  # the browser decoded them

    # A screenshot of the unmodified report: rendered, not blank, with the verdict badge's colour.
    shot = tmp_path / "report.png"
    proc = _chromium_run(browser, tmp_path, "--window-size=1280,1600", f"--screenshot={shot}", report.as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (1600, 1280)
    not_white = (pixels < 0.95).any(axis=-1).mean()
    assert not_white > 0.02, f"screenshot nearly blank ({not_white:.1%} non-white)"
    # .badge.inconclusive: a quick run never decides (the seed policy)
    badge = (abs(pixels - [0xC9 / 255, 0x8A / 255, 0x0B / 255]).max(axis=-1) < 0.02).sum()
    assert badge > 500, "the 'inconclusive' badge is not in the screenshot"  # > the quick note's 3 px border
    keep = os.environ.get("NORMLAB_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
