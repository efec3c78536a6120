#!/usr/bin/env python3
"""Front end of :mod:`visionattn.tools.export` (see its docstring, or run with ``--help``)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without `pip install`
from visionattn.tools.export import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
