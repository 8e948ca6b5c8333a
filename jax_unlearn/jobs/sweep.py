"""Hyper-parameter sweeps as lanes of one vmapped program (picking the best setting by the official score:
:func:`jax_unlearn.evaluation.sweep.best_setting`).

Any numeric hyper-parameter may be given as a list; the Cartesian product of the lists is the set of
*settings*, each run with ``seeds_per_setting`` seeds. Every (setting, seed) pair is one lane of the
engine's ``jax.vmap`` (:func:`jax_unlearn.engine.run.run_seeds` with ``hyper=``), so the whole sweep is one
compilation::

    plan = plan_sweep("finetune", ctx, {"lr": [1e-3, 1e-2], "epochs": [1, 2], "batch_size": 64}, 8)
    run = make_run(ctx, plan.build, RunConfig())
    run_seeds(run, plan.n_lanes, 0, original, data, chunk_size=..., on_chunk=..., hyper=plan.lane_hyper)
    # evaluate the lanes, then:
    best, table = best_setting(plan.lane_hyper, forget_stat_u, forget_stat_r, ra_u, ta_u, ra_r, ta_r)

Float hyper-parameters become traced per-lane scalars inside the method (``make_run``'s ``build``
closure). ``epochs`` becomes a per-lane step mask on a program of ``max(epochs)`` epochs. Structural
hyper-parameters (batch size, optimiser name, recipe) must be single values: they shape the program.

Seeds: lane ``i`` is seed id ``i`` (setting ``i // seeds_per_setting``), so every lane of the sweep has its
own seed and a setting's lanes equal a plain run of that setting with those seed ids.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import numpy as np


def expand_grid(**lists) -> dict[str, np.ndarray]:
    """The Cartesian product of the given lists: ``name -> (n_settings,)`` array, one entry per setting.

    Settings are in ``itertools.product`` order (the last name varies fastest). Integers stay integers
    (int32), everything else is float32 (what a traced per-lane scalar is on device).
    """
    if not lists:
        raise ValueError("expand_grid needs at least one list")
    for name, values in lists.items():
        if np.ndim(values) != 1 or len(values) == 0:
            raise ValueError(f"{name}: expected a non-empty list of numbers, got {values!r}")
    names = list(lists)
    rows = list(itertools.product(*(lists[n] for n in names)))
    out = {}
    for j, name in enumerate(names):
        column = np.asarray([r[j] for r in rows])
        if not np.issubdtype(column.dtype, np.number) or np.issubdtype(column.dtype, np.bool_):
            raise ValueError(f"{name}: only numeric hyper-parameters can be swept, got {lists[name]!r}")
        out[name] = column.astype(np.int32 if np.issubdtype(column.dtype, np.integer) else np.float32)
    return out


def repeat_settings(grid: Mapping[str, np.ndarray], seeds_per_setting: int) -> dict[str, np.ndarray]:
    """Per-lane arrays: setting ``s`` occupies lanes ``s·N … (s+1)·N − 1`` (N = ``seeds_per_setting``)."""
    if seeds_per_setting < 1:
        raise ValueError(f"seeds_per_setting must be >= 1, got {seeds_per_setting}")
    return {k: np.repeat(np.asarray(v), seeds_per_setting) for k, v in grid.items()}


def split_hyper(hyper: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list]]:
    """``(static, swept)``: list/tuple/1-D array values are swept, everything else is a single value."""
    static, swept = {}, {}
    for k, v in hyper.items():
        if isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.ndim == 1):
            swept[k] = list(v)
        else:
            static[k] = v
    return static, swept


def lane_builder(name: str, ctx, swept: Iterable[str], static: Mapping[str, Any] | None = None, *,
                 max_epochs: int | None = None, lane_schedule: bool = True) -> Callable:
    """``build(hyper) -> Method`` for :func:`jax_unlearn.engine.run.make_run`: the registered method
    ``name`` with ``static`` values and the lane's traced values of the ``swept`` names.

    ``epochs`` (when swept) needs ``max_epochs``, the scan length of the shared program; the engine masks
    a lane's epochs past its own. With ``lane_schedule=True`` the factory also receives the lane's epochs
    (a traced int), so a schedule that depends on the total — cosine annealing with ``T_max = epochs`` —
    follows the lane and the lane equals a true k-epoch run; the factory must then use ``epochs`` only in
    arithmetic (the recipes in :mod:`jax_unlearn.methods.finetune` do). With ``lane_schedule=False`` the
    factory gets ``max_epochs`` and a lane is the first k epochs of the ``max_epochs`` run (use it for a
    factory that needs ``epochs`` as a Python int).
    """
    from jax_unlearn.methods.registry import build_method

    swept, static = tuple(swept), dict(static or {})
    if "epochs" in swept and (max_epochs is None or int(max_epochs) != max_epochs or max_epochs < 1):
        raise ValueError(f"sweeping epochs needs max_epochs (a positive int), got {max_epochs!r}")
    clash = sorted(set(swept) & set(static))
    if clash:
        raise ValueError(f"{clash} given both as single values and swept")

    def build(hyper):
        missing = sorted(set(swept) - set(hyper))
        if missing:
            raise ValueError(f"lane hyper lacks swept hyper-parameter(s) {missing}")
        kw = {**static, **{k: hyper[k] for k in swept}}
        if "epochs" not in swept:
            return build_method(name, ctx, **kw)
        if not lane_schedule:
            kw["epochs"] = int(max_epochs)
        return build_method(name, ctx, **kw)._replace(num_epochs=int(max_epochs))

    return build


class SweepPlan(NamedTuple):
    """What a sweep run needs: the ``build`` closure, per-lane arrays, lane count, and the settings."""

    build: Callable
    lane_hyper: dict[str, np.ndarray]  # name -> (n_lanes,)
    n_lanes: int
    settings: dict[str, np.ndarray]  # name -> (n_settings,)


def plan_sweep(name: str, ctx, hyper: Mapping[str, Any], seeds_per_setting: int, *,
               lane_schedule: bool = True) -> SweepPlan:
    """Plan a sweep of method ``name``: list values in ``hyper`` are swept (:func:`split_hyper`), the rest
    fixed; ``seeds_per_setting`` lanes per setting. Raises if nothing is swept."""
    static, swept = split_hyper(hyper)
    if not swept:
        raise ValueError("no hyper-parameter is a list: nothing to sweep")
    return plan_settings(name, ctx, expand_grid(**swept), static, seeds_per_setting, lane_schedule=lane_schedule)


def plan_settings(name: str, ctx, settings: Mapping[str, Any], static: Mapping[str, Any], seeds_per_setting: int,
                  *, lane_schedule: bool = True) -> SweepPlan:
    """Plan a sweep over explicit settings: entry ``j`` of every list is setting ``j`` (zipped, not a product
    — e.g. the survivors of a successive-halving round); ``static`` holds the single values."""
    lengths = {k: np.ndim(v) == 1 and len(v) for k, v in settings.items()}
    if not settings or len(set(lengths.values())) != 1 or not all(lengths.values()):
        raise ValueError(f"settings must be non-empty lists of one length, got lengths {lengths}")
    settings = {k: np.asarray(v, np.int32 if np.issubdtype(np.asarray(v).dtype, np.integer) else np.float32)
                for k, v in settings.items()}
    max_epochs = int(settings["epochs"].max()) if "epochs" in settings else None
    if "epochs" in settings and settings["epochs"].min() < 1:
        raise ValueError(f"epochs must be >= 1, got {settings['epochs'].tolist()}")
    build = lane_builder(name, ctx, settings, static, max_epochs=max_epochs, lane_schedule=lane_schedule)
    lane_hyper = repeat_settings(settings, seeds_per_setting)
    return SweepPlan(build, lane_hyper, len(next(iter(settings.values()))) * seeds_per_setting, settings)


def setting_groups(per_lane_hyper: Mapping[str, np.ndarray]) -> list[tuple[dict[str, Any], np.ndarray]]:
    """``[(setting, lane indices)]``: lanes with equal values of every name form one setting, listed in order
    of first appearance (for a sweep run folder: grid order, ``seeds_per_setting`` lanes each)."""
    names = list(per_lane_hyper)
    columns = [np.asarray(per_lane_hyper[n]) for n in names]
    n = len(columns[0])
    if any(c.shape != (n,) for c in columns):
        raise ValueError("per-lane hyper-parameters must all be 1-D of the same length")
    order: dict[tuple, list[int]] = {}
    for i in range(n):
        order.setdefault(tuple(c[i].item() for c in columns), []).append(i)
    return [(dict(zip(names, key)), np.asarray(idx)) for key, idx in order.items()]
