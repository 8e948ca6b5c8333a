"""Drop-in ``unlearning`` for the NeurIPS 2023 Machine Unlearning notebooks: torch in, torch out.

The official Kaggle notebook (and the starting kit) calls, once per checkpoint::

    net = unlearning(net, retain_loader, forget_loader, validation_loader)

:func:`unlearning` has that signature: it reads the three ``DataLoader``\\ s once into host arrays, converts
``net.state_dict()`` to Flax (:func:`converters.torch_to_flax`), runs one seed of a registered method
(the Kaggle baseline ``finetune`` by default) under ``jax.jit``, and loads the result back into ``net``
(``strict=True``, on the net's own device, train/eval mode untouched). :func:`unlearning_many` is where the
speed is: one vmapped run per chunk of seeds, yielding ``n`` torchvision state dicts::

    for i, state in enumerate(unlearning_many(net, retain_loader, forget_loader, validation_loader, 512)):
        torch.save(state, f"/kaggle/tmp/unlearned_checkpoint_{i}.pth")

Batches may be the Kaggle notebook's dicts (``{'image': (B, 3, H, W) raw 0–255 floats, 'age_group': (B,)}``,
other keys ignored) or the starting kit's ``(inputs, targets)`` tuples (normalised floats). Images whose
values are all integers in [0, 255] are stored as uint8 (exact); anything else as float32. Either way the
model sees exactly the values the loader yields (``Normalization()``, the identity).

Seeds and order: seed ``s`` uses key ``fold_in(key(0), s)`` — lane ``s`` of ``unlearning_many(base_seed=0)``
and seed ``s`` of :func:`jax_unlearn.jobs.run_population` with ``base_seed=0``. The examples of each split are
put in a canonical order (sorted by a hash of image and label) before the run, so a result depends on the
loader's *contents*, not on the order a shuffling loader happened to yield them in; the method shuffles
with its own key.

On a GPU shared with torch, start the notebook with ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (or a
``XLA_PYTHON_CLIENT_MEM_FRACTION``) in the environment before JAX is imported: by default JAX reserves
75% of the GPU's memory on first use, leaving torch little.
"""
from __future__ import annotations

import functools
import hashlib
from typing import Any, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import torch

from converters import flax_to_torch, infer_model_config, torch_to_flax
from jax_unlearn.data.types import Normalization
from jax_unlearn.engine.run import RunConfig, default_chunk_size, make_run, seed_keys
from jax_unlearn.engine.train import Context, DeviceData
from jax_unlearn.methods import build_method
from jax_unlearn.models import ResNet18

LOADERS = ("retain", "forget", "validation")
IMAGE_KEY, LABEL_KEY = "image", "age_group"  # the Kaggle notebook's batch dict
MAX_SEED = 2**32  # fold_in takes a uint32


def unlearning(net: torch.nn.Module, retain_loader: Iterable, forget_loader: Iterable, validation_loader: Iterable,
               *, method: str = "finetune", seed: int | None = None, **hyper) -> torch.nn.Module:
    """Unlearn ``net`` in place with one seed of ``method`` and return it (the notebook's ``unlearning``).

    Args:
      net: a torchvision ResNet-18 (either stem; ``num_classes`` read off ``fc``), on any device, possibly
        wrapped in ``DataParallel``. Its weights and BatchNorm statistics are replaced; its device and
        train/eval mode are kept.
      retain_loader, forget_loader, validation_loader: iterables of dict or ``(inputs, targets)`` batches
        (see the module docstring), each read once.
      method: a registered method (:data:`jax_unlearn.methods.METHODS`); ``finetune`` is the Kaggle baseline.
      seed: an int in [0, 2**32) for a reproducible result (equal to lane ``seed`` of
        :func:`unlearning_many` with ``base_seed=0``). ``None`` (the notebook's call, which passes no seed)
        draws one from torch's default generator, the generator the torch baseline's shuffling loaders use:
        every call gets a different model, and a notebook that calls ``torch.manual_seed`` is reproducible.
      **hyper: the method's hyper-parameters (e.g. ``epochs=2``); an unknown name raises ``ValueError``.

    Returns:
      ``net`` itself, unlearned.
    """
    if seed is None:
        seed = int(torch.randint(0, MAX_SEED, (), dtype=torch.int64))
    _check_seed(seed)
    module = _unwrap(net)
    start, config = _start_variables(module)
    data, ctx_key = _read_all((retain_loader, forget_loader, validation_loader), config["num_classes"])
    single, _ = _runners(method, _freeze(hyper), *ctx_key, **config)
    variables, _ = single(seed_keys(0, [seed])[0], start, data)
    # load_state_dict copies each cpu tensor into the existing parameter, on the parameter's device.
    module.load_state_dict(flax_to_torch(jax.device_get(variables)), strict=True)
    return net


