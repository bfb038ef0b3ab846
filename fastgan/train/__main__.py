"""``python -m fastgan.train MODEL [flags]``: the flags are generated from TrainConfig (one per field,
--image-size style, help from the field's comment); bad input exits with code 2 and one line."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys

from . import config as config_module
from .cli import OneLineParser, run
from .config import MODELS, TrainConfig, config_fields
from .loop import CHOICES, train

PROG = "fastgan.train"
NOT_FLAGS = ("model",)  # the positional argument


def field_help() -> dict[str, str]:
    """The comment after each field in config.py, used as its --help text."""
    pattern = re.compile(r"^\s+(\w+): [^=]+=.*?#\s*(.+)$")
    found = {}
    for line in inspect.getsource(config_module).splitlines():
        match = pattern.match(line)
        if match:
            found[match.group(1)] = match.group(2).replace("%", "%%")
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(PROG, description="Train a GAN (fastgan).",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model", choices=MODELS, help="which GAN to train")
    helps = field_help()
    for f in config_fields():
        if f.name in NOT_FLAGS:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = helps.get(f.name, "")
        if f.type in ("bool", bool, "bool | None"):  # bool | None: unset means "the default for the device"
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=help_text)
            continue
        type_name = f.type if isinstance(f.type, str) else f.type.__name__
        kind = {"int": int, "float": float, "str": str}[type_name]
        parser.add_argument(flag, type=kind, default=f.default, choices=CHOICES.get(f.name),
                            metavar=None if f.name in CHOICES else f.name.upper(), help=help_text)
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in args.items() if k in names})


def _train(argv: list[str] | None) -> int:
    summary = train(parse_config(argv))
    print(f"{PROG}: step {summary['step']} (epoch {summary['epoch']}), {summary['it_per_s']:.2f} it/s; "
          f"checkpoint {summary['checkpoint']}; samples {summary['sample']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(PROG, _train, argv)


if __name__ == "__main__":
    sys.exit(main())
