"""NeurIPS 2023 winners, part 2: toshi-conv-transpose, amnesiacs, sun (shared pieces: :mod:`.winners`).

Each port follows the xcadet/deepunlearn re-implementation of the Kaggle notebook (``kgltopN.py``) step by
step; its loaders (the method's own batch size; retain and forget shuffled, validation not) are described
in :mod:`.winners`. Every docstring ends with what was ambiguous in the source and what we chose.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_unlearn.engine.batches import steps_per_epoch
from jax_unlearn.engine.losses import cross_entropy, kl_divergence, soft_cross_entropy
from jax_unlearn.engine.optim import cosine_annealing_per_epoch, torch_sgd
from jax_unlearn.engine.train import epoch_over, teacher_logits, variables_of
from jax_unlearn.methods.base import Method, register
from jax_unlearn.methods.finetune import supervised
from jax_unlearn.methods.winners import (
    ce_loss, kind_mask, leaf_mask, loss_step, map_selected, next_epoch, reset_linear, standard_draws, winner_state)
from jax_unlearn.models import init_variables

_REF = "NeurIPS 2023 Machine Unlearning Challenge (Kaggle); port: xcadet/deepunlearn munl/unlearning/"


# ---- toshi-conv-transpose -----------------------------------------------------------------------------------

def transpose_conv_kernels(params):
    """Swap the two spatial axes of every conv kernel: torch ``weight.swapaxes(2, 3)`` on (O, I, kh, kw) is
    ``kernel.swapaxes(0, 1)`` on Flax's (kh, kw, I, O). 1×1 kernels are unchanged; nothing else is touched."""
    return map_selected(lambda _, w: jnp.swapaxes(w, 0, 1), None, params, kind_mask(params, "conv"))


@register("toshi-conv-transpose", "transpose every conv kernel spatially, then fine-tune on the retain set",
          _REF + "kgltop5.py (toshi_k)",
          epochs=3, batch_size=64, lr=1e-3, momentum=0.9, weight_decay=5e-4)
def toshi_conv_transpose(ctx, *, epochs, batch_size, lr, momentum, weight_decay) -> Method:
    """toshi_k: ``w <- wᵀ`` (spatial axes) in every conv, then the fine-tuning baseline.

    ``init``: :func:`transpose_conv_kernels`. Epochs: CE on the retain set, ``SGD(lr, momentum,
    weight_decay)``, ``CosineAnnealingLR(T_max=epochs)`` per epoch (:func:`~.finetune.supervised`).

    Defaults: the port's ``ORIGINAL_*`` (3 epochs, batch 64, SGD 1e-3, momentum 0.9, weight decay 5e-4).

    References: xcadet/deepunlearn ``kgltop5.py`` (``rotate_weight``; read at commit 6830ff6); Triantafillou
    et al., arXiv:2406.09073.

    Ambiguities: the source calls it "rotate" but does ``swapaxes(2, 3)`` — a transpose, kept; no other.
    """
    base = supervised(ctx, split="retain", epochs=epochs, batch_size=batch_size, optimizer="sgd", lr=lr,
                      momentum=momentum, weight_decay=weight_decay)

    def init(key, start_variables, data):
        return base.init(key, {**start_variables, "params": transpose_conv_kernels(start_variables["params"])}, data)

    return base._replace(init=init)


# ---- amnesiacs ----------------------------------------------------------------------------------------------

@register("amnesiacs", "reset conv1 and fc, distil the original on validation data, then CE + KD on retain",
          _REF + "kgltop6.py (Amnesiacs)",
          kd_epochs=3, kd_lr=9e-4, retain_epochs=3, retain_lr=1e-3, momentum=0.9, weight_decay=5e-4,
          temperature=5.0, batch_size=64)
