"""Plugins from a real installed package (pip, entry points), the conformance suite, broken plugins in the
deletion flow, lifecycle hooks, and the author's kit."""

import ast
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from unlearnops import model_registry
from unlearnops.cli import app
from unlearnops.locate import configured_locators
from unlearnops.method_runner import Method, UnlearnResult
from unlearnops.plugin import hookimpl
from unlearnops.plugin_manager import BUILTIN_PLUGINS, PluginError, load_plugins, register_plugin, unregister_plugin
from unlearnops.requests import RequestStore
from unlearnops.testing import assert_conformant, check_method
from unlearnops.workspace import ExportSettings

EXAMPLE = Path(__file__).parent / "example_plugin"
runner = CliRunner()


def pip_install(package: Path, target: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(package)], check=True)


@pytest.fixture(scope="session")
def example_site(tmp_path_factory):
    """The example plugin package, pip-installed into its own directory (a copy, so no build files land in
    the repository)."""
    root = tmp_path_factory.mktemp("example-plugin")
    source = root / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip_install(source, root / "site")
    return root / "site"


@pytest.fixture
def use_plugins(monkeypatch, example_site):
    """Put the installed example on sys.path and allow the named entry points (None: all of them)."""

    def use(names):
        monkeypatch.syspath_prepend(str(example_site))
        if names is None:
            monkeypatch.delenv("UNLEARNOPS_PLUGINS", raising=False)
        else:
            monkeypatch.setenv("UNLEARNOPS_PLUGINS", ",".join(names))

    return use


# -- discovery ---------------------------------------------------------------------------------------------


