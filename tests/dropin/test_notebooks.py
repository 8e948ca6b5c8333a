"""The two notebooks' own driver code, run on tiny synthetic data in their exact formats, with the drop-in
imported in place of their ``unlearning``: the official Kaggle notebook (``run-unlearn-finetune.ipynb``,
whose cells :mod:`benchmarks.notebook_loop` holds verbatim) and the starting kit's
``unlearning-CIFAR10.ipynb`` (cells below, verbatim). Plus: the Kaggle CLI and the drop-in give the same
model for the same seed on the same competition folder.
"""
import copy
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from sklearn import linear_model, model_selection
from torch import nn, optim
from torch.utils.data import DataLoader, Subset

from dropin_helpers import KitStyle, equal_states, state_of, steps_taken, update_rel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.notebook_loop import notebook_source, write_folder  # noqa: E402

CHECKPOINTS = 3


def kaggle_folder(tmp_path, trained, retain=96):
    """A competition folder (32×32 PNGs, the CSVs) whose original_model.pth is the trained start."""
    folder = write_folder(tmp_path / "data", retain=retain, forget=8, validation=8)
    torch.save(trained.state_dict(), folder / "original_model.pth")
    return folder


def run_notebook(variant, folder, out):
    namespace = {"__name__": "__notebook__"}
    exec(notebook_source(variant, folder, out, CHECKPOINTS), namespace)
    states = [torch.load(out / f"unlearned_checkpoint_{i}.pth", weights_only=True) for i in range(CHECKPOINTS)]
    for state in states:
        torchvision.models.resnet18(weights=None, num_classes=10).load_state_dict(state, strict=True)
    return namespace, states


def test_kaggle_notebook_loop_with_the_per_call_drop_in(tmp_path, trained):
    namespace, states = run_notebook("dropin", kaggle_folder(tmp_path, trained), tmp_path / "out")
    assert namespace["net_"] is namespace["net"] and not namespace["net"].training  # as the notebook leaves it
    start = trained.state_dict()
    for state in states:
        assert steps_taken(state, start) == 2  # 96 retain images, get_dataset(64): two batches
    for a, b in ((0, 1), (1, 2)):
        assert update_rel(states[a], states[b], start) > 1e-3  # seedless calls differ (same seed: ~1e-7)


def test_kaggle_notebook_many_loop_equals_the_cli_seed_for_seed(tmp_path, trained):
    """Lane i of the README's ``unlearning_many`` loop over the notebook's loaders and seed i of
    ``jax-unlearn unlearn --dataset kaggle`` on the same folder: one canonical example order, so the same
    model (both chunks run 3 lanes; the programs differ only in what XLA fuses)."""
    from jax_unlearn import cli

    folder = kaggle_folder(tmp_path, trained)
    _, states = run_notebook("many", folder, tmp_path / "out")
    start = trained.state_dict()
    assert update_rel(states[0], states[1], start) > 1e-3  # seeds differ (same seed: ~1e-7)
    run, exported = tmp_path / "run", tmp_path / "exported"
    assert cli.main(["unlearn", "--dataset", "kaggle", "--data-dir", str(folder), "--original",
                     str(folder / "original_model.pth"), "--out", str(run), "--n-seeds", str(CHECKPOINTS),
                     "--no-track"]) == 0
    assert cli.main(["export", str(run), str(exported), "--no-zip"]) == 0
    for i, state in enumerate(states):
        theirs = torch.load(exported / f"unlearned_checkpoint_{i}.pth", weights_only=True)
        assert steps_taken(theirs, start) == steps_taken(state, start) == 2
        assert update_rel(state, theirs, start) <= 1e-4, i  # float32 summation order only


