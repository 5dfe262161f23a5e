"""Benchmarks of the broker on loopback: `make bench` (see __main__.py and docs/benchmarks.md)."""
