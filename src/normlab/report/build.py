"""Build ``report.html`` and ``summary.md`` from the result files of an output root.

Layout read (written by :func:`normlab.claims.runner.run_claim`, see
:mod:`normlab.runs`): each claim's latest complete run, found through
``OUT/index.sqlite``, from ``OUT/runs/<run-id>/result.json`` (verdict with
its parts and checks, numbers, params, seeds, mode, seconds, env, error),
``rows.json`` and ``figure.png``. Several output roots merge.

Decisions:

- Figures are embedded as base64 PNG ``data:`` URIs: the page is one file that
  stays complete when copied, mailed or attached to an issue (a full run's
  figures add ~1-2 MB). ``summary.md`` links them by relative path instead.
- All text from result files goes through :func:`html.escape` (the HTML) or
  :func:`_md` (the markdown): a claim's reason or error is data, never markup.
- A result file that cannot be read is listed under "Problems" rather than
  stopping the report; a directory with no result at all is an error.
- Rows follow the claim registry's order; results of ids the registry does
  not know (an older checkout's output) come after, sorted.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HTML_NAME = "report.html"
MD_NAME = "summary.md"
# Environment keys shown in the report, in this order, with their labels.
ENV_KEYS: tuple[tuple[str, str], ...] = (
    ("normlab", "normlab"),
    ("git", "git revision"),
    ("python", "Python"),
    ("torch", "torch"),
    ("numpy", "numpy"),
    ("platform", "platform"),
    ("cpu", "CPU"),
    ("cores", "cores"),
    ("torch_threads", "torch threads per cell"),
    ("jobs", "worker processes"),
)
_EVIDENCE_CHARS = 20_000  # the evidence shown inline; result.json has all of it


class ReportError(ValueError):
    """The output root cannot give a report: missing, unreadable, or without results."""


# --------------------------------------------------------------------------- reading


def load_results(out_dirs: str | Path | Sequence[str | Path]) -> tuple[list[dict], list[str]]:
    """The latest complete (or failed) run of each claim under ``out_dirs`` and the problems met reading them.

    Several output roots (the shards of a job array, say) merge: for each
    claim the most recently started run wins. Runs are found through each
    root's index; a root without an index but with run directories is read
    from the directories. Interrupted or still-running runs are never
    results. Each record is the parsed ``result.json`` plus ``_dir`` (its run
    directory). Raises :class:`ReportError` if a root is missing, unreadable,
    or its index is broken (the message says how to rebuild it).
    """
    from ..runs import RUNS_DIR, IndexError_, RunIndex, record_from_dir

    roots = [Path(out_dirs)] if isinstance(out_dirs, (str, Path)) else [Path(d) for d in out_dirs]
    if not roots:
        raise ReportError("give at least one output directory")
    latest: dict[str, dict] = {}
    problems: list[str] = []
    for root in roots:
        if not root.exists():
            raise ReportError(f"output directory {str(root)!r} does not exist; run `normlab reproduce` to create it")
        if not root.is_dir():
            raise ReportError(f"{str(root)!r} is not a directory")
        index = RunIndex(root)
        try:
            if index.path.exists():
                rows = index.list(problems=problems)
            else:
                runs_dir = root / RUNS_DIR
                dirs = sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []
                rows = [r for r in (record_from_dir(d, root) for d in dirs) if r is not None]
                for r in rows:
                    r["path"] = root / r["path"]
        except IndexError_ as err:
            raise ReportError(str(err)) from err
        except OSError as err:
            raise ReportError(f"cannot read output directory {str(root)!r}: {err.strerror or err}") from err
        for r in rows:
            if r["state"] not in ("complete", "failed"):
                continue
            prev = latest.get(r["claim"])
            if prev is None or r["started"] >= prev["started"]:
                latest[r["claim"]] = r
    results = []
    for claim, r in latest.items():
        path = Path(r["path"]) / "result.json"
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or not isinstance(record.get("verdict"), dict):
                raise ValueError("not a claim result (no verdict)")
        except (OSError, ValueError) as err:
            problems.append(f"{path}: unreadable result file of the latest {claim} run ({err})")
            continue
        record.setdefault("id", claim)
        record["_dir"] = Path(r["path"])
        results.append(record)
    return _registry_order(results), problems


def _registry_order(results: list[dict]) -> list[dict]:
    from ..claims import CLAIMS

    order = {cid: i for i, cid in enumerate(CLAIMS)}
    return sorted(results, key=lambda r: (order.get(r["id"], len(order)), str(r["id"])))


# --------------------------------------------------------------------------- formatting


def _fmt_value(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(", ", ": "))


def _numbers(record: dict) -> list[tuple[str, str]]:
    numbers = record.get("verdict", {}).get("numbers") or {}
    if not isinstance(numbers, dict):
        return [("numbers", _fmt_value(numbers))]
    return [(str(k), _fmt_value(v)) for k, v in numbers.items()]


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "-"
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s"


def _seeds(record: dict) -> str:
    seeds = record.get("seeds")
    if not isinstance(seeds, list):
        return _fmt_value(seeds)
    if not seeds:
        return "-"
    listed = ", ".join(map(str, seeds)) if len(seeds) <= 5 else f"{seeds[0]}..{seeds[-1]}"
    return f"{len(seeds)} [{listed}]"


def _status(record: dict) -> str:
    status = str(record.get("verdict", {}).get("status", "inconclusive"))
    return status if status in ("holds", "fails", "inconclusive") else "inconclusive"


def _command(record: dict) -> str:
    cmd = f"normlab reproduce {record['id']}"
    if record.get("mode") == "quick":
        cmd += " --quick"
    seeds = record.get("seeds")
    if isinstance(seeds, list) and seeds:
        contiguous = seeds == list(range(seeds[0], seeds[0] + len(seeds)))
        spec = (
            (str(len(seeds)) if seeds[0] == 0 else f"{seeds[0]}-{seeds[-1]}")
            if contiguous
            else ",".join(map(str, seeds))
        )
        cmd += f" --seeds {spec}"
    return cmd


def _counts(results: Iterable[dict]) -> str:
    results = list(results)
    counts = {s: sum(_status(r) == s for r in results) for s in ("holds", "fails", "inconclusive")}
    errors = sum(bool(r.get("error")) for r in results)
    text = f"{len(results)} claim{'s' if len(results) != 1 else ''}: " + ", ".join(
        f"{n} {s}" for s, n in counts.items()
    )
    return text + (f" ({errors} with an error)" if errors else "")


def _modes(results: list[dict]) -> set[str]:
    return {str(r.get("mode", "?")) for r in results}


def _environment(results: list[dict]) -> list[tuple[str, str]]:
    """Each environment key with its distinct values over the runs (most runs agree)."""
    rows = []
    envs = [r.get("env") or {} for r in results]
    for key, label in ENV_KEYS:
        values: list[str] = []
        for env in envs:
            v = _fmt_value(env.get(key))
            if v not in values:
                values.append(v)
        rows.append((label, "; ".join(values) if values else "-"))
    started = [r["started"] for r in results if isinstance(r.get("started"), (int, float))]
    if started:
        first, last = (time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t)) for t in (min(started), max(started)))
        rows.append(("runs started", first if first == last else f"{first} to {last}"))
    return rows


def format_text_table(results: list[dict], width: int = 72) -> str:
    """A plain-text table of the verdicts, for the terminal."""
    rows = [("claim", "verdict", "mode", "seeds", "time", "reason")]
    for r in results:
        reason = " ".join(str(r.get("verdict", {}).get("reason", "")).split())
        if r.get("error"):
            reason = "[error] " + reason
        if len(reason) > width:
            reason = reason[: width - 3] + "..."
        seeds = r.get("seeds")
        rows.append(
            (
                str(r["id"]),
                _status(r).upper(),
                str(r.get("mode", "?")),
                str(len(seeds)) if isinstance(seeds, list) else "-",
                _duration(r.get("seconds")),
                reason,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1] for row in rows]
    return "\n".join(line.rstrip() for line in lines)


# --------------------------------------------------------------------------- figures


def _figure_paths(record: dict) -> list[Path]:
    """The claim's main figure first, then any other PNG its run wrote, all inside its directory."""
    d: Path = record["_dir"]
    paths = []
    name = record.get("figure")
    if isinstance(name, str) and name:
        p = (d / name).resolve()
        if p.parent == d.resolve() and p.is_file():
            paths.append(p)
    for p in sorted(d.glob("*.png")):
        if p.resolve() not in paths:
            paths.append(p.resolve())
    return paths


