"""The side process `unlearnops run` starts for the data gate and the report: same answers as in-process,
errors raised as they would be here, the work done here when the process is gone, the caller's script never
run again."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_manifest
from unlearnops import gates, side_process
from unlearnops.report import report_page
from unlearnops.workspace import GateSettings

SETTINGS = GateSettings(bootstrap=200)


def test_data_gate_and_report_in_the_side_process_match_this_process_and_survive_its_loss(caplog):
    before = tiny_manifest(90)
    removed = before.iloc[:5]
    after = before.iloc[5:].reset_index(drop=True)
    ids, hashes = removed.sample_id.tolist(), removed.content_sha256.tolist()
    here, _ = gates._validated_manifest(before, after, ids, hashes, SETTINGS)
    rng = np.random.default_rng(1)
    scores = {f"{split}_phi_{tag}": rng.normal(size=40) for split in ("forget", "holdout") for tag in ("before", "after")}
    certificate = {"status": "certified", "metrics": {"forget_accuracy_before": 0.9}, "gates": [], "rungs": []}
    page_here = report_page(certificate, scores, {})
    with side_process.started():
        side = side_process._current
        assert side.call(os.getpid) not in (os.getpid(), None)
        with pytest.raises(ZeroDivisionError):  # the work's own errors are raised as they would be here
            side_process.run(divmod, 1, 0)
        elsewhere, validation = gates.data_gate(before, after, ids, hashes, SETTINGS)
        assert elsewhere.model_dump() == here.model_dump() and validation["success"] is True
        page_there = side_process.run(report_page, certificate, scores, {})
        assert page_there.count("data:image/png;base64,") == page_here.count("data:image/png;base64,") == 1
        assert "side process ended" not in caplog.text
        side.process.kill()
        side.process.wait(10)
        leaked = pd.concat([after, removed.iloc[:1]], ignore_index=True)
        bad, _ = gates.data_gate(before, leaked, ids, hashes, SETTINGS)  # validated here instead
        assert bad.status == "fail" and "side process ended" in caplog.text
    assert side_process._current is None and side.process.poll() is not None


def test_the_side_process_never_runs_the_callers_main_module_again(tmp_path):
    runs = tmp_path / "runs.txt"
    script = tmp_path / "unguarded.py"  # a caller's script without `if __name__ == "__main__":`
    script.write_text(
        "import os, pathlib\n"
        f"pathlib.Path({str(runs)!r}).open('a').write('ran\\n')\n"
        "from unlearnops import side_process\n"
        "with side_process.started(preload=()):\n"
        "    assert side_process.run(os.getpid) != os.getpid()\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert runs.read_text() == "ran\n" and "side process ended" not in done.stderr