# unlearning-CIFAR10.ipynb, cells 9 (accuracy), 12, 14, 16 (compute_losses, without the train-set losses),
# 19 (simple_mia), 23 and 24, verbatim; the data and model cells are replaced by synthetic stand-ins below.
KIT_ACCURACY = '''
def accuracy(net, loader):
    """Return accuracy on a dataset given by the data loader."""
    correct = 0
    total = 0
    for inputs, targets in loader:
        inputs, targets = inputs.to(DEVICE), targets.to(DEVICE)
        outputs = net(inputs)
        _, predicted = outputs.max(1)
        total += targets.size(0)
        correct += predicted.eq(targets).sum().item()
    return correct / total
'''
KIT_UNLEARN = '''
ft_model = resnet18(weights=None, num_classes=10)
ft_model.load_state_dict(weights_pretrained)
ft_model.to(DEVICE)

# Execute the unlearing routine. This might take a few minutes.
# If run on colab, be sure to be running it on  an instance with GPUs
ft_model = unlearning(ft_model, retain_loader, forget_loader, test_loader)
'''
KIT_EVALUATE = '''
print(f"Retain set accuracy: {100.0 * accuracy(ft_model, retain_loader):0.1f}%")
print(f"Test set accuracy: {100.0 * accuracy(ft_model, test_loader):0.1f}%")

def compute_losses(net, loader):
    """Auxiliary function to compute per-sample losses"""

    criterion = nn.CrossEntropyLoss(reduction="none")
    all_losses = []

    for inputs, targets in loader:
        inputs, targets = inputs.to(DEVICE), targets.to(DEVICE)

        logits = net(inputs)
        losses = criterion(logits, targets).numpy(force=True)
        for l in losses:
            all_losses.append(l)

    return np.array(all_losses)

def simple_mia(sample_loss, members, n_splits=10, random_state=0):
    """Computes cross-validation score of a membership inference attack.

    Args:
      sample_loss : array_like of shape (n,).
        objective function evaluated on n samples.
      members : array_like of shape (n,),
        whether a sample was used for training.
      n_splits: int
        number of splits to use in the cross-validation.
    Returns:
      scores : array_like of size (n_splits,)
    """

    unique_members = np.unique(members)
    if not np.all(unique_members == np.array([0, 1])):
        raise ValueError("members should only have 0 and 1s")

    attack_model = linear_model.LogisticRegression()
    cv = model_selection.StratifiedShuffleSplit(
        n_splits=n_splits, random_state=random_state
    )
    return model_selection.cross_val_score(
        attack_model, sample_loss, members, cv=cv, scoring="accuracy"
    )

ft_forget_losses = compute_losses(ft_model, forget_loader)
ft_test_losses = compute_losses(ft_model, test_loader)

# make sure we have a balanced dataset for the MIA
assert len(ft_test_losses) == len(ft_forget_losses)

ft_samples_mia = np.concatenate((ft_test_losses, ft_forget_losses)).reshape((-1, 1))
labels_mia = [0] * len(ft_test_losses) + [1] * len(ft_forget_losses)

ft_mia_scores = simple_mia(ft_samples_mia, labels_mia)

print(
    f"The MIA has an accuracy of {ft_mia_scores.mean():.3f} on forgotten vs unseen images"
)
'''


def test_starting_kit_cells_with_the_kit_drop_in(trained, capsys):
    """The kit's cells with ``from jax_unlearn.kaggle.kit import unlearning``: its recipe by default (5
    epochs, the loader's batch of 128), the net left in eval mode so the accuracy and MIA cells change no
    BatchNorm buffer, and every cell runs to the end. (The kit's loaders use ``num_workers=2``; here 0, as
    forking this JAX process is what ``test_forked_workers_are_not_used_to_read`` avoids.)"""
    from jax_unlearn.kaggle.kit import unlearning

    train_set = KitStyle(96, 1)
    forget_idx = np.arange(0, 96, 6)  # 16 forget images, as many as the test set
    retain_idx = np.setdiff1d(np.arange(96), forget_idx)
    rng = torch.Generator().manual_seed(42)
    namespace = {
        "DEVICE": "cpu", "nn": nn, "optim": optim, "np": np, "torch": torch, "linear_model": linear_model,
        "model_selection": model_selection, "resnet18": torchvision.models.resnet18, "unlearning": unlearning,
        "weights_pretrained": copy.deepcopy(trained.state_dict()),
        "forget_loader": DataLoader(Subset(train_set, forget_idx), batch_size=128, shuffle=True),
        "retain_loader": DataLoader(Subset(train_set, retain_idx), batch_size=128, shuffle=True, generator=rng),
        "test_loader": DataLoader(KitStyle(16, 5), batch_size=128, shuffle=False),
    }
    exec(KIT_ACCURACY + KIT_UNLEARN, namespace)
    ft_model = namespace["ft_model"]
    assert not ft_model.training
    after_unlearning = state_of(ft_model)
    assert steps_taken(after_unlearning, trained.state_dict()) == 5  # 5 epochs x one batch of 80 (<= 128)
    exec(KIT_EVALUATE, namespace)
    assert equal_states(after_unlearning, ft_model.state_dict())  # eval mode: no buffer moved
    printed = capsys.readouterr().out
    assert "Retain set accuracy" in printed and "The MIA has an accuracy of" in printed
    assert 0.0 <= namespace["ft_mia_scores"].mean() <= 1.0
