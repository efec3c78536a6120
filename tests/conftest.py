"""Shared test setup: make tests/ importable helpers visible and pin threads for stable timing."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Put torch's intra-op thread count back after every test: the programs' ``--threads`` (and
    tests calling them with ``threads=1``) set it process-wide, and a leaked 1 made every later
    test run on one core."""
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)
