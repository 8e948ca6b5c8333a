"""Per-model outputs of a run folder: every model over the data, on device — accuracies, the forget-set
statistic the competition compares, the logits the MIAs need (:func:`population_outputs`), and the check
that a folder was run on the data given (:func:`check_data`). Used by :mod:`jax_unlearn.evaluation.report`
(which re-exports both) and the leaderboard."""
from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jax_unlearn.data.types import SPLITS, DataError, Normalization, UnlearningData
from jax_unlearn.engine.jitting import jit
from jax_unlearn.engine.lanes import lanes_per_call, vmap_lanes
from jax_unlearn.engine.train import Context, predict
from jax_unlearn.models import make_model
from jax_unlearn.metrics import logit_scaled_confidence
from jax_unlearn.jobs.folders import NonFiniteError, RunFolder

ACCURACIES = tuple(f"{split}_acc" for split in SPLITS)
MIA_SPLITS = ("retain", "test", "forget")


def check_data(folder: RunFolder, data: UnlearningData) -> list[str]:
    """Raise :class:`DataError` unless ``data`` has the split sizes and class count ``folder`` was run on.

    Returns the keys of the data description (``data.json``) that differ from ``data.description`` — a
    different path, say; the caller warns about them.
    """
    config = folder.config
    path = folder.path / "data.json"
    if not path.is_file():
        raise DataError(f"{path} missing: {folder.path} is not a complete run folder")
    recorded = json.loads(path.read_text())
    if recorded.get("sizes") != data.sizes():
        raise DataError(f"data does not match the run in {folder.path}: it was run on split sizes "
                        f"{recorded.get('sizes')} ({path}), the data given has {data.sizes()}; "
                        f"load the data set with the options recorded there")
    digests = recorded.get("digests")
    if digests is not None:  # folders written before digests were recorded: sizes only (and the warning)
        given = data.digests()
        differ = [name for name in SPLITS if digests.get(name) != given[name]]
        if differ:
            raise DataError(f"data does not match the run in {folder.path}: the {', '.join(differ)} split(s) hold "
                            f"other examples than it was run on (same sizes, different contents; {path} "
                            f"'digests'); repeat the run's data flags (--dataset, --data-dir, --forget*, "
                            f"--max-train, --max-eval, --data-seed)")
    if config["num_classes"] != data.num_classes:
        raise DataError(f"{folder.path} holds {config['num_classes']}-class models, the data has "
                        f"{data.num_classes} classes")
    described = json.loads(json.dumps(dict(data.description), default=str))
    keys = (set(recorded) | set(described)) - {"sizes"}
    return sorted(k for k in keys - {"digests"} if recorded.get(k) != described.get(k))


@functools.lru_cache(maxsize=8)
def _outputs_fn(num_classes: int, stem: str, dtype: str, normalization: Normalization, batch_size: int,
                arch: tuple | None = None):
    """``fn(stacked_variables, data) -> dict`` of per-lane outputs, jitted and vmapped over the lanes.

    Cached on the model's description, so every population of the same model shares one compilation.
    """
    arch = None if arch is None else {"stage_sizes": arch[0], "width": arch[1]}  # config.json's "arch"
    ctx = Context(make_model(num_classes, stem, dtype, arch=arch), normalization, {})

    def one_model(variables, data):
        out = {}
        n_shadow = min(data["retain"][0].shape[0], data["test"][0].shape[0])
        for split in SPLITS:
            images, labels = data[split]
            n = images.shape[0]
            if n == 0:
                out[f"{split}_acc"] = jnp.float32(jnp.nan)
                continue
            logits = predict(ctx, variables, images, min(batch_size, n)).astype(jnp.float32)
            out[f"{split}_acc"] = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
            if split in ("test", "forget"):
                out[f"{split}_logits"] = logits
            elif split == "retain" and n_shadow:  # SVC-MIA's shadow members: the first len(test)
                out["retain_logits"] = logits[:n_shadow]
        return out

    return jit(vmap_lanes(one_model, (0, None)))  # one lane a call on a CPU: unbatched


def _pad_lanes(tree, lanes: int):
    """Repeat lane 0 so every chunk has ``lanes`` lanes (the last chunk may hold fewer): no recompile."""
    def pad(a):
        missing = lanes - a.shape[0]
        return a if missing <= 0 else np.concatenate([a, np.repeat(a[:1], missing, axis=0)])

    return jax.tree_util.tree_map(pad, tree)


