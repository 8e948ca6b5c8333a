"""`toshi-conv-transpose`, a NeurIPS 2023 Machine Unlearning Challenge winner, ported from xcadet/deepunlearn
``munl/unlearning/kgltop5.py`` step by step (shared pieces and the loaders it receives: :mod:`.common`).
The method's docstring ends with what was ambiguous in the source and what we chose.
"""
from __future__ import annotations

import jax.numpy as jnp

from jax_unlearn.engine.protocol import Method
from jax_unlearn.methods.finetune import supervised
from jax_unlearn.methods.registry import register
from jax_unlearn.methods.winners.common import kind_mask, map_selected
from jax_unlearn.methods.winners.common import REF as _REF


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