def test_installed_plugin_is_listed_with_its_distribution(use_plugins):
    use_plugins(["example"])
    result = runner.invoke(app, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    rows = {(r["kind"], r["name"]): r for r in listed["plugins"]}
    example = rows["method", "neggrad-plus"]
    assert example["source"] == "unlearnops-example-plugin 0.2.0" and example["plugin"] == "example"
    assert example["version"] == "0.2.0"
    assert example["capabilities"]["needs_retain"] and example["config"]["max_steps"] == 100
    assert rows["method", "slug"]["source"] == "built-in"
    assert listed["errors"] == []
    assert ("method", "broken-raise") not in rows  # not allowed by UNLEARNOPS_PLUGINS


def test_environment_variable_limits_external_plugins(use_plugins):
    use_plugins([])
    assert set(load_plugins().sources.values()) == {"built-in"}
    use_plugins(None)  # unset: every installed plugin loads, and the broken one is reported by name
    plugins = load_plugins()
    assert {"neggrad-plus", "broken-raise", "broken-device"} <= set(plugins.methods)
    assert any("'broken-import'" in e and "ModuleNotFoundError" in e for e in plugins.errors)


def test_plugin_that_fails_to_import_is_named_when_its_method_is_asked_for(use_plugins):
    use_plugins(["broken-import"])
    with pytest.raises(PluginError, match=r"unknown unlearning method 'missing'.*'broken-import'.*failed to load"):
        load_plugins().get("missing")


def test_objects_that_break_the_contract_register_nothing():
    class NoSeed(Method):
        name, version = "no-seed", "1"

        class Config(BaseModel):  # no seed
            pass

        def unlearn(self, model, inputs, config, device):
            return UnlearnResult(model=model, method=self.name, changed_parameters={})

    class Fine(NoSeed):
        name = "fine"
        Config = Method.Config

    class Plugin:
        @hookimpl
        def register_methods(self, register):
            register(Fine())
            register(NoSeed())

        @hookimpl
        def register_gates(self, register):
            register(object())

    register_plugin(Plugin(), "contract-breaker")
    try:
        plugins = load_plugins()
    finally:
        unregister_plugin("contract-breaker")
    assert "fine" not in plugins.methods and "no-seed" not in plugins.methods  # all or nothing per plugin
    assert any("contract-breaker" in e and "'seed'" in e for e in plugins.errors)
    assert any("contract-breaker" in e and "gate None" in e for e in plugins.errors)


class NoOp(Method):
    name, version = "noop", "0"

    def unlearn(self, model, inputs, config, device):
        return UnlearnResult(model=model, method=self.name, changed_parameters={})


# -- what run_method guarantees --------------------------------------------------------------------------


def _run(method, **inputs_changes):
    import dataclasses

    import torch

    from unlearnops.method_runner import parameter_snapshot, parse_config, run_method
    from unlearnops.testing import tiny_task

    task = tiny_task()
    inputs = dataclasses.replace(task.inputs, **inputs_changes)
    before = parameter_snapshot(task.model)
    return task.model, before, run_method(method, task.model, inputs, parse_config(method, {}), torch.device("cpu"))


def test_run_method_leaves_the_callers_model_untouched_and_measures_the_change():
    import torch

    from unlearnops.method_runner import parameter_snapshot

    slug = load_plugins().get("slug")  # changes the model it gets in place
    model, snapshot, result = _run(slug)
    assert result.model is not model
    assert all(torch.equal(p, snapshot[n]) for n, p in parameter_snapshot(model).items())
    (name,) = result.changed_parameters
    after = dict(result.model.named_parameters())[name].detach()
    assert result.changed_parameters[name] == pytest.approx(float((after - snapshot[name]).norm()
                                                                  / snapshot[name].norm()), rel=1e-6)
    assert result.seconds > 0


class Misreporting(NoOp):
    name = "misreporting"

    def unlearn(self, model, inputs, config, device):
        import torch

        with torch.no_grad():
            model[0].bias.add_(1.0)
        return super().unlearn(model, inputs, config, device)


class CnnOnly(NoOp):
    name = "cnn-only"
    model_families = ("SmallCNN",)


class NeedsRetain(NoOp):
    name = "needs-retain"
    needs_retain = True


def test_run_method_refuses_false_accounts_and_unmet_needs():
    from unlearnops.method_runner import Samples

    with pytest.raises(PluginError, match=r"'misreporting' reported changing \[\] but changed \['0.bias'\]"):
        _run(Misreporting())
    with pytest.raises(PluginError, match=r"'cnn-only' handles model families \['SmallCNN'\], not Sequential"):
        _run(CnnOnly())
    empty = Samples(np.zeros((0, 16), dtype=np.float32), np.zeros(0, dtype=np.int64))
    with pytest.raises(PluginError, match="'needs-retain' needs retain samples"):
        _run(NeedsRetain(), retain=empty)


# -- conformance -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n, s in load_plugins().sources.items() if s == "built-in"))
def test_conformance_passes_on_every_builtin(name):
    assert_conformant(load_plugins().get(name))


def test_conformance_passes_on_the_installed_example(use_plugins):
    use_plugins(["example"])
    report = assert_conformant(load_plugins().get("neggrad-plus"))
    assert report.metrics["gap_closed"] >= 0.5


class Mutating(NoOp):
    """A no-op that also scribbles on the caller's held-out features."""

    name = "mutating"

    def unlearn(self, model, inputs, config, device):
        inputs.holdout.features[0] += 1.0
        return super().unlearn(model, inputs, config, device)


def test_conformance_fails_on_a_no_op():
    report = check_method(NoOp())
    assert [c.name for c in report.failures] == ["forgets"]
    assert report.metrics["forget_accuracy_after"] == report.metrics["forget_accuracy_before"] == 1.0
    with pytest.raises(AssertionError, match=r"FAIL\] forgets"):
        assert_conformant(NoOp())


def test_conformance_refuses_a_task_without_memorization():
    import dataclasses

    from unlearnops.testing import tiny_task

    task = tiny_task()
    task.inputs = dataclasses.replace(task.inputs, forget=task.test)  # non-members: nothing to forget
    with pytest.raises(ValueError, match="does not memorize its forget set"):
        check_method(NoOp(), task=task)


def test_conformance_catches_modified_inputs():
    assert "inputs_untouched" in [c.name for c in check_method(Mutating()).failures]


@pytest.mark.parametrize("name, reason", [("broken-raise", "deliberate failure"),
                                          ("broken-device", r"left parameters on \['meta'\]")])
def test_conformance_names_a_broken_method(use_plugins, name, reason):
    use_plugins(["broken-raise", "broken-device"])
    report = check_method(load_plugins().get(name))
    assert not report.passed
    (failure,) = report.failures
    assert failure.name == "result_and_device"
    assert f"method {name!r}" in failure.detail
    assert re.search(reason, failure.detail)


# -- broken plugins in the deletion flow ----------------------------------------------------------------


@pytest.fixture
def small_workspace(tmp_path_factory, prefect_harness):
    """A trained workspace per test (300 digits, 2 epochs): these tests add versions and leave failed batches
    open, which a later run in the same workspace would resume."""
    from conftest import make_workspace

    from unlearnops.project import train_base

    ws = make_workspace(tmp_path_factory.mktemp("plugins") / "ws", limit=300, epochs=2)
    train_base(ws)
    return ws


def _submit(ws, subjects):
    from unlearnops.intake import submit

    stored, _ = submit(ws, {"subject_ids": subjects, "reason": "plugin test"})
    return stored.id


def _model_versions(ws):
    name = ws.settings.project.model_name
    return sorted(int(v.version) for v in model_registry.client(ws).search_model_versions(f"name='{name}'"))


def _dataset_versions(ws):
    from unlearnops import data

    return len(data.git(ws.root, "log", "--format=%H", "--", "data.dvc").split())


def test_broken_plugins_leave_requests_failed_and_register_nothing(small_workspace, use_plugins):
    from unlearnops.demo import demo_subjects
    from unlearnops.pipelines.deletion import deletion_flow

    ws = small_workspace
    use_plugins(["broken-import"])
    store = RequestStore(ws.requests_db)
    versions, candidate = _model_versions(ws), model_registry.resolve_version(ws, "candidate")
    request_id = _submit(ws, demo_subjects(ws, 1))

    # A method from a plugin that failed to import: refused before the dataset is touched.
    with pytest.raises(PluginError, match="broken-import"):
        deletion_flow(str(ws.root), method="from-broken-import")
    failed = store.get(request_id)
    assert failed.state == "failed" and "broken-import" in failed.error and "ModuleNotFoundError" in failed.error
    assert _dataset_versions(ws) == 1

    # Raising, wrong device, vetoed by an audit hook: the batch fails naming the plugin; nothing registered.
    # (Each round adds a request for a subject whose samples are still in the dataset. Once a batch has cut
    # its dataset version, later runs resume that batch and a newer request waits, still "received".)
    for method, reason, plugin in (("broken-raise", "deliberate failure", "broken-raise"),
                                   ("broken-device", "left parameters on", "broken-device"),
                                   ("slug", "'broken-veto' stopped the batch", "broken-veto")):
        use_plugins([plugin])
        # a subject no earlier round asked for (an open request for the same targets would be returned instead)
        from unlearnops.keys import keyed_hash, subject_key

        asked = {subject for r in store.list() for subject in r.request.subject_ids}
        key = subject_key(ws)
        request_id = _submit(ws, [next(s for s in demo_subjects(ws, 50) if s not in asked
                                       and "hmac:" + keyed_hash(key, s) not in asked)])
        result = runner.invoke(app, ["run", "--method", method, "--workspace", str(ws.root), "--json"])
        assert result.exit_code == 2 and reason in json.loads(result.stdout)["error"]
        assert store.get(request_id).state in {"failed", "received"}
        in_batch = [r for r in store.list() if r.state == "failed" and reason in (r.error or "")]
        assert in_batch, [r.error for r in store.list()]
        if method != "slug":
            assert all(f"method {method!r}" in r.error for r in in_batch)
    assert {r.state for r in store.list()} <= {"failed", "received"} and len(store.list()) == 4
    assert _model_versions(ws) == versions
    assert model_registry.resolve_version(ws, "candidate") == candidate


def test_installed_plugin_runs_end_to_end_with_lifecycle_hooks(small_workspace, use_plugins):
    from unlearnops.demo import demo_subjects

    ws = small_workspace
    use_plugins(["example"])
    request_id = _submit(ws, demo_subjects(ws, 3))
    events = []

    class Audit:
        @hookimpl
        def before_unlearn(self, event):
            events.append(("before_unlearn", event))

        @hookimpl
        def after_certify(self, event):
            events.append(("after_certify", event))
            raise ConnectionError("notification service down")

    register_plugin(Audit(), "audit")
    settings = ws.settings
    ws.write_settings(settings.model_copy(update={"export": ExportSettings(exporters=["onnx", "torchscript"])}),
                      ws.params)
    try:
        result = runner.invoke(app, ["run", "--method", "neggrad-plus", "--config", "max_steps=20",
                                     "--workspace", str(ws.root), "--json"])
        verified = runner.invoke(app, ["certificate", "verify", "--workspace", str(ws.root), "--json",
                                       json.loads(result.stdout).get("registered_version", "")])
    finally:
        unregister_plugin("audit")
        ws.write_settings(settings, ws.params)
    # certified or honestly not (exit 3): an approximate method needs retrain-equivalence evidence
    assert result.exit_code in (0, 3), result.output
    summary = json.loads(result.stdout)
    assert summary["method"] == "neggrad-plus" and request_id in summary["requests"]
    assert summary["forget_samples_trained"] > 0  # the method really ran on the new request's samples
    assert summary["registered_version"] == str(max(_model_versions(ws)))
    assert any("'audit'" in e and "notification service down" in e for e in summary["hook_errors"])
    assert [kind for kind, _ in events] == ["before_unlearn", "after_certify"]
    before, after = events[0][1], events[1][1]
    assert before["method_source"] == "unlearnops-example-plugin 0.2.0" and before["config"]["max_steps"] == 20
    assert after["registered_version"] == summary["registered_version"]
    assert after["certificate"]["method"]["source"] == "unlearnops-example-plugin 0.2.0"
    assert RequestStore(ws.requests_db).get(request_id).state in ("certified", "uncertified")
    # The plugin's exporter ran beside ONNX: its file is certified, attached to the run and verified.
    certificate = after["certificate"]
    exported = certificate["exports"]["torchscript"]
    assert exported["file"] == "model.torchscript" and exported["max_abs_diff"] <= 1e-4
    assert certificate["onnx"]["sha256"] and "onnx" not in certificate["exports"]
    assert verified.exit_code == 0, verified.output
    assert "torchscript_sha256" in json.loads(verified.stdout)["checked"]


# -- built-in gates and locators point at the pipeline's own functions --------------------------------------


def test_builtin_locators_find_what_locate_finds():
    import pandas as pd

    from unlearnops.locate import LocateContext, locate
    from unlearnops.requests import DeletionRequest

    manifest = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "subject_id": ["s1", "s1", "s2", "s3"],
                             "content_sha256": ["0" * 64, "1" * 64, "2" * 64, "3" * 64]})
    request = DeletionRequest(subject_ids=["s1"], sample_ids=["d"], content_sha256=["2" * 64])
    locators = load_plugins().entries["locator"]
    assert {name: e.obj.kind for name, e in locators.items()} == {
        "sample_id": "exact", "subject_id": "exact", "content_sha256": "exact",
        "phash": "near-duplicate", "embedding": "near-duplicate"}
    ctx = LocateContext(manifest)
    found = {name: set(manifest["sample_id"][e.obj.locate([request], ctx)["row"]])
             for name, e in locators.items() if e.obj.kind == "exact"}
    assert found == {"sample_id": {"d"}, "subject_id": {"a", "b"}, "content_sha256": {"c"}}
    assert set().union(*found.values()) == locate(request, manifest).sample_ids


