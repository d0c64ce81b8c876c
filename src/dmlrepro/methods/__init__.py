"""Methods: a loss, an optional miner and the wrappers that turn a base loss into a paper's
method (DA's regulariser now, IAA's augmenter and SGAR later). The standard losses and miners come
from pytorch-metric-learning through :mod:`.pml`; the regularisers register themselves in
``REGULARIZERS`` on import (:mod:`.density`)."""
from .pml import (  # noqa: F401
    LOSSES, METHOD_KEYS, MINERS, REGULARIZERS, Criterion, CriterionWrapper, allowed_args, build_criterion,
    method_labels, method_problems,
)
from . import density  # noqa: F401,E402  (registers "density")
