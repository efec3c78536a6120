"""Shared test setup: make tests/ importable helpers visible and pin threads for stable timing."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