def test_builtin_gates_judge_evidence_like_the_gate_functions():
    import numpy as np

    from unlearnops import gates
    from unlearnops.gates import GateEvidence
    from unlearnops.model import Evaluation
    from unlearnops.workspace import GateSettings

    rng = np.random.default_rng(0)

    def ev(accuracy, n):
        correct = rng.random(n) < accuracy
        return Evaluation(correct, rng.random(n), rng.normal(2.0, 1.0, n))

    before = {"forget": ev(1.0, 60), "holdout": ev(0.9, 300), "test": ev(0.9, 300)}
    after = {"forget": ev(1.0, 60), "holdout": ev(0.9, 300), "test": ev(0.7, 300)}
    import pandas as pd

    manifest = pd.DataFrame({"label": [0, 1, 2]})  # every class stays: sample-level forgetting
    evidence = GateEvidence(manifest, manifest, [], [], rng.integers(0, 3, 60), rng.integers(0, 3, 300), before,
                            after)
    settings = GateSettings()
    registered = load_plugins().entries["gate"]
    assert set(registered) == {"data", "membership_inference", "forget_accuracy", "class_forgetting", "utility",
                               "retrain_equivalence"}
    assert registered["class_forgetting"].obj.check(evidence, settings).status == "not_applicable"
    # no reference models in the evidence: the retrain-equivalence gate cannot judge, never passes
    assert registered["retrain_equivalence"].obj.check(evidence, settings).status in {"inconclusive", "not_applicable"}
    utility = registered["utility"].obj.check(evidence, settings)
    assert utility == gates.utility_gate(before["test"].accuracy, after["test"].accuracy, settings)
    assert utility.status == "fail"
    forget = registered["forget_accuracy"].obj.check(evidence, settings)
    assert forget == gates.forget_accuracy_gate(after["forget"].correct, after["holdout"].correct,
                                                before["forget"].correct, before["holdout"].correct, settings)
    mia = registered["membership_inference"].obj.check(evidence, settings)
    assert mia.name == "membership_inference" and mia.status in {"pass", "fail", "inconclusive"}
    assert all(e.source == "built-in" and e.plugin in BUILTIN_PLUGINS for e in registered.values())


