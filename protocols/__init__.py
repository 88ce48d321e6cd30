"""Benchmark protocols, by name (see :mod:`fr_bench.protocols.base`)."""

from .base import FIVE_BENCHMARKS, Benchmark, available_benchmarks, get_benchmark, register_benchmark

# Importing the modules registers their benchmarks.
from . import verification  # noqa: E402,F401
from . import ijb  # noqa: E402,F401
# <<protocol-imports>>

__all__ = ["FIVE_BENCHMARKS", "Benchmark", "available_benchmarks", "get_benchmark", "register_benchmark"]
