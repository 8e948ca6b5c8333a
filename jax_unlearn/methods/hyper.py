"""Hyper-parameter values checked against a method's declared defaults, before anything runs or is written.

A method declares each hyper-parameter by its default (:class:`jax_unlearn.methods.registry.MethodInfo`); the
default's type is the expected type: ``bool``, ``int``, ``float``, ``str`` or a tuple. A list value is a
sweep (:mod:`jax_unlearn.jobs.sweep`): each of its entries is checked. Ranges are the ones every method shares:
sizes and the number of epochs are positive, other counts non-negative, real numbers finite, learning
rates non-negative. A method may check more (its factory raises ``ValueError`` with the reason).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

_POSITIVE_INTS = ("epochs",)  # besides every *batch_size, *_copies, *_images, *_steps


class HyperError(ValueError):
    """A hyper-parameter value of the wrong type or out of range; the message names it."""


def _positive_int(name: str) -> bool:
    return name in _POSITIVE_INTS or name.endswith(("batch_size", "_copies", "_images", "_steps", "steps"))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return f"the text {value!r}"
    return type(value).__name__


def check_value(method: str, name: str, value: Any, default: Any) -> Any:
    """``value`` for hyper-parameter ``name`` (whose default is ``default``), coerced (an int where a float
    is expected becomes a float); :class:`HyperError` naming it when its type or range is wrong."""
    where = f"{method} hyper-parameter {name}={value!r}"
    if default is None:  # no declared type: the factory decides
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise HyperError(f"{where}: expected true or false, got {_kind(value)}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise HyperError(f"{where}: expected an integer (default {default}), got {_kind(value)}")
        low = 1 if _positive_int(name) else 0
        if value < low:
            raise HyperError(f"{where}: {name} must be {'a positive' if low else 'a non-negative'} integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HyperError(f"{where}: expected a number (default {default}), got {_kind(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise HyperError(f"{where}: must be a finite number")
        if name == "epochs" and value <= 0:
            raise HyperError(f"{where}: must be positive")
        if (name == "lr" or name.endswith("_lr")) and value < 0:
            raise HyperError(f"{where}: a learning rate must be >= 0")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise HyperError(f"{where}: expected a name (default {default!r}), got {_kind(value)}")
        return value
    if isinstance(default, (tuple, list)):
        items = value if isinstance(value, (tuple, list)) else None
        if items is None or not items:
            raise HyperError(f"{where}: expected a list like {list(default)}")
        for i, v in enumerate(items):
            if default:
                check_value(method, f"{name}[{i}]", v, default[0])
        return value
    return value


def check_hyper(method: str, defaults: Mapping[str, Any], hyper: Mapping[str, Any]) -> dict[str, Any]:
    """Every ``hyper`` entry checked by :func:`check_value` against ``defaults``; a list value of a scalar
    hyper-parameter is a sweep and each entry is checked. Unknown names fail listing the valid ones.

    Returns the coerced values (same keys)."""
    unknown = sorted(set(hyper) - set(defaults))
    if unknown:
        raise HyperError(f"method {method!r} has no hyper-parameter(s) {unknown}; valid: {sorted(defaults)}")
    out = {}
    for name, value in hyper.items():
        default = defaults[name]
        if isinstance(value, list) and not isinstance(default, (tuple, list)):
            if not value:
                raise HyperError(f"{method} hyper-parameter {name}=[]: a sweep needs at least one value")
            out[name] = [check_value(method, name, v, default) for v in value]
        else:
            out[name] = check_value(method, name, value, default)
    return out


SEED_LIMIT = 2**32  # keys are fold_in(key(seed), id) with uint32 seed ids


def check_seeds(base_seed: int, n_seeds: int = 1, name: str = "base seed") -> None:
    """Refuse a seed whose ids ``base_seed .. base_seed + n_seeds - 1`` do not fit uint32."""
    if isinstance(base_seed, bool) or not isinstance(base_seed, int) or not 0 <= base_seed < SEED_LIMIT:
        raise HyperError(f"{name} {base_seed!r} must be an integer in [0, 2**32)")
    if n_seeds >= SEED_LIMIT:
        raise HyperError(f"{n_seeds} seeds do not fit uint32 seed ids")
