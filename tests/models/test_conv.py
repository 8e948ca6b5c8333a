"""The GEMM-lowered and the canonical-VJP convs are the same function as XLA's conv: forward, input- and
weight-gradients, whole ResNets, under vmap over lanes; the vmapped GEMM program holds no (grouped)
convolution, and the canonical lowering's convolutions stay canonical inside a ``lax.scan`` on XLA:CPU."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from jax_unlearn.models import CONV_IMPLS, Conv, ResNet, ResNet18, conv_canonical, conv_gemm
from jax_unlearn.models.conv import uses_conv_canonical
from tiny import quick_init  # tests/ is on sys.path
from torch_reference import rel_err

# (H, Cin, Cout, k, stride, padding): every conv ResNet-18 has at 32×32 input, plus edge cases.
SHAPES = {
    "3x3 8x8": (8, 4, 6, 3, 1, ((1, 1), (1, 1))),
    "3x3/2 8x8": (8, 4, 6, 3, 2, ((1, 1), (1, 1))),
    "3x3/2 2x2->1x1": (2, 5, 6, 3, 2, ((1, 1), (1, 1))),  # 4 of 9 taps read real input
    "3x3 1x1 (centre tap)": (1, 5, 6, 3, 1, ((1, 1), (1, 1))),
    "1x1/2 projection": (4, 4, 6, 1, 2, "VALID"),
    "1x1/2 on 2x2": (2, 4, 6, 1, 2, "VALID"),
    "1x1 on 1x1": (1, 4, 6, 1, 1, "VALID"),
    "stem 7x7/2 32x32": (32, 3, 8, 7, 2, ((3, 3), (3, 3))),
    "cifar stem 3x3 16x16": (16, 3, 8, 3, 1, ((1, 1), (1, 1))),
    "3x3/2 odd 5x5": (5, 3, 4, 3, 2, ((1, 1), (1, 1))),
    "3x3 SAME": (6, 3, 4, 3, 1, "SAME"),
    "3x3/2 SAME 7x7": (7, 3, 4, 3, 2, "SAME"),
    "3x3 no padding": (4, 3, 4, 3, 1, "VALID"),
    "asymmetric padding": (5, 3, 4, 3, 2, ((0, 2), (2, 1))),
    "3x3 asymmetric padding 5x5": (5, 3, 4, 3, 1, ((0, 2), (2, 0))),
    "1x1/2 padding only": (1, 2, 3, 1, 2, ((1, 1), (1, 1))),  # every output reads zero padding
}
TINY = dict(stage_sizes=(1, 1, 1, 1), num_classes=4, width=4)  # ResNet-18's maps at 32×32: 16, 8, 4, 2, 1


def _explicit(padding, h, k, s):
    return jax.lax.padtype_to_pads((h, h), (k, k), (s, s), padding) if isinstance(padding, str) else padding


def brute_force(x, w, stride, pads, g):
    """NumPy float64 loops: the conv, and the input/weight gradients of ``sum(g * conv)``."""
    (t, b), (l, r) = pads
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    n, hp, wp, _ = xp.shape
    kh, kw, _, cout = w.shape
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    y = np.zeros((n, ho, wo, cout))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for o in range(ho):
        for q in range(wo):
            window = (slice(None), slice(o * stride, o * stride + kh), slice(q * stride, q * stride + kw))
            patch = xp[window]  # (n, kh, kw, cin)
            y[:, o, q] = np.einsum("nijc,ijcd->nd", patch, w)
            dxp[window] += np.einsum("nd,ijcd->nijc", g[:, o, q], w)
            dw += np.einsum("nijc,nd->ijcd", patch, g[:, o, q])
    return y, dxp[:, t:hp - b, l:wp - r], dw


def _conv_and_grads(impl, x, w, stride, padding, g):
    def f(x, w):
        return Conv(w.shape[-1], w.shape[:2], (stride, stride), padding, impl=impl).apply({"params": {"kernel": w}}, x)

    y, vjp = jax.vjp(f, x, w)
    return (y, *vjp(g))


def _inputs(h, cin, cout, k, stride, padding, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3, h, h, cin))
    w = rng.normal(size=(k, k, cin, cout))
    pads = _explicit(padding, h, k, stride)
    ho = (h + sum(pads[0]) - k) // stride + 1
    g = rng.normal(size=(3, ho, ho, cout))
    return x.astype(dtype), w.astype(dtype), g.astype(dtype), pads


@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_conv_forward_and_both_gradients_match_brute_force_float64(impl, shape):
    h, cin, cout, k, stride, padding = SHAPES[shape]
    x, w, g, pads = _inputs(h, cin, cout, k, stride, padding, np.float64)
    want = brute_force(x, w, stride, pads, g)
    with jax.enable_x64(True):
        got = jax.jit(functools.partial(_conv_and_grads, impl, stride=stride, padding=padding))(x, w, g=g)
        for name, a, b in zip(("forward", "d input", "d kernel"), got, want):
            assert a.dtype == jnp.float64 and a.shape == b.shape, name
            assert rel_err(a, b) <= 1e-12, (name, rel_err(a, b))


@pytest.mark.parametrize("impl", ["gemm", "canonical"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_gemm_and_canonical_match_xla_float32(impl, shape):
    h, cin, cout, k, stride, padding = SHAPES[shape]
    x, w, g, _ = _inputs(h, cin, cout, k, stride, padding, np.float32, seed=1)
    run = jax.jit(_conv_and_grads, static_argnums=(0, 3, 4))
    got, want = run(impl, x, w, stride, padding, g), run("xla", x, w, stride, padding, g)
    for name, a, b in zip(("forward", "d input", "d kernel"), got, want):
        assert a.dtype == jnp.float32 and a.shape == b.shape, name
        assert rel_err(a, b) <= 1e-5, (name, rel_err(a, b))


def test_xla_impl_is_nn_conv_bit_for_bit_and_gemm_has_the_same_variables():
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 3)), jnp.float32)
    for kernel, strides, padding in (((3, 3), (2, 2), ((1, 1), (1, 1))), ((1, 1), (2, 2), "VALID")):
        ref = nn.Conv(5, kernel, strides, padding=padding, use_bias=False)
        want_vars = ref.init(jax.random.key(0), x)
        for impl in CONV_IMPLS:
            mine = Conv(5, kernel, strides, padding, impl=impl)
            got_vars = mine.init(jax.random.key(0), x)
            assert jax.tree_util.tree_structure(got_vars) == jax.tree_util.tree_structure(want_vars)
            np.testing.assert_array_equal(got_vars["params"]["kernel"], want_vars["params"]["kernel"])
        np.testing.assert_array_equal(Conv(5, kernel, strides, padding).apply(want_vars, x), ref.apply(want_vars, x))
    # bf16 compute: the inputs and the float32 kernel are cast like nn.Conv casts them.
    v = Conv(5, (3, 3), (1, 1), ((1, 1), (1, 1))).init(jax.random.key(1), x)
    y16 = {impl: Conv(5, (3, 3), (1, 1), ((1, 1), (1, 1)), impl=impl, dtype=jnp.bfloat16).apply(v, x)
           for impl in CONV_IMPLS}
    assert y16["gemm"].dtype == y16["canonical"].dtype == y16["xla"].dtype == jnp.bfloat16
    assert v["params"]["kernel"].dtype == jnp.float32
    assert rel_err(y16["gemm"], y16["xla"]) < 2e-2  # bf16 rounding of the outputs, nothing more
    np.testing.assert_array_equal(y16["canonical"], y16["xla"])  # the very same convolution forward


def test_bad_impl_and_bad_shapes_fail_clearly():
    x = jnp.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match="unknown conv impl 'cudnn'"):
        Conv(2, (3, 3), impl="cudnn").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="unknown conv impl"):
        ResNet(**TINY, conv_impl="im2col").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="does not fit"):
        conv_gemm(x, jnp.zeros((7, 7, 3, 2)), (1, 1), "VALID")
    with pytest.raises(ValueError, match="NHWC"):
        conv_gemm(x, jnp.zeros((3, 3, 4, 2)), (1, 1), "SAME")
    with pytest.raises(ValueError, match="does not fit"):
        conv_canonical(x, jnp.zeros((7, 7, 3, 2)), "VALID")
    with pytest.raises(ValueError, match="NHWC"):
        conv_canonical(x, jnp.zeros((3, 3, 4, 2)), "SAME")


def test_canonical_takes_xla_conv_only_for_stride_1_on_maps_of_4x4_and_more():
    def convolutions(h, stride):
        x = jnp.zeros((1, h, h, 3))
        conv = Conv(2, (3, 3), (stride, stride), ((1, 1), (1, 1)), impl="canonical")
        variables = conv.init(jax.random.key(0), x)
        loss = jax.value_and_grad(lambda v, x: jnp.sum(conv.apply(v, x) ** 2), argnums=(0, 1))
        return _convolutions(jax.jit(loss).lower(variables, x).as_text())

    assert len(convolutions(4, 1)) == 3  # forward, input gradient, weight gradient
    assert convolutions(2, 1) == convolutions(8, 2) == []  # GEMM: no convolution op
    assert uses_conv_canonical("canonical", (1, 4, 5, 3), (1, 1))
    assert not uses_conv_canonical("canonical", (1, 3, 8, 3), (1, 1))
    assert not uses_conv_canonical("gemm", (1, 8, 8, 3), (1, 1))
    assert not uses_conv_canonical("xla", (1, 8, 8, 3), (1, 1))


def test_gemm_under_vmap_equals_the_per_lane_loop():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(3, 2, 4, 4, 5)), jnp.float32)  # (lanes, N, H, W, Cin)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 5, 6)), jnp.float32)  # a different kernel per lane
    for stride in (1, 2):
        f = functools.partial(conv_gemm, strides=(stride, stride), padding=((1, 1), (1, 1)))
        got = jax.jit(jax.vmap(f))(x, w)
        for lane in range(3):
            np.testing.assert_allclose(got[lane], f(x[lane], w[lane]), rtol=1e-6, atol=1e-6)
            want = jax.lax.conv_general_dilated(x[lane], w[lane], (stride, stride), ((1, 1), (1, 1)),
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
            assert rel_err(got[lane], want) <= 1e-5


def test_canonical_under_vmap_equals_the_per_lane_loop():
    """Its hand-written VJP batches too (into grouped convolutions): value and both gradients per lane."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(3, 2, 5, 4, 3)), jnp.float32)  # (lanes, N, H, W, Cin)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 3, 4)), jnp.float32)  # a different kernel per lane
    f = jax.value_and_grad(lambda x, w: jnp.sum(jnp.tanh(conv_canonical(x, w, "SAME"))), argnums=(0, 1))
    got = jax.jit(jax.vmap(f))(x, w)
    for lane in range(3):
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(f(x[lane], w[lane]))):
            assert rel_err(a[lane], b) <= 1e-5


