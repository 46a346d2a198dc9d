"""Helpers that both the tests (tests/) and the benchmarks (bench/) use, so that neither
imports the other. Not part of the shipped package (it lives outside src/); the repository
root must be on sys.path: pytest puts it there (pyproject.toml's pythonpath), the bench
scripts insert it themselves."""
