"""Evaluate populations of models in run folders: accuracies, the competition score, MIAs, a report.

Two steps, so each can be used alone:

* :func:`population_outputs` (:mod:`jax_unlearn.evaluation.outputs`) runs every model of a run folder over
  the data, on device, one chunk at a time (``jax.jit(jax.vmap(...))`` over the chunk's stacked variables,
  one compilation for all chunks; on a CPU, where lanes run no faster than one model after another, one
  model a call, so every folder of a model shares one compilation), and returns per-model accuracies, the
  forget-set statistic the competition compares, and the logits the membership-inference attacks need
  (for the first ``mia_models`` models only, since each attack is fitted per model).
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

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from converters import atomic_write
from jax_unlearn.data.types import UnlearningData
from jax_unlearn.evaluation.sweep import check_reference, format_sweep, score_sweep, sweep_lanes
# population_outputs and check_data are re-exported: report is where users and the leaderboard import them.
from jax_unlearn.evaluation.outputs import ACCURACIES, check_data, population_outputs  # noqa: F401
from jax_unlearn.metrics import (cross_entropy_per_example, final_score, kit_mia,
                                 per_example_epsilon, score_from_epsilons, small_n_note, svc_mia_efficacy)
from jax_unlearn.metrics.summary import mean_std
from jax_unlearn.jobs.folders import NonFiniteError, RunFolder, RunFolderError, diverged_seeds, write_json

KIT_MIN_EXAMPLES = 6  # kit_mia's minimum per side


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
