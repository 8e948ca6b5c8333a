"""Checkpoint files: the one safe ``.pth`` loader, atomic writers, and Flax formats.

Formats, chosen by the path:
* ``*.pth`` / ``*.pt`` — a torchvision state dict (``torch.save``), read only with ``weights_only=True``.
* ``*.msgpack``        — Flax variables serialised with ``flax.serialization.msgpack_serialize``.
* anything else        — an orbax-checkpoint directory (``StandardCheckpointer``) holding the variables.
"""
from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
import torch
from flax import serialization

from converters.resnet18 import (CheckpointError, check_flax_variables, flax_to_torch, torch_to_flax,
                                 unwrap_state_dict)

TORCH_SUFFIXES = (".pth", ".pt")
FLAX_SUFFIXES = (".msgpack",)


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, ANSI escapes removed ('' when there is none)."""
    text = _ANSI.sub("", str(error))
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BLOCKED = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def _foreign_globals(path: Path) -> list[str]:
    """The globals (``module.name``) a pickle would import, other than torch's and ``collections``', read off
    its opcodes with :mod:`pickletools` (which executes nothing). Best effort: [] when unreadable."""
    found: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
        else:
            with open(path, "rb") as f:
                data = f.read(64 << 20)
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str) and "UNICODE" in op.name:
                strings.append(arg)
            elif op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 — a hint only; the refusal stands either way
        pass
    return [g for g in found if not g.startswith(("torch.", "collections."))]


def _unpickling_message(path: Path, error: BaseException) -> str:
    """What a weights-only load refused, in one line (torch's own text advises the unsafe retry)."""
    text = _ANSI.sub("", str(error))
    blocked = _BLOCKED.search(text)
    name = blocked.group(1) if blocked else next(iter(_foreign_globals(path)), None)
    if name:
        return (f"{path}: refused — loading it would import {name} (pickled Python objects, not just "
                f"tensors); nothing in it was executed. If it is a whole model saved with torch.save(model), "
                f"save model.state_dict() instead")
    with open(path, "rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        return f"{path}: not a torch checkpoint (neither a torch.save zip archive nor a pickle)"
    detail = re.search(r"WeightsUnpickler error: *\n*\s*([^\n]+)", text)
    return (f"{path}: refused — a weights-only load rejects its contents"
            f"{f' ({detail.group(1).strip()})' if detail else ''}; nothing in it was executed")


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` file into a plain state dict (wrappers and ``module.`` prefixes removed).

    Uses ``torch.load(path, map_location='cpu', weights_only=True)`` only: a pickle that would run code
    or build arbitrary objects is refused with :class:`CheckpointError`, never executed. Every failure is
    one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing; we report it
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(_unpickling_message(path, e)) from None
    except (RuntimeError, EOFError, ValueError, IndexError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint "
                              f"({_first_line(e)[:200] or type(e).__name__})") from None
    try:
        return unwrap_state_dict(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``.

    A crash or an exception leaves any previous ``path`` untouched and no partial file behind. An
    :class:`OSError` (no space left, permission denied, …) is re-raised naming ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would have
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        if e.filename is None or e.filename == tmp:  # name the file the user asked for, not our temporary
            raise type(e)(e.errno, e.strerror or str(e), str(path)) from None
        raise
    except BaseException:
        _discard(tmp)
        raise
    return path


def _discard(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def torch_bytes(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """``torch.save(state_dict)`` as bytes. Saving to a buffer makes the archive's record name the fixed
    ``archive/`` (a file path would put the file's name inside), so equal state dicts give equal bytes."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getvalue()


def save_torch_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """``torch.save`` a state dict atomically; equal state dicts give byte-identical files."""
    data = torch_bytes(state_dict)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def save_flax_variables(variables: Mapping, path: str | os.PathLike) -> Path:
    """Write Flax variables as ``.msgpack`` (atomic) or as an orbax directory (any other path)."""
    path = Path(path)
    host = jax.tree_util.tree_map(np.asarray, dict(variables))
    if path.suffix in FLAX_SUFFIXES:
        data = serialization.msgpack_serialize(host)
        return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    import orbax.checkpoint as ocp

    if path.exists():
        raise FileExistsError(f"{path} exists; refusing to overwrite an orbax checkpoint directory")
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp.absolute(), host)
    os.replace(tmp, path)
    return path


def load_flax_variables(path: str | os.PathLike) -> dict[str, Any]:
    """Read variables written by :func:`save_flax_variables` (NumPy leaves)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Flax checkpoint not found: {path}")
    if path.suffix in FLAX_SUFFIXES:
        try:
            tree = serialization.msgpack_restore(path.read_bytes())
        except Exception as e:  # msgpack raises several unrelated types on corrupt input
            reason = _first_line(e)[:200] or type(e).__name__
            raise CheckpointError(f"{path}: not a Flax msgpack file ({reason})") from None
    else:
        import orbax.checkpoint as ocp

        try:
            with ocp.StandardCheckpointer() as ckptr:
                tree = ckptr.restore(path.absolute())
        except Exception as e:  # orbax/tensorstore raise many types on a corrupt or foreign directory
            raise CheckpointError(f"{path}: not a readable orbax checkpoint ({_first_line(e)[:200]})") from None
    if not isinstance(tree, Mapping) or "params" not in tree:
        raise CheckpointError(f"{path}: expected Flax variables with 'params' (and 'batch_stats')")
    return jax.tree_util.tree_map(np.asarray, dict(tree))


def is_torch_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a PyTorch checkpoint (by suffix: ``.pth`` / ``.pt``)."""
    return Path(path).suffix in TORCH_SUFFIXES


def _named(path, fn, *args):
    """``fn(*args)``, a :class:`CheckpointError` re-raised with ``path`` in front (when not already there)."""
    try:
        return fn(*args)
    except CheckpointError as e:
        raise CheckpointError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None


def load_model_variables(path: str | os.PathLike, num_classes: int | None = None,
                         arch: Mapping | None = None) -> dict[str, Any]:
    """A ResNet-18 start model as Flax variables, from ``.pth`` or ``.msgpack`` / orbax, checked the same
    way whatever the format: exactly ResNet-18's entries and shapes, ``num_classes`` classes (when
    given), real finite weights. Raises :class:`CheckpointError` naming the file and the entry.

    ``arch`` (a smaller ResNet, ``{'stage_sizes', 'width'}`` as :func:`jax_unlearn.models.parse_arch`
    returns; needs ``num_classes``): only Flax checkpoints load, since a ``.pth`` holds a torchvision
    ResNet-18, checked entry by entry against that model's own shapes."""
    if arch is not None:
        return _named(path, _load_small, path, num_classes, arch)
    if is_torch_path(path):
        return _named(path, torch_to_flax, load_torch_checkpoint(path), num_classes)
    variables = load_flax_variables(path)
    _named(path, check_flax_variables, variables, num_classes)
    return variables


def _load_small(path, num_classes: int, arch: Mapping) -> dict[str, Any]:
    """:func:`load_model_variables` for a smaller ResNet: the file's entries, shapes and values checked
    against ``make_model(num_classes, arch=arch)``'s initial variables."""
    from jax_unlearn.models import arch_name, init_variables, make_model  # converters stays importable alone

    name = arch_name(dict(arch))
    if is_torch_path(path):
        raise CheckpointError(f"a .pth file holds a torchvision ResNet-18, not the {name} model; give its Flax "
                              f"checkpoint (.msgpack, e.g. from train-original --arch {name})")
    variables = load_flax_variables(path)
    model = make_model(num_classes, arch=dict(arch))
    expected = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    have = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(variables)}
    missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
    if missing or extra:
        raise CheckpointError(f"not a {name} model of {num_classes} classes: missing {missing[:10]}, "
                              f"unexpected {extra[:10]}")
    for key, shape in want.items():
        value = np.asarray(have[key])
        if value.shape != tuple(shape):
            raise CheckpointError(f"{key} has shape {value.shape}; the {name} model of {num_classes} classes "
                                  f"needs {tuple(shape)}")
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise CheckpointError(f"{key} holds NaN/inf values: the model is broken (diverged or corrupt)")
    return variables


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, num_classes: int | None = None) -> Path:
    """Convert a checkpoint file; the direction follows the file types (``.pth`` ⇄ Flax).

    ``.pth -> .msgpack | orbax dir`` or ``.msgpack | orbax dir -> .pth``. Strict both ways (see
    :func:`load_model_variables`): nothing is written for a checkpoint that fails a check.
    """
    if is_torch_path(src) == is_torch_path(dst):
        raise ValueError(f"one of {src} and {dst} must be a .pth/.pt file and the other a Flax checkpoint "
                         f"(.msgpack or an orbax directory)")
    variables = load_model_variables(src, num_classes)
    if is_torch_path(src):
        return save_flax_variables(variables, dst)
    return save_torch_checkpoint(flax_to_torch(variables), dst)
