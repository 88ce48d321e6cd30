"""Readers and writers for benchmark files, datasets and caches."""
