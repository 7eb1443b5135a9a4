"""Load generator for the serving app: starts `unlearnops serve` on 127.0.0.1 as its own process, sends
/predict requests from several client threads at batch sizes 1 and 32, and reports requests/s with p50/p99
latency. Usage: ``python -m unlearnops.bench.serve_load --workspace DIR [--seconds 10] [--clients 4]``
(the workspace needs a certified, promoted champion)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import numpy as np

from unlearnops.servers import free_port


def measure(base: str, batch: int, seconds: float, clients: int, input_shape: list[int]) -> dict:
    payload = {"inputs": np.random.default_rng(0).random([batch, *input_shape]).round(3).tolist()}
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client() -> None:
        nonlocal errors
        with httpx.Client(base_url=base, timeout=30) as http:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "unlearnops.cli", "serve", "--port", str(port), "--workspace", args.workspace],
        env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
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
        model = httpx.get(base + "/model").json()
        rows = [measure(base, batch, args.seconds, args.clients, model["input_shape"]) for batch in (1, 32)]
        print(json.dumps({"version": model["version"], "providers": model["providers"], "rows": rows}, indent=1))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
