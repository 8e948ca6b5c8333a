"""Supervised training recipes on the engine: fine-tuning baselines, and training from scratch.

All are one function, :func:`supervised`, with different hyper-parameters — the recipes are data, not
copies of a loop.
"""
from __future__ import annotations

import jax.numpy as jnp

from jax_unlearn.engine.losses import cross_entropy
from jax_unlearn.engine.optim import cosine_annealing_per_epoch, make_optimizer
from jax_unlearn.engine.train import Context, create_state, epoch_over, supervised_step, variables_of
from jax_unlearn.engine.protocol import Method
from jax_unlearn.methods.registry import register
from jax_unlearn.models import init_variables


def inverse_count_weights(ctx: Context):
    """Class weights ``1 / count`` (C,) from ``ctx.class_counts`` — the official recipe's weighting."""
    if ctx.class_counts is None:
        raise ValueError("class_weighted=True needs ctx.class_counts")
    return 1.0 / jnp.maximum(jnp.asarray(ctx.class_counts, jnp.float32), 1.0)


def supervised(ctx: Context, *, split: str, epochs: int, batch_size: int, optimizer: str, lr: float,
               weight_decay: float, momentum: float = 0.0, t_max: int | None = None,
               class_weighted: bool = False, augment: bool = False, from_scratch: bool = False) -> Method:
    """Minimise (optionally class-weighted) cross-entropy on ``split`` with a torch optimiser.

    Update rule: torch ``SGD``/``Adam`` with L2 weight decay added to the gradient
    (:mod:`jax_unlearn.engine.optim`), learning rate ``CosineAnnealingLR(T_max=t_max or epochs)``
    stepped per epoch. ``class_weighted`` uses ``weight = 1 / count`` per class from ``ctx.class_counts``
    (given, e.g. the Kaggle ``age_class_weights.json``, else counted on retain ∪ forget by
    :func:`~jax_unlearn.engine.run.context_for`; an error when absent), as the official recipe weights both
    the original and the retrained models by the *train* split's counts. ``from_scratch`` ignores the start
    variables and draws torchvision's initialisation from the seed key.
    """
    steps = -(-ctx.size(split) // batch_size)
    schedule = cosine_annealing_per_epoch(lr, t_max or epochs, steps)
    hyper = dict(learning_rate=schedule, weight_decay=weight_decay)
    if optimizer == "sgd":
        hyper["momentum"] = momentum
    tx = make_optimizer(optimizer, **hyper)
    weights = inverse_count_weights(ctx) if class_weighted else None
    step = supervised_step(ctx, tx, lambda logits, y, mask: cross_entropy(logits, y, mask, weights))

    def init(key, start_variables, data):
        variables = init_variables(ctx.model, key) if from_scratch else start_variables
        return create_state(variables, tx)

    return Method(init, epoch_over(ctx, split, batch_size, step, augment=augment), variables_of, epochs)


@register("finetune", "Kaggle/official baseline: fine-tune on the retain set (1 epoch SGD, BN in train mode)",
          "NeurIPS 2023 Machine Unlearning Kaggle notebook / google-deepmind/unlearning_evaluation",
          epochs=1, batch_size=64, lr=1e-3, momentum=0.9, weight_decay=5e-4)
def finetune(ctx, *, epochs, batch_size, lr, momentum, weight_decay) -> Method:
    """The competition's baseline: ``SGD(lr=1e-3, momentum=0.9, weight_decay=5e-4)``,
    ``CosineAnnealingLR(T_max=epochs)``, plain CE on the retain set, batch 64, 1 epoch, train mode.

    Reference: google-deepmind/unlearning_evaluation ``main.py`` ``do_unlearning`` (batch 64 from
    ``surf.get_dataset(batch_size=64)``; read at commit ffae0ff)."""
    return supervised(ctx, split="retain", epochs=epochs, batch_size=batch_size, optimizer="sgd", lr=lr,
                      momentum=momentum, weight_decay=weight_decay)


@register("finetune-kit", "starting-kit baseline: fine-tune on the retain set, 5 epochs SGD 0.1",
          "unlearning-challenge/starting-kit, unlearning-CIFAR10.ipynb",
          epochs=5, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4)
def finetune_kit(ctx, *, epochs, batch_size, lr, momentum, weight_decay) -> Method:
    """The starting kit's ``unlearning``: ``SGD(0.1, momentum=0.9, weight_decay=5e-4)``,
    ``CosineAnnealingLR(T_max=epochs)`` stepped per epoch, CE on the retain set, batch 128, 5 epochs.

    Reference: unlearning-challenge/starting-kit ``unlearning-CIFAR10.ipynb`` (``unlearning``; batch 128
    from its ``retain_loader``; read at commit 901e784). No augmentation, as its loaders."""
    return supervised(ctx, split="retain", epochs=epochs, batch_size=batch_size, optimizer="sgd", lr=lr,
                      momentum=momentum, weight_decay=weight_decay)


@register("retrain", "reference population: train from scratch on the retain set (official recipe)",
          "NeurIPS 2023 challenge: original-model recipe, trained without the forget set",
          epochs=30, batch_size=64, lr=1e-4, weight_decay=5e-3, recipe="official")
def retrain(ctx, *, epochs, batch_size, lr, weight_decay, recipe, split="retain") -> Method:
    """Train a fresh ResNet-18 on ``split`` (the retain set; ``train`` = retain ∪ forget for the original).

    ``recipe='official'``: 30 epochs torch ``Adam(1e-4, weight_decay=5e-3)`` (L2, not AdamW),
    ``CosineAnnealingLR(T_max=30)`` per epoch, class-weighted CE (1/count of the train split), batch 64,
    no augmentation — google-deepmind/unlearning_evaluation ``train_lib.py`` ``train``, ``main.py``
    (``NUM_EPOCHS = 30``), ``surf.py`` ``get_dataset`` (read at commit ffae0ff). Deviation: the reference
    also saves the best-validation checkpoint from epoch 20 on (``min_save_epoch=20``) and a later run
    reloads that one; we keep the last epoch's model (what its first run evaluates).
    ``recipe='kit'``: ``SGD(lr, momentum=0.9, weight_decay)`` with random-crop(4)+flip, plain CE (pass
    lr=0.1, weight_decay=5e-4 for the kit's values). The starting kit only describes how its original was
    trained (SGD 0.1, momentum 0.9, weight decay 5e-4, crop + flip); epochs, batch size and the cosine
    schedule here are ours.
    """
    if recipe == "official":
        return supervised(ctx, split=split, epochs=epochs, batch_size=batch_size, optimizer="adam", lr=lr,
                          weight_decay=weight_decay, class_weighted=True, from_scratch=True)
    if recipe == "kit":
        return supervised(ctx, split=split, epochs=epochs, batch_size=batch_size, optimizer="sgd", lr=lr,
                          momentum=0.9, weight_decay=weight_decay, augment=True, from_scratch=True)
    raise ValueError(f"unknown recipe {recipe!r}; valid: 'official', 'kit'")


def original(ctx, **hyper) -> Method:
    """The original model: the :func:`retrain` recipe on retain ∪ forget (split ``train``)."""
    return retrain(ctx, split="train", **hyper)
