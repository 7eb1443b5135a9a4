"""The deletion flow end to end: a real Prefect run over a real DVC repo, MLflow registry, GX suite and
ONNX Runtime session, on the tiny trained workspace."""

import json

import pandas as pd
import pytest
import yaml

from unlearnops import data, model_registry
from unlearnops.certificate import verify
from unlearnops.requests import RequestStore

REQUIRED_KEYS = {
    "forget_accuracy_before", "forget_accuracy_after", "test_accuracy_before", "test_accuracy_after",
    "mia_auc_before", "mia_auc_after", "onnx_max_abs_diff", "registered_version", "dataset_rev_before",
    "dataset_rev_after", "step_seconds",
}


def test_summary_fields(processed):
    ws, summary, stored, subjects = processed
    assert REQUIRED_KEYS <= set(summary)
    assert set(summary["step_seconds"]) == {"locate", "dataset_version", "unlearn", "gates", "export", "register"}
    assert summary["rungs"] and summary["rungs"][0].startswith("slug: ")
    assert summary["registered_version"] == "2" and summary["parent_version"] == "1"
    assert summary["onnx_max_abs_diff"] <= 1e-4
    assert summary["forget_samples_trained"] > 0
    assert summary["forget_accuracy_before"] == pytest.approx(1.0, abs=0.02)  # memorized before


def test_dataset_version_without_the_deleted_samples(processed):
    ws, summary, stored, subjects = processed
    manifest = pd.read_parquet(ws.data_dir / "manifest.parquet")
    assert not manifest.subject_id.isin(subjects).any()
    assert len(manifest) == 1500 - summary["samples_removed"]
    commits = data.git(ws.root, "log", "--format=%H", "--", "data.dvc").split()
    assert len(commits) == 2 and commits[0] == summary["dataset_rev_after"]
    first = yaml.safe_load(data.git(ws.root, "show", f"{commits[1]}:data.dvc"))["outs"][0]["md5"]
    before = yaml.safe_load(data.git(ws.root, "show", f"{summary['dataset_rev_before']}:data.dvc"))
    assert before["outs"][0]["md5"] == first
    # The version is in the workspace's DVC remote: nothing left to push.
    from dvc.repo import Repo

    with Repo(str(ws.root)) as repo:
        assert repo.status(cloud=True) == {}


def test_ladder_tries_the_fast_path_first_and_escalates_only_on_failure(processed):
    from unlearnops.flow.batch import Batch

    ws, summary, _, _ = processed
    batch = Batch.load(ws, summary["run_id"])
    assert batch.ladder == ["slug", "retrain"]
    first = batch.rungs[0]
    assert first["method"] == "slug" and first["changed_parameters"] == 1  # one layer only
    for rung in batch.rungs[:-1]:
        assert rung["status"] != "pass"
    for rung in batch.rungs:  # the method's own call is part of the rung's time (method + gates)
        assert 0 < rung["method_seconds"] <= rung["seconds"]
    assert batch.rungs[-1]["method"] == batch.method == summary["method"]
    assert (batch.rungs[-1]["status"] == "pass") == (summary["certificate_status"] == "certified")
    # Whatever rung won, the forget set moved away from its memorized state.
    assert summary["forget_loss_after"] > summary["forget_loss_before"]
    assert summary["forget_accuracy_after"] <= summary["forget_accuracy_before"]


