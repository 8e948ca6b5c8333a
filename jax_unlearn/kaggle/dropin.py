"""The drop-in functions: :func:`unlearning` (one seed, the notebooks' signature) and
:func:`unlearning_many` (n seeds, vmapped, streamed). See :mod:`jax_unlearn.kaggle` for the contract."""
from __future__ import annotations

import functools
import warnings
from typing import Any, Iterable, Iterator, Mapping

import jax
import numpy as np
import torch

from converters import flax_to_torch, infer_model_config, torch_to_flax
from jax_unlearn.data.types import Normalization
from jax_unlearn.engine.jitting import jit
from jax_unlearn.engine.lanes import default_chunk_size, lanes_per_call, seed_keys, vmap_lanes
from jax_unlearn.engine.run import RunConfig, make_run
from jax_unlearn.engine.train import Context, DeviceData
from jax_unlearn.kaggle.loaders import DeviceSplits, batch_size_of, is_uint8_valued, read_loader
from jax_unlearn.kaggle.splits import CLASS_COUNTS, LOADERS, TRAIN, splits_used
from jax_unlearn.methods import build_method, get_method
from jax_unlearn.models import make_model, resolve_conv

MAX_SEED = 2**32  # fold_in takes a uint32
# Hyper-parameters a loader sets when the caller does not: in the notebooks the loader is the batch size.
LOADER_HYPER = (("batch_size", "retain"), ("forget_batch_size", "forget"))
DEVICE_SPLITS = DeviceSplits()


def unlearning(net: torch.nn.Module, retain_loader: Iterable, forget_loader: Iterable, validation_loader: Iterable,
               *, method: str = "finetune", seed: int | None = None, conv: str = "auto", dtype: str = "float32",
               allow_untrained: bool = False, **hyper) -> torch.nn.Module:
    """Unlearn ``net`` in place with one seed of ``method`` and return it in eval mode (the notebook's
    ``unlearning``).

    Args:
      net: a trained torchvision ResNet-18 (either stem; ``num_classes`` read off ``fc``), on any device,
        possibly wrapped in ``DataParallel``. Its weights and BatchNorm statistics are replaced and it is
        left in eval mode, as both notebooks' ``unlearning`` leave it; its device is kept.
      retain_loader, forget_loader, validation_loader: iterables of dict or ``(inputs, targets)`` batches
        (see :mod:`jax_unlearn.kaggle`). Only the loaders ``method`` uses are read, once per call.
      method: a registered method (:data:`jax_unlearn.methods.METHODS`); ``finetune`` is the Kaggle baseline,
        ``finetune-kit`` the starting kit's (:mod:`jax_unlearn.kaggle.kit` defaults to it).
      seed: an int in [0, 2**32) for a reproducible result (equal to lane ``seed`` of
        :func:`unlearning_many` with ``base_seed=0``). ``None`` (the notebook's call, which passes no seed)
        draws one from torch's default generator, the generator the torch baseline's shuffling loaders use:
        every call gets a different model, and a notebook that calls ``torch.manual_seed`` is reproducible.
      conv, dtype: the model's convolution lowering (``'auto'``: the fastest measured on this backend, see
        :func:`jax_unlearn.models.resolve_conv`) and compute dtype, as the CLI's ``--conv``/``--dtype``.
      allow_untrained: accept a net whose BatchNorm layers never ran (all ``num_batches_tracked`` 0, e.g. a
        fresh ``resnet18()`` the checkpoint was never loaded into), refused by default.
      **hyper: the method's hyper-parameters (e.g. ``epochs=2``); an unknown name raises ``ValueError``.
        ``batch_size`` defaults to the retain loader's batch size and ``forget_batch_size`` (methods that
        have one) to the forget loader's; an explicit value that differs wins, with a warning.

    Returns:
      ``net`` itself, unlearned, in eval mode.
    """
    if seed is None:
        seed = int(torch.randint(0, MAX_SEED, (), dtype=torch.int64))
    _check_seed(seed)
    module = _unwrap(net)
    start, config = _start_variables(module, allow_untrained)
    data, key = _prepare(method, hyper, (retain_loader, forget_loader, validation_loader), config, conv, dtype)
    single, _ = _runners(*key)
    variables = single(np.uint32(seed), start, data)
    # load_state_dict copies each cpu tensor into the existing parameter, on the parameter's device.
    module.load_state_dict(flax_to_torch(jax.device_get(variables)), strict=True)
    net.eval()
    return net


