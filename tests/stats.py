"""Small statistical helpers; every test states its sample size and tolerance."""

import numpy as np
from scipy import stats

# A correct implementation fails a chi-square test at this level once in 10,000 runs;
# the tests use fixed keys, so their outcome is deterministic anyway.
P_MIN = 1e-4


def assert_counts_match(counts, probs, what):
    counts = np.asarray(counts, float)
    probs = np.asarray(probs, float)
    expected = counts.sum() * probs / probs.sum()
    p = stats.chisquare(counts, expected).pvalue
    assert p > P_MIN, f"{what}: counts {counts.tolist()} vs expected {expected.round(1).tolist()} (chi-square p={p:.2e})"


def assert_rate(hits, n, rate, what, sigmas=4.0):
    """hits/n within `sigmas` binomial standard deviations of rate."""
    tol = sigmas * np.sqrt(rate * (1 - rate) / n)
    assert abs(hits / n - rate) <= tol, f"{what}: {hits}/{n} = {hits / n:.4f}, expected {rate:.4f} +- {tol:.4f}"
