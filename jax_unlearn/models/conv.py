"""A bias-free 2-D convolution with a choice of lowering: XLA's convolution, im2col + one GEMM, or XLA's
convolution with a hand-written canonical-layout VJP where XLA:CPU runs that fast.

Why: the engine runs many models at once with ``jax.vmap`` over seed lanes. When both the activations and
the weights carry the lane axis, JAX's batching rule for ``lax.conv_general_dilated`` folds the lanes into a
*grouped* convolution (``feature_group_count = lanes``), which GPU backends run far below a plain
convolution (the input-gradient of a grouped conv is not handed to cuDNN; issue #6 measured ~6× below the
single-model ceiling). ``impl='gemm'`` writes the same function without any convolution op: im2col made of
pad + strided slices + two concatenations (pure data movement), then one ``dot_general`` with the kernel
reshaped to ``(kh·kw·cin, cout)``. Under ``vmap`` the slices act on the lane-batched tensor and the
``dot_general`` becomes a batched GEMM (lanes as the batch dimension) — in the forward pass and, as the
transposes of slice/pad/concatenate/dot are again slice/pad/dot, in both backward passes.

Taps that read only zero padding are dropped before the GEMM: they contribute exactly ``0·w`` to every
output. This makes a 3×3/pad-1 conv on a 1×1 map a plain matmul with the centre tap, a 3×3/2 conv from a
2×2 map a 4-tap GEMM, and a 1×1 conv a matmul on the (strided) input. Padding is applied only as far as
the kept taps read it. The result is the same mathematical function as ``lax.conv_general_dilated`` (the
floating-point summation order differs, so float32 agrees to rounding; ``tests/models/test_conv.py``
checks forward, input- and weight-gradients in float32 and float64).

Parameters are exactly ``flax.linen.Conv(features, kernel_size, strides, padding, use_bias=False)``'s: one
``'kernel'`` of shape ``(kh, kw, cin, cout)`` (HWIO) in ``param_dtype``, drawn by ``kernel_init``; inputs and
kernel are promoted to ``dtype`` with Flax's own ``promote_dtype``. ``impl='xla'`` issues the very call
``nn.Conv`` makes, so it is bit-identical to it.

Why ``impl='xla'`` is slow inside ``lax.scan`` on XLA:CPU (jax/jaxlib 0.10.2; reproducer
``benchmarks/xla_conv_scan.py``, figures in ``benchmarks/RESULTS.md``): XLA:CPU runs a convolution fast
(as a YNNPACK fusion, ``__ynn_fusion``, or Eigen) only in canonical form, input NHWC and kernel HWIO. The
forward conv is canonical, but JAX's VJP emits the input gradient with kernel ``01oi`` (flipped, I/O
swapped) and the weight gradient as ``f01b_i01o->01bf``. The CPU pass ``convolution-canonicalization``
(xla/service/cpu/conv_canonicalization.cc) rewrites such convs with transposes into canonical ones — but it
walks ``module->entry_computation()`` only. Inside a while loop (``lax.scan``, ``fori_loop``; the engine's
steps) the body is another computation, so the three backward convs of every layer stay non-canonical and
are emitted as *elemental* kernels (``conv_general_dilated.N_elemental_kernel_module`` in an
``XLA_FLAGS=--xla_dump_to`` dump: one naive loop nest per output element), while the forward convs in the
same body are YNNPACK fusions. A train step of one ResNet block (64 ch, 8×8, batch 64) costs ~0.03 CPU-s
as a Python loop of ``jit(step)`` or as a fully unrolled scan, and ~0.7 CPU-s inside ``jit(lax.scan)``.
No XLA CPU flag changes this (thunk runtime off, XNNPACK/oneDNN flags, Eigen threading, the
concurrency-optimised scheduler: all measured, none helps); only a loop-free program (``unroll`` = the
trip count, impractical for an epoch of ResNet-18 steps) avoids it.

Two lowerings avoid it. ``impl='gemm'`` has no convolution op at all. ``impl='canonical'``
(:func:`conv_canonical`) keeps XLA's convolution and writes its VJP by hand in the canonical form, doing
what the pass would have done: the input gradient is the forward conv of the output gradient with the
kernel flipped and its I/O swapped, the weight gradient a conv whose "batch" is the input's channels and
whose "kernel" is the output gradient (two transposes). So all three convs of a layer stay YNNPACK fusions
inside the loop. That is fast only on maps of at least 4×4 (:data:`CANONICAL_MIN_MAP`): on 2×2 maps even
the forward conv alone was slow inside the loop, and a chain of four 256-channel convs ran 12× slower than
GEMM. For strided convs the gradients need dilations (the 7×7/2 stem ran slower that way). So
``'canonical'`` uses it for stride-1 convs on maps ≥ 4×4 (at 32×32 input, ResNet-18's ``layer1`` and
``layer2`` but its first conv) and :func:`conv_gemm` elsewhere.
Against ``'gemm'`` everywhere, the drop-in's ResNet-18 finetune program (batch 64, 2-core CPU, both programs
in one process, interleaved) ran 1.21 s against 1.35 s for 10 steps and 4.84 s against 5.35 s for 47, used
~18% less CPU time (less im2col/col2im traffic) and compiled ~0.8 s faster, so ``conv='auto'`` resolves to
``'canonical'`` on CPU (benchmarks/RESULTS.md, 2026-12-05). Under ``vmap`` over lanes with
per-lane weights its convs become grouped convolutions (on a 2-core CPU two lanes of a 64-channel block
ran ~1.8× slower than ``'gemm'``); the engine runs one lane per program on a CPU
(:func:`jax_unlearn.engine.lanes.lanes_per_call`), and ``'gemm'`` remains the lowering for vmapped lanes.
"""
from __future__ import annotations

