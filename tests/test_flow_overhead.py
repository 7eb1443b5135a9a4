"""The flow-overhead bench's accounting, and the Prefect server `unlearnops run` starts ahead of the flow."""

import sys
import time

import pytest

from unlearnops import servers
from unlearnops.bench.flow_overhead import NOTHING_PENDING, PART_LABELS, breakdown, markdown


def _marks(pairs):
    return [(name, float(t)) for name, t in pairs]


NEW_PATH = _marks([
    ("interpreter", 0.1), ("temporary_prefect.launch:enter", 0.8), ("temporary_prefect.launch:exit", 0.85),
    ("validated_ladder:enter", 0.85), ("validated_ladder:exit", 1.0),
    ("temporary_prefect.wait:enter", 1.0), ("import_ahead:enter", 1.0), ("import_ahead:exit", 3.0),
    ("temporary_prefect.wait:exit", 5.0),
    ("api.run:enter", 5.0), ("validated_ladder:enter", 5.0), ("validated_ladder:exit", 5.1),
    ("import:unlearnops.pipelines.deletion:start", 5.1), ("import:unlearnops.pipelines.deletion:end", 6.1),
    ("process_pending:enter", 7.0), ("open_or_resume:enter", 7.1),
    ("validated_ladder:enter", 7.2), ("validated_ladder:exit", 7.3), ("open_or_resume:exit", 8.0),
    ("step:dataset_version:enter", 8.1), ("step:dataset_version:exit", 9.0),
    ("step:unlearn:enter", 9.1), ("step:unlearn:exit", 20.0),
    ("step:export:enter", 20.1), ("export_onnx:enter", 20.2), ("export_onnx:exit", 22.0), ("step:export:exit", 22.1),
    ("step:register:enter", 22.2), ("step:register:exit", 24.0),
    ("step:finalize:enter", 24.1), ("step:finalize:exit", 24.2), ("process_pending:exit", 24.3),
    ("api.run:exit", 25.0), ("prefect_server.stop:enter", 25.5), ("prefect_server.stop:exit", 25.7),
    ("atexit", 26.0),
])
BATCH = {"rungs": [{"method": "slug", "method_seconds": 1.5}, {"method": "retrain", "method_seconds": 6.0}],
         "step_seconds": {"gates": 2.0}}


def test_phases_add_up_to_the_wall_time_and_only_the_method_is_not_overhead():
    detail = breakdown(NEW_PATH, spawned=0.0, exited=26.5, batch=BATCH)
    parts = detail["parts"]
    assert set(parts) == set(PART_LABELS)
    assert sum(parts.values()) == pytest.approx(26.5, abs=0.05)
    assert parts["unlearn_method"] == 7.5 and parts["unlearn_gates"] == 2.0
    assert parts["unlearn_rest"] == pytest.approx(10.9 - 7.5 - 2.0)
    assert parts["imports_ahead"] == 2.0 and parts["prefect_server_start"] == pytest.approx(4.05 - 2.0)
    assert parts["plugins_and_ladder_check"] == pytest.approx(0.15 + 0.1)  # the CLI's check and api.run's
    assert parts["locate"] == pytest.approx(0.9) and parts["interpreter_exit"] == pytest.approx(0.5)
    assert detail["prefect_server"] == "started ahead by the CLI" and detail["prefect_server_launches"] == 1
    assert detail["prefect_server_boot_seconds"] == pytest.approx(4.2) and detail["onnx_exports"] == 1



def test_prefect_imported_by_the_cli_before_the_run_counts_as_prefects_import():
    # The CLI imports Prefect (to set its settings) between its server's wait and the run; the flow's module
    # then imports in 0.2 s.
    marks = [m for m in NEW_PATH if not m[0].startswith("import:unlearnops.pipelines.deletion")]
    marks = [("temporary_prefect.wait:exit", 4.5) if n == "temporary_prefect.wait:exit" else (n, t) for n, t in marks]
    marks += _marks([("import:prefect:start", 4.5), ("import:prefect:end", 5.0),
                     ("import:unlearnops.pipelines.deletion:start", 5.1),
                     ("import:unlearnops.pipelines.deletion:end", 5.3)])
    parts = breakdown(sorted(marks, key=lambda m: m[1]), spawned=0.0, exited=26.5, batch=BATCH)["parts"]
    reference = breakdown(NEW_PATH, spawned=0.0, exited=26.5, batch=BATCH)["parts"]
    assert sum(parts.values()) == pytest.approx(26.5, abs=0.05)
    assert parts["prefect_and_flow_import"] == pytest.approx(0.7)
    assert parts["cli_imports_and_parsing"] == pytest.approx(reference["cli_imports_and_parsing"])
    assert parts["prefect_server_start"] == pytest.approx(reference["prefect_server_start"] - 0.5)
    assert parts["flow_run_start"] == pytest.approx(reference["flow_run_start"] + 0.8)


