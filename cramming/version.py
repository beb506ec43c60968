"""The package version: one place, read by pyproject.toml (setuptools dynamic version) and written into exports."""

__version__ = "0.1.0"
