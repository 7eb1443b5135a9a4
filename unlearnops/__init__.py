"""unlearnops: deletion requests in, certified forgetting models out.

Plugin authors import from :mod:`unlearnops.plugin`."""

__version__ = "0.1.0"
__all__ = ["__version__"]
