"""Evaluate populations of models in run folders: accuracies, the competition score, MIAs, a report.

Two steps, so each can be used alone:

* :func:`population_outputs` runs every model of a run folder over the data, on device, one chunk at a
  time (``jax.jit(jax.vmap(...))`` over the chunk's stacked variables, one compilation for all chunks; on
  a CPU, where lanes run no faster than one model after another, one model a call, so every folder of a
  model shares one compilation),
  and returns per-model accuracies, the forget-set statistic the competition compares, and the logits
  the membership-inference attacks need (for the first ``mia_models`` models only, since each attack is
  fitted per model).
* :func:`evaluate` turns one unlearned population — and, optionally, a population retrained without the
  forget set (the reference) — into a report folder::

      evaluation/report.json        mean ± std per family, MIAs, forgetting quality F, final score, N
      evaluation/per_model.csv      one row per (family, seed)
      evaluation/per_example.csv    one row per forget example: ε and its points (with a reference)
      evaluation/sweep.csv          a sweep run: one row per setting, its score, the best marked
      evaluation/*.png              accuracy bars, ε histogram, a few examples' two distributions

  ``print(format_summary(report))`` shows it as a table.

Both populations are evaluated on the same :class:`UnlearningData`, which must be the data the runs used
(split sizes and contents are checked against each folder's ``data.json``; a mismatch, an incomplete or
a diverged run, or a reference that is not a ``retrain`` run is refused before any model runs). Reference:
google-deepmind/unlearning_evaluation (``main.py``) and :mod:`jax_unlearn.metrics`.
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from converters import atomic_write
from jax_unlearn.data.types import SPLITS, DataError, Normalization, UnlearningData
from jax_unlearn.evaluation.sweep import check_reference, format_sweep, score_sweep, sweep_lanes
from jax_unlearn.engine.run import lanes_run_in_parallel
from jax_unlearn.engine.train import Context, predict
from jax_unlearn.models import make_model
from jax_unlearn.metrics import (cross_entropy_per_example, final_score, kit_mia, logit_scaled_confidence,
                                 per_example_epsilon, score_from_epsilons, small_n_note, svc_mia_efficacy)
from jax_unlearn.metrics.summary import mean_std
from jax_unlearn.jobs.folders import NonFiniteError, RunFolder, RunFolderError, diverged_seeds, write_json

ACCURACIES = tuple(f"{split}_acc" for split in SPLITS)
MIA_SPLITS = ("retain", "test", "forget")
KIT_MIN_EXAMPLES = 6  # kit_mia's minimum per side


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

    return jax.jit(jax.vmap(one_model, in_axes=(0, None)))


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
    lanes = config["chunk_size"] if lanes_run_in_parallel() else 1
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


def mia_per_model(outputs: Mapping[str, Any], data: UnlearningData) -> dict[str, np.ndarray]:
    """Kit MIA and SVC-MIA efficacy of each model that kept MIA logits (the first K of ``outputs``).

    Returns ``{'kit_mia': (K,), 'svc_mia': (K,)}`` float64; an attack the data cannot support (fewer than
    6 forget or test examples for the kit MIA; an empty test set for either) gives an empty array.
    """
    logits = outputs["mia_logits"]
    k = len(logits["forget"])
    f_y, t_y, r_y = data.forget.labels, data.test.labels, data.retain.labels
    kit, svc = np.zeros(0), np.zeros(0)
    if "test" in logits and min(len(f_y), len(t_y)) >= KIT_MIN_EXAMPLES:
        kit = np.array([kit_mia(cross_entropy_per_example(logits["forget"][i], f_y),
                                cross_entropy_per_example(logits["test"][i], t_y)) for i in range(k)])
    if "test" in logits and "retain" in logits:
        n_shadow = logits["retain"].shape[1]
        svc = np.array([svc_mia_efficacy(logits["retain"][i], r_y[:n_shadow], logits["test"][i], t_y,
                                         logits["forget"][i], f_y) for i in range(k)])
    return {"kit_mia": kit, "svc_mia": svc}


def _number(x) -> float | None:
    """A JSON number: None for nan."""
    x = float(x)
    return None if math.isnan(x) else x


def _per_example_points(eps: np.ndarray, n: int) -> np.ndarray:
    """Each example's points (its ε's bin value); their mean is F."""
    return np.array([score_from_epsilons(eps[i:i + 1], n) for i in range(len(eps))])


def competition(unlearned: Mapping[str, Any], retrained: Mapping[str, Any]) -> tuple[dict, np.ndarray | None]:
    """The competition's F and final score from two :func:`population_outputs` (first ``min(N)`` of each).

    Returns ``(summary, eps)``: the report's ``competition`` section and the per-example ε (None when the
    populations are too small to compare).
    """
    n_u, n_r = len(unlearned["seed"]), len(retrained["seed"])
    n = min(n_u, n_r)
    out: dict[str, Any] = {"n": n, "n_unlearned": n_u, "n_retrained": n_r, "truncated": n_u != n_r}
    if n_u != n_r:
        out["note"] = (f"populations differ in size ({n_u} unlearned, {n_r} retrained): the first {n} seeds "
                       f"of each are compared")
    if n < 2:
        out.update(forgetting_quality=None, final_score=None, note="needs >= 2 models in each population")
        return out, None
    eps = per_example_epsilon(unlearned["forget_stat"][:n], retrained["forget_stat"][:n])
    F = score_from_epsilons(eps, n)
    if small_n_note(n):  # the figure never travels without it (report.json, the printed summary)
        out["note_small_n"] = small_n_note(n)
    means = {f"{acc}_{family}": float(np.mean(pop[acc][:n]))
             for acc in ("retain_acc", "test_acc") for family, pop in (("unlearned", unlearned),
                                                                         ("retrained", retrained))}
    out.update(forgetting_quality=F, **{k: _number(v) for k, v in means.items()},
               epsilon={"mean": float(eps.mean()), "median": float(np.median(eps)), "max": float(eps.max())})
    if not all(np.isfinite(v) for v in means.values()):
        out.update(final_score=None, note_final="the test set is empty: no final score")
    elif means["retain_acc_retrained"] == 0 or means["test_acc_retrained"] == 0:
        out.update(final_score=None, note_final="retrained accuracy is 0: the final score is undefined")
    else:
        out["final_score"] = final_score(F, unlearned["retain_acc"][:n], retrained["retain_acc"][:n],
                                         unlearned["test_acc"][:n], retrained["test_acc"][:n])
    return out, eps


def _write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def evaluate(unlearned_dir: str | os.PathLike, data: UnlearningData, *,
             retrained_dir: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
             batch_size: int = 500, mia_models: int = 8, plot_examples: int = 6,
             progress: bool | None = None) -> dict[str, Any]:
    """Evaluate an unlearned population (and a retrained reference) into ``out_dir``; return the report.

    Args:
      unlearned_dir: run folder of the unlearned models.
      data: the data both runs used (checked against each folder's ``data.json``).
      retrained_dir: run folder of models trained from scratch on the retain set; enables the competition
        metric (forgetting quality F, final score), ``per_example.csv`` and the ε plots.
      out_dir: where to write (default ``<unlearned_dir>/evaluation``); files are written atomically.
      batch_size, mia_models, progress: see :func:`population_outputs`.
      plot_examples: forget examples whose two distributions are drawn (lowest / median / highest ε).

    Report (``report.json``): ``families`` → ``unlearned`` / ``retrained`` → ``path``, ``method``, ``n``,
    ``{split}_acc`` and ``kit_mia`` / ``svc_mia`` as ``{mean, std, n}``; ``competition`` (with a
    reference) → ``n`` (= min of the two N; the first seeds of each), ``forgetting_quality``,
    ``final_score`` = F · (RA_U / RA_R) · (TA_U / TA_R) over those models, the mean accuracies used, ε
    summary; ``data`` (sizes, description); ``files`` written. Unavailable numbers are null.

    Sweeps (``config.json['sweep']``): ``sweep`` → every setting's mean accuracies and, with a reference,
    its forgetting quality and final score, and the ``best`` setting (:mod:`jax_unlearn.evaluation.sweep`;
    also ``sweep.csv``); ``competition``, ``per_example.csv``, the ε plots and ``per_model.csv``'s
    ``in_score`` then refer to the best setting, and ``per_model.csv`` gains the swept hyper-parameters.
    The folders are checked (sweep record, seeds per setting, reference) before any model is run.
    """
    from jax_unlearn.evaluation import plots

    out_dir = Path(out_dir) if out_dir is not None else Path(unlearned_dir) / "evaluation"
    lanes = sweep_lanes(RunFolder(unlearned_dir))
    if retrained_dir is not None:
        check_reference(lanes, RunFolder(unlearned_dir), RunFolder(retrained_dir))
        method = RunFolder(retrained_dir).config.get("method")
        if method != "retrain":
            raise ValueError(f"--retrained {retrained_dir} holds a {method!r} run; the reference population must be "
                             f"trained from scratch without the forget set (`jax-unlearn retrain`)")
    dirs = {"unlearned": unlearned_dir, **({"retrained": retrained_dir} if retrained_dir is not None else {})}
    for d in dirs.values():  # every folder checked before any model runs
        folder = RunFolder(d)
        check_data(folder, data)
        missing = folder.missing_chunks()
        if missing:
            raise RunFolderError(f"{folder.path} is incomplete: chunk(s) {missing} missing (rerun its command)")
        if (folder.path / "metrics.csv").is_file():  # a diverged run is refused before any model runs
            bad = diverged_seeds(pd.read_csv(folder.path / "metrics.csv"))
            if bad:
                raise NonFiniteError(f"{folder.path}: seed(s) {sorted(bad)[:20]} diverged (NaN/inf loss or weights, "
                                     f"metrics.csv column 'finite'); such a run cannot be scored")
    pops = {family: population_outputs(d, data, batch_size=batch_size, mia_models=mia_models, progress=progress)
            for family, d in dirs.items()}
    report: dict[str, Any] = {"data": {"sizes": data.sizes(), "num_classes": data.num_classes,
                                       "description": json.loads(json.dumps(dict(data.description), default=str))},
                              "families": {}}
    rows = []
    for family, pop in pops.items():
        mia = mia_per_model(pop, data)
        report["families"][family] = {"path": pop["path"], "method": pop["method"], "n": len(pop["seed"]),
                                      **{acc: mean_std(pop[acc]) for acc in ACCURACIES},
                                      **{name: mean_std(v) for name, v in mia.items()}}
        frame = pd.DataFrame({"family": family, "method": pop["method"], "seed": pop["seed"],
                              **{acc: pop[acc] for acc in ACCURACIES}})
        for name, v in mia.items():
            frame[name] = np.concatenate([v, np.full(len(frame) - len(v), np.nan)])
        rows.append(frame)
    per_model = pd.concat(rows, ignore_index=True)
    files = {"accuracy.png": lambda p: plots.accuracy_bars(report["families"], p)}
    u, r = pops["unlearned"], pops.get("retrained")
    if lanes is not None:
        report["sweep"], table, best = score_sweep(lanes, u, r)
        files["sweep.csv"] = lambda p: _write_csv(p, table)
        for name, values in lanes.lane_hyper.items():  # lane i = seed i
            per_model[name] = np.where(per_model["family"] == "unlearned",
                                       values[per_model["seed"].clip(0, len(values) - 1)], np.nan)
        u = best if best is not None else u
    if r is not None:
        report["competition"], eps = competition(u, r)
        n = report["competition"]["n"]
        per_model["in_score"] = per_model.groupby("family").cumcount() < n  # the models F compares
        if lanes is not None:
            report["competition"]["setting"] = {k: report["sweep"]["best"][k] for k in lanes.lane_hyper}
            unlearned_rows = per_model["family"] == "unlearned"
            per_model.loc[unlearned_rows, "in_score"] = per_model.loc[unlearned_rows, "seed"].isin(u["seed"])
        if eps is not None:
            ids = data.forget.ids if data.forget.ids is not None else np.full(len(eps), "")
            per_example = pd.DataFrame({
                "index": np.arange(len(eps)), "id": ids, "label": data.forget.labels, "epsilon": eps,
                "score": _per_example_points(eps, n), "unlearned_stat_mean": u["forget_stat"][:n].mean(0),
                "retrained_stat_mean": r["forget_stat"][:n].mean(0)})
            examples = plots.pick_examples(eps, plot_examples)
            files["per_example.csv"] = lambda p: _write_csv(p, per_example)
            files["epsilon_hist.png"] = lambda p: plots.epsilon_histogram(eps, n, p)
            files["example_distributions.png"] = lambda p: plots.example_distributions(
                u["forget_stat"][:n], r["forget_stat"][:n], eps, examples, p, ids=ids)
    files["per_model.csv"] = lambda p: _write_csv(p, per_model)
    report["files"] = sorted([*files, "report.json"])
    for name, write in files.items():
        write(out_dir / name)
    write_json(out_dir / "report.json", report)
    return report


def _cell(stat: Mapping[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    return f"{stat['mean']:.3f}±{stat['std']:.3f}"


def format_summary(report: Mapping[str, Any]) -> str:
    """The report as a plain-text table (one row per family) and the competition numbers below it."""
    header = ["family", "method", "N", *[a.removesuffix("_acc") for a in ACCURACIES], "kit MIA", "SVC-MIA"]
    table = [header]
    for family, fam in report["families"].items():
        table.append([family, fam["method"], str(fam["n"]), *[_cell(fam[a]) for a in ACCURACIES],
                      _cell(fam["kit_mia"]), _cell(fam["svc_mia"])])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in table]
    comp = report.get("competition")
    if comp:
        fq, fs = comp.get("forgetting_quality"), comp.get("final_score")
        lines.append("")
        lines.append(f"forgetting quality F = {'n/a' if fq is None else f'{fq:.4f}'}   "
                     f"final score = {'n/a' if fs is None else f'{fs:.4f}'}   (N = {comp['n']} per population)"
                     + ("" if "setting" not in comp else "   for the best setting of the sweep"))
        lines.extend(f"note: {comp[k]}" for k in ("note", "note_small_n", "note_final") if comp.get(k))
    if report.get("sweep"):
        lines.extend(format_sweep(report["sweep"]))
    return "\n".join(lines)
