"""Models: torchvision-identical ResNet-18 in Flax, with a PyTorch-exact BatchNorm and a conv whose lowering
can be chosen (XLA convolution, im2col + GEMM, or the two mixed; the same function); :func:`make_model` is
the one factory."""
from jax_unlearn.models.batchnorm import BatchNorm
from jax_unlearn.models.conv import CONV_IMPLS, Conv, conv_canonical, conv_gemm
from jax_unlearn.models.factory import (AUTO_LOWERING, CONV_CHOICES, CONV_LOWERINGS, RESNET18, arch_name,
                                        architecture, conv_spec, lowering_of, make_model, parse_arch, resolve_conv)
from jax_unlearn.models.resnet import BasicBlock, ResNet, ResNet18, init_variables

__all__ = ["AUTO_LOWERING", "BatchNorm", "BasicBlock", "CONV_CHOICES", "CONV_IMPLS", "CONV_LOWERINGS", "Conv",
           "RESNET18", "ResNet", "ResNet18", "arch_name", "architecture", "conv_canonical", "conv_gemm",
           "conv_spec", "init_variables", "lowering_of", "make_model", "parse_arch", "resolve_conv"]
