import json
import os

from typer.testing import CliRunner

from unlearnops.cli import app
from unlearnops.requests import RequestStore

runner = CliRunner()


def test_submit_and_list_json(fresh_workspace):
    import pandas as pd

    subject = pd.read_parquet(fresh_workspace.data_dir / "manifest.parquet").subject_id.iloc[0]
    ws = str(fresh_workspace.root)
    result = runner.invoke(app, ["request", "submit", "--subject", subject, "--idempotency-key", "k1",
                                 "--workspace", ws, "--json"])
    assert result.exit_code == 0, result.output
    receipt = json.loads(result.stdout)
    assert receipt["state"] == "received" and receipt["created"] is True
    again = json.loads(runner.invoke(app, ["request", "submit", "--subject", subject, "--idempotency-key", "k1",
                                           "--workspace", ws, "--json"]).stdout)
    assert again["id"] == receipt["id"] and again["created"] is False
    listed = json.loads(runner.invoke(app, ["request", "list", "--workspace", ws, "--json"]).stdout)
    assert [r["id"] for r in listed] == [receipt["id"]]


def test_rejected_request_exit_code_and_nothing_stored(fresh_workspace):
    ws = str(fresh_workspace.root)
    result = runner.invoke(app, ["request", "submit", "--subject", "subject-9999", "--workspace", ws, "--json"])
    assert result.exit_code == 1
    assert "unknown subject id: subject-9999" in json.loads(result.stdout)["error"]
    result = runner.invoke(app, ["request", "submit", "--samples", "bad id!", "--workspace", ws])
    assert result.exit_code == 1 and "malformed id" in result.output
    assert RequestStore(fresh_workspace.requests_db).list() == []


def test_run_refuses_bad_method_config_before_touching_anything(fresh_workspace):
    ws = str(fresh_workspace.root)
    result = runner.invoke(app, ["run", "--config", "initial_step=-3", "--workspace", ws, "--json"])
    assert result.exit_code == 2 and "initial_step" in json.loads(result.stdout)["error"]
    result = runner.invoke(app, ["run", "--method", "nope", "--workspace", ws])
    assert result.exit_code == 2 and "unknown unlearning method" in result.output


