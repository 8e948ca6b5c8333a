"""Seeded index operations and checks shared by every loader: subsets, halves, disjointness, assembly.

All randomness comes from ``jax.random.key(seed)`` folded with a named purpose (big_vision style: keys
are derived, never stored), so one integer seed reproduces every choice a loader makes, and two purposes
with the same seed (say, the train subset and the validation/test split) use independent streams.
Results are converted to NumPy straight away; data never leaves the host here.
"""
from __future__ import annotations

import zlib
from typing import Any, Mapping

import jax
import numpy as np

from jax_unlearn.data.types import SPLITS, DataError, Normalization, Split, UnlearningData


def purpose_key(seed: int, purpose: str) -> jax.Array:
    """``fold_in(key(seed), crc32(purpose))``: an independent, stable stream per named purpose."""
    return jax.random.fold_in(jax.random.key(int(seed)), zlib.crc32(purpose.encode()) & 0x7FFFFFFF)


def permutation(n: int, seed: int, purpose: str) -> np.ndarray:
    """A seeded permutation of ``arange(n)``: int64 (n,)."""
    if n == 0:
        return np.zeros((0,), np.int64)
    return np.asarray(jax.random.permutation(purpose_key(seed, purpose), n)).astype(np.int64)


def subset_indices(n: int, k: int | None, seed: int, purpose: str) -> np.ndarray:
    """Sorted int64 (min(k, n),) indices of a seeded random subset of ``range(n)``; all of them when ``k``
    is None or ``k >= n``."""
    if k is None or k >= n:
        return np.arange(n, dtype=np.int64)
    if k < 1:
        raise ValueError(f"a subset size must be positive, got {k}")
    return np.sort(permutation(n, seed, purpose)[:k])


def subsample(split: Split, n: int | None, seed: int, purpose: str = "subsample") -> Split:
    """A seeded random subset of ``n`` rows of ``split`` (original order kept); ``split`` itself when
    ``n`` is None or at least ``len(split)``."""
    if n is None or n >= len(split):
        return split
    return split.take(subset_indices(len(split), n, seed, purpose))


def halve(split: Split, seed: int, purpose: str = "validation/test") -> tuple[Split, Split]:
    """Split a held-out set into ``(validation, test)`` halves by a seeded permutation.

    Follows the starting kit, which splits the CIFAR-10 test set with
    ``random_split(held_out, [0.5, 0.5])`` into ``test, val``: the first ``ceil(n/2)`` permuted rows are
    the test half, the rest validation. Each half keeps the source order.
    """
    perm = permutation(len(split), seed, purpose)
    cut = (len(split) + 1) // 2
    return split.take(np.sort(perm[cut:])), split.take(np.sort(perm[:cut]))


def group_halves(
    groups: np.ndarray, seed: int, purpose: str = "validation/test by group"
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(validation_idx, test_idx)`` (sorted int64) that halve a held-out set **by group** (e.g.
    person): a seeded permutation of the distinct values of ``groups`` (N,), the first ``ceil(G/2)`` go to
    test and the rest to validation, so no group is in both halves. Image counts of the halves differ
    when groups have different sizes."""
    groups = np.asarray(groups)
    unique = np.unique(groups)
    perm = permutation(len(unique), seed, purpose)
    in_test = np.isin(groups, unique[perm[: (len(unique) + 1) // 2]])
    return np.flatnonzero(~in_test).astype(np.int64), np.flatnonzero(in_test).astype(np.int64)


def check_disjoint_ids(named_ids: Mapping[str, np.ndarray | None]) -> None:
    """Raise :class:`DataError` naming both places and the id when an id occurs in two of ``named_ids``
    (``{name: (N,) str ids}``, e.g. split names or CSV file names), or twice within one. ``None`` entries
    are skipped."""
    names = [name for name, ids in named_ids.items() if ids is not None]
    arrays = [np.asarray(named_ids[name], dtype=str) for name in names]
    if not arrays:
        return
    all_ids = np.concatenate(arrays)
    owner = np.repeat(np.arange(len(arrays)), [len(a) for a in arrays])
    order = np.argsort(all_ids, kind="stable")
    repeats = np.flatnonzero(all_ids[order][1:] == all_ids[order][:-1])
    if repeats.size:
        first, second = order[repeats[0]], order[repeats[0] + 1]
        value, a, b = str(all_ids[first]), names[owner[first]], names[owner[second]]
        if a == b:
            raise DataError(f"{a}: id {value!r} appears more than once")
        raise DataError(f"id {value!r} appears in both {a} and {b}")


def assemble(
    splits: Mapping[str, Split],
    *,
    num_classes: int,
    normalization: Normalization,
    source: str,
    path: str,
    seed: int,
    forget: Mapping[str, Any],
    **extra: Any,
) -> UnlearningData:
    """Check and package ``splits`` (keys ``retain, forget, validation, test``) into
    :class:`UnlearningData` with the standard ``description``::

        {'source', 'path', 'seed', 'forget', 'sizes', 'num_classes', 'normalization', **extra}

    Checks done here, once for every loader: all four splits present, ids disjoint across splits, label
    range and non-empty retain/forget (the latter two by :class:`UnlearningData` itself).
    """
    missing = [name for name in SPLITS if name not in splits]
    if missing:
        raise ValueError(f"assemble needs all of {SPLITS}; missing {missing}")
    check_disjoint_ids({f"the {name} split": splits[name].ids for name in SPLITS})
    description = {
        "source": source,
        "path": str(path),
        "seed": int(seed),
        "forget": dict(forget),
        "sizes": {name: len(splits[name]) for name in SPLITS},
        "num_classes": int(num_classes),
        "normalization": normalization.to_dict(),
        **extra,
    }
    return UnlearningData(
        **{name: splits[name] for name in SPLITS},
        num_classes=int(num_classes),
        normalization=normalization,
        description=description,
    )