def unlearning_many(net: torch.nn.Module, retain_loader: Iterable, forget_loader: Iterable,
                    validation_loader: Iterable, n: int, *, method: str = "finetune", base_seed: int = 0,
                    chunk_size: int | None = None, **hyper) -> Iterator["dict[str, torch.Tensor]"]:
    """``n`` unlearned versions of ``net``, as torchvision state dicts, from vmapped runs of ``method``.

    Seed ``i`` (the ``i``-th state dict) uses key ``fold_in(key(base_seed), i)``; with ``base_seed=0`` it
    equals ``unlearning(..., seed=i)`` (up to float32 summation order, ~1e-6 relative). Seeds run
    ``chunk_size`` at a time in one compiled ``jit(vmap(run))`` (default: from free accelerator memory, 8 on
    CPU); the next chunk is computed while the caller consumes this one, and at most two chunks are alive.

    Loaders are read, the checkpoint converted and the arguments checked when this is called; the runs
    happen as the returned iterator is consumed. ``net`` is not modified. Each item is exactly
    :func:`converters.flax_to_torch`'s output: an ``OrderedDict`` of cpu tensors that loads into
    ``net`` (``net.module`` for a ``DataParallel``) with ``strict=True``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    _check_seed(base_seed, "base_seed")
    start, config = _start_variables(_unwrap(net))
    data, ctx_key = _read_all((retain_loader, forget_loader, validation_loader), config["num_classes"])
    _, many = _runners(method, _freeze(hyper), *ctx_key, **config)
    chunk = min(chunk_size or default_chunk_size(n), n)
    return _stream(many, start, data, n, base_seed, chunk)


def _stream(many, start, data: DeviceData, n: int, base_seed: int, chunk: int) -> Iterator:
    """Yield lanes chunk by chunk; every chunk has ``chunk`` lanes (the last padded with extra seed ids,
    dropped), so one compilation serves all."""
    def dispatch(first):  # asynchronous: returns before the device finishes
        return many(seed_keys(base_seed, np.arange(first, first + chunk)), start, data)[0]

    pending = dispatch(0)
    for first in range(0, n, chunk):
        host = jax.device_get(pending)
        pending = dispatch(first + chunk) if first + chunk < n else None
        for lane in range(min(chunk, n - first)):
            yield flax_to_torch(jax.tree_util.tree_map(lambda a: a[lane], host))
        del host


# ---------------------------------------------------------------------------------------------------- model


def _unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The module whose state dict is a plain torchvision one (``DataParallel`` adds ``module.``)."""
    if not isinstance(net, torch.nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if isinstance(net, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return net.module
    return net


def _start_variables(module: torch.nn.Module) -> tuple[dict, dict]:
    """Flax variables of ``module`` and its ``{'num_classes', 'stem'}``."""
    state = module.state_dict()
    config = infer_model_config(state)
    return torch_to_flax(state, num_classes=config["num_classes"]), config


def _check_seed(seed, name: str = "seed") -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"{name} must be an int in [0, 2**32), got {seed!r}")


def _freeze(hyper: Mapping[str, Any]) -> tuple:
    """Hyper-parameters as a hashable key (sorted items); unhashable values fail here, by name."""
    items = tuple(sorted(hyper.items()))
    for name, value in items:
        try:
            hash(value)
        except TypeError:
            raise ValueError(f"hyper-parameter {name}={value!r} must be hashable (a number, string or tuple)") from None
    return items


@functools.lru_cache(maxsize=8)
def _runners(method: str, hyper: tuple, sizes: tuple, class_counts: tuple, *, num_classes: int, stem: str):
    """``(jit(run), jit(vmap(run)))`` for one configuration — memoised, so the notebook's loop of
    ``unlearning`` calls (same data sizes, same method) compiles once, not once per checkpoint."""
    ctx = Context(ResNet18(num_classes=num_classes, stem=stem), Normalization(), dict(sizes), class_counts)
    run = make_run(ctx, build_method(method, ctx, **dict(hyper)), RunConfig(track=False))
    return jax.jit(run), jax.jit(jax.vmap(run, in_axes=(0, None, None)))


# ----------------------------------------------------------------------------------------------------- data


def _read_all(loaders, num_classes: int) -> tuple[DeviceData, tuple]:
    """Read the three loaders into device data ``{retain, forget, validation, train}`` (train = retain ∪
    forget, as :func:`jax_unlearn.engine.run.device_data`) and the context key ``(sizes, class_counts)``."""
    splits = {name: read_loader(loader, name) for name, loader in zip(LOADERS, loaders)}
    shapes = {name: images.shape[1:] for name, (images, _) in splits.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError("the loaders yield images of different shapes: "
                         + ", ".join(f"{name} {shape}" for name, shape in shapes.items()))
    for name, (_, labels) in splits.items():
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"{name} loader: labels must lie in [0, {num_classes}) (the net's fc has "
                             f"{num_classes} outputs), got [{labels.min()}, {labels.max()}]")
    exact = all(_is_uint8_valued(images) for images, _ in splits.values())
    out = {}
    for name, (images, labels) in splits.items():
        images = images.astype(np.uint8) if exact else images.astype(np.float32)
        order = canonical_order(images, labels)
        out[name] = (jnp.asarray(images[order]), jnp.asarray(labels[order]))
    out["train"] = tuple(jnp.concatenate([out["retain"][i], out["forget"][i]]) for i in range(2))
    sizes = tuple((name, int(out[name][1].shape[0])) for name in (*LOADERS, "train"))
    counts = np.bincount(np.asarray(out["train"][1]), minlength=num_classes)
    return out, (sizes, tuple(int(c) for c in counts))


def read_loader(loader: Iterable, name: str = "loader") -> tuple[np.ndarray, np.ndarray]:
    """Every batch of ``loader`` as host arrays: images ``(N, H, W, 3)`` in the loader's dtype (NCHW →
    NHWC) and labels int32 ``(N,)``, in the order yielded.

    A batch is a mapping with ``'image'`` and ``'age_group'`` (the Kaggle notebook) or a sequence whose
    first two items are inputs and targets (the starting kit). Raises ``ValueError`` naming ``name`` for
    a loader of no batches (or no examples), a batch of another form, or shapes that do not agree.
    """
    images, labels = [], []
    for b, batch in enumerate(loader):
        x, y = (_as_numpy(v) for v in _unpack(batch, name, b))
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} loader, batch {b}: images must be (B, 3, H, W), got shape {x.shape}")
        if images and x.shape[1:] != images[0].shape[1:]:
            raise ValueError(f"{name} loader, batch {b}: image shape {x.shape[1:]} differs from batch 0's "
                             f"{images[0].shape[1:]}")
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{name} loader, batch {b}: labels must be integers of shape ({x.shape[0]},), "
                             f"got {y.dtype} {y.shape}")
        images.append(x)
        labels.append(y)
    if not images or sum(len(y) for y in labels) == 0:
        raise ValueError(f"the {name} loader yielded no examples")
    return np.ascontiguousarray(np.concatenate(images).transpose(0, 2, 3, 1)), np.concatenate(labels).astype(np.int32)


