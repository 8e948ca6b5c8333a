"""Run folders: config, data description, per-seed metrics, per-chunk orbax checkpoints, .pth export.

Layout of a run folder::

    config.json              what was run (method, hyper-parameters, seeds, chunk size, data options)
    data.json                the data/split description (UnlearningData.description + sizes)
    chunks/chunk_00000/      orbax checkpoint: stacked variables (+ snapshots) and metrics of K lanes
    metrics.csv              one row per (seed, epoch): loss and tracked accuracies (pandas)

Jobs that are not one model per seed keep named orbax checkpoints instead of chunks (``save_tree`` /
``load_tree``; e.g. SISA's ``original/`` and ``unlearned/`` shard ensembles, :mod:`jax_unlearn.sisa_job`).

A job restarted with the same command finds ``config.json`` equal, skips finished chunks and ends with
identical outputs; a different config in the same folder is refused rather than mixed.
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import numpy as np
import pandas as pd

from converters import atomic_write, flax_to_torch, save_torch_checkpoint
from jax_unlearn.engine.run import is_primary


class RunFolderError(ValueError):
    """A run folder that does not hold what was asked of it."""


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


class RunFolder:
    """One run's folder; see the module docstring for its layout."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- config / resume ------------------------------------------------------------------------------
    def start(self, config: Mapping[str, Any], data_description: Mapping[str, Any]) -> bool:
        """Create the folder, or check that an existing one holds the same config (resume).

        Returns True when resuming. Raises :class:`RunFolderError` when the folder holds another run.
        """
        canonical = json.loads(json.dumps(config, sort_keys=True, default=_json_default))
        cfg = self.path / "config.json"
        if cfg.exists():
            old = json.loads(cfg.read_text())
            if old != canonical:
                diff = sorted(k for k in set(old) | set(canonical) if old.get(k) != canonical.get(k))
                raise RunFolderError(f"{self.path} holds a different run (config differs in {diff}); "
                                     f"use another --out or delete the folder")
            return True
        if self.path.exists() and any(self.path.iterdir()):
            raise RunFolderError(f"{self.path} exists, is not empty and is not a run folder")
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / "data.json", data_description)
        write_json(cfg, canonical)
        return False

    @property
    def config(self) -> dict[str, Any]:
        cfg = self.path / "config.json"
        if not cfg.is_file():
            raise RunFolderError(f"{self.path} is not a run folder (no config.json)")
        return json.loads(cfg.read_text())

    # -- chunks ---------------------------------------------------------------------------------------
    def chunk_dir(self, c: int) -> Path:
        return self.path / "chunks" / f"chunk_{c:05d}"

    def chunk_done(self, c: int) -> bool:
        return self.chunk_dir(c).is_dir()

    def save_chunk(self, c: int, ids: np.ndarray, outputs: Mapping[str, Any]) -> None:
        """Write one finished chunk (orbax writes to a temporary directory and renames it on success)."""
        _save_tree(self.chunk_dir(c), {"ids": np.asarray(ids, np.int64), **outputs})

    def load_chunk(self, c: int) -> dict[str, Any]:
        if not self.chunk_done(c):
            raise RunFolderError(f"{self.chunk_dir(c)} missing: the run did not finish (rerun its command)")
        return _load_tree(self.chunk_dir(c))

    # -- named checkpoints (jobs that are not one model per seed, e.g. SISA's shard ensembles) -----------
    def has_tree(self, name: str) -> bool:
        return (self.path / name).is_dir()

    def save_tree(self, name: str, tree: Any) -> None:
        """Write a pytree of arrays as the orbax checkpoint ``<folder>/<name>`` (atomic: temporary dir + rename)."""
        _save_tree(self.path / name, tree)

    def load_tree(self, name: str) -> Any:
        """The pytree :meth:`save_tree` wrote, as NumPy arrays."""
        if not self.has_tree(name):
            raise RunFolderError(f"{self.path / name} missing: the run did not finish (rerun its command)")
        return _load_tree(self.path / name)

    def chunks(self) -> list[int]:
        n, k = self.config["n_seeds"], self.config["chunk_size"]
        return list(range(-(-n // k)))

    def iter_models(self, stage: int | None = None) -> Iterator[tuple[int, dict]]:
        """Yield ``(seed_id, variables)`` one model at a time, one chunk in memory at a time.

        ``stage``: the k-th snapshot (0-based) of a run with ``snapshot_every``; None = final models.
        """
        for c in self.chunks():
            chunk = self.load_chunk(c)
            tree = chunk["variables"] if stage is None else _stage(chunk, stage, self.path)
            for lane, seed in enumerate(chunk["ids"]):
                yield int(seed), jax.tree_util.tree_map(lambda a: a[lane], tree)

    # -- metrics --------------------------------------------------------------------------------------
    def write_metrics(self) -> pd.DataFrame:
        """Gather every chunk's per-epoch metrics into ``metrics.csv`` (one row per seed and epoch).

        In a multi-process job every process calls it (orbax's multi-host restores are collective) and
        process 0 writes the file."""
        frames = []
        for c in self.chunks():
            chunk = self.load_chunk(c)
            metrics = chunk["metrics"]
            for lane, seed in enumerate(chunk["ids"]):
                cols = {k: np.asarray(v[lane]) for k, v in metrics.items()}
                epochs = len(next(iter(cols.values())))
                frames.append(pd.DataFrame({"seed": int(seed), "epoch": np.arange(1, epochs + 1), **cols}))
        df = pd.concat(frames, ignore_index=True)
        if is_primary():
            atomic_write(self.path / "metrics.csv", lambda tmp: df.to_csv(tmp, index=False))
        return df


def _save_tree(target: Path, tree: Any) -> None:
    import orbax.checkpoint as ocp

    target.parent.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(target.absolute(), tree)


def _load_tree(target: Path) -> Any:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(target.absolute())
    return jax.tree_util.tree_map(np.asarray, tree)


def _stage(chunk, stage: int, path: Path):
    if "snapshots" not in chunk:
        raise RunFolderError(f"{path} has no stage snapshots (run with --snapshot-every)")
    n = len(next(iter(jax.tree_util.tree_leaves(chunk["snapshots"])))[0])
    if not 0 <= stage < n:
        raise RunFolderError(f"stage {stage} out of range: {path} has {n} snapshots per seed")
    return jax.tree_util.tree_map(lambda a: a[:, stage], chunk["snapshots"])


def export_pth(run: RunFolder, out_dir: str | os.PathLike, *, n: int | None = None, stage: int | None = None,
               zip_name: str | None = "submission.zip", prefix: str = "unlearned_checkpoint_") -> list[Path]:
    """Write ``{prefix}{i}.pth`` (torchvision state dicts) for seeds ``i = 0..n-1`` and, when ``zip_name``,
    a zip holding exactly those ``n`` files — as the Kaggle notebook's submission. Streams one model at
    a time (512 ResNet-18s do not fit in host memory). Refuses to zip a count other than ``n``.
    """
    n_run = run.config["n_seeds"]
    n = n_run if n is None else n
    if n != n_run:
        raise RunFolderError(f"{run.path} holds {n_run} seeds; refusing to export {n}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, variables in run.iter_models(stage):
        paths.append(save_torch_checkpoint(flax_to_torch(variables), out_dir / f"{prefix}{seed}.pth"))
    if sorted(int(p.stem[len(prefix):]) for p in paths) != list(range(n)):
        raise RunFolderError(f"expected seeds 0..{n - 1} in {run.path}, found {len(paths)} models")
    if zip_name:
        def write_zip(tmp):
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                for p in paths:
                    zf.write(p, arcname=p.name)
            with zipfile.ZipFile(tmp) as zf:
                if len(zf.namelist()) != n:
                    raise RunFolderError(f"zip holds {len(zf.namelist())} files, expected {n}")

        atomic_write(out_dir / zip_name, write_zip)
    return paths


def remove_chunks(run: RunFolder) -> None:
    """Delete the per-chunk checkpoints (after export, to reclaim disk)."""
    shutil.rmtree(run.path / "chunks", ignore_errors=True)
