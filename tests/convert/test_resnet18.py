"""Converter tests: exact logits, bit-identical round trips, strictness, safe loading."""
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

import converters
from converters import CheckpointError
from jax_unlearn.models import ResNet18
from torch_reference import nchw, random_torch_resnet18, rel_err
from tiny import quick_init  # tests/ is on sys.path


@pytest.mark.parametrize("stem,num_classes,seed", [("imagenet", 10, 0), ("imagenet", 7, 1), ("cifar", 10, 2)])
def test_eval_logits_match_torchvision(stem, num_classes, seed):
    net = random_torch_resnet18(seed, num_classes, stem).eval()
    x = np.random.default_rng(seed).normal(size=(8, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(nchw(x)).numpy()
    variables = converters.torch_to_flax(net.state_dict())
    got = ResNet18(num_classes=num_classes, stem=stem).apply(variables, jnp.asarray(x), train=False)
    assert got.shape == want.shape
    assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_pth_flax_pth_is_bit_identical_and_loads_strict(tmp_path, stem):
    net = random_torch_resnet18(3, 10, stem)
    path = tmp_path / "in.pth"
    torch.save(net.state_dict(), path)
    sd = converters.load_torch_checkpoint(path)
    back = converters.flax_to_torch(converters.torch_to_flax(sd))
    assert list(back) == list(net.state_dict())
    for k, v in net.state_dict().items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert torch.equal(back[k], v), k
    fresh = torchvision.models.resnet18(num_classes=10)
    if stem == "cifar":
        fresh.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        fresh.maxpool = torch.nn.Identity()
    fresh.load_state_dict(back, strict=True)


@pytest.mark.parametrize("suffix", [".msgpack", "_orbax"])
def test_convert_files_both_directions(tmp_path, suffix):
    net = random_torch_resnet18(4)
    src = tmp_path / "model.pth"
    torch.save(net.state_dict(), src)
    mid = tmp_path / f"model{suffix}"
    out = tmp_path / "again.pth"
    converters.convert_file(src, mid)
    converters.convert_file(mid, out)
    again = torch.load(out, weights_only=True)
    assert all(torch.equal(again[k], v) for k, v in net.state_dict().items())
    assert list(again) == list(net.state_dict())


def test_wrappers_are_accepted():
    sd = random_torch_resnet18(5).state_dict()
    want = converters.torch_to_flax(sd)
    for wrapped in ({"state_dict": sd}, {f"module.{k}": v for k, v in sd.items()}):
        got = converters.torch_to_flax(wrapped)
        jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)


def test_missing_and_unexpected_keys_are_named():
    sd = dict(random_torch_resnet18(6).state_dict())
    del sd["layer2.0.downsample.1.running_var"]
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"layer2\.0\.downsample\.1\.running_var.*layer5\.0\.conv1\.weight"):
        converters.torch_to_flax(sd)


def test_wrong_num_classes_and_wrong_shapes_and_other_resnets_fail():
    sd = random_torch_resnet18(7, num_classes=7).state_dict()
    with pytest.raises(CheckpointError, match="7 classes; expected 10"):
        converters.torch_to_flax(sd, num_classes=10)
    bad = dict(random_torch_resnet18(7).state_dict())
    bad["layer3.1.conv2.weight"] = torch.zeros(256, 256, 1, 1)
    with pytest.raises(CheckpointError, match=r"layer3\.1\.conv2\.weight"):
        converters.torch_to_flax(bad)
    with pytest.raises(CheckpointError, match="unexpected keys"):
        converters.torch_to_flax(torchvision.models.resnet34(num_classes=10).state_dict())
    with pytest.raises(CheckpointError, match="missing keys"):
        converters.torch_to_flax(torchvision.models.resnet50(num_classes=10).state_dict())


def test_flax_side_is_strict_too():
    variables = converters.torch_to_flax(random_torch_resnet18(8).state_dict())
    variables["params"]["extra"] = {"kernel": np.zeros(3)}
    with pytest.raises(CheckpointError, match="params/extra/kernel"):
        converters.flax_to_torch(variables)
    del variables["params"]["extra"]
    del variables["batch_stats"]["layer4_1"]["bn2"]["var"]
    with pytest.raises(CheckpointError, match="batch_stats/layer4_1/bn2/var"):
        converters.flax_to_torch(variables)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickle_with_code_is_refused_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Exploit()}, f)
    torch.save({"a": _Exploit()}, tmp_path / "evil2.pth")
    for p in (path, tmp_path / "evil2.pth"):
        with pytest.raises(CheckpointError, match=r"would import (posix|nt)\.system .* nothing in it was executed"):
            converters.load_torch_checkpoint(p)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_missing_file_and_garbage_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        converters.load_torch_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        converters.load_torch_checkpoint(tmp_path / "junk.pth")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.pth"
    target.write_bytes(b"old")

    def boom(tmp):
        open(tmp, "wb").write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        converters.atomic_write(target, boom)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.pth"]


def test_convert_refuses_same_kind_on_both_sides(tmp_path):
    with pytest.raises(ValueError, match="must be a .pth"):
        converters.convert_file(tmp_path / "a.pth", tmp_path / "b.pth")