# -- the author's kit -----------------------------------------------------------------------------------


def test_plugins_new_writes_a_package_that_installs_and_passes_its_tests(tmp_path):
    package = tmp_path / "pkg"
    result = runner.invoke(app, ["plugins", "new", "my-method", "--dir", str(package)])
    assert result.exit_code == 0, result.output
    assert {p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()} == {
        "pyproject.toml", "unlearnops_my_method.py", "tests/test_unlearnops_my_method.py", "README.md"}
    assert runner.invoke(app, ["plugins", "new", "my-method", "--dir", str(package)]).exit_code == 1
    assert runner.invoke(app, ["plugins", "new", "Bad Name", "--dir", str(tmp_path / "x")]).exit_code == 1

    pip_install(package, tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "UNLEARNOPS_PLUGINS": "my-method"}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                           cwd=package, env=env, capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout


def test_named_lookup_lists_what_is_registered():
    plugins = load_plugins()
    assert list(plugins.named("exporter", ["onnx"])) == ["onnx"]
    assert [loc.name for loc in configured_locators(["subject_id", "sample_id"], plugins)] == ["subject_id",
                                                                                              "sample_id"]
    with pytest.raises(PluginError, match=r"unknown exporter 'tflite' \(registered: onnx"):
        plugins.named("exporter", ["onnx", "tflite"])
    with pytest.raises(PluginError, match="unknown locator 'fuzzy'"):
        configured_locators(["fuzzy"], plugins)


