"""The library version (its own module, so that nothing needs to import the package to read it)."""

__version__ = "0.2.0"
