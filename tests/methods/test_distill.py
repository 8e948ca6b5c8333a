"""Teacher–student and noise methods: each one's defining behaviour on tiny data, and the contract's lane
check in float64 (the contract every method keeps — seeds, lanes, finiteness — is
tests/methods/test_contract.py)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_unlearn.data.types import Normalization, Split, UnlearningData
from jax_unlearn.engine.losses import cross_entropy, kl_divergence
from jax_unlearn.engine.lanes import seed_keys
from jax_unlearn.engine.run import RunConfig, context_for, device_data, make_run
from jax_unlearn.engine.optim import torch_adam
from jax_unlearn.engine.train import create_state, predict, variables_of
from jax_unlearn.methods import METHODS as METHOD_TABLE
from jax_unlearn.methods import build_method
from jax_unlearn.methods import distill, noise, ssd
from jax_unlearn.models import ResNet

# XLA's CPU compile time dominates these tests; unoptimised code is fine for tiny models, and every
# comparison below compiles both sides the same way.
from tiny import FAST_COMPILE as FAST, quick_init  # tests/ is on sys.path
# Everything runs in float64: Adam turns float32 rounding in near-zero gradients into full-size update
# differences (measured: vmapped vs single 4e-3 of the movement after 6 Adam steps in float32, 1e-15 in
# float64), so only float64 can show that a lane computes exactly the single-seed function. UNSIR's noise
# ascent amplifies float64 rounding to ~2e-8 of the movement where XLA vectorises a reduction differently
# in the vmapped program; a lane that ran another seed's key differs by the order of the movement itself.
TOL = 1e-7
NOISE = dict(batch_size=16, noise_images=3, noise_steps=3, noise_copies=2, retain_per_class=6)
HYPER = {
    "bad-teacher": dict(epochs=2, batch_size=8, lr=1e-2),
    "scrub": dict(epochs=3, msteps=2, batch_size=16, forget_batch_size=4, lr=0.02),
    "ssd": dict(alpha=2.0, lam=1.0, batch_size=16),
    "unsir": NOISE,
    # 2 images x 1 batch per forget class: the noise list is short enough that retain examples lie between
    # its samples (ratio = 30 // (2 · classes present) >= 3).
    "noise-student-curriculum": dict(batch_size=16, noise_images=2, noise_steps=3, noise_batches=1,
                                     distill_batch_size=16, distill_lr=1e-2),
}
METHODS = list(HYPER)


def _split(rng, n, num_classes=4):
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    images[..., 0] = np.uint8(40) * labels[:, None, None].astype(np.uint8)  # learnable signal; label = px // 40
    return Split(images, labels)


@pytest.fixture(scope="module", autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return UnlearningData(retain=_split(rng, 30), forget=_split(rng, 8), validation=_split(rng, 8),
                          test=_split(rng, 8), num_classes=4, description={"source": "synthetic"},
                          normalization=Normalization(scale=1 / 255, mean=(0.5,) * 3, std=(0.25,) * 3))


@pytest.fixture(scope="module")
def ctx(data):
    return context_for(data, ResNet(stage_sizes=(1,), num_classes=4, width=4, dtype=jnp.float64))


@pytest.fixture(scope="module")
def dev(data):
    return device_data(data)


@pytest.fixture(scope="module")
def start(ctx, dev):
    """A briefly trained 'original' model (meaningful BatchNorm statistics and confidences)."""
    run = make_run(ctx, build_method("finetune", ctx, epochs=2, batch_size=16, lr=0.05), RunConfig(track=False))
    init = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                                  quick_init(ctx.model, jax.random.key(0)))
    variables, _ = jax.jit(run, compiler_options=FAST)(jax.random.key(1), init, dev)
    return variables


@pytest.fixture(scope="module")
def logits(ctx):
    """Eval-mode logits, one jitted function for the module (compiled once per input shape)."""
    return jax.jit(lambda v, x: predict(ctx, v, x, batch_size=16), compiler_options=FAST)


@pytest.fixture(scope="module")
def runs(ctx, start, dev):
    """``runs(name) -> ((vars, metrics, snapshots) of seeds 0, 1 vmapped, [the same for seed 0 alone, seed 1
    alone])``; snapshots: the variables after every epoch, stacked."""
    cache = {}

    def get(name):
        if name not in cache:
            run = make_run(ctx, build_method(name, ctx, **HYPER[name]), RunConfig(track=False, snapshot_every=1))
            keys = seed_keys(0, np.arange(2))
            many = jax.jit(jax.vmap(run, in_axes=(0, None, None)), compiler_options=FAST)(keys, start, dev)
            one = jax.jit(run, compiler_options=FAST)
            cache[name] = (many, [one(keys[i], start, dev) for i in range(2)])
        return cache[name]

    return get


def _lane(tree, i):
    return jax.tree_util.tree_map(lambda a: np.asarray(a[i], np.float64), tree)


def _norm(tree):
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(a, np.float64))) for a in jax.tree_util.tree_leaves(tree))))


def _diff(a, b):
    return jax.tree_util.tree_map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y, np.float64), a, b)


# --- every method -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_lanes_equal_single_runs_exactly_in_float64(name, runs, ctx, start):
    """The float64 form of the contract's lane check (tests/methods/test_contract.py): Adam turns float32
    rounding into full-size updates, so only float64 shows that a lane computes exactly the seed's function."""
    (many_vars, many_metrics, _), singles = runs(name)
    epochs = build_method(name, ctx, **HYPER[name]).num_epochs
    for key, value in many_metrics.items():
        assert value.shape == (2, epochs), key
    assert np.isfinite(np.asarray(many_metrics.get("loss", many_metrics.get("dampened_fraction")))).all()
    for i, (one_vars, one_metrics, _) in enumerate(singles):
        lane = _lane(many_vars, i)
        moved = _norm(_diff(one_vars["params"], start["params"]))
        assert moved > 0
        # Relative to how far the run moved the weights (see tests/dropin/dropin_helpers.py:update_rel).
        assert _norm(_diff(lane, one_vars)) <= TOL * moved
        for key in one_metrics:
            np.testing.assert_allclose(one_metrics[key], many_metrics[key][i], rtol=1e-6)
    a, b = _lane(many_vars["params"], 0), _lane(many_vars["params"], 1)
    if name == "ssd":  # no randomness at all: every seed is the same model
        jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    else:
        assert _norm(_diff(a, b)) > 1e-3 * _norm(a)


