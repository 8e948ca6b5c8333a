"""Shared helpers for parity tests against PyTorch (imported by tests, not a test module)."""
from __future__ import annotations

import numpy as np
import torch
import torchvision


def random_torch_resnet18(seed: int, num_classes: int = 10, stem: str = "imagenet") -> torch.nn.Module:
    """A torchvision ResNet-18 with random weights *and* random BN running stats / counters."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = torch.nn.Identity()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.num_batches_tracked.fill_(int(torch.randint(0, 10_000, (), generator=gen)))
    return model


def nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
