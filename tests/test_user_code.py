"""A user's Python file imported by wb (workbench/user_code.py: fixtures, a kernel's
peers and bench hooks, a stage's export op): whatever its import raises short of Ctrl-C is one
line naming the file, and a failed import leaves no half-made module in sys.modules."""

import sys

import pytest

from workbench.errors import UserError
from workbench.kernels.registry import kernel_module
from workbench.user_code import import_file


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
