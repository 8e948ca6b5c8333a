"""The tiny synthetic data set the engine and method tests share (and ``tests/conftest.py``'s fixtures):
4 classes, 45 retain / 10 forget / 12 validation / 12 test 32×32 RGB images with a learnable signal in the
red channel (``40 × label``), drawn from a seeded NumPy Generator."""
import jax
import numpy as np

from jax_unlearn.data.types import Normalization, Split, UnlearningData
from jax_unlearn.models import ResNet, init_variables
from tools.method_outputs import COMPILE_OPTIONS as FAST_COMPILE  # XLA's backend optimisations off

TINY_MODEL = ResNet(stage_sizes=(1, 1), num_classes=4, width=4)  # compiles in seconds


def synthetic_split(rng, n, num_classes=4):
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    images[..., 0] = np.uint8(40) * labels[:, None, None].astype(np.uint8)  # learnable signal
    return Split(images, labels, ids=np.array([f"x{rng.integers(1 << 40)}-{i}" for i in range(n)]))


def tiny_data(seed: int = 0) -> UnlearningData:
    rng = np.random.default_rng(seed)
    return UnlearningData(
        retain=synthetic_split(rng, 45), forget=synthetic_split(rng, 10), validation=synthetic_split(rng, 12),
        test=synthetic_split(rng, 12), num_classes=4,
        normalization=Normalization(scale=1 / 255, mean=(0.5,) * 3, std=(0.25,) * 3),
        description={"source": "synthetic"})


def quick_init(model, key, image_size: int = 32):
    """``init_variables(model, key)`` compiled with XLA's backend optimisations off: for the test ResNet
    0.55 s against 0.77 s at the default level and 2.4 s op by op (2-core CPU; before the initialisers drew
    flat, jax_unlearn/models/init.py, the default level took ~4 s). The values are a valid torchvision-style
    init but may differ in the last bit from another compilation of it, so both sides of a comparison must
    start from the same call. A batch of keys (shape ``(n,)``) gives ``n`` models stacked on a leading axis."""
    init = lambda k: init_variables(model, k, image_size)  # noqa: E731
    return jax.jit(jax.vmap(init) if key.shape else init).lower(key).compile(FAST_COMPILE)(key)
