"""Benchmarks of the hub's hot paths (``make bench`` / ``python -m bench.run``).

Each benchmark measures the real thing (the CLI, the HTTP server) and, in the same run, a baseline
on the same machine, so figures can be read as ratios that survive a change of hardware.
"""
