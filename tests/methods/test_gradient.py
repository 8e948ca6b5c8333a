"""Gradient-based methods (l1-sparse, neggrad+, random-label, salun) and the shared mask helpers.

The contract every method keeps (seeds, lanes, finiteness) is tests/methods/test_contract.py. Here each
method's defining behaviour on tiny data, starting from a small model trained on retain ∪ forget. The forget set
carries a marker (green channel) with labels shifted from the retain rule, so it is *memorised* knowledge
that training on the retain set alone does not restore — what unlearning must remove.

Compilation dominates the CPU time here, so each method's vmapped run is compiled once and cached.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_unlearn.methods.gradient as gradient  # registers the methods
from jax_unlearn.data.types import Normalization, Split, UnlearningData
from jax_unlearn.engine import masks
from jax_unlearn.engine.losses import cross_entropy
from jax_unlearn.engine.optim import torch_sgd
from jax_unlearn.engine.lanes import seed_keys
from jax_unlearn.engine.run import RunConfig, context_for, device_data, make_run
from jax_unlearn.engine.train import accuracy, forward_eval
from jax_unlearn.methods import METHODS, build_method
from jax_unlearn.methods.finetune import supervised
from jax_unlearn.models import ResNet, init_variables

MODEL = ResNet(stage_sizes=(1,), num_classes=4, width=4)  # ~900 params: compiles in seconds
HYPER = {  # small and strong enough to show each method's effect in a few steps
    "l1-sparse": dict(epochs=3, batch_size=16, lr=0.05, alpha=0.05, no_l1_epochs=1),
    "neggrad+": dict(epochs=3, batch_size=16, forget_batch_size=4, lr=0.05, alpha=0.5),
    "random-label": dict(epochs=10, batch_size=16, lr=0.1),
    "salun": dict(epochs=3, batch_size=16, lr=0.1, fraction=0.5),
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


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    data = UnlearningData(retain=_split(rng, 45), forget=_split(rng, 10, forget=True),
                          validation=_split(rng, 12), test=_split(rng, 12), num_classes=4,
                          normalization=Normalization(scale=1 / 255, mean=(0.5,) * 3, std=(0.25,) * 3),
                          description={"source": "synthetic"})
    ctx = context_for(data, MODEL)
    dd = device_data(data)
    # The "original" model: trained on retain ∪ forget until it fits both. (jit everything: eager Flax
    # init and eager forward passes cost far more CPU than compiling them.)
    original = supervised(ctx, split="train", epochs=40, batch_size=16, optimizer="sgd", lr=0.05, momentum=0.9,
                          weight_decay=0.0)
    init = jax.jit(lambda key: init_variables(MODEL, key))(jax.random.key(0))
    start, _ = jax.jit(make_run(ctx, original, CONFIG))(jax.random.key(1), init, dd)
    _EVAL[id(dd)] = (jax.jit(lambda v: cross_entropy(forward_eval(ctx, v, dd["forget"][0]), dd["forget"][1])),
                     jax.jit(lambda v: accuracy(ctx, v, *dd["forget"])))
    assert float(forget_acc(ctx, dd, start)) == 1.0
    return ctx, dd, start


_EVAL = {}


def forget_ce(ctx, dd, variables):
    return float(_EVAL[id(dd)][0](variables))


def forget_acc(ctx, dd, variables):
    return float(_EVAL[id(dd)][1](variables))


@functools.lru_cache(maxsize=None)
def _vmapped(name, setup_id):
    """(keys, stacked variables, metrics) of 2 seeds vmapped; cached so each method compiles once."""
    ctx, dd, start = _SETUP[setup_id]
    run = make_run(ctx, build_method(name, ctx, **HYPER[name]), CONFIG)
    keys = seed_keys(0, np.arange(2))
    variables, metrics = jax.jit(jax.vmap(run, in_axes=(0, None, None)))(keys, start, dd)
    return keys, variables, metrics


_SETUP = {}


@pytest.fixture(scope="module")
def vmapped(setup):
    _SETUP[id(setup)] = setup
    return lambda name: _vmapped(name, id(setup))


def lane(tree, i):
    return jax.tree_util.tree_map(lambda a: a[i], tree)


def flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(tree)])


def test_registry_names_and_reference_defaults():
    expect = {
        "l1-sparse": dict(epochs=10, batch_size=256, lr=0.01, momentum=0.9, weight_decay=5e-4, alpha=5e-4,
                          no_l1_epochs=0),
        "neggrad+": dict(epochs=10, batch_size=128, forget_batch_size=64, lr=0.01, momentum=0.0, alpha=0.95,
                         l2_to_start=5e-4),
        "random-label": dict(epochs=10, batch_size=256, lr=0.01, momentum=0.9, weight_decay=5e-4),
        # lr: OPTML-Group/Unlearn-Saliency Classification/README.md (a6e89fd), ResNet-18/CIFAR-10 example.
        "salun": dict(epochs=10, batch_size=256, lr=0.013, momentum=0.9, weight_decay=5e-4, fraction=0.5),
    }
    for name, defaults in expect.items():
        assert METHODS[name].defaults == defaults
        assert METHODS[name].reference


def test_methods_needing_a_forget_set_refuse_an_empty_one(setup):
    ctx = setup[0]
    empty = type(ctx)(ctx.model, ctx.normalization, {**ctx.sizes, "forget": 0}, ctx.class_counts)
    for name in ("neggrad+", "random-label", "salun"):
        with pytest.raises(ValueError, match="forget set"):
            build_method(name, empty)


# --------------------------------------------------------------------------------- defining behaviours
def test_l1_sparse_shrinks_the_l1_norm_versus_plain_finetuning(setup, vmapped):
    ctx, dd, start = setup
    keys, many, _ = vmapped("l1-sparse")
    plain = jax.jit(make_run(ctx, build_method("l1-sparse", ctx, **{**HYPER["l1-sparse"], "alpha": 0.0}), CONFIG))
    plain_vars, _ = plain(keys[0], start, dd)  # same seed: same batches, only the ℓ1 term differs
    l1 = lambda v: np.abs(flat(v["params"])).sum()  # noqa: E731
    assert l1(lane(many, 0)) < l1(plain_vars) - 0.01 * l1(start)


def test_l1_schedule_decays_linearly_per_epoch_and_sign_of_zero_is_zero():
    schedule = gradient.linear_decay_per_epoch(0.1, 4, steps_per_epoch_=3)
    got = [float(schedule(jnp.int32(s))) for s in range(0, 18, 3)]
    np.testing.assert_allclose(got, [0.1, 0.075, 0.05, 0.025, 0.0, 0.0], rtol=1e-6)
    tx = gradient.l1_subgradient(0.5)
    params = {"w": jnp.array([-2.0, 0.0, 3.0])}
    updates, state = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    np.testing.assert_array_equal(updates["w"], [-0.5, 0.0, 0.5])
    assert int(state.count) == 1


def test_neggrad_plus_raises_the_forget_loss(setup, vmapped):
    ctx, dd, start = setup
    _, many, metrics = vmapped("neggrad+")
    before = forget_ce(ctx, dd, start)
    for i in range(2):
        assert forget_ce(ctx, dd, lane(many, i)) > before
        forget_loss = np.asarray(metrics["forget_loss"][i])  # per-epoch mean over the cycled forget batches
        assert forget_loss[-1] > forget_loss[0]
    assert set(metrics) == {"loss", "retain_loss", "forget_loss", "finite"}  # finite: the engine's per-epoch NaN flag


def test_random_label_lowers_forget_accuracy(setup, vmapped):
    ctx, dd, start = setup
    _, many, metrics = vmapped("random-label")
    assert float(forget_acc(ctx, dd, start)) == 1.0
    for i in range(2):
        assert float(forget_acc(ctx, dd, lane(many, i))) < 0.9
    assert set(metrics) == {"loss", "forget_loss", "finite"}


def test_salun_moves_only_salient_weights_and_keeps_the_rest_bit_identical(setup, vmapped):
    ctx, dd, start = setup
    _, many, _ = vmapped("salun")
    images, labels = dd["forget"]
    scores = gradient.forget_saliency(ctx, start, images, labels, HYPER["salun"]["batch_size"])
    mask = masks.top_fraction_mask(scores, HYPER["salun"]["fraction"])
    keep = flat(mask).astype(bool)
    assert keep.sum() == int(keep.size * 0.5)
    assert np.min(flat(scores)[keep]) >= np.max(flat(scores)[~keep])
    origin = flat(start["params"])
    for i in range(2):
        after = flat(lane(many, i)["params"])
        np.testing.assert_array_equal(after[~keep], origin[~keep])  # frozen: bit-identical after 12 steps
        assert np.mean(after[keep] != origin[keep]) > 0.95  # salient: trained (momentum, weight decay)
        assert not np.array_equal(flat(lane(many, i)["batch_stats"]), flat(start["batch_stats"]))


# ------------------------------------------------------------------------------------------------ masks
def test_top_fraction_mask_selects_exactly_the_top_fraction():
    rng = np.random.default_rng(0)
    values = rng.permutation(100).astype(np.float32)  # distinct: the top set is unique
    tree = {"a": jnp.asarray(values[:30].reshape(5, 6)), "b": {"c": jnp.asarray(values[30:])}}
    for fraction in (0.0, 0.13, 0.5, 1.0):
        got = flat(masks.top_fraction_mask(tree, fraction)).astype(bool)
        assert got.sum() == int(100 * fraction)
        np.testing.assert_array_equal(got, values >= 100 - int(100 * fraction))
    per_leaf = masks.top_fraction_mask(tree, 0.5, global_=False)
    np.testing.assert_array_equal(np.ravel(per_leaf["a"]), values[:30] >= np.sort(values[:30])[15])
    np.testing.assert_array_equal(per_leaf["b"]["c"], values[30:] >= np.sort(values[30:])[35])
    ties = masks.top_fraction_mask({"x": jnp.ones(10)}, 0.3)["x"]  # exact count even with ties
    np.testing.assert_array_equal(ties, np.arange(10) < 3)
    with pytest.raises(ValueError):
        masks.top_fraction_mask(tree, 1.5)


def test_masked_optimizer_keeps_frozen_weights_bit_identical():
    params = {"w": jnp.array([1.0, -2.0, 3.0, 0.5]), "b": jnp.array([0.25, -0.75])}
    mask = {"w": jnp.array([True, False, True, False]), "b": jnp.array([False, True])}
    tx = masks.masked(torch_sgd(0.1, momentum=0.9, weight_decay=0.5), mask)
    state = tx.init(params)
    p = params
    for step in range(5):
        grads = {"w": jnp.array([1.0, jnp.inf if step == 2 else 2.0, -1.0, 4.0]), "b": jnp.array([3.0, 1.0])}
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
    for k in params:
        frozen = ~np.asarray(mask[k])
        np.testing.assert_array_equal(np.asarray(p[k])[frozen], np.asarray(params[k])[frozen])  # inf never leaks
        assert np.all(np.asarray(p[k])[~frozen] != np.asarray(params[k])[~frozen])
    by_fn = masks.masked(torch_sgd(0.1), lambda p: masks.select(p, "linear"))
    fc = {"fc": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
          "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)}}
    updates, _ = by_fn.update(jax.tree_util.tree_map(jnp.ones_like, fc), by_fn.init(fc), fc)
    assert float(jnp.abs(updates["bn"]["scale"]).sum()) == 0.0 and float(updates["fc"]["kernel"][0, 0]) != 0.0


def test_select_finds_conv_linear_and_batchnorm_leaves():
    model = ResNet(stage_sizes=(1, 1), num_classes=4, width=4)  # has a downsample branch
    shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))["params"]
    params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)  # only shapes matter
    kinds = masks.leaf_kinds(params)
    assert kinds["conv1"]["kernel"] == "conv" and kinds["layer2_0"]["downsample_0"]["kernel"] == "conv"
    assert kinds["fc"] == {"kernel": "linear", "bias": "linear"}
    assert kinds["bn1"] == {"scale": "batchnorm", "bias": "batchnorm"}
    assert kinds["layer2_0"]["downsample_1"]["bias"] == "batchnorm"
    by_kind = {k: float(masks.mask_fraction(masks.select(params, k))) for k in masks.KINDS}
    assert abs(sum(by_kind.values()) - 1.0) < 1e-6 and all(v > 0 for v in by_kind.values())
    sizes = [x.size for x in jax.tree_util.tree_leaves(params) if x.ndim == 4]
    n = sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert by_kind["conv"] == pytest.approx(sum(sizes) / n)
    with pytest.raises(ValueError, match="unknown layer kind"):
        masks.select(params, "attention")