import functools
from typing import Any, Literal, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen.dtypes import promote_dtype
from jax import lax

CONV_IMPLS = ("xla", "gemm", "canonical")
ConvImpl = Literal["xla", "gemm", "canonical"]
CANONICAL_MIN_MAP = 4  # 'canonical' uses XLA's conv on stride-1 convs whose input maps are at least this big
_NHWC = ("NHWC", "HWIO", "NHWC")


def check_impl(impl: str) -> str:
    """``impl`` if it names a known lowering, else a ValueError listing the valid ones."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; valid: {', '.join(CONV_IMPLS)}")
    return impl


def _pads(padding, kernel_size: Sequence[int], strides: Sequence[int], spatial: Sequence[int]):
    """Explicit ``((lo, hi), (lo, hi))`` from a Flax-style padding ('VALID', 'SAME', or pairs)."""
    if isinstance(padding, str):
        if padding.upper() not in ("VALID", "SAME"):
            raise ValueError(f"conv padding {padding!r} not supported; use 'VALID', 'SAME' or (lo, hi) pairs")
        return tuple(lax.padtype_to_pads(spatial, kernel_size, strides, padding.upper()))
    pads = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    if len(pads) != 2 or any(len(p) != 2 for p in pads):
        raise ValueError(f"conv padding must be two (lo, hi) pairs, got {padding!r}")
    return pads


def _axis_taps(size: int, k: int, stride: int, pad: tuple[int, int]):
    """For one spatial axis: the output length, the taps that read at least one real (non-padding) input
    element, and the (low, high) padding those taps actually read."""
    lo, hi = pad
    out = (size + lo + hi - k) // stride + 1
    if out < 1:
        raise ValueError(f"conv window {k} (stride {stride}, padding {pad}) does not fit an axis of {size}")
    # Tap t reads input positions t - lo + stride * o, o = 0 .. out - 1.
    taps = [t for t in range(k) if any(0 <= t - lo + stride * o < size for o in range(out))]
    if not taps:  # every window lies in the padding
        return out, taps, (0, 0)
    first = min(t - lo for t in taps)
    last = max(t - lo + stride * (out - 1) for t in taps)
    return out, taps, (max(0, -first), max(0, last - (size - 1)))


def conv_gemm(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding, precision=None) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, strides, padding)`` in NHWC/HWIO, written as im2col + GEMM.

    Args:
      x: (N, H, W, Cin) input.
      kernel: (kh, kw, Cin, Cout) kernel (HWIO), same dtype as ``x``.
      strides: (sh, sw).
      padding: 'VALID', 'SAME' or ((top, bottom), (left, right)) zero padding.
      precision: passed to ``lax.dot_general`` (as ``nn.Conv`` passes it to the convolution).

    Returns:
      (N, Ho, Wo, Cout) with ``Ho = (H + top + bottom - kh) // sh + 1`` (likewise ``Wo``).

    Only taps that read real input are kept (the others multiply zero padding); each kept tap (i, j) is the
    strided slice ``xp[:, i::sh, j::sw, :]`` of the input padded as far as those taps need, laid side by side
    along channels in HWIO order (built in two stages: the column slices, then the row slices of those),
    and one ``dot_general`` contracts them with the matching rows of ``kernel.reshape(kh·kw·Cin, Cout)``.
    No convolution op is emitted, forward or backward.
    """
    if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
        raise ValueError(f"conv_gemm wants NHWC x and HWIO kernel with matching Cin, got {x.shape}, {kernel.shape}")
    (n, h, w, cin), (kh, kw, _, cout) = x.shape, kernel.shape
    (sh, sw) = strides
    pad_h, pad_w = _pads(padding, (kh, kw), (sh, sw), (h, w))
    ho, taps_h, (ph_lo, ph_hi) = _axis_taps(h, kh, sh, pad_h)
    wo, taps_w, (pw_lo, pw_hi) = _axis_taps(w, kw, sw, pad_w)
    if not taps_h or not taps_w:  # the output reads padding only: exactly zero (and so are both gradients)
        return jnp.zeros((n, ho, wo, cout), jnp.result_type(x, kernel))
    if ph_lo or ph_hi or pw_lo or pw_hi:
        x = jnp.pad(x, ((0, 0), (ph_lo, ph_hi), (pw_lo, pw_hi), (0, 0)))
    # Tap t's first read, in the coordinates of the (partially) padded x.
    off_h, off_w = pad_h[0] - ph_lo, pad_w[0] - pw_lo
    # im2col in two stages (the column taps, then the row taps of that): the same columns as one
    # concatenation of kh·kw slices, and a ResNet-18 train program compiles ~24% faster on XLA:CPU.
    hp = x.shape[1]
    by_col = [lax.slice(x, (0, 0, j - off_w, 0), (n, hp, j - off_w + sw * (wo - 1) + 1, cin), (1, 1, sw, 1))
              for j in taps_w]
    cols = by_col[0] if len(by_col) == 1 else jnp.concatenate(by_col, axis=-1)  # (N, Hp, Wo, |taps_w|·Cin)
    by_row = [lax.slice(cols, (0, i - off_h, 0, 0), (n, i - off_h + sh * (ho - 1) + 1, wo, cols.shape[-1]),
                        (1, sh, 1, 1)) for i in taps_h]
    cols = by_row[0] if len(by_row) == 1 else jnp.concatenate(by_row, axis=-1)
    # Kept taps form a contiguous block of the kernel; its row (a·|taps_w| + b)·Cin + c is
    # kernel[taps_h[a], taps_w[b], c], the order of the columns above.
    k2 = kernel[taps_h[0]:taps_h[-1] + 1, taps_w[0]:taps_w[-1] + 1].reshape(len(taps_h) * len(taps_w) * cin, cout)
    return lax.dot_general(cols, k2, (((3,), (0,)), ((), ())), precision=precision)


