"""``jax-unlearn leaderboard``: every method tuned on one budget and scored by the official metric, with CIs.

The protocol (docs/LEADERBOARD.md is its definition; a :class:`~jax_unlearn.leaderboard.presets.Preset`
sizes it)::

    1 original      the official recipe on retain ∪ forget (or a given model); seed 10_000
    2 references    retrained on retain only, three disjoint populations (seed stream 3000, one program,
                    ids split in blocks): the `retrain` row (N), scoring (N) and tuning (n_tuning)
    3 tuning        per method: settings drawn from its declared search space (methods/spaces.py), run as
                    lanes of one vmapped program per round, successive halving (the best 1/eta survive
                    with eta× the seeds), scored by the final score against the tuning set; the same
                    lane-epoch budget for every method (seed streams 1000 + round)
    4 scoring       the best setting with fresh seeds (stream 2000), N models, against the scoring set:
                    F, final score, accuracies, kit MIA, SVC-MIA, seconds per run (compile apart), the
                    fraction of one retrain's time (flagged over 20%)
    5 uncertainty   bootstrap 95% intervals of F and the final score, resampling both populations' models
    6 reference     rows `original` (no unlearning), `retrain` (the third population), `finetune (untuned)`

Folder layout (every run folder resumable; finished rounds and rows are read back, not recomputed)::

    DIR/config.json                  the study's config; another config in the same DIR is refused
    DIR/references/{original,retrained}/   run folders (+ timing.json)
    DIR/methods/<name>/round_<r>/    a tuning round's run folder, round_<r>.csv its scores
    DIR/methods/<name>/scoring/      the scored population; result.json its row
    DIR/tuning.csv, leaderboard.csv, LEADERBOARD.md, leaderboard.png   (jax_unlearn.leaderboard.report)
"""
from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import pandas as pd

from converters import atomic_write
from jax_unlearn.data.types import DataError, UnlearningData
from jax_unlearn.evaluation.report import check_data, competition, mia_per_model, population_outputs
from jax_unlearn.leaderboard.presets import REFERENCE_METHOD, Preset, get_preset
from jax_unlearn.leaderboard.stats import MIN_BOOTSTRAP_N, CompileClock, bootstrap
from jax_unlearn.methods import METHODS, build_method
from jax_unlearn.methods.registry import search_space
from jax_unlearn.metrics import small_n_note
from jax_unlearn.jobs.folders import RunFolder, RunFolderError, json_default, write_json
from jax_unlearn.evaluation.sweep import best_setting

SEEDS = {"original": 10_000, "retrained": 3000, "score": 2000, "untuned": 2001}
ROUND_SEED = 1000  # round r of every method's tuning: stream 1000 + r (disjoint from every scoring stream)
POOL = 256  # candidate settings drawn per method; round 0 takes as many as its share of the budget allows
MIA_MODELS = 16  # kit MIA / SVC-MIA: fitted per model, on the first min(N, 16) models of a population
SLOW = 0.20  # the competition rejected unlearning slower than ~20% of retraining
UNTUNED = "finetune (untuned)"