def test_registry_versions_aliases_and_certificate(processed, tmp_path):
    ws, summary, stored, subjects = processed
    client = model_registry.client(ws)
    name = ws.settings.project.model_name
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    assert versions == [1, 2]
    assert model_registry.resolve_version(ws, "champion") == "1"
    certified = summary["certificate_status"] == "certified"
    assert (model_registry.resolve_version(ws, "candidate") == "2") == certified
    blocking = {k: s for k, s in summary["gates"].items() if s not in ("pass", "not_applicable")}
    assert certified == (not blocking or len(summary["caveats"]) == len(blocking))

    version = client.get_model_version(name, "2")
    tags = version.tags
    assert tags["unlearnops.parent_version"] == "1"
    assert tags["unlearnops.dataset_rev"] == summary["dataset_rev_after"]
    assert tags["unlearnops.certificate_status"] == summary["certificate_status"]
    cert_path = model_registry.download_run_artifact(ws, version.run_id, "certificate.json", tmp_path)
    certificate = json.loads(cert_path.read_text())
    verify(certificate)
    assert certificate["requests"] == [stored.id]
    assert certificate["dataset_after"]["git_rev"] == summary["dataset_rev_after"]
    assert {g["name"] for g in certificate["gates"]} == {"data", "membership_inference", "forget_accuracy", "class_forgetting",
                                                         "retrain_equivalence", "utility"}
    assert certificate["grounds"].startswith(("certified — ", "not certified — "))
    assert all("thresholds" in g for g in certificate["gates"])
    raw = json.dumps(certificate) + json.dumps(tags)
    assert not any(s in raw for s in subjects), "raw subject ids must never reach certificates or tags"
    assert len(certificate["subjects_hmac_sha256"]) == len(subjects)

    onnx_path = model_registry.download_run_artifact(ws, version.run_id, "model.onnx", tmp_path)
    from unlearnops.model import file_sha256

    assert file_sha256(onnx_path) == certificate["onnx"]["sha256"] == tags["unlearnops.onnx_sha256"]


