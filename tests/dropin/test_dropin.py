"""The notebook drop-in: torch ResNet-18 + DataLoaders in (Kaggle dict batches or kit tuples), torch out."""
import copy
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch.utils.data import DataLoader

from converters import torch_keys
from dropin_helpers import (SIZE, KaggleStyle, KitStyle, equal_states, loaders, max_rel, state_of, steps_taken,
                            update_rel)
from jax_unlearn.kaggle import canonical_order, read_loader, splits_used, unlearning, unlearning_many
from jax_unlearn.kaggle import dropin
from jax_unlearn.kaggle.loaders import in_process
from torch_reference import rel_err

HYPER = {"batch_size": 32}


@pytest.mark.parametrize("style,train_mode,wrap", [(KaggleStyle, False, False), (KitStyle, True, True)])
def test_unlearning_replaces_weights_in_place_and_leaves_eval_mode(original, style, train_mode, wrap):
    """Both notebooks' ``unlearning`` end with ``net.eval()``: so does the drop-in, whatever mode it got
    (the kit's accuracy cells would otherwise run in train mode and overwrite BatchNorm buffers)."""
    net = original.train(train_mode)
    net = torch.nn.DataParallel(net) if wrap else net  # multi-GPU notebooks: keys gain "module."
    before = state_of(net.module if wrap else net)
    out = unlearning(net, *loaders(style), seed=0, **HYPER)
    assert out is net
    assert not any(m.training for m in net.modules())
    after = (net.module if wrap else net).state_dict()
    assert list(after) == torch_keys()
    assert all(after[k].device.type == "cpu" and after[k].dtype == before[k].dtype for k in after)
    assert max_rel(after, before) > 1e-5  # trained
    assert steps_taken(after, before) == 2  # 64 / 32 steps
    torchvision.models.resnet18(num_classes=10).load_state_dict(after, strict=True)


def test_seedless_calls_differ_and_follow_torch_manual_seed(original):
    """No seed (the notebook's call): each call differs, and the seed drawn is torch's next random int, so
    ``torch.manual_seed`` reproduces a run — through shuffling loaders that yield another order each time."""
    data = loaders(KaggleStyle, shuffle=True)
    run = lambda **kw: state_of(unlearning(copy.deepcopy(original), *data, **HYPER, **kw))  # noqa: E731
    torch.manual_seed(123)
    first, second = run(), run()
    assert max_rel(first, second) > 1e-4
    torch.manual_seed(123)
    again = run(seed=int(torch.randint(0, 2**32, (), dtype=torch.int64)))
    assert equal_states(first, again)


def test_unlearning_many_streams_seeds_equal_to_single_runs(original):
    net = copy.deepcopy(original)
    before = state_of(net)
    data = loaders(KitStyle, shuffle=True)
    states = unlearning_many(net, *data, 3, chunk_size=2, **HYPER)  # the last chunk is padded
    assert iter(states) is states
    states = list(states)
    assert len(states) == 3 and update_rel(states[0], states[1], before) > 1e-2  # seeds differ
    assert equal_states(before, net.state_dict())  # net untouched
    for state in states:
        assert list(state) == torch_keys() and all(v.device.type == "cpu" for v in state.values())
        torchvision.models.resnet18(num_classes=10).load_state_dict(state, strict=True)
    for i in (0, 2):
        single = unlearning(copy.deepcopy(original), *data, seed=i, **HYPER).state_dict()
        assert update_rel(states[i], single, before) <= 1e-4, i  # measured ~1e-6: summation order only


def test_unlearning_many_runs_one_lane_a_chunk_on_cpu_unless_told(original, monkeypatch):
    """On a CPU lanes buy no parallelism and a one-lane program compiles in half the time: the default
    chunk there is one lane; an explicit ``chunk_size`` still wins."""
    chunks = []
    monkeypatch.setattr(dropin, "_stream", lambda many, start, data, n, base_seed, chunk: chunks.append(chunk))
    for chunk_size in (None, 2):
        unlearning_many(original, *loaders(KaggleStyle), 3, chunk_size=chunk_size, **HYPER)
    assert chunks == [1, 2]


