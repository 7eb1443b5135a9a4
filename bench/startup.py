"""Start-up time of the everyday commands (``--help``, ``status``, ``plugins list``, ``request list``,
``certificate verify``): each run as a fresh ``unlearnops`` process on a given workspace, ``repeats`` times,
median wall time reported with the machine's load (1-minute load average before and after) and core count,
since on a shared 2-core machine the load dominates the figure.

``python -m unlearnops.bench.startup --workspace W [--version 1] [--certificate C.json --public-key P.pem]
[--repeats 3] [--out bench/results/startup.json]`` writes the JSON rows and a markdown table beside them (the
file verification row only when a certificate and a public key are given)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: The everyday commands and their arguments (``{version}`` is the registered version to verify).
COMMANDS: dict[str, list[str]] = {
    "--help": ["--help"],
    "status": ["status"],
    "plugins list": ["plugins", "list"],
    "request list": ["request", "list"],
    "certificate verify": ["certificate", "verify", "{version}"],
    "certificate verify --public-key": ["certificate", "verify", "--public-key", "{public_key}", "{certificate}"],
}


def time_command(args: list[str], workspace: Path, repeats: int) -> dict[str, Any]:
    """Median, min and max wall seconds of ``unlearnops ARGS`` run ``repeats`` times in ``workspace``."""
    seconds, codes = [], set()
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "unlearnops.cli", *args], cwd=workspace,
                              capture_output=True, text=True, env={**os.environ, "UNLEARNOPS_WORKSPACE": str(workspace)})
        seconds.append(time.perf_counter() - started)
        codes.add(done.returncode)
    return {"median_s": round(statistics.median(seconds), 3), "min_s": round(min(seconds), 3),
            "max_s": round(max(seconds), 3), "exit_codes": sorted(codes), "repeats": repeats}


def measure(workspace: Path, version: str = "1", repeats: int = 3,
            commands: dict[str, list[str]] | None = None, certificate: Path | None = None,
            public_key: Path | None = None) -> list[dict[str, Any]]:
    """One row per command: its timing, the load average before and after, the core count. A command that
    needs a certificate file is skipped without one."""
    rows = []
    values = {"version": version, "certificate": certificate, "public_key": public_key}
    for name, args in (commands or COMMANDS).items():
        if any(values.get(a.strip("{}"), "") is None for a in args if a.startswith("{")):
            continue
        load_before = os.getloadavg()[0]
        row = time_command([a.format(**values) for a in args], Path(workspace), repeats)
        rows.append({"command": f"unlearnops {name}", **row, "load_before": round(load_before, 2),
                     "load_after": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
                     "omp_threads": os.environ.get("OMP_NUM_THREADS", "")})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| command | median s | min s | max s | exit | load before/after | cpus |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['command']}` | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['max_s']:.2f} | "
                     f"{','.join(map(str, r['exit_codes']))} | {r['load_before']:.1f}/{r['load_after']:.1f} | {r['cpus']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--version", default="1")
    parser.add_argument("--certificate", type=Path, help="A certificate file for the --public-key row.")
    parser.add_argument("--public-key", type=Path, help="The PEM public key that signed --certificate.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/startup.json"))
    args = parser.parse_args(argv)
    rows = measure(args.workspace.resolve(), args.version, args.repeats, certificate=args.certificate,
                   public_key=args.public_key)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
