"""NeurIPS 2023 winners, part 1: fanchuan, kookmin, seif, sebastian (shared pieces: :mod:`.winners`).

Each port follows the xcadet/deepunlearn re-implementation of the Kaggle notebook (``kgltopN.py``) step by
step; its loaders (the method's own batch size; retain and forget shuffled) are described in
:mod:`.winners`. Every docstring ends with what was ambiguous in the source, where we differ, and why.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jax_unlearn.engine.batches import epoch_batches, steps_per_epoch
from jax_unlearn.engine.losses import cross_entropy, entropy, kl_divergence, masked_mean
from jax_unlearn.engine.optim import cosine_annealing_per_epoch, torch_sgd
from jax_unlearn.engine.train import epoch_over, forward_train, loss_and_grads, run_steps, teacher_logits, variables_of
from jax_unlearn.methods.base import Method, register
from jax_unlearn.methods.winners import (
    ce_loss, fan_in, fan_out, half_round_trip, kind_mask, leaf_mask, loss_step, map_selected,
    next_epoch, optimizer_step, retain_class_counts, run_batches, shuffled_batches, standard_draws, winner_state)

_REF = "NeurIPS 2023 Machine Unlearning Challenge (Kaggle); port: xcadet/deepunlearn munl/unlearning/"


# ---- fanchuan -----------------------------------------------------------------------------------------------

def fanchuan_contrastive_loss(forget_logits, retain_logits, temperature, forget_mask=None, retain_mask=None):
    """``mean_ij -log_softmax_j(z_f z_rᵀ / T)_ij`` over real forget rows i and real retain columns j.

    forget_logits (Bf, C), retain_logits (Br, C) (the caller detaches them). With no masks this is the
    source's ``(-LogSoftmax(dim=-1)(z_f @ z_r.T / T)).mean()``; masked columns leave the softmax.
    """
    scores = forget_logits @ retain_logits.T / temperature
    bf, br = scores.shape
    fm = jnp.ones((bf,), bool) if forget_mask is None else forget_mask.astype(bool)
    rm = jnp.ones((br,), bool) if retain_mask is None else retain_mask.astype(bool)
    log_p = jax.nn.log_softmax(jnp.where(rm[None, :], scores, -jnp.inf), axis=-1)
    valid = fm[:, None] & rm[None, :]
    return jnp.sum(jnp.where(valid, -log_p, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


@register("fanchuan", "KL to uniform on the forget set, then 8 × [contrastive forget round + CE retain epoch]",
          _REF + "kgltop1.py (Fanchuan)",
          epochs=8, batch_size=256, forget_batch_size=64, kl_lr=5e-3, forget_lr=3e-4, eta_min=1e-6,
          temperature=1.15, retain_lr=1e-3, retain_weight_decay=1e-2, momentum=0.9)
def fanchuan(ctx, *, epochs, batch_size, forget_batch_size, kl_lr, forget_lr, eta_min, temperature, retain_lr,
             retain_weight_decay, momentum) -> Method:
    """Fanchuan: push forget outputs to uniform, then alternate a contrastive forget round and a retain epoch.

    ``init``: one shuffled pass over the forget set (batch ``forget_batch_size``), each batch one step of
    ``SGD(kl_lr, momentum)`` on ``KL(uniform ‖ softmax(z_f))`` (torch ``KLDivLoss(batchmean)``).

    Each of the ``epochs`` engine epochs:

    1. forget round — ``min(|forget loader|, |retain loader|)`` steps, each pairing a forget batch with a
       shuffled retain batch of ``batch_size``: forward the forget batch, then the retain batch (both train
       mode; both update BatchNorm statistics, in that order), ``z_r`` detached, loss
       :func:`fanchuan_contrastive_loss`; ``SGD(forget_lr, momentum)`` with ``CosineAnnealingLR(T_max =
       |forget loader| · epochs, eta_min)`` stepped every step;
    2. retain round — one CE epoch over the retain set, ``SGD(retain_lr · batch_size / 64, momentum,
       weight_decay=retain_weight_decay)``, no schedule.

    The three optimisers keep their own momentum across rounds, as the source's three ``optim.SGD`` do.

    References: Triantafillou et al., arXiv:2406.09073 (2024), §Fanchuan; xcadet/deepunlearn ``kgltop1.py``.

    Ambiguities and deviation: the notebook builds its retain loaders with ``batch_size`` = 256 and takes
    the forget loader it is handed. In deepunlearn that loader, like every harness loader, has the
    method's batch size (256: ``munl/datasets/get_dataset.py``); the challenge's Kaggle harness the
    notebook was written for handed it batch-64 loaders. We keep 64 (``forget_batch_size``; set 256 for
    deepunlearn's), which also sets ``T_max``. The cosine ``T_max`` counts forget-loader steps even when
    the ``zip`` with the retain loader is shorter — kept. Metrics: ``loss`` (retain CE), ``forget_loss``
    (contrastive).
    """
    n_f, n_r = ctx.size("forget"), ctx.size("retain")
    f_steps = steps_per_epoch(n_f, forget_batch_size)
    pair_steps = min(f_steps, steps_per_epoch(n_r, batch_size))
    tx_kl = torch_sgd(kl_lr, momentum)
    tx_forget = torch_sgd(cosine_annealing_per_epoch(forget_lr, f_steps * epochs, 1, eta_min), momentum)
    tx_retain = torch_sgd(retain_lr * batch_size / 64, momentum, retain_weight_decay)
    to_uniform = loss_step(ctx, tx_kl, 0, lambda s, z, x, y, m: kl_divergence(z, jnp.zeros_like(z), m))
    retain_round = epoch_over(ctx, "retain", batch_size, loss_step(ctx, tx_retain, 1, ce_loss))

    def init(key, start_variables, data):
        state = winner_state(start_variables, (tx_kl.init(start_variables["params"]),))
        images, labels = data["forget"]
        state, _ = run_batches(to_uniform, state, images, labels, *shuffled_batches(key, n_f, forget_batch_size))
        return winner_state(variables_of(state), (tx_forget.init(state.params), tx_retain.init(state.params)))

    def contrastive_step(state, xf, mf, xr, mr):
        def objective(params):
            z_f, batch_stats = forward_train(ctx, params, state.batch_stats, xf, mf)
            z_r, batch_stats = forward_train(ctx, params, batch_stats, xr, mr)
            return fanchuan_contrastive_loss(z_f, jax.lax.stop_gradient(z_r), temperature, mf, mr), batch_stats

        (loss, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        return optimizer_step(tx_forget, 0, state, grads, batch_stats), loss

    def epoch(state, key, data):
        k_forget, k_pair, k_retain = jax.random.split(key, 3)
        f_idx, f_mask = shuffled_batches(k_forget, n_f, forget_batch_size, pair_steps)
        r_idx, r_mask = shuffled_batches(k_pair, n_r, batch_size, pair_steps)
        xf, xr = data["forget"][0], data["retain"][0]
        # The loss is averaged over forget examples: the forget mask is the one run_steps counts.
        state, forget_loss = run_steps(lambda s, i, mf: contrastive_step(s, xf[i[0]], mf, xr[i[1]], i[2]),
                                       state, (f_idx, r_idx, r_mask), f_mask)
        state, metrics = retain_round(state, k_retain, data)
        return next_epoch(state), {**metrics, "forget_loss": forget_loss}

    return Method(init, epoch, variables_of, epochs)


# ---- kookmin ------------------------------------------------------------------------------------------------

def _accumulated_gradient(ctx, params, batch_stats, images, labels, idx, mask, signs):
    """``Σ_b ∇(signs[b] · CE(batch b))`` (torch: ``loss.backward()`` per batch without ``zero_grad``), train
    mode; returns ``(grads, batch_stats)`` (the forwards update the running statistics, as in torch)."""

    def body(carry, inp):
        acc, stats = carry
        bidx, bmask, sign = inp

        _, stats, grads = loss_and_grads(ctx, params, stats, images[bidx], bmask,
                                         lambda logits: sign * cross_entropy(logits, labels[bidx], bmask))
        return (jax.tree_util.tree_map(jnp.add, acc, grads), stats), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    (grads, batch_stats), _ = jax.lax.scan(body, (zeros, batch_stats), (idx, mask, signs))
    return grads, batch_stats


def _warmup_then_linear_decay(base_lr, epochs: int, steps_per_epoch_: int):
    """The kookmin port's ``LinearAnnealingLR(num_annealing_steps=(E+1)//2, num_total_steps=E+1)`` stepped
    per epoch: epoch ``e`` uses ``c = e + 1`` and ``lr = base·c/A`` for ``c <= A``, else
    ``base·(T - c)/(T - A)``; for E = 5: base × (1/3, 2/3, 1, 2/3, 1/3)."""
    a, t = (epochs + 1) // 2, epochs + 1

    def schedule(step):
        c = (step // steps_per_epoch_ + 1).astype(jnp.float32)
        return base_lr * jnp.where(c <= a, c / a, (t - c) / (t - a))

    return schedule


@register("kookmin", "re-init the 30% smallest-gradient weights of every conv, damp the rest's gradient, fine-tune",
          _REF + "kgltop2.py (Kookmin)",
          epochs=5, batch_size=64, lr=1e-3, momentum=0.9, weight_decay=5e-4, init_rate=0.3, kept_grad_scale=0.1)
def kookmin(ctx, *, epochs, batch_size, lr, momentum, weight_decay, init_rate, kept_grad_scale) -> Method:
    """Kookmin ("masked small gradients"): re-initialise weights the forget set cares little about.

    ``init``: ``g = Σ_batches ∇CE`` over a random retain subset of the forget set's size plus
    ``Σ_batches ∇(-CE)`` over the forget set (batch ``batch_size``, train mode). In every conv kernel
    (``conv1``, block convs, downsample convs; not ``fc``) the ``round(init_rate · size)`` entries with the
    smallest ``|g|`` are re-drawn from Kaiming-normal (fan_out, ReLU); the gradient of the other entries is
    multiplied by ``kept_grad_scale`` for the rest of the run (the source's ``MaskConv2d`` backward hook, so
    L2 weight decay and momentum see the scaled gradient: a gradient scale, not an update mask).

    ``epoch``: CE on the retain set, ``SGD(lr, momentum, weight_decay)``, learning rate warm-up then linear
    decay per epoch (:func:`_warmup_then_linear_decay`).

    Defaults: the port's ``ORIGINAL_*`` (5 epochs, batch 64, SGD 1e-3, momentum 0.9, weight decay 5e-4,
    ``init_rate`` 0.3); the 0.1 scale is the source's ``grad_mask[grad_mask == 0] += 0.1``.

    References: xcadet/deepunlearn ``kgltop2.py`` (``get_grads_for_snip``,
    ``re_init_model_snip_ver2_little_grad``, ``LinearAnnealingLR``; read at commit 6830ff6); Triantafillou
    et al., arXiv:2406.09073.

    Ambiguities: the gradient passes run in train mode (torch's default for the harness's freshly built net)
    and so update the BatchNorm running statistics — kept; ties in ``|g|`` are broken by position (a stable
    sort), torch's ``topk`` leaves them unspecified. Deviation: the source's retain-subset loader for the
    gradient pass has a hard-coded batch 64 (and the forget pass the harness's loader); we use
    ``batch_size`` for both — the same at the default.
    """
    n_f, n_r = ctx.size("forget"), ctx.size("retain")
    tx = torch_sgd(_warmup_then_linear_decay(lr, epochs, steps_per_epoch(n_r, batch_size)), momentum, weight_decay)
    train = epoch_over(ctx, "retain", batch_size, loss_step(ctx, tx, 0, ce_loss, grad_scale=lambda s: s.extra))

    def init(key, start_variables, data):
        k_subset, k_forget, k_init = jax.random.split(key, 3)
        params = start_variables["params"]
        # One scan over ``train`` = retain ∪ forget: the retain-subset batches (+CE), then the forget batches (-CE).
        subset = jax.random.permutation(k_subset, n_r)[:n_f].astype(jnp.int32)  # already in random order
        r_idx, r_mask = epoch_batches(None, n_f, batch_size)
        f_idx, f_mask = epoch_batches(k_forget, n_f, batch_size)
        idx = jnp.concatenate([subset[r_idx], n_r + f_idx])
        signs = jnp.concatenate([jnp.ones(r_idx.shape[:1]), -jnp.ones(f_idx.shape[:1])])
        grads, stats = _accumulated_gradient(ctx, params, start_variables["batch_stats"], *data["train"], idx,
                                             jnp.concatenate([r_mask, f_mask]), signs)

        leaves, treedef = jax.tree_util.tree_flatten(params)
        convs = [i for i, c in enumerate(jax.tree_util.tree_leaves(kind_mask(params, "conv"))) if c]
        fresh = standard_draws(k_init, [leaves[i].shape for i in convs], "normal", leaves[0].dtype)
        scale = [jnp.ones((), w.dtype) for w in leaves]
        g_leaves = jax.tree_util.tree_leaves(grads)
        for i, z in zip(convs, fresh):
            w, k = leaves[i], round(init_rate * leaves[i].size)
            order = jnp.argsort(jnp.abs(g_leaves[i]).ravel(), stable=True)
            chosen = jnp.zeros((w.size,), bool).at[order[:k]].set(True).reshape(w.shape)
            leaves[i] = jnp.where(chosen, math.sqrt(2.0 / fan_out(w.shape)) * z, w)  # kaiming_normal_(fan_out)
            scale[i] = jnp.where(chosen, 1.0, kept_grad_scale).astype(w.dtype)
        params = jax.tree_util.tree_unflatten(treedef, leaves)
        return winner_state({"params": params, "batch_stats": stats}, (tx.init(params),),
                            extra=jax.tree_util.tree_unflatten(treedef, scale))

    def epoch(state, key, data):
        state, metrics = train(state, key, data)
        return next_epoch(state), metrics

    return Method(init, epoch, variables_of, epochs)


# ---- seif ---------------------------------------------------------------------------------------------------

_SEIF_SCOPES = {"stem": lambda params: leaf_mask(params, lambda names, leaf: names == ("conv1", "kernel")),
                "convs": lambda params: kind_mask(params, "conv")}


def seif_noise(key, params, std, scope: str = "stem"):
    """The source's ``vision_confuser``: ``w <- N(w, std²)`` on the conv kernels of ``scope`` — ``'stem'``
    (what the source's loop over ``named_children()`` reaches: the top-level ``conv1`` only) or ``'convs'``
    (every conv kernel, the write-up's wording)."""
    if scope not in _SEIF_SCOPES:
        raise ValueError(f"unknown noise_scope {scope!r}; valid: {', '.join(_SEIF_SCOPES)}")
    return map_selected(lambda k, w: w + std * jax.random.normal(k, w.shape, w.dtype), key, params,
                        _SEIF_SCOPES[scope](params))


def seif_class_weights(labels, num_classes: int) -> jax.Array:
    """sklearn ``compute_class_weight('balanced')`` of the retain labels (n_r,), as (C,) float32:
    ``w_c = n_r / (C' · n_c)`` with C' the number of classes present; 0 for absent classes."""
    counts = retain_class_counts(labels, num_classes)
    return jnp.where(counts > 0, jnp.sum(counts) / (jnp.sum(counts > 0) * jnp.maximum(counts, 1.0)), 0.0)


def sebastian_class_weights(labels, num_classes: int, exponent) -> jax.Array:
    """The port's ``get_class_weights``: ``n_c ** exponent`` of the retain labels (n_r,), as (C,) float32;
    0 for absent classes (the port's tensor would be shorter; no retain label reads it)."""
    counts = retain_class_counts(labels, num_classes)
    return jnp.where(counts > 0, jnp.maximum(counts, 1.0) ** exponent, 0.0)


@register("seif", "noise the conv weights (σ 0.6), class-weighted CE on retain, re-noise (σ 0.005) before the end",
          _REF + "kgltop3.py (Seif)",
          epochs=4, batch_size=64, lr=7e-4, momentum=0.9, weight_decay=5e-4, start_std=0.6, final_std=0.005,
          noise_scope="stem")
def seif(ctx, *, epochs, batch_size, lr, momentum, weight_decay, start_std, final_std, noise_scope) -> Method:
    """Seif: perturb, then repair on the retain set.

    ``init``: :func:`seif_noise` with ``start_std``. Each epoch: class-weighted CE on the retain set,
    ``SGD(lr, momentum, weight_decay)``, ``CosineAnnealingLR(T_max=epochs)`` per epoch; after epoch
    ``epochs - 2`` (before the last one) :func:`seif_noise` again with ``final_std``.

    Loss, as the source's ``CustomCrossEntropyLoss`` computes it: the *unweighted* batch-mean CE times the
    batch's mean class weight, ``CE(z, y) · mean_i w[y_i]``, with sklearn's "balanced" weights
    ``w_c = N / (C · n_c)`` over the *retain labels* (:func:`seif_class_weights`; as the port's
    ``compute_class_weight('balanced', classes=np.unique(y), y=y)`` on the retain loader's targets;
    classes with no retain example are left out of C).

    References: xcadet/deepunlearn ``kgltop3.py``; Triantafillou et al., arXiv:2406.09073.

    Ambiguities: the source iterates ``named_children()``, so only the stem ``conv1`` is noised although the
    write-up says "conv layers" — default ``noise_scope='stem'`` (the code), ``'convs'`` for the wording; the
    notebook's class weights ``[1, 0.05, …]`` were tuned to the Kaggle age classes, the port (and we) use
    balanced weights from the retain labels. (The port would misindex its weights if a class had no retain
    example; ours gives such a class weight 0, never used since no retain label has it.)
    """
    num_classes = ctx.model.num_classes
    if noise_scope not in _SEIF_SCOPES:
        raise ValueError(f"unknown noise_scope {noise_scope!r}; valid: {', '.join(_SEIF_SCOPES)}")
    tx = torch_sgd(cosine_annealing_per_epoch(lr, epochs, steps_per_epoch(ctx.size("retain"), batch_size)),
                   momentum, weight_decay)

    def init(key, start_variables, data):
        params = seif_noise(key, start_variables["params"], start_std, noise_scope)
        return winner_state({**start_variables, "params": params}, (tx.init(params),))

    def epoch(state, key, data):
        k_train, k_noise = jax.random.split(key)
        weights = seif_class_weights(data["retain"][1], num_classes)

        def loss(state, logits, images, labels, mask):
            return cross_entropy(logits, labels, mask) * masked_mean(weights[labels], mask)

        state, metrics = epoch_over(ctx, "retain", batch_size, loss_step(ctx, tx, 0, loss))(state, k_train, data)
        noised = seif_noise(k_noise, state.params, final_std, noise_scope)
        params = jax.tree_util.tree_map(lambda a, b: jnp.where(state.epoch == epochs - 2, a, b), noised, state.params)
        return next_epoch(state._replace(params=params)), metrics

    return Method(init, epoch, variables_of, epochs)


# ---- sebastian ----------------------------------------------------------------------------------------------

def sebastian_prune(key, params, amount):
    """Global L1 pruning of every conv/linear weight and bias (``prune.global_unstructured``): the
    ``round(amount · total)`` smallest ``|w|`` become 0; then every conv/linear *weight* entry equal to 0 is
    re-drawn from torch's default U(±1/sqrt(fan_in)). Pruned biases stay 0, as in the source."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    kinds = jax.tree_util.tree_leaves(kind_mask(params, "conv", "linear"))
    chosen = [i for i, k in enumerate(kinds) if k]
    flat = jnp.concatenate([jnp.abs(leaves[i]).ravel() for i in chosen])
    n_prune = round(amount * flat.size)
    pruned = jnp.zeros((flat.size,), bool).at[jnp.argsort(flat, stable=True)[:n_prune]].set(True)
    fresh = iter(standard_draws(key, [leaves[i].shape for i in chosen if leaves[i].ndim >= 2], "uniform",
                                leaves[0].dtype))
    offset = 0
    for i in chosen:
        w = leaves[i]
        w = jnp.where(pruned[offset:offset + w.size].reshape(w.shape), jnp.zeros((), w.dtype), w)
        offset += w.size
        if w.ndim >= 2:  # a weight, not a bias: torch's rand_init of the entries == 0
            w = jnp.where(w == 0, next(fresh) / math.sqrt(fan_in(w.shape)), w)
        leaves[i] = w
    return jax.tree_util.tree_unflatten(treedef, leaves)


@register("sebastian", "prune 99% of conv/linear weights (global L1) and re-init them, distil entropy, fp16",
          _REF + "kgltop4.py (Sebastian, PRMQ)",
          epochs=3.2, batch_size=64, lr=5e-4, momentum=0.9, weight_decay=5e-4, prune_amount=0.99,
          weight_exponent=-0.1)
def sebastian(ctx, *, epochs, batch_size, lr, momentum, weight_decay, prune_amount, weight_exponent) -> Method:
    """Sebastian ("prune, retrain, mask, quantise").

    ``init``: :func:`sebastian_prune` with ``prune_amount``. Training: ``SGD(lr, momentum, weight_decay)`` on
    the retain set with ``CE_w(z, y) + mean_i (H(softmax z_i) - H(softmax t_i))²``, ``CE_w`` torch's
    class-weighted CE with ``w_c = n_c ** weight_exponent``, ``n_c`` counted on the retain labels
    (:func:`sebastian_class_weights`, the port's ``get_class_weights(retain_loader)``), and ``t`` the original
    model's eval-mode logits. At the end every float parameter and statistic goes through float16 and back.

    Fractional epochs: the source steps until ``num_iters > int(|retain loader| · epochs)`` *after* the step,
    i.e. ``int(S · epochs) + 1`` steps with S steps per pass — kept. They run as ``ceil(steps / S)`` engine
    epochs, each a shuffled pass whose steps past the budget are skipped (``lax.cond`` on the unbatched
    epoch counter: no work); the fp16 round trip ends the last one.

    References: xcadet/deepunlearn ``kgltop4.py`` (``prune_model``, ``entropy_loss_fn``); Triantafillou et al.,
    arXiv:2406.09073.

    Ambiguities: torch's pruning
    ranks ties arbitrarily, we by position. The original model is kept in the state as the teacher (the
    method interface hands it to ``init`` only); under ``vmap`` it stays unbatched.
    """
    n_r = ctx.size("retain")
    per_pass = steps_per_epoch(n_r, batch_size)
    total = int(per_pass * epochs) + 1
    passes = math.ceil(total / per_pass)
    num_classes = ctx.model.num_classes
    tx = torch_sgd(lr, momentum, weight_decay)

    def make_step(weights):
        def loss(state, logits, images, labels, mask):
            target = teacher_logits(ctx, state.extra, images)
            entropy_mse = masked_mean((entropy(logits) - entropy(target)) ** 2, mask)
            return cross_entropy(logits, labels, mask, weights) + entropy_mse

        return loss_step(ctx, tx, 0, loss)

    def init(key, start_variables, data):
        params = sebastian_prune(key, start_variables["params"], prune_amount)
        return winner_state({**start_variables, "params": params}, (tx.init(params),), extra=start_variables)

    def epoch(state, key, data):
        active = state.epoch * per_pass + jnp.arange(per_pass) < total
        step = make_step(sebastian_class_weights(data["retain"][1], num_classes, weight_exponent))
        state, mean_loss = run_batches(step, state, *data["retain"], *shuffled_batches(key, n_r, batch_size),
                                       active)
        rounded, last = half_round_trip(state), state.epoch == passes - 1
        pick = lambda a, b: jax.tree_util.tree_map(lambda x, y: jnp.where(last, x, y), a, b)  # noqa: E731
        state = state._replace(params=pick(rounded.params, state.params),
                               batch_stats=pick(rounded.batch_stats, state.batch_stats))
        return next_epoch(state), {"loss": mean_loss}

    return Method(init, epoch, variables_of, passes)
