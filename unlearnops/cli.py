"""The ``unlearnops`` command line. Every command takes ``--workspace`` (or ``UNLEARNOPS_WORKSPACE``);
commands that report take ``--json`` for scripts (one JSON document on stdout, nothing else there)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import ExitStack, contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from unlearnops.workspace import DEFAULT_WORKSPACE, Workspace

app = typer.Typer(help="Production machine unlearning: deletion requests in, certified models out.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
request_app = typer.Typer(help="Submit and inspect deletion requests.", no_args_is_help=True)
plugins_app = typer.Typer(help="Inspect plugins and start a new one.", no_args_is_help=True)
app.add_typer(request_app, name="request")
app.add_typer(plugins_app, name="plugins")
certificate_app = typer.Typer(help="Check certificates of registered versions.", no_args_is_help=True)
app.add_typer(certificate_app, name="certificate")
keys_app = typer.Typer(help="The workspace's keys (the secret ones never leave the key directory).",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")
references_app = typer.Typer(help="The pool of reference models the retrain-equivalence gate compares with.",
                             no_args_is_help=True)
app.add_typer(references_app, name="references")

err = Console(stderr=True)
WorkspaceOption = typer.Option(None, "--workspace", "-w", help="Workspace directory (env UNLEARNOPS_WORKSPACE; "
                               f"default: the nearest workspace from the current directory upward, else "
                               f"./{DEFAULT_WORKSPACE}).")
JsonOption = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else there.")


@app.callback()
def _configure_logging() -> None:
    """Libraries log through the root logger at WARNING and above, on stderr; a root handler installed
    here first also stops a library's own ``logging.basicConfig`` from echoing every INFO record."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)


class ExitCode:
    OK, REFUSED, ERROR = 0, 1, 2
    #: ``run``: the batch ended without a certified version; its requests stay open.
    UNCERTIFIED = 3


@contextmanager
def stdout_to_stderr(enabled: bool):
    """While ``enabled``, send everything written to stdout — by Python code (``sys.stdout``) and by
    subprocesses or C code (file descriptor 1) — to stderr, so ``--json`` leaves exactly one JSON document
    on stdout."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = ExitCode.ERROR, as_json: bool = False) -> None:
    if as_json:
        emit_json({"error": message})
    else:
        err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def prefect_startup_seconds() -> float:
    """The start-up budget of Prefect's temporary server: its environment variable (the workspace sets it
    from ``[locations] prefect_startup_seconds``), else Prefect's default of 20 s."""
    from unlearnops.workspace import PREFECT_STARTUP_ENV

    return float(os.environ.get(PREFECT_STARTUP_ENV, "20"))


@contextmanager
def orchestration_errors(as_json: bool):
    """Prefect's temporary server that did not start, or a workspace lock held too long: one line (or one
    JSON document) and exit 2 instead of a traceback. Put it outside :func:`stdout_to_stderr`."""
    from unlearnops.durable import WorkspaceBusy
    from unlearnops.servers import PREFECT_START_FAILED
    from unlearnops.workspace import PREFECT_STARTUP_ENV

    try:
        yield
    except WorkspaceBusy as exc:
        fail(f"workspace busy: {exc}", ExitCode.ERROR, as_json)
    except RuntimeError as exc:
        if PREFECT_START_FAILED not in str(exc):
            raise
        fail(f"Prefect's temporary server did not start within {prefect_startup_seconds():g} s; "
             "the flow did not start and no request was touched. Raise [locations] prefect_startup_seconds "
             f"(or {PREFECT_STARTUP_ENV}), set PREFECT_API_URL to a running server, or use --no-prefect",
             ExitCode.ERROR, as_json)


def _json_failure(exc: Exception, as_json: bool) -> None:
    """Under ``--json`` an unexpected error is still one JSON document on stdout (exit 2; the traceback goes
    to stderr); without it the exception propagates as before."""
    if not as_json:
        raise exc
    import traceback

    traceback.print_exception(exc, file=sys.stderr)
    fail(f"{type(exc).__name__}: {exc}", ExitCode.ERROR, as_json=True)


def _workspace(path: Optional[Path], must_exist: bool = True, as_json: bool = False) -> Workspace:
    """The workspace at ``path``, else from ``UNLEARNOPS_WORKSPACE``, else the nearest one from the current
    directory upward, else ``./workspace``; a missing or misconfigured one is exit 2 (JSON with ``as_json``)."""
    from unlearnops.workspace import ConfigError

    ws = Workspace(path)
    if must_exist and not ws.exists():
        fail(f"no workspace at {ws.root}: create one with `unlearnops init {ws.root}`", as_json=as_json)
    try:
        ws.activate()
    except ConfigError as exc:
        fail(str(exc), as_json=as_json)
    return ws


def out_console() -> Console:
    """The stdout console; off a terminal (scripts, logs) wide enough that tables never cut ids."""
    return Console() if sys.stdout.isatty() else Console(width=100_000)


