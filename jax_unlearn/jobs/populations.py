"""Population jobs: N seeds of a method (or of a training recipe) into a run folder, resumable.

This is the Python API the CLI calls; it is also what a notebook uses::

    data = load_dataset("fashion-mnist", max_train=5000)
    folder = run_population("runs/finetune", "finetune", data, start_variables=original, n_seeds=512)
    export_pth(folder, "submission")
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jax_unlearn.data.types import UnlearningData
from jax_unlearn.engine.progress import EpochProgress
from jax_unlearn.engine.jitting import jit
from jax_unlearn.engine.lanes import default_chunk_size
from jax_unlearn.engine.run import RunConfig, context_for, device_data, make_run, run_seeds
from jax_unlearn.engine.hosts import is_primary, primary_answer, sync_processes
from jax_unlearn.methods.hyper import check_hyper, check_seeds
from jax_unlearn.methods import build_method, get_method
from jax_unlearn.methods.finetune import original
from jax_unlearn.models import architecture, lowering_of, make_model
from jax_unlearn.jobs.folders import NonFiniteError, RunFolder
from jax_unlearn.jobs.sweep import plan_settings, plan_sweep, split_hyper


def run_population(out: str | os.PathLike, method: str, data: UnlearningData, *, start_variables=None,
                   n_seeds: int = 8, base_seed: int = 0, chunk_size: int | None = None,
                   hyper: Mapping[str, Any] | None = None, run_config: RunConfig = RunConfig(),
                   class_counts=None, stem: str = "imagenet", dtype: str = "float32",
                   extra_config: Mapping[str, Any] | None = None, progress: bool | None = None,
                   model=None, conv: str = "auto", settings: Mapping[str, Any] | None = None) -> RunFolder:
    """Run ``n_seeds`` seeds of ``method`` from ``start_variables`` into the run folder ``out``.

    Seed ``i`` uses key ``fold_in(key(base_seed), i)``. A folder holding the same config resumes (finished
    chunks are kept); one holding another config is refused. ``start_variables`` may be None only for
    methods that train from scratch (``retrain``). ``conv`` is the convolution lowering
    (:func:`jax_unlearn.models.make_model`; ``'auto'``: the fastest measured on this platform), recorded
    resolved as ``config.json["conv"]``. ``model`` overrides the ResNet-18 (tests use tiny ones).

    Sweeps: list-valued ``hyper`` entries (e.g. ``{'lr': [1e-3, 1e-2]}``) run every setting of their grid
    with ``n_seeds`` lanes each in one vmapped program (:mod:`jax_unlearn.jobs.sweep`); the folder then holds
    ``n_settings * n_seeds`` models and ``config.json['sweep']['lane_hyper']`` says which lane ran what.

    ``progress``: per-epoch progress reported from inside the compiled program (epochs done, img/s over the
    retain set, ETA; :class:`~jax_unlearn.engine.progress.EpochProgress`) — a tqdm bar when stderr is a
    terminal, else one line per epoch (None); a bar (True); none, and no hook in the program (False).

    ``settings``: explicit settings instead of a grid, name -> list with entry ``j`` of every list setting
    ``j`` (:func:`jax_unlearn.jobs.sweep.plan_settings`; the leaderboard's successive-halving rounds).
    """
    info = get_method(method)
    if settings is not None:  # zipped settings: checked like a sweep's lists, planned without a product
        settings = check_hyper(method, info.defaults, {k: list(v) for k, v in settings.items()})
    hyper = check_hyper(method, info.defaults, dict(hyper or {}))  # before anything is built or written
    if n_seeds < 1:
        raise ValueError(f"n_seeds must be >= 1, got {n_seeds}")
    check_seeds(base_seed, n_seeds)
    model = model if model is not None else make_model(data.num_classes, stem, dtype, conv)
    ctx = context_for(data, model, class_counts)
    plan = plan_sweep(method, ctx, hyper, n_seeds) if split_hyper(hyper)[1] else None
    if settings is not None:
        if plan is not None:
            raise ValueError("give either list-valued hyper-parameters or settings, not both")
        plan = plan_settings(method, ctx, settings, hyper, n_seeds)
    if plan is not None:  # list-valued hyper-parameters: n_seeds lanes per setting, one program
        seeds_per_setting, n_seeds = n_seeds, plan.n_lanes
        m = plan.build({k: v[0] for k, v in plan.lane_hyper.items()})
    else:
        m = build_method(method, ctx, **hyper)
    chunk_size = min(chunk_size or default_chunk_size(n_seeds), n_seeds)
    if start_variables is None:
        if method != "retrain":
            raise ValueError(f"method {method!r} needs start variables (the original model)")
        from jax_unlearn.models import init_variables

        start_variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
        start_variables = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), start_variables)
    config = {"method": method, "hyper": {**info.defaults, **hyper}, "n_seeds": n_seeds, "base_seed": base_seed,
              "chunk_size": chunk_size, "track": run_config.track, "track_max": run_config.track_max,
              "snapshot_every": run_config.snapshot_every, "num_classes": data.num_classes, "stem": stem,
              "dtype": dtype, "conv": lowering_of(model), "data": dict(data.description), **(extra_config or {})}
    if architecture(model) is not None:  # a smaller ResNet (tests): evaluation rebuilds it from this
        config["arch"] = architecture(model)
    if plan is not None:
        config["sweep"] = {"seeds_per_setting": seeds_per_setting,
                           "lane_hyper": {k: v.tolist() for k, v in plan.lane_hyper.items()}}
    # Multi-process jobs (init_distributed; the folder on a file system all hosts share, as orbax needs):
    # process 0 writes config, data description and metrics.csv; every process takes part in orbax's
    # (collective) chunk saves and restores, and all follow process 0's resume plan.
    folder = RunFolder(out)
    if is_primary():
        folder.start(config, {**data.description, "sizes": data.sizes(), "digests": data.digests()})
    sync_processes(f"jax-unlearn start {folder.path}")
    # Per-epoch progress from inside the program (a bar on a terminal, else a line per epoch); off: no hook.
    reporter = None if progress is False else EpochProgress(method, m.num_epochs, ctx.size("retain"),
                                                            bar=progress)
    run = make_run(ctx, m if plan is None else plan.build, run_config, on_epoch=reporter)

    def save(c, ids, outputs):
        variables, metrics, *snaps = outputs
        folder.save_chunk(c, ids, {"variables": variables, "metrics": metrics,
                                   **({"snapshots": snaps[0]} if snaps else {})})

    run_seeds(run, n_seeds, base_seed, start_variables, device_data(data), chunk_size=chunk_size,
              on_chunk=save, done=primary_answer(folder.chunk_done),
              images_per_seed=ctx.size("retain") * m.num_epochs, progress=progress, desc=method,
              hyper=None if plan is None else plan.lane_hyper, epoch_progress=reporter)
    folder.check_finite(folder.write_metrics())  # NaN/inf in any lane: NonFiniteError naming seeds and epochs
    return folder


def train_original(data: UnlearningData, *, seed: int = 10_000, class_counts=None, stem: str = "imagenet",
                   dtype: str = "float32", model=None, conv: str = "auto", progress: bool | None = None,
                   **hyper):
    """One original model (retain ∪ forget) with the official recipe (``retrain`` defaults, overridable).

    Returns ``(variables, metrics)``. The seed is kept apart from the unlearning/retrain seeds. ``progress``
    as :func:`run_population`'s (None: a bar on a terminal, else a line per epoch; False: none).
    """
    model = model if model is not None else make_model(data.num_classes, stem, dtype, conv)
    ctx = context_for(data, model, class_counts)
    m = original(ctx, **{**get_method("retrain").defaults, **check_hyper("retrain", get_method("retrain").defaults,
                                                                       hyper)})
    reporter = None if progress is False else EpochProgress("original", m.num_epochs, ctx.size("train"),
                                                            bar=progress)
    run = jit(make_run(ctx, m, RunConfig(track=True), on_epoch=reporter))
    if reporter is not None:
        reporter.start(1)
        reporter.start_chunk(0, 1)
    try:
        variables, metrics = jax.block_until_ready(run(jax.random.key(seed), None, device_data(data)))
    finally:
        if reporter is not None:
            reporter.close()
    finite = np.asarray(metrics["finite"])
    if not finite.all():
        raise NonFiniteError(f"the original model diverged (NaN/inf loss or weights) from epoch "
                             f"{int(np.argmin(finite)) + 1}; nothing written — lower the learning rate")
    return jax.tree_util.tree_map(jax.numpy.asarray, variables), metrics
