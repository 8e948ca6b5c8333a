"""The ``jax-unlearn`` command line: a thin edge that parses flags into frozen configs and calls the library.

Each sub-command is one ``(add_arguments, run)`` pair in :data:`COMMANDS`; logic lives in the library.
Every failure ends in one line on stderr and an exit code from :data:`EXIT_CODES` (README: "What the CLI
guarantees"); ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_OS, EXIT_NONFINITE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "internal error (a bug: rerun with --debug and report the traceback)",
    EXIT_INPUT: "bad input: a flag, a value, a checkpoint, a data file or a run folder that does not fit",
    EXIT_OS: "the file system refused: permission denied, no space left, a path through a regular file, ...",
    EXIT_NONFINITE: "non-finite results: a run diverged (NaN/inf), or export refused non-finite models",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); rerunning the same command resumes",
}

DESCRIPTION = """\
Machine unlearning for torchvision ResNet-18 in JAX: train an original model, unlearn it with many seeds
in one compiled program, retrain reference models, export .pth checkpoints and a submission.zip, and
score them with the competition's metric.

Typical use:
  jax-unlearn train-original --out original.pth
  jax-unlearn unlearn --method finetune --original original.pth --out runs/finetune
  jax-unlearn retrain --out runs/retrain
  jax-unlearn export runs/finetune submission/
  jax-unlearn evaluate runs/finetune --retrained runs/retrain

`jax-unlearn COMMAND --help` lists a command's flags and their defaults."""


def _epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:<4d}{text}" for code, text in EXIT_CODES.items())


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions' line breaks and appends each flag's default unless its help already names one."""

    def _get_help_string(self, action):
        help = action.help or ""
        default = action.default
        if ("default" in help.lower() or default in (None, False, argparse.SUPPRESS) or default == []
                or not action.option_strings):
            return help
        return f"{help} (default: %(default)s)".strip()


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="input checkpoint: .pth/.pt (torchvision) or .msgpack / orbax dir (Flax)")
    p.add_argument("dst", help="output checkpoint of the other kind; written atomically")
    p.add_argument("--num-classes", type=int, default=None, help="fail unless the head has this many classes")


def _convert(args: argparse.Namespace) -> int:
    """Convert a ResNet-18 checkpoint between torchvision .pth and Flax (direction from the file types).

    Strict both ways: exactly ResNet-18's keys and shapes, real finite weights; nothing is written for a
    checkpoint that fails a check."""
    from converters import convert_file

    out = convert_file(args.src, args.dst, num_classes=args.num_classes)
    print(f"wrote {out}")
    return 0


def _commands() -> list[Command]:
    from jax_unlearn.cli.commands import COMMANDS

    return [("convert", _convert_args, _convert), *COMMANDS]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    """The argument parser of every sub-command and the function that runs each."""
    parser = argparse.ArgumentParser(prog="jax-unlearn", description=DESCRIPTION, epilog=_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runners = {}
    for name, add_arguments, run in _commands():
        doc = (run.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else None, description=run.__doc__, formatter_class=HelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")
        add_arguments(p)
        runners[name] = run
    return parser, runners


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe_os_error(error: OSError) -> str:
    """``<path>: <cause>`` (e.g. ``runs/x: no space left on device``) for an :class:`OSError`."""
    cause = error.strerror or str(error) or type(error).__name__
    cause = cause[:1].lower() + cause[1:]
    paths = [p for p in (error.filename, getattr(error, "filename2", None)) if p is not None]
    return _one_line(f"{' -> '.join(map(os.fsdecode, paths))}: {cause}" if paths else cause)


def classify(error: BaseException) -> tuple[int, str]:
    """``(exit code, one-line message)`` for an exception that ended a command."""
    from converters import CheckpointError
    from jax_unlearn.data import DataError
    from jax_unlearn.jobs.folders import NonFiniteError

    if isinstance(error, NonFiniteError):
        return EXIT_NONFINITE, _one_line(error)
    if isinstance(error, (FileNotFoundError, FileExistsError)) and not error.filename:
        return EXIT_INPUT, _one_line(error)
    if isinstance(error, FileNotFoundError):
        return EXIT_INPUT, describe_os_error(error)
    if isinstance(error, OSError):
        return EXIT_OS, describe_os_error(error)
    if isinstance(error, (CheckpointError, DataError, ValueError)):
        return EXIT_INPUT, _one_line(error)
    if isinstance(error, KeyError):
        return EXIT_INPUT, _one_line(error.args[0] if error.args else error)
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted; rerun the same command to resume"
    return EXIT_INTERNAL, _one_line(f"internal error: {type(error).__name__}: {error} "
                                    f"(rerun with --debug for the traceback and report it)")


def main(argv: list[str] | None = None) -> int:
    """Run ``jax-unlearn`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code (:data:`EXIT_CODES`)."""
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("JAX_UNLEARN_DEBUG") == "1"
    if not debug:
        _quiet_libraries()
    try:
        return runners[args.command](args)
    except BaseException as e:  # noqa: BLE001 — the edge: every error becomes one line and an exit code
        if isinstance(e, SystemExit) or debug:
            raise
        code, message = classify(e)
        print(f"jax-unlearn {args.command}: error: {message}", file=sys.stderr)
        return code


def _quiet_libraries() -> None:
    """Keep library loggers (orbax, absl) from printing tracebacks of errors this edge reports itself."""
    import logging

    for name in ("absl", "orbax"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


if __name__ == "__main__":
    sys.exit(main())
