"""Drop-in ``unlearning`` for the NeurIPS 2023 Machine Unlearning notebooks: torch in, torch out.

The official Kaggle notebook (and the starting kit) calls, once per checkpoint::

    net.load_state_dict(torch.load('original_model.pth'))
    net_ = unlearning(net, retain_loader, forget_loader, validation_loader)

:func:`unlearning` has that signature and leaves ``net`` as the notebooks' own ``unlearning`` does:
unlearned in place, in eval mode. It reads the loaders the method uses, converts ``net.state_dict()`` to
Flax (:func:`converters.torch_to_flax`), runs one seed of a registered method (the Kaggle baseline
``finetune``; :mod:`jax_unlearn.kaggle.kit` defaults to the starting kit's ``finetune-kit``) under
``jax.jit`` and loads the result back into ``net`` (``strict=True``, on the net's own device). The
compiled program is kept between calls (keyed on method, hyper-parameters, split sizes, model, lowering
and dtype), and so are the device copies of loaders whose contents did not change
(:mod:`jax_unlearn.kaggle.loaders`). :func:`unlearning_many` is where the speed is: one vmapped run per
chunk of seeds, yielding ``n`` torchvision state dicts::

    net.load_state_dict(torch.load('original_model.pth'))
    for i, state in enumerate(unlearning_many(net, retain_loader, forget_loader, validation_loader, 512)):
        torch.save(state, f"/kaggle/tmp/unlearned_checkpoint_{i}.pth")

Batches may be the Kaggle notebook's dicts (``{'image': (B, 3, H, W) raw 0–255 floats, 'age_group': (B,)}``,
other keys ignored) or the starting kit's ``(inputs, targets)`` tuples (normalised floats). Images whose
values are all integers in [0, 255] are stored as uint8 (exact); anything else as float32. Either way the
model sees exactly the values the loader yields (``Normalization()``, the identity). The retain loader's
batch size is the method's ``batch_size`` unless the caller passes one (the forget loader's is
``forget_batch_size`` for methods that have one): in the notebooks the loader is the batch-size setting.

Seeds and order: seed ``s`` uses key ``fold_in(key(0), s)`` — lane ``s`` of ``unlearning_many(base_seed=0)``
and seed ``s`` of :func:`jax_unlearn.jobs.populations.run_population` with ``base_seed=0``. The examples of each split
are put in :func:`jax_unlearn.data.kaggle_folder.canonical_order` (by a hash of image and label) before the run —
the order ``jax-unlearn unlearn --dataset kaggle`` loads the competition folder in — so a result depends on
the loader's *contents*, not on the order a shuffling loader yielded them in, and the drop-in and the CLI
give the same model for the same seed; the method shuffles with its own key.

On a GPU shared with torch, start the notebook with ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (or a
``XLA_PYTHON_CLIENT_MEM_FRACTION``) in the environment before JAX is imported: by default JAX reserves
75% of the GPU's memory on first use, leaving torch little.
"""
from jax_unlearn.data.kaggle_folder import canonical_order
from jax_unlearn.kaggle.dropin import clear_caches, unlearning, unlearning_many
from jax_unlearn.kaggle.loaders import read_loader
from jax_unlearn.kaggle.splits import splits_used

__all__ = ["canonical_order", "clear_caches", "read_loader", "splits_used", "unlearning", "unlearning_many"]
