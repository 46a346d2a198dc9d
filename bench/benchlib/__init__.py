"""The benchmark's library: everything bench/run.py, cpu.py, instructions.py and handler.py
share (the fake upstream, the systems under test, the load generator, ledger counts, reports).
bench/run.py is the script that puts it together."""

import sys as _sys
from pathlib import Path as _Path

_ROOT = str(_Path(__file__).resolve().parent.parent.parent)
if _ROOT not in _sys.path:
    _sys.path.insert(0, _ROOT)  # the repository root: devtools/, shared with the tests
