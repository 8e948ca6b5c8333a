"""The five DeepUnlearn baselines: gradient-ascent, cf-k, eu-k, fisher, influence.

Every method: vmapped over 2 seeds, finite metrics, seeds differ (influence has no randomness: all seeds
equal), lane i == seed i run alone; float hyper-parameters may be traced per lane; defaults pinned to the
sources. Then each one's defining behaviour, checked against brute force in float64 on a tiny model.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_unlearn.data.types import Normalization, Split, UnlearningData
from jax_unlearn.engine.losses import cross_entropy
from jax_unlearn.engine.run import RunConfig, context_for, device_data, make_run, seed_keys
from jax_unlearn.engine.train import forward_eval
from jax_unlearn.methods import METHODS, build_method
from jax_unlearn.methods import fisher as fisher_mod
from jax_unlearn.methods import goel
from jax_unlearn.methods.finetune import supervised
from jax_unlearn.models import ResNet, ResNet18, init_variables

# XLA's CPU compile time dominates; unoptimised code is fine for a tiny model and both sides compile alike.
FAST = {"xla_backend_optimization_level": 0}
# float64 throughout: a lane must compute exactly the single-seed function (1e-9 of how far it moved), and
# the brute-force references agree to rounding.
TOL = 1e-9
HYPER = {
    "gradient-ascent": dict(epochs=2, batch_size=4, lr=0.05),
    "cf-k": dict(epochs=3, batch_size=8, lr=0.05),
    "eu-k": dict(epochs=3, batch_size=8, lr=0.05),
    "fisher": dict(alpha=1e-6, batch_size=8, chunk_size=2),
    "influence": dict(alpha=0.2, batch_size=8, num_samples=5, chunk_size=3),
}
NAMES = list(HYPER)
CONFIG = RunConfig(track=False)


def _split(rng, n, forget=False):
    labels = rng.integers(0, 4, n).astype(np.int32)
    images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    images[..., 0] = 60 * labels[:, None, None]  # the rule: red level -> class
    if forget:  # memorised exceptions: a green marker and a shifted label
        images[..., 1] = 255
        labels = (labels + 1) % 4
    return Split(images, labels)


@pytest.fixture(scope="module", autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    data = UnlearningData(retain=_split(rng, 30), forget=_split(rng, 8, forget=True),
                          validation=_split(rng, 8), test=_split(rng, 8), num_classes=4,
                          normalization=Normalization(scale=1 / 255, mean=(0.5,) * 3, std=(0.25,) * 3),
                          description={"source": "synthetic"})
    model = ResNet(stage_sizes=(1, 1), num_classes=4, width=4, dtype=jnp.float64)  # two stages: k=1 is layer2
    ctx = context_for(data, model)
    dd = device_data(data)
    init = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), init_variables(model, jax.random.key(0)))
    # The "original": retain ∪ forget, long enough to fit the marked forget examples.
    original = supervised(ctx, split="train", epochs=15, batch_size=8, optimizer="sgd", lr=0.05, momentum=0.9,
                          weight_decay=0.0)
    start, _ = jax.jit(make_run(ctx, original, CONFIG), compiler_options=FAST)(jax.random.key(1), init, dd)
    return ctx, dd, start


@functools.lru_cache(maxsize=None)
def _runs(name, setup_id):
    ctx, dd, start = _SETUP[setup_id]
    run = make_run(ctx, build_method(name, ctx, **HYPER[name]), CONFIG)
    keys = seed_keys(0, np.arange(2))
    many = jax.jit(jax.vmap(run, in_axes=(0, None, None)), compiler_options=FAST)(keys, start, dd)
    one = jax.jit(run, compiler_options=FAST)
    return many, [one(keys[i], start, dd) for i in range(2)]


_SETUP = {}


@pytest.fixture(scope="module")
def runs(setup):
    _SETUP[id(setup)] = setup
    return lambda name: _runs(name, id(setup))


def flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(tree)])


def lane(tree, i):
    return jax.tree_util.tree_map(lambda a: a[i], tree)


def forget_ce(ctx, dd, variables):
    return float(cross_entropy(forward_eval(ctx, variables, dd["forget"][0]), dd["forget"][1]))


# ------------------------------------------------------------------------------------------ every method
@pytest.mark.parametrize("name", NAMES)
def test_vmapped_seeds_finite_differ_and_equal_their_single_runs(setup, runs, name):
    ctx, dd, start = setup
    (many, metrics), singles = runs(name)
    epochs = build_method(name, ctx, **HYPER[name]).num_epochs
    assert metrics and all(np.shape(m) == (2, epochs) and np.all(np.isfinite(m)) for m in metrics.values())
    origin = flat(start)
    for i, (one, one_metrics) in enumerate(singles):
        moved = np.linalg.norm(flat(one) - origin)
        assert moved > 0
        assert np.linalg.norm(flat(lane(many, i)) - flat(one)) <= TOL * moved
        for k in one_metrics:
            np.testing.assert_allclose(one_metrics[k], metrics[k][i], rtol=1e-9)
    a, b = flat(lane(many, 0)), flat(lane(many, 1))
    if name == "influence":  # no randomness: every seed is the same model
        np.testing.assert_array_equal(a, b)
    else:
        assert np.linalg.norm(a - b) > 1e-3 * np.linalg.norm(a - origin)


TRACED = {  # float hyper-parameters a per-lane sweep passes as traced scalars (and cf-k/eu-k's epochs)
    "gradient-ascent": dict(lr=0.05, momentum=0.9, weight_decay=5e-4),
    "cf-k": dict(lr=0.05, lr_decay_rate=0.1, l2_to_start=0.1, epochs=3),
    "eu-k": dict(lr=0.05, lr_decay_rate=0.1, l2_to_start=0.1, epochs=3),
    "fisher": dict(alpha=0.2),
    "influence": dict(alpha=0.2),
}


@pytest.mark.parametrize("name", NAMES)
def test_float_hyper_parameters_may_be_traced_per_lane(setup, name):
    ctx, dd, start = setup

    def one_epoch(key, hyper):
        method = build_method(name, ctx, **{**HYPER[name], **hyper})
        return method.epoch(method.init(key, start, dd), key, dd)[1]

    lanes = {k: jnp.full((2,), v, jnp.int32 if k == "epochs" else jnp.float64) for k, v in TRACED[name].items()}
    metrics = jax.eval_shape(jax.vmap(one_epoch), seed_keys(0, np.arange(2)), lanes)  # traces, never compiles
    assert all(m.shape == (2,) for m in metrics.values())


def test_registered_with_the_sources_defaults():
    expect = {  # see each factory's docstring for the file and line each value comes from
        "gradient-ascent": dict(epochs=5, batch_size=256, lr=1e-4, momentum=0.9, weight_decay=5e-4),
        "cf-k": dict(epochs=10, batch_size=256, k=1, lr=0.01, lr_decay_rate=0.1, l2_to_start=0.1),
        "eu-k": dict(epochs=10, batch_size=256, k=1, lr=0.01, lr_decay_rate=0.1, l2_to_start=0.1),
        "fisher": dict(alpha=0.2, batch_size=64, chunk_size=1),
        "influence": dict(alpha=0.2, batch_size=256, num_samples=1000, chunk_size=32),
    }
    for name, defaults in expect.items():
        assert METHODS[name].defaults == defaults
        assert "deepunlearn" in METHODS[name].reference


def test_forget_set_methods_refuse_an_empty_one(setup):
    ctx = setup[0]
    empty = type(ctx)(ctx.model, ctx.normalization, {**ctx.sizes, "forget": 0}, ctx.class_counts)
    for name in ("gradient-ascent", "influence"):
        with pytest.raises(ValueError, match="forget set"):
            build_method(name, empty)


# --------------------------------------------------------------------------------------- gradient ascent
def test_gradient_ascent_raises_the_forget_loss(setup, runs):
    ctx, dd, start = setup
    (many, metrics), _ = runs("gradient-ascent")
    before = forget_ce(ctx, dd, start)
    for i in range(2):
        assert forget_ce(ctx, dd, lane(many, i)) > before + 0.1
        np.testing.assert_array_equal(metrics["forget_loss"][i], -metrics["loss"][i])
        assert metrics["forget_loss"][i][-1] > metrics["forget_loss"][i][0]
