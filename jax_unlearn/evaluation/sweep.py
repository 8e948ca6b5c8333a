"""Evaluating a sweep run folder setting by setting (a part of :func:`jax_unlearn.evaluation.report.evaluate`).

A sweep (``run_population`` / ``jax-unlearn unlearn`` with list-valued hyper-parameters) holds
``n_settings · seeds_per_setting`` models; ``config.json['sweep']['lane_hyper']`` says which lane (= seed
id) ran which setting. Each setting is one population: it is scored against the retrained population
with the official metric (:func:`best_setting`), on its first ``m = min(
seeds_per_setting, N_retrained)`` seeds against the first ``m`` retrained models — the rule the plain
report uses for two populations of unequal size — so the best setting's row equals the report's
``competition`` section, which is computed for that setting.

The folders are checked before any model is evaluated (:func:`sweep_lanes`, :func:`check_reference`):
an inconsistent sweep record, a setting with fewer than two seeds, or a reference population that is
itself a sweep fail with a message that says what to rerun.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np
import pandas as pd

from jax_unlearn.metrics import small_n_note
from jax_unlearn.metrics.competition import final_score, forgetting_quality
from jax_unlearn.jobs.folders import RunFolder, RunFolderError
from jax_unlearn.jobs.sweep import setting_groups

MIN_SEEDS = 2  # the score compares two populations of at least two models each
ACCURACY_COLUMNS = ("retain_acc", "forget_acc", "validation_acc", "test_acc")


class SweepLanes(NamedTuple):
    """A sweep folder's validated lane record: ``lane_hyper`` name -> (L,) values, the settings."""

    lane_hyper: dict[str, np.ndarray]
    seeds_per_setting: int
    settings: list[tuple[dict[str, Any], np.ndarray]]  # (hyper-parameters, lane ids), grid order


def sweep_lanes(folder: RunFolder) -> SweepLanes | None:
    """The sweep record of ``folder`` (None for a plain run), checked against its ``n_seeds``.

    Raises :class:`RunFolderError` when the record is malformed: per-lane lists of another length than
    ``n_seeds``, or settings that do not each hold ``seeds_per_setting`` lanes.
    """
    config = folder.config
    sweep = config.get("sweep")
    if sweep is None:
        return None
    where = folder.path / "config.json"
    lane_hyper, per = sweep.get("lane_hyper"), sweep.get("seeds_per_setting")
    if not isinstance(lane_hyper, dict) or not lane_hyper or not isinstance(per, int) or per < 1:
        raise RunFolderError(f"{where}: malformed sweep record {sweep!r} (expected lane_hyper and "
                             f"seeds_per_setting >= 1)")
    n = config["n_seeds"]
    lengths = {k: (len(v) if isinstance(v, list) else None) for k, v in lane_hyper.items()}
    if any(length != n for length in lengths.values()):
        raise RunFolderError(f"{where}: the sweep record lists {lengths} lanes per hyper-parameter but the run "
                             f"holds n_seeds={n} models; the folder is inconsistent (was config.json edited?)")
    arrays = {k: np.asarray(v) for k, v in lane_hyper.items()}
    settings = setting_groups(arrays)
    sizes = sorted({len(idx) for _, idx in settings})
    if sizes != [per] or len(settings) * per != n:
        raise RunFolderError(f"{where}: settings hold {sizes} lanes each, the sweep record says "
                             f"seeds_per_setting={per}; the folder is inconsistent")
    return SweepLanes(arrays, per, settings)


def check_reference(lanes: SweepLanes | None, unlearned: RunFolder, retrained: RunFolder) -> None:
    """Refuse a reference the score cannot use: the unlearned folder itself, a sweep, < 2 models, or — for a
    sweep — settings with fewer than 2 seeds. Only reads the configs."""
    if Path(unlearned.path).resolve() == Path(retrained.path).resolve():
        raise ValueError(f"--retrained {retrained.path} is the unlearned run folder itself")
    config = retrained.config
    if config.get("sweep") is not None:
        raise ValueError(f"the reference {retrained.path} is itself a sweep ({sorted(config['sweep']['lane_hyper'])} "
                         f"swept); it must be one population (`jax-unlearn retrain` without list values)")
    if lanes is None:
        return
    if config["n_seeds"] < MIN_SEEDS:
        raise ValueError(f"the reference {retrained.path} holds {config['n_seeds']} model(s); scoring a sweep needs "
                         f">= {MIN_SEEDS} (rerun `jax-unlearn retrain` with --n-seeds >= {MIN_SEEDS})")
    if lanes.seeds_per_setting < MIN_SEEDS:
        raise ValueError(f"{unlearned.path} is a sweep with {lanes.seeds_per_setting} seed per setting; the "
                         f"official score compares populations of >= {MIN_SEEDS} models, so rerun it with "
                         f"--n-seeds >= {MIN_SEEDS} (seeds per setting) or evaluate without --retrained")


