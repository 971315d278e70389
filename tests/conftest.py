import os
import signal

import pytest

# A suite started in the background by a shell without job control inherits SIGINT ignored,
# and so would every wb it starts; the Ctrl-C tests need it delivered. (A handler, unlike an
# ignored signal, is reset to the default in the children.)
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# wb runs in this process (run_wb below) read the warm workers' idle time once, at import: keep
# idle workers from lingering for wb's default 10 minutes after the tests that started them.
os.environ.setdefault("WB_WORKER_IDLE", "20")


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: real waiting, real processes or cold FMHA compiles; -m \"not slow\" leaves it out (docs/testing.md)")


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_user_state(tmp_path_factory, monkeypatch):
    """Never let a test touch the developer's real caches or workspace settings."""
    home = tmp_path_factory.mktemp("wb-home")
    monkeypatch.setenv("WB_HOME", str(home))
    monkeypatch.delenv("WB_WORKSPACE", raising=False)
    # wb's tables are 160 wide off a terminal unless COLUMNS says otherwise; pytest-xdist's
    # workers set COLUMNS=80, which would cut the columns tests look for.
    monkeypatch.delenv("COLUMNS", raising=False)
    os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")


# ---------------------------------------------------------------- shared helpers for CLI tests
import shutil  # noqa: E402
import stat  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]


def executable(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` and make it executable (a stand-in for a tool on PATH)."""
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def unlistable(monkeypatch, folder: Path) -> None:
    """os.scandir refuses `folder` as it would a folder of mode 000 for a user other than root
    (the tests run as root, which permissions do not stop)."""
    real = os.scandir

    def scandir(path="."):
        if isinstance(path, (str, os.PathLike)) and Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


#: what `wb` run by hand in a test workspace leaves there: never copied into a test's workspace
WORKSPACE_STATE = (".wb", "runs", "MEMORY.md", "MEMORY.json", "__pycache__")


def copy_toy_ws(root: Path, **kwargs) -> Path:
    """tests/data/toy_ws copied to ``root`` without any state a hand-run `wb` left in it (a
    stray .wb/ there once failed 11 tests that expect a workspace without one)."""
    shutil.copytree(DATA / "toy_ws", root, ignore=shutil.ignore_patterns(*WORKSPACE_STATE), **kwargs)
    return root


@pytest.fixture
def toy_ws(tmp_path, monkeypatch):
    """A fresh copy of the plain-PyTorch test workspace (tests/data/toy_ws), as the cwd."""
    root = copy_toy_ws(tmp_path / "ws")
    monkeypatch.chdir(root)
    monkeypatch.setenv("WB_WORKER_IDLE", "20")
    return root


def run_wb_process(*args, cwd=None, env=None, timeout=180, input=None):
    """Run `python -m workbench ARGS` in a new process, as a user would; returns the
    CompletedProcess. For tests of the process boundary itself (exit status, what reaches
    the terminal); the rest use run_wb, which gives the same result in-process."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "workbench", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


# Python's own warning filters, which a fresh `python -m workbench` starts with (pytest's differ).
_PYTHON_WARNING_FILTERS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def run_wb(*args, cwd=None, env=None, timeout=180, input=None):
    """`wb ARGS` called in this process (workbench.cli.main) with the cwd, environment, stdin
    and warning filters a new process would have; returns a CompletedProcess like
    run_wb_process. A new process costs ~0.5 s of CPU (Python and wb's imports) per call, and
    the suite makes a few hundred calls. An exception that escapes main() is a traceback and
    exit status 1, as in a process. `timeout` is not enforced here (wb's own --timeout ends
    hung kernels); WB_TEST_PROCESS=1 runs every call in a new process instead."""
    if os.environ.get("WB_TEST_PROCESS") == "1":
        return run_wb_process(*args, cwd=cwd, env=env, timeout=timeout, input=input)
    import contextlib
    import io
    import signal
    import traceback
    import warnings

    from workbench import terminal
    from workbench.cli import main

    argv = [str(a) for a in args]
    saved_env, saved_cwd, saved_stdin = dict(os.environ), os.getcwd(), sys.stdin
    saved_sigint = signal.getsignal(signal.SIGINT)
    saved_widths = terminal.console.width, terminal.err_console.width
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        os.environ.update({k: str(v) for k, v in (env or {}).items()})
        if cwd is not None:
            os.chdir(cwd)
        sys.stdin = io.StringIO(input or "")
        # The consoles' widths were fixed when this process imported workbench.terminal; give
        # them what a new process writing to pipes gets (COLUMNS, else 160 on stdout; 160 on stderr).
        columns = os.environ.get("COLUMNS", "")
        terminal.console.width = int(columns) if columns.isdigit() else 160
        terminal.err_console.width = 160
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.resetwarnings()
            for category in _PYTHON_WARNING_FILTERS:
                warnings.simplefilter("ignore", category)
            try:
                main(argv)
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        terminal.console.width, terminal.err_console.width = saved_widths
        sys.stdin = saved_stdin
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        signal.signal(signal.SIGINT, saved_sigint)
    return subprocess.CompletedProcess([sys.executable, "-m", "workbench", *argv], code, out.getvalue(), err.getvalue())


@pytest.fixture
def wb():
    return run_wb


def copy_repo_workspace(root: Path) -> Path:
    """A throw-away copy of this repository's workspace (stages, fixtures, config), so tests
    that run wb on the real kernels never write runs or caches into the checkout."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("stages", "fixtures", "pyproject.toml"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, root / name)
    return root


@pytest.fixture(scope="module")
def fmha_ws(tmp_path_factory):
    return copy_repo_workspace(tmp_path_factory.mktemp("fmha-ws"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small tensors: one intra-op thread is faster, and much faster on a loaded machine."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
