"""Membership-inference attacks: the starting kit's logistic MIA and the SVC-MIA forgetting efficacy."""
import numpy as np
import pytest
from sklearn import linear_model, model_selection

from jax_unlearn.metrics.mia import (
    cross_entropy_per_example,
    kit_mia,
    svc_mia_efficacy,
    true_class_confidence,
)


def test_cross_entropy_matches_float64_brute_force():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 7)) * 20
    labels = rng.integers(0, 7, size=50)
    expected = [np.log(np.sum(np.exp(z - z.max()))) + z.max() - z[y] for z, y in zip(logits, labels)]
    got = cross_entropy_per_example(logits.astype(np.float32), labels)
    assert got.dtype == np.float64 and got.shape == (50,)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
    assert np.all(np.isfinite(cross_entropy_per_example(np.array([[1000.0, -1000.0]]), np.array([1]))))


def test_kit_mia_separable_is_one():
    rng = np.random.default_rng(1)
    forget = rng.uniform(0.0, 0.01, size=300)  # memorised
    test = rng.uniform(3.0, 6.0, size=200)
    assert kit_mia(forget, test) == pytest.approx(1.0)


def test_kit_mia_identical_is_chance():
    rng = np.random.default_rng(2)
    score = kit_mia(rng.exponential(size=2000), rng.exponential(size=2000))
    assert abs(score - 0.5) < 0.05


def test_kit_mia_is_the_kit_procedure():
    rng = np.random.default_rng(3)
    forget, test = rng.exponential(0.8, size=150), rng.exponential(1.0, size=120)
    n = 120
    samples = np.concatenate([test[:n], forget[:n]]).reshape(-1, 1)
    members = [0] * n + [1] * n
    cv = model_selection.StratifiedShuffleSplit(n_splits=10, random_state=0)
    expected = model_selection.cross_val_score(
        linear_model.LogisticRegression(), samples, members, cv=cv, scoring="accuracy").mean()
    assert kit_mia(forget, test) == expected
    assert kit_mia(forget[:n], test) == expected  # truncation is to the smaller side, first n kept


def test_kit_mia_validation():
    with pytest.raises(ValueError):
        kit_mia(np.ones(3), np.ones(100))
    with pytest.raises(ValueError):
        kit_mia(np.ones((10, 2)), np.ones(10))
    with pytest.raises(ValueError):
        kit_mia(np.array([1.0] * 9 + [np.nan]), np.ones(10))
    with pytest.raises(ValueError):
        kit_mia(np.ones(10), np.ones(10), n_splits=0)


def _logits_with_confidence(conf, labels, num_classes, rng):
    """Logits whose softmax puts probability `conf` on the label, the rest spread evenly."""
    conf = np.clip(conf, 1e-6, 1 - 1e-6)
    logits = np.full((conf.size, num_classes), 0.0) + 1e-3 * rng.normal(size=(conf.size, num_classes))
    other = np.log((1 - conf) / (num_classes - 1))
    logits[:] += other[:, None]
    logits[np.arange(conf.size), labels] = np.log(conf)
    return logits


@pytest.fixture
def shadow():
    rng = np.random.default_rng(4)
    c = 10
    retain_labels = rng.integers(0, c, size=400)
    test_labels = rng.integers(0, c, size=300)
    retain = _logits_with_confidence(rng.uniform(0.95, 1.0, 400), retain_labels, c, rng)  # members
    test = _logits_with_confidence(rng.uniform(0.05, 0.8, 300), test_labels, c, rng)      # non-members
    return rng, c, (retain, retain_labels, test, test_labels)


def test_true_class_confidence():
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    np.testing.assert_allclose(true_class_confidence(logits, np.array([0, 1])), [0.7, 0.1])


def test_svc_efficacy_high_when_forget_looks_like_test(shadow):
    rng, c, data = shadow
    labels = rng.integers(0, c, size=200)
    forget = _logits_with_confidence(rng.uniform(0.05, 0.8, 200), labels, c, rng)
    assert svc_mia_efficacy(*data, forget, labels) > 0.9


def test_svc_efficacy_low_when_forget_looks_like_retain(shadow):
    rng, c, data = shadow
    labels = rng.integers(0, c, size=200)
    forget = _logits_with_confidence(rng.uniform(0.95, 1.0, 200), labels, c, rng)
    assert svc_mia_efficacy(*data, forget, labels) < 0.1


def test_svc_efficacy_uses_first_len_test_retain_examples(shadow):
    rng, c, (retain, retain_labels, test, test_labels) = shadow
    labels = rng.integers(0, c, size=100)
    forget = _logits_with_confidence(rng.uniform(0.0, 1.0, 100), labels, c, rng)
    full = svc_mia_efficacy(retain, retain_labels, test, test_labels, forget, labels)
    cut = svc_mia_efficacy(retain[:300], retain_labels[:300], test, test_labels, forget, labels)
    assert full == cut


def test_svc_efficacy_validation(shadow):
    rng, c, (retain, retain_labels, test, test_labels) = shadow
    with pytest.raises(ValueError):  # label out of range
        svc_mia_efficacy(retain, retain_labels, test, test_labels, test[:5], np.full(5, c))
    with pytest.raises(ValueError):  # label count mismatch
        svc_mia_efficacy(retain, retain_labels[:-1], test, test_labels, test[:5], test_labels[:5])
    with pytest.raises(ValueError):  # empty forget set
        svc_mia_efficacy(retain, retain_labels, test, test_labels, test[:0], test_labels[:0])
    with pytest.raises(ValueError):  # non-finite logits
        svc_mia_efficacy(retain, retain_labels, test * np.nan, test_labels, test[:5], test_labels[:5])