def _parse_options(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as TOML when they parse (numbers, booleans, lists), else text."""
    import tomlkit

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--option expects key=value, got {item!r}")
        try:
            options[key.strip()] = tomlkit.parse(f"v = {value}").unwrap()["v"]
        except Exception:
            options[key.strip()] = value
    return options


@app.command()
def init(
    directory: Optional[Path] = typer.Argument(None, help="Workspace directory (default: --workspace, else ./workspace)."),
    workspace: Optional[Path] = WorkspaceOption,
    model_factory: Optional[str] = typer.Option(None, help="Import path 'module:callable' of your untrained model."),
    train_function: Optional[str] = typer.Option(None, help="Import path of your training function."),
    adapter: Optional[str] = typer.Option(None, help="Dataset adapter: image_folder, tabular, arrays, mnist_5k, ..."),
    option: list[str] = typer.Option([], "--option", help="Adapter option key=value (data.options); repeatable."),
    python_path: list[str] = typer.Option([], "--python-path", help="Directory for your modules, relative to the "
                                          "workspace (e.g. '.'); repeatable."),
    model_name: Optional[str] = typer.Option(None, help="Registered model name in MLflow."),
    limit: Optional[int] = typer.Option(None, min=100, help="Keep only the first N samples (quick trials)."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Training epochs written to params.yaml."),
    as_json: bool = JsonOption,
) -> None:
    """Create a workspace: check your model, training function and data, then git + DVC, settings
    (unlearnops.toml, read first when it is already there), signing keys and dataset version 1."""
    from unlearnops import api
    from unlearnops.workspace import ConfigError

    if directory is not None and workspace is not None and directory.resolve() != workspace.resolve():
        fail("give the workspace either as DIRECTORY or as --workspace, not both", as_json=as_json)
    # init never looks upward: it creates ./workspace, not a nested copy of an enclosing one
    ws = Workspace(directory or workspace or os.environ.get("UNLEARNOPS_WORKSPACE") or DEFAULT_WORKSPACE)
    payload: dict[str, Any] = {"workspace": str(ws.root)}
    try:
        with stdout_to_stderr(as_json):
            api.init(ws, model_factory=model_factory, train_function=train_function, adapter=adapter,
                     options=_parse_options(option) if option else None, python_path=python_path or None,
                     model_name=model_name, epochs=epochs, limit=limit)
    except ConfigError as exc:
        fail(str(exc), ExitCode.ERROR, as_json)
    from unlearnops import data

    version = data.current_version(ws)
    payload["dataset"] = version.to_dict()
    if as_json:
        emit_json(payload)
    else:
        err.print(f"workspace {ws.root}: dataset {version.n_samples} samples at {version.git_rev[:10]}")


@app.command()
def status(workspace: Optional[Path] = WorkspaceOption, as_json: bool = JsonOption,
           overdue: bool = typer.Option(False, "--overdue", help="Exit 1 when an open request is past its due "
                                        "date (for monitoring).")) -> None:
    """Model versions with aliases, certificate status and lineage; the dataset version; requests by state
    and the days left on open ones. With --overdue, exit 1 when any open request is past due."""
    from unlearnops import api

    ws = _workspace(workspace, as_json=as_json)
    with stdout_to_stderr(as_json):
        report = api.status(ws)
    if as_json:
        emit_json(report)
        raise typer.Exit(ExitCode.REFUSED if overdue and report["overdue"] else ExitCode.OK)
    _print_status(report)
    raise typer.Exit(ExitCode.REFUSED if overdue and report["overdue"] else ExitCode.OK)


def _days_left(days: Optional[int]) -> str:
    if days is None:
        return ""
    return f"{days} days left" if days >= 0 else f"overdue by {-days} days"


def _print_status(report: dict) -> None:
    console = out_console()
    console.print(f"workspace {report['workspace']} — model {report['model_name']} ({report['tracking_uri']})")
    dataset = report["dataset"]
    console.print(f"dataset: {dataset['n_samples']} samples at {dataset['git_rev'][:10]} (dvc {dataset['dvc_md5']})")
    table = Table("version", "aliases", "certificate", "parent", "method", "dataset rev", "tainted")
    for v in report["versions"]:
        table.add_row(v["version"], ", ".join(v["aliases"]), v["certificate_status"], v["parent_version"],
                      v["method"], v["dataset_rev"][:10], "yes" if v["tainted"] else "")
    console.print(table)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(report["requests"].items())) or "none"
    console.print(f"requests: {counts}")
    for r in report["open_requests"]:
        console.print(f"  open {r['id']}: {r['state']}, {_days_left(r['days_left'])}")
    if report["overdue"]:
        console.print(f"[red]overdue: {', '.join(report['overdue'])}[/red]")
    pipeline = report["dvc_pipeline"]
    console.print(f"dvc status: {'clean' if pipeline['clean'] else '; '.join(pipeline['changes'])} — "
                  f"{pipeline['explanation']}")


@app.command()
def train(
    weights: Optional[Path] = typer.Option(None, help="Import this trained state dict instead of training."),
    from_model: Optional[str] = typer.Option(None, help="Import an MLflow model URI instead of training "
                                             "(models:/name/1, models:/name@alias, runs:/...)."),
    source_tracking_uri: Optional[str] = typer.Option(None, help="Tracking URI to read --from-model from "
                                                      "(default: the workspace's)."),
    workspace: Optional[Path] = WorkspaceOption,
    as_json: bool = JsonOption,
) -> None:
    """Establish the base model, registered as version 1 with alias `champion` (once): `dvc repro` with
    your training function, or import an already trained model (--weights / --from-model)."""
    from unlearnops import api
    from unlearnops.workspace import ConfigError

    ws = _workspace(workspace, as_json=as_json)
    started = time.perf_counter()
    try:
        with stdout_to_stderr(as_json):
            if weights is not None or from_model is not None:
                version = api.import_model(ws, weights=weights, model_uri=from_model,
                                           source_tracking_uri=source_tracking_uri)
            else:
                version = api.train(ws)
    except ConfigError as exc:
        fail(str(exc), ExitCode.ERROR, as_json)
    if as_json:
        emit_json({"champion_version": version, "seconds": round(time.perf_counter() - started, 2)})
    else:
        err.print(f"champion: version {version}")


def _split_ids(values: list[str]) -> list[str]:
    return [v for value in values for v in value.split(",") if v.strip()]


@request_app.command("submit")
def request_submit(
    subject: list[str] = typer.Option([], "--subject", help="Subject (owner) id; repeat or comma-separate."),
    samples: list[str] = typer.Option([], "--samples", help="Sample ids; repeat or comma-separate."),
    content_hash: list[str] = typer.Option([], "--hash", help="sha256 of a sample's content."),
    reason: str = typer.Option("erasure", help="Why the data must be forgotten."),
    policy: str = typer.Option("exact", help="exact: only what the request names; expand: also near-duplicates."),
    idempotency_key: Optional[str] = typer.Option(None, help="Resubmitting with the same key is a no-op."),
    workspace: Optional[Path] = WorkspaceOption,
    as_json: bool = JsonOption,
) -> None:
    """Validate and store a deletion request. Unknown or malformed ids are refused; nothing is stored."""
    from unlearnops import api
    from unlearnops.requests import IdempotencyConflict, RequestRejected

    ws = _workspace(workspace, as_json=as_json)
    try:
        receipt = api.submit(ws, subjects=_split_ids(subject), samples=_split_ids(samples),
                             hashes=_split_ids(content_hash), reason=reason, policy=policy,
                             idempotency_key=idempotency_key)
    except (RequestRejected, IdempotencyConflict) as exc:
        fail(f"request rejected: {exc}", ExitCode.REFUSED, as_json)
    if as_json:
        emit_json(receipt)
    else:
        err.print(f"{'stored' if receipt['created'] else 'already stored'}: {receipt['id']} ({receipt['state']})")


@request_app.command("list")
def request_list(workspace: Optional[Path] = WorkspaceOption, as_json: bool = JsonOption) -> None:
    """List deletion requests: state, due date and days left, dataset revision, model version, why."""
    from unlearnops import api

    ws = _workspace(workspace, as_json=as_json)
    with stdout_to_stderr(as_json):
        stored = api.list_requests(ws)
    if as_json:
        emit_json(stored)
        return
    table = Table("id", "state", "received", "due", "targets", "dataset rev", "model version", "error / reason")
    for s in stored:
        r = s["request"]
        targets = (f"{len(r['subject_ids'])} subjects, {len(r['sample_ids'])} samples, "
                   f"{len(r['content_sha256'])} hashes")
        why = s["error"] or s["rejection_reason"] or "; ".join(s["reasons"]) or (
            f"already deleted by {s['resolved_by']}" if s["resolved_by"] else "")
        table.add_row(s["id"], s["state"], s["created_at"], _days_left(s["days_left"]) or (s["due_at"] or ""),
                      targets, (s["dataset_rev"] or "")[:10], s["model_version"] or "", why[:60])
    out_console().print(table)


# -- intake channels and request inspection (issue 8) ---------------------------------------------------


@request_app.command("show")
def request_show(request_id: str, workspace: Optional[Path] = WorkspaceOption, as_json: bool = JsonOption) -> None:
    """Show one deletion request: its targets, state, dataset revision, model version, error."""
    from unlearnops import api

    ws = _workspace(workspace, as_json=as_json)
    try:
        view = api.show_request(ws, request_id)
    except KeyError:
        fail(f"no request {request_id!r}", ExitCode.REFUSED, as_json)
    if as_json:
        emit_json(view)
    else:
        out_console().print_json(json.dumps(view))


@request_app.command("receipt")
def request_receipt(request_id: str, workspace: Optional[Path] = WorkspaceOption, as_json: bool = JsonOption) -> None:
    """A signed receipt for a forgotten request (dataset revision without its samples, the model version and
    certificate sha256 that forgot them, what purge cleaned; subjects as keyed hashes). Exit 1 while open."""
    from unlearnops import api
    from unlearnops.obligations import ReceiptRefused

    ws = _workspace(workspace, as_json=as_json)
    try:
        receipt = api.request_receipt(ws, request_id)
    except ReceiptRefused as exc:
        fail(str(exc), ExitCode.REFUSED, as_json)
    if as_json:
        emit_json(receipt)
        return
    console = out_console()
    for line in receipt["statement"]:
        console.print(line)
    console.print(f"subjects (HMAC-SHA256): {', '.join(receipt['subjects_hmac_sha256']) or 'none'}")
    console.print(f"signed ed25519 by {receipt['signature']['public_key']}: {receipt['signature']['value']}")


@request_app.command("reject")
def request_reject(request_id: str,
                   reason: str = typer.Option(..., help="Why the request is refused (1-500 characters)."),
                   wait: float = typer.Option(30.0, min=0, help="Seconds to wait for a run holding the workspace."),
                   workspace: Optional[Path] = WorkspaceOption, as_json: bool = JsonOption) -> None:
    """Reject a waiting request (received, located or failed, not in an unfinished batch) with a reason;
    it will not be processed. Exit 1 if unknown, processed, or in an unfinished batch."""
    from unlearnops.durable import WorkspaceBusy
    from unlearnops.requests import TransitionRefused
    from unlearnops import api

    ws = _workspace(workspace, as_json=as_json)
    try:
        stored = api.reject(ws, request_id, reason, wait=wait)
    except KeyError:
        fail(f"no request {request_id!r}", ExitCode.REFUSED, as_json)
    except TransitionRefused as exc:
        fail(str(exc), ExitCode.REFUSED, as_json)
    except WorkspaceBusy as exc:
        fail(str(exc), ExitCode.ERROR, as_json)
    if as_json:
        emit_json(stored.model_dump(mode="json"))
    else:
        err.print(f"{stored.id}: rejected ({stored.rejection_reason})")


@request_app.command("import")
def request_import(directory: Path = typer.Argument(..., help="Drop directory of *.json / *.csv request files."),
                   workspace: Optional[Path] = WorkspaceOption, as_json: bool = JsonOption) -> None:
    """Take in a drop directory: each file is stored whole and moved to done/, or refused whole and moved
    to rejected/ with a reason file. Exit 1 if any file was rejected."""
    from unlearnops import api
    from unlearnops.requests import RequestRejected

    ws = _workspace(workspace, as_json=as_json)
    if not directory.is_dir():
        fail(f"no directory {directory}")
    try:
        results = api.import_requests(ws, directory)
    except RequestRejected as exc:
        fail(str(exc), ExitCode.ERROR, as_json)
    if as_json:
        emit_json(results)
    else:
        for r in results:
            detail = ", ".join(x["id"] for x in r["receipts"]) if r["status"] == "done" else r["reason"]
            err.print(f"{r['file']}: {r['status']} ({detail})")
    if any(r["status"] != "done" for r in results):
        raise typer.Exit(ExitCode.REFUSED)


@app.command("serve-intake")
def serve_intake(host: str = typer.Option("127.0.0.1", help="Address to listen on."),
                 port: int = typer.Option(8765, min=1, max=65535),
                 workspace: Optional[Path] = WorkspaceOption) -> None:
    """Serve the HTTP intake (POST /requests, GET /requests/ID) with bearer-token authentication; the token
    is UNLEARNOPS_INTAKE_TOKEN or the file .unlearnops/keys/intake.token (created on first start)."""
    import uvicorn

    from unlearnops.service import TOKEN_ENV, TOKEN_FILE, create_app, load_or_create_token

    ws = _workspace(workspace)
    token = load_or_create_token(ws)
    source = TOKEN_ENV if os.environ.get(TOKEN_ENV) else ws.keys_dir / TOKEN_FILE
    err.print(f"intake on http://{host}:{port}/requests; bearer token from {source}")
    uvicorn.run(create_app(ws, token), host=host, port=port, log_level="warning")


@app.command()
def schedule(cron: Optional[str] = typer.Option(None, help='Cron schedule, e.g. "0 2 * * *".'),
             interval: Optional[float] = typer.Option(None, min=1, help="Or: seconds between runs."),
             port: Optional[int] = typer.Option(None, help="Port of the local Prefect server (default: free)."),
             work_pool: Optional[str] = typer.Option(
                 None, help="Register a deployment of this work pool (its workers run the flow) and exit; "
                            "needs PREFECT_API_URL. Without --cron/--interval runs start on demand."),
             workspace: Optional[Path] = WorkspaceOption,
             as_json: bool = JsonOption) -> None:
    """Run the deletion flow on a schedule until interrupted: every run batches all pending requests, one
    run at a time. Uses PREFECT_API_URL, or starts a local Prefect server (sqlite in the workspace). With
    --work-pool, register the scheduled deployment for that pool's workers instead of serving it here."""
    from unlearnops import schedule as scheduling
    from unlearnops import servers

    if cron is not None and interval is not None or (cron is None and interval is None and not work_pool):
        fail("give exactly one of --cron and --interval (or neither, with --work-pool)", as_json=as_json)
    ws = _workspace(workspace, as_json=as_json)
    if work_pool:
        if not os.environ.get("PREFECT_API_URL"):
            fail("--work-pool needs PREFECT_API_URL: the Prefect server the pool's workers poll", as_json=as_json)
        try:
            with stdout_to_stderr(as_json):
                registered = scheduling.deploy(ws, work_pool, cron=cron, interval=interval)
        except ValueError as exc:
            fail(str(exc), as_json=as_json)
        if as_json:
            emit_json(registered)
        else:
            err.print(f"deployment {registered['deployment']} ({registered['deployment_id']}) on pool {work_pool}")
        return
    if os.environ.get("PREFECT_API_URL"):
        scheduling.serve(ws, cron=cron, interval=interval)
        return

    with ExitStack() as stack:
        try:
            api_url, = stack.enter_context(servers.running(servers.prefect_server(ws.prefect_home, port)))
        except RuntimeError as exc:  # the local Prefect server did not start: one line, exit 2
            fail(f"cannot start the local Prefect server: {exc}", ExitCode.ERROR, as_json)
        os.environ["PREFECT_API_URL"] = api_url  # before Prefect is imported by serve()
        err.print(f"Prefect server {api_url}; serving deletion runs ({cron or f'every {interval:g} s'})")
        scheduling.serve(ws, cron=cron, interval=interval)


def _parse_overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--config expects key=value, got {item!r}")
        overrides[key.strip()] = value.strip()
    return overrides


@app.command()
def run(
    method: Optional[str] = typer.Option(
        None, help="Use only this method (see `unlearnops plugins list`); default: the workspace's ladder."
    ),
    config: list[str] = typer.Option([], "--config", help="Method config override key=value; repeatable."),
    device: Optional[str] = typer.Option(None, help="torch device; default: CUDA when usable, else CPU."),
    wait: float = typer.Option(0.0, min=0, help="Seconds to wait for a run that holds the workspace."),
    prefect: bool = typer.Option(True, "--prefect/--no-prefect",
                                 help="Run as a Prefect flow run, or the same steps in this process."),
    workspace: Optional[Path] = WorkspaceOption,
    as_json: bool = JsonOption,
) -> None:
    """Run the deletion flow once over all pending requests (a Prefect flow run). An unfinished batch left
    by a crash is resumed first; a run that finds another run holding the workspace exits at once (0).
    Exit 3 when the batch ended without a certified version (its requests stay open; the JSON lists every
    open request and why)."""
    from unlearnops import api
    from unlearnops.plugin_manager import PluginError

    _freeze_heap_at_exit()
    ws = _workspace(workspace, as_json=as_json)
    overrides = _parse_overrides(config)
    try:  # a bad method or config is refused before anything is touched; a failing batch's requests are
        # marked failed (retryable) with the reason
        with orchestration_errors(as_json), stdout_to_stderr(as_json), _step_lines():
            with temporary_prefect(prefect, ws, method, overrides):
                result = api.run(ws, method=method, config=overrides, device=device, prefect=prefect, wait=wait)
    except PluginError as exc:
        fail(str(exc), ExitCode.ERROR, as_json)
    except typer.Exit:
        raise
    except Exception as exc:  # a failing batch (its requests are marked failed, retryable)
        _json_failure(exc, as_json)
    if as_json:
        emit_json(result or {"result": "no pending deletion requests"})
    elif result is None:
        err.print("no pending deletion requests")
    elif "skipped" in result:
        err.print(f"skipped: {result['skipped']}")
    else:
        print_summary(result)
        for r in result.get("requests_open", []):
            err.print(f"open {r['id']}: {r['state']}" + (f" ({'; '.join(r['reasons'])[:200]})" if r["reasons"] else ""))
    if result and result.get("certificate_status", "certified") != "certified":
        raise typer.Exit(ExitCode.UNCERTIFIED)


_heap_freeze_registered = False


def _freeze_heap_at_exit() -> None:
    """At exit, after the exit handlers registered later (Prefect's log and event workers flushing, its
    temporary server stopping): collect the garbage there is, then freeze the heap, so the interpreter's
    teardown does not run its garbage collections over everything a batch loaded (torch, Prefect, MLflow,
    GX: 1-3 s on 2 cores). Objects still alive then are torn down as before, only cycles among them are not
    searched (Python does not promise ``__del__`` for objects alive at exit)."""
    global _heap_freeze_registered
    if _heap_freeze_registered:
        return
    import atexit
    import gc

    def freeze() -> None:
        gc.collect()
        gc.freeze()

    atexit.register(freeze)
    _heap_freeze_registered = True


#: Modules a batch imports anyway, imported while Prefect's temporary server boots in its own process (each
#: only while the server is not up yet, so none of them delays the flow by more than its own import).
#: MLflow's SQL store is the workspace's own registry (0.6-1 s). Great Expectations and matplotlib are not among
#: them: the command's side process (:mod:`unlearnops.side_process`), started once the server is up so that it
#: does not slow the server's boot, imports them on the core the server no longer needs.
IMPORT_AHEAD = ("torch", "mlflow", "mlflow.store.tracking.sqlalchemy_store", "scipy.stats", "onnx", "dvc.api",
                "prefect", "unlearnops.pipelines.deletion")


def _import_ahead(module: str) -> None:
    import importlib

    importlib.import_module(module)


@contextmanager
def temporary_prefect(prefect: bool, ws: Workspace, method: Optional[str], overrides: dict[str, Any]):
    """One Prefect server per command: when Prefect would start its temporary server for the flow
    (:func:`unlearnops.servers.temporary_prefect_wanted`), start the same server first, so it boots while
    this process validates the ladder and imports what the batch needs; the flow then reaches it through
    ``PREFECT_API_URL`` (this process only, removed after) and the server stops at exit, after Prefect's
    workers flushed their logs and events to it, as Prefect's own temporary server does. A bad method or
    config is refused before waiting for the server (stopped at once then); a server that does not answer
    within the start-up budget is Prefect's own error (see :func:`orchestration_errors`). With a batch
    waiting, a side process for the data gate and the report starts once the server answers
    (:mod:`unlearnops.side_process`)."""
    from unlearnops import servers, side_process

    if not prefect or not servers.temporary_prefect_wanted():
        yield
        return
    from unlearnops.flow.locate import batch_waiting
    from unlearnops.flow.unlearn import validated_ladder

    server = servers.TemporaryPrefectServer()
    server.start()
    with ExitStack() as side:
        # Set before Prefect is imported (ahead, below), which reads its settings once, at import.
        os.environ["PREFECT_API_URL"] = server.api_url
        side.callback(os.environ.pop, "PREFECT_API_URL", None)
        try:
            validated_ladder(ws, None, method, overrides or None)
            # With no batch to run, the batch's stack is not imported ahead: it would only hold up the server's
            # boot on the other core (a request submitted meanwhile is still run, its imports then done in turn).
            waiting = batch_waiting(ws, method)
            ahead = IMPORT_AHEAD if waiting else ()
            server.wait_ready(prefect_startup_seconds(), meanwhile=[lambda m=m: _import_ahead(m) for m in ahead])
            if waiting:
                side.enter_context(side_process.started())
        except BaseException:
            server.stop()
            raise
        os.environ["PREFECT_API_URL"] = server.api_url  # a server restarted on another port has another
        side.enter_context(_prefect_settings_for_own_server(server.api_url))
        yield


@contextmanager
def _prefect_settings_for_own_server(api_url: str):
    """Prefect's settings while the flow reports to this command's temporary server: its API URL, and
    flow-run heartbeats off unless the user configured a frequency (that server lives and dies with the
    process, so no automation can watch for missed beats; joining the heartbeat thread at the flow's end
    costs about half a second)."""
    from prefect.settings import (PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings,
                                  temporary_settings)

    updates = {PREFECT_API_URL: api_url}
    if "heartbeat_frequency" not in get_current_settings().flows.model_fields_set:  # environment, profile, toml
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    with temporary_settings(updates=updates):
        yield


@contextmanager
def _step_lines():
    """One status line per finished step on stderr (stdout, and so ``--json``, is untouched)."""
    from rich.markup import escape

    from unlearnops.flow.run import step_decision, step_listener

    with step_listener(lambda batch, step: err.print(f"[green]✓[/green] {escape(step_decision(batch, step))}",
                                                     soft_wrap=True)):
        yield


def _plugin_row(entry) -> dict[str, Any]:
    obj = entry.obj
    row: dict[str, Any] = {"kind": entry.kind, "name": entry.name, "version": entry.version,
                           "source": entry.source, "plugin": entry.plugin}
    if entry.kind == "method":
        row["capabilities"] = {
            "needs_retain": obj.needs_retain,
            "needs_labels": getattr(obj, "needs_labels", True),
            "model_families": list(getattr(obj, "model_families", ("Module",))),
            "supports_gpu": obj.supports_gpu,
        }
        row["config"] = obj.Config().model_dump(mode="json")
    elif entry.kind == "gate":
        row["description"] = obj.description
    elif entry.kind == "adapter":
        row["description"] = obj.description
        row["options"] = list(obj.Options.model_fields)
    elif entry.kind == "locator":
        row["locator_kind"] = obj.kind
        row["request_field"] = getattr(obj, "request_field", None)
        if obj.kind == "near-duplicate":
            row["default_min_score"] = obj.default_min_score
    else:
        row["suffix"] = obj.suffix
    return row


@plugins_app.command("list")
def plugins_list(as_json: bool = JsonOption) -> None:
    """List registered methods, gates, dataset adapters, locators and exporters with their source and version, and every
    plugin that failed to load or register (with the reason)."""
    from unlearnops import api

    plugins = api.plugins()
    rows = [_plugin_row(e) for e in plugins["entries"]]
    if as_json:
        emit_json({"plugins": rows, "errors": plugins["errors"]})
        return
    table = Table("kind", "name", "version", "source", "details")
    for r in rows:
        details = (r.get("capabilities") or r.get("description") or r.get("request_field")
                   or (f"{r['locator_kind']}, min score {r['default_min_score']}" if "locator_kind" in r else None)
                   or r.get("suffix"))
        if isinstance(details, dict):
            details = ", ".join(f"{k}={v}" for k, v in details.items())
        table.add_row(r["kind"], r["name"], r["version"], r["source"], str(details))
    out_console().print(table)
    for e in plugins["errors"]:
        err.print(f"[yellow]warning:[/yellow] {e}")


@app.command()
def bench(
    out: Path = typer.Option(Path("bench/results/results.json"), help="JSON rows; a .md table and .png beside it."),
    quick: bool = typer.Option(False, help="Fewer epochs, the MLP only, three seeds (under 10 min on 2 cores)."),
    methods: str = typer.Option("slug,retrain", help="Comma-separated methods, each optionally NAME:paper for its reference preset; retrain is always the reference."),
    models: Optional[str] = typer.Option(None, help="Comma-separated: cnn,resnet,mlp [quick: mlp]."),
    scenarios: str = typer.Option("random_1pct,random_10pct,subjects_10,class,memorized_10pct,mislabeled,subjects_distinct",
                                  help="Comma-separated; the worst cases, in a table of their own: memorized_10pct, "
                                       "mislabeled (its parent trained with 4 % of the labels flipped), subjects_distinct."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds [default: 0,1,2]."),
    device: Optional[str] = typer.Option(None, help="torch device; default: CUDA when usable, else CPU."),
    as_json: bool = JsonOption,
) -> None:
    """Benchmark methods against retraining from scratch; writes JSON rows, a markdown table and a plot."""
    from unlearnops.bench.harness import MODELS, SCENARIOS, markdown_table, run, write_outputs
    from unlearnops.plugin_manager import PluginError

    model_list = (models or ("mlp" if quick else "cnn,resnet,mlp")).split(",")
    scenario_list = scenarios.split(",")
    unknown = [m for m in model_list if m not in MODELS] + [s for s in scenario_list if s not in SCENARIOS]
    if unknown:
        fail(f"unknown model or scenario: {', '.join(unknown)}", ExitCode.ERROR, as_json)
    seed_list = [int(s) for s in (seeds or "0,1,2").split(",")]
    started = time.perf_counter()
    with stdout_to_stderr(as_json):
        try:  # an unknown method or preset is refused before any training
            rows = run(model_list, scenario_list, methods.split(","), seed_list, quick=quick, device=device,
                       progress=lambda message: err.print(f"[dim]{time.perf_counter() - started:7.1f}s[/dim] "
                                                          f"{message}"))
        except PluginError as exc:
            fail(str(exc), ExitCode.ERROR, as_json)
        paths = write_outputs(rows, out)
    if as_json:
        emit_json({"rows": rows, "outputs": {k: str(v) for k, v in paths.items()},
                   "seconds": round(time.perf_counter() - started, 1)})
    else:
        sys.stdout.write(markdown_table(rows))
        err.print(f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - started:.0f} s")


@app.command("locate")
def locate_command(
    request_id: Optional[str] = typer.Argument(None, help="A stored request to review."),
    subject: list[str] = typer.Option([], "--subject", help="Subject (owner) id; repeat or comma-separate."),
    samples: list[str] = typer.Option([], "--samples", help="Sample ids; repeat or comma-separate."),
    content_hash: list[str] = typer.Option([], "--hash", help="sha256 of a sample's content."),
    policy: Optional[str] = typer.Option(None, help="exact | expand [default: the stored request's, else exact]."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the candidates; nothing is deleted or stored."),
    workspace: Optional[Path] = WorkspaceOption,
    as_json: bool = JsonOption,
) -> None:
    """Review what a request would delete: every candidate sample with the locator that found it and its
    score, from the workspace's configured locators and the champion model. Changes nothing (deleting is
    `unlearnops run`)."""
    from unlearnops import api
    from unlearnops.intake import parse_request
    from unlearnops.plugin_manager import PluginError
    from unlearnops.requests import RequestRejected, RequestStore

    if not dry_run:
        fail("locate only reviews candidates: pass --dry-run (`unlearnops run` deletes)", ExitCode.ERROR, as_json)
    ws = _workspace(workspace, as_json=as_json)
    ad_hoc = bool(subject or samples or content_hash)
    if bool(request_id) == ad_hoc:
        fail("name a stored request id or --subject/--samples/--hash, not both or neither", ExitCode.REFUSED, as_json)
    try:
        if request_id:
            try:
                request = RequestStore(ws.requests_db).get(request_id).request
            except KeyError as exc:
                fail(str(exc.args[0]), ExitCode.REFUSED, as_json)
            if policy:
                request = parse_request({**request.model_dump(), "policy": policy})
        else:
            request = parse_request({"subject_ids": _split_ids(subject), "sample_ids": _split_ids(samples),
                                     "content_sha256": _split_ids(content_hash), "policy": policy or "exact"})
    except RequestRejected as exc:
        fail(f"request rejected: {exc}", ExitCode.REFUSED, as_json)
    with stdout_to_stderr(as_json):
        try:
            result = api.review_candidates(ws, request, request_id)
        except PluginError as exc:
            fail(str(exc), ExitCode.ERROR, as_json)
    records, by_locator, unmatched = result["candidates"], result["by_locator"], result["unmatched"]
    if as_json:
        emit_json(result)
        return
    table = Table("sample_id", "locator", "score", "resembles", "found by", title=f"candidates ({request.policy})")
    for r in records:
        table.add_row(r["sample_id"], r["locator"], f"{r['score']:.4f}", r["via"] or "", r["locators"])
    out_console().print(table)
    err.print(f"{result['n_candidates']} candidates ({', '.join(f'{k} {v}' for k, v in by_locator.items())}); "
              "dry run: nothing deleted")
    for name, missing in unmatched.items():
        err.print(f"[yellow]unmatched {name}:[/yellow] {', '.join(missing[:10])}")
    for name, note in result["notes"].items():
        err.print(f"[yellow]{name}:[/yellow] {note}")


@app.command("bench-locate")
def bench_locate(
    out: Path = typer.Option(Path("bench/results/locate.json"), help="JSON results; a .md table beside it."),
    quick: bool = typer.Option(False, help="A tenth of the sizes, 1500 MNIST digits (about a minute)."),
    as_json: bool = JsonOption,
) -> None:
    """Locating benchmarks: 10 000 requests in a 1 000 000-row manifest, near-duplicate precision/recall on
    planted copies of real MNIST digits, cosine search of 1000 queries over 100 000 embeddings."""
    from unlearnops.bench.locate_bench import markdown, run, write_outputs

    started = time.perf_counter()
    with stdout_to_stderr(as_json):
        results = run(quick, progress=lambda message: err.print(f"[dim]{time.perf_counter() - started:7.1f}s[/dim] "
                                                              f"{message}"))
        paths = write_outputs(results, out)
    if as_json:
        emit_json({**results, "outputs": {k: str(v) for k, v in paths.items()}})
    else:
        sys.stdout.write(markdown(results))
        err.print(f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - started:.0f} s")


@app.command(name="promote")
def promote_command(
    version: Optional[str] = typer.Argument(None, help="Version to promote [default: alias 'candidate']."),
    check: bool = typer.Option(False, "--check", help="Only decide; change nothing."),
    workspace: Optional[Path] = WorkspaceOption,
    as_json: bool = JsonOption,
) -> None:
    """Verify a candidate (certificate, hashes, gates, ONNX parity, lineage, taint) and move `champion` to it.
    Exit 0 promoted (or promotable, with --check), 1 refused with the reasons, 2 error."""
    from unlearnops.pipelines.promote import promote_flow
    from unlearnops.promote import PromotionError

    ws = _workspace(workspace, as_json=as_json)
    try:
        with orchestration_errors(as_json), stdout_to_stderr(as_json):
            decision = promote_flow(str(ws.root), version, check)
    except PromotionError as exc:
        fail(str(exc), ExitCode.ERROR, as_json)
    except typer.Exit:
        raise
    except Exception as exc:
        _json_failure(exc, as_json)
    if as_json:
        emit_json(decision)
    elif decision["promotable"]:
        verb = "promotable" if check else "promoted to champion"
        err.print(f"version {decision['version']}: {verb} ({', '.join(decision['checked'])})")
        if decision["tainted"]:
            err.print(f"tainted (trained on since-deleted data): {', '.join(decision['tainted'])}")
    else:
        err.print(f"[red]version {decision['version']}: refused[/red]")
        for reason in decision["reasons"]:
            err.print(f"  - {reason}")
    raise typer.Exit(ExitCode.OK if decision["promotable"] else ExitCode.REFUSED)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8080, min=1, max=65535),
    poll_seconds: float = typer.Option(5.0, min=0.1, help="How often to look for a new champion."),
    max_batch: int = typer.Option(256, min=1, help="Largest batch /predict accepts."),
    no_auth: bool = typer.Option(False, "--no-auth",
                                 help="Serve without a bearer token (loopback demos only: refused on other hosts)."),
    workspace: Optional[Path] = WorkspaceOption,
) -> None:
    """Serve the verified champion over HTTP with ONNX Runtime (/predict, /health, /model). /predict and
    /model need `Authorization: Bearer <token>`: UNLEARNOPS_SERVE_TOKEN or the file serve.token in the key
    directory (created 0600 on first start); /health is open."""
    import uvicorn

    from unlearnops.deploy.serve import SERVE_TOKEN_ENV, SERVE_TOKEN_FILE, create_app
    from unlearnops.service import load_or_create_token

    ws = _workspace(workspace)
    if no_auth and host not in ("127.0.0.1", "::1", "localhost"):
        fail(f"--no-auth serves only on a loopback address, not {host}")
    token = None if no_auth else load_or_create_token(ws, SERVE_TOKEN_ENV, SERVE_TOKEN_FILE)
    source = SERVE_TOKEN_ENV if os.environ.get(SERVE_TOKEN_ENV) else ws.keys_dir / SERVE_TOKEN_FILE
    err.print(f"serving on http://{host}:{port}; " + ("no authentication (--no-auth)" if no_auth
                                                      else f"bearer token from {source}"))
    uvicorn.run(create_app(ws, max_batch=max_batch, poll_seconds=poll_seconds, token=token, auth=not no_auth),
                host=host, port=port, log_level="warning")


@app.command()
def explain(
    version: str = typer.Argument(..., help="Registered model version number."),
    out: Optional[Path] = typer.Option(None, help="Write the fast path's candidate and step-search plots here (PNG)."),
    workspace: Optional[Path] = WorkspaceOption,
    as_json: bool = JsonOption,
) -> None:
    """Which rungs of the ladder ran for VERSION, why each stopped, and the fast path's candidates and search."""
    from unlearnops import api
    from unlearnops.explain import ExplainError

    ws = _workspace(workspace, as_json=as_json)
    try:
        with stdout_to_stderr(as_json):
            story = api.explain(ws, version, out)
    except ExplainError as exc:
        fail(str(exc), ExitCode.REFUSED, as_json)
    if as_json:
        emit_json(story)
        return
    console = out_console()
    console.print(f"version {story['version']}: {story['status']} — parent v{story['parent_version']}, "
                  f"{story['samples_removed']} samples removed, method {story['method']}")
    for rung in story["rungs"]:
        console.print(f"rung {rung['rung']} [bold]{rung['method']}[/bold]: {rung['status']} in "
                      f"{rung['seconds']} s — {rung['why']}", highlight=False)
        if rung["already_at_target"]:
            console.print("  the model already met the fast path's target: no layer searched, no weight changed")
        joint = len(rung["groups"]) > 1  # several request groups, each searched on its own
        for search in rung["groups"] if joint else [rung]:
            if joint:
                console.print(f"  request group {search['group']} ({search['n_forget']} samples): " + (
                    "already at the target, nothing searched" if search["already_at_target"] else
                    f"layer {search['chosen_layer'] or 'none'}, target "
                    f"{'reached' if search['target_reached'] else 'not reached'}"), highlight=False)
            if search["candidates"]:
                table = Table("layer", "importance", "alignment", "evaluations", "cached", "step", "target",
                              "utility drop")
                for c in search["candidates"]:
                    mark = " ★" if c["chosen"] else ""
                    table.add_row(c["layer"] + mark, f"{c['importance']:.3g}", f"{c['alignment']:.3f}",
                                  str(c["evaluations"]), str(c["cached_activations"]),
                                  "" if c["step"] is None else f"{c['step']:.4g}", str(c["reached_target"]),
                                  "" if c["utility_drop"] is None else f"{c['utility_drop']:+.4f}")
                console.print(table)
        for plot in rung["plots"]:
            console.print(f"  plot: {plot}")
    for caveat in story["caveats"]:
        console.print(f"caveat: {caveat}", highlight=False)


@keys_app.command("public")
def keys_public(workspace: Optional[Path] = WorkspaceOption, as_json: bool = JsonOption) -> None:
    """Print the public signing key (PEM) that verifies this workspace's certificates and audit records:
    hand it to auditors (`unlearnops certificate verify --public-key FILE CERTIFICATE.json`)."""
    from unlearnops import api
    from unlearnops.certificate import CertificateError

    ws = _workspace(workspace, as_json=as_json)
    try:
        exported = api.public_key(ws)
    except CertificateError as exc:
        fail(f"{exc}: run `unlearnops init` for this workspace", ExitCode.ERROR, as_json)
    if as_json:
        emit_json(exported)
    else:
        sys.stdout.write(exported["pem"])
        err.print(f"fingerprint {exported['fingerprint']} ({exported['path']})")


@certificate_app.command("verify")
def certificate_verify(
    version: str = typer.Argument(..., help="Registered model version number; with --public-key, a certificate "
                                            "JSON file."),
    public_key_file: Optional[Path] = typer.Option(
        None, "--public-key", help="Verify the certificate file VERSION with this PEM public key alone "
                                   "(no workspace, no registry)."),
    workspace: Optional[Path] = WorkspaceOption,
    as_json: bool = JsonOption,
) -> None:
    """Verify a version: certificate signature (workspace key), weights and ONNX hashes, registry tags; or,
    with --public-key, only a certificate file's signature. Exit 0 verified, 1 refused (problems listed), 2 error."""
    if public_key_file is not None:
        from unlearnops import api

        checked = api.verify_certificate_file(version, public_key_file)
        if as_json:
            emit_json(checked)
        elif checked["ok"]:
            err.print(f"{version}: signature verified with key {checked['fingerprint'][:16]}… "
                      f"({checked['schema']}); certificate says {checked['status']}")
        else:
            err.print(f"[red]{version}: NOT verified[/red]: {checked['problem']}")
        raise typer.Exit(ExitCode.OK if checked["ok"] else ExitCode.REFUSED)
    from unlearnops import api

    ws = _workspace(workspace, as_json=as_json)
    with stdout_to_stderr(as_json):
        result = api.verify(ws, version)
    if as_json:
        emit_json(result)
    elif result["ok"]:
        purged = "; weights purged (signed purge record; files not checked)" if result["purged"] else ""
        err.print(f"version {version}: verified ({', '.join(result['checked'])}); certificate says "
                  f"{result['certificate_status']}{purged}")
    else:
        err.print(f"[red]version {version}: NOT verified[/red]")
        for problem in result["problems"]:
            err.print(f"  - {problem}")
    raise typer.Exit(ExitCode.OK if result["ok"] else ExitCode.REFUSED)


@app.command()
def audit(
    version: str = typer.Argument(..., help="Registered (unlearned) model version number."),
    references: int = typer.Option(4, "--references", "-k", min=1, max=8,
                                   help="Reference models trained without the audited samples (1-8); cached."),
    device: Optional[str] = typer.Option(None, help="Torch device for reference training [default: cuda if usable]."),
    wait: float = typer.Option(60.0, min=0, help="Seconds to wait for a run holding the workspace."),
    workspace: Optional[Path] = WorkspaceOption,
    as_json: bool = JsonOption,
) -> None:
    """Audit a version with offline LiRA and RMIA (reference models trained without the forgotten samples),
    parent vs version; the signed record goes to the version's run (audits/), its tags (audit_status) and
    report.html. Exit 0 pass, 1 fail or inconclusive (or the version cannot be audited), 2 error."""
    from unlearnops import api
    from unlearnops.audit import AuditRefused
    from unlearnops.durable import WorkspaceBusy

    ws = _workspace(workspace, as_json=as_json)
    try:
        with stdout_to_stderr(as_json):
            record = api.audit(ws, version, references=references, device=device, wait=wait)
    except AuditRefused as exc:
        fail(f"audit refused: {exc}", ExitCode.REFUSED, as_json)
    except WorkspaceBusy as exc:
        fail(str(exc), ExitCode.ERROR, as_json)
    if as_json:
        emit_json(record)
    else:
        table = Table("attack", "model", "AUC", "AUC CI", "TPR@0.1%FPR", "TPR@1%FPR", "verdict",
                      title=f"audit of version {version} (parent {record['parent_version']})")
        for attack, result in record["attacks"].items():
            for tag in ("parent", "candidate"):
                m = result[tag]
                verdict = result["status"] if tag == "candidate" else ("power" if result["power"] else "no power")
                table.add_row(attack, tag, f"{m['auc']:.3f}", f"[{m['auc_ci'][0]:.3f}, {m['auc_ci'][1]:.3f}]",
                              f"{m['tpr_at_0.1pct_fpr']:.3f}", f"{m['tpr_at_1pct_fpr']:.3f}", verdict)
        Console(stderr=True).print(table)
        refs = record["references"]
        err.print(f"{record['status']}: {record['summary']} ({refs['k']} reference models: {refs['reused']} "
                  f"reused, {refs['trained']} trained; {record['seconds']['total']} s)")
    raise typer.Exit(ExitCode.OK if record["status"] == "pass" else ExitCode.REFUSED)


@app.command()
def purge(
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed; remove nothing."),
    wait: float = typer.Option(60.0, min=0, help="Seconds to wait for a run holding the workspace."),
    workspace: Optional[Path] = WorkspaceOption,
    as_json: bool = JsonOption,
) -> None:
    """After a successor is promoted, remove the deleted samples' bytes: old dataset versions and derived
    outputs in the DVC cache, run cache and remote, derived workspace files, and the weights of versions
    outside the champion's lineage (certificates and metadata stay; versions tagged purged). Exit 0 done,
    1 refused (no successor promoted, unfinished batch, data in git history), 2 error."""
    from unlearnops.data import DataError
    from unlearnops.durable import WorkspaceBusy
    from unlearnops import api
    from unlearnops.purge import PurgeRefused

    ws = _workspace(workspace, as_json=as_json)
    try:
        with stdout_to_stderr(as_json):
            result = api.purge(ws, dry_run=dry_run, wait=wait)
    except PurgeRefused as exc:
        fail(f"purge refused: {exc}", ExitCode.REFUSED, as_json)
    except (WorkspaceBusy, DataError) as exc:
        fail(str(exc), ExitCode.ERROR, as_json)
    if as_json:
        emit_json(result)
    else:
        verb = "would remove" if dry_run else "removed"
        for store, total in result["would_remove" if dry_run else "removed"].items():
            err.print(f"{store}: {verb} {total['count']} ({total['bytes']} bytes)")
        if not result["items"]:
            err.print("nothing to purge")
        err.print(f"champion v{result['champion']}; requests purged: {len(result['requests'])}, waiting for a "
                  f"promotion: {len(result['waiting_requests'])}; weights of versions "
                  f"{result['model_versions'] or '-'}")
        for path in result["git_history"]:
            err.print(f"[red]git history holds tracked data:[/red] {path} (purge does not rewrite history)")
    raise typer.Exit(ExitCode.OK if result["complete"] else ExitCode.REFUSED)


@plugins_app.command("new")
def plugins_new(
    name: str = typer.Argument(..., help="Method name, e.g. 'my-method' (letters, digits, '-', '_')."),
    directory: Optional[Path] = typer.Option(None, "--dir", help="Where to write the package [./unlearnops-NAME]."),
) -> None:
    """Write a ready plugin package: pyproject with the entry point, the method module, a conformance test."""
    from unlearnops import api

    try:
        written = api.new_plugin(name, directory)
    except (ValueError, FileExistsError) as exc:
        fail(str(exc), ExitCode.REFUSED)
    err.print(f"plugin package {written}: pip install -e {written} && pytest {written}")


def print_summary(summary: dict) -> None:
    table = Table("metric", "before", "after", title=f"deletion run {summary['run_id']}")
    for label, key in (("forget accuracy", "forget_accuracy"), ("held-out accuracy", "holdout_accuracy"),
                       ("test accuracy", "test_accuracy"), ("MIA AUC (forget vs held-out)", "mia_auc")):
        before, after = summary.get(f"{key}_before"), summary.get(f"{key}_after")
        table.add_row(label, "-" if before is None else f"{before:.4f}", "-" if after is None else f"{after:.4f}")
    console = out_console()
    console.print(table)
    console.print(f"requests: {', '.join(summary['requests'])}; samples removed: {summary['samples_removed']} "
                  f"({summary['forget_samples_trained']} were training samples); located by "
                  + ", ".join(f"{k} {v}" for k, v in (summary.get("located_by") or {}).items()))
    console.print(f"rungs tried: {'; '.join(summary['rungs'])}")
    console.print(f"method {summary['method']} on {summary['device']}; changed: {summary['changed_parameters']}")
    console.print(f"gates: {summary['gates']} → [bold]{summary['certificate_status']}[/bold]")
    for caveat in summary.get("caveats") or []:
        console.print(f"caveat: {caveat}")
    console.print(f"registered version {summary['registered_version']} (parent {summary['parent_version']}); "
                  f"dataset {summary['dataset_rev_before'][:10]} → {(summary['dataset_rev_after'] or '')[:10]}")
    console.print(f"ONNX max |diff| vs torch: {summary['onnx_max_abs_diff']:.2e} on {summary['onnx_providers']}")
    console.print("step seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["step_seconds"].items()))
    for error in summary.get("hook_errors") or []:
        err.print(f"[yellow]warning:[/yellow] {error}")


@app.command()
def demo(
    workspace: Optional[Path] = WorkspaceOption,
    subjects: int = typer.Option(30, min=1, help="How many subjects ask to be forgotten."),
    limit: Optional[int] = typer.Option(None, min=100, help="Use only the first N samples (quick trials)."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Base-model training epochs."),
    planted_copies: bool = typer.Option(False, help="Data with a near-duplicate of every sample of the first 10 "
                                        "subjects under other ids; the request uses policy expand."),
    as_json: bool = JsonOption,
) -> None:
    """The whole story: workspace, base model, a deletion request for a few subjects, the flow, a summary."""
    from unlearnops.demo import run_demo

    ws = Workspace(workspace)
    with orchestration_errors(as_json), stdout_to_stderr(as_json):
        summary = run_demo(ws, subjects=subjects, limit=limit, epochs=epochs, progress=not as_json,
                           planted_copies=planted_copies)
    if as_json:
        emit_json(summary)
    else:
        print_summary(summary)


@references_app.command("train")
def references_train(
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Valid references wanted (1-8) [default: gates.references]."),
    device: Optional[str] = typer.Option(None, help="Torch device for training [default: cuda if usable]."),
    wait: float = typer.Option(60.0, min=0, help="Seconds to wait for a run holding the workspace."),
    workspace: Optional[Path] = WorkspaceOption,
    as_json: bool = JsonOption,
) -> None:
    """Top the reference pool up to K valid models: delete stale ones (trained on deleted data), train the
    missing ones on the current training split. Exit 0 done, 1 refused (bad K), 2 error."""
    from unlearnops import api
    from unlearnops.audit import ReferencePoolRefused
    from unlearnops.durable import WorkspaceBusy

    ws = _workspace(workspace, as_json=as_json)
    try:
        with stdout_to_stderr(as_json):
            result = api.references_train(ws, k=k, device=device, wait=wait)
    except ReferencePoolRefused as exc:
        fail(f"references train refused: {exc}", ExitCode.REFUSED, as_json)
    except WorkspaceBusy as exc:
        fail(str(exc), ExitCode.ERROR, as_json)
    if as_json:
        emit_json(result)
        return
    pool = result["status"]
    err.print(f"reference pool: {pool['valid']}/{result['k']} valid ({result['reused']} reused, {result['trained']} "
              f"trained in {result['training_seconds']} s, {result['pruned_stale']} stale deleted)")


@references_app.command("status")
def references_status(
    k: Optional[int] = typer.Option(None, "--k", "-k", help="Pool size to report against (1-8) [default: gates.references]."),
    workspace: Optional[Path] = WorkspaceOption,
    as_json: bool = JsonOption,
) -> None:
    """Valid / stale / missing reference models, per model and per part, and the seconds spent training
    them. Exit 0, 1 refused (bad K), 2 error."""
    from unlearnops import api
    from unlearnops.audit import ReferencePoolRefused

    ws = _workspace(workspace, as_json=as_json)
    try:
        with stdout_to_stderr(as_json):
            pool = api.references_status(ws, k=k)
    except ReferencePoolRefused as exc:
        fail(f"references status refused: {exc}", ExitCode.REFUSED, as_json)
    if as_json:
        emit_json(pool)
        return
    table = Table("index", "status", "parts", "samples", "seconds",
                  title=f"reference pool ({pool['valid']}/{pool['k']} valid, {pool['stale']} stale, "
                        f"{pool['missing']} missing; {pool['parts']} parts)")
    for m in pool["models"]:
        table.add_row(str(m["index"]), m["status"], ",".join(map(str, m.get("parts") or [])),
                      str(m.get("n_train", "")), str(m.get("seconds", "")))
    out_console().print(table)
    short = [p["part"] for p in pool["by_part"] if p["valid_out_references"] < 2]
    err.print(f"{pool['seconds_spent']} s spent on the valid references; parts with fewer than 2 valid out "
              f"references: {short or 'none'}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
