"""drop_last=False batching with masks; masked examples do not touch loss, gradients or BN statistics."""
import jax
import jax.numpy as jnp
import numpy as np

from jax_unlearn.engine.batches import epoch_batches, random_crop_flip
from jax_unlearn.engine.losses import cross_entropy
from jax_unlearn.engine.optim import torch_sgd
from jax_unlearn.engine.run import context_for
from jax_unlearn.engine.train import create_state, supervised_step
from tiny import quick_init  # tests/ is on sys.path


def test_epoch_covers_every_example_once_and_keeps_last_partial_batch():
    idx, mask = epoch_batches(jax.random.key(0), 10, 4)
    assert idx.shape == mask.shape == (3, 4)
    assert sorted(np.asarray(idx)[np.asarray(mask)].tolist()) == list(range(10))
    assert np.asarray(mask).sum(1).tolist() == [4, 4, 2]
    other, _ = epoch_batches(jax.random.key(1), 10, 4)
    assert not np.array_equal(idx, other)
    fixed, _ = epoch_batches(None, 10, 4)
    assert np.asarray(fixed)[np.asarray(mask)].tolist() == list(range(10))


def test_masked_examples_do_not_touch_the_step(tiny_data, tiny_model):
    ctx = context_for(tiny_data, tiny_model)
    tx = torch_sgd(0.1, 0.9, 5e-4)
    step = supervised_step(ctx, tx, lambda logits, y, m: cross_entropy(logits, y, m))
    state = create_state(quick_init(tiny_model, jax.random.key(0)), tx)
    x = jnp.asarray(tiny_data.retain.images[:8])
    y = jnp.asarray(tiny_data.retain.labels[:8])
    mask = jnp.asarray([1, 1, 1, 1, 1, 0, 0, 0], bool)
    a, loss_a = step(state, x, y, mask)
    junk_x = x.at[5:].set(255 - x[5:])
    junk_y = y.at[5:].set((y[5:] + 1) % 4)
    b, loss_b = step(state, junk_x, junk_y, mask)
    assert float(loss_a) == float(loss_b)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    c, _ = step(state, x, y, jnp.ones(8, bool))
    assert not np.array_equal(c.params["fc"]["kernel"], a.params["fc"]["kernel"])


def test_class_weighted_cross_entropy_matches_torch():
    import torch

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 4)).astype(np.float32)
    y = rng.integers(0, 4, 7)
    w = np.array([1 / 10, 1 / 3, 1 / 7, 1 / 1], np.float32)
    want = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y), torch.from_numpy(w))
    got = cross_entropy(jnp.asarray(logits), jnp.asarray(y), jnp.ones(7, bool), jnp.asarray(w))
    assert abs(float(got) - want.item()) < 1e-6


def test_random_crop_flip_is_a_shifted_window_of_the_zero_padded_image():
    x = jnp.arange(2 * 32 * 32 * 3, dtype=jnp.int32).reshape(2, 32, 32, 3).astype(jnp.uint8)
    out = np.asarray(random_crop_flip(jax.random.key(3), x))
    assert out.shape == x.shape and out.dtype == np.uint8
    padded = np.pad(np.asarray(x), ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(2):
        found = any(np.array_equal(out[i], w) for dy in range(9) for dx in range(9)
                    for w in (padded[i, dy:dy + 32, dx:dx + 32], padded[i, dy:dy + 32, dx:dx + 32][:, ::-1]))
        assert found
