"""Summaries of per-model values (accuracies, MIA scores, timings) for reports and benchmark records."""
from __future__ import annotations

from typing import Iterable

import numpy as np


def mean_std(values: Iterable[float]) -> dict[str, float | int | None]:
    """``{'mean', 'std', 'n'}`` of the non-nan values: the sample standard deviation (ddof=1; 0 for one
    value); ``mean``/``std`` None when no value is left (JSON has no nan)."""
    v = np.asarray(list(values), np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}