def _data_uri(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(PNG_SIGNATURE):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #1d2330; }
h1 { margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #d6dae3; }
table { border-collapse: collapse; width: 100%; margin: .6em 0; }
th, td { border: 1px solid #d6dae3; padding: .35em .5em; text-align: left; vertical-align: top; }
th { background: #f1f3f7; }
tr:target, section:target { outline: 2px solid #5b8def; }
.badge { display: inline-block; padding: .1em .6em; border-radius: .8em; font-weight: 600; color: #fff;
         font-size: 12px; white-space: nowrap; }
.badge.holds { background: #1f8a4c; } .badge.fails { background: #c8352b; }
.badge.inconclusive { background: #c98a0b; }
.badge.error { background: #6b4fa3; margin-left: .3em; }
ul.numbers { list-style: none; margin: 0; padding: 0; font-family: ui-monospace, monospace; font-size: 12px; }
.meta, .note { color: #4a5263; } .note { background: #fff8e1; padding: .5em .8em; border-left: 3px solid #c98a0b; }
section.claim { margin: 1.5em 0; padding-top: .2em; }
dl { display: grid; grid-template-columns: 9em 1fr; gap: .25em 1em; }
dt { font-weight: 600; color: #4a5263; } dd { margin: 0; }
img.figure { max-width: 100%; border: 1px solid #d6dae3; display: block; margin: .6em 0; }
pre { background: #f6f7f9; padding: .6em; overflow-x: auto; font-size: 12px; }
pre.error { background: #fdecea; border-left: 3px solid #c8352b; }
code { font-family: ui-monospace, monospace; }
.nowrap { white-space: nowrap; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _badge(record: dict) -> str:
    s = _status(record)
    out = f'<span class="badge {s}">{s}</span>'
    if record.get("error"):
        out += '<span class="badge error">error</span>'
    return out


def _numbers_html(record: dict) -> str:
    items = _numbers(record)
    if not items:
        return "-"
    return '<ul class="numbers">' + "".join(f"<li>{_e(k)} = {_e(v)}</li>" for k, v in items) + "</ul>"


def _row_html(r: dict) -> str:
    cid = _e(r["id"])
    cells = [
        f'<td class="nowrap"><a href="#section-{cid}"><code>{cid}</code></a></td>',
        f"<td>{_e(r.get('title', ''))}</td>",
        f"<td>{_e(r.get('source', ''))}</td>",
        f"<td>{_badge(r)}</td>",
        f"<td>{_numbers_html(r)}</td>",
        f"<td>{_e(r.get('verdict', {}).get('reason', ''))}</td>",
        f'<td class="nowrap">{_e(_seeds(r))}</td>',
        f"<td>{_e(r.get('mode', '?'))}</td>",
        f'<td class="nowrap">{_e(_duration(r.get("seconds")))}</td>',
    ]
    return f'<tr id="claim-{cid}" class="verdict-{_status(r)}">' + "".join(cells) + "</tr>"


def _parts_html(r: dict) -> str:
    parts = r.get("verdict", {}).get("parts") or []
    if not parts:
        return "-"
    items = [
        f'<li><span class="badge {_e(p.get("status"))}">{_e(p.get("status"))}</span> {_e(p.get("text", ""))}</li>'
        for p in parts
        if isinstance(p, dict)
    ]
    return '<ul class="numbers">' + "".join(items) + "</ul>"


def _checks_html(r: dict) -> str:
    checks = r.get("verdict", {}).get("checks") or []
    if not checks:
        return "-"
    items = [
        f"<li>{'pass' if c.get('passed') else 'FAILED'}: {_e(c.get('text', ''))}</li>"
        for c in checks
        if isinstance(c, dict)
    ]
    return (
        '<ul class="numbers">' + "".join(items) + "</ul> <span class='meta'>(follow from algebra; not evidence)</span>"
    )


def _rel(path: Path, out_dir: Path) -> str:
    try:
        return os.path.relpath(path, out_dir)
    except ValueError:
        return str(path)


def _files_html(r: dict, out_dir: Path) -> str:
    d = _rel(r["_dir"], out_dir)
    links = [
        f'<a href="{_e(d)}/{name}">{_e(d)}/{name}</a>'
        for name in ("result.json", "rows.json", "config.json", "env.json")
    ]
    return ", ".join(links) + " (links need the output folder beside this page)"


def _section_html(r: dict, out_dir: Path) -> str:
    cid = _e(r["id"])
    parts = [f'<section class="claim" id="section-{cid}">', f"<h3><code>{cid}</code>: {_e(r.get('title', ''))}</h3>"]
    fields = [
        ("source", _e(r.get("source", ""))),
        ("statement", _e(r.get("statement", ""))),
        ("protocol", _e(r.get("protocol", ""))),
        ("rule", _e(r.get("rule", ""))),
        ("verdict", _badge(r) + " " + _e(r.get("verdict", {}).get("reason", ""))),
        ("numbers", _numbers_html(r)),
        ("seeds / mode", f"{_e(_seeds(r))} / {_e(r.get('mode', '?'))}, {_e(_duration(r.get('seconds')))}"),
        ("evidence", _parts_html(r)),
        ("checks", _checks_html(r)),
        ("command", f"<code>{_e(_command(r))}</code>"),
        ("files", _files_html(r, out_dir)),
    ]
    parts.append("<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in fields) + "</dl>")
    figures = _figure_paths(r)
    for path in figures:
        uri = _data_uri(path)
        if uri is None:
            parts.append(f"<p class='note'>figure {_e(path.name)} is not a readable PNG</p>")
            continue
        parts.append(
            f'<img class="figure" data-claim="{cid}" data-figure="{_e(path.name)}" '
            f'alt="{_e(r["id"])}: {_e(path.name)}" src="{uri}">'
        )
    if not figures:
        parts.append("<p class='note'>no figure (the run did not produce one)</p>")
    if r.get("error"):
        parts.append(f'<p>The run raised an error:</p><pre class="error">{_e(r["error"])}</pre>')
    try:
        rows = (r["_dir"] / "rows.json").read_text()
    except OSError:
        rows = "(rows.json not readable)"
    cut = len(rows) > _EVIDENCE_CHARS
    rows = rows[:_EVIDENCE_CHARS] + ("\n... (truncated; see rows.json)" if cut else "")
    parts.append(f"<details><summary>rows (every cell)</summary><pre>{_e(rows)}</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


def _pending_and_absent(results: list[dict]):
    from ..claims import CLAIMS, PENDING

    present = {r["id"] for r in results}
    pending = [p for cid, p in PENDING.items() if cid not in present]
    absent = [c for cid, c in CLAIMS.items() if cid not in present]
    return pending, absent


def render_html(results: list[dict], problems: list[str], out_dir: Path) -> str:
    pending, absent = _pending_and_absent(results)
    written = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    body = [
        "<h1>normlab: claims report</h1>",
        f'<p class="meta">{_e(_counts(results))}. Written {_e(written)} from <code>{_e(out_dir)}</code>; '
        f'markdown summary: <a href="{MD_NAME}">{MD_NAME}</a>.</p>',
    ]
    if "quick" in _modes(results):
        body.append(
            '<p class="note">Some claims ran in quick mode: a quick run checks that the pipeline works '
            "end to end; its verdict is not the claim's. The full run (<code>normlab reproduce --all</code>) "
            "decides.</p>"
        )
    head = ("claim", "title", "source", "verdict", "deciding numbers", "reason", "seeds", "mode", "time")
    body.append('<table id="claims"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>")
    body.extend(_row_html(r) for r in results)
    body.append("</tbody></table>")
    body.append("<h2>Claims</h2>")
    body.extend(_section_html(r, out_dir) for r in results)
    if absent:
        body.append("<h2>Implemented, not in this output</h2><ul>")
        body.extend(
            f"<li><code>{_e(c.id)}</code>: {_e(c.title)} ({_e(c.source)}): "
            f"<code>normlab reproduce {_e(c.id)}</code></li>"
            for c in absent
        )
        body.append("</ul>")
    if pending:
        body.append('<h2>Pending claims</h2><table id="pending"><thead><tr><th>claim</th><th>source</th>')
        body.append("<th>statement</th><th>needs</th></tr></thead><tbody>")
        body.extend(
            f'<tr id="pending-{_e(p.id)}"><td><code>{_e(p.id)}</code></td><td>{_e(p.source)}</td>'
            f"<td>{_e(p.statement)}</td><td>{_e(p.needs)}</td></tr>"
            for p in pending
        )
        body.append("</tbody></table>")
    body.append('<h2>Environment</h2><table id="environment"><tbody>')
    body.extend(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _environment(results))
    body.append("</tbody></table>")
    if problems:
        body.append("<h2>Problems</h2><ul>" + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>normlab claims report</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------- markdown


def _md(text) -> str:
    """A markdown table cell: one line, pipes escaped, no raw HTML (``<``/``>`` as entities)."""
    return " ".join(str(text).split()).replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def render_markdown(results: list[dict], problems: list[str], out_dir: Path) -> str:
    pending, absent = _pending_and_absent(results)
    lines = [
        "# normlab: claims summary",
        "",
        f"{_counts(results)}. Written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; "
        f"figures and details in [{HTML_NAME}]({HTML_NAME}).",
        "",
    ]
    if "quick" in _modes(results):
        lines += ["Some claims ran in quick mode (a pipeline check, not the claim's verdict).", ""]
    lines += [
        "| claim | title | source | verdict | deciding numbers | reason | seeds | mode | time | figure |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        nums = "; ".join(f"{k} = {v}" for k, v in _numbers(r)) or "-"
        verdict = f"**{_status(r)}**" + (" (error)" if r.get("error") else "")
        figs = _figure_paths(r)
        fig = f"[{figs[0].name}]({_rel(figs[0], out_dir)})" if figs else "-"
        cells = [
            f"`{_md(r['id'])}`",
            _md(r.get("title", "")),
            _md(r.get("source", "")),
            verdict,
            _md(nums),
            _md(r.get("verdict", {}).get("reason", "")),
            _md(_seeds(r)),
            _md(r.get("mode", "?")),
            _md(_duration(r.get("seconds"))),
            fig,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if absent:
        lines += ["", "Implemented, not in this output: " + ", ".join(f"`{_md(c.id)}`" for c in absent) + "."]
    if pending:
        lines += ["", "## Pending claims", "", "| claim | source | statement | needs |", "|---|---|---|---|"]
        lines += [f"| `{_md(p.id)}` | {_md(p.source)} | {_md(p.statement)} | {_md(p.needs)} |" for p in pending]
    lines += ["", "## Environment", ""]
    lines += [f"- {k}: {_md(v)}" for k, v in _environment(results)]
    if problems:
        lines += ["", "## Problems", ""] + [f"- {_md(p)}" for p in problems]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- entry point


def write_report(out_dirs: str | Path | Sequence[str | Path], dest: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``summary.md`` from the latest runs under ``out_dirs``; return their paths.

    They go into ``dest`` (default: the first output root). Raises
    :class:`ReportError` when a root is missing, unreadable or broken, or no
    root holds a complete run.
    """
    roots = [Path(out_dirs)] if isinstance(out_dirs, (str, Path)) else [Path(d) for d in out_dirs]
    results, problems = load_results(roots)
    if not results:
        detail = f" ({len(problems)} unreadable: {problems[0]})" if problems else ""
        raise ReportError(
            f"no complete claim run under {', '.join(repr(str(r)) for r in roots)}{detail}; "
            "run `normlab reproduce ID... --out DIR` first"
        )
    root = Path(dest) if dest is not None else roots[0]
    html_path, md_path = root / HTML_NAME, root / MD_NAME
    try:
        root.mkdir(parents=True, exist_ok=True)
        html_path.write_text(render_html(results, problems, root), encoding="utf-8")
        md_path.write_text(render_markdown(results, problems, root), encoding="utf-8")
    except OSError as err:
        raise ReportError(f"cannot write the report into {str(root)!r}: {err.strerror or err}") from err
    return html_path, md_path
