"""NeurIPS 2023 winners: each method's defining behaviour (the contract every method keeps — seeds, lanes,
finiteness — is tests/methods/test_contract.py).

Compilation dominates (a few seconds of CPU per program), so the defining checks reuse one vmapped run per
method (per-epoch snapshots) wherever they can.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_unlearn.methods.winners.fanchuan import fanchuan_contrastive_loss
from jax_unlearn.methods.winners.sebastian import sebastian_class_weights
from jax_unlearn.methods.winners.seif import seif_class_weights, seif_noise
from jax_unlearn.data.types import Normalization, Split, UnlearningData
from jax_unlearn.engine.lanes import seed_keys
from jax_unlearn.engine.run import RunConfig, context_for, device_data, make_run
from jax_unlearn.methods import METHODS, build_method
from jax_unlearn.models import ResNet

# Tiny settings: 45 retain / 10 forget / 12 validation examples, batch 16 (3 retain steps a pass).
CASES = {
    "fanchuan": dict(epochs=2, batch_size=16, forget_batch_size=4),
    "kookmin": dict(epochs=2, batch_size=16),
    "seif": dict(epochs=2, batch_size=16),
    "sebastian": dict(epochs=1.5, batch_size=16),  # int(3 · 1.5) + 1 = 5 steps in 2 engine epochs
    "toshi-conv-transpose": dict(epochs=2, batch_size=16),
    "amnesiacs": dict(kd_epochs=1, retain_epochs=1, batch_size=16),
    "sun": dict(epochs=3, fine_epochs=1, layer_select=3, batch_size=16),  # 3 of the 10 non-"bn" tensors
}
DEFAULTS = {
    "fanchuan": dict(epochs=8, batch_size=256, forget_lr=3e-4, temperature=1.15, retain_weight_decay=1e-2),
    "kookmin": dict(epochs=5, lr=1e-3, init_rate=0.3, kept_grad_scale=0.1),
    "seif": dict(epochs=4, lr=7e-4, start_std=0.6, final_std=0.005),
    "sebastian": dict(epochs=3.2, lr=5e-4, prune_amount=0.99, weight_exponent=-0.1),
    "toshi-conv-transpose": dict(epochs=3, lr=1e-3),
    "amnesiacs": dict(kd_epochs=3, retain_epochs=3, temperature=5.0),
    "sun": dict(epochs=9, fine_epochs=4, layer_select=9, noise_ratio=0.7, noise_std=0.04),
}


def _split(rng, n, num_classes=4):
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    images[..., 0] = np.uint8(40) * labels[:, None, None].astype(np.uint8)  # learnable signal
    return Split(images, labels)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    data = UnlearningData(retain=_split(rng, 45), forget=_split(rng, 10), validation=_split(rng, 12),
                          test=_split(rng, 12), num_classes=4,
                          normalization=Normalization(scale=1 / 255, mean=(0.5,) * 3, std=(0.25,) * 3),
                          description={"source": "synthetic"})
    model = ResNet(stage_sizes=(1, 1), num_classes=4, width=4)
    ctx = context_for(data, model)
    return ctx, quick_init(model, jax.random.key(42)), device_data(data)


KEYS = seed_keys(0, np.arange(2))
_RUNS = {}
# This file's cost is XLA compilation (seconds of CPU per program; the runs themselves take milliseconds), so
# programs are compiled without LLVM optimisation — ~40% less compile time, the same arithmetic.
from tiny import FAST_COMPILE, quick_init  # tests/ is on sys.path


def run_compiled(fn, *args):
    return jax.device_get(jax.jit(fn).lower(*args).compile(FAST_COMPILE)(*args))


def vmapped(setup, name):
    """The method's two-seed vmapped run with per-epoch snapshots (compiled once per test module)."""
    if name not in _RUNS:
        ctx, start, data = setup
        run = make_run(ctx, build_method(name, ctx, **CASES[name]), RunConfig(track=False, snapshot_every=1))
        _RUNS[name] = (run, run_compiled(jax.vmap(run, in_axes=(0, None, None)), KEYS, start, data))
    return _RUNS[name]


def init_state(setup, name, **hyper):
    ctx, start, data = setup
    method = build_method(name, ctx, **{**CASES[name], **hyper})
    return run_compiled(method.init, jax.random.key(3), start, data)


def leaves_with_names(tree):
    return [("/".join(str(getattr(k, "key", k)) for k in path), np.asarray(x))
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def max_rel(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - y)) / max(np.max(np.abs(y)), 1e-12))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


# ---- every method ----------------------------------------------------------------------------------------

