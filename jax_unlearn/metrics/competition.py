"""The official NeurIPS 2023 Machine Unlearning Challenge score, exact and fast, in NumPy.

For every forget example, the N unlearned and N retrained models each give one number (the logit-scaled
confidence). The two populations of N numbers are compared with every decision rule of two families, an
(ε, δ)-style ε is read off the best rule, ε is binned into points, and the points are averaged:

    F = mean_examples score(ε),   final = F · (RA_U / RA_R) · (TA_U / TA_R).

Reference: Triantafillou et al., "Are we making progress in unlearning? Findings from the first NeurIPS
unlearning competition" (arXiv:2406.09073); the organisers' code is google-deepmind/unlearning_evaluation
(``metric.py``: ``compute_logit_scaled_confidence``, ``_get_epsilons``, ``compute_forget_score_from_confs``;
``main.py`` for the final score). That code needs CUDA and crashes as published (``assert thr_eps`` on a
NumPy array). We follow it rule for rule except where the written specification differs:

* thresholds are ``np.linspace`` everywhere (the reference uses ``torch.linspace`` for the single-threshold
  family, which can differ in the last bit);
* when *both* populations have zero range, ε = 50 (the reference computes 0/0 = nan and carries on);
* the log of a non-positive number (FPR or FNR = 1) drops that term; the reference's ``nanmax`` does
  the same unless both terms are nan, when it drops the rule (neither changes the maximum, which is >= 0);
* if no rule is usable ε = 0 (the reference asserts).

Speed: each example's 2N values are sorted once; a threshold's counts come from one ``searchsorted`` into
that sorted list (and a cumulative count of which population each value came from); ε for a (false
positive, true positive) count pair is a table lookup. The ~160,000 interval rules per example are
evaluated in blocks of ``_BLOCK`` left thresholds: the rules at block ends are exact lower bounds, and a
monotone envelope of the ε table bounds every block from above, so only blocks that could beat the best
rule found so far are evaluated in full. The result is identical to evaluating every rule.
"""
from __future__ import annotations

import functools

import numpy as np

DELTA = 1e-5
EPSILON_CAP = 50.0
THRESHOLDS_PER_UNIT = 100
INTERVAL_BUFFER = 2.0
NUM_LEFT_THRESHOLDS = 400
MIN_RANGE_RATIO = 0.01
BIN_WIDTH = 0.5
_LOG_FLOOR = 1e-45
_BLOCK = 25  # left thresholds per bounded block; divides NUM_LEFT_THRESHOLDS


def logit_scaled_confidence(logits, labels) -> np.ndarray:
    """Logit-scaled confidence ``log p_y − log Σ_{j≠y} p_j`` of the true class, as the competition computes it.

    Args:
      logits: float array (..., C): e.g. (n, C) for one model, or (N, S, C) for N models on S examples.
      labels: int array broadcastable to ``logits.shape[:-1]``: (n,) with (n, C) logits; (S,) or (N, S)
        with (N, S, C) logits (one label per example, shared by every model).

    Returns:
      float64 array of shape ``logits.shape[:-1]``.

    Formula (organisers' ``compute_logit_scaled_confidence``, from LiRA): logits are taken as float32 (the
    competition's models emit float32); ``e = exp(z − max z)`` in float32, then in float64
    ``p = e / Σ e``, ``p_wrong = Σ_{j≠y} p_j`` (summed, not ``1 − p_y``, so confident examples keep their
    precision) and ``log(p_y + 1e-45) − log(p_wrong + 1e-45)``. The input is not modified.
    """
    z = np.asarray(logits)
    if z.ndim < 2 or z.shape[-1] < 2:
        raise ValueError(f"logits must have shape (..., C) with C >= 2, got {z.shape}")
    if not np.issubdtype(z.dtype, np.number) or not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite numbers")
    y = np.asarray(labels)
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    try:
        y = np.broadcast_to(y, z.shape[:-1])
    except ValueError:
        raise ValueError(f"labels {y.shape} do not broadcast to logits batch shape {z.shape[:-1]}") from None
    if y.size and (y.min() < 0 or y.max() >= z.shape[-1]):
        raise ValueError(f"labels must lie in [0, {z.shape[-1]}), got [{y.min()}, {y.max()}]")
    z = z.astype(np.float32)
    z = z - z.max(axis=-1, keepdims=True)
    probs = np.exp(z).astype(np.float64)
    probs /= probs.sum(axis=-1, keepdims=True)
    index = y[..., None].astype(np.intp)
    prob_correct = np.take_along_axis(probs, index, axis=-1)[..., 0]
    np.put_along_axis(probs, index, 0.0, axis=-1)
    prob_wrong = probs.sum(axis=-1)
    return np.log(prob_correct + _LOG_FLOOR) - np.log(prob_wrong + _LOG_FLOOR)


