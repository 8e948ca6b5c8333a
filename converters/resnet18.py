"""torchvision ResNet-18 state dict ⇄ Flax ``{'params', 'batch_stats'}``, strictly.

One table (:func:`layout`) lists every torchvision module in state-dict order with its Flax path and kind;
both directions walk it, so they cannot drift apart. Rules per kind:

* conv:   ``<m>.weight`` (O, I, kh, kw)  ⇄ ``params/<path>/kernel`` (kh, kw, I, O)
* bn:     ``<m>.weight/bias``            ⇄ ``params/<path>/scale/bias``;
          ``<m>.running_mean/var``       ⇄ ``batch_stats/<path>/mean/var``;
          ``<m>.num_batches_tracked`` (int64 scalar) ⇄ ``batch_stats/<path>/num_batches_tracked`` (int32)
* linear: ``fc.weight`` (C, 512)         ⇄ ``params/fc/kernel`` (512, C); ``fc.bias`` ⇄ ``params/fc/bias``

Every key must be used and every shape must match an initialised model of the inferred ``num_classes``
and stem; anything else raises :class:`CheckpointError` naming the offending keys.
"""
from __future__ import annotations

import collections
import functools
from typing import Any, Iterator, Mapping

import jax
import numpy as np
import torch

STAGE_SIZES = (2, 2, 2, 2)
_BN_TORCH = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class CheckpointError(ValueError):
    """A checkpoint that is not a (wrapped) torchvision ResNet-18 state dict of the expected shape."""


def layout(stage_sizes=STAGE_SIZES) -> Iterator[tuple[str, tuple[str, ...], str]]:
    """Yield ``(torch_module, flax_path, kind)`` in torchvision state-dict order; kind ∈ {conv, bn, linear}."""
    yield "conv1", ("conv1",), "conv"
    yield "bn1", ("bn1",), "bn"
    for s, blocks in enumerate(stage_sizes, start=1):
        for b in range(blocks):
            t, f = f"layer{s}.{b}", f"layer{s}_{b}"
            for name, kind in (("conv1", "conv"), ("bn1", "bn"), ("conv2", "conv"), ("bn2", "bn")):
                yield f"{t}.{name}", (f, name), kind
            if s > 1 and b == 0:
                yield f"{t}.downsample.0", (f, "downsample_0"), "conv"
                yield f"{t}.downsample.1", (f, "downsample_1"), "bn"
    yield "fc", ("fc",), "linear"


def torch_keys(stage_sizes=STAGE_SIZES) -> list[str]:
    """torchvision's ``resnet18().state_dict().keys()``, in order."""
    suffixes = {"conv": ("weight",), "bn": _BN_TORCH, "linear": ("weight", "bias")}
    return [f"{m}.{s}" for m, _, kind in layout(stage_sizes) for s in suffixes[kind]]


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Accept a plain state dict, ``{'state_dict': sd}`` and ``module.``-prefixed (DataParallel) keys."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict (mapping of name -> tensor), got {type(obj).__name__}")
    if obj and all(isinstance(k, str) and k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"state dict entries that are not tensors: {bad[:10]}")
    return dict(obj)


def infer_model_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``{'num_classes': C, 'stem': 'imagenet'|'cifar'}`` read off ``fc.weight`` and ``conv1.weight``."""
    missing = [k for k in ("fc.weight", "conv1.weight") if k not in state_dict]
    if missing:
        raise CheckpointError(f"not a torchvision ResNet-18 state dict: missing keys {missing}")
    stems = {(64, 3, 7, 7): "imagenet", (64, 3, 3, 3): "cifar"}
    conv1 = tuple(state_dict["conv1.weight"].shape)
    if conv1 not in stems:
        raise CheckpointError(f"conv1.weight has shape {conv1}; expected (64, 3, 7, 7) or (64, 3, 3, 3)")
    fc = tuple(state_dict["fc.weight"].shape)
    if len(fc) != 2 or fc[1] != 512:
        raise CheckpointError(f"fc.weight has shape {fc}; a ResNet-18 head is (num_classes, 512)")
    return {"num_classes": int(fc[0]), "stem": stems[conv1]}


@functools.lru_cache(maxsize=None)
def _expected_shapes(num_classes: int, stem: str):
    """Flax ResNet-18's variable shapes (a tree of tuples; shared between calls, so read it, never write).
    Cached: tracing the model's init takes ~0.1 s, and the drop-in converts twice per call."""
    from jax_unlearn.models import ResNet18  # local import: converters stays importable on its own

    model = ResNet18(num_classes=num_classes, stem=stem)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32)))
    return jax.tree_util.tree_map(lambda s: tuple(s.shape), shapes)