def test_registered_model_matches_the_certified_weights(processed):
    ws, summary, _, _ = processed
    import torch

    from unlearnops.model import load_weights
    from unlearnops.flow.batch import Batch

    batch = Batch.load(ws, summary["run_id"])
    registered = model_registry.load_model(ws, "2")
    local = load_weights(ws.model_factory, batch.run_dir(ws) / "unlearned.safetensors")
    for (n1, p1), (n2, p2) in zip(registered.state_dict().items(), local.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_requests_processed_and_forget_copy_removed(processed):
    ws, summary, stored, _ = processed
    done = RequestStore(ws.requests_db).get(stored.id)
    assert done.state == "certified" and done.certified_version == "2"  # forgotten only once promoted
    assert done.dataset_rev == summary["dataset_rev_after"] and done.model_version == "2"
    assert len(done.located_sample_ids) == summary["samples_removed"]
    assert not (ws.runs_dir / summary["run_id"] / "forget.npz").exists()


def test_nothing_pending_is_a_no_op(processed):
    from unlearnops.pipelines.deletion import deletion_flow

    ws, *_ = processed
    assert deletion_flow(str(ws.root)) is None


def test_a_no_op_method_is_not_certified(processed):
    from noop_plugin import NoOpPlugin
    from unlearnops.demo import demo_subjects
    from unlearnops.intake import submit
    from unlearnops.pipelines.deletion import deletion_flow
    from unlearnops.plugin_manager import register_plugin, unregister_plugin

    ws, *_ = processed

    from unlearnops.flow.run import step_decision, step_listener

    register_plugin(NoOpPlugin(), "noop-plugin")
    lines = []
    try:
        submit(ws, {"subject_ids": demo_subjects(ws, 30), "reason": "no-op check"})
        with step_listener(lambda batch, step: lines.append(step_decision(batch, step))):
            summary = deletion_flow(str(ws.root), method="noop")
    finally:
        unregister_plugin("noop-plugin")
    # `unlearnops run` prints one line per step from this listener (the Prefect path here)
    assert [line.split(":")[0] for line in lines] == ["locate", "dataset_version", "unlearn", "export", "register",
                                                       "finalize"]
    assert lines[2].startswith("unlearn: 1 rung(s) tried (noop ")
    assert summary["forget_accuracy_after"] == summary["forget_accuracy_before"]
    # "fail" when the forget set is large enough to refute a no-op, "inconclusive" otherwise — never "pass"
    # (tests/test_certify.py pins "fail" on the default demo data).
    assert summary["gates"]["forget_accuracy"] in {"fail", "inconclusive"}
    assert summary["certificate_status"] != "certified"
    assert model_registry.resolve_version(ws, "candidate") != summary["registered_version"]


def test_prefect_shows_steps_rungs_tags_decisions_and_artifacts(processed):
    """Read the deletion run back through Prefect's own client and CLI, as a Prefect user would."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                FlowRunFilterId, FlowRunFilterTags, LogFilter, LogFilterFlowRunId)
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL

    from unlearnops.flow.batch import Batch

    ws, summary, stored, _ = processed
    batch = Batch.load(ws, summary["run_id"])
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"run:{summary['run_id']}"])), limit=50)
        assert len(runs) == 1
        flow_run = runs[0]
        assert {f"workspace:{ws.root.name}", "kind:subjects", "method:slug", "method:retrain",
                f"request:{stored.id}", "requests:1"} <= set(flow_run.tags)
        assert summary["run_id"] in flow_run.name and "subjects" in flow_run.name
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        names = [t.name for t in tasks]
        for step in ("locate", "dataset_version", "unlearn", "export", "register", "finalize"):
            assert any(n.startswith(f"{step}-") for n in names), (step, names)
        for rung in batch.rungs:  # every rung and its gate group is a task of its own
            assert f"rung-{rung['method']} ({rung['method']})" in names
            assert f"gates ({rung['method']})" in names
        assert all(t.state.is_completed() for t in tasks)
        policy = {n.rsplit("-", 1)[0]: t.empirical_policy.retries for n, t in zip(names, tasks)}
        assert policy["export"] == policy["finalize"] == 1 and policy["register"] == policy["dataset_version"] == 0
        logs = [log.message for log in client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))]
        decisions = {line.split(":")[0] for line in logs}
        assert {"locate", "dataset_version", "unlearn", "export", "register", "finalize"} <= decisions
        assert any(line.startswith(f"locate: 1 request(s) of kind subjects → {summary['samples_removed']} samples")
                   for line in logs)
        assert any(line.startswith(f"register: model version {summary['registered_version']} ") for line in logs)
        assert any(line.startswith(f"rung {batch.rungs[0]['method']}: {batch.rungs[0]['status']} (") for line in logs)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
        by_type = {a.type: a for a in artifacts}
        assert {"markdown", "table"} <= set(by_type)
        markdown = by_type["markdown"].data
        assert f"Verdict: {summary['certificate_status']}" in markdown
        assert f"models:/{ws.settings.project.model_name}/{summary['registered_version']}" in markdown
        assert "report.html" in markdown and "| membership_inference |" in markdown
        assert stored.id in str(by_type["table"].data)
    # Prefect's own CLI lists the runs and deployments against the same server (422 with fastapi >= 0.151).
    prefect_cli = str(Path(sys.executable).parent / "prefect")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "250"}
    for command in (["flow-run", "ls"], ["deployment", "ls"]):
        done = subprocess.run([prefect_cli, *command], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    assert "deletion-requests" in subprocess.run([prefect_cli, "flow-run", "ls"], env=env, capture_output=True,
                                                 text=True, timeout=120).stdout


def test_dvc_status_after_a_deletion_is_the_documented_state(processed):
    """`dvc status` reports exactly the one documented change, `unlearnops status` says the same, the train
    stage depends on the settings it reads, and the training curve is a DVC plot and an MLflow metric."""
    import subprocess
    import sys
    from pathlib import Path

    from unlearnops import api

    ws, summary, _, _ = processed
    done = subprocess.run([str(Path(sys.executable).parent / "dvc"), "status", "--json"], cwd=ws.root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"prepare": [{"changed deps": {"data": "modified"}}]}
    state = api.status(ws)["dvc_pipeline"]
    assert not state["clean"] and state["changes"] == ["prepare: changed deps: modified: data"]
    assert summary["dataset_rev_after"] and "expected after deletions" in state["explanation"]
    train = yaml.safe_load((ws.root / "dvc.yaml").read_text())["stages"]["train"]
    assert {"unlearnops.toml": ["project.model_factory", "project.train_function", "project.python_path"]} \
        in train["params"]
    curve = (ws.root / "plots/train.csv").read_text().splitlines()
    assert curve[0] == "epoch,loss,seconds" and len(curve) == 1 + ws.params.train.epochs
    client = model_registry.client(ws)
    base_run = client.get_model_version(ws.settings.project.model_name, "1").run_id
    history = client.get_metric_history(base_run, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, ws.params.train.epochs + 1))


def test_status_reads_the_registry_without_importing_mlflow(processed):
    """`unlearnops status` reads the workspace's own sqlite registry directly (fast start-up); what it reads
    equals what MLflow's client answers, and the process never imports mlflow."""
    import subprocess
    import sys

    from unlearnops import api
    from unlearnops.registry_snapshot import read_registry

    ws, summary, _, _ = processed
    name = ws.settings.project.model_name
    direct = read_registry(ws.mlflow_db, name)
    via_mlflow = api._registry_from_mlflow(ws, name)
    assert direct == via_mlflow and len(direct[1]) >= 2 and direct[0]["champion"] == "1"
    code = ("import sys, json; from unlearnops import api; s = api.status(sys.argv[1]); "
            "print(json.dumps([v['version'] for v in s['versions']])); assert 'mlflow' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code, str(ws.root)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [v["version"] for v in direct[1]]


def test_every_version_logs_the_same_metric_keys_and_its_dataset_version(processed, tmp_path):
    """Base and unlearned versions carry the same MLflow metric keys (gate outcomes and statistics too; NaN
    where a version has no value) and their DVC dataset version as an MLflow dataset input."""
    import math

    from unlearnops.flow.batch import Batch
    from unlearnops.run_metrics import DvcDatasetSource

    ws, summary, _, _ = processed
    client = model_registry.client(ws)
    name = ws.settings.project.model_name
    runs = {v: client.get_run(client.get_model_version(name, v).run_id) for v in ("1", "2")}
    base, unlearned = runs["1"].data.metrics, runs["2"].data.metrics
    assert set(base) - {"train_loss"} == set(unlearned)  # train_loss: the base's per-epoch curve
    gate_names = {"data", "membership_inference", "forget_accuracy", "class_forgetting", "retrain_equivalence",
                  "utility"}
    assert {f"gate_{g}_passed" for g in gate_names} <= set(unlearned)
    assert {"gate_utility_drop", "gate_membership_inference_ci_low", "test_accuracy",
            "parent_test_accuracy"} <= set(unlearned)
    assert all(math.isnan(v) for k, v in base.items() if k.startswith(("gate_", "parent_", "forget_", "mia_")))
    assert 0 < base["test_accuracy"] <= 1 and 0 < base["train_accuracy"] <= 1
    for gate, status in summary["gates"].items():
        passed = unlearned[f"gate_{gate}_passed"]
        assert math.isnan(passed) if status == "not_applicable" else passed == (status == "pass")
    assert unlearned["test_accuracy"] == summary["test_accuracy_after"]
    assert unlearned["parent_forget_accuracy"] == summary["forget_accuracy_before"]
    assert unlearned["gate_utility_drop"] == pytest.approx(
        summary["test_accuracy_before"] - summary["test_accuracy_after"])

    batch = Batch.load(ws, summary["run_id"])
    base_tags = client.get_model_version(name, "1").tags
    expected = {"1": {"training": (base_tags["unlearnops.dataset_md5"], base_tags["unlearnops.dataset_rev"])},
                "2": {"training": (batch.dataset_after["dvc_md5"], batch.dataset_after["git_rev"]),
                      "parent_training": (batch.dataset_before["dvc_md5"], batch.dataset_before["git_rev"])}}
    assert expected["1"]["training"] == expected["2"]["parent_training"]
    for version, run in runs.items():
        inputs = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
                  for i in run.inputs.dataset_inputs}
        assert {c: (d.digest, json.loads(d.source)["rev"]) for c, d in inputs.items()} == expected[version]
        assert all(d.source_type == "dvc" and d.name == "data" for d in inputs.values())
    # The source is enough to get that dataset version back: its manifest lacks the forgotten samples.
    source = DvcDatasetSource.from_json(inputs["training"].source)
    manifest = pd.read_parquet(f"{source.load(str(tmp_path))}/{data.MANIFEST_FILE}", columns=["sample_id"])
    assert len(manifest) == batch.dataset_after["n_samples"]
    assert not set(batch.forget_ids) & set(manifest["sample_id"])
