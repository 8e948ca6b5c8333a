"""Seed lanes: their keys, how a chunk of lanes becomes one compiled call, and where the lanes run.

A lane is one seed's run (or one sweep setting's). :func:`lane_runner` compiles ``run`` for a chunk of
lanes — ``jax.vmap`` over them (:func:`vmap_lanes`), sharded over the devices along a ``seed`` mesh axis —
and :func:`lanes_per_call` decides how many lanes one call holds: a whole chunk where lanes run in
parallel, one on a single CPU. :func:`~jax_unlearn.engine.run.run_seeds` drives it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_unlearn.engine.jitting import jit
from jax_unlearn.engine.train import DeviceData

LANE_AXIS = "seed"  # the mesh axis the lanes (seeds, sweep settings) are sharded over


def seed_keys(base_seed: int | jax.Array, ids: Sequence[int] | np.ndarray | jax.Array) -> jax.Array:
    """Typed keys ``fold_in(key(base_seed), i)`` for each seed id ``i``: ``base_seed`` an int and ``ids``
    a sequence of ints, or traced (a uint32 scalar and (n,) uint32 ids inside a compiled program)."""
    base = jax.random.key(base_seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(ids, jnp.uint32))


def vmap_lanes(fn: Callable, in_axes: Sequence[int | None]) -> Callable:
    """``jax.vmap(fn, in_axes)`` over a leading lane axis (``in_axes`` entries 0 or None), except that a
    single lane runs ``fn`` itself: the lane axis is indexed away from the inputs and put back on the
    outputs. Same values, a leaner program: on XLA:CPU the finetune run's vmap over one lane ran ~15%
    slower than the unbatched run and took twice as long to trace (benchmarks/RESULTS.md, 2026-12-04)."""
    if any(a not in (0, None) for a in in_axes):
        raise ValueError(f"in_axes entries must be 0 or None, got {in_axes}")
    vmapped = jax.vmap(fn, in_axes=tuple(in_axes))

    def call(*args):
        lanes = {leaf.shape[0] for arg, ax in zip(args, in_axes) if ax == 0 for leaf in jax.tree_util.tree_leaves(arg)}
        if lanes != {1}:
            return vmapped(*args)
        one = [arg if ax is None else jax.tree_util.tree_map(lambda a: a[0], arg) for arg, ax in zip(args, in_axes)]
        return jax.tree_util.tree_map(lambda a: a[None], fn(*one))

    return call


def lanes_run_in_parallel() -> bool:
    """Whether the lanes of one vmapped program run in parallel on the default backend. Not on a CPU: one
    model's step (or forward pass) already keeps every core busy, so k lanes take k times one lane's time,
    while a program of more lanes compiles more slowly (ResNet-18's finetune: 8 lanes 21.5 s, 1 lane
    11.1 s on a 2-core CPU, benchmarks/RESULTS.md) and a new lane count is a new program."""
    return jax.devices()[0].platform != "cpu"


def lanes_per_call(n_lanes: int, n_devices: int = 1) -> int:
    """Lanes one compiled call of :func:`~jax_unlearn.engine.run.run_seeds` computes: all of a chunk's
    where lanes run in parallel (an accelerator, or lanes sharded over several devices), one on a single
    CPU. There a lane runs unbatched (:func:`vmap_lanes`), one after another: a vmapped ResNet-18 program
    of more lanes compiles more slowly and each lane runs ~12% slower, and a vmapped ``lax.cond`` (a lane's
    skipped epochs, SCRUB's alternating phases) computes both branches; the test ResNet's 8 seeds compiled
    and ran 1.4–2.3× faster one lane at a time (benchmarks/RESULTS.md, 2026-12-04)."""
    return n_lanes if n_devices > 1 or lanes_run_in_parallel() else 1


def default_chunk_size(n_seeds: int, per_lane_bytes: int = 600 * 2**20) -> int:
    """Lanes per chunk: per device from its free memory (half of it, ``per_lane_bytes`` a lane) times the
    number of devices on accelerators; 8 on CPU. Never more than ``n_seeds``."""
    devices = jax.devices()
    stats = devices[0].memory_stats() if devices[0].platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        k = max(1, int(free * 0.5 // per_lane_bytes)) * len(devices)
    else:
        k = 8
    return max(1, min(n_seeds, k))


def _put(tree, sharding):
    """Place a host-identical pytree with ``sharding`` (works across processes: each one supplies the
    shards its devices hold)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree_util.tree_map(one, tree)


def to_host(tree):
    """``tree``'s arrays as NumPy arrays on this host; in a multi-process job each process gets all of them
    (``process_allgather`` of the lane-sharded outputs)."""
    if jax.process_count() == 1:
        return jax.tree_util.tree_map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def lane_runner(run: Callable, base_seed: int, start_variables, data: DeviceData, *, n_lanes: int,
                devices: Sequence[jax.Device] | None = None):
    """``call(ids, hyper=None) -> outputs``: ``run`` vmapped over ``n_lanes`` seed ids (:func:`vmap_lanes`:
    one lane runs unbatched), jitted once.

    ``ids`` (n_lanes,) int and ``hyper`` (a dict of (n_lanes,) arrays or None) are host arrays. With more
    than one device, ``n_lanes`` must be a multiple of their number: ids and hyper are placed with
    ``NamedSharding(Mesh(devices, ('seed',)), P('seed'))``, start variables and data replicated, and the
    outputs come back sharded along the same axis (each device computes its own lanes; BatchNorm never
    reduces over lanes, so the result does not depend on the device count). Keys are
    :func:`seed_keys` of the ids, computed on device.
    """
    devices = list(jax.devices() if devices is None else devices)
    if n_lanes % len(devices):
        raise ValueError(f"{n_lanes} lanes do not divide over {len(devices)} devices")

    def many(ids, start, data, hyper):
        keys = seed_keys(base_seed, ids)
        if hyper is None:
            return vmap_lanes(run, (0, None, None))(keys, start, data)
        return vmap_lanes(run, (0, None, None, 0))(keys, start, data, hyper)

    if len(devices) == 1:
        place_lanes = lambda tree: jax.device_put(tree, devices[0])  # noqa: E731
        start_variables, data = jax.device_put((start_variables, data), devices[0])
        fn = jit(many)
    else:
        mesh = Mesh(np.asarray(devices), (LANE_AXIS,))
        by_lane, replicated = NamedSharding(mesh, PartitionSpec(LANE_AXIS)), NamedSharding(mesh, PartitionSpec())
        place_lanes = lambda tree: _put(tree, by_lane)  # noqa: E731
        start_variables, data = _put((start_variables, data), replicated)
        fn = jit(many, out_shardings=by_lane)

    def call(ids, hyper=None):
        ids = np.asarray(ids, np.uint32)
        if ids.shape != (n_lanes,):
            raise ValueError(f"expected {n_lanes} ids, got shape {ids.shape}")
        hyper = None if hyper is None else {k: np.asarray(v) for k, v in hyper.items()}
        return fn(place_lanes(ids), start_variables, data, None if hyper is None else place_lanes(hyper))

    return call