def _take(pop: Mapping[str, Any], lanes: np.ndarray) -> dict[str, Any]:
    """The :func:`~jax_unlearn.evaluation.report.population_outputs` of the given lanes only (MIA logits dropped)."""
    out = {k: v for k, v in pop.items() if k not in ("mia_logits",)}
    for k in ("seed", "forget_stat", *ACCURACY_COLUMNS):
        out[k] = np.asarray(pop[k])[lanes]
    return out


def _plain(v):
    """A JSON value: NumPy scalars as Python ones (full precision), nan as None."""
    v = v.item() if isinstance(v, np.generic) else v
    return None if isinstance(v, float) and math.isnan(v) else v


def score_sweep(lanes: SweepLanes, unlearned: Mapping[str, Any],
                retrained: Mapping[str, Any] | None) -> tuple[dict[str, Any], pd.DataFrame, dict | None]:
    """Per-setting accuracies and (with ``retrained``) the official score of every setting.

    Args: the folder's :class:`SweepLanes`; ``population_outputs`` of the sweep (seed i = lane i) and of
    the retrained reference (or None).

    Returns ``(section, table, best_population)``: the report's ``sweep`` section (names, seeds per
    setting, ``n_compared``, ``best``, ``settings`` as a list of rows); the table, one row per setting in
    grid order — the hyper-parameters, ``setting``, ``n_models`` (compared), the mean accuracies of those
    models, ``forgetting_quality``, ``score`` (the final score), ``best``; and the best setting's first
    ``n_compared`` models as population outputs (None without a reference), for the competition section.
    """
    n_lanes = len(next(iter(lanes.lane_hyper.values())))
    if not np.array_equal(unlearned["seed"], np.arange(n_lanes)):
        raise RunFolderError(f"{unlearned['path']} holds seeds {list(unlearned['seed'])[:8]}…; its sweep "
                             f"record lists {n_lanes} lanes 0..{n_lanes - 1}")
    m = lanes.seeds_per_setting if retrained is None else min(lanes.seeds_per_setting, len(retrained["seed"]))
    compared = [idx[:m] for _, idx in lanes.settings]
    rows = [{**hyper, "setting": s, "n_models": m,
             **{acc: float(np.mean(unlearned[acc][idx])) for acc in ACCURACY_COLUMNS}}
            for s, ((hyper, _), idx) in enumerate(zip(lanes.settings, compared))]
    table = pd.DataFrame(rows)
    names = list(lanes.lane_hyper)
    best_pop, best = None, None
    if retrained is None:
        table["forgetting_quality"] = table["score"] = np.nan
        table["best"] = False
    else:
        sel = np.concatenate(compared)
        best, scores = best_setting({k: v[sel] for k, v in lanes.lane_hyper.items()}, unlearned["forget_stat"][sel],
                                    retrained["forget_stat"][:m], unlearned["retain_acc"][sel],
                                    unlearned["test_acc"][sel], retrained["retain_acc"][:m],
                                    retrained["test_acc"][:m])
        table = table.merge(scores[[*names, "forgetting_quality", "score"]], on=names, how="left", validate="1:1")
        table["best"] = np.all([table[k] == best[k] for k in names], axis=0)
        best_pop = _take(unlearned, compared[int(table.loc[table["best"], "setting"].iloc[0])])
    table = table[[*names, "setting", "n_models", *ACCURACY_COLUMNS, "forgetting_quality", "score", "best"]]
    section = {"hyper": names, "n_settings": len(table), "seeds_per_setting": lanes.seeds_per_setting,
               "n_compared": m if retrained is not None else None, "best": best,
               "settings": [{k: _plain(v) for k, v in row.items()} for row in table.to_dict("records")]}
    if retrained is None:
        section["note"] = "no reference population: pass --retrained RUN_DIR to score the settings"
    elif small_n_note(m):  # every setting's F is scored at N = m
        section["note_small_n"] = small_n_note(m)
    return section, table, best_pop


def format_sweep(section: Mapping[str, Any]) -> list[str]:
    """The sweep section as text lines: one row per setting, the best marked with ``*``."""
    def num(x, fmt=".4f"):
        return "n/a" if x is None else format(x, fmt)

    names = section["hyper"]
    header = ["", *names, "N", "retain", "forget", "test", "F", "score"]
    table = [header]
    for row in section["settings"]:
        table.append(["*" if row["best"] else "", *(num(row[k], "g") for k in names), str(row["n_models"]),
                      *(num(row[a], ".3f") for a in ("retain_acc", "forget_acc", "test_acc")),
                      num(row["forgetting_quality"]), num(row["score"])])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["", f"sweep: {section['n_settings']} settings × {section['seeds_per_setting']} seeds"
             + ("" if section["n_compared"] is None else
                f", each setting's first {section['n_compared']} seeds scored against as many retrained models")]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    best = section.get("best")
    if best:
        lines.append("* best setting: " + ", ".join(f"{k}={best[k]:g}" for k in names)
                     + f" (final score {best['score']:.4f})")
    lines.extend(f"note: {section[k]}" for k in ("note", "note_small_n") if section.get(k))
    return lines


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
