"""A whole run as one pure function of ``(key, start_variables, data)``, and N of them vmapped in chunks.

``make_run`` turns a :class:`~jax_unlearn.methods.Method` into ``run(key, start_variables, data)``:
``lax.scan`` over epochs (each epoch a ``lax.scan`` over steps), per-epoch tracking computed on device.
``run_seeds`` applies ``jax.jit(jax.vmap(run, in_axes=(0, None, None)))`` to chunks of K seed keys — one
compilation for all chunks — and hands each finished chunk to a callback (which saves it).

Keys: seed ``i`` uses ``fold_in(key(base_seed), i)``, so a seed's result does not depend on the chunk it
ran in, and a resumed job recomputes exactly the chunks it lacks.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_unlearn.data.types import UnlearningData
from jax_unlearn.engine.train import Context, DeviceData, accuracy
from jax_unlearn.methods.base import Method

TRACK_SPLITS = ("retain", "forget", "validation")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How the engine runs a method: tracking, snapshots. (The method's own hyper-parameters live in it.)

    ``track``: per-epoch accuracy on :data:`TRACK_SPLITS`, on the first ``track_max`` examples of each
    (all when None). ``snapshot_every``: also return the variables after every k-th epoch.
    """

    track: bool = True
    track_max: int | None = 2000
    snapshot_every: int | None = None


def device_data(data: UnlearningData) -> DeviceData:
    """Put every split on the default device as uint8 images and int32 labels, plus ``train`` =
    retain ∪ forget (what the original model is trained on)."""
    out = {name: (jnp.asarray(s.images), jnp.asarray(s.labels, jnp.int32))
           for name, s in (("retain", data.retain), ("forget", data.forget),
                           ("validation", data.validation), ("test", data.test))}
    out["train"] = (jnp.concatenate([out["retain"][0], out["forget"][0]]),
                    jnp.concatenate([out["retain"][1], out["forget"][1]]))
    return out


def context_for(data: UnlearningData, model, class_counts=None) -> Context:
    """The :class:`Context` for ``data``: split sizes (incl. ``train``), normalisation, class counts
    (given, e.g. the Kaggle ``age_class_weights.json``, or counted on retain ∪ forget)."""
    sizes = data.sizes()
    sizes["train"] = sizes["retain"] + sizes["forget"]
    if class_counts is None:
        labels = np.concatenate([data.retain.labels, data.forget.labels])
        class_counts = np.bincount(labels, minlength=data.num_classes)
    return Context(model, data.normalization, sizes, tuple(int(c) for c in class_counts))


def make_run(ctx: Context, method: Method, config: RunConfig = RunConfig()):
    """``run(key, start_variables, data) -> (variables, metrics[, snapshots])`` for one seed.

    ``metrics``: dict of (num_epochs,) arrays — the method's own (e.g. ``loss``) and, when tracking,
    ``{split}_acc``. ``snapshots`` (when ``snapshot_every=k``): variables stacked over the
    ``num_epochs // k`` stage ends.
    """
    epochs, every = method.num_epochs, config.snapshot_every
    if every is not None and (every <= 0 or epochs % every):
        raise ValueError(f"snapshot_every={every} must divide the method's {epochs} epochs")

    def track(state, data):
        if not config.track:
            return {}
        variables = method.variables(state)
        out = {}
        for split in TRACK_SPLITS:
            images, labels = data[split]
            out[f"{split}_acc"] = accuracy(ctx, variables, images[:config.track_max], labels[:config.track_max])
        return out

    def run(key, start_variables, data: DeviceData):
        k_init, k_epochs = jax.random.split(key)
        state = method.init(k_init, start_variables, data)

        def one_epoch(state, e):
            state, metrics = method.epoch(state, jax.random.fold_in(k_epochs, e), data)
            return state, {**metrics, **track(state, data)}

        if every is None:
            state, metrics = jax.lax.scan(one_epoch, state, jnp.arange(epochs))
            return method.variables(state), metrics

        def stage(state, s):
            state, metrics = jax.lax.scan(one_epoch, state, s * every + jnp.arange(every))
            return state, (metrics, method.variables(state))

        state, (metrics, snaps) = jax.lax.scan(stage, state, jnp.arange(epochs // every))
        metrics = jax.tree_util.tree_map(lambda m: m.reshape(epochs, *m.shape[2:]), metrics)
        return method.variables(state), metrics, snaps

    return run


def seed_keys(base_seed: int, ids: Sequence[int] | np.ndarray) -> jax.Array:
    """Typed keys ``fold_in(key(base_seed), i)`` for each seed id ``i``."""
    base = jax.random.key(base_seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(ids, jnp.uint32))


def default_chunk_size(n_seeds: int, per_lane_bytes: int = 600 * 2**20) -> int:
    """Lanes per chunk: from the device's free memory (half of it, ``per_lane_bytes`` a lane) on
    accelerators; 8 on CPU. Never more than ``n_seeds``."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        k = max(1, int(free * 0.5 // per_lane_bytes))
    else:
        k = 8
    return max(1, min(n_seeds, k))


def run_seeds(run: Callable, n_seeds: int, base_seed: int, start_variables, data: DeviceData, *,
              chunk_size: int, on_chunk: Callable[[int, np.ndarray, object], None],
              done: Callable[[int], bool] = lambda c: False, images_per_seed: int | None = None,
              progress: bool | None = None, desc: str = "seeds") -> None:
    """Run seeds ``0..n_seeds-1`` in chunks of ``chunk_size`` lanes; ``on_chunk(c, ids, outputs)`` gets the
    host copy of each chunk's outputs (leading axis = the ``ids`` lanes). Chunks with ``done(c)`` are
    skipped (resume). The last chunk is padded with extra seed ids (no recompilation); their results are
    dropped. A tqdm bar shows chunks and img/s when stderr is a terminal (``progress=None``).
    """
    if n_seeds < 1 or chunk_size < 1:
        raise ValueError(f"n_seeds and chunk_size must be >= 1, got {n_seeds}, {chunk_size}")
    chunk_size = min(chunk_size, n_seeds)
    n_chunks = math.ceil(n_seeds / chunk_size)
    fn = jax.jit(jax.vmap(run, in_axes=(0, None, None)))
    todo = [c for c in range(n_chunks) if not done(c)]
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=n_chunks, initial=n_chunks - len(todo), desc=desc, unit="chunk", disable=not show) as bar:
        for c in todo:
            ids = np.arange(c * chunk_size, (c + 1) * chunk_size)
            start = time.perf_counter()
            out = jax.block_until_ready(fn(seed_keys(base_seed, ids), start_variables, data))
            seconds = time.perf_counter() - start
            keep = ids < n_seeds
            host = jax.tree_util.tree_map(lambda a: np.asarray(a)[keep], out)
            on_chunk(c, ids[keep], host)
            if images_per_seed:
                bar.set_postfix(img_s=f"{images_per_seed * chunk_size / seconds:,.0f}")
            bar.update(1)


def lanes(tree, ids: Iterable[int]):
    """Split a stacked pytree (leading lane axis) into one tree per lane."""
    return [jax.tree_util.tree_map(lambda a: a[i], tree) for i in range(len(list(ids)))]
