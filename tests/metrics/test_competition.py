"""The competition score against a brute force written straight from the specification."""
import numpy as np
import pytest

from jax_unlearn.metrics import competition
from jax_unlearn.metrics.competition import (
    MIN_COMPARABLE_N,
    final_score,
    forgetting_quality,
    logit_scaled_confidence,
    per_example_epsilon,
    perfect_unlearner_f,
    score_buckets,
    score_from_epsilons,
    small_n_note,
)

DELTA = 1e-5


# ----------------------------------------------------------------------------------------------------------
# Brute force: loops over thresholds, counts by comparison, no sorting, tables or searchsorted.
def _rule_eps(fpr, fnr):
    """ε of decision rules from their rates: +inf perfect, −inf skipped, else max(0, t1, t2), nan ignored."""
    fpr, fnr = np.asarray(fpr, float), np.asarray(fnr, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.log(1 - DELTA - fpr) - np.log(fnr)
        t2 = np.log(1 - DELTA - fnr) - np.log(fpr)
    eps = np.fmax(0.0, np.fmax(t1, t2))
    eps = np.where(fpr * fnr == 0, -np.inf, eps)
    return np.where(fpr + fnr == 0, np.inf, eps)


def brute_epsilon(u, r):
    range_u, range_r = u.max() - u.min(), r.max() - r.min()
    if max(range_u, range_r) == 0 or min(range_u, range_r) / max(range_u, range_r) < 0.01:
        return 50.0
    pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
    best = -np.inf
    everything = np.concatenate([pos, neg])
    lo, hi = everything.min(), everything.max()
    for t in np.linspace(lo, hi, int(np.ceil((hi - lo) * 100))):
        best = max(best, _rule_eps(np.mean(neg >= t), np.mean(~(pos >= t))))
    if pos.max() - pos.min() >= neg.max() - neg.min():
        pos, neg = neg, pos
    w = pos.max() - pos.min()
    a, b = pos.min() + w - 2.0, pos.max() + 2.0
    for right in np.linspace(a, b, int(np.ceil((b - a) * 100))):
        lefts = np.linspace(right - w - 2.0, right - w + 2.0, 400)
        pos_in = (pos[:, None] >= lefts) & (pos[:, None] <= right)
        neg_in = (neg[:, None] >= lefts) & (neg[:, None] <= right)
        best = max(best, _rule_eps(neg_in.mean(axis=0), (~pos_in).mean(axis=0)).max())
    return float(np.clip(best, 0.0, 50.0))


def brute_per_example(u, r):
    return np.array([brute_epsilon(u[:, i], r[:, i]) for i in range(u.shape[1])])


# ----------------------------------------------------------------------------------------------------------
def _case(kind, rng):
    n = int(rng.integers(2, 21))
    s = 3
    if kind == "gaussian":
        u = rng.normal(size=(n, s))
        r = rng.normal(rng.uniform(-1.5, 1.5), rng.uniform(0.2, 3.0), size=(n, s))
    elif kind == "ties":
        u = rng.integers(0, 4, size=(n, s)) * 0.5
        r = rng.integers(0, 4, size=(n, s)) * 0.5
    elif kind == "equal_ranges":
        u = rng.integers(-3, 4, size=(n, s)).astype(float)
        r = u[rng.permutation(n)] + float(rng.integers(-2, 3))
    elif kind == "degenerate":
        u = rng.normal(size=(n, s))
        r = rng.normal(size=(n, s))
        r[:, 0] = 1.5                            # constant retrained population
        u[:, 1] = 0.3                            # both constant
        r[:, 1] = 0.3
        r[:, 2] = 0.7 + 1e-3 * rng.normal(size=n)  # range ratio < 1% (when u varies)
    elif kind == "separated":
        u = rng.normal(size=(n, s))
        r = rng.normal(rng.choice([-8.0, 6.0]), 1.0, size=(n, s))
    elif kind == "single_grid":
        # Values sit exactly on the single-threshold grid linspace(0, 1, 100).
        grid = np.linspace(0.0, 1.0, 100)
        u, r = rng.choice(grid, size=(n, s)), rng.choice(grid, size=(n, s))
        u[0], r[-1] = 0.0, 1.0
    elif kind == "interval_grid":
        # The wider population sits exactly on the interval family's (l, r) grid of the narrower one.
        u = rng.normal(0.0, 0.5, size=(n, s))
        r = np.empty((n, s))
        for i in range(s):
            w = u[:, i].max() - u[:, i].min()
            a, b = u[:, i].min() + w - 2.0, u[:, i].max() + 2.0
            rights = np.linspace(a, b, int(np.ceil((b - a) * 100)))
            picks = rng.integers(0, len(rights), size=n)
            for k, p in enumerate(picks):
                lefts = np.linspace(rights[p] - w - 2.0, rights[p] - w + 2.0, 400)
                r[k, i] = rights[p] if k % 2 else lefts[rng.integers(0, 400)]
        if rng.random() < 0.5:
            u, r = r, u
    else:
        raise ValueError(kind)
    return u, r


KINDS = ["gaussian", "ties", "equal_ranges", "degenerate", "separated", "single_grid", "interval_grid"]


@pytest.mark.parametrize("kind", KINDS)
def test_epsilon_matches_brute_force(kind):
    rng = np.random.default_rng(KINDS.index(kind))
    for _ in range(6):
        u, r = _case(kind, rng)
        np.testing.assert_allclose(per_example_epsilon(u, r), brute_per_example(u, r), rtol=0, atol=1e-12)


def test_epsilon_matches_brute_force_many_models():
    rng = np.random.default_rng(7)
    u = rng.normal(size=(200, 3))
    r = rng.normal(0.3, [[0.6, 1.0, 1.5]], size=(200, 3))
    np.testing.assert_allclose(per_example_epsilon(u, r), brute_per_example(u, r), rtol=0, atol=1e-12)


def test_epsilon_small_chunks_and_symmetry_of_inputs():
    rng = np.random.default_rng(3)
    u, r = rng.normal(size=(12, 9)), rng.normal(0.5, 1.2, size=(12, 9))
    full = per_example_epsilon(u, r)
    np.testing.assert_array_equal(per_example_epsilon(u, r, chunk_size=2), full)
    assert np.all((full >= 0) & (full <= 50))


def test_grid_is_bitwise_linspace():
    rng = np.random.default_rng(0)
    starts = np.concatenate([rng.normal(0, 50, 40), [1e17, -3e16, 0.0]])
    stops = starts + 4.0  # the huge rows hit NumPy's zero-step branch
    cols = np.arange(400)
    expected = np.stack([np.linspace(a, b, 400) for a, b in zip(starts, stops)])
    np.testing.assert_array_equal(competition._grid(starts, stops, 400, cols), expected)
    picked = rng.integers(0, 400, size=(len(starts), 7))
    np.testing.assert_array_equal(
        competition._grid(starts, stops, 400, picked), np.take_along_axis(expected, picked, axis=1))


# ----------------------------------------------------------------------------------------------------------
# Consequences of the definition.
def test_identical_populations_score_about_point_two():
    rng = np.random.default_rng(0)
    F = forgetting_quality(rng.normal(size=(512, 300)), rng.normal(size=(512, 300)))
    assert 0.16 <= F <= 0.21


def test_one_sigma_shift_scores_about_point_zero_two():
    rng = np.random.default_rng(1)
    F = forgetting_quality(rng.normal(1.0, 1.0, size=(512, 300)), rng.normal(size=(512, 300)))
    assert 0.005 <= F <= 0.035


def test_seed_independent_method_scores_zero():
    rng = np.random.default_rng(2)
    retrained = rng.normal(size=(64, 20))
    unlearned = np.broadcast_to(rng.normal(size=(1, 20)), (64, 20))
    np.testing.assert_array_equal(per_example_epsilon(unlearned, retrained), 50.0)
    assert forgetting_quality(unlearned, retrained) == 0.0


def test_perfect_separation_is_capped():
    rng = np.random.default_rng(4)
    assert np.all(per_example_epsilon(rng.normal(size=(32, 5)), rng.normal(9, 1, size=(32, 5))) == 50.0)


# ----------------------------------------------------------------------------------------------------------
def _reference_points(eps, n):
    """The organisers' bucket loop (compute_forget_score_from_confs), transcribed."""
    max_epsilon = np.ceil(np.log(n - 1))
    start, points, buckets = 0, 1, {}
    while start + 0.5 <= max_epsilon:
        buckets[start] = points
        points /= 2
        start += 0.5
    total = 0
    for e in eps:
        for s, p in buckets.items():
            if e < s + 0.5:
                total += p
                break
    return total / len(eps)


def test_score_bins():
    eps = np.array([0.0, 0.49, 0.5, 1.2, 6.99, 7.0, 50.0])
    expected = np.array([1, 1, 0.5, 0.25, 0.5**13, 0, 0]).mean()  # N = 512: edges up to ceil(ln 511) = 7
    assert score_from_epsilons(eps, 512) == expected
    assert score_from_epsilons(eps, 2) == 0.0  # ceil(ln 1) = 0: no bins
    rng = np.random.default_rng(5)
    for n in (3, 10, 100, 512):
        e = np.concatenate([rng.uniform(0, 8, 50), np.arange(0, 8.5, 0.5)])
        assert score_from_epsilons(e, n) == pytest.approx(_reference_points(e, n), abs=1e-15)


def test_score_validation():
    with pytest.raises(ValueError):
        score_from_epsilons([], 10)
    with pytest.raises(ValueError):
        score_from_epsilons([-0.1], 10)
    with pytest.raises(ValueError):
        score_from_epsilons([np.nan], 10)
    with pytest.raises(ValueError):
        score_from_epsilons([1.0], 1)


def test_final_score_arithmetic():
    assert final_score(0.5, 0.9, 0.8, 0.7, 0.75) == 0.5 * (0.9 / 0.8) * (0.7 / 0.75)
    ra_u, ra_r = np.array([0.9, 0.8]), np.array([0.95, 0.85])
    ta_u, ta_r = np.array([0.6, 0.7]), np.array([0.5, 0.5])
    assert final_score(0.2, ra_u, ra_r, ta_u, ta_r) == pytest.approx(0.2 * (0.85 / 0.9) * (0.65 / 0.5))
    assert final_score(0.2, 1.0, 0.5, 1.0, 1.0) == pytest.approx(0.4)  # ratios are not capped
    with pytest.raises(ValueError):
        final_score(1.5, 1, 1, 1, 1)
    with pytest.raises(ValueError):
        final_score(0.5, 1, 0, 1, 1)
    with pytest.raises(ValueError):
        final_score(0.5, [], 1, 1, 1)


def test_epsilon_validation():
    ok = np.zeros((4, 3))
    for u, r in [(np.zeros(4), np.zeros(4)), (np.zeros((4, 3, 1)), np.zeros((4, 3, 1))),
                 (np.zeros((5, 3)), ok), (np.zeros((1, 3)), np.zeros((1, 3))),
                 (np.zeros((4, 0)), np.zeros((4, 0)))]:
        with pytest.raises(ValueError):
            per_example_epsilon(u, r)
    nan = ok.copy()
    nan[0, 0] = np.nan
    with pytest.raises(ValueError):
        forgetting_quality(nan, ok)


# ----------------------------------------------------------------------------------------------------------
def _reference_confidence(logits, targets):
    """The organisers' compute_logit_scaled_confidence (NumPy part), transcribed, on a copy."""
    logits = logits.copy()
    count = logits.shape[0]
    logits -= np.max(logits, axis=1, keepdims=True)
    probs = np.array(np.exp(logits), dtype=np.float64)
    probs /= np.sum(probs, axis=1, keepdims=True)
    prob_correct = probs[np.arange(count), targets[:count]]
    probs[np.arange(count), targets[:count]] = 0
    prob_wrong = np.sum(probs, axis=1)
    return np.log(prob_correct + 1e-45) - np.log(prob_wrong + 1e-45)


def test_confidence_matches_reference_and_float64():
    rng = np.random.default_rng(6)
    logits = (rng.normal(size=(300, 10)) * 6).astype(np.float32)
    logits[:20, 3] += 40.0  # very confident examples: p_wrong must not be 1 − p_y
    labels = rng.integers(0, 10, size=300)
    labels[:20] = 3
    before = logits.copy()
    got = logit_scaled_confidence(logits, labels)
    np.testing.assert_array_equal(logits, before)
    np.testing.assert_array_equal(got, _reference_confidence(logits, labels))
    exact = []
    for z, y in zip(logits.astype(np.float64), labels):
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        exact.append(np.log(p[y]) - np.log(sum(p[j] for j in range(10) if j != y)))
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-5)
    assert got.dtype == np.float64