def test_prefect_imported_ahead_counts_once_among_the_imports_ahead():
    marks = [m for m in NEW_PATH if not m[0].startswith("import:unlearnops.pipelines.deletion")]
    marks += _marks([("import:prefect:start", 2.2), ("import:prefect:end", 2.9),  # inside import_ahead 1.0-3.0
                     ("import:unlearnops.pipelines.deletion:start", 2.0),
                     ("import:unlearnops.pipelines.deletion:end", 3.0)])
    parts = breakdown(sorted(marks, key=lambda m: m[1]), spawned=0.0, exited=26.5, batch=BATCH)["parts"]
    reference = breakdown(NEW_PATH, spawned=0.0, exited=26.5, batch=BATCH)["parts"]
    assert sum(parts.values()) == pytest.approx(26.5, abs=0.05)
    assert parts["prefect_and_flow_import"] == 0 and parts["imports_ahead"] == reference["imports_ahead"]
    assert parts["flow_run_start"] == pytest.approx(reference["flow_run_start"] + 1.0)

def test_prefects_own_server_start_is_accounted_as_waiting():
    old = _marks([
        ("interpreter", 0.1), ("api.run:enter", 1.0), ("validated_ladder:enter", 1.0), ("validated_ladder:exit", 1.2),
        ("import:unlearnops.pipelines.deletion:start", 1.2), ("import:unlearnops.pipelines.deletion:end", 2.2),
        ("prefect_server.launch", 4.0), ("prefect_server.start:enter", 4.0), ("prefect_server.start:exit", 9.0),
        ("prefect_server.reuse", 9.5), ("prefect_server.start:enter", 9.5), ("prefect_server.start:exit", 9.5),
        ("process_pending:enter", 10.0), ("open_or_resume:enter", 10.0), ("open_or_resume:exit", 10.5),
        ("process_pending:exit", 10.6), ("api.run:exit", 11.0),
        ("prefect_server.stop:enter", 11.1), ("prefect_server.stop:exit", 11.3), ("atexit", 11.4),
    ])
    detail = breakdown(old, spawned=0.0, exited=12.0, batch={"rungs": [], "step_seconds": {}})
    parts = detail["parts"]
    assert sum(parts.values()) == pytest.approx(12.0, abs=0.05)
    assert parts["prefect_server_start"] == 5.0 and parts["flow_run_start"] == pytest.approx(2.8)
    assert detail["prefect_server"] == "started by Prefect's client" and detail["prefect_server_launches"] == 1
    row = {"scenario": NOTHING_PENDING, "rungs": [], "wall_seconds": 12.0, "method_seconds": 0.0,
           "overhead_seconds": 12.0, "gates_seconds": 0.0, "within_target": True, "prefect_database_existed": False,
           "load_before": 0.5, "load_average_1m": 0.6, "command": "unlearnops run --json", "ladder": "default ladder",
           "cpu_count": 2, "omp_threads": "1", "epochs": 15, **detail}
    table = markdown([row])
    assert "| nothing pending | — | 12.0 | 0.0 | **12.0** |" in table and "(database created)" in table


def test_temporary_server_is_wanted_only_when_prefect_would_start_its_own(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "prefect", raising=False)
    for key in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH", "PREFECT_SERVER_EPHEMERAL_ENABLED",
                "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    assert servers.temporary_prefect_wanted(tmp_path)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert not servers.temporary_prefect_wanted(tmp_path)
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "false")
    assert not servers.temporary_prefect_wanted(tmp_path)
    monkeypatch.delenv("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE")
    (tmp_path / "pyproject.toml").write_text("[tool.prefect]\napi.url = 'http://elsewhere/api'\n")
    assert not servers.temporary_prefect_wanted(tmp_path)
    (tmp_path / "pyproject.toml").unlink()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "profiles.toml").write_text("")
    assert not servers.temporary_prefect_wanted(tmp_path)


def test_temporary_server_answers_and_keeps_prefects_timeout_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    server = servers.TemporaryPrefectServer()
    server.start()
    try:
        with pytest.raises(RuntimeError, match=f"^{servers.PREFECT_START_FAILED}"):
            server.wait_ready(0)
    finally:
        server.stop()
    assert server.process is None
    server = servers.TemporaryPrefectServer()
    server.start()
    ran = []
    try:
        started = time.monotonic()
        server.wait_ready(240, meanwhile=[lambda: ran.append(1)])
        assert servers.answers(f"{server.api_url}/health") and ran == [1]
        assert time.monotonic() - started < 240
    finally:
        server.stop()
    assert not servers.answers(f"{server.api_url}/health", timeout=1)



def test_heartbeats_are_off_under_the_commands_own_server_unless_the_user_set_a_frequency():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    from unlearnops.cli import _prefect_settings_for_own_server as own_server

    default, url = get_current_settings().flows.heartbeat_frequency, "http://127.0.0.1:4999/api"
    with own_server(url):
        assert get_current_settings().flows.heartbeat_frequency is None and get_current_settings().api.url == url
    assert get_current_settings().flows.heartbeat_frequency == default
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 45}), own_server(url):
        assert get_current_settings().flows.heartbeat_frequency == 45
