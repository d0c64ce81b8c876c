"""Mean and Student-t confidence interval over seeds, and how a cell shows them."""
from __future__ import annotations

import math
from typing import Sequence


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the `level` confidence interval of the mean (nan for one value)."""
    from scipy import stats

    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)


def format_cell(mean: float, half: float, n: int, published: float | None = None) -> str:
    """'74.0 ± 0.4 (n=3)'; one run is marked '(n=1, single run)'; the paper's number follows."""
    text = f"{100 * mean:.1f}" + ("" if math.isnan(half) else f" ± {100 * half:.1f}")
    note = f"n={n}" if n > 1 else "n=1, single run"
    if published is not None:
        note += f"; paper {published:g}"
    return f"{text} ({note})"
