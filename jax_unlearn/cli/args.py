"""Argument types and checks of the ``jax-unlearn`` command line: values that fail here fail before any
data is loaded or anything is written (README: "What the CLI guarantees")."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def positive(value: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return n


def seed(value: str) -> int:
    """A seed: an integer in [0, 2**32) (keys fold in uint32 seed ids)."""
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 0 <= n < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32), got {value!r}")
    return n


def class_ids(value: str) -> tuple[int, ...]:
    """``'3,5'`` -> (3, 5)."""
    ids = []
    for part in value.split(","):
        if part.strip():
            try:
                ids.append(int(part))
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected comma-separated integer class ids like 3,5; "
                                                 f"{part.strip()!r} is not an integer") from None
    if not ids:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer class ids like 3,5, got {value!r}")
    return tuple(ids)


def fraction(value: str) -> float:
    """argparse type: a float strictly between 0 and 1."""
    try:
        x = float(value)
    except ValueError:
        x = -1.0
    if not 0.0 < x < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {value!r}")
    return x


def check_output(path: str | Path, flag: str = "--out") -> Path:
    """Fail now, not after training, when ``path`` cannot be written: the nearest existing folder above it
    must be a folder (not a regular file) and writable. Creates nothing."""
    import errno
    import os

    path = Path(path)
    probe = path if path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{flag} {path} lies under a regular file, not a folder", str(probe))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"{flag} {path}: permission denied", str(probe))
    return path


def parse_set(pairs: list[str], method: str | None = None) -> dict:
    """``--set lr=0.01 --set epochs=2`` -> {'lr': 0.01, 'epochs': 2} (values parsed as JSON when possible).

    With ``method`` (a registered name, or ``'sisa'``) every value is checked against the method's declared
    defaults (:func:`jax_unlearn.methods.hyper.check_hyper`: type, range, known name) — before anything is written."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects NAME=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    if method is None:
        return out
    from jax_unlearn.methods.hyper import check_hyper

    if method == "sisa":  # names sisa.DEFAULTS does not list are left to jax_unlearn.jobs.sisa, which names them
        from jax_unlearn.methods import sisa

        defaults = {k: v for k, v in sisa.DEFAULTS.items() if k != "num_shards"}
        known = {k: v for k, v in out.items() if k in defaults}
        return {**out, **check_hyper("sisa", defaults, known)}
    from jax_unlearn.methods import get_method

    return check_hyper(method, get_method(method).defaults, out)
