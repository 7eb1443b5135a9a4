"""A plugin whose import fails: it needs a package that is not installed."""

import unlearnops_example_missing_dependency  # noqa: F401
