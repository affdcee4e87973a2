"""Benchmarks of kafka-log-middleware: request-path overhead and publisher throughput.

``bench/run`` reproduces everything and regenerates ``docs/benchmarks.md``.
"""
