"""What the command-line entry points share: one-line errors with exit code 2 and no traceback."""

from __future__ import annotations

import argparse
import sys

from ..errors import EXIT_USAGE, UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line, ``<prog>: error: ...`` (no usage block), exit 2."""

    def __init__(self, tool: str, **kwargs):
        kwargs.setdefault("prog", f"python -m {tool}")
        super().__init__(**kwargs)
        self.name = tool

    def error(self, message):
        fail(self.name, message)


def fail(name: str, message: str):
    print(f"{name}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def run(name: str, main, *args) -> int:
    """Calls main(*args); a UserError becomes one line on stderr and exit code 2."""
    try:
        return main(*args)
    except UserError as e:
        fail(name, str(e))
