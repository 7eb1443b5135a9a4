"""Locate the samples deletion requests touch, with the locators registered through ``register_locators``.

Exact locators match what a request names (sample ids, subject ids, content hashes) against the manifest;
for requests whose policy is ``expand``, near-duplicate locators then look for altered copies of the
samples found exactly (perceptual hash, the model's own embeddings). Every match carries the locator that
found it and its score.

Scale: the manifest is read as an Arrow table from the memory-mapped parquet file, and a whole batch of
requests is matched at once — one hash join per key column (``pyarrow.compute.index_in``: a hash table of
the requested keys, probed by every manifest row), then a vectorized expansion back to the requests that
named each key. No Python loop runs per request or per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from unlearnops._lazy import lazy_module
from unlearnops import __version__
from unlearnops.plugin_manager import PluginError, load_plugins
from unlearnops.requests import DeletionRequest, RequestRejected

if TYPE_CHECKING:
    import pandas as pd
else:  # imported on first use (fast start-up: loading plugins imports no torch nor pandas)
    pd = lazy_module("pandas")
#: exact locator name -> (request field, manifest column)
EXACT_LOCATORS = {
    "sample_id": ("sample_ids", "sample_id"),
    "subject_id": ("subject_ids", "subject_id"),
    "content_sha256": ("content_sha256", "content_sha256"),
}
#: Locator kinds: ``exact`` locators run for every request, ``near-duplicate`` ones only under ``expand``.
KINDS = ("exact", "near-duplicate")
#: Columns of what a locator returns.
MATCH_COLUMNS = ["request", "row", "score", "via"]


def read_manifest(path: Path, columns: list[str] | None = None) -> pa.Table:
    """The manifest as an Arrow table, read from the memory-mapped parquet file (only ``columns``)."""
    return pq.read_table(path, columns=columns, memory_map=True)


def as_table(manifest: pa.Table | pd.DataFrame) -> pa.Table:
    if isinstance(manifest, pa.Table):
        return manifest
    return pa.Table.from_pandas(manifest, preserve_index=False)


def match_keys(column: pa.ChunkedArray | pa.Array, targets: list[list[str]]):
    """Match every request's keys against one manifest column at once.

    ``targets[i]`` are the keys request ``i`` names. Returns ``(request, row, unmatched)``: one entry per
    (request, manifest row) match, and per request the keys it named that no row has."""
    lengths = np.fromiter((len(t) for t in targets), dtype=np.int64, count=len(targets))
    empty = np.zeros(0, np.int64)
    if lengths.sum() == 0:
        return empty, empty, [[] for _ in targets]
    pair_request = np.repeat(np.arange(len(targets)), lengths)
    flat = np.array([key for keys in targets for key in keys], dtype=object)
    unique, inverse = np.unique(flat.astype(str), return_inverse=True)
    value_type = column.type if not pa.types.is_dictionary(column.type) else column.type.value_type
    index = pc.index_in(column, value_set=pa.array(unique, type=value_type))
    valid = np.asarray(index.is_valid(), dtype=bool)
    rows = np.flatnonzero(valid)
    key_of_row = np.asarray(index.filter(pa.array(valid)), dtype=np.int64) if len(rows) else empty
    # Expand each matched row to every request that named its key (keys may repeat across requests).
    counts = np.bincount(inverse, minlength=len(unique))
    starts = np.cumsum(counts) - counts
    by_key = np.argsort(inverse, kind="stable")
    per_row = counts[key_of_row]
    offsets = np.arange(per_row.sum()) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    request = pair_request[by_key[np.repeat(starts[key_of_row], per_row) + offsets]]
    found_key = np.zeros(len(unique), dtype=bool)
    found_key[key_of_row] = True
    missing_pair = ~found_key[inverse]
    unmatched: list[list[str]] = [[] for _ in targets]
    for i, key in zip(pair_request[missing_pair], flat[missing_pair]):  # only keys that match nothing
        unmatched[i].append(str(key))
    return request.astype(np.int64), np.repeat(rows, per_row).astype(np.int64), unmatched


def matches_frame(request, row, score, via=None) -> pd.DataFrame:
    """A locator's result in the expected shape (see :data:`MATCH_COLUMNS`)."""
    request = np.asarray(request, dtype=np.int64)
    return pd.DataFrame({
        "request": request,
        "row": np.asarray(row, dtype=np.int64),
        "score": np.broadcast_to(np.asarray(score, dtype=np.float64), request.shape).copy(),
        "via": pd.Series(via if via is not None else [None] * len(request), dtype=object),
    })


