"""Shared check for the claims' end-to-end quick runs."""

from __future__ import annotations

import json

import torch

from normlab.claims import get_claim
from normlab.claims.base import STATUSES
from normlab.claims.runner import run_claim


def quick_run(claim_id: str, tmp_path) -> dict:
    """Run ``claim_id`` in quick mode into ``tmp_path``; check the files and the status; return result.json."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_claim(get_claim(claim_id), tmp_path, quick=True, log=lambda s: None)
    finally:
        torch.set_num_threads(before)
    out = tmp_path / claim_id
    assert result["error"] is None, result["error"]
    assert (out / "result.json").exists()
    assert (out / "figure.png").exists()
    saved = json.loads((out / "result.json").read_text())
    assert saved["verdict"]["status"] in STATUSES
    assert saved["mode"] == "quick"
    return saved
