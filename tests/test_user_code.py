"""A user's Python file imported by wb (workbench/user_code.py: fixtures, a kernel's
peers and bench hooks, a stage's export op): whatever its import raises short of Ctrl-C is one
line naming the file, and a failed import leaves no half-made module in sys.modules."""

import subprocess
import sys
from pathlib import Path

import pytest

from workbench.errors import UserError
from workbench.kernels.registry import kernel_module
from workbench.user_code import import_file

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("line, shown", [
    ("import sys\nsys.exit()", "SystemExit"),  # no message: the type alone
    ('raise SystemExit("boom")', "SystemExit: boom"),
    ("raise GeneratorExit", "GeneratorExit"),
    ("class Odd(BaseException): pass\nraise Odd('x')", "Odd: x"),
    ("1 / 0", "ZeroDivisionError: division by zero"),
])
def test_a_file_that_fails_on_import_is_one_line_and_leaves_no_module(tmp_path, line, shown):
    path = tmp_path / "peers.py"
    path.write_text(line + "\n")
    with pytest.raises(UserError) as caught:
        import_file("wb_test_user_code", path, "the kernel's peers module")
    assert str(caught.value) == f"{path}: the kernel's peers module failed to import: {shown}"
    assert "wb_test_user_code" not in sys.modules


def test_a_user_error_of_the_file_passes_as_it_is_and_ctrl_c_stays_ctrl_c(tmp_path):
    """A UserError is the file's own one line (e.g. @fixture's argument checks); Ctrl-C during
    a slow import must stop wb, not read as a broken file."""
    path = tmp_path / "m.py"
    path.write_text("from workbench.errors import UserError\nraise UserError('fixture x: needs names')\n")
    with pytest.raises(UserError, match=r"^fixture x: needs names$"):
        import_file("wb_test_user_code", path, "fixture module")
    path.write_text("raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        import_file("wb_test_user_code", path, "fixture module")
    assert "wb_test_user_code" not in sys.modules


def test_a_kernels_peers_module_that_exits_is_the_same_one_line(tmp_path):
    """kernel_module (peers.py, bench_hooks.py) said only 'PATH: SystemExit: ' for sys.exit()."""
    kernel = tmp_path / "stages" / "k"
    kernel.mkdir(parents=True)
    (kernel / "bench_hooks.py").write_text("import sys\nsys.exit()\n")
    with pytest.raises(UserError) as caught:
        kernel_module(kernel, "bench_hooks")
    assert str(caught.value).endswith("bench_hooks.py: the kernel's bench_hooks module failed to import: SystemExit")
    assert kernel_module(kernel, "peers") is None  # absent: no module, no error


def _python(tmp_path, code: str) -> subprocess.CompletedProcess:
    """``code`` run in a new Python (os._exit would end this test's own process) with
    import_file, UserError and two files at hand: bad (os._exit(0) at import) and threaded
    (another thread calls os._exit(5) while it imports); a run to the end exits 9."""
    (tmp_path / "bad.py").write_text("import os\nos._exit(0)\n")
    (tmp_path / "threaded.py").write_text(
        "import os, threading\nt = threading.Thread(target=os._exit, args=(5,))\nt.start()\nt.join()\n"
    )
    prelude = (
        "import os, sys\nfrom pathlib import Path\nfrom workbench.errors import UserError\n"
        "from workbench.user_code import import_file\n"
        f"bad = Path({str(tmp_path / 'bad.py')!r})\nthreaded = Path({str(tmp_path / 'threaded.py')!r})\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + code + "\nsys.exit(9)\n"], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_os_exit_at_import_is_a_broken_file_not_the_end_of_wb(tmp_path):
    """os._exit(0) in a fixtures module ended wb's own process with exit 0 and nothing said
    (`wb fixtures`, `wb run` planning): a script read success. During the import it is now
    the file's one line, and the module is not left behind."""
    proc = _python(tmp_path, "try:\n    import_file('m', bad, 'fixture module')\nexcept UserError as e:\n"
                             "    print(e)\nprint('m' in sys.modules)")
    assert proc.returncode == 9, proc.stderr[-2000:]
    bad = tmp_path / "bad.py"
    assert proc.stdout.splitlines() == [f"{bad}: fixture module failed to import: it called os._exit(0), which would end wb", "False"]


@pytest.mark.parametrize("code, status", [
    # after the import, os._exit ends the process as asked
    ("try:\n    import_file('m', bad, 'x')\nexcept UserError:\n    pass\nos._exit(3)", 3),
    # another thread's os._exit during an import is not the file's: it ends the process
    ("import_file('m', threaded, 'x')", 5),
])
def test_os_exit_outside_an_import_still_ends_the_process(tmp_path, code, status):
    proc = _python(tmp_path, code)
    assert proc.returncode == status, proc.stderr[-2000:]
