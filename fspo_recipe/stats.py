"""Statistics shared by the evaluator and the judge (numpy only: no torch, no fairseq2)."""

from __future__ import annotations

import numpy as np


def bootstrap_interval(values: np.ndarray, *, samples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling pairs with replacement)."""
    n = len(values)
    if n == 0 or samples <= 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, 2_000_000 // n)  # bound the index matrix to ~16 MB
    for start in range(0, samples, chunk):
        k = min(chunk, samples - start)
        means[start : start + k] = values[rng.integers(0, n, size=(k, n))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)
