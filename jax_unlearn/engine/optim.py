"""PyTorch's optimisers and LR schedules, as optax chains (exact semantics, tested against torch.optim).

torch's ``SGD(lr, momentum, weight_decay)``::

    g <- g + wd * p            (L2 added to the gradient, before momentum)
    b <- momentum * b + g      (b starts at the first g: with dampening 0 that is b_0 = 0)
    p <- p - lr * b

torch's ``Adam(lr, betas, eps, weight_decay)`` likewise adds ``wd * p`` to the gradient (L2, not AdamW)
before the moment updates, and divides by ``sqrt(v_hat) + eps``.

Learning rates may be traced scalars (one value per seed lane under ``vmap``): the factories build pure
chains whose hyper-parameters are ordinary arguments.
"""
from __future__ import annotations

import jax.numpy as jnp
import optax


def cosine_annealing_per_epoch(base_lr, t_max, steps_per_epoch: int, eta_min=0.0) -> optax.Schedule:
    """torch ``CosineAnnealingLR(T_max)`` stepped once per epoch, as a function of the optimiser step.

    ``lr(step) = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / t_max)) / 2`` with
    ``epoch = step // steps_per_epoch`` (the closed form torch's recursive update follows).
    """

    def schedule(step):
        epoch = (step // steps_per_epoch).astype(jnp.float32)
        return eta_min + (base_lr - eta_min) * 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / t_max))

    return schedule


def torch_sgd(learning_rate, momentum=0.0, weight_decay=0.0) -> optax.GradientTransformation:
    """``torch.optim.SGD`` (no dampening, no Nesterov); ``learning_rate`` a float, array or schedule."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.trace(decay=momentum, nesterov=False),
        optax.scale_by_learning_rate(learning_rate),
    )


def torch_adam(learning_rate, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8) -> optax.GradientTransformation:
    """``torch.optim.Adam`` with L2 weight decay added to the gradient (``amsgrad=False``)."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.scale_by_learning_rate(learning_rate),
    )


OPTIMIZERS = {"sgd": torch_sgd, "adam": torch_adam}


def make_optimizer(name: str, **hyper) -> optax.GradientTransformation:
    """Look ``name`` up in :data:`OPTIMIZERS`; an unknown name fails listing the valid ones."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](**hyper)
