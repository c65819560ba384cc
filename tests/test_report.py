"""The claims report: HTML and markdown from fake result directories."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from normlab.report import ReportError, format_text_table, load_results, write_report
from normlab.report.build import PNG_SIGNATURE
from normlab.runs import RUNS_DIR, RunIndex


def tiny_png(width: int = 4, height: int = 3) -> bytes:
    """A valid RGB PNG of the given size (written by hand: no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes([200, 30, 30]) * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE), "not a PNG"
    return struct.unpack(">II", data[16:24])


class Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def rows(self) -> set[str]:
        return {a["id"][len("claim-") :] for t, a in self.tags if t == "tr" and a.get("id", "").startswith("claim-")}

    def images(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for t, a in self.tags:
            if t == "img" and "data-claim" in a:
                out.setdefault(a["data-claim"], []).append(a.get("src", ""))
        return out


def decode_data_uri(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    return base64.b64decode(src[len(prefix) :])


ENV = {
    "normlab": "0.1.0",
    "git": "abc1234",
    "python": "3.11.7",
    "torch": "2.13.0+cpu",
    "numpy": "2.0",
    "platform": "Linux",
    "cpu": "Test CPU",
    "cores": 2,
    "torch_threads": 1,
    "seeds": [0],
    "date": "2026-01-01 00:00:00 UTC",
}


def fake_result(
    out: Path,
    cid: str,
    status: str,
    reason: str,
    numbers: dict,
    error: str | None = None,
    png=True,
    state="complete",
    started=1_700_000_000.0,
):
    """A run directory OUT/runs/<cid>-run/ as the runner writes it, indexed."""
    run_id = f"{cid}-run-{int(started)}"
    d = out / RUNS_DIR / run_id
    d.mkdir(parents=True)
    info = {"run_id": run_id, "claim": cid, "mode": "quick", "seeds": [0, 1, 2], "started": started}
    (d / "run.json").write_text(json.dumps({**info, "state": state}))
    (d / "rows.json").write_text(json.dumps([{"seed": 0, "value": 1.0}]))
    RunIndex(out).add(
        {**info, "seconds": 75.3, "state": state, "status": status, "numbers": numbers, "path": f"{RUNS_DIR}/{run_id}"}
    )
    if png:
        (d / "figure.png").write_bytes(tiny_png())
    record = {
        "id": cid,
        "title": f"title of {cid}",
        "source": "Someone & Other 2020",
        "statement": f"statement of {cid}",
        "protocol": "protocol <small>",
        "rule": "x <= 1e-6",
        "mode": "quick",
        "seeds": [0, 1, 2],
        "verdict": {
            "status": status,
            "reason": reason,
            "numbers": numbers,
            "parts": [{"name": "p", "status": status, "text": f"part of {cid}"}],
            "checks": [{"name": "c", "passed": True, "text": f"check of {cid}"}],
        },
        "seconds": 75.3,
        "started": started,
        "figure": "figure.png" if png else None,
        "error": error,
        "env": ENV,
    }
    (d / "result.json").write_text(json.dumps(record))
    return record


@pytest.fixture
def out(tmp_path: Path) -> Path:
    root = tmp_path / "out"
    fake_result(root, "fake-holds", "holds", "max diff 1e-16", {"max_diff": 1.234567e-16, "tolerance": 1e-6})
    fake_result(
        root, "fake-fails", "fails", "<script>alert('x')</script> | slope 0.3", {"slope": 0.3, "diverged": "inf"}
    )
    fake_result(
        root,
        "fake-error",
        "inconclusive",
        "the experiment raised RuntimeError: boom",
        {},
        error="Traceback (most recent call last):\n  <b>boom</b>\nRuntimeError: boom",
        png=False,
    )
    (root / "not-a-claim").mkdir()  # a directory outside runs/ is ignored
    fake_result(root, "fake-holds", "fails", "an interrupted rerun", {}, state="interrupted", started=1_800_000_000.0)
    return root


def test_html_has_every_row_and_figure(out: Path):
    html_path, md_path = write_report(out)
    assert html_path == out / "report.html" and md_path == out / "summary.md"
    page = Elements(html_path.read_text())
    assert page.rows() == {"fake-holds", "fake-fails", "fake-error"}
    images = page.images()
    assert set(images) == {"fake-holds", "fake-fails"}  # the claim that raised has no figure
    for srcs in images.values():
        assert png_size(decode_data_uri(srcs[0])) == (4, 3)
    text = "".join(page.text)
    for expected in ("statement of fake-holds", "protocol <small>", "x <= 1e-6", "1 min 15 s", "3 [0, 1, 2]"):
        assert expected in text
    assert "max_diff = 1.235e-16" in text and "diverged = inf" in text
    assert "RuntimeError: boom" in text  # the error is shown
    assert "Test CPU" in text and "abc1234" in text and "2.13.0+cpu" in text  # the environment
    assert "3 claims: 1 holds, 1 fails, 1 inconclusive (1 with an error)" in text
    assert "not-a-claim" not in text and "an interrupted rerun" not in text  # only complete runs are results
    assert "part of fake-holds" in text and "check of fake-holds" in text  # evidence and checks, apart


def test_html_escapes_text(out: Path):
    html_text = write_report(out)[0].read_text()
    assert "<script" not in html_text.lower()  # the page has no script at all, and a reason cannot add one
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html_text
    assert "<b>boom</b>" not in html_text and "&lt;b&gt;boom&lt;/b&gt;" in html_text
    assert "<small>" not in html_text
    page = Elements(html_text)
    assert "<script>alert('x')</script> | slope 0.3" in "".join(page.text)  # shown as text, intact


def test_badges_and_order(out: Path):
    html_text = write_report(out)[0].read_text()
    page = Elements(html_text)
    badges = [a["class"] for t, a in page.tags if t == "span" and "badge" in a.get("class", "")]
    assert {"badge holds", "badge fails", "badge inconclusive", "badge error"} <= set(badges)
    rows = [a["id"] for t, a in page.tags if t == "tr" and a.get("id", "").startswith("claim-")]
    assert rows == ["claim-fake-error", "claim-fake-fails", "claim-fake-holds"]  # unknown ids: sorted


def test_pending_claims_listed(out: Path):
    from normlab.claims import PENDING

    page = Elements(write_report(out)[0].read_text())
    ids = {a["id"] for t, a in page.tags if t == "tr" and a.get("id", "").startswith("pending-")}
    assert ids == {f"pending-{p}" for p in PENDING}
    text = "".join(page.text)
    assert all(p.needs in text for p in PENDING.values())


def test_summary_markdown(out: Path):
    md = write_report(out)[1].read_text()
    lines = md.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| claim |"))
    n_cols = lines[header].count(" | ") + 1
    assert lines[header + 1] == "|" + "---|" * n_cols
    rows = {line.split(" | ")[0][2:]: line for line in lines[header + 2 : header + 5]}
    assert set(rows) == {"`fake-holds`", "`fake-fails`", "`fake-error`"}
    assert (
        "**holds**" in rows["`fake-holds`"]
        and "[figure.png](runs/fake-holds-run-1700000000/figure.png)" in rows["`fake-holds`"]
    )
    assert "**inconclusive** (error)" in rows["`fake-error`"]
    fails = rows["`fake-fails`"]
    assert "&lt;script&gt;" in fails and "<script>" not in md
    assert "\\| slope 0.3" in fails  # the pipe does not split the cell
    assert fails.count(" | ") == n_cols - 1 and "slope = 0.3" in fails
    assert "## Environment" in md and "Test CPU" in md


def test_text_table(out: Path):
    results, problems = load_results(out)
    assert problems == []
    table = format_text_table(results)
    assert table.splitlines()[0].split() == ["claim", "verdict", "mode", "seeds", "time", "reason"]
    assert "FAILS" in table and "HOLDS" in table and "[error] the experiment raised" in table


def test_unreadable_result_is_a_problem_not_a_crash(out: Path):
    fake_result(out, "broken", "holds", "", {})
    (out / RUNS_DIR / "broken-run-1700000000" / "result.json").write_text("{not json")
    results, problems = load_results(out)
    assert len(results) == 3 and len(problems) == 1 and "broken" in problems[0]
    html_text = write_report(out)[0].read_text()
    assert "Problems" in html_text and "unreadable result file" in html_text


def test_figure_that_is_not_png(out: Path):
    (out / RUNS_DIR / "fake-holds-run-1700000000" / "figure.png").write_bytes(b"GIF89a not a png")
    page = Elements(write_report(out)[0].read_text())
    assert "fake-holds" not in page.images()
    assert "figure.png is not a readable PNG" in "".join(page.text)


def test_bad_directories(tmp_path: Path):
    with pytest.raises(ReportError, match="does not exist"):
        write_report(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReportError, match="not a directory"):
        write_report(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no complete claim run"):
        write_report(tmp_path / "empty")
    assert not (tmp_path / "empty" / "report.html").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "index.sqlite").write_text("garbage" * 100)
    with pytest.raises(ReportError, match="--rebuild-index"):
        write_report(tmp_path / "bad")


def test_merging_output_roots(tmp_path: Path):
    """Shards of a job array: the latest complete run of each claim over every root."""
    a, b = tmp_path / "a", tmp_path / "b"
    fake_result(a, "one", "holds", "a's one", {}, started=1.0)
    fake_result(a, "two", "holds", "a's two", {}, started=1.0)
    fake_result(b, "two", "fails", "b's two", {}, started=2.0)
    html_path, _ = write_report([a, b], tmp_path / "merged")
    assert html_path == tmp_path / "merged" / "report.html"
    text = "".join(Elements(html_path.read_text()).text)
    assert "a's one" in text and "b's two" in text and "a's two" not in text
