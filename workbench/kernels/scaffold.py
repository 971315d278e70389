"""`wb new kernel NAME`: a kernel folder that compiles at once and its fixture module.

What it writes (templates/kernel/*.tmpl): stages/NAME/kernel.yaml (one stage, how to add
the next), stages/NAME/stage_a_gemm.py (a TMA + WGMMA tile GEMM for sm_90a with probes),
stages/NAME/reference.py, stages/NAME/export_op.py (the stage as the torch op NAME::gemm for
`wb export`) and fixtures/NAME.py (diagnostic GEMM inputs). The templates use
string.Template: $name is NAME, $Name its CamelCase for class names; NAME is checked first,
so what is substituted is always a plain identifier."""

from __future__ import annotations

import keyword
import re
import shutil
from pathlib import Path
from string import Template

from workbench.errors import UserError
from workbench.interrupts import held_signals
from workbench.schemas import short
from workbench.workspace import Workspace

TEMPLATES = Path(__file__).parent / "templates" / "kernel"
MAX_NAME = 32  # its fixtures are NAME-random, NAME-onehot, ...: within kernel.yaml's 40 characters


def check_name(name: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,%d}" % (MAX_NAME - 1), name) or keyword.iskeyword(name):
        raise UserError(
            f"kernel name {short(name, 40)} must be a lowercase Python identifier of at most {MAX_NAME} characters:"
            " a letter, then letters, digits or _ (not a Python keyword)"
        )


def camel_case(name: str) -> str:
    """my_gemm -> MyGemm (class names in the stage module)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_")) or name


def new_kernel(ws: Workspace, name: str) -> list[Path]:
    check_name(name)
    kernel_dir = ws.stages_dir / name
    fixture_file = ws.fixtures_dir / f"{name}.py"
    for path in (kernel_dir, fixture_file):
        if path.exists() or path.is_symlink():
            raise UserError(f"{path} already exists")
    for folder in (ws.stages_dir, ws.fixtures_dir):
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{folder} is not a folder: `wb new kernel` writes into {folder.name}/")
    values = {"name": name, "Name": camel_case(name)}
    files = {
        kernel_dir / "kernel.yaml": "kernel.yaml.tmpl",
        kernel_dir / "stage_a_gemm.py": "stage_a_gemm.py.tmpl",
        kernel_dir / "reference.py": "reference.py.tmpl",
        kernel_dir / "export_op.py": "export_op.py.tmpl",
        fixture_file: "fixture.py.tmpl",
    }
    # Written beside their places, then renamed in, with Ctrl-C and SIGTERM held: an
    # interrupted or failed `wb new kernel` leaves no half kernel (it blocked the name and
    # listed as a kernel whose stage module did not exist).
    staging = ws.stages_dir / f".new-{name}.tmp"
    staged_fixture = ws.fixtures_dir / f".new-{name}.py.tmp"
    try:
        with held_signals():
            try:
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
                ws.fixtures_dir.mkdir(exist_ok=True)
                staged_fixture.unlink(missing_ok=True)  # a leftover, or a link planted there: the link goes, not its target
                for path, template in files.items():
                    target = staged_fixture if path == fixture_file else staging / path.name
                    with open(target, "x", encoding="utf-8") as out:  # created here, never through a link
                        out.write(Template((TEMPLATES / template).read_text()).substitute(values))
                staging.rename(kernel_dir)
                staged_fixture.rename(fixture_file)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                if not fixture_file.exists():
                    shutil.rmtree(kernel_dir, ignore_errors=True)
                staged_fixture.unlink(missing_ok=True)
                raise
    except OSError as exc:
        raise UserError(f"cannot write {exc.filename or kernel_dir}: {exc.strerror or exc}") from None
    return list(files)
