"""The `wb` command's entry point: loads the CLI under a handler, so a Ctrl-C (or SIGTERM)
that comes while Python imports typer, rich and wb's command modules is wb's one line and
exit status 130, not a traceback."""

from __future__ import annotations

import signal
import sys


def _stop(signum, frame):
    raise KeyboardInterrupt


def main() -> None:
    try:
        signal.signal(signal.SIGTERM, _stop)
        from workbench.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("wb: error: interrupted\n")
        sys.exit(130)
    cli_main()
