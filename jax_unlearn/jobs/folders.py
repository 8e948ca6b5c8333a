"""Run folders: config, data description, per-seed metrics, per-chunk orbax checkpoints, .pth export.

Layout of a run folder::

    config.json              what was run (method, hyper-parameters, seeds, chunk size, data options)
    data.json                the data/split description (UnlearningData.description + sizes)
    chunks/chunk_00000/      orbax checkpoint: stacked variables (+ snapshots) and metrics of K lanes
    chunks/chunk_00000.files.json   size and sha256 of each of its files, checked before every restore
    metrics.csv              one row per (seed, epoch): loss and tracked accuracies (pandas)

Jobs that are not one model per seed keep named orbax checkpoints instead of chunks (``save_tree`` /
``load_tree``; e.g. SISA's ``original/`` and ``unlearned/`` shard ensembles, :mod:`jax_unlearn.jobs.sisa`).

A job restarted with the same command finds ``config.json`` equal, skips finished chunks and ends with
identical outputs; a different config in the same folder is refused rather than mixed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import numpy as np
import pandas as pd

from converters import atomic_write, flax_to_torch, save_torch_checkpoint
from converters.resnet18 import nonfinite_keys
from jax_unlearn.engine.hosts import is_primary
from jax_unlearn.models import arch_name


class RunFolderError(ValueError):
    """A run folder that does not hold what was asked of it."""


class NonFiniteError(RunFolderError):
    """NaN/inf losses or weights: a diverged run, or an export asked to write such models."""


def _first_line(error: BaseException) -> str:
    text = str(error)
    return next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)[:300]


def json_default(o):
    """``json.dumps``'s ``default``: NumPy scalars and arrays, paths and dataclasses as plain JSON."""
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON with sorted keys, atomically (temporary file + rename); the one JSON
    writer of the library and the benchmarks (:func:`json_default` converts NumPy values)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=json_default)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