def _lane_outputs(fn, variables, k: int, lanes: int, device) -> dict[str, np.ndarray]:
    """``fn``'s outputs for the ``k`` stacked models of a chunk, ``lanes`` models a call (the last call
    padded), concatenated on the host."""
    parts = []
    for at in range(0, k, lanes):
        part = jax.tree_util.tree_map(lambda a: a[at:at + lanes], variables)
        out = jax.device_get(fn(_pad_lanes(part, lanes), device))
        parts.append({name: np.asarray(v)[:min(lanes, k - at)] for name, v in out.items()})
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def population_outputs(folder: RunFolder | str | os.PathLike, data: UnlearningData, *, batch_size: int = 500,
                       mia_models: int = 8, progress: bool | None = None) -> dict[str, Any]:
    """Evaluate every model of a run folder on ``data`` (eval mode, on device, a chunk at a time).

    The model is rebuilt from the folder's config (``make_model(num_classes, stem, dtype, arch=arch)``), inputs are
    normalised with ``data.normalization``.

    Args:
      folder: a finished run folder (or its path).
      data: the data the run used (same split sizes and class count, else :class:`DataError`).
      batch_size: images per forward pass and lane.
      mia_models: how many models (the first seeds) keep the logits the MIAs need.
      progress: tqdm bar over chunks; None = when stderr is a terminal.

    Returns a dict with N the number of models and K = min(N, mia_models):
      ``seed`` int64 (N,), ascending; ``retain_acc``, ``forget_acc``, ``validation_acc``, ``test_acc``
      float64 (N,) (nan for an empty split); ``forget_stat`` float64 (N, S_forget): the competition's
      ``logit_scaled_confidence`` of each forget example; ``mia_logits``: ``{'retain', 'test',
      'forget'}`` float32 (K, n, C) — for retain only the first ``len(test)`` examples (SVC-MIA's shadow
      members); ``method`` and ``path`` of the run.
    """
    folder = folder if isinstance(folder, RunFolder) else RunFolder(folder)
    if int(mia_models) != mia_models or mia_models < 0:
        raise ValueError(f"mia_models must be an integer >= 0, got {mia_models}")
    config = folder.config
    differing = check_data(folder, data)
    if differing:
        warnings.warn(f"{folder.path}/data.json differs from the data's description in {differing}; "
                      f"evaluating anyway (the split sizes match)", stacklevel=2)
    arch = config.get("arch")  # recorded for models smaller than ResNet-18
    fn = _outputs_fn(config["num_classes"], config.get("stem", "imagenet"), config.get("dtype", "float32"),
                     data.normalization, int(batch_size),
                     None if arch is None else (tuple(arch["stage_sizes"]), int(arch["width"])))
    device = {name: (jnp.asarray(data.split(name).images), jnp.asarray(data.split(name).labels, jnp.int32))
              for name in SPLITS}
    seeds, stats, done = [], [], 0
    accs = {k: [] for k in ACCURACIES}
    mia = {k: [] for k in MIA_SPLITS}
    show = sys.stderr.isatty() if progress is None else progress
    lanes = lanes_per_call(config["chunk_size"])
    for c in tqdm(folder.chunks(), desc=f"evaluate {folder.path.name}", unit="chunk", disable=not show):
        chunk = folder.load_chunk(c)
        k = len(chunk["ids"])
        out = _lane_outputs(fn, chunk["variables"], k, lanes, device)
        seeds.append(chunk["ids"])
        for name in ACCURACIES:
            accs[name].append(out[name].astype(np.float64))
        _check_finite_logits(folder, chunk["ids"], out)
        stats.append(logit_scaled_confidence(out["forget_logits"], data.forget.labels))
        for split in MIA_SPLITS:
            if f"{split}_logits" in out:
                mia[split].append(out[f"{split}_logits"][:max(0, mia_models - done)])
        done += k
    seed = np.concatenate(seeds).astype(np.int64)
    order = np.argsort(seed, kind="stable")
    result = {"seed": seed[order], "forget_stat": np.concatenate(stats)[order], "method": config["method"],
              "path": str(folder.path)}
    result.update({name: np.concatenate(v)[order] for name, v in accs.items()})
    result["mia_logits"] = {split: np.concatenate(v) for split, v in mia.items() if v}
    return result


def _check_finite_logits(folder: RunFolder, ids: np.ndarray, out: Mapping[str, np.ndarray]) -> None:
    """Refuse models whose outputs are NaN/inf (a diverged run), naming the run folder and the seeds."""
    bad = np.zeros(len(ids), bool)
    for name, v in out.items():
        if name.endswith("_logits"):
            bad |= ~np.isfinite(v).reshape(len(ids), -1).all(1)
    if bad.any():
        raise NonFiniteError(f"{folder.path}: seed(s) {[int(i) for i in ids[bad]][:20]} give NaN/inf logits (a "
                             f"diverged run, see its metrics.csv column 'finite'); they cannot be scored")
