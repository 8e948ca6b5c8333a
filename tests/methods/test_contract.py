"""The method contract, for every method in the registry (present and future: the parameters are
``METHODS`` itself): two seeds vmapped have finite metrics and weights, differ from each other, and lane i
equals a run of seed i alone, the weights a masked method declares frozen (``Method.frozen``) end bit for
bit as they began; the declared search space and the other float hyper-parameters of :data:`TRACED` trace
as per-lane values through the sweep planner. Method-specific behaviour lives in the per-family test files
(the search-space table's own checks: tests/methods/test_spaces.py).

Hyper-parameters: the registered defaults with the small overrides of the acceptance tool's tables
(``tests/tools/method_outputs.py`` ``TINY``; a new method gets ``TINY_DEFAULT``). Programs compile with
XLA's backend optimisations off: compile time dominates on a CPU, and both sides of every comparison
compile the same way.
"""
import jax
import numpy as np
import pytest

from jax_unlearn.engine.lanes import seed_keys
from jax_unlearn.engine.run import RunConfig, context_for, device_data, make_run
from jax_unlearn.jobs.sweep import plan_settings
from jax_unlearn.methods import METHODS, build_method
from jax_unlearn.methods.registry import search_space
from tiny import quick_init
from tools.method_outputs import COMPILE_OPTIONS, TINY, TINY_DEFAULT  # tests/ is on sys.path

NAMES = sorted(METHODS)
# Methods with no randomness after the start model: their seeds must agree bit for bit instead.
DETERMINISTIC = {"ssd", "influence"}
CONFIG = RunConfig(track=False)
# Lane i against seed i alone: vmapped convolutions sum in another order, so float32 results differ by
# rounding, measured against how far the run moved the weights (a per-leaf relative error of a
# near-cancelling update means nothing). Adam and UNSIR's noise ascent amplify that rounding to ~4e-4 of
# the movement; a lane that ran another seed's key differs by the order of the movement itself. The
# teacher-student and noise methods are also checked exactly in float64 (tests/methods/test_distill.py).
REL_TOL = 1e-3


@pytest.fixture(scope="module")
def setup(tiny_data, tiny_model):
    ctx = context_for(tiny_data, tiny_model)
    start = quick_init(tiny_model, jax.random.key(42))
    return ctx, device_data(tiny_data), start


def _build(name, ctx):
    overrides = {k: v for k, v in TINY.get(name, TINY_DEFAULT).items() if k in METHODS[name].defaults}
    return build_method(name, ctx, **overrides)


def _compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile(COMPILE_OPTIONS)


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(tree)])


@pytest.mark.parametrize("name", NAMES)
def test_method_contract(setup, name):
    ctx, data, start = setup
    method = _build(name, ctx)
    run = make_run(ctx, method, CONFIG)
    keys = seed_keys(0, np.arange(2))
    many = jax.vmap(run, in_axes=(0, None, None))
    variables, metrics = jax.device_get(_compiled(many, keys, start, data)(keys, start, data))

    assert metrics["finite"].shape == (2, method.num_epochs) and metrics["finite"].all()
    for key, value in metrics.items():
        assert value.shape == (2, method.num_epochs), key
    lanes = [_flat(jax.tree_util.tree_map(lambda a, i=i: a[i], variables)) for i in range(2)]
    assert np.isfinite(lanes[0]).all() and np.isfinite(lanes[1]).all()
    if name in DETERMINISTIC:
        np.testing.assert_array_equal(lanes[0], lanes[1])
    else:
        assert not np.array_equal(lanes[0], lanes[1]), "two seeds gave the same model"

    if method.frozen is not None:  # a fixed update mask: those weights never move, in any lane
        k_inits = [jax.random.split(k)[0] for k in keys]  # make_run's init keys
        init = _compiled(method.init, k_inits[0], start, data)
        for i in range(2):
            began = jax.device_get(init(k_inits[i], start, data))
            frozen = jax.tree_util.tree_leaves(jax.device_get(method.frozen(began)))
            before = jax.tree_util.tree_leaves(method.variables(began)["params"])
            after = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a, i=i: a[i], variables)["params"])
            assert any(np.any(f) for f in frozen) and not all(np.all(f) for f in frozen)
            for b, a, f in zip(before, after, frozen):
                np.testing.assert_array_equal(np.where(f, a, 0), np.where(f, b, 0))

    single = _compiled(run, keys[0], start, data)
    origin = _flat(start)
    for i in range(2):
        alone = _flat(jax.device_get(single(keys[i], start, data))[0])
        moved = np.linalg.norm(alone - origin)
        assert np.linalg.norm(lanes[i] - alone) <= REL_TOL * moved, f"lane {i} != seed {i} alone"


# Hyper-parameters that trace as per-lane values beyond the declared search space (which every method has:
# jax_unlearn/methods/spaces.py), so a sweep over them is one vmapped program too.
TRACED = {
    "bad-teacher": ("lr", "temperature", "epochs"),
    "scrub": ("lr", "momentum", "weight_decay", "temperature", "gamma", "alpha", "lr_decay_rate", "epochs"),
    "ssd": ("alpha", "lam"),
    "unsir": ("noise_lr", "noise_reg", "impair_lr", "repair_lr"),
    "noise-student-curriculum": ("noise_lr", "noise_reg", "impair_lr", "repair_lr", "distill_lr", "temperature"),
    "l1-sparse": ("lr", "momentum", "weight_decay", "alpha", "epochs"),
    "neggrad+": ("lr", "momentum", "alpha", "l2_to_start"),
    "random-label": ("lr", "momentum", "weight_decay"),
    "salun": ("lr", "momentum", "weight_decay", "fraction"),
    "gradient-ascent": ("lr", "momentum", "weight_decay"),
    "cf-k": ("lr", "lr_decay_rate", "l2_to_start", "epochs"),
    "eu-k": ("lr", "lr_decay_rate", "l2_to_start", "epochs"),
    "fisher": ("alpha",),
    "influence": ("alpha",),
}


@pytest.mark.parametrize("name", NAMES)
def test_declared_hyper_parameters_trace_per_lane(setup, name):
    """Two settings as two lanes of one program, through the sweep planner a leaderboard round uses: the
    declared search space drawn from (its epochs at their least and most), the other :data:`TRACED` names at
    the registered (tiny) values. Traced with ``jax.eval_shape``, never compiled."""
    ctx, data, start = setup
    overrides = {k: v for k, v in TINY.get(name, TINY_DEFAULT).items() if k in METHODS[name].defaults}
    values = {**METHODS[name].defaults, **overrides}
    space = search_space(name)
    settings = space.sample(2, np.random.default_rng(0))
    if space.epochs:
        settings["epochs"] = [min(space.epochs), max(space.epochs)]
    settings.update({k: [values[k]] * 2 for k in TRACED.get(name, ()) if k not in settings})
    static = {k: v for k, v in overrides.items() if k not in settings}
    plan = plan_settings(name, ctx, settings, static, 1)
    run = make_run(ctx, plan.build, CONFIG)
    out = jax.eval_shape(jax.vmap(run, in_axes=(0, None, None, 0)), seed_keys(0, np.arange(2)), start, data,
                         plan.lane_hyper)
    assert sorted(plan.lane_hyper) == sorted(settings)
    assert all(np.isfinite(np.asarray(v, np.float64)).all() for v in plan.lane_hyper.values())
    leaves = jax.tree_util.tree_leaves(out)
    assert leaves and all(leaf.shape[0] == 2 for leaf in leaves)
