"""The GPU benchmark command (bench/gpu.py): its --tiny run on the CPU, its refusal of a missing CUDA device, its
budget, and — on a machine with CUDA only — the default size on the GPU."""

import contextlib
import io
import json
import math
import time

import pytest
import torch

from unlearnops.bench.gpu import DEFAULT, GPU_METHODS, PHASES, TINY, GpuBench, ResNet18, _Watchdog, forward_flops, main


def _main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpu-bench") / "gpu.json"
    started = time.perf_counter()
    rc, out, err = _main(["--tiny", "--device", "cpu", "--json", "--out", str(path)])
    return {"rc": rc, "rows": json.loads(out), "err": err, "path": path, "seconds": time.perf_counter() - started}


def test_the_network_is_resnet18_size():
    model = ResNet18()
    assert 11.0e6 < sum(p.numel() for p in model.parameters()) < 11.3e6
    assert 0.85e9 < forward_flops(model) < 0.95e9
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert DEFAULT.width == 1 and DEFAULT.variants == 15 and TINY.width < 1


def test_tiny_run_on_cpu_has_a_row_for_every_phase(tiny):
    assert tiny["rc"] == 0, tiny["err"]
    rows = {r["phase"]: r for r in tiny["rows"]}
    assert list(rows) == list(PHASES)
    assert json.loads(tiny["path"].read_text()) == tiny["rows"]
    assert tiny["path"].with_suffix(".md").exists()
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row.get("reason") or row.get("error"))
        assert math.isfinite(row["wall_seconds"]) and row["wall_seconds"] >= 0, name
        assert row["device"] == "cpu" and row["torch_version"] and row["onnxruntime_version"] and row["date"]
    # one progress line per phase on stderr, none on stdout (the JSON parsed)
    assert sum(line.startswith("[gpu bench") for line in tiny["err"].splitlines()) == len(PHASES)
    for scenario in ("random_1pct", "class"):
        retrain = rows[f"{scenario}/retrain"]
        assert retrain["wall_seconds"] > 0 and retrain["avg_gap_to_retrain"] == 0.0
        for method in GPU_METHODS:
            row = rows[f"{scenario}/{method}"]
            assert row["n_forget"] == retrain["n_forget"] > 0
            assert math.isfinite(row["avg_gap_to_retrain"]) and 0 <= row["mia_auc"] <= 1
        slug = rows[f"{scenario}/slug"]
        assert slug["floor_seconds"] > 0 and math.isfinite(slug["floor_ratio"]) and slug["floor_ratio"] > 0
        assert slug["floor_ratio"] == pytest.approx(slug["wall_seconds"] / slug["floor_seconds"])
        assert rows[f"{scenario}/noop"]["changed_parameters"] == 0
        assert rows[f"{scenario}/ft"]["max_seconds"] <= TINY.method_seconds
    # a forgotten digit takes all its variants with it
    assert rows["random_1pct/retrain"]["n_forget"] == rows["random_1pct/retrain"]["n_forget_digits"] * TINY.variants


def test_tiny_run_checks_onnx_parity_on_the_cpu_provider(tiny):
    onnx = next(r for r in tiny["rows"] if r["phase"] == "onnx")
    assert onnx["provider"] == onnx["provider_wanted"] == "CPUExecutionProvider"
    assert onnx["providers_active"] == ["CPUExecutionProvider"] and onnx["cuda_active"] is False
    assert onnx["parity_ok"] and onnx["parity_max_abs_diff"] <= onnx["parity_tolerance"]
    assert onnx["argmax_agreement"] == 1.0
    for batch in (1, 256):
        assert 0 < onnx[f"b{batch}_p50_ms"] <= onnx[f"b{batch}_p99_ms"] and onnx[f"b{batch}_samples_per_s"] > 0
    assert "CPUExecutionProvider" in tiny["path"].with_suffix(".md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here: nothing to refuse")
def test_device_cuda_without_cuda_exits_2_with_one_line(tmp_path):
    rc, out, err = _main(["--device", "cuda", "--out", str(tmp_path / "gpu.json")])
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "CUDA" in err and "Traceback" not in err
    assert not (tmp_path / "gpu.json").exists()


def test_budget_skips_the_rest_and_the_watchdog_aborts_a_phase():
    lines = []
    bench = GpuBench(torch.device("cpu"), TINY, budget_seconds=30, progress=lines.append)
    bench.phase("fits", 1.0, lambda: {"wall_seconds": 0.0})
    bench.phase("too long", 1000.0, lambda: pytest.fail("a phase over the budget must not run"))
    bench.phase("after", 0.1, lambda: pytest.fail("phases after a skip must not run"))
    assert [r["status"] for r in bench.rows] == ["ok", "skipped", "skipped"]
    assert "budget" in bench.rows[1]["reason"] and len(lines) == 3

    bench = GpuBench(torch.device("cpu"), TINY, budget_seconds=30, progress=lines.append)
    with _Watchdog(0.3) as bench.watchdog:
        bench.phase("hangs", None, lambda: time.sleep(5) or {})
        bench.phase("after", None, dict)
    assert [r["status"] for r in bench.rows] == ["aborted", "skipped"]
    assert bench.rows[0]["phase_seconds"] < 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: the GPU rows not run")
@pytest.mark.timeout(700)
def test_default_size_on_cuda(tmp_path):
    started = time.perf_counter()
    rc, out, err = _main(["--device", "cuda", "--json", "--out", str(tmp_path / "gpu.json")])
    assert rc == 0, err
    assert time.perf_counter() - started < 600
    rows = {r["phase"]: r for r in json.loads(out)}
    assert list(rows) == list(PHASES)
    assert all(r["status"] == "ok" for r in rows.values()), [(p, r.get("reason")) for p, r in rows.items()]
    assert rows["train_parent"]["device"] == torch.cuda.get_device_name()
    assert rows["onnx"]["cuda_active"] and rows["onnx"]["parity_ok"]
