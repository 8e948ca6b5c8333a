"""Data in the two notebooks' formats, a trained start, and tree comparisons for the drop-in tests."""
import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset

from torch_reference import rel_err

SIZE = 16  # pixels; the drop-in takes any (3, H, W) (the competition's are 32)
MEAN, STD = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])


class KaggleStyle(Dataset):
    """Like the Kaggle notebook's dataset: dicts with raw 0–255 float pixels and the CSV's columns."""

    def __init__(self, n, seed, size=SIZE):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 10, (n,), generator=g)
        self.images = torch.randint(0, 256, (n, 3, size, size), generator=g).float()
        self.images[:, 0] = 20.0 * self.labels[:, None, None]  # learnable signal

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "age_group": self.labels[i], "age": 20 + int(self.labels[i]),
                "image_id": f"p{i // 4}-{i % 4}", "person_id": f"p{i // 4}"}


class KitStyle(KaggleStyle):
    """Like the starting kit's CIFAR-10 loaders: (ToTensor + Normalize'd image, target) pairs."""

    def __getitem__(self, i):
        return (self.images[i] / 255 - MEAN[:, None, None]) / STD[:, None, None], int(self.labels[i])


def loaders(style, shuffle=False, batch_size=32, n=(64, 16, 16), **kw):
    return [DataLoader(style(k, seed), batch_size=batch_size, shuffle=shuffle, **kw) for k, seed in zip(n, (1, 2, 3))]


def trained_resnet18():
    """A *trained* ResNet-18, as the notebook's ``net`` is: torchvision's init, then 3 epochs of torch SGD
    (lr 0.01, momentum 0.9) on 256 images with the loaders' class signal. From a random init float32
    rounding is amplified within a few steps (a 2-lane vmapped run and the single run differ by ~5e-4 of
    the update after two steps; from this start by ~5e-7), so seed-equality checks need a trained start."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for _ in range(3):
        for images, labels in DataLoader(KitStyle(256, 7), batch_size=32, shuffle=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(images), labels).backward()
            opt.step()
    return net.eval()


def state_of(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def max_rel(a, b):
    return max(rel_err(a[k].double(), b[k].double()) for k in b)


def update_rel(a, b, start):
    """||a - b|| / ||b - start|| over all float tensors: how far apart two trainings ended, measured against
    how far training moved. (Per-tensor max errors are no use here: float32 rounding reaches ~1e-2 of the
    update of a few tensors with near-cancelling gradients — e.g. a BatchNorm bias that starts at 0 —
    within one or two steps; in float64 the same runs agree to 1e-12.)"""
    keys = [k for k in b if b[k].is_floating_point()]
    norm = lambda f: sum(float(torch.sum(f(k).double() ** 2)) for k in keys) ** 0.5  # noqa: E731
    return norm(lambda k: a[k] - b[k]) / norm(lambda k: b[k] - start[k])


def equal_states(a, b):
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def steps_taken(state, before):
    """Optimiser steps a train-mode run took (BatchNorm's num_batches_tracked counts them)."""
    return int(state["bn1.num_batches_tracked"]) - int(before["bn1.num_batches_tracked"])


__all__ = ["KaggleStyle", "KitStyle", "SIZE", "equal_states", "loaders", "max_rel", "np", "state_of", "steps_taken",
           "trained_resnet18", "update_rel"]