def _epsilon_table(n: int) -> np.ndarray:
    """ε of one decision rule from its counts: ``table[fp, tp]`` for fp false and tp true positives of n.

    FPR = fp/n, FNR = (n − tp)/n. Both zero → +inf (perfect separation); exactly one zero → −inf (rule
    skipped); else ``max(0, log(1−δ−FPR) − log FNR, log(1−δ−FNR) − log FPR)``, a log of a non-positive
    number counting as −inf.
    """
    k = np.arange(n + 1)
    rate = k / n
    with np.errstate(divide="ignore", invalid="ignore"):
        log_rate = np.log(rate)
        log_comp = np.log(1.0 - DELTA - rate)
    log_comp = np.where(np.isnan(log_comp), -np.inf, log_comp)
    fp, fn = k[:, None], n - k[None, :]
    with np.errstate(invalid="ignore"):
        eps = np.maximum(0.0, np.maximum(log_comp[fp] - log_rate[fn], log_comp[fn] - log_rate[fp]))
    eps = np.where((fp == 0) | (fn == 0), -np.inf, eps)
    eps[0, n] = np.inf
    return eps


def _grid(start: np.ndarray, stop: np.ndarray, num: int, cols: np.ndarray) -> np.ndarray:
    """``np.linspace(start[i], stop[i], num)[cols[i]]`` for every row i, bit for bit, without building the
    unused points. Uses NumPy's own arithmetic (``j·step + start``, ``step = (stop − start)/(num − 1)``,
    the last point set to ``stop``; the ``j/(num−1)·delta`` branch when a step is 0, decided per row as a
    scalar ``linspace`` would). ``num >= 2``; cols (k,) shared by all rows or (rows, k); output (rows, k).
    """
    div = num - 1
    delta = stop - start
    step = delta / div
    j = np.broadcast_to(cols, (len(start), np.shape(cols)[-1])).astype(np.float64)
    y = j * step[:, None]
    zero = step == 0
    if zero.any():
        y[zero] = (j[zero] / div) * delta[zero, None]
    y += start[:, None]
    last = j == div
    if last.any():
        y[last] = np.broadcast_to(stop[:, None], y.shape)[last]
    return y


