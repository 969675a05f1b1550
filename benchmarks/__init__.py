"""Benchmarks: thin drivers over ramp's public pipeline, each run as `python -m benchmarks.NAME`."""
