"""The command line: convert, and clear errors for bad input."""
import torch

from jax_unlearn.cli import main
from torch_reference import random_torch_resnet18


def test_convert_round_trip_via_cli(tmp_path, capsys):
    sd = random_torch_resnet18(0).state_dict()
    torch.save(sd, tmp_path / "a.pth")
    assert main(["convert", str(tmp_path / "a.pth"), str(tmp_path / "a.msgpack")]) == 0
    assert main(["convert", str(tmp_path / "a.msgpack"), str(tmp_path / "b.pth"), "--num-classes", "10"]) == 0
    back = torch.load(tmp_path / "b.pth", weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in sd.items())


def test_convert_errors_are_reported_and_write_nothing(tmp_path, capsys):
    sd = random_torch_resnet18(0, num_classes=7).state_dict()
    torch.save(sd, tmp_path / "a.pth")
    assert main(["convert", str(tmp_path / "a.pth"), str(tmp_path / "a.msgpack"), "--num-classes", "10"]) == 2
    assert "7 classes; expected 10" in capsys.readouterr().err
    assert not (tmp_path / "a.msgpack").exists()
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "x.msgpack")]) == 2


def test_methods_lists_the_registry(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("finetune", "finetune-kit", "retrain"):
        assert name in out


def test_nonsense_values_fail_clearly(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["demo", "--n-seeds", "0"])
    assert "positive integer" in capsys.readouterr().err
    sd = random_torch_resnet18(0).state_dict()
    torch.save(sd, tmp_path / "o.pth")
    assert main(["unlearn", "--method", "nope", "--original", str(tmp_path / "o.pth"), "--out",
                 str(tmp_path / "r"), "--max-train", "64", "--max-eval", "16"]) == 2
    assert "unknown method 'nope'; valid:" in capsys.readouterr().err
