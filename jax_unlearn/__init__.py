"""jax-unlearn: fast, exact JAX/Flax machine unlearning for torchvision ResNet-18 image classifiers.

Many seeds run in one compiled program (``jax.jit(jax.vmap(...))`` over seed keys); checkpoints convert
to and from torchvision ``.pth`` state dicts exactly (see the top-level ``converters`` package).
"""
__version__ = "0.1.0"
