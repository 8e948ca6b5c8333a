"""A whole run as one pure function of ``(key, start_variables, data[, hyper])``, and N of them vmapped.

``make_run`` turns a :class:`~jax_unlearn.engine.protocol.Method` — or a ``build(hyper) -> Method`` closure, for
per-lane hyper-parameter sweeps — into ``run(key, start_variables, data, hyper=None)``: ``lax.scan`` over
epochs (each epoch a ``lax.scan`` over steps), per-epoch tracking computed on device. ``run_seeds`` applies
``jax.jit(jax.vmap(run))`` to chunks of K seed lanes — one compilation for all chunks — sharded over every
visible device along a ``seed`` mesh axis, and hands each finished chunk to a callback (which saves it). On
a single CPU a chunk's lanes run one at a time instead (:func:`~jax_unlearn.engine.lanes.lanes_per_call`:
lanes buy no parallelism there, and the one-lane program compiles and runs faster).

Keys: seed ``i`` uses ``fold_in(key(base_seed), i)``, so a seed's result does not depend on the chunk it
ran in nor on how many devices ran it, and a resumed job recomputes exactly the chunks it lacks.

Multi-host: call :func:`jax_unlearn.engine.hosts.init_distributed` first in every process; ``jax.devices()`` then lists the devices
of all hosts and ``run_seeds`` shards each chunk's lanes over all of them (JAX's own multi-controller
runtime, no scheduler of ours).
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_unlearn.data.types import UnlearningData
from jax_unlearn.engine.lanes import lane_runner, lanes_per_call, to_host
from jax_unlearn.engine.progress import EpochProgress
from jax_unlearn.engine.train import Context, DeviceData, accuracy
from jax_unlearn.engine.protocol import Method

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


def _static_epochs(method: Method, every: int | None) -> int:
    epochs = method.num_epochs
    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool):
        raise TypeError(f"num_epochs must be a Python int (the static scan length), got {type(epochs).__name__}; "
                        f"a build(hyper) closure must pass the static maximum for epochs")
    if every is not None and (every <= 0 or epochs % every):
        raise ValueError(f"snapshot_every={every} must divide the method's {epochs} epochs")
    return int(epochs)


def make_run(ctx: Context, method: Method | Callable[[Mapping[str, jax.Array]], Method],
             config: RunConfig = RunConfig(), *, on_epoch: Callable[[Any], None] | None = None):
    """``run(key, start_variables, data, hyper=None) -> (variables, metrics[, snapshots])`` for one seed.

    Args:
      ctx: the static context (model, normalisation, split sizes).
      method: a built :class:`Method`, or ``build(hyper) -> Method``. A closure is called *inside* the
        traced function with that lane's ``hyper``, so float hyper-parameters (lr, momentum, α, T, …)
        are traced per-lane scalars (optax takes traced scalars); structural ones (batch size, the
        number of epochs scanned) stay Python ints in the closure.
      config: tracking and snapshots.
      on_epoch: a host function called with the epoch index (a scalar array) when an epoch is done, from
        inside the compiled program (``jax.debug.callback`` with the lane's ``finite`` flag as a second
        operand, so that it waits for the epoch's results). Under ``jax.vmap`` over lanes ``jax.debug``
        unrolls it: once per lane and epoch, all with the same index, which the reporter counts once. It
        cannot change results: the callback only reads. See :class:`jax_unlearn.engine.progress.EpochProgress`.

    ``hyper`` (per lane; under ``jax.vmap`` pass it with ``in_axes=0`` like the key): a dict of scalars.
    Its ``epochs`` entry, when present, is the lane's number of epochs ≤ ``num_epochs`` ("epochs as step
    masks"): epochs ``e >= hyper['epochs']`` leave the state untouched (``lax.cond``; parameters, optimiser
    state and BatchNorm statistics bit-identical) and report a nan ``loss``, so such a lane computes
    exactly the first ``hyper['epochs']`` epochs of the ``num_epochs`` program — a true k-epoch run
    whenever the method's schedule does not depend on the total (see :mod:`jax_unlearn.jobs.sweep` for
    schedules that do). A fixed ``Method`` accepts only ``epochs`` per lane.

    Returns, per seed: ``variables``; ``metrics`` a dict of (num_epochs,) arrays — the method's own
    (e.g. ``loss``) and, when tracking, ``{split}_acc``; ``snapshots`` (when ``snapshot_every=k``):
    variables stacked over the ``num_epochs // k`` stage ends.
    """
    every = config.snapshot_every
    if isinstance(method, Method):
        _static_epochs(method, every)  # fail before tracing

    def build(hyper) -> Method:
        if isinstance(method, Method):
            extra = sorted(set(hyper) - {"epochs"})
            if extra:
                raise ValueError(f"per-lane hyper-parameters {extra} need a build(hyper) -> Method closure; "
                                 f"a built Method takes only 'epochs' per lane")
            return method
        return method(hyper)

    def track(m: Method, state, data):
        if not config.track:
            return {}
        variables = m.variables(state)
        out = {}
        for split in TRACK_SPLITS:
            images, labels = data[split]
            out[f"{split}_acc"] = accuracy(ctx, variables, images[:config.track_max], labels[:config.track_max])
        return out

    def run(key, start_variables, data: DeviceData, hyper: Mapping[str, Any] | None = None):
        hyper = dict(hyper or {})
        m = build(hyper)
        epochs = _static_epochs(m, every)
        lane_epochs = hyper.get("epochs")
        k_init, k_epochs = jax.random.split(key)
        state = m.init(k_init, start_variables, data)

        def epoch_of(state, e):
            k = jax.random.fold_in(k_epochs, e)
            if lane_epochs is None:
                return m.epoch(state, k, data, start_variables)

            def skip(state):
                shapes = jax.eval_shape(m.epoch, state, k, data, start_variables)[1]
                return state, jax.tree_util.tree_map(lambda s: jnp.full(s.shape, _blank(s.dtype), s.dtype), shapes)

            return jax.lax.cond(e < lane_epochs, lambda s: m.epoch(s, k, data, start_variables), skip, state)

        def one_epoch(state, e):
            state, metrics = epoch_of(state, e)
            metrics = {**metrics, **track(m, state, data),
                       "finite": _finite(m.variables(state), metrics, e, lane_epochs)}
            if on_epoch is not None:
                # The lane's finite flag, computed from this epoch's weights and loss, is an operand so that
                # the callback waits for the epoch to finish. Tying the epoch index alone to the results
                # with lax.optimization_barrier did not: XLA:CPU's thunk runtime ran the callback as soon as
                # the index existed, i.e. as the epoch began. Under vmap the callback unrolls over lanes.
                jax.debug.callback(lambda epoch, finite: on_epoch(epoch), e, metrics["finite"])
            return state, metrics

        if every is None:
            state, metrics = jax.lax.scan(one_epoch, state, jnp.arange(epochs))
            return m.variables(state), metrics

        def stage(state, s):
            state, metrics = jax.lax.scan(one_epoch, state, s * every + jnp.arange(every))
            return state, (metrics, m.variables(state))

        state, (metrics, snaps) = jax.lax.scan(stage, state, jnp.arange(epochs // every))
        metrics = jax.tree_util.tree_map(lambda a: a.reshape(epochs, *a.shape[2:]), metrics)
        return m.variables(state), metrics, snaps

    return run


def _finite(variables, metrics, e, lane_epochs) -> jax.Array:
    """The per-epoch ``finite`` flag: every weight and the method's ``loss`` metric (when it has one) are
    finite — one reduction per epoch, on device. Other metrics may be nan by design and are not checked
    (SCRUB's ``forget_kl`` in epochs without a max pass, UNSIR's and the curriculum's ``noise_loss`` outside
    their noise phase). A lane's masked epochs (past ``hyper['epochs']``) report a nan loss by design;
    their weights are still checked.

    The weights' test is ``isfinite(Σ_leaves sum(x · 0))``: ``x · 0`` is 0 for a finite ``x`` and nan for
    ±inf or nan, so the total is 0 exactly (no overflow, however large the weights) when every weight is
    finite. On XLA:CPU it compiles to fewer kernels than ``all(isfinite(x))`` per leaf (the drop-in's
    ResNet-18 program: 1011 against 1053 fusions, benchmarks/RESULTS.md)."""
    weights = sum(jnp.sum(x * 0, dtype=jnp.float32) for x in jax.tree_util.tree_leaves(variables)
                  if jnp.issubdtype(x.dtype, jnp.floating))
    loss = metrics.get("loss")
    ok_losses = jnp.all(jnp.isfinite(loss)) if loss is not None else jnp.bool_(True)
    if lane_epochs is not None:
        ok_losses = ok_losses | (e >= lane_epochs)
    return jnp.isfinite(weights) & ok_losses


def _blank(dtype):
    """What a skipped epoch reports for a metric: nan for floats, 0 otherwise."""
    return jnp.nan if jnp.issubdtype(dtype, jnp.floating) else 0


def _check_lane_hyper(hyper: Mapping[str, Any] | None, n_seeds: int):
    if hyper is None:
        return None
    out = {k: np.asarray(v) for k, v in hyper.items()}
    bad = {k: v.shape for k, v in out.items() if v.shape != (n_seeds,)}
    if bad:
        raise ValueError(f"per-lane hyper-parameters must have shape ({n_seeds},), one value per seed; got {bad}")
    return out


def run_seeds(run: Callable, n_seeds: int, base_seed: int, start_variables, data: DeviceData, *,
              chunk_size: int, on_chunk: Callable[[int, np.ndarray, object], None],
              done: Callable[[int], bool] = lambda c: False, images_per_seed: int | None = None,
              progress: bool | None = None, desc: str = "seeds", hyper: Mapping[str, Any] | None = None,
              devices: Sequence[jax.Device] | None = None, epoch_progress: EpochProgress | None = None) -> None:
    """Run seeds ``0..n_seeds-1`` in chunks of ``chunk_size`` seeds; ``on_chunk(c, ids, outputs)`` gets the
    host copy of each chunk's outputs (leading axis = the ``ids`` lanes). Chunks with ``done(c)`` are
    skipped (resume). A tqdm bar shows chunks and img/s when stderr is a terminal (``progress=None``);
    ``epoch_progress`` (the ``on_epoch`` hook ``run`` was made with) replaces it with per-epoch progress.

    ``hyper``: per-seed hyper-parameters, a dict of (n_seeds,) arrays; seed ``i`` runs
    ``run(key_i, start, data, {k: v[i]})`` (``run`` from :func:`make_run` with a ``build`` closure).

    Devices (``jax.devices()`` unless given; all hosts' after :func:`~jax_unlearn.engine.hosts.init_distributed`): each chunk's
    lanes are sharded over them (:func:`~jax_unlearn.engine.lanes.lane_runner`). The compiled program holds
    ``chunk_size`` rounded up to a multiple of the device count lanes; the extra lanes — and, in the last
    chunk, lanes past ``n_seeds`` — run padding seed ids whose results are dropped, so chunk ``c`` always
    holds seeds ``c·chunk_size …`` (a run folder resumes the same whatever the device count). Pick a
    ``chunk_size`` that is a multiple of the device count to waste nothing. On one CPU device the program
    holds one lane (:func:`~jax_unlearn.engine.lanes.lanes_per_call`): a chunk's seeds run one after another
    and padding seeds are not run at all; the chunk stays the unit that ``on_chunk`` saves and a resume
    skips. In a multi-process job every process gets every chunk's full outputs; ``on_chunk`` and ``done``
    must agree across processes (e.g. save on process 0 only, to a shared folder).
    """
    if n_seeds < 1 or chunk_size < 1:
        raise ValueError(f"n_seeds and chunk_size must be >= 1, got {n_seeds}, {chunk_size}")
    hyper = _check_lane_hyper(hyper, n_seeds)
    devices = list(jax.devices() if devices is None else devices)
    chunk_size = min(chunk_size, n_seeds)
    n_lanes = math.ceil(chunk_size / len(devices)) * len(devices)
    n_chunks = math.ceil(n_seeds / chunk_size)
    width = lanes_per_call(n_lanes, len(devices))
    call = lane_runner(run, base_seed, start_variables, data, n_lanes=width, devices=devices)
    todo = [c for c in range(n_chunks) if not done(c)]

    def lanes_of(c):  # the chunk's seed ids (padded to n_lanes) and which of them are kept
        ids = c * chunk_size + np.arange(n_lanes)
        return ids, (np.arange(n_lanes) < chunk_size) & (ids < n_seeds)

    # Calls of `width` lanes; a call of padding lanes only is skipped (it happens only when width < n_lanes).
    calls = {c: [at for at in range(0, n_lanes, width) if lanes_of(c)[1][at:at + width].any()] for c in todo}
    from tqdm.auto import tqdm

    show = (sys.stderr.isatty() if progress is None else progress) and epoch_progress is None
    if epoch_progress is not None:
        epoch_progress.start(sum(map(len, calls.values())), unit="chunk" if width == n_lanes else "seed")
    try:
        with tqdm(total=n_chunks, initial=n_chunks - len(todo), desc=desc, unit="chunk", disable=not show) as bar:
            for c in todo:
                ids, keep = lanes_of(c)
                start, parts = time.perf_counter(), []
                for at in calls[c]:
                    sub, sub_keep = ids[at:at + width], keep[at:at + width]
                    lane_hyper = (None if hyper is None else
                                  {k: v[np.minimum(sub, n_seeds - 1)] for k, v in hyper.items()})
                    if epoch_progress is not None:
                        epoch_progress.start_chunk(c, int(sub_keep.sum()))
                    out = jax.block_until_ready(call(sub, lane_hyper))
                    if epoch_progress is not None:
                        epoch_progress.end_chunk()
                    parts.append(jax.tree_util.tree_map(lambda a: a[sub_keep], to_host(out)))
                seconds = time.perf_counter() - start
                host = parts[0] if len(parts) == 1 else jax.tree_util.tree_map(lambda *a: np.concatenate(a), *parts)
                on_chunk(c, ids[keep], host)
                if images_per_seed:
                    bar.set_postfix(img_s=f"{images_per_seed * int(keep.sum()) / seconds:,.0f}")
                bar.update(1)

    finally:
        if epoch_progress is not None:
            epoch_progress.close()