def test_missing_workspace_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["request", "list", "--workspace", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no workspace" in result.output


def test_plugins_list_json():
    result = runner.invoke(app, ["plugins", "list", "--json"])
    assert result.exit_code == 0
    listed = json.loads(result.stdout)
    assert listed["errors"] == []
    rows = {(r["kind"], r["name"]): r for r in listed["plugins"]}
    slug = rows["method", "slug"]
    assert (slug["version"], slug["source"]) == ("0.2.0", "built-in")
    assert rows["method", "retrain"]["source"] == "built-in"
    assert slug["capabilities"] == {"needs_retain": True, "needs_labels": True, "model_families": ["Module"],
                                    "supports_gpu": True}
    assert slug["config"]["seed"] == 0
    assert {name for kind, name in rows if kind == "gate"} == {"data", "membership_inference", "forget_accuracy", "class_forgetting",
                                                               "utility", "retrain_equivalence"}
    assert {name for kind, name in rows if kind == "locator"} == {"sample_id", "subject_id", "content_sha256",
                                                                  "phash", "embedding"}
    assert rows["locator", "phash"]["locator_kind"] == "near-duplicate"
    assert rows["exporter", "onnx"]["source"] == "built-in"


def test_prefect_server_that_cannot_start_is_one_line_and_exit_2(fresh_workspace, tmp_path):
    """A start-up budget too small for Prefect's temporary server: exit 2 with one clear line (or one JSON
    document), no traceback, and the pending request untouched."""
    import os
    import subprocess
    import sys

    import pandas as pd

    ws = str(fresh_workspace.root)
    subject = pd.read_parquet(fresh_workspace.data_dir / "manifest.parquet").subject_id.iloc[0]
    stored = json.loads(runner.invoke(app, ["request", "submit", "--subject", subject, "-w", ws, "--json"]).stdout)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0")
    command = [sys.executable, "-m", "unlearnops.cli", "run", "-w", ws]
    done = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    error = json.loads(done.stdout)["error"]
    assert error.startswith("Prefect's temporary server did not start within 0 s; the flow did not start and no request "
                             "was touched")
    assert "Traceback" not in done.stderr
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert "error: Prefect's temporary server did not start" in done.stderr and "Traceback" not in done.stderr
    request = RequestStore(fresh_workspace.requests_db).get(stored["id"])
    assert request.state == "received" and request.attempts == 0 and request.error is None


def test_written_toml_has_each_comment_on_its_own_key():
    """Parse the TOML `init` writes: every key's description sits right above it (or, for a table, right
    under its header), and the text reads back as the same settings."""
    import textwrap

    import tomlkit

    from unlearnops.workspace import Settings, documented_toml

    settings = Settings()
    text = documented_toml(settings)
    assert Settings.model_validate(tomlkit.parse(text).unwrap()) == settings
    lines = text.splitlines()
    for section in Settings.model_fields:
        model = getattr(settings, section)
        for key, field in type(model).model_fields.items():
            expected = [f"# {line}" for line in textwrap.wrap(field.description or "", 100)]
            if isinstance(getattr(model, key), dict):
                at = lines.index(f"[{section}.{key}]")
                assert lines[at + 1:at + 1 + len(expected)] == expected, (section, key)
                continue
            start = lines.index(f"[{section}]")
            at = next(i for i in range(start, len(lines)) if lines[i].startswith(f"{key} = ")
                      or lines[i] == f"# {key} = (not set)")
            block = []
            for line in reversed(lines[start + 1:at]):
                if not line.startswith("# ") or any(line.startswith(f"{k} = ") for k in type(model).model_fields):
                    break
                block.insert(0, line)
            assert block == expected, (section, key, block)


def test_json_failures_full_ids_and_workspace_found_upward(fresh_workspace, tmp_path, monkeypatch):
    """`--json` prints a JSON document on failure too; tables off a terminal keep whole ids; commands
    run inside a workspace (or below it) find it without --workspace, as git finds its repository."""
    result = runner.invoke(app, ["status", "-w", str(tmp_path / "missing"), "--json"])
    assert result.exit_code == 2 and "no workspace" in json.loads(result.stdout)["error"]
    import pandas as pd

    subject = pd.read_parquet(fresh_workspace.data_dir / "manifest.parquet").subject_id.iloc[0]
    stored = json.loads(runner.invoke(app, ["request", "submit", "--subject", subject, "-w",
                                            str(fresh_workspace.root), "--json"]).stdout)
    below = fresh_workspace.root / "data" / "deeper"
    below.mkdir(parents=True)
    monkeypatch.chdir(below)
    monkeypatch.delenv("UNLEARNOPS_WORKSPACE", raising=False)
    result = runner.invoke(app, ["request", "list"])  # CliRunner's stdout is not a terminal
    assert result.exit_code == 0, result.output
    assert stored["id"] in result.stdout  # the whole id, not cut at 80 columns


def test_prefect_startup_budget_comes_from_the_settings_and_the_environment_wins(fresh_workspace, monkeypatch):
    from unlearnops.workspace import PREFECT_STARTUP_ENV, Workspace

    settings = fresh_workspace.settings
    settings.locations.prefect_startup_seconds = 7
    fresh_workspace.write_settings(settings, fresh_workspace.params)
    monkeypatch.delenv(PREFECT_STARTUP_ENV, raising=False)
    Workspace(fresh_workspace.root).activate()
    assert os.environ[PREFECT_STARTUP_ENV] == "7"
    monkeypatch.setenv(PREFECT_STARTUP_ENV, "300")
    Workspace(fresh_workspace.root).activate()
    assert os.environ[PREFECT_STARTUP_ENV] == "300"
    assert Workspace(fresh_workspace.root).settings.locations.prefect_startup_seconds == 7


def test_epoch_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(capsys):
    import io

    from rich.console import Console

    from unlearnops.progress import epoch_progress

    with epoch_progress(3, "train") as report:  # pytest's stderr is not a terminal: plain lines
        for epoch in (1, 2, 3):
            report(epoch, 1.0 / epoch)
    assert capsys.readouterr().err.splitlines() == ["train: epoch 1/3 loss 1.0000", "train: epoch 2/3 loss 0.5000",
                                                    "train: epoch 3/3 loss 0.3333"]
    screen = io.StringIO()
    with epoch_progress(3, "train", console=Console(file=screen, force_terminal=True, width=120)) as report:
        for epoch in (1, 2, 3):
            report(epoch, 1.0 / epoch)
    assert "3/3 epochs" in screen.getvalue() and "loss 0.3333" in screen.getvalue()


def test_a_failing_run_still_prints_one_json_document(fresh_workspace):
    """No champion yet: the run fails before a batch opens; `run --json` still prints the error as one JSON
    document (exit 2) and the request waits untouched."""
    import pandas as pd

    ws = str(fresh_workspace.root)
    subject = pd.read_parquet(fresh_workspace.data_dir / "manifest.parquet").subject_id.iloc[0]
    stored = json.loads(runner.invoke(app, ["request", "submit", "--subject", subject, "-w", ws, "--json"]).stdout)
    result = runner.invoke(app, ["run", "--no-prefect", "-w", ws, "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {"error": "RuntimeError: no champion model: run `unlearnops train` first"}
    request = RequestStore(fresh_workspace.requests_db).get(stored["id"])
    assert request.state == "received" and request.error is None
