"""The `wb` command line: parse, call the library, render. One module per command group.

Every command module is imported to build the app (`wb --help` too), so a command imports
the library inside its function: the library (and torch, cutlass, pydantic, rich's progress)
loads only for the command that runs."""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Optional

import typer

from workbench import __version__, settings
from workbench.files import folder_problem
from workbench.errors import NoGpuError, UserError
from workbench.interrupts import stop_on_termination

app = typer.Typer(
    name="wb",
    help="Workbench for CuTe DSL kernels built as ordered, verified stages.\n\n"
    "Typical day: `wb shapes KERNEL`, `wb run stage-c --n 256`, `wb diff-run`, `wb report stage-c`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)


class State:
    workspace_path: Optional[str] = None
    argv: list[str] = []  # the command line as given (`--host` forwards it to the remote wb)

    def workspace(self):
        from workbench.workspace import find_workspace

        return find_workspace(self.workspace_path)


state = State()


def a_name(flag: str, what: str, comma_list: bool = False):
    """An option callback refusing an empty name (`--host ''`, and `--host a,` where the value is
    a comma list): left alone, an empty value reads as "not given" and the work silently runs
    here instead."""

    def check(value):
        for item in value if isinstance(value, list) else [value]:
            if item is not None and not all(part.strip() for part in (item.split(",") if comma_list else [item])):
                raise UserError(f"{flag} {item!r}: expected {what}")
        return value

    return check


#: --host of the commands that take one configured host
host_name = a_name("--host", "the name of a configured host (`wb hosts` lists them)")


def _version(value: bool) -> None:
    if value:
        print(f"wb {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    workspace: Optional[str] = typer.Option(  # text, not Path: Path("") is "." and -w "" meant the cwd
        None, "--workspace", "-w", callback=a_name("--workspace", "a workspace folder"), metavar="<path>",
        help="Workspace folder (default: $WB_WORKSPACE, else found upward from the cwd).",
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print wb's version."),
) -> None:
    state.workspace_path = workspace
    home = settings.wb_home()
    problem = folder_problem(home) if home else None
    if problem:
        warnings.warn(f"WB_HOME={problem}: compiled kernels and the card's measured peak are not kept between runs")
    elif home and (problem := folder_problem(home / "cache")):
        warnings.warn(f"WB_HOME: {problem}: compiled kernels are not kept between runs")


# `wb --help` lists commands in the order of a working day, not of module imports.
COMMAND_ORDER = [
    "list", "shapes", "run", "sweep", "runs", "diff-run", "report", "explain", "bench", "profile", "compile",
    "fixtures", "export", "note", "new", "import", "hosts", "ps", "kill",
]


def _register() -> None:
    from workbench.cli import bench, compile, export, history, hosts, kernels, memory, run, shapes, sweep  # noqa: F401

    rank = {name: i for i, name in enumerate(COMMAND_ORDER)}

    def name_of(info) -> str:
        return info.name or info.callback.__name__.replace("_", "-")

    app.registered_commands.sort(key=lambda info: rank.get(name_of(info), len(rank)))
    app.registered_groups.sort(key=lambda info: rank.get(info.name, len(rank)))


def _show_warning(message, category, filename, lineno, file=None, line=None):
    from workbench import terminal

    terminal.warn(str(message))


@contextlib.contextmanager
def _usage_errors_in_one_line():
    """click (inside typer) shows a mistake on the command line (`--n abc`, an unknown option)
    as the usage, a hint and `Error: ...`: four lines. wb's rule is one line, `wb: error:
    <what>; see `wb run -h``. UsageError's show is swapped for the call (a subclass with its
    own, no-arguments-is-help, keeps it): typer's vendored click (0.2x) or click itself."""
    import importlib

    from workbench import terminal

    def one_line(self, file=None):
        where = f"; see `{self.ctx.command_path} -h`" if self.ctx is not None else ""
        terminal.error(f"{self.format_message().rstrip('.')}{where}")

    swapped = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            cls = importlib.import_module(name).UsageError
        except (ImportError, AttributeError):
            continue
        swapped.append((cls, cls.show))
        cls.show = one_line
    try:
        yield
    finally:
        for cls, show in swapped:
            cls.show = show


def main(argv: list[str] | None = None) -> None:
    from workbench import terminal

    warnings.showwarning = _show_warning
    with contextlib.suppress(ValueError):  # not the main thread (wb called inside another program)
        stop_on_termination()
    try:
        _register()  # imports every command module: a Ctrl-C here is an interrupt like any other
        state.argv = list(argv) if argv is not None else sys.argv[1:]
        with terminal.readers_may_leave() as stdout, _usage_errors_in_one_line():
            try:
                app(args=argv, prog_name="wb", standalone_mode=True)
            except SystemExit as exc:
                if stdout.failed and exc.code in (0, None):
                    raise UserError(f"the output could not be written to stdout ({stdout.failed}): the command ran, what it printed is lost") from None
                raise
    except (UserError, NoGpuError) as exc:
        if settings.debug():
            raise
        terminal.error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        if settings.debug():
            raise
        _say_interrupted()
        sys.exit(130)
    except SystemExit as exc:
        # typer turns a Ctrl-C inside a command into a silent exit 130 (Exit(130) from the
        # KeyboardInterrupt); a command that said why itself (wb sweep) exits 130 without one
        if exc.code == 130 and isinstance(getattr(exc.__context__, "__cause__", None), KeyboardInterrupt):
            _say_interrupted()
        raise


def _say_interrupted() -> None:
    """The last line of an interrupted wb. A second Ctrl-C (or SIGTERM, SIGHUP) while it is
    printed (rich imports lazily there) was a traceback on top of it: wb is stopping anyway."""
    from workbench import terminal

    with contextlib.suppress(KeyboardInterrupt):
        terminal.error("interrupted")
