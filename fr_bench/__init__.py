"""frbench: evaluation and benchmarking harness for synthetic face-recognition datasets."""

__version__ = "0.1.0"