def test_registered_with_the_references_defaults():
    for name, expected in DEFAULTS.items():
        info = METHODS[name]
        assert "deepunlearn" in info.reference
        assert {k: info.defaults[k] for k in expected} == expected, name


# ---- fanchuan --------------------------------------------------------------------------------------------

def test_fanchuan_contrastive_loss_matches_brute_force():
    rng = np.random.default_rng(1)
    zf, zr = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(7, 4)).astype(np.float32)

    def brute(zf, zr, t=1.15):
        total, count = 0.0, 0
        for i in range(len(zf)):
            s = [float(np.dot(zf[i], zr[j])) / t for j in range(len(zr))]
            lse = math.log(sum(math.exp(v) for v in s))
            for v in s:
                total, count = total - (v - lse), count + 1
        return total / count

    np.testing.assert_allclose(fanchuan_contrastive_loss(zf, zr, 1.15), brute(zf, zr), rtol=1e-5)
    fm, rm = np.array([1, 1, 0, 1, 0], bool), np.array([1, 0, 1, 1, 1, 0, 1], bool)
    np.testing.assert_allclose(fanchuan_contrastive_loss(zf, zr, 1.15, fm, rm), brute(zf[fm], zr[rm]), rtol=1e-5)
    grad = jax.grad(lambda f: fanchuan_contrastive_loss(f, zr, 1.15, fm, rm))(zf)
    assert np.all(np.asarray(grad)[~fm] == 0)  # padded forget rows do not count


# ---- kookmin ---------------------------------------------------------------------------------------------

def test_kookmin_reinitialises_30_percent_of_each_conv_and_damps_the_rest(setup):
    _, start, _ = setup
    state = init_state(setup, "kookmin")
    scales = dict(leaves_with_names(state.extra))
    convs = 0
    for (name, new), (_, old) in zip(leaves_with_names(state.params), leaves_with_names(start["params"])):
        changed = new != old
        if new.ndim == 4:
            convs += 1
            assert changed.sum() == round(0.3 * new.size), name
            np.testing.assert_array_equal(scales[name], np.where(changed, 1.0, np.float32(0.1)))
        else:
            assert not changed.any() and np.all(scales[name] == 1.0), name
    assert convs == 6  # conv1, 2 × 2 block convs, 1 downsample conv
    moved = [not np.array_equal(a, b) for (_, a), (_, b) in zip(leaves_with_names(state.batch_stats),
                                                                  leaves_with_names(start["batch_stats"]))]
    assert all(moved)  # the gradient passes ran in train mode: running statistics moved, as in torch


# ---- seif ------------------------------------------------------------------------------------------------

def test_seif_noise_statistics_and_scope():
    params = {"conv1": {"kernel": jnp.full((7, 7, 3, 64), 0.25)},
              "layer1_0": {"conv1": {"kernel": jnp.ones((3, 3, 4, 4))}}, "bn1": {"scale": jnp.ones((4,))}, "fc": {"kernel": jnp.ones((4, 4)), "bias": jnp.zeros((4,))}}
    noised = seif_noise(jax.random.key(0), params, 0.6)
    delta = np.asarray(noised["conv1"]["kernel"]) - 0.25
    assert abs(delta.mean()) < 0.03 and abs(delta.std() - 0.6) < 0.03  # 9408 draws: se ≈ 0.006 / 0.004
    for path in (("layer1_0", "conv1", "kernel"), ("bn1", "scale"), ("fc", "kernel"), ("fc", "bias")):
        a, b = noised, params
        for p in path:
            a, b = a[p], b[p]
        np.testing.assert_array_equal(a, b)  # the source's named_children() loop reaches the stem only
    everywhere = seif_noise(jax.random.key(0), params, 0.6, "convs")
    assert np.all(everywhere["layer1_0"]["conv1"]["kernel"] != 1.0)
    with pytest.raises(ValueError, match="noise_scope"):
        seif_noise(jax.random.key(0), params, 0.6, "bn")


