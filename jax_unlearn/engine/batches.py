"""Per-seed batching with static shapes: PyTorch ``DataLoader(shuffle=True, drop_last=False)`` semantics.

An epoch over ``n`` examples is ``ceil(n / batch_size)`` steps; the last step is padded to the full batch
size and a boolean mask marks the real examples (padded slots repeat index 0 and must be masked out of
the loss and the BatchNorm statistics — :class:`jax_unlearn.models.BatchNorm` takes the mask).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches in one pass over ``n`` examples: ``ceil(n / batch_size)`` (the last may be partial)."""
    return math.ceil(n / batch_size)


def epoch_batches(key: jax.Array | None, n: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Indices ``(steps, batch_size)`` int32 and mask ``(steps, batch_size)`` bool for one epoch.

    ``key`` draws this epoch's permutation (each seed its own); ``None`` keeps the data order.
    """
    steps = steps_per_epoch(n, batch_size)
    order = jnp.arange(n, dtype=jnp.int32) if key is None else jax.random.permutation(key, n).astype(jnp.int32)
    pad = steps * batch_size - n
    idx = jnp.concatenate([order, jnp.zeros((pad,), jnp.int32)]).reshape(steps, batch_size)
    mask = (jnp.arange(steps * batch_size) < n).reshape(steps, batch_size)
    return idx, mask


def random_crop_flip(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """torchvision ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` per image, NHWC.

    Pads with zeros like torchvision's default ``fill=0``; apply it to the raw uint8 batch *before*
    normalisation, as the kit's ``RandomCrop -> RandomHorizontalFlip -> ToTensor -> Normalize`` does.
    """
    n, h, w, _ = images.shape
    k_off, k_flip = jax.random.split(key)
    offsets = jax.random.randint(k_off, (n, 2), 0, 2 * padding + 1)
    flips = jax.random.bernoulli(k_flip, 0.5, (n,))
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def one(img, off, flip):
        crop = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(one)(padded, offsets, flips)
