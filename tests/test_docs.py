"""The docs' Python examples run as pasted: every ```python block of a page, in order, in one fresh process.

(docs/analysis.md has its own runner: tests/analysis/test_analysis_docs.py.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["docs/framework.md", "docs/optim.md", "README.md"]


def _blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, tmp_path):
    blocks = _blocks(ROOT / page)
    assert blocks, f"{page} has no python examples"
    script = tmp_path / "page.py"
    # A fresh process: the examples define classes and may register things; they must not leak into the suite.
    script.write_text("import torch\ntorch.set_num_threads(1)\n" + "\n\n".join(blocks))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{page}'s examples failed:\n{proc.stderr[-4000:]}"
