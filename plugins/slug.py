"""Single-layer single-gradient unlearning (after Cai et al., "Single Layer Single Gradient Unlearning").

One pass computes the gradients of the forget loss and of the retain loss for every eligible tensor; no
optimizer steps. Layers are ranked by forget importance ‖g_f‖/‖W‖ and retain alignment |cos(g_r, g_f)|;
the Pareto front (high importance, low alignment) are the candidates. For a candidate the step
W = W₀ + λ·‖W₀‖·g_f/‖g_f‖ (gradient ascent on the forget loss, always from the original weights) is sized by
a forward-only search: λ doubles until the target is reached or utility breaks, then bisects. A model that
already meets the target (judged on the outputs the passes below record anyway) is left unchanged.

Cost: the two gradients are the method's floor (one forward + backward pass over the forget set and the
retain sample). The search then runs on cached activations: the model is traced once (torch.fx); the
gradient pass over the forget set keeps every eligible layer's inputs on its way, and one recording pass over
the held-out set those of every candidate layer (and the model's outputs, which give the baseline utility);
for a linear layer or convolution the edited layer's output is linear in the step,
z(λ) = z(W₀) + λ‖W₀‖·op(x, D) (both terms computed once per chunk, when a step first reads it), so each
evaluation runs only the layers above it (image-shaped activations are kept channels-last, where CPU pooling
is several times faster). Candidates
are searched cheapest tail first (multiply-adds per sample), and once one has a result the others must beat it: a
candidate's search scores the middle of the doubling grid completely first and stops as soon as a step that
breaks utility without reaching the target shows it cannot; against a bar that reached the target, a
bisection step that breaks utility while the cheap part of the target (forget-set accuracy, or the class's
held-out accuracy) is still missed ends it too, and against a bar that missed the target so does one whose
attack AUC / class accuracy cannot beat the bar's (criteria that grow with λ assumed, as by the
bisection; ``prune_candidates = false`` searches every candidate in full, for the same choice).

Targets:

* sample-level forgetting: the forget set looks like held-out non-members — forget accuracy at most the
  held-out accuracy and the confidence-attack AUC at most 0.5 + tolerance;
* class forgetting (every forget sample has one label that the retain data lacks): that class's held-out
  accuracy at chance (1 / number of classes); utility is measured on the other classes.

Several requests at once (``inputs.forget_groups``): with ``joint`` each group gets its own gradient, layer
and step on the original model, and the updates are applied together, as in the paper's multi-identity
experiment; without it the groups are merged into one forget set.
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from unlearnops.plugin import Method, MethodConfig, Samples, UnlearnInputs, UnlearnResult, hookimpl, lazy_module, no_grad


if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.nn import functional as F
else:  # imported on first use: loading and listing plugins imports no torch nor pandas
    torch = lazy_module("torch")
    nn = lazy_module("torch.nn")
    F = lazy_module("torch.nn.functional")


class SlugConfig(MethodConfig):
    eligible: Literal["weights", "all"] = Field(
        "weights", description="'weights': tensors with ≥2 dims (no biases/norms); 'all': every parameter."
    )
    target: Literal["auto", "sample", "class"] = Field(
        "auto", description="'auto': class forgetting when the forget set is one class absent from retain data."
    )
    initial_step: float = Field(0.01, gt=0, description="First λ tried, relative to ‖W‖.")
    max_step: float = Field(4.0, gt=0, description="Largest λ the doubling phase may reach.")
    bisect_steps: int = Field(6, ge=0, le=30)
    auc_tolerance: float = Field(0.02, ge=0, le=0.5, description="Sample target: AUC ≤ 0.5 + tolerance.")
    accuracy_tolerance: float = Field(
        0.0, ge=0, le=1, description="Sample target: forget accuracy ≤ held-out accuracy + tolerance."
    )
    class_tolerance: float = Field(0.0, ge=0, le=1, description="Class target: accuracy ≤ chance + tolerance.")
    utility_budget: float = Field(
        0.5, gt=0, le=1, description="Share of the utility gate's allowed drop the search may spend."
    )
    max_candidates: int = Field(4, ge=1, description="Pareto-front layers searched, most important first.")
    extra_candidates: int = Field(
        1, ge=0, description="Layers off the front also searched: the best by importance × (1 − alignment)."
    )
    search: Literal["double-bisect", "log-grid"] = Field(
        "double-bisect",
        description="'double-bisect' (the reference's search, assumes the criteria grow with λ) or 'log-grid' "
        "(a logarithmic grid from initial_step to max_step, then bisection below the first feasible point; "
        "no monotonicity assumed).",
    )
    grid_points: int = Field(10, ge=2, le=64)
    joint: bool = Field(True, description="With several request groups: one update per group, applied jointly.")
    cache_activations: bool = Field(
        True,
        description="Evaluate each step on cached activations: everything that does not depend on the edited "
        "layer is computed once for all candidates (torch.fx; kept by the forget set's gradient pass and one "
        "recording pass over the held-out set), and a linear or convolutional layer's output and its image of "
        "the step direction once per chunk of samples, so a step costs only the layers above the edited one. "
        "Falls back to whole forward passes for models torch.fx cannot trace.",
    )
    prune_candidates: bool = Field(
        True,
        description="Search the cheapest candidate layers first and stop a candidate's search as soon as it "
        "cannot beat the best candidate so far (assumes, as 'double-bisect' does, that the criteria grow with "
        "λ; the chosen layer and step are the same as without it then).",
    )
    batch_size: int = Field(
        256, ge=1, description="Samples per gradient pass (forward-only passes use chunks of at most "
        "FORWARD_CHUNK): on a CPU, much larger batches of image activations outgrow the caches.")


def pareto_front(importance: dict[str, float], alignment: dict[str, float]) -> list[str]:
    """Names not dominated by another layer with higher-or-equal importance and lower-or-equal alignment,
    most important first."""
    front = []
    for name in importance:
        dominated = any(
            importance[o] >= importance[name]
            and alignment[o] <= alignment[name]
            and (importance[o] > importance[name] or alignment[o] < alignment[name])
            for o in importance
            if o != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: -importance[n])


class _Tensors:
    """A sample group moved to the device once."""

    def __init__(self, samples: Samples, device):
        self.x = torch.as_tensor(np.asarray(samples.features), dtype=torch.float32).to(device)
        self.y = torch.as_tensor(np.asarray(samples.labels), dtype=torch.long).to(device)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, mask: np.ndarray) -> "_Tensors":
        view = object.__new__(_Tensors)
        index = torch.as_tensor(np.flatnonzero(mask), device=self.x.device)
        view.x, view.y = self.x[index], self.y[index]
        return view


#: The most a gradient pass may keep of the values the search reads (bytes; see :func:`_gradients`).
RECORDING_BYTES = 512 * 2**20


def _gradients(model: nn.Module, data: _Tensors, params: dict[str, nn.Parameter], batch_size: int,
               traced: torch.fx.GraphModule | None = None, wanted: set = frozenset()):
    """Gradient of the mean cross-entropy over ``data`` for each eligible tensor; and, when ``traced`` (the
    model's graph) is given, the values of its ``wanted`` nodes and its outputs over ``data``, kept from the
    same forward pass as :func:`_record` keeps them (None when they would take more than
    :data:`RECORDING_BYTES`; then nothing is kept)."""
    grads = {name: torch.zeros_like(p) for name, p in params.items()}
    recording: dict | None = None
    if traced is not None:
        recorder, nodes = _recording_module(traced, wanted)
        recording = {n: _Stacked(len(data)) for n in nodes}
    for start in range(0, len(data), batch_size):
        x, y = data.x[start : start + batch_size], data.y[start : start + batch_size]
        if recording is None:
            logits, values = model(x), ()
        else:
            logits, *values = recorder(x)
        loss = F.cross_entropy(logits, y, reduction="sum") / len(data)
        for name, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            grads[name] += g
        if recording is not None:
            kept = [v.detach() if isinstance(v, torch.Tensor) else v for v in (logits, *values)]
            if start == 0 and sum(v.nbytes for v in kept if isinstance(v, torch.Tensor)) * len(data) / len(x) > RECORDING_BYTES:
                recording = None
                continue
            for node, value in zip(recording, kept):
                recording[node].put(start, value)
    return grads, (None if recording is None else {n: s.value for n, s in recording.items() if s.value is not None})


def _logit_scores(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp = F.log_softmax(logits.float(), dim=1)
    lp = logp.gather(1, y[:, None]).squeeze(1)
    others = logp.scatter(1, y[:, None], float("-inf"))
    return lp - torch.logsumexp(others, dim=1), logp.argmax(1) == y


@no_grad
def _scores(model, data: _Tensors, batch_size: int, coefficient: float | None = None,
            logits: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logit-scaled confidence of the true label, and correctness, per sample. ``model`` is the network or
    a :class:`_Tail` (which reads its cached inputs for ``data``; ``coefficient``: the step along its
    direction); ``logits``: the model's outputs for ``data``, already computed."""
    phis, correct = [], []
    base, offset = (data.data, data.start) if isinstance(data, _Slice) else (data, 0)
    for start in range(0, len(data), batch_size):
        y = data.y[start : start + batch_size]
        lo, hi = offset + start, offset + min(start + batch_size, len(data))
        if logits is not None:
            out = logits[start : start + batch_size]
        elif isinstance(model, _Tail):
            out = model(base, lo, hi, coefficient)
        else:
            out = model(base.x[lo:hi])
        phi, right = _logit_scores(out, y)
        phis.append(phi)
        correct.append(right)
    if not phis:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return _joined(phis).cpu().numpy(), _joined(correct).cpu().numpy()


def _joined(chunks: list[torch.Tensor]) -> torch.Tensor:
    """The chunks concatenated; a single chunk as it is (``torch.cat`` would copy it)."""
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


#: Utility-set samples per chunk of an evaluation (the unit of early rejection).
UTILITY_CHUNK = 128


class _Slice:
    """Rows [start, stop) of a group, addressed through the group's own cache (for :class:`_Tail`)."""

    def __init__(self, data: _Tensors, start: int, stop: int):
        self.data, self.start, self.stop = data, start, min(stop, len(data))
        self.y = data.y[self.start : self.stop]

    def __len__(self) -> int:
        return self.stop - self.start


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC of ``positive`` above ``negative`` (Mann–Whitney, ties counted half): equal to scikit-learn's
    ``roc_auc_score`` without its input checks, which cost more than a small tail's forward pass."""
    scores = np.r_[positive, negative]
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average rank (1-based) of each run of equal scores
    edges = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1, len(scores)]
    for lo, hi in itertools.pairwise(edges):
        ranks[order[lo:hi]] = (lo + hi + 1) / 2
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _linear_ops() -> tuple[type, ...]:
    return (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _tail_nodes(traced: torch.fx.GraphModule, parameter: str):
    """The nodes of ``traced`` that (transitively) use ``parameter`` (in graph order), the values they read
    from outside, and the call of the linear layer or convolution whose weight it is (None when it is not
    such a weight, or the layer is called more than once)."""
    graph = traced.graph
    owner, _, attr = parameter.rpartition(".")
    seeds = {n for n in graph.nodes if (n.op == "call_module" and n.target == owner)
             or (n.op == "get_attr" and n.target == parameter)}
    if not seeds:
        raise ValueError(f"{parameter} is not used by a traced call")
    dirty: set[torch.fx.Node] = set()
    for node in graph.nodes:  # topological order
        if node in seeds or any(isinstance(a, torch.fx.Node) and a in dirty for a in node.all_input_nodes):
            dirty.add(node)
    boundary = [n for n in graph.nodes if n not in dirty and n.op != "get_attr" and any(u in dirty for u in n.users)]
    (seed,) = seeds if len(seeds) == 1 else (None,)
    linear = (seed is not None and seed.op == "call_module" and attr == "weight"
              and isinstance(traced.get_submodule(owner), _linear_ops()) and len(seed.args) == 1 and not seed.kwargs)
    return dirty, boundary, seed if linear else None


class _Tail:
    """The part of a traced model that depends on one parameter, fed with cached activations.

    ``torch.fx`` traces the model; the nodes that (transitively) use the parameter form the tail, and every
    value the tail reads from outside — the edited layer's input, skip connections from below — is computed
    once per sample group and kept on the device. A step then costs only the tail's layers. Editing the
    parameter in place is seen by the tail, which shares the model's modules and parameters.

    When the parameter is the weight of a linear layer or convolution called once, the search's steps
    W₀ + c·D along one direction D are cheaper still (:meth:`use_direction`): the layer's output is linear in
    W, z(c) = z(W₀) + c·op(x, D), so both terms are computed once per chunk of samples (when a step first
    reads it) and a step runs only the layers *above* the edited one.
    """

    def __init__(self, traced: torch.fx.GraphModule, parameter: str):
        dirty, self.boundary, layer_node = _tail_nodes(traced, parameter)
        self.output_node = next(n for n in traced.graph.nodes if n.op == "output")
        self.traced = traced
        self.module = self._graph_module(traced, dirty, replaced=None)
        self.layer, self.linear = None, None
        if layer_node is not None:
            self.layer, self.layer_node = traced.get_submodule(layer_node.target), layer_node
            self.linear = self._graph_module(traced, dirty - {layer_node}, replaced=layer_node)
        self.cache: dict[int, list[torch.Tensor]] = {}
        self.sample_multiply_adds = 0  # of one sample through the tail (counted by _tails_for)
        #: Along a direction: the edited layer's recorded input per group, and per chunk of it the layer's
        #: output at W₀ and its image of the direction (:meth:`_terms`).
        self.direction_source: dict[int, torch.Tensor] = {}
        self.terms: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _graph_module(self, traced, nodes: set, replaced) -> torch.fx.GraphModule:
        """A module of ``nodes`` (in graph order) reading the boundary values, plus the output of
        ``replaced`` as its last input when given."""
        tail_graph = torch.fx.Graph()
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        for node in self.boundary:
            env[node] = tail_graph.placeholder(f"cached_{node.name}")
        if replaced is not None:
            env[replaced] = tail_graph.placeholder("edited_output")
        for node in traced.graph.nodes:
            if node in nodes and node.op != "output":
                env[node] = tail_graph.node_copy(node, lambda n: env[n] if n in env else self._constant(tail_graph, n, env))
        tail_graph.output(torch.fx.map_arg(self.output_node.args[0], lambda n: env[n]))
        return torch.fx.GraphModule(traced, tail_graph)

    @staticmethod
    def _constant(graph: torch.fx.Graph, node: torch.fx.Node, env: dict) -> torch.fx.Node:
        if node.op != "get_attr":
            raise ValueError(f"tail reads {node.name} that is neither cached nor a constant")
        env[node] = graph.get_attr(node.target)
        return env[node]

    @property
    def recorded_nodes(self) -> set:
        """The values a recording pass keeps for this tail: its boundary."""
        return set(self.boundary)

    @no_grad
    def prepare(self, data: _Tensors, batch_size: int, recorded: dict | None = None) -> None:
        """Keep the boundary values for ``data`` (once per group and candidate layer): taken from
        ``recorded`` (one shared pass for every candidate, :func:`_record`) or computed here."""
        if id(data) in self.cache:
            return
        if recorded is None:
            recorded = _record(self.traced, self.recorded_nodes, data, batch_size)
        # an empty group (no held-out sample of a class) records nothing and is never evaluated
        self.cache[id(data)] = [recorded.get(n) for n in self.boundary]
        self.direction_source.pop(id(data), None)

    @no_grad
    def use_direction(self, direction: torch.Tensor | None, datasets: list[_Tensors] | None = None) -> None:
        """Steps are W₀ + c·``direction`` from now on, on ``datasets`` (default: every prepared group; linear
        layers only; None: back to the general path). Must be called while the parameter holds W₀. The two
        terms of the layer's output are computed per chunk when a step first reads it: a search stopped
        after a few chunks does not pay for the rest."""
        self.direction_source.clear()
        self.terms.clear()
        if direction is None or self.linear is None:
            return
        # The terms are computed in channels-last order (that of the recorded values, see _Stacked), so that
        # the layers above run on it too; for a convolution the weights are given that order.
        layout = torch.channels_last if direction.dim() == 4 else torch.contiguous_format
        self.weights = (self.layer.weight.detach().clone(memory_format=layout), direction.contiguous(memory_format=layout))
        self.bias = None if self.layer.bias is None else self.layer.bias.detach().clone()
        position = {n: i for i, n in enumerate(self.boundary)}
        (source,) = self.layer_node.args
        keys = [id(d) for d in datasets] if datasets is not None else list(self.cache)
        for key in keys:
            if self.cache[key][position[source]] is not None:
                self.direction_source[key] = self.cache[key][position[source]]

    def _terms(self, key: int, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """On rows [start, stop) of group ``key``: the layer's output at W₀, and its image of the direction
        (without the bias)."""
        terms = self.terms.get((key, start, stop))
        if terms is None:
            x = self.direction_source[key][start:stop]
            (w0, direction), layer = self.weights, self.layer
            if isinstance(layer, nn.Linear):
                terms = (F.linear(x, w0, self.bias), F.linear(x, direction))
            else:
                x = _channels_last(x)
                terms = (layer._conv_forward(x, w0, self.bias), layer._conv_forward(x, direction, None))
            self.terms[(key, start, stop)] = terms
        return terms

    def __call__(self, data: _Tensors, start: int, stop: int, coefficient: float | None = None) -> torch.Tensor:
        values = [value[start:stop] for value in self.cache[id(data)]]
        if coefficient is not None and id(data) in self.direction_source:
            base, along = self._terms(id(data), start, stop)
            return self.linear(*values, torch.add(base, along, alpha=coefficient))
        return self.module(*values)


def _recording_module(traced: torch.fx.GraphModule, wanted) -> tuple[torch.fx.GraphModule, list]:
    """A module computing ``traced``'s outputs and, after them, the values of the ``wanted`` nodes; and the
    nodes whose values it returns, in its order (the output node first). Compiled code like ``traced``
    itself, without an interpreter's per-node cost."""
    graph, env, kept = torch.fx.Graph(), {}, {}
    order = [n for n in traced.graph.nodes if n in wanted and n.op != "output"]
    output_node = next(n for n in traced.graph.nodes if n.op == "output")
    copy_when_kept = _writes_in_place(traced)  # a later in-place operation would change a kept value
    output = None
    for node in traced.graph.nodes:
        if node.op == "output":
            output = torch.fx.map_arg(node.args[0], lambda n: env[n])
            continue
        env[node] = kept[node] = graph.node_copy(node, lambda n: env[n])
        if node in wanted and copy_when_kept:
            kept[node] = graph.call_function(_copied, (env[node],))
    graph.output((output, *(kept[n] for n in order)))
    return torch.fx.GraphModule(traced, graph), [output_node, *order]


def _copied(value):
    return value.clone() if isinstance(value, torch.Tensor) else value


def _writes_in_place(traced: torch.fx.GraphModule) -> bool:
    """Whether a node of ``traced`` may overwrite its input (``inplace=True`` modules or arguments,
    ``x.add_()``-style methods and functions, ``+=``)."""
    import operator

    augmented = {getattr(operator, name) for name in dir(operator) if name.startswith("i") and name != "index"}
    for node in traced.graph.nodes:
        if node.op == "call_module" and getattr(traced.get_submodule(node.target), "inplace", False):
            return True
        if node.op in ("call_function", "call_method"):
            name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
            if node.kwargs.get("inplace") or name.endswith("_") and not name.endswith("__") or node.target in augmented:
                return True
    return False


@no_grad
def _record(traced: torch.fx.GraphModule, wanted: set, data: _Tensors, batch_size: int) -> dict:
    """One forward pass of ``traced`` over ``data`` keeping the values of the ``wanted`` nodes (and of the
    output node), each stacked over the chunks into one tensor (:class:`_Stacked`)."""
    recorder, nodes = _recording_module(traced, wanted)
    stacked = {n: _Stacked(len(data)) for n in nodes}
    chunk = _forward_chunk(batch_size)
    for start in range(0, len(data), chunk):
        for node, value in zip(stacked, recorder(_channels_last(data.x[start : start + chunk]))):
            stacked[node].put(start, value)
    return {n: s.value for n, s in stacked.items() if s.value is not None}


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """Image batches in channels-last memory order (the same values): a convolution then returns its output
    in that order too, and CPU pooling on it runs several times faster than on the default NCHW order."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


#: Samples per chunk of the forward-only passes (recording, the step direction's image): on a CPU, larger
#: chunks of image activations outgrow the caches and cost several times more per sample.
FORWARD_CHUNK = 128


def _forward_chunk(batch_size: int) -> int:
    return min(batch_size, FORWARD_CHUNK)


class _Stacked:
    """Per-chunk tensors written into one preallocated tensor of ``n`` rows, instead of concatenated
    afterwards. Image-shaped values are kept in channels-last memory order: the same values, but CPU pooling
    and element-wise kernels on them run several times faster than on the default NCHW order."""

    def __init__(self, n: int):
        self.n, self.value = n, None

    def put(self, start: int, chunk) -> None:
        if not isinstance(chunk, torch.Tensor):
            return
        if self.value is None:
            layout = torch.channels_last if chunk.dim() == 4 else torch.contiguous_format
            self.value = torch.empty((self.n, *chunk.shape[1:]), dtype=chunk.dtype, device=chunk.device,
                                     memory_format=layout)
        self.value[start : start + len(chunk)] = chunk


def _trace(model: nn.Module) -> "torch.fx.GraphModule | None":
    """The model's graph (torch.fx), sharing its modules and parameters; None for models it cannot trace
    (data-dependent control flow, ...), which the search evaluates by whole forward passes."""
    try:
        return torch.fx.symbolic_trace(model)
    except Exception:
        return None


def _search_reads(traced: torch.fx.GraphModule, parameters) -> set:
    """The values a recording pass keeps so that any of ``parameters`` can be searched on cached activations
    (:attr:`_Tail.recorded_nodes` of each)."""
    wanted = set()
    for name in parameters:
        try:
            _, boundary, _ = _tail_nodes(traced, name)
        except Exception:
            continue
        wanted.update(boundary)
    return wanted


def _tails_for(model: nn.Module, parameters: list[str], datasets: list[_Tensors], batch_size: int,
               probe_size: int = 64, traced: "torch.fx.GraphModule | None" = None,
               recordings: dict[int, dict] | None = None) -> tuple[dict[str, "_Tail | None"], dict[int, torch.Tensor]]:
    """A prepared :class:`_Tail` per parameter (None where the model cannot be traced or the tail does not
    reproduce the model's outputs on a probe of the first group), from one traced graph (``traced``, else
    traced here) and one recording pass per group for all of them — none for a group whose values
    ``recordings`` (``id(data)`` → what :func:`_record` returns) already holds; and the model's outputs per
    group (``id(data)``) from those passes."""
    traced = traced if traced is not None else _trace(model)
    if traced is None:
        return {name: None for name in parameters}, {}
    recordings = recordings or {}
    tails: dict[str, _Tail | None] = {}
    for name in parameters:
        try:
            tails[name] = _Tail(traced, name)
        except Exception:
            tails[name] = None
    wanted = {n for tail in tails.values() if tail for n in tail.recorded_nodes}
    output = next(n for n in traced.graph.nodes if n.op == "output")
    outputs: dict[int, torch.Tensor] = {}
    for data in datasets:
        try:
            recorded = recordings.get(id(data)) or _record(traced, wanted, data, batch_size)
        except Exception:
            return {name: None for name in parameters}, {}
        if output in recorded:
            outputs[id(data)] = recorded[output]
        for tail in tails.values():
            if tail:
                tail.prepare(data, batch_size, recorded)
    from unlearnops.plugin import multiply_adds  # here: the name imports torch, which loading plugins must not

    probe = datasets[0]
    stop = min(len(probe), probe_size)
    with torch.no_grad():
        expected = model(probe.x[:stop]) if stop else None
        for name, tail in tails.items():
            try:
                if tail and stop and not torch.allclose(tail(probe, 0, stop), expected, rtol=1e-4, atol=1e-5):
                    tails[name] = None
                elif tail and stop:
                    one_sample = [value[:1] for value in tail.cache[id(probe)]]
                    tail.sample_multiply_adds = multiply_adds(tail.module, *one_sample)
            except Exception:
                tails[name] = None
    return tails, outputs


def _cheapest_first(names: list[str], tails: dict[str, "_Tail | None"]) -> list[str]:
    """Candidate layers by the multiply-adds of their tail per sample (layers without a tail, evaluated by
    whole forward passes, last); ties keep the given order."""
    def cost(name: str) -> tuple[float, int]:
        return (tails[name].sample_multiply_adds if tails.get(name) else float("inf"), names.index(name))

    return sorted(names, key=cost)


def _tail_for(model: nn.Module, parameter: str, datasets: list[_Tensors], batch_size: int):
    """A prepared :class:`_Tail` for one parameter, or None (see :func:`_tails_for`)."""
    return _tails_for(model, [parameter], datasets, batch_size)[0][parameter]


class _Judge:
    """Evaluates the model (forward passes only) against the target for one forget group."""

    def __init__(self, model, forget: _Tensors, holdout: _Tensors, mode: str, config: SlugConfig,
                 utility_max_drop: float, n_classes: int):
        self.model, self.forget, self.config = model, forget, config
        self.forward = model  # the network, or a _Tail while a candidate layer is searched
        self.coefficient = None  # with a _Tail along a direction: the current step's c = λ·‖W₀‖
        self.memo: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # the current step's scores (see scores)
        self.mode = mode
        self.allowed_drop = utility_max_drop * config.utility_budget
        self.budget = self.allowed_drop  # the drop a step may cost; tightened while a candidate must beat a bar
        if mode == "class":
            forgotten = int(forget.y[0])
            in_class = (holdout.y == forgotten).cpu().numpy()
            self.target_set, self.utility_set = holdout.subset(in_class), holdout.subset(~in_class)
            self.chance = 1.0 / n_classes
        else:
            self.target_set = self.utility_set = holdout

    def at_step(self, coefficient: float | None) -> None:
        """The model (or tail) now holds a new step (``coefficient``: its c along the tail's direction);
        scores of the previous one are forgotten."""
        self.coefficient = coefficient
        self.memo = {}

    def scores(self, data, size: int) -> tuple[np.ndarray, np.ndarray]:
        """:func:`_scores` of the current step on ``data`` (a group or a :class:`_Slice` of one), computed
        once per step: scoring a step completely after a cheap look reuses what the look computed."""
        base, offset = (data.data, data.start) if isinstance(data, _Slice) else (data, 0)
        key = (id(base), offset, len(data), size)
        if key not in self.memo:
            self.memo[key] = _scores(self.forward, data, size, self.coefficient)
        return self.memo[key]

    def calibrate(self, outputs: dict[int, torch.Tensor] | None = None) -> None:
        """The original model's utility (and held-out accuracy), from ``outputs`` (logits per group, as
        :func:`_tails_for` returns them) where given, else from forward passes."""
        outputs = outputs or {}
        self.base_utility_phi, correct = _scores(self.model, self.utility_set, self.config.batch_size,
                                                 logits=outputs.get(id(self.utility_set)))
        self.base_utility = float(correct.mean())
        self.holdout_accuracy = self.base_utility  # sample mode: the utility set is the held-out set

    @property
    def datasets(self) -> list[_Tensors]:
        """The sample groups every evaluation reads."""
        return [self.forget, self.utility_set] + ([self.target_set] if self.mode == "class" else [])

    def _utility(self, complete: bool = False) -> tuple[np.ndarray, float, bool]:
        """Scores on the utility set in chunks, stopping as soon as enough samples are wrong that the step
        cannot keep utility whatever the rest give (then the drop returned is that lower bound): the
        decision is the same as after a full pass. ``complete``: never stop early."""
        data, n = self.utility_set, len(self.utility_set)
        chunk = min(self.config.batch_size, UTILITY_CHUNK)
        phis, wrong = [], 0
        for start in range(0, n, chunk):
            view = _Slice(data, start, start + chunk)
            phi, correct = self.scores(view, chunk)
            phis.append(phi)
            wrong += int((~correct).sum())
            best_possible = (n - wrong) / n
            if not complete and self.base_utility - best_possible > self.budget and start + chunk < n:
                return np.concatenate(phis), self.base_utility - best_possible, True
        correct_share = (n - wrong) / n if n else float("nan")
        return (np.concatenate(phis) if phis else np.zeros(0)), self.base_utility - correct_share, False

    def __call__(self, complete: bool = False) -> dict:
        """The step's utility drop and whether it reached the target. A step that breaks utility is not
        measured against the target unless ``complete`` (then every score is computed)."""
        size = _forward_chunk(self.config.batch_size)
        utility_phi, drop, cut_short = self._utility(complete)
        result = {"utility_drop": drop, "utility_ok": drop <= self.budget}
        if not result["utility_ok"] and not complete:
            # Utility broken: the search's decision does not depend on the target, which is not measured.
            result.update({"reached": False, "early_rejected": cut_short,
                           ("class_accuracy" if self.mode == "class" else "auc"): float("nan")})
            if self.mode == "sample":
                result["forget_accuracy"] = float("nan")
            return result
        if self.mode == "class":
            # The target is the class's held-out accuracy; the forget set itself is scored once, for the
            # chosen step only (see Slug._one_group).
            _, class_correct = self.scores(self.target_set, size)
            if not len(class_correct):  # no held-out sample of the class: judge the forget set
                _, class_correct = self.scores(self.forget, size)
            result.update(self._class_target(class_correct))
        else:
            # The held-out scores are taken again: the edit moves non-members as well.
            result.update(self._sample_target(self.scores(self.forget, size), utility_phi))
        return result

    def _class_target(self, class_correct: np.ndarray) -> dict:
        class_accuracy = float(class_correct.mean())
        return {"class_accuracy": class_accuracy,
                "reached": class_accuracy <= self.chance + self.config.class_tolerance}

    def _sample_target(self, forget_scores: tuple[np.ndarray, np.ndarray], utility_phi: np.ndarray) -> dict:
        forget_phi, forget_correct = forget_scores
        forget_accuracy, auc = float(forget_correct.mean()), _auc(forget_phi, utility_phi)
        return {"forget_accuracy": forget_accuracy, "auc": auc,
                "reached": (auc <= 0.5 + self.config.auc_tolerance
                            and forget_accuracy <= self.holdout_accuracy + self.config.accuracy_tolerance)}

    def unedited(self, outputs: dict[int, torch.Tensor] | None = None) -> dict:
        """The original model judged against the target (a step of 0), from ``outputs`` (logits per group, as
        :func:`_tails_for` returns them) where given, else from forward passes; after :meth:`calibrate`, whose
        utility scores it reuses."""
        outputs = outputs or {}
        size = _forward_chunk(self.config.batch_size)

        def scored(data: _Tensors) -> tuple[np.ndarray, np.ndarray]:
            return _scores(self.model, data, size, logits=outputs.get(id(data)))

        result = {"step": 0.0, "utility_drop": 0.0, "utility_ok": True}
        if self.mode == "class":
            _, class_correct = scored(self.target_set if len(self.target_set) else self.forget)
            return {**result, **self._class_target(class_correct)}
        return {**result, **self._sample_target(scored(self.forget), self.base_utility_phi)}

    def short_of_target(self, result: dict) -> bool:
        """Whether the current step (judged in ``result``) certainly misses the target, from its cheap part
        alone, which is added to ``result``: the class's held-out accuracy (class mode: the target itself),
        or the forget set's accuracy against the held-out level (sample mode; the attack AUC would need
        every utility score)."""
        size = _forward_chunk(self.config.batch_size)
        if self.mode == "class":
            data = self.target_set if len(self.target_set) else self.forget
            _, correct = self.scores(data, size)
            result.update(self._class_target(correct))  # the class target is measured completely
            return not result["reached"]
        _, correct = self.scores(self.forget, size)
        result["forget_accuracy"] = float(correct.mean())
        return result["forget_accuracy"] > self.holdout_accuracy + self.config.accuracy_tolerance

    def unit(self) -> float:
        """One utility sample's share of the utility set (drops are whole multiples of it)."""
        return 1.0 / max(len(self.utility_set), 1)


class _Bar:
    """What a candidate layer must beat: the best candidate searched so far (its :func:`_rank`), and whether
    a tie is enough (the candidate comes before it in the importance order, which breaks ties)."""

    def __init__(self, rank: tuple, ties_win: bool):
        self.rank, self.ties_win = rank, ties_win

    def budget(self, judge: _Judge) -> float:
        """The utility drop the candidate may cost and still win: below the best's when that reached the
        target (drops are whole multiples of one utility sample)."""
        kind, drop = self.rank
        if kind != 0:
            return judge.allowed_drop
        return min(judge.allowed_drop, drop if self.ties_win else drop - judge.unit() / 2)

    def out_of_reach(self, result: dict) -> bool:
        """True when a completely evaluated step that did not reach the target shows the candidate cannot
        win at any smaller step: with criteria that grow with λ it will not reach the target below, and its
        attack AUC / class accuracy there is at least this step's."""
        if result["reached"]:
            return False
        kind, value = self.rank
        if kind == 0:
            return True
        metric = result.get("auc", result.get("class_accuracy"))
        return kind == 1 and (metric > value or (metric == value and not self.ties_win))


def _search_step(param: nn.Parameter, original: torch.Tensor, direction: torch.Tensor, judge: _Judge,
                 config: SlugConfig, bar: _Bar | None = None) -> tuple[dict | None, list[dict], bool]:
    """Doubling then bisection over λ; returns the chosen evaluation (smallest λ reaching the target with
    utility intact, else the largest λ with utility intact), the whole trace, and whether the search stopped
    because the layer cannot beat ``bar``. Leaves W at W₀.

    Against a bar the middle of the doubling grid (its first point when the bar gained utility) is scored
    for the bar first: where it breaks utility without reaching the target, what the layer can achieve
    below it is bounded, and the search stops there if that cannot beat the bar; otherwise it tells on which
    side of it the doubling has to go. Every doubling step is then scored for the bar (completely, except
    that against a bar that reached the target a step that breaks utility short of the target's cheap part,
    :meth:`_Judge.short_of_target`, needs no more), and against such a bar a bisection step that breaks
    utility short of the target's cheap part stops the search (criteria that grow with λ assumed, as by the
    bisection)."""
    scale = original.norm()
    trace: list[dict] = []

    def try_step(step: float, complete: bool = False, again: bool = False) -> dict:
        """Score ``step`` (``again``: the step just scored, now completely, reusing its scores)."""
        if not again:
            with torch.no_grad():
                param.copy_(original + step * scale * direction)
            judge.at_step(float(step * scale))
        result = {"step": step, **judge(complete)}
        trace.append(result)
        return result

    def stops(result: dict) -> bool:
        return result["reached"] or not result["utility_ok"]

    def beyond_reach(result: dict) -> bool:
        return bar is not None and not result["utility_ok"] and bar.out_of_reach(result)

    must_reach = bar is not None and bar.rank[0] == 0

    def bounded(step: float, result: dict) -> dict:
        """``result`` of a step that broke utility, with what a bar that missed the target is checked
        against: the class's accuracy (from its held-out samples alone) or the attack AUC (every utility
        score)."""
        if judge.mode == "class":
            judge.short_of_target(result)
            return result
        return try_step(step, complete=True, again=True)

    def score(step: float) -> dict:
        """A step scored for the bar: completely (in class mode a step that breaks utility needs only
        :func:`bounded`), except that against a bar that reached the target a step that breaks utility
        (seen early) and misses the target's cheap part is known to be out of reach."""
        if not must_reach and judge.mode == "class":
            result = try_step(step)
            return result if result["utility_ok"] else bounded(step, result)
        if not must_reach:
            return try_step(step, complete=True)
        result = try_step(step)
        if result["utility_ok"] or judge.short_of_target(result):
            return result
        return try_step(step, complete=True, again=True)

    if config.search == "log-grid":
        return _grid_search(try_step, param, original, config), trace, False
    grid, step = [], config.initial_step
    while step <= config.max_step:
        grid.append(step)
        step *= 2
    judge.budget = bar.budget(judge) if bar else judge.allowed_drop
    probed: dict[int, dict] = {}
    first, checked, pruned = 0, None, False
    if bar is not None and grid:
        # Against a bar that gained utility nearly every step breaks it, and the smallest step is the one
        # most likely to miss the target too, which rules the layer out at once.
        checked = 0 if judge.budget < 0 else len(grid) // 2
        probed[checked] = score(grid[checked])
        pruned = beyond_reach(probed[checked])
        if not stops(probed[checked]):
            first = checked + 1
    k = first
    while not pruned and k < len(grid):
        # Against a bar every doubling step is scored for it: a step that keeps utility is scored completely
        # anyway, and the one that breaks it is what the bar is checked against (scored once, not twice).
        probed[k] = probed.get(k) or (score(grid[k]) if bar is not None else try_step(grid[k]))
        if stops(probed[k]):
            break
        k += 1
    best = probed.get(k - 1) if k else None
    low, high = (grid[k - 1] if k else 0.0), None
    if k < len(grid) and not pruned:
        high = grid[k]
        if probed[k]["reached"] and probed[k]["utility_ok"]:
            best = probed[k]
        elif bar is not None:
            pruned = beyond_reach(probed[k])
    if high is not None and not pruned:
        for _ in range(config.bisect_steps):
            mid = (low + high) / 2
            result = try_step(mid)
            if must_reach and not result["utility_ok"] and judge.short_of_target(result):
                # Utility broken short of the target: with criteria that grow with λ the layer reaches the
                # target nowhere within its utility budget, so it cannot beat a bar that reached it.
                result["short_of_target"] = pruned = True
                break
            if bar is not None and not must_reach and not result["utility_ok"]:
                # Against a bar that missed the target: what the layer achieves below this step is at best
                # this step's attack AUC / class accuracy (criteria that grow with λ).
                result = bounded(mid, result)
                if bar.out_of_reach(result):
                    result["out_of_reach"] = pruned = True
                    break
            if result["reached"] and result["utility_ok"]:
                high, best = mid, result
            elif result["reached"] or not result["utility_ok"]:
                high = mid
            else:
                low = mid
                if best is None or not best["reached"]:
                    best = result
    judge.budget = judge.allowed_drop
    with torch.no_grad():
        param.copy_(original)
    return best, trace, pruned


def _grid_search(try_step, param, original, config: SlugConfig) -> dict | None:
    """Every point of a logarithmic grid, then bisection between the first feasible point (target reached,
    utility intact) and the grid point below it; with no feasible point, the grid point with the lowest
    attack AUC / class accuracy among those that keep utility."""
    grid = np.geomspace(config.initial_step, config.max_step, config.grid_points)
    results = [try_step(float(step)) for step in grid]
    feasible = [i for i, r in enumerate(results) if r["reached"] and r["utility_ok"]]
    if feasible:
        first = feasible[0]
        best, low, high = results[first], (float(grid[first - 1]) if first else 0.0), float(grid[first])
        for _ in range(config.bisect_steps):
            mid = (low + high) / 2
            result = try_step(mid)
            if result["reached"] and result["utility_ok"]:
                best, high = result, mid
            else:
                low = mid
    else:
        intact = [r for r in results if r["utility_ok"]]
        best = min(intact, key=lambda r: r.get("auc", r.get("class_accuracy", 1.0))) if intact else None
    with torch.no_grad():
        param.copy_(original)
    return best


def _rank(entry: dict) -> tuple:
    chosen = entry["chosen"]
    if chosen is None:
        return (2, 0.0)
    if chosen["reached"]:
        return (0, chosen["utility_drop"])
    return (1, chosen.get("auc", chosen.get("class_accuracy", 1.0)))


class Slug(Method):
    name = "slug"
    version = "0.2.0"
    Config = SlugConfig
    needs_retain = True
    supports_gpu = True

    def unlearn(self, model: nn.Module, inputs: UnlearnInputs, config: SlugConfig, device) -> UnlearnResult:
        started = time.perf_counter()
        torch.manual_seed(config.seed)
        model.eval()
        params = {n: p for n, p in model.named_parameters()
                  if p.requires_grad and (config.eligible == "all" or p.dim() >= 2)}
        forget = _Tensors(inputs.forget, device)
        retain = _Tensors(inputs.retain, device)
        holdout = _Tensors(inputs.holdout, device)
        mode = self._mode(inputs, config)
        with torch.no_grad():
            n_classes = int(model(holdout.x[:1]).shape[1])
        g_retain, _ = _gradients(model, retain, params, config.batch_size)
        # one graph for every group; the forget set's gradient pass also records what the search reads
        traced = _trace(model) if config.cache_activations else None

        groups = list(inputs.forget_groups or [])
        if not (config.joint and len(groups) > 1):
            groups = [np.ones(len(forget), dtype=bool)]
        updates: dict[str, torch.Tensor] = {}
        group_reports = []
        for group_mask in groups:
            group = forget.subset(np.asarray(group_mask, dtype=bool))
            report, update = self._one_group(model, params, group, holdout, g_retain, mode, config, inputs,
                                             n_classes, traced)
            group_reports.append(report)
            if update is not None:
                name, delta = update
                updates[name] = updates.get(name, 0) + delta
        with torch.no_grad():
            originals = {name: params[name].detach().clone() for name in updates}
            for name, delta in updates.items():
                params[name].add_(delta)
        changed = {name: float(delta.norm() / originals[name].norm().clamp_min(1e-12))
                   for name, delta in updates.items()}
        details = {
            "mode": mode,
            "joint_groups": len(groups),
            "groups": group_reports,
            "target_reached": all(g["target_reached"] for g in group_reports),
        }
        if len(group_reports) == 1:  # the single-group view the report's explanation plot reads
            details.update({k: group_reports[0][k] for k in ("candidates", "chosen_layer", "already_at_target")})
        return UnlearnResult(model=model, method=self.name, changed_parameters=changed,
                             seconds=time.perf_counter() - started, details=details)

    @staticmethod
    def _search(name, params, g_forget, tails, judge: _Judge, config: SlugConfig, model, bar: _Bar | None) -> dict:
        """The step search of one candidate layer with ``judge`` (on cached activations where its tail
        exists), stopped once it cannot beat ``bar``; leaves the layer at W₀."""
        started = time.perf_counter()
        original = params[name].detach().clone()
        direction = g_forget[name] / g_forget[name].norm().clamp_min(1e-12)
        tail = tails[name]
        if tail is not None:
            tail.use_direction(direction, judge.datasets)
        judge.forward = tail or model
        chosen, trace, pruned = _search_step(params[name], original, direction, judge, config, bar)
        judge.forward = model
        judge.at_step(None)
        if tail is not None:
            tail.use_direction(None)
        return {"layer": name, "evaluations": len(trace), "cached_activations": tail is not None,
                "linear_in_step": bool(tail is not None and tail.linear is not None),
                "seconds": round(time.perf_counter() - started, 4), "chosen": chosen, "trace": trace,
                "stopped_early": pruned}

    @staticmethod
    def _mode(inputs: UnlearnInputs, config: SlugConfig) -> str:
        if config.target != "auto":
            return config.target
        labels = np.unique(inputs.forget.labels)
        one_class_missing_from_retain = len(labels) == 1 and labels[0] not in set(np.asarray(inputs.retain.labels))
        return "class" if one_class_missing_from_retain else "sample"

    def _one_group(self, model, params, group: _Tensors, holdout: _Tensors, g_retain, mode, config, inputs,
                   n_classes, traced):
        # Every eligible layer's inputs over the forget set are kept from its gradient pass (the candidates
        # are known only after it), so the recording pass covers the held-out samples alone.
        wanted = _search_reads(traced, params) if traced is not None else set()
        g_forget, forget_recording = _gradients(model, group, params, config.batch_size, traced, wanted)
        importance, alignment = {}, {}
        for name, p in params.items():
            gf, gr = g_forget[name].flatten(), g_retain[name].flatten()
            importance[name] = float(gf.norm() / p.detach().norm().clamp_min(1e-12))
            alignment[name] = float(torch.abs(F.cosine_similarity(gf, gr, dim=0, eps=1e-12)))
        front = pareto_front(importance, alignment)
        judge = _Judge(model, group, holdout, mode, config, inputs.utility_max_drop, n_classes)
        combined = sorted((n for n in params if n not in front),
                          key=lambda n: -importance[n] * (1 - alignment[n]))
        names = front[: config.max_candidates] + combined[: config.extra_candidates]
        tails, outputs = ({n: None for n in names}, {})
        if traced is not None:  # one recording pass for every candidate
            recordings = {id(group): forget_recording} if forget_recording is not None else {}
            tails, outputs = _tails_for(model, names, judge.datasets, config.batch_size, traced=traced,
                                        recordings=recordings)
        judge.calibrate(outputs)
        report = {"n_forget": len(group), "front": front,
                  "layers": {n: {"importance": importance[n], "alignment": alignment[n]} for n in params}}
        unedited = judge.unedited(outputs)
        if unedited["reached"]:
            # The smallest step that reaches the target is no step: the model is left as it is (the gates
            # judge it like any other result).
            return {**report, "candidates": [], "chosen_layer": None, "target_reached": True,
                    "already_at_target": unedited}, None
        searched, leader = {}, None  # leader: (rank, position in ``names``) of the best layer so far
        for name in _cheapest_first(names, tails) if config.prune_candidates else names:
            position = names.index(name)
            bar = (_Bar(leader[0], ties_win=position < leader[1])
                   if config.prune_candidates and leader and leader[0][0] < 2 else None)
            entry = self._search(name, params, g_forget, tails, judge, config, model, bar)
            searched[name] = {"layer": name, "importance": importance[name], "alignment": alignment[name], **entry}
            if leader is None or (_rank(entry), position) < leader:
                leader = (_rank(entry), position)
        tried = [searched[name] for name in names]  # reported in importance order, which also breaks ties
        best = searched[names[leader[1]]] if leader else None
        update = None
        if best and best["chosen"]:
            w0 = params[best["layer"]].detach()
            direction = g_forget[best["layer"]] / g_forget[best["layer"]].norm().clamp_min(1e-12)
            update = (best["layer"], best["chosen"]["step"] * w0.norm() * direction)
            if mode == "class":  # the forget set's accuracy at the chosen step, for the report
                tail = tails[best["layer"]]
                with torch.no_grad():
                    w0 = w0.clone()
                    params[best["layer"]].add_(update[1])
                    if tail is not None:  # on the cached activations, along the chosen layer's direction
                        tail.use_direction(direction, [group])
                    coefficient = float(best["chosen"]["step"] * w0.norm())
                    _, correct = _scores(tail or model, group, config.batch_size, coefficient)
                    params[best["layer"]].copy_(w0)
                best["chosen"]["forget_accuracy"] = float(correct.mean()) if len(correct) else 0.0
        report.update({
            "candidates": tried,
            "chosen_layer": best["layer"] if update else None,
            "target_reached": bool(best and best["chosen"] and best["chosen"]["reached"]),
            "already_at_target": None,
        })
        return report, update


@hookimpl
def register_methods(register):
    register(Slug())