# -- import rules ---------------------------------------------------------------------------------------


def _imported_modules(path: Path, package: str | None = None) -> list[str]:
    """Every module ``path`` imports (``from X import a`` counts as X and X.a); relative imports resolved
    against ``package``, the dotted package the file belongs to."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = (package or "").split(".")[: len((package or "").split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return names


def _package_dir(name: str) -> Path:
    return Path(importlib.import_module(name).__file__).parent


def test_core_modules_never_import_the_builtin_plugins():
    # The built-ins in plugins/ (installed as unlearnops.plugins) register like any third-party plugin; core
    # reaches them only through the plugin manager (which names their modules as strings).
    root = _package_dir("unlearnops")
    separate = {"plugins", "bench"}  # top-level folders installed under unlearnops. (bench may use plugins)
    files = [(p, "unlearnops." + ".".join(p.relative_to(root).parent.parts)) for p in root.rglob("*.py")
             if p.relative_to(root).parts[0] not in separate]
    files += [(p, f"unlearnops.{name}") for name in ("pipelines", "deploy")
              for p in _package_dir(f"unlearnops.{name}").rglob("*.py")]
    offending = {f"{p.relative_to(p.parents[1])}: {m}" for p, package in files
                 for m in _imported_modules(p, package.rstrip("."))
                 if m == "unlearnops.plugins" or m.startswith("unlearnops.plugins.")}
    assert len(files) > 30
    assert not offending, sorted(offending)


def _unlearnops_imports(files: list[Path]) -> set[str]:
    """The unlearnops modules imported by ``files`` other than ``unlearnops.plugin`` (and the names imported
    from it)."""
    return {f"{p.name}: {m}" for p in files for m in _imported_modules(p)
            if (m == "unlearnops" or m.startswith("unlearnops.")) and m != "unlearnops.plugin"
            and not m.startswith("unlearnops.plugin.")}


def test_plugins_new_and_the_example_plugins_import_only_the_author_module(tmp_path):
    from unlearnops.kit import new_plugin

    package = new_plugin("my-method", tmp_path / "pkg")
    generated = sorted(package.rglob("*.py"))
    examples = sorted((EXAMPLE / "unlearnops_example").glob("*.py")) + [Path(__file__).parent / "noop_plugin.py"]
    assert len(generated) == 2 and len(examples) == 4
    for files in (generated, examples):
        assert any("unlearnops.plugin" in _imported_modules(p) for p in files)
        assert not _unlearnops_imports(files)


def test_builtin_plugins_import_only_the_author_module_and_each_other():
    files = sorted(_package_dir("unlearnops.plugins").glob("*.py"))
    assert len(files) > 10
    assert not {i for i in _unlearnops_imports(files) if not i.split(": ")[1].startswith("unlearnops.plugins")}
