"""torchvision's ResNet-18, written in Flax linen, parameter for parameter.

Module names follow torchvision's state-dict keys (``layer1.0.conv1`` is ``layer1_0/conv1``) so that the
converter is a table of renames, and initialisers follow ``torchvision.models.resnet``:
Kaiming-normal (fan_out, ReLU) convolutions, unit/zero BatchNorm, and ``nn.Linear``'s default
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the classifier.

Reference: He et al., "Deep Residual Learning for Image Recognition", CVPR 2016;
torchvision/models/resnet.py (``resnet18(weights=None, num_classes=N)``).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Literal, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jax_unlearn.models.batchnorm import BatchNorm
from jax_unlearn.models.conv import Conv, ConvImpl, check_impl
from jax_unlearn.models.init import uniform, variance_scaling

# torchvision: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu") -> N(0, 2 / fan_out), untruncated.
# Flax's initialisers' values, drawn flat: they compile several times faster (jax_unlearn/models/init.py).
conv_init = variance_scaling(2.0, "fan_out", "normal")


class BasicBlock(nn.Module):
    """Two 3×3 convs with BN/ReLU and an identity or 1×1/stride projection shortcut (torchvision BasicBlock)."""

    features: int
    strides: int = 1
    dtype: Any = jnp.float32
    conv_impl: ConvImpl = "xla"  # see jax_unlearn.models.conv

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        conv = functools.partial(Conv, kernel_init=conv_init, dtype=self.dtype, impl=self.conv_impl)
        norm = functools.partial(BatchNorm, dtype=self.dtype)
        y = conv(self.features, (3, 3), (self.strides,) * 2, padding=((1, 1), (1, 1)), name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y, train=train, mask=mask))
        y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = norm(name="bn2")(y, train=train, mask=mask)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv(self.features, (1, 1), (self.strides,) * 2, padding="VALID", name="downsample_0")(x)
            x = norm(name="downsample_1")(x, train=train, mask=mask)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """A torchvision-layout ResNet of BasicBlocks.

    Input: NHWC float images already normalised by the caller (the data layer owns normalisation).
    Output: logits (N, num_classes) float32. ``mask`` (N,) excludes padded examples from BatchNorm
    statistics in train mode (the loss must be masked by the caller too).

    ``stem='imagenet'`` is torchvision's 7×7/2 conv + 3×3/2 max-pool; ``stem='cifar'`` is the common CIFAR
    research variant (3×3/1 conv, no max-pool), i.e. torch ``conv1 = Conv2d(3, 64, 3, 1, 1, bias=False)``
    and ``maxpool = Identity()``.

    ``conv_impl`` chooses how every convolution is lowered (:mod:`jax_unlearn.models.conv`): ``'xla'``
    (``lax.conv_general_dilated``, the default), ``'gemm'`` (im2col + one GEMM, no convolution op: under
    ``vmap`` over lanes with per-lane weights, batched GEMMs instead of grouped convolutions) or
    ``'canonical'`` (XLA's conv with a canonical-layout VJP where XLA:CPU runs that fast, GEMM elsewhere).
    It is the same function either way, with the same variables. ``stem_conv_impl`` overrides it for the stem conv
    only; None (default) means "as ``conv_impl``". Our choice is that the stem follows the body: under
    ``vmap`` the stem conv is lane-grouped too (its images and weights both differ per lane), so only with
    the stem in GEMM form is the vmapped program free of grouped convolutions; the price is the stem's
    im2col (7·7·3 = 147 columns per output pixel, about 2.3× the stem's output, kept for the weight
    gradient). ``stem_conv_impl='xla'`` keeps the stem on XLA's conv (it needs no input gradient), so the
    benchmarks can measure both.
    """

    stage_sizes: Sequence[int]
    num_classes: int = 10
    stem: Literal["imagenet", "cifar"] = "imagenet"
    dtype: Any = jnp.float32  # compute dtype; params, BN statistics and logits stay float32
    width: int = 64  # channels of the stem and first stage (torchvision: 64); small values make test models
    conv_impl: ConvImpl = "xla"
    stem_conv_impl: ConvImpl | None = None  # None: as conv_impl

    @nn.compact
    def __call__(self, x, *, train: bool = False, mask=None):
        check_impl(self.conv_impl)
        stem_impl = check_impl(self.conv_impl if self.stem_conv_impl is None else self.stem_conv_impl)
        x = x.astype(self.dtype)
        if self.stem == "imagenet":
            x = Conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), impl=stem_impl, kernel_init=conv_init,
                     dtype=self.dtype, name="conv1")(x)
        elif self.stem == "cifar":
            x = Conv(self.width, (3, 3), (1, 1), padding=((1, 1), (1, 1)), impl=stem_impl, kernel_init=conv_init,
                     dtype=self.dtype, name="conv1")(x)
        else:
            raise ValueError(f"unknown stem {self.stem!r}; valid: 'imagenet', 'cifar'")
        x = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(x, train=train, mask=mask))
        if self.stem == "imagenet":
            x = max_pool_3x3_s2(x)
        for stage, blocks in enumerate(self.stage_sizes):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(self.width * 2**stage, strides, dtype=self.dtype, conv_impl=self.conv_impl,
                               name=f"layer{stage + 1}_{block}")(x, train=train, mask=mask)
        x = jnp.mean(x.astype(jnp.promote_types(self.dtype, jnp.float32)), axis=(1, 2))
        fan_in = x.shape[-1]
        bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default bias init: U(±1/√fan_in)
        return nn.Dense(self.num_classes, kernel_init=variance_scaling(1 / 3, "fan_in", "uniform"),
                        bias_init=uniform(-bound, bound), name="fc")(x)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """``nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))`` (torchvision's stem pool) on NHWC ``x``,
    as the maximum of 9 strided slices, with a hand-written backward pass that routes each window's
    gradient to its first maximal tap in row-major order — what XLA's select-and-scatter (``ge``) and
    torch's CPU kernel do.

    Why: XLA:CPU expands select-and-scatter (the VJP of ``reduce_window`` max) into iota/scatter passes over
    the padded map and runs the forward ``reduce_window`` as a generic loop; here both directions are a
    few elementwise passes over the 9 slices that XLA fuses. Same function, same gradient (up to the order
    in which the ≤ 4 overlapping windows' contributions to one input are summed).
    """
    return _max_pool(x)


def _pool_taps(x):
    n, h, w, c = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    return [jax.lax.slice(xp, (0, i, j, 0), (n, i + 2 * (ho - 1) + 1, j + 2 * (wo - 1) + 1, c), (1, 2, 2, 1))
            for i in range(3) for j in range(3)]


@jax.custom_vjp
def _max_pool(x):
    return functools.reduce(jnp.maximum, _pool_taps(x))


def _max_pool_fwd(x):
    y = _max_pool(x)
    return y, (x, y)


def _max_pool_bwd(res, g):
    x, y = res
    n, h, w, c = x.shape
    ho, wo = y.shape[1:3]
    free = jnp.ones(y.shape, bool)  # windows whose maximum has not yet been claimed
    dxp = jnp.zeros((n, h + 2, w + 2, c), g.dtype)
    zero = jnp.zeros((), g.dtype)
    for t, tap in enumerate(_pool_taps(x)):
        i, j = divmod(t, 3)
        hit = free & (tap == y)
        free = free & ~hit
        # The transpose of the strided slice: scatter back with interior padding (stride - 1).
        dxp = dxp + jax.lax.pad(jnp.where(hit, g, zero), zero,
                                ((0, 0, 0), (i, h + 2 - i - 2 * (ho - 1) - 1, 1), (j, w + 2 - j - 2 * (wo - 1) - 1, 1),
                                 (0, 0, 0)))
    return (dxp[:, 1:h + 1, 1:w + 1],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
ResNet18.__doc__ = "torchvision ``resnet18(weights=None, num_classes=N)`` as a Flax module (see :class:`ResNet`)."


def init_variables(model: nn.Module, key: jax.Array, image_size: int = 32):
    """Fresh ``{'params', 'batch_stats'}`` for ``model`` from a typed PRNG ``key`` (torchvision's init)."""
    return model.init(key, jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
