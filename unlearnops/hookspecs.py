"""The hooks a plugin implements. Each docstring here is the plugin author's reference.

A plugin is a module or object with functions decorated by :data:`unlearnops.hookimpl`, made known through
the ``unlearnops`` entry-point group of its distribution::

    [project.entry-points.unlearnops]
    my_method = "my_package.my_module"

Built-in methods in ``plugins/`` register through exactly these hooks.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("unlearnops")
hookimpl = pluggy.HookimplMarker("unlearnops")


@hookspec
def register_methods(register: Callable[[object], None]) -> None:
    """Register unlearning methods by calling ``register(method)`` once per method.

    A method is an object with:

    * ``name: str`` — unique, used by ``unlearnops run --method NAME``;
    * ``version: str``;
    * ``Config`` — a pydantic model class; its defaults are the method's defaults, and
      ``unlearnops run --config key=value`` is validated against it;
    * ``needs_retain: bool`` — whether ``inputs.retain`` must hold samples;
    * ``supports_gpu: bool`` — whether ``unlearn`` honours a CUDA ``device``;
    * ``unlearn(model, inputs, config, device) -> UnlearnResult`` — change ``model`` (already on
      ``device``) so that it forgets ``inputs.forget``; ``inputs`` is an
      :class:`unlearnops.methods.UnlearnInputs` with ``forget``, ``retain`` and ``holdout`` arrays and the
      gate settings, ``config`` an instance of ``Config``. Must be deterministic for ``config.seed``.
    """
