import json

import numpy as np
import pytest

from jax_unlearn.data import DataError, ForgetSpec, load_dataset, select_forget, split_train

LABELS = np.arange(200) % 10
GROUPS = np.arange(200) // 8  # 25 groups of 8


def check_partition(forget, retain, n):
    assert forget.dtype == retain.dtype == np.int64
    assert np.all(np.diff(forget) > 0) and np.all(np.diff(retain) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([forget, retain])), np.arange(n))


def test_random_fraction_is_seeded():
    forget, retain = select_forget(LABELS, None, ForgetSpec(fraction=0.1, seed=5))
    check_partition(forget, retain, 200)
    assert len(forget) == 20
    again, _ = select_forget(LABELS, None, ForgetSpec(fraction=0.1, seed=5))
    other, _ = select_forget(LABELS, None, ForgetSpec(fraction=0.1, seed=6))
    np.testing.assert_array_equal(forget, again)
    assert not np.array_equal(forget, other)


def test_whole_classes():
    forget, retain = select_forget(LABELS, None, ForgetSpec(kind="classes", classes=[3, 7]))
    check_partition(forget, retain, 200)
    assert set(LABELS[forget]) == {3, 7} and not set(LABELS[retain]) & {3, 7}


def test_absent_class_is_an_error():
    with pytest.raises(DataError, match=r"\[11\]"):
        select_forget(LABELS, None, ForgetSpec(kind="classes", classes=(11,)))


@pytest.mark.parametrize("num_groups, fraction, expected", [(3, 0.1, 3), (None, 0.2, 5)])
def test_whole_groups(num_groups, fraction, expected):
    spec = ForgetSpec(kind="groups", num_groups=num_groups, fraction=fraction, seed=1)
    forget, retain = select_forget(LABELS, GROUPS, spec)
    check_partition(forget, retain, 200)
    chosen = set(GROUPS[forget])
    assert len(chosen) == expected and not chosen & set(GROUPS[retain])
    other, _ = select_forget(LABELS, GROUPS, ForgetSpec(kind="groups", num_groups=num_groups, fraction=fraction,
                                                        seed=2))
    assert not np.array_equal(forget, other)


def test_groups_needs_groups():
    with pytest.raises(DataError, match="groups"):
        select_forget(LABELS, None, ForgetSpec(kind="groups", num_groups=1))


def test_groups_must_leave_something():
    with pytest.raises(DataError, match="nothing would be retained"):
        select_forget(LABELS, GROUPS, ForgetSpec(kind="groups", num_groups=25))


def test_index_file(tmp_path):
    path = tmp_path / "forget_idx.npy"
    np.save(path, np.array([9, 2, 150]))
    forget, retain = select_forget(LABELS, None, ForgetSpec(kind="index_file", index_file=path))
    check_partition(forget, retain, 200)
    np.testing.assert_array_equal(forget, [2, 9, 150])


@pytest.mark.parametrize("content, message", [
    (np.array([1, 200]), "out of range"),
    (np.array([-1, 3]), "out of range"),
    (np.array([4, 5, 4]), "index 4 appears more than once"),
    (np.array([[1, 2]]), "1-D integer"),
    (np.array([1.0, 2.0]), "1-D integer"),
    (np.array([], np.int64), "empty"),
    (np.array([{"a": 1}], dtype=object), "not a readable"),
])
def test_bad_index_file_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad_idx.npy"
    np.save(path, content, allow_pickle=True)
    with pytest.raises(DataError, match=message) as error:
        select_forget(LABELS, None, ForgetSpec(kind="index_file", index_file=str(path)))
    assert str(path) in str(error.value)


def test_missing_index_file(tmp_path):
    with pytest.raises(DataError, match="absent.npy"):
        select_forget(LABELS, None, ForgetSpec(kind="index_file", index_file=tmp_path / "absent.npy"))


@pytest.mark.parametrize("kwargs", [dict(kind="oracle"), dict(fraction=0.0), dict(fraction=1.0),
                                    dict(kind="classes"), dict(kind="index_file"), dict(kind="groups", num_groups=0)])
def test_invalid_spec(kwargs):
    with pytest.raises(ValueError):
        ForgetSpec(**kwargs)


def test_spec_dict_round_trip():
    spec = ForgetSpec(kind="classes", classes=[1, 2], seed=4)
    record = json.loads(json.dumps(spec.to_dict()))
    assert ForgetSpec.from_dict(record) == spec


def test_split_train_subsets_before_selection():
    forget, retain = split_train(LABELS, None, ForgetSpec(fraction=0.25), max_train=40, seed=0)
    assert len(forget) == 10 and len(retain) == 30
    assert not set(forget) & set(retain) and max(np.concatenate([forget, retain])) < 200


def test_split_train_index_file_indexes_the_full_set(tmp_path):
    path = tmp_path / "idx.npy"
    np.save(path, np.arange(0, 200, 2))
    spec = ForgetSpec(kind="index_file", index_file=str(path))
    forget, retain = split_train(LABELS, None, spec, max_train=50, seed=0)
    assert len(forget) + len(retain) == 50
    assert np.all(forget % 2 == 0) and np.all(retain % 2 == 1)


def test_spec_recorded_in_description(make_dataset):
    spec = ForgetSpec(kind="classes", classes=(0,), seed=3)
    data = load_dataset("idx", make_dataset("idx"), forget=spec)
    assert ForgetSpec.from_dict(data.description["forget"]) == spec
    assert set(data.forget.labels) == {0} and 0 not in set(data.retain.labels)