def test_seif_renoises_with_final_std_before_the_last_epoch_only(setup):
    ctx, start, data = setup
    # No training (lr 0, no weight decay) and no initial noise isolate the re-noising.
    method = build_method("seif", ctx, epochs=3, batch_size=16, lr=0.0, weight_decay=0.0, start_std=0.0,
                          final_std=0.005)
    _, _, snaps = run_compiled(make_run(ctx, method, RunConfig(track=False, snapshot_every=1)), KEYS[0], start, data)
    stage = [jax.tree_util.tree_map(lambda x: x[e], snaps["params"]) for e in range(3)]
    jax.tree_util.tree_map(np.testing.assert_array_equal, stage[0], start["params"])  # epoch 0 of 3: none
    delta = np.asarray(stage[1]["conv1"]["kernel"]) - np.asarray(start["params"]["conv1"]["kernel"])
    assert np.all(delta != 0) and 0.004 < delta.std() < 0.006  # after epoch 1 = epochs - 2
    rest = lambda p: {k: v for k, v in p.items() if k != "conv1"}  # noqa: E731
    jax.tree_util.tree_map(np.testing.assert_array_equal, rest(stage[1]), rest(start["params"]))
    jax.tree_util.tree_map(np.testing.assert_array_equal, stage[2], stage[1])  # none after the last epoch


# ---- class weights (seif, sebastian): counted on the retain labels, as the deepunlearn ports --------------

def test_class_weights_are_the_ports_formulas_on_the_retain_labels():
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray([0, 0, 0, 2, 1, 2, 0, 2, 0], np.int32)  # class 3 has no retain example
    present = np.unique(labels)
    seif = np.asarray(seif_class_weights(jnp.asarray(labels), 4))
    # kgltop3.py: compute_class_weight("balanced", classes=np.unique(targets), y=targets) on the retain loader.
    np.testing.assert_allclose(seif[present], compute_class_weight("balanced", classes=present, y=labels), rtol=1e-6)
    assert seif[3] == 0.0
    # kgltop4.py get_class_weights: torch.unique(targets, return_counts=True) counts ** -0.1.
    sebastian = np.asarray(sebastian_class_weights(jnp.asarray(labels), 4, -0.1))
    np.testing.assert_allclose(sebastian[present], np.bincount(labels)[present] ** -0.1, rtol=1e-6)
    assert sebastian[3] == 0.0


@pytest.mark.parametrize("name", ["seif", "sebastian"])
def test_class_weights_ignore_the_contexts_retain_and_forget_counts(setup, name):
    """``ctx.class_counts`` (retain ∪ forget) no longer enters: a context with other counts (or none) gives
    the same run, seed for seed."""
    ctx, start, data = setup
    run, (variables, _, _) = vmapped(setup, name)
    other = type(ctx)(ctx.model, ctx.normalization, ctx.sizes, None)
    method = build_method(name, other, **CASES[name])
    one_vars, _, _ = run_compiled(make_run(other, method, RunConfig(track=False, snapshot_every=1)), KEYS[0], start,
                                  data)
    lane = jax.tree_util.tree_map(lambda x: x[0], variables)
    assert max_rel(one_vars["params"], lane["params"]) <= 1e-5  # float32 vmapped vs single: rounding only


# ---- sebastian -------------------------------------------------------------------------------------------

def test_sebastian_keeps_exactly_1_percent_of_conv_and_linear_weights(setup):
    _, start, _ = setup
    state = init_state(setup, "sebastian")
    kept, total, kept_abs, pruned_abs = 0, 0, [], []
    for (name, new), (_, old) in zip(leaves_with_names(state.params), leaves_with_names(start["params"])):
        if "bn" in name or "downsample_1" in name:
            np.testing.assert_array_equal(new, old, err_msg=name)
            continue
        same = new == old
        kept, total = kept + same.sum(), total + new.size
        kept_abs.append(np.abs(old[same]))
        pruned_abs.append(np.abs(old[~same]))
        if new.ndim == 1:  # the fc bias: pruned entries stay 0 (the source re-draws weights only)
            assert np.all(new[~same] == 0)
        else:
            bound = 1 / math.sqrt(math.prod(new.shape[:-1]))
            assert np.all(np.abs(new[~same]) <= bound)
    assert kept == total - round(0.99 * total)
    assert np.concatenate(kept_abs).min() >= np.concatenate(pruned_abs).max()  # global L1: the largest stay


def test_sebastian_runs_the_fractional_step_budget_and_ends_in_fp16(setup):
    _, start, _ = setup
    _, (variables, metrics, snaps) = vmapped(setup, "sebastian")
    tracked = np.asarray(snaps["batch_stats"]["bn1"]["num_batches_tracked"])
    start_tracked = int(start["batch_stats"]["bn1"]["num_batches_tracked"])
    np.testing.assert_array_equal(tracked - start_tracked, [[3, 5], [3, 5]])  # int(3 · 1.5) + 1 = 5 steps
    for tree in (variables["params"], variables["batch_stats"]):
        for name, x in leaves_with_names(tree):
            if np.issubdtype(x.dtype, np.floating):
                np.testing.assert_array_equal(x, x.astype(np.float16).astype(x.dtype), err_msg=name)
    first = snaps["params"]["fc"]["kernel"][:, 0]
    assert not np.array_equal(first, first.astype(np.float16).astype(np.float32))  # only at the very end


