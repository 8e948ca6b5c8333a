"""Every registered method declares a search space (jax_unlearn/methods/spaces.py) that names only its own
hyper-parameters, holds its registered default, and traces per lane (a leaderboard round is one program)."""
import math

import jax
import numpy as np
import pytest

from jax_unlearn.data.types import Normalization, Split, UnlearningData
from jax_unlearn.engine.run import RunConfig, context_for, device_data, make_run
from jax_unlearn.methods import METHODS
from jax_unlearn.methods.registry import Range, SearchSpace, search_space
from jax_unlearn.methods.spaces import SPACES
from jax_unlearn.models import ResNet, init_variables
from jax_unlearn.jobs.sweep import plan_settings


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


def _split(rng, n):
    labels = rng.integers(0, 4, n).astype(np.int32)
    images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    return Split(images, labels, ids=np.array([f"s{i}-{n}" for i in range(n)]))


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    data = UnlearningData(retain=_split(rng, 24), forget=_split(rng, 8), validation=_split(rng, 8),
                          test=_split(rng, 8), num_classes=4,
                          normalization=Normalization(scale=1 / 255, mean=(0.5,) * 3, std=(0.25,) * 3),
                          description={"source": "synthetic"})
    model = ResNet(stage_sizes=(1, 1), num_classes=4, width=4, conv_impl="gemm")
    return context_for(data, model), init_variables(model, jax.random.key(0)), device_data(data)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_two_settings_of_the_space_trace_as_lanes_of_one_program(setup, name):
    """Traced (jax.eval_shape), not run: every declared name is a per-lane value the factory accepts."""
    ctx, start, data = setup
    space = search_space(name)
    settings = space.sample(2, np.random.default_rng(0))
    if space.epochs:
        settings["epochs"] = [min(space.epochs), max(space.epochs)]
    static = {k: 8 for k in METHODS[name].defaults if k.endswith("batch_size")}  # small: trace fast
    plan = plan_settings(name, ctx, settings, static, 1)
    run = make_run(ctx, plan.build, RunConfig(track=False))
    keys = jax.random.split(jax.random.key(0), plan.n_lanes)
    out = jax.eval_shape(jax.vmap(run, in_axes=(0, None, None, 0)), keys, start, data, plan.lane_hyper)
    leaves = jax.tree_util.tree_leaves(out)
    assert leaves and all(leaf.shape[0] == plan.n_lanes for leaf in leaves)
    assert math.isfinite(float(np.asarray(plan.lane_hyper[space.names()[0]]).sum()))
