"""Membership-inference attacks (MIA) used to report unlearning papers' numbers.

* :func:`kit_mia` — the NeurIPS 2023 starting kit's attack: logistic regression on per-example losses,
  forget (member) vs test (non-member), 10-fold shuffle-split accuracy. 0.5 is ideal, 1.0 means the
  forget set is still recognisable.
* :func:`svc_mia_efficacy` — "MIA-Efficacy" as ℓ1-sparse unlearning and SalUn report it: an RBF SVC
  learns member (retain) vs non-member (test) from the true-class confidence, then the fraction of the
  forget set it calls non-member is the efficacy (higher: more forgotten; retraining is the target).

Both take NumPy arrays computed elsewhere (e.g. by the evaluation engine) and are deterministic.
"""
from __future__ import annotations

import numpy as np


def _logits_and_labels(logits, labels, name: str = "") -> tuple[np.ndarray, np.ndarray]:
    name = f"{name} " if name else ""
    z = np.asarray(logits)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"{name}logits must have shape (n, C) with C >= 2, got {z.shape}")
    if not np.issubdtype(z.dtype, np.number) or not np.all(np.isfinite(z)):
        raise ValueError(f"{name}logits must be finite numbers")
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (z.shape[0],):
        raise ValueError(f"{name}labels must be integers of shape ({z.shape[0]},), got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"{name}labels must lie in [0, {z.shape[1]}), got [{y.min()}, {y.max()}]")
    return z.astype(np.float64), y.astype(np.intp)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def cross_entropy_per_example(logits, labels) -> np.ndarray:
    """Per-example cross-entropy ``−log softmax(z)_y``, the loss the starting kit's MIA attacks.

    Args:
      logits: float (n, C). labels: int (n,) in [0, C).

    Returns:
      float64 (n,), computed in float64 with a max-shifted log-sum-exp (the kit uses
      ``nn.CrossEntropyLoss(reduction="none")`` in float32; values agree to float32 precision).
    """
    z, y = _logits_and_labels(logits, labels)
    return -np.take_along_axis(_log_softmax(z), y[:, None], axis=1)[:, 0]


def _losses(values, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} must be finite")
    return v


def kit_mia(forget_losses, test_losses, n_splits: int = 10, random_state: int = 0) -> float:
    """Starting-kit MIA accuracy: can a logistic regression tell forget losses from test losses?

    Args:
      forget_losses: float (n_f,) per-example losses of the model on the forget set (members, label 1).
      test_losses: float (n_t,) losses on the test set (non-members, label 0).
      n_splits, random_state: of ``StratifiedShuffleSplit`` (kit defaults 10 and 0; 10% held out each).

    Returns:
      Mean held-out accuracy over the splits, in [0, 1]; ≈ 0.5 when the two are indistinguishable.

    Procedure (unlearning-challenge/starting-kit, ``unlearning-CIFAR10.ipynb``: ``simple_mia`` and the
    cell that calls it): the classes are balanced by truncation, samples are ``[test; forget]`` as one
    feature, labels ``[0]*n + [1]*n``, ``LogisticRegression()`` with default settings, scored with
    ``cross_val_score(..., cv=StratifiedShuffleSplit(n_splits, random_state=random_state),
    scoring="accuracy")``. Deviation: the kit shuffles the forget losses with the global NumPy RNG and
    keeps the first ``len(test)``; we keep the first ``n = min(n_f, n_t)`` of *each* (no shuffle, so the
    result is reproducible; pass losses in a random order, as forget sets are random subsets anyway).
    """
    forget = _losses(forget_losses, "forget_losses")
    test = _losses(test_losses, "test_losses")
    n = min(forget.size, test.size)
    if n < 6:  # 10% of 2n held out must hold both classes, and so must the rest
        raise ValueError(f"kit_mia needs at least 6 losses on each side, got {forget.size} and {test.size}")
    if int(n_splits) != n_splits or n_splits < 1:
        raise ValueError(f"n_splits must be a positive integer, got {n_splits}")
    samples = np.concatenate([test[:n], forget[:n]]).reshape(-1, 1)
    members = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
    from sklearn import linear_model, model_selection  # imported when used: ~0.75 s of every CLI start otherwise

    cv = model_selection.StratifiedShuffleSplit(n_splits=int(n_splits), random_state=random_state)
    scores = model_selection.cross_val_score(
        linear_model.LogisticRegression(), samples, members, cv=cv, scoring="accuracy")
    return float(np.mean(scores))


def true_class_confidence(logits, labels) -> np.ndarray:
    """Softmax probability of the true class, ``softmax(z)_y``: float (n, C), int (n,) -> float64 (n,)."""
    z, y = _logits_and_labels(logits, labels)
    return np.exp(np.take_along_axis(_log_softmax(z), y[:, None], axis=1)[:, 0])


def svc_mia_efficacy(retain_logits, retain_labels, test_logits, test_labels, forget_logits,
                     forget_labels) -> float:
    """SVC-MIA forgetting efficacy: fraction of the forget set an RBF SVC calls a non-member.

    Args:
      retain_logits, test_logits, forget_logits: float (n_r, C), (n_t, C), (n_f, C) model outputs.
      retain_labels, test_labels, forget_labels: int (n_r,), (n_t,), (n_f,) true labels.

    Returns:
      Efficacy in [0, 1]: ``1 − mean(SVC.predict(conf_forget))``.

    Procedure (OPTML-Group/Unlearn-Sparse, ``evaluation/SVC_MIA.py`` with the call in
    ``main_forget.py`` that reports ``SVC_MIA_forget_efficacy["confidence"]``, the MIA column of SalUn
    and ℓ1-sparse): feature = true-class confidence ``softmax(z)_y`` (one column); shadow members = the
    first ``n_t`` retain examples (``Subset(retain, range(len(test)))``; all of them if there are fewer),
    label 1; shadow non-members = the test set, label 0; ``SVC(C=3, gamma="auto", kernel="rbf")`` fitted
    on those; target = the forget set, whose "non-member" (0) rate is returned. The reference computes the
    softmax in float32 (torch), we in float64.
    """
    retain = true_class_confidence(*_logits_and_labels(retain_logits, retain_labels, "retain"))
    test = true_class_confidence(*_logits_and_labels(test_logits, test_labels, "test"))
    forget = true_class_confidence(*_logits_and_labels(forget_logits, forget_labels, "forget"))
    for name, conf in (("retain", retain), ("test", test), ("forget", forget)):
        if conf.size == 0:
            raise ValueError(f"the {name} set is empty")
    shadow_in = retain[: test.size]
    x = np.concatenate([shadow_in, test]).reshape(-1, 1)
    y = np.concatenate([np.ones(shadow_in.size), np.zeros(test.size)])
    from sklearn.svm import SVC

    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    return float(1.0 - clf.predict(forget.reshape(-1, 1)).mean())
