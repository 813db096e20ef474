"""The package's version, recorded in every run's provenance and every exported file; pyproject.toml names the same."""

__version__ = "0.1.0"
