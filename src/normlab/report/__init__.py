"""The claims report: a static HTML page and a markdown summary of an output root.

``write_report(out_dir)`` reads every ``out_dir/<claim-id>/result.json``
written by :mod:`normlab.claims.runner` and writes ``out_dir/report.html``
(self-contained: figures embedded as base64 PNG ``data:`` URIs, so the single
file can be mailed or attached and still shows everything) and
``out_dir/summary.md`` (a markdown table of the same verdicts, linking the
figures by relative path).
"""

from .build import ReportError, format_text_table, load_results, write_report

__all__ = ["ReportError", "format_text_table", "load_results", "write_report"]
