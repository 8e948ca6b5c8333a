"""`amnesiacs`, a NeurIPS 2023 Machine Unlearning Challenge winner, ported from xcadet/deepunlearn
``munl/unlearning/kgltop6.py`` step by step (shared pieces and the loaders it receives: :mod:`.common`).
The method's docstring ends with what was ambiguous in the source and what we chose.
"""
from __future__ import annotations

import jax

from jax_unlearn.engine.batches import steps_per_epoch
from jax_unlearn.engine.losses import cross_entropy, kl_divergence, soft_cross_entropy
from jax_unlearn.engine.optim import cosine_annealing_per_epoch, torch_sgd
from jax_unlearn.engine.protocol import Method
from jax_unlearn.engine.train import epoch_over, loss_step, multi_opt_state, next_epoch, teacher_logits, variables_of
from jax_unlearn.methods.registry import register
from jax_unlearn.methods.winners.common import reset_linear
from jax_unlearn.methods.winners.common import REF as _REF


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
    order every epoch. The teacher is ``epoch``'s ``start`` (the original model; never copied into the state).
    """
    tx_kd = torch_sgd(kd_lr, momentum, weight_decay)
    retain_steps = steps_per_epoch(ctx.size("retain"), batch_size)
    tx_retain = torch_sgd(cosine_annealing_per_epoch(retain_lr, retain_epochs, retain_steps), momentum, weight_decay)
    t = temperature

    def kd_loss(teacher):
        def loss(state, logits, images, labels, mask):
            return kl_divergence(logits, teacher_logits(ctx, teacher, images), mask, t)

        return loss

    def retain_loss(teacher):
        def loss(state, logits, images, labels, mask):
            target = teacher_logits(ctx, teacher, images)
            return (soft_cross_entropy(logits / t, jax.nn.softmax(target / t), mask)
                    + cross_entropy(logits, labels, mask) + kl_divergence(logits, target, mask, t))

        return loss

    def init(key, start_variables, data):
        k_conv, k_fc = jax.random.split(key)
        params = reset_linear(k_fc, reset_linear(k_conv, start_variables["params"], "conv1"), "fc")
        return multi_opt_state({**start_variables, "params": params}, (tx_kd.init(params), tx_retain.init(params)))

    def epoch(state, key, data, start):
        distil = epoch_over(ctx, "validation", batch_size, loss_step(ctx, tx_kd, 0, kd_loss(start)), shuffle=False)
        retain = epoch_over(ctx, "retain", batch_size, loss_step(ctx, tx_retain, 1, retain_loss(start)))
        state, metrics = jax.lax.cond(state.epoch < kd_epochs, distil, retain, state, key, data)
        return next_epoch(state), metrics

    return Method(init, epoch, variables_of, kd_epochs + retain_epochs)
