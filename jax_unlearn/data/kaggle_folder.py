"""The NeurIPS 2023 Machine Unlearning Challenge's Kaggle data folder.

Layout (as the competition's scoring notebook reads it)::

    retain.csv  forget.csv  validation.csv  [test.csv]       columns image_id, age_group, age, person_id
    images/<person_id>/<n>.png                               32×32 RGB, for image_id "<person_id>-<n>"
    age_class_weights.json                                   {"<age_group>": count}
    original_model.pth                                       the model to unlearn (path recorded only)

``age_group`` is the label and ``person_id`` the group (mapped to dense ints 0..G-1 in sorted order over
all CSVs); ``image_id`` becomes :attr:`Split.ids`. Each split's examples are in :func:`canonical_order`
(by a hash of image and label), not file order: the order the notebook drop-in
(:mod:`jax_unlearn.kaggle`) puts the same examples in, read from a shuffling DataLoader, so seed ``i`` of
``jax-unlearn unlearn --dataset kaggle`` and lane ``i`` of ``unlearning_many`` are the same model. Pixels
stay raw 0–255 floats (``Normalization()``: scale 1, mean 0, std 1), as the official loaders feed them. The forget set is the one in ``forget.csv``.

Test split: ``test.csv`` when the folder has one; otherwise ``validation.csv`` is halved **by person**
(a seeded permutation of its persons, see :func:`~jax_unlearn.data.splits.group_halves`) so no person's
images are in both validation and test. Nothing is ever written to the folder.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from jax_unlearn.data.splits import assemble, check_disjoint_ids, group_halves, subset_indices
from jax_unlearn.data.types import IMAGE_SHAPE, DataError, Normalization, Split, UnlearningData

CSV_FILES = ("retain.csv", "forget.csv", "validation.csv")
TEST_CSV = "test.csv"
REQUIRED_COLUMNS = ("image_id", "age_group", "person_id")
CLASS_WEIGHTS_FILE = "age_class_weights.json"
ORIGINAL_MODEL_FILE = "original_model.pth"
NUM_CLASSES = 10
KAGGLE_NORMALIZATION = Normalization()


def read_table(path: str | os.PathLike, num_classes: int = NUM_CLASSES) -> pd.DataFrame:
    """Read and check one split CSV.

    Returns:
      A frame with one row per image, in file order, and columns ``image_id`` (str), ``person_id`` (str),
      ``label`` (int64) and ``line`` (the row's line number in the file, header = line 1).

    Raises:
      DataError naming the file (and the line): missing or empty file, missing columns, an empty id, a
      non-integer or out-of-range ``age_group``, an ``image_id`` not of the form ``<person_id>-<n>``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype={"image_id": str, "person_id": str}, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable CSV ({error})") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(map(str, frame.columns))})")
    if len(frame) == 0:
        raise DataError(f"{path}: no rows")
    lines = np.arange(len(frame)) + 2
    image_ids = frame["image_id"].astype(str).str.strip()
    persons = frame["person_id"].astype(str).str.strip()
    labels = pd.to_numeric(frame["age_group"], errors="coerce")
    bad = np.flatnonzero(labels.isna().to_numpy() | (labels.to_numpy() % 1 != 0))
    if bad.size:
        raise DataError(f"{path} line {lines[bad[0]]}: age_group {frame['age_group'].iloc[bad[0]]!r} is not an integer")
    labels = labels.to_numpy().astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(f"{path} line {lines[bad[0]]}: age_group {labels[bad[0]]} is outside [0, {num_classes})")
    for row, (image_id, person) in enumerate(zip(image_ids, persons)):
        if not person or not image_id.startswith(person + "-") or len(image_id) == len(person) + 1:
            raise DataError(f"{path} line {lines[row]}: image_id {image_id!r} does not match "
                            f"'<person_id>-<n>' for person_id {person!r}")
        if any(_escapes(part) for part in (person, image_id[len(person) + 1:])):  # images/<person>/<n>.png
            raise DataError(f"{path} line {lines[row]}: image_id {image_id!r} / person_id {person!r} would name a "
                            f"file outside {path.parent / 'images'} (a path separator or '..'); refused")
    return pd.DataFrame({"image_id": image_ids, "person_id": persons, "label": labels, "line": lines})


