"""Benchmarks, run on demand (never by pytest): ``python -m tests.benchmarks``.

Each ``bench_*.py`` module exposes ``main(argv) -> int``, prints its figures and checks
with SQL or S3 that the work it measured really happened. They measure and report; they
never assert on speed (the machine is shared, so figures are noisy).
"""