def test_registered_with_the_references_defaults():
    expect = {
        "bad-teacher": dict(epochs=1, batch_size=256, lr=1e-4, temperature=1.0, retain_fraction=0.3),
        "scrub": dict(epochs=3, msteps=2, batch_size=256, forget_batch_size=512, lr=5e-4, momentum=0.9,
                      weight_decay=5e-4, temperature=4.0, gamma=0.99, alpha=0.001, lr_decay_epochs=(3, 5, 9),
                      lr_decay_rate=0.1),
        "ssd": dict(alpha=10.0, lam=1.0, batch_size=128),
        "unsir": dict(batch_size=256, noise_images=3, noise_steps=40, noise_lr=0.1, noise_reg=0.1, noise_copies=20,
                      retain_per_class=1000, impair_lr=0.02, repair_lr=0.01),
    }
    for name, defaults in expect.items():
        assert METHOD_TABLE[name].defaults == defaults, name
    # NitinPrasad5/Machine-Unlearning Main.ipynb / unlearn.py: noise batch 256 of which 3 images enter,
    # UNSIR_noise_train 5 x 8 steps of Adam 0.1 with reg 0.1, num_noise_batches 80, impair Adam 0.02 and
    # repair Adam 0.01 at batch 256, blindspot_unlearner 1 epoch Adam 1e-4, batch 256, T = 1, on 100 % of
    # retain (random.sample(retain, int(1 * len))).
    assert METHOD_TABLE["noise-student-curriculum"].defaults == dict(
        batch_size=256, noise_images=3, noise_steps=40, noise_lr=0.1, noise_reg=0.1, noise_batches=80,
        impair_lr=0.02, repair_lr=0.01, distill_epochs=1, distill_lr=1e-4, distill_batch_size=256,
        temperature=1.0, retain_fraction=1.0)
    assert "NitinPrasad5/Machine-Unlearning" in METHOD_TABLE["noise-student-curriculum"].reference
    assert all(METHOD_TABLE[name].reference for name in METHODS)