class LocateContext:
    """What locators see: the manifest (Arrow), the features and the model (both loaded on first use), the
    samples the exact locators found for the ``expand`` requests (``seeds``), and the score thresholds."""

    def __init__(self, table: pa.Table | pd.DataFrame, features: np.ndarray | Callable[[], Any] | None = None,
                 model: Any = None, min_score: dict[str, float] | None = None, max_per_seed: int = 10):
        self.table = as_table(table)
        self._features, self._model = features, model
        self._min_score = dict(min_score or {})
        self.max_per_seed = max_per_seed
        #: (request, row) pairs found exactly, for the requests whose policy is ``expand``.
        self.seeds = pd.DataFrame({"request": np.zeros(0, np.int64), "row": np.zeros(0, np.int64)})
        #: locator name -> why it found nothing it could have (e.g. no model registered yet).
        self.notes: dict[str, str] = {}

    @cached_property
    def features(self) -> np.ndarray | None:
        return self._features() if callable(self._features) else self._features

    @cached_property
    def model(self):
        return self._model() if callable(self._model) and not hasattr(self._model, "parameters") else self._model

    def sample_ids_at(self, rows: np.ndarray) -> np.ndarray:
        """The sample ids of manifest ``rows`` (object array)."""
        taken = self.table["sample_id"].take(pa.array(np.asarray(rows, dtype=np.int64)))
        return np.asarray(taken.to_numpy(zero_copy_only=False), dtype=object)

    def min_score(self, locator) -> float:
        """The threshold for a near-duplicate locator: workspace setting, else its default."""
        return float(self._min_score.get(locator.name, getattr(locator, "default_min_score", 1.0)))


@dataclass
class Located:
    """Every (request, sample) match, with the locator that found it (first in precedence order), its
    score, the located sample it resembles (``via``, near-duplicates) and all locators that found it."""

    matches: pd.DataFrame
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def sample_ids(self) -> set[str]:
        return set(self.matches["sample_id"].astype(str))

    @property
    def found_by(self) -> dict[str, str]:
        first = self.matches.drop_duplicates("sample_id")
        return dict(zip(first["sample_id"].astype(str), first["locator"].astype(str)))

    def for_request(self, index: int) -> pd.DataFrame:
        return self.matches[self.matches["request"] == index]

    def records(self, request_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """JSON-ready rows: request (id or index), sample_id, locator, score, via, locators."""
        out = []
        for r in self.matches.itertuples(index=False):
            out.append({"request": request_ids[r.request] if request_ids else int(r.request),
                        "sample_id": str(r.sample_id), "locator": r.locator, "score": round(float(r.score), 6),
                        "via": None if r.via is None or pd.isna(r.via) else str(r.via), "locators": r.locators})
        return out


class ExactLocator:
    """Samples whose ``column`` equals a key the request lists in ``request_field`` (score 1). The built-in
    exact locators are these, one per entry of :data:`EXACT_LOCATORS`; core uses them to check requests."""

    kind = "exact"
    version = __version__

    def __init__(self, name: str, request_field: str, column: str):
        self.name, self.request_field, self.column = name, request_field, column

    def locate(self, requests, ctx: LocateContext):
        request, row, _ = match_keys(ctx.table[self.column], [getattr(r, self.request_field) for r in requests])
        return matches_frame(request, row, 1.0)


def _checked(locator, result, n_requests: int, n_rows: int) -> pd.DataFrame:
    if not isinstance(result, pd.DataFrame) or not {"request", "row", "score"} <= set(result.columns):
        raise PluginError(f"locator {locator.name!r} returned {type(result).__name__}, not a DataFrame with "
                          f"columns {MATCH_COLUMNS}")
    result = result.reindex(columns=MATCH_COLUMNS)
    request, row = result["request"].to_numpy(), result["row"].to_numpy()
    score = result["score"].to_numpy(dtype=np.float64)
    if len(result) and (request.min() < 0 or request.max() >= n_requests or row.min() < 0 or row.max() >= n_rows
                        or not np.isfinite(score).all()):
        raise PluginError(f"locator {locator.name!r} returned a request or row out of range, or a non-finite score")
    return result


def _unambiguous(locator, result: pd.DataFrame, ctx: LocateContext) -> pd.DataFrame:
    """Drop the near-duplicates of any located sample that has more than ``ctx.max_per_seed`` of them: there
    the locator does not tell copies from look-alikes (e.g. an under-trained model's embeddings), and taking
    them all would delete other people's data."""
    if result.empty or result["via"].isna().all():
        return result
    counts = result.groupby(["request", "via"])["row"].transform("size")
    ambiguous = counts > ctx.max_per_seed
    if ambiguous.any():
        seeds = result.loc[ambiguous, ["request", "via"]].drop_duplicates()
        ctx.notes[locator.name] = (f"dropped {int(ambiguous.sum())} candidates of {len(seeds)} located samples that "
                                   f"had more than {ctx.max_per_seed} near-duplicates each (ambiguous)")
    return result[~ambiguous]


def locate_requests(requests: list[DeletionRequest], ctx: LocateContext, locators: list) -> Located:
    """Run ``locators`` (in precedence order) over a batch of requests: exact ones for every request, then
    near-duplicate ones seeded with what the exact ones found for the ``expand`` requests. A sample found
    by several locators is attributed to the first of them; a locator that raises or returns malformed
    matches is a :class:`~unlearnops.plugin_manager.PluginError` naming it."""
    n_rows = ctx.table.num_rows
    frames = []

    def run(position: int, locator) -> None:
        try:
            result = locator.locate(requests, ctx)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"locator {locator.name!r} raised: {exc!r}") from exc
        result = _checked(locator, result, len(requests), n_rows)
        if locator.kind == "near-duplicate":
            result = _unambiguous(locator, result[result["score"] >= ctx.min_score(locator)], ctx)
        frames.append(result.assign(precedence=position))

    for position, locator in enumerate(locators):
        if locator.kind == "exact":
            run(position, locator)
    expand = [i for i, r in enumerate(requests) if r.policy == "expand"]
    near = [(p, loc) for p, loc in enumerate(locators) if loc.kind == "near-duplicate"]
    if expand and near:
        exact = pd.concat(frames) if frames else matches_frame([], [], [])
        seeds = exact.loc[exact["request"].isin(expand), ["request", "row"]].drop_duplicates()
        ctx.seeds = seeds.sort_values(["request", "row"]).reset_index(drop=True)
        for position, locator in near:
            run(position, locator)
    return Located(_first_per_sample(frames, ctx, [loc.name for loc in locators]), dict(ctx.notes))