def test_confidence_batched_models():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(4, 7, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=7)
    got = logit_scaled_confidence(logits, labels)
    assert got.shape == (4, 7)
    for k in range(4):
        np.testing.assert_array_equal(got[k], _reference_confidence(logits[k], labels))
    np.testing.assert_array_equal(logit_scaled_confidence(logits, np.broadcast_to(labels, (4, 7))), got)


def test_confidence_validation():
    with pytest.raises(ValueError):
        logit_scaled_confidence(np.zeros((3,)), np.zeros(3, int))
    with pytest.raises(ValueError):
        logit_scaled_confidence(np.zeros((3, 4)), np.array([0, 1, 4]))
    with pytest.raises(ValueError):
        logit_scaled_confidence(np.zeros((3, 4)), np.zeros(3))
    with pytest.raises(ValueError):
        logit_scaled_confidence(np.zeros((3, 4)), np.zeros(5, int))
    with pytest.raises(ValueError):
        logit_scaled_confidence(np.full((3, 4), np.inf), np.zeros(3, int))


@pytest.mark.parametrize("n", [3, 4, 8, 64, 404, 405, 512])
def test_score_buckets_counts_the_bins_that_can_earn_points(n):
    # Brute force: walk ε over a fine grid and count the distinct non-zero point values score_from_epsilons gives.
    grid = np.arange(0.0, 10.0, 0.01)
    values = {score_from_epsilons(np.array([e]), n) for e in grid}
    assert score_buckets(n) == len(values - {0.0})
    assert (score_buckets(n) == score_buckets(512)) == (n >= MIN_COMPARABLE_N)


def test_small_n_note_states_the_rule_and_the_perfect_unlearner_reference():
    assert small_n_note(512) is None and small_n_note(MIN_COMPARABLE_N) is None
    note = small_n_note(4)
    assert "4 of its 14 ε bins" in note and "compare only scores of equal N" in note
    # The reference is a real F of two identically distributed populations, deterministic.
    assert perfect_unlearner_f(4) == perfect_unlearner_f(4) == forgetting_quality(
        *np.random.default_rng(0).standard_normal((2, 4, 256)))
    assert f"F ≈ {perfect_unlearner_f(4):.2f}" in note