def _get(tree, collection: str, path: tuple[str, ...], leaf: str):
    node = tree[collection]
    for p in path:
        node = node[p]
    return node[leaf]


def _set(tree, collection: str, path: tuple[str, ...], leaf: str, value):
    node = tree.setdefault(collection, {})
    for p in path:
        node = node.setdefault(p, {})
    node[leaf] = value


def _rules(kind: str):
    """(torch suffix, collection, flax leaf, torch->numpy, numpy->torch) for one module kind."""
    # Copies, never views: a torch tensor's .numpy() shares memory, and the caller may keep training it.
    # Through torch's own float32 cast: NumPy has no bfloat16 (a bf16 tensor's .numpy() fails).
    as_f32 = lambda t: t.detach().cpu().to(torch.float32)  # noqa: E731
    f32 = lambda t: np.array(as_f32(t).numpy(), np.float32, order="C", copy=True)  # noqa: E731
    back = lambda a: torch.from_numpy(np.array(a, np.float32, order="C", copy=True))  # noqa: E731
    if kind == "conv":  # OIHW <-> HWIO through torch's permute: ~3x faster than NumPy's transposing copy
        return [("weight", "params", "kernel", lambda t: _permuted(as_f32(t), (2, 3, 1, 0)).numpy(),
                 lambda a: _permuted(torch.from_numpy(np.require(a, np.float32, ["W"])), (3, 2, 0, 1)))]
    if kind == "linear":
        return [("weight", "params", "kernel", lambda t: np.ascontiguousarray(f32(t).T), lambda a: back(np.asarray(a).T)),
                ("bias", "params", "bias", f32, back)]
    return [("weight", "params", "scale", f32, back), ("bias", "params", "bias", f32, back),
            ("running_mean", "batch_stats", "mean", f32, back), ("running_var", "batch_stats", "var", f32, back),
            ("num_batches_tracked", "batch_stats", "num_batches_tracked", _count_to_flax, _count_to_torch)]


