"""Models: torchvision-identical ResNet-18 in Flax, with a PyTorch-exact BatchNorm."""
from jax_unlearn.models.batchnorm import BatchNorm
from jax_unlearn.models.resnet import BasicBlock, ResNet, ResNet18, init_variables

__all__ = ["BatchNorm", "BasicBlock", "ResNet", "ResNet18", "init_variables"]
