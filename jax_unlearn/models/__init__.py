"""Models: torchvision-identical ResNet-18 in Flax, with a PyTorch-exact BatchNorm and a conv whose lowering
can be chosen (XLA convolution or im2col + GEMM, the same function)."""
from jax_unlearn.models.batchnorm import BatchNorm
from jax_unlearn.models.conv import CONV_IMPLS, Conv, conv_gemm
from jax_unlearn.models.resnet import BasicBlock, ResNet, ResNet18, init_variables

__all__ = ["BatchNorm", "BasicBlock", "CONV_IMPLS", "Conv", "ResNet", "ResNet18", "conv_gemm", "init_variables"]