def conv_canonical(x: jax.Array, kernel: jax.Array, padding, precision=None) -> jax.Array:
    """A stride-1 ``lax.conv_general_dilated(x, kernel, (1, 1), padding)`` in NHWC/HWIO whose VJP is written
    as two more convolutions in that same canonical layout, so that XLA:CPU runs all three as library
    (YNNPACK) fusions even inside a ``lax.scan`` (see the module docstring).

    Args:
      x: (N, H, W, Cin) input.
      kernel: (kh, kw, Cin, Cout) kernel (HWIO), same dtype as ``x``.
      padding: 'VALID', 'SAME' or ((top, bottom), (left, right)) zero padding.
      precision: passed to every ``lax.conv_general_dilated``.

    Returns:
      (N, Ho, Wo, Cout) with ``Ho = H + top + bottom - kh + 1`` (likewise ``Wo``).

    With ``y = conv(x, w)`` and output gradient ``g``: ``dx = conv(g, flip(w)ᵀ)`` (spatially flipped, I/O
    swapped, padding ``k - 1 - pad`` on each side) and ``dw[i, j, c, o] = Σ_{n,h,w} xp[n, h+i, w+j, c]
    g[n, h, w, o]``, the conv of ``x`` laid out as (Cin, H, W, N) with ``g`` as a (Ho, Wo, N, Cout) kernel and
    the forward's padding, giving (Cin, kh, kw, Cout).
    """
    if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
        raise ValueError(f"conv_canonical wants NHWC x and HWIO kernel with matching Cin, got {x.shape}, "
                         f"{kernel.shape}")
    pads = _pads(padding, kernel.shape[:2], (1, 1), x.shape[1:3])
    for size, k, pad in zip(x.shape[1:3], kernel.shape[:2], pads):
        _axis_taps(size, k, 1, pad)  # the window must fit the padded input
    return _conv_canonical(x, kernel, pads, precision)


