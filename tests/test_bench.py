"""The benchmark harness on the smallest real configuration (the tabular MLP on scikit-learn's digits)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from unlearnops.bench.harness import METRICS, SCENARIOS, forget_mask, markdown_table, run
from unlearnops.cli import app
from unlearnops.data import Dataset
from unlearnops.datasets import sklearn_digits


def test_scenarios_draw_the_right_forget_sets():
    features, manifest = sklearn_digits()
    train = Dataset(features, manifest).split("train")
    rng = np.random.default_rng(0)
    assert forget_mask(train, "random_1pct", rng).sum() == round(len(train) * 0.01)
    assert forget_mask(train, "random_10pct", rng).sum() == round(len(train) * 0.10)
    subjects = forget_mask(train, "subjects_10", rng)
    assert train.manifest.subject_id[subjects].nunique() == 10
    one_class = forget_mask(train, "class", rng)
    assert len(set(train.labels[one_class])) == 1 and one_class.sum() == (train.labels == train.labels[one_class][0]).sum()
    with pytest.raises(ValueError, match="unknown scenario"):
        forget_mask(train, "everything", rng)


@pytest.fixture(scope="module")
def rows():
    return run(models=["mlp"], scenarios=["random_10pct", "class"], methods=["slug", "retrain"], seeds=[0],
               quick=True)


def test_rows_compare_each_method_with_retraining_in_the_same_run(rows):
    assert {(r["scenario"], r["method"]) for r in rows} == {(s, m) for s in ("random_10pct", "class")
                                                            for m in ("retrain", "slug")}
    for row in rows:
        for key in ("method", "scenario", "model", "seed", "wall_seconds", "time_ratio_to_retrain",
                    *METRICS, *(f"gap_to_retrain_{k}" for k in METRICS)):
            assert key in row, key
        if row["method"] == "retrain":
            assert row["time_ratio_to_retrain"] == 1.0 and row["avg_gap_to_retrain"] == 0.0
    by = {(r["scenario"], r["method"]): r for r in rows}
    for scenario in ("random_10pct", "class"):
        slug, ref = by[(scenario, "slug")], by[(scenario, "retrain")]
        assert slug["gap_to_retrain_test_accuracy"] == pytest.approx(abs(slug["test_accuracy"] - ref["test_accuracy"]))
        assert slug["changed_parameters"] == 1
    # Retraining without a class never predicts it: its forget accuracy is zero.
    assert by[("class", "retrain")]["forget_accuracy"] == 0.0
    table = markdown_table(rows)
    assert table.count("\n") == 2 + len(rows) and "| mlp | class | slug |" in table


def test_cli_writes_json_table_and_plot(tmp_path):
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["bench", "--quick", "--models", "mlp", "--scenarios", "subjects_10",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert json.loads(out.read_text()) == payload["rows"]
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["bench", "--methods", "nope", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown unlearning method" in bad.output
    assert set(SCENARIOS) >= {"subjects_10"}