def resolve_methods(methods: str | Sequence[str] | None, preset: Preset) -> list[str]:
    """The method list: ``'all'`` (every registered method but ``retrain``), a comma list, or a sequence.
    Unknown names fail listing the valid ones; an empty list and ``retrain`` (a reference row) fail too."""
    valid = sorted(m for m in METHODS if m != REFERENCE_METHOD)
    if methods is None:
        methods = list(preset.methods) if preset.methods is not None else "all"
    if isinstance(methods, str):
        methods = valid if methods == "all" else [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ValueError("--methods: the method list is empty; give 'all' or names from: " + ", ".join(valid))
    if REFERENCE_METHOD in methods:
        raise ValueError("--methods: 'retrain' is the reference row (always scored), not a method to tune")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown method(s) {unknown}; valid: {', '.join(valid)}")
    return methods


def round_zero(name: str, ctx, preset: Preset, seed: int = 0) -> tuple[dict[str, list], int]:
    """Round 0's settings for ``name`` (drawn from its space with Generator([seed, crc32(name)])) and the
    method's engine epochs when ``epochs`` is not tuned. Settings are taken in draw order while their
    lane-epochs fit ``budget / rounds``; fewer than two raise (the budget is too small for this method)."""
    space = search_space(name)
    pool = space.sample(POOL, np.random.default_rng([seed, zlib.crc32(name.encode())]))
    default_epochs = build_method(name, ctx).num_epochs
    epochs = pool.get("epochs", [default_epochs] * POOL)
    share, used, k = preset.budget / preset.rounds, 0, 0
    while k < POOL and used + preset.seeds0 * epochs[k] <= share:
        used, k = used + preset.seeds0 * epochs[k], k + 1
    if k < 2:
        raise ValueError(f"budget {preset.budget} lane-epochs over {preset.rounds} round(s) fits {k} setting(s) of "
                         f"{name} ({preset.seeds0} seeds × {epochs[0]} epochs each); tuning needs >= 2 — raise it")
    return {n: v[:k] for n, v in pool.items()}, default_epochs


def check_references(references: Mapping[str, str | os.PathLike], data: UnlearningData, sizes: Mapping[str, int]):
    """Given reference run folders (role -> path) must be finished ``retrain`` populations of this data with
    enough models; a folder from another data split fails naming it (before any model runs)."""
    for role, path in references.items():
        if role not in sizes:
            raise ValueError(f"unknown reference role {role!r}; valid: {', '.join(sizes)}")
        folder = RunFolder(path)
        config = folder.config
        if config.get("method") != REFERENCE_METHOD or config.get("sweep"):
            raise ValueError(f"reference {role}={path} holds a {config.get('method')!r} run; it must be one "
                             f"`jax-unlearn retrain` population")
        try:
            check_data(folder, data)
        except DataError as e:
            raise DataError(f"reference {role}={path} is from another data split: {e}") from None
        if config["n_seeds"] < sizes[role] or folder.missing_chunks():
            raise ValueError(f"reference {role}={path} holds {config['n_seeds']} models"
                             f"{' (unfinished)' if folder.missing_chunks() else ''}; this study needs {sizes[role]}")


def _timed_population(out: Path, *args, **kw) -> tuple[RunFolder, dict[str, float] | None]:
    """:func:`run_population` timed with compile apart: ``{'seconds_per_model', 'compile_s', 'models'}`` over
    the models this call trained (None when the folder was already finished: its recorded timing stands)."""
    from jax_unlearn.jobs.populations import run_population

    done = 0
    if (out / "config.json").is_file():
        f = RunFolder(out)
        k = f.config["chunk_size"]
        done = sum(min(k, f.config["n_seeds"] - c * k) for c in f.chunks() if f.chunk_done(c))
    with CompileClock() as clock:
        folder = run_population(out, *args, progress=False, **kw)
    trained = folder.config["n_seeds"] - done
    if trained <= 0:
        return folder, None
    return folder, {"seconds_per_model": clock.run / trained, "compile_s": clock.compile, "models": trained}


def _timing(folder: Path, fresh: dict | None) -> dict | None:
    path = folder / "timing.json"
    if fresh is not None and not path.is_file():
        write_json(path, fresh)
    return json.loads(path.read_text()) if path.is_file() else fresh


def _outputs(folder: Path, data, mia_models: int) -> dict[str, Any]:
    """:func:`population_outputs` of one of the study's own finished run folders, kept in ``outputs.npz``
    beside it so a rerun evaluates nothing again (the study's config pins the data digests)."""
    cache = folder / "outputs.npz"
    if cache.is_file():
        with np.load(cache) as z:
            pop = {k: z[k] for k in z.files if not k.startswith("mia_")}
            pop["mia_logits"] = {k[4:]: z[k] for k in z.files if k.startswith("mia_")}
        return {**pop, "method": str(pop["method"]), "path": str(pop["path"])}
    pop = population_outputs(folder, data, mia_models=mia_models, progress=False)
    arrays = {k: v for k, v in pop.items() if k != "mia_logits"}
    arrays.update({f"mia_{k}": v for k, v in pop["mia_logits"].items()})

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(cache, write)
    return pop


def _block(pop: Mapping[str, Any], at: int, n: int) -> dict[str, Any]:
    """Models ``at … at + n − 1`` of a population (MIA logits only where the block starts at model 0)."""
    out = {k: (v[at:at + n] if isinstance(v, np.ndarray) else v) for k, v in pop.items() if k != "mia_logits"}
    out["mia_logits"] = pop["mia_logits"] if at == 0 else {}
    return out


def _original_population(out: Path, data, model, variables, n: int) -> dict[str, Any]:
    """The original model as a one-model run folder, its outputs repeated to ``n`` models (it has no seed)."""
    from jax_unlearn.models import architecture, lowering_of

    folder = RunFolder(out)
    if not (out / "chunks").exists():
        config = {"method": "original", "n_seeds": 1, "chunk_size": 1, "num_classes": data.num_classes,
                  "stem": "imagenet", "dtype": "float32", "conv": lowering_of(model), "data": dict(data.description)}
        if architecture(model) is not None:
            config["arch"] = architecture(model)
        folder.start(config, {**data.description, "sizes": data.sizes(), "digests": data.digests()})
        stacked = jax.tree_util.tree_map(lambda a: np.asarray(a)[None], variables)
        folder.save_chunk(0, np.zeros(1), {"variables": stacked, "metrics": {"finite": np.ones((1, 1), bool)}})
    pop = _outputs(out, data, 1)
    mia = {"mia_logits": {k: np.repeat(v, min(n, MIA_MODELS), 0) for k, v in pop["mia_logits"].items()}}
    rep = {k: np.repeat(pop[k], n, 0) for k in ("forget_stat", "retain_acc", "forget_acc", "validation_acc",
                                                  "test_acc")}
    return {**pop, **rep, **mia, "seed": np.arange(n)}


def score_row(name: str, pop: Mapping[str, Any], ref: Mapping[str, Any], data, preset: Preset,
              timing: Mapping[str, float] | None, retrain_seconds: float | None, extra: Mapping | None = None):
    """One leaderboard row: the population ``pop`` scored against the scoring set ``ref`` (first N each)."""
    n = preset.n
    comp, _ = competition({k: (v[:n] if isinstance(v, np.ndarray) else v) for k, v in pop.items()}, ref)
    ci = bootstrap(pop, ref, n, preset.bootstrap, seed=zlib.crc32(name.encode()))
    mia = mia_per_model(pop, data)
    row = {"method": name, "n": n, "forgetting_quality": comp["forgetting_quality"], "final_score": comp["final_score"],
           "f_lo": ci["f_lo"], "f_hi": ci["f_hi"], "score_lo": ci["score_lo"], "score_hi": ci["score_hi"],
           "bootstrap_B": ci["B"], "bootstrap_s": ci["seconds"],
           **{acc: float(np.mean(pop[acc][:n])) for acc in ("retain_acc", "forget_acc", "test_acc")},
           "kit_mia": float(np.mean(mia["kit_mia"])) if len(mia["kit_mia"]) else None,
           "svc_mia": float(np.mean(mia["svc_mia"])) if len(mia["svc_mia"]) else None,
           "seconds_per_run": None if timing is None else timing["seconds_per_model"],
           "compile_s": None if timing is None else timing["compile_s"], "note_small_n": small_n_note(n)}
    row["fraction_of_retrain"] = (None if timing is None or not retrain_seconds
                                  else timing["seconds_per_model"] / retrain_seconds)
    fraction = row["fraction_of_retrain"]
    row["slow"] = bool(name != "retrain" and fraction is not None and fraction > SLOW)  # retrain: 1 by definition
    return {**row, **(extra or {})}


def tune(name: str, out: Path, data, original, ref_tuning: Mapping[str, Any], preset: Preset, ctx, model,
         log: Callable) -> tuple[dict[str, Any], pd.DataFrame, int]:
    """Successive halving for ``name``; returns ``(best setting, every setting tried, lane-epochs used)``."""
    settings, default_epochs = round_zero(name, ctx, preset)
    seeds, tables, used = preset.seeds0, [], 0
    for r in range(preset.rounds):
        csv = out / f"round_{r}.csv"
        epochs = settings.get("epochs", [default_epochs] * len(next(iter(settings.values()))))
        used += seeds * int(np.sum(epochs))
        if csv.is_file():
            table = pd.read_csv(csv)
        else:
            log(f"[leaderboard] {name}: round {r}, {len(epochs)} settings × {seeds} seeds")
            from jax_unlearn.jobs.populations import run_population

            folder = run_population(out / f"round_{r}", name, data, start_variables=original, n_seeds=seeds,
                                    base_seed=ROUND_SEED + r, settings=settings, model=model, progress=False,
                                    chunk_size=preset.chunk_size)
            lanes = {k: np.asarray(v) for k, v in folder.config["sweep"]["lane_hyper"].items()}
            u = population_outputs(folder, data, mia_models=0, progress=False)
            _, table = best_setting(lanes, u["forget_stat"], ref_tuning["forget_stat"], u["retain_acc"],
                                    u["test_acc"], ref_tuning["retain_acc"], ref_tuning["test_acc"])
            table.insert(0, "round", r)
            table.insert(1, "seeds", seeds)
            atomic_write(csv, lambda tmp: table.to_csv(tmp, index=False))
        tables.append(table)
        keep = max(1, math.ceil(len(table) / preset.eta))
        settings = {k: table[k].tolist()[:keep] for k in settings}
        seeds *= preset.eta
    best = {k: v.item() if hasattr(v, "item") else v for k, v in tables[-1].iloc[0][list(settings)].items()}
    if "epochs" in best:
        best["epochs"] = int(best["epochs"])
    every = pd.concat(tables, ignore_index=True)
    every.insert(0, "method", name)
    return best, every, used


def leaderboard(out: str | os.PathLike, data: UnlearningData, *, preset: str | Preset = "ci",
                methods: str | Sequence[str] | None = None, original=None,
                references: Mapping[str, str | os.PathLike] | None = None, model=None, command: str = "",
                log: Callable[[str], Any] = print) -> pd.DataFrame:
    """Run the whole study into ``out`` (see the module docstring); return the table, best first.

    ``original``: start variables (None: trained here). ``references``: existing ``retrain`` run folders
    for the roles ``tuning``/``scoring``/``retrain`` (checked: same data, enough models). ``model``
    overrides the preset's architecture (tests). Every bad input fails before any model runs.
    """
    from jax_unlearn.engine.run import context_for
    from jax_unlearn.leaderboard.report import write_outputs
    from jax_unlearn.models import architecture, make_model

    preset = get_preset(preset) if isinstance(preset, str) else preset
    names = resolve_methods(methods, preset)
    if preset.n < MIN_BOOTSTRAP_N:
        raise ValueError(f"N = {preset.n} is too small for the bootstrap (needs >= {MIN_BOOTSTRAP_N} per population)")
    model = model if model is not None else make_model(data.num_classes, arch=preset.arch)
    ctx = context_for(data, model)
    for name in names:  # the spaces and the budget, before any model runs
        round_zero(name, ctx, preset)
    sizes = {"retrain": preset.n, "scoring": preset.n, "tuning": preset.n_tuning}
    check_references(dict(references or {}), data, sizes)
    out = Path(out)
    config = json.loads(json.dumps({"preset": preset.describe(), "methods": names, "arch": architecture(model),
                                    "data": {**data.description, "sizes": data.sizes(), "digests": data.digests()},
                                    "original": "given" if original is not None else "trained",
                                    "references": {k: str(v) for k, v in (references or {}).items()}},
                                   default=json_default))
    if (out / "config.json").is_file() and json.loads((out / "config.json").read_text()) != config:
        old = json.loads((out / "config.json").read_text())
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        raise RunFolderError(f"{out} holds another leaderboard (config differs in {diff}); use a new --out")
    write_json(out / "config.json", config)
    refs = out / "references"

    if original is None and not (refs / "original" / "chunks").exists():
        from jax_unlearn.jobs.populations import train_original

        log("[leaderboard] training the original model")
        original, _ = train_original(data, seed=SEEDS["original"], model=model, progress=False,
                                     **{**preset.recipe, "epochs": preset.original_epochs})
    elif original is None:
        original = jax.tree_util.tree_map(lambda a: a[0], RunFolder(refs / "original").load_chunk(0)["variables"])
    pops = {"original": _original_population(refs / "original", data, model, original, preset.n)}
    timing, given = {}, dict(references or {})
    missing = [role for role in sizes if role not in given]  # ordered retrain, scoring, tuning
    if missing:  # one retrain program for every role not given: disjoint blocks of seed ids
        total = sum(sizes[role] for role in missing)
        log(f"[leaderboard] retraining (or resuming) {total} models ({', '.join(f'{r} {sizes[r]}' for r in missing)})")
        _, fresh = _timed_population(refs / "retrained", REFERENCE_METHOD, data, n_seeds=total,
                                     base_seed=SEEDS["retrained"], hyper=preset.recipe, model=model,
                                     chunk_size=preset.chunk_size)
        timing["retrain"] = _timing(refs / "retrained", fresh)
        whole, at = _outputs(refs / "retrained", data, MIA_MODELS), 0
        for role in missing:
            pops[role] = _block(whole, at, sizes[role])
            at += sizes[role]
    for role, path in given.items():
        pops[role] = _block(population_outputs(path, data, mia_models=MIA_MODELS, progress=False), 0, sizes[role])
    retrain_s = timing["retrain"]["seconds_per_model"] if timing.get("retrain") else None

    rows, tried = [], []
    ref = pops["scoring"]
    for name, t in (("original", None), ("retrain", timing.get("retrain"))):  # rows kept like the methods'
        path = refs / f"{name}_row.json"
        if not path.is_file():
            write_json(path, score_row(name, pops[name], ref, data, preset, t, retrain_s, {"kind": "reference"}))
        rows.append(json.loads(path.read_text()))
    jobs = [(UNTUNED, "finetune", None), *((n, n, "tune") for n in names)]
    for label, name, how in jobs:
        folder = out / "methods" / (name if how else "finetune-untuned")
        result = folder / "result.json"
        if result.is_file():
            row = json.loads(result.read_text())
        else:
            best, used = {}, 0
            if how:
                best, every, used = tune(name, folder, data, original, pops["tuning"], preset, ctx, model, log)
                atomic_write(folder / "tuning.csv", lambda tmp: every.to_csv(tmp, index=False))
            log(f"[leaderboard] {label}: scoring {preset.n} fresh seeds" + (f" at {best}" if best else ""))
            scored, fresh = _timed_population(folder / "scoring", name, data, start_variables=original,
                                              n_seeds=preset.n, base_seed=SEEDS["score" if how else "untuned"],
                                              hyper=best, model=model, chunk_size=preset.chunk_size)
            pop = _outputs(scored.path, data, MIA_MODELS)
            row = score_row(label, pop, ref, data, preset, _timing(folder / "scoring", fresh), retrain_s,
                            {"kind": "method" if how else "reference", "setting": json.dumps(best),
                             "tuning_lane_epochs": used})
            write_json(result, row)
        if how:
            tried.append(pd.read_csv(folder / "tuning.csv"))
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("final_score", ascending=False, kind="stable").reset_index(drop=True)
    write_outputs(out, table, pd.concat(tried, ignore_index=True) if tried else pd.DataFrame(), preset, data,
                  config, command, {role: t for role, t in timing.items() if t})
    return table