def amnesiacs(ctx, *, kd_epochs, kd_lr, retain_epochs, retain_lr, momentum, weight_decay, temperature,
              batch_size) -> Method:
    """Amnesiacs ("unlearning by resetting layers"): forget the input and output layers, re-learn them.

    ``init``: torch ``reset_parameters()`` of ``conv1`` and ``fc`` (U(±1/sqrt(fan_in)), torch's default, not
    torchvision's init); the original model is the (eval-mode) teacher ``t``.

    Epochs ``0 .. kd_epochs-1``: KD on the *validation* set, ``KL(softmax(t/T) ‖ softmax(z/T))``
    (batchmean, no T²), ``SGD(kd_lr, momentum, weight_decay)``, no schedule.
    Epochs ``kd_epochs ..``: on the retain set ``softCE(z/T, softmax(t/T)) + CE(z, y) + KL(t/T ‖ z/T)``,
    a new ``SGD(retain_lr, momentum, weight_decay)`` with ``CosineAnnealingLR(T_max=retain_epochs)`` per epoch.
    The phase is picked with ``lax.cond`` on the epoch counter (unbatched under ``vmap``: a real branch).

    References: xcadet/deepunlearn ``kgltop6.py`` (from the Kaggle notebook "unlearning by resetting layers");
    Triantafillou et al., arXiv:2406.09073.

    Ambiguities: the source's soft CE applies ``log_softmax`` to ``log_softmax(z/T)`` — idempotent, so it is
    ``softCE(z/T, ·)``; the KD phase's validation loader is deepunlearn's (the method's batch 64, *not*
    shuffled: ``munl/settings.py`` ``default_loaders``), so the KD pass walks the validation set in data
    order every epoch. The
    teacher is kept in the state (the method interface hands it to ``init`` only).
    """
    tx_kd = torch_sgd(kd_lr, momentum, weight_decay)
    retain_steps = steps_per_epoch(ctx.size("retain"), batch_size)
    tx_retain = torch_sgd(cosine_annealing_per_epoch(retain_lr, retain_epochs, retain_steps), momentum, weight_decay)
    t = temperature

    def kd_loss(state, logits, images, labels, mask):
        return kl_divergence(logits, teacher_logits(ctx, state.extra, images), mask, t)

    def retain_loss(state, logits, images, labels, mask):
        target = teacher_logits(ctx, state.extra, images)
        return (soft_cross_entropy(logits / t, jax.nn.softmax(target / t), mask) + cross_entropy(logits, labels, mask)
                + kl_divergence(logits, target, mask, t))

    distil = epoch_over(ctx, "validation", batch_size, loss_step(ctx, tx_kd, 0, kd_loss), shuffle=False)
    retain = epoch_over(ctx, "retain", batch_size, loss_step(ctx, tx_retain, 1, retain_loss))

    def init(key, start_variables, data):
        k_conv, k_fc = jax.random.split(key)
        params = reset_linear(k_fc, reset_linear(k_conv, start_variables["params"], "conv1"), "fc")
        return winner_state({**start_variables, "params": params}, (tx_kd.init(params), tx_retain.init(params)),
                            extra=start_variables)

    def epoch(state, key, data):
        state, metrics = jax.lax.cond(state.epoch < kd_epochs, distil, retain, state, key, data)
        return next_epoch(state), metrics

    return Method(init, epoch, variables_of, kd_epochs + retain_epochs)


# ---- sun ----------------------------------------------------------------------------------------------------

class SunExtra(NamedTuple):
    trained: jax.Array  # (L,) bool: the tensors trained this epoch (params leaves in tree order)
    seen: jax.Array  # (L,) bool: the tensors trained in any earlier epoch (the source's ``already_select``)


def _torch_named_bn(names, leaf) -> bool:
    """The source's ``"bn" in key`` on torch parameter names: ``bn1``/``bn2`` are BatchNorm; a downsample
    BatchNorm (``layerN.0.downsample.1.*``) is not."""
    return any("bn" in n for n in names)


@register("sun", "reset fc; train 9 random tensors per epoch (BN always), 6 of them noised; then fine-tune all",
          _REF + "kgltop7.py (Sun)",
          epochs=9, fine_epochs=4, reset_epochs=1, lr=2e-4, fine_lrs=(2e-4, 2e-4, 2e-4, 1e-3, 1e-3, 1e-4),
          momentum=0.9, weight_decay=5e-4, layer_select=9, noise_ratio=0.7, noise_std=0.04, batch_size=64)
