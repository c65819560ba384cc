"""Every ``python`` code block of docs/analysis.md runs as is (the page promises it)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest
import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "analysis.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def _title(i: int, code: str) -> str:
    first = next((ln for ln in code.splitlines() if ln and not ln.startswith(("import", "from"))), "")
    return f"block{i}:{first[:40]}"


def test_the_page_has_examples():
    assert len(BLOCKS) >= 10


@pytest.mark.parametrize("code", BLOCKS, ids=[_title(i, c) for i, c in enumerate(BLOCKS)])
def test_doc_block_runs(code, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; spinning threads only slow a busy machine
    try:
        # Figures go to the test's own folder, not the shared /tmp.
        exec(compile(code.replace('"/tmp/', f'"{tmp_path}/'), str(DOC), "exec"), {"__name__": "__doc_example__"})
    finally:
        torch.set_num_threads(before)