def test_converted_arrays_do_not_alias_torch_memory():
    net = random_torch_resnet18(9)
    variables = converters.torch_to_flax(net.state_dict())
    before = np.array(variables["params"]["bn1"]["scale"])
    with torch.no_grad():
        net.bn1.weight.add_(1.0)
    np.testing.assert_array_equal(variables["params"]["bn1"]["scale"], before)
    # Every entry, both directions (conv kernels are permuted copies; a view would alias here).
    sources = [t.numpy() for t in net.state_dict().values()]
    for leaf in jax.tree_util.tree_leaves(variables):
        assert not any(np.shares_memory(leaf, src) for src in sources)
    back = converters.flax_to_torch(variables)
    for t in back.values():
        assert not any(np.shares_memory(t.numpy(), leaf) for leaf in jax.tree_util.tree_leaves(variables))


def test_half_precision_weights_become_their_float32_values():
    sd = random_torch_resnet18(10).state_dict()
    for dtype in (torch.bfloat16, torch.float16):
        low = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
        variables = converters.torch_to_flax(low)
        np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], low["fc.weight"].float().numpy().T)
        assert variables["params"]["fc"]["kernel"].dtype == np.float32


@pytest.mark.parametrize("key,value,match", [
    ("fc.weight", lambda t: t.to(torch.complex64), "fc.weight has dtype complex64"),
    ("layer1.0.conv1.weight", lambda t: t.to(torch.int32), "layer1.0.conv1.weight has dtype int32"),
    ("bn1.running_var", lambda t: t.index_fill(0, torch.tensor([3]), float("inf")), "bn1.running_var holds 1 NaN/inf"),
    ("bn1.num_batches_tracked", lambda t: torch.tensor(-1), "bn1.num_batches_tracked: value -1"),
])
def test_weights_that_would_convert_lossily_or_broken_are_refused_by_key(key, value, match):
    sd = dict(random_torch_resnet18(11).state_dict())
    sd[key] = value(sd[key])
    with pytest.raises(CheckpointError, match=match):
        converters.torch_to_flax(sd)


def test_flax_start_models_are_checked_like_pth(tmp_path):
    from flax import serialization

    variables = converters.torch_to_flax(random_torch_resnet18(12, num_classes=7).state_dict())
    path = tmp_path / "m.msgpack"
    path.write_bytes(serialization.msgpack_serialize(variables))
    assert converters.load_model_variables(path, 7)["params"]["fc"]["kernel"].shape == (512, 7)
    with pytest.raises(CheckpointError, match=r"m\.msgpack: the head .* has 7 classes; expected 10"):
        converters.load_model_variables(path, 10)
    variables["batch_stats"]["bn1"]["mean"][0] = np.nan
    path.write_bytes(serialization.msgpack_serialize(variables))
    with pytest.raises(CheckpointError, match=r"m\.msgpack: bn1\.running_mean holds 1 NaN/inf"):
        converters.load_model_variables(path)


def test_smaller_resnets_load_only_from_flax_files_checked_against_their_own_shapes(tmp_path):
    from jax_unlearn.models import make_model

    small = {"stage_sizes": [1, 1], "width": 8}
    variables = jax.tree_util.tree_map(np.array, quick_init(make_model(7, arch=small), jax.random.key(0)))
    path = converters.save_flax_variables(variables, tmp_path / "s.msgpack")
    loaded = converters.load_model_variables(path, 7, arch=small)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, loaded, variables))
    with pytest.raises(CheckpointError, match=r"s\.msgpack: \['params'\]\['fc'\]\['bias'\] has shape \(7,\); "
                                              r"the resnet:1,1:8 model of 10 classes needs \(10,\)"):
        converters.load_model_variables(path, 10, arch=small)
    with pytest.raises(CheckpointError, match=r"not a resnet:1,2:8 model of 7 classes: missing \[.*layer2_1"):
        converters.load_model_variables(path, 7, arch={"stage_sizes": [1, 2], "width": 8})
    with pytest.raises(CheckpointError, match=r"params/conv1/kernel: shape \(7, 7, 3, 8\) does not fit ResNet-18"):
        converters.load_model_variables(path, 7)  # the ResNet-18 check refuses a small model
    torch.save(random_torch_resnet18(0, num_classes=7).state_dict(), tmp_path / "r.pth")
    with pytest.raises(CheckpointError, match=r"r\.pth: a \.pth file holds a torchvision ResNet-18, not the "
                                              r"resnet:1,1:8 model"):
        converters.load_model_variables(tmp_path / "r.pth", 7, arch=small)
    variables["params"]["conv1"]["kernel"][0, 0, 0, 0] = np.inf
    path = converters.save_flax_variables(variables, tmp_path / "bad.msgpack")
    with pytest.raises(CheckpointError, match=r"\['params'\]\['conv1'\]\['kernel'\] holds NaN/inf"):
        converters.load_model_variables(path, 7, arch=small)


def test_saved_pth_bytes_depend_on_contents_only(tmp_path):
    sd = random_torch_resnet18(13).state_dict()
    a = converters.save_torch_checkpoint(sd, tmp_path / "a.pth")
    b = converters.save_torch_checkpoint(sd, tmp_path / "other_name.pth")
    assert a.read_bytes() == b.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["a.pth", "other_name.pth"]  # no temporary file left
    back = torch.load(b, weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in sd.items())


def test_refusal_messages_say_what_was_blocked(tmp_path):
    torch.save(random_torch_resnet18(14), tmp_path / "model.pth")
    with pytest.raises(CheckpointError) as info:
        converters.load_torch_checkpoint(tmp_path / "model.pth")
    message = str(info.value)
    assert "torchvision.models.resnet.ResNet" in message and "state_dict()" in message
    assert "weights_only set to False" not in message and "\x1b" not in message and "\n" not in message
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        converters.load_torch_checkpoint(tmp_path / "empty.pth")
