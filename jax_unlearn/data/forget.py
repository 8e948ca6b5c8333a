"""Forget-set selection for data sets that do not ship one.

A :class:`ForgetSpec` says *how* to choose; :func:`select_forget` applies it to a training set's labels
(and groups); :func:`split_train` adds the optional seeded train subset first. Every choice is drawn from
``jax.random.key(spec.seed)`` and the spec is recorded (``spec.to_dict()``) in
``UnlearningData.description['forget']``, so a forget set can be rebuilt exactly from its description.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np

from jax_unlearn.data.splits import permutation, subset_indices
from jax_unlearn.data.types import DataError

KINDS = ("random", "classes", "groups", "index_file")


@dataclasses.dataclass(frozen=True)
class ForgetSpec:
    """How to choose the forget set from a training set.

    Attributes:
      kind: ``'random'`` — a uniformly random ``fraction`` of the examples (the starting kit forgets 10%
        of CIFAR-10's train set); ``'classes'`` — every example whose label is in ``classes``;
        ``'groups'`` — every example of ``num_groups`` randomly chosen groups (subjects), as the
        competition's forget set holds all images of some persons; ``'index_file'`` — the indices in the
        ``.npy`` file ``index_file`` (e.g. the kit's ``forget_idx.npy``).
      fraction: share of examples (``'random'``), or of groups when ``num_groups`` is None (``'groups'``).
      classes: labels to forget (``'classes'``).
      num_groups: number of groups to forget (``'groups'``); None means ``round(fraction * G)``, at least 1.
      index_file: path of a 1-D integer ``.npy`` array (``'index_file'``).
      seed: seed of every random choice made by this spec.
    """

    kind: str = "random"
    fraction: float = 0.1
    classes: tuple[int, ...] = ()
    num_groups: int | None = None
    index_file: str | None = None
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown forget kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"forget fraction must lie in (0, 1), got {self.fraction}")
        object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        if self.index_file is not None:
            object.__setattr__(self, "index_file", os.fspath(self.index_file))
        if self.kind == "classes" and not self.classes:
            raise ValueError("forget kind 'classes' needs at least one class")
        if self.kind == "groups" and self.num_groups is not None and self.num_groups < 1:
            raise ValueError(f"num_groups must be positive, got {self.num_groups}")
        if self.kind == "index_file" and self.index_file is None:
            raise ValueError("forget kind 'index_file' needs index_file")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_dict` inverts it."""
        record = dataclasses.asdict(self)
        record["classes"] = list(self.classes)
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "ForgetSpec":
        """The spec recorded by :meth:`to_dict` (e.g. read back from a run's ``description``)."""
        return cls(**{**record, "classes": tuple(record.get("classes", ()))})


def load_index_file(path: str | os.PathLike, num_examples: int) -> np.ndarray:
    """Read a ``.npy`` forget-index file (``allow_pickle=False``): int64 (K,) sorted indices into a set of
    ``num_examples`` examples. Missing file, non-integer or non-1-D array, empty array, an index outside
    ``[0, num_examples)`` or a repeated index raise :class:`DataError` naming the file."""
    path = os.fspath(path)
    try:
        indices = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: forget index file not found") from None
    except (ValueError, OSError) as error:
        raise DataError(f"{path}: not a readable .npy array ({error})") from None
    if not isinstance(indices, np.ndarray) or indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise DataError(f"{path}: forget indices must be a 1-D integer array, got "
                        f"{getattr(indices, 'dtype', type(indices))} {getattr(indices, 'shape', '')}")
    if indices.size == 0:
        raise DataError(f"{path}: the forget index file is empty")
    bad = indices[(indices < 0) | (indices >= num_examples)]
    if bad.size:
        raise DataError(f"{path}: index {int(bad[0])} is out of range [0, {num_examples}) "
                        f"({bad.size} out-of-range indices)")
    values, counts = np.unique(indices, return_counts=True)
    if counts.max() > 1:
        raise DataError(f"{path}: index {int(values[np.argmax(counts)])} appears more than once")
    return values.astype(np.int64)


def select_forget(labels: np.ndarray, groups: np.ndarray | None, spec: ForgetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``spec`` to a training set.

    Args:
      labels: int (N,) class labels.
      groups: int (N,) group (subject) ids, or None when the data set has none.
      spec: the selection.

    Returns:
      ``(forget_idx, retain_idx)``: sorted int64 index arrays that partition ``range(N)``.

    Raises:
      DataError: kind ``'groups'`` without groups, a class with no examples, a bad index file, or a
        selection that leaves the forget or the retain set empty.
    """
    n = len(labels)
    if spec.kind == "random":
        k = min(max(int(round(spec.fraction * n)), 1), n - 1)
        forget = subset_indices(n, k, spec.seed, "forget/random")
    elif spec.kind == "classes":
        absent = [c for c in spec.classes if not np.any(labels == c)]
        if absent:
            raise DataError(f"forget classes {absent} have no training examples")
        forget = np.flatnonzero(np.isin(labels, spec.classes))
    elif spec.kind == "groups":
        if groups is None:
            raise DataError("forget kind 'groups' needs per-example groups (e.g. the Kaggle person_id); "
                            "this data set has none")
        unique = np.unique(groups)
        k = spec.num_groups if spec.num_groups is not None else max(int(round(spec.fraction * len(unique))), 1)
        if k >= len(unique):
            raise DataError(f"cannot forget {k} of {len(unique)} groups: nothing would be retained")
        chosen = unique[permutation(len(unique), spec.seed, "forget/groups")[:k]]
        forget = np.flatnonzero(np.isin(groups, chosen))
    else:
        forget = load_index_file(spec.index_file, n)
    forget = np.asarray(forget, np.int64)
    mask = np.zeros(n, bool)
    mask[forget] = True
    if mask.all():
        raise DataError(f"the forget selection {spec.to_dict()} selects every example: nothing to retain")
    return forget, np.flatnonzero(~mask).astype(np.int64)


def split_train(
    labels: np.ndarray,
    groups: np.ndarray | None,
    spec: ForgetSpec,
    *,
    max_train: int | None,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Optional seeded train subset, then :func:`select_forget` on it.

    Args:
      labels, groups: the full training set's (N,) labels and optional groups.
      spec: the forget selection.
      max_train: keep a random subset of this many training examples (seeded by ``seed``) before the
        forget selection; None keeps all. For ``kind='index_file'`` the file indexes the *full* training
        set, so the file is applied first and the subset then thins forget and retain alike.
      seed: the loader's seed (for the subset only; the selection uses ``spec.seed``).

    Returns:
      ``(forget_idx, retain_idx)``: sorted int64 indices into the full training set.
    """
    keep = subset_indices(len(labels), max_train, seed, "train subset")
    if spec.kind == "index_file":
        forget, retain = select_forget(labels, groups, spec)
        return np.intersect1d(forget, keep), np.intersect1d(retain, keep)
    forget, retain = select_forget(labels[keep], None if groups is None else groups[keep], spec)
    return keep[forget], keep[retain]
