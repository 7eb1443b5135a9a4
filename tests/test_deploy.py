"""The production layout in ``deploy/`` cannot drift from the code: the compose file and the Kubernetes
manifests parse; every image is either built from a Dockerfile in ``deploy/docker`` or an external image
pinned to a version; every environment variable a container gets is one that something in that container
reads (unlearnops itself, Prefect's settings, MLflow's variables, boto3, the image's own entrypoint, or the
container's command); the unlearnops containers get the variables that select the servers; and every
``unlearnops`` / ``mlflow server`` command line in them parses with the real CLIs. Nothing here starts
Docker or Kubernetes (neither runs on the development machine)."""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"
BOOTSTRAP = DOCKER / "bootstrap-workspace.sh"

OWN_IMAGE = re.compile(r"^unlearnops/(?P<name>[a-z0-9-]+):(?P<tag>[\w.-]+)$")
UNLEARNOPS_IMAGES = {"app", "worker-gpu"}  # images that run unlearnops code
AWS_SDK = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}  # boto3/botocore standard names
BUILD_ENV = {"PATH", "PIP_NO_CACHE_DIR", "PYTHONUNBUFFERED"}  # read by the shell, pip and Python themselves
# Variables read by the entrypoints of external images (their documented configuration).
EXTERNAL_IMAGE_ENV = {
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGDATA"},
    "minio/minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
}


# -- reading the files --------------------------------------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_documents() -> list[dict]:
    """The objects of every manifest (not the kustomization), each with the file it came from."""
    docs = []
    for path in sorted(set(K8S.glob("*.yaml")) - {K8S / "kustomization.yaml"}):
        docs += [dict(doc, _file=path.name) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def k8s_containers() -> list[tuple[dict, dict]]:
    """(document, container) for every container of every workload."""
    out = []
    for doc in k8s_documents():
        spec = (doc.get("spec") or {}).get("template", {}).get("spec")
        for container in (spec or {}).get("containers", []):
            out.append((doc, container))
    return out


def k8s_env(container: dict) -> dict[str, str | None]:
    """Every variable the container gets: ``env`` entries and the keys of referenced ConfigMaps/Secrets."""
    objects = {(d["kind"], d["metadata"]["name"]): d for d in k8s_documents()}
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(objects[("ConfigMap", source["configMapRef"]["name"])]["data"])
        if "secretRef" in source:
            env.update(objects[("Secret", source["secretRef"]["name"])]["stringData"])
    return env


def command_line(parts) -> str:
    """A command (string or list) as one line; a list's items are joined unquoted so that the script of
    ``sh -c SCRIPT`` is read as words too."""
    return parts if isinstance(parts, str) else " ".join(str(p) for p in parts)


def k8s_command(container: dict) -> str:
    return " ".join(command_line(container.get(key, [])) for key in ("command", "args"))


# -- what the code reads ----------------------------------------------------------------------------------
def unlearnops_literals() -> set[str]:
    """Every ``UNLEARNOPS_*`` string constant in the package source (how the code names what it reads)."""
    names = set()
    for path in (ROOT / "unlearnops").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"UNLEARNOPS_[A-Z_]+", node.value):
                names.add(node.value)
    return names


def script_variables(path: Path) -> tuple[set[str], set[str]]:
    """(all ``$NAME`` references to the environment, those without a default) in a shell script."""
    text = path.read_text()
    assigned = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", text, re.M))
    every = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", text)) - assigned
    with_default = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+):-", text))
    return every, every - with_default


def prefect_settings() -> set[str]:
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names  # the names Prefect's settings accept

    return set(_get_valid_setting_names(Settings))


def mlflow_variables() -> set[str]:
    import mlflow.environment_variables as variables

    return {v.name for v in vars(variables).values() if hasattr(v, "name") and hasattr(v, "get")}


