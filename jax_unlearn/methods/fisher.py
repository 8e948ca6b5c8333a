"""Second-order, retrain-free baselines: Fisher forgetting (``fisher``) and influence unlearning (``influence``).

Both are one-shot: one engine epoch computes gradient statistics of the original model in eval mode
(BatchNorm on running statistics, which stay untouched) and moves the parameters once. Per-example
gradients are vmapped, ``chunk_size`` at a time (a memory knob: results equal up to float summation order).
``alpha`` may be a traced per-lane scalar; batch and chunk sizes and ``num_samples`` are structural.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jax_unlearn.engine.batches import epoch_batches
from jax_unlearn.engine.losses import cross_entropy
from jax_unlearn.engine.masks import leaf_kinds
from jax_unlearn.engine.train import Context, fold_eval_gradients, forward_eval
from jax_unlearn.engine.protocol import Method
from jax_unlearn.methods.registry import register
from jax_unlearn.models.init import draw_flat

_PORT = "xcadet/deepunlearn munl/unlearning/"


def _chunked(idx, mask, chunk: int):
    """(S, B) batches -> (ceil(S / chunk), chunk, B), padding with empty (all-masked) batches."""
    pad = -idx.shape[0] % chunk
    idx = jnp.concatenate([idx, jnp.zeros((pad, idx.shape[1]), idx.dtype)])
    mask = jnp.concatenate([mask, jnp.zeros((pad, mask.shape[1]), bool)])
    return idx.reshape(-1, chunk, idx.shape[1]), mask.reshape(-1, chunk, mask.shape[1])


def fisher_diagonal(ctx: Context, variables, images, labels, batch_size: int, chunk_size: int = 1):
    """The reference's diagonal Fisher estimate (``hessian``), a params-shaped tree::

        F = 1/S · Σ_b Σ_y  mean_{i∈b} p(y|x_i) · (∇θ mean_{i∈b} CE(f(x_i), y))²

    over the S unshuffled batches ``b`` of ``batch_size`` (the last partial), every class ``y``, the model in
    eval mode. With ``batch_size = 1`` it is the per-example true Fisher ``1/n Σ_i E_{y~p(·|x_i)}(∇ log
    p(y|x_i))²``. ``labels`` only fix the data order (the Fisher samples ``y`` from the model). Each batch is
    one forward pass and C vector–Jacobian products (vmapped over classes); ``chunk_size`` batches are
    vmapped together.
    """
    params, batch_stats = variables["params"], variables["batch_stats"]
    num_classes = ctx.model.num_classes
    idx, mask = epoch_batches(None, images.shape[0], batch_size)
    n_batches = idx.shape[0]

    def one_batch(bidx, bmask):
        z, pullback = jax.vjp(lambda p: forward_eval(ctx, {"params": p, "batch_stats": batch_stats}, images[bidx]),
                              params)
        prob = jax.nn.softmax(z)
        w = bmask.astype(z.dtype) / jnp.maximum(jnp.sum(bmask), 1)  # mean over the batch's real rows
        # d/dz of mean_i CE(z_i, y) is w_i (p_i − e_y): one cotangent per class y, (C, B, C)
        cotangents = (prob[None] - jnp.eye(num_classes, dtype=z.dtype)[:, None, :]) * w[None, :, None]
        grads = jax.vmap(lambda c: pullback(c)[0])(cotangents)
        mean_prob = jnp.sum(prob * w[:, None], axis=0)  # (C,) torch.mean(prob[:, y]); 0 for an empty batch
        return jax.tree_util.tree_map(lambda g: jnp.tensordot(mean_prob, g * g, axes=1), grads)

    def body(acc, inp):
        per_batch = jax.vmap(one_batch)(*inp)
        return jax.tree_util.tree_map(lambda a, g: a + jnp.sum(g, axis=0), acc, per_batch), None

    total, _ = jax.lax.scan(body, jax.tree_util.tree_map(jnp.zeros_like, params), _chunked(idx, mask, chunk_size))
    return jax.tree_util.tree_map(lambda t: t / n_batches, total)


def fisher_variance(params, fisher, alpha):
    """The reference's ``get_mean_var`` variance, per parameter (Flax layouts: conv HWIO, Dense (in, out))::

        v = alpha · min(1 / (F + 1e-8), 1e3)            (classifier: min(…, 1e2))
        v ← mean of v over torch's dim 1 (conv input channels; Dense inputs), broadcast back, for ≥2-d leaves
        v ← 10 v  for the classifier's weight and bias and for every other 1-d leaf (BatchNorm scale/bias)
    """
    kinds = leaf_kinds(params)

    def var(path, kind, f):
        v = jnp.minimum(1.0 / (f + 1e-8), 1e3)
        is_fc = path[0].key == "fc"
        if is_fc:
            v = jnp.minimum(v, 1e2)
        v = alpha * v
        if kind == "conv":  # torch (O, I, kh, kw) dim 1 = Flax HWIO axis 2
            v = jnp.broadcast_to(jnp.mean(v, axis=2, keepdims=True), v.shape)
        elif v.ndim == 2:  # torch Linear (out, in) dim 1 = Flax Dense kernel (in, out) axis 0
            v = jnp.broadcast_to(jnp.mean(v, axis=0, keepdims=True), v.shape)
        return v * 10 if is_fc or v.ndim == 1 else v

    return jax.tree_util.tree_map_with_path(var, kinds, fisher)


@register("fisher", "Fisher forgetting: add Gaussian noise scaled by the inverse retain Fisher diagonal",
          "Golatkar et al., CVPR 2020; port: OPTML-Group/Unlearn-Sparse unlearn/fisher.py (fisher_new) via "
          + _PORT + "fisher.py", alpha=0.2, batch_size=64, chunk_size=1)
def fisher(ctx: Context, *, alpha, batch_size: int, chunk_size: int) -> Method:
    """Fisher forgetting (one engine epoch; metric ``noise_std``, the mean noise standard deviation)::

        F = fisher_diagonal(original, retain)          (eval mode, batches of ``batch_size`` in data order)
        θ ← θ_original + sqrt(v) ⊙ ε,   ε ~ N(0, I) from the seed key,   v = fisher_variance(F, alpha)

    BatchNorm running statistics are untouched; every parameter (BN scale/bias included) is noised.

    Defaults: ``alpha`` 0.2 (Unlearn-Sparse ``arg_parser`` default; its README leaves ``--alpha`` open),
    ``batch_size`` 64 (DeepUnlearn's ``FisherForgetting.ORIGINAL_BATCH_SIZE``; Unlearn-Sparse hard-codes 32).

    Deliberate deviations: (1) the reference applies the classifier rules (clamp 1e2, ×10) to every
    parameter whose torch ``shape[0] == num_classes``; we apply them to ``fc``. They coincide for ResNet-18
    unless ``num_classes`` is a channel width (64, 128, 256, 512). (2) Unlearn-Sparse's full-class special case
    (zero mean and variance 1e-4 for the forgotten class's classifier row) is left out, as DeepUnlearn does.
    Unlearn-Sparse also offers a per-example variant (``--unlearn fisher``: noise ``min(√(α/F), 1e-3)·ε``);
    its README's FF command uses ``fisher_new``, DeepUnlearn calls only ``fisher_new``: the one ported.

    References:
        A. Golatkar, A. Achille, S. Soatto, "Eternal Sunshine of the Spotless Net: Selective Forgetting in
        Deep Networks", CVPR 2020; OPTML-Group/Unlearn-Sparse @ 80ba55d ``unlearn/fisher.py``
        (``hessian``, ``get_mean_var``, ``fisher_new``), ``arg_parser.py``; xcadet/deepunlearn @ 6830ff6
        ``munl/unlearning/fisher.py``.
    """

    def init(key, start_variables, data):
        return {"params": start_variables["params"], "batch_stats": start_variables["batch_stats"]}

    def epoch(variables, key, data, start):
        params = variables["params"]
        f = fisher_diagonal(ctx, variables, *data["retain"], batch_size, chunk_size)
        var = fisher_variance(params, f, alpha)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.tree_util.tree_unflatten(treedef, list(jax.random.split(key, len(leaves))))
        noised = jax.tree_util.tree_map(
            lambda p, v, k: p + jnp.sqrt(v) * draw_flat(jax.random.normal, k, p.shape, p.dtype), params, var, keys)
        std = ravel_pytree(jax.tree_util.tree_map(jnp.sqrt, var))[0]
        return {"params": noised, "batch_stats": variables["batch_stats"]}, {"noise_std": jnp.mean(std)}

    return Method(init, epoch, lambda v: v, 1)


# ------------------------------------------------------------------------------------------------ influence
def gradient_sum(ctx: Context, variables, images, labels, batch_size: int):
    """``Σ_i ∇θ CE(f(x_i), y_i)`` over the split (eval mode), as the reference accumulates it: batch-mean
    gradients times the batch's size, over unshuffled batches of ``batch_size``; a params-shaped tree."""
    n = images.shape[0]

    def fold(acc, g):
        total, b = acc
        size = jnp.minimum(batch_size, n - b * batch_size)
        return jax.tree_util.tree_map(lambda t, x: t + size.astype(x.dtype) * x, total, g), b + 1

    zeros = jax.tree_util.tree_map(jnp.zeros_like, variables["params"])
    (total, _), _ = fold_eval_gradients(ctx, variables, images, labels, batch_size, fold, (zeros, jnp.int32(0)))
    return total


def woodfisher(ctx: Context, variables, images, labels, v, num_samples: int, chunk_size: int):
    """The reference's ``woodfisher`` recursion on flat vectors, over per-example gradients ``g_t`` of the
    first ``min(n, num_samples + 2)`` examples in data order (its loop returns after ``idx > N``)::

        o ← g_0;   for t ≥ 1:  c = o·g_t;  k ← k − (k·g_t / (N + c)) o;  o ← o − (c / (N + c)) o

    starting from ``k = v``, with ``N = num_samples``. Returns ``k`` (flat, like ``v``). Note that ``o`` only
    ever shrinks, so it stays parallel to the first gradient ``g_0`` and the correction to ``v`` lies along
    ``g_0`` — the reference's update, not the WoodFisher paper's rank-one inverse updates of a matrix.
    """
    params, batch_stats = variables["params"], variables["batch_stats"]
    count = min(images.shape[0], num_samples + 2)
    position = jnp.arange(count + (-count % chunk_size), dtype=jnp.int32)  # padded to whole chunks
    real = (position < count).reshape(-1, chunk_size)
    idx = jnp.where(position < count, position, 0).reshape(-1, chunk_size)
    position = position.reshape(-1, chunk_size)
    n = jnp.asarray(num_samples, v.dtype)

    def example_gradient(i):
        def loss(p):
            logits = forward_eval(ctx, {"params": p, "batch_stats": batch_stats}, images[i][None])
            return cross_entropy(logits, labels[i][None])

        return ravel_pytree(jax.grad(loss)(params))[0]

    def update(carry, inp):
        k, o = carry
        g, real, t = inp
        c = jnp.dot(o, g)
        k_new = jnp.where(t == 0, k, k - (jnp.dot(k, g) / (n + c)) * o)
        o_new = jnp.where(t == 0, g, o - (c / (n + c)) * o)
        return (jnp.where(real, k_new, k), jnp.where(real, o_new, o)), None

    def body(carry, inp):
        rows, real, t = inp
        grads = jax.vmap(example_gradient)(rows)  # (chunk, P)
        carry, _ = jax.lax.scan(update, carry, (grads, real, t))
        return carry, None

    (k, _), _ = jax.lax.scan(body, (v, jnp.zeros_like(v)), (idx, real, position))
    return k


@register("influence", "influence unlearning: one Newton step on forget vs retain gradients (WoodFisher)",
          "Izzo et al., AISTATS 2021 / Jia et al., NeurIPS 2023; port: OPTML-Group/Unlearn-Sparse "
          "unlearn/Wfisher.py via " + _PORT + "iu.py", alpha=0.2, batch_size=256, num_samples=1000,
          chunk_size=32)
def influence(ctx: Context, *, alpha, batch_size: int, num_samples: int, chunk_size: int) -> Method:
    """Influence unlearning (IU), one engine epoch (metric ``perturbation_norm``, ‖θ_new − θ‖₂)::

        n_f, n_r = |forget|, |retain|
        v = Σ_forget ∇CE / (n_f + n_r) − Σ_retain ∇CE · n_f / ((n_f + n_r) n_r)      (eval mode, gradient_sum)
        θ ← θ + alpha · woodfisher(v)       (per-example retain gradients, data order: :func:`woodfisher`)

    No randomness: every seed gives the same model. Every parameter (BN scale/bias included) moves; running
    statistics do not.

    Defaults: ``alpha`` 0.2 (Unlearn-Sparse ``arg_parser`` default = DeepUnlearn
    ``InfluenceUnlearning.ORIGINAL_ALPHA``; the README leaves ``--alpha`` open), gradient batch 256,
    ``N = 1000`` (hard-coded in the reference's ``woodfisher``). DeepUnlearn's config also carries
    ``num_epochs`` 10, unused by the method (one shot).

    References:
        Z. Izzo, M. A. Smart, K. Chaudhuri, J. Zou, "Approximate Data Deletion from Machine Learning
        Models", AISTATS 2021; S. P. Singh, D. Alistarh, "WoodFisher", NeurIPS 2020; J. Jia et al., NeurIPS
        2023 — OPTML-Group/Unlearn-Sparse @ 80ba55d ``unlearn/Wfisher.py`` (``Wfisher``, the second
        ``woodfisher`` definition, which overrides the first), ``arg_parser.py``; xcadet/deepunlearn
        @ 6830ff6 ``munl/unlearning/iu.py``.
    """
    if ctx.size("forget") == 0:
        raise ValueError("influence needs a non-empty forget set")
    n_f, n_r = ctx.size("forget"), ctx.size("retain")

    def init(key, start_variables, data):
        return {"params": start_variables["params"], "batch_stats": start_variables["batch_stats"]}

    def epoch(variables, key, data, start):
        params = variables["params"]
        flat, unravel = ravel_pytree(params)
        forget_sum = ravel_pytree(gradient_sum(ctx, variables, *data["forget"], batch_size))[0]
        retain_sum = ravel_pytree(gradient_sum(ctx, variables, *data["retain"], batch_size))[0]
        v = forget_sum / (n_f + n_r) - retain_sum * (n_f / ((n_f + n_r) * n_r))
        step = alpha * woodfisher(ctx, variables, *data["retain"], v, num_samples, chunk_size)
        return ({"params": unravel(flat + step), "batch_stats": variables["batch_stats"]},
                {"perturbation_norm": jnp.linalg.norm(step)})

    return Method(init, epoch, lambda v: v, 1)
