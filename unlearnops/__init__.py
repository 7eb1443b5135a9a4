"""unlearnops: deletion requests in, certified forgetting models out."""

from unlearnops.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