def unlearning_many(net: torch.nn.Module, retain_loader: Iterable, forget_loader: Iterable,
                    validation_loader: Iterable, n: int, *, method: str = "finetune", base_seed: int = 0,
                    chunk_size: int | None = None, conv: str = "auto", dtype: str = "float32",
                    allow_untrained: bool = False, **hyper) -> Iterator["dict[str, torch.Tensor]"]:
    """``n`` unlearned versions of ``net``, as torchvision state dicts, from vmapped runs of ``method``.

    Seed ``i`` (the ``i``-th state dict) uses key ``fold_in(key(base_seed), i)``; with ``base_seed=0`` it
    equals ``unlearning(..., seed=i)`` (up to float32 summation order, ~1e-6 relative, when chunks hold
    several lanes). Seeds run ``chunk_size`` at a time in one compiled ``jit(vmap(run))`` (default: from
    free accelerator memory; one on CPU, see :func:`_default_chunk`, and a one-lane chunk runs the
    unbatched program, :func:`jax_unlearn.engine.lanes.vmap_lanes`); the next chunk is computed while the
    caller consumes this one, and at most two chunks are alive.

    ``net`` must hold the model to unlearn (load ``original_model.pth`` into it first); it is not modified.
    Loaders are read, the checkpoint converted and the arguments checked when this is called (arguments as
    :func:`unlearning`); the runs happen as the returned iterator is consumed. Each item is exactly
    :func:`converters.flax_to_torch`'s output: an ``OrderedDict`` of cpu tensors that loads into ``net``
    (``net.module`` for a ``DataParallel``) with ``strict=True``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer))
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    _check_seed(base_seed, "base_seed")
    start, config = _start_variables(_unwrap(net), allow_untrained)
    data, key = _prepare(method, hyper, (retain_loader, forget_loader, validation_loader), config, conv, dtype)
    _, many = _runners(*key)
    chunk = min(chunk_size or _default_chunk(n), n)
    return _stream(many, start, data, n, base_seed, chunk)


def _default_chunk(n: int) -> int:
    """Lanes per chunk when the caller gives none: from free accelerator memory
    (:func:`jax_unlearn.engine.lanes.default_chunk_size`), or one where lanes buy no parallelism
    (:func:`jax_unlearn.engine.lanes.lanes_per_call`: a CPU; the notebook loop of 8 checkpoints took
    41.8 s with one lane a chunk against 47.8 s with eight, benchmarks/RESULTS.md)."""
    return lanes_per_call(default_chunk_size(n))


def clear_caches() -> None:
    """Forget the compiled programs, split probes and device copies of loaders (a fresh process's state)."""
    _runners.cache_clear()
    splits_used.cache_clear()
    DEVICE_SPLITS.clear()


def _stream(many, start, data: DeviceData, n: int, base_seed: int, chunk: int) -> Iterator:
    """Yield lanes chunk by chunk; every chunk has ``chunk`` lanes (the last padded with extra seed ids,
    dropped), so one compilation serves all."""
    def dispatch(first):  # asynchronous: returns before the device finishes
        return many(np.uint32(base_seed), np.arange(first, first + chunk, dtype=np.uint32), start, data)

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


def _start_variables(module: torch.nn.Module, allow_untrained: bool) -> tuple[dict, dict]:
    """Flax variables of ``module`` and its ``{'num_classes', 'stem'}``; refuses an untrained net."""
    state = module.state_dict()
    config = infer_model_config(state)
    tracked = [v for k, v in state.items() if k.endswith("num_batches_tracked")]
    if tracked and not allow_untrained and all(int(v) == 0 for v in tracked):
        raise ValueError(
            "net looks untrained: every BatchNorm's num_batches_tracked is 0 (a fresh resnet18(), not the "
            "checkpoint to unlearn). Load it first, e.g. net.load_state_dict(torch.load("
            "'original_model.pth')), or pass allow_untrained=True if this start is intended.")
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
def _runners(method: str, hyper: tuple, sizes: tuple, class_counts: tuple | None, num_classes: int, stem: str,
             conv: str, dtype: str):
    """``(single, many)``, jitted, for one configuration — memoised on everything the program depends on
    but the data's shapes (which ``jit`` keys on itself), so the notebook's loop of ``unlearning`` calls
    compiles once, not once per checkpoint.

    ``single(seed, start, data)`` is the variables of the run with key ``fold_in(key(0), seed)``;
    ``many(base_seed, ids, start, data)`` those of the runs with keys ``fold_in(key(base_seed), id)``,
    vmapped over the uint32 ``ids`` (:func:`~jax_unlearn.engine.lanes.vmap_lanes`: one id runs unbatched)
    — the keys of :func:`~jax_unlearn.engine.lanes.seed_keys`, drawn inside the compiled program, which
    spares a separate key program (~0.3 s of compilation on a 2-core CPU). The runs' metrics are not
    returned, so XLA drops their computation (the finetune program: 588 loop fusions instead of 834)."""
    ctx = Context(make_model(num_classes, stem, dtype, conv), Normalization(), dict(sizes), class_counts)
    run = make_run(ctx, build_method(method, ctx, **dict(hyper)), RunConfig(track=False))

    def single(seed, start, data):
        return run(seed_keys(0, seed[None])[0], start, data)[0]

    def many(base_seed, ids, start, data):
        return vmap_lanes(run, (0, None, None))(seed_keys(base_seed, ids), start, data)[0]

    return jit(single), jit(many)


# ----------------------------------------------------------------------------------------------------- data


def _prepare(method: str, hyper: Mapping[str, Any], loaders, config: Mapping[str, Any], conv: str,
             dtype: str) -> tuple[DeviceData, tuple]:
    """Read the loaders ``method`` uses into device data (``train`` = retain ∪ forget when used, as
    :func:`jax_unlearn.engine.run.device_data`) and the :func:`_runners` key."""
    info = get_method(method)
    conv = resolve_conv(conv)
    num_classes = config["num_classes"]
    used = splits_used(method, _freeze(hyper), num_classes, config["stem"], conv, dtype)
    named = dict(zip(LOADERS, loaders))
    read = {name: read_loader(named[name], name) for name in LOADERS if name in used}
    shapes = {name: images.shape[1:] for name, (images, _, _) in read.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError("the loaders yield images of different shapes: "
                         + ", ".join(f"{name} {shape}" for name, shape in shapes.items()))
    for name, (_, labels, _) in read.items():
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"{name} loader: labels must lie in [0, {num_classes}) (the net's fc has "
                             f"{num_classes} outputs), got [{labels.min()}, {labels.max()}]")
    hyper = dict(hyper)
    for hp, split in LOADER_HYPER:
        size = batch_size_of(named[split], read[split][2] if split in read else None)
        if hp not in info.defaults or size is None:
            continue
        if hp not in hyper:
            hyper[hp] = size
        elif hyper[hp] != size:
            warnings.warn(f"{hp}={hyper[hp]} differs from the {split} loader's batch size {size}; using "
                          f"{hyper[hp]}", stacklevel=3)
    store = np.uint8 if all(is_uint8_valued(images) for images, _, _ in read.values()) else np.float32
    parts = {name: DEVICE_SPLITS.get(name, images.astype(store, copy=False), labels)
             for name, (images, labels, _) in read.items()}
    data = {name: arrays for name, (arrays, _) in parts.items()}
    if TRAIN in used:
        data[TRAIN] = DEVICE_SPLITS.joined(TRAIN, [parts["retain"], parts["forget"]])
    counts = None
    if CLASS_COUNTS in used:
        labels = np.concatenate([read["retain"][1], read["forget"][1]])
        counts = tuple(int(c) for c in np.bincount(labels, minlength=num_classes))
    sizes = tuple((name, int(data[name][1].shape[0])) for name in sorted(data))
    return data, (method, _freeze(hyper), sizes, counts, num_classes, config["stem"], conv, dtype)
