"""The `fulmen` command: parse options, serve, turn user-fixable problems into one line."""

from __future__ import annotations

import os
import sys
from typing import Sequence

from fulmen import FulmenError, config


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code: 0, 1 for a problem the user can fix, 3 when the
    ASGI app's lifespan startup failed (as Uvicorn)."""
    try:
        cfg = config.parse_args(argv, os.environ)
        if cfg.print_config:
            sys.stdout.write(config.render(cfg))
            return 0
        from fulmen import server  # not needed for --help/--version or option errors

        server.serve(cfg)
    except FulmenError as exc:
        if exc.detail:
            sys.stderr.write(exc.detail if exc.detail.endswith("\n") else exc.detail + "\n")
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the server's own handlers were installed
        return 130
    return 0