def test_subset_fraction_is_a_static_size(ctx):
    for name in ("bad-teacher", "noise-student-curriculum"):
        with pytest.raises(TypeError, match="retain_fraction sets an array size"):
            jax.eval_shape(lambda f: build_method(name, ctx, **HYPER[name], retain_fraction=f), jnp.float32(0.3))
        with pytest.raises(ValueError, match=r"retain_fraction must be in \[0, 1\]"):
            build_method(name, ctx, **HYPER[name], retain_fraction=1.5)


# --- bad-teacher ------------------------------------------------------------------------------------------

def test_bad_teacher_moves_forget_predictions_towards_the_random_teacher(runs, logits, ctx, start, dev):
    (many_vars, _, _), _ = runs("bad-teacher")
    method = build_method("bad-teacher", ctx, **HYPER["bad-teacher"])
    keys = seed_keys(0, np.arange(2))
    forget, init = dev["forget"][0], jax.jit(method.init, compiler_options=FAST)
    for i in range(2):
        state = init(jax.random.split(keys[i])[0], start, dev)  # make_run's init key
        bad = logits(state.incompetent, forget)
        before = float(kl_divergence(logits(start, forget), bad))
        after_vars = _lane(many_vars, i)
        after = float(kl_divergence(logits(after_vars, forget), bad))
        assert after < 0.75 * before, (before, after)
        assert state.subset.shape == (int(0.3 * 30),) and len(set(np.asarray(state.subset))) == 9


# --- scrub ------------------------------------------------------------------------------------------------

def test_scrub_raises_forget_kl_while_retain_ce_stays_bounded(runs, logits, start, dev):
    (many_vars, metrics, _), _ = runs("scrub")
    forget_kl = np.asarray(metrics["forget_kl"])  # mean KL_T(teacher || student) during each max pass
    assert np.isnan(forget_kl[:, 2]).all()  # max-steps only in epochs 1..msteps
    assert (forget_kl[:, 1] > forget_kl[:, 0]).all()  # the max-steps push the student away
    (x_f, _), (x_r, y_r) = dev["forget"], dev["retain"]
    ce_start = float(cross_entropy(logits(start, x_r), y_r))
    for i in range(2):
        v = _lane(many_vars, i)
        assert float(kl_divergence(logits(v, x_f), logits(start, x_f), temperature=4.0)) > 1e-2
        assert float(cross_entropy(logits(v, x_r), y_r)) < ce_start + 0.25  # min-steps keep retain fitted


# --- ssd --------------------------------------------------------------------------------------------------

