"""The SISA job: train a shard ensemble on retain ∪ forget, unlearn the forget set by retraining only the
shards that held it, and report both ensembles' accuracies and what the unlearning cost (Bourtoule et al.,
"Machine Unlearning", IEEE S&P 2021; the method is :mod:`jax_unlearn.methods.sisa`).

Layout of its run folder (``RunFolder``: same config → resume, another config → refused)::

    config.json      job "sisa", num_shards, seed, hyper-parameters, model and data options
    data.json        the data/split description
    original/        orbax checkpoint: the S shard models (variables stacked over S), the partition
                     (index, member), per-epoch loss (S, epochs), compile_s / run_s of the training
    unlearned/       the same after unlearning: members without the forget set, ``retrained`` (S,) bool,
                     loss (nan for shards not retrained), compile_s / run_s of the retraining
    shards.csv       one row per shard: members, forget members, retrained, accuracies before / after
    losses.csv       one row per (phase, shard, epoch): the training loss
    report.json      ensemble accuracies per split before / after, the saving, wall times

Keys: ``key(seed)`` splits into a partition key and a training key, exactly as
:func:`jax_unlearn.methods.sisa.make_sisa_run`; shard s trains from ``fold_in(training key, s)`` both
times, so a retrained shard is the shard SISA would have trained without the forgotten examples (exact
unlearning). The retraining program holds only the affected shards (``Sisa.train_shards``): its wall time
is the real cost, next to the full training's. Times exclude compilation (reported apart, AOT).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from converters import atomic_write
from jax_unlearn.data.types import SPLITS, UnlearningData
from jax_unlearn.engine.jitting import jit
from jax_unlearn.engine.run import context_for, device_data
from jax_unlearn.models import architecture, make_model
from jax_unlearn.methods.sisa import DEFAULTS, Shards, check_hyper, shard_logits, sisa
from jax_unlearn.jobs.folders import RunFolder, write_json

PHASES = ("original", "unlearned")


def check_shards(num_shards: int, n_train: int) -> None:
    """Raise ``ValueError`` unless ``2 <= num_shards <= n_train`` (the retain ∪ forget size)."""
    if isinstance(num_shards, bool) or not isinstance(num_shards, (int, np.integer)) or num_shards < 2:
        raise ValueError(f"--shards must be an integer >= 2, got {num_shards!r} (one shard is plain "
                         f"retraining: use `jax-unlearn retrain`)")
    if num_shards > n_train:
        raise ValueError(f"--shards {num_shards} is more than the {n_train} training examples (retain ∪ "
                         f"forget): every shard needs at least one")


def _timed(fn: Callable, *args) -> tuple[Any, float, float]:
    """``(outputs, compile_s, run_s)`` of ``jit(fn)(*args)`` (:func:`jax_unlearn.engine.jitting.jit`),
    compiled ahead of time."""
    t0 = time.perf_counter()
    compiled = jit(fn).lower(*args).compile()
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return jax.device_get(out), t1 - t0, time.perf_counter() - t1


def _train_phase(fns, folder: RunFolder, key_part, key_train, data, log) -> tuple[dict, bool]:
    if folder.has_tree("original"):
        log(f"[sisa] reusing the trained ensemble in {folder.path / 'original'}")
        return folder.load_tree("original"), True
    log(f"[sisa] training {fns.num_shards} shard models on retain ∪ forget (one vmap)")
    shards = jax.device_get(jit(fns.partition)(key_part))
    (models, metrics), compile_s, run_s = _timed(fns.train, key_train, shards, data)
    tree = {"variables": models, "index": np.asarray(shards.index), "member": np.asarray(shards.member),
            "loss": np.asarray(metrics["loss"]), "compile_s": np.float64(compile_s), "run_s": np.float64(run_s)}
    folder.save_tree("original", tree)
    return folder.load_tree("original"), False


def _unlearn_phase(fns, folder: RunFolder, original: Mapping, key_train, data, log) -> tuple[dict, bool]:
    if folder.has_tree("unlearned"):
        log(f"[sisa] reusing the unlearned ensemble in {folder.path / 'unlearned'}")
        return folder.load_tree("unlearned"), True
    kept, cost = jax.device_get(jit(fns.forget)(Shards(original["index"], original["member"])))
    rows = np.flatnonzero(cost["affected"])
    log(f"[sisa] retraining {len(rows)} of {fns.num_shards} shards (those that held forget examples)")
    variables = jax.tree_util.tree_map(np.array, original["variables"])  # copies: untouched shards stay
    loss = np.full_like(original["loss"], np.nan)
    compile_s = run_s = 0.0
    if len(rows):
        (retrained, metrics), compile_s, run_s = _timed(
            lambda k, s, d: fns.train_shards(k, s, d, rows), key_train, kept, data)

        def put(all_shards, some):
            all_shards[rows] = some
            return all_shards

        variables = jax.tree_util.tree_map(put, variables, retrained)
        loss[rows] = metrics["loss"]
    tree = {"variables": variables, "index": np.asarray(kept.index), "member": np.asarray(kept.member),
            "retrained": np.asarray(cost["affected"]), "loss": loss, "compile_s": np.float64(compile_s),
            "run_s": np.float64(run_s)}
    folder.save_tree("unlearned", tree)
    return folder.load_tree("unlearned"), False


def ensemble_accuracies(ctx, models, data: UnlearningData, batch_size: int = 500,
                        fn: Callable | None = None) -> tuple[dict[str, float | None], dict[str, np.ndarray]]:
    """``(ensemble, per_shard)`` top-1 accuracies on every split of ``data`` (None / nan for an empty one).

    The ensemble predicts the argmax of the shards' mean softmax (:func:`~jax_unlearn.methods.sisa.
    aggregate_probs`); ``per_shard[split]`` is (S,). All splits go through one forward pass (one
    compilation; pass the same ``fn`` again to reuse it).
    """
    images = np.concatenate([data.split(s).images for s in SPLITS])
    fn = fn or jit(lambda m, x: shard_logits(ctx, m, x, batch_size))
    logits = np.asarray(fn(models, jnp.asarray(images)))  # (S, N, C)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1)).mean(0)
    ensemble, per_shard, start = {}, {}, 0
    for split in SPLITS:
        labels = data.split(split).labels
        end = start + len(labels)
        if len(labels) == 0:
            ensemble[split], per_shard[split] = None, np.full(logits.shape[0], np.nan)
        else:
            ensemble[split] = float(np.mean(probs[start:end].argmax(-1) == labels))
            per_shard[split] = np.mean(logits[:, start:end].argmax(-1) == labels, axis=1)
        start = end
    return ensemble, per_shard


def run_sisa(out: str | os.PathLike, data: UnlearningData, *, num_shards: int, seed: int = 0,
             hyper: Mapping[str, Any] | None = None, class_counts=None, stem: str = "imagenet",
             dtype: str = "float32", batch_size: int = 500, extra_config: Mapping[str, Any] | None = None,
             model=None, log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Train a SISA ensemble of ``num_shards`` ResNet-18s on retain ∪ forget, unlearn the forget set, report.

    Args:
      out: the run folder (see the module docstring); a folder with this config resumes: a finished
        phase is reused, not recomputed.
      data: the data; ``hyper`` overrides :data:`jax_unlearn.methods.sisa.DEFAULTS` (plus
        ``class_weighted``, ``augment``; single values only — SISA does not sweep).
      num_shards: S, with ``2 <= S <= len(retain) + len(forget)``.
      seed: ``key(seed)`` gives the partition and the shards' training keys.
      batch_size: images per forward pass when evaluating.
      model: overrides the ResNet-18 (tests use tiny ones; the folder then needs the same model to load).
      log: called with progress lines.

    Returns the report written to ``report.json``: ``ensemble`` → ``original`` / ``unlearned`` →
    ``{split: accuracy}``; ``saving`` → ``shards_retrained``, ``num_shards``, ``shard_fraction``,
    ``examples_retrained``, ``example_fraction`` (of the retain set), ``forgotten``; ``timing`` → per
    phase ``compile_s``, ``run_s``, ``reused``, and ``run_time_fraction`` (retraining / training run time);
    ``files``.
    """
    hyper = dict(hyper or {})
    if "num_shards" in hyper:
        raise ValueError("give the number of shards as num_shards (--shards), not as a hyper-parameter")
    check_hyper(hyper)
    lists = sorted(k for k, v in hyper.items() if isinstance(v, (list, tuple, dict)))
    if lists:
        raise ValueError(f"sisa takes single values only (no sweeps), got lists for {lists}")
    check_shards(num_shards, len(data.retain) + len(data.forget))
    model = model if model is not None else make_model(data.num_classes, stem, dtype)
    ctx = context_for(data, model, class_counts)
    hyper = {**{k: v for k, v in DEFAULTS.items() if k != "num_shards"}, **hyper}
    fns = sisa(ctx, num_shards=num_shards, **hyper)
    config = {"job": "sisa", "num_shards": num_shards, "seed": seed, "hyper": hyper, "num_classes": data.num_classes,
              "stem": stem, "dtype": dtype, "data": dict(data.description), **(extra_config or {})}
    if architecture(model) is not None:  # a smaller ResNet: a resume must build the same one
        config["arch"] = architecture(model)
    folder = RunFolder(out)
    folder.start(config, {**data.description, "sizes": data.sizes()})
    dev = device_data(data)
    key_part, key_train = jax.random.split(jax.random.key(seed))
    original, reused_train = _train_phase(fns, folder, key_part, key_train, dev, log)
    unlearned, reused_unlearn = _unlearn_phase(fns, folder, original, key_train, dev, log)

    log("[sisa] evaluating both ensembles")
    fn = jit(lambda m, x: shard_logits(ctx, m, x, batch_size))
    accs = {phase: ensemble_accuracies(ctx, tree["variables"], data, batch_size, fn)
            for phase, tree in zip(PHASES, (original, unlearned))}
    n_retain = len(data.retain)
    retrained = unlearned["retrained"].astype(bool)
    forget_members = (original["member"] & (original["index"] >= n_retain)).sum(1)
    shards = pd.DataFrame({"shard": np.arange(num_shards), "members": original["member"].sum(1),
                           "forget_members": forget_members, "retrained": retrained,
                           "members_after": unlearned["member"].sum(1),
                           **{f"{phase}_{split}_acc": accs[phase][1][split] for phase in PHASES for split in SPLITS}})
    losses = pd.concat([pd.DataFrame({"phase": phase, "shard": np.repeat(np.arange(num_shards), tree["loss"].shape[1]),
                                      "epoch": np.tile(np.arange(1, tree["loss"].shape[1] + 1), num_shards),
                                      "loss": tree["loss"].reshape(-1)})
                        for phase, tree in zip(PHASES, (original, unlearned))], ignore_index=True)
    losses = losses[losses["loss"].notna()]
    examples = int(unlearned["member"][retrained].sum())
    train_s, unlearn_s = float(original["run_s"]), float(unlearned["run_s"])
    report = {
        "num_shards": num_shards, "seed": seed, "hyper": hyper, "data": {"sizes": data.sizes()},
        "ensemble": {phase: accs[phase][0] for phase in PHASES},
        "saving": {"shards_retrained": int(retrained.sum()), "num_shards": num_shards,
                   "shard_fraction": float(retrained.mean()), "examples_retrained": examples,
                   "example_fraction": examples / max(n_retain, 1), "forgotten": int(forget_members.sum())},
        "timing": {"original": {"compile_s": float(original["compile_s"]), "run_s": train_s, "reused": reused_train},
                   "unlearned": {"compile_s": float(unlearned["compile_s"]), "run_s": unlearn_s,
                                 "reused": reused_unlearn},
                   "run_time_fraction": unlearn_s / train_s if train_s > 0 else None},
        "files": ["config.json", "data.json", "losses.csv", "original", "report.json", "shards.csv", "unlearned"],
    }
    atomic_write(folder.path / "shards.csv", lambda tmp: shards.to_csv(tmp, index=False))
    atomic_write(folder.path / "losses.csv", lambda tmp: losses.to_csv(tmp, index=False))
    write_json(folder.path / "report.json", report)
    return report


def format_sisa(report: Mapping[str, Any]) -> str:
    """The SISA report as text: ensemble accuracy per split before / after, the saving, the wall times."""
    def cell(x):
        return "n/a" if x is None else f"{x:.4f}"

    rows = [["ensemble", *SPLITS]]
    rows += [[phase, *(cell(report["ensemble"][phase][s]) for s in SPLITS)] for phase in PHASES]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    s, t = report["saving"], report["timing"]
    lines.append("")
    lines.append(f"unlearning retrained {s['shards_retrained']} of {s['num_shards']} shards "
                 f"({s['shard_fraction']:.0%}), {s['examples_retrained']} examples "
                 f"({s['example_fraction']:.0%} of the retain set); {s['forgotten']} forget examples removed")
    frac = t["run_time_fraction"]
    lines.append(f"wall time (excl. compile): training {t['original']['run_s']:.2f} s"
                 f"{' (reused)' if t['original']['reused'] else ''}, retraining {t['unlearned']['run_s']:.2f} s"
                 f"{' (reused)' if t['unlearned']['reused'] else ''}"
                 + ("" if frac is None else f" = {frac:.0%} of training"))
    return "\n".join(lines)