def _example_epsilon(d, neg_single, neg_interval, n, ipos_min, ipos_max, width, tab, env) -> float:
    """ε of one example (capped, in [0, 50]).

    d: (2n,) sorted values of both populations. neg_single / neg_interval: (2n+1,) int, entry m = how many
    of the m smallest values belong to that family's negative population. ipos_*, width: min, max and range
    of the interval family's positive population. tab / env: flat ε table and its monotone envelope, index
    ``1 + fp·(n+1) + tp`` (index 0 holds −inf and catches the negative indices of empty intervals).
    """
    stride = n + 1
    ramp = np.arange(2 * n + 1)
    # Single threshold, positive iff value >= t: fp = n − #neg<t, tp = n − #pos<t.
    lo, hi = d[0], d[-1]
    thresholds = np.linspace(lo, hi, int(np.ceil((hi - lo) * THRESHOLDS_PER_UNIT)))
    best = -np.inf
    if thresholds.size:
        code = neg_single * stride + (ramp - neg_single)
        m = np.searchsorted(d, thresholds, side="left")
        best = tab[1 + n * stride + n - code[m]].max()
    # Interval, positive iff l <= value <= r: fp = A − #neg<l, tp = C − #pos<l with A, C the counts <= r.
    a = ipos_min + width - INTERVAL_BUFFER
    b = ipos_max + INTERVAL_BUFFER
    rights = np.linspace(a, b, int(np.ceil((b - a) * THRESHOLDS_PER_UNIT)))
    if best >= EPSILON_CAP or rights.size == 0:
        return float(np.clip(best, 0.0, EPSILON_CAP))
    starts = rights - width - INTERVAL_BUFFER
    stops = rights - width + INTERVAL_BUFFER
    code = neg_interval * stride + (ramp - neg_interval)
    m_right = np.searchsorted(d, rights, side="right")
    fp_right = neg_interval[m_right]
    tp_right = m_right - fp_right
    row = 1 + fp_right * stride + tp_right  # rule index = row − code[#values < l]

    def counts_below(rows, cols):
        y = _grid(starts[rows], stops[rows], NUM_LEFT_THRESHOLDS, cols)
        return np.searchsorted(d, y.ravel(), side="left").reshape(y.shape)

    # Exact ε at the first and last left threshold of every block: a lower bound on the answer.
    first = np.arange(0, NUM_LEFT_THRESHOLDS, _BLOCK)
    all_rows = np.arange(rights.size)
    m_first = counts_below(all_rows, first)
    m_last = counts_below(all_rows, first + _BLOCK - 1)
    for m in (m_first, m_last):
        best = max(best, np.take(tab, row[:, None] - code[m], mode="clip").max())
    if best >= EPSILON_CAP:
        return EPSILON_CAP
    # Upper bound per block: fp only falls and tp only falls as l grows; env[fp, tp] bounds ε over
    # every fp' >= fp, tp' <= tp. Evaluate in full only the blocks that could beat `best`.
    fp_low = np.maximum(fp_right[:, None] - neg_interval[m_last], 0)
    tp_high = tp_right[:, None] - (m_first - neg_interval[m_first])
    bound = env[np.where(tp_high < 0, 0, 1 + fp_low * stride + np.maximum(tp_high, 0))]
    rows, blocks = np.nonzero(bound > best)
    offsets = np.arange(_BLOCK)
    for part in range(0, rows.size, 4096):
        r, blk = rows[part : part + 4096], blocks[part : part + 4096]
        m = counts_below(r, first[blk][:, None] + offsets)
        best = max(best, np.take(tab, row[r, None] - code[m], mode="clip").max())
    return float(np.clip(best, 0.0, EPSILON_CAP))


def _validate_populations(unlearned, retrained) -> tuple[np.ndarray, np.ndarray]:
    u = np.asarray(unlearned, dtype=np.float64)
    r = np.asarray(retrained, dtype=np.float64)
    if u.ndim != 2 or r.ndim != 2:
        raise ValueError(f"unlearned and retrained must be 2-D (N models, S examples), got {u.shape}, {r.shape}")
    if u.shape != r.shape:
        raise ValueError(f"unlearned {u.shape} and retrained {r.shape} must have the same shape")
    if u.shape[0] < 2:
        raise ValueError(f"need N >= 2 models per population, got {u.shape[0]}")
    if u.shape[1] < 1:
        raise ValueError("need at least one forget example")
    if not (np.all(np.isfinite(u)) and np.all(np.isfinite(r))):
        raise ValueError("unlearned and retrained must be finite")
    return u, r


