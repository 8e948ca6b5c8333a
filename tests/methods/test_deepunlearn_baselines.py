"""The five DeepUnlearn baselines: gradient-ascent, cf-k, eu-k, fisher, influence.

Float hyper-parameters may be traced per lane; defaults pinned to the sources (the contract every method
keeps — seeds, lanes, finiteness — is tests/methods/test_contract.py). Then each one's defining behaviour, checked against brute force in float64 on a tiny model.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_unlearn.data.types import Normalization, Split, UnlearningData
from jax_unlearn.engine.losses import cross_entropy
from jax_unlearn.engine.lanes import seed_keys
from jax_unlearn.engine.run import RunConfig, context_for, device_data, make_run
from jax_unlearn.engine.train import forward_eval
from jax_unlearn.methods import METHODS, build_method
from jax_unlearn.methods import fisher as fisher_mod
from jax_unlearn.methods import goel
from jax_unlearn.methods.finetune import supervised
from jax_unlearn.models import ResNet, ResNet18, init_variables

# XLA's CPU compile time dominates; unoptimised code is fine for a tiny model and both sides compile alike.
from tiny import FAST_COMPILE as FAST, quick_init  # tests/ is on sys.path
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
    init = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), quick_init(model, jax.random.key(0)))
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


# ------------------------------------------------------------------------------------------- cf-k, eu-k
def _stage_of(name):
    return int(name[len("layer")]) if name.startswith("layer") else None


def test_last_blocks_mask_is_deepunlearns_last_k_stages_plus_fc():
    shapes = jax.eval_shape(lambda: init_variables(ResNet18(num_classes=10), jax.random.key(0)))["params"]
    params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), shapes)
    for k, stages in [(1, {4}), (2, {3, 4}), (4, {1, 2, 3, 4}), (7, {1, 2, 3, 4})]:  # blocks[-k:]
        mask = goel.last_blocks_mask(params, k)
        for name, sub in mask.items():
            on = name == "fc" or _stage_of(name) in stages
            assert all(np.all(m == on) for m in jax.tree_util.tree_leaves(sub)), (k, name)
    trained = sum(int(m.sum()) for m in jax.tree_util.tree_leaves(goel.last_blocks_mask(params, 1)))
    # layer4: convs 3·3·256·512 + 3 × 3·3·512·512 + 1·1·256·512, five BatchNorms × 2·512; fc 512·10 + 10
    assert trained == 1_179_648 + 3 * 2_359_296 + 131_072 + 5 * 1024 + 5130
    with pytest.raises(ValueError, match="k must be >= 1"):
        goel.last_blocks_mask(params, 0)


def test_step_decay_matches_the_reference_adjust_learning_rate():
    for epochs in range(1, 21):
        milestones = np.asarray([int(epochs * 0.5), int(epochs * 0.8), int(epochs * 0.9)])
        expect = [0.01 * 0.1 ** np.sum(e > milestones) for e in range(epochs)]  # RepDistiller, lr = sgda lr
        schedule = goel.step_decay_per_epoch(0.01, epochs, 0.1, steps_per_epoch_=3)
        got = [float(schedule(jnp.int32(3 * e + 2))) for e in range(epochs)]
        np.testing.assert_allclose(got, expect, rtol=1e-6)


@pytest.mark.parametrize("name", ["cf-k", "eu-k"])
def test_last_k_trains_only_the_last_stage_and_fc_and_keeps_the_rest_bit_identical(setup, runs, name):
    ctx, dd, start = setup
    (many, _), _ = runs(name)
    for i in range(2):
        params = lane(many, i)["params"]
        for top, sub in start["params"].items():
            moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(params[top]),
                                                              jax.tree_util.tree_leaves(sub))]
            assert all(moved) if top in ("layer2_0", "fc") else not any(moved), top
        jax.tree_util.tree_map(np.testing.assert_array_equal, lane(many, i)["batch_stats"], start["batch_stats"])


def test_cf_k_step_is_masked_eval_mode_sgd_on_the_retain_loss(setup):
    ctx, dd, start = setup
    n = ctx.size("retain")  # one full batch, one epoch: one step from the start (pull-back term 0 there)
    run = make_run(ctx, build_method("cf-k", ctx, epochs=1, batch_size=n, lr=0.05), CONFIG)
    got, _ = jax.jit(run, compiler_options=FAST)(jax.random.key(0), start, dd)
    grads = jax.grad(lambda p: cross_entropy(forward_eval(ctx, {"params": p, "batch_stats": start["batch_stats"]},
                                                          dd["retain"][0]), dd["retain"][1]))(start["params"])
    for top in ("layer2_0", "fc"):
        expect = jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, start["params"][top], grads[top])
        for a, b, p in zip(*(jax.tree_util.tree_leaves(t) for t in (got["params"][top], expect, start["params"][top]))):
            assert np.max(np.abs(a - b)) <= 1e-9 * max(np.max(np.abs(b - p)), 1e-300)


def test_eu_k_redraws_exactly_the_last_stage_and_fc_with_deepunlearns_init(setup):
    ctx, dd, start = setup
    method = build_method("eu-k", ctx, **HYPER["eu-k"])
    states = [method.init(jax.random.key(s), start, dd) for s in (3, 4)]
    for state in states:
        params = state.train.params
        jax.tree_util.tree_map(np.testing.assert_array_equal, state.anchor, params)  # pull towards the re-init
        for top, sub in start["params"].items():
            if top not in ("layer2_0", "fc"):
                jax.tree_util.tree_map(np.testing.assert_array_equal, params[top], sub)
        for name, module in params["layer2_0"].items():
            if "scale" in module:
                np.testing.assert_array_equal(module["scale"], 1.0)
                np.testing.assert_array_equal(module["bias"], 0.0)
            else:
                kh, kw, _, out = module["kernel"].shape
                assert np.max(np.abs(module["kernel"])) <= np.sqrt(6 / (out * kh * kw))
                assert not np.array_equal(module["kernel"], start["params"]["layer2_0"][name]["kernel"])
        fan_in, fan_out = params["fc"]["kernel"].shape
        assert np.max(np.abs(params["fc"]["kernel"])) <= np.sqrt(6 / (fan_in + fan_out))
        np.testing.assert_array_equal(params["fc"]["bias"], 0.0)
    a, b = (s.train.params["layer2_0"]["conv1"]["kernel"] for s in states)
    assert not np.array_equal(a, b)  # drawn from the seed key


def test_reinitialize_draws_kaiming_uniform_fan_out_convs_and_xavier_fc_at_resnet18_size():
    shapes = jax.eval_shape(lambda: init_variables(ResNet18(num_classes=10), jax.random.key(0)))["params"]
    params = jax.tree_util.tree_map(lambda s: np.full(s.shape, 7.0, np.float32), shapes)
    fresh = goel.reinitialize(jax.random.key(0), params, goel.last_blocks_mask(params, 1))
    conv = np.asarray(fresh["layer4_1"]["conv2"]["kernel"])  # U(±√(6/fan_out)): std √(2/fan_out)
    assert np.std(conv) == pytest.approx(np.sqrt(2 / (3 * 3 * 512)), rel=0.01)
    assert np.max(np.abs(conv)) <= np.sqrt(6 / (3 * 3 * 512))
    fc = np.asarray(fresh["fc"]["kernel"])  # xavier: std √(2/(fan_in+fan_out))
    assert np.std(fc) == pytest.approx(np.sqrt(2 / (512 + 10)), rel=0.05)
    np.testing.assert_array_equal(fresh["layer3_1"]["conv2"]["kernel"], 7.0)


# --------------------------------------------------------------------------------------------- fisher
@pytest.mark.parametrize("batch_size, chunk", [(1, 4), (7, 2)])
def test_fisher_diagonal_equals_the_reference_loop(setup, batch_size, chunk):
    ctx, dd, start = setup
    images, labels = dd["retain"]
    got = jax.jit(lambda v: fisher_mod.fisher_diagonal(ctx, v, images, labels, batch_size, chunk),
                  compiler_options=FAST)(start)
    bs = start["batch_stats"]
    logits = jax.jit(lambda p, x: forward_eval(ctx, {"params": p, "batch_stats": bs}, x))
    grad = jax.jit(jax.grad(lambda p, x, y: cross_entropy(forward_eval(ctx, {"params": p, "batch_stats": bs}, x), y)))
    n = images.shape[0]
    total, batches = jax.tree_util.tree_map(np.zeros_like, start["params"]), 0
    for s in range(0, n, batch_size):  # the reference's hessian(): every class y of every batch
        x = images[s:s + batch_size]
        prob = np.asarray(jax.nn.softmax(logits(start["params"], x)))
        for y in range(4):
            g = grad(start["params"], x, jnp.full((x.shape[0],), y))
            total = jax.tree_util.tree_map(lambda t, gi: t + np.mean(prob[:, y]) * np.asarray(gi) ** 2, total, g)
        batches += 1
    expect = jax.tree_util.tree_map(lambda t: t / batches, total)
    assert np.max(np.abs(flat(got) - flat(expect))) <= 1e-10 * np.max(np.abs(flat(expect)))


def test_fisher_variance_is_the_reference_get_mean_var_in_torch_layout():
    import torch

    model = ResNet(stage_sizes=(1, 1), num_classes=3, width=4)  # 3 classes: no conv has 3 output channels
    shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))["params"]
    rng = np.random.default_rng(0)
    fisher = jax.tree_util.tree_map(lambda s: 10.0 ** rng.uniform(-6, 0, s.shape), shapes)  # hits both clamps
    got = fisher_mod.fisher_variance(shapes, jax.tree_util.tree_map(jnp.asarray, fisher), 0.2)

    def to_torch(a):
        a = np.array(a)  # a writable copy for torch
        return torch.from_numpy(a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T if a.ndim == 2 else a)

    def get_mean_var(grad2_acc, num_classes=3, alpha=0.2):  # Unlearn-Sparse unlearn/fisher.py, verbatim
        var = 1.0 / (grad2_acc + 1e-8)
        var = var.clamp(max=1e3)
        if grad2_acc.shape[0] == num_classes:
            var = var.clamp(max=1e2)
        var = alpha * var
        if grad2_acc.ndim > 1:
            var = var.mean(dim=1, keepdim=True).expand_as(grad2_acc).clone()
        if grad2_acc.shape[0] == num_classes:
            var *= 10
        elif grad2_acc.ndim == 1:
            var *= 10
        return var

    for a, f in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(fisher)):
        np.testing.assert_allclose(to_torch(a).numpy(), get_mean_var(to_torch(f)).numpy(), rtol=1e-12)


def test_fisher_noise_is_standard_normal_in_units_of_the_variance(setup, runs):
    ctx, dd, start = setup
    (many, metrics), _ = runs("fisher")
    h = HYPER["fisher"]
    diagonal = jax.jit(lambda v, x, y: fisher_mod.fisher_diagonal(ctx, v, x, y, h["batch_size"], h["chunk_size"]))
    var = fisher_mod.fisher_variance(start["params"], diagonal(start, *dd["retain"]), h["alpha"])
    for i in range(2):
        z = (flat(lane(many, i)["params"]) - flat(start["params"])) / np.sqrt(flat(var))
        assert abs(np.mean(z)) < 0.1 and 0.9 < np.std(z) < 1.1  # ~1,900 draws
        jax.tree_util.tree_map(np.testing.assert_array_equal, lane(many, i)["batch_stats"], start["batch_stats"])
        assert metrics["noise_std"][i][0] == pytest.approx(np.mean(np.sqrt(flat(var))), rel=1e-9)


# ------------------------------------------------------------------------------------------ influence
def test_influence_equals_the_reference_wfisher_loop(setup, runs):
    ctx, dd, start = setup
    (many, metrics), _ = runs("influence")
    h = HYPER["influence"]
    bs, params = start["batch_stats"], start["params"]
    grad = jax.jit(jax.grad(lambda p, x, y: cross_entropy(forward_eval(ctx, {"params": p, "batch_stats": bs}, x), y)))
    g = lambda x, y: flat(grad(params, x, y))  # noqa: E731
    (fi, fl), (ri, rl) = dd["forget"], dd["retain"]
    nf, nr, b = fi.shape[0], ri.shape[0], h["batch_size"]
    forget = sum(g(fi[s:s + b], fl[s:s + b]) * min(b, nf - s) for s in range(0, nf, b))  # sam_grad · real_num
    retain = sum(g(ri[s:s + b], rl[s:s + b]) * min(b, nr - s) for s in range(0, nr, b))
    retain *= nf / ((nf + nr) * nr)
    forget /= nf + nr
    k, o, big_n = forget - retain, None, h["num_samples"]
    for idx in range(nr):  # woodfisher(), the second (effective) definition, batch size 1
        sample = g(ri[idx:idx + 1], rl[idx:idx + 1])
        if o is None:
            o = sample.copy()
        else:
            tmp = o @ sample
            k -= (k @ sample / (big_n + tmp)) * o
            o -= (tmp / (big_n + tmp)) * o
        if idx > big_n:
            break
    step = h["alpha"] * k
    got = flat(lane(many, 0)["params"]) - flat(params)
    assert np.max(np.abs(got - step)) <= 1e-9 * np.max(np.abs(step))
    assert metrics["perturbation_norm"][0][0] == pytest.approx(np.linalg.norm(step), rel=1e-9)
    jax.tree_util.tree_map(np.testing.assert_array_equal, lane(many, 0)["batch_stats"], bs)