def _permuted(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """A C-contiguous copy of ``t.permute(dims)`` (a copy even when the permutation is already contiguous)."""
    return t.permute(dims).clone(memory_format=torch.contiguous_format)


def _count_to_flax(t: torch.Tensor) -> np.ndarray:
    if t.numel() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise CheckpointError(f"expected an integer scalar (a batch count), got {t.dtype} of shape {tuple(t.shape)}")
    value = int(t.item())
    if not 0 <= value < 2**31:
        raise CheckpointError(f"value {value} is not a batch count in [0, 2**31)")
    return np.asarray(value, np.int32)


def check_tensor(key: str, t: torch.Tensor) -> None:
    """Refuse a weight tensor that is not real floating point (complex, integer, bool) or holds NaN/inf.

    Converting would silently drop an imaginary part or carry a broken model into every run."""
    if t.is_complex() or not t.is_floating_point():
        raise CheckpointError(f"{key} has dtype {str(t.dtype).removeprefix('torch.')}; expected real floating "
                              f"point (float32, float16, bfloat16 or float64)")
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise CheckpointError(f"{key} holds {bad} NaN/inf value(s) of {t.numel()}: the model is broken (diverged "
                              f"or corrupt); nothing was converted")


def nonfinite_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The floating-point entries of ``state_dict`` holding NaN or inf, in order."""
    return [k for k, t in state_dict.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _count_to_torch(a) -> torch.Tensor:
    return torch.tensor(int(np.asarray(a)), dtype=torch.int64)


def torch_to_flax(state_dict: Mapping[str, torch.Tensor], num_classes: int | None = None) -> dict:
    """torchvision ResNet-18 state dict (optionally wrapped) -> Flax ``{'params': ..., 'batch_stats': ...}``.

    ``num_classes``, when given, must match the checkpoint's ``fc``. Raises :class:`CheckpointError` on a
    missing or unexpected key, a shape mismatch, a head of the wrong size, a weight that is not real
    floating point or holds NaN/inf, or a batch count that is not a non-negative int32 — naming the key.
    Floating weights of any precision (float16, bfloat16, float64) become float32.
    """
    sd = unwrap_state_dict(state_dict)
    expected = torch_keys()
    missing = [k for k in expected if k not in sd]
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"not a torchvision ResNet-18 state dict: missing keys {missing[:20]}"
                              f"{' ...' if len(missing) > 20 else ''}; unexpected keys {unexpected[:20]}"
                              f"{' ...' if len(unexpected) > 20 else ''}")
    config = infer_model_config(sd)
    if num_classes is not None and config["num_classes"] != num_classes:
        raise CheckpointError(f"fc.weight has {config['num_classes']} classes; expected {num_classes}")
    shapes = _expected_shapes(**config)
    variables: dict = {}
    for module, path, kind in layout():
        for suffix, collection, leaf, to_flax, _ in _rules(kind):
            key = f"{module}.{suffix}"
            if suffix != "num_batches_tracked":
                check_tensor(key, sd[key])
            try:
                value = to_flax(sd[key])
            except CheckpointError as e:
                raise CheckpointError(f"{key}: {e}") from None
            want = _get(shapes, collection, path, leaf)
            if value.shape != want:
                raise CheckpointError(f"{key}: shape {tuple(sd[key].shape)} does not fit ResNet-18 "
                                      f"(Flax {'/'.join((collection, *path, leaf))} expects {want})")
            _set(variables, collection, path, leaf, value)
    return variables


def flax_to_torch(variables: Mapping) -> "collections.OrderedDict[str, torch.Tensor]":
    """Flax ResNet-18 variables -> torchvision state dict: exactly its keys, order, dtypes and shapes.

    The result loads into ``torchvision.models.resnet18(num_classes=C)`` with ``strict=True``.
    """
    out: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    try:
        config = {"num_classes": int(np.shape(variables["params"]["fc"]["kernel"])[-1]),
                  "stem": "cifar" if np.shape(variables["params"]["conv1"]["kernel"])[0] == 3 else "imagenet"}
    except (KeyError, TypeError, IndexError):
        raise CheckpointError("Flax variables lack params/fc/kernel or params/conv1/kernel") from None
    shapes = _expected_shapes(**config)
    used = set()
    for module, path, kind in layout():
        for suffix, collection, leaf, _, to_torch in _rules(kind):
            name = "/".join((collection, *path, leaf))
            try:
                value = _get(variables, collection, path, leaf)
            except (KeyError, TypeError):
                raise CheckpointError(f"Flax variables lack {name} (for {module}.{suffix})") from None
            if np.asarray(value).dtype.kind not in "fiu" and np.asarray(value).dtype.name != "bfloat16":
                raise CheckpointError(f"{name} has dtype {np.asarray(value).dtype}; expected real numbers")
            if np.shape(value) != _get(shapes, collection, path, leaf):
                raise CheckpointError(f"{name}: shape {np.shape(value)} does not fit ResNet-18 "
                                      f"(expects {_get(shapes, collection, path, leaf)})")
            out[f"{module}.{suffix}"] = to_torch(value)
            used.add(name)
    present = {"/".join(str(getattr(k, "key", k)) for k in p)
               for p, _ in jax.tree_util.tree_flatten_with_path(dict(variables))[0]}
    extra = sorted(present - used)
    if extra:
        raise CheckpointError(f"Flax variables hold entries ResNet-18 does not have: {extra[:20]}")
    return out


def check_flax_variables(variables: Mapping, num_classes: int | None = None) -> None:
    """Check Flax variables as :func:`torch_to_flax` checks a state dict: exactly ResNet-18's entries and
    shapes (via :func:`flax_to_torch`), the head's class count when ``num_classes`` is given, and finite
    values. Raises :class:`CheckpointError` naming the entry."""
    state_dict = flax_to_torch(variables)
    classes = state_dict["fc.weight"].shape[0]
    if num_classes is not None and classes != num_classes:
        raise CheckpointError(f"the head (params/fc/kernel) has {classes} classes; expected {num_classes}")
    for key, t in state_dict.items():
        if key.endswith("num_batches_tracked"):
            if int(t) < 0:
                raise CheckpointError(f"{key}: value {int(t)} is not a batch count")
            continue
        check_tensor(key, t)
