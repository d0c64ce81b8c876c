"""Methods: a loss, an optional miner and the wrappers that turn a base loss into a paper's
method (IAA's augmenter, DA's regulariser, SGAR). The standard losses and miners come from
pytorch-metric-learning through :mod:`.standard`, their settings are checked by :mod:`.arguments`,
and :mod:`.criterion` composes them; the regularisers register themselves in ``REGULARIZERS`` and
the augmenters in ``AUGMENTERS`` on import (:mod:`.density`, :mod:`.iaa`, :mod:`.sgar`)."""
from .arguments import wrapper_args
from .criterion import (
    AUGMENTERS, METHOD_KEYS, REGULARIZERS, WRAPPER_KEYS, Criterion, CriterionWrapper, build_criterion,
    method_labels, method_problems,
)
from .standard import LOSSES, MINERS, allowed_args
from . import density, iaa, sgar  # noqa: F401,E402  (register "density", "iaa" and "sgar")
from . import kernels

kernels.install()  # PML's masked logsumexp, bit-identical and faster (see kernels)

__all__ = [
    "LOSSES", "MINERS", "REGULARIZERS", "AUGMENTERS", "WRAPPER_KEYS", "METHOD_KEYS", "Criterion",
    "CriterionWrapper", "build_criterion", "allowed_args", "method_problems", "method_labels",
    "wrapper_args",
]
