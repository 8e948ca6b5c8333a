"""Hyper-parameter sweeps as lanes of one vmapped program, and picking the best setting by the official score.

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
import pandas as pd

from jax_unlearn.metrics.competition import final_score, forgetting_quality


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
    from jax_unlearn.methods.base import build_method

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


def best_setting(per_lane_hyper: Mapping[str, np.ndarray], forget_stats_u, forget_stats_r, retain_acc_u,
                 test_acc_u, retain_acc_r, test_acc_r) -> tuple[dict[str, Any], pd.DataFrame]:
    """Score every setting of a sweep against the retrained population; return the best and the table.

    Args:
      per_lane_hyper: name -> (L,) values per lane (e.g. ``SweepPlan.lane_hyper``); lanes with equal
        values form one setting's population.
      forget_stats_u: (L, S) ``logit_scaled_confidence`` of the S forget examples under each lane's model.
      forget_stats_r: (N_r, S) the same under the retrained models.
      retain_acc_u, test_acc_u: (L,) per-lane accuracies; retain_acc_r, test_acc_r: (N_r,).

    Each setting with n lanes is compared with the first ``m = min(n, N_r)`` retrained models (the score
    needs two populations of equal size, m >= 2): ``F = forgetting_quality(u[:m], r[:m])`` and
    ``score = final_score(F, RA_U, RA_R, TA_U, TA_R)`` with all of the setting's lanes for RA_U / TA_U
    and all retrained models for RA_R / TA_R. The table (one row per setting, best first) has the
    hyper-parameters, ``n_models``, ``forgetting_quality``, ``retain_acc``, ``test_acc`` and ``score``;
    the best setting is returned as a dict of its hyper-parameters plus ``score``.

    Reference: google-deepmind/unlearning_evaluation ``main.py`` (the score is per method; here each
    setting is one "method").
    """
    u = np.asarray(forget_stats_u, np.float64)
    r = np.asarray(forget_stats_r, np.float64)
    ra_u, ta_u = np.asarray(retain_acc_u, np.float64), np.asarray(test_acc_u, np.float64)
    if u.ndim != 2 or ra_u.shape != (u.shape[0],) or ta_u.shape != (u.shape[0],):
        raise ValueError(f"forget_stats_u must be (L, S) and accuracies (L,), got {u.shape}, {ra_u.shape}, "
                         f"{ta_u.shape}")
    rows = []
    for setting, idx in setting_groups(per_lane_hyper):
        if idx.max() >= u.shape[0]:
            raise ValueError(f"per_lane_hyper has {len(per_lane_hyper[next(iter(per_lane_hyper))])} lanes, "
                             f"forget_stats_u {u.shape[0]}")
        m = min(len(idx), r.shape[0])
        if m < 2:
            raise ValueError(f"setting {setting} has {len(idx)} lane(s) against {r.shape[0]} retrained models; "
                             f"the score needs at least 2 of each")
        f = forgetting_quality(u[idx[:m]], r[:m])
        rows.append({**setting, "n_models": len(idx), "forgetting_quality": f,
                     "retain_acc": float(ra_u[idx].mean()), "test_acc": float(ta_u[idx].mean()),
                     "score": final_score(f, ra_u[idx], retain_acc_r, ta_u[idx], test_acc_r)})
    table = pd.DataFrame(rows).sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    best = {k: table.loc[0, k] for k in per_lane_hyper}
    best = {k: v.item() if hasattr(v, "item") else v for k, v in best.items()}
    return {**best, "score": float(table.loc[0, "score"])}, table
