"""``python -m fastgan.train MODEL [flags]``: one sub-command per registered model (fastgan.models). Each
shows the shared flags and that model's own options, with the model's recipe as defaults; the flags are
generated from TrainConfig (one per field, --image-size style, help from the field's comment). Bad input
exits with code 2 and one line."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import traceback
from pathlib import Path

import torch.distributed

from ..data import DataRequest
from ..errors import EXIT_USAGE, UserError
from ..models import REGISTRY
from . import config as config_module
from .cli import OneLineParser, run
from .config import MODEL_OPTIONS, TrainConfig, config_fields
from .distributed import world_from_env
from .loop import CHOICES, train
from .progress import format_duration
from .reference_flags import reference_flag_hint
from .stops import TrainingStopped

PROG = "fastgan.train"
NOT_FLAGS = ("model",)  # the sub-command
# --data's help per kind of data (GanModel.data_kind): the built-in sets and what a folder must hold.
DATA_HELP = {
    "images": "fashion-mnist | synthetic | a folder of images (jpg, png, ...; any layout) or of MNIST-format "
              "IDX files",
    "labelled": "fashion-mnist | synthetic | a folder with one subfolder of images per class, or of MNIST-format "
                "IDX files",
    "unpaired": "fashion-unpaired | synthetic | a folder holding trainA/ and trainB/, the images of each domain "
                "(testA/ testB/ for evaluation)",
    "paired": "fashion-edges | synthetic | a folder holding train/ of side-by-side A|B images (pix2pix's "
              "layout), or trainA/ trainB/ of aligned images with the same names",
}


def field_help() -> dict[str, str]:
    """The comment after each field in config.py, used as its --help text."""
    pattern = re.compile(r"^\s+(\w+): [^=]+=.*?#\s*(.+)$")
    found = {}
    for line in inspect.getsource(config_module).splitlines():
        match = pattern.match(line)
        if match:
            found[match.group(1)] = match.group(2).replace("%", "%%")
    return found


def _add_model_parser(subparsers, model, helps: dict[str, str]) -> None:
    parser = subparsers.add_parser(model.name, tool=PROG, help=model.summary,
                                   description=f"Train {model.summary}.")
    parser.set_defaults(model=model.name)
    recipe = model.defaults()
    own = set(model.options)
    for f in config_fields():
        if f.name in NOT_FLAGS or (f.name in MODEL_OPTIONS and f.name not in own):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = recipe.get(f.name, f.default)
        shown = model.default_notes.get(f.name, default)
        if f.name == "data":
            shown = DataRequest(model.data_kind).default_data
        help_text = DATA_HELP.get(model.data_kind, "") if f.name == "data" else helps.get(f.name, "")
        if f.name != "channels_last":  # its own comment says what unset means
            help_text += f" (default: {shown})" if shown not in (None, "") else ""
        if f.type in ("bool", bool, "bool | None"):  # bool | None: unset means "the default for the device"
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        type_name = f.type if isinstance(f.type, str) else f.type.__name__
        kind = {"int": int, "float": float, "str": str}[type_name.removesuffix(" | None")]
        choices = (CHOICES | model.choices).get(f.name)
        parser.add_argument(flag, type=kind, default=default, choices=choices,
                            metavar=None if choices else f.name.upper(), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(PROG, description="Train a GAN (fastgan). `python -m fastgan.train MODEL --help` "
                                             "lists that model's options and its recipe's defaults.")
    subparsers = parser.add_subparsers(title="models", dest="model", metavar="MODEL", required=True)
    helps = field_help()
    for model in REGISTRY.values():
        _add_model_parser(subparsers, model, helps)
    return parser


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag of ``parser`` and of its sub-commands."""
    found = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= option_strings(sub)
    return found


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    return parse_given(argv)[0]


_UNSET = object()


def parse_given(argv: list[str] | None = None) -> tuple[TrainConfig, frozenset[str]]:
    """The config, and the fields whose flags the command line gives (a resumed run takes the others from
    its checkpoint)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    hint = reference_flag_hint(argv, option_strings(parser))
    if hint is not None:  # before argparse, which would first ask for the MODEL the reference passes as --model
        parser.error(hint)
    args = vars(parser.parse_args(argv))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in args.items() if k in names})
    # Parsed again with every default replaced by a marker: what is not the marker was on the command line
    # (argparse's abbreviations and --flag=value forms included).
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            for flag in sub._actions:
                if flag.dest in names and flag.dest not in NOT_FLAGS:
                    flag.default = _UNSET
    again = vars(parser.parse_args(argv))
    return cfg, frozenset(k for k, v in again.items() if k in names and k not in NOT_FLAGS and v is not _UNSET)


def _collective_failed(error: RuntimeError) -> bool:
    """A torch.distributed collective raised ``error`` (gloo raises a plain RuntimeError when a peer is gone)."""
    if isinstance(error, torch.distributed.DistError):
        return True
    return any(frame.filename.endswith("distributed_c10d.py") for frame in traceback.extract_tb(error.__traceback__))


def _train(argv: list[str] | None) -> int:
    cfg, given = parse_given(argv)
    rank, world_size, _ = world_from_env()
    try:
        summary = train(cfg, given)
    except TrainingStopped as e:  # a signal or divergence: one line, and its exit code (fastgan/train/stops.py)
        if rank == 0:  # every rank stops at the same step with the same reason
            print(f"{PROG}: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except UserError as e:
        if world_size == 1:
            raise
        # torchrun then ends the other processes; this line says which one had the bad input.
        print(f"{PROG}: rank {rank}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except RuntimeError as e:
        if world_size == 1 or not _collective_failed(e):
            raise
        # Another process ended (torchrun's summary names it and its exit code) or stayed away longer than
        # --dist-timeout.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0]  # gloo's: "[file.cc:561] Connection closed by peer"
        print(f"{PROG}: rank {rank}: error: lost the other processes of the job ({first}); the first process to "
              f"fail says why (see torchrun's summary)", file=sys.stderr, flush=True)
        return 1
    if rank != 0:
        return 0
    if summary["already_complete"]:
        print(f"{PROG}: already complete at step {summary['step']} (epoch {summary['epoch']}); checkpoint "
              f"{summary['checkpoint']}; raise --iters or --epochs to train further")
        return 0
    print(f"{PROG}: done: step {summary['step']} (epoch {summary['epoch']}) in {format_duration(summary['seconds'])}, "
          f"{summary['it_per_s']:.3g} it/s; checkpoint {summary['checkpoint']}; samples {summary['sample']}; "
          f"report {Path(summary['out']) / 'report.html'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(PROG, _train, argv)


if __name__ == "__main__":
    sys.exit(main())