# ---- toshi -----------------------------------------------------------------------------------------------

def test_toshi_transposes_every_conv_kernel_exactly(setup):
    _, start, _ = setup
    state = init_state(setup, "toshi-conv-transpose")
    swapped = 0
    for (name, new), (_, old) in zip(leaves_with_names(state.params), leaves_with_names(start["params"])):
        np.testing.assert_array_equal(new, np.swapaxes(old, 0, 1) if old.ndim == 4 else old, err_msg=name)
        swapped += old.ndim == 4 and old.shape[0] > 1 and not np.array_equal(new, old)
    assert swapped == 5  # all but the 1×1 downsample kernel, its own transpose
    jax.tree_util.tree_map(np.testing.assert_array_equal, state.batch_stats, start["batch_stats"])


# ---- amnesiacs -------------------------------------------------------------------------------------------

def test_amnesiacs_resets_conv1_and_fc_only_then_distils_on_validation(setup):
    _, start, _ = setup
    state = init_state(setup, "amnesiacs")
    for (name, new), (_, old) in zip(leaves_with_names(state.params), leaves_with_names(start["params"])):
        if name.startswith(("conv1/", "fc/")):
            fan_in = math.prod(start["params"][name.split("/")[0]]["kernel"].shape[:-1])
            assert np.all(new != old) and np.all(np.abs(new) <= 1 / math.sqrt(fan_in)), name
            assert new.std() > 0.3 / math.sqrt(fan_in)  # U(±b) has std b / sqrt(3) ≈ 0.58 b
        else:
            np.testing.assert_array_equal(new, old, err_msg=name)
    jax.tree_util.tree_map(np.testing.assert_array_equal, state.batch_stats, start["batch_stats"])
    _, (_, _, snaps) = vmapped(setup, "amnesiacs")
    tracked = np.asarray(snaps["batch_stats"]["bn1"]["num_batches_tracked"])
    start_tracked = int(start["batch_stats"]["bn1"]["num_batches_tracked"])
    # epoch 0: one pass over the 12 validation examples (1 step); epoch 1: the retain set (3 steps)
    np.testing.assert_array_equal(tracked - start_tracked, [[1, 4], [1, 4]])


def test_amnesiacs_distils_on_the_validation_set_in_data_order(setup):
    """deepunlearn's validation loader is not shuffled: the KD epoch uses no randomness, so two epoch keys
    give the same model (batch 4: three batches, whose order and make-up a shuffle would change)."""
    ctx, start, data = setup
    method = build_method("amnesiacs", ctx, **{**CASES["amnesiacs"], "batch_size": 4})
    state = run_compiled(method.init, jax.random.key(3), start, data)
    one_epoch = lambda key: method.epoch(state, key, data, start)[0].params  # noqa: E731
    a, b = (run_compiled(one_epoch, jax.random.key(k)) for k in (5, 6))
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a["fc"]["kernel"], state.params["fc"]["kernel"])  # it trained


# ---- sun -------------------------------------------------------------------------------------------------

def test_sun_trains_only_the_selected_tensors_each_epoch(setup):
    _, start, _ = setup
    _, (_, metrics, snaps) = vmapped(setup, "sun")
    for lane in range(2):
        before = leaves_with_names(start["params"])
        for e in range(3):
            after = leaves_with_names(jax.tree_util.tree_map(lambda x: x[lane, e], snaps["params"]))
            changed = {name: not np.array_equal(a, b) for (name, a), (_, b) in zip(after, before)}
            bn = [n for n in changed if "/bn" in "/" + n]
            others = [n for n in changed if n not in bn and not (e == 0 and n.startswith("fc/"))]
            assert all(changed[n] for n in bn)  # BatchNorm ("bn" in the torch name) always trained
            n_changed = sum(changed[n] for n in others)
            if e == 0:  # fc (2 tensors) was reset at init: only the 8 others can be compared with the start
                assert 1 <= n_changed <= 3
            elif e == 1:  # 3 of the 10 non-"bn" tensors (downsample_1 counts as non-bn); the rest bit-identical
                assert n_changed == 3, (lane, changed)
            else:  # fine-tuning epoch: everything
                assert all(changed.values())
            before = after
    noised = np.asarray(metrics["noised_tensors"])
    assert np.all(noised[:, [0, 2]] == 0) and np.all(noised[:, 1] <= 2) and noised[:, 1].sum() > 0
