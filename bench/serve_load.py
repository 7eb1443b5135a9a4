"""Load generator for the serving app: starts `unlearnops serve` on 127.0.0.1 as its own process, sends
/predict requests from several client threads at batch sizes 1 and 32, and reports requests/s with p50/p99
latency; then, while client threads keep sending oversized bodies (a declared 75 MB Content-Length, and
chunked bodies without one), it measures ``/health`` latency (p50/p99) and counts how the oversized ones were
answered (413 expected). Usage: ``python -m unlearnops.bench.serve_load --workspace DIR [--seconds 10] [--clients 4]``
(the workspace needs a certified, promoted champion)."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import threading
import time

import httpx
import numpy as np

from unlearnops.servers import free_port


def measure(base: str, batch: int, seconds: float, clients: int, input_shape: list[int],
            headers: dict | None = None) -> dict:
    payload = {"inputs": np.random.default_rng(0).random([batch, *input_shape]).round(3).tolist()}
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client() -> None:
        nonlocal errors
        with httpx.Client(base_url=base, timeout=30, headers=headers) as http:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                ok = http.post("/predict", json=payload).status_code == 200
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    errors += not ok

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"batch": batch, "clients": clients, "requests": len(latencies), "errors": errors,
            "requests_per_s": len(latencies) / wall, "samples_per_s": len(latencies) * batch / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def _chunked():  # no Content-Length: counted as it arrives, refused once over the limit
    for _ in range(1200):
        yield b" " * (64 << 10)


def _attacker(base: str, headers: dict, seconds: float, declared: bool, answers) -> None:
    """One process sending oversized /predict bodies for ``seconds`` (its own GIL: the prober is not slowed)."""
    body = b" " * (75 << 20)  # 75 MB with its Content-Length: refused before a byte is read
    deadline = time.perf_counter() + seconds
    with httpx.Client(base_url=base, timeout=30, headers=headers) as http:
        while time.perf_counter() < deadline:
            try:
                code = str(http.post("/predict", content=body if declared else _chunked()).status_code)
            except httpx.TransportError as exc:  # the server closed the connection after its 413
                code = type(exc).__name__
            answers.append(code)


def health_latency(base: str, seconds: float) -> list[float]:
    """/health latencies (ms) sampled every 10 ms for ``seconds``."""
    health_ms: list[float] = []
    deadline = time.perf_counter() + seconds
    with httpx.Client(base_url=base, timeout=30) as http:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            ok = http.get("/health").status_code == 200
            health_ms.append((time.perf_counter() - started) * 1000 if ok else float("inf"))
            time.sleep(0.01)
    return health_ms


def health_under_oversize(base: str, seconds: float, clients: int, headers: dict) -> dict:
    """/health latency alone, then while ``clients`` processes send oversized /predict bodies (half with a
    declared 75 MB Content-Length, half chunked)."""
    import multiprocessing

    idle = np.array(health_latency(base, seconds / 2))
    with multiprocessing.Manager() as manager:
        answers = manager.list()
        attackers = [multiprocessing.Process(target=_attacker, args=(base, headers, seconds, i % 2 == 0, answers))
                     for i in range(clients)]
        for p in attackers:
            p.start()
        time.sleep(0.5)
        loaded = np.array(health_latency(base, seconds - 1))
        for p in attackers:
            p.join()
        counts: dict[str, int] = {}
        for code in answers:
            counts[code] = counts.get(code, 0) + 1
    return {"oversized_clients": clients, "oversized_answers": counts,
            "health_idle_p50_ms": float(np.percentile(idle, 50)), "health_idle_p99_ms": float(np.percentile(idle, 99)),
            "health_requests": len(loaded), "health_p50_ms": float(np.percentile(loaded, 50)),
            "health_p99_ms": float(np.percentile(loaded, 99))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    port = free_port()
    token = secrets.token_urlsafe(32)
    headers = {"Authorization": f"Bearer {token}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "unlearnops.cli", "serve", "--port", str(port), "--workspace", args.workspace],
        env={**os.environ, "UNLEARNOPS_SERVE_TOKEN": token}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit(f"server did not become healthy: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
        model = httpx.get(base + "/model", headers=headers).json()
        rows = [measure(base, batch, args.seconds, args.clients, model["input_shape"], headers) for batch in (1, 32)]
        oversize = health_under_oversize(base, args.seconds, args.clients, headers)
        print(json.dumps({"version": model["version"], "providers": model["providers"], "rows": rows,
                          "health_under_oversize": oversize}, indent=1))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