def per_example_epsilon(unlearned, retrained, *, chunk_size: int = 256) -> np.ndarray:
    """Per forget example, the competition's ε separating unlearned from retrained outputs.

    Args:
      unlearned, retrained: float (N, S): the statistic (``logit_scaled_confidence``) of each of S forget
        examples under each of N unlearned / N retrained models. N >= 2, finite.
      chunk_size: examples sorted together (bounds memory to ~chunk_size·2N values).
        The single-threshold grid has 100 points per unit of an example's range, so values should be on
        the statistic's scale (|value| <~ 104 for ``logit_scaled_confidence``).

    Returns:
      float64 (S,) in [0, 50].

    Rules (δ = 1e-5). If min(range_u, range_r)/max(range_u, range_r) < 0.01 or both ranges are 0, ε = 50.
    Otherwise ε = max over decision rules of
    ``max(0, log(1−δ−FPR) − log FNR, log(1−δ−FNR) − log FPR)`` (rates are means over the N models; a rule
    with FPR = FNR = 0 gives ∞, one with exactly one of them 0 is skipped), clipped to [0, 50]:

    * single threshold: positive = retrained if its median is strictly larger, else unlearned; predict
      positive iff value >= t for t in ``linspace(lo, hi, ceil(100·(hi − lo)))`` over all 2N values;
    * interval: positive = the population with the smaller range w (on a tie, the single-threshold
      negative one); for r in ``linspace(pmin + w − 2, pmax + 2, ceil(100·(b − a)))`` and l in
      ``linspace(r − w − 2, r − w + 2, 400)``, predict positive iff l <= value <= r.

    Reference: google-deepmind/unlearning_evaluation ``metric._get_epsilons`` (see the module docstring
    for where we deviate).
    """
    u, r = _validate_populations(unlearned, retrained)
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    n, s = u.shape
    table = _epsilon_table(n)
    envelope = np.maximum.accumulate(np.maximum.accumulate(table[::-1], axis=0)[::-1], axis=1)
    tab = np.concatenate([[-np.inf], table.ravel()])
    env = np.concatenate([[-np.inf], envelope.ravel()])
    out = np.empty(s)
    for lo in range(0, s, chunk_size):
        uc, rc = u[:, lo : lo + chunk_size].T, r[:, lo : lo + chunk_size].T  # (c, N)
        range_u = uc.max(axis=1) - uc.min(axis=1)
        range_r = rc.max(axis=1) - rc.min(axis=1)
        small, large = np.minimum(range_u, range_r), np.maximum(range_u, range_r)
        with np.errstate(divide="ignore", invalid="ignore"):
            degenerate = (large == 0) | (small / large < MIN_RANGE_RATIO)
        retrain_pos = np.median(rc, axis=1) > np.median(uc, axis=1)
        range_pos = np.where(retrain_pos, range_r, range_u)
        range_neg = np.where(retrain_pos, range_u, range_r)
        # Interval family: the narrower population is positive; on a tie the single-threshold negative.
        interval_pos_r = np.where(range_pos >= range_neg, ~retrain_pos, retrain_pos)
        values = np.concatenate([uc, rc], axis=1)
        order = np.argsort(values, axis=1, kind="stable")
        d = np.take_along_axis(values, order, axis=1)
        cum_r = np.zeros((len(uc), 2 * n + 1), dtype=np.int64)
        np.cumsum(order >= n, axis=1, out=cum_r[:, 1:])
        cum_u = np.arange(2 * n + 1) - cum_r
        for i in range(len(uc)):
            if degenerate[i]:
                out[lo + i] = EPSILON_CAP
                continue
            ipos = rc[i] if interval_pos_r[i] else uc[i]
            ipos_min, ipos_max = ipos.min(), ipos.max()
            out[lo + i] = _example_epsilon(
                d[i],
                cum_u[i] if retrain_pos[i] else cum_r[i],
                cum_u[i] if interval_pos_r[i] else cum_r[i],
                n, ipos_min, ipos_max, ipos_max - ipos_min, tab, env)
    return out


def score_from_epsilons(eps, n: int) -> float:
    """Forgetting quality F from per-example ε: the mean over examples of the points of ε's bin.

    Args:
      eps: float (S,), ε >= 0 per forget example.
      n: number of models per population (N).

    Bins are [0, 0.5), [0.5, 1), … up to ``ceil(ln(n − 1))``; the k-th (k = 1, 2, …) is worth 2/2^k
    (1, ½, ¼, …); ε at or past the last edge is worth 0 (so with n = 2 every score is 0).
    Reference: google-deepmind/unlearning_evaluation ``metric.compute_forget_score_from_confs``.
    """
    e = np.asarray(eps, dtype=np.float64)
    if e.ndim != 1 or e.size == 0:
        raise ValueError(f"eps must be a non-empty 1-D array, got shape {e.shape}")
    if np.any(np.isnan(e)) or np.any(e < 0):
        raise ValueError("eps must be >= 0 and not nan")
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n}")
    last_edge = np.ceil(np.log(n - 1))  # an integer, so the bins tile [0, last_edge) exactly
    inside = e < last_edge
    points = np.where(inside, 0.5 ** np.floor(np.where(inside, e, 0.0) / BIN_WIDTH), 0.0)
    return float(points.mean())


