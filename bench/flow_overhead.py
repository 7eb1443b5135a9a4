"""The flow's overhead as the CLI pays it: ``unlearnops run --json`` as a fresh process per batch, wall clock
from spawn to exit, minus the method's own compute (every rung's ``unlearn`` call).

    python -m unlearnops.bench.flow_overhead [--epochs 15] [--scenarios subjects_10,class] [--method NAME]
        [--workspace DIR] [--out bench/results/flow-overhead.json]

The workspace is the ladder bench's (:mod:`unlearnops.bench.ladder`: the demo's 5000 digits with 1 % of the
training labels flipped, base CNN trained by ``dvc repro``), built once in-process; each scenario's request
is submitted in-process too, then ``unlearnops run --json`` runs from the workspace directory in the
environment the bench was started with (no Prefect settings: the embedded server, as a user gets it).

Overhead = wall − method compute, where method compute is the sum over the rungs tried of the method's own
call (``method_seconds`` of each rung record); gates, data loading, export, registration, Prefect and the
process itself are overhead. The breakdown comes from a probe loaded into the CLI process through a
``sitecustomize`` on ``PYTHONPATH`` (the real console script runs unchanged; the probe only wraps a few
functions to record monotonic timestamps and writes them at exit): process start, CLI imports and
argument parsing, plugin loading, the import of Prefect with the flow, the Prefect server's start-up, the flow
engine's start, each step (inside its Prefect task) and the tasks' own cost, the flow's end (artifacts,
final state), the JSON output and the teardown (the temporary server's stop, interpreter exit).

This module imports only the standard library at its top: the probe imports it in the measured process.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: Env var naming the JSON file the probe writes (set only for the measured process; removed there at once).
PROBE_ENV = "UNLEARNOPS_FLOW_PROBE"
#: Env var holding the measured process's PYTHONPATH without the probe's directory (restored there at once,
#: so the Prefect server and every other child runs in the user's environment).
PYTHONPATH_ENV = "UNLEARNOPS_FLOW_PROBE_PYTHONPATH"
#: The issue's aim: flow overhead per batch on an idle 2-core machine.
TARGET_SECONDS = 15.0
DEFAULT_SCENARIOS = ("subjects_10", "class")
SITECUSTOMIZE = f"""import os
if os.environ.get({PROBE_ENV!r}):
    from unlearnops.bench.flow_overhead import install_probe
    install_probe()
