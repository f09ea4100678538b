"""Benchmarks and evaluation tools (`gateway bench ...`)."""
