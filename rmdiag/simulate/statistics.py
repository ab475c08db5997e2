"""Statistics of a simulated (or real) log."""

import numpy as np


def popularity_gini(item_ids: np.ndarray, n_items: int) -> float:
    """Gini coefficient of the exposure counts of items 1..n_items (0 = even, ~1 = one item).

    Items never exposed count as zeros, so a concentrated policy scores high.
    """
    counts = np.bincount(np.asarray(item_ids, dtype=np.int64), minlength=n_items + 1)[1:]
    counts = np.sort(counts).astype(np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    n = counts.size
    ranks = np.arange(1, n + 1)
    return float((2.0 * np.sum(ranks * counts) / (n * total)) - (n + 1.0) / n)
