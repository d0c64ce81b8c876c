"""Methods: a loss, an optional miner and (later) the wrappers that turn a base loss into a paper's
method (IAA's augmenter, DA's regulariser, SGAR). The standard losses and miners come from
pytorch-metric-learning through :mod:`.pml`."""
from .pml import LOSSES, METHOD_KEYS, MINERS, Criterion, allowed_args, build_criterion, method_problems  # noqa: F401
