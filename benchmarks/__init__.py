"""Throughput benchmarks: each figure is a ratio against a baseline run side by side on the same machine."""
