"""Gradient ascent (GA): maximise the cross-entropy on the forget set, nothing else.

The simplest "un-training" baseline of the unlearning benchmarks (Unlearn-Sparse, Unlearn-Saliency,
DeepUnlearn). Written for one seed; the engine vmaps it. ``lr``, ``momentum`` and ``weight_decay`` may be
traced per-lane scalars; ``epochs`` and ``batch_size`` are structural.
"""
from __future__ import annotations

from jax_unlearn.engine.losses import cross_entropy
from jax_unlearn.engine.optim import make_optimizer
from jax_unlearn.engine.train import Context, create_state, epoch_over, supervised_step, variables_of
from jax_unlearn.engine.protocol import Method
from jax_unlearn.methods.registry import register

REFERENCE = ("Thudi et al., EuroS&P 2022 / Jia et al., NeurIPS 2023; port: OPTML-Group/Unlearn-Sparse "
             "unlearn/GA.py (README GA command) via xcadet/deepunlearn munl/unlearning/gradient_ascent.py")


def negative_cross_entropy(logits, labels, mask):
    """``-CE(logits, labels)`` over unmasked rows: descending it ascends the cross-entropy."""
    return -cross_entropy(logits, labels, mask)


@register("gradient-ascent", "ascend the cross-entropy on the forget set (torch SGD, BN in train mode)",
          REFERENCE, epochs=5, batch_size=256, lr=1e-4, momentum=0.9, weight_decay=5e-4)
def gradient_ascent(ctx: Context, *, epochs, batch_size, lr, momentum, weight_decay) -> Method:
    """GA: per forget batch (shuffled per seed and epoch, last batch partial), one torch ``SGD`` step on::

        loss = -CE(f(x_forget), y_forget)        (BatchNorm in train mode: batch statistics, running ones move)

    i.e. ``g = -∇CE``; ``SGD(lr, momentum, weight_decay)`` adds ``wd·θ`` to ``g`` and applies momentum as
    torch does (:mod:`jax_unlearn.engine.optim`). The retain set is never used. Metrics per epoch: ``loss``
    (the mean of ``-CE`` over the epoch's forget examples) and ``forget_loss`` (its negation, the CE).

    Defaults: Unlearn-Sparse's README GA command (``--unlearn GA --unlearn_lr 0.0001 --unlearn_epochs 5``)
    with its ``arg_parser`` defaults (batch 256, momentum 0.9, weight decay 5e-4, no warm-up; the
    ``MultiStepLR`` milestones 91/136 are never reached, so the rate is constant). DeepUnlearn's port
    (``GradientAscent.ORIGINAL_*``) keeps the parser's lr 0.01 and 10 epochs instead — pass
    ``--set lr=0.01 --set epochs=10`` for those.

    Ambiguity: DeepUnlearn's forget loader uses the test transform (no augmentation), shuffled; so do we
    (Unlearn-Sparse's forget loader crops and flips unless ``--no-aug``).

    References:
        A. Thudi, G. Deza, V. Chandrasekaran, N. Papernot, "Unrolling SGD: Understanding Factors
        Influencing Machine Unlearning", EuroS&P 2022 (gradient ascent as unlearning); J. Jia et al.,
        "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023 — OPTML-Group/Unlearn-Sparse
        ``unlearn/GA.py``, ``arg_parser.py``, ``README.MD`` @ 80ba55d; xcadet/deepunlearn
        ``munl/unlearning/gradient_ascent.py`` @ 6830ff6.
    """
    if ctx.size("forget") == 0:
        raise ValueError("gradient-ascent needs a non-empty forget set")
    tx = make_optimizer("sgd", learning_rate=lr, momentum=momentum, weight_decay=weight_decay)
    forget_pass = epoch_over(ctx, "forget", batch_size, supervised_step(ctx, tx, negative_cross_entropy))

    def init(key, start_variables, data):
        return create_state(start_variables, tx)

    def epoch(state, key, data, start):
        state, metrics = forget_pass(state, key, data)
        return state, {"loss": metrics["loss"], "forget_loss": -metrics["loss"]}

    return Method(init, epoch, variables_of, epochs)