class RunFolder:
    """One run's folder; see the module docstring for its layout."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- config / resume ------------------------------------------------------------------------------
    def start(self, config: Mapping[str, Any], data_description: Mapping[str, Any]) -> bool:
        """Create the folder, or check that an existing one holds the same config (resume).

        Returns True when resuming. Raises :class:`RunFolderError` when the folder holds another run.
        """
        canonical = json.loads(json.dumps(config, sort_keys=True, default=json_default))
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
        return _load_tree(self.chunk_dir(c), f"chunk {c}")

    def missing_chunks(self) -> list[int]:
        """The chunks not (yet) written: a run that was stopped, or whose chunk folders were deleted."""
        return [c for c in self.chunks() if not self.chunk_done(c)]

    def check_finite(self, metrics: pd.DataFrame) -> None:
        """Raise :class:`NonFiniteError` naming the seeds whose loss or weights became NaN/inf, and the first
        such epoch of each (the engine's per-epoch ``finite`` flag, :func:`diverged_seeds`)."""
        bad = diverged_seeds(metrics)
        if bad:
            shown = ", ".join(f"seed {s} from epoch {e}" for s, e in list(bad.items())[:10])
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            raise NonFiniteError(
                f"{len(bad)} of {metrics['seed'].nunique()} seeds diverged (NaN/inf loss or weights): {shown}{more}; "
                f"their models stay in {self.path} (metrics.csv column 'finite') but `export` refuses them — "
                f"lower the learning rate or change the batch size")

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
        return _load_tree(self.path / name, name)

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


def diverged_seeds(metrics: pd.DataFrame) -> dict[int, int]:
    """``{seed: first epoch (1-based)}`` of the seeds whose per-epoch ``finite`` flag is false (runs from
    before the flag existed: none)."""
    if "finite" not in metrics:
        return {}
    bad = metrics[~metrics["finite"].astype(bool)]
    return {int(s): int(e) for s, e in bad.groupby("seed")["epoch"].min().items()}


def _save_tree(target: Path, tree: Any) -> None:
    import orbax.checkpoint as ocp

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(target.absolute(), tree)
        if is_primary():
            write_json(_manifest_path(target), _file_digests(target))
    except OSError as e:
        _discard_partial(target)
        raise type(e)(e.errno, e.strerror or _first_line(e), str(e.filename or target)) from None
    except Exception as e:  # noqa: BLE001 — orbax/tensorstore wrap the OS error (e.g. no space left) in others
        reason = _first_line(e)
    else:
        return
    _discard_partial(target)
    raise OSError(None, f"could not write the checkpoint ({reason})", str(target))


def _discard_partial(target: Path) -> None:
    """Remove what a failed orbax save left (its temporary directory beside ``target``)."""
    for tmp in target.parent.glob(f"{target.name}.orbax-checkpoint-tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _manifest_path(target: Path) -> Path:
    return target.parent / f"{target.name}.files.json"


def _file_digests(target: Path) -> dict[str, list]:
    """``{relative path: [size in bytes, sha256]}`` of every file of the checkpoint folder ``target``."""
    import hashlib

    out = {}
    for f in sorted(p for p in target.rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
        out[f.relative_to(target).as_posix()] = [f.stat().st_size, h.hexdigest()]
    return out


# checkpoint folder -> the (path, size, mtime) of its files and its list when its digests last matched: a
# finished run's chunks are restored by write_metrics, export and evaluate in turn, and hashing each again
# would cost about a second per GB every time. Rewriting a file changes its mtime, so it is hashed again.
_VERIFIED: dict[str, tuple] = {}


def _stat_signature(target: Path, manifest: Path) -> tuple:
    files = sorted(p for p in target.rglob("*") if p.is_file())
    return tuple((str(p), st.st_size, st.st_mtime_ns) for p in [manifest, *files] for st in [p.stat()])


def _damage(target: Path) -> str | None:
    """What differs between the checkpoint folder ``target`` and the file list written beside it when it was
    saved (None: intact, or saved before such lists were written). A folder whose files' sizes and mtimes
    are those it had when it last matched its list is not hashed again in this process."""
    manifest = _manifest_path(target)
    if not manifest.is_file():
        return None
    key, signature = str(target.resolve()), _stat_signature(target, manifest)
    if _VERIFIED.get(key) == signature:
        return None
    try:
        want = json.loads(manifest.read_text())
    except ValueError:
        return f"{manifest.name} is not JSON"
    have = _file_digests(target)
    for name, (size, digest) in want.items():
        if name not in have:
            return f"file {name} is missing"
        if have[name][0] != size:
            return f"file {name} has {have[name][0]} bytes, {size} were written"
        if have[name][1] != digest:
            return f"file {name} changed since it was written (sha256 differs)"
    _VERIFIED[key] = signature
    return None


def _load_tree(target: Path, what: str = "checkpoint") -> Any:
    """Restore an orbax checkpoint as NumPy arrays, checking its files against the list saved beside it first:
    orbax fails on a truncated or emptied file only after it has started reads that, completing after its
    event loop closed, print ``RuntimeError: Event loop is closed`` tracebacks from tensorstore's threads
    — after the one-line error was reported."""
    import orbax.checkpoint as ocp

    reason = _damage(target)
    if reason is None:
        try:
            with ocp.StandardCheckpointer() as ckptr:
                return jax.tree_util.tree_map(np.asarray, ckptr.restore(target.absolute()))
        except Exception as e:  # noqa: BLE001 — a corrupt checkpoint fails in tensorstore, zstd, ...
            reason = _first_line(e)
    raise RunFolderError(f"{target}: {what} is unreadable ({reason}); delete that folder and rerun the run's "
                         f"command to recompute it")


def _stage(chunk, stage: int, path: Path):
    if "snapshots" not in chunk:
        raise RunFolderError(f"{path} has no stage snapshots (run with --snapshot-every)")
    n = len(next(iter(jax.tree_util.tree_leaves(chunk["snapshots"])))[0])
    if not 0 <= stage < n:
        raise RunFolderError(f"stage {stage} out of range: {path} has {n} snapshots per seed")
    return jax.tree_util.tree_map(lambda a: a[:, stage], chunk["snapshots"])


def _zip_deterministic(tmp: str, files: list[Path]) -> None:
    """A zip of ``files`` (by name) whose bytes depend on their contents only: fixed timestamps and modes."""
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            info = zipfile.ZipInfo(p.name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr, info.file_size = zipfile.ZIP_DEFLATED, 0o644 << 16, p.stat().st_size
            with open(p, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


def export_pth(run: RunFolder, out_dir: str | os.PathLike, *, n: int | None = None, stage: int | None = None,
               zip_name: str | None = "submission.zip", prefix: str = "unlearned_checkpoint_",
               allow_nonfinite: bool = False) -> list[Path]:
    """Write ``{prefix}{i}.pth`` (torchvision state dicts) for seeds ``i = 0..n-1`` and, when ``zip_name``,
    a zip holding exactly those ``n`` files — as the Kaggle notebook's submission. Streams one model at
    a time (512 ResNet-18s do not fit in host memory). Refuses to zip a count other than ``n``.

    All or nothing: the files are written into a temporary folder inside ``out_dir`` and moved into place
    only when every model was written; a refusal or an error leaves ``out_dir`` as it was. Checkpoints
    ``{prefix}{j}.pth`` of an earlier, larger export (``j >= n``) are removed, so the folder holds exactly
    this export. Models with NaN/inf weights are refused (:class:`NonFiniteError`, naming the seeds)
    unless ``allow_nonfinite``, and so is a run of a smaller ResNet (``config.json["arch"]``). Identical
    models give byte-identical ``.pth`` files and zip.
    """
    config = run.config
    if config.get("arch") is not None:  # flax_to_torch writes torchvision's ResNet-18 layout only
        raise RunFolderError(f"{run.path} holds {arch_name(config['arch'])} models, not ResNet-18: a .pth "
                             f"submission holds torchvision ResNet-18s; nothing exported")
    n_run = config["n_seeds"]
    n = n_run if n is None else n
    if n != n_run:
        raise RunFolderError(f"{run.path} holds {n_run} seeds; refusing to export {n}")
    missing = run.missing_chunks()
    if missing:
        raise RunFolderError(f"{run.path} is incomplete: chunk(s) {missing} of {len(run.chunks())} missing (the run "
                             f"was stopped; rerun its command to finish it); nothing exported")
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        written: dict[int, Path] = {}
        nonfinite: list[int] = []
        for seed, variables in run.iter_models(stage):
            state_dict = flax_to_torch(variables)
            if nonfinite_keys(state_dict):
                nonfinite.append(seed)
            if nonfinite and not allow_nonfinite:
                continue  # keep reading, to name every such seed; nothing is exported
            name = f"{prefix}{seed}.pth"
            try:
                written[seed] = save_torch_checkpoint(state_dict, staging / name)
            except OSError as e:  # name the file the user will look for, not the staging folder
                raise type(e)(e.errno, e.strerror or str(e), str(out_dir / name)) from None
        if nonfinite and not allow_nonfinite:
            raise NonFiniteError(f"{run.path}: {len(nonfinite)} model(s) hold NaN/inf weights (seeds "
                                 f"{nonfinite[:20]}{' ...' if len(nonfinite) > 20 else ''}); refusing to export "
                                 f"them (--allow-nonfinite writes them anyway); nothing exported")
        if sorted(written) != list(range(n)):
            raise RunFolderError(f"expected seeds 0..{n - 1} in {run.path}, found {len(written)} models")
        paths = [written[i] for i in range(n)]
        if zip_name:
            def write_zip(tmp):
                _zip_deterministic(tmp, paths)
                with zipfile.ZipFile(tmp) as zf:
                    if len(zf.namelist()) != n:
                        raise RunFolderError(f"zip holds {len(zf.namelist())} files, expected {n}")

            atomic_write(staging / zip_name, write_zip)
        for stale in out_dir.glob(f"{prefix}*.pth"):
            index = stale.name[len(prefix):-len(".pth")]
            if index.isdigit() and int(index) >= n:
                stale.unlink()
        final = [out_dir / p.name for p in paths]
        for p, dst in zip(paths, final):
            os.replace(p, dst)
        if zip_name:
            os.replace(staging / zip_name, out_dir / zip_name)
        return final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
