"""Every registered method declares a search space (jax_unlearn/methods/spaces.py) that names only its own
hyper-parameters, holds its registered default, and samples in range. That every space traces per lane (a
leaderboard round is one program) is part of the method contract (tests/methods/test_contract.py)."""
import numpy as np
import pytest

from jax_unlearn.methods import METHODS
from jax_unlearn.methods.registry import Range, SearchSpace, search_space
from jax_unlearn.methods.spaces import SPACES


def test_every_registered_method_declares_a_space_and_only_registered_ones():
    assert sorted(SPACES) == sorted(METHODS)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_space_covers_only_the_methods_hyper_parameters_and_holds_the_default(name):
    space = search_space(name)
    defaults = METHODS[name].defaults
    assert set(space.names()) <= set(defaults) and space.names()
    for k, r in space.floats.items():
        assert r.low <= defaults[k] <= r.high, (k, defaults[k], r)  # the registered default is a candidate
    if space.epochs:
        assert all(isinstance(e, int) and e >= 1 for e in space.epochs)


def test_a_space_naming_a_foreign_hyper_parameter_is_refused(monkeypatch):
    monkeypatch.setitem(SPACES, "finetune", SearchSpace({"lr": Range(1e-3, 1e-1, True), "alpha": Range(0, 1)}))
    with pytest.raises(ValueError, match=r"finetune.*\['alpha'\].*does not have"):
        search_space("finetune")
    monkeypatch.setitem(SPACES, "finetune", SearchSpace({"batch_size": Range(16, 64)}))
    with pytest.raises(ValueError, match="batch_size has default 64, not a float range"):
        search_space("finetune")


def test_bad_ranges_are_refused():
    with pytest.raises(ValueError, match="bad range"):
        Range(1.0, 0.5)
    with pytest.raises(ValueError, match="log scale needs low > 0"):
        Range(0.0, 1.0, log=True)


def test_sampling_is_seeded_in_range_and_log_uniform():
    space = SearchSpace({"lr": Range(1e-4, 1e-0, True), "alpha": Range(0.2, 0.4)}, (1, 3))
    a = space.sample(4000, np.random.default_rng(7))
    assert a == space.sample(4000, np.random.default_rng(7))
    lr, alpha = np.log10(a["lr"]), np.asarray(a["alpha"])
    assert lr.min() >= -4 and lr.max() <= 0 and alpha.min() >= 0.2 and alpha.max() <= 0.4
    # log-uniform: each decade holds a quarter of the draws (binomial sd ~ 0.007 at n = 4000)
    np.testing.assert_allclose(np.histogram(lr, bins=4, range=(-4, 0))[0] / 4000, 0.25, atol=0.03)
    assert set(a["epochs"]) == {1, 3}
