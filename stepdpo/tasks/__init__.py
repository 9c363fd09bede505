"""Embedded tasks with programmatic checkers (used by the demo, tests and benchmarks)."""
