"""The README's own-model walkthrough ("Use it on your own model") runs exactly as written: its marked shell
blocks are extracted from README.md and run by bash (``set -e``) in a temporary directory holding a user's
`my-project/` (the model code and `records.csv` the walkthrough starts from), with the venv's bin on PATH."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path

from tests.test_user_view import user_env

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- walkthrough: own-model"
PROJECT = ROOT / "tests" / "user_projects" / "breast_cancer" / "cancer_project.py"


def walkthrough_blocks(readme: str) -> list[str]:
    """Every ```bash block that directly follows a walkthrough mark, dedented as a user would paste it."""
    pattern = re.compile(r"^[ \t]*" + re.escape(MARK) + r".*?-->\n([ \t]*)```bash\n(.*?)^[ \t]*```", re.M | re.S)
    return [textwrap.dedent(body) for _, body in pattern.findall(readme)]


def test_marks_find_the_init_and_flow_blocks():
    blocks = walkthrough_blocks((ROOT / "README.md").read_text())
    assert len(blocks) == 2
    assert blocks[0].startswith("cd my-project\nunlearnops init . --model-factory mymodel:Net")
    assert blocks[1].split("\n")[0] == "unlearnops train" and "unlearnops promote" in blocks[1]


def test_own_model_walkthrough_runs_as_written(tmp_path):
    from tests.user_projects.breast_cancer.cancer_project import write_data

    project = tmp_path / "my-project"
    project.mkdir()
    (project / "mymodel.py").write_text(PROJECT.read_text() + "\n\nNet = CancerMLP\n")  # the user's Net, train
    write_data(project)  # records.csv: record_id, patient, diagnosis, 30 numeric features
    script = "set -euo pipefail\n" + "\n".join(walkthrough_blocks((ROOT / "README.md").read_text()))
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=user_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    out = result.stdout + result.stderr
    assert "✓ register: model version 2 (parent 1), certificate certified" in out, out[-3000:]
    assert (project / "unlearnops.toml").is_file() and (project / ".unlearnops" / "mlflow.db").is_file()
    status = subprocess.run(["unlearnops", "status", "--json"], cwd=project / "data", env=user_env(),
                            capture_output=True, text=True, timeout=120)  # found from a directory below it
    document = json.loads(status.stdout)
    versions = {str(v["version"]): v for v in document["versions"]}
    assert "champion" in versions["2"]["aliases"], document  # `unlearnops promote` moved it to version 2
