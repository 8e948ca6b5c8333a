"""The ``jax-unlearn`` command line: a thin edge that parses flags into frozen configs and calls the library.

Each sub-command is one ``(add_arguments, run)`` pair in :data:`COMMANDS`; logic lives in the library.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from converters import CheckpointError
from jax_unlearn.data import DataError

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="input checkpoint: .pth/.pt (torchvision) or .msgpack / orbax dir (Flax)")
    p.add_argument("dst", help="output checkpoint of the other kind; written atomically")
    p.add_argument("--num-classes", type=int, default=None, help="fail unless the head has this many classes")


def _convert(args: argparse.Namespace) -> int:
    """Convert a ResNet-18 checkpoint between torchvision .pth and Flax (direction from the file types)."""
    from converters import convert_file

    out = convert_file(args.src, args.dst, num_classes=args.num_classes)
    print(f"wrote {out}")
    return 0


def _commands() -> list[Command]:
    from jax_unlearn.cli_jobs import COMMANDS

    return [("convert", _convert_args, _convert), *COMMANDS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jax-unlearn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runners = {}
    for name, add_arguments, run in _commands():
        doc = (run.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else None, description=run.__doc__)
        add_arguments(p)
        runners[name] = run
    args = parser.parse_args(argv)
    try:
        return runners[args.command](args)
    except (CheckpointError, DataError, FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        print(f"jax-unlearn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