def forgetting_quality(unlearned, retrained) -> float:
    """The competition's forgetting quality F in [0, 1] (higher: closer to retraining).

    Args:
      unlearned, retrained: float (N, S) statistic of S forget examples under N models each.

    ``score_from_epsilons(per_example_epsilon(unlearned, retrained), N)``. Identical populations give
    ≈ 0.16–0.21 at N = 512 (finite-sample noise alone reaches ε ≈ 1–2); a population that is the same for
    every seed gives 0.
    """
    eps = per_example_epsilon(unlearned, retrained)
    return score_from_epsilons(eps, np.shape(unlearned)[0])


def final_score(F, ra_u, ra_r, ta_u, ta_r) -> float:
    """Competition score ``F · (RA_U / RA_R) · (TA_U / TA_R)``.

    Args:
      F: forgetting quality (``forgetting_quality``), in [0, 1].
      ra_u, ra_r, ta_u, ta_r: retain / test accuracies of the unlearned / retrained models, scalars or
        (N,) per-model arrays (their means are used). Ratios are not capped, so an unlearned model more
        accurate than retraining scores above F.

    Reference: google-deepmind/unlearning_evaluation ``main.py`` (``final_score``).
    """
    if not np.isfinite(F) or not 0.0 <= F <= 1.0:
        raise ValueError(f"F must lie in [0, 1], got {F}")
    means = []
    for name, acc in (("ra_u", ra_u), ("ra_r", ra_r), ("ta_u", ta_u), ("ta_r", ta_r)):
        a = np.asarray(acc, dtype=np.float64)
        if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"{name} must be non-empty, finite and >= 0")
        means.append(float(a.mean()))
    ra_um, ra_rm, ta_um, ta_rm = means
    if ra_rm == 0 or ta_rm == 0:
        raise ValueError("retrained accuracies must have a positive mean")
    return float(F) * (ra_um / ra_rm) * (ta_um / ta_rm)


COMPETITION_N = 512  # models per population in the competition's own evaluation


def score_buckets(n: int) -> int:
    """How many ε bins can earn points at N = ``n`` models per population: ``2·⌈ln(n − 1)⌉`` (bins of
    width 0.5 up to the last edge, :func:`score_from_epsilons`). The competition's N = 512 has 14."""
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n}")
    return int(2 * np.ceil(np.log(n - 1) - 1e-12))


# The smallest N whose score scale is the competition's: ⌈ln(N − 1)⌉ = 7 needs N − 1 > e⁶ ≈ 403.4.
MIN_COMPARABLE_N = 405


@functools.lru_cache(maxsize=64)
def perfect_unlearner_f(n: int, examples: int = 256, seed: int = 0) -> float:
    """F of a perfect unlearner at N = ``n``: two populations drawn from the *same* distribution
    (``examples`` forget examples, N i.i.d. standard-normal statistics per population, a NumPy
    ``Generator`` seeded with ``seed``). F depends on N through finite-sample noise and the bin edges
    (≈ 0.19 at N = 512, ≈ 0.24 at N = 4, 0 at N = 2), so it is the reference a small-N score is read against."""
    rng = np.random.default_rng(seed)
    return forgetting_quality(rng.standard_normal((n, examples)), rng.standard_normal((n, examples)))


def small_n_note(n: int) -> str | None:
    """The note every printed or written official score at N = ``n`` models per population carries when
    N is below :data:`MIN_COMPARABLE_N`, else None.

    Rule: F is on the competition's scale only when the scorer can reach the same ε bins as at N = 512
    (14 bins; N ≥ 405). Below that F is coarser and its perfect-unlearner value differs, so the note gives
    both and says to compare only scores of equal N.
    """
    if n >= MIN_COMPARABLE_N:
        return None
    buckets, full = score_buckets(n), score_buckets(COMPETITION_N)
    return (f"N = {n} per population is too small for F to mean what it does in the competition: the scorer "
            f"reaches {buckets} of its {full} ε bins (N >= {MIN_COMPARABLE_N} reaches all), and a perfect "
            f"unlearner scores F ≈ {perfect_unlearner_f(n):.2f} at this N (≈ {perfect_unlearner_f(COMPETITION_N):.2f}"
            f" at N = {COMPETITION_N}); compare only scores of equal N")
