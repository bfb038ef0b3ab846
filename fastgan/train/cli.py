"""What the command-line entry points share: one-line errors with exit code 2 and no traceback, and the
value rules every command applies to its flags (written once, here, in the argument types).

- A float flag (``type=float``) takes finite numbers only: ``nan``, ``inf`` and ``-inf`` are refused at
  parsing, whatever the flag (a NaN learning rate or loss weight only shows up as a diverged run later).
- ``--seed`` takes 0 to 2**32 - 1 in every command: numpy's generators refuse negative seeds, torch's
  wrap them, and derived seeds (seed + 1, seed * 2 + split) must stay within torch's 64 bits.
"""

from __future__ import annotations

import argparse
import math
import re
import sys

from ..errors import EXIT_USAGE, UserError

SEED_MAX = 2**32 - 1  # the one accepted --seed range: 0 to SEED_MAX
# What argparse takes as a value rather than an option when it starts with "-": argparse's own negative
# numbers (-1, -.5), and also -1e-3, -inf and -nan, so that `--lr -inf` gets finite_float's message instead
# of "expected one argument" (and `--beta1 -1e-3` its range check).
NEGATIVE_NUMBER = re.compile(r"^-(\d+|\d*\.\d+|\d+\.)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


def finite_float(text: str) -> float:
    """argparse type of every float flag: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number")
    return value


def seed(text: str) -> int:
    """argparse type of --seed: an integer from 0 to SEED_MAX."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{text}: use 0 to {SEED_MAX}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line, ``<prog>: error: ...`` (no usage block), exit 2.

    Flags declared with ``type=float`` get :func:`finite_float` and an integer ``--seed`` gets :func:`seed`,
    in every command and in sub-commands (their parsers are of this class too). A value starting with "-" is a
    value if it reads as a negative number, -inf and -nan included (NEGATIVE_NUMBER)."""

    def __init__(self, tool: str, **kwargs):
        kwargs.setdefault("prog", f"python -m {tool}")
        super().__init__(**kwargs)
        self.name = tool
        self._negative_number_matcher = NEGATIVE_NUMBER  # argparse's test of "a negative number, not an option"

    def add_argument(self, *names, **kwargs):
        if kwargs.get("type") is float:
            kwargs["type"] = finite_float
        elif kwargs.get("type") is int and "--seed" in names:
            kwargs["type"] = seed
        return super().add_argument(*names, **kwargs)

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