def readers(image: str, command: str) -> set[str]:
    """Names something in a container of ``image`` running ``command`` reads."""
    known = {n for n in re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", command)} | AWS_SDK
    own = OWN_IMAGE.match(image)
    if own:
        known |= prefect_settings() | mlflow_variables() | {"DO_NOT_TRACK", "DVC_NO_ANALYTICS", "GX_ANALYTICS_ENABLED"}
        if own["name"] in UNLEARNOPS_IMAGES:
            known |= unlearnops_literals()
            if "bootstrap-workspace" in command:
                known |= script_variables(BOOTSTRAP)[0]
        return known
    repository = image.split(":")[0]
    if repository.startswith("prefecthq/prefect"):
        return known | prefect_settings() | {"DO_NOT_TRACK"}
    return known | EXTERNAL_IMAGE_ENV.get(repository, set())


def assert_known_env(where: str, image: str, env: dict, command: str) -> None:
    unknown = set(env) - readers(image, command)
    assert not unknown, f"{where} ({image}) sets variables nothing in it reads: {sorted(unknown)}"


# -- command lines ------------------------------------------------------------------------------------------
def parse_unlearnops(args: list[str]) -> None:
    """Parse ``unlearnops ARGS`` with the real CLI (raises click.UsageError on an unknown command/option)."""
    from unlearnops.cli import app

    command = typer.main.get_command(app)  # typer ships its own click: recognise groups by their methods
    name = "unlearnops"
    while hasattr(command, "list_commands"):
        name, args = args[0], args[1:]
        sub = command.get_command(command.context_class(command), name)
        assert sub is not None, f"no command 'unlearnops {name}'"
        command = sub
    command.make_context(name, list(args), resilient_parsing=False)


def parse_mlflow_server(args: list[str]) -> None:
    from mlflow.cli import cli

    cli.commands["server"].make_context("server", list(args))


def check_command(line: str) -> None:
    words = [w for w in shlex.split(line) if w != "exec"]
    for start, word in enumerate(words):
        if word == "unlearnops":
            parse_unlearnops(words[start + 1:])
            return
        if word == "mlflow" and words[start + 1:start + 2] == ["server"]:
            parse_mlflow_server(words[start + 2:])
            return


# -- tests ------------------------------------------------------------------------------------------------
def test_compose_images_are_built_here_or_pinned_and_commands_parse():
    services = compose()["services"]
    built = {}
    for name, service in services.items():
        image = service["image"]
        if "build" in service:
            dockerfile = COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: no {dockerfile}"
            own = OWN_IMAGE.match(image)
            assert own and dockerfile.name == f"{own['name']}.Dockerfile", f"{name}: {image} vs {dockerfile.name}"
            built[image] = dockerfile
    for name, service in services.items():
        image = service["image"]
        if OWN_IMAGE.match(image):
            assert image in built, f"{name}: {image} is built by no service"
        else:
            assert ":" in image and not image.endswith(":latest"), f"{name}: external image {image} not pinned"
        if "command" in service:
            check_command(command_line(service["command"]))
    assert {OWN_IMAGE.match(i)["name"] for i in built} == {p.name.removesuffix(".Dockerfile") for p in DOCKER.glob("*.Dockerfile")}


def test_compose_env_is_what_the_code_reads():
    services = compose()["services"]
    for name, service in services.items():
        env = service.get("environment") or {}
        command = command_line(service.get("command", "")) + " " + command_line(service.get("entrypoint", ""))
        assert_known_env(f"compose service {name}", service["image"], env, command)
        own = OWN_IMAGE.match(service["image"])
        if own and own["name"] in UNLEARNOPS_IMAGES:
            assert_selects_servers(f"compose {name}", env, {m.split(":")[1] for m in service.get("volumes", [])},
                                   set(services))
    bootstrap_env = services["bootstrap"]["environment"]
    assert script_variables(BOOTSTRAP)[1] <= set(bootstrap_env), "the bootstrap job misses a variable it needs"
    worker = services["worker-gpu"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert f"--pool {bootstrap_env['UNLEARNOPS_WORK_POOL']}" in command_line(worker["command"])


def assert_selects_servers(where: str, env: dict, mounts: set[str], services: set[str]) -> None:
    """The variables that put an unlearnops process on the scale path, pointing at services of the layout."""
    from unlearnops import model_registry

    tracking, api = env.get("UNLEARNOPS_TRACKING_URI"), env.get("PREFECT_API_URL")
    assert tracking and model_registry.is_server(tracking), f"{where}: UNLEARNOPS_TRACKING_URI={tracking!r}"
    assert api and re.fullmatch(r"http://[\w.-]+:\d+/api", api), f"{where}: PREFECT_API_URL={api!r}"
    assert {tracking.split("//")[1].split(":")[0], api.split("//")[1].split(":")[0]} <= services, where
    assert env.get("UNLEARNOPS_WORKSPACE") in mounts, f"{where}: the workspace is not mounted"


def test_the_selecting_variables_are_the_ones_the_code_reads(monkeypatch, tmp_path):
    from unlearnops.workspace import Workspace

    monkeypatch.setenv("UNLEARNOPS_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("UNLEARNOPS_WORKSPACE", str(tmp_path))
    ws = Workspace()
    assert ws.root == tmp_path and ws.tracking_uri == "http://mlflow:5000"
    assert "PREFECT_API_URL" in prefect_settings()
    assert {"UNLEARNOPS_TRACKING_URI", "UNLEARNOPS_WORKSPACE", "UNLEARNOPS_INTAKE_TOKEN"} <= unlearnops_literals()


def test_k8s_manifests_parse_and_match_compose_and_the_code():
    docs = k8s_documents()
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc["_file"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "unlearnops", f"{doc['_file']}: {doc['metadata']['name']}"
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    compose_images = {s["image"] for s in compose()["services"].values()}
    containers = k8s_containers()
    assert containers
    for doc, container in containers:
        where = f"{doc['_file']}: {doc['metadata']['name']}/{container['name']}"
        image = container["image"]
        assert image in compose_images, f"{where}: {image} differs from the compose file"
        env = k8s_env(container)
        command = k8s_command(container)
        assert_known_env(where, image, env, command)
        check_command(command)
        own = OWN_IMAGE.match(image)
        if own and own["name"] in UNLEARNOPS_IMAGES:
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert_selects_servers(where, env, mounts, services)
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for probe in ("readinessProbe", "livenessProbe"):
                port = (container.get(probe) or {}).get("httpGet", {}).get("port")
                if port is not None:
                    assert port in {p["containerPort"] for p in container["ports"]}, f"{where}: {probe}"
    (worker,) = [c for d, c in containers if d["metadata"]["name"] == "prefect-worker-gpu"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert OWN_IMAGE.match(worker["image"])["name"] == "worker-gpu"
    (job,) = [c for d, c in containers if d["metadata"]["name"] == "unlearnops-bootstrap"]
    assert script_variables(BOOTSTRAP)[1] <= set(k8s_env(job))


def test_dockerfiles_install_the_pinned_stack_and_copy_what_they_run():
    pins = {"torch": "2.13.0", "mlflow": "3.17.2"}
    for path in DOCKER.glob("*.Dockerfile"):
        text = path.read_text()
        assert re.search(r"^FROM \S+:\S+", text, re.M), f"{path.name}: unpinned base image"
        for package, version in pins.items():
            for found in re.findall(rf"\b{package}==([\w.]+)", text):
                assert found == version, f"{path.name}: {package}=={found}, pyproject pins {version}"
        env_names = set(re.findall(r"(?:^ENV\s+|\\\n\s+)([A-Z][A-Z0-9_]+)=", text, re.M))
        image = f"unlearnops/{path.name.removesuffix('.Dockerfile')}:x"
        assert_known_env(path.name, image, dict.fromkeys(env_names - BUILD_ENV), "")
        for source in re.findall(r"^COPY\s+(\S+)\s", text, re.M):
            assert (ROOT / source).exists(), f"{path.name}: COPY {source} does not exist"
        cmd = re.search(r"^CMD (\[.*\])", text, re.M)
        if cmd:
            check_command(shlex.join(yaml.safe_load(cmd[1])))
    for line in BOOTSTRAP.read_text().splitlines():
        if line.startswith("unlearnops "):
            line = re.sub(r"\$\{[A-Z_]+:-\}", "", line)  # optional words
            check_command(re.sub(r"\"?\$\{?[A-Z_]+(:-[^}]*)?\}?\"?", "x", line))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: kustomize rendering not checked")
def test_kustomize_renders_the_manifests():
    rendered = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d]
    assert kinds.count("Deployment") == 5 and "PersistentVolumeClaim" in kinds and "Job" in kinds


# -- the serving app's HTTP layer (auth, limits, malformed bodies) --------------------------------------------
def _client(app):
    from fastapi.testclient import TestClient

    return TestClient(app, raise_server_exceptions=False)  # no lifespan: the fixture's model stays loaded


def test_serve_needs_a_bearer_token_except_for_health(serving_app):
    SERVE_TOKEN = serving_app.state.token
    http = _client(serving_app)
    sample = [[[[0.5] * 28] * 28]]
    assert http.get("/health").json()["version"] == "7"
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": SERVE_TOKEN},
                    {"Authorization": f"Basic {SERVE_TOKEN}"}):
        assert http.post("/predict", json={"inputs": sample}, headers=headers).status_code == 401, headers
        refused = http.get("/model", headers=headers)
        assert refused.status_code == 401 and "req-" not in refused.text
    for scheme in ("Bearer", "bearer", "BEARER"):  # RFC 7235: case-insensitive
        answer = http.post("/predict", json={"inputs": sample}, headers={"Authorization": f"{scheme} {SERVE_TOKEN}"})
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1
    info = http.get("/model", headers={"Authorization": f"Bearer {SERVE_TOKEN}"}).json()
    assert info["certificate"]["requests"] == ["req-000000000001"] and info["max_batch"] == 8


def test_serve_no_auth_hides_lineage_on_model(tmp_path, serving_app):
    from unlearnops.deploy.serve import create_app
    from unlearnops.workspace import Workspace

    app = create_app(Workspace(tmp_path / "ws"), auth=False)
    app.state.server.current = serving_app.state.server.current
    info = _client(app).get("/model")
    assert info.status_code == 200 and info.json()["certificate"] == {"status": "certified",
                                                                      "issued_at": "2026-01-01T00:00:00Z"}
    assert not (tmp_path / "ws" / ".unlearnops" / "keys").exists()  # --no-auth creates no token


def test_serve_token_file_is_created_0600_in_a_0700_key_dir(tmp_path, monkeypatch):
    from unlearnops.deploy.serve import SERVE_TOKEN_ENV, create_app
    from unlearnops.workspace import Workspace

    monkeypatch.delenv(SERVE_TOKEN_ENV, raising=False)
    monkeypatch.setenv("UNLEARNOPS_KEY_DIR", str(tmp_path / "elsewhere" / "keys"))
    create_app(Workspace(tmp_path / "ws"))
    token_file = tmp_path / "elsewhere" / "keys" / "serve.token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600" and len(token_file.read_text()) >= 32
    assert oct(token_file.parent.stat().st_mode & 0o777) == "0o700"


def test_serve_refuses_malformed_and_oversized_bodies_with_4xx(serving_app):
    SERVE_TOKEN = serving_app.state.token
    http = _client(serving_app)
    auth = {"Authorization": f"Bearer {SERVE_TOKEN}", "Content-Type": "application/json"}
    sample = [[[0.5] * 28] * 28]
    cases = [(b"[" * 100_000, 422), (b'{"inputs": ' + b"[" * 40 + b"]" * 40 + b"}", 422),
             (b'{"inputs": [' + b"9" * 5000 + b"]}", 422), (b'{"inputs": [[[[1e999]]]]}', 422),
             (b'{"inputs": [[[[NaN]]]]}', 422), (b"\xef\xbb\xbf{}", 422), (b"\xff\xfe", 422), (b"", 422),
             (b"[]", 422), (b'{"inputs": []}', 422), (b'{"inputs": {}}', 422), (b'{"inputs": [1], "x": 1}', 422),
             (b'{"inputs": [[[[' + b"1" * 300 + b"]]]]}", 422), (json.dumps({"inputs": [sample] * 9}).encode(), 413),
             (json.dumps({"inputs": [[["a"]]]}).encode(), 422), (json.dumps({"inputs": [[1.0, 2.0]]}).encode(), 422)]
    for body, status in cases:
        answer = http.post("/predict", content=body, headers=auth)
        assert answer.status_code == status and answer.json()["detail"], (body[:40], answer.text[:200])
    limit = serving_app.state.server.body_limit()
    assert limit == 8 * 784 * 32 + 4096
    declared = http.post("/predict", content=b" " * (limit + 1), headers=auth)
    assert declared.status_code == 413 and "Content-Length" in declared.json()["detail"]


def test_ci_workflow_installs_cpu_torch_first_and_the_project_from_the_checkout():
    workflow = yaml.safe_load((DEPLOY / "ci" / "promote.yml").read_text())
    steps = workflow["jobs"]["promote"]["steps"]
    install = next(s["run"] for s in steps if "pip install" in s.get("run", "")).splitlines()
    torch_line = next(i for i, line in enumerate(install) if "torch==" in line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in install[torch_line]
    project_line = next(i for i, line in enumerate(install) if line.strip().endswith("pip install ."))
    assert torch_line < project_line
    assert not any(line.strip().endswith("pip install unlearnops") for line in install)
    pinned = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"torch=={pinned}" in install[torch_line]
