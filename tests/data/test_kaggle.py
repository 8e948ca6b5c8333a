import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from jax_unlearn.data import DataError, Normalization, load_class_counts, load_kaggle
from jax_unlearn.data.kaggle_folder import canonical_order

from mini_datasets import KAGGLE_PERSONS


def snapshot(root):
    return sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*"))


def test_loads_the_competition_layout(kaggle_dir):
    before = snapshot(kaggle_dir)
    data = load_kaggle(kaggle_dir, seed=0)
    assert snapshot(kaggle_dir) == before, "the loader wrote to the folder"
    assert data.normalization == Normalization()
    assert data.sizes()["retain"] == 18 and data.sizes()["forget"] == 6
    assert len(data.validation) + len(data.test) == 24
    retain_csv = pd.read_csv(kaggle_dir / "retain.csv", dtype={"image_id": str})
    # The CSV's rows, in canonical order (by a hash of image and label, as the notebook drop-in orders them).
    assert sorted(data.retain.ids) == sorted(retain_csv["image_id"])
    row = {image_id: i for i, image_id in enumerate(data.retain.ids)}
    np.testing.assert_array_equal(data.retain.labels, retain_csv.set_index("image_id").loc[data.retain.ids, "age_group"])
    np.testing.assert_array_equal(canonical_order(data.retain.images, data.retain.labels), np.arange(18))
    first = np.asarray(Image.open(kaggle_dir / "images" / "1" / "0.png"))
    np.testing.assert_array_equal(data.retain.images[row["1-0"]], first)
    # Groups: person ids 1..16 mapped densely in numeric order.
    np.testing.assert_array_equal(data.retain.groups, [int(i.split("-")[0]) - 1 for i in data.retain.ids])
    description = data.description
    assert description["test_split"] == "validation.csv halved by person"
    assert description["original_model"] == str(kaggle_dir / "original_model.pth")
    assert description["forget"]["kind"] == "csv"
    assert sum(description["class_counts"]) == 24


def test_validation_test_halves_share_no_person(kaggle_dir):
    for seed in range(3):
        data = load_kaggle(kaggle_dir, seed=seed)
        assert not set(data.validation.groups) & set(data.test.groups)
        assert len(set(data.test.groups)) == len(set(data.validation.groups)) == 4


def test_test_csv_is_used_when_present(kaggle_dir):
    validation = pd.read_csv(kaggle_dir / "validation.csv")
    validation.iloc[:6].to_csv(kaggle_dir / "validation.csv", index=False)
    validation.iloc[6:].to_csv(kaggle_dir / "test.csv", index=False)
    data = load_kaggle(kaggle_dir)
    assert data.description["test_split"] == "test.csv"
    assert sorted(data.test.ids) == sorted(validation["image_id"].iloc[6:])


def test_class_counts(kaggle_dir):
    counts = load_class_counts(kaggle_dir)
    assert counts.shape == (10,) and counts.dtype == np.int64
    record = json.loads((kaggle_dir / "age_class_weights.json").read_text())
    assert counts.tolist() == [record[str(c)] for c in range(10)]


@pytest.mark.parametrize("content, message", [("[1, 2]", "expected an object"), ('{"12": 3}', "outside"),
                                              ('{"a": 3}', "not an integer"), ('{"1": -3}', "non-negative"),
                                              ("{", "not readable JSON")])
def test_bad_class_counts(kaggle_dir, content, message):
    (kaggle_dir / "age_class_weights.json").write_text(content)
    with pytest.raises(DataError, match=message) as error:
        load_class_counts(kaggle_dir)
    assert "age_class_weights.json" in str(error.value)


def test_optional_files_absent(kaggle_dir):
    os.remove(kaggle_dir / "age_class_weights.json")
    os.remove(kaggle_dir / "original_model.pth")
    data = load_kaggle(kaggle_dir)
    assert data.description["class_counts"] is None and data.description["original_model"] is None


def edit_csv(root, name, edit):
    frame = pd.read_csv(root / name, dtype={"image_id": str, "person_id": str})
    edit(frame).to_csv(root / name, index=False)


def set_cell(row, column, value):
    def edit(frame):
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        return frame
    return edit


@pytest.mark.parametrize("name, edit, message", [
    ("retain.csv", lambda f: f.drop(columns=["person_id", "age_group"]), "missing column.*age_group, person_id"),
    ("forget.csv", lambda f: f.iloc[:0], "no rows"),
    ("validation.csv", set_cell(2, "image_id", "99-0"), "line 4: image_id '99-0' does not match"),
    ("retain.csv", set_cell(1, "age_group", 10), r"line 3: age_group 10 is outside \[0, 10\)"),
    ("retain.csv", set_cell(0, "age_group", "old"), "line 2: age_group 'old' is not an integer"),
    ("forget.csv", set_cell(0, "age_group", -1), "line 2: age_group -1"),
])
def test_bad_csv_names_file_and_line(kaggle_dir, name, edit, message):
    edit_csv(kaggle_dir, name, edit)
    with pytest.raises(DataError, match=message) as error:
        load_kaggle(kaggle_dir)
    assert str(kaggle_dir / name) in str(error.value)


def test_missing_csv(kaggle_dir):
    os.remove(kaggle_dir / "validation.csv")
    with pytest.raises(DataError, match="validation.csv: file not found"):
        load_kaggle(kaggle_dir)


def test_zero_byte_forget_csv(kaggle_dir):
    (kaggle_dir / "forget.csv").write_text("")
    with pytest.raises(DataError, match="forget.csv: the file is empty"):
        load_kaggle(kaggle_dir)


def test_id_in_two_csvs_names_both(kaggle_dir):
    retain = pd.read_csv(kaggle_dir / "retain.csv")
    forget = pd.read_csv(kaggle_dir / "forget.csv")
    pd.concat([forget, retain.iloc[[4]]]).to_csv(kaggle_dir / "forget.csv", index=False)
    with pytest.raises(DataError, match="'2-1' appears in both .*retain.csv and .*forget.csv"):
        load_kaggle(kaggle_dir)


@pytest.mark.parametrize("pixels, mode, message", [
    (np.zeros((32, 32), np.uint8), "L", "mode L"),
    (np.zeros((32, 32, 4), np.uint8), "RGBA", "mode RGBA"),
    (np.zeros((28, 32, 3), np.uint8), "RGB", "size 32x28"),
])
def test_bad_image_names_file_and_row(kaggle_dir, pixels, mode, message):
    Image.fromarray(pixels, mode).save(kaggle_dir / "images" / "8" / "1.png")
    with pytest.raises(DataError, match=message) as error:
        load_kaggle(kaggle_dir)
    assert str(kaggle_dir / "images" / "8" / "1.png") in str(error.value)
    assert "image_id '8-1', forget.csv line 6" in str(error.value)


def test_missing_or_corrupt_image(kaggle_dir):
    os.remove(kaggle_dir / "images" / "3" / "2.png")
    with pytest.raises(DataError, match="image_id '3-2', retain.csv line 10.*not found"):
        load_kaggle(kaggle_dir)
    (kaggle_dir / "images" / "3" / "2.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable image"):
        load_kaggle(kaggle_dir)


def test_labels_checked_against_num_classes(kaggle_dir):
    with pytest.raises(DataError, match=r"outside \[0, 2\)"):
        load_kaggle(kaggle_dir, num_classes=2)


def test_persons_as_in_fixture(kaggle_dir):
    data = load_kaggle(kaggle_dir)
    assert data.description["num_persons"] == sum(len(p) for p in KAGGLE_PERSONS.values())