def _unpack(batch, name: str, b: int):
    if isinstance(batch, Mapping):
        if IMAGE_KEY not in batch or LABEL_KEY not in batch:
            raise ValueError(f"{name} loader, batch {b}: a dict batch needs keys {IMAGE_KEY!r} and "
                             f"{LABEL_KEY!r} (the Kaggle notebook's), got {sorted(map(str, batch))}")
        return batch[IMAGE_KEY], batch[LABEL_KEY]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(f"{name} loader, batch {b}: expected a dict with {IMAGE_KEY!r}/{LABEL_KEY!r} or an "
                     f"(inputs, targets) pair, got {type(batch).__name__}")


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _is_uint8_valued(images: np.ndarray) -> bool:
    if images.dtype == np.uint8:
        return True
    return bool(np.all((images >= 0) & (images <= 255) & (images == np.round(images))))


def canonical_order(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices sorting the examples by a hash of (image bytes, label): the same order for the same examples
    however a loader shuffled them (identical examples are interchangeable)."""
    digests = [hashlib.blake2b(np.ascontiguousarray(x).tobytes() + np.int64(y).tobytes(), digest_size=16).digest()
               for x, y in zip(images, labels)]
    return np.array(sorted(range(len(digests)), key=digests.__getitem__), dtype=np.int64)
