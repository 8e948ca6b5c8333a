"""Parameter selection and update masks, shared by every method that trains only part of a model.

A *mask* is a pytree shaped like the params whose leaves are boolean arrays of the leaves' shapes:
``True`` = this weight may change, ``False`` = frozen. Masks act on the optimiser's *update* (after
momentum, weight decay and the learning rate), never on the gradient, so a frozen weight stays
bit-identical however long the run: ``p + 0 == p`` exactly, whatever the momentum buffer holds.

* :func:`top_fraction_mask` — the ``k = int(N * fraction)`` largest scores (globally or per leaf), e.g. the
  saliency masks of SalUn.
* :func:`masked` — an optax wrapper zeroing the update where the mask is ``False``.
* :func:`leaf_kinds` / :func:`select` — which leaves of a ResNet params tree are convolution kernels,
  linear (``fc``) weights, or BatchNorm affine parameters, as masks.
* :func:`mask_fraction` — the fraction of ``True`` entries (for metrics and tests).

Everything here is pure JAX with static shapes, so masks can be computed inside a vmapped ``init``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Union

import jax
import jax.numpy as jnp
import optax

Mask = Any  # params-shaped pytree of bool arrays
MaskOrFn = Union[Mask, Callable[[Any], Mask]]

KINDS = ("conv", "linear", "batchnorm")


def top_fraction_mask(scores, fraction, *, global_: bool = True) -> Mask:
    """``True`` on exactly the ``int(N * fraction)`` largest entries of ``scores`` (a pytree of arrays).

    ``global_=True`` ranks all leaves together (N = total number of entries), as SalUn's
    ``generate_mask.py`` does; ``global_=False`` keeps ``int(leaf.size * fraction)`` entries of every leaf.
    Ties are broken by position (flattened leaf order, then row-major), so the count is always exact.
    Pass magnitudes (e.g. ``|grad|``) — the ranking is by value, largest first. ``fraction`` may be a traced
    scalar (a per-lane sweep value); the count is then ``floor(N * fraction)`` in float32.

    References:
        Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image
        Classification and Generation", ICLR 2024; OPTML-Group/Unlearn-Saliency,
        ``Classification/generate_mask.py`` (``ranks = argsort(argsort(-|g|))``, ``mask = ranks < int(N p)``).
    """
    if isinstance(fraction, (int, float)) and not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    leaves, treedef = jax.tree_util.tree_flatten(scores)
    if not global_:
        return jax.tree_util.tree_unflatten(treedef, [_top(jnp.ravel(x), fraction).reshape(jnp.shape(x))
                                                      for x in leaves])
    flat = jnp.concatenate([jnp.ravel(x).astype(jnp.promote_types(x.dtype, jnp.float32)) for x in leaves])
    keep = _top(flat, fraction)
    out, start = [], 0
    for x in leaves:
        out.append(keep[start:start + x.size].reshape(jnp.shape(x)))
        start += x.size
    return jax.tree_util.tree_unflatten(treedef, out)


def _top(flat, fraction):
    """Bool (N,) with ``True`` at the ``int(N * fraction)`` largest entries (earlier index wins a tie)."""
    n = flat.size
    k = int(n * fraction) if isinstance(fraction, (int, float)) else jnp.floor(n * fraction).astype(jnp.int32)
    order = jnp.argsort(flat, descending=True, stable=True)
    rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return rank < k


def masked(tx: optax.GradientTransformation, mask: MaskOrFn) -> optax.GradientTransformation:
    """``tx`` whose update is zeroed wherever ``mask`` is ``False`` (so those params never move).

    ``mask`` is a params-shaped bool tree, or a function ``params -> mask`` (e.g. ``lambda p: select(p,
    'linear')``). It may hold traced arrays, so a mask computed in a method's ``init`` can be wrapped in the
    step: ``apply_gradients(masked(tx, state.mask), ...)`` — the wrapper adds no optimiser state, so
    ``masked(tx, m).init == tx.init``.

    Unlike ``optax.masked`` (which passes masked-out *gradients* through untransformed), this zeroes the
    final *update* with ``where`` — not a multiply, so an inf/NaN update on a frozen weight cannot leak in.
    Momentum and weight decay still accumulate in ``tx``'s state for frozen entries; they are never applied.
    """

    def update(updates, state, params=None):
        keep = mask(params) if callable(mask) else mask
        updates, state = tx.update(updates, state, params)
        return jax.tree_util.tree_map(lambda u, k: jnp.where(k, u, jnp.zeros_like(u)), updates, keep), state

    return optax.GradientTransformation(tx.init, update)


def leaf_kinds(params: Mapping) -> Any:
    """A params-shaped tree of strings naming each leaf's layer kind: ``'conv'`` (a 4-d kernel),
    ``'linear'`` (a Dense module's kernel and bias) or ``'batchnorm'`` (a module with ``scale``: its
    ``scale`` and ``bias``). Anything else fails loudly rather than being silently skipped."""

    def kind_of(module: Mapping, name: str) -> str:
        if "scale" in module:
            return "batchnorm"
        kernel = module.get("kernel")
        if kernel is not None and kernel.ndim == 4:
            if name != "kernel":
                raise ValueError(f"conv module with an unexpected parameter {name!r}")
            return "conv"
        if kernel is not None and kernel.ndim == 2:
            return "linear"
        raise ValueError(f"cannot classify parameter {name!r} of a module with {sorted(module)}")

    def walk(node: Mapping):
        if any(not isinstance(v, Mapping) for v in node.values()):  # a module: its leaves are params
            return {name: kind_of(node, name) for name in node}
        return {name: walk(child) for name, child in node.items()}

    return walk(params)


def select(params: Mapping, *kinds: str) -> Mask:
    """Mask that is ``True`` on every leaf of the given kinds (see :func:`leaf_kinds`), ``False`` elsewhere.

    E.g. ``masked(tx, select(params, 'linear'))`` trains only the classifier;
    ``select(params, 'conv', 'linear')`` freezes BatchNorm's affine parameters.
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown layer kind(s) {unknown or '(none given)'}; valid: {', '.join(KINDS)}")
    return jax.tree_util.tree_map(lambda kind, p: jnp.full(jnp.shape(p), kind in kinds, bool),
                                  leaf_kinds(params), params)


def mask_fraction(mask: Mask):
    """Fraction (float32 scalar) of ``True`` entries over all leaves of ``mask``."""
    leaves = jax.tree_util.tree_leaves(mask)
    total = sum(x.size for x in leaves)
    return sum(jnp.sum(x, dtype=jnp.float32) for x in leaves) / jnp.float32(max(total, 1))