def test_ssd_dampens_exactly_the_selected_parameters(runs, ctx, start, dev):
    (many_vars, metrics, _), _ = runs("ssd")
    alpha, lam, bs = (HYPER["ssd"][k] for k in ("alpha", "lam", "batch_size"))
    imp = jax.jit(lambda x, y: ssd.importances(ctx, start, x, y, bs), compiler_options=FAST)
    g, f = imp(*dev["train"]), imp(*dev["forget"])
    after = _lane(many_vars["params"], 0)
    n_selected = n_total = 0
    for path, p0 in jax.tree_util.tree_leaves_with_path(start["params"]):
        get = lambda t: np.asarray(_get(t, path), np.float64)  # noqa: E731
        p0, p1, gi, fi = np.asarray(p0), np.asarray(_get(after, path)), get(g), get(f)
        selected = fi > alpha * gi
        clear = np.abs(fi - alpha * gi) > 1e-3 * (fi + alpha * gi) + 1e-30  # away from the float32 threshold
        assert clear.mean() > 0.99
        keep = ~selected & clear
        np.testing.assert_array_equal(p1[keep], p0[keep])  # bit-identical
        damp = selected & clear
        np.testing.assert_allclose(p1[damp], p0[damp] * np.minimum(lam * gi[damp] / fi[damp], 1.0), rtol=1e-4)
        n_selected, n_total = n_selected + selected.sum(), n_total + selected.size
    assert 0 < n_selected < n_total
    np.testing.assert_allclose(metrics["dampened_fraction"][0, 0], n_selected / n_total, atol=1e-3)
    # BatchNorm running statistics are not parameters: untouched.
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a[0], b), many_vars["batch_stats"],
                           start["batch_stats"])


def _get(tree, path):
    for k in path:
        tree = tree[k.key]
    return tree


# --- unsir ------------------------------------------------------------------------------------------------

def test_unsir_noise_maximises_the_models_loss(ctx, start):
    key, shape = jax.random.key(3), (32, 32, 3)

    def learn():
        ce = lambda n: jax.vmap(lambda x, c: cross_entropy(ctx.model.apply(start, x), jnp.full(4, c)))(  # noqa: E731
            n, jnp.arange(4))
        initial = jax.vmap(lambda c: jax.random.normal(jax.random.fold_in(key, c), (4, *shape)))(jnp.arange(4))
        pure, _ = noise.learn_noise(ctx, start, key, shape, 4, 4, 20, 0.1, 0.0)  # −CE only
        regularised, objective = noise.learn_noise(ctx, start, key, shape, 4, 4, 20, 0.1, 0.1)
        objective0 = -ce(initial) + 0.1 * jnp.mean(jnp.sum(jnp.square(initial), axis=(2, 3, 4)), axis=1)
        return ce(initial), ce(pure), objective0, objective

    ce0, ce1, objective0, objective1 = map(np.asarray, jax.jit(learn, compiler_options=FAST)())
    assert (ce1 > ce0).all() and ce1.mean() > ce0.mean() + 1.0, (ce0, ce1)  # error-maximising, class by class
    assert (objective1 < objective0).all()  # and with the size penalty, its objective falls


def test_noise_and_retain_selection():
    labels = jnp.asarray([0, 1, 0, 0, 2, 1, 0], jnp.int32)
    np.testing.assert_array_equal(noise.retain_valid(labels, 3, 2), [1, 1, 1, 0, 1, 1, 0])
    assert noise.retain_valid(labels, 3, None).all()
    # Forget labels {0, 2} out of 3 classes: noise entries q (class q % 3) valid for classes 0 and 2 only.
    np.testing.assert_array_equal(noise.noise_valid(jnp.asarray([2, 0, 2]), 3, 2, 1), [1, 0, 1, 1, 0, 1])


# --- noise-student-curriculum ----------------------------------------------------------------------------

def _seed_noisy_loader(n_r, n_entries, n_samples):
    """Main.ipynb ``UNSIR_create_noisy_loader_`` verbatim in plain Python: a list of ``('noise', entry)`` /
    ``('retain', rank)`` in loader order (noise list entry k is distinct noise entry k % n_entries)."""
    noisy = [("noise", k % n_entries) for k in range(n_samples)]
    ratio = int(n_r / len(noisy))
    out, j = [], 0
    for num in range(n_r):
        if num % ratio == 0:
            out.append(noisy[j])
            j = (j + 1) % len(noisy)
        out.append(("retain", num))
    return out


