"""``avbalance benchmark``: every balancing method on one dataset, several seeds, one shared recipe.

A *suite* (:mod:`.suites`) names a dataset, how to prepare it, a training recipe and per-method
settings. :func:`run_suite` trains every requested method plus audio-only and visual-only
references for each seed, reuses finished runs, and writes a Markdown table and PNG plots of mean,
standard deviation and 95 % confidence interval (Student t) of the test metrics.
"""

from .aggregate import aggregate, summary_stats
from .runner import run_suite
from .suites import SUITES, Suite, get_suite

__all__ = ["SUITES", "Suite", "aggregate", "get_suite", "run_suite", "summary_stats"]
