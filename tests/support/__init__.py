"""Test support shared across test packages: the fixtures (fixtures.py, a plugin of the root conftest),
labs (labs.py), databases (databases.py) and fakes behind the flows' protocols (fakes.py)."""
