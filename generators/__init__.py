"""Generator adapters, by name (see :mod:`fr_bench.generators.base`)."""

from .base import GeneratorAdapter, available_generators, get_generator, register_generator, sample_seed

__all__ = ["GeneratorAdapter", "available_generators", "get_generator", "register_generator", "sample_seed"]
