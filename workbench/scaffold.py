"""`wb new kernel NAME`: a kernel folder that compiles at once (kernel.yaml, a real CuTe
DSL stage, a reference) and its fixture module."""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

from workbench.errors import UserError
from workbench.workspace import Workspace

TEMPLATES = Path(__file__).parent / "templates" / "kernel"


def new_kernel(ws: Workspace, name: str) -> list[Path]:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise UserError(f"kernel name {name!r} must be a lowercase Python identifier (letters, digits, _)")
    kernel_dir = ws.stages_dir / name
    if kernel_dir.exists():
        raise UserError(f"{kernel_dir} already exists")
    fixture_file = ws.fixtures_dir / f"{name}.py"
    if fixture_file.exists():
        raise UserError(f"{fixture_file} already exists")
    values = {"name": name, "fixture": f"{name}-random"}
    files = {
        kernel_dir / "kernel.yaml": "kernel.yaml.tmpl",
        kernel_dir / "stage_a_scale.py": "stage_a_scale.py.tmpl",
        kernel_dir / "reference.py": "reference.py.tmpl",
        fixture_file: "fixture.py.tmpl",
    }
    kernel_dir.mkdir(parents=True)
    ws.fixtures_dir.mkdir(exist_ok=True)
    for path, template in files.items():
        path.write_text(Template((TEMPLATES / template).read_text()).substitute(values))
    return list(files)
