"""The built-in locators, registered through ``register_locators`` like external ones.

Exact (every request): ``sample_id``, ``subject_id``, ``content_sha256`` — the request's keys joined
against the manifest column of :data:`unlearnops.locate.EXACT_LOCATORS`, score 1
(:class:`unlearnops.locate.ExactLocator`: core checks requests with the same locators).

Near-duplicate (requests with policy ``expand``; queries are the samples the exact locators found):
``phash`` — 256-bit DCT perceptual hash of image features, score = share of equal bits;
``embedding`` — cosine similarity of the model's penultimate features
(:func:`unlearnops.model.penultimate_features`).
"""

from __future__ import annotations

import numpy as np

from unlearnops.plugin import (
    __version__,
    EXACT_LOCATORS,
    HASH_SIZE,
    ExactLocator,
    LocateContext,
    as_images,
    cosine_search,
    hamming_search,
    hookimpl,
    matches_frame,
    normalize,
    phash,
)


class _NearDuplicateLocator:
    kind = "near-duplicate"
    version = __version__
    request_field = None

    def _pairs(self, ctx: LocateContext, query_index: np.ndarray, rows: np.ndarray, scores: np.ndarray):
        """Turn (seed index, row, score) hits into matches of the seed's request, dropping each seed itself."""
        seeds = ctx.seeds
        seed_request = seeds["request"].to_numpy()[query_index]
        seed_row = seeds["row"].to_numpy()[query_index]
        keep = rows != seed_row
        return matches_frame(seed_request[keep], rows[keep], scores[keep], ctx.sample_ids_at(seed_row[keep]))


class PHashLocator(_NearDuplicateLocator):
    """Images whose perceptual hash differs from a located sample's in few bits (shifted, noised,
    re-encoded copies). Features that are not images are skipped, with a note."""

    name = "phash"
    #: 1 - (differing bits / 256): 0.85 allows 38 bits; measured on planted MNIST copies (README, Locating).
    default_min_score = 0.85

    def locate(self, requests, ctx: LocateContext):
        if ctx.seeds.empty:
            return matches_frame([], [], [])
        features = ctx.features
        if features is None or as_images(features[:1]) is None:
            ctx.notes[self.name] = "skipped: the features are not images"
            return matches_frame([], [], [])
        hashes = phash(features)
        bits = HASH_SIZE * HASH_SIZE
        max_distance = int(np.floor((1.0 - ctx.min_score(self)) * bits + 1e-9))
        q, rows, distance = hamming_search(hashes[ctx.seeds["row"].to_numpy()], hashes, max_distance)
        return self._pairs(ctx, q, rows, 1.0 - distance / bits)


class EmbeddingLocator(_NearDuplicateLocator):
    """Samples whose penultimate features (of the model being unlearned) point the same way as a located
    sample's: cosine similarity above the threshold. Skipped, with a note, when there is no model."""

    name = "embedding"
    #: Cosine similarity; measured on the demo CNN (README, Locating). Model-specific: set
    #: ``[locate] min_score = {embedding = ...}`` for another model.
    default_min_score = 0.998

    def locate(self, requests, ctx: LocateContext):
        if ctx.seeds.empty:
            return matches_frame([], [], [])
        model = ctx.model
        if model is None or ctx.features is None:
            ctx.notes[self.name] = "skipped: no model to embed with (train and register one first)"
            return matches_frame([], [], [])
        from unlearnops.plugin import penultimate_features

        embeddings = normalize(penultimate_features(model, ctx.features))
        q, rows, scores = cosine_search(embeddings[ctx.seeds["row"].to_numpy()], embeddings, ctx.min_score(self))
        return self._pairs(ctx, q, rows, scores)


@hookimpl
def register_locators(register):
    for name, (request_field, column) in EXACT_LOCATORS.items():
        register(ExactLocator(name, request_field, column))
    register(PHashLocator())
    register(EmbeddingLocator())
