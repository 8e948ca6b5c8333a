"""Unlearning methods and training recipes: one registry (:data:`METHODS`), one factory per method."""
from jax_unlearn.methods import distill, ssd, finetune, gradient, noise, winners  # noqa: F401  (registers)
from jax_unlearn.methods import fisher, gradient_ascent, goel  # noqa: F401  (registers)
from jax_unlearn.methods.registry import METHODS, Method, MethodInfo, build_method, get_method, register

__all__ = ["METHODS", "Method", "MethodInfo", "build_method", "get_method", "register"]
