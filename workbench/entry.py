"""The `wb` command's entry point: loads the CLI under a handler, so a Ctrl-C, SIGTERM or
SIGHUP that comes while Python imports typer, rich and wb's command modules is wb's one line
and exit status 130, not a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from workbench.interrupts import stop_on_termination

        stop_on_termination()
        from workbench import terminal  # noqa: F401 (rich, the longest import; cli.main's first line took it unguarded)
        from workbench.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("wb: error: interrupted\n")
        sys.exit(130)
    try:
        cli_main()
    except KeyboardInterrupt:  # one more Ctrl-C after cli_main said "interrupted": no traceback
        from workbench import settings

        if settings.debug():
            raise
        sys.exit(130)
