"""The one model factory: the ResNet-18 every job, the drop-in and the benchmarks build, and how its
convolutions are lowered (``conv=``), including ``'auto'``, the lowering measured fastest on each backend.

Lowerings (:data:`CONV_LOWERINGS`; the same function with the same variables, :mod:`jax_unlearn.models.conv`):

* ``'xla'`` — ``lax.conv_general_dilated`` everywhere (grouped convolutions under ``vmap`` over lanes);
* ``'gemm'`` — im2col + one GEMM everywhere: no convolution op anywhere in the vmapped program;
* ``'gemm-body'`` — GEMM for the blocks, XLA's convolution for the stem (which needs no input gradient);
* ``'canonical'`` — XLA's convolution with a VJP written in XLA:CPU's canonical layout on stride-1 convs over
  maps ≥ 4×4, GEMM elsewhere (one model per program: under ``vmap`` over lanes its convs are grouped);
* ``'auto'`` — :data:`AUTO_LOWERING` for the platform JAX computes on.

Runs record the *resolved* lowering (``config.json["conv"]``), so two runs that must compare never differ
in it silently.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jax_unlearn.models.conv import check_impl
from jax_unlearn.models.resnet import ResNet, ResNet18

# ``conv=`` name -> (conv_impl, stem_conv_impl) of :class:`~jax_unlearn.models.resnet.ResNet`.
CONV_LOWERINGS = {
    "xla": ("xla", None),
    "gemm": ("gemm", None),
    "gemm-body": ("gemm", "xla"),
    "canonical": ("canonical", None),
}
CONV_CHOICES = ("auto", *CONV_LOWERINGS)

# What ``conv='auto'`` resolves to, per JAX platform, and the measurement behind each entry.
AUTO_LOWERING = {
    # XLA:CPU, ResNet-18 train step at batch 64 inside one jitted lax.scan (what the engine runs): 14.6 CPU-s
    # for two steps with 'xla' against 0.61 CPU-s with 'gemm' (issue #11; benchmarks/RESULTS.md, "CPU";
    # the cause is in jax_unlearn/models/conv.py's docstring). 'canonical' keeps XLA's conv where its VJP can
    # be canonical: the drop-in's finetune program ran 11% faster than with 'gemm' (1.21 s against 1.35 s a
    # run, one process, interleaved) and compiled faster, and the Kaggle notebook loop's unlearning_many went
    # from 1.69x torch's time to 1.36-1.50x (benchmarks/RESULTS.md, 2026-12-05 "canonical").
    "cpu": "canonical",
    # Not measured on a GPU yet: XLA's convolution (cuDNN) stays the default until benchmarks/gpu_check.py
    # has compared the lowerings at 64 lanes x batch 64 (issue #16).
    "gpu": "xla",
    "cuda": "xla",
    "rocm": "xla",
    "tpu": "xla",
}


def resolve_conv(conv: str = "auto", platform: str | None = None) -> str:
    """The concrete lowering (a key of :data:`CONV_LOWERINGS`) for ``conv``; ``'auto'`` looks up
    :data:`AUTO_LOWERING` for ``platform`` (default: the platform of ``jax.devices()[0]``; unknown
    platforms get ``'xla'``). ValueError for an unknown name, listing the valid ones."""
    if conv not in CONV_CHOICES:
        raise ValueError(f"unknown conv lowering {conv!r}; valid: {', '.join(CONV_CHOICES)}")
    if conv != "auto":
        return conv
    platform = platform if platform is not None else jax.devices()[0].platform
    return AUTO_LOWERING.get(platform, "xla")


def conv_spec(conv: str = "auto", platform: str | None = None) -> dict[str, str | None]:
    """:class:`~jax_unlearn.models.resnet.ResNet` keywords (``conv_impl``, ``stem_conv_impl``) for ``conv``."""
    conv_impl, stem_conv_impl = CONV_LOWERINGS[resolve_conv(conv, platform)]
    return {"conv_impl": conv_impl, "stem_conv_impl": stem_conv_impl}


def lowering_of(model: nn.Module) -> str:
    """The :data:`CONV_LOWERINGS` name of ``model``'s ``(conv_impl, stem_conv_impl)``, e.g. ``'gemm'``
    (``'xla'`` for a model without those attributes, i.e. plain XLA convolutions)."""
    conv_impl = getattr(model, "conv_impl", "xla")
    stem = getattr(model, "stem_conv_impl", None)
    stem = None if stem == conv_impl else stem
    for name, spec in CONV_LOWERINGS.items():
        if spec == (conv_impl, stem):
            return name
    return f"{conv_impl}+stem-{stem}"


_RESNET18_SHAPE = ((2, 2, 2, 2), 64)  # ResNet-18's (stage_sizes, width): nothing to record


def architecture(model: nn.Module) -> dict | None:
    """What a run folder records to rebuild ``model`` when it is not ResNet-18 (``{'stage_sizes', 'width'}``
    of a smaller :class:`~jax_unlearn.models.resnet.ResNet`, e.g. the tests' tiny ones); None for ResNet-18."""
    stage_sizes = tuple(getattr(model, "stage_sizes", _RESNET18_SHAPE[0]))
    width = getattr(model, "width", _RESNET18_SHAPE[1])
    if (stage_sizes, width) == _RESNET18_SHAPE:
        return None
    return {"stage_sizes": list(stage_sizes), "width": int(width)}


RESNET18 = "resnet18"


def parse_arch(spec: str) -> dict | None:
    """The architecture a ``--arch`` value names: ``'resnet18'`` -> None (torchvision's ResNet-18, the
    competition's model); ``'resnet:S1,S2,...:W'`` -> ``{'stage_sizes': [S1, ...], 'width': W}``, a smaller
    ResNet of BasicBlocks (``Si`` blocks in stage ``i``, ``W`` channels in the first stage, doubling per
    stage), e.g. ``'resnet:1,1:8'`` for runs that check a pipeline in seconds on a CPU. Such models cannot be
    exported as torchvision ``.pth`` files. ValueError for anything else."""
    if spec == RESNET18:
        return None
    parts = spec.split(":")
    try:
        if len(parts) != 3 or parts[0] != "resnet":
            raise ValueError
        stages, width = [int(s) for s in parts[1].split(",")], int(parts[2])
    except ValueError:
        raise ValueError(f"unknown architecture {spec!r}; valid: {RESNET18}, or resnet:STAGES:WIDTH such as "
                         f"resnet:1,1:8 (BasicBlocks per stage, first-stage width)") from None
    if not 1 <= len(stages) <= 4 or min(stages) < 1 or width < 1:
        raise ValueError(f"architecture {spec!r}: 1 to 4 stages of >= 1 block each and a width >= 1")
    arch = {"stage_sizes": stages, "width": width}
    return None if (tuple(stages), width) == _RESNET18_SHAPE else arch


def arch_name(arch: dict | None) -> str:
    """The :func:`parse_arch` spelling of a recorded architecture (None: ``'resnet18'``)."""
    if arch is None:
        return RESNET18
    return f"resnet:{','.join(str(s) for s in arch['stage_sizes'])}:{arch['width']}"


def make_model(num_classes: int, stem: str = "imagenet", dtype: str = "float32", conv: str = "auto",
               arch: dict | None = None):
    """torchvision's ResNet-18 (:data:`~jax_unlearn.models.resnet.ResNet18`) for ``num_classes`` classes.

    Args:
      num_classes: the head's size.
      stem: ``'imagenet'`` (torchvision's 7×7/2 + max-pool) or ``'cifar'`` (3×3/1, no max-pool).
      dtype: compute dtype, ``'float32'`` or ``'bfloat16'`` (parameters and BN statistics stay float32).
      conv: a :data:`CONV_CHOICES` name; ``'auto'`` picks :data:`AUTO_LOWERING` for the current platform.
      arch: None (ResNet-18), or a recorded :func:`architecture` (a smaller ResNet of BasicBlocks).
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"unknown dtype {dtype!r}; valid: float32, bfloat16")
    spec = conv_spec(conv)
    for impl in (spec["conv_impl"], spec["stem_conv_impl"] or spec["conv_impl"]):
        check_impl(impl)
    if arch is not None:
        return ResNet(stage_sizes=tuple(arch["stage_sizes"]), width=int(arch["width"]), num_classes=num_classes,
                      stem=stem, dtype=jnp.dtype(dtype), **spec)
    return ResNet18(num_classes=num_classes, stem=stem, dtype=jnp.dtype(dtype), **spec)
