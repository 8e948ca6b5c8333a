"""Properties every loader in LOADERS must have, checked on a mini folder of each format."""
import json

import numpy as np
import pytest

from jax_unlearn.data import LOADERS, SPLITS, DataError, UnlearningData, load_dataset, subsample

NAMES = sorted(LOADERS)


def test_every_loader_has_a_mini_fixture(writers):
    assert set(writers) == set(LOADERS)


@pytest.mark.parametrize("name", NAMES)
def test_loader_yields_valid_unlearning_data(name, make_dataset):
    data = load_dataset(name, make_dataset(name), seed=0)
    assert isinstance(data, UnlearningData)
    for split in SPLITS:
        part = data.split(split)
        assert len(part) > 0, split
        assert part.images.dtype == np.uint8 and part.images.shape[1:] == (32, 32, 3)
        assert part.labels.dtype == np.int32
        assert part.labels.min() >= 0 and part.labels.max() < data.num_classes
        assert part.ids is not None and len(set(part.ids)) == len(part)
    all_ids = np.concatenate([data.split(s).ids for s in SPLITS])
    assert len(set(all_ids)) == len(all_ids), "splits overlap"
    description = json.loads(json.dumps(data.description))
    assert description["source"] == name
    assert description["seed"] == 0
    assert description["sizes"] == data.sizes()
    assert description["num_classes"] == data.num_classes
    assert {"path", "forget", "normalization"} <= set(description)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_data_and_other_seed_differs(name, make_dataset):
    path = make_dataset(name)
    a, b, c = (load_dataset(name, path, seed=s) for s in (0, 0, 1))
    for split in SPLITS:
        np.testing.assert_array_equal(a.split(split).images, b.split(split).images)
        np.testing.assert_array_equal(a.split(split).ids, b.split(split).ids)
    assert a.description == b.description
    assert any(not np.array_equal(a.split(s).ids, c.split(s).ids) for s in SPLITS)


@pytest.mark.parametrize("name", NAMES)
def test_max_train_and_max_eval_subsample(name, make_dataset):
    full = load_dataset(name, make_dataset(name))
    small = load_dataset(name, make_dataset(name), max_train=20, max_eval=5)
    assert len(small.retain) + len(small.forget) == 20
    assert len(small.validation) <= 5 and len(small.test) <= 5
    for split in ("validation", "test"):
        assert set(small.split(split).ids) <= set(full.split(split).ids)
    train_ids = set(full.retain.ids) | set(full.forget.ids)
    assert set(small.retain.ids) | set(small.forget.ids) <= train_ids


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid: .*fashion-mnist.*kaggle"):
        load_dataset("imagenet")


@pytest.mark.parametrize("name", ["idx", "kaggle", "cifar10"])
def test_missing_path_is_an_error(name):
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset(name)


@pytest.mark.parametrize("name", NAMES)
def test_missing_directory_is_a_data_error(name, tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(name, tmp_path / "absent")


def test_subsample_is_seeded_and_keeps_order(make_dataset):
    data = load_dataset("cifar10", make_dataset("cifar10"))
    a, b, c = (subsample(data.retain, 10, seed) for seed in (3, 3, 4))
    np.testing.assert_array_equal(a.ids, b.ids)
    assert not np.array_equal(a.ids, c.ids)
    position = {i: k for k, i in enumerate(data.retain.ids)}
    assert [position[i] for i in a.ids] == sorted(position[i] for i in a.ids)
    assert subsample(data.retain, None, 0) is data.retain
