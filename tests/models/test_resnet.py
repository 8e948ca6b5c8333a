"""The Flax ResNet-18 is torchvision's: train-mode step parity, BN semantics, masking, init."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import converters
from jax_unlearn.models import ResNet18
from tiny import quick_init  # tests/ is on sys.path
from torch_reference import nchw, random_torch_resnet18, rel_err


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _cast(tree, dtype):
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a, tree)


# float32 to 1e-5; the CIFAR stem's 32x32x64 BN reductions accumulate more float32 rounding, so its
# float32 bound is 1e-3, and float64 (below) shows both are the same function to 1e-10. Against torch
# float64 (the exact step) torch float32 itself is ~2e-4 away (its CPU BN kernels accumulate in double)
# and XLA float32 up to ~7e-4 (the float32 BN/pooling sums: the same with either conv lowering), and the
# figure varies with the CPU's vector width.
@pytest.mark.parametrize("stem,dtype,tol", [("imagenet", "float32", 1e-5), ("cifar", "float32", 1e-3),
                                            ("imagenet", "float64", 1e-10), ("cifar", "float64", 1e-10)])
def test_train_forward_and_sgd_step_match_torch(stem, dtype, tol):
    if dtype == "float64":
        with jax.enable_x64(True):
            _train_step_parity(stem, dtype, tol)
    else:
        _train_step_parity(stem, dtype, tol)


def _train_step_parity(stem, dtype, tol):
    net = random_torch_resnet18(11, 10, stem).train().to(getattr(torch, dtype))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 32, 32, 3)).astype(dtype)
    y = rng.integers(0, 10, size=16)
    variables = _cast(converters.torch_to_flax(net.state_dict()), dtype)

    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss_t = torch.nn.functional.cross_entropy(net(nchw(x)), torch.from_numpy(y))
    opt.zero_grad()
    loss_t.backward()
    opt.step()
    want = converters.torch_to_flax(net.float().state_dict())

    model = ResNet18(num_classes=10, stem=stem, dtype=jnp.dtype(dtype))

    def loss_fn(params):
        logits, new_state = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                        jnp.asarray(x), train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean(), new_state

    def step(params):  # one compiled program: op-by-op dispatch compiles each of its ~300 ops on its own
        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, new_state, jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)

    loss_j, new_state, params = jax.jit(step)(variables["params"])

    assert abs(float(loss_j) - loss_t.item()) <= tol * abs(loss_t.item())
    got_stats, want_stats = _flat(new_state["batch_stats"]), _flat(want["batch_stats"])
    assert got_stats.keys() == want_stats.keys()
    for k in got_stats:
        if k.endswith("['num_batches_tracked']"):
            assert got_stats[k] == want_stats[k], k  # counter advanced by exactly one, like torch
        else:
            assert rel_err(got_stats[k], want_stats[k]) <= max(tol, 1e-7), k
    got_p, want_p = _flat(params), _flat(want["params"])
    for k in got_p:
        assert rel_err(got_p[k], want_p[k]) <= max(tol, 1e-7), k


def test_running_variance_uses_unbiased_batch_variance():
    """A one-BN check of the rule torch uses and Flax's stock BatchNorm does not."""
    from jax_unlearn.models import BatchNorm

    x = np.random.default_rng(1).normal(size=(4, 3, 3, 5)).astype(np.float32)
    bn = BatchNorm()
    v = bn.init(jax.random.key(0), x, train=False)
    _, state = bn.apply(v, x, train=True, mutable=["batch_stats"])
    tbn = torch.nn.BatchNorm2d(5).train()
    tbn(nchw(x))
    np.testing.assert_allclose(state["batch_stats"]["var"], tbn.running_var.numpy(), rtol=1e-6)
    np.testing.assert_allclose(state["batch_stats"]["mean"], tbn.running_mean.numpy(), rtol=1e-6, atol=1e-7)
    n = 4 * 3 * 3
    biased = x.reshape(-1, 5).var(0)
    np.testing.assert_allclose(state["batch_stats"]["var"], 0.9 + 0.1 * biased * n / (n - 1), rtol=1e-6)


def test_masked_examples_touch_neither_output_nor_statistics():
    model = ResNet18(num_classes=10)
    variables = quick_init(model, jax.random.key(0))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
    mask = np.array([1, 1, 1, 0, 1, 0, 1, 0], bool)
    junk = x.copy()
    junk[~mask] = 1e3 * rng.normal(size=junk[~mask].shape)  # garbage where masked
    # Op by op: cheaper here than compiling the two train-mode programs (with and without a mask).
    apply = lambda x, mask=None: model.apply(variables, x, train=True, mask=mask, mutable=["batch_stats"])  # noqa: E731

    full, s_full = apply(jnp.asarray(x[mask]))
    part, s_part = apply(jnp.asarray(junk), jnp.asarray(mask))
    # Same as running on the unmasked examples alone (up to float32 summation order) ...
    assert rel_err(np.asarray(part)[mask], full) < 1e-4
    for k, v in _flat(s_full).items():
        np.testing.assert_allclose(_flat(s_part)[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    # ... and bit-for-bit independent of what the masked rows hold.
    other = junk.copy()
    other[~mask] = -junk[~mask] * 3
    part2, s_part2 = apply(jnp.asarray(other), jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(part2)[mask], np.asarray(part)[mask])
    for k, v in _flat(s_part).items():
        np.testing.assert_array_equal(_flat(s_part2)[k], v, err_msg=k)

    _, s_none = apply(jnp.asarray(junk), jnp.zeros(8, bool))
    for k, v in _flat(variables["batch_stats"]).items():
        np.testing.assert_array_equal(_flat(s_none["batch_stats"])[k], v, err_msg=f"fully masked batch moved {k}")


def test_init_follows_torchvision():
    variables = quick_init(ResNet18(num_classes=10), jax.random.key(3))  # init_variables, compiled
    p = variables["params"]
    k = np.asarray(p["layer3_0"]["conv2"]["kernel"])  # 3x3, 256 -> 256: fan_out = 9 * 256
    assert abs(k.std() - np.sqrt(2 / (9 * 256))) < 0.02 * np.sqrt(2 / (9 * 256))
    assert abs(k.mean()) < 1e-3
    bound = 1 / np.sqrt(512)
    for leaf in (p["fc"]["kernel"], p["fc"]["bias"]):
        assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.9 * bound
    assert np.all(np.asarray(p["bn1"]["scale"]) == 1) and np.all(np.asarray(p["bn1"]["bias"]) == 0)
    sd = converters.flax_to_torch(variables)
    torch_sd = random_torch_resnet18(0).state_dict()
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in torch_sd.items()}


def test_bf16_compute_keeps_float32_outputs_and_is_close():
    net = random_torch_resnet18(12).eval()
    variables = converters.torch_to_flax(net.state_dict())
    x = jnp.asarray(np.random.default_rng(4).normal(size=(4, 32, 32, 3)).astype(np.float32))
    f32 = jax.jit(ResNet18(num_classes=10).apply)(variables, x)
    bf16 = jax.jit(ResNet18(num_classes=10, dtype=jnp.bfloat16).apply)(variables, x)
    assert bf16.dtype == jnp.float32
    assert rel_err(bf16, f32) < 0.05