def sun(ctx, *, epochs, fine_epochs, reset_epochs, lr, fine_lrs, momentum, weight_decay, layer_select, noise_ratio,
        noise_std, batch_size) -> Method:
    """Sun ("random noise injection"): re-train a random few tensors at a time, noising some of them.

    ``init``: torch ``reset_parameters()`` of ``fc``. Engine epoch ``e`` (a fresh ``SGD(momentum,
    weight_decay)`` each epoch, as the source builds a new optimiser per epoch):

    * ``e < epochs - fine_epochs``: ``layer_select`` tensors drawn uniformly from the non-BN ones, plus
      every BN tensor, are trained at ``lr``; the others are frozen (update mask: bit-identical, no weight
      decay). For ``e >= reset_epochs``, ``int(noise_ratio · layer_select)`` of the drawn tensors get
      ``w += N(0, noise_std²)`` before training — except those trained in an earlier epoch (the source's
      ``if key in already_select: continue``);
    * the last ``fine_epochs`` epochs train every tensor, with learning rates ``fine_lrs[e - epochs +
      fine_epochs]``, no noise.

    Loss: CE on the retain set. Defaults: the port's ``ORIGINAL_*`` and the constants in its ``unlearn()``
    (``layer_select = 9``, ``noise_fix``, ``duplicate_sample``, ``add_already = False``). References:
    xcadet/deepunlearn ``kgltop7.py`` (``select_optim_keys``, ``noise_optimize_group``, ``get_optimze_group``;
    read at commit 6830ff6); Triantafillou et al., arXiv:2406.09073.

    Ambiguities: "BN" is decided on torch parameter names (``"bn" in name``), so the downsample BatchNorm
    (``downsample.1``) is a selectable, noisable tensor as in the source — kept; the source skips the noise
    of tensors trained before, which the write-up does not mention — kept; ``fine_lrs`` has six entries of
    which four are used — kept as the default.
    """
    if len(fine_lrs) < min(fine_epochs, epochs):
        raise ValueError(f"fine_lrs needs {fine_epochs} entries, got {len(fine_lrs)}")
    free = epochs - fine_epochs
    lrs = jnp.asarray([lr if e < free else fine_lrs[e - free] for e in range(epochs)], jnp.float32)
    tx = optax.inject_hyperparams(torch_sgd)(learning_rate=lr, momentum=momentum, weight_decay=weight_decay)
    shapes = jax.eval_shape(lambda: init_variables(ctx.model, jax.random.key(0)))["params"]
    treedef = jax.tree_util.tree_structure(shapes)
    bn = jax.tree_util.tree_leaves(leaf_mask(shapes, _torch_named_bn))  # static: which leaves are "bn"
    candidates = [i for i, b in enumerate(bn) if not b]
    n_select = min(layer_select, len(candidates))
    n_noise = min(int(noise_ratio * layer_select), n_select)

    def update_mask(state):
        return jax.tree_util.tree_unflatten(treedef, list(state.extra.trained))

    train = epoch_over(ctx, "retain", batch_size, loss_step(ctx, tx, 0, ce_loss, update_mask=update_mask))

    def init(key, start_variables, data):
        params = reset_linear(key, start_variables["params"], "fc")
        extra = SunExtra(jnp.ones((len(bn),), bool), jnp.zeros((len(bn),), bool))
        return winner_state({**start_variables, "params": params}, (tx.init(params),), extra)

    def epoch(state, key, data):
        k_select, k_pick, k_noise, k_train = jax.random.split(key, 4)
        is_bn = jnp.asarray(bn)
        chosen = jax.random.choice(k_select, jnp.asarray(candidates, jnp.int32), (n_select,), replace=False)
        picked = jax.random.choice(k_pick, chosen, (n_noise,), replace=False)
        selecting = state.epoch < free
        trained = jnp.where(selecting, jnp.zeros_like(is_bn).at[chosen].set(True) | is_bn, True)
        noised = (jnp.zeros_like(is_bn).at[picked].set(True) & ~state.extra.seen & selecting
                  & (state.epoch >= reset_epochs))
        leaves = jax.tree_util.tree_leaves(state.params)
        noise = standard_draws(k_noise, [w.shape for w in leaves], "normal", leaves[0].dtype)
        leaves = [jnp.where(noised[i], w + noise_std * z, w) for i, (w, z) in enumerate(zip(leaves, noise))]
        params = jax.tree_util.tree_unflatten(treedef, leaves)
        opt = tx.init(params)
        opt = opt._replace(hyperparams={**opt.hyperparams, "learning_rate": lrs[state.epoch]})
        state = state._replace(params=params, opt_states=(opt,),
                               extra=SunExtra(trained, state.extra.seen | trained))
        state, metrics = train(state, k_train, data)
        return next_epoch(state), {**metrics, "noised_tensors": jnp.sum(noised)}

    return Method(init, epoch, variables_of, epochs)
