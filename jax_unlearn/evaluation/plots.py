"""The evaluation report's figures (PNG), drawn with matplotlib's object API (no pyplot state, no display).

Each function takes the numbers it draws and an output path, and writes the file atomically.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from converters import atomic_write
from jax_unlearn.data.types import SPLITS
from jax_unlearn.metrics.competition import BIN_WIDTH, EPSILON_CAP


def _save(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def accuracy_bars(families: Mapping[str, Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Grouped bars: mean accuracy per split (x) and family (colour), sample std as error bars.

    ``families``: the report's ``families`` section (``{family: {'{split}_acc': {'mean', 'std'}, ...}}``).
    """
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    x = np.arange(len(SPLITS))
    width = 0.8 / max(len(families), 1)
    for i, (family, fam) in enumerate(families.items()):
        stats = [fam[f"{s}_acc"] for s in SPLITS]
        means = [np.nan if st["mean"] is None else st["mean"] for st in stats]
        stds = [0.0 if st["std"] is None else st["std"] for st in stats]
        ax.bar(x + (i - (len(families) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
               label=f"{family} ({fam['method']}, N={fam['n']})")
    ax.set_xticks(x, SPLITS)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy per split (mean ± std over seeds)")
    ax.legend(loc="best", fontsize="small")
    _save(fig, path)


def epsilon_histogram(eps: np.ndarray, n: int, path: str | os.PathLike) -> None:
    """Histogram of per-example ε in the score's bins (width 0.5); ε past ``ceil(ln(n − 1))`` scores 0."""
    eps = np.asarray(eps, np.float64)
    top = min(EPSILON_CAP, max(float(eps.max()), 1.0))
    bins = np.arange(0.0, top + BIN_WIDTH + 1e-9, BIN_WIDTH)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.hist(eps, bins=bins, color="tab:blue", edgecolor="white")
    last_edge = math.ceil(math.log(n - 1)) if n > 2 else 0.0
    ax.axvline(last_edge, color="tab:red", linestyle="--", label=f"ε ≥ {last_edge:g}: 0 points (N={n})")
    ax.set_xlabel("ε per forget example")
    ax.set_ylabel("forget examples")
    ax.set_title(f"per-example ε ({len(eps)} examples, mean {eps.mean():.2f})")
    ax.legend(fontsize="small")
    _save(fig, path)


def pick_examples(eps: np.ndarray, k: int = 6) -> np.ndarray:
    """Indices of up to ``k`` examples — the lowest, median and highest ε in turn — ordered by ε."""
    order = np.argsort(np.asarray(eps), kind="stable")
    s = len(order)
    k = min(k, s)
    n_low = math.ceil(k / 3)
    n_high = math.ceil((k - n_low) / 2)
    n_mid = k - n_low - n_high
    start = max(n_low, min(s // 2 - n_mid // 2, s - n_high - n_mid))
    positions = np.unique(np.concatenate([np.arange(n_low), start + np.arange(n_mid), s - n_high + np.arange(n_high)]))
    return order[positions.astype(np.intp)]


def example_distributions(unlearned: np.ndarray, retrained: np.ndarray, eps: np.ndarray,
                          examples: Sequence[int], path: str | os.PathLike, ids: Sequence | None = None) -> None:
    """For each forget example in ``examples``, the two populations' statistic overlaid as histograms.

    ``unlearned``, ``retrained``: (N, S) logit-scaled confidences; ``eps``: (S,) per-example ε.
    """
    k = len(examples)
    cols = min(3, max(k, 1))
    rows = max(1, math.ceil(k / cols))
    fig = Figure(figsize=(4 * cols, 3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, i in zip(axes, examples):
        values = np.concatenate([unlearned[:, i], retrained[:, i]])
        edges = np.histogram_bin_edges(values, bins=min(30, max(5, len(values) // 4)))
        ax.hist(retrained[:, i], bins=edges, alpha=0.55, color="tab:green", label="retrained")
        ax.hist(unlearned[:, i], bins=edges, alpha=0.55, color="tab:orange", label="unlearned")
        name = f" {ids[i]}" if ids is not None and str(ids[i]) else ""
        ax.set_title(f"forget #{i}{name}: ε = {eps[i]:.2f}", fontsize="small")
        ax.set_xlabel("logit-scaled confidence", fontsize="small")
    for ax in axes[k:]:
        ax.set_visible(False)
    if k:
        axes[0].legend(fontsize="small")
    fig.suptitle("forget examples with the lowest, median and highest ε")
    _save(fig, path)
