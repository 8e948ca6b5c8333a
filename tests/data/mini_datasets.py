"""Writers of mini data sets in every supported format, in the real on-disk formats (used by conftest)."""
from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file holding ``array``."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx_dir(root: Path, *, n_train=100, n_test=40, gz=True, seed=0) -> Path:
    """train-/t10k- image and label IDX files (28×28 grey, labels cycling 0..9)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        arrays = {"images-idx3-ubyte": rng.integers(1, 256, (n, 28, 28), dtype=np.uint8),
                  "labels-idx1-ubyte": (np.arange(n) % 10).astype(np.uint8)}
        for kind, array in arrays.items():
            raw = idx_bytes(array)
            name = f"{split}-{kind}"
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (root / name).write_bytes(raw)
    return root


def write_cifar_dir(root: Path, *, per_batch=20, seed=0) -> Path:
    """data_batch_1..5 and test_batch pickles in the real format (bytes keys, CHW uint8 rows)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(x) for x in rng.integers(0, 10, per_batch)],
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    return root


KAGGLE_PERSONS = {"retain.csv": range(1, 7), "forget.csv": range(7, 9), "validation.csv": range(9, 17)}


def write_kaggle_dir(root: Path, *, images_per_person=3, seed=0, with_model=True) -> Path:
    """A mini competition folder: 16 persons, 3 images each; persons 1-6 retain, 7-8 forget, 9-16
    validation; class counts JSON and (optionally) a placeholder original_model.pth."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(10, int)
    for csv_name, persons in KAGGLE_PERSONS.items():
        rows = []
        for person in persons:
            (root / "images" / str(person)).mkdir(parents=True, exist_ok=True)
            for n in range(images_per_person):
                label = int(rng.integers(0, 10))
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels, "RGB").save(root / "images" / str(person) / f"{n}.png")
                rows.append({"image_id": f"{person}-{n}", "age_group": label, "age": 10 * label + 5,
                             "person_id": person})
                if csv_name != "validation.csv":
                    counts[label] += 1
        pd.DataFrame(rows).to_csv(root / csv_name, index=False)
    (root / "age_class_weights.json").write_text(json.dumps({str(c): int(n) for c, n in enumerate(counts)}))
    if with_model:
        (root / "original_model.pth").write_bytes(b"placeholder")
    return root
