"""Near-duplicate search, vectorized: perceptual hashes of images and cosine similarity of embeddings.

Both searches take a small set of queries (the samples a request located exactly) against every sample of
the dataset and return the pairs above a score threshold, processing the dataset in blocks so memory stays
bounded (``block`` rows at a time) whatever its size.
"""

from __future__ import annotations

import numpy as np

#: side of the block of low DCT frequencies a perceptual hash keeps (16×16 = 256 bits).
HASH_SIZE = 16


def as_images(features: np.ndarray) -> np.ndarray | None:
    """Features as a float32 batch of grey images (N, H, W), channels averaged; None when the features are
    not image-like (fewer than two spatial axes, or images smaller than 8×8)."""
    x = np.asarray(features)
    if x.ndim == 4:
        x = x.mean(axis=1)
    if x.ndim != 3 or min(x.shape[1:]) < 8:
        return None
    return x.astype(np.float32, copy=False)


def _center_of_mass_shift(images: np.ndarray) -> np.ndarray:
    """Translate each image so its intensity centroid sits at the centre (sub-pixel, by a Fourier phase
    ramp; the whole batch at once). Makes the hash insensitive to small shifts."""
    n, h, w = images.shape
    mass = images.clip(min=0)
    total = mass.sum(axis=(1, 2))
    total[total == 0] = 1.0
    cy = (mass.sum(axis=2) * np.arange(h)).sum(axis=1) / total
    cx = (mass.sum(axis=1) * np.arange(w)).sum(axis=1) / total
    dy, dx = (h - 1) / 2 - cy, (w - 1) / 2 - cx
    fy, fx = np.fft.fftfreq(h), np.fft.rfftfreq(w)
    ramp = np.exp(-2j * np.pi * (fy[None, :, None] * dy[:, None, None] + fx[None, None, :] * dx[:, None, None]))
    return np.fft.irfft2(np.fft.rfft2(images) * ramp, s=(h, w)).astype(np.float32)


def phash(features: np.ndarray, hash_size: int = HASH_SIZE, center: bool = True, block: int = 16384) -> np.ndarray:
    """DCT perceptual hash of each image: ``hash_size``² bits as uint64 words, shape (N, hash_size²/64).

    Each image is (by default) centred on its centre of mass, resized to 32×32 (bilinear) and transformed
    by a 2-D DCT; its ``hash_size``×``hash_size`` lowest frequencies are compared with their median (the
    DC term left out of the median), one bit each. Raises ``ValueError`` for features that are not images.
    On MNIST, 256 bits separate near-duplicates from other digits far better than the classic 64
    (see the README's Locating section)."""
    from scipy import fft, ndimage

    images = as_images(features)
    if images is None:
        raise ValueError(f"perceptual hashes need image features (N, [C,] H, W); got shape {np.shape(features)}")
    if hash_size * hash_size % 64 or not 8 <= hash_size <= 32:
        raise ValueError("hash_size must be 8, 16, 24 or 32")
    n, h, w = images.shape
    words = hash_size * hash_size // 64
    out = np.empty((n, words), dtype=np.uint64)
    for start in range(0, n, block):
        x = np.asarray(images[start:start + block], dtype=np.float32)
        if center:
            x = _center_of_mass_shift(x)
        x = ndimage.zoom(x, (1, 32 / h, 32 / w), order=1, grid_mode=True, mode="nearest")
        coeffs = fft.dctn(x, type=2, axes=(1, 2), norm="ortho")[:, :hash_size, :hash_size].reshape(len(x), -1)
        median = np.median(coeffs[:, 1:], axis=1, keepdims=True)
        bits = np.packbits(coeffs > median, axis=1, bitorder="little")
        out[start:start + block] = bits.view("<u8")
    return out


def hamming_search(queries: np.ndarray, hashes: np.ndarray, max_distance: int, block: int | None = None):
    """Pairs (query index, row, distance) whose hashes (uint64 words, shape (N, W)) differ in at most
    ``max_distance`` bits. Memory is bounded by ``block`` rows per step (default: about 128 MB)."""
    queries = np.atleast_2d(np.asarray(queries, dtype=np.uint64))
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(len(hashes), -1)
    block = block or max(256, (1 << 24) // max(1, queries.size))
    qi, rows, dist = [], [], []
    for start in range(0, len(hashes), block):
        chunk = hashes[start:start + block]
        d = np.bitwise_count(queries[:, None, :] ^ chunk[None, :, :]).sum(axis=2, dtype=np.int64)
        q, r = np.nonzero(d <= max_distance)
        qi.append(q)
        rows.append(r + start)
        dist.append(d[q, r])
    if not qi:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(qi), np.concatenate(rows), np.concatenate(dist)


def normalize(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); zero rows stay zero."""
    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def cosine_search(queries: np.ndarray, base: np.ndarray, min_score: float, block: int = 32768):
    """Pairs (query index, row, cosine similarity) with similarity ≥ ``min_score``; both inputs must be
    unit-normalised (:func:`normalize`). One matrix product per block of ``block`` base rows."""
    queries = np.asarray(queries, dtype=np.float32)
    qi, rows, scores = [], [], []
    for start in range(0, len(base), block):
        s = queries @ np.asarray(base[start:start + block], dtype=np.float32).T
        q, r = np.nonzero(s >= min_score)
        qi.append(q)
        rows.append(r + start)
        scores.append(s[q, r])
    if not qi:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(qi).astype(np.int64), np.concatenate(rows).astype(np.int64), np.concatenate(scores)
