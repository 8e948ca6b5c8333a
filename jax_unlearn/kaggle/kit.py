"""The drop-in with the starting kit's recipe as default: ``from jax_unlearn.kaggle.kit import unlearning``
in ``unlearning-CIFAR10.ipynb`` runs ``finetune-kit`` (5 epochs, SGD lr 0.1, momentum 0.9, weight decay
5e-4, cosine annealing; batch size from the retain loader, 128 in the kit), the kit's own ``unlearning``.
Everything else is :mod:`jax_unlearn.kaggle`'s (``method=`` still chooses any registered method)."""
from __future__ import annotations

import functools

from jax_unlearn.kaggle import dropin

KIT_METHOD = "finetune-kit"


@functools.wraps(dropin.unlearning, assigned=("__doc__",))
def unlearning(net, retain_loader, forget_loader, validation_loader, *, method: str = KIT_METHOD, **kwargs):
    return dropin.unlearning(net, retain_loader, forget_loader, validation_loader, method=method, **kwargs)


@functools.wraps(dropin.unlearning_many, assigned=("__doc__",))
def unlearning_many(net, retain_loader, forget_loader, validation_loader, n, *, method: str = KIT_METHOD, **kwargs):
    return dropin.unlearning_many(net, retain_loader, forget_loader, validation_loader, n, method=method, **kwargs)