def _escapes(part: str) -> bool:
    """Whether an id used as a path component could leave its folder (separators, '.', '..', NUL)."""
    return part in (".", "..") or any(c in part for c in ("/", "\\", "\0"))


def image_path(folder: str | os.PathLike, image_id: str, person_id: str) -> Path:
    """``folder/images/<person_id>/<n>.png`` for ``image_id = '<person_id>-<n>'``."""
    return Path(folder) / "images" / person_id / f"{image_id[len(person_id) + 1:]}.png"


def read_images(folder: str | os.PathLike, table: pd.DataFrame, csv_name: str) -> np.ndarray:
    """Read the PNGs of ``table`` (from :func:`read_table`) with PIL: uint8 (N, 32, 32, 3).

    Raises:
      DataError naming the image file and the CSV line: missing or unreadable file, a mode other than RGB
      (grey, RGBA, palette, ...), a size other than 32×32.
    """
    images = np.empty((len(table),) + IMAGE_SHAPE, np.uint8)
    rows = zip(table["image_id"], table["person_id"], table["line"])
    for i, (image_id, person, line) in enumerate(rows):
        path = image_path(folder, image_id, person)
        where = f"{path} (image_id {image_id!r}, {csv_name} line {line})"
        try:
            with Image.open(path) as image:
                if image.mode != "RGB":
                    raise DataError(f"{where}: mode {image.mode}, expected RGB")
                if image.size != IMAGE_SHAPE[:2]:
                    raise DataError(f"{where}: size {image.size[0]}x{image.size[1]}, expected 32x32")
                images[i] = np.asarray(image, np.uint8)
        except FileNotFoundError:
            raise DataError(f"{where}: image file not found") from None
        except OSError as error:
            raise DataError(f"{where}: not a readable image ({error})") from None
    return images


