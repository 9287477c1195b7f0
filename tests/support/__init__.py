"""Test support shared across test packages: fakes behind the flows' protocols (fakes.py)."""
