"""Suite-wide test settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    """The tests use tiny tensors, which gain nothing from intra-op threads.

    On a busy 2-core machine the second OpenMP thread is often descheduled and
    every parallel region waits for it: a (2, 3, 4, 4) BatchNorm forward took
    8 ms with 2 threads vs 0.3 ms with 1, which made gradcheck/gradgradcheck
    over the case table take minutes. Numbers are unaffected (tiny reductions
    run serially either way).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
