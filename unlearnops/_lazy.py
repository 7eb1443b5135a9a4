"""Deferred imports of the heavy libraries (torch, pandas), for a fast start-up of the everyday commands.

``torch = lazy_module("torch")`` binds a module proxy: the real module is imported on the first attribute
access (``torch.zeros``, ``nn.Module``, ``F.cross_entropy``, ``pd.DataFrame``), so loading and listing
plugins (``unlearnops plugins list``) imports none of them, while code that runs a method uses them
exactly as the real modules. Type checkers see the real modules (``if TYPE_CHECKING: import torch``,
``else: torch = lazy_module("torch")``). Plugin authors get both helpers from :mod:`unlearnops.plugin`. :func:`no_grad` is ``torch.no_grad()`` as a decorator, without importing torch at
definition time.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any, Callable, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class LazyModule(ModuleType):
    """A stand-in for module ``name`` that imports it on first attribute access."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_lazy_target"] = name

    def _load(self) -> ModuleType:
        return importlib.import_module(self.__dict__["_lazy_target"])

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def __repr__(self) -> str:
        return f"<lazy module {self.__dict__['_lazy_target']!r}>"


def lazy_module(name: str) -> ModuleType:
    """Module ``name``, imported on first attribute access: ``torch = lazy_module("torch")`` at the top of
    a plugin module keeps loading it (``unlearnops plugins list``) free of torch. Module-level code must
    not touch it (a ``class X(nn.Module)`` or ``@torch.no_grad()`` there imports torch; see :func:`no_grad`)."""
    return LazyModule(name)


def no_grad(function: T) -> T:
    """``@torch.no_grad()`` that imports torch only when ``function`` is called."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch as real_torch

        with real_torch.no_grad():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