"""


# -- the probe (runs inside the measured ``unlearnops run`` process) ---------------------------------------


class _PostImport:
    """A meta path finder that calls ``hooks[name](module)`` right after module ``name`` is executed (and
    marks the import's start and end)."""

    def __init__(self, hooks, mark):
        self.hooks, self.mark, self.busy = hooks, mark, set()

    def find_spec(self, name, path=None, target=None):
        if name not in self.hooks or name in self.busy:
            return None
        import importlib.util

        self.busy.add(name)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy.discard(name)
        if spec is None or spec.loader is None:
            return spec
        loader, hook, mark = spec.loader, self.hooks[name], self.mark
        exec_module = loader.exec_module

        def timed_exec(module):
            mark(f"import:{name}:start")
            exec_module(module)
            mark(f"import:{name}:end")
            hook(module)

        loader.exec_module = timed_exec  # this module's own loader instance: the spec stays the real one
        return spec


def install_probe() -> None:
    """Record monotonic timestamps of the CLI's phases and write them to ``$UNLEARNOPS_FLOW_PROBE`` at exit."""
    import functools

    out = os.environ.pop(PROBE_ENV)
    original = os.environ.pop(PYTHONPATH_ENV, "")
    if original:
        os.environ["PYTHONPATH"] = original
    else:
        os.environ.pop("PYTHONPATH", None)
    marks: list[tuple[str, float]] = []

    def mark(label: str) -> None:
        marks.append((label, time.monotonic()))

    mark("interpreter")

    def wrap(owner, attr: str, label: str | None = None, before=None) -> None:
        function = getattr(owner, attr)
        label = label or attr

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if before:
                before(*args, **kwargs)
            mark(f"{label}:enter")
            try:
                return function(*args, **kwargs)
            finally:
                mark(f"{label}:exit")

        setattr(owner, attr, wrapper)

    def api_hook(module):
        wrap(module, "run", "api.run")

    def unlearn_hook(module):
        wrap(module, "validated_ladder")

    def run_hook(module):
        wrap(module, "process_pending")
        wrap(module, "open_or_resume")
        original_step = module.run_step

        @functools.wraps(original_step)
        def run_step(ws, batch, step):
            mark(f"step:{step}:enter")
            try:
                return original_step(ws, batch, step)
            finally:
                mark(f"step:{step}:exit")

        module.run_step = run_step
        module._listeners.append(lambda batch, step: mark(f"notify:{step}"))

    def server_hook(module):
        server = module.SubprocessASGIServer
        wrap(server, "start", "prefect_server.start",
             before=lambda self, *a, **k: mark("prefect_server.launch" if not self.running else "prefect_server.reuse"))
        wrap(server, "stop", "prefect_server.stop")

    def servers_hook(module):  # the server the command starts ahead of the flow (unlearnops.cli.temporary_prefect)
        server = module.TemporaryPrefectServer
        wrap(server, "start", "temporary_prefect.launch")
        wrap(server, "wait_ready", "temporary_prefect.wait")
        wrap(server, "stop", "prefect_server.stop")

    def cli_hook(module):
        if hasattr(module, "_import_ahead"):
            wrap(module, "_import_ahead", "import_ahead")

    def onnx_hook(module):
        wrap(module, "export_onnx")
        wrap(module, "inference_session")

    hooks = {"unlearnops.api": api_hook, "unlearnops.flow.unlearn": unlearn_hook, "unlearnops.flow.run": run_hook,
             "prefect.server.api.server": server_hook, "unlearnops.export": onnx_hook,
             "unlearnops.servers": servers_hook, "unlearnops.cli": cli_hook,
             "unlearnops.pipelines.deletion": lambda m: None, "prefect": lambda m: None,
             "mlflow": lambda m: None}
    sys.meta_path.insert(0, _PostImport(hooks, mark))

    def write() -> None:  # registered first, so it runs last among the atexit handlers (after Prefect's stop)
        mark("atexit")
        Path(out).write_text(json.dumps({"pid": os.getpid(), "marks": marks}))

    atexit.register(write)


# -- the bench (the parent process) -----------------------------------------------------------------------


def _spans(marks: list[tuple[str, float]], label: str) -> list[tuple[float, float]]:
    """Every ``label:enter`` … ``label:exit`` (or ``:start`` … ``:end``) pair, in order."""
    spans, opened = [], []
    for name, t in marks:
        if name in (f"{label}:enter", f"{label}:start"):
            opened.append(t)
        elif name in (f"{label}:exit", f"{label}:end") and opened:
            spans.append((opened.pop(), t))
    return sorted(spans)


def _first(marks, name: str) -> float | None:
    return next((t for n, t in marks if n == name), None)


def _total(spans) -> float:
    return sum(b - a for a, b in spans)


def _union_within(spans, start: float, end: float, outside=()) -> float:
    """Seconds covered by the (possibly nested) spans inside ``[start, end]`` and not inside any span of
    ``outside``."""
    covered, reached = 0.0, start
    for a, b in sorted(spans):
        a, b = max(a, reached), min(b, end)
        if b > a:
            covered += b - a - sum(max(0.0, min(b, y) - max(a, x)) for x, y in outside)
            reached = b
    return covered


def breakdown(marks: list[tuple[str, float]], spawned: float, exited: float, batch: dict[str, Any]) -> dict[str, Any]:
    """Seconds per phase of one CLI run from the probe's marks (monotonic, comparable across processes) and
    the batch record (``step_seconds``, rung records). The phases add up to the wall time."""
    interpreter, atexit_at = _first(marks, "interpreter"), _first(marks, "atexit")
    run_in, run_out = _spans(marks, "api.run")[0]
    ladder_out = next(b for a, b in _spans(marks, "validated_ladder") if a >= run_in)  # api.run's check
    pending_in, pending_out = _spans(marks, "process_pending")[0]
    # The server: Prefect's own temporary server, started by its client when the flow begins
    # (SubprocessASGIServer.start), or the one `unlearnops run` starts ahead (TemporaryPrefectServer).
    own_start = _spans(marks, "prefect_server.start")
    ahead_launch, ahead_wait = _spans(marks, "temporary_prefect.launch"), _spans(marks, "temporary_prefect.wait")
    imported_ahead = _total(_spans(marks, "import_ahead"))
    stops = _spans(marks, "prefect_server.stop")
    before_run = run_in - interpreter
    server_wait = _total(own_start) + _total(ahead_launch) + _total(ahead_wait) - imported_ahead
    steps = {"locate": _total(_spans(marks, "open_or_resume"))}
    for name in ("dataset_version", "unlearn", "export", "register", "finalize"):
        steps[name] = _total(_spans(marks, f"step:{name}"))
    method = sum(float(r.get("method_seconds", 0.0)) for r in batch["rungs"])
    gates = float(batch["step_seconds"].get("gates", 0.0))
    # Prefect is imported by the flow's module, or earlier by the CLI: counted as Prefect's import, not as
    # the phase it fell in, unless it was imported ahead while the server booted (counted there).
    prefect_spans = _spans(marks, "import:unlearnops.pipelines.deletion") + _spans(marks, "import:prefect")
    prefect_import_in_cli = _union_within(prefect_spans, interpreter, run_in, outside=_spans(marks, "import_ahead"))
    prefect_import_in_run = _union_within(prefect_spans, run_in, pending_in)
    prefect_import = prefect_import_in_cli + prefect_import_in_run
    ladder_check_in_cli = sum(b - a for a, b in _spans(marks, "validated_ladder") if b <= run_in)
    parts = {
        "python_start": interpreter - spawned,
        "cli_imports_and_parsing": (before_run - _total(ahead_launch) - _total(ahead_wait) - ladder_check_in_cli
                                    - prefect_import_in_cli),
        "plugins_and_ladder_check": ladder_check_in_cli + ladder_out - run_in,
        "imports_ahead": imported_ahead,
        "prefect_and_flow_import": prefect_import,
        "prefect_server_start": server_wait,
        "flow_run_start": pending_in - ladder_out - prefect_import_in_run - _total(own_start),
        "locate": steps["locate"],
        "dataset_version": steps["dataset_version"],
        "unlearn_method": method,
        "unlearn_gates": gates,
        "unlearn_rest": steps["unlearn"] - method - gates,
        "export": steps["export"],
        "register": steps["register"],
        "finalize": steps["finalize"],
        "prefect_tasks": (pending_out - pending_in) - sum(steps.values()),
        "flow_run_end": run_out - pending_out,
        "exit_handlers": (atexit_at - run_out) - _total(stops),
        "prefect_server_stop": _total(stops),
        "interpreter_exit": exited - atexit_at,
    }
    boot = [b - a for (a, _), (_, b) in zip(ahead_launch, ahead_wait)] or [b - a for a, b in own_start[:1]]
    return {"parts": {k: round(v, 2) for k, v in parts.items()},
            "prefect_server": "started ahead by the CLI" if ahead_launch else "started by Prefect's client",
            "prefect_server_boot_seconds": round(boot[0], 2) if boot else None,
            "prefect_server_launches": sum(1 for n, _ in marks if n in ("prefect_server.launch",
                                                                         "temporary_prefect.launch:enter")),
            "onnx_exports": len(_spans(marks, "export_onnx")),
            "onnx_sessions": len(_spans(marks, "inference_session"))}


def cli_command(method: str | None) -> list[str]:
    """The measured command: this environment's ``unlearnops`` console script."""
    return [str(Path(sys.executable).parent / "unlearnops"), "run", "--json", *(["--method", method] if method else [])]


def time_cli_run(workspace: Path, env: dict[str, str], method: str | None, probe_dir: Path,
                 label: str) -> dict[str, Any]:
    """Run ``unlearnops run --json`` in ``workspace`` as a fresh process; its wall time, JSON and probe marks."""
    probe_dir.mkdir(parents=True, exist_ok=True)
    (probe_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marks_file, log = probe_dir / f"{label}.marks.json", probe_dir / f"{label}.stderr.log"
    marks_file.unlink(missing_ok=True)
    child_env = {**env, PROBE_ENV: str(marks_file), PYTHONPATH_ENV: env.get("PYTHONPATH", ""),
                 "PYTHONPATH": os.pathsep.join(p for p in (str(probe_dir), env.get("PYTHONPATH")) if p)}
    with open(log, "w") as err:
        spawned = time.monotonic()
        done = subprocess.run(cli_command(method), cwd=workspace, env=child_env, stdout=subprocess.PIPE,
                              stderr=err, text=True)
        exited = time.monotonic()
    if done.returncode not in (0, 3):
        raise RuntimeError(f"unlearnops run exited {done.returncode}; see {log}")
    return {"spawned": spawned, "exited": exited, "exit_code": done.returncode, "result": json.loads(done.stdout),
            "marks": json.loads(marks_file.read_text())["marks"], "stderr_log": str(log)}


def measure(workspace: Path, epochs: int = 15, scenarios=DEFAULT_SCENARIOS, method: str | None = None,
            env: dict[str, str] | None = None, progress=print) -> list[dict[str, Any]]:
    """Build (or reuse) the ladder bench's workspace; then one ``unlearnops run --json`` with nothing pending
    (the workspace's first Prefect run creates Prefect's database: that cost is this row's, not a batch's)
    and one CLI batch per scenario; one row each."""
    from unlearnops import api
    from unlearnops.bench.ladder import _mislabeled_arrays, _scenario_request
    import numpy as np

    env = dict(os.environ if env is None else env)
    arrays, flipped = _mislabeled_arrays()
    workspace = Path(workspace).resolve()
    ws = api.init(workspace, epochs=epochs, arrays=arrays)
    started = time.perf_counter()
    api.train(ws)
    progress(f"base model ready in {time.perf_counter() - started:.0f} s")
    rng = np.random.default_rng(0)
    rows = [cli_row(ws, NOTHING_PENDING, env, method, epochs)]
    progress(json.dumps(_short(rows[-1])))
    for scenario in scenarios:
        request = _scenario_request(ws, scenario, rng, flipped)
        api.submit(ws, reason=f"bench flow overhead: {scenario}", **request)
        rows.append(cli_row(ws, scenario, env, method, epochs))
        progress(json.dumps(_short(rows[-1])))
    return rows


#: The row of the run with no pending request.
NOTHING_PENDING = "nothing pending"


def _short(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("scenario", "wall_seconds", "method_seconds", "overhead_seconds", "load_before",
                                "load_average_1m")}


def cli_row(ws, scenario: str, env: dict[str, str], method: str | None, epochs: int) -> dict[str, Any]:
    """Time one ``unlearnops run --json`` in ``ws`` (its pending requests are one batch) and return its row."""
    from unlearnops.bench.harness import conditions

    database_existed = (ws.prefect_home / "prefect.db").exists()
    load_before = os.getloadavg()[0]
    run = time_cli_run(ws.root, env, method, ws.state_dir / "bench-flow-overhead", scenario.replace(" ", "-"))
    result = run["result"]
    batch = (json.loads((ws.runs_dir / result["run_id"] / "batch.json").read_text()) if "run_id" in result
             else {"rungs": [], "step_seconds": {}})
    wall = run["exited"] - run["spawned"]
    detail = breakdown(run["marks"], run["spawned"], run["exited"], batch)
    method_seconds = detail["parts"]["unlearn_method"]
    overhead = wall - method_seconds
    return {
        "scenario": scenario,
        "command": " ".join(["unlearnops", *cli_command(method)[1:]]),
        "ladder": "--method " + method if method else "default ladder",
        "rungs": result.get("rungs", []),
        "status": result.get("certificate_status", result.get("result")),
        "n_forget_trained": result.get("forget_samples_trained"),
        "wall_seconds": round(wall, 2),
        "method_seconds": round(method_seconds, 2),
        "method_seconds_by_rung": [[r["method"], r.get("method_seconds")] for r in batch["rungs"]],
        "overhead_seconds": round(overhead, 2),
        "gates_seconds": detail["parts"]["unlearn_gates"],
        "overhead_without_gates_seconds": round(overhead - detail["parts"]["unlearn_gates"], 2),
        "target_seconds": TARGET_SECONDS,
        "within_target": overhead <= TARGET_SECONDS,
        "prefect_database_existed": database_existed,
        "step_seconds": result.get("step_seconds", {}),
        **detail,
        "exit_code": run["exit_code"],
        "epochs": epochs,
        "load_before": round(load_before, 2),
        **conditions(),
        "omp_threads": env.get("OMP_NUM_THREADS", ""),
    }


PART_LABELS = {
    "python_start": "process start (interpreter, site)",
    "cli_imports_and_parsing": "CLI imports, options, workspace",
    "plugins_and_ladder_check": "plugins loaded, ladder validated",
    "imports_ahead": "imports ahead, while the server boots",
    "prefect_and_flow_import": "import of Prefect and the flow",
    "prefect_server_start": "waiting for Prefect's temporary server",
    "flow_run_start": "flow run created and started",
    "locate": "step locate",
    "dataset_version": "step dataset_version",
    "unlearn_method": "unlearn: the method's own compute (not overhead)",
    "unlearn_gates": "unlearn: gates (every rung)",
    "unlearn_rest": "unlearn: data, parent model, weights",
    "export": "step export",
    "register": "step register",
    "finalize": "step finalize",
    "prefect_tasks": "Prefect task runs (around the steps)",
    "flow_run_end": "flow run end (artifacts, final state)",
    "exit_handlers": "JSON output, threads joined, exit handlers",
    "prefect_server_stop": "Prefect server stop",
    "interpreter_exit": "interpreter exit",
}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | rungs | wall s | method compute s | overhead s | of which gates s | ≤ 15 s | Prefect server "
             "| ONNX exports | load before/after |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        server = f"{r['prefect_server_launches']} launch, {r['prefect_server']}" + (
            "" if r["prefect_database_existed"] else " (database created)")
        lines.append(f"| {r['scenario']} | {', '.join(r['rungs']) or '—'} | {r['wall_seconds']:.1f} | "
                     f"{r['method_seconds']:.1f} | **{r['overhead_seconds']:.1f}** | {r['gates_seconds']:.1f} | "
                     f"{'yes' if r['within_target'] else 'no'} | {server} | {r['onnx_exports']} | "
                     f"{r['load_before']:.1f}/{r['load_average_1m']:.1f} |")
    lines += ["", "| phase (seconds) | " + " | ".join(r["scenario"] for r in rows) + " |",
              "|---|" + "---|" * len(rows)]
    for key, label in PART_LABELS.items():
        lines.append(f"| {label} | " + " | ".join(f"{r['parts'][key]:.2f}" for r in rows) + " |")
    lines.append("| **wall (spawn to exit)** | " + " | ".join(f"**{r['wall_seconds']:.2f}**" for r in rows) + " |")
    lines.append("| **overhead (wall − method)** | " + " | ".join(f"**{r['overhead_seconds']:.2f}**" for r in rows)
                 + " |")
    r0 = rows[0] if rows else {}
    lines += ["", f"Command `{r0.get('command')}` ({r0.get('ladder')}) from the workspace directory, a fresh process "
              f"per row; {r0.get('cpu_count')} CPU cores, OMP_NUM_THREADS={r0.get('omp_threads') or 'unset'}, "
              f"{r0.get('epochs')} epochs; load = 1-minute load average before the run / after it."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from unlearnops.bench.cost_growth import write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS),
                        help="ladder bench scenarios, comma-separated (random_1pct, subjects_10, mislabeled, "
                             "memorized_1pct, class)")
    parser.add_argument("--method", default=None, help="run every batch with this method (default: the ladder)")
    parser.add_argument("--workspace", type=Path, default=Path("bench-flow-workspace"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/flow-overhead.json"))
    args = parser.parse_args(argv)
    env = dict(os.environ)  # the user's environment, before the bench activates the workspace in this process
    rows = measure(args.workspace, args.epochs, tuple(args.scenarios.split(",")), args.method, env)
    print(write_results(rows, args.out, markdown))


if __name__ == "__main__":
    main()
