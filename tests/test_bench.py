"""The benchmark harness on the smallest real configuration (the tabular MLP on scikit-learn's digits)."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from unlearnops.bench.harness import (
    FLIPPED_SHARE,
    METRICS,
    SCENARIOS,
    WORST_CASE,
    distinct_subjects,
    forget_mask,
    markdown_table,
    memorization_scores,
    mislabel,
    run,
    summary_matrix,
)
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
    scores = np.arange(len(train), dtype=float)
    memorized = forget_mask(train, "memorized_10pct", rng, scores)
    assert memorized.sum() == round(len(train) * 0.10) and memorized[-memorized.sum():].all()
    with pytest.raises(ValueError, match="needs one memorization score per training sample"):
        forget_mask(train, "memorized_10pct", rng)
    with pytest.raises(ValueError, match="needs one memorization score per training sample"):
        forget_mask(train, "subjects_distinct", rng)
    with pytest.raises(ValueError, match="needs the training set of mislabel"):
        forget_mask(train, "mislabeled", rng)
    assert set(WORST_CASE) == {"memorized_10pct", "mislabeled", "subjects_distinct"} <= set(SCENARIOS)


def test_mislabeled_forgets_exactly_the_flipped_samples():
    features, manifest = sklearn_digits()
    train = Dataset(features, manifest).split("train")
    flipped = mislabel(train, np.random.default_rng(3))
    mask = forget_mask(flipped, "mislabeled", np.random.default_rng(0))
    assert mask.sum() == round(len(train) * FLIPPED_SHARE)
    # The forget set is the samples whose label moved to another class; the rest keep their true labels.
    assert (flipped.labels[mask] != train.labels[mask]).all() and (flipped.labels[~mask] == train.labels[~mask]).all()
    assert (flipped.manifest["true_label"].to_numpy() == train.labels).all() and flipped.labels.max() <= 9
    assert flipped.features is train.features and "true_label" not in train.manifest  # the clean split is untouched
    again = forget_mask(mislabel(train, np.random.default_rng(3)), "mislabeled", np.random.default_rng(1))
    assert (again == mask).all()  # seeded by the transform's generator, not by the forget-set draw


def test_subjects_distinct_forgets_the_whole_subjects_with_the_highest_mean_score():
    features, manifest = sklearn_digits()
    train = Dataset(features, manifest).split("train")
    subjects = train.manifest["subject_id"].astype(str).to_numpy()
    scores = np.random.default_rng(0).exponential(size=len(train))
    sizes = train.manifest["subject_id"].astype(str).value_counts()
    lonely = sizes.index[sizes == sizes.min()][0]
    scores[subjects == lonely] = 100.0  # highest mean of all, but a single sample's score: not eligible
    chosen = distinct_subjects(train, scores)
    mask = forget_mask(train, "subjects_distinct", np.random.default_rng(0), scores)
    assert len(chosen) == 10 and lonely not in chosen
    assert (mask == np.isin(subjects, chosen)).all()  # whole subjects: every training sample of each
    means = {s: scores[subjects == s].mean() for s in sizes.index if sizes[s] >= sizes.median()}
    assert min(means[s] for s in chosen) >= max(m for s, m in means.items() if s not in chosen)


def test_memorization_scores_are_held_out_losses():
    from unlearnops.method_runner import Samples

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    y[:10] = 1 - y[:10]  # ten mislabelled (atypical) samples
    calls = []

    def fit(samples, seed):
        calls.append(len(samples))
        model = torch.nn.Linear(4, 2)
        with torch.no_grad():
            model.weight.copy_(torch.tensor([[-5.0, 0, 0, 0], [5.0, 0, 0, 0]]))
            model.bias.zero_()
        return model

    scores = memorization_scores(Samples(x, y), fit, seed=0)
    assert calls == [100, 100]  # two half-size models, each scoring the other half
    assert set(np.argsort(-scores)[:10]) == set(range(10))


BENCHED = ("random_10pct", "class", "memorized_10pct", "mislabeled", "subjects_distinct")


@pytest.fixture(scope="module")
def rows():
    return run(models=["mlp"], scenarios=BENCHED, methods=["slug", "retrain", "sisa"], seeds=[0], quick=True)


def test_rows_compare_each_method_with_retraining_in_the_same_run(rows):
    assert {(r["scenario"], r["method"]) for r in rows} == {(s, m) for s in BENCHED
                                                            for m in ("retrain", "noop", "slug", "sisa")}
    for row in rows:
        for key in ("method", "scenario", "model", "seed", "wall_seconds", "time_ratio_to_retrain",
                    *METRICS, *(f"gap_to_retrain_{k}" for k in METRICS)):
            assert key in row, key
        if row["method"] == "retrain":
            assert row["time_ratio_to_retrain"] == 1.0 and row["avg_gap_to_retrain"] == 0.0
        # The floor (one forward + backward pass of the parent over forget set and retain sample) is measured
        # once per scenario and every row's ratio is its own seconds over it.
        assert row["floor_seconds"] > 0
        assert row["floor_ratio"] == pytest.approx(row["wall_seconds"] / row["floor_seconds"])
        if row["method"] in ("slug", "sisa"):  # timed as the median of three runs, the first one kept beside
            assert row["timed_runs"] == 3 and row["first_run_seconds"] > 0 and row["wall_seconds"] > 0
    by = {(r["scenario"], r["method"]): r for r in rows}
    for scenario in BENCHED:
        assert len({by[(scenario, m)]["floor_seconds"] for m in ("retrain", "noop", "slug", "sisa")}) == 1
    # The no-op row is the parent unchanged: slug's edited model differs from it, retraining's gap is its own.
    noop = by[("class", "noop")]
    assert noop["changed_parameters"] == 0 and noop["time_ratio_to_retrain"] is None
    assert noop["forget_accuracy"] > 0.5 > by[("class", "retrain")]["forget_accuracy"]
    assert noop["avg_gap_to_retrain"] > 0
    for scenario in ("random_10pct", "class"):
        slug, ref = by[(scenario, "slug")], by[(scenario, "retrain")]
        assert slug["gap_to_retrain_test_accuracy"] == pytest.approx(abs(slug["test_accuracy"] - ref["test_accuracy"]))
        assert slug["changed_parameters"] == 1
    # Retraining without a class never predicts it: its forget accuracy is zero.
    assert by[("class", "retrain")]["forget_accuracy"] == 0.0
    # SISA starts from its own family's parent, named in its rows; the others from the single network.
    assert by[("class", "sisa")]["parent"] == "5-shard SISA ensemble" and "parent" not in by[("class", "slug")]
    assert 0.5 < by[("class", "sisa")]["parent_test_accuracy"] <= 1.0
    # The most memorized samples are the ones a retrained model gets wrong far more often than random ones.
    memorized, random = by[("memorized_10pct", "retrain")], by[("random_10pct", "retrain")]
    assert memorized["forget_accuracy"] < random["forget_accuracy"] - 0.1
    table = markdown_table(rows)
    standard, worst = table.split("Worst case")
    assert "| mlp | class | slug | 1 |" in standard and "memorized_10pct" not in standard
    assert "| mlp | memorized_10pct | retrain | 1 |" in worst and "| sisa† |" in worst
    for scenario in WORST_CASE:  # each worst case in its own table, with its no-op row
        assert scenario not in standard and f"| mlp | {scenario} | noop | 1 |" in worst
    assert "† `sisa` starts from a 5-shard SISA ensemble" in table
    assert "Measured on " in table and all(r["load_average_1m"] >= 0 for r in rows)
    matrix = summary_matrix(rows).splitlines()
    assert matrix[0] == "| model | scenario | retrain s | noop | slug | sisa |" and len(matrix) == 2 + len(BENCHED)
    assert "| mlp | class | noop | 1 |" in standard
    class_line = next(line for line in matrix if "| class |" in line)
    slug_gap = float(class_line.split("|")[5].split()[0])  # after the noop column
    assert slug_gap == pytest.approx(by[("class", "slug")]["avg_gap_to_retrain"], abs=5e-4)
    noop_cell = class_line.split("|")[4].strip()
    assert float(noop_cell.split()[0]) == pytest.approx(by[("class", "noop")]["avg_gap_to_retrain"], abs=5e-4)
    assert "×" not in noop_cell  # the no-op costs nothing: no speed-up is claimed for it


def test_mislabeled_parent_is_trained_with_the_flipped_labels(rows):
    by = {(r["scenario"], r["method"]): r for r in rows}
    noop, retrained = by[("mislabeled", "noop")], by[("mislabeled", "retrain")]
    # Forget accuracy is against the flipped labels: the parent fitted them, a model retrained on the
    # correctly labeled rest almost never predicts them. The parent measurably differs from retraining.
    assert noop["n_forget"] == round(noop["n_train"] * FLIPPED_SHARE) and noop["training_set"] == "mislabeled"
    assert noop["forget_accuracy"] > 0.5 and retrained["forget_accuracy"] < 0.1
    assert noop["avg_gap_to_retrain"] > 0.1 > by[("random_10pct", "noop")]["avg_gap_to_retrain"]
    # Its SISA parent is trained on the flipped labels too: another parent than the clean scenarios' one.
    assert by[("mislabeled", "sisa")]["parent_train_seconds"] != by[("class", "sisa")]["parent_train_seconds"]
    # The other scenarios keep the clean split and its one parent.
    assert all("training_set" not in r for r in rows if r["scenario"] != "mislabeled")
    assert by[("random_10pct", "noop")]["retain_accuracy"] > 0.99
    # The most distinctive subjects: the parent differs from retraining more than on a random forget set.
    assert by[("subjects_distinct", "noop")]["avg_gap_to_retrain"] > by[("random_10pct", "noop")]["avg_gap_to_retrain"]


def test_cli_writes_json_table_and_plot(tmp_path):
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["bench", "--quick", "--models", "mlp", "--scenarios", "subjects_10",
                                      "--seeds", "0", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert json.loads(out.read_text()) == payload["rows"]
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["bench", "--methods", "nope", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown unlearning method" in bad.output
    bad = CliRunner().invoke(app, ["bench", "--scenarios", "mislabeled,nope", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown model or scenario: nope" in bad.output
    assert set(SCENARIOS) >= {"subjects_10"}


def test_startup_bench_times_fresh_processes(fresh_workspace):
    from unlearnops.bench.startup import markdown, measure

    rows = measure(fresh_workspace.root, repeats=1,
                   commands={"--help": ["--help"], "request list": ["request", "list"]})
    assert [r["command"] for r in rows] == ["unlearnops --help", "unlearnops request list"]
    for row in rows:
        assert row["exit_codes"] == [0] and 0 < row["min_s"] <= row["median_s"] <= row["max_s"]
        assert row["cpus"] >= 1 and row["load_before"] >= 0
    assert "| `unlearnops request list` |" in markdown(rows)