def test_one_full_batch_step_matches_the_kaggle_torch_baseline(original):
    """End to end through the loaders and converters: with the whole retain set as one batch the order of
    examples cannot matter, so ``finetune`` must take the notebook's torch step (SGD 1e-3, CE, train-mode
    BN). One step cannot see momentum, and barely weight decay: the engine's optimiser tests cover those.
    The batch size comes from the loader (64), as in the notebook.

    Tolerances: running statistics are forward-only (tight); torch and XLA round differently, and a few
    near-cancelling gradients make that ~1e-2 of their tensor's update (in float64 the engine matches torch
    to 1e-7), so the update is compared as a whole (see update_rel).
    """
    retain, forget, validation = loaders(KaggleStyle, batch_size=64)
    net = copy.deepcopy(original).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    for batch in retain:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(batch["image"]), batch["age_group"]).backward()
        optimizer.step()
    ours = unlearning(copy.deepcopy(original), retain, forget, validation, seed=0).state_dict()
    theirs = net.state_dict()
    assert max(rel_err(ours[k].double(), theirs[k].double()) for k in theirs if "running" in k) <= 1e-4
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if k.endswith("num_batches_tracked"))
    assert update_rel(ours, theirs, state_of(original)) <= 1e-2


def test_batch_size_comes_from_the_retain_loader_and_an_explicit_one_wins_with_a_warning(original):
    before = state_of(original)
    by_loader = unlearning(copy.deepcopy(original), *loaders(KaggleStyle, batch_size=16), seed=0).state_dict()
    assert steps_taken(by_loader, before) == 4  # 64 retain images / the loader's 16, not finetune's 64
    with pytest.warns(UserWarning, match="batch_size=32 differs from the retain loader's batch size 16"):
        explicit = unlearning(copy.deepcopy(original), *loaders(KaggleStyle, batch_size=16), seed=0, batch_size=32)
    assert steps_taken(explicit.state_dict(), before) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # agreeing values: no warning
        same = unlearning(copy.deepcopy(original), *loaders(KaggleStyle, batch_size=32), seed=0, batch_size=32)
    assert equal_states(same.state_dict(), explicit.state_dict())


class Exploding:
    """A loader that must not be read."""

    def __iter__(self):
        raise AssertionError("this loader was read")


def test_only_the_loaders_the_method_uses_are_read(original):
    retain, _, _ = loaders(KaggleStyle)
    net = unlearning(original, retain, Exploding(), Exploding(), seed=0, **HYPER)  # finetune: retain only
    assert not net.training
    assert splits_used("finetune", (), 10, "imagenet", "gemm", "float32") == {"retain"}
    assert splits_used("gradient-ascent", (), 10, "imagenet", "gemm", "float32") == {"forget"}
    assert splits_used("amnesiacs", (), 10, "imagenet", "gemm", "float32") == {"retain", "validation"}
    # the official retrain recipe weights classes by counts over retain ∪ forget
    assert splits_used("retrain", (), 10, "imagenet", "gemm", "float32") == {"retain", "forget", "class_counts"}


def test_unchanged_loaders_are_reused_and_a_changed_one_is_reread(original):
    """Same contents in another order: the device copy is reused (same array object). The same loader
    object after its dataset was edited in place: read again, and the result is the one a fresh loader over
    the edited data gives."""
    retain, forget, validation = loaders(KaggleStyle, shuffle=True)
    first = state_of(unlearning(copy.deepcopy(original), retain, forget, validation, seed=0, **HYPER))
    held = dropin.DEVICE_SPLITS._held["retain"][1][0]
    again = state_of(unlearning(copy.deepcopy(original), retain, forget, validation, seed=0, **HYPER))
    assert dropin.DEVICE_SPLITS._held["retain"][1][0] is held and equal_states(first, again)
    retain.dataset.labels[:8] = (retain.dataset.labels[:8] + 1) % 10  # edited in place, same loader
    edited = state_of(unlearning(copy.deepcopy(original), retain, forget, validation, seed=0, **HYPER))
    assert dropin.DEVICE_SPLITS._held["retain"][1][0] is not held
    assert max_rel(edited, first) > 1e-5
    fresh = DataLoader(retain.dataset, batch_size=32)
    dropin.clear_caches()
    assert equal_states(edited, state_of(unlearning(copy.deepcopy(original), fresh, forget, validation, seed=0,
                                                    **HYPER)))