def _first_per_sample(frames: list[pd.DataFrame], ctx: LocateContext, names: list[str]) -> pd.DataFrame:
    """One row per (request, row): the match of the first locator in precedence order (then the highest
    score), plus the names of every locator that found it. Vectorized (a sort and a segmented OR)."""
    columns = ["request", "sample_id", "locator", "score", "via", "locators", "row"]
    if not frames or not sum(len(f) for f in frames):
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns}).astype(
            {"request": np.int64, "row": np.int64, "score": np.float64})
    matches = pd.concat(frames, ignore_index=True)
    request = matches["request"].to_numpy(np.int64)
    row = matches["row"].to_numpy(np.int64)
    precedence = matches["precedence"].to_numpy(np.int64)
    score = matches["score"].to_numpy(np.float64)
    order = np.lexsort((-score, precedence, row, request))
    request, row, precedence = request[order], row[order], precedence[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (request[1:] != request[:-1]) | (row[1:] != row[:-1])
    starts = np.flatnonzero(first)
    masks = np.bitwise_or.reduceat(np.left_shift(1, precedence), starts)
    unique_masks, mask_index = np.unique(masks, return_inverse=True)
    labels = np.array([",".join(n for p, n in enumerate(names) if m >> p & 1) for m in unique_masks], dtype=object)
    chosen = order[starts]
    rows = row[starts]
    return pd.DataFrame({
        "request": request[starts],
        "sample_id": ctx.sample_ids_at(rows),
        "locator": np.asarray(names, dtype=object)[precedence[starts]],
        "score": score[chosen],
        "via": matches["via"].to_numpy(dtype=object)[chosen],
        "locators": labels[mask_index],
        "row": rows,
    })


def exact_locators() -> list:
    """The built-in exact locators, in their default precedence."""
    return [ExactLocator(name, request_field, column) for name, (request_field, column) in EXACT_LOCATORS.items()]


def configured_locators(names: list[str], plugins=None) -> list:
    """The registered locators called ``names`` (from ``plugins``, a :class:`~unlearnops.plugin_manager.PluginSet`;
    default: freshly loaded), in that order; an unknown name is a PluginError."""
    return list((plugins or load_plugins()).named("locator", names).values())


def locate(request: DeletionRequest, manifest: pa.Table | pd.DataFrame) -> Located:
    """The samples one request names exactly (sample ids, subject ids, content hashes)."""
    return locate_requests([request], LocateContext(manifest), exact_locators())


def unmatched_targets(request: DeletionRequest, manifest: pa.Table | pd.DataFrame) -> dict[str, list[str]]:
    """Per request field, the ids or hashes the request names that the manifest lacks."""
    table = as_table(manifest)
    missing = {}
    for request_field, column in EXACT_LOCATORS.values():
        wanted = getattr(request, request_field)
        if wanted:
            _, _, unmatched = match_keys(table[column], [wanted])
            if unmatched[0]:
                missing[request_field] = sorted(unmatched[0])
    return missing


def check_request(request: DeletionRequest, manifest: pa.Table | pd.DataFrame) -> Located:
    """Refuse a request that names anything absent from the current dataset (nothing is stored)."""
    unmatched = unmatched_targets(request, manifest)
    if unmatched:
        raise RequestRejected(describe_unmatched(unmatched))
    return locate(request, manifest)


def describe_unmatched(unmatched: dict[str, list[str]]) -> str:
    """``unknown subject id: a, b; unknown sample id: c`` (at most five ids per field)."""
    parts = []
    for request_field, missing in unmatched.items():
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        parts.append(f"unknown {request_field.rstrip('s').replace('_', ' ')}: {shown}")
    return "; ".join(parts)