@pytest.mark.parametrize("n_r, n_entries, n_samples, inserted", [
    (2400, 3, 240, 240),  # one forget class: 80 x 3 samples, one every 10 retain examples
    (45000, 3, 240, 241),  # CIFAR-10 minus one class: ratio 187, ceil(45000 / 187) = 241 (the list wraps)
    (1000, 6, 480, 500),  # two forget classes: ratio 2
    (7, 2, 3, 4),
])
def test_noise_is_inserted_as_the_seeds_noisy_loader(n_r, n_entries, n_samples, inserted):
    noise_base = 10 * n_r
    order, count = jax.jit(noise.insert_noise, static_argnums=())(
        jnp.arange(n_r, dtype=jnp.int32), noise_base + jnp.arange(n_entries + 5, dtype=jnp.int32),
        jnp.int32(n_entries), jnp.int32(n_samples))
    got = [("noise", int(p) - noise_base) if p >= noise_base else ("retain", int(p))
           for p in np.asarray(order)[:int(count)]]
    want = _seed_noisy_loader(n_r, n_entries, n_samples)
    assert got == want
    assert sum(kind == "noise" for kind, _ in got) == inserted


def test_noise_list_longer_than_retain_puts_one_sample_before_each_retain_example():
    """Where the seed's ``int(len_retain / len_noise)`` is 0 (a ZeroDivisionError there) the ratio is 1."""
    order, count = noise.insert_noise(jnp.arange(5, dtype=jnp.int32), 100 + jnp.arange(3, dtype=jnp.int32),
                                      jnp.int32(3), jnp.int32(240))
    np.testing.assert_array_equal(np.asarray(order)[:int(count)], [100, 0, 101, 1, 102, 2, 100, 3, 101, 4])