def test_forked_workers_are_not_used_to_read(recwarn):
    """A kit-style loader with ``num_workers=2`` is read in this process (JAX's threads and ``os.fork`` can
    deadlock): the same examples in the same batches, and no fork."""
    import jax.numpy as jnp
    jnp.zeros(1).block_until_ready()  # JAX initialised: a fork now would warn
    loader = DataLoader(KitStyle(40, 1), batch_size=16, shuffle=False, num_workers=2)
    assert in_process(loader).num_workers == 0
    images, labels, first = read_loader(loader, "retain")
    reference = DataLoader(KitStyle(40, 1), batch_size=16, shuffle=False)
    np.testing.assert_array_equal(images, read_loader(reference, "retain")[0])
    assert first == 16 and len(labels) == 40
    assert not [w for w in recwarn if "fork" in str(w.message)]


def test_read_loader_kaggle_dicts_and_kit_tuples():
    images, labels, first = read_loader(loaders(KaggleStyle)[0], "retain")
    assert images.shape == (64, SIZE, SIZE, 3) and labels.dtype == np.int32 and first == 32
    np.testing.assert_array_equal(images.transpose(0, 3, 1, 2), KaggleStyle(64, 1).images.numpy())
    images, _, _ = read_loader(loaders(KitStyle)[1], "forget")
    assert images.shape == (16, SIZE, SIZE, 3) and images.dtype == np.float32
    order = canonical_order(images, labels[:16])
    shuffled = np.random.default_rng(0).permutation(16)
    np.testing.assert_array_equal(shuffled[canonical_order(images[shuffled], labels[:16][shuffled])], order)


def test_an_untrained_net_is_refused(original):
    """The README's old ``unlearning_many`` loop never loaded original_model.pth and unlearned from the
    random init without a word; a net whose BatchNorm layers never ran is now refused, by name."""
    fresh = torchvision.models.resnet18(weights=None, num_classes=10)
    data = loaders(KaggleStyle)
    with pytest.raises(ValueError, match=r"net looks untrained.*original_model\.pth.*allow_untrained=True"):
        unlearning_many(fresh, *data, 2)
    with pytest.raises(ValueError, match="net looks untrained"):
        unlearning(fresh, *data, seed=0)


def test_bad_inputs_fail_clearly(original):
    retain, forget, validation = loaders(KaggleStyle)
    net = original
    before = state_of(net)
    with pytest.raises(ValueError, match="retain loader yielded no examples"):
        unlearning(net, [], forget, validation, seed=0)
    with pytest.raises(ValueError, match="forget loader yielded no examples"):
        unlearning(net, retain, [], validation, method="neggrad+", seed=0)
    with pytest.raises(ValueError, match="validation loader yielded no examples"):
        unlearning_many(net, retain, forget, DataLoader(KaggleStyle(0, 3), batch_size=8), 2, method="amnesiacs")
    odd = [{"image": torch.zeros(4, 3, SIZE + 1, SIZE + 1), "age_group": torch.zeros(4, dtype=torch.long)}]
    with pytest.raises(ValueError, match="different shapes"):
        unlearning(net, retain, odd, validation, method="neggrad+", seed=0)
    with pytest.raises(ValueError, match="batch 0: a dict batch needs keys 'image' and 'age_group'"):
        unlearning(net, [{"img": torch.zeros(4, 3, SIZE, SIZE)}], forget, validation, seed=0)
    big = [{"image": torch.zeros(2, 3, SIZE, SIZE), "age_group": torch.tensor([3, 10])}]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        unlearning(net, big, forget, validation, seed=0)
    with pytest.raises(ValueError, match="no hyper-parameter.*'lr_typo'"):
        unlearning(net, retain, forget, validation, seed=0, lr_typo=1.0)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        unlearning(net, retain, forget, validation, method="nope", seed=0)
    with pytest.raises(ValueError, match="unknown conv lowering 'fast'"):
        unlearning(net, retain, forget, validation, conv="fast", seed=0)
    with pytest.raises(ValueError, match="unknown dtype 'float16'"):
        unlearning(net, retain, forget, validation, dtype="float16", seed=0)
    with pytest.raises(ValueError, match="seed must be an int"):
        unlearning(net, retain, forget, validation, seed=-1)
    with pytest.raises(ValueError, match="n must be a positive int"):
        unlearning_many(net, retain, forget, validation, 0)
    assert equal_states(before, net.state_dict())
