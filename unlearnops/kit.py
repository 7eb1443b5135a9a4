"""The plugin author's kit: ``unlearnops plugins new NAME`` writes a ready plugin package from the templates
in ``unlearnops/templates/plugin`` — a pyproject with the ``unlearnops`` entry point, one module with the
method and its ``register_methods`` hook, a conformance test and a README."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from string import Template

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


def plugin_names(name: str) -> dict[str, str]:
    """Method name -> the names the package uses (distribution, module, class)."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"plugin name {name!r}: use lower-case letters and digits, words joined by '-' or '_'")
    words = re.split(r"[-_]", name)
    return {
        "name": name,
        "dist_name": "unlearnops-" + "-".join(words),
        "module": "unlearnops_" + "_".join(words),
        "class_name": "".join(w.capitalize() for w in words),
    }


def new_plugin(name: str, directory: Path | None = None) -> Path:
    """Write the plugin package for method ``name`` into ``directory`` (default ``./unlearnops-NAME``)."""
    names = plugin_names(name)
    root = Path(directory) if directory else Path(names["dist_name"])
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty")
    templates = resources.files("unlearnops") / "templates" / "plugin"
    files = {
        "pyproject.toml": "pyproject.toml.tmpl",
        f"{names['module']}.py": "module.py.tmpl",
        f"tests/test_{names['module']}.py": "test_module.py.tmpl",
        "README.md": "README.md.tmpl",
    }
    for target, template in files.items():
        path = root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template((templates / template).read_text()).substitute(names))
    return root
