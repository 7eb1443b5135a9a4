"""The hooks a plugin implements. Each docstring here is the plugin author's reference.

A plugin is a module or object with functions decorated by :data:`unlearnops.plugin.hookimpl`, made known through
the ``unlearnops`` entry-point group of its distribution::

    [project.entry-points.unlearnops]
    my_method = "my_package.my_module"

Built-in methods, gates, dataset adapters, locators and exporters in ``plugins/`` register through exactly
these hooks. Every type and helper these docstrings name is importable from :mod:`unlearnops.plugin`, the one
module a plugin imports from; :mod:`unlearnops.plugin_manager` loads the plugins and collects what they
register.
``UNLEARNOPS_PLUGINS=name,name`` limits which entry points load (empty: none; unset: all).

Every registered object needs ``name: str`` (unique within its kind) and ``version: str``. A plugin that
fails to import, raises while registering, or registers an object that breaks its contract is reported
by name (``unlearnops plugins list`` shows the reason) and contributes nothing.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("unlearnops")
hookimpl = pluggy.HookimplMarker("unlearnops")


@hookspec
def register_methods(register: Callable[[object], None]) -> None:
    """Register unlearning methods by calling ``register(method)`` once per method.

    A method is an object (subclassing :class:`unlearnops.plugin.Method` gives the defaults) with:

    * ``name: str`` — unique, used by ``unlearnops run --method NAME``; ``version: str``;
    * ``Config`` — a pydantic model class with an integer ``seed`` field
      (:class:`unlearnops.plugin.MethodConfig` is a base with ``seed`` and unknown keys forbidden); its
      defaults are the method's defaults, and ``unlearnops run --config key=value`` is validated against it;
    * ``needs_retain: bool`` — whether ``inputs.retain`` must hold samples;
    * ``needs_labels: bool`` (default True) — whether the method reads ``labels`` (False: features only);
    * ``model_families: tuple[str, ...]`` (default ``("Module",)``: any torch module) — class names of the
      models it handles, matched against the model's class and its bases;
    * ``supports_gpu: bool`` — whether ``unlearn`` honours a CUDA ``device`` (if not, it runs on CPU);
    * ``unlearn(model, inputs, config, device) -> UnlearnResult``.

    ``unlearn`` receives a private copy of the caller's model, already on ``device``, and may change it in
    place; it must leave every parameter and buffer on ``device``, keep the parameter names, and return an
    :class:`unlearnops.plugin.UnlearnResult` whose ``changed_parameters`` names exactly the parameters it
    changed (the runner measures and records how far each moved, and how long the call took). ``inputs``
    (:class:`unlearnops.plugin.UnlearnInputs`: ``forget``, ``retain``, ``holdout`` samples and the
    allowed utility drop) must not be modified. The result must be identical for the same ``config.seed``.
    Any exception, another return type, a parameter left on another device or non-finite weights fail
    the batch with an error naming the method; its requests stay retryable and nothing is registered.
    ``unlearnops.plugin.assert_conformant(method)`` checks all of this on a tiny real task.
    """


@hookspec
def register_gates(register: Callable[[object], None]) -> None:
    """Register gates (checks a candidate model must pass to be certified) by calling ``register(gate)``.

    A gate has ``name``, ``version``, ``description: str`` and
    ``check(evidence, settings) -> unlearnops.plugin.GateResult`` where ``evidence`` is an
    :class:`unlearnops.plugin.GateEvidence` (manifests before/after, deleted ids and hashes, per-sample
    evaluations of the parent and the unlearned model on the forget, held-out and test sets) and
    ``settings`` the workspace's :class:`unlearnops.plugin.GateSettings`. The result's ``status`` is
    ``pass``, ``fail``, ``inconclusive`` or ``not_applicable`` (nothing to judge in this batch, see
    :func:`unlearnops.plugin.not_applicable`; left out of the verdict); only a batch whose applicable gates all
    pass is certified. ``check`` must
    not change the evidence.
    """


@hookspec
def register_locators(register: Callable[[object], None]) -> None:
    """Register sample locators by calling ``register(locator)``.

    A locator has ``name``, ``version``, ``kind`` (``"exact"``: runs for every request; ``"near-duplicate"``:
    runs only for requests whose ``policy`` is ``"expand"``, and then needs ``default_min_score: float``)
    and ``locate(requests, ctx) -> pandas.DataFrame``. ``requests`` is the whole batch (a list of
    :class:`unlearnops.plugin.DeletionRequest`); ``ctx`` is an :class:`unlearnops.plugin.LocateContext`:
    ``ctx.table`` the manifest as a memory-mapped Arrow table (columns of
    :data:`unlearnops.plugin.MANIFEST_COLUMNS`), ``ctx.features`` and ``ctx.model`` (loaded on first use;
    the model may be None), ``ctx.seeds`` (``request``, ``row``: what the exact locators found for the
    ``expand`` requests — the queries of a near-duplicate locator), ``ctx.min_score(locator)`` and
    ``ctx.notes`` (say there why nothing could be looked for). The result has one row per match: ``request``
    (index into ``requests``), ``row`` (manifest row), ``score`` (1 for exact matches; near-duplicates: higher
    is closer, only those ≥ ``ctx.min_score(self)`` count) and optionally ``via`` (the located sample id it
    resembles); :func:`unlearnops.plugin.matches_frame` builds it. Work on whole columns at once: the batch
    may hold thousands of requests and the manifest millions of rows. The locator must not modify its
    inputs; an exception or rows out of range fail the batch with an error naming it. The workspace's
    ``[locate] locators`` lists the locators the flow uses, in order of precedence.
    """


@hookspec
def register_exporters(register: Callable[[object], None]) -> None:
    """Register model exporters by calling ``register(exporter)``.

    An exporter has ``name``, ``version``, ``suffix: str`` (file extension, e.g. ``".onnx"``) and
    ``export(model, sample, path) -> dict``: write ``model`` (an ``nn.Module`` on CPU, in eval mode) to
    ``path`` using ``sample`` (a float32 batch of real inputs) to trace and to check the exported file
    against the torch outputs; return a JSON-serialisable record with at least ``sha256`` of the file.
    """


@hookspec
def register_dataset_adapters(register: Callable[[object], None]) -> None:
    """Register dataset adapters (sources ``unlearnops init`` can build dataset version 1 from) by calling
    ``register(adapter)``.

    An adapter has ``name``, ``version``, ``description: str``, ``Options`` (a pydantic model of the
    ``[data.options]`` table in ``unlearnops.toml``; unknown keys should be forbidden) and
    ``load(options, root, limit) -> unlearnops.plugin.SourceData``: read the source (relative paths are
    relative to the workspace ``root``; ``limit``, when not None, keeps the first N samples) and return
    features, labels, sample ids and subject ids. Raise ``ValueError`` with a message that says what to fix
    when the source is unreadable or malformed; ``init`` then stops before it writes anything.
    """


@hookspec
def before_unlearn(event: dict) -> None:
    """Called once per batch just before the unlearning method runs (audit, notification, policy).

    ``event`` holds ``run_id``, ``request_ids``, ``method``, ``method_version``, ``method_source``,
    ``config`` (dict), ``device``, ``n_forget`` and ``dataset_after`` (the new dataset version). Raising
    vetoes the batch: the method does not run, the requests become ``failed`` (retryable) with this
    plugin's name in the error, and nothing is registered.
    """


@hookspec
def after_certify(event: dict) -> None:
    """Called once per batch after the model version is registered with its signed certificate.

    ``event`` holds ``run_id``, ``request_ids``, ``registered_version``, ``status`` (``certified`` or
    ``not-certified (...)``) and ``certificate`` (the signed certificate dict; do not modify). The version
    is registered whatever this hook does: an exception here is reported — logged, kept in the batch
    record's ``hook_errors`` and in the run summary — but does not undo the registration.
    """