def test_curriculum_ranks_all_retain_by_max_softmax_with_labels_aligned(ctx, logits, start, dev):
    hyper = HYPER["noise-student-curriculum"]
    nb, batches = hyper["noise_images"], hyper["noise_batches"]
    phases = jax.jit(lambda: noise.curriculum_phases(ctx, start, dev, nb, batches), compiler_options=FAST)()
    images, labels = dev["retain"]
    n_r = len(labels)
    repair = np.asarray(phases.repair)
    assert int(phases.n_repair) == n_r
    # Brute force: every retain example, by decreasing max-softmax of the original model (eval mode),
    # each index scored on its own image (the seed's shuffled-loader pairing fixed).
    top = np.asarray(jax.nn.softmax(logits(start, images))).max(axis=1)
    np.testing.assert_array_equal(repair, np.argsort(-top, kind="stable"))
    true_class = np.asarray(jax.nn.softmax(logits(start, images)))[np.arange(n_r), np.asarray(labels)]
    assert not np.array_equal(repair, np.argsort(-true_class, kind="stable"))  # not p(y|x): max-softmax

    present = sorted(set(np.asarray(dev["forget"][1]).tolist()))
    n_entries = nb * len(present)
    impair = np.asarray(phases.impair)[:int(phases.n_impair)]
    is_noise = impair >= n_r
    want = _seed_noisy_loader(n_r, n_entries, batches * n_entries)
    assert [("noise" if f else "retain") for f in is_noise] == [kind for kind, _ in want]
    np.testing.assert_array_equal(impair[~is_noise], repair)
    assert 1 < n_r // (batches * n_entries)  # retain examples between noise samples

    # What a pass fetches: every retain image with its own label, every noise image with its class; the
    # noise cycles through each present class's images.
    table = jax.random.normal(jax.random.key(0), (4, nb, 32, 32, 3))
    spy = noise.pool_step(ctx, lambda state, x, y, mask: (x, y), dev, table)
    x, y = jax.jit(spy, compiler_options=FAST)(None, jnp.asarray(impair), jnp.ones(len(impair), bool))
    x, y = np.asarray(x), np.asarray(y)
    pixel = np.rint((x[~is_noise, 0, 0, 0] * 0.25 + 0.5) * 255 / 40).astype(int)
    np.testing.assert_array_equal(pixel, y[~is_noise])
    np.testing.assert_array_equal(y[~is_noise], np.asarray(labels)[impair[~is_noise]])
    q = impair[is_noise] - n_r
    np.testing.assert_array_equal(y[is_noise], q % 4)
    np.testing.assert_array_equal(x[is_noise], np.asarray(table)[q % 4, q // 4 % nb])
    assert set(zip(q % 4, q // 4 % nb)) == {(c, i) for c in present for i in range(nb)}


def test_curriculum_roles_student_is_the_original_bad_teacher_is_impaired_then_repaired(runs, ctx, start, dev):
    """Epochs 0/1 impair then repair the bad teacher (from the original) and leave the student the
    original, bit for bit; the distillation is bad-teacher's pass of the original with the repaired
    teacher as the incompetent one (not the impaired, pre-repair model)."""
    (final, metrics, _), _ = runs("noise-student-curriculum")
    noise_loss = np.asarray(metrics["noise_loss"])
    assert np.isfinite(noise_loss[:, 0]).all() and np.isnan(noise_loss[:, 1:]).all()
    hyper = HYPER["noise-student-curriculum"]
    method = build_method("noise-student-curriculum", ctx, **hyper)
    tx = torch_adam(hyper["distill_lr"])
    pass_ = distill.bad_teacher_pass(ctx, tx, hyper["distill_batch_size"], 1.0)
    impair_pass = noise.ce_pass(ctx, 0.02, hyper["batch_size"])
    repair_pass = noise.ce_pass(ctx, 0.01, hyper["batch_size"])
    shape = dev["retain"][0].shape[1:]

    @functools.partial(jax.jit, compiler_options=FAST)
    def replay(key):
        k_init, k_epochs = jax.random.split(key)  # make_run's key use
        s0 = method.init(k_init, start, dev)
        s1 = method.epoch(s0, jax.random.fold_in(k_epochs, 0), dev, start)[0]
        s2 = method.epoch(s1, jax.random.fold_in(k_epochs, 1), dev, start)[0]
        k_noise = jax.random.split(jax.random.fold_in(k_epochs, 0))[0]
        table, _ = noise.learn_noise(ctx, start, k_noise, shape, 4, hyper["noise_images"], hyper["noise_steps"],
                                     0.1, 0.1)
        impaired = variables_of(impair_pass(start, dev, table, s0.phases.impair, s0.phases.n_impair)[0])
        repaired = variables_of(repair_pass(impaired, dev, noise.no_noise(4, shape), s0.phases.repair,
                                            s0.phases.n_repair)[0])
        k_distill = jax.random.split(jax.random.fold_in(k_epochs, 2))[1]
        distil = lambda bad: variables_of(pass_(create_state(start, tx), k_distill, dev, s0.subset, start, bad)[0])  # noqa: E731
        return (variables_of(s1.student), variables_of(s2.student), s1.teacher, s2.teacher, impaired, repaired,
                distil(repaired), distil(impaired), s0.subset)

    for i, key in enumerate(seed_keys(0, np.arange(2))):
        student1, student2, teacher1, teacher2, impaired, repaired, want, other, subset = replay(key)
        for student in (student1, student2):
            jax.tree_util.tree_map(np.testing.assert_array_equal, student, start)
        assert _norm(_diff(teacher1, impaired)) <= TOL * _norm(_diff(impaired, start))
        assert _norm(_diff(teacher2, repaired)) <= TOL * _norm(_diff(repaired, impaired))
        assert sorted(np.asarray(subset)) == list(range(30))  # 100 % of retain
        lane = _lane(final, i)
        moved = _norm(_diff(lane["params"], start["params"]))
        assert _norm(_diff(want, lane)) <= TOL * moved
        assert _norm(_diff(other, lane)) > 1e-3 * moved  # the pre-repair model as bad teacher: differs


def test_curriculum_needs_a_forget_set(ctx):
    empty = type(ctx)(ctx.model, ctx.normalization, {**ctx.sizes, "forget": 0}, ctx.class_counts)
    with pytest.raises(ValueError, match="forget set"):
        build_method("noise-student-curriculum", empty)
