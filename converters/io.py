"""Checkpoint files: the one safe ``.pth`` loader, atomic writers, and Flax formats.

Formats, chosen by the path:
* ``*.pth`` / ``*.pt`` — a torchvision state dict (``torch.save``), read only with ``weights_only=True``.
* ``*.msgpack``        — Flax variables serialised with ``flax.serialization.msgpack_serialize``.
* anything else        — an orbax-checkpoint directory (``StandardCheckpointer``) holding the variables.
"""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
import torch
from flax import serialization

from converters.resnet18 import CheckpointError, flax_to_torch, torch_to_flax, unwrap_state_dict

TORCH_SUFFIXES = (".pth", ".pt")
FLAX_SUFFIXES = (".msgpack",)


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` file into a plain state dict (wrappers and ``module.`` prefixes removed).

    Uses ``torch.load(path, map_location='cpu', weights_only=True)`` only: a pickle that would run code
    or build arbitrary objects is refused with :class:`CheckpointError`, never executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to load — it holds objects or code that a weights-only load "
                              f"does not allow ({str(e).splitlines()[0][:200]})") from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({str(e).splitlines()[0][:200]})") from None
    try:
        return unwrap_state_dict(obj)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``.

    A crash or an exception leaves any previous ``path`` untouched and no partial file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would have
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_torch_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """``torch.save`` a state dict atomically."""
    return atomic_write(path, lambda tmp: torch.save(state_dict, tmp))


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
            raise CheckpointError(f"{path}: not a Flax msgpack file ({e})") from None
    else:
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(path.absolute())
    if not isinstance(tree, Mapping) or "params" not in tree:
        raise CheckpointError(f"{path}: expected Flax variables with 'params' (and 'batch_stats')")
    return jax.tree_util.tree_map(np.asarray, dict(tree))


def is_torch_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix in TORCH_SUFFIXES


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, num_classes: int | None = None) -> Path:
    """Convert a checkpoint file; the direction follows the file types (``.pth`` ⇄ Flax).

    ``.pth -> .msgpack | orbax dir`` or ``.msgpack | orbax dir -> .pth``. Strict: see :func:`torch_to_flax`.
    """
    if is_torch_path(src) == is_torch_path(dst):
        raise ValueError(f"one of {src} and {dst} must be a .pth/.pt file and the other a Flax checkpoint "
                         f"(.msgpack or an orbax directory)")
    if is_torch_path(src):
        return save_flax_variables(torch_to_flax(load_torch_checkpoint(src), num_classes), dst)
    variables = load_flax_variables(src)
    state_dict = flax_to_torch(variables)
    if num_classes is not None and state_dict["fc.weight"].shape[0] != num_classes:
        raise CheckpointError(f"{src}: head has {state_dict['fc.weight'].shape[0]} classes; expected {num_classes}")
    return save_torch_checkpoint(state_dict, dst)