# ----------------------------------------------------------------------------------------- whole ResNets


def _train_step(model, variables, x, y, lr=0.1):
    """Train-mode forward, cross-entropy, one plain SGD step: (loss, logits, new params, new batch_stats)."""
    def loss_fn(params):
        logits, state = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                    mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (logits, state["batch_stats"])

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    params = jax.tree_util.tree_map(lambda p, g: p - lr * g, variables["params"], grads)
    return loss, logits, params, stats


def _eval_and_step(model, variables, x, y):
    return model.apply(variables, x, train=False), _train_step(model, variables, x, y)


def _assert_trees_close(a, b, tol):
    leaves_a, leaves_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
    worst = max(rel_err(u, v) for (_, u), (_, v) in zip(leaves_a, leaves_b)
                if jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating))
    assert worst <= tol, worst
    return worst


def _random_stats(variables, seed):
    """BN statistics away from 0/1, so eval mode exercises them."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "mean":
            return jnp.asarray(0.1 * rng.normal(size=leaf.shape), leaf.dtype)
        if name == "var":
            return jnp.asarray(0.5 + rng.random(leaf.shape), leaf.dtype)
        return leaf

    return {**variables, "batch_stats": jax.tree_util.tree_map_with_path(draw, variables["batch_stats"])}


@pytest.mark.parametrize("stem,size,stem_impl,dtype,tol", [
    ("imagenet", 32, None, "float32", 1e-5), ("imagenet", 32, None, "float64", 1e-12),
    ("imagenet", 32, "xla", "float32", 1e-5), ("cifar", 8, None, "float64", 1e-12)])
def test_tiny_resnet_gemm_and_canonical_equal_xla_forward_and_sgd_step(stem, size, stem_impl, dtype, tol):
    with jax.enable_x64(dtype == "float64"):
        models = {impl: ResNet(**TINY, stem=stem, dtype=jnp.dtype(dtype), conv_impl=impl,
                               stem_conv_impl=stem_impl if impl != "xla" else None) for impl in CONV_IMPLS}
        variables = {impl: quick_init(m, jax.random.key(4), size) for impl, m in models.items()}
        _assert_trees_close(variables["gemm"], variables["xla"], 0.0)  # same tree, same initial values
        v = jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                                   _random_stats(variables["xla"], 5))
        rng = np.random.default_rng(6)
        x = jnp.asarray(rng.normal(size=(6, size, size, 3)), dtype)
        y = jnp.asarray(rng.integers(0, 4, 6))
        run = {impl: jax.jit(functools.partial(_eval_and_step, models[impl])) for impl in CONV_IMPLS}
        want = run["xla"](v, x, y)
        for impl in ("gemm", "canonical"):
            got = run[impl](v, x, y)
            assert got[0].dtype == jnp.dtype(dtype)
            _assert_trees_close(got, want, tol)


def test_resnet18_gemm_and_canonical_equal_xla_forward_and_sgd_step_float32():
    """The real ResNet-18 (imagenet stem, 32×32: maps 16, 8, 4, 2, 1) at batch 16, as the torch parity test.

    Not smaller: train-mode BN over the 1×1 maps normalises N values per channel, and at N = 4 the step is
    so ill-conditioned that float32 XLA itself is 4e-4 from the float64 result (gemm: 3.4e-4; gemm and xla
    in float64: 5e-13 apart) — rounding amplified, not a difference between the impls. At N = 16: 7e-6.
    """
    models = {impl: ResNet18(num_classes=10, conv_impl=impl) for impl in CONV_IMPLS}
    variables = _random_stats(quick_init(models["xla"], jax.random.key(7)), 8)
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.normal(size=(16, 32, 32, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 16))
    want = jax.jit(functools.partial(_eval_and_step, models["xla"]))(variables, x, y)
    for impl in ("gemm", "canonical"):
        _assert_trees_close(jax.jit(functools.partial(_eval_and_step, models[impl]))(variables, x, y), want, 1e-5)


# ------------------------------------------------------------------------------------- vmap over lanes


def _lane_step(model):
    def step(variables, x, y):
        return _train_step(model, variables, x, y)[1:]

    return step


def _lanes(seed, size=32, n=8, dtype=jnp.float32):
    """Three lanes of tiny-ResNet variables (different weights), images and labels."""
    model = ResNet(**TINY)
    keys = jax.random.split(jax.random.key(seed), 3)
    variables = quick_init(model, keys, size)
    variables = jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                                       variables)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(3, n, size, size, 3)), dtype)
    y = jnp.asarray(rng.integers(0, 4, (3, n)))
    return variables, x, y


@pytest.mark.parametrize("dtype,reference,tol", [("float32", "gemm", 1e-5), ("float64", "xla", 1e-12)])
def test_vmapped_gemm_resnet_step_equals_the_per_lane_loop(dtype, reference, tol):
    """vmap(gemm step) over 3 lanes with different weights and batches == each lane stepped alone: in float32
    against the un-vmapped gemm step, in float64 against the un-vmapped XLA-conv step (in float32 the tiny
    model's train-mode BN over 1×1 maps amplifies rounding to ~1e-5 even between two XLA programs)."""
    with jax.enable_x64(dtype == "float64"):
        variables, x, y = _lanes(10, dtype=jnp.dtype(dtype))
        got = jax.jit(jax.vmap(_lane_step(ResNet(**TINY, dtype=jnp.dtype(dtype), conv_impl="gemm"))))(variables, x, y)
        one = jax.jit(_lane_step(ResNet(**TINY, dtype=jnp.dtype(dtype), conv_impl=reference)))
        got, variables, x, y = jax.device_get((got, variables, x, y))  # lanes sliced on the host, not op by op
        for lane in range(3):
            take = lambda t: jax.tree_util.tree_map(lambda a: a[lane], t)  # noqa: E731
            _assert_trees_close(take(got), one(take(variables), x[lane], y[lane]), tol)


def _convolutions(hlo: str) -> list[str]:
    return [line for line in hlo.splitlines() if "stablehlo.convolution" in line]


def test_vmapped_gemm_program_has_no_grouped_convolution_while_xla_has():
    variables, x, y = _lanes(11)
    texts = {name: jax.jit(jax.vmap(_lane_step(ResNet(**TINY, **kw)))).lower(variables, x, y).as_text()
             for name, kw in {"xla": {}, "gemm": {"conv_impl": "gemm"},
                              "gemm, xla stem": {"conv_impl": "gemm", "stem_conv_impl": "xla"}}.items()}
    groups = {name: [int(g) for g in re.findall(r"feature_group_count = (\d+)", text)] for name, text in texts.items()}
    assert 3 in groups["xla"] and len(_convolutions(texts["xla"])) >= 12  # lanes became conv groups
    assert _convolutions(texts["gemm"]) == [] and groups["gemm"] == []  # no convolution at all
    assert "dot_general" in texts["gemm"]
    # With the stem kept on XLA, the only convolutions left are the stem's (7×7 window), still lane-grouped.
    stem = _convolutions(texts["gemm, xla stem"])
    assert stem and all(g == 3 for g in groups["gemm, xla stem"]) and len(stem) < len(_convolutions(texts["xla"]))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's convolution canonicalisation")
def test_canonical_convolutions_stay_canonical_inside_a_scan_on_cpu():
    """The premise of 'canonical': inside a jitted ``lax.scan`` of train steps, XLA:CPU's optimised program
    holds only convolutions in the canonical ``b01f_01io->b01f`` form (run as library fusions), while with
    'xla' the backward convolutions keep other layouts (and are emitted as elemental loops)."""
    variables, x, y = _lanes(13)
    variables, x, y = jax.tree_util.tree_map(lambda a: a[0], (variables, x, y))

    def labels(impl):
        step = _lane_step(ResNet(**TINY, conv_impl=impl))

        def body(v, _):
            _, params, stats = step(v, x, y)
            return {"params": params, "batch_stats": stats}, None

        scan = jax.jit(lambda v: jax.lax.scan(body, v, None, length=2)[0])
        return re.findall(r" convolution\(.*dim_labels=([^,\s]+)", scan.lower(variables).compile().as_text())

    canonical, xla = labels("canonical"), labels("xla")
    assert canonical and set(canonical) == {"b01f_01io->b01f"}
    assert set(xla) - {"b01f_01io->b01f"}


# ------------------------------------------------------------------------ GPU (skipped without one)


@pytest.mark.gpu
def test_resnet18_gemm_and_canonical_equal_xla_on_gpu_at_highest_precision():
    """On a GPU, fp32 convs and dots may run in TF32 at default precision, differently for cuDNN and
    cuBLAS; at 'highest' both are true fp32, and the two lowerings must agree as on CPU."""
    with jax.default_matmul_precision("highest"):
        test_resnet18_gemm_and_canonical_equal_xla_forward_and_sgd_step_float32()


@pytest.mark.gpu
def test_compiled_gpu_program_of_vmapped_gemm_has_no_convolution():
    """After XLA's GPU passes (not just in the lowered StableHLO): no convolution, no cuDNN conv call."""
    variables, x, y = _lanes(12)
    compiled = jax.jit(jax.vmap(_lane_step(ResNet(**TINY, conv_impl="gemm")))).lower(variables, x, y).compile()
    text = compiled.as_text()
    assert "convolution" not in text and "cudnn$conv" not in text
