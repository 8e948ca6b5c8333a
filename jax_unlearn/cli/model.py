"""The model flags of the ``jax-unlearn`` commands (``--arch``, ``--dtype``, ``--conv``), the model they
build, and the start model (``--original``) checked against it."""
from __future__ import annotations

import argparse


def arch(value: str) -> dict | None:
    """argparse type: ``resnet18`` (None) or ``resnet:STAGES:WIDTH`` (:func:`jax_unlearn.models.parse_arch`)."""
    from jax_unlearn.models import parse_arch

    try:
        return parse_arch(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def arch_arg(p: argparse.ArgumentParser) -> None:
    """--arch: ResNet-18 (None, the default) or a smaller ResNet (see :func:`build_model`)."""
    from jax_unlearn.models import RESNET18

    p.add_argument("--arch", type=arch, default=None, metavar="ARCH",
                   help=f"the model: {RESNET18} (the competition's, the default), or a smaller ResNet "
                        f"resnet:STAGES:WIDTH such as resnet:1,1:8 (BasicBlocks per stage, first-stage width) to "
                        f"check a pipeline in seconds; its runs record it, evaluate rebuilds it, and export "
                        f"refuses it (a .pth holds a torchvision ResNet-18)")


def model_args(p: argparse.ArgumentParser, with_arch: bool = True) -> None:
    """--dtype and --conv (the compute dtype and the conv lowering of the model) and, ``with_arch``, --arch
    (see :func:`build_model`)."""
    from jax_unlearn.models import CONV_CHOICES

    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    p.add_argument("--conv", choices=CONV_CHOICES, default="auto",
                   help="how convolutions are lowered (the same function and weights either way): 'auto' picks "
                        "the fastest measured on this platform (canonical on CPU, xla on GPU); XLA's convolution; "
                        "im2col + GEMM everywhere; im2col + GEMM except the stem; XLA's convolution with a "
                        "canonical-layout backward pass where XLA:CPU runs that fast, GEMM elsewhere")
    if with_arch:
        arch_arg(p)


def build_model(args: argparse.Namespace, num_classes: int):
    """The model of ``--arch`` / ``--dtype`` / ``--conv``, its resolved lowering printed. Runs record the
    resolved lowering in ``config.json["conv"]`` (and a smaller architecture in ``["arch"]``): a folder is
    resumed only with the same ones."""
    from jax_unlearn.models import arch_name, lowering_of, make_model

    spec = getattr(args, "arch", None)
    model = make_model(num_classes, dtype=args.dtype, conv=args.conv, arch=spec)
    if spec is not None:
        print(f"model: {arch_name(spec)} (not exportable as a torchvision .pth)")
    print(f"conv lowering: {lowering_of(model)}" + (" (auto)" if args.conv == "auto" else ""))
    return model


def load_start(path: str, num_classes: int, arch: dict | None = None):
    """The start model of ``--original``, checked alike for .pth and .msgpack (keys, shapes, classes, finite
    weights) against ``arch`` (``--arch``'s value: None for ResNet-18; a smaller ResNet loads from its Flax
    checkpoint only)."""
    from converters import load_model_variables

    return load_model_variables(path, num_classes, arch=arch)