def load_class_counts(folder: str | os.PathLike, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Per-class training counts from ``age_class_weights.json`` (``{"<age_group>": count}``): int64
    (num_classes,), 0 for a class the file omits. The official training recipe weights class ``c`` by
    ``1 / counts[c]``. Raises DataError naming the file for a missing file, bad JSON, a key outside
    ``[0, num_classes)`` or a negative/non-integer count."""
    path = Path(folder) / CLASS_WEIGHTS_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: expected an object {{age_group: count}}, got {type(record).__name__}")
    counts = np.zeros(num_classes, np.int64)
    for key, value in record.items():
        try:
            label, count = int(key), value
        except ValueError:
            raise DataError(f"{path}: key {key!r} is not an integer age_group") from None
        if not 0 <= label < num_classes:
            raise DataError(f"{path}: age_group {label} is outside [0, {num_classes})")
        if isinstance(count, bool) or not isinstance(count, (int, float)) or count < 0 or count != int(count):
            raise DataError(f"{path}: count {count!r} for age_group {label} is not a non-negative integer")
        counts[label] = int(count)
    return counts


def canonical_order(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices sorting examples by a hash of (image bytes, label as int64): the same order for the same
    examples however they were shuffled (identical examples are interchangeable). Images must be in the
    same layout and dtype on both sides to agree (uint8 (N, H, W, 3) for the competition's PNGs)."""
    digests = [hashlib.blake2b(np.ascontiguousarray(x).tobytes() + np.int64(y).tobytes(), digest_size=16).digest()
               for x, y in zip(images, labels)]
    return np.array(sorted(range(len(digests)), key=digests.__getitem__), dtype=np.int64)


def _person_codes(persons: list[str]) -> dict[str, int]:
    """Dense ints for person ids: sorted numerically when all are digits, else as strings."""
    unique = sorted(set(persons), key=(lambda p: (int(p), p)) if all(p.isdigit() for p in persons) else str)
    return {person: code for code, person in enumerate(unique)}


def load_kaggle(
    folder: str | os.PathLike,
    *,
    seed: int = 0,
    num_classes: int = NUM_CLASSES,
    max_train: int | None = None,
    max_eval: int | None = None,
) -> UnlearningData:
    """Load the competition folder (see the module docstring for layout and splits).

    Args:
      folder: the Kaggle data folder.
      seed: seeds the by-person validation/test halves (without ``test.csv``) and the subsets.
      num_classes: the label range ``age_group`` must lie in (10 in the competition).
      max_train: keep a seeded random subset of this many retain + forget rows (drawn jointly, before any
        image is read), for CPU-sized runs.
      max_eval: keep at most this many rows in each of validation and test.

    Returns:
      :class:`UnlearningData` with ``groups`` = dense person ids and ``ids`` = ``image_id``; its
      ``description`` also holds ``class_counts`` (or None without ``age_class_weights.json``),
      ``original_model`` (path or None) and ``test_split``.

    Raises:
      DataError: a missing folder or CSV, any check of :func:`read_table` or :func:`read_images`, or an
      ``image_id`` in two CSVs (both files named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Kaggle data folder {folder} not found")
    names = list(CSV_FILES) + ([TEST_CSV] if (folder / TEST_CSV).is_file() else [])
    tables = {name: read_table(folder / name, num_classes) for name in names}
    check_disjoint_ids({str(folder / name): table["image_id"].to_numpy() for name, table in tables.items()})
    codes = _person_codes([p for table in tables.values() for p in table["person_id"]])
    sources = {name: name for name in names}

    if TEST_CSV in tables:
        test_split = TEST_CSV
    else:
        validation_rows, test_rows = group_halves(tables["validation.csv"]["person_id"].to_numpy(), seed)
        tables[TEST_CSV] = tables["validation.csv"].iloc[test_rows]
        tables["validation.csv"] = tables["validation.csv"].iloc[validation_rows]
        sources[TEST_CSV] = sources["validation.csv"] = "validation.csv"
        test_split = "validation.csv halved by person"

    if max_train is not None:
        sizes = [len(tables["retain.csv"]), len(tables["forget.csv"])]
        keep = subset_indices(sum(sizes), max_train, seed, "train subset")
        tables["retain.csv"] = tables["retain.csv"].iloc[keep[keep < sizes[0]]]
        tables["forget.csv"] = tables["forget.csv"].iloc[keep[keep >= sizes[0]] - sizes[0]]
    for name, purpose in ((TEST_CSV, "test subset"), ("validation.csv", "validation subset")):
        tables[name] = tables[name].iloc[subset_indices(len(tables[name]), max_eval, seed, purpose)]

    def split(name: str) -> Split:
        table = tables[name]
        groups = np.array([codes[p] for p in table["person_id"]], np.int32)
        images, labels = read_images(folder, table, sources[name]), table["label"].to_numpy().astype(np.int32)
        return Split(images, labels, groups, table["image_id"].to_numpy().astype(str)).take(
            canonical_order(images, labels))

    splits = {"retain": split("retain.csv"), "forget": split("forget.csv"),
              "validation": split("validation.csv"), "test": split(TEST_CSV)}
    has_counts = (folder / CLASS_WEIGHTS_FILE).is_file()
    model = folder / ORIGINAL_MODEL_FILE
    return assemble(
        splits, num_classes=num_classes, normalization=KAGGLE_NORMALIZATION, source="kaggle",
        path=str(folder), seed=seed, forget={"kind": "csv", "file": str(folder / "forget.csv")},
        test_split=test_split, max_train=max_train, max_eval=max_eval, num_persons=len(codes),
        class_counts=load_class_counts(folder, num_classes).tolist() if has_counts else None,
        original_model=str(model) if model.is_file() else None,
    )
