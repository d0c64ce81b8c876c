"""Methods: a loss, an optional miner and the wrappers that turn a base loss into a paper's
method (IAA's augmenter, DA's regulariser, SGAR). The standard losses and miners come
from pytorch-metric-learning through :mod:`.pml`; the regularisers register themselves in
``REGULARIZERS`` and the augmenters in ``AUGMENTERS`` on import (:mod:`.density`, :mod:`.iaa`)."""
from .pml import (  # noqa: F401
    AUGMENTERS, LOSSES, METHOD_KEYS, MINERS, REGULARIZERS, WRAPPER_KEYS, Criterion, CriterionWrapper,
    allowed_args, build_criterion, method_labels, method_problems,
)
from . import density, iaa, sgar  # noqa: F401,E402  (register "density", "iaa" and "sgar")