def _conv(x, kernel, pads, precision):
    return lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_NHWC, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_canonical(x, kernel, pads, precision):
    return _conv(x, kernel, pads, precision)


def _conv_canonical_fwd(x, kernel, pads, precision):
    return _conv(x, kernel, pads, precision), (x, kernel)


def _conv_canonical_bwd(pads, precision, res, g):
    x, kernel = res
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = pads
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)  # (kh, kw, Cout, Cin)
    dx = _conv(g, flipped, ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)), precision)
    dw = _conv(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), pads, precision)  # (Cin, kh, kw, Cout)
    return dx, dw.transpose(1, 2, 0, 3)


_conv_canonical.defvjp(_conv_canonical_fwd, _conv_canonical_bwd)


def uses_conv_canonical(impl: str, input_shape: Sequence[int], strides: Sequence[int]) -> bool:
    """Whether ``impl`` runs a conv of (N, H, W, C) ``input_shape`` with ``strides`` as :func:`conv_canonical`
    (for ``'canonical'``: stride 1 and maps of at least :data:`CANONICAL_MIN_MAP`); otherwise ``'canonical'``
    and ``'gemm'`` run :func:`conv_gemm`, and ``'xla'`` runs XLA's conv with JAX's own VJP."""
    return impl == "canonical" and tuple(strides) == (1, 1) and min(input_shape[1:3]) >= CANONICAL_MIN_MAP


class Conv(nn.Module):
    """``nn.Conv(features, kernel_size, strides, padding, use_bias=False)`` with a selectable lowering.

    Attributes:
      features: output channels Cout.
      kernel_size: (kh, kw).
      strides: (sh, sw).
      padding: 'VALID', 'SAME' or ((top, bottom), (left, right)).
      impl: 'xla' — ``lax.conv_general_dilated``, the call ``nn.Conv`` makes (bit-identical to it);
        'gemm' — :func:`conv_gemm` (im2col + one GEMM; no convolution op, so ``vmap`` over lanes with
        per-lane weights gives batched GEMMs instead of grouped convolutions);
        'canonical' — :func:`conv_canonical` (XLA's conv with a canonical-layout VJP) for stride-1 convs on
        maps of at least :data:`CANONICAL_MIN_MAP`, :func:`conv_gemm` otherwise (:func:`uses_conv_canonical`).
      dtype: compute dtype (None: inferred from input and kernel, as ``nn.Conv``).
      param_dtype, kernel_init, precision: as ``nn.Conv``.

    Input (N, H, W, Cin); output (N, Ho, Wo, Cout). Variables: ``{'params': {'kernel': (kh, kw, Cin, Cout)}}``,
    the same tree ``nn.Conv(..., use_bias=False)`` makes, so checkpoints and converters are shared.
    """

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Any = "SAME"
    impl: ConvImpl = "xla"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Any = nn.linear.default_kernel_init

    @nn.compact
    def __call__(self, x):
        check_impl(self.impl)
        if x.ndim != 4:
            raise ValueError(f"Conv expects NHWC input (4 dims), got shape {x.shape}")
        kernel_size, strides = tuple(self.kernel_size), tuple(self.strides)
        kernel = self.param("kernel", self.kernel_init, (*kernel_size, x.shape[-1], self.features),
                            self.param_dtype)
        x, kernel = promote_dtype(x, kernel, dtype=self.dtype)
        if uses_conv_canonical(self.impl, x.shape, strides):
            return conv_canonical(x, kernel, self.padding, self.precision)
        if self.impl in ("gemm", "canonical"):
            return conv_gemm(x, kernel, strides, self.padding, self.precision)
        padding = self.padding if isinstance(self.padding, str) else _pads(self.padding, kernel_size, strides,
                                                                           x.shape[1:3])
        return lax.conv_general_dilated(x, kernel, strides, padding, lhs_dilation=(1, 1), rhs_dilation=(1, 1),
                                        dimension_numbers=lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1),
                                                                                   (0, 3, 1, 2)),
                                        feature_group_count=1, precision=self.precision)
