"""The benchmark's library: everything bench/run.py, cpu.py, instructions.py and handler.py
share (the fake upstream, the systems under test, the load generator, ledger counts, reports).
bench/run.py is the script that puts it together."""
